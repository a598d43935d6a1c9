"""Network and process faults: the watchdog covers every whole exchange, a lost host or
a cut link never exits 0, stragglers are named, sub-network groups resume elsewhere.

Real mpirun jobs under horn's launcher (horn.launch: ranks report their start, pid and
host, and their clean finish). One-host faults need nothing else; cross-host ones run
on simulated hosts (network namespaces made and removed by the test).
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from horn.launch import Launch
from tests.cli import horn
from tests.mpirun import PROGS, REPO, mpirun_path
from tests.simcluster import sim_cluster, unavailable

LOOP = PROGS / "collective_loop.py"
FAIL = PROGS / "fail.py"
WATCHDOG_S = 3
JOB = """
name = "faults"
[model]
imports = ["killer"]
layers = [{ type = "dense", units = 256, activation = "relu" }, { type = "killer:KillAt" },
          { type = "dense", units = 256, activation = "relu" }, { type = "dense", units = 10 }]
[train]
epochs = 400
batch_size = 32
backend = "numpy"
threads = 1
[parallel]
local_steps = 1
watchdog_s = WATCHDOG
[log]
plot = false
"""
needs_hosts = pytest.mark.skipif(
    unavailable() is not None, reason=f"cannot make network namespaces here: {unavailable()}"
)


def env_with(extra=None):
    env = dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        PYTHONPATH=f"{PROGS}:{REPO}",
        **(extra or {}),
    )
    return env


def write_job(tmp_path, watchdog_s=WATCHDOG_S, extra=""):
    path = tmp_path / "faults.toml"
    path.write_text(
        textwrap.dedent(JOB).replace("WATCHDOG", str(watchdog_s))
        + extra
        + f"dir = '{tmp_path / 'runs'}'\n"
    )
    return path


def horn_run(job):
    return [sys.executable, "-m", "horn.cli", "run", str(job), "--quiet"]


def loop(watchdog_s=WATCHDOG_S, floats=2_000_000):
    return [sys.executable, str(LOOP), str(watchdog_s), "120", str(floats)]


# horn.launch's launcher around an argv that is not a plain mpirun (the cluster's nsenter)
LAUNCHER = "import json, sys; from horn.launch import Launch; sys.exit(Launch().run(json.loads(sys.argv[1])))"


class Job:
    """A job under horn's launcher (``horn launch``, or its Launch around the simulated
    cluster's mpirun line), run in ``tmp_path`` where the ranks' reports appear."""

    def __init__(self, tmp_path, command, cluster=None, ranks=2, env=None):
        if cluster is None:
            argv = [
                sys.executable,
                "-m",
                "horn.cli",
                "launch",
                mpirun_path(),
                "--oversubscribe",
                "-n",
                str(ranks),
                *command,
            ]
            full_env = env_with(env)
        else:
            argv = [
                sys.executable,
                "-c",
                LAUNCHER,
                json.dumps(cluster.mpirun_argv(command, extra=Launch.options)),
            ]
            full_env = cluster.environment(env_with(env))
        self.dir = tmp_path
        self.log = tmp_path / "job.log"  # a file, not a pipe: a hung mpirun cannot block us
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                argv, cwd=tmp_path, env=full_env, stdout=log, stderr=subprocess.STDOUT
            )
        self.fault_at = None

    @property
    def stderr(self):
        return self.log.read_text(errors="replace")

    def pids(self, count):
        """Wait until ``count`` ranks reported their start; {rank: pid}."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            starts = list(self.dir.glob(".horn-reports-*/start-*.json"))
            if len(starts) >= count:
                infos = [json.loads(p.read_text()) for p in starts]
                return {i["rank"]: i["pid"] for i in infos}
            assert self.proc.poll() is None, self.stderr
            time.sleep(0.05)
        raise AssertionError("the ranks never started")

    def mark_fault(self):
        self.fault_at = time.monotonic()

    def wait(self, limit_s):
        """The job's exit status and seconds from the fault to its end."""
        try:
            self.proc.wait(timeout=limit_s + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the job hung: {self.stderr[-2000:]}") from None
        return self.proc.returncode, time.monotonic() - self.fault_at


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def assert_gone(pids):
    """The job left none of these processes behind (they are reaped if so)."""
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in pids if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


def stop_one_rank_at_random(tmp_path, command, rng, cluster=None, rank=None):
    """SIGSTOP one rank at a random moment; the job must end non-zero within
    watchdog_s + 10 s of the stop, naming the stopped rank."""
    job = Job(tmp_path, command, cluster)
    pids = job.pids(2)
    rank = rng.randrange(2) if rank is None else rank
    time.sleep(rng.uniform(0.5, 3.0))  # start-up, data loading, training: anywhere
    os.kill(pids[rank], signal.SIGSTOP)
    job.mark_fault()
    try:
        code, seconds = job.wait(WATCHDOG_S + 10)
    finally:
        os.kill(pids[rank], signal.SIGCONT) if alive(pids[rank]) else None
    assert code != 0, job.stderr
    assert seconds < WATCHDOG_S + 10, (seconds, job.stderr)
    assert f"rank {rank} (host " in job.stderr and "never arrived" in job.stderr, job.stderr
    assert_gone(pids.values())
    return seconds


# ---- one host ----------------------------------------------------------------------


def test_a_rank_stopped_at_random_moments_never_hangs_the_job(tmp_path):
    """Seven random stop moments (the issue's 1-in-7 hang), alternating a loop of large
    collectives (most stops land inside one) and a synchronous training job."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    job = write_job(tmp_path)
    times = []
    for trial in range(7):
        command = loop() if trial % 2 == 0 else horn_run(job)
        (tmp_path / f"t{trial}").mkdir()
        times.append(stop_one_rank_at_random(tmp_path / f"t{trial}", command, rng))
    print(f"seed {seed}: stop-to-end seconds {[round(t, 1) for t in times]}")


@pytest.mark.parametrize(
    "reduce, exchange", [("parameters", "allreduce_mean"), ("gradients", "allreduce_gradients")]
)
def test_a_rank_stuck_while_the_others_are_inside_a_collective(tmp_path, reduce, exchange):
    """Also with overlapped gradient buckets: the others wait in their one poll loop."""
    path = write_job(tmp_path)
    path.write_text(
        path.read_text().replace("[log]", f'[parallel.average]\nreduce = "{reduce}"\n[log]')
    )
    job = Job(
        tmp_path,
        horn_run(path),
        env={"HORN_TEST_KILL_RANK": "1", "HORN_TEST_KILL_AT": "40", "HORN_TEST_FAULT": "hang"},
    )
    pids = job.pids(2)
    job.mark_fault()  # an upper bound: the hang begins after start-up
    code, seconds = job.wait(60)
    print(f"stuck rank: exit {code} after {seconds:.1f} s from the start")
    assert code != 0
    assert f"'{exchange}' (superstep " in job.stderr, job.stderr
    assert "rank 1 (host " in job.stderr and "never arrived" in job.stderr, job.stderr
    assert_gone(pids.values())


def test_ranks_waiting_in_different_exchanges_are_told_apart():
    proc = subprocess.run(
        [mpirun_path(), "--oversubscribe", "-n", "2", sys.executable, str(FAIL), "disagree", "2"],
        env=env_with(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert (
        "timed out after 2.0 s waiting for the other ranks; every rank answered, but they "
        "wait in other exchanges: rank 1 (host "
    ) in proc.stderr, proc.stderr
    assert "in 'left' (superstep 0, group)" in proc.stderr, proc.stderr


def test_the_straggler_report_names_the_slow_rank(tmp_path):
    """Rank 1 sleeps 20 ms every step: the others wait for it, and every superstep record
    in metrics.jsonl says so (each rank's compute and wait, and whom they waited for)."""
    path = write_job(tmp_path, 30)
    path.write_text(path.read_text().replace("epochs = 400", "steps = 60"))
    job = Job(
        tmp_path,
        horn_run(path),
        env={"HORN_TEST_KILL_RANK": "1", "HORN_TEST_KILL_AT": "1", "HORN_TEST_FAULT": "slow"},
    )
    job.mark_fault()
    code, _ = job.wait(120)
    assert code == 0, job.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    steps = [r for r in map(json.loads, open(run_dir / "metrics.jsonl")) if "superstep" in r]
    assert len(steps) >= 60
    assert all(len(r["rank_wait_s"]) == len(r["rank_compute_s"]) == 2 for r in steps)
    slow = [r for r in steps if r["waited_for"]["rank"] == 1]
    assert len(slow) >= 0.8 * len(steps)
    assert sum(r["rank_wait_s"][0] > r["rank_wait_s"][1] for r in steps) >= 0.8 * len(steps)


def test_launch_fails_a_job_whose_ranks_never_finished(tmp_path, capsys):
    launch = Launch(directory=tmp_path)
    for rank, host in ((0, "a"), (1, "b"), (2, "b")):
        (launch.dir / f"start-{rank}.json").write_text(
            json.dumps({"rank": rank, "size": 4, "host": host, "pid": 1})
        )
    (launch.dir / "done-0").write_text("")
    assert launch.verdict(0) == 1
    assert capsys.readouterr().err.strip() == (
        "horn: error: mpirun exited 0, but ranks 1, 2 (host b), 3 (never started) never "
        "finished cleanly (lost host, killed or cut off)"
    )
    for rank in (1, 2, 3):
        (launch.dir / f"done-{rank}").write_text("")
    assert launch.verdict(0) == 0


def test_horn_launch_passes_a_clean_job_and_refuses_a_non_mpirun_command():
    clean = horn(
        "launch",
        mpirun_path(),
        "--oversubscribe",
        "-n",
        "2",
        sys.executable,
        "-m",
        "horn.examples.pi_estimator",
        "--samples",
        "1000",
        env=env_with(),
    )
    assert clean.returncode == 0, clean.stderr
    wrong = horn("launch", "python", "x.py")
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == (
        "horn: error: horn launch: expected --hostfile FILE -n N "
        "JOB [--set ...], or an mpirun command (mpirun ARGS...), "
        "found python"
    )


# ---- across simulated hosts ------------------------------------------------------------


@needs_hosts
@pytest.mark.parametrize("program", ["collectives", "horn-run"])
def test_a_dead_host_ends_the_job_non_zero_naming_its_ranks(tmp_path, program):
    command = loop() if program == "collectives" else horn_run(write_job(tmp_path))
    with sim_cluster(2) as c:
        job = Job(tmp_path, command, c)
        job.pids(2)
        time.sleep(2.0)
        c.kill_host(2)
        job.mark_fault()
        code, seconds = job.wait(30)
        print(f"dead host, {program}: exit {code} after {seconds:.1f} s")
        assert code != 0, job.stderr
        assert seconds < 30
        assert f"1 (host {c.hostname(2)})" in job.stderr, job.stderr
        assert_host_empty(c, 1)


@needs_hosts
@pytest.mark.parametrize(
    "program, rate",
    [("collectives", "100mbit"), ("horn-run", None)],
    ids=["mid-collective-100mbit", "horn-run"],
)
def test_a_cut_link_ends_the_job_within_watchdog_plus_10_s(tmp_path, program, rate):
    """At 100 Mbit/s one 16 MB allreduce takes over a second, so the cut lands inside it."""
    command = loop(floats=4_000_000) if program == "collectives" else horn_run(write_job(tmp_path))
    with sim_cluster(2, rate=rate) as c:
        job = Job(tmp_path, command, c)
        job.pids(2)
        time.sleep(2.5)
        c.set_link(2, False)
        job.mark_fault()
        code, seconds = job.wait(WATCHDOG_S + 10)
        print(f"cut link, {program}: exit {code} after {seconds:.1f} s")
        assert code != 0, job.stderr
        assert seconds < WATCHDOG_S + 10, (seconds, job.stderr)
        assert f"rank 1 (host {c.hostname(2)}) never arrived" in job.stderr, job.stderr
        assert_host_empty(c, 1)


def assert_host_empty(c, i):
    """No process is left on reachable host ``i`` (the cut-off one is the teardown's)."""
    deadline = time.monotonic() + 10
    while c.pids(i) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert c.pids(i) == []


@needs_hosts
def test_a_rank_stopped_at_random_moments_across_hosts(tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    job = write_job(tmp_path)
    times = []
    with sim_cluster(2) as c:
        for trial in range(4):
            (tmp_path / f"t{trial}").mkdir()
            times.append(
                stop_one_rank_at_random(
                    tmp_path / f"t{trial}", loop() if trial % 2 == 0 else horn_run(job), rng, c
                )
            )
            assert_host_empty(c, 1)
            assert_host_empty(c, 2)
    print(f"seed {seed}: stop-to-end seconds across hosts {[round(t, 1) for t in times]}")


@needs_hosts
@pytest.mark.parametrize("slowdown", ["bandwidth", "cpu"])
def test_a_slow_host_goes_on_and_is_named_as_the_straggler(tmp_path, slowdown):
    """Host 2 at a tenth of host 1's bandwidth (100 Mbit/s vs 1 Gbit/s), or its rank
    starved of CPU (sleeping 20 ms a step): the job finishes, and the records name it."""
    path = write_job(tmp_path, 30)
    path.write_text(path.read_text().replace("epochs = 400", "steps = 40"))
    env = (
        {"HORN_TEST_KILL_RANK": "1", "HORN_TEST_KILL_AT": "1", "HORN_TEST_FAULT": "slow"}
        if slowdown == "cpu"
        else {}
    )
    with sim_cluster(2, rate="1gbit") as c:
        if slowdown == "bandwidth":
            c.set_rate(2, "100mbit")
        job = Job(tmp_path, horn_run(path), c, env=env)
        job.mark_fault()
        code, seconds = job.wait(150)
    assert code == 0, job.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    steps = [r for r in map(json.loads, open(run_dir / "metrics.jsonl")) if "superstep" in r]
    assert len(steps) >= 40 and all(len(r["rank_wait_s"]) == 2 for r in steps)
    named = [r for r in steps if r["waited_for"] == {"rank": 1, "host": c.hostname(2)}]
    print(
        f"slow host ({slowdown}): exit {code} after {seconds:.1f} s; {len(named)} of "
        f"{len(steps)} supersteps waited for rank 1 on host 2; median waits "
        f"{[round(sorted(r['rank_wait_s'][k] for r in steps)[len(steps) // 2], 4) for k in (0, 1)]} s"
    )
    if slowdown == "cpu":
        assert len(named) >= 0.8 * len(steps)
