"""The shipped jobs reach their accuracy targets. Fashion-MNIST runs take minutes:
they are marked slow and run by `make accuracy` (which installs the data)."""

import json
from pathlib import Path

import pytest

from tests.cli import ROOT, horn
from tests.mpirun import mpirun

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def final(result):
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = result.stdout.strip().splitlines()[-1].split("run directory ")[1]
    return json.loads(Path(run_dir, "metrics.jsonl").read_text().splitlines()[-1])


def test_digits_job_reaches_097(tmp_path):
    row = final(horn("run", ROOT / "jobs/digits.toml", "--quiet", "--set", f"log.dir='{tmp_path}'"))
    assert row["test_accuracy"] >= 0.97


def require_fashion():
    assert FASHION.exists(), (
        "Fashion-MNIST is missing: `make accuracy` installs Debian's dataset-fashion-mnist"
    )


@pytest.mark.slow
def test_fashion_mlp_reaches_0885(tmp_path):
    require_fashion()
    row = final(
        horn(
            "run",
            ROOT / "jobs/fashion_mlp.toml",
            "--quiet",
            "--set",
            f"log.dir='{tmp_path}'",
            timeout=3600,
        )
    )
    assert row["test_accuracy"] >= 0.885


@pytest.mark.slow
def test_fashion_model_averaging_on_4_ranks_reaches_088(tmp_path):
    require_fashion()
    row = final(
        mpirun(
            4,
            [
                "-m",
                "horn.cli",
                "run",
                ROOT / "jobs/fashion_ma.toml",
                "--quiet",
                "--set",
                f"log.dir='{tmp_path}'",
            ],
            timeout=3600,
        )
    )
    assert row["test_accuracy"] >= 0.88


@pytest.mark.slow
def test_fashion_subnetworks_on_1x4_reach_0885(tmp_path):
    require_fashion()
    row = final(
        mpirun(
            4,
            [
                "-m",
                "horn.cli",
                "run",
                ROOT / "jobs/fashion_subnet.toml",
                "--quiet",
                "--set",
                f"log.dir='{tmp_path}'",
            ],
            timeout=3600,
        )
    )
    assert row["test_accuracy"] >= 0.885
