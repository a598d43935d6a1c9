"""Exercise Peer messaging, collectives and layout; each rank prints one RESULT json line.

Usage: semantics.py GROUPS WORKERS (0 = derive from world size)
"""

import json
import sys

import numpy as np
from mpi4py import MPI

from horn.abort import install_abort_hook
from horn.bsp import Peer


def snapshot(peer):
    """Messages visible right now, as {source: [[dtype, values], ...]}."""
    out = {}
    for src, arr in peer.messages():
        out.setdefault(str(src), []).append([arr.dtype.str, arr.tolist()])
    return out


def main():
    install_abort_hook()
    peer = Peer.create(MPI.COMM_WORLD, int(sys.argv[1]), int(sys.argv[2]), timeout_s=30)
    rank, n = peer.rank, peer.size
    result = {"rank": rank, "layout_text": peer.layout_text()}

    # superstep 0: two messages with different dtypes to every rank, plus an empty one
    for dest in range(n):
        peer.send(dest, np.array([rank, dest, 0.5], np.float32))
        peer.send(dest, np.arange(rank + 1, dtype=np.int16).reshape(1, -1))
        peer.send(dest, np.zeros(0, np.uint8))
    result["before_sync_0"] = snapshot(peer)
    peer.sync()
    result["after_sync_0"] = snapshot(peer)
    result["received_from_0"] = [a.tolist() for a in peer.received(0)]

    # superstep 1: send a ring message; the superstep-0 inbox must stay unchanged until sync
    peer.send((rank + 1) % n, np.array([1, rank], np.float64))
    result["before_sync_1"] = snapshot(peer)
    peer.sync()
    result["after_sync_1"] = snapshot(peer)

    # superstep 2: nothing sent
    peer.sync()
    result["after_sync_2"] = snapshot(peer)

    buf = np.arange(5, dtype=np.float32) * (rank + 1)
    peer.allreduce_mean(buf)
    result["allreduce_mean"] = buf.tolist()

    gsum = np.full(3, rank, np.float64)
    peer.allreduce_sum(gsum, comm="group")
    result["group_sum"] = gsum.tolist()

    counts = [r + 1 for r in range(n)]
    recv = np.empty(sum(counts), np.int32)
    peer.allgatherv(np.full(rank + 1, rank, np.int32), recv, counts)
    result["allgatherv"] = recv.tolist()

    gathered = np.empty(2 * n, np.int64)
    peer.allgather(np.array([rank, 10 * rank], np.int64), gathered)
    result["allgather"] = gathered.tolist()

    members = {}
    for name, size in (("group", peer.workers), ("cross", peer.groups)):
        got = np.empty(size, np.int64)
        peer.allgather(np.array([rank], np.int64), got, comm=name)
        members[name] = got.tolist()
    result["members"] = members

    b = np.array([rank, rank], np.float32)
    peer.bcast(b, root=n - 1)
    result["bcast"] = b.tolist()
    c = np.array([rank], np.int64)
    peer.bcast(c, root=0, comm="cross")
    result["bcast_cross"] = c.tolist()

    peer.verify_same("world", "same job text")
    peer.sync()
    result["layout"] = {
        "group": peer.group,
        "worker": peer.worker,
        "groups": peer.groups,
        "workers": peer.workers,
        "group_comm": [peer.group_comm.Get_rank(), peer.group_comm.Get_size()],
        "cross_comm": [peer.cross_comm.Get_rank(), peer.cross_comm.Get_size()],
    }
    result["records"] = peer.drain_records()
    result["records_after_drain"] = peer.superstep_records
    result["bytes_sent_total"] = peer.bytes_sent_total
    peer.close()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
