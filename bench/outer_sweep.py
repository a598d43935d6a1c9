"""Rounds to 0.88 validation with outer optimizers, bytes of int8 averaging (issue 14).

    python bench/outer_sweep.py              # grid, then the winner vs plain and int8 vs fp32
    python bench/outer_sweep.py --part grid --steps 64,128    # a part, a smaller grid
    python bench/outer_sweep.py --report     # only print the tables from the results so far

The job is jobs/bench_cluster_100mbit.toml (MLP 784-1024-1024-10 on Fashion-MNIST, 2 ranks
of model averaging, inner SGD with Nesterov momentum 0.9, lr 0.05, batch 64 per rank, a
3-epoch cosine budget) on one host: rounds and bytes to an accuracy do not depend on the
network. Validation is read every round (``train.eval_steps``; every 2 rounds at 64 local
steps), always right after a barrier, so it costs no bytes.

1. Grid, seed 100 (validation only): local_steps 64 / 128 / 256 x {plain averaging,
   outer Nesterov (lr, momentum) in GRID}. The winner is the Nesterov setting with the
   smallest rounds to 0.88 over plain's at the same local_steps (then the higher final
   validation accuracy).
2. Seeds 0, 1, 2: the winner and plain at its local_steps; int8 (block 256, error
   feedback) and fp32 averaging at 128 local steps.

Bytes are rank 0's, from metrics.jsonl: "total" is the final record's count; "barriers"
sums the superstep records with each capped at the most common superstep's bytes (one
averaging exchange plus the 24-byte superstep header), which leaves out the fp32 averaged
copy evaluated at epoch ends that do not fall on a barrier. Runs go under ``nice -n 10``;
results append to runs/outer_sweep/results.jsonl and are reused on a rerun.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "jobs/bench_cluster_100mbit.toml"
OUT = REPO / "runs/outer_sweep"
TARGET = 0.88
STEPS = (64, 128, 256)
GRID = ((0.7, 0.9), (1.0, 0.5))  # DiLoCo's setting, and a milder one
TUNE_SEED, SEEDS = 100, (0, 1, 2)
INT8_STEPS = 128


def config(steps, outer=None, compress=None):
    """(name, --set overrides) of one configuration."""
    sets = [f"parallel.local_steps={steps}", f"train.eval_steps={max(steps, 128)}"]
    name = f"L{steps}-plain"
    if outer:
        lr, momentum = outer
        name = f"L{steps}-nesterov-lr{lr}-m{momentum}"
        sets += [
            "parallel.average.outer=nesterov",
            f"parallel.average.outer_lr={lr}",
            f"parallel.average.outer_momentum={momentum}",
        ]
    if compress:
        name = f"L{steps}-{compress}"
        sets += [f"parallel.average.compress={compress}", "parallel.average.block=256"]
    return name, sets


def mpirun():
    candidate = Path(sys.prefix) / "bin" / "mpirun"
    return str(candidate) if candidate.exists() else "mpirun"


def run(name, sets, seed):
    """One 2-rank run: its summary from metrics.jsonl."""
    argv = [mpirun(), "--oversubscribe", "--bind-to", "none", "-n", "2", "nice", "-n", "10"]
    argv += [sys.executable, "-m", "horn.cli", "run", str(JOB), "--quiet"]
    for item in [*sets, f"train.seed={seed}", f"log.dir={OUT / 'runs'}", "log.plot=false"]:
        argv += ["--set", item]
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{name} seed {seed} failed:\n{done.stderr[-3000:]}")
    run_dir = done.stdout.strip().splitlines()[-1].split("run directory ")[1]
    return summary(name, seed, sets, run_dir)


def summary(name, seed, sets, run_dir):
    """One run's rounds, curve, bytes and accuracies, from its metrics.jsonl."""
    rows = [json.loads(line) for line in open(Path(run_dir) / "metrics.jsonl")]
    steps = int(next(s.split("=")[1] for s in sets if s.startswith("parallel.local_steps")))
    curve = [
        (r["step"], r["val_accuracy"], r["bytes_sent_per_rank"][0])
        for r in rows
        if r.get("kind") in ("eval", "epoch")
    ]
    supersteps = [r["bytes_sent"] for r in rows if r.get("kind") == "superstep"]
    barrier = Counter(supersteps).most_common(1)[0][0]
    final = next(r for r in rows if r.get("kind") == "final")
    return {
        "config": name,
        "seed": seed,
        "local_steps": steps,
        "curve": curve,
        "rounds": len(supersteps),
        "bytes_total": final["bytes_sent_per_rank"][0],
        "bytes_barriers": sum(min(b, barrier) for b in supersteps),
        "final_val": final["val_accuracy"],
        "final_test": final["test_accuracy"],
        "run_dir": run_dir,
        "load": os.getloadavg()[0],
    }


def rounds_to(result, target=TARGET):
    """Rounds done at the first validation at or above ``target`` (None: not reached)."""
    hit = next((step for step, val, _ in result["curve"] if val >= target), None)
    return None if hit is None else math.ceil(hit / result["local_steps"])


def load():
    path = OUT / "results.jsonl"
    if not path.exists():
        return {}
    rows = (json.loads(line) for line in open(path))
    return {(r["config"], r["seed"]): r for r in rows}


