"""Bulk-synchronous supersteps over MPI, in the spirit of Apache Hama's BSPPeer.

A job is ``groups x workers`` ranks. A *group* holds one model replica whose
work is split over its workers; the *cross* communicator links worker ``w`` of
every group, which is where replicas average their parameters.

Everything that moves data uses mpi4py's uppercase, buffer-based calls (no
pickling on the hot path). sync() and (unless ``guard_collectives=False``)
every collective start with a watchdog barrier, so that a dead or stuck rank
aborts the job after ``timeout_s`` instead of hanging it forever.
"""

import hashlib
import sys
import time

import numpy as np
from mpi4py import MPI

from horn.abort import set_rank_context
from horn.errors import HornError

_HEADER = 16  # per message: 8 bytes numpy dtype string + int64 element count
_ALIGN = 8  # payloads are padded so received arrays stay 8-byte aligned
_TOKEN_TAG, _RELEASE_TAG = 1, 2
# Poll at full speed this long, then nap between polls so idle ranks stay cheap.
# (Yielding with sched_yield while spinning cost up to ms under CPU contention.)
_SPIN_S = 0.01
_NAP_S = 0.0005


def derive_layout(world_size, groups, workers):
    """Resolve ``(groups, workers)``; 0 or None means "derive from the world size".

    With neither given every rank is its own group (pure data parallelism).
    """
    for key, value in (("parallel.groups", groups), ("parallel.workers", workers)):
        if value is not None and value < 0:
            raise HornError(f"{key} must be >= 0 (0 = derive from world size), found {value}")
    groups, workers = groups or None, workers or None
    if groups is None and workers is None:
        workers = 1
    if groups is None or workers is None:
        key, given = ("parallel.workers", workers) if groups is None else ("parallel.groups", groups)
        if world_size % given:
            raise HornError(f"world size {world_size} is not divisible by {key}={given}")
        other = world_size // given
        groups, workers = (other, given) if groups is None else (given, other)
    if groups * workers != world_size:
        raise HornError(
            f"world size {world_size} does not fit parallel.groups={groups} x "
            f"parallel.workers={workers} (needs {groups * workers} ranks)"
        )
    return groups, workers


class _Channel:
    """One named communicator plus a private duplicate for watchdog tokens.

    The duplicate keeps barrier tokens from ever matching user messages.
    """

    def __init__(self, name, comm, world_rank):
        self.name = name
        self.comm = comm
        self.control = comm.Dup()
        self.world_ranks = comm.allgather(world_rank)  # setup only, pickling is fine
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()


