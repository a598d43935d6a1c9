"""Simulated hosts for the tests (not a test module): a cluster per test, always removed.

Every pytest process names its clusters after its pid, so several test runs (and
helpers) can hold clusters at once: their subnets exist only inside their own
namespaces, on their own bridges.
"""

import os
import subprocess
import sys
from contextlib import contextmanager
from functools import cache

from horn import cluster as simulated
from horn.errors import HornError
from tests.mpirun import REPO

NAME = f"t{os.getpid() % 1_000_000}"


@cache
def unavailable():
    """None when network namespaces can be made here, else why not (the skip reason)."""
    try:
        simulated.up(1, name=NAME)
    except HornError as exc:
        return str(exc)
    finally:
        try:
            simulated.down(NAME)
        except HornError:
            pass
    return None


@contextmanager
def sim_cluster(hosts, slots=1, rate=None):
    """A cluster of ``hosts`` simulated hosts for the ``with`` block, removed afterwards."""
    c = simulated.up(hosts, rate=rate, name=NAME, slots=slots)
    try:
        yield c
    finally:
        simulated.down(NAME)


def run_on(c, args, timeout=180, ranks=None, env=None):
    """``python ARGS...`` on every rank of cluster ``c`` via mpirun; the CompletedProcess."""
    full_env = c.environment()
    full_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
    )
    full_env.update(env or {})
    return subprocess.run(
        c.mpirun_argv([sys.executable, *map(str, args)], ranks=ranks),
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
