"""Overlapped synchronous data-parallel (``[parallel.average] reduce = "gradients"``):
bucketed Iallreduces started in backward, through real mpirun."""

import textwrap

import numpy as np
import pytest

from tests.cli import ROOT
from tests.mpirun import mpirun, train_on_ranks

JOB = """
name = "overlap"
[data]
name = "digits"
[model]
layers = [{ type = "dense", units = 48, activation = "relu" },
          { type = "dense", units = 32, activation = "relu" }, { type = "dense", units = 10 }]
[train]
steps = 40  # not epochs: 3 ranks hold shards of different sizes, the schedule must agree
batch_size = 16
lr = 0.05
momentum = 0.9
weight_decay = 1e-4
backend = "numpy"
[parallel]
local_steps = 1
[parallel.average]
reduce = "gradients"
"""


def write_job(tmp_path, extra="", name="overlap.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(JOB) + extra + f"[log]\ndir = '{tmp_path / 'runs'}'\n")
    return path


def test_buckets_cover_the_trainable_gradients_last_layer_first():
    from horn.barriers.gradients import plan_buckets
    from horn.jobs import load_job, model_spec
    from horn.model import Model

    model = Model.from_spec(model_spec(load_job(str(ROOT / "jobs/digits.toml")), 64))
    with_params = len({id(layer) for _, layer, _, _ in model.slots})  # dropout has none
    assert with_params == 3
    for mb, count in ((1e-6, with_params), (100.0, 1)):
        buckets = plan_buckets(model, mb)
        assert len(buckets) == count
        assert buckets[0][1] == model.trainable_size and buckets[-1][0] == 0
        assert all(a[0] == b[1] for a, b in zip(buckets, buckets[1:]))


@pytest.mark.parametrize("ranks", [2, 3])
def test_bucketed_overlap_equals_plain_reduction_and_the_concatenated_batch(tmp_path, ranks):
    """0.001 MB (262 floats) buckets: one per dense layer (3120, 1568 and 336 floats)."""
    prog = ROOT / "tests/mpi_progs/overlap.py"
    result = mpirun(ranks, [prog, write_job(tmp_path), "0.001"], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("3 buckets, bit-identical") == ranks, result.stdout
    assert "EQUIVALENT" in result.stdout


def test_horn_run_averaging_gradients_equals_averaging_parameters_every_step(tmp_path):
    """SGD with momentum and weight decay is linear in the gradient: averaging the
    gradients before the step and the parameters after it train the same model."""
    _, by_grads = train_on_ranks(write_job(tmp_path, "bucket_mb = 0.001\n", "g.toml"), 2)
    plain = write_job(tmp_path, name="p.toml")
    plain.write_text(plain.read_text().replace('reduce = "gradients"', 'reduce = "parameters"'))
    _, by_params = train_on_ranks(plain, 2)
    scale = float(np.abs(by_params.params).max())
    assert float(np.abs(by_grads.params - by_params.params).max()) < 1e-4 * scale


@pytest.mark.parametrize(
    "extra, message",
    [
        ("", "needs parallel.local_steps = 1"),
        ("momentum = true\n", "parallel.average.momentum"),
        ("outer = 'nesterov'\n", "parallel.average.outer"),
        ("bucket_mb = 0\n", "bucket_mb"),
    ],
)
def test_bad_settings_are_a_one_line_error(tmp_path, extra, message):
    from tests.cli import horn

    job = write_job(tmp_path, extra)
    if not extra:
        job.write_text(job.read_text().replace("local_steps = 1", "local_steps = 4"))
    result = horn("run", job, "--quiet")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
