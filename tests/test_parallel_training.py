"""Multi-rank training through real mpirun: equivalences, failures, layout errors."""

import json
import sys
import textwrap
import time

from tests.cli import ROOT
from tests.mpirun import HOST, mpirun

JOB = """
name = "mini"
[data]
name = "digits"
[model]
layers = [{ type = "dense", units = 32, activation = "relu" }, { type = "dense", units = 10 }]
[train]
epochs = 2
batch_size = 16
lr = 0.05
momentum = 0.9
weight_decay = 1e-4
backend = "numpy"
[parallel]
local_steps = 4
"""


def write_job(tmp_path, text=JOB, name="mini.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text) + f"[log]\ndir = '{tmp_path / 'runs'}'\n")
    return path


def horn_args(*args):
    return ["-m", "horn.cli", *map(str, args)]


def run_dir_of(result):
    return result.stdout.strip().splitlines()[-1].split("run directory ")[1]


def metrics(run_dir):
    rows = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    return [
        {
            k: v
            for k, v in r.items()
            if k
            not in (
                "time_s",
                "samples_per_s",
                "compute_s",
                "comm_s",
                "rank_compute_s",
                "rank_wait_s",
                "waited_for",
            )
        }
        for r in rows
    ]


def test_one_rank_equals_the_single_process_trainer_bit_for_bit(tmp_path):
    import subprocess

    job = write_job(tmp_path)
    single = subprocess.run(
        [sys.executable, *horn_args("run", job, "--quiet")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert single.returncode == 0, single.stderr
    one = mpirun(1, horn_args("run", job, "--quiet"), timeout=120)
    assert one.returncode == 0, one.stderr
    a, b = run_dir_of(single), run_dir_of(one)
    training = lambda rows: [r for r in rows if r["kind"] in ("epoch", "final")]  # noqa: E731
    ra, rb = training(metrics(a)), training(metrics(b))
    for row in rb:  # communication accounting is all the world of one adds
        assert row.pop("bytes_sent_per_rank", [0]) == [0]
    assert ra == rb
    import numpy as np

    pa, pb = np.load(f"{a}/model.npz"), np.load(f"{b}/model.npz")
    assert all(np.array_equal(pa[k], pb[k]) for k in pa.files if k.startswith("param/"))


def test_local_steps_1_equals_large_batch_sgd(tmp_path):
    result = mpirun(
        2, [str(ROOT / "tests/mpi_progs/dp_equivalence.py"), write_job(tmp_path)], timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "EQUIVALENT" in result.stdout


def test_model_averaging_on_4_ranks_trains_and_logs_bytes(tmp_path):
    result = mpirun(
        4, horn_args("run", write_job(tmp_path), "--set", "train.epochs=10"), timeout=180
    )
    assert result.returncode == 0, result.stderr
    assert "horn: 4 ranks as 4 group(s) x 1 worker(s)" in result.stdout
    rows = [json.loads(line) for line in open(f"{run_dir_of(result)}/metrics.jsonl")]
    supersteps = [r for r in rows if r["kind"] == "superstep"]
    assert supersteps and all(r["bytes_sent"] > 0 for r in supersteps)
    final = rows[-1]
    assert final["test_accuracy"] > 0.8 and final["bytes_sent_per_rank"][0] > 0


def test_world_size_that_does_not_fit_is_a_clear_error(tmp_path):
    job = write_job(tmp_path, JOB + "groups = 2\n")
    start = time.monotonic()
    result = mpirun(3, horn_args("run", job, "--quiet"), timeout=60)
    assert result.returncode != 0
    assert "world size 3" in result.stderr and "parallel.groups=2" in result.stderr
    assert time.monotonic() - start < 30


def test_a_rank_that_raises_stops_the_job_naming_the_rank(tmp_path):
    (tmp_path / "boom.py").write_text(
        textwrap.dedent('''
        import os
        import time
        import horn

        class Boom(horn.Layer):
            """Identity that fails on rank 1 in its first training step."""
            def forward(self, x, train):
                if train and os.environ.get("OMPI_COMM_WORLD_RANK") == "1":
                    with open(os.environ["BOOM_TIME"], "w") as f:
                        f.write(repr(time.time()))
                    raise RuntimeError("boom on purpose")
                return x
            def backward(self, dy):
                return dy
    ''')
    )
    job = write_job(
        tmp_path,
        JOB.replace(
            '[{ type = "dense", units = 32', '[{ type = "boom:Boom" }, { type = "dense", units = 32'
        ).replace("[model]\n", '[model]\nimports = ["boom"]\n'),
    )
    stamp = tmp_path / "boom_time"
    result = mpirun(
        2,
        horn_args("run", job, "--quiet"),
        timeout=120,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "BOOM_TIME": str(stamp)},
    )
    elapsed = time.time() - float(stamp.read_text())  # from the fault to the job's end
    assert result.returncode != 0
    assert f"rank 1 (host {HOST}, group 1, worker 0) failed: RuntimeError: boom on purpose" in (
        result.stderr
    )
    assert elapsed < 15, elapsed


def test_a_mismatched_job_on_one_rank_is_reported(tmp_path):
    a = write_job(tmp_path)
    b = write_job(tmp_path, JOB.replace("lr = 0.05", "lr = 0.06"), "other.toml")
    result = mpirun(
        1,
        [
            *horn_args("run", a, "--quiet"),
            ":",
            "-n",
            "1",
            sys.executable,
            *horn_args("run", b, "--quiet"),
        ],
        timeout=60,
    )
    assert result.returncode != 0
    assert "the resolved job differs between ranks: rank(s) 1 disagree with rank 0" in result.stderr
