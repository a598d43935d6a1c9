"""Hierarchical model averaging: often inside a host, rarely across hosts (PyTorch's
``HierarchicalModelAverager``; ``[parallel.average] across_every``).

The layout is MPI's: ``Split_type(COMM_TYPE_SHARED)`` puts the ranks that share memory
in one ``host`` channel, and each host's first rank joins the ``leaders`` channel
(``Peer.split_hosts``, which refuses a split that disagrees with the host names).

- Inside a host: an Allreduce-mean over ``host``; no byte leaves the host.
- Across hosts (the world mean): an Allreduce-**sum** over ``host``, then over
  ``leaders``, a Bcast from the leader over ``host``, and a division by the world
  size. Sums, not means, so hosts holding unequal rank counts weigh by their ranks:
  the result is the true world mean, identical on every rank. Inter-host bytes
  (ring model): each leader sends ``2 (H - 1) / H * 4 P`` for H hosts and the other
  ranks none, against flat averaging's ``2 (p - 1) / p * 4 P`` from every rank whose
  ring successor is on another host (on 2 hosts x 2 ranks: 4 P per leader against
  6 P per rank crossing, 8 P against 12 P in all).
"""


class HostMeans:
    """Means over this rank's host and over the world through the host leaders."""

    def __init__(self, peer):
        self.peer = peer
        self.leader = peer.split_hosts()

    def host(self, buf):
        """In place: the mean over the ranks of this host."""
        self.peer.allreduce_mean(buf, "host")

    def world(self, buf):
        """In place: the mean over every rank, crossing hosts only between leaders."""
        peer = self.peer
        peer.allreduce_sum(buf, "host")
        if self.leader:
            peer.allreduce_sum(buf, "leaders")
        peer.bcast(buf, 0, "host")
        buf /= peer.size
