"""Failure scenarios for the abort/watchdog tests.

Usage: fail.py MODE TIMEOUT_S, MODE one of:
  raise    rank 1 raises ValueError while the others wait in sync() (via run_guarded)
  uncaught the same, but left to the abort excepthook
  kill     rank 1 SIGKILLs itself while the others wait in allreduce_mean
  stuck    rank 1 sleeps far past the timeout while the others wait in sync()
  stuck0   the same, but rank 0 (the barrier coordinator) is the stuck one
  mismatch rank 2 (if any, else the last) verifies a different job text
  disagree rank 0 waits in a world barrier, rank 1 in a group barrier (never matched)
"""

import os
import signal
import sys
import time

import numpy as np
from mpi4py import MPI

from horn.abort import install_abort_hook, run_guarded
from horn.bsp import Peer


def main():
    mode, timeout_s = sys.argv[1], float(sys.argv[2])
    peer = Peer.create(MPI.COMM_WORLD, groups=1, workers=0, timeout_s=timeout_s)
    odd = {"mismatch": min(2, peer.size - 1), "stuck0": 0}.get(mode, 1)
    if peer.rank == odd:
        if mode in ("raise", "uncaught"):
            raise ValueError("boom")
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode in ("stuck", "stuck0"):
            time.sleep(120)
    if mode == "disagree":
        peer.barrier("left", "world" if peer.rank == 0 else "group")
    elif mode == "mismatch":
        peer.verify_same("world", f"job file of rank {peer.rank == odd}")
    elif mode == "kill":
        peer.allreduce_mean(np.ones(1000, np.float32))
    else:
        peer.sync()
    print(f"rank {peer.rank} finished normally", flush=True)


if __name__ == "__main__":
    install_abort_hook()
    if sys.argv[1] == "uncaught":
        main()
    else:
        sys.exit(run_guarded(main))
