"""The interface between the training loop and a parallel strategy."""

import numpy as np


class Sync:
    """No communication: single-process training. Strategies override the hooks."""

    def trainee(self, model, optimizer):
        """The model and optimizer the next step trains (a sub-network's, for example)."""
        return model, optimizer

    def after_step(self, step):
        """Called after every optimizer step (0-based); a barrier may run here."""

    def eval_model(self, model):
        """The model whose accuracy is reported (e.g. the averaged or reassembled one)."""
        return model

    def at_boundary(self, steps_done):
        """True when a barrier has just completed, so every rank's state is consistent
        and a checkpoint may be taken (every step, without communication)."""
        return True

    def reduce_stats(self, values):
        """Sum per-rank counters (loss sum, correct, seen) over the ranks."""
        return values

    def records(self):
        """Extra metrics records (supersteps, bytes, partitions) for metrics.jsonl."""
        return []

    def byte_totals(self):
        """``{"bytes_sent_per_rank": [...], ...}``: what each rank has sent so far, for
        the epoch and final records (empty without communication)."""
        return {}

    # ---- checkpoints (called at round boundaries) --------------------------------
    def checkpoint_buffers(self, model, optimizer):
        """What to save: ``{name: (shared key or None, array)}``. A shared key (e.g.
        "world", "group1") marks a buffer identical on every rank passing that key,
        so only one copy is written."""
        buffers = {"params": (None, model.params)}
        buffers.update({f"opt.{k}": (None, v) for k, v in optimizer.state().items()})
        return buffers

    def checkpoint_meta(self):
        """JSON-able strategy state (round counters, ...)."""
        return {}

    def restore_meta(self, meta):
        """Undo :meth:`checkpoint_meta` after the buffers were loaded."""


class PeerSync(Sync):
    """A strategy over a BSP peer: world-wide statistics and superstep records."""

    def __init__(self, peer):
        self.peer = peer
        self.boundary_at = 0  # steps done when the last barrier completed

    def at_boundary(self, steps_done):
        return self.boundary_at == steps_done

    def reduce_stats(self, values):
        stats = np.asarray(values, dtype=np.float64)
        self.peer.allreduce_sum(stats, "world")
        return stats.tolist()

    def records(self):
        return self.peer.drain_records()

    def byte_totals(self):
        """One small Allgather: leaders and workers move different amounts. A job
        across hosts adds each rank's inter-host part (``bytes_sent_inter_host_per_rank``);
        both are gathered either way, so a job sends the same bytes on one host and on many."""
        peer = self.peer
        totals = np.zeros((peer.size, 2), np.int64)
        mine = np.array([peer.bytes_sent_total, peer.bytes_across_total], np.int64)
        peer.allgather(mine, totals, "world")
        counts = {"bytes_sent_per_rank": totals[:, 0].tolist()}
        if peer.multi_host:
            counts["bytes_sent_inter_host_per_rank"] = totals[:, 1].tolist()
        return counts

    def after_step(self, step):
        self.boundary_at = step + 1  # no barrier at all: every step is a boundary

    def is_boundary(self, steps_done, every, total):
        """True at the end of a round of ``every`` steps, and at the very end."""
        return steps_done % every == 0 or steps_done == total
