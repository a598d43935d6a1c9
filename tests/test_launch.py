"""``horn launch --hostfile FILE -n N JOB``: the hostfile checked, the mpirun line built
and printed, the job run under the clean-finish check (real mpirun on localhost)."""

import json
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horn.errors import HornError
from horn.launch import ROOT_VARIABLES, job_argv
from tests.cli import ROOT, horn

JOB = ROOT / "jobs/digits.toml"
QUICK = ["--set", "train.epochs=1", "--set", "train.backend='numpy'", "--quiet"]


def hostfile(tmp_path, text="localhost slots=2\n"):
    path = tmp_path / "hosts"
    path.write_text(text)
    return path


def test_launch_runs_a_job_on_the_hostfile_and_prints_the_mpirun_line(tmp_path):
    """Run from a directory holding a ``cupy.py`` and a ``sklearn.py``: the ranks must not
    import them (``python -m`` alone would put the working directory first on sys.path)."""
    for planted in ("cupy", "sklearn", "numba"):
        (tmp_path / f"{planted}.py").write_text(
            f"open({str(tmp_path / planted)!r} + '.imported', 'w').close()\n"
        )
    result = horn(
        "launch",
        "--hostfile",
        hostfile(tmp_path),
        "-n",
        "2",
        JOB,
        *QUICK,
        "--set",
        f"log.dir='{tmp_path / 'runs'}'",
        timeout=180,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob("*.imported"))
    first, last = result.stdout.splitlines()[0], result.stdout.strip().splitlines()[-1]
    assert first.startswith("horn: ") and " -n 2 " in first and "--bind-to none" in first
    assert "--host localhost:2 " in first and "-x HORN_REPORT_DIR" in first
    assert f"{sys.executable} -P -m horn.cli run {JOB}" in first
    assert "--oversubscribe" not in first
    if os.geteuid() == 0:
        assert first.startswith("horn: OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ")
    run_dir = last.split("run directory ")[1]
    final = json.loads(open(f"{run_dir}/metrics.jsonl").read().splitlines()[-1])
    assert len(final["bytes_sent_per_rank"]) == 2  # two ranks trained together
    assert not list(tmp_path.glob(".horn-reports-*"))


def test_more_ranks_than_slots_needs_oversubscribe(tmp_path):
    """In MPICH's syntax, which Open MPI's own --hostfile would take for a host name."""
    hosts = hostfile(tmp_path, "localhost:1\n")
    refused = horn("launch", "--hostfile", hosts, "-n", "2", JOB, *QUICK)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip() == (
        f"horn: error: horn launch: -n 2 is more than the 1 "
        f"slot(s) of {hosts} (1 host(s)); add slots, lower -n, "
        f"or pass --oversubscribe"
    )
    ok = horn(
        "launch",
        "--hostfile",
        hosts,
        "-n",
        "2",
        "--oversubscribe",
        JOB,
        *QUICK,
        "--set",
        f"log.dir='{tmp_path / 'runs'}'",
        timeout=180,
    )
    assert ok.returncode == 0, ok.stderr
    assert "--oversubscribe" in ok.stdout.splitlines()[0]


def test_bad_hostfile_or_job_fails_before_mpirun(tmp_path):
    bad_hosts = horn(
        "launch", "--hostfile", hostfile(tmp_path, "node1 slots=two\n"), "-n", "1", JOB
    )
    assert bad_hosts.returncode == 2 and bad_hosts.stdout == ""
    assert f"{tmp_path / 'hosts'}:1" in bad_hosts.stderr
    assert len(bad_hosts.stderr.strip().splitlines()) == 1
    bad_job = horn(
        "launch", "--hostfile", hostfile(tmp_path), "-n", "1", JOB, "--set", "train.momentun=0.5"
    )
    assert bad_job.returncode == 2 and bad_job.stdout == ""
    assert "train.momentun: unknown key" in bad_job.stderr
    no_ranks = horn("launch", "--hostfile", hostfile(tmp_path), "-n", "0", JOB)
    assert no_ranks.returncode == 2
    assert no_ranks.stderr == "horn: error: horn launch: -n must be at least 1, found 0\n"
    neither = horn("launch", "-n", "2", JOB)
    assert neither.returncode == 2 and "--hostfile FILE -n N JOB" in neither.stderr
    both = horn("launch", "--hostfile", hostfile(tmp_path), "mpirun", "-n", "1", "true")
    assert both.returncode == 2 and "not both" in both.stderr


def test_the_mpirun_form_still_checks_for_a_clean_finish(tmp_path):
    """Not a horn program: no rank reports, so even mpirun's exit 0 is a failure."""
    from tests.mpirun import mpirun_path

    result = horn(
        "launch",
        mpirun_path(),
        "--oversubscribe",
        "-n",
        "1",
        "true",
        env=ROOT_VARIABLES,
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "no rank reported a start" in result.stderr


HOSTS = st.lists(
    st.tuples(st.sampled_from(["a", "b", "node-1", "10.0.0.7"]), st.integers(1, 8)),
    min_size=1,
    max_size=4,
    unique_by=lambda h: h[0],
)


@settings(max_examples=60, deadline=None)
@given(hosts=HOSTS, ranks=st.integers(-1, 40), oversubscribe=st.booleans(), mpich=st.booleans())
def test_job_argv_for_generated_hostfiles(tmp_path_factory, hosts, ranks, oversubscribe, mpich):
    path = tmp_path_factory.mktemp("h") / "hosts"
    line = "{}:{}\n" if mpich else "{} slots={}\n"
    path.write_text("".join(line.format(name, slots) for name, slots in hosts))
    slots = sum(s for _, s in hosts)
    if ranks < 1 or (ranks > slots and not oversubscribe):
        with pytest.raises(HornError, match="-n"):
            job_argv(path, ranks, ["job.toml"], oversubscribe, mpirun="mpirun")
        return
    argv, env = job_argv(path, ranks, ["job.toml", "--set", "a=1"], oversubscribe, mpirun="mpirun")
    assert argv[0] == "mpirun" and argv[argv.index("-n") + 1] == str(ranks)
    assert argv[argv.index("--host") + 1] == ",".join(f"{h}:{n}" for h, n in hosts)
    assert ("--oversubscribe" in argv) == oversubscribe
    assert argv[-8:] == [sys.executable, "-P", "-m", "horn.cli", "run", "job.toml", "--set", "a=1"]
    if os.geteuid() == 0:  # for mpirun here, and forwarded to every host
        assert all(env[k] == "1" and argv[argv.index(k) - 1] == "-x" for k in ROOT_VARIABLES)
