"""The best validation accuracy so far, and when to stop early (``train.early_stop``).

Ranks may measure different validation accuracies (each group evaluates its own model),
so rank 0 decides and tells the others: every rank then stops at the same superstep.
"""

import math

import numpy as np


class BestTracker:
    """Follows validation accuracy per evaluation; ``patience`` None never stops."""

    def __init__(self, patience=None, min_delta=0.0):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.best_epoch, self.waited = -math.inf, None, 0
        self.mark = -math.inf  # the accuracy patience counts from

    def update(self, epoch, val_accuracy):
        """Record one evaluation; True when it is the best so far (then best.npz is
        this model). ``min_delta`` only decides patience: an evaluation better than the
        last one that counted by more than it starts the wait again."""
        if val_accuracy is None or math.isnan(val_accuracy):
            return False
        if val_accuracy > self.mark + self.min_delta:
            self.mark, self.waited = val_accuracy, 0
        else:
            self.waited += 1
        if val_accuracy > self.best:
            self.best, self.best_epoch = val_accuracy, epoch
            return True
        return False

    @property
    def exhausted(self):
        """True once ``patience`` evaluations in a row brought no improvement."""
        return self.patience is not None and self.waited >= self.patience

    def state(self):
        return {
            "best": self.best if self.best_epoch is not None else None,
            "best_epoch": self.best_epoch,
            "waited": self.waited,
            "mark": self.mark if self.best_epoch is not None else None,
        }

    def restore(self, state):
        if state:
            self.best = -math.inf if state["best"] is None else state["best"]
            self.best_epoch, self.waited = state["best_epoch"], state["waited"]
            mark = state.get("mark", state["best"])  # older checkpoints: the best was the mark
            self.mark = -math.inf if mark is None else mark


def agree(peer, stop):
    """Rank 0's ``stop`` on every rank (one 1-byte broadcast; no peer: ``stop``)."""
    if peer is None:
        return stop
    flag = np.array([1 if stop else 0], np.int8)
    peer.bcast(flag, 0, "world")
    return bool(flag[0])
