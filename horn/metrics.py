"""Run artefacts: metrics.jsonl (one JSON object per line), the progress line, the plot."""

import json
import math
import sys


class MetricsLog:
    """Append-only JSON lines, flushed per record so a killed run keeps what it logged."""

    def __init__(self, path, truncate_to=None):
        self.path = path
        self.file = open(path, "a") if path else None
        if self.file and truncate_to is not None:  # a resumed run drops what came after
            self.file.truncate(truncate_to)       # its checkpoint
            self.file.seek(truncate_to)

    def tell(self):
        """Bytes written so far (a checkpoint records it to truncate to on resume)."""
        return self.file.tell() if self.file else 0

    def write(self, record):
        if self.file:
            self.file.write(json.dumps(record, allow_nan=True) + "\n")
            self.file.flush()

    def close(self):
        if self.file:
            self.file.close()


def progress_line(record, total_epochs):
    val = record.get("val_accuracy")
    val_text = "  val_acc n/a" if val is None or math.isnan(val) else f"  val_acc {val:.4f}"
    return (f"epoch {record['epoch']:>3}/{total_epochs}  loss {record['loss']:.4f}  "
            f"train_acc {record['train_accuracy']:.4f}{val_text}  "
            f"{record['samples_per_s']:,.0f} samples/s  {record['time_s']:.1f}s")


def print_progress(text, enabled=True):
    if enabled:
        print(text, file=sys.stdout, flush=True)


def plot_curves(metrics_path, png_path, title):
    """Loss and accuracy per epoch from metrics.jsonl into a PNG (matplotlib, no screen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_path)]
    epochs = [r for r in rows if "epoch" in r]
    if not epochs:
        return
    xs = [r["epoch"] for r in epochs]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(xs, [r["loss"] for r in epochs], label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_acc.plot(xs, [r["train_accuracy"] for r in epochs], label="train (running)")
    ax_acc.plot(xs, [r.get("val_accuracy") for r in epochs], label="validation")
    ax_acc.set_xlabel("epoch")
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
