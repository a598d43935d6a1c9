"""Parallel training pieces on a BSP ``Peer``: seeds, data shards, barriers.

Single-process training is the world of one (group 0, worker 0) of the same
code, so the two cannot drift apart.
"""

import os

import numpy as np

from horn.errors import HornError
from horn.layer import mix64
from horn.trainer import LocalSync


def derive_seed(seed, group, worker):
    """A per-rank seed from the job seed: reproducible for a fixed layout."""
    return mix64(mix64(seed, group + 1), worker + 1)


def shard_indices(n, groups, group, seed):
    """Group ``group``'s disjoint share of ``n`` training samples (all of them for one group)."""
    if groups == 1:
        return np.arange(n)
    order = np.random.default_rng(derive_seed(seed, groups, 0)).permutation(n)
    return np.sort(np.array_split(order, groups)[group])


def launched_by_mpirun():
    """True when this process is a rank of an mpirun/mpiexec job."""
    return any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK",
                                         "PMI_SIZE"))


def local_ranks():
    """How many ranks share this host (they share its cores)."""
    for key in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        if key in os.environ:
            return int(os.environ[key])
    return 1


class AverageSync(LocalSync):
    """Model averaging (MA-DNN / local SGD): every ``local_steps`` steps one in-place
    Allreduce-mean of the flat parameter buffer (and optionally the optimizer state)."""

    def __init__(self, peer, model, optimizer, local_steps, total_steps, average_state=False):
        self.peer, self.model, self.optimizer = peer, model, optimizer
        self.local_steps, self.total_steps = local_steps, total_steps
        self.average_state = average_state
        self.synced_at = 0  # steps done when the replicas were last identical
        self.steps_done = 0
        self._scratch = None

    def after_step(self, step):
        self.steps_done = step + 1
        if self.steps_done % self.local_steps == 0 or self.steps_done == self.total_steps:
            self.model.backend.synchronize()
            self.peer.allreduce_mean(self.model.params, "world")
            if self.average_state:
                for buf in self.optimizer.state().values():
                    self.peer.allreduce_mean(buf, "world")
            self.peer.sync()
            self.synced_at = self.steps_done

    def eval_model(self, model):
        """The average of the replicas: the model itself right after a barrier, else an
        averaged copy (training goes on from the local replicas unchanged)."""
        if self.synced_at == self.steps_done:
            return model
        if self._scratch is None:
            from horn.model import Model
            self._scratch = Model.from_spec(model.spec(), model.backend, dtype=model.dtype)
        self._scratch.params[...] = model.params
        self.peer.allreduce_mean(self._scratch.params, "world")
        return self._scratch

    def reduce_stats(self, values):
        stats = np.asarray(values, dtype=np.float64)
        self.peer.allreduce_sum(stats, "world")
        return stats.tolist()

    def records(self):
        return self.peer.drain_records()


def make_sync(job, peer, model, optimizer, total_steps):
    """The barrier strategy a job asks for."""
    if peer is not None and peer.workers > 1:
        raise HornError(f"{job.source}: parallel.workers = {peer.workers}: sub-network groups "
                        f"are not available in this version; use workers = 1")
    if peer is None or job.parallel.barrier == "none":
        return LocalSync()
    return AverageSync(peer, model, optimizer, job.parallel.local_steps, total_steps,
                       job.parallel.average_momentum)


def create_peer(job):
    """The BSP peer for this rank, or None outside mpirun (a world of one, no MPI)."""
    if not launched_by_mpirun():
        return None
    from mpi4py import MPI

    from horn.bsp import Peer

    peer = Peer.create(MPI.COMM_WORLD, job.parallel.groups or None, job.parallel.workers,
                       timeout_s=job.parallel.watchdog_s)
    peer.verify_same("world", job.digest(), what="the resolved job")
    return peer
