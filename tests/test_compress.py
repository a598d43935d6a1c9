"""Compressed exchanges: the Numba kernels equal the numpy reference bit for bit, error
feedback loses nothing over rounds, and compressed model averaging across real ranks
sends the bytes its formula says and gives every rank the same model."""

import json
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horn.backends import get_backend
from horn.backends.base import CODECS, message_size
from horn.backends.numba_backend import PARALLEL_MIN
from horn.model import Model, spec_layout
from tests.mpirun import mpirun, train_on_ranks

numpy_backend, numba_backend = get_backend("numpy"), get_backend("numba")


def values(n, seed):
    """float32 over the whole range: subnormal halves, ties, saturation, zeros, -0."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-40, 14, n))).astype(np.float32)
    x[rng.random(n) < 0.05] = 0.0
    x[rng.random(n) < 0.02] *= -0.0
    return x


@settings(max_examples=60, deadline=None)
@given(
    codec=st.sampled_from(CODECS),
    n=st.sampled_from([1, 7, 255, 256, 1000, PARALLEL_MIN + 3]),
    block=st.sampled_from([1, 64, 256, 1000]),
    seed=st.integers(0, 2**16),
)
def test_numba_kernels_equal_the_numpy_reference_bit_for_bit(codec, n, block, seed):
    x = values(n, seed)
    residual = (np.random.default_rng(seed + 1).standard_normal(n) * 1e-3).astype(np.float32)
    results = []
    for backend in (numpy_backend, numba_backend):
        r, message = residual.copy(), np.empty(message_size(codec, n, block), np.uint8)
        backend.compress(codec, x, r, block, message)
        out = np.full(n, 0.5, np.float32)
        backend.decompress_add(codec, message, block, out)
        results.append((message, r, out))
    for want, got in zip(*results, strict=True):
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("codec", CODECS)
def test_error_feedback_carries_what_the_codec_dropped(codec):
    """Over many rounds the decoded sum tracks the true sum to within one residual."""
    rng = np.random.default_rng(3)
    n, block = 4096, 256
    residual, total, decoded = np.zeros(n, np.float32), np.zeros(n), np.zeros(n, np.float32)
    message = np.empty(message_size(codec, n, block), np.uint8)
    for _ in range(50):
        x = (rng.standard_normal(n) * 1e-2).astype(np.float32)
        total += x
        numba_backend.compress(codec, x, residual, block, message)
        numba_backend.decompress_add(codec, message, block, decoded)
    drift = np.abs(total - decoded - residual).max()
    assert drift < 1e-4  # decoded + residual == the sum, but for float32 rounding
    single = np.zeros(n, np.float32)
    numba_backend.decompress_add(codec, message, block, single)
    assert np.abs(residual).max() <= np.abs(x).max()  # the residual stays one step's error


JOB = """
name = "compressed"
[model]
layers = [{ type = "dense", units = 16, activation = "relu" }, { type = "dense", units = 10 }]
[train]
steps = 24
batch_size = 16
backend = "numba"
[parallel]
local_steps = 6
[parallel.average]
"""


@pytest.mark.parametrize("codec,block", [("int8", 64), ("bf16", 256), ("fp16", 256)])
def test_compressed_averaging_across_ranks(tmp_path, codec, block):
    path = tmp_path / "job.toml"
    path.write_text(
        textwrap.dedent(JOB) + f"compress = '{codec}'\nblock = {block}\n"
        f"[log]\ndir = '{tmp_path / 'runs'}'\nplot = false\n"
    )
    program = (
        "import sys, numpy as np; from mpi4py import MPI; from horn.api import run; "
        "r = run(sys.argv[1]); np.save(sys.argv[2] + str(MPI.COMM_WORLD.rank), "
        "r.model.params)"
    )
    result = mpirun(3, ["-c", program, path, tmp_path / "params"], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    params = [np.load(tmp_path / f"params{r}.npy") for r in range(3)]
    assert all(np.array_equal(params[0], p) for p in params[1:])  # the same model everywhere
    (run_dir,) = (tmp_path / "runs").iterdir()
    size = Model.load(run_dir / "model.npz")[0].size
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    supersteps = [r for r in rows if r.get("kind") == "superstep"]
    assert len(supersteps) == 4
    sync_bytes = min(r["bytes_sent"] for r in supersteps) - 2 * message_size(codec, size, block)
    assert 0 <= sync_bytes < 200  # (p - 1) messages per barrier, plus the sync's counters


SUBNET_JOB = """
name = "compressed-subnet"
[model]
layers = [{ type = "dense", units = 48, activation = "relu" },
          { type = "dense", units = 32, activation = "relu" }, { type = "dense", units = 10 }]
