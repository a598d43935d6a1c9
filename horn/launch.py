"""Launching mpirun without trusting its exit status alone.

Measured across simulated hosts: when a host died (every process SIGKILLed) or its
link went down, Open MPI 5's mpirun said "PRTE has lost communication with a
remote daemon" and **exited 0**; and after a rank's watchdog called MPI_Abort,
mpirun kept waiting for the cut-off host's daemon for minutes (TCP keepalive:
300 s + 9 x 20 s). So ranks report to the launcher through small files in a
directory every host sees (``HORN_REPORT_DIR``, forwarded with ``-x``):

* ``start-R.json`` when rank R's peer is created (its host and pid),
* ``done-R`` when rank R's interpreter exits normally,
* ``abort-R.json`` just before rank R aborts the job (its one-line reason).

The launcher treats a rank that started but never reported a clean finish as a
failure (exit 1, naming the ranks and their hosts) even when mpirun exits 0, and
once a rank has asked for an abort it gives mpirun ``ABORT_GRACE_S`` to end the
job, then kills it and exits with the abort's code.
"""

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from horn.errors import HornError

ENV = "HORN_REPORT_DIR"
MPIRUN_OPTIONS = ("-x", ENV)  # mpirun does not forward the environment to other hosts
ABORT_GRACE_S = 3.0
_POLL_S = 0.2


# ---- rank side ---------------------------------------------------------------------


def _report_dir():
    value = os.environ.get(ENV)
    return Path(value) if value else None


def _write(path, text):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def report_start(rank, size, host):
    """Called once per rank when its peer exists; arms the clean-finish report."""
    directory = _report_dir()
    if directory is None:
        return
    _write(
        directory / f"start-{rank}.json",
        json.dumps({"rank": rank, "size": size, "host": host, "pid": os.getpid()}),
    )
    atexit.register(lambda: _write(directory / f"done-{rank}", ""))


def report_abort(rank, line, code):
    """Called just before MPI_Abort: the reason, for a launcher that must end the job."""
    directory = _report_dir()
    if directory is not None:
        try:
            _write(directory / f"abort-{rank}.json", json.dumps({"line": line, "code": code}))
        except OSError:
            pass  # the abort itself matters more than its report


# ---- launcher side -----------------------------------------------------------------


class Launch:
    """One mpirun job whose ranks report their start and clean finish.

    ``options`` go on the mpirun command line; ``run(argv, env)`` runs it and returns
    the job's honest exit status.
    """

    options = list(MPIRUN_OPTIONS)

    def __init__(self, directory=None, ranks=None, require_reports=True):
        base = Path(directory) if directory else Path.cwd()
        self.dir = Path(tempfile.mkdtemp(prefix=".horn-reports-", dir=base))
        self.ranks = ranks
        # False: a command that is not a horn program (no rank reports at all) keeps
        # mpirun's status; once any rank reported, every rank must finish cleanly
        self.require_reports = require_reports

    def run(self, argv, env=None):
        env = dict(os.environ if env is None else env)
        env[ENV] = str(self.dir)
        try:
            proc = subprocess.Popen(argv, env=env, start_new_session=True)
            try:
                killed = self._wait(proc)
            except KeyboardInterrupt:
                _kill_group(proc)
                raise
            return self.verdict(proc.returncode, killed)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _wait(self, proc):
        """Wait for mpirun; True if it had to be killed after a rank's abort."""
        aborted_at = None
        while proc.poll() is None:
            if aborted_at is None and any(self.dir.glob("abort-*.json")):
                aborted_at = time.monotonic()
            if aborted_at is not None and time.monotonic() - aborted_at > ABORT_GRACE_S:
                _kill_group(proc)
                return True
            time.sleep(_POLL_S)
        return False

    def verdict(self, returncode, killed=False):
        """The job's exit status; prints one line when mpirun's own would mislead."""
        starts = {}
        for path in self.dir.glob("start-*.json"):
            info = json.loads(path.read_text())
            starts[info["rank"]] = info
        size = self.ranks or max((s["size"] for s in starts.values()), default=0)
        done = {int(p.name.split("-")[1]) for p in self.dir.glob("done-*")}
        lost = [r for r in range(size) if r not in done]
        aborts = [json.loads(p.read_text()) for p in sorted(self.dir.glob("abort-*.json"))]
        if killed:
            print(
                f"horn: mpirun did not end the job {ABORT_GRACE_S:.0f} s after a rank "
                f"aborted it; killed it ({aborts[0]['line']})",
                file=sys.stderr,
                flush=True,
            )
            return aborts[0]["code"] or 1
        if not lost and size or not size and not self.require_reports:
            return returncode
        if not size:
            what = (
                "no rank reported a start (not a horn program, or mpirun lacks -x HORN_REPORT_DIR)"
            )
        else:
            what = f"{describe_ranks(lost, {r: s['host'] for r, s in starts.items()})} never finished cleanly (lost host, killed or cut off)"
        if returncode == 0:
            print(f"horn: error: mpirun exited 0, but {what}", file=sys.stderr, flush=True)
            return 1
        print(f"horn: job failed (exit {returncode}): {what}", file=sys.stderr, flush=True)
        return returncode


