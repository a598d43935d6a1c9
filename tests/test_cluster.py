"""Multi-host runs across simulated hosts (network namespaces made and removed here).

Every job is compared with the same job on one host (shared memory, plain mpirun).
They agree **bit for bit**: the reduction order is the same because the one-host run
is told the collective algorithm the cluster launcher picks for TCP
(``horn.cluster.TCP_MCA``: libnbc's ring Iallreduce), and Open MPI's choice otherwise
depends on the communicator and message sizes, never on the transport. With different
algorithms, 4-rank sums can differ in the last bits (ring ((a + b) + c) + d against
Rabenseifner's (a + b) + (c + d)); 2-rank sums never do (a + b = b + a exactly). The
per-rank thread count is the same too (one: 2 cores for 4 ranks), so BLAS blocks the
same way.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from horn import cluster as simulated
from tests.cli import horn
from tests.mpirun import PROGS, REPO, mpirun
from tests.simcluster import NAME, run_on, sim_cluster, unavailable

pytestmark = pytest.mark.skipif(
    unavailable() is not None, reason=f"cannot make network namespaces here: {unavailable()}"
)

BASE = """
[data]
name = "digits"
[train]
batch_size = 16
lr = 0.05
momentum = 0.9
backend = "numpy"
[log]
plot = false
"""
JOBS = {
    "ma": """
        [model]
        layers = [{ type = "dense", units = 32, activation = "relu" }, { type = "dense", units = 10 }]
        [train]
        epochs = 2
        [parallel]
        local_steps = 4
    """,
    "subnet": """
        [model]
        layers = [{ type = "dense", units = 24, activation = "relu" },
                  { type = "dense", units = 20, activation = "relu" },
                  { type = "dense", units = 10 }]
        [train]
        steps = 60
        [parallel]
        groups = 2
        workers = 2
        local_steps = 5
        [parallel.subnet]
        partition = "irregular"
    """,
    "ec": """
        [model]
        layers = [{ type = "dense", units = 32, activation = "relu" }, { type = "dense", units = 10 }]
        [train]
        epochs = 2
        [parallel]
        barrier = "ensemble"
        local_steps = 20
        [parallel.ensemble]
        distill_steps = 10
        distill_size = 100
    """,
}
SAME_ALGORITHMS = {f"OMPI_MCA_{key}": value for key, value in simulated.TCP_MCA.items()}
TIMING = (
    "time_s",
    "samples_per_s",
    "compute_s",
    "comm_s",
    "rank_compute_s",
    "rank_wait_s",
    "waited_for",
    "teacher_s",
    "distill_s",
    "run_dir",
)
INTER_HOST = ("bytes_sent_inter_host", "bytes_sent_inter_host_per_rank")  # only across hosts


def write_job(directory, kind):
    """The job ``kind`` as a TOML file in ``directory`` (merging its tables into BASE's)."""
    tables = {}
    for text in (BASE, textwrap.dedent(JOBS[kind])):
        section = None
        for line in text.strip().splitlines():
            if line.startswith("["):
                section = line
                tables.setdefault(section, [])
            elif line.strip():
                tables[section].append(line)
    body = "".join(f"{s}\n" + "\n".join(lines) + "\n" for s, lines in tables.items())
    path = Path(directory) / f"{kind}.toml"
    path.write_text(
        f'name = "{kind}"\n' + body.replace("[log]\n", f"[log]\ndir = '{directory}/runs'\n")
    )
    return path


def run_dir_of(result):
    return result.stdout.strip().splitlines()[-1].split("run directory ")[1]


def outcome(result):
    """(metrics without timings and inter-host bytes, parameters) of a finished ``horn run``."""
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = run_dir_of(result)
    rows = [
        {k: v for k, v in json.loads(line).items() if k not in TIMING + INTER_HOST}
        for line in open(f"{run_dir}/metrics.jsonl")
    ]
    with np.load(f"{run_dir}/model.npz") as saved:
        params = {k: saved[k] for k in saved.files if k.startswith(("param", "member"))}
    return rows, params


@pytest.fixture(scope="module")
def one_host(tmp_path_factory):
    """Each job on 4 ranks of one host (computed once per job)."""
    cache = {}

    def get(kind):
        if kind not in cache:
            job = write_job(tmp_path_factory.mktemp(f"{kind}1"), kind)
            cache[kind] = outcome(
                mpirun(
                    4, ["-m", "horn.cli", "run", job, "--quiet"], timeout=180, env=SAME_ALGORITHMS
                )
            )
        return cache[kind]

    return get


@pytest.mark.parametrize("hosts", [2, 4])
@pytest.mark.parametrize("kind", sorted(JOBS))
def test_job_across_hosts_equals_one_host_bit_for_bit(tmp_path, one_host, kind, hosts):
    job = write_job(tmp_path, kind)
    with sim_cluster(hosts, slots=4 // hosts) as c:
        result = run_on(c, ["-m", "horn.cli", "run", job])
    rows, params = outcome(result)
    final = json.loads(open(f"{run_dir_of(result)}/metrics.jsonl").readlines()[-1])
    assert sum(final["bytes_sent_inter_host_per_rank"]) > 0
    assert "horn: 4 ranks as" in result.stdout
    assert "1 thread(s)" in result.stdout  # HORN_THREADS: 2 cores shared by 4 ranks
    ref_rows, ref_params = one_host(kind)
    assert rows == ref_rows
    assert params.keys() == ref_params.keys() and params
    for key in params:
        assert np.array_equal(params[key], ref_params[key]), key
    assert any(r.get("bytes_sent", 0) > 0 for r in rows)


def semantics_results(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT ") :])
            records = r.pop("records")
            r["bytes_per_superstep"] = [rec["bytes_sent"] for rec in records]
            results[r["rank"]] = r
    return results


@pytest.mark.parametrize("hosts", [2, 4])
def test_bsp_send_sync_and_collectives_across_hosts_equal_one_host(hosts):
    """Peer.send/sync (Alltoall + Alltoallv), the collectives and the layout of 2 x 2."""
    args = [PROGS / "semantics.py", 2, 2]
    expected = semantics_results(mpirun(4, args, env=SAME_ALGORITHMS))
    with sim_cluster(hosts, slots=4 // hosts) as c:
        got = semantics_results(run_on(c, args, timeout=120))
    assert sorted(got) == [0, 1, 2, 3]
    assert got == expected


def test_hosts_check_accepts_the_generated_hostfile():
    with sim_cluster(3, slots=2) as c:
        result = horn("hosts", "check", c.hostfile)
        assert result.returncode == 0, result.stderr
        assert [line.split()[0] for line in result.stdout.splitlines()[:3]] == [
            c.hostname(i) for i in (1, 2, 3)
        ]
        assert "ok, 3 host(s), 6 slot(s) in total" in result.stdout


def test_hosts_have_their_own_name_address_and_no_route_out():
    with sim_cluster(2) as c:
        for i in (1, 2):

            def inside(*argv, i=i):
                done = subprocess.run(c.host_argv(i, argv), capture_output=True, text=True)
                return done.stdout

            assert inside("hostname").strip() == c.hostname(i)
            assert f"{c.address(i)}/24" in inside("ip", "-4", "-o", "addr")
            routes = inside("ip", "route").strip().splitlines()
            assert routes and all(r.startswith(simulated.SUBNET) for r in routes), routes
        assert (
            simulated.SUBNET_PREFIX
            not in subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
        )


def _namespace_inodes(c):
    return {os.stat(f"/run/netns/{c.netns(i)}").st_ino for i in range(1, c.hosts + 1)}


def _processes_in(inodes):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino in inodes:
                found.append(int(pid))
        except OSError:
            pass
    return found


def _nothing_left():
    left = simulated.leftovers(NAME)
    return all(not v for v in left.values()), left


def test_cluster_run_leaves_no_namespace_link_or_process_behind(tmp_path):
    """``horn cluster run`` up, run, down; then Ctrl-C mid-job; then a crash (SIGKILL of
    ``horn cluster run``): the next ``up`` works on the leftovers and ``down`` clears them."""
    env = {"PYTHONPATH": str(REPO)}
    ok = horn(
        "cluster",
        "run",
        "2",
        "--name",
        NAME,
        "--",
        sys.executable,
        "-c",
        "from mpi4py import MPI; print('rank', MPI.COMM_WORLD.rank, flush=True)",
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert sorted(ok.stdout.split("\n")[:2]) == ["rank 0", "rank 1"]
    assert _nothing_left()[0], _nothing_left()[1]

    sleeper = [sys.executable, "-c", "import time; from mpi4py import MPI; time.sleep(300)"]
    for how in (signal.SIGINT, signal.SIGKILL):
        log = tmp_path / f"run-{how.name}.log"  # not a pipe: a crash leaves its holders alive
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "horn.cli",
                "cluster",
                "run",
                "2",
                "--name",
                NAME,
                "--",
                *sleeper,
            ],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        c = simulated.Cluster(NAME, 2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            os.path.exists(f"/run/netns/{c.netns(2)}")
            and any(
                "python" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
                for p in c.pids(2)
                if os.path.exists(f"/proc/{p}")
            )
        ):
            time.sleep(0.2)
        inodes = _namespace_inodes(c)
        assert _processes_in(inodes), "the job never started on host 2"
        proc.send_signal(how)
        assert proc.wait(timeout=60) != 0
        if how == signal.SIGINT:
            assert "interrupted; removing the cluster" in log.read_text()
        else:  # a crash leaves everything; a second up must still work
            assert simulated.leftovers(NAME)["namespaces"]
            again = horn("cluster", "up", "2", "--name", NAME)
            assert again.returncode == 0, again.stderr
            assert "run a job with:" in again.stdout
            gone = horn("cluster", "down", "--name", NAME)
            assert gone.returncode == 0 and "removed 2 namespace(s), 3 link(s)" in gone.stdout
        assert _nothing_left()[0], _nothing_left()[1]
        assert _processes_in(inodes) == []


def test_clear_errors_exit_2():
    bad_rate = horn("cluster", "up", "2", "--name", NAME, "--rate", "fast")
    assert bad_rate.returncode == 2
    assert bad_rate.stderr.strip() == (
        "horn: error: --rate: expected 'unlimited' or a positive rate "
        "such as 1gbit, 100mbit, 500kbit, found 'fast'"
    )
    no_command = horn("cluster", "run", "2", "--name", NAME, "--")
    assert no_command.returncode == 2 and "give the command after '--'" in no_command.stderr
    bad_name = horn("cluster", "down", "--name", "Bad_Name")
    assert bad_name.returncode == 2 and "cluster name" in bad_name.stderr
    not_up = horn("cluster", "exec", "1", "--name", NAME, "--", "true")
    assert not_up.returncode == 2 and "not up" in not_up.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop root's capabilities")
def test_without_privileges_a_one_line_error():
    capsh = subprocess.run(["which", "setpriv"], capture_output=True, text=True).stdout.strip()
    if not capsh:
        pytest.skip("setpriv (util-linux) is not installed")
    result = subprocess.run(
        [
            capsh,
            "--inh-caps=-all",
            "--bounding-set=-net_admin,-sys_admin",
            sys.executable,
            "-m",
            "horn.cli",
            "cluster",
            "up",
            "2",
            "--name",
            NAME,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs root" in lines[0] and "CAP_NET_ADMIN" in lines[0], lines
