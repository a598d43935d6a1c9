"""The one training loop: steps, epochs, evaluation, metrics.

Parallel strategies (model averaging, sub-networks, ensembles) plug in through
a ``Sync`` object called after every step; the loop itself never changes, so
single-process and parallel training cannot drift apart.
"""

import math
import time
from typing import NamedTuple

import numpy as np

from horn.barriers.base import Sync
from horn.errors import DivergenceError
from horn.metrics import EpochProgress, print_progress, progress_line


class EpochCounters(NamedTuple):
    """The running sums of the epoch under way: checkpointed, so a resumed epoch
    reports the same loss and accuracy as an uninterrupted one."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    skipped: int = 0


#: A loss this many times its first value (or 1, when that is smaller) has diverged even
#: while it stays finite (lr = 1e10 reaches 1e35 and "trains" on at chance accuracy).
EXPLODE_FACTOR = 1e4


class Trainer:
    def __init__(
        self,
        model,
        optimizer,
        schedule,
        stream,
        data,
        metrics,
        total_steps,
        sync=None,
        eval_every=1,
        eval_steps=0,
        progress=True,
        rank_name="",
        on_round_end=None,
        skip_bad_batches=False,
        on_evaluated=None,
    ):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.stream, self.data, self.metrics = stream, data, metrics
        self.total_steps, self.eval_every = total_steps, eval_every
        self.eval_steps = eval_steps  # 0: validate per epoch only
        self.sync = sync or Sync()
        self.progress, self.rank_name = progress, rank_name
        # (steps done, epoch counters, elapsed s) -> True to stop (preemption) at a round end
        self.on_round_end = on_round_end
        # (epoch record, the model evaluated) -> True to stop early: the same on every rank
        self.on_evaluated = on_evaluated
        self.skip_bad_batches = skip_bad_batches  # train.on_nan = "skip_batch"
        self.history = []
        self.stopped_at = None  # preempted after this many steps
        self.stop_requested = False  # early stop: at the next round boundary
        self.early_stopped_at = None
        self._clock = (time.perf_counter(), 0.0)
        self.loss_bound = None  # EXPLODE_FACTOR x the first finite loss: set by the first step

    def elapsed_s(self):
        """Training seconds so far, those of the run this one resumes included."""
        start, before = self._clock
        return before + time.perf_counter() - start

    def _healthy(self, loss):
        """A finite loss within the bound (the first finite loss sets the bound)."""
        if not math.isfinite(loss):
            return False
        if self.loss_bound is None:
            self.loss_bound = EXPLODE_FACTOR * max(loss, 1.0)
        return loss <= self.loss_bound

    def _diverged(self, model, step, loss):
        prefix = f"{self.rank_name}: " if self.rank_name else ""
        where = model.first_nonfinite()
        if math.isfinite(loss) and where is None:
            raise DivergenceError(
                f"{prefix}training diverged at step {step}: loss is {loss:.4g}, over "
                f"{EXPLODE_FACTOR:g} times its first value (bound {self.loss_bound:.4g}); "
                f"largest gradient: {_largest_gradient(model)} (lower train.lr or check the "
                f"data)"
            )
        raise DivergenceError(
            f"{prefix}training diverged at step {step}: loss is {loss}; first "
            f"non-finite value: {where or 'the loss itself'} (lower train.lr "
            f"or check the data)"
        )

    def run(self, start_step=0, counters=None, elapsed_s=0.0):
        """Train from ``start_step`` (a resumed run passes its checkpoint's step, the
        epoch's running loss sum, correct, seen and skipped counts, and the seconds
        trained before, so ``time_s`` goes on where it stopped)."""
        if self.stop_requested and start_step < self.total_steps:  # resumed where it stopped
            self.early_stopped_at = start_step
            return self.history
        stream = self.stream
        total_epochs = math.ceil(self.total_steps / stream.per_epoch)
        epoch_loss, epoch_correct, epoch_seen, epoch_skipped = counters or EpochCounters()
        self._clock = (time.perf_counter(), elapsed_s)
        epoch_start = time.perf_counter()
        bar = EpochProgress(self.progress, stream.per_epoch, total_epochs)
        evaluated_at = start_step  # steps done at the last validation
        for step in range(start_step, self.total_steps):
            xb, yb = stream.next()
            model, optimizer = self.sync.trainee(self.model, self.optimizer)
            skip = self.skip_bad_batches  # on_nan = "skip_batch": drop a poisoned batch's update
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                # overflow is detected right here, by name (numpy's warnings would only repeat
                # it, before the message that says where)
                loss = model.train_step(xb, yb)
                ok = self._healthy(loss) and (not skip or model.backend.all_finite(model.grads))
                if ok:
                    optimizer.step(self.schedule(step))
            if ok:
                epoch_loss += loss * len(yb)
                epoch_correct += model.correct(yb)
                epoch_seen += len(yb)
            elif skip and model.backend.all_finite(model.params):
                epoch_skipped += 1
            else:
                self._diverged(model, step, loss)
            self.sync.after_step(step)
            bar.step(stream.epoch + 1, stream.position)
            last = step + 1 == self.total_steps
            if stream.position == stream.per_epoch or last:
                bar.close()
                if (stream.epoch + 1) % self.eval_every == 0 or last:
                    now = time.perf_counter()
                    self._log_epoch(
                        step,
                        (epoch_loss, epoch_correct, epoch_seen, epoch_skipped),
                        now - epoch_start,
                        total_epochs,
                    )
                    epoch_loss, epoch_correct, epoch_seen, epoch_skipped = 0.0, 0, 0, 0
                    epoch_start = time.perf_counter()
                    evaluated_at = step + 1
            done = step + 1
            if not self.sync.at_boundary(done):
                continue
            if self.eval_steps and done // self.eval_steps > evaluated_at // self.eval_steps:
                self._log_eval(done)
                evaluated_at = done
            counters = EpochCounters(epoch_loss, epoch_correct, epoch_seen, epoch_skipped)
            if self.on_round_end and self.on_round_end(done, counters, self.elapsed_s()):
                self.stopped_at = done
                break
            if self.stop_requested and not last:
                self.early_stopped_at = done
                break
        bar.close()
        return self.history

    def _log_epoch(self, step, counters, epoch_s, total_epochs):
        """One metrics record (and progress line) for the epoch that just ended."""
        loss_sum, correct, seen, skipped = self.sync.reduce_stats(list(counters))
        if not seen:
            raise DivergenceError(
                f"training diverged: every batch of epoch "
                f"{self.stream.epoch + 1} had a NaN/Inf or exploding loss or a "
                f"NaN/Inf gradient and "
                f'was skipped (on_nan = "skip_batch")'
            )
        val_model = self.sync.eval_model(self.model)  # may be a collective: once per epoch
        record = {
            "kind": "epoch",
            "epoch": self.stream.epoch + 1,
            "step": step + 1,
            "loss": loss_sum / seen if seen else float("nan"),
            "train_accuracy": correct / seen if seen else float("nan"),
            "val_accuracy": self._val_accuracy(val_model),
            "lr": self.schedule(step),
            "time_s": self.elapsed_s(),
            "samples_per_s": seen / max(epoch_s, 1e-9),
        }
        if self.skip_bad_batches:
            record["skipped_batches"] = int(skipped)
        record.update(self.sync.byte_totals())
        for extra in self.sync.records():
            self.metrics.write(extra)
        self.metrics.write(record)
        self.history.append(record)
        print_progress(progress_line(record, total_epochs), self.progress)
        if self.on_evaluated and self.on_evaluated(record, val_model):
            self.stop_requested = True

    def _log_eval(self, done):
        """A validation record between epochs (``train.eval_steps``), taken at a round
        end: the model evaluated is the synchronised one, with no averaged copy to
        exchange."""
        record = {
            "kind": "eval",
            "step": done,
            "val_accuracy": self._val_accuracy(self.sync.eval_model(self.model)),
            "time_s": self.elapsed_s(),
        }
        record.update(self.sync.byte_totals())
        self.metrics.write(record)

    def _val_accuracy(self, model):
        """Validation accuracy off the training clock: ``time_s`` counts training and its
        exchanges (an averaged copy to evaluate included), not the evaluation pass, as
        the PyTorch peers of the benchmarks count theirs."""
        t0 = time.perf_counter()
        accuracy = self.evaluate("val", model)
        start, before = self._clock
        self._clock = (start + time.perf_counter() - t0, before)
        return accuracy

    def evaluate(self, split, model=None):
        x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        if len(y) == 0:
            return float("nan")
        return (model if model is not None else self.sync.eval_model(self.model)).accuracy(x, y)


def _largest_gradient(model):
    """Which parameter's gradient holds the largest magnitude (where an explosion shows)."""

    def peak(slot):
        _, _, off, shape = slot
        size = math.prod(shape)
        return float(model.xp.abs(model.grads[off : off + size]).max()) if size else 0.0

    if not model.slots:
        return "none (the model has no parameters)"
    name, layer, _, _ = max(model.slots, key=peak)
    index, pname = name.split(".", 1)
    return f"{pname!r} of layer {index} ({layer.spec()['type']})"


def total_steps(train, steps_per_epoch):
    """train.steps when set, else epochs x steps per epoch."""
    return train.steps or train.epochs * steps_per_epoch
