"""Strategies are found by name and own their settings: a user's strategy (in
tests/strategy_example.py) plugs in without touching horn, across real ranks."""

import json

import pytest

import tests.strategy_example  # noqa: F401  (registers "oneshot")
from horn.barriers.registry import strategies
from horn.errors import HornError
from horn.jobs import job_from_dict
from horn.model import Model
from tests.mpirun import mpirun

JOB = {
    "name": "oneshot",
    "data": {"name": "digits"},
    "model": {
        "layers": [
            {"type": "dense", "units": 16, "activation": "relu"},
            {"type": "dense", "units": 10},
        ]
    },
    "train": {"steps": 40, "batch_size": 16, "backend": "numpy"},
    "parallel": {"barrier": "oneshot", "local_steps": 10, "oneshot": {"rounds": 2}},
}


def test_a_user_strategy_owns_its_table():
    job = job_from_dict(JOB)
    assert job.parallel.of("oneshot").rounds == 2
    assert job.to_dict()["parallel"]["oneshot"] == {"rounds": 2}
    assert job_from_dict(job.to_dict()) == job  # the resolved job reads back the same
    with pytest.raises(
        HornError,
        match=r"parallel.oneshot.round: unknown key \(did you mean "
        r"'rounds'\?\)",
    ):
        job_from_dict({**JOB, "parallel": {"barrier": "oneshot", "oneshot": {"round": 2}}})
    with pytest.raises(
        HornError,
        match=r"parallel.oneshot: applies only to barrier = "
        r"'oneshot', found barrier = 'average'",
    ):
        job_from_dict({**JOB, "parallel": {"oneshot": {"rounds": 3}}})
    assert {"average", "ensemble", "none", "subnet", "oneshot"} <= set(strategies())


def test_a_user_strategy_trains_across_ranks(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({**JOB, "log": {"dir": str(tmp_path / "runs"), "plot": False}}))
    program = (
        "import sys, tests.strategy_example; from horn.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    result = mpirun(2, ["-c", program, "run", path, "--quiet"], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    supersteps = [r for r in rows if "superstep" in r]
    size = Model.load(run_dir / "model.npz")[0].size
    assert len(supersteps) == 2  # every 2nd round of 10 steps (at step 20), and the end (40)
    assert all(r["bytes_sent"] >= 4 * size for r in supersteps)  # one Allreduce of the model
    assert json.loads((run_dir / "job.json").read_text())["parallel"]["oneshot"] == {"rounds": 2}
