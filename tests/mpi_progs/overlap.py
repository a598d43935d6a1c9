"""Overlapped gradient averaging (reduce = "gradients") on every rank, checked each step:
the bucketed Iallreduces started in backward give bit for bit what plain blocking
allreduce_means of the same buckets give, every rank holds the same parameters, and
rank 0 compares the run with single-process SGD on all ranks' batches concatenated.

    python overlap.py JOB BUCKET_MB
"""

import sys

import numpy as np
from concatenated import check_equals_concatenated_sgd
from mpi4py import MPI

from horn.backends import get_backend
from horn.barriers.gradients import GradientSync
from horn.bsp import Peer
from horn.data import load_dataset
from horn.jobs import load_job
from horn.model import Model
from horn.runner import build, shard

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
    check_equals_concatenated_sgd(job, data, peer.size, model, steps, backend)
