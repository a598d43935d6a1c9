"""The reference of the synchronous data-parallel programs (dp_equivalence.py,
overlap.py): one process training one model with SGD on every rank's batches of each
step concatenated, which averaging every step must equal."""

import numpy as np

from horn.batches import BatchStream
from horn.model import Model
from horn.optim import make_optimizer
from horn.parallel import derive_seed
from horn.runner import shard
from horn.schedules import make_schedule


def check_equals_concatenated_sgd(job, data, ranks, model, steps, backend):
    """Assert ``model`` (trained ``steps`` steps on ``ranks`` ranks) holds the reference's
    parameters to 1e-4 of their scale; print ``EQUIVALENT``."""
    streams = []
    for g in range(ranks):
        part = shard(data, type("P", (), {"groups": ranks, "group": g})(), job.train.seed)
        seed = derive_seed(job.train.seed, g, 0)
        streams.append(BatchStream(part.x_train, part.y_train, job.train.batch_size, seed, backend))
    ref = Model.from_spec(model.spec(), backend, seed=job.train.seed)
    ref_opt = make_optimizer(job.train, ref)
    ref_schedule = make_schedule(job.train, steps)
    for step in range(steps):
        batches = [s.next() for s in streams]
        ref.train_step(
            np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
        )
        ref_opt.step(ref_schedule(step))
    diff = float(np.abs(ref.params - model.params).max())
    scale = float(np.abs(ref.params).max())
    print(f"steps {steps} max abs diff {diff:.3e} (param scale {scale:.3f})", flush=True)
    assert diff < 1e-4 * scale, diff
    print("EQUIVALENT", flush=True)