[train]
steps = 40
batch_size = 16
backend = "numba"
[parallel]
groups = 2
workers = 2
local_steps = 5
global_every = 3
[parallel.subnet]
partition = "irregular"
"""


def subnet_job(tmp_path, codec, block, cross=None):
    path = tmp_path / "job.toml"
    average = "" if cross is None else f"[parallel.average]\ncompress = '{cross}'\nblock = 32\n"
    path.write_text(
        textwrap.dedent(SUBNET_JOB) + f"compress = '{codec}'\nblock = {block}\n{average}"
        f"[log]\ndir = '{tmp_path / 'runs'}'\nplot = false\n"
    )
    return path


@pytest.mark.parametrize("codec,block,cross", [("int8", 64, "int8"), ("bf16", 256, None)])
def test_compressed_subnet_rounds_match_the_numpy_reference_on_every_rank(
    tmp_path, codec, block, cross
):
    """tests/mpi_progs/compressed_subnet.py on 2 x 2 ranks, 8 rounds."""
    from tests.mpirun import PROGS

    path = subnet_job(tmp_path, codec, block, cross)
    result = mpirun(4, [PROGS / "compressed_subnet.py", path], timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [
        json.loads(line[7:]) for line in result.stdout.splitlines() if line.startswith("RESULT ")
    ]
    assert sorted(r["rank"] for r in rows) == [0, 1, 2, 3]
    for row in rows:
        assert row["finite"] and len(row["rounds"]) == 8
        assert sum(r["cross"] for r in row["rounds"]) == 3  # rounds 3, 6 and the last
        for check in row["rounds"]:
            assert check["parent_is_reference"] and check["residual_is_reference"]
            assert check["group_same"]
            assert check["world_same"] == check["cross"]  # groups differ between averages
        # error feedback: true changes - what was sent == the residual, which is not zero
        assert row["drift"] <= 1e-6 * row["true_change"], row
        assert row["residual"] > 0


def compact_size(features, hidden, classes):
    """|theta_w| (the flat buffer, alignment gaps included) of an MLP sub-network with
    ``hidden`` units per hidden layer kept."""
    layers = [{"type": "dense", "units": u} for u in [*hidden, classes]]
    return spec_layout({"in_features": features, "layers": layers})[1]


@pytest.mark.parametrize("codec,block,cross", [("int8", 64, "int8"), ("fp16", 256, "bf16")])
def test_compressed_subnet_bytes_in_metrics_follow_the_formula(tmp_path, codec, block, cross):
    """Rank 0's supersteps: (W-1) messages of its own block per round, plus (G-1)
    messages of the parent at a cross-group average, plus the sync's 24 (p-1)."""
    path = subnet_job(tmp_path, codec, block, cross)
    run_dir, model = train_on_ranks(path, 4, timeout=240)
    rows = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    parts = [r["partition_sizes"] for r in rows if r.get("kind") == "partition" and r["group"] == 0]
    steps = [r["bytes_sent"] for r in rows if r.get("kind") == "superstep"]
    assert len(parts) == len(steps) == 8
    expected = []
    for r, sizes in enumerate(parts):
        own = compact_size(64, [s[0] for s in sizes], 10)  # rank 0 is worker 0 of group 0
        sent = message_size(codec, own, block)
        if (r + 1) % 3 == 0 or r == 7:
            sent += message_size(cross, model.size, 32)
        expected.append(sent + 24 * 3)
    # beyond it, only the preemption check's float64 Allreduce: 2 (p-1)/p 8 = 12 bytes
    extra = [got - want for got, want in zip(steps, expected)]
    assert set(extra) <= {0, 12} and extra.count(12) >= 6, (steps, expected)


