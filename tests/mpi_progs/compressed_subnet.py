"""Compressed sub-network rounds on real ranks, checked on every rank after every round
against a numpy reference computed from every worker's block and residual (gathered
outside horn's exchange): the reassembled parent and this rank's residual equal the
reference bit for bit on rounds without a cross-group average, every rank of the group
(of the world, after a cross-group average) holds the same parent, and error feedback
loses nothing: the sum of this rank's true changes minus the sum of what it sent equals
its residual. Usage: compressed_subnet.py JOB.toml. Prints one RESULT json line per rank."""

import hashlib
import json
import sys

import numpy as np
from mpi4py import MPI

from horn.abort import install_abort_hook
from horn.backends import get_backend
from horn.backends.base import message_size
from horn.bsp import Peer
from horn.jobs import load_job
from horn.runner import prepare
from horn.subnet import gather, scatter

ref = get_backend("numpy")


def reference_round(layout, plans, parent, blocks, residuals, codec, block):
    """(parent after assembly, each worker's residual after, each worker's decoded
    change in the parent's coordinates), all by the numpy backend."""
    rebuilt, after, sent = [], [], []
    for plan, compact, residual in zip(plans, blocks, residuals):
        start = np.zeros(plan.size, np.float32)  # zeros: the gaps between parameters
        gather(ref, layout, plan, parent, start)
        r = np.zeros(plan.size, np.float32)
        gather(ref, layout, plan, residual, r)
        message = np.empty(message_size(codec, plan.size, block), np.uint8)
        ref.compress(codec, compact - start, r, block, message)
        decoded = np.zeros(plan.size, np.float32)
        ref.decompress_add(codec, message, block, decoded)
        new_residual = residual.copy()
        scatter(ref, layout, [plan], [r], new_residual)
        after.append(new_residual)
        spread = np.zeros_like(parent)
        scatter(ref, layout, [plan], [decoded.copy()], spread)
        sent.append(spread)
        rebuilt.append(start + decoded)
    assembled = parent.copy()
    scatter(ref, layout, plans, rebuilt, assembled)
    return assembled, after, sent


def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def main():
    install_abort_hook()
    job = load_job(sys.argv[1])
    world = MPI.COMM_WORLD
    peer = Peer.create(world, job.parallel.groups, job.parallel.workers, timeout_s=60)
    run = prepare(job, peer)
    sync, parent, optimizer = run.sync, run.model, run.optimizer
    settings = job.parallel.of("subnet")
    codec, block = settings.compress, settings.block
    local, every = job.parallel.local_steps, job.parallel.global_every
    members = [r for r in range(peer.size) if r // peer.workers == peer.group]
    true_sum, sent_sum = np.zeros_like(parent.params), np.zeros_like(parent.params)
    rounds = []
    for step in range(run.steps):
        model, opt = sync.trainee(parent, optimizer)
        model.train_step(*run.stream.next())
        opt.step(run.schedule(step))
        if (step + 1) % local and step + 1 != run.steps:
            sync.after_step(step)
            continue
        plans, before, residual = sync.plans, parent.params.copy(), sync.residual.copy()
        everyone = world.allgather((model.params.copy(), residual))  # outside horn's exchange
        sync.after_step(step)
        blocks = [everyone[r][0] for r in members]
        residuals = [everyone[r][1] for r in members]
        assembled, after, sent = reference_round(
            sync.layout, plans, before, blocks, residuals, codec, block
        )
        mine = plans[peer.worker]
        change = np.zeros_like(before)
        start = np.zeros(mine.size, np.float32)
        gather(ref, sync.layout, mine, before, start)
        scatter(ref, sync.layout, [mine], [blocks[peer.worker] - start], change)
        true_sum += change
        sent_sum += sent[peer.worker]
        cross = sync.round % every == 0 or step + 1 == run.steps
        hashes = world.allgather(digest(parent.params))
        rounds.append(
            {
                "cross": cross,
                "parent_is_reference": cross or bool(np.array_equal(parent.params, assembled)),
                "residual_is_reference": bool(np.array_equal(sync.residual, after[peer.worker])),
                "group_same": len({hashes[r] for r in members}) == 1,
                "world_same": len(set(hashes)) == 1,
            }
        )
    drift = float(np.abs(true_sum - sent_sum - sync.residual).max())
    print(
        "RESULT "
        + json.dumps(
            {
                "rank": peer.rank,
                "rounds": rounds,
                "drift": drift,
                "true_change": float(np.abs(true_sum).max()),
                "residual": float(np.abs(sync.residual).max()),
                "finite": bool(np.isfinite(parent.params).all()),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
