"""Reliability table: inject each fault into a real 2-rank mpirun job and measure
how long the job takes to stop and what is lost.

    python bench/faults.py        (about 2 minutes; writes docs/faults.md)
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGS = ROOT / "tests" / "mpi_progs"
MPIRUN = str(Path(sys.prefix) / "bin" / "mpirun")
JOB = """
name = "faults"
[model]
imports = ["killer"]
layers = [{ type = "dense", units = 64, activation = "relu" }, { type = "killer:KillAt" },
          { type = "dense", units = 10 }]
[train]
epochs = 200
batch_size = 16
backend = "numpy"
[parallel]
local_steps = 4
watchdog_s = 5
[checkpoint]
every = 25
"""
ENV = {
    **os.environ,
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "PYTHONPATH": f"{PROGS}:{ROOT}",
}


def launch(job, fault=None, at=400):
    env = dict(ENV)
    if fault:
        env.update(HORN_TEST_KILL_RANK="1", HORN_TEST_KILL_AT=str(at), HORN_TEST_FAULT=fault)
    return subprocess.Popen(
        [
            MPIRUN,
            "-n",
            "2",
            "-x",
            "PYTHONPATH",
            "-x",
            "HORN_TEST_KILL_RANK",
            "-x",
            "HORN_TEST_KILL_AT",
            "-x",
            "HORN_TEST_FAULT",
            sys.executable,
            "-m",
            "horn.cli",
            "run",
            str(job),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def fault_time(proc, when_line="epoch"):
    """Seconds from the fault (the first progress line after it) to the job's end."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(when_line):
            break
    start = time.monotonic()
    out, err = proc.communicate(timeout=300)
    return time.monotonic() - start, proc.returncode, "".join(lines) + out, err


def lost(run_dir, stopped_step):
    """Steps done after the newest valid checkpoint: what a --resume must redo."""
    checkpoints = sorted((run_dir / "checkpoints").glob("ckpt-*.json"))
    if not checkpoints:
        return "everything (no checkpoint yet)"
    step = json.loads(checkpoints[-1].read_text())["step"]
    return f"{stopped_step - step} steps after the last checkpoint (step {step})"


def main():
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for fault, what in (
        ("kill", "SIGKILL of rank 1 mid-round"),
        ("raise", "exception on rank 1"),
        ("hang", "rank 1 stuck (never reaches the barrier), watchdog 5 s"),
    ):
        job = tmp / f"{fault}.toml"
        job.write_text(textwrap.dedent(JOB) + f"[log]\ndir = '{tmp / fault}'\n")
        # the fault fires at forward 400; progress lines come once per epoch (~80 steps)
        seconds, code, out, err = fault_time(launch(job, fault), "epoch   5/")
        (run_dir,) = (tmp / fault).iterdir()
        named = "rank 1" in err or "rank(s) 1" in err
        message = next(
            (
                l.strip()
                for l in err.splitlines()
                if "rank" in l and ("horn" in l or "noticed" in l or "exited" in l)
            ),
            err.strip()[:120],
        )
        rows.append(
            (
                what,
                f"job ends, exit {code}; rank named: {'yes' if named else 'NO'} "
                f"(`{message[:110]}`)",
                f"{seconds:.1f} s",
                lost(run_dir, 400),
            )
        )
    job = tmp / "usr1.toml"
    job.write_text(textwrap.dedent(JOB) + f"[log]\ndir = '{tmp / 'usr1'}'\n")
    proc = launch(job)
    for line in proc.stdout:
        if line.startswith("epoch   3/"):
            break
    start = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    (run_dir,) = (tmp / "usr1").iterdir()
    step = int(out.split("stopped at step ")[1].split()[0])
    rows.append(
        (
            "SIGUSR1 to mpirun (graceful preemption)",
            f"checkpoint at step {step}, exit {proc.returncode}",
            f"{time.monotonic() - start:.1f} s",
            lost(run_dir, step),
        )
    )
    table = ["| fault injected | what horn did | time to stop | lost |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(table)
    print(text)
    (ROOT / "docs" / "faults.md").write_text(
        "# Fault injection (bench/faults.py)\n\n2 ranks on one 2-core host, numpy backend, "
        "checkpoint every 25 rounds of 4 steps.\n\n" + text + "\n"
    )


if __name__ == "__main__":
    main()
