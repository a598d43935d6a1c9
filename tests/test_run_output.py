"""What ``horn run`` shows and records: the run directory at start, progress within an
epoch on a terminal, record kinds, time across resume, early stopping and best.npz."""

import json
import os
import pty
import signal
import subprocess
import sys
import textwrap

import pytest

from horn.metrics import read_metrics
from tests.cli import ROOT, horn
from tests.mpirun import mpirun

SMALL = textwrap.dedent("""
    name = "small"
    [model]
    layers = [{ type = "dense", units = 32, activation = "relu" }, { type = "dense", units = 10 }]
    [train]
    epochs = 3
    batch_size = 32
    backend = "numpy"
    """)
KINDS = {"epoch", "superstep", "partition", "barrier", "final"}


def write_job(tmp_path, extra=""):
    path = tmp_path / "small.toml"
    path.write_text(SMALL + textwrap.dedent(extra) + f"[log]\ndir = '{tmp_path / 'runs'}'\n")
    return path


def only_run_dir(tmp_path):
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir


def test_run_directory_is_printed_first_and_absolute(tmp_path):
    (tmp_path / "job.toml").write_text(SMALL + "[log]\ndir = 'rel/runs'\n")
    result = horn("run", "job.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("horn: run directory /"), first
    run_dir = first.split("run directory ")[1]
    assert os.path.isabs(run_dir) and os.path.isdir(run_dir)
    assert run_dir.startswith(str((tmp_path / "rel/runs").resolve()))
    assert result.stdout.strip().splitlines()[-1].endswith(f"run directory {run_dir}")


def run_in_a_terminal(args, cwd):
    """``horn ARGS`` with stdout on a pseudo-terminal; returns everything it wrote."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "horn.cli", *map(str, args)],
        cwd=cwd,
        stdout=follower,
        stderr=follower,
        stdin=subprocess.DEVNULL,
    )
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closes when the process ends
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(timeout=120) == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def test_progress_within_an_epoch_on_a_terminal_only(tmp_path):
    job = write_job(tmp_path)
    shown = run_in_a_terminal(["run", job], tmp_path)
    assert "epoch 1/3" in shown and "step/s" in shown  # tqdm's bar: steps, rate, ETA
    assert "epoch   3/3" in shown  # the per-epoch lines stay
    piped = horn("run", job, cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert "step/s" not in piped.stdout and "\r" not in piped.stdout


@pytest.mark.parametrize(
    "layout", [{}, {"groups": 1, "workers": 2}], ids=["model-averaging", "sub-networks"]
)
def test_every_record_has_a_kind_and_superstep_0_excludes_start_up(tmp_path, layout):
    extra = "[parallel]\nlocal_steps = 4\n" + "".join(f"{k} = {v}\n" for k, v in layout.items())
    result = mpirun(2, ["-m", "horn.cli", "run", write_job(tmp_path, extra), "--quiet"], 120)
    assert result.returncode == 0, result.stderr
    rows = read_metrics(only_run_dir(tmp_path) / "metrics.jsonl")
    assert {r["kind"] for r in rows} <= KINDS and rows[-1]["kind"] == "final"
    assert ("partition" in {r["kind"] for r in rows}) == bool(layout)
    steps = [r for r in rows if r["kind"] == "superstep"]
    assert [r["superstep"] for r in steps] == list(range(len(steps)))
    later = sorted(r["compute_s"] + r["comm_s"] for r in steps[1:])
    # start-up (imports, data, model, communicators) takes seconds; a step here takes ms
    assert steps[0]["compute_s"] + steps[0]["comm_s"] < 0.25 + 5 * later[len(later) // 2]
    assert len(rows[-1]["bytes_sent_per_rank"]) == 2


def test_time_continues_across_resume(tmp_path):
    job = write_job(tmp_path, "[checkpoint]\nevery = 1\n")
    job.write_text(job.read_text().replace("epochs = 3", "epochs = 20"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "horn.cli", "run", job],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not proc.stdout.readline().startswith("epoch   3/"):
        assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped at step" in out, err
    run_dir = only_run_dir(tmp_path)
    before = [r["time_s"] for r in read_metrics(run_dir / "metrics.jsonl")]
    resumed = horn("run", "--resume", run_dir, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    times = [
        r["time_s"]
        for r in read_metrics(run_dir / "metrics.jsonl")
        if r["kind"] in ("epoch", "final")
    ]
    assert len(times) == 21
    assert times == sorted(times), "time_s went backwards at the resume"
    assert times[len(before)] > before[-1]


STRATEGIES = {
    "single": None,
    "model-averaging": "[parallel]\nlocal_steps = 5\n",
    "sub-networks": "[parallel]\ngroups = 1\nworkers = 2\nlocal_steps = 5\n",
    "ensemble": "[parallel]\nbarrier = 'ensemble'\nlocal_steps = 10\n"
    "[parallel.ensemble]\ndistill_size = 128\ndistill_steps = 5\n",
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_early_stopping_stops_every_rank_and_keeps_the_best_model(tmp_path, strategy):
    """min_delta = 0.5 cannot be beaten after epoch 1: with patience 2 the run stops
    after epoch 3 of 30, on every rank at the same step (else it would hang or fail).
    min_delta decides only when to stop: best.npz is the best of the 3 epochs. A resume
    from the last checkpoint stops there again and writes the same final record."""
    extra = "[train.early_stop]\npatience = 2\nmin_delta = 0.5\n[checkpoint]\nevery = 1\n" + (
        STRATEGIES[strategy] or ""
    )
    job = write_job(tmp_path, extra)
    job.write_text(job.read_text().replace("epochs = 3", "epochs = 30"))
    args = ["-m", "horn.cli", "run", job]
    result = (
        subprocess.run(
            [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        if STRATEGIES[strategy] is None
        else mpirun(2, args, 120)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = only_run_dir(tmp_path)
    rows = read_metrics(run_dir / "metrics.jsonl")
    epochs, final = [r for r in rows if r["kind"] == "epoch"], rows[-1]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert final["kind"] == "final" and final["stopped_early_at_epoch"] == 3
    accuracies = [r["val_accuracy"] for r in epochs]
    assert final["best_epoch"] == 1 + accuracies.index(max(accuracies))
    assert final["best_val_accuracy"] == max(accuracies)
    assert final["steps"] < 30 * epochs[0]["step"]
    last = result.stdout.strip().splitlines()[-1]
    assert f"at epoch {final['best_epoch']}" in last and "stopped early after epoch 3" in last
    best = horn("eval", run_dir / "best.npz", "--split", "test")
    assert best.returncode == 0, best.stderr
    assert best.stdout.startswith(f"test accuracy {final['best_test_accuracy']:.4f}")
    if strategy == "single":  # its last checkpoint is where it stopped: it stops again
        again = horn("run", "--resume", run_dir, "--quiet")
        assert again.returncode == 0, again.stderr
        rows_again = read_metrics(run_dir / "metrics.jsonl")
        assert [r["kind"] for r in rows_again] == [r["kind"] for r in rows]
        untimed = {k: v for k, v in final.items() if k != "time_s"}
        assert {k: v for k, v in rows_again[-1].items() if k != "time_s"} == untimed


def test_early_stop_keys_are_checked(tmp_path):
    for body, expected in (
        ("patience = 0", "train.early_stop.patience: expected an integer >= 1"),
        ("min_delta = -1", "train.early_stop.min_delta: expected a number"),
        ("patiense = 3", "train.early_stop.patiense: unknown key"),
    ):
        path = tmp_path / "bad.toml"
        path.write_text(SMALL + f"[train.early_stop]\n{body}\n")
        result = horn("validate", path)
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_one_epoch_curve_shows_its_points(tmp_path):
    """A one-epoch run's curve.png is not blank: its single points are drawn."""
    import matplotlib.image

    job = write_job(tmp_path)
    job.write_text(job.read_text().replace("epochs = 3", "epochs = 1"))
    assert horn("run", job, "--quiet").returncode == 0
    image = matplotlib.image.imread(only_run_dir(tmp_path) / "curve.png")[..., :3]
    loss_panel = image[:, : image.shape[1] // 2]  # no legend there: C0 is the loss itself
    blue = (
        (abs(loss_panel[..., 0] - 0.12) < 0.05)
        & (abs(loss_panel[..., 1] - 0.47) < 0.05)
        & (abs(loss_panel[..., 2] - 0.71) < 0.05)
    )  # matplotlib's first colour
    assert blue.sum() > 20
    assert (
        json.loads((only_run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()[-1])["kind"]
        == "final"
    )
