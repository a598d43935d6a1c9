"""Checkpoints and resume: nothing lost, nothing hangs (real mpirun for multi-rank)."""

import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from horn.checkpoint import Checkpointer, load_latest
from horn.cli import main
from horn.errors import HornError
from horn.metrics import read_metrics
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
    alone = horn("run", "--resume", run_dir, "--set", "parallel.groups=2", env=ENV)  # no mpirun
    assert alone.returncode == 2, alone.stderr
    suggested = (
        f"run: mpirun --oversubscribe -n 2 horn run --resume {run_dir} --set parallel.groups=2"
    )
    assert suggested in alone.stderr, alone.stderr
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


def header(step):
    """The run-level facts a checkpoint manifest holds, for a tiny single-process state."""
    layout = {"world": 1, "groups": 1, "workers": 1}
    return {"layout": layout, "job_digest": "", "round": step, "metrics_bytes": 0}


def checkpoints(tmp_path):
    """Two valid single-process checkpoints (steps 10 and 20) of a tiny state."""
    ck = Checkpointer(tmp_path, None, keep_last=5)
    for step in (10, 20):
        ck.save(
            step,
            {"v": np.full(4, step, np.float32)},
            {"step": step},
            {"params": ("world", np.arange(6, dtype=np.float32) * step)},
            header(step),
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
        ck.save(30, {}, {}, {}, header(30))
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


# ---- a refused resume says why in one line and changes nothing ----------------------
DIGITS = """
name = "digits"
[data]
name = "digits"
[model]
layers = [{ type = "dense", units = 16, activation = "relu" }, { type = "dense", units = 10 }]
[train]
epochs = 2
backend = "numpy"
[checkpoint]
every = 5
keep_last = 2
[log]
plot = false
"""


class Resumable:
    """A finished digits run (40 steps) whose only checkpoint is step 35's, so that a
    resume trains again; fresh copies of it to spoil, and ``horn`` run in this process
    (a refused resume takes milliseconds)."""

    def __init__(self, root):
        self.root, self.copies = root, itertools.count()
        job = root / "digits.toml"
        job.write_text(DIGITS + f"dir = '{root / 'runs'}'\n")
        assert self.horn("run", job, "--quiet")[0] == 0
        self.run_dir = run_dir_in(root, "runs")
        newest = max((self.run_dir / "checkpoints").glob("ckpt-*.json"))
        newest.unlink()
        newest.with_suffix(".npz").unlink()
        (self.manifest_name,) = (p.name for p in (self.run_dir / "checkpoints").glob("*.json"))
        self.manifest = json.loads(self.manifest_path(self.run_dir).read_text())
        self.kept = (self.run_dir / "metrics.jsonl").read_bytes()[: self.manifest["metrics_bytes"]]

    def manifest_path(self, run_dir):
        return run_dir / "checkpoints" / self.manifest_name

    def copy(self):
        run_dir = self.root / f"copy{next(self.copies)}"
        shutil.copytree(self.run_dir, run_dir)
        return run_dir

    @staticmethod
    def horn(*args):
        """``horn ARGS`` in this process: (exit code, stderr)."""
        err = io.StringIO()
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            code = main([str(a) for a in args])
        return code, err.getvalue()


@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    patch = pytest.MonkeyPatch()  # what horn run installs, kept out of pytest's process
    patch.setattr("horn.resume.install_preemption_handlers", lambda: None)
    patch.setattr(sys, "excepthook", sys.excepthook)
    yield Resumable(tmp_path_factory.mktemp("resumable"))
    patch.undo()


def files(run_dir):
    """Every path under ``run_dir`` with its bytes (None for a directory)."""
    return {
        p.relative_to(run_dir).as_posix(): p.read_bytes() if p.is_file() else None
        for p in sorted(run_dir.rglob("*"))
    }


def assert_refused(code, err, run_dir, before):
    """Exit 2 with one ``horn: error:`` line naming the run (after any warnings about
    checkpoints skipped), no traceback, and every file as it was."""
    lines = err.splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert lines and [line for line in lines if not line.startswith("horn: warning: ")] == [
        lines[-1]
    ], err
    assert lines[-1].startswith("horn: error: ") and str(run_dir) in lines[-1], err
    assert files(run_dir) == before


def put(*path, value):
    """An edit setting the manifest's ``path`` to ``value``."""

    def edit(manifest, metrics):
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def both_steps(value):
    def edit(manifest, metrics):
        manifest["step"] = manifest["ranks"]["0"]["step"] = value

    return edit


REPORTED = {  # the tester's cases: edit, what the error line says
    "metrics-deleted": (lambda m, f: f.unlink(), "(its metrics_bytes), found no such file"),
    "metrics-truncated": (
        lambda m, f: f.write_bytes(f.read_bytes()[:100]),
        "metrics.jsonl: expected at least",
    ),
    "metrics-garbage-line": (
        lambda m, f: f.write_bytes(b"garbage\n" + f.read_bytes()),
        "metrics.jsonl: expected a record to end at byte",
    ),
    "metrics-nul-line": (
        lambda m, f: f.write_bytes(b"\0" * 10 + f.read_bytes()[10:]),
        "metrics.jsonl: line 1: expected a record up to step 35",
    ),
    "metrics_bytes-a-record-early": (
        put("metrics_bytes", value=0),
        "metrics.jsonl: line 1: expected the records past byte 0",
    ),
    "layout-deleted": (lambda m, f: m.pop("layout"), ".json: layout: expected a table"),
    "ranks-empty": (put("ranks", value={}), ".json: ranks: expected a table for rank 0"),
    "layout-a-string": (put("layout", value="x"), ".json: layout: expected a table"),
    "parameters-a-string": (put("parameters", value="nope"), ".json: parameters: expected"),
    "best-a-number": (put("best", value=5), ".json: best: expected a table"),
    "stream-epoch-a-string": (
        put("ranks", "0", "stream", value={"epoch": "a"}),
        ".json: ranks.0.stream.epoch: expected a whole number",
    ),
    "stream-position-past-the-epoch": (
        put("ranks", "0", "stream", "position", value=10**6),
        ".json: ranks.0.stream.position: expected a whole number from 0 to 20",
    ),
    "rng-not-a-state": (
        put("ranks", "0", "stream", "rng", value={"bit_generator": "PCG64", "state": 3}),
        ".json: ranks.0.stream.rng.state: expected a table",
    ),
    "rng-of-another-generator": (
        put("ranks", "0", "stream", "rng", "bit_generator", value="MT19937"),
        ".json: ranks.0.stream.rng: expected the state of a PCG64 generator",
    ),
    "step-negative": (both_steps(-5), ".json: step: expected a whole number from 0"),
    "step-not-the-ranks": (
        put("step", value=36),
        ".json: ranks.0.step: expected 36, the manifest's step, found 35",
    ),
    "metrics_bytes-1e9": (put("metrics_bytes", value=1e9), ".json: metrics_bytes: expected"),
    "metrics_bytes-past-the-file": (
        put("metrics_bytes", value=10**9),
        "metrics.jsonl: expected at least 1000000000 bytes",
    ),
    "metrics_bytes-negative": (put("metrics_bytes", value=-1), ".json: metrics_bytes: expected"),
    "file-absolute": (
        put("file", value="/etc/hostname"),
        ".json: file: expected 'ckpt-000000035.npz' (the data file beside this manifest), "
        "found '/etc/hostname'",
    ),
    "file-outside": (put("file", value="../../../etc/passwd"), ".json: file: expected"),
    "best-model-deleted": (
        lambda m, f: (f.parent / "best.npz").unlink(),
        ".json: best.best_epoch: expected",
    ),
}


def spoil(resumable, edit):
    """A copy of the run with ``edit(manifest, metrics path)`` applied; its files."""
    run_dir = resumable.copy()
    manifest = json.loads(json.dumps(resumable.manifest))
    edit(manifest, run_dir / "metrics.jsonl")
    resumable.manifest_path(run_dir).write_text(json.dumps(manifest))
    return run_dir, files(run_dir)


@pytest.mark.parametrize("case", REPORTED)
def test_a_refused_resume_names_the_key_and_changes_nothing(resumable, case):
    edit, says = REPORTED[case]
    run_dir, before = spoil(resumable, edit)
    code, err = resumable.horn("run", "--resume", run_dir, "--quiet")
    assert_refused(code, err, run_dir, before)
    assert says in err, err


@pytest.mark.parametrize("case", ["metrics-garbage-line", "file-absolute"])
def test_the_horn_command_refuses_a_spoilt_resume_in_one_line(resumable, case):
    run_dir, before = spoil(resumable, REPORTED[case][0])
    result = horn("run", "--resume", run_dir, "--quiet")
    assert_refused(result.returncode, result.stderr, run_dir, before)


def test_an_unspoilt_copy_resumes_to_the_uninterrupted_run(resumable):
    run_dir = resumable.copy()
    assert resumable.horn("run", "--resume", run_dir, "--quiet") == (0, "")
    same_run(resumable.run_dir, run_dir)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["/etc/hostname", "../../../etc/passwd", "ckpt-000000030.npz", "MT19937"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
METRICS_TEXT = st.sampled_from(
    [b"\0" * 8, b"garbage\n", b"\n", b"{}\n", b'{"kind": "final", "steps": 40}\n', b'{"step": 1}\n']
) | st.binary(min_size=1, max_size=12)


def keys(node, path=()):
    """Every key path of a JSON value, its own (the empty path) first."""
    yield path
    children = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in children:
        yield from keys(child, (*path, key))


def near(value):
    """Values like ``value`` (a whole number a step or two off, a string cut short)
    and any JSON value."""
    if isinstance(value, int) and not isinstance(value, bool):
        return st.integers(-2, 2).map(lambda d: value + d) | JSON
    if isinstance(value, str):
        return st.integers(0, len(value)).map(lambda n: value[:n]) | JSON
    return JSON


def edit_manifest(data, manifest):
    """One to three edits: a value replaced, a key deleted, a key added."""
    for _ in range(data.draw(st.integers(1, 3))):
        *parent, key = data.draw(st.sampled_from(list(keys(manifest))[1:]))
        node = manifest
        for k in parent:
            node = node[k]
        how = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if how == "replace":
            node[key] = data.draw(near(node[key]))
        elif how == "delete":
            node.pop(key)
        elif isinstance(node[key], dict):
            node[key][data.draw(st.text(max_size=6))] = data.draw(JSON)


def edit_metrics(data, path):
    """None, or the file deleted, cut short, or with bytes inserted."""
    text = path.read_bytes()
    how = data.draw(st.sampled_from(["none", "delete", "truncate", "insert"]))
    at = data.draw(st.integers(0, len(text)))
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(text[:at])
    elif how == "insert":
        path.write_bytes(text[:at] + data.draw(METRICS_TEXT) + text[at:])


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def test_fuzz_a_spoilt_resume_is_refused_whole_or_loses_nothing(resumable, data):
    """Generated edits of a real manifest (checksums still valid) and of metrics.jsonl:
    the resume is refused in one line with every file as it was, or it goes on with the
    records its checkpoint logged kept and a final record after them."""
    run_dir = resumable.copy()
    manifest = json.loads(json.dumps(resumable.manifest))
    edit_manifest(data, manifest)
    resumable.manifest_path(run_dir).write_text(json.dumps(manifest))
    edit_metrics(data, run_dir / "metrics.jsonl")
    before = files(run_dir)
    code, err = resumable.horn("run", "--resume", run_dir, "--quiet")
    if code == 0:
        event("resumed")
        assert (run_dir / "metrics.jsonl").read_bytes().startswith(resumable.kept)
        assert read_metrics(run_dir / "metrics.jsonl")[-1]["kind"] == "final"
    else:
        event("refused")
        assert_refused(code, err, run_dir, before)
    shutil.rmtree(run_dir)
