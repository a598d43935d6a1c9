"""The README is real: its layer example runs and passes check_layer, and its shell
commands work as written after `make run`."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.cli import ROOT


def test_readme_layer_example_passes_check_layer(capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = next(b for b in blocks if "class PReLU" in b)
    assert 25 <= len(example.splitlines()) <= 45
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "gradients (finite differences, float64)" in out and "backend numba" in out
    import horn
    from horn.registry import resolve

    assert resolve("prelu") is namespace["PReLU"]
    assert horn.check_layer(namespace["PReLU"](slope=0.1))


# The README's shell commands, executed as written after `make run` (its "Two commands"
# section says so). Only these kinds are not run here, each for the reason given; every rule
# must still match a command of the README, so the list cannot outlive what it excuses.
NOT_RUN_HERE = [
    (r"^make test$", "the test suite itself: this test runs inside it"),
    (
        r"fashion|bench_",
        "a Fashion-MNIST job: needs Debian's dataset-fashion-mnist (make "
        "fashion-data; make test does not install it) and minutes to hours of "
        "training (make accuracy, make bench)",
    ),
    (
        r"^horn cluster ",
        "the simulated cluster: network namespaces need root with CAP_NET_ADMIN "
        "and CAP_SYS_ADMIN (tests/test_cluster.py runs it where it can)",
    ),
    (r"\bhostfile\b(?!\.)", "needs several machines and their own hostfile"),
]


def readme_commands():
    """Every command line of the README's sh blocks, comments removed, in order."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            command = re.sub(r"(^|\s+)#\s.*$", "", line).strip()
            if command:
                commands.append(command)
    return commands


def why_not_run(command):
    return next((reason for pattern, reason in NOT_RUN_HERE if re.search(pattern, command)), None)


def test_every_not_run_rule_excuses_some_readme_command():
    commands = readme_commands()
    for pattern, reason in NOT_RUN_HERE:
        assert any(re.search(pattern, c) for c in commands), f"stale rule {pattern!r} ({reason})"


def test_the_readme_commands_work_as_written_after_make_run(tmp_path):
    """In a directory holding the checkout's files (not its runs/), with the venv NOT on PATH
    and no Open MPI root variables: what a new user's shell has after `make run`."""
    assert subprocess.run(["make", "-q", "setup"], cwd=ROOT).returncode == 0, (
        "the venv is stale: run make setup first (make test does)"
    )
    for entry in ROOT.iterdir():
        if entry.name not in ("runs", "x.npy", "predictions.csv"):
            (tmp_path / entry.name).symlink_to(entry)
    commands = readme_commands()
    run = [c for c in commands if why_not_run(c) is None]
    assert run[0] == "make run" and ". .venv/bin/activate" in run
    assert len(run) >= 15, run
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OMPI_", "VIRTUAL_ENV", "PYTHON", "MAKE", "MFLAGS"))
    }
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if Path(p).resolve() != Path(venv_bin).resolve()
    )
    script = "set -euo pipefail\ntrap 'echo \"README command failed: $BASH_COMMAND\" >&2' ERR\n"
    script += "".join(f"printf '+ %s\\n' {shlex.quote(c)}\n{c}\n" for c in run)
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ". .venv/bin/activate" in result.stdout  # make run says how to put horn on PATH
    assert result.stdout.count("test accuracy ") >= 4  # make run, the runs, the resume