@pytest.mark.parametrize("codec,block", [("int8", 16), ("bf16", 256), ("fp16", 256)])
def test_compressed_teacher_matches_the_numpy_reference_on_every_rank(codec, block):
    from tests.mpirun import PROGS

    result = mpirun(3, [PROGS / "compressed_teacher.py", codec, block], timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr


EC_JOB = """
name = "compressed-ec"
[model]
layers = [{ type = "dense", units = 16, activation = "relu" }, { type = "dense", units = 10 }]
[train]
steps = 30
batch_size = 16
backend = "numba"
[parallel]
barrier = "ensemble"
local_steps = 10
[parallel.ensemble]
distill_size = 101
distill_steps = 5
compress = "int8"
block = 64
"""


def test_compressed_teacher_bytes_in_metrics_follow_the_formula(tmp_path):
    """Each barrier but the last (which also sends the final model to rank 0):
    (G - 1) (4 + N C + 4 ceil(N C / B)) bytes from every rank."""
    path = tmp_path / "ec.toml"
    path.write_text(textwrap.dedent(EC_JOB) + f"[log]\ndir = '{tmp_path}'\nplot = false\n")
    run_dir, _ = train_on_ranks(path, 2, timeout=180)
    barriers = [
        r for r in map(json.loads, open(f"{run_dir}/metrics.jsonl")) if r.get("kind") == "barrier"
    ]
    assert len(barriers) == 3
    want = 4 + message_size("int8", 101 * 10, 64)
    assert [b["bytes_sent"] for b in barriers[:-1]] == [want, want]
    assert barriers[-1]["bytes_sent"] > want


@pytest.mark.parametrize(
    "parallel,message",
    [
        (
            "[parallel.subnet]\ncompress = 'int8'\n",
            "parallel.subnet.compress: compresses the exchange of sub-network groups",
        ),
        (
            "groups = 1\nworkers = 2\n[parallel.average]\ncompress = 'bf16'\n",
            "parallel.average.compress: one group of sub-networks has no cross-group average",
        ),
        (
            "barrier = 'ensemble'\n[parallel.ensemble]\nteacher_data = 'local'\n"
            "compress = 'fp16'\n",
            "parallel.ensemble.compress: compresses the shared teacher's outputs",
        ),
        (
            "workers = 2\n[parallel.subnet]\ncompress = 'int4'\n",
            "parallel.subnet.compress: expected one of",
        ),
        ("workers = 2\n[parallel.subnet]\nblock = 0\n", "parallel.subnet.block"),
    ],
    ids=["subnet-without-workers", "average-one-group", "ensemble-local", "codec", "block"],
)
def test_bad_compress_settings_are_one_line_with_exit_code_2(tmp_path, parallel, message):
    from tests.cli import horn

    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent(JOB).replace("[parallel.average]\n", parallel))
    result = horn("validate", path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("horn: error: ") and message in lines[0], lines


def test_model_averaging_evaluates_between_barriers_on_a_compressed_copy(tmp_path):
    """An epoch ending mid-round evaluates the replicas' mean: (p - 1) codec messages
    more in that superstep, where fp32 would send 2 (p - 1)/p 4 P."""
    path = tmp_path / "job.toml"
    path.write_text(
        textwrap.dedent(JOB).replace("steps = 24", "steps = 40").replace("= 6", "= 10")
        + f"compress = 'int8'\nblock = 64\n[log]\ndir = '{tmp_path / 'runs'}'\nplot = false\n"
    )
    run_dir, model = train_on_ranks(path, 3, timeout=180)
    rows = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    epochs = [r for r in rows if "val_accuracy" in r and "epoch" in r]
    steps = [r["bytes_sent"] for r in rows if r.get("kind") == "superstep"]
    assert len(epochs) >= 2 and len(steps) == 4  # an epoch ends inside a round
    copy = max(steps) - min(steps) - 2 * message_size("int8", model.size, 64)
    assert 0 <= copy < 200, steps
