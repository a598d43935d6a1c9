"""horn's synchronous data-parallel step (local_steps = 1), this tree against an older one.

    python bench/sync_step.py [--before REV] [--reps 3] [--steps 300]

Runs ``jobs/bench_ma.toml`` (Fashion-MNIST, 784-1024-1024-10, batch 64 per rank) with
``local_steps = 1`` on 2 ranks of one host, 1 thread each, alternately from this working
tree and from git revision REV (default ``main``, extracted with ``git archive``), and
prints each one's median superstep (compute + communication, rank 0's records) in
milliseconds, its communication part, and the ratio. Every step is one Allreduce of the
7.5 MB parameter buffer plus one sync().
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MPIRUN = str(Path(sys.prefix) / "bin" / "mpirun")


def step_ms(code_dir, steps, log_dir):
    env = dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        PYTHONPATH=str(code_dir),
    )
    cmd = [
        MPIRUN,
        "--oversubscribe",
        "-n",
        "2",
        "-x",
        "PYTHONPATH",
        sys.executable,
        "-m",
        "horn.cli",
        "run",
        str(ROOT / "jobs" / "bench_ma.toml"),
        "--quiet",
        "--set",
        "parallel.local_steps=1",
        "--set",
        f"train.steps={steps}",
        "--set",
        "train.threads=1",
        "--set",
        "train.eval_every=1000",
        "--set",
        f"log.dir={log_dir}",
        "--set",
        "log.plot=false",
    ]
    proc = subprocess.run(cmd, cwd=code_dir, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        sys.exit(f"{code_dir}: horn run failed:\n{proc.stderr[-2000:]}")
    run_dir = proc.stdout.strip().splitlines()[-1].split("run directory ")[1]
    rows = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    steps = [r["compute_s"] + r["comm_s"] for r in rows if "superstep" in r]
    return 1e3 * statistics.median(steps), 1e3 * statistics.median(
        r["comm_s"] for r in rows if "superstep" in r
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="main", help="git revision to compare against")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    before = tmp / "before"
    before.mkdir()
    archive = subprocess.run(
        ["git", "archive", args.before], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    load = os.getloadavg()[0]
    times = {"before": [], "after": []}
    for rep in range(args.reps):
        for name, code in (("before", before), ("after", ROOT))[:: 1 if rep % 2 == 0 else -1]:
            times[name].append(step_ms(code, args.steps, tmp / "runs"))
            print(
                f"rep {rep} {name}: {times[name][-1][0]:.1f} ms/step "
                f"({times[name][-1][1]:.1f} ms communication)",
                flush=True,
            )
    (b, bc), (a, ac) = (
        (statistics.median(t[0] for t in times[k]), statistics.median(t[1] for t in times[k]))
        for k in ("before", "after")
    )
    print(
        f"synchronous step (median superstep: compute + communication), 2 ranks, one host: "
        f"{args.before} {b:.1f} ms ({bc:.1f} communication), this tree {a:.1f} ms "
        f"({ac:.1f}); after / before {a / b:.2f}x; load average {load:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )


if __name__ == "__main__":
    main()
