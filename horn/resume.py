"""What a checkpoint holds for one rank, how a run resumes from it, and graceful
preemption (SIGTERM/SIGINT: finish the superstep, checkpoint, exit cleanly)."""

import signal
import sys
from pathlib import Path

import numpy as np

from horn.errors import HornError
from horn.schema import Document
from horn.trainer import EpochCounters

# keys that checkpoints from before inter-host byte accounting lack (the peer's
# restore_counters defaults them)
OPTIONAL_KEYS = frozenset({"bytes_across_total", "step_across"})


class RunState:
    """One rank's training state at a round boundary: strategy buffers (parameters,
    optimizer state), data-order position, mask-key counter, epoch counters."""

    def __init__(self, model, optimizer, stream, sync, peer):
        self.model, self.optimizer, self.stream = model, optimizer, stream
        self.sync, self.peer = sync, peer

    def snapshot(self, step, counters):
        """``(own arrays, shared {name: (key, array)}, meta)`` for Checkpointer.save."""
        backend = self.model.backend
        backend.synchronize()
        own, shared = {}, {}
        for name, (key, buf) in self.sync.checkpoint_buffers(self.model, self.optimizer).items():
            host = backend.to_host(buf).copy()
            if key is None:
                own[name] = host
            else:
                shared[name] = (key, host)
        own.update({f"stream.{k}": v for k, v in self.stream.state()[0].items()})
        return own, shared, self._meta(step, counters)

    def _meta(self, step, counters):
        """This rank's JSON state; also the shape :meth:`_check_ranks` holds a
        checkpoint's to."""
        meta = {
            "step": step,
            "counters": list(counters),
            "stream": self.stream.state()[1],
            "mask_draws": self.model.mask_draws,
            "sync": self.sync.checkpoint_meta(),
            "optimizer": self.optimizer.counters(),
        }
        if self.peer is not None:
            meta["peer"] = self.peer.counters()
        return meta

    def restore(self, manifest, arrays, layout, where="checkpoint"):
        """Load this rank's part of a checkpoint (``where`` names it in errors); returns
        (step, epoch counters)."""
        check_architecture(manifest, self.model, where)
        rank = self.peer.rank if self.peer else 0
        same_layout = all(manifest["layout"][k] == v for k, v in layout.items())
        self._check_ranks(manifest, where, same_layout)
        if not same_layout:
            return self._restore_on_new_layout(manifest, arrays, layout, where)
        meta = manifest["ranks"][str(rank)]
        for name, (key, buf) in self.sync.checkpoint_buffers(self.model, self.optimizer).items():
            label = f"rank{rank}/{name}" if key is None else f"{key}/{name}"
            _fill(buf, _array(arrays, label, where), label, self.model.backend, where)
        order = _array(arrays, f"rank{rank}/stream.order", where)
        n = self.stream.n
        if not (
            order.dtype.kind in "iu"
            and order.shape == (n,)
            and np.array_equal(np.sort(order), np.arange(n))
        ):
            raise HornError(
                f"{where}: array 'rank{rank}/stream.order': expected an order of this "
                f"job's {n} training samples, found {order.dtype} values of shape "
                f"{order.shape} that are not one"
            )
        self.stream.restore({"order": order}, meta["stream"])
        self.model.mask_draws = meta["mask_draws"]
        self.optimizer.restore_counters(meta["optimizer"])
        if self.peer is not None:
            self.peer.restore_counters(meta["peer"])
        self.sync.restore_meta(meta["sync"])
        return meta["step"], EpochCounters(*meta["counters"])

    def _check_ranks(self, manifest, where, same_layout):
        """Every rank's state in the manifest has the shape this rank's own would have
        (:meth:`_meta`), the manifest's step, and a data-order position and random
        state its stream can take -- before any of it is used. On a new layout only
        rank 0's step, epoch and strategy counters carry over, so only they count."""
        doc = Document(Path(where).with_suffix(".json"), manifest)
        step = manifest["step"]
        meta = self._meta(step, EpochCounters())
        rng = meta["stream"].pop("rng")
        if not same_layout:
            meta = {"step": step, "stream": {"epoch": 0}, "sync": meta["sync"]}
        for rank in range(manifest["layout"]["world"]) if same_layout else [0]:
            path = ("ranks", str(rank))
            doc.like(meta, path, OPTIONAL_KEYS)
            if manifest["ranks"][str(rank)]["step"] != step:
                doc.fail(
                    (*path, "step"), f"{step}, the manifest's step", doc.value((*path, "step"), "")
                )
            if same_layout:
                doc.count((*path, "stream", "position"), high=self.stream.per_epoch)
                self._check_rng(doc, (*path, "stream", "rng"), rng)

    def _check_rng(self, doc, path, template):
        """A state this stream's bit generator takes (numpy has the last word on its
        ranges, tried on a scratch generator)."""
        doc.like(template, path, high=2**128 - 1)
        state = doc.value(path, "")
        try:
            type(self.stream.rng.bit_generator)().state = state
        except (TypeError, ValueError, OverflowError):
            doc.fail(path, f"the state of a {template['bit_generator']} generator", state)

    def _restore_on_new_layout(self, manifest, arrays, layout, where):
        """Another world size: only the models carry over -- model averaging's averaged
        model, or sub-network groups' parents (re-partitioned over the new worker count
        when the next round begins). Optimizer state restarts, and every rank starts a
        fresh epoch order."""
        old = manifest["layout"]
        model = self.model
        if "world/params" in arrays:
            _fill(model.params, arrays["world/params"], "world/params", model.backend, where)
        elif "group0/parent" in arrays:
            for g in range(old["groups"]):
                _array(arrays, f"group{g}/parent", where)
            group = self.peer.group if self.peer else 0
            _fill(
                model.params,
                _parent_for(arrays, old["groups"], layout["groups"], group),
                f"group{group}/parent",
                model.backend,
                where,
            )
        else:
            raise HornError(
                f"checkpoint was written by {old['world']} rank(s) as {old['groups']} group(s) x "
                f"{old['workers']} worker(s) and holds neither an averaged model nor the groups' "
                f"parents (its strategy keeps per-rank models); this run has {layout['world']} "
                f"rank(s). Resume with {old['world']} rank(s)."
            )
        if self.peer is None or self.peer.rank == 0:
            print(
                f"horn: warning: resuming a {old['world']}-rank checkpoint ({old['groups']} x "
                f"{old['workers']}) on {layout['world']} rank(s) ({layout['groups']} x "
                f"{layout['workers']}): the model carries over, optimizer state and the "
                f"data order restart",
                file=sys.stderr,
                flush=True,
            )
        meta = manifest["ranks"]["0"]
        self.stream.epoch = meta["stream"]["epoch"]
        self.sync.restore_meta(meta["sync"])
        return meta["step"], EpochCounters()


