"""An ensemble of same-architecture members whose class probabilities are averaged:
what a run with ``final = "ensemble"`` saves, and what ``horn eval``/``predict`` load.

One .npz holds every member (``member<i>/param/...``) and a JSON header; like a
model file it is never unpickled.
"""

import numpy as np

from horn.accuracy import accuracy
from horn.errors import HornError
from horn.model import FORMAT as MODEL_FORMAT
from horn.model import Model, read_npz
from horn.npz_header import header_array, read_header

FORMAT = "horn-ensemble-1"


class Ensemble:
    """Members' predictions averaged with ``weights`` (plain average by default)."""

    def __init__(self, members, weights=None):
        if not members:
            raise HornError("an ensemble needs at least one member")
        self.members = list(members)
        w = np.ones(len(members)) if weights is None else np.asarray(weights, np.float64)
        self.weights = w / w.sum()
        self.in_features = members[0].in_features
        self.input_size = members[0].input_size
        self.out_features = members[0].out_features

    @classmethod
    def from_flat(cls, spec, flat_params, weights=None, backend="numpy"):
        """Members built from ``spec`` holding the given flat parameter buffers."""
        members = []
        for params in flat_params:
            member = Model.from_spec(spec, backend, initialize_params=False)
            member.params[...] = member.backend.asarray(params)
            members.append(member)
        return cls(members, weights)

    def predict(self, x):
        out = np.zeros((len(x), self.out_features), np.float64)
        for weight, member in zip(self.weights, self.members):
            out += weight * member.predict(x)
        return out.astype(np.float32)

    def accuracy(self, x, y):
        return accuracy(self.predict(x), y)

    def save(self, path, meta=None):
        """One .npz: every member's named parameters plus a JSON header (spec, weights)."""
        header = {
            "format": FORMAT,
            "spec": self.members[0].spec(),
            "weights": self.weights.tolist(),
            "meta": meta or {},
        }
        arrays = {
            f"member{i}/{k}": v
            for i, m in enumerate(self.members)
            for k, v in m.state_arrays().items()
        }
        arrays["__header__"] = header_array(header)
        np.savez(path, **arrays)


def load_predictor(path, backend="numpy"):
    """A saved model or ensemble, whichever ``path`` holds: ``(predictor, meta)``."""
    arrays = read_npz(path)
    header = read_header(arrays, path, required=("format",))
    fmt = header["format"]
    if fmt != FORMAT:
        if fmt != MODEL_FORMAT:
            raise HornError(
                f"{path}: expected format {MODEL_FORMAT!r} or {FORMAT!r}, found {fmt!r}"
            )
        return Model.load(path, backend)
    weights, meta = header.get("weights"), header.get("meta", {})
    if not (
        isinstance(weights, list)
        and weights
        and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < float("inf")
            for w in weights
        )
    ):
        raise HornError(
            f"{path}: expected the ensemble's weights to be a non-empty list of "
            f"positive numbers, found {type(weights).__name__} {str(weights)[:40]}"
        )
    if not isinstance(meta, dict):
        raise HornError(
            f"{path}: expected the header's meta to be a table, found {type(meta).__name__}"
        )
    members = []
    try:
        for i in range(len(weights)):
            try:
                member = Model.from_spec(header["spec"], backend, initialize_params=False)
            except HornError as exc:  # name the file, as Model.load does
                raise HornError(f"{path}: {exc}") from None
            prefix = f"member{i}/"
            member.load_arrays(
                {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)},
                f"{path} (member {i})",
            )
            members.append(member)
    except (KeyError, TypeError) as exc:
        raise HornError(f"{path}: malformed ensemble header: {exc}") from None
    return Ensemble(members, weights), meta
