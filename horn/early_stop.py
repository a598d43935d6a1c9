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

    def update(self, epoch, val_accuracy):
        """Record one evaluation; True when it is the best so far (by more than min_delta)."""
        if val_accuracy is None or math.isnan(val_accuracy):
            return False
        if val_accuracy > self.best + self.min_delta:
            self.best, self.best_epoch, self.waited = val_accuracy, epoch, 0
            return True
        self.waited += 1
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
        }

    def restore(self, state):
        if state:
            self.best = -math.inf if state["best"] is None else state["best"]
            self.best_epoch, self.waited = state["best_epoch"], state["waited"]


def agree(peer, stop):
    """Rank 0's ``stop`` on every rank (one 1-byte broadcast; no peer: ``stop``)."""
    if peer is None:
        return stop
    flag = np.array([1 if stop else 0], np.int8)
    peer.bcast(flag, 0, "world")
    return bool(flag[0])
