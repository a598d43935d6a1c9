"""Knowledge distillation: the loss, its batches and the training loop that compresses
an ensemble's outputs into one model (Hinton et al., 2015; EC-DNN's compression step).
"""

import math

import numpy as np

from horn.errors import DivergenceError
from horn.layer import Loss
from horn.schedules import Schedule


class DistillLoss(Loss):
    """``alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || softmax(x / T))``.

    ``targets`` is ``(labels, soft)``: int labels for the first ``len(labels)`` rows,
    teacher probabilities (at temperature T) for the last ``len(soft)`` rows. The two
    blocks cover the same rows (distilling on labeled data) or split the batch (labeled
    rows, then unlabeled distillation rows); either may be None. Each term is a mean over
    its own rows. A bare label vector or probability matrix is one block alone.

    Both terms go through the fused softmax-cross-entropy kernel: the teacher's entropy
    is a constant, so the KL gradient is the soft-target cross-entropy gradient. T^2
    keeps the soft gradient's size independent of T.
    """

    def __init__(self, alpha=0.5, temperature=1.0):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], found {alpha!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, found {temperature!r}")
        self.alpha, self.temperature = alpha, temperature

    def forward(self, x, targets):
        if isinstance(targets, tuple):
            labels, soft = targets
        else:
            labels, soft = (targets, None) if targets.ndim == 1 else (None, targets)
        n, classes = x.shape
        hard_rows = 0 if labels is None else len(labels)
        soft_rows = 0 if soft is None else len(soft)
        if hard_rows + soft_rows != n and not hard_rows == soft_rows == n:
            raise ValueError(
                f"distillation targets cover {hard_rows} labeled and {soft_rows} "
                f"soft rows of a batch of {n}: they must split it or both cover it"
            )
        self.grad = self.buffer("grad", x.shape)
        a, t = self.alpha, self.temperature
        value = 0.0
        if soft_rows:
            rows = slice(n - soft_rows, n)
            ce = self.ops.softmax_xent(x[rows], soft, self.grad[rows], t, (1 - a) * t * t)
            entropy = -float((soft * self.xp.log(self.xp.maximum(soft, 1e-30))).sum()) / soft_rows
            value += (1 - a) * t * t * (ce - entropy)
        if hard_rows:
            rows = slice(0, hard_rows)
            overlap = hard_rows + soft_rows > n
            out = self.buffer("hard", (hard_rows, classes)) if overlap else self.grad[rows]
            value += a * self.ops.softmax_xent(x[rows], labels, out, 1.0, a)
            if overlap:
                self.grad[rows] += out
        return float(value)

    def backward(self):
        return self.grad


def soft_outputs(model, x, temperature, out, batch_size=2048):
    """``out[:] = softmax(model(x) / T)`` in evaluation mode, for host inputs and a host
    float32 ``out`` (what a teacher averages and MPI moves)."""
    backend = model.backend
    probs = model.xp.empty((min(batch_size, max(len(x), 1)), model.out_features), model.dtype)
    for lo in range(0, len(x), batch_size):
        xb = backend.asarray(np.ascontiguousarray(x[lo : lo + batch_size], model.dtype))
        part = probs[: len(xb)]
        backend.softmax(model.forward(xb, train=False), part, temperature)
        out[lo : lo + len(xb)] = backend.to_host(part)
    return out


class _Cycle:
    """Indices of shuffled passes over ``n`` rows, ``k`` at a time (a take may span passes)."""

    def __init__(self, n, rng):
        self.n, self.rng = n, rng
        self.order, self.position = rng.permutation(n), 0

    def take(self, k):
        parts = []
        while k:
            if self.position == self.n:
                self.order, self.position = self.rng.permutation(self.n), 0
            m = min(k, self.n - self.position)
            parts.append(self.order[self.position : self.position + m])
            self.position, k = self.position + m, k - m
        return np.concatenate(parts)


class DistillBatches:
    """Batches of distillation rows ``x`` with their ``teacher`` outputs, plus labels:
    ``labels`` of the same rows, or a separate ``labeled = (x, y)`` set that fills the
    first half of every batch (unlabeled shared data next to the group's own shard)."""

    def __init__(self, backend, x, teacher, batch_size, rng, labels=None, labeled=None):
        self.backend, self.x, self.teacher, self.labels = backend, x, teacher, labels
        self.labeled = labeled
        self.hard = batch_size // 2 if labeled is not None else 0
        self.soft = batch_size - self.hard
        self.rows = _Cycle(len(x), rng)
        self.own = _Cycle(len(labeled[1]), rng) if labeled is not None else None

    def next(self):
        idx = self.rows.take(self.soft)
        soft = self.teacher[idx]
        if self.labels is not None:
            x, labels = self.x[idx], self.labels[idx]
        elif self.labeled is not None:
            own = self.own.take(self.hard)
            x = np.concatenate([self.labeled[0][own], self.x[idx]])
            labels = self.labeled[1][own]
        else:
            x, labels = self.x[idx], None
        put = self.backend.asarray
        return put(x), (None if labels is None else put(labels), put(soft))


def distill(model, optimizer, loss, batches, steps, lr):
    """Train ``model`` on ``loss`` for ``steps`` steps, the learning rate annealed from
    ``lr`` to 0 (cosine) so the compressed model ends settled; returns the first and last
    loss. The model's own loss is swapped out only for the duration."""
    schedule = Schedule("cosine", lr, steps)
    first = last = math.nan
    with model.using_loss(loss):
        for step in range(steps):
            x, targets = batches.next()
            last = model.train_step(x, targets)
            if not math.isfinite(last):
                raise DivergenceError(
                    f"distillation diverged at step {step}: loss is {last}; "
                    f"first non-finite value: {model.first_nonfinite()} "
                    f"(lower parallel.ensemble.distill_lr)"
                )
            first = last if step == 0 else first
            optimizer.step(schedule(step))
    return first, last
