"""PNG figures from metrics.jsonl: a run's curve.png and ``horn compare``'s picture."""

from horn.metrics import read_metrics, records_of


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    return plt


def _epoch_axis(ax, epochs):
    """Whole-epoch ticks, and room around a single epoch so its point shows."""
    from matplotlib.ticker import MaxNLocator

    first, last = min(epochs), max(epochs)
    if last - first < 10:
        ax.set_xticks(range(first, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    ax.set_xlabel("epoch")


def plot_curves(metrics_path, png_path, title):
    """Training loss; training, validation and test accuracy per epoch (best epoch marked)."""
    rows = read_metrics(metrics_path)
    epochs = records_of(rows, "epoch")
    if not epochs:
        return
    final = next(iter(records_of(rows, "final")), {})
    plt = _pyplot()
    xs = [r["epoch"] for r in epochs]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    losses = [r["loss"] for r in epochs]
    ax_loss.plot(xs, losses, "o-", label="training loss")
    if all(v > 0 for v in losses):
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (mean over the epoch)")
    ax_loss.set_title("training loss", fontsize=10)
    _epoch_axis(ax_loss, xs)
    ax_acc.plot(xs, [r["train_accuracy"] for r in epochs], "o-", label="training (running)")
    ax_acc.plot(xs, [r.get("val_accuracy") for r in epochs], "s-", label="validation")
    if "test_accuracy" in final:
        ax_acc.plot(
            [xs[-1]],
            [final["test_accuracy"]],
            "*",
            markersize=14,
            color="C3",
            label=f"test (final model) {final['test_accuracy']:.4f}",
        )
    if final.get("best_test_accuracy") is not None:
        ax_acc.plot(
            [final["best_epoch"]],
            [final["best_test_accuracy"]],
            "P",
            markersize=10,
            color="C4",
            label=f"test (best.npz) {final['best_test_accuracy']:.4f}",
        )
    if final.get("best_epoch") is not None:
        ax_acc.axvline(
            final["best_epoch"],
            color="grey",
            linestyle=":",
            label=f"best validation, epoch {final['best_epoch']}",
        )
    ax_acc.set_ylabel("accuracy")
    _epoch_axis(ax_acc, xs)
    ax_acc.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


def plot_compare(curves, png_path, target=None):
    """Validation accuracy against wall seconds and against bytes sent, one line per run.

    ``curves``: ``[(label, [(seconds, bytes, val_accuracy), ...])]``; ``target`` (the
    best accuracy every run reached) is drawn as a dashed line.
    """
    plt = _pyplot()
    fig, (ax_time, ax_bytes) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for label, points in curves:
        seconds, sent, acc = zip(*points) if points else ((), (), ())
        ax_time.plot(seconds, acc, "o-", markersize=3, label=label)
        ax_bytes.plot([b / 1e6 for b in sent], acc, "o-", markersize=3, label=label)
    ax_time.set_xlabel("wall seconds (training)")
    ax_time.set_ylabel("validation accuracy")
    ax_bytes.set_xlabel("MB sent by the busiest rank")
    for ax in (ax_time, ax_bytes):
        ax.grid(alpha=0.3)
        if target is not None:
            ax.axhline(
                target,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"reached by every run: {target:.4f}",
            )
    ax_time.legend(loc="lower right", fontsize=8)
    fig.suptitle("validation accuracy against time and communication")
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
