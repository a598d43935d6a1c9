"""horn.bsp and horn.abort under real mpirun (1, 2 and 4 oversubscribed ranks)."""

import json
import math
import re
import subprocess
import sys
import time

import pytest

from tests.mpirun import HOST, PROGS, REPO, mpirun

SEMANTICS = PROGS / "semantics.py"
FAIL = PROGS / "fail.py"
LAYOUTS = {1: (0, 0), 2: (0, 1), 4: (2, 2)}  # ranks -> (groups, workers) passed on the command line


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def run(request):
    """Run semantics.py once per rank count; return (n, {rank: result dict})."""
    n = request.param
    proc = mpirun(n, [SEMANTICS, *LAYOUTS[n]])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = [
        json.loads(line[len("RESULT ") :])
        for line in proc.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    assert sorted(r["rank"] for r in results) == list(range(n))
    return n, {r["rank"]: r for r in results}


def padded(nbytes):
    return -(-nbytes // 8) * 8


def test_messages_invisible_before_sync_and_delivered_after(run):
    n, results = run
    for rank, r in results.items():
        assert r["before_sync_0"] == {}
        expected = {
            str(src): [["<f4", [src, rank, 0.5]], ["<i2", list(range(src + 1))], ["|u1", []]]
            for src in range(n)
        }
        assert r["after_sync_0"] == expected
        assert r["received_from_0"] == [[0, rank, 0.5], [0], []]


def test_inbox_is_stable_during_superstep_and_replaced_by_sync(run):
    n, results = run
    for rank, r in results.items():
        assert r["before_sync_1"] == r["after_sync_0"]
        assert r["after_sync_1"] == {str((rank - 1) % n): [["<f8", [1.0, (rank - 1) % n]]]}
        assert r["after_sync_2"] == {}


def test_allreduce_mean_matches_hand_computed_mean(run):
    n, results = run
    factor = sum(range(1, n + 1)) / n
    for r in results.values():
        assert r["allreduce_mean"] == pytest.approx([i * factor for i in range(5)], rel=1e-6)


def test_allgather_allgatherv_bcast(run):
    n, results = run
    for r in results.values():
        assert r["allgatherv"] == [rank for rank in range(n) for _ in range(rank + 1)]
        assert r["allgather"] == [v for rank in range(n) for v in (rank, 10 * rank)]
        assert r["bcast"] == [n - 1, n - 1]


def test_layout_group_and_cross_communicators(run):
    n, results = run
    groups, workers = {1: (1, 1), 2: (2, 1), 4: (2, 2)}[n]
    for rank, r in results.items():
        group, worker = divmod(rank, workers)
        assert r["layout"] == {
            "group": group,
            "worker": worker,
            "groups": groups,
            "workers": workers,
            "group_comm": [worker, workers],
            "cross_comm": [group, groups],
        }
        assert r["members"]["group"] == [group * workers + w for w in range(workers)]
        assert r["members"]["cross"] == [g * workers + worker for g in range(groups)]
        assert r["group_sum"] == [float(sum(r["members"]["group"]))] * 3
        assert r["bcast_cross"] == [
            worker
        ]  # cross root 0 is the group-0 rank with this worker index
    assert results[0]["layout_text"].startswith(
        f"{n} ranks as {groups} group(s) x {workers} worker(s)"
    )


def test_superstep_records_and_bytes(run):
    n, results = run
    groups, workers = {1: (1, 1), 2: (2, 1), 4: (2, 2)}[n]
    for rank, r in results.items():
        group, worker = divmod(rank, workers)
        per_dest = (16 + 16) + (16 + padded(2 * (rank + 1))) + 16
        step0 = (n - 1) * (per_dest + 24)  # + a (count, compute, wait) int64 triple per peer
        step1 = (32 + 24 * (n - 1)) if n > 1 else 0  # one ring message + the triples
        step2 = 24 * (n - 1)
        collectives = (
            2 * (n - 1) * 20 // n  # allreduce_mean, 5 float32
            + 2 * (workers - 1) * 24 // workers  # group allreduce_sum, 3 float64
            + (n - 1) * 4 * (rank + 1)  # allgatherv, own block
            + (n - 1) * 16  # allgather, 2 int64
            + (workers - 1) * 8
            + (groups - 1) * 8  # member allgathers
            + ((n - 1) * 8 if rank == n - 1 else 0)  # world bcast from the last rank
            + ((groups - 1) * 8 if group == 0 else 0)  # cross bcast from group 0
            + 24 * (n - 1)  # the final sync's triples
        )
        records = r["records"]
        assert [rec["superstep"] for rec in records] == [0, 1, 2, 3]
        assert [rec["bytes_sent"] for rec in records] == [step0, step1, step2, collectives]
        assert r["bytes_sent_total"] == step0 + step1 + step2 + collectives
        assert all(rec["compute_s"] >= 0 and rec["comm_s"] > 0 for rec in records)
        assert all(len(rec["rank_compute_s"]) == len(rec["rank_wait_s"]) == n for rec in records)
        assert all(
            rec["waited_for"]["rank"] in range(n) and rec["waited_for"]["host"] for rec in records
        )
        assert r["records_after_drain"] == []


def fail_run(n, mode, timeout_s):
    start = time.monotonic()
    proc = mpirun(n, [FAIL, mode, timeout_s], timeout=60)
    return proc, time.monotonic() - start, proc.stdout + proc.stderr


def test_verify_same_mismatch_names_the_odd_rank_on_every_rank():
    proc, elapsed, out = fail_run(4, "mismatch", 30)
    assert proc.returncode == 2, out
    assert "finished normally" not in out
    assert re.search(
        r"horn: error: rank \d \(host [^,]+, group 0, worker \d\): job differs between ranks: "
        r"rank\(s\) 2 disagree with rank 0",
        out,
    ), out
    assert elapsed < 15


@pytest.mark.parametrize("mode", ["raise", "uncaught"])
def test_exception_on_one_rank_aborts_the_job_quickly(mode):
    proc, elapsed, out = fail_run(2, mode, 300)
    assert proc.returncode != 0
    assert f"horn: rank 1 (host {HOST}, group 0, worker 1) failed: ValueError: boom" in out, out
    assert "Traceback" not in out
    assert "finished normally" not in out
    assert elapsed < 15


def test_sigkilled_rank_ends_the_job_without_hanging():
    proc, elapsed, out = fail_run(2, "kill", 3)
    assert proc.returncode != 0, out
    assert "finished normally" not in out
    assert elapsed < 30


def test_watchdog_names_this_rank_and_the_missing_one():
    proc, elapsed, out = fail_run(3, "stuck", 2)
    assert proc.returncode != 0, out
    assert re.search(
        r"horn: rank 0 \(host [^)]+\): 'sync' \(superstep 0, world\) timed out after "
        r"2\.\d s waiting for the other ranks; rank 1 \(host [^)]+\) never arrived "
        r"\(no answer to a roll call",
        out,
    ), out
    assert elapsed < 30


def test_watchdog_when_the_coordinator_is_stuck():
    proc, elapsed, out = fail_run(2, "stuck0", 2)
    assert proc.returncode != 0, out
    assert re.search(
        r"horn: rank 1 \(host [^)]+\): 'sync' .*timed out after \d\.\d s waiting for "
        r"the other ranks; rank 0 \(host [^)]+\) never arrived",
        out,
    ), out
    assert elapsed < 30


def test_pi_estimator():
    proc = mpirun(4, ["-m", "horn.examples.pi_estimator", "--samples", "100000"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"pi ~= (\d+\.\d+) \(400000 samples on 4 peers\)", proc.stdout)
    assert match, proc.stdout
    assert abs(float(match.group(1)) - math.pi) < 0.1


DERIVE = """
import json, sys
from horn.bsp import derive_layout
from horn.errors import HornError
out = []
for args in json.loads(sys.argv[1]):
    try:
        out.append(list(derive_layout(*args)))
    except HornError as exc:
        out.append(str(exc))
print(json.dumps(out))
"""


def test_derive_layout():
    cases = {
        (4, None, None): [4, 1],
        (4, 0, 1): [4, 1],
        (4, 2, 0): [2, 2],
        (6, None, 3): [2, 3],
        (4, 2, 2): [2, 2],
        (
            3,
            2,
            2,
        ): "world size 3 does not fit parallel.groups=2 x parallel.workers=2 (needs 4 ranks)",
        (6, 0, 4): "world size 6 is not divisible by parallel.workers=4",
        (5, 2, None): "world size 5 is not divisible by parallel.groups=2",
        (4, -1, 2): "parallel.groups must be >= 0 (0 = derive from world size), found -1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", DERIVE, json.dumps(list(cases))],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == list(cases.values())
