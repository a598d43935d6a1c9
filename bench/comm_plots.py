"""docs/comm.png: validation accuracy against bytes, and against seconds per bandwidth (issue 14).

    python bench/comm_plots.py          # from runs/outer_sweep/results.jsonl (bench/outer_sweep.py)

Top: validation accuracy against MB sent per rank, as measured (rank 0's count in
metrics.jsonl at each validation; bandwidth does not change it). Bottom, one panel per
bandwidth: the same curves against **modelled** seconds, ``steps x COMPUTE_S + bytes /
line rate``, because the 2-core machine was too loaded to time runs when this was made:
COMPUTE_S is a measured step of these jobs at low load, and the line rate is what horn's
ring Iallreduce reached at 1 Gbit/s (62.9 ms for 7.45 MB, docs/cluster.md), so the
communication part is a lower bound. PyTorch DDP's measured seconds and bytes to 0.88
(docs/cluster.md) are drawn as one marker each.
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "runs/outer_sweep/results.jsonl"
TARGET = 0.88
# docs/cluster.md 2026-12-02: jobs/bench_cluster_100mbit.toml unlimited, 10.1 s for 422 steps
COMPUTE_S = 10.1 / 422
RATES = {"1 Gbit/s": 1e9 / 8, "100 Mbit/s": 100e6 / 8}  # bytes per second on the wire
# PyTorch DDP to 0.88 (docs/cluster.md): seconds (extrapolated there), MB per rank
DDP = {"1 Gbit/s": (191.7, 6262), "100 Mbit/s": (557.8, 6262)}
SHOWN = {  # configuration -> label (seed 0, else the tuning seed's run)
    "L128-plain": "MA every 128 steps, fp32",
    "L128-int8": "MA every 128 steps, int8 + error feedback",
    "L128-nesterov-lr1.0-m0.5": "MA every 128, outer Nesterov lr 1.0 m 0.5",
    "L64-plain": "MA every 64 steps, fp32",
    "L64-nesterov-lr1.0-m0.5": "MA every 64, outer Nesterov lr 1.0 m 0.5",
}


def curves(path):
    """config -> (steps, MB per rank, validation accuracy) points of its seed 0 run (or,
    failing that, its tuning run)."""
    runs = {}
    for line in open(path):
        r = json.loads(line)
        if r["config"] in SHOWN and (r["seed"] == 0 or r["config"] not in runs):
            runs[r["config"]] = [(step, b / 1e6, val) for step, val, b in r["curve"]]
    return runs


def plot(runs, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(RATES), figsize=(13, 9))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    top = plt.subplot2grid((2, len(RATES)), (0, 0), colspan=len(RATES), fig=fig)
    for ax in axes[0]:
        ax.remove()
    for i, (name, label) in enumerate(SHOWN.items()):
        points = runs.get(name)
        if not points:
            continue
        color = colors[i % len(colors)]
        top.plot(
            [p[1] for p in points],
            [p[2] for p in points],
            "-",
            marker=".",
            color=color,
            label=label,
        )
        for ax, rate in zip(axes[1], RATES.values()):
            xs = [s * COMPUTE_S + mb * 1e6 / rate for s, mb, _ in points]
            ax.plot(xs, [p[2] for p in points], "-", marker=".", color=color, label=label)
    top.plot([DDP["1 Gbit/s"][1]], [TARGET], "kx", ms=9, label="PyTorch DDP at 0.88 (measured)")
    top.set_xscale("log")
    top.set_xlabel("MB sent per rank (measured, log)")
    top.set_title("2 ranks: accuracy against bytes (the same at every bandwidth)")
    for ax, rate in zip(axes[1], RATES):
        seconds, _ = DDP[rate]
        ax.plot([seconds], [TARGET], "kx", ms=9, label="PyTorch DDP at 0.88 (measured)")
        ax.set_xscale("log")
        ax.set_xlabel("seconds of training, modelled: steps x 23.9 ms + bytes / line rate (log)")
        ax.set_title(f"2 hosts, {rate}")
    for ax in (top, *axes[1]):
        ax.axhline(TARGET, color="grey", lw=0.8, ls=":")
        ax.set_ylim(0.8, 0.895)
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(
        "Fashion-MNIST MLP 784-1024-1024-10, model averaging on 2 ranks (bench/outer_sweep.py)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--out", default=str(REPO / "docs/comm.png"))
    args = parser.parse_args()
    plot(curves(args.results), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
