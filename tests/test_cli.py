"""The horn command end to end: run, validate, eval, predict, info, and bad input."""

import json
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# ---- image inputs must state the model's sample shape ------------------------------------

CNN_DIGITS = """
[data]
name = "digits"
[model]
layers = [{ type = "conv2d", channels = 4, padding = 1, activation = "relu" },
          { type = "max_pool2d" }, { type = "flatten" }, { type = "dense", units = 10 }]
[train]
epochs = 2
batch_size = 32
backend = "numpy"
[log]
plot = false
"""


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """A CNN trained on digits (input shape (1, 8, 8)) by ``horn run``, as a user does."""
    base = tmp_path_factory.mktemp("cnn")
    (base / "cnn.toml").write_text(CNN_DIGITS + f"dir = '{base}'\n")
    result = horn("run", base / "cnn.toml", "--quiet")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1].split("run directory ")[1]


def digits(n):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x[:n], y[:n]


def refused(result, message):
    """horn's refusal: exit 2, exactly one line, no traceback."""
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"horn: error: {message}"], result.stderr


def idx_images(path, x):
    x = np.asarray(x, np.uint8)
    path.write_bytes(bytes([0, 0, 0x08, x.ndim]) + b"".join(d.to_bytes(4, "big") for d in x.shape))
    with open(path, "ab") as f:
        f.write(x.tobytes())
    return path


def test_a_cnn_refuses_inputs_of_another_image_shape(cnn_run, tmp_path):
    x, y = digits(50)
    np.save(tmp_path / "p.npy", x[:5].reshape(5, 4, 16))
    out = tmp_path / "p.csv"
    refused(
        horn("predict", cnn_run, tmp_path / "p.npy", "--out", out),
        f"{tmp_path / 'p.npy'}: expected samples of shape (1, 8, 8) (the model's input), "
        f"found (4, 16)",
    )
    assert not out.exists()
    np.savez(tmp_path / "e.npz", x=x.reshape(50, 4, 16), y=y)
    refused(
        horn("eval", cnn_run, "--data", tmp_path / "e.npz"),
        f"{tmp_path / 'e.npz'} [x]: expected samples of shape (1, 8, 8) (the model's input), "
        f"found (4, 16)",
    )
    idx_images(tmp_path / "t-idx3-ubyte", x.reshape(50, 8, 8).transpose(0, 2, 1)[:, :4])
    np.save(tmp_path / "y.npy", y)
    refused(
        horn("eval", cnn_run, "--data", tmp_path / "t-idx3-ubyte", "--labels", tmp_path / "y.npy"),
        f"{tmp_path / 't-idx3-ubyte'}: expected samples of shape (1, 8, 8) (the model's "
        f"input), found (4, 8)",
    )


def test_an_npz_data_set_refuses_a_test_split_of_another_shape(tmp_path):
    x, y = digits(400)
    np.savez(tmp_path / "d.npz", x=x[:300].reshape(-1, 8, 8), y=y[:300],
             x_test=x[300:].reshape(100, 4, 16), y_test=y[300:])  # fmt: skip
    job = tmp_path / "j.toml"
    job.write_text(
        CNN_DIGITS.replace('name = "digits"', f"name = 'npz'\npath = '{tmp_path / 'd.npz'}'")
        + f"dir = '{tmp_path}'\n"
    )
    message = (
        f"{tmp_path / 'd.npz'} [x_test]: expected samples of shape (1, 8, 8) (like x), "
        f"found (4, 16)"
    )
    refused(horn("run", job, "--quiet"), message)
    refused(horn("validate", job), message)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_predict_and_eval_take_the_right_shape_and_flat_rows_only(cnn_run, tmp_path, capsys, data):
    """Every 2- or 3-axis layout of 64 values per sample other than the image is refused,
    and the image itself, (n, 1, 8, 8) and flat rows all give the same predictions."""
    from horn.cli import main

    def cli(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    n = data.draw(st.integers(1, 6))
    x, y = digits(n)
    cuts = [(a, 64 // a) for a in (1, 2, 4, 8, 16, 32, 64)]
    cuts += [(a, b, 64 // a // b) for a in (1, 2, 4, 8) for b in (1, 2, 4, 8, 16) if a * b <= 64]
    other = data.draw(st.sampled_from([c for c in cuts if c not in ((8, 8), (1, 8, 8))]))
    kind = data.draw(st.sampled_from(["npy", "npz"]))
    path = tmp_path / f"in.{kind}"
    save = (lambda a: np.save(path, a)) if kind == "npy" else lambda a: np.savez(path, x=a, y=y)
    where = str(path) if kind == "npy" else f"{path} [x]"
    save(x.reshape(n, *other))
    message = f"{where}: expected samples of shape (1, 8, 8) (the model's input), found {other}"
    code, _, err = cli("predict", cnn_run, path, "--out", tmp_path / "p.csv")
    assert (code, err.strip()) == (2, f"horn: error: {message}")
    if kind == "npz":
        code, _, err = cli("eval", cnn_run, "--data", path)
        assert (code, err.strip()) == (2, f"horn: error: {message}")
    predictions = []
    for layout in ((n, 8, 8), (n, 1, 8, 8), (n, 64)):
        save(x.reshape(layout))
        code, _, err = cli("predict", cnn_run, path, "--out", tmp_path / "p.csv")
        assert code == 0, err
        predictions.append((tmp_path / "p.csv").read_text())
        if kind == "npz":
            code, out, err = cli("eval", cnn_run, "--data", path)
            assert code == 0 and f"({n} samples)" in out, err
    assert predictions[0] == predictions[1] == predictions[2]


def test_an_mlp_takes_images_of_its_width_in_any_shape(tmp_path):
    """A flat model has no image shape to compare with: flattened images are its input."""
    _, run_dir = run_digits(tmp_path, "--set", "log.plot=false")
    x, y = digits(20)
    outputs = []
    for i, layout in enumerate([(20, 64), (20, 8, 8), (20, 4, 16)]):
        np.save(tmp_path / f"x{i}.npy", x.reshape(layout))
        out = tmp_path / f"p{i}.csv"
        result = horn("predict", run_dir, tmp_path / f"x{i}.npy", "--out", out)
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] == outputs[2]
    np.savez(tmp_path / "narrow.npz", x=x[:, :60].reshape(20, 6, 10), y=y)
    refused(
        horn("eval", run_dir, "--data", tmp_path / "narrow.npz"),
        f"{tmp_path / 'narrow.npz'}: the model expects 64 features per sample, found 60",
    )
