"""Overlapped gradient averaging (reduce = "gradients") on every rank, checked each step:
the bucketed Iallreduces started in backward give bit for bit what plain blocking
allreduce_means of the same buckets give, every rank holds the same parameters, and
rank 0 compares the run with single-process SGD on all ranks' batches concatenated.

    python overlap.py JOB BUCKET_MB
"""

import sys

import numpy as np
from mpi4py import MPI

from horn.backends import get_backend
from horn.barriers.gradients import GradientSync
from horn.batches import BatchStream
from horn.bsp import Peer
from horn.data import load_dataset
from horn.jobs import load_job
from horn.model import Model
from horn.optim import make_optimizer
from horn.parallel import derive_seed
from horn.runner import build, shard
from horn.schedules import make_schedule

job = load_job(sys.argv[1], ["train.backend='numpy'"])
peer = Peer.create(MPI.COMM_WORLD, None, 1)
data = load_dataset(job.data)
backend = get_backend("numpy")
local = shard(data, peer, job.train.seed)
model, opt, schedule, stream, steps = build(job, local, backend, peer.group, peer.worker)
sync = GradientSync(peer, model, float(sys.argv[2]))
plain = Model.from_spec(model.spec(), backend, seed=job.train.seed)  # no hook: the reference
k = model.trainable_size
assert len(sync.buckets) > 1, sync.buckets  # the test is about several buckets
for step in range(steps):
    xb, yb = stream.next()
    plain.params[...] = model.params
    plain.train_step(xb, yb)
    for lo, hi in sync.buckets:
        peer.allreduce_mean(plain.grads[lo:hi])
    model.train_step(xb, yb)
    assert np.array_equal(model.grads[:k], plain.grads[:k]), f"step {step}: buckets differ"
    opt.step(schedule(step))
    sync.after_step(step)
    peer.verify_same("world", model.params.tobytes(), f"parameters after step {step}")
print(f"rank {peer.rank}: {steps} steps, {len(sync.buckets)} buckets, bit-identical", flush=True)

if peer.rank == 0:
    parts = [
        shard(data, type("P", (), {"groups": peer.size, "group": g})(), job.train.seed)
        for g in range(peer.size)
    ]
    streams = [
        BatchStream(
            p.x_train, p.y_train, job.train.batch_size, derive_seed(job.train.seed, g, 0), backend
        )
        for g, p in enumerate(parts)
    ]
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
    print(f"max abs diff from the concatenated batch {diff:.3e} (scale {scale:.3f})", flush=True)
    assert diff < 1e-4 * scale, diff
    print("EQUIVALENT", flush=True)
