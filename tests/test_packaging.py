"""What a user meets first: the wheel's contents, the shipped jobs, --version, --debug
anywhere, help text, and --resume on a run that had checkpoints off. (The wheel trained
from outside the checkout is .ci/wheel-check, run by CI after make test.)"""

import argparse
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import version

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horn.cli import build_parser
from horn.cli_parser import plain
from horn.errors import HornError
from horn.shipped_jobs import resolve_job, shipped_jobs
from tests.cli import ROOT, horn

JOB_FILES = sorted((ROOT / "jobs").glob("*.toml"))
NAMES = [p.stem for p in JOB_FILES]


def expected_wheel_packages():
    """Every directory of Python modules in the source tree, under its installed name."""
    mapped = {"layers": "horn.layers", "jobs": "horn.jobfiles"}
    found = {
        ".".join(d.relative_to(ROOT).parts)
        for d in (ROOT / "horn").rglob("*")
        if d.is_dir() and any(d.glob("*.py"))
    } | {"horn"}
    return found | set(mapped.values())


def test_the_wheel_holds_every_package_the_jobs_and_the_cuda_sources(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path, ROOT],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("horn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {
        n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith(("/__init__.py",))
    }
    assert packages == expected_wheel_packages()
    assert not any(n.startswith(("layers/", "jobs/", "tests/")) for n in names)
    assert {f"horn/jobfiles/{p.name}" for p in JOB_FILES} <= set(names)
    cuda = {f"horn/backends/cuda/{p.name}" for p in (ROOT / "horn/backends/cuda").glob("*.cu")}
    assert cuda and cuda <= set(names)


def test_version_is_the_package_metadata_version():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = horn("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"horn {declared}" == f"horn {version('horn')}"


def test_horn_jobs_lists_every_shipped_job_with_its_description():
    result = horn("jobs")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for path in JOB_FILES:
        description = tomllib.loads(path.read_text())["description"]
        assert any(line.split()[0] == path.stem and line.endswith(description) for line in lines), (
            path.stem
        )
    assert len(lines) == len(JOB_FILES) + 1


def test_a_shipped_job_is_found_by_name_outside_the_checkout(tmp_path):
    result = horn("validate", "digits", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    last = result.stdout.splitlines()[-1]
    assert last.startswith("digits: ok (digits:") and str(tmp_path) not in last  # shipped


def test_a_real_path_wins_over_a_shipped_name(tmp_path):
    (tmp_path / "digits").write_text(
        'name = "mine"\n[model]\nlayers = [{ type = "dense", units = 10 }]\n'
    )
    result = horn("validate", "digits", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("digits: ok (mine:")


def test_an_unknown_name_is_one_line_naming_the_shipped_jobs(tmp_path):
    result = horn("run", "digitz", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("horn: error: 'digitz': no such job file, and no shipped job")
    assert all(name in line for name in NAMES)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(arg=st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=20))
def test_any_job_argument_resolves_to_a_shipped_job_a_path_or_a_named_error(arg):
    try:
        path = resolve_job(arg)
    except HornError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(f"{arg!r}: no such job file")
        assert all(name in message for name in NAMES)
        return
    jobs = shipped_jobs()
    assert path == jobs.get(arg.removesuffix(".toml"), path)
    assert path in jobs.values() or str(path) == arg


def all_parsers(parser, path=("horn",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, (*path, name))


MARKUP = re.compile(r"`|:[a-z]+:")


def test_every_command_takes_debug_and_its_help_has_no_docstring_markup():
    parsers = list(all_parsers(build_parser()))
    assert len(parsers) > 10
    for path, parser in parsers:
        text = parser.format_help()
        assert "--debug" in text, path
        assert not MARKUP.search(text), (path, MARKUP.search(text).group())


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "validate", "nowhere.toml"],
        ["validate", "--debug", "nowhere.toml"],
        ["validate", "nowhere.toml", "--debug"],
        ["hosts", "check", "nowhere", "--debug"],
    ],
)
def test_debug_anywhere_shows_the_traceback(argv):
    result = horn(*argv)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    plain_run = horn(*[a for a in argv if a != "--debug"])
    assert plain_run.returncode == 2 and "Traceback" not in plain_run.stderr
    assert len(plain_run.stderr.splitlines()) == 1


@given(
    # names: a leading ~ (Sphinx's "last component only") needs a name after it
    words=st.lists(
        st.from_regex(r"~[\w.]{1,8}|[A-Za-z_.][\w.]{0,8}", fullmatch=True), min_size=1, max_size=4
    ),
    marks=st.lists(
        st.sampled_from(["``{}``", "`{}`", ":func:`{}`", ":class:`~{}`", ":meth:`{}`", "{}"]),
        min_size=4,
        max_size=4,
    ),
)
def test_plain_removes_every_role_and_backtick_but_keeps_the_words(words, marks):
    text = " ".join(mark.format(word) for word, mark in zip(words, marks))
    out = plain(text)
    assert "`" not in out
    assert out.split() == [shown(word, mark) for word, mark in zip(words, marks)]


def shown(word, mark):
    """What help shows of ``word`` in ``mark``: the text between the backticks, and after
    a Sphinx role without its one leading ~ (Sphinx's "last component only")."""
    content = mark.format(word)
    if mark.startswith(":"):
        content = content.split("`")[1]
        return content[1:] if content.startswith("~") else content
    return content.strip("`")


def test_resume_of_a_run_with_checkpoints_off_says_how_to_turn_them_on(tmp_path):
    result = horn("run", "digits", "--set", "train.epochs=1", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = result.stdout.strip().splitlines()[-1].split("run directory ")[1]
    resumed = horn("run", "--resume", run_dir, cwd=tmp_path)
    assert resumed.returncode == 2
    (line,) = resumed.stderr.splitlines()
    assert "checkpoint.every = 0" in line and "--set checkpoint.every=N" in line
