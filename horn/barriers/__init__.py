"""Barrier strategies: what happens between local steps.

``Sync`` is the interface (``horn.barriers.base``); one module per strategy;
:func:`make_sync` picks one from the job, the way ChainerMN's factory picks a
communicator by name.
"""

from horn.barriers.base import PeerSync, Sync
from horn.errors import HornError


def make_sync(job, peer, model, optimizer, total_steps, make_optimizer, data=None, local=None):
    """The strategy for this job and layout (``Sync()`` for a world of one). The data set
    and this group's shard (``data``, ``local``) are for barrier = "ensemble"."""
    if peer is None:
        return Sync()
    p = job.parallel
    inner = None
    if peer.workers > 1:
        from horn.barriers.subnet import SubnetSync
        if p.partition == "weighted" and len(p.partition_weights) != peer.workers:
            raise HornError(f"{job.source}: parallel.partition_weights has "
                            f"{len(p.partition_weights)} entries; the layout has "
                            f"{peer.workers} workers per group")
        inner = SubnetSync(peer, model, optimizer, make_optimizer, job, total_steps)
    if p.barrier == "ensemble":
        from horn.barriers.ensemble import EnsembleSync
        return EnsembleSync(peer, model, make_optimizer, job, total_steps, data, local, inner)
    if inner is not None:
        return inner
    if p.barrier == "none":
        return PeerSync(peer)
    from horn.barriers.average import AverageSync
    return AverageSync(peer, model, optimizer, p.local_steps, total_steps, p.average_momentum)


__all__ = ["PeerSync", "Sync", "make_sync"]
