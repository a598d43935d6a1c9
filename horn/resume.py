"""What a checkpoint holds for one rank, how a run resumes from it, and graceful
preemption (SIGTERM/SIGINT: finish the superstep, checkpoint, exit cleanly)."""

import signal
import sys

import numpy as np

from horn.errors import HornError
from horn.trainer import EpochCounters


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
        stream_arrays, stream_meta = self.stream.state()
        own.update({f"stream.{k}": v for k, v in stream_arrays.items()})
        meta = {
            "step": step,
            "counters": list(counters),
            "stream": stream_meta,
            "mask_draws": self.model.mask_draws,
            "sync": self.sync.checkpoint_meta(),
            "optimizer": self.optimizer.counters(),
        }
        if self.peer is not None:
            meta["peer"] = self.peer.counters()
        return own, shared, meta

    def restore(self, manifest, arrays, layout, where="checkpoint"):
        """Load this rank's part of a checkpoint (``where`` names it in errors); returns
        (step, epoch counters)."""
        check_architecture(manifest, self.model, where)
        rank = self.peer.rank if self.peer else 0
        same_layout = manifest["layout"] == layout
        if not same_layout:
            return self._restore_on_new_layout(manifest, arrays, layout, where)
        meta = manifest["ranks"][str(rank)]
        for name, (key, buf) in self.sync.checkpoint_buffers(self.model, self.optimizer).items():
            label = f"rank{rank}/{name}" if key is None else f"{key}/{name}"
            if label not in arrays:
                raise HornError(
                    f"{where}: expected an array {label!r}, found none (a checkpoint "
                    f"of another architecture or optimizer)"
                )
            _fill(buf, arrays[label], label, self.model.backend, where)
        self.stream.restore({"order": arrays[f"rank{rank}/stream.order"]}, meta["stream"])
        self.model.mask_draws = meta["mask_draws"]
        self.optimizer.restore_counters(meta["optimizer"])
        if self.peer is not None:
            self.peer.restore_counters(meta["peer"])
        self.sync.restore_meta(meta["sync"])
        return meta["step"], EpochCounters(*meta["counters"])

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


def _fill(buf, saved, label, backend, where):
    """Copy a checkpoint array into ``buf``: a size mismatch is a HornError, not numpy's."""
    if saved.size != buf.size:
        raise HornError(
            f"{where}: array {label!r} holds {saved.size} values, this job's "
            f"model needs {buf.size} (a checkpoint of another architecture)"
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
