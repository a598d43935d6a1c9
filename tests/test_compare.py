"""``horn compare RUN...``: the table's numbers come from the runs' metrics; the PNG exists;
the common target and the time/bytes to it, for generated curves."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from horn.compare import compare, first_reaching
from tests.cli import ROOT, horn
from tests.mpirun import mpirun

QUICK = ["--set", "train.epochs=3", "--set", "train.backend='numpy'", "--quiet"]


def finals(run_dir):
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return rows[-1], [r for r in rows if r["kind"] == "epoch"]


def test_compare_a_single_process_and_a_2_rank_run(tmp_path):
    runs = tmp_path / "runs"
    one = horn("run", ROOT / "jobs/digits.toml", *QUICK, "--set", f"log.dir='{runs}'")
    assert one.returncode == 0, one.stderr
    two = mpirun(
        2,
        [
            "-m",
            "horn.cli",
            "run",
            ROOT / "jobs/digits.toml",
            *QUICK,
            "--set",
            f"log.dir='{runs}'",
            "--set",
            "parallel.local_steps=8",
        ],
        120,
    )
    assert two.returncode == 0, two.stderr
    dirs = sorted(runs.iterdir())
    png = tmp_path / "cmp.png"
    result = horn("compare", *dirs, "--out", png)
    assert result.returncode == 0, result.stderr
    header, *rows, note = result.stdout.strip().splitlines()
    assert header.split()[:3] == ["run", "val", "test"] and len(rows) == 2
    curves = [finals(d) for d in dirs]
    common = min(max(e["val_accuracy"] for e in epochs) for _, epochs in curves)
    assert f"s to {common:.4f}" in header
    for row, d, (final, epochs) in zip(rows, dirs, curves):
        cells = row.split()
        assert cells[0] == d.name
        assert cells[1:6] == [
            f"{final['val_accuracy']:.4f}",
            f"{final['test_accuracy']:.4f}",
            f"{final['best_val_accuracy']:.4f}",
            f"{final['best_test_accuracy']:.4f}",
            f"{final['time_s']:.1f}",
        ]
        reach = next(e for e in epochs if e["val_accuracy"] >= common)
        assert cells[7] == f"{reach['time_s']:.1f}"
        sent = max(reach.get("bytes_sent_per_rank") or [0]) / 1e6
        assert cells[8] == f"{sent:,.2f}"
    assert float(rows[0].split()[6]) == 0 and float(rows[1].split()[6]) > 0  # one, two ranks
    assert png.stat().st_size > 10_000 and "cmp.png" in note


def test_not_a_run_directory_is_a_clear_error(tmp_path):
    result = horn("compare", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"horn: error: horn compare: {tmp_path}: not a run directory (no metrics.jsonl)"
    )


CURVE = st.lists(
    st.tuples(st.floats(0, 1e3), st.integers(0, 10**9), st.floats(0, 1)), min_size=1, max_size=8
).map(sorted)


@settings(max_examples=100, deadline=None)
@given(curves=st.lists(CURVE, min_size=1, max_size=4))
def test_every_run_reaches_the_common_target_at_its_first_such_point(curves):
    common = min(max(acc for _, _, acc in c) for c in curves)
    for curve in curves:
        at = first_reaching(curve, common)
        assert at is not None
        index = next(i for i, p in enumerate(curve) if p[2] >= common)
        assert at == curve[index][:2] and all(p[2] < common for p in curve[:index])


def test_compare_writes_the_png_it_names(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [
        {
            "kind": "epoch",
            "epoch": e,
            "time_s": float(e),
            "val_accuracy": 0.5 + e / 10,
            "bytes_sent_per_rank": [e * 1000, e * 2000],
        }
        for e in (1, 2, 3)
    ]
    records.append(
        {
            "kind": "final",
            "test_accuracy": 0.7,
            "val_accuracy": 0.8,
            "time_s": 3.0,
            "bytes_sent_per_rank": [3000, 6000],
        }
    )
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = compare([run], tmp_path / "one.png")
    assert (tmp_path / "one.png").is_file()
    assert lines[1].split() == ["run", "0.8000", "0.7000", "-", "-", "3.0", "0.01", "3.0", "0.01"]
