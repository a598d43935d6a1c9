"""Parallel training pieces on a BSP ``Peer``: seeds, data shards, barriers.

Single-process training is the world of one (group 0, worker 0) of the same
code, so the two cannot drift apart.
"""

import os

import numpy as np

from horn.layer import mix64


def derive_seed(seed, group, worker):
    """A per-rank seed from the job seed: reproducible for a fixed layout."""
    return mix64(mix64(seed, group + 1), worker + 1)


def shard_indices(n, groups, group, seed):
    """Group ``group``'s disjoint share of ``n`` training samples (all of them for one group)."""
    if groups == 1:
        return np.arange(n)
    order = np.random.default_rng(derive_seed(seed, groups, 0)).permutation(n)
    return np.sort(np.array_split(order, groups)[group])


def dirichlet_shard_indices(labels, groups, group, alpha, seed):
    """Group ``group``'s share of a label-skewed split (Hsu et al., 2019): each group's
    class mix is drawn from Dirichlet(alpha) and filled without replacement, spilling
    over to the group's next-likeliest classes when one runs out.

    Shards keep equal sizes, so every group runs the same number of steps per epoch
    and the ranks' barriers line up; small ``alpha`` means few classes per group.
    """
    labels = np.asarray(labels)
    if groups == 1:
        return np.arange(len(labels))
    rng = np.random.default_rng(derive_seed(seed, groups, 1))
    classes = int(labels.max()) + 1
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(classes)]
    room = np.array([len(p) for p in pools])
    start = np.zeros(classes, np.int64)
    for g, size in enumerate(len(s) for s in np.array_split(np.arange(len(labels)), groups)):
        mix = rng.dirichlet(np.full(classes, alpha))
        counts = np.zeros(classes, np.int64)
        while counts.sum() < size:  # each pass fills a class or finishes: <= classes passes
            open_ = room - counts > 0
            weights = mix * open_ if (mix * open_).sum() > 0 else open_.astype(float)
            draw = rng.multinomial(size - counts.sum(), weights / weights.sum())
            counts += np.minimum(draw, room - counts)
        if g == group:
            return np.sort(
                np.concatenate([pools[c][start[c] : start[c] + counts[c]] for c in range(classes)])
            )
        start += counts
        room -= counts


def launched_by_mpirun():
    """True when this process is a rank of an mpirun/mpiexec job."""
    return any(
        k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE")
    )


def local_ranks():
    """How many ranks share this host (they share its cores)."""
    for key in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        if key in os.environ:
            return int(os.environ[key])
    return 1


def create_peer(job):
    """The BSP peer for this rank, or None outside mpirun (a world of one, no MPI)."""
    if not launched_by_mpirun():
        return None
    from mpi4py import MPI

    from horn.bsp import Peer

    peer = Peer.create(
        MPI.COMM_WORLD,
        job.parallel.groups or None,
        job.parallel.workers,
        timeout_s=job.parallel.watchdog_s,
    )
    peer.verify_same("world", job.digest(), what="the resolved job")
    return peer
