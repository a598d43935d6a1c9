"""The packages: every package under horn/ (discovered), plus the directories that
pyproject.toml's package-dir maps into it (layers/ -> horn.layers, jobs/ -> horn.jobfiles)."""

from setuptools import find_packages, setup

MAPPED = ["horn.layers", "horn.jobfiles"]

setup(packages=find_packages(include=["horn", "horn.*"]) + MAPPED)