def run_all(jobs, results):
    """Run the (name, sets, seed) not yet in the results file (read again before each
    run: another sweep may have added it), three at a time (niced, on shared cores)."""

    def fresh(job):
        name, sets, seed = job
        return None if (name, seed) in load() else run(name, sets, seed)

    todo = [(n, s, seed) for n, s, seed in jobs if (n, seed) not in results]
    OUT.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(3) as pool:
        for r in filter(None, pool.map(fresh, todo)):
            results[(r["config"], r["seed"])] = r
            with open(OUT / "results.jsonl", "a") as f:
                f.write(json.dumps(r) + "\n")
            print(
                f"  {r['config']:28} seed {r['seed']:3}  rounds to {TARGET}: "
                f"{rounds_to(r) or 'not reached'} of {r['rounds']}  val {r['final_val']:.4f}  "
                f"test {r['final_test']:.4f}  load {r['load']:.1f}",
                flush=True,
            )


def grid_configs(local_steps=STEPS):
    for steps in local_steps:
        yield config(steps)
        for outer in GRID:
            yield config(steps, outer)


def winner(results, grid):
    """The Nesterov configuration (name, sets) with the best rounds ratio to plain."""

    def key(item):
        r = results[(item[0], TUNE_SEED)]
        ours, plain = rounds_to(r), rounds_to(results[(config(r["local_steps"])[0], TUNE_SEED)])
        return (ours / plain if ours and plain else math.inf, -r["final_val"])

    return min((c for c in grid if "nesterov" in c[0]), key=key)


def fmt(value, spec=""):
    return "not reached" if value is None else format(value, spec)


def grid_table(results, grid):
    lines = [
        f"Grid, seed {TUNE_SEED} (validation split): rounds to {TARGET} validation",
        "",
        "| configuration | rounds to 0.88 | vs plain | rounds in all | final val | load |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, _ in grid:
        r = results.get((name, TUNE_SEED))
        if r is None:
            continue
        plain = results.get((f"L{r['local_steps']}-plain", TUNE_SEED))
        ratio = plain and rounds_to(plain) and rounds_to(r) and rounds_to(r) / rounds_to(plain)
        lines.append(
            f"| {name} | {fmt(rounds_to(r))} | {fmt(ratio or None, '.2f')} | {r['rounds']} | "
            f"{r['final_val']:.4f} | {r['load']:.1f} |"
        )
    return "\n".join(lines)


def seeds_table(results, names):
    lines = [
        f"Seeds {', '.join(map(str, SEEDS))}: rounds to {TARGET} validation, final test accuracy, "
        "MB sent per rank",
        "",
        "| configuration | rounds to 0.88 | median | final test | median | MB total | "
        "MB barriers | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        rs = [results[(name, s)] for s in SEEDS if (name, s) in results]
        if not rs:
            continue
        rounds = [rounds_to(r) for r in rs]
        reached = [x for x in rounds if x is not None]
        med = statistics.median(reached) if len(reached) == len(rs) else None
        lines.append(
            f"| {name} | {' / '.join(fmt(x) for x in rounds)} | {fmt(med, 'g')} | "
            f"{' / '.join(format(r['final_test'], '.4f') for r in rs)} | "
            f"{statistics.median(r['final_test'] for r in rs):.4f} | "
            f"{statistics.median(r['bytes_total'] for r in rs) / 1e6:.1f} | "
            f"{statistics.median(r['bytes_barriers'] for r in rs) / 1e6:.1f} | "
            f"{min(r['load'] for r in rs):.1f}-{max(r['load'] for r in rs):.1f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="print the tables, run nothing")
    parser.add_argument(
        "--part",
        choices=("all", "grid", "int8", "seeds"),
        default="all",
        help="grid: the tuning runs; int8: int8 and fp32 on the seeds; seeds: the winner "
        "and plain on the seeds (needs the grid)",
    )
    parser.add_argument("--steps", default=",".join(map(str, STEPS)), help="grid local_steps")
    args = parser.parse_args()
    steps = tuple(int(s) for s in args.steps.split(","))
    results = load()
    plain8, int8 = config(INT8_STEPS), config(INT8_STEPS, compress="int8")
    grid = list(grid_configs(steps))
    if not args.report and args.part in ("all", "grid"):
        run_all([(n, s, TUNE_SEED) for n, s in grid], results)
    if not args.report and args.part in ("all", "int8"):
        run_all([(n, s, seed) for n, s in (plain8, int8) for seed in SEEDS], results)
    print(grid_table(results, grid))
    if all((n, TUNE_SEED) in results for n, _ in grid):
        best = winner(results, grid)
        plain = config(results[(best[0], TUNE_SEED)]["local_steps"])
        if not args.report and args.part in ("all", "seeds"):
            run_all([(n, s, seed) for n, s in (best, plain) for seed in SEEDS], results)
        print(f"\nwinner on seed {TUNE_SEED}: {best[0]}\n")
        print(seeds_table(results, [plain[0], best[0]]))
    print()
    print(seeds_table(results, [plain8[0], int8[0]]))


if __name__ == "__main__":
    sys.exit(main())