def parameter_shapes(model):
    """The model's parameters as a checkpoint manifest records them: [[name, shape]]."""
    return [[name, list(shape)] for name, _, _, shape in model.slots]


def check_architecture(manifest, model, where):
    """A checkpoint of another model is a one-line error naming the first difference
    (manifests before this record carry no shapes: :func:`_fill` still checks sizes)."""
    saved = manifest.get("parameters")
    mine = parameter_shapes(model)
    if saved is None or saved == mine:
        return
    for i in range(max(len(saved), len(mine))):
        theirs = saved[i] if i < len(saved) else None
        ours = mine[i] if i < len(mine) else None
        if theirs != ours:
            break

    def shown(entry):
        return f"parameter {entry[0]!r} of shape {tuple(entry[1])}" if entry else "nothing"

    raise HornError(
        f"{where}: the checkpoint is of another architecture: it holds "
        f"{shown(theirs)} where this job's model has {shown(ours)}"
    )


def _array(arrays, label, where):
    """The checkpoint array ``label``; one it lacks is a HornError, not a KeyError."""
    if label not in arrays:
        raise HornError(
            f"{where}: expected an array {label!r}, found none (a checkpoint "
            f"of another architecture or optimizer)"
        )
    return arrays[label]


def _fill(buf, saved, label, backend, where):
    """Copy a checkpoint array into ``buf``: a size or type mismatch is a HornError,
    not numpy's (or a silent conversion)."""
    if saved.size != buf.size:
        raise HornError(
            f"{where}: array {label!r} holds {saved.size} values, this job's "
            f"model needs {buf.size} (a checkpoint of another architecture)"
        )
    if saved.dtype != buf.dtype:
        raise HornError(
            f"{where}: array {label!r}: expected {buf.dtype} values, found {saved.dtype}"
        )
    buf[...] = backend.asarray(saved.reshape(buf.shape))


def _parent_for(arrays, old_groups, new_groups, group):
    """New group ``group``'s parent: the old group it maps to when groups grow, the
    mean of the old groups that map onto it (``g % new_groups``) when they shrink --
    what the cross-group average would have made of them."""
    if new_groups > old_groups:
        return arrays[f"group{group % old_groups}/parent"]
    members = [arrays[f"group{g}/parent"] for g in range(group, old_groups, new_groups)]
    return (
        members[0]
        if len(members) == 1
        else np.mean(members, axis=0, dtype=np.float64).astype(members[0].dtype)
    )


PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
_requested = []  # signals received: set by the handler, read at round boundaries


def _handle(signum, frame):
    if _requested and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C really interrupts
    _requested.append(signum)


def install_preemption_handlers():
    """Catch the stop signals from the very start (a signal while the data loads
    must not kill the run either); called by ``horn run``."""
    for sig in PREEMPT_SIGNALS:
        signal.signal(sig, _handle)


class Preemption:
    """SIGTERM, SIGINT or SIGUSR1 ask the run to stop at the next round boundary; all
    ranks agree with one tiny Allreduce, checkpoint, and exit cleanly.

    Open MPI 5's mpirun does not forward SIGTERM/SIGINT (it kills the ranks), but it
    forwards SIGUSR1: preempt an mpirun job with ``kill -USR1 <mpirun pid>`` (Slurm:
    ``--signal=B:USR1@120``); a single-process run also stops on SIGTERM or Ctrl-C.
    """

    def __init__(self, peer):
        self.peer = peer

    def agreed(self):
        """True on every rank when any rank was asked to stop."""
        if self.peer is None:
            return bool(_requested)
        flag = np.array([1.0 if _requested else 0.0])
        self.peer.allreduce_sum(flag, "world")
        return bool(flag[0] > 0)
