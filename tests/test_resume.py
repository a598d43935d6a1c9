"""Checkpoints and resume: nothing lost, nothing hangs (real mpirun for multi-rank)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from horn.checkpoint import Checkpointer, load_latest
from horn.errors import HornError
from tests.cli import ROOT, horn
from tests.mpirun import PROGS, mpirun

JOB = """
name = "ck"
[model]
imports = ["killer"]
layers = [{ type = "dense", units = 32, activation = "relu" }, { type = "killer:KillAt" },
          { type = "dense", units = 24, activation = "relu" }, { type = "dropout", p = 0.1 },
          { type = "dense", units = 10 }]
[train]
epochs = 6
batch_size = 16
backend = "numpy"
[parallel]
local_steps = 4
[checkpoint]
every = 5
keep_last = 2
"""
ENV = {"PYTHONPATH": f"{PROGS}:{ROOT}"}
TIMING = (
    "time_s",
    "samples_per_s",
    "compute_s",
    "comm_s",
    "rank_compute_s",
    "rank_wait_s",
    "waited_for",
)


def write_job(tmp_path, name, extra=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(JOB) + extra + f"[log]\ndir = '{tmp_path / name}'\n")
    return path


def run_dir_in(tmp_path, name):
    (run_dir,) = (tmp_path / name).iterdir()
    return run_dir


def same_run(a, b):
    """Metrics (timings aside) and final parameters are identical."""
    rows = [
        [
            {k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in open(d / "metrics.jsonl")
        ]
        for d in (a, b)
    ]
    assert rows[0] == rows[1]
    pa, pb = np.load(a / "model.npz"), np.load(b / "model.npz")
    assert [k for k in pa.files] == [k for k in pb.files]
    for k in pa.files:
        if k.startswith("param/"):
            assert np.array_equal(pa[k], pb[k]), k


@pytest.mark.parametrize(
    "parallel",
    [
        "",
        "groups = 1\nworkers = 2\n",
        "[parallel.average]\nouter = 'nesterov'\nouter_lr = 0.7\n",
        "[parallel.average]\nouter = 'adam'\nouter_lr = 0.01\n",
        "[parallel.average]\ncompress = 'int8'\nblock = 64\nouter = 'nesterov'\nouter_lr = 0.7\n",
        "groups = 1\nworkers = 2\n[parallel.subnet]\ncompress = 'int8'\nblock = 64\n",
        "workers = 2\nglobal_every = 3\n[parallel.subnet]\ncompress = 'bf16'\n"
        "[parallel.average]\ncompress = 'int8'\nblock = 32\n",
        "groups = 1\nworkers = 2\n[parallel.subnet]\nwarmup_steps = 30\ncooldown_steps = 320\n",
        "local_steps = 1\n[parallel.average]\nreduce = 'gradients'\n",
        "[parallel.average]\nacross_every = 3\nmomentum = true\nouter = 'nesterov'\nouter_lr = 0.7\n",
    ],
    ids=[
        "model-averaging",
        "sub-networks",
        "outer-nesterov",
        "outer-adam",
        "int8-nesterov",
        "sub-networks-int8",
        "2x2-bf16-cross-int8",
        "sub-networks-warmup-cooldown",
        "overlapped-gradients",
        "hierarchical-nesterov",
    ],
)
def test_sigkill_then_resume_equals_uninterrupted_bit_for_bit(tmp_path, parallel):
    ranks = 4 if parallel.startswith("workers = 2") else 2  # groups of sub-networks
    prompt_s = 15 * ranks  # 4 oversubscribed ranks start and step about twice as slowly
    for name in ("whole", "killed"):
        path = write_job(tmp_path, name)
        text, rounds = path.read_text(), "local_steps = 4\n"
        if parallel.startswith("local_steps = 1"):  # rounds of 1 step: checkpoint as often
            text, rounds = text.replace("every = 5", "every = 20"), ""
        path.write_text(text.replace("local_steps = 4\n", rounds + parallel))
    whole = mpirun(ranks, ["-m", "horn.cli", "run", tmp_path / "whole.toml", "--quiet"], 120, ENV)
    assert whole.returncode == 0, whole.stderr
    start = time.monotonic()
    killed = mpirun(
        ranks,
        ["-m", "horn.cli", "run", tmp_path / "killed.toml", "--quiet"],
        4 * prompt_s,
        {**ENV, "HORN_TEST_KILL_RANK": "1", "HORN_TEST_KILL_AT": "190"},
    )
    assert killed.returncode != 0 and time.monotonic() - start < prompt_s
    assert "rank 1" in killed.stdout + killed.stderr
    run_dir = run_dir_in(tmp_path, "killed")
    assert not (run_dir / "model.npz").exists()
    resumed = mpirun(ranks, ["-m", "horn.cli", "run", "--resume", run_dir, "--quiet"], 120, ENV)
    assert resumed.returncode == 0, resumed.stderr
    same_run(run_dir_in(tmp_path, "whole"), run_dir)


def test_sigusr1_on_mpirun_checkpoints_and_exits_cleanly(tmp_path):
    path = write_job(tmp_path, "term")
    path.write_text(path.read_text().replace("epochs = 6", "epochs = 400"))
    from tests.mpirun import mpirun_path

    env = {
        **os.environ,
        **ENV,
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }
    proc = subprocess.Popen(
        [mpirun_path(), "-n", "2", sys.executable, "-m", "horn.cli", "run", path],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not proc.stdout.readline().startswith("epoch   2/"):  # training is under way
        assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGUSR1)  # what mpirun forwards to every rank
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped at step" in out and "--resume" in out
    run_dir = run_dir_in(tmp_path, "term")
    manifest, arrays = load_latest(run_dir)
    assert manifest["step"] == int(out.split("stopped at step ")[1].split()[0])
    assert "world/params" in arrays and not (run_dir / "model.npz").exists()


def test_sigterm_on_a_single_process_run_checkpoints_and_resumes(tmp_path):
    path = write_job(tmp_path, "single")
    path.write_text(path.read_text().replace("epochs = 6", "epochs = 20"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "horn.cli", "run", path],
        cwd=ROOT,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not proc.stdout.readline().startswith("epoch   2/"):
        assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped at step" in out, err
    run_dir = run_dir_in(tmp_path, "single")
    resumed = horn("run", "--resume", run_dir, "--quiet", env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["kind"] == "final"


def test_resume_on_another_world_size(tmp_path):
    path = write_job(tmp_path, "ma")
    first = mpirun(
        2,
        ["-m", "horn.cli", "run", path, "--quiet"],
        120,
        {**ENV, "HORN_TEST_KILL_RANK": "1", "HORN_TEST_KILL_AT": "190"},
    )
    assert first.returncode != 0
    run_dir = run_dir_in(tmp_path, "ma")
    one = mpirun(1, ["-m", "horn.cli", "run", "--resume", run_dir, "--quiet"], 120, ENV)
    assert one.returncode == 0, one.stderr  # model averaging: the averaged model is the state
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["kind"] == "final"


@pytest.mark.parametrize(
    "layout, resume_set, workers_after",
    [
        ("workers = 2\n", [], 2),  # 2 x 2 -> 1 x 2: a group lost
        ("groups = 1\nworkers = 4\n", ["--set", "parallel.workers=2"], 2),  # 1 x 4 -> 1 x 2
    ],
    ids=["2x2-to-1x2", "1x4-to-1x2"],
)
def test_sub_network_groups_resume_on_fewer_ranks(tmp_path, layout, resume_set, workers_after):
    """Half the ranks lost (a host): the checkpoint's group parents are re-partitioned
    over the ranks that are left; the model carries over, optimizer state restarts."""
    path = write_job(tmp_path, "sub")
    path.write_text(
        path.read_text()
        .replace("local_steps = 4\n", "local_steps = 4\n" + layout)
        .replace("units = 32", "units = 128")
        .replace("units = 24", "units = 96")
    )
    first = mpirun(
        4,
        ["-m", "horn.cli", "run", path, "--quiet"],
        120,
        {**ENV, "HORN_TEST_KILL_RANK": "1", "HORN_TEST_KILL_AT": "120"},
    )
    assert first.returncode != 0
    run_dir = run_dir_in(tmp_path, "sub")
    manifest, _ = load_latest(run_dir)
    resumed = mpirun(
        2, ["-m", "horn.cli", "run", "--resume", run_dir, *resume_set, "--quiet"], 120, ENV
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"resuming a 4-rank checkpoint ({manifest['layout']['groups']} x "
        f"{manifest['layout']['workers']}) on 2 rank(s) (1 x {workers_after}): the model "
        f"carries over, optimizer state and the data order restart"
    ) in resumed.stderr
    text = (run_dir / "metrics.jsonl").read_bytes()
    before, after = (
        [json.loads(line) for line in part.decode().splitlines()]
        for part in (text[: manifest["metrics_bytes"]], text[manifest["metrics_bytes"] :])
    )
    assert after[-1]["kind"] == "final"
    parts = [r["partition_sizes"] for r in after if "partition_sizes" in r]
    assert parts and all(len(layer) == workers_after for p in parts for layer in p)
    assert all(sum(p[0]) == 128 and sum(p[1]) == 96 for p in parts)  # every hidden unit kept
    # the parents carried over: the first epoch after the resume beats the first epoch of
    # the same 2-rank layout started from scratch
    fresh = mpirun(
        2,
        [
            "-m",
            "horn.cli",
            "run",
            path,
            *resume_set,
            "--set",
            "train.epochs=1",
            "--set",
            f"log.dir={tmp_path / 'fresh'}",
            "--quiet",
        ],
        120,
        ENV,
    )
    assert fresh.returncode == 0, fresh.stderr
    (fresh_dir,) = (tmp_path / "fresh").iterdir()
    first = lambda rows: next(r["loss"] for r in rows if "epoch" in r and "loss" in r)
    from_scratch = first(map(json.loads, open(fresh_dir / "metrics.jsonl")))
    print(f"first epoch after the resume {first(after):.3f}, from scratch {from_scratch:.3f}")
    assert first(after) < 0.9 * from_scratch  # measured 0.47x (2 x 2) and 0.82x (1 x 4)


def checkpoints(tmp_path):
    """Two valid single-process checkpoints (steps 10 and 20) of a tiny state."""
    ck = Checkpointer(tmp_path, None, keep_last=5)
    for step in (10, 20):
        ck.save(
            step,
            {"v": np.full(4, step, np.float32)},
            {"step": step},
            {"params": ("world", np.arange(6, dtype=np.float32) * step)},
            {"layout": {"world": 1, "groups": 1, "workers": 1}, "metrics_bytes": 0},
        )
    return ck


def test_a_half_written_checkpoint_is_never_loaded(tmp_path):
    checkpoints(tmp_path)
    directory = tmp_path / "checkpoints"
    (directory / "ckpt-000000030.npz").write_bytes(b"PK\x03\x04 truncated")  # no manifest yet
    manifest, arrays = load_latest(tmp_path)
    assert manifest["step"] == 20
    good = (directory / "ckpt-000000020.json").read_text()
    (directory / "ckpt-000000030.json").write_text(good.replace("000000020", "000000030"))
    warnings = []
    manifest, _ = load_latest(tmp_path, warn=lambda *a, **k: warnings.append(a[0]))
    assert manifest["step"] == 20 and "ckpt-000000030.json" in warnings[0]


def test_a_corrupted_array_is_detected_by_checksum(tmp_path):
    checkpoints(tmp_path)
    path = tmp_path / "checkpoints" / "ckpt-000000020.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["world/params"][3] += 1  # one flipped value, same shape and dtype
    np.savez(path, **arrays)
    warnings = []
    manifest, arrays = load_latest(tmp_path, warn=lambda *a, **k: warnings.append(a[0]))
    assert manifest["step"] == 10 and np.array_equal(arrays["world/params"], np.arange(6) * 10)
    assert "checksum mismatch in world/params" in warnings[0]


def test_keep_last_prunes_old_checkpoints(tmp_path):
    ck = checkpoints(tmp_path)
    ck.keep_last = 1
    ck._prune()
    assert ck.valid_steps() == [20]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "ckpt-000000020.json",
        "ckpt-000000020.npz",
    ]


def test_a_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ck = checkpoints(tmp_path)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # where a full disk shows up for buffered writes
    with pytest.raises(
        HornError,
        match=r"No space left on device; the previous checkpoint "
        r"\(step 20\) is intact",
    ):
        ck.save(30, {}, {}, {}, {"layout": {}, "metrics_bytes": 0})
    monkeypatch.undo()
    assert load_latest(tmp_path)[0]["step"] == 20
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))


def test_an_unwritable_run_directory_is_a_clear_error(tmp_path):
    result = horn(
        "run",
        write_job(tmp_path, "nowrite"),
        "--quiet",
        "--set",
        "log.dir='/proc/horn-runs'",
        env=ENV,
    )  # unwritable even for root
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "horn: error: log.dir: cannot create run directory /proc/horn-runs/"
    )
