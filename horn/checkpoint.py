"""Checkpoints: atomic, checksummed, pickle-free, and deadlock-free.

At a round boundary every rank packs its state (its own arrays, plus the
arrays it shares with a communicator when it leads that communicator) into an
in-memory ``.npz``; one Gatherv brings the blobs to rank 0 -- every collective
happens before anyone touches the disk -- and rank 0 alone writes
``checkpoints/ckpt-<step>.npz`` (temp file, fsync, rename) and then its JSON
manifest with a SHA-256 per array. A checkpoint counts only once its manifest
exists and every checksum matches, so a write killed half-way is never loaded
and the previous checkpoint stays valid until the new one is complete.
"""

import hashlib
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from horn.errors import HornError
from horn.npz_header import header_array, read_header

FORMAT = "horn-checkpoint-1"


def _pack(arrays, meta):
    buf = io.BytesIO()
    np.savez(buf, __meta__=header_array(meta), **arrays)
    return buf.getvalue()


def _unpack(blob):
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = read_header(arrays, "checkpoint blob", "__meta__")
    del arrays["__meta__"]
    return arrays, meta


def _gather_blobs(peer, blob):
    """Every rank's bytes on rank 0 (None elsewhere): buffer-based, polled by the
    watchdog so a dead rank aborts the job instead of hanging it."""
    if peer is None:
        return [blob]
    return peer.gather_bytes(blob, "checkpoint")


def _digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _write_atomic(path, write):
    """Write via a temp file in the same directory, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise exc


class Checkpointer:
    """Writes and finds the checkpoints of one run directory."""

    def __init__(self, run_dir, peer, keep_last):
        self.dir = Path(run_dir) / "checkpoints" if run_dir else None  # rank 0 writes
        self.peer, self.keep_last = peer, keep_last

    def save(self, step, arrays, meta, shared, header):
        """Collective: every rank calls it at the same round boundary.

        ``arrays``: this rank's own state; ``shared``: ``{name: (key, array)}``
        identical on every rank that passes the same key (only the first rank
        with a given key contributes it); ``meta``: this rank's JSON state;
        ``header``: run-level facts (layout, job digest, metrics offset).
        """
        rank = self.peer.rank if self.peer else 0
        payload = {f"own/{n}": a for n, a in arrays.items()}
        payload.update({f"shared/{n}": a for n, (_, a) in shared.items()})
        blobs = _gather_blobs(
            self.peer,
            _pack(payload, {"meta": meta, "shared": {n: k for n, (k, _) in shared.items()}}),
        )
        if rank != 0:
            return None
        merged, metas = {}, {}
        for r, blob in enumerate(blobs):
            got, info = _unpack(blob)
            metas[str(r)] = info["meta"]
            merged.update({f"rank{r}/{n[4:]}": a for n, a in got.items() if n.startswith("own/")})
            for name, key in info["shared"].items():
                merged.setdefault(f"{key}/{name}", got[f"shared/{name}"])
        return self._write(step, merged, metas, header)

    def _write(self, step, arrays, metas, header):
        name = f"ckpt-{step:09d}"
        manifest = {
            "format": FORMAT,
            "step": step,
            "file": f"{name}.npz",
            **header,
            "ranks": metas,
            "arrays": {k: _digest(a) for k, a in arrays.items()},
        }
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.dir / f"{name}.npz", lambda f: np.savez(f, **arrays))
            _write_atomic(
                self.dir / f"{name}.json", lambda f: f.write(json.dumps(manifest).encode())
            )
        except OSError as exc:
            previous = self.valid_steps()
            kept = (
                f"the previous checkpoint (step {previous[-1]}) is intact"
                if previous
                else "no earlier checkpoint exists"
            )
            raise HornError(
                f"checkpoint: cannot write {self.dir / name}.npz: {exc.strerror or exc}; {kept}"
            ) from None
        self._prune()
        return self.dir / f"{name}.npz"

    def _prune(self):
        manifests = sorted(self.dir.glob("ckpt-*.json"))
        for old in manifests[: -self.keep_last]:
            old.unlink(missing_ok=True)  # the manifest first: a half-pruned one is just invalid
            old.with_suffix(".npz").unlink(missing_ok=True)

    def valid_steps(self):
        return [
            m["step"]
            for m in (read_manifest(p) for p in sorted(self.dir.glob("ckpt-*.json")))
            if m is not None
        ]


def read_manifest(path):
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    return manifest


def load_latest(run_dir, warn=print, every=None):
    """The newest checkpoint whose manifest and checksums are intact: ``(manifest,
    arrays)``; a corrupt or partial one is skipped with a warning. ``every``: the run's
    ``checkpoint.every``, so that finding none can say when checkpoints were off."""
    directory = Path(run_dir) / "checkpoints"
    for path in sorted(directory.glob("ckpt-*.json"), reverse=True):
        manifest = read_manifest(path)
        problem = "unreadable manifest" if manifest is None else None
        arrays = {}
        if manifest is not None:
            try:
                with np.load(directory / manifest["file"], allow_pickle=False) as data:
                    arrays = {k: data[k] for k in data.files}
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                problem = f"unreadable data ({exc})"
            else:
                expected = manifest.get("arrays", {})
                bad = sorted(
                    k for k in expected if k not in arrays or _digest(arrays[k]) != expected[k]
                )
                if bad or set(arrays) != set(expected):
                    problem = f"checksum mismatch in {bad[0] if bad else 'its array list'}"
        if problem is None:
            return manifest, arrays
        warn(f"horn: warning: skipping checkpoint {path.name}: {problem}", file=sys.stderr)
    if every == 0:
        raise HornError(
            f"{run_dir}: no checkpoint to resume from: the run's job has "
            f"checkpoint.every = 0 (checkpoints off; only a preempted run writes "
            f"one); turn them on with --set checkpoint.every=N (every N rounds) "
            f"or [checkpoint] every = N in the job, and run it again"
        )
    raise HornError(f"{run_dir}: no valid checkpoint to resume from (looked in {directory})")
