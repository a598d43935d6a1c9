"""A synchronous BSP loop of large collectives, for the network-fault tests.

Usage: collective_loop.py WATCHDOG_S SECONDS FLOATS
Every superstep: an in-place allreduce_mean of FLOATS float32 values, then sync().
Rank 0 prints READY after the first superstep; every rank prints
"rank N finished normally" after SECONDS (a fault should end the job first).
"""

import sys
import time

import numpy as np
from mpi4py import MPI

from horn.abort import install_abort_hook
from horn.bsp import Peer  # before mpi4py.MPI: horn.bsp sets an MCA default


def main():
    install_abort_hook()
    timeout_s, seconds, floats = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    peer = Peer.create(MPI.COMM_WORLD, groups=None, workers=1, timeout_s=timeout_s)
    buf = np.ones(floats, np.float32)
    end = time.monotonic() + seconds
    while True:
        peer.allreduce_mean(buf)
        peer.sync()
        if peer.superstep == 1 and peer.rank == 0:
            print("READY", flush=True)
        if time.monotonic() > end:
            break
    print(f"rank {peer.rank} finished normally", flush=True)


if __name__ == "__main__":
    main()
