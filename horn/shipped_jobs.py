"""The example jobs installed with horn (``jobs/`` -> ``horn.jobfiles``): ``horn jobs``
lists them, and ``horn run NAME`` finds one by name, so a wheel trains outside a checkout."""

import tomllib
from importlib.resources import files
from pathlib import Path

from horn.errors import HornError


def shipped_jobs():
    """``{name: path}`` of the example job files, by file stem, sorted."""
    return {
        Path(str(entry)).stem: Path(str(entry))
        for entry in sorted(files("horn.jobfiles").iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".toml")
    }


def _looks_like_name(arg):
    """A bare word such as ``digits`` (no directory, no suffix other than .toml)."""
    path = Path(arg)
    return path.name == arg and path.suffix in ("", ".toml")


def resolve_job(arg):
    """The job file ``arg`` names: a real path always wins; else a shipped job of that name;
    an unknown bare name is an error listing the shipped ones."""
    if Path(arg).exists() or not _looks_like_name(arg):
        return Path(arg)  # a missing path is reported by load_job
    jobs = shipped_jobs()
    name = arg.removesuffix(".toml")
    if name not in jobs:
        raise HornError(
            f"{arg!r}: no such job file, and no shipped job of that name (shipped: "
            f"{', '.join(jobs)}; see horn jobs)"
        )
    return jobs[name]


def describe(path):
    """The job's one-line ``description`` (empty when it has none or cannot be read)."""
    try:
        text = tomllib.loads(path.read_text()).get("description", "")
    except (OSError, ValueError):
        return ""
    return " ".join(str(text).split())


def cmd_jobs(args):
    jobs = shipped_jobs()
    width = max(map(len, jobs))
    for name, path in jobs.items():
        print(f"{name:<{width}}  {describe(path)}")
    print(
        f"{len(jobs)} shipped job(s) in {next(iter(jobs.values())).parent}; run one with "
        f"horn run NAME, or copy it and edit"
    )
    return 0


def add_jobs_command(sub):
    sub.add_parser("jobs", help="list the example jobs shipped with horn").set_defaults(
        func=cmd_jobs
    )
