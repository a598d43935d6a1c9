"""The one training loop: steps, epochs, evaluation, metrics.

Parallel strategies (model averaging, sub-networks, ensembles) plug in through
a ``Sync`` object called after every step; the loop itself never changes, so
single-process and parallel training cannot drift apart.
"""

import math
import time

from horn.barriers.base import Sync
from horn.errors import DivergenceError
from horn.metrics import print_progress, progress_line


class Trainer:
    def __init__(self, model, optimizer, schedule, stream, data, metrics, total_steps,
                 sync=None, eval_every=1, progress=True, rank_name="", on_round_end=None):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.stream, self.data, self.metrics = stream, data, metrics
        self.total_steps, self.eval_every = total_steps, eval_every
        self.sync = sync or Sync()
        self.progress, self.rank_name = progress, rank_name
        self.on_round_end = on_round_end  # (steps done, epoch counters) -> True to stop early
        self.history = []
        self.stopped_at = None

    def _diverged(self, model, step, loss):
        where = model.first_nonfinite() or "the loss itself"
        prefix = f"{self.rank_name}: " if self.rank_name else ""
        raise DivergenceError(f"{prefix}training diverged at step {step}: loss is {loss}; first "
                              f"non-finite value: {where} (lower train.lr or check the data)")

    def run(self, start_step=0, counters=(0.0, 0, 0)):
        """Train from ``start_step`` (a resumed run passes its checkpoint's step and
        the epoch's running loss sum, correct and seen counts)."""
        stream = self.stream
        total_epochs = math.ceil(self.total_steps / stream.per_epoch)
        epoch_loss, epoch_correct, epoch_seen = counters
        start = epoch_start = time.perf_counter()
        for step in range(start_step, self.total_steps):
            xb, yb = stream.next()
            model, optimizer = self.sync.trainee(self.model, self.optimizer)
            loss = model.train_step(xb, yb)
            if not math.isfinite(loss):
                self._diverged(model, step, loss)
            optimizer.step(self.schedule(step))
            epoch_loss += loss * len(yb)
            epoch_correct += int((model.loss_input.argmax(axis=1) == yb).sum())
            epoch_seen += len(yb)
            self.sync.after_step(step)
            last = step + 1 == self.total_steps
            if stream.position == stream.per_epoch or last:
                epoch = stream.epoch + 1
                if epoch % self.eval_every == 0 or last:
                    loss_sum, correct, seen = self.sync.reduce_stats(
                        [epoch_loss, epoch_correct, epoch_seen])
                    now = time.perf_counter()
                    record = {"epoch": epoch, "step": step + 1, "loss": loss_sum / seen,
                              "train_accuracy": correct / seen,
                              "val_accuracy": self.evaluate("val"),
                              "lr": self.schedule(step), "time_s": now - start,
                              "samples_per_s": seen / max(now - epoch_start, 1e-9)}
                    for extra in self.sync.records():
                        self.metrics.write(extra)
                    self.metrics.write(record)
                    self.history.append(record)
                    print_progress(progress_line(record, total_epochs), self.progress)
                    epoch_loss, epoch_correct, epoch_seen = 0.0, 0, 0
                    epoch_start = time.perf_counter()
            done = step + 1
            if self.on_round_end and self.sync.at_boundary(done) and \
                    self.on_round_end(done, (epoch_loss, epoch_correct, epoch_seen)):
                self.stopped_at = done
                break
        return self.history

    def evaluate(self, split):
        x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        if len(y) == 0:
            return float("nan")
        return self.sync.eval_model(self.model).accuracy(x, y)


def total_steps(train, steps_per_epoch):
    """train.steps when set, else epochs x steps per epoch."""
    return train.steps or train.epochs * steps_per_epoch

