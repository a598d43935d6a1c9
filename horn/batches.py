"""Deterministic mini-batches gathered into preallocated buffers (no per-step allocation)."""

import numpy as np


class BatchStream:
    """Endless shuffled mini-batches of (x, y); epoch order comes from ``seed``.

    The last incomplete batch of an epoch is dropped (when there is at least one
    full batch) so every step has the same shape and the layers' work buffers
    are never reallocated.
    """

    def __init__(self, x, y, batch_size, seed, backend):
        self.x, self.y, self.backend = x, y, backend
        self.n = len(x)
        self.batch_size = min(batch_size, self.n)
        self.per_epoch = max(1, self.n // self.batch_size)
        self.rng = np.random.default_rng(seed)
        self.epoch, self.position, self.order = 0, 0, self.rng.permutation(self.n)
        self.xb = np.empty((self.batch_size, x.shape[1]), dtype=np.float32)
        self.yb = np.empty(self.batch_size, dtype=np.int64)
        self.device = backend.xp is not np

    def next(self):
        if self.position == self.per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            self.order = self.rng.permutation(self.n)
        lo = self.position * self.batch_size
        idx = self.order[lo : lo + self.batch_size]
        self.position += 1
        np.take(self.x, idx, axis=0, out=self.xb)
        np.take(self.y, idx, axis=0, out=self.yb)
        if self.device:
            return self.backend.asarray(self.xb), self.backend.asarray(self.yb)
        return self.xb, self.yb

    def state(self):
        """The data-order position: resuming from it replays the same batches."""
        return {"order": self.order}, {
            "epoch": self.epoch,
            "position": self.position,
            "rng": self.rng.bit_generator.state,
        }

    def restore(self, arrays, meta):
        self.order = np.asarray(arrays["order"], dtype=np.int64)
        self.epoch, self.position = meta["epoch"], meta["position"]
        self.rng.bit_generator.state = meta["rng"]
