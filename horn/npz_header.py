"""The JSON header horn stores inside its .npz files (models, ensembles, checkpoint
blobs): written and parsed in one place, with one strictness."""

import json

import numpy as np

from horn.errors import HornError


def header_array(header):
    """``header`` (JSON-able) as the 1-D uint8 array an .npz can hold without pickle."""
    return np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def read_header(arrays, source, name="__header__", required=()):
    """The table stored in ``arrays[name]``: one clear line naming ``source`` for a
    missing, mistyped or unreadable header, or one without the ``required`` keys."""
    if name not in arrays:
        raise HornError(f"{source}: not a horn file (no {name} array)")
    raw = arrays[name]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise HornError(
            f"{source}: expected {name} to be 1-D uint8 (JSON text), found "
            f"{raw.dtype} of shape {raw.shape}"
        )
    try:
        header = json.loads(raw.tobytes().decode())
    except ValueError as exc:  # also UnicodeDecodeError, and integers over 4300 digits
        raise HornError(f"{source}: unreadable header: {exc}") from None
    except RecursionError:
        raise HornError(f"{source}: unreadable header: nested too deeply") from None
    if not (isinstance(header, dict) and all(k in header for k in required)):
        found = f"keys {sorted(header)}" if isinstance(header, dict) else type(header).__name__
        raise HornError(
            f"{source}: unreadable header: expected a table with "
            f"{', '.join(required) or 'keys'}, found {found}"
        )
    return header
