"""Model averaging of a CNN with batch norm: every rank trains on its own batches, then
one barrier averages the flat buffer. Prints one RESULT json line per rank."""

import json

import numpy as np
from mpi4py import MPI

from horn.abort import install_abort_hook
from horn.barriers.average import average
from horn.bsp import Peer
from horn.layers import BatchNorm, Conv2d, Dense, Flatten, MaxPool2d, SoftmaxCrossEntropy
from horn.model import Model
from horn.optim import SGD


def main():
    install_abort_hook()
    peer = Peer.create(MPI.COMM_WORLD, 0, 1, timeout_s=30)
    layers = [
        Conv2d(4, 3, padding=1, activation="relu"),
        BatchNorm(),
        MaxPool2d(2),
        Flatten(),
        Dense(10),
    ]
    model = Model(layers, SoftmaxCrossEntropy(), (1, 8, 8), backend="numba", seed=0)
    opt = SGD(model, momentum=0.9)
    rng = np.random.default_rng(peer.rank)  # each rank its own data
    for _ in range(3):
        x = (rng.random((16, 64)) + peer.rank).astype(np.float32)
        model.train_step(x, rng.integers(0, 10, 16))
        opt.step(0.05)
    before = model.params.copy()
    everyone = np.empty((peer.size, model.size), np.float32)
    MPI.COMM_WORLD.Allgather(before, everyone)
    average(peer, model, opt, False, "world")
    stats = {name: (off, int(np.prod(shape))) for name, _, off, shape in model.slots}
    off, size = stats["1.running_mean"]
    print(
        "RESULT "
        + json.dumps(
            {
                "rank": peer.rank,
                "averaged": bool(
                    np.allclose(model.params, everyone.mean(axis=0), rtol=1e-6, atol=1e-7)
                ),
                "stats_differed": bool(
                    not np.allclose(everyone[0, off : off + size], everyone[-1, off : off + size])
                ),
                "running_mean": model.params[off : off + size].tolist(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
