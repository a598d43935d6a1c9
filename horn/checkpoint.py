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
from horn.metrics import record_kind
from horn.npz_header import header_array, read_header
from horn.schema import Document, shown

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
            m.get("step")
            for m in (read_manifest(p) for p in sorted(self.dir.glob("ckpt-*.json")))
            if m is not None
        ]


def read_manifest(path):
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):
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
            check_header(manifest, path)
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
            check_run_files(run_dir, manifest, path)
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


def check_header(manifest, path):
    """The run-level fields of the manifest at ``path`` (what loading it and the run
    around it use) have the types and ranges horn writes, and its data file is the one
    beside it; each rank's own state is :meth:`horn.resume.RunState.restore`'s to check.
    A manifest that parses but breaks this was edited: an error, not a checkpoint to
    skip."""
    doc = Document(path, manifest)
    step = doc.count(("step",))
    data = f"{path.stem}.npz"
    if doc.value(("file",), repr(data)) != data:
        doc.fail(("file",), f"{data!r} (the data file beside this manifest)", manifest["file"])
    doc.typed(("layout",), dict, "a table of world, groups and workers")
    world, groups, workers = (
        doc.count(("layout", k), low=1) for k in ("world", "groups", "workers")
    )
    if world != groups * workers:
        doc.fail(("layout", "world"), f"groups x workers = {groups * workers}", world)
    doc.typed(("job_digest",), str, "a string")
    doc.count(("round",), high=step)  # one round is at least one step
    if "parameters" in manifest:  # manifests before the architecture check have none
        for i in range(len(doc.typed(("parameters",), list, "a list of [name, shape]"))):
            if len(doc.typed(("parameters", i), list, "a [name, shape] pair")) != 2:
                doc.fail(("parameters", i), "a [name, shape] pair", manifest["parameters"][i])
            doc.typed(("parameters", i, 0), str, "a parameter name")
            for j in range(len(doc.typed(("parameters", i, 1), list, "a list of dimensions"))):
                doc.count(("parameters", i, 1, j))
    doc.count(("metrics_bytes",))
    if "time_s" in manifest:
        doc.number(("time_s",), low=0)
    if manifest.get("best") is not None:  # absent before early stopping
        _check_best(doc)
    ranks = doc.typed(("ranks",), dict, "a table of every rank's state")
    if len(ranks) != world or set(ranks) != {str(r) for r in range(world)}:
        names = f"0 to {world - 1}" if world > 1 else "0"
        doc.fail(("ranks",), f"a table for rank {names} (layout.world = {world})", sorted(ranks))
    for name in doc.typed(("arrays",), dict, "a table of array checksums"):
        doc.typed(("arrays", name), str, "a SHA-256 digest")


def _check_best(doc):
    """The early-stopping record: the best validation accuracy and its epoch, both
    null before any, and how many evaluations have gone by without improving on it."""
    doc.typed(("best",), dict, "a table of best, best_epoch and waited")
    best, epoch = (doc.value(("best", k), "a value or null") for k in ("best", "best_epoch"))
    if (best is None) != (epoch is None):
        doc.fail(("best", "best"), f"null exactly when best_epoch is (it is {epoch!r})", best)
    if best is not None:
        doc.number(("best", "best"), low=0, high=1)
        doc.count(("best", "best_epoch"), low=1)
    doc.count(("best", "waited"))
    if "mark" in doc.value(("best",), "a table"):  # absent in older checkpoints
        mark = doc.value(("best", "mark"), "a value or null")
        if (mark is None) != (best is None):
            doc.fail(("best", "mark"), f"null exactly when best is (it is {best!r})", mark)
        if mark is not None:
            doc.number(("best", "mark"), low=0, high=1)


def check_run_files(run_dir, manifest, path):
    """The run directory still holds what the checkpoint at ``path`` counts on, so that
    resuming changes nothing before it is sure to go on: ``best.npz`` when it names a
    best epoch, and a ``metrics.jsonl`` whose first ``metrics_bytes`` bytes are whole
    records up to the checkpoint's step, with none of those past them. The resume
    truncates the file there: it must never cut a record, pad the file, or drop a
    record that it does not write again."""
    run_dir = Path(run_dir)
    best = manifest.get("best") or {}
    if best.get("best_epoch") is not None and not (run_dir / "best.npz").is_file():
        raise HornError(
            f"{path}: best.best_epoch: expected {run_dir / 'best.npz'} (the model of "
            f"epoch {best['best_epoch']}) to exist, found no such file"
        )
    want, step = manifest["metrics_bytes"], manifest["step"]
    metrics = run_dir / "metrics.jsonl"
    logged = f"what checkpoint {path} logged (its metrics_bytes)"
    if not metrics.exists() and not want:
        return
    if not metrics.is_file():  # a FIFO would block the read
        found = "something that is not a file" if metrics.exists() else "no such file"
        raise HornError(f"{metrics}: expected {want} bytes, {logged}, found {found}")
    try:
        text = metrics.read_bytes()
    except OSError as exc:
        raise HornError(f"{metrics}: cannot read it: {exc.strerror or exc}") from None
    if len(text) < want:
        raise HornError(f"{metrics}: expected at least {want} bytes, {logged}, found {len(text)}")
    *kept, tail = text[:want].split(b"\n")
    if tail:
        raise HornError(
            f"{metrics}: expected a record to end at byte {want}, {logged}, found "
            f"{_quoted(tail[-40:])} there"
        )
    for number, line in enumerate(kept, 1):
        record = _record(line)
        at = record.get("step", 0) if record else None
        if not record or record_kind(record) in (None, "final") or not _at_most(at, step):
            raise HornError(
                f"{metrics}: line {number}: expected a record up to step {step}, "
                f"{logged}, found {_quoted(line)}"
            )
    for number, line in enumerate(text[want:].split(b"\n"), len(kept) + 1):
        record = _record(line)  # a killed run's last line may be cut: not a record
        if record and _at_most(record.get("step"), step):
            raise HornError(
                f"{metrics}: line {number}: expected the records past byte {want}, "
                f"{logged}, to come after step {step}, found {_quoted(line)}"
            )


def _record(line):
    """The JSON object on a metrics line, or None."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _at_most(at, step):
    return isinstance(at, int) and not isinstance(at, bool) and at <= step


def _quoted(raw):
    return shown(raw.decode(errors="replace"))
