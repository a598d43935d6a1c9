"""Cost of one horn model-averaging barrier vs raw mpi4py and PyTorch gloo.

``python bench/barrier.py`` launches itself under mpirun on 2 and 4 ranks
(``--worker``), times ``peer.allreduce_mean`` on flat float32 buffers of 1M
and 4M parameters next to a raw in-place ``Allreduce`` (with and without the
division that turns a sum into a mean), horn's explicit watchdog barrier on its own
(collectives no longer pay one: they are polled non-blocking calls) and gloo's ``all_reduce``; prints a table of
medians and writes it to docs/barrier.md.

Each repetition runs every method once in rotating order, after a barrier, on
a freshly copied buffer; a repetition's time is the slowest rank's.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RANKS = (2, 4)
PARAMS = (1 << 20, 4 << 20)
REPS, WARMUP = 100, 5
RATIOS = (("horn_sum", "raw"), ("horn_mean", "raw_mean"))


def gloo_all_reduce(world):
    """A gloo all_reduce callable, or None with a printed reason."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        if world.rank == 0:
            print("torch not installed: skipping gloo", flush=True)
        return None
    port = None
    if world.rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = world.bcast(port, root=0)  # setup only, pickling is fine here
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=world.rank, world_size=world.size
    )
    return lambda buf: dist.all_reduce(torch.from_numpy(buf))


def worker():
    from mpi4py import MPI

    from horn.bsp import Peer  # first: it sets libnbc's Iallreduce algorithm before MPI_Init

    world = MPI.COMM_WORLD
    peer = Peer.create(world, groups=None, workers=1)
    p = world.size

    def raw(buf):
        world.Allreduce(MPI.IN_PLACE, buf, MPI.SUM)

    def raw_scaled(buf):
        world.Allreduce(MPI.IN_PLACE, buf, MPI.SUM)
        buf /= p

    methods = {
        "raw": raw,
        "raw_mean": raw_scaled,
        "horn_sum": peer.allreduce_sum,
        "horn_mean": peer.allreduce_mean,
        "guard": lambda buf: peer.barrier("bench"),
    }
    gloo = gloo_all_reduce(world)
    if gloo is not None:
        methods["gloo"] = gloo
    rows = []
    for params in PARAMS:
        source = np.random.default_rng(world.rank).random(params, dtype=np.float32)
        buf = np.empty_like(source)
        times = {name: [] for name in methods}
        before = peer.bytes_sent_total
        for rep in range(WARMUP + REPS):
            names = list(methods)
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                np.copyto(buf, source)
                world.Barrier()
                t0 = time.perf_counter()
                methods[name](buf)
                times[name].append(time.perf_counter() - t0)
        horn_bytes = (peer.bytes_sent_total - before) // (2 * (WARMUP + REPS))  # sum + mean
        row = {"ranks": p, "params": params, "bytes_per_rank": horn_bytes}
        slowest = {}
        for name, values in times.items():
            slowest[name] = np.array(values[WARMUP:])
            world.Allreduce(MPI.IN_PLACE, slowest[name], MPI.MAX)
            row[name] = float(np.median(slowest[name]))
        for name, base in RATIOS:  # paired: both timed in the same repetition
            row[f"{name}/{base}"] = float(np.median(slowest[name] / slowest[base]))
        rows.append(row)
    if world.rank == 0:
        print("BENCH " + json.dumps(rows), flush=True)
    peer.close()


def launch(ranks):
    mpirun = Path(sys.prefix) / "bin" / "mpirun"
    env = dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO),
    )
    cmd = [
        str(mpirun) if mpirun.exists() else shutil.which("mpirun"),
        "--oversubscribe",
        "-n",
        str(ranks),
        sys.executable,
        __file__,
        "--worker",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sys.exit(f"mpirun -n {ranks} failed:\n{proc.stdout}{proc.stderr}")
    for line in proc.stdout.splitlines():
        if not line.startswith("BENCH "):
            print(line)
    return json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("BENCH "))[6:])


def table(rows):
    ms = lambda v: f"{v * 1e3:.3f}" if v is not None else "n/a"
    lines = [
        "| ranks | params | MB | bytes/rank (model) | raw Allreduce ms | raw + /p ms | horn sum ms "
        "| horn mean ms | watchdog barrier alone ms | gloo ms | horn sum / raw | horn mean / (raw + /p) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['ranks']} | {r['params'] >> 20}M | {4 * r['params'] / 2**20:.0f} | {r['bytes_per_rank']:,} "
            f"| {ms(r['raw'])} | {ms(r['raw_mean'])} | {ms(r['horn_sum'])} | {ms(r['horn_mean'])} "
            f"| {ms(r['guard'])} | {ms(r.get('gloo'))} | "
            + " | ".join(f"{r[f'{name}/{base}']:.2f}x" for name, base in RATIOS)
            + " |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    if parser.parse_args().worker:
        worker()
        return
    load_before = os.getloadavg()[0]
    rows = [row for ranks in RANKS for row in launch(ranks)]
    load = f"1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after the run"
    text = table(rows)
    print(text)
    print(load)
    note = (
        f"Measured by `python bench/barrier.py` on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}, {platform.system()}), Open MPI shared memory, "
        f"ranks oversubscribed when ranks > cores; {load}. Medians of {REPS} repetitions (after "
        f"{WARMUP} warm-up), each the slowest rank's time; ratios are medians of per-repetition "
        "ratios (both timed in the same repetition). bytes/rank is horn's ring cost model "
        "2*(p-1)/p * nbytes, which the other columns move too.\n\n"
        "horn sum/mean = in-place `Iallreduce` polled by the watchdog (+ `/= p` for the mean); "
        "watchdog barrier = `peer.barrier` (a polled `Ibarrier`); "
        "raw = mpi4py `Allreduce(MPI.IN_PLACE, buf, MPI.SUM)`; gloo = `torch.distributed.all_reduce` "
        "over TCP loopback.\n"
    )
    (REPO / "docs").mkdir(exist_ok=True)
    (REPO / "docs" / "barrier.md").write_text(
        "# Model-averaging barrier cost\n\n" + note + "\n" + text + "\n"
    )


if __name__ == "__main__":
    main()
