"""2 ranks, local_steps = 1: model averaging after every step must equal
single-process SGD on the two ranks' batches concatenated (rank 0 checks)."""

import sys

import numpy as np
from mpi4py import MPI

from horn.backends import get_backend
from horn.barriers.average import AverageSync
from horn.batches import BatchStream
from horn.bsp import Peer
from horn.data import load_dataset
from horn.jobs import load_job
from horn.model import Model
from horn.optim import make_optimizer
from horn.parallel import derive_seed
from horn.runner import build, shard
from horn.schedules import make_schedule

job = load_job(sys.argv[1], ["parallel.local_steps=1", "train.backend='numpy'"])
peer = Peer.create(MPI.COMM_WORLD, None, 1)
data = load_dataset(job.data)
backend = get_backend("numpy")
local = shard(data, peer, job.train.seed)
model, opt, schedule, stream, steps = build(job, local, backend, peer.group, peer.worker)
sync = AverageSync(peer, model, opt, 1, steps)
for step in range(steps):
    xb, yb = stream.next()
    model.train_step(xb, yb)
    opt.step(schedule(step))
    sync.after_step(step)

if peer.rank == 0:
    # the same batches, concatenated, on one model with the summed-batch mean loss
    streams = []
    for g in range(peer.size):
        part = shard(data, type("P", (), {"groups": peer.size, "group": g})(), job.train.seed)
        streams.append(
            BatchStream(
                part.x_train,
                part.y_train,
                job.train.batch_size,
                derive_seed(job.train.seed, g, 0),
                backend,
            )
        )
    ref = Model.from_spec(model.spec(), backend, seed=job.train.seed)
    ref_opt = make_optimizer(job.train, ref)
    ref_schedule = make_schedule(job.train, steps)
    for step in range(steps):
        batches = [s.next() for s in streams]
        x = np.concatenate([b[0] for b in batches])
        y = np.concatenate([b[1] for b in batches])
        ref.train_step(x, y)
        ref_opt.step(ref_schedule(step))
    diff = float(np.abs(ref.params - model.params).max())
    scale = float(np.abs(ref.params).max())
    print(f"steps {steps} max abs diff {diff:.3e} (param scale {scale:.3f})", flush=True)
    assert diff < 1e-4 * scale, diff
    print("EQUIVALENT", flush=True)
