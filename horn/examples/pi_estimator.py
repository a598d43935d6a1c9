"""Apache Hama's classic PiEstimator as a horn BSP program.

The smallest complete superstep: every peer throws darts at the unit square,
sends its hit count to peer 0, and after ``sync()`` peer 0 combines them.

    mpirun -n 4 python -m horn.examples.pi_estimator --samples 100000
"""

import argparse

import numpy as np
from mpi4py import MPI

from horn.abort import install_abort_hook
from horn.bsp import Peer


def estimate_pi(peer, samples, seed):
    """Superstep 0: sample and send (hits, samples) to peer 0. Returns pi on peer 0, else None."""
    rng = np.random.default_rng([seed, peer.rank])
    x, y = rng.random(samples), rng.random(samples)
    hits = int(np.count_nonzero(x * x + y * y <= 1.0))
    peer.send(0, np.array([hits, samples], np.int64))
    peer.sync()
    if peer.rank != 0:
        return None
    totals = sum(counts for _, counts in peer.messages())
    return 4.0 * totals[0] / totals[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000, help="points per peer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    install_abort_hook()
    peer = Peer.create(MPI.COMM_WORLD, groups=None, workers=1)
    pi = estimate_pi(peer, args.samples, args.seed)
    if pi is not None:
        print(f"pi ~= {pi:.6f} ({args.samples * peer.size} samples on {peer.size} peers)")
    peer.close()


if __name__ == "__main__":
    main()
