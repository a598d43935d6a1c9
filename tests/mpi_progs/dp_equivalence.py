"""2 ranks, local_steps = 1: model averaging after every step must equal
single-process SGD on the two ranks' batches concatenated (rank 0 checks)."""

import sys

from concatenated import check_equals_concatenated_sgd
from mpi4py import MPI

from horn.backends import get_backend
from horn.barriers.average import AverageSync
from horn.bsp import Peer
from horn.data import load_dataset
from horn.jobs import load_job
from horn.runner import build, shard

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
    check_equals_concatenated_sgd(job, data, peer.size, model, steps, backend)
