"""Where a synchronous step's time goes across 2 simulated hosts (issue 12, part 5).

    python bench/cluster_step.py                 # 1 Gbit/s, Open MPI TCP settings compared
    python bench/cluster_step.py --rate 100mbit
    python bench/cluster_step.py --versus-ddp    # whole steps: horn's sync modes vs DDP
    python bench/cluster_step.py --versus-ddp --rate none   # the same on one host

One step of horn's synchronous data-parallel training (jobs/bench_vs_torch.toml: MLP
784-1024-1024-10, batch 128 per rank, 1 thread) split into its parts, each timed alone on
both ranks (medians of ``--reps``): the training step without communication, horn's
``Peer.allreduce_mean`` of the 1.86M-float parameter buffer (a non-blocking Iallreduce
polled under the watchdog), the raw blocking ``Allreduce`` and raw ``Iallreduce`` + ``Wait``
of the same buffer, and an 8-byte Allreduce (the latency a per-collective handshake
costs). Repeated for a few TCP BTL settings (``--mca`` on the cluster's mpirun).

``--versus-ddp`` (issue 14, part 3) times whole steps in the same 2 processes, taking
turns (``--reps`` rounds of ``--steps`` steps each, every mode in every round, the order
rotating): horn averaging the parameters after the step (``reduce = "parameters"``),
horn averaging the gradients in overlapped buckets (``reduce = "gradients"``, one row per
``--buckets`` size), and PyTorch DDP over gloo (default 25 MB buckets) on the same
network, batch and optimizer. Each horn step is what the trainer runs: train_step,
optimizer step, the strategy's after_step (its superstep sync included). ``--rate none``
runs both ranks on this host (shared memory for MPI, loopback for gloo).
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


def versus_ddp(args):
    """Whole steps of horn's two synchronous modes and of DDP, taking turns (rank 0 prints)."""
    import numpy as np
    import torch
    import torch.distributed as dist
    from mpi4py import MPI
    from vs_torch import torch_sequential, torch_sgd

    from horn.barriers.average import AverageSync
    from horn.barriers.gradients import GradientSync
    from horn.bsp import Peer
    from horn.jobs import job_from_dict, model_spec
    from horn.model import Model
    from horn.optim import make_optimizer
    from horn.runner import configure_threads

    world = MPI.COMM_WORLD
    doc = tomllib.loads((REPO / "jobs/bench_vs_torch.toml").read_text())
    job = job_from_dict(doc, str(REPO / "jobs/bench_vs_torch.toml"))
    t = job.train
    configure_threads(1)
    torch.set_num_threads(1)
    spec = model_spec(job, 784)
    rng = np.random.default_rng(world.rank)
    x = rng.random((t.batch_size, 784), dtype=np.float32)
    y = rng.integers(0, 10, t.batch_size)
    peer = Peer.create(world, 2, 1, timeout_s=120)
    steps = 10**9

    def horn_mode(make_sync):
        model = Model.from_spec(spec, "numba", seed=0)
        opt = make_optimizer(t, model)
        sync = make_sync(model, opt)
        counter = iter(range(steps))

        def step():
            model.train_step(x, y)
            opt.step(t.lr)
            sync.after_step(next(counter))

        return step

    modes = {
        "horn parameters": horn_mode(lambda m, o: AverageSync(peer, m, o, 1, steps)),
        **{
            f"horn gradients {mb:g} MB": horn_mode(lambda m, o, mb=mb: GradientSync(peer, m, mb))
            for mb in args.buckets
        },
    }
    init = Model.from_spec(spec, "numpy", seed=0).state_arrays()
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{args.master}:29513",
        rank=world.rank,
        world_size=world.size,
    )
    ddp = torch.nn.parallel.DistributedDataParallel(torch_sequential(torch, spec, init))
    topt = torch_sgd(torch, ddp.parameters(), t)
    xt, yt, loss_fn = torch.from_numpy(x), torch.from_numpy(y), torch.nn.CrossEntropyLoss()

    def ddp_step():
        topt.zero_grad(set_to_none=False)
        loss_fn(ddp(xt), yt).backward()
        topt.step()

    modes["PyTorch DDP (gloo)"] = ddp_step
    times = {name: [] for name in modes}
    comm = {name: [] for name in modes if name.startswith("horn")}
    names = list(modes)
    for rep in range(args.reps + 1):  # round 0 warms up
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            world.Barrier()
            peer.drain_records()
            for _ in range(args.steps):
                t0 = time.perf_counter()
                modes[name]()
                if rep:
                    times[name].append(time.perf_counter() - t0)
            if rep and name in comm:  # horn's own accounting: seconds inside MPI calls
                comm[name] += [r["comm_s"] for r in peer.drain_records()]
    medians = {name: 1e3 * statistics.median(v) for name, v in times.items()}
    medians.update({f"{name} comm": 1e3 * statistics.median(v) for name, v in comm.items()})
    every = world.gather(medians, root=0)
    if world.rank == 0:
        print("STEPS " + json.dumps({k: max(m[k] for m in every) for k in medians}), flush=True)
    dist.destroy_process_group()
    peer.close()


def run_versus(args):
    """``--versus-ddp`` on 2 simulated hosts at ``--rate``, or on this host (``none``)."""
    import os

    command = [sys.executable, __file__, "--versus-ddp", "--worker", "--reps", str(args.reps)]
    command += ["--steps", str(args.steps), "--buckets", ",".join(map(str, args.buckets))]
    load = os.getloadavg()
    if args.rate == "none":
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        env["PYTHONPATH"] = str(REPO)
        mpirun = str(Path(sys.executable).parent / "mpirun")
        argv = [mpirun, "--oversubscribe", "--bind-to", "none", "-n", "2", "-x", "PYTHONPATH"]
        argv += [*command, "--master", "127.0.0.1"]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    else:
        c = simulated.up(2, rate=args.rate, name=NAME)
        try:
            env = c.environment()
            env.update(PYTHONPATH=str(REPO), GLOO_SOCKET_IFNAME="eth0")
            argv = c.mpirun_argv(
                [*command, "--master", c.address(1)], extra=["-x", "GLOO_SOCKET_IFNAME"]
            )
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
        finally:
            simulated.down(NAME)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("STEPS ")), None)
    if line is None:
        sys.exit(f"failed\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    steps = json.loads(line[len("STEPS ") :])
    ddp = steps["PyTorch DDP (gloo)"]
    where = "one host, 2 ranks" if args.rate == "none" else f"2 hosts at {args.rate}"
    print(
        f"\n{where}, 1 thread each, ms per step (median of {args.reps} x {args.steps}, "
        f"the slower rank); load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after:\n"
    )
    print("| mode | ms / step | of which in MPI calls | vs DDP |\n|---|---:|---:|---:|")
    for name, ms in steps.items():
        if not name.endswith(" comm"):
            inside = steps.get(f"{name} comm")
            inside = "-" if inside is None else f"{inside:.1f}"
            print(f"| {name} | {ms:.1f} | {inside} | {ms / ddp:.2f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", default="1gbit")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--variants", default="all", help=f"subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--versus-ddp", action="store_true", help="whole steps against DDP")
    parser.add_argument("--steps", type=int, default=10, help="--versus-ddp: steps per turn")
    parser.add_argument(
        "--buckets",
        type=lambda text: [float(v) for v in text.split(",")],
        default=[1.0, 4.0, 25.0],
        help="--versus-ddp: bucket_mb values of reduce = gradients",
    )
    parser.add_argument("--master", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return versus_ddp(args) if args.versus_ddp else worker(args.reps)
    if args.versus_ddp:
        return run_versus(args)
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
