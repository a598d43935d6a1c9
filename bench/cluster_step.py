"""Where a synchronous step's time goes across 2 simulated hosts (issue 12, part 5).

    python bench/cluster_step.py                 # 1 Gbit/s, Open MPI TCP settings compared
    python bench/cluster_step.py --rate 100mbit

One step of horn's synchronous data-parallel training (jobs/bench_vs_torch.toml: MLP
784-1024-1024-10, batch 128 per rank, 1 thread) split into its parts, each timed alone on
both ranks (medians of ``--reps``): the training step without communication, horn's
``Peer.allreduce_mean`` of the 1.86M-float parameter buffer (a non-blocking Iallreduce
polled under the watchdog), the raw blocking ``Allreduce`` and raw ``Iallreduce`` + ``Wait``
of the same buffer, and an 8-byte Allreduce (the latency a per-collective handshake
costs). Repeated for a few TCP BTL settings (``--mca`` on the cluster's mpirun).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import horn  # noqa: F401
from horn import cluster as simulated

REPO = Path(__file__).resolve().parent.parent
NAME = "bstep"
VARIANTS = {
    "default": [],
    "btl_tcp_links 4": ["--mca", "btl_tcp_links", "4"],
    "eager 64k, sndbuf/rcvbuf 4M": [
        "--mca",
        "btl_tcp_eager_limit",
        "65536",
        "--mca",
        "btl_tcp_sndbuf",
        "4194304",
        "--mca",
        "btl_tcp_rcvbuf",
        "4194304",
    ],
    "max_send_size 1M": ["--mca", "btl_tcp_max_send_size", "1048576"],
    "libnbc ring Iallreduce": ["--mca", "coll_libnbc_iallreduce_algorithm", "1"],
    "links 4 + libnbc ring Iallreduce": [
        "--mca",
        "btl_tcp_links",
        "4",
        "--mca",
        "coll_libnbc_iallreduce_algorithm",
        "1",
    ],
    "links 4 + libnbc binomial Iallreduce": [
        "--mca",
        "btl_tcp_links",
        "4",
        "--mca",
        "coll_libnbc_iallreduce_algorithm",
        "2",
    ],
}


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def worker(reps):
    import numpy as np
    from mpi4py import MPI

    from horn.bsp import Peer
    from horn.jobs import job_from_dict, model_spec
    from horn.model import Model
    from horn.optim import make_optimizer
    from horn.runner import configure_threads

    world = MPI.COMM_WORLD
    doc = tomllib.loads((REPO / "jobs/bench_vs_torch.toml").read_text())
    job = job_from_dict(doc, str(REPO / "jobs/bench_vs_torch.toml"))
    configure_threads(job.train.threads)
    model = Model.from_spec(model_spec(job, 784), "numba", seed=0)
    opt = make_optimizer(job.train, model)
    rng = np.random.default_rng(world.rank)
    x = rng.random((job.train.batch_size, 784), dtype=np.float32)
    y = rng.integers(0, 10, job.train.batch_size)

    def train():
        model.train_step(x, y)
        opt.step(0.01)

    peer = Peer.create(world, 2, 1, timeout_s=60)
    buf = model.params
    tiny = np.zeros(2, np.float32)

    def nonblocking():
        world.Iallreduce(MPI.IN_PLACE, buf, MPI.SUM).Wait()

    parts = {}
    for key, fn in (
        ("compute", train),
        ("peer_allreduce_mean", lambda: peer.allreduce_mean(buf, comm="cross")),
        ("raw_allreduce", lambda: world.Allreduce(MPI.IN_PLACE, buf, MPI.SUM)),
        ("raw_iallreduce_wait", nonblocking),
        ("allreduce_8_bytes", lambda: world.Allreduce(MPI.IN_PLACE, tiny, MPI.SUM)),
    ):
        world.Barrier()
        parts[key] = median_ms(fn, reps)
    every = world.gather(parts, root=0)
    if world.rank == 0:
        print("PARTS " + json.dumps({k: max(p[k] for p in every) for k in parts}), flush=True)
    peer.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", default="1gbit")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--variants", default="all", help=f"subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.reps)
    c = simulated.up(2, rate=args.rate, name=NAME)
    rows = {}
    try:
        for label, extra in VARIANTS.items():
            if args.variants != "all" and label not in args.variants.split(","):
                continue
            argv = c.mpirun_argv(
                [sys.executable, __file__, "--worker", "--reps", str(args.reps)], extra=extra
            )
            env = c.environment()
            env["PYTHONPATH"] = str(REPO)
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("PARTS ")), None)
            if line is None:
                sys.exit(f"{label}: failed\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
            rows[label] = json.loads(line[len("PARTS ") :])
            print(
                f"  {label:30} " + "  ".join(f"{k} {v:.1f}" for k, v in rows[label].items()),
                flush=True,
            )
    finally:
        simulated.down(NAME)
    print(f"\n2 hosts at {args.rate}, ms (median of {args.reps}, the slower rank):\n")
    keys = list(next(iter(rows.values())))
    print("| TCP settings | " + " | ".join(keys) + " | sync step = compute + peer |")
    print("|---|" + "---:|" * (len(keys) + 1))
    for label, parts in rows.items():
        print(
            f"| {label} | "
            + " | ".join(f"{parts[k]:.1f}" for k in keys)
            + f" | {parts['compute'] + parts['peer_allreduce_mean']:.1f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