class Peer:
    """One rank's view of the job: layout, messaging, collectives, accounting."""

    def __init__(self, world, groups, workers, timeout_s=300.0, guard_collectives=True):
        self.world = world
        self.rank = world.Get_rank()
        self.size = world.Get_size()
        self.groups, self.workers = groups, workers
        self.group, self.worker = divmod(self.rank, workers)
        self.group_comm = world.Split(color=self.group, key=self.worker)
        self.cross_comm = world.Split(color=self.worker, key=self.group)
        self.timeout_s = timeout_s
        self.guard_collectives = guard_collectives
        self._channels = {
            "world": _Channel("world", world, self.rank),
            "group": _Channel("group", self.group_comm, self.rank),
            "cross": _Channel("cross", self.cross_comm, self.rank),
        }
        self._outbox = [[] for _ in range(self.size)]
        self._inbox = [[] for _ in range(self.size)]
        self.superstep = 0
        self.superstep_records = []
        self.bytes_sent_total = 0
        self._step_start = time.perf_counter()
        self._step_comm_s = 0.0
        self._step_bytes = 0

    @classmethod
    def create(cls, world_comm, groups, workers, timeout_s=300.0, guard_collectives=True):
        """Build the peer; ``groups``/``workers`` may be 0/None (see derive_layout).

        ``timeout_s`` bounds every watchdog barrier. ``guard_collectives=False``
        drops the barrier before each collective (sync() keeps its own), trading
        hang protection inside collectives for one less round trip.
        """
        groups, workers = derive_layout(world_comm.Get_size(), groups, workers)
        peer = cls(world_comm, groups, workers, timeout_s, guard_collectives)
        set_rank_context(peer.group, peer.worker)
        return peer

    def layout_text(self):
        """One line for rank 0 to print so users can check the layout they asked for."""
        w = self.workers
        spans = [f"group {g} = ranks {g * w}" + (f"-{g * w + w - 1}" if w > 1 else "")
                 for g in range(min(self.groups, 4))]
        more = ", ..." if self.groups > 4 else ""
        return (f"{self.size} ranks as {self.groups} group(s) x {w} worker(s): "
                f"{', '.join(spans)}{more}")

    def close(self):
        """Free the communicators this peer created (not the world)."""
        for channel in self._channels.values():
            channel.control.Free()
        self.group_comm.Free()
        self.cross_comm.Free()

    # -- messaging -----------------------------------------------------------

    def send(self, peer_rank, array):
        """Queue a copy of ``array`` (flattened, dtype kept) for world rank ``peer_rank``.

        It is delivered by the next ``sync()`` and readable only after it.
        """
        if not 0 <= peer_rank < self.size:
            raise ValueError(f"peer rank {peer_rank} is outside 0..{self.size - 1}")
        data = np.array(array, copy=True, order="C").reshape(-1)
        if data.dtype.hasobject or data.dtype.fields is not None:
            raise ValueError(f"cannot send arrays of dtype {data.dtype} (plain numeric/str only)")
        if len(data.dtype.str) > 8:
            raise ValueError(f"dtype {data.dtype.str!r} is too long for the message header")
        self._outbox[peer_rank].append(data)

    def messages(self):
        """Messages delivered by the last sync, as ``(source, array)`` in source then send order."""
        return [(src, arr) for src, box in enumerate(self._inbox) for arr in box]

    def received(self, from_rank):
        """Arrays world rank ``from_rank`` sent in the previous superstep, in send order."""
        return list(self._inbox[from_rank])

    def sync(self):
        """End the superstep: exchange queued messages and record its accounting.

        Wire format: one ``Alltoall`` of int64 byte counts, then one ``Alltoallv``
        of a packed uint8 buffer. Bytes counted: the packed bytes (headers and
        padding included) that leave this rank, plus 8 per peer for the counts.
        """
        t0 = time.perf_counter()
        self._barrier(self._channels["world"], "sync")
        sendbuf, sendcounts = self._pack()
        recvcounts = np.empty(self.size, np.int64)
        self.world.Alltoall([sendcounts, MPI.INT64_T], [recvcounts, MPI.INT64_T])
        recvbuf = np.empty(int(recvcounts.sum()), np.uint8)
        self.world.Alltoallv(
            [sendbuf, (sendcounts, _displs(sendcounts)), MPI.BYTE],
            [recvbuf, (recvcounts, _displs(recvcounts)), MPI.BYTE],
        )
        self._inbox = _unpack(recvbuf, recvcounts)
        sent = int(sendcounts.sum() - sendcounts[self.rank]) + 8 * (self.size - 1)
        self._account(time.perf_counter() - t0, sent)
        self._close_superstep()

    def _pack(self):
        sizes = [sum(_HEADER + _padded(a.nbytes) for a in box) for box in self._outbox]
        sendcounts = np.array(sizes, np.int64)
        sendbuf = np.zeros(int(sendcounts.sum()), np.uint8)
        offset = 0
        for box in self._outbox:
            for arr in box:
                sendbuf[offset:offset + 8] = np.frombuffer(arr.dtype.str.encode().ljust(8, b"\0"), np.uint8)
                sendbuf[offset + 8:offset + 16].view(np.int64)[0] = arr.size
                offset += _HEADER
                sendbuf[offset:offset + arr.nbytes] = arr.view(np.uint8)
                offset += _padded(arr.nbytes)
        self._outbox = [[] for _ in range(self.size)]
        return sendbuf, sendcounts

    def _close_superstep(self):
        now = time.perf_counter()
        total = now - self._step_start
        self.superstep_records.append({
            "superstep": self.superstep,
            "compute_s": max(total - self._step_comm_s, 0.0),
            "comm_s": self._step_comm_s,
            "bytes_sent": self._step_bytes,
        })
        self.superstep += 1
        self._step_start, self._step_comm_s, self._step_bytes = now, 0.0, 0

    def counters(self):
        """Superstep number and byte counts: checkpointed so a resumed run's records
        continue exactly where the interrupted run's stopped."""
        return {"superstep": self.superstep, "bytes_sent_total": self.bytes_sent_total,
                "step_bytes": self._step_bytes}

    def restore_counters(self, counters):
        self.superstep = counters["superstep"]
        self.bytes_sent_total = counters["bytes_sent_total"]
        self._step_bytes = counters["step_bytes"]

    def drain_records(self):
        """Return and forget the finished supersteps' records (for metrics.jsonl)."""
        records, self.superstep_records = self.superstep_records, []
        return records

    def _account(self, seconds, nbytes):
        self._step_comm_s += seconds
        self._step_bytes += nbytes
        self.bytes_sent_total += nbytes

    # -- collectives ---------------------------------------------------------
    # Bytes are this rank's share under the usual bandwidth-optimal algorithms,
    # not what Open MPI happened to pick, so numbers compare across runs.

    def allreduce_sum(self, buf, comm="world"):
        """In-place sum over ``comm``. Ring cost model: sends 2*(p-1)/p * nbytes."""
        self._allreduce(buf, comm, "allreduce_sum")

    def allreduce_mean(self, buf, comm="world"):
        """In-place mean over ``comm`` (float buffers). Cost as allreduce_sum."""
        if buf.dtype.kind not in "fc":
            raise TypeError(f"allreduce_mean needs a float buffer, got {buf.dtype}")
        self._allreduce(buf, comm, "allreduce_mean")
        size = self._channels[comm].size
        if size > 1:
            buf /= size

    def _allreduce(self, buf, comm, name):
        channel = self._channels[comm]
        t0 = time.perf_counter()
        self._guard(channel, name)
        channel.comm.Allreduce(MPI.IN_PLACE, buf, MPI.SUM)
        p = channel.size
        self._account(time.perf_counter() - t0, 2 * (p - 1) * buf.nbytes // p)

    def allgather(self, sendbuf, recvbuf, comm="world"):
        """Gather equal blocks from every rank. Sends (p-1) * own block bytes."""
        channel = self._channels[comm]
        t0 = time.perf_counter()
        self._guard(channel, "allgather")
        channel.comm.Allgather(sendbuf, recvbuf)
        self._account(time.perf_counter() - t0, (channel.size - 1) * sendbuf.nbytes)

    def allgatherv(self, sendbuf, recvbuf, counts, comm="world"):
        """Gather blocks of ``counts[i]`` elements. Sends (p-1) * own block bytes.

        (Ring allgatherv: summed over ranks this equals the ring's total traffic.)
        """
        channel = self._channels[comm]
        if sendbuf.size != counts[channel.rank]:
            raise ValueError(f"sendbuf has {sendbuf.size} elements but counts[{channel.rank}] "
                             f"is {counts[channel.rank]}")
        t0 = time.perf_counter()
        self._guard(channel, "allgatherv")
        channel.comm.Allgatherv(sendbuf, [recvbuf, list(counts)])
        self._account(time.perf_counter() - t0, (channel.size - 1) * sendbuf.nbytes)

    def bcast(self, buf, root, comm="world"):
        """Broadcast in place from ``root``. Flat-tree model: root sends (p-1)*nbytes."""
        channel = self._channels[comm]
        t0 = time.perf_counter()
        self._guard(channel, "bcast")
        channel.comm.Bcast(buf, root)
        sent = (channel.size - 1) * buf.nbytes if channel.rank == root else 0
        self._account(time.perf_counter() - t0, sent)

    def verify_same(self, comm, text_or_bytes, what="job"):
        """Raise HornError on every rank unless all ranks of ``comm`` hold the same value.

        Guards against ranks silently running different job files or code.
        One 2-element MIN Allreduce of (h, -h) compares the hashes; only on a
        mismatch are the hashes gathered to name the odd ranks.
        """
        channel = self._channels[comm]
        data = text_or_bytes.encode() if isinstance(text_or_bytes, str) else bytes(text_or_bytes)
        h = int.from_bytes(hashlib.sha256(data).digest()[:8], "little") >> 1  # -h cannot overflow
        t0 = time.perf_counter()
        self._barrier(channel, "verify_same")
        both = np.array([h, -h], np.int64)
        channel.comm.Allreduce(MPI.IN_PLACE, both, MPI.MIN)
        same = both[0] == -both[1]
        if not same:
            hashes = np.empty(channel.size, np.int64)
            channel.comm.Allgather(np.array([h], np.int64), hashes)
        self._account(time.perf_counter() - t0, 0)
        if not same:
            odd = [channel.world_ranks[i] for i in range(channel.size) if hashes[i] != hashes[0]]
            raise HornError(f"{what} differs between ranks: rank(s) {', '.join(map(str, odd))} "
                            f"disagree with rank {channel.world_ranks[0]}")

    # -- watchdog ------------------------------------------------------------

    def barrier(self, name, comm="world"):
        """Explicit watchdog barrier; aborts the job if others do not arrive in time."""
        t0 = time.perf_counter()
        self._barrier(self._channels[comm], name)
        self._account(time.perf_counter() - t0, 0)

    def _guard(self, channel, name):
        if self.guard_collectives:
            self._barrier(channel, name)

    def _barrier(self, channel, name):
        """Token barrier: everyone reports to the channel's rank 0, which releases all.

        Unlike a plain barrier, the coordinator knows who never arrived and can
        name them. Other ranks wait a little longer than the coordinator so
        that its more useful message is the one printed before the abort.
        """
        if channel.size == 1:
            return
        token = np.zeros(1, np.int8)
        if channel.rank == 0:
            inbox = np.zeros(channel.size, np.int8)
            arrivals = [channel.control.Irecv(inbox[i:i + 1], i, _TOKEN_TAG)
                        for i in range(1, channel.size)]
            self._wait(arrivals, channel, name, self.timeout_s)
            self._wait([channel.control.Isend(token, i, _RELEASE_TAG) for i in range(1, channel.size)],
                       channel, name, self.timeout_s)
        else:
            release = np.zeros(1, np.int8)
            requests = [channel.control.Isend(token, 0, _TOKEN_TAG),
                        channel.control.Irecv(release, 0, _RELEASE_TAG)]
            self._wait(requests, channel, name, self.timeout_s + min(5.0, 0.5 * self.timeout_s))

    def _wait(self, requests, channel, name, timeout_s):
        start = time.monotonic()
        while not MPI.Request.Testall(requests):
            waited = time.monotonic() - start
            if waited > timeout_s:
                self._timed_out(requests, channel, name, waited)
            if waited > _SPIN_S:
                time.sleep(_NAP_S)

    def _timed_out(self, requests, channel, name, waited):
        if channel.rank == 0:
            missing = [channel.world_ranks[i + 1] for i, r in enumerate(requests) if not r.Test()]
            who = f"rank(s) {', '.join(map(str, missing))} never arrived"
        else:
            who = f"the {channel.name} coordinator rank {channel.world_ranks[0]} never released it"
        print(f"horn: rank {self.rank}: barrier '{name}' (superstep {self.superstep}, "
              f"{channel.name}) timed out after {waited:.1f} s waiting for the other ranks; {who}",
              file=sys.stderr, flush=True)
        self.world.Abort(1)


def _padded(nbytes):
    return -(-nbytes // _ALIGN) * _ALIGN


def _displs(counts):
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)


def _unpack(recvbuf, recvcounts):
    """Split the received bytes back into per-source lists of arrays (views, no copy)."""
    inbox, offset = [], 0
    for count in recvcounts:
        end, box = offset + int(count), []
        while offset < end:
            dtype = np.dtype(recvbuf[offset:offset + 8].tobytes().rstrip(b"\0").decode())
            size = int(recvbuf[offset + 8:offset + 16].view(np.int64)[0])
            offset += _HEADER
            box.append(recvbuf[offset:offset + size * dtype.itemsize].view(dtype))
            offset += _padded(size * dtype.itemsize)
        inbox.append(box)
    return inbox
