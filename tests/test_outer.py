"""Outer optimizers on the pseudo-gradient: across real ranks, equal to a one-process
simulation that steps the anchor with the textbook formulas (numpy, float64)."""

import json
import textwrap

import numpy as np
import pytest

from horn.backends import get_backend
from horn.barriers.outer import OuterOptimizer
from horn.data import load_dataset
from horn.jobs import load_job
from horn.model import Model
from horn.runner import build, shard
from tests.mpirun import mpirun

JOB = """
name = "outer"
[model]
layers = [{ type = "dense", units = 16, activation = "relu" }, { type = "dense", units = 10 }]
[train]
steps = 24
batch_size = 16
lr = 0.05
backend = "numpy"
[parallel]
groups = 2
local_steps = 6
[parallel.average]
"""


def simulate(job, kind, lr, mu):
    """Two replicas trained side by side; at each barrier the anchor takes one outer step
    on ``anchor - mean`` (Nesterov: v = mu v + d, anchor -= lr (d + mu v); Adam: bias-
    corrected moments with beta1 = mu, beta2 = 0.999, eps = 1e-8)."""
    data = load_dataset(job.data)
    be = get_backend("numpy")
    ranks = [
        build(
            job, shard(data, type("P", (), {"groups": 2, "group": g})(), job.train.seed), be, g, 0
        )
        for g in range(2)
    ]
    anchor = ranks[0][0].params.astype(np.float64)
    v, m, t = np.zeros_like(anchor), np.zeros_like(anchor), 0
    for start in range(0, job.train.steps, job.parallel.local_steps):
        for model, opt, schedule, stream, _ in ranks:
            for step in range(start, start + job.parallel.local_steps):
                model.train_step(*stream.next())
                opt.step(schedule(step))
        d = anchor - np.mean([r[0].params for r in ranks], axis=0, dtype=np.float64)
        if kind == "nesterov":
            v = mu * v + d
            anchor = anchor - lr * (d + mu * v)
        else:
            t += 1
            m, v = mu * m + (1 - mu) * d, 0.999 * v + 0.001 * d * d
            anchor = anchor - lr * (m / (1 - mu**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        for r in ranks:
            r[0].params[...] = anchor
    return anchor


@pytest.mark.parametrize("kind,lr,mu", [("nesterov", 0.7, 0.9), ("adam", 0.01, 0.9)])
def test_outer_steps_across_ranks_match_the_formulas(tmp_path, kind, lr, mu):
    path = tmp_path / "outer.toml"
    path.write_text(
        textwrap.dedent(JOB) + f"outer = '{kind}'\nouter_lr = {lr}\n"
        f"outer_momentum = {mu}\n[log]\ndir = '{tmp_path / 'runs'}'\nplot = false\n"
    )
    result = mpirun(2, ["-m", "horn.cli", "run", path, "--quiet"], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    saved = Model.load(run_dir / "model.npz")[0]
    expected = simulate(load_job(path), kind, lr, mu)
    close = np.isclose(saved.params, expected, rtol=2e-4, atol=2e-5)
    if kind == "nesterov":
        assert close.all()
    else:  # Adam's m / sqrt(v) is +-1 for a pseudo-gradient near 0: float32 may flip a sign
        assert close.mean() > 0.99 and np.abs(saved.params - expected).max() <= 2 * lr * 4
    plain = simulate(load_job(path), "nesterov", 1.0, 0.0)  # lr 1, no momentum: the mean
    assert not np.allclose(expected, plain, atol=1e-3)  # the outer step really differs
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert sum("superstep" in r for r in rows) == 4  # no extra exchange for the outer state


def test_sgd_with_lr_one_is_plain_averaging():
    assert not OuterOptimizer.wanted("sgd", 1.0)
    assert OuterOptimizer.wanted("sgd", 0.5) and OuterOptimizer.wanted("nesterov", 1.0)


def test_statistics_take_the_mean_and_are_never_stepped():
    from horn.layers import BatchNorm, Conv2d, Dense, Flatten, SoftmaxCrossEntropy

    model = Model(
        [Conv2d(channels=2, padding=1), BatchNorm(), Flatten(), Dense(3)],
        SoftmaxCrossEntropy(),
        (1, 4, 4),
    )
    outer = OuterOptimizer(model, "nesterov", 0.7, 0.9)
    k = model.trainable_size
    assert k < model.size  # batch norm's running statistics follow the trainable prefix
    mean = model.params + np.float32(0.5)
    model.params[...] = mean
    outer.step(model)
    assert np.array_equal(model.params[k:], mean[k:])
    assert not np.allclose(model.params[:k], mean[:k])
