"""``horn compare RUN...``: several runs side by side, in one table and one PNG.

For each run: final and best validation/test accuracy, training seconds, bytes sent
(by the busiest rank), and the seconds and bytes it took to first reach the best
validation accuracy that *every* run reached (the fair finish line for a race).
"""

import math
from pathlib import Path

from horn.errors import HornError
from horn.metrics import read_metrics, records_of
from horn.paths import output_file


def load_run(path):
    """``(label, final record, [(seconds, bytes, val_accuracy) per evaluated epoch])``."""
    run_dir = Path(path)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise HornError(f"horn compare: {run_dir}: not a run directory (no metrics.jsonl)")
    try:
        rows = read_metrics(metrics)
    except ValueError as exc:
        raise HornError(f"horn compare: {metrics}: malformed JSON line ({exc})") from None
    epochs = records_of(rows, "epoch")
    if not epochs:
        raise HornError(f"horn compare: {metrics}: no epoch records yet")
    points = [
        (r["time_s"], max(r.get("bytes_sent_per_rank") or [0]), r["val_accuracy"])
        for r in epochs
        if not math.isnan(r.get("val_accuracy", math.nan))
    ]
    final = next(iter(records_of(rows, "final")), {})
    return run_dir.name, final, points, epochs[-1]


def first_reaching(points, target):
    """``(seconds, bytes)`` when validation accuracy first reached ``target`` (or None)."""
    return next(((s, b) for s, b, acc in points if acc >= target), None)


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def compare(run_dirs, png_path="compare.png"):
    """The table's lines; writes the PNG, exactly at ``png_path`` (checked before the runs
    are read: a ``.png`` file in an existing directory). Unfinished runs are shown up to
    their last epoch."""
    from horn.plots import plot_compare

    png_path = output_file(png_path, "compare.png", suffix=".png")
    runs = [load_run(d) for d in run_dirs]
    reached = [max((acc for _, _, acc in points), default=None) for _, _, points, _ in runs]
    common = min(reached) if runs and None not in reached else None
    header = (
        "run",
        "val",
        "test",
        "best val",
        "best test",
        "seconds",
        "MB sent",
        f"s to {_fmt(common, '.4f')}",
        f"MB to {_fmt(common, '.4f')}",
    )
    lines = [header]
    for label, final, points, last in runs:
        at = first_reaching(points, common) if common is not None else None
        lines.append(
            (
                label,
                _fmt(final.get("val_accuracy", last.get("val_accuracy")), ".4f"),
                _fmt(final.get("test_accuracy"), ".4f"),
                _fmt(final.get("best_val_accuracy"), ".4f"),
                _fmt(final.get("best_test_accuracy"), ".4f"),
                _fmt(final.get("time_s", last["time_s"]), ".1f"),
                _fmt(
                    max(final.get("bytes_sent_per_rank") or last.get("bytes_sent_per_rank") or [0])
                    / 1e6,
                    ",.2f",
                ),
                _fmt(at and at[0], ".1f"),
                _fmt(at and at[1] / 1e6, ",.2f"),
            )
        )
    try:
        plot_compare([(label, points) for label, _, points, _ in runs], png_path, common)
    except OSError as exc:
        raise HornError(f"--out {png_path}: cannot write: {exc.strerror or exc}") from None
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    text = [
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        )
        for row in lines
    ]
    return text + [f"MB: bytes sent by the busiest rank; plot: {png_path}"]


def cmd_compare(args):
    for line in compare(args.runs, args.out):
        print(line)
    return 0


def add_compare_command(sub):
    p = sub.add_parser(
        "compare",
        help="compare runs: one table and one PNG of validation "
        "accuracy against seconds and bytes sent",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument(
        "--out",
        default="compare.png",
        help="PNG file to write, in an existing directory (default compare.png)",
    )
    p.set_defaults(func=cmd_compare)
