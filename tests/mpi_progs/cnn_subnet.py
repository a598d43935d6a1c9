"""One group of CNN sub-networks, checked after every round on every rank: the
reassembled parent holds each worker's compact block bit for bit at that worker's
channels (the bookkeeping of gather, Allgatherv and scatter), the shared entries (kept
whole by every worker: the classifier's bias) are the workers' mean, and every entry no
worker held (connections between different workers' channels) is the parent's from
before the round. Usage: cnn_subnet.py JOB.toml ROUNDS (scale at the inputs, so a
block is the parent's entries unscaled). Prints one RESULT json line per rank."""

import hashlib
import json
import sys

import numpy as np
from mpi4py import MPI

from horn.abort import install_abort_hook
from horn.backends import get_backend
from horn.barriers import Setup
from horn.barriers.subnet import SubnetSync
from horn.bsp import Peer
from horn.data import load_dataset
from horn.jobs import load_job
from horn.optim import make_optimizer
from horn.runner import build
from horn.subnet import gather, scatter


def check_round(backend, layout, plans, before, after, blocks):
    """Compare the parent after assembly with the blocks the workers sent."""
    held = np.zeros(after.size, bool)
    mismatches, shared_total = 0, {}
    for plan, block in zip(plans, blocks):
        got = np.empty(plan.size, after.dtype)
        gather(backend, layout, plan, after, got)
        for name, off, shape in plan.slots:
            part = slice(off, off + int(np.prod(shape)))
            if all(i is None for i in plan.index[name]):  # summed as scatter does: in order
                shared_total[name] = block[part].astype(np.float64) + shared_total.get(name, 0.0)
            else:
                mismatches += int((got[part] != block[part]).sum())
        ones = np.zeros_like(after)
        scatter(backend, layout, [plan], [np.ones(plan.size, after.dtype)], ones)
        held |= ones != 0
    shared_ok = True
    for name, total in shared_total.items():
        off, shape = layout.parent_slots[name]
        expected = (total / len(plans)).astype(after.dtype)
        shared_ok &= bool(np.array_equal(after[off : off + expected.size], expected))
    through = [
        name
        for name, _ in layout.parent_slots.items()
        if layout.parent.layers[int(name.split(".")[0])].partition_role == "through"
    ]
    through_held = all(
        held[off : off + int(np.prod(shape))].all()
        for off, shape in (layout.parent_slots[n] for n in through)
    )
    return {
        "block_mismatches": mismatches,
        "shared_is_mean": shared_ok,
        "unheld": int((~held).sum()),
        "unheld_changed": int((after[~held] != before[~held]).sum()),
        "through_params": len(through),
        "through_params_held": bool(through_held),
    }


def main():
    install_abort_hook()
    job, rounds = load_job(sys.argv[1]), int(sys.argv[2])
    peer = Peer.create(MPI.COMM_WORLD, job.parallel.groups, job.parallel.workers, timeout_s=60)
    parent, optimizer, schedule, stream, _ = build(
        job, load_dataset(job.data), get_backend("numpy"), peer.group, peer.worker
    )
    local = job.parallel.local_steps
    setup = Setup(
        peer,
        parent,
        optimizer,
        lambda m: make_optimizer(job.train, m),
        rounds * local,
        local,
        job.parallel.global_every,
        job.train.seed,
        job.train.batch_size,
        job.train.lr,
        job.source,
    )
    sync = SubnetSync(setup, job.parallel.of("subnet"))
    results = []
    for step in range(rounds * local):
        model, opt = sync.trainee(parent, optimizer)
        model.train_step(*stream.next())
        opt.step(schedule(step))
        if (step + 1) % local:
            sync.after_step(step)
            continue
        plans, before = sync.plans, parent.params.copy()
        blocks = MPI.COMM_WORLD.allgather(model.params.copy())  # outside horn's exchange
        sync.after_step(step)  # assembles the parent and begins the next round
        results.append(
            check_round(parent.backend, sync.layout, plans, before, parent.params, blocks)
        )
    print(
        "RESULT "
        + json.dumps(
            {
                "rank": peer.rank,
                "rounds": results,
                "finite": bool(np.isfinite(parent.params).all()),
                "parent_sha256": hashlib.sha256(parent.params.tobytes()).hexdigest(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
