"""Run artefacts: metrics.jsonl (one JSON object per line) and the progress output.

Every record has a ``kind``: ``epoch`` (training and validation after an epoch),
``superstep`` (one BSP superstep's seconds and bytes), ``partition`` (a sub-network
round's partition), ``barrier`` (an ensemble barrier), ``final`` (the end of the run).
Times are ``*_s`` seconds, byte counts ``bytes_sent*``, accuracies ``*_accuracy``.
"""

import json
import math
import shutil
import sys


class MetricsLog:
    """Append-only JSON lines, flushed per record so a killed run keeps what it logged."""

    def __init__(self, path, truncate_to=None):
        self.path = path
        self.file = open(path, "a") if path else None
        if self.file and truncate_to is not None:  # a resumed run drops what came after
            self.file.truncate(truncate_to)  # its checkpoint
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
    return (
        f"epoch {record['epoch']:>3}/{total_epochs}  loss {record['loss']:.4f}  "
        f"train_acc {record['train_accuracy']:.4f}{val_text}  "
        f"{record['samples_per_s']:,.0f} samples/s  {record['time_s']:.1f}s"
    )


def print_progress(text, enabled=True):
    if enabled:
        print(text, file=sys.stdout, flush=True)


def read_metrics(path):
    """The records of a metrics.jsonl, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class EpochProgress:
    """Steps within the current epoch and their ETA (tqdm) when stdout is a terminal;
    nothing otherwise (logs and pipes get the per-epoch lines only)."""

    def __init__(self, enabled, per_epoch, total_epochs):
        self.enabled = enabled and sys.stdout.isatty()
        self.per_epoch, self.total_epochs = per_epoch, total_epochs
        self.bar = None

    def step(self, epoch, position):
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            size = shutil.get_terminal_size()  # 80 x 24 where a terminal reports 0 x 0
            self.bar = tqdm(
                total=self.per_epoch,
                initial=position - 1,
                unit="step",
                desc=f"epoch {epoch}/{self.total_epochs}",
                file=sys.stdout,
                leave=False,
                disable=False,  # our own TTY check above
                ncols=size.columns,
                nrows=size.lines,
            )
        self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def record_kind(record):
    """A record's kind; also for runs written before records carried one."""
    if "kind" in record:
        return record["kind"]
    for key, kind in (
        ("final", "final"),
        ("superstep", "superstep"),
        ("partition_sizes", "partition"),
        ("ensemble_barrier", "barrier"),
        ("epoch", "epoch"),
    ):
        if key in record:
            return kind
    return None


def records_of(rows, kind):
    return [r for r in rows if record_kind(r) == kind]
