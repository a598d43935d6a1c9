"""``horn.run``: the README's example runs as written; the API under mpirun."""

import re
import subprocess
import sys
import textwrap

from tests.cli import ROOT
from tests.mpirun import mpirun

MARKER = "<!-- horn.run example (tests/test_api.py runs it) -->"


def readme_example():
    text = (ROOT / "README.md").read_text()
    match = re.search(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, re.S)
    assert match, f"README.md lost its {MARKER} block"
    return match.group(1)


def test_the_readme_example_runs_as_written(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", readme_example()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("epoch 2: val ") and "saved in " in line
    run_dir = tmp_path.joinpath(line.split("saved in ")[1])
    assert run_dir.is_dir() and run_dir.parent == (tmp_path / "runs").resolve()
    assert {"job.json", "metrics.jsonl", "model.npz", "best.npz"} <= {
        p.name for p in run_dir.iterdir()
    }
    import json

    assert json.loads((run_dir / "job.json").read_text())["train"]["lr"] == 0.1  # the override


def load_test_split():
    from horn.data import load_dataset
    from horn.jobs import load_job

    data = load_dataset(load_job(ROOT / "jobs/digits.toml").data)
    return data.x_test, data.y_test


def test_a_job_file_path_and_bad_input(tmp_path):
    import pytest

    import horn
    from horn.errors import HornError

    result = horn.run(
        ROOT / "jobs/digits.toml",
        overrides=[
            "train.epochs=1",
            "train.backend='numpy'",
            f"log.dir='{tmp_path}'",
            "log.plot=false",
        ],
    )
    assert len(result.history) == 1 and result.history[0]["kind"] == "epoch"
    assert result.final["kind"] == "final" and result.run_dir.parent == tmp_path
    assert result.model.accuracy(*load_test_split()) == result.final["test_accuracy"]
    with pytest.raises(HornError, match="expected a job file path or a dict"):
        horn.run(42)
    with pytest.raises(HornError, match="train.epochs"):
        horn.run(
            {"model": {"layers": [{"type": "dense", "units": 10}]}}, overrides=["train.epochs=0"]
        )


def test_under_mpirun_every_rank_gets_a_result(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(f"""
        import horn
        from mpi4py import MPI
        r = horn.run({str(ROOT / "jobs/digits.toml")!r}, overrides=[
            "train.epochs=2", "train.backend='numpy'", "log.dir='{tmp_path / "runs"}'"])
        print("RANK", MPI.COMM_WORLD.rank, len(r.history), r.run_dir, r.model.num_params,
              flush=True)
        """)
    )
    result = mpirun(2, [script], timeout=120)
    assert result.returncode == 0, result.stderr
    lines = sorted(l.split() for l in result.stdout.splitlines() if l.startswith("RANK"))
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert lines[0][:4] == ["RANK", "0", "2", str(run_dir)]
    assert lines[1][:4] == ["RANK", "1", "2", "None"] and lines[0][4] == lines[1][4]


def test_a_stop_signal_raises_preempted_naming_the_checkpointed_run(tmp_path):
    """A sweep calling horn.run must learn that a run was stopped, not get a KeyError."""
    runs = tmp_path / "runs"
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, pathlib, signal, threading, time
        import horn
        from horn.errors import Preempted

        def stop_once_training():  # the first epoch record: handlers are installed
            while not any("epoch" in p.read_text()
                          for p in pathlib.Path({str(runs)!r}).glob("*/metrics.jsonl")):
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=stop_once_training, daemon=True).start()
        try:
            horn.run({str(ROOT / "jobs/digits.toml")!r}, overrides=[
                "train.epochs=100000", "train.backend='numpy'", "log.dir='{runs}'"])
        except Preempted as stopped:
            print("STOPPED", stopped.step, stopped.run_dir)
            print(stopped)
        """)
    )
    result = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    head, message = result.stdout.strip().splitlines()[-2:]
    _, step, run_dir = head.split()
    (only,) = runs.iterdir()
    assert run_dir == str(only) and int(step) > 0
    assert any(only.glob("checkpoint*")), sorted(p.name for p in only.iterdir())
    assert message.endswith(f"continue with: horn run --resume {run_dir}")
