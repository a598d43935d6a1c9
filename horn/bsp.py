"""Bulk-synchronous supersteps over MPI, in the spirit of Apache Hama's BSPPeer.

A job is ``groups x workers`` ranks. A *group* holds one model replica whose
work is split over its workers; the *cross* communicator links worker ``w`` of
every group, which is where replicas average their parameters.

Everything that moves data uses mpi4py's uppercase, buffer-based calls (no
pickling on the hot path). Every exchange -- sync(), each collective, explicit
barriers -- is a *non-blocking* MPI call polled under one watchdog deadline
(``timeout_s``), so a rank that dies, stops or is cut off at any moment, before
or in the middle of a transfer, aborts the job instead of hanging it. Only after
a timeout does the watchdog spend messages: a roll call on a private control
communicator names the ranks (and their hosts) that no longer answer.
"""

import hashlib
import os
import time

import numpy as np

# libnbc's default Iallreduce for 7.4 MB on 2 ranks took 2.2x the blocking Allreduce
# (6.7 vs 3.1 ms shared memory, 9.5 vs 6.1 ms TCP loopback); its ring is 1.00x there
# (0.94x on 4 ranks), and across 2 simulated hosts at 1 Gbit/s 63 ms against
# Rabenseifner's 127 (bench/cluster_step.py). Set before MPI_Init; a value from
# mpirun's --mca or the environment wins.
os.environ.setdefault("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1")

from mpi4py import MPI  # noqa: E402  (after the MCA default above)

from horn.abort import abort_job, set_rank_context
from horn.errors import HornError
from horn.launch import describe_ranks, report_start

_HEADER = 16  # per message: 8 bytes numpy dtype string + int64 element count
_ALIGN = 8  # payloads are padded so received arrays stay 8-byte aligned
_PING_TAG, _PONG_TAG = 1, 2  # roll call after a timeout, on the world's control communicator
_PONG_BYTES = 96  # an answer: where the answering rank is waiting, as text
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
        key, given = (
            ("parallel.workers", workers) if groups is None else ("parallel.groups", groups)
        )
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
    """One named communicator, the world ranks of its members and which of them live
    on another host than this rank (what its bytes to them cost across hosts)."""

    def __init__(self, name, comm, world_rank, hosts):
        self.name = name
        self.comm = comm
        self.world_ranks = comm.allgather(world_rank)  # setup only, pickling is fine
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.remote = np.array([hosts[r] != hosts[world_rank] for r in self.world_ranks])

    def ring_across(self, nbytes):
        """A ring collective's ``nbytes`` all go to this rank's successor on the ring:
        they cross hosts when the successor lives on another host."""
        return nbytes if self.remote[(self.rank + 1) % self.size] else 0


