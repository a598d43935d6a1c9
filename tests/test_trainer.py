"""The training loop's own rules: NaN handling and resumable counters."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from horn.backends import get_backend
from horn.barriers.base import Sync
from horn.batches import BatchStream
from horn.errors import DivergenceError
from horn.layers import Dense, SoftmaxCrossEntropy
from horn.metrics import MetricsLog
from horn.model import Model
from horn.optim import SGD
from horn.schedules import Schedule
from horn.trainer import Trainer


class Poisoned(BatchStream):
    """Every ``every``-th batch carries a NaN feature."""

    def __init__(self, *args, every, **kwargs):
        super().__init__(*args, **kwargs)
        self.every, self.count = every, 0

    def next(self):
        xb, yb = super().next()
        self.count += 1
        if self.every and self.count % self.every == 0:
            xb = xb.copy()
            xb[0, 0] = np.nan
        return xb, yb


def trainer(every, skip, epochs=4):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    data = type("D", (), {"x_val": x[:100], "y_val": y[:100]})()
    model = Model([Dense(8, "relu"), Dense(2)], SoftmaxCrossEntropy(), 6, "numpy", seed=1)
    stream = Poisoned(x, y, 20, 0, get_backend("numpy"), every=every)
    steps = epochs * stream.per_epoch
    return Trainer(
        model,
        SGD(model, 0.9),
        Schedule("constant", 0.1, steps),
        stream,
        data,
        MetricsLog(None),
        steps,
        progress=False,
        skip_bad_batches=skip,
    ), model


def test_skip_batch_drops_poisoned_updates_and_keeps_learning():
    t, model = trainer(every=3, skip=True)
    history = t.run()
    assert all(r["skipped_batches"] > 0 for r in history)
    assert sum(r["skipped_batches"] for r in history) == 4 * 20 // 3
    assert np.isfinite(model.params).all() and history[-1]["val_accuracy"] > 0.9


def test_stop_names_step_and_layer():
    t, _ = trainer(every=3, skip=False)
    with pytest.raises(
        DivergenceError,
        match=r"diverged at step 2: loss is nan; first "
        r"non-finite value: gradient 'W' of layer 0 \(dense\)",
    ):
        t.run()


def test_an_epoch_with_every_batch_skipped_stops():
    t, _ = trainer(every=1, skip=True)
    with pytest.raises(DivergenceError, match="every batch of epoch 1"):
        t.run()


class EveryFour(Sync):
    """A strategy whose rounds end every 4 steps; counts the models it is asked to evaluate."""

    def __init__(self):
        self.evaluated = []

    def at_boundary(self, steps_done):
        return steps_done % 4 == 0

    def eval_model(self, model):
        self.evaluated.append(model.params.copy())
        return model


def test_eval_steps_validates_at_the_first_round_end_past_each_multiple():
    t, model = trainer(every=0, skip=False, epochs=2)  # 20 steps an epoch, 40 in all
    t.sync, t.eval_steps = EveryFour(), 6
    written = []
    t.metrics = type("M", (), {"write": lambda self, r: written.append(r)})()
    t.run()
    evals = [r for r in written if r["kind"] == "eval"]
    # past 6: 8; past 12: 12; past 18: 20 is an epoch end, already validated; then 24, 32, 36
    assert [r["step"] for r in evals] == [8, 12, 24, 32, 36]
    assert [r["step"] for r in written if r["kind"] == "epoch"] == [20, 40]
    times = [r["time_s"] for r in written if "time_s" in r]
    assert times == sorted(times)
    # each record is the accuracy of the model handed out at that round's end
    evaluated = t.sync.evaluated
    assert len(evaluated) == len(evals) + 2
    x, y = t.data.x_val, t.data.y_val
    final = model.accuracy(x, y)
    assert written[-1]["val_accuracy"] == final
    model.params[...] = evaluated[0]
    assert evals[0]["val_accuracy"] == model.accuracy(x, y)


@given(
    accuracies=st.lists(st.floats(0, 1) | st.just(float("nan")) | st.none(), max_size=12),
    min_delta=st.floats(0, 0.5),
    patience=st.integers(1, 4),
)
def test_the_best_is_the_best_whatever_min_delta_and_patience_count_from_improvements(
    accuracies, min_delta, patience
):
    """best.npz follows the highest accuracy (the first of equals); min_delta only sets
    what counts as an improvement for patience."""
    from horn.early_stop import BestTracker

    tracker, mark, waited = BestTracker(patience, min_delta), -math.inf, 0
    for epoch, value in enumerate(accuracies, 1):
        tracker.update(epoch, value)
        if value is not None and not math.isnan(value):
            mark, waited = (value, 0) if value > mark + min_delta else (mark, waited + 1)
        assert tracker.waited == waited and tracker.exhausted == (waited >= patience)
    valid = [(v, -e) for e, v in enumerate(accuracies, 1) if v is not None and not math.isnan(v)]
    if valid:
        best, epoch = max(valid)
        assert (tracker.best, tracker.best_epoch) == (best, -epoch)
    else:
        assert tracker.best_epoch is None
