"""The horn command end to end: run, validate, eval, predict, info, and bad input."""

import json
import textwrap

import numpy as np
import pytest

from tests.cli import ROOT, horn

QUICK = ["--set", "train.epochs=3", "--quiet"]


def run_digits(tmp_path, *extra):
    result = horn(
        "run", ROOT / "jobs/digits.toml", *QUICK, "--set", f"log.dir='{tmp_path}'", *extra
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("test accuracy ")
    run_dir = last.split("run directory ")[1]
    return result, run_dir


def metrics(run_dir):
    return [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]


def test_run_writes_a_complete_run_directory(tmp_path):
    result, run_dir = run_digits(tmp_path)
    names = {p.name for p in (tmp_path / run_dir.split("/")[-1]).iterdir()}
    assert {"job.json", "metrics.jsonl", "model.npz", "curve.png"} <= names
    rows = metrics(run_dir)
    assert [r["epoch"] for r in rows[:-1]] == [1, 2, 3]
    final = rows[-1]
    assert final["kind"] == "final" and 0.8 < final["test_accuracy"] <= 1
    assert f"{final['test_accuracy']:.4f}" in result.stdout.splitlines()[-1]
    assert json.load(open(f"{run_dir}/job.json"))["train"]["epochs"] == 3


def test_same_job_and_seed_give_bit_identical_metrics_on_numpy(tmp_path):
    runs = [
        metrics(run_digits(tmp_path / str(i), "--set", "train.backend='numpy'")[1])
        for i in range(2)
    ]
    timeless = [
        [{k: v for k, v in r.items() if k not in ("time_s", "samples_per_s")} for r in rows]
        for rows in runs
    ]
    assert timeless[0] == timeless[1]
    other = metrics(
        run_digits(tmp_path / "2", "--set", "train.backend='numpy'", "--set", "train.seed=1")[1]
    )
    assert other[0]["loss"] != runs[0][0]["loss"], "another seed must change the run"


def test_eval_and_predict_on_a_run_directory(tmp_path):
    _, run_dir = run_digits(tmp_path)
    final = metrics(run_dir)[-1]
    result = horn("eval", run_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"test accuracy {final['test_accuracy']:.4f}")
    from sklearn.datasets import load_digits

    x = load_digits().data[:25]
    np.savez(tmp_path / "inputs.npz", x=x)
    out = tmp_path / "pred.csv"
    result = horn("predict", run_dir, tmp_path / "inputs.npz", "--out", out)
    assert result.returncode == 0, result.stderr
    rows = np.loadtxt(out, delimiter=",", skiprows=1)
    assert rows.shape == (25, 11)
    np.testing.assert_allclose(rows[:, 1:].sum(axis=1), 1, atol=1e-4)
    assert (rows[:, 0] == load_digits().target[:25]).mean() > 0.7


def test_validate_and_info():
    result = horn("validate", ROOT / "jobs/digits.toml")
    assert result.returncode == 0 and "ok" in result.stdout
    result = horn("info")
    assert result.returncode == 0 and "numba" in result.stdout and "Open MPI" in result.stdout


def bad_job(tmp_path, body):
    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent(body))
    return path


LAYERS = (
    '[model]\nlayers = [{ type = "dense", units = 16, activation = "relu" }, '
    '{ type = "dense", units = 10 }]\n'
)


@pytest.mark.parametrize(
    "body,message",
    [
        ("[train\n", "malformed toml"),
        (LAYERS + "[train]\nmomentun = 0.1\n", "unknown key (did you mean 'momentum'?)"),
        (LAYERS.replace("units = 10", "units = 12"), "has 10 classes"),
        (
            LAYERS + "[data]\nname = 'idx'\npath = 'nowhere'\n",
            "apt-get install dataset-fashion-mnist",
        ),
        (LAYERS + "[data]\nname = 'csv'\npath = 'data.csv'\n", "data.csv"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, body, message):
    (tmp_path / "data.csv").write_text("1,2,0\n3,nan,1\n")
    result = horn("run", bad_job(tmp_path, body), "--quiet", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("horn: error: ") and message in lines[0], lines
    assert "Traceback" not in result.stderr
    debug = horn("--debug", "run", bad_job(tmp_path, body), "--quiet", cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_divergence_stops_with_step_and_layer(tmp_path):
    result = horn(
        "run",
        ROOT / "jobs/digits.toml",
        *QUICK,
        "--set",
        f"log.dir='{tmp_path}'",
        "--set",
        "train.lr=1e30",
        "--set",
        "train.warmup_steps=0",
    )
    assert result.returncode == 3
    assert "diverged at step" in result.stderr and "of layer" in result.stderr


def test_custom_layer_from_a_users_module(tmp_path):
    (tmp_path / "mylayers.py").write_text(
        textwrap.dedent('''
        import horn

        class Scale(horn.Layer):
            """y = x * s, one learned scale per feature."""
            def __init__(self, start=1.0):
                self.start = start
            def build(self, n):
                self.declare("s", (n,), init="ones")
                return n
            def forward(self, x, train):
                self.x = x
                return x * self.params["s"]
            def backward(self, dy):
                self.grads["s"][...] = (dy * self.x).sum(axis=0)
                return dy * self.params["s"]
    ''')
    )
    body = (
        '[model]\nimports = ["mylayers"]\nlayers = [{ type = "mylayers:Scale" }, { type = "dense", units = 10 }]\n'
        "[train]\nepochs = 2\n"
    )
    result = horn(
        "run", bad_job(tmp_path, body), "--quiet", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}
    )
    assert result.returncode == 0, result.stderr
    import sys

    sys.path.insert(0, str(tmp_path))
    import mylayers

    import horn as horn_pkg

    assert horn_pkg.check_layer(mylayers.Scale())
