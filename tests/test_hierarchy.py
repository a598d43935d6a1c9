"""Hierarchical averaging (``[parallel.average] across_every``): means inside each
simulated host every round, the world mean through the host leaders every k-th round,
against a float32 numpy reference of that schedule; inter-host bytes against the ring
formula; unequal hosts; single-host runs; bad settings."""

import importlib.util
import json

import numpy as np
import pytest

from horn.model import Model
from tests.cli import horn
from tests.mpirun import PROGS, mpirun
from tests.simcluster import run_on, sim_cluster, unavailable

_spec = importlib.util.spec_from_file_location("hierarchy_prog", PROGS / "hierarchy.py")
prog = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prog)

needs_hosts = pytest.mark.skipif(
    unavailable() is not None, reason=f"cannot make network namespaces here: {unavailable()}"
)


def results(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [
        json.loads(l[len("RESULT ") :]) for l in proc.stdout.splitlines() if l.startswith("RESULT ")
    ]
    return {r["rank"]: r for r in sorted(rows, key=lambda r: r["rank"])}


def reference(host_of, steps, local_steps, across_every):
    """Every rank's (params, velocity) after each round, and after every step, in float32:
    host sums in rank order, summed over the hosts in order, divided by the world size."""
    n = len(host_of)
    init = Model.from_spec(prog.SPEC, seed=0).params
    p = [init.copy() for _ in range(n)]
    v = [np.zeros_like(init) for _ in range(n)]
    hosts = sorted(set(host_of), key=host_of.index)
    members = {h: [r for r in range(n) if host_of[r] == h] for h in hosts}
    rounds, by_step = [], {}

    def world(bufs):
        total = None
        for h in hosts:
            part = bufs[members[h][0]].copy()
            for r in members[h][1:]:
                part += bufs[r]
            total = part if total is None else total + part
        return total / n

    for step in range(steps):
        for r in range(n):
            p[r] += prog.change(r, step, init.size)
            v[r] += prog.change(r + 100, step, init.size)
        done = step + 1
        by_step[done] = world(p)
        if done % local_steps and done != steps:
            continue
        across = -(-done // local_steps) % across_every == 0 or done == steps
        for bufs in (p, v):
            if across:
                mean = world(bufs)
                bufs[:] = [mean.copy() for _ in range(n)]
            else:
                for h in hosts:
                    mean = bufs[members[h][0]].copy()
                    for r in members[h][1:]:
                        mean += bufs[r]
                    mean /= len(members[h])
                    for r in members[h]:
                        bufs[r] = mean.copy()
        rounds.append((across, [(p[r].copy(), v[r].copy()) for r in range(n)]))
    return rounds, by_step


def expected_bytes(host_of, rank, size, across):
    """This rank's (bytes, inter-host bytes) in one round, by the ring/flat-tree model:
    two fp32 buffers (parameters, velocity); a world round adds the superstep's sync."""
    b = 4 * size
    n, mine = len(host_of), host_of[rank]
    local = host_of.count(mine)
    hosts = len(set(host_of))
    leader = host_of.index(mine) == rank
    ring = 2 * (local - 1) * b // local
    if not across:
        return 2 * ring, 0
    up = 2 * (hosts - 1) * b // hosts if leader else 0
    bcast = (local - 1) * b if leader else 0
    remote = n - local
    return 2 * (ring + up + bcast) + 24 * (n - 1), 2 * up + 24 * remote


def check(got, host_of, steps, local_steps, across_every, exact=True):
    rounds, by_step = reference(host_of, steps, local_steps, across_every)
    same = np.array_equal if exact else lambda a, b: np.allclose(a, b, rtol=1e-6, atol=1e-6)
    for rank, r in got.items():
        assert len(r["rounds"]) == len(rounds)
        for i, (row, (across, state)) in enumerate(zip(r["rounds"], rounds)):
            assert same(np.array(row["params"], np.float32), state[rank][0]), (rank, i)
            assert same(np.array(row["velocity"], np.float32), state[rank][1]), (rank, i)
            assert row["boundary"] == across
            assert (row["bytes"], row["across"]) == expected_bytes(
                host_of, rank, r["size"], across
            ), (rank, i)
        across_rows = [row for row in r["rounds"] if row["boundary"]]
        assert len(r["records"]) == len(across_rows)
        ev = r["evaluated"]  # the world mean of the replicas, between world rounds
        assert ev is not None
        assert same(np.array(ev["params"], np.float32), by_step[ev["step"]])
        hosts = len(set(host_of))
        leader = host_of.index(host_of[rank]) == rank
        assert ev["across"] == (2 * (hosts - 1) * 4 * r["size"] // hosts if leader else 0)
        if hosts > 1:  # the superstep records hold the same inter-host bytes
            sent = [rec["bytes_sent_inter_host"] for rec in r["records"]]
            assert sum(sent) == sum(row["across"] for row in across_rows) + ev["across"]
        else:
            assert all("bytes_sent_inter_host" not in rec for rec in r["records"])


@needs_hosts
def test_two_hosts_of_two_ranks_follow_the_hierarchical_schedule():
    args = [PROGS / "hierarchy.py", 11, 2, 3]
    with sim_cluster(2, slots=2) as c:
        got = results(run_on(c, args, timeout=120))
    host_of = [got[r]["host"] for r in range(4)]
    assert host_of[0] == host_of[1] != host_of[2] == host_of[3]
    assert any(not row["across"] for row in got[0]["rounds"])  # inside-host rounds happened
    check(got, host_of, 11, 2, 3)


@needs_hosts
def test_unequal_hosts_weigh_by_their_ranks():
    args = [PROGS / "hierarchy.py", 8, 2, 2]
    with sim_cluster(2, slots=2) as c:
        got = results(run_on(c, args, timeout=120, ranks=3))
    host_of = [got[r]["host"] for r in range(3)]
    assert host_of[0] == host_of[1] != host_of[2]
    check(got, host_of, 8, 2, 2)


def test_one_host_degenerates_to_the_world_mean_every_round():
    got = results(mpirun(4, [PROGS / "hierarchy.py", 7, 2, 2], timeout=120))
    host_of = [got[r]["host"] for r in range(4)]
    assert len(set(host_of)) == 1
    check(got, host_of, 7, 2, 2, exact=False)
    for r in got.values():  # every round is the world mean: every rank holds the same
        assert [row["params"] for row in r["rounds"]] == [row["params"] for row in got[0]["rounds"]]


BASE = """
name = "h"
[model]
layers = [{ type = "dense", units = 8 }, { type = "dense", units = 10 }]
[train]
steps = 4
[parallel]
"""


@pytest.mark.parametrize(
    "extra, words",
    [
        ("workers = 2\n[parallel.average]\nacross_every = 2\n", "parallel.average.across_every"),
        (
            "[parallel.average]\nacross_every = 2\ncompress = 'int8'\n",
            "parallel.average.across_every",
        ),
        ("[parallel.average]\nacross_every = -1\n", "parallel.average.across_every"),
    ],
)
def test_bad_hierarchy_settings_exit_2_with_one_line(tmp_path, extra, words):
    job = tmp_path / "h.toml"
    job.write_text(BASE + extra)
    result = horn("validate", job)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
