"""horn vs PyTorch DDP across 2 simulated hosts at unlimited, 1 Gbit/s and 100 Mbit/s (issue 12).

    python bench/cluster.py                   # every configuration x rate: docs/cluster.md, .png
    python bench/cluster.py --quick           # smoke test: tiny data, short budget
    python bench/cluster.py --rates 1gbit --configs ma_tuned,ma_1gbit --seed 100   # tuning
    python bench/cluster.py --rates unlimited,100mbit --configs ddp,ma_100mbit_int8_64 --seed 1

Only seed 0 (without --set or --quick) writes runs/cluster/results.jsonl and docs/cluster.md;
any other seed appends to runs/cluster/results-tune.jsonl and prints its table. --resume
reuses that file's runs of the same seed. An extrapolated row needs its unlimited run: in
--rates, or from --resume; without either it runs to 0.88 at the low rate (DDP at 100 Mbit/s:
about 10 minutes).

bench/vs_torch.py's configurations (same job, data split, network, initial weights,
optimizer, schedule and workers: imported, not copied), each on 2 hosts of a simulated
cluster (horn.cluster: network namespaces on one bridge, 1 rank per host, 1 thread per
rank): horn under mpirun with the cluster's launch agent over TCP, PyTorch DDP over gloo
(GLOO_SOCKET_IFNAME=eth0, the master on host 1). Links are limited with tc tbf on both
ends of every host's veth.

Time to 0.88 validation accuracy: runs to that accuracy at every rate, except the
communication-bound peers named in EXTRAPOLATED (DDP, horn synchronous, and MA every 8
steps at 100 Mbit/s), whose epochs to 0.88 do not depend on the bandwidth: they are run to
0.88 unlimited, and at the lower rates only for a 1-epoch run on ``LIMIT`` samples, whose
seconds per step give seconds per full epoch; time to 0.88 = the unlimited run's epochs to
0.88 x that. The table marks those rows. Communication share of the training time: horn's
own accounting (communication seconds of rank 0's superstep records / training seconds);
for DDP, which overlaps its all-reduces with backward, a lower bound: 1 - (seconds per step
unlimited / seconds per step at the rate).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from argparse import Namespace
from datetime import datetime
from pathlib import Path

import horn  # noqa: F401  first: horn pins Numba's threading layer before numba/torch load

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_torch  # noqa: E402  bench/vs_torch.py: configurations, workers, run_once

from horn import cluster as simulated  # noqa: E402

REPO = vs_torch.REPO
VS_TORCH = Path(vs_torch.__file__).resolve()
OUT = REPO / "runs/cluster"
DOCS = REPO / "docs"
RATES = ("unlimited", "1gbit", "100mbit")
TARGET = 0.88
LIMIT = 8192  # training samples of an extrapolation run (its seconds per step)
NAME = "bench"  # the simulated cluster's name (--cluster: two benches at once must differ)
CONFIGS = {
    name: vs_torch.CONFIGS[name]
    for name in ("ddp", "sync", "ma", "ma_tuned", "subnet_tuned", "ec")
    if name in vs_torch.CONFIGS
}
# tuned per bandwidth on the validation split only (seeds 100+), each a job file of its own
TUNED = {
    "ma_1gbit": {
        "label": "horn model averaging, tuned for 1 Gbit/s (jobs/bench_cluster_1gbit.toml)",
        "kind": "horn",
        "procs": 2,
        "job": "jobs/bench_cluster_1gbit.toml",
    },
    "ma_100mbit": {
        "label": "horn model averaging, tuned for 100 Mbit/s (jobs/bench_cluster_100mbit.toml)",
        "kind": "horn",
        "procs": 2,
        "job": "jobs/bench_cluster_100mbit.toml",
    },
    "ma_100mbit_int8": {
        "label": "horn model averaging, int8 exchanges, tuned for 100 Mbit/s "
        "(jobs/bench_cluster_100mbit_int8.toml)",
        "kind": "horn",
        "procs": 2,
        "job": "jobs/bench_cluster_100mbit_int8.toml",
    },
    "ma_100mbit_int8_64": {
        "label": "horn model averaging every 64 steps, int8 exchanges "
        "(jobs/bench_cluster_100mbit_int8_64.toml)",
        "kind": "horn",
        "procs": 2,
        "job": "jobs/bench_cluster_100mbit_int8_64.toml",
    },
}
CONFIGS.update({n: c for n, c in TUNED.items() if (REPO / c["job"]).exists()})
# Hierarchical averaging (issue 14): 2 hosts x 2 ranks ("slots": ranks per host), flat
# against the host's mean every local_steps and the world's every across_every rounds.
# Choices tuned on the validation split only (seeds 100+).
HIERARCHY = {
    "ma2x2_flat": ("flat averaging every 64 steps", {"local_steps": 64}),
    "ma2x2_hier_32x4": (
        "hierarchical: host every 32 steps, world every 128",
        {"local_steps": 32, "average": {"across_every": 4}},
    ),
    "ma2x2_hier_64x2": (
        "hierarchical: host every 64 steps, world every 128",
        {"local_steps": 64, "average": {"across_every": 2}},
    ),
}
CONFIGS.update(
    {
        name: {
            "label": f"horn 2 hosts x 2 ranks, {what} (jobs/bench_cluster_2x2.toml)",
            "kind": "horn",
            "procs": 4,
            "slots": 2,
            "job": "jobs/bench_cluster_2x2.toml",
            "parallel": parallel,
        }
        for name, (what, parallel) in HIERARCHY.items()
    }
)
EXTRAPOLATED = {
    ("ddp", "1gbit"),
    ("ddp", "100mbit"),
    ("sync", "1gbit"),
    ("sync", "100mbit"),
    ("ma", "100mbit"),
}
GOALS = {"1gbit": 0.25, "100mbit": 0.05}  # best horn time to 0.88 / DDP's (issue 14)
COMM_GOAL = 0.25  # the best configuration's communication share of its training time


def cluster_launch(c):
    """``vs_torch.run_once``'s launcher for cluster ``c``: one rank or DDP process per host."""

    def launch(name, config, spec_path, out_path, args):
        me = [sys.executable, str(VS_TORCH)]
        if config["kind"] == "horn":
            argv = c.mpirun_argv(
                [*me, "--worker", "horn", spec_path, out_path], ranks=config["procs"]
            )
            env = vs_torch.thread_env(1, c.environment())
            return [
                subprocess.Popen(
                    argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
            ], [out_path]
        world = config["procs"]
        outs = [out_path.with_suffix(f".r{r}") for r in range(world)]
        extra = {"MASTER_ADDR": c.address(1), "MASTER_PORT": "29512", "GLOO_SOCKET_IFNAME": "eth0"}
        return [
            subprocess.Popen(
                c.host_argv(
                    r + 1, [*me, *vs_torch.torch_worker_args(spec_path, outs[r], r, world, config)]
                ),
                env=vs_torch.thread_env(config["threads"], extra),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for r in range(world)
        ], outs

    return launch


def comm_share(result):
    """Rank 0's communication seconds / training seconds (horn runs), from metrics.jsonl."""
    path = Path(result.get("run_dir", "")) / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in open(path)]
    comm = sum(r.get("comm_s", 0.0) for r in rows if "superstep" in r)
    return comm / result["train_s"] if result["train_s"] else None


def seconds_per_step(result):
    e = result["epochs"][0]
    return e["time_s"] / e["step"]


def run(name, rate, seed, args, launch, extrapolate):
    config = CONFIGS[name]
    run_args = Namespace(
        epochs=1 if extrapolate else args.epochs,
        limit=LIMIT if extrapolate else args.limit,
        width=0,
        set=args.set,
        full_runs=1,
        timeout=args.timeout,
        profile=False,
    )
    result = vs_torch.run_once(
        name, config, seed, run_args, stop_at=None if extrapolate else TARGET, launch=launch
    )
    result.update(rate=rate, extrapolation_run=extrapolate, comm_share=comm_share(result))
    return result


def row_of(name, rate, results):
    """Time, bytes, epochs to 0.88 and communication share of one configuration at one rate."""
    r = results.get((name, rate))
    if r is None:
        return None
    base = results.get((name, "unlimited"))
    if r["extrapolation_run"]:
        hit = base and vs_torch.first_reach(base, TARGET)
        steps_per_epoch = base["epochs"][0]["step"]
        per_epoch = steps_per_epoch * seconds_per_step(r)
        time_s = hit[2] * per_epoch if hit else None
        bytes_, epochs = (hit[1], hit[2]) if hit else (None, None)
    else:
        hit = vs_torch.first_reach(r, TARGET)
        time_s, bytes_, epochs = hit if hit else (None, None, None)
        per_epoch = r["epochs"][0]["time_s"] if r["epochs"] else None
    reached = next((e for e in r["epochs"] if e["val_accuracy"] >= TARGET), None)
    share = r["comm_share"]
    if CONFIGS[name]["kind"] == "ddp" and base and rate != "unlimited":
        share = max(0.0, 1 - seconds_per_step(base) / seconds_per_step(r))
    return {
        "config": name,
        "rate": rate,
        "time": time_s,
        "bytes": bytes_,
        "epochs": epochs,
        "s_per_epoch": per_epoch,
        "comm_share": share,
        "extrapolated": r["extrapolation_run"],
        "load": r["load"],
        "val": r["epochs"][-1]["val_accuracy"] if r["epochs"] else None,
        # extrapolated rows: not measured at this rate
        "inter_host": reached.get("inter_host_bytes")
        if reached and not r["extrapolation_run"]
        else None,
        "test": r["test_at"].get(str(TARGET)),
    }


def fmt(value, spec, missing="n/a"):
    return missing if value is None else format(value, spec)


def table(rows_by_rate):
    lines = [
        "| configuration | rate | s to 0.88 val | vs DDP | MB to 0.88 / rank | inter-host MB "
        "to 0.88, all ranks | test acc. at 0.88 val | epochs | s / epoch | comm share | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rate, rows in rows_by_rate.items():
        ddp = next((r for r in rows if r["config"] == "ddp"), None)
        for r in rows:
            ratio = (r["time"] / ddp["time"]) if ddp and ddp["time"] and r["time"] else None
            is_ddp = CONFIGS[r["config"]]["kind"] == "ddp"
            share = None if is_ddp and rate == "unlimited" else r["comm_share"]
            share_text = "n/a" if share is None else f"{'>= ' if is_ddp else ''}{100 * share:.0f}%"
            lines.append(
                f"| {CONFIGS[r['config']]['label']} | {rate} | "
                f"{fmt(r['time'], '.1f', 'not reached')}{' (extrapolated)' if r['extrapolated'] else ''} | "
                f"{fmt(ratio, '.2f') + 'x' if ratio else 'n/a'} | {fmt(r['bytes'] and r['bytes'] / 1e6, ',.0f')} | "
                f"{fmt(r['inter_host'] and r['inter_host'] / 1e6, ',.0f')} | {fmt(r['test'], '.4f')} | "
                f"{fmt(r['epochs'], '.0f')} | {fmt(r['s_per_epoch'], '.1f')} | {share_text} | "
                f"{r['load']:.1f} |"
            )
    return "\n".join(lines)


def verdicts(rows_by_rate):
    lines = []
    for rate, goal in GOALS.items():
        rows = rows_by_rate.get(rate, [])
        ddp = next((r for r in rows if r["config"] == "ddp" and r["time"]), None)
        horn_rows = [r for r in rows if CONFIGS[r["config"]]["kind"] == "horn" and r["time"]]
        if not ddp or not horn_rows:
            lines.append(f"- {rate}: not measured")
            continue
        best = min(horn_rows, key=lambda r: r["time"])
        ratio, share = best["time"] / ddp["time"], best["comm_share"]
        lines.append(
            f"- {rate}: best horn configuration `{best['config']}` reaches 0.88 in "
            f"{best['time']:.1f} s against DDP's {ddp['time']:.1f} s: **{ratio:.3f}x** "
            f"(target <= {goal}x: {'met' if ratio <= goal else 'missed'}); communication "
            f"{fmt(share and 100 * share, '.0f')}% of its training time (target <= "
            f"{100 * COMM_GOAL:.0f}%: {'met' if share is not None and share <= COMM_GOAL else 'missed'})"
        )
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [rate for rate in RATES if any(r == rate for _, r in results)]  # --rates measured
    fig, axes = plt.subplots(1, len(rates), figsize=(6 * len(rates), 5), sharey=True, squeeze=False)
    axes = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, rate in zip(axes, rates):
        for i, name in enumerate(CONFIGS):
            r = results.get((name, rate))
            if r is None:
                continue
            style = "--" if CONFIGS[name]["kind"] != "horn" else "-"
            if r["extrapolation_run"]:  # the unlimited run's curve on this rate's clock
                base = results.get((name, "unlimited"))
                if not base:
                    continue
                scale = seconds_per_step(r) / seconds_per_step(base)
                xs = [e["time_s"] * scale for e in base["epochs"]]
                ys = [e["val_accuracy"] for e in base["epochs"]]
                label, style = f"{name} (extrapolated)", ":"
            else:
                xs = [e["time_s"] for e in r["epochs"]]
                ys = [e["val_accuracy"] for e in r["epochs"]]
                label = name
            ax.plot(xs, ys, style, marker=".", color=colors[i % len(colors)], label=label)
        ax.axhline(TARGET, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_ylim(0.75, 0.92)
        ax.set_title(f"2 hosts, {rate}")
        ax.set_xlabel("wall seconds of training (log)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("validation accuracy")
    fig.suptitle("Fashion-MNIST MLP 784-1024-1024-10 across 2 simulated hosts: horn vs PyTorch DDP")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_doc(text, verdict_text, loads, elapsed):
    doc = DOCS / "cluster.md"
    kept = ""
    if doc.exists() and vs_torch.ANALYSIS in doc.read_text():
        kept = "\n" + doc.read_text()[doc.read_text().index(vs_torch.ANALYSIS) :]
    doc.write_text(
        "# horn vs PyTorch DDP across 2 simulated hosts\n\n"
        f"Measured {datetime.now():%Y-%m-%d %H:%M} by "
        f"`{' '.join(['python bench/cluster.py', *sys.argv[1:]])}` in "
        f"{elapsed / 60:.0f} minutes; 1-minute load average before each run: min "
        f"{min(loads):.1f}, median {statistics.median(loads):.1f}, max {max(loads):.1f} "
        f"({os.cpu_count()} cores shared with other work). 2 hosts of `horn cluster` (network "
        "namespaces on one bridge, tc tbf on both ends of each link), 1 rank (or DDP process) "
        "per host, 1 thread each. The jobs, network, initial weights, optimizer and schedule are "
        'bench/vs_torch.py\'s (see docs/vs_torch.md); one seed. "(extrapolated)": the unlimited '
        f"run's epochs to 0.88 x seconds per epoch from a 1-epoch run on {LIMIT} samples at "
        "that rate (epochs to accuracy do not depend on the bandwidth). MB: sent per rank, "
        "ring model (as in docs/vs_torch.md). Comm share: rank 0's communication seconds / "
        "training seconds (horn's superstep records); DDP overlaps its all-reduce with "
        "backward, so its share is a lower bound from the step time against unlimited.\n\n"
        + text
        + "\n\nTargets:\n\n"
        + verdict_text
        + "\n\n"
        "![validation accuracy vs wall seconds at each bandwidth](cluster.png)\n" + kept
    )
    plot_path = DOCS / "cluster.png"
    return doc, plot_path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 epochs of 8192 samples")
    parser.add_argument("--configs", default="all", help=f"subset of: {', '.join(CONFIGS)}")
    parser.add_argument("--rates", default=",".join(RATES), help="comma-separated tc rates")
    parser.add_argument("--seed", type=int, default=0, help="seed (tuning: 100 and up)")
    parser.add_argument("--epochs", type=int, default=5, help="budget of the BASE-job rows")
    parser.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override every horn job (tuning only)",
    )
    parser.add_argument("--timeout", type=int, default=900, help="seconds per run")
    parser.add_argument("--resume", action="store_true", help="reuse runs/cluster/results.jsonl")
    parser.add_argument("--cluster", default=NAME, help=f"simulated cluster name ({NAME})")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.limit = 2, 8192
    names = list(CONFIGS) if args.configs == "all" else args.configs.split(",")
    rates = args.rates.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    slots_of = {n: CONFIGS[n].get("slots", 1) for n in names}  # ranks per host
    simulated.require_privileges()
    OUT.mkdir(parents=True, exist_ok=True)
    tuning = bool(args.seed or args.set or args.quick)
    results_path = OUT / ("results-tune.jsonl" if tuning else "results.jsonl")
    results = {}
    if args.resume and results_path.exists():
        for line in open(results_path):  # this seed's runs only (the tuning file holds many)
            r = json.loads(line)
            if r["seed"] == args.seed:
                results[(r["config"], r["rate"])] = r
    elif results_path.exists() and not tuning:
        results_path.unlink()
    for rate, slots in [(rate, s) for rate in rates for s in sorted(set(slots_of.values()))]:
        c = simulated.up(2, rate=rate, name=simulated.check_name(args.cluster), slots=slots)
        try:
            for name in [n for n in names if slots_of[n] == slots]:
                extrapolate = (name, rate) in EXTRAPOLATED and (
                    "unlimited" in rates or (name, "unlimited") in results
                )
                if (name, rate) in results:
                    continue
                r = run(name, rate, args.seed, args, cluster_launch(c), extrapolate)
                results[(name, rate)] = r
                with open(results_path, "a") as f:
                    f.write(json.dumps(r) + "\n")
                row = row_of(name, rate, results)
                print(
                    f"  {name:12} {rate:9} to {TARGET}: {fmt(row['time'], '.1f', 'not reached')} s"
                    f"{' (extrapolated)' if extrapolate else ''}  "
                    f"{fmt(row['bytes'] and row['bytes'] / 1e6, ',.0f')} MB  inter-host "
                    f"{fmt(row['inter_host'] and row['inter_host'] / 1e6, ',.0f')} MB  "
                    f"{fmt(row['s_per_epoch'], '.1f')} s/epoch  comm "
                    f"{fmt(row['comm_share'] and 100 * row['comm_share'], '.0f')}%  "
                    f"last val {fmt(row['val'], '.4f')}  load {r['load']:.1f}",
                    flush=True,
                )
        finally:
            simulated.down(args.cluster)
    rows_by_rate = {
        rate: [row for name in names if (row := row_of(name, rate, results)) is not None]
        for rate in rates
    }
    text, verdict_text = table(rows_by_rate), verdicts(rows_by_rate)
    print(text)
    print(verdict_text)
    if not tuning:
        loads = [r["load"] for r in results.values()]
        elapsed = sum(r["wall_s"] for r in results.values())
        doc, plot_path = write_doc(text, verdict_text, loads, elapsed)
        plot(results, plot_path)
        print(f"wrote {doc} and {plot_path}")


if __name__ == "__main__":
    sys.exit(main())