class Peer:
    """One rank's view of the job: layout, messaging, collectives, accounting."""

    def __init__(self, world, groups, workers, timeout_s=300.0):
        self.world = world
        self.rank = world.Get_rank()
        self.size = world.Get_size()
        self.groups, self.workers = groups, workers
        self.group, self.worker = divmod(self.rank, workers)
        self.group_comm = world.Split(color=self.group, key=self.worker)
        self.cross_comm = world.Split(color=self.worker, key=self.group)
        self.timeout_s = timeout_s
        self.control = world.Dup()  # roll calls only: never matches a user message
        self.hosts = world.allgather(MPI.Get_processor_name())  # setup only: pickling is fine
        self._pongs = []  # answers in flight (only after some rank's watchdog fired)
        self.multi_host = len(set(self.hosts)) > 1
        self._channels = {
            name: _Channel(name, comm, self.rank, self.hosts)
            for name, comm in (
                ("world", world),
                ("group", self.group_comm),
                ("cross", self.cross_comm),
            )
        }
        self._host_comms = []  # split_hosts()'s, freed by close()
        self._outbox = [[] for _ in range(self.size)]
        self._inbox = [[] for _ in range(self.size)]
        self.superstep = 0
        self.superstep_records = []
        self.bytes_sent_total = 0
        self.bytes_across_total = 0  # of which crossed to another host
        self._step_start = time.perf_counter()
        self._step_comm_s = 0.0
        self._step_bytes = self._step_across = 0

    @classmethod
    def create(cls, world_comm, groups, workers, timeout_s=300.0):
        """Build the peer; ``groups``/``workers`` may be 0/None (see derive_layout).

        ``timeout_s`` bounds every exchange, from entry to completion.
        """
        groups, workers = derive_layout(world_comm.Get_size(), groups, workers)
        peer = cls(world_comm, groups, workers, timeout_s)
        set_rank_context(peer.group, peer.worker)
        report_start(peer.rank, peer.size, peer.hosts[peer.rank])
        return peer

    def comm_size(self, comm):
        """How many ranks ``comm`` ("world", "group" or "cross") has."""
        return self._channels[comm].size

    def layout_text(self):
        """One line for rank 0 to print so users can check the layout they asked for."""
        w = self.workers
        spans = [
            f"group {g} = ranks {g * w}" + (f"-{g * w + w - 1}" if w > 1 else "")
            for g in range(min(self.groups, 4))
        ]
        more = ", ..." if self.groups > 4 else ""
        return (
            f"{self.size} ranks as {self.groups} group(s) x {w} worker(s): {', '.join(spans)}{more}"
        )

    def split_hosts(self):
        """Add the channels ``host`` (the ranks that share this rank's memory, from
        ``Split_type(COMM_TYPE_SHARED)``) and, on each host's first rank, ``leaders``
        (one rank per host); True on a leader. Collective over the world.

        The shared-memory split must agree with the ranks' host names (what the
        hostfile placed where, and what the inter-host byte counts go by): if it does
        not, every rank raises the same HornError.
        """
        host = self.world.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        first = self.world.allgather(host.allreduce(self.rank, MPI.MIN))  # setup only
        leader = first[self.rank] == self.rank
        leaders = self.world.Split(0 if leader else MPI.UNDEFINED, key=self.rank)
        self._host_comms += [c for c in (host, leaders) if c != MPI.COMM_NULL]
        by_memory = [first.index(first[r]) for r in range(self.size)]
        by_name = [self.hosts.index(self.hosts[r]) for r in range(self.size)]
        if by_memory != by_name:
            odd = next(r for r in range(self.size) if by_memory[r] != by_name[r])
            raise HornError(
                f"the ranks that share memory (MPI Split_type COMM_TYPE_SHARED) differ from "
                f"the ranks' host names: rank {odd} shares memory with ranks "
                f"{[r for r in range(self.size) if first[r] == first[odd]]}, host "
                f"{self.hosts[odd]!r} holds ranks "
                f"{[r for r in range(self.size) if self.hosts[r] == self.hosts[odd]]}"
            )
        self._channels["host"] = _Channel("host", host, self.rank, self.hosts)
        if leader:
            self._channels["leaders"] = _Channel("leaders", leaders, self.rank, self.hosts)
        return leader

    def close(self):
        """Free the communicators this peer created (not the world)."""
        self.control.Free()
        self.group_comm.Free()
        self.cross_comm.Free()
        for comm in self._host_comms:
            comm.Free()

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

        Wire format: one ``Alltoall`` of an int64 triple per peer (byte count,
        this rank's compute and wait nanoseconds in the superstep so far: the
        straggler report), then one ``Alltoallv`` of a packed uint8 buffer. Bytes
        counted: the packed bytes (headers and padding included) that leave this
        rank, plus 24 per peer for the triples; inter-host: those to ranks on other
        hosts.
        """
        world = self._channels["world"]
        busy_ns = int(max(time.perf_counter() - self._step_start - self._step_comm_s, 0.0) * 1e9)
        sendbuf, sendcounts = self._pack()
        head = np.empty((self.size, 3), np.int64)
        head[:, 0], head[:, 1], head[:, 2] = sendcounts, busy_ns, int(self._step_comm_s * 1e9)
        heads = np.empty_like(head)
        self._collective(
            world,
            "sync",
            lambda c: c.Ialltoall([head, 3, MPI.INT64_T], [heads, 3, MPI.INT64_T]),
            24 * (self.size - 1),
            24 * int(world.remote.sum()),
        )
        recvcounts = np.ascontiguousarray(heads[:, 0])
        recvbuf = np.empty(int(recvcounts.sum()), np.uint8)
        self._collective(
            world,
            "sync",
            lambda c: c.Ialltoallv(
                [sendbuf, (sendcounts, _displs(sendcounts)), MPI.BYTE],
                [recvbuf, (recvcounts, _displs(recvcounts)), MPI.BYTE],
            ),
            int(sendcounts.sum() - sendcounts[self.rank]),
            int(sendcounts[world.remote].sum()),
        )
        self._inbox = _unpack(recvbuf, recvcounts)
        self._close_superstep(heads[:, 1] / 1e9, heads[:, 2] / 1e9)

    def _pack(self):
        sizes = [sum(_HEADER + _padded(a.nbytes) for a in box) for box in self._outbox]
        sendcounts = np.array(sizes, np.int64)
        sendbuf = np.zeros(int(sendcounts.sum()), np.uint8)
        offset = 0
        for box in self._outbox:
            for arr in box:
                sendbuf[offset : offset + 8] = np.frombuffer(
                    arr.dtype.str.encode().ljust(8, b"\0"), np.uint8
                )
                sendbuf[offset + 8 : offset + 16].view(np.int64)[0] = arr.size
                offset += _HEADER
                sendbuf[offset : offset + arr.nbytes] = arr.view(np.uint8)
                offset += _padded(arr.nbytes)
        self._outbox = [[] for _ in range(self.size)]
        return sendbuf, sendcounts

    def _close_superstep(self, rank_compute_s, rank_wait_s):
        """This rank's record, plus every rank's compute and wait before the sync:
        the rank that computed longest is the one the others waited for."""
        now = time.perf_counter()
        total = now - self._step_start
        slowest = int(np.argmax(rank_compute_s))
        record = {
            "kind": "superstep",
            "superstep": self.superstep,
            "compute_s": max(total - self._step_comm_s, 0.0),
            "comm_s": self._step_comm_s,
            "bytes_sent": self._step_bytes,
            "rank_compute_s": np.round(rank_compute_s, 6).tolist(),
            "rank_wait_s": np.round(rank_wait_s, 6).tolist(),
            "waited_for": {"rank": slowest, "host": self.hosts[slowest]},
        }
        if self.multi_host:
            record["bytes_sent_inter_host"] = self._step_across
        self.superstep_records.append(record)
        self.superstep += 1
        self._step_start, self._step_comm_s = now, 0.0
        self._step_bytes = self._step_across = 0

    def restart_superstep_clock(self):
        """Line the ranks up and start timing the current superstep now: called when
        training begins, so that superstep 0's compute and communication seconds leave
        out the start-up (imports, data, model, the set-up collectives, and waiting for
        the slowest rank to get there). Its bytes stay counted."""
        self.barrier("start of training")
        self._step_start, self._step_comm_s = time.perf_counter(), 0.0

    def counters(self):
        """Superstep number and byte counts: checkpointed so a resumed run's records
        continue exactly where the interrupted run's stopped."""
        return {
            "superstep": self.superstep,
            "bytes_sent_total": self.bytes_sent_total,
            "step_bytes": self._step_bytes,
            "bytes_across_total": self.bytes_across_total,
            "step_across": self._step_across,
        }

    def restore_counters(self, counters):
        self.superstep = counters["superstep"]
        self.bytes_sent_total = counters["bytes_sent_total"]
        self._step_bytes = counters["step_bytes"]
        # checkpoints from before inter-host accounting hold none
        self.bytes_across_total = counters.get("bytes_across_total", 0)
        self._step_across = counters.get("step_across", 0)

    def drain_records(self):
        """Return and forget the finished supersteps' records (for metrics.jsonl)."""
        records, self.superstep_records = self.superstep_records, []
        return records

    def _account(self, seconds, nbytes, across):
        self._step_comm_s += seconds
        self._step_bytes += nbytes
        self.bytes_sent_total += nbytes
        self._step_across += across
        self.bytes_across_total += across

    # -- collectives ---------------------------------------------------------
    # Bytes are this rank's share under the usual bandwidth-optimal algorithms,
    # not what Open MPI happened to pick, so numbers compare across runs. Those sent
    # to a rank on another host are counted again as inter-host bytes: a ring's go
    # to the rank's successor in channel order, a broadcast's to each receiver.

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
        nbytes = 2 * (channel.size - 1) * buf.nbytes // channel.size
        self._collective(
            channel,
            name,
            lambda c: c.Iallreduce(MPI.IN_PLACE, buf, MPI.SUM),
            nbytes,
            channel.ring_across(nbytes),
        )

    def start_allreduce_sum(self, buf, comm="world"):
        """Start an in-place sum over ``comm`` and return its request, accounting its
        bytes (as allreduce_sum) now: the caller overlaps it with work, calls
        :meth:`progress` now and then, and ends it (with others) in :meth:`wait_all`."""
        channel = self._channels[comm]
        t0 = time.perf_counter()
        request = channel.comm.Iallreduce(MPI.IN_PLACE, buf, MPI.SUM)
        nbytes = 2 * (channel.size - 1) * buf.nbytes // channel.size
        self._account(time.perf_counter() - t0, nbytes, channel.ring_across(nbytes))
        return request

    def progress(self, requests):
        """One cheap ``Testall`` over started requests: Open MPI's non-blocking
        collectives advance only inside MPI calls."""
        t0 = time.perf_counter()
        MPI.Request.Testall(requests)
        self._account(time.perf_counter() - t0, 0, 0)

    def wait_all(self, requests, name, comm="world"):
        """Complete started requests in one watchdog poll loop (no round trip each)."""
        t0 = time.perf_counter()
        self._wait(requests, self._channels[comm], name)
        self._account(time.perf_counter() - t0, 0, 0)

    def allgather(self, sendbuf, recvbuf, comm="world"):
        """Gather equal blocks from every rank. Sends (p-1) * own block bytes."""
        channel = self._channels[comm]
        nbytes = (channel.size - 1) * sendbuf.nbytes
        self._collective(
            channel,
            "allgather",
            lambda c: c.Iallgather(sendbuf, recvbuf),
            nbytes,
            channel.ring_across(nbytes),
        )

    def allgatherv(self, sendbuf, recvbuf, counts, comm="world", displs=None):
        """Gather blocks of ``counts[i]`` elements (at element offsets ``displs[i]``,
        packed by default). Sends (p-1) * own block bytes.

        (Ring allgatherv: summed over ranks this equals the ring's total traffic.)
        """
        channel = self._channels[comm]
        if sendbuf.size != counts[channel.rank]:
            raise ValueError(
                f"sendbuf has {sendbuf.size} elements but counts[{channel.rank}] "
                f"is {counts[channel.rank]}"
            )
        counts = list(counts)
        layout = counts if displs is None else (counts, list(displs))
        nbytes = (channel.size - 1) * sendbuf.nbytes
        self._collective(
            channel,
            "allgatherv",
            lambda c: c.Iallgatherv(sendbuf, [recvbuf, layout]),
            nbytes,
            channel.ring_across(nbytes),
        )

    def bcast(self, buf, root, comm="world"):
        """Broadcast in place from ``root``. Flat-tree model: root sends (p-1)*nbytes."""
        channel = self._channels[comm]
        sends = channel.rank == root
        self._collective(
            channel,
            "bcast",
            lambda c: c.Ibcast(buf, root),
            (channel.size - 1) * buf.nbytes if sends else 0,
            int(channel.remote.sum()) * buf.nbytes if sends else 0,
        )

    def gather_bytes(self, blob, what="gather"):
        """Every rank's ``blob`` (bytes) on world rank 0, in rank order (None elsewhere).

        Two collectives: an Igather of the sizes, then an Igatherv of the bytes.
        Counted as 0 bytes: it serves checkpoints, not training.
        """
        sizes = np.zeros(self.size, np.int64)
        self._collective(
            "world",
            what,
            lambda c: c.Igather(
                np.array([len(blob)], np.int64), sizes if self.rank == 0 else None, root=0
            ),
        )
        send = np.frombuffer(blob, np.uint8)
        recv = np.empty(int(sizes.sum()) if self.rank == 0 else 0, np.uint8)
        spec = [recv, sizes, _displs(sizes), MPI.BYTE] if self.rank == 0 else None
        self._collective("world", what, lambda c: c.Igatherv(send, spec, root=0))
        if self.rank != 0:
            return None
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        return [recv[bounds[i] : bounds[i + 1]].tobytes() for i in range(self.size)]

    def verify_same(self, comm, text_or_bytes, what="job"):
        """Raise HornError on every rank unless all ranks of ``comm`` hold the same value.

        Guards against ranks silently running different job files or code.
        One 2-element MIN Allreduce of (h, -h) compares the hashes; only on a
        mismatch are the hashes gathered to name the odd ranks.
        """
        channel = self._channels[comm]
        data = text_or_bytes.encode() if isinstance(text_or_bytes, str) else bytes(text_or_bytes)
        h = int.from_bytes(hashlib.sha256(data).digest()[:8], "little") >> 1  # -h cannot overflow
        both = np.array([h, -h], np.int64)
        self._collective(
            channel, "verify_same", lambda c: c.Iallreduce(MPI.IN_PLACE, both, MPI.MIN)
        )
        same = both[0] == -both[1]
        if not same:
            hashes = np.empty(channel.size, np.int64)
            self._collective(
                channel, "verify_same", lambda c: c.Iallgather(np.array([h], np.int64), hashes)
            )
        if not same:
            odd = [channel.world_ranks[i] for i in range(channel.size) if hashes[i] != hashes[0]]
            raise HornError(
                f"{what} differs between ranks: rank(s) {', '.join(map(str, odd))} "
                f"disagree with rank {channel.world_ranks[0]}"
            )

    # -- watchdog ------------------------------------------------------------

    def barrier(self, name, comm="world"):
        """Explicit watchdog barrier; aborts the job if others do not arrive in time."""
        self._collective(comm, name, lambda c: c.Ibarrier())

    def _collective(self, comm, name, start, nbytes=0, across=0):
        """The one way horn exchanges data: start a non-blocking MPI call on the
        channel's communicator, poll it to completion under the watchdog, and
        account its seconds, ``nbytes`` (this rank's share, by the cost model) and
        ``across`` (the part of them that goes to other hosts)."""
        channel = self._channels[comm] if isinstance(comm, str) else comm
        t0 = time.perf_counter()
        self._wait([start(channel.comm)], channel, name)
        self._account(time.perf_counter() - t0, nbytes, across)

    def _wait(self, requests, channel, name):
        """Poll ``requests`` together: spin briefly, then nap (idle ranks stay cheap)
        and answer roll calls. The channel's rank 0 gives up first, the others a little
        later, so that one clear message is printed before the abort."""
        if channel.size == 1:
            MPI.Request.Waitall(requests)
            return
        timeout_s = self.timeout_s
        if channel.rank != 0:
            timeout_s += min(2.0, 0.5 * self.timeout_s)
        start = time.monotonic()
        while not MPI.Request.Testall(requests):
            waited = time.monotonic() - start
            if waited > _SPIN_S:
                self._answer_roll_calls(name, channel)
                if waited > timeout_s:
                    self._timed_out(channel, name, waited)
                time.sleep(_NAP_S)

    def _where(self, name, channel):
        return f"'{name}' (superstep {self.superstep}, {channel.name})"

    def _answer_roll_calls(self, name, channel):
        """Tell any rank whose watchdog fired that this one is alive and where it waits."""
        status = MPI.Status()
        while self.control.Iprobe(MPI.ANY_SOURCE, _PING_TAG, status):
            source = status.Get_source()
            self.control.Recv(np.empty(1, np.int8), source, _PING_TAG)
            answer = np.zeros(_PONG_BYTES, np.uint8)
            text = self._where(name, channel).encode()[:_PONG_BYTES]
            answer[: len(text)] = np.frombuffer(text, np.uint8)
            self._pongs.append((self.control.Isend(answer, source, _PONG_TAG), answer))

    def _roll_call(self, channel, name):
        """Ask every other member of ``channel`` where it is; ``{world rank: answer}``
        for those that answered within a few seconds (the rest are stopped, stuck,
        dead or unreachable). Keeps answering others' roll calls meanwhile."""
        others = [r for r in channel.world_ranks if r != self.rank]
        ping = np.ones(1, np.int8)
        answers = {r: np.zeros(_PONG_BYTES, np.uint8) for r in others}
        for r in others:
            self._pongs.append((self.control.Isend(ping, r, _PING_TAG), ping))
        pending = {r: self.control.Irecv(answers[r], r, _PONG_TAG) for r in others}
        heard = {}
        deadline = time.monotonic() + _roll_call_s(self.timeout_s)
        while pending and time.monotonic() < deadline:
            for r in [r for r, req in pending.items() if req.Test()]:
                del pending[r]
                heard[r] = answers[r].tobytes().rstrip(b"\0").decode(errors="replace")
            self._answer_roll_calls(name, channel)
            time.sleep(_NAP_S)
        return heard, sorted(pending)

    def describe(self, ranks):
        """``rank 1 (host b)`` / ``ranks 2, 3 (host b), 5 (host c)``."""
        return describe_ranks(ranks, dict(enumerate(self.hosts)))

    def _timed_out(self, channel, name, waited):
        heard, silent = self._roll_call(channel, name)
        if silent:
            who = (
                f"{self.describe(silent)} never arrived (no answer to a roll call within "
                f"{_roll_call_s(self.timeout_s):.0f} s: stopped, stuck, dead or unreachable)"
            )
        else:
            who = "every rank answered, but they wait in other exchanges: " + "; ".join(
                f"{self.describe([r])} in {text}" for r, text in sorted(heard.items())
            )
        line = (
            f"horn: rank {self.rank} (host {self.hosts[self.rank]}): "
            f"{self._where(name, channel)} timed out after {waited:.1f} s waiting for the "
            f"other ranks; {who}"
        )
        abort_job(self.world, line, 1)


def _roll_call_s(timeout_s):
    """How long a roll call waits for answers: a napping rank answers within ms, but
    the whole stop must fit in watchdog_s + 10 s (timeout + 2 + this + the launcher's 3)."""
    return min(2.0, max(1.0, 0.2 * timeout_s))


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
            dtype = np.dtype(recvbuf[offset : offset + 8].tobytes().rstrip(b"\0").decode())
            size = int(recvbuf[offset + 8 : offset + 16].view(np.int64)[0])
            offset += _HEADER
            box.append(recvbuf[offset : offset + size * dtype.itemsize].view(dtype))
            offset += _padded(size * dtype.itemsize)
        inbox.append(box)
    return inbox
