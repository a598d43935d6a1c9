"""The interface between the training loop and a parallel strategy."""


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

    def reduce_stats(self, values):
        """Sum per-rank counters (loss sum, correct, seen) over the ranks."""
        return values

    def records(self):
        """Extra metrics records (supersteps, bytes, partitions) for metrics.jsonl."""
        return []


class PeerSync(Sync):
    """A strategy over a BSP peer: world-wide statistics and superstep records."""

    def __init__(self, peer):
        self.peer = peer

    def reduce_stats(self, values):
        import numpy as np

        stats = np.asarray(values, dtype=np.float64)
        self.peer.allreduce_sum(stats, "world")
        return stats.tolist()

    def records(self):
        return self.peer.drain_records()

    def is_boundary(self, steps_done, every, total):
        """True at the end of a round of ``every`` steps, and at the very end."""
        return steps_done % every == 0 or steps_done == total