def describe_ranks(ranks, host_of):
    """``rank 1 (host b)`` / ``ranks 2, 3 (host b), 5 (host c)``: ranks grouped by host
    (``host_of[r]``, or missing for a rank that never started)."""
    by_host = {}
    for r in ranks:
        host = host_of.get(r)
        by_host.setdefault(host, []).append(str(r))
    parts = [
        f"{', '.join(rs)} ({'never started' if h is None else 'host ' + h})"
        for h, rs in by_host.items()
    ]
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(parts)}"


def _kill_group(proc):
    """SIGKILL mpirun's whole session (the ranks it forked on this host too): the job is
    already being aborted, nothing is left to save."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# ---- horn launch --hostfile FILE -n N JOB ------------------------------------------

ROOT_VARIABLES = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def job_argv(hostfile, ranks, run_args, oversubscribe=False, mpirun=None):
    """``(argv, env)`` of the mpirun that runs ``horn run RUN_ARGS...`` on ``ranks`` ranks
    over ``hostfile``, checked first as ``horn hosts check`` does.

    The flags are the ones horn needs: this interpreter on every rank (so the venv's
    horn runs everywhere; hosts need the same path), with ``-P`` so that ``-m`` does
    not put the working directory first on ``sys.path`` (a ``cupy.py`` lying there
    would be imported), the hosts as ``--host HOST:SLOTS,...`` (the file may be in
    MPICH's ``node1:4`` syntax, which Open MPI's ``--hostfile`` cannot read), the
    clean-finish reports,
    ``--bind-to none`` (horn gives each rank its share of the host's cores as threads;
    Open MPI's default binding to one core would stack them), and, as root, the two
    variables Open MPI insists on, for mpirun and forwarded to every host. More ranks
    than slots is refused unless ``oversubscribe``: on a real cluster it is a mistake
    that makes every step several times slower.
    """
    from horn.cluster import mpirun_path
    from horn.hosts import check_hostfile

    if ranks < 1:
        raise HornError(f"horn launch: -n must be at least 1, found {ranks}")
    hosts, slots = check_hostfile(hostfile)
    if ranks > slots and not oversubscribe:
        raise HornError(
            f"horn launch: -n {ranks} is more than the {slots} slot(s) of "
            f"{hostfile} ({len(hosts)} host(s)); add slots, lower -n, or pass "
            f"--oversubscribe"
        )
    argv = [
        mpirun or mpirun_path(),
        *Launch.options,
        "--host",
        ",".join(f"{host}:{count}" for host, count in hosts),
        "-n",
        str(ranks),
        "--bind-to",
        "none",
    ]
    if oversubscribe:
        argv.append("--oversubscribe")
    env = dict(os.environ)
    if os.geteuid() == 0:
        env.update(ROOT_VARIABLES)
        argv += [arg for key in ROOT_VARIABLES for arg in ("-x", key)]
    return argv + [sys.executable, "-P", "-m", "horn.cli", "run", *run_args], env


def shown(argv, env):
    """The command as a shell line (with the root variables when they are set)."""
    import shlex

    prefix = "".join(f"{k}=1 " for k in ROOT_VARIABLES if env.get(k) == "1")
    return prefix + " ".join(shlex.quote(a) for a in argv)
