"""Learning-rate schedules: step -> lr, with an optional linear warm-up."""

import math


class Schedule:
    """``kind`` is constant, step (x gamma every step_size steps) or cosine (to min_lr)."""

    def __init__(
        self, kind, lr, total_steps, warmup_steps=0, step_size=1000, gamma=0.1, min_lr=0.0
    ):
        self.kind, self.lr, self.total = kind, lr, max(1, total_steps)
        self.warmup, self.step_size, self.gamma, self.min_lr = (
            warmup_steps,
            step_size,
            gamma,
            min_lr,
        )

    def __call__(self, step):
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = step - self.warmup
        if self.kind == "step":
            return self.lr * self.gamma ** (t // self.step_size)
        if self.kind == "cosine":
            frac = min(1.0, t / max(1, self.total - self.warmup))
            return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
        return self.lr


def make_schedule(train, total_steps):
    return Schedule(
        train.schedule,
        train.lr,
        total_steps,
        train.warmup_steps,
        train.step_size,
        train.gamma,
        train.min_lr,
    )
