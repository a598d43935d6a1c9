"""Hierarchical averaging (``AverageSync`` with ``across_every``) on a model whose
"training" adds a known per-rank change each step; each rank prints one RESULT json
line: its parameters and byte counters after every round, and the evaluated model
after the last step of a round that crossed no host.

Usage: hierarchy.py STEPS LOCAL_STEPS ACROSS_EVERY
"""

import json
import sys
from types import SimpleNamespace

import numpy as np
from mpi4py import MPI

from horn.abort import install_abort_hook
from horn.barriers.average import AverageSync
from horn.bsp import Peer
from horn.model import Model

SPEC = {
    "in_features": 5,
    "layers": [{"type": "dense", "units": 3}],
    "loss": {"type": "softmax_cross_entropy"},
}


def change(rank, step, size):
    """What rank ``rank``'s step ``step`` adds (the test's reference draws the same)."""
    return np.random.default_rng([rank, step]).standard_normal(size).astype(np.float32)


def main():
    install_abort_hook()
    steps, local_steps, across_every = map(int, sys.argv[1:4])
    peer = Peer.create(MPI.COMM_WORLD, None, 1, timeout_s=30)
    model = Model.from_spec(SPEC, seed=0)
    velocity = np.zeros_like(model.params)
    optimizer = SimpleNamespace(state=lambda: {"velocity": velocity})
    sync = AverageSync(peer, model, optimizer, local_steps, steps, True, None, None, across_every)
    rounds, evaluated = [], None
    for step in range(steps):
        model.params += change(peer.rank, step, model.size)
        velocity += change(peer.rank + 100, step, model.size)
        before = (peer.bytes_sent_total, peer.bytes_across_total)
        sync.after_step(step)
        if (step + 1) % local_steps == 0 or step + 1 == steps:
            rounds.append(
                {
                    "params": model.params.tolist(),
                    "velocity": velocity.tolist(),
                    "bytes": peer.bytes_sent_total - before[0],
                    "across": peer.bytes_across_total - before[1],
                    "boundary": sync.at_boundary(step + 1),
                }
            )
        elif evaluated is None and rounds and not rounds[-1]["boundary"]:
            mark = peer.bytes_across_total
            mean = sync.eval_model(model).params.tolist()
            evaluated = {"step": step + 1, "params": mean, "across": peer.bytes_across_total - mark}
    records = peer.drain_records()
    print(
        "RESULT "
        + json.dumps(
            {
                "rank": peer.rank,
                "host": peer.hosts[peer.rank],
                "size": model.size,
                "rounds": rounds,
                "evaluated": evaluated,
                "records": [
                    {k: r[k] for k in ("bytes_sent", "bytes_sent_inter_host") if k in r}
                    for r in records
                ],
            }
        ),
        flush=True,
    )
    peer.close()


if __name__ == "__main__":
    main()
