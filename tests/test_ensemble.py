"""Ensemble compression (EC-DNN): the distillation loss and batches, label-skewed shards,
saved ensembles, and multi-rank runs of barrier = "ensemble" through real mpirun."""

import json
import textwrap
import types

import numpy as np
import pytest

import horn
from horn.backends import get_backend
from horn.barriers.ensemble import EnsembleSettings, shared_inputs
from horn.distill import DistillBatches, DistillLoss, distill
from horn.ensemble_model import Ensemble, load_predictor
from horn.layers import Dense, SoftmaxCrossEntropy
from horn.model import Model
from horn.optim import SGD
from horn.parallel import dirichlet_shard_indices, shard_indices
from tests.cli import ROOT
from tests.cli import horn as horn_cli
from tests.mpirun import mpirun


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def bound_loss(alpha, temperature):
    """A DistillLoss bound to a float64 numpy model, as check_layer binds a loss."""
    return Model([], DistillLoss(alpha, temperature), 5, "numpy", dtype=np.float64).loss


# ---- the loss ------------------------------------------------------------------------
@pytest.mark.parametrize("targets", ["soft", "labels"])
def test_distill_loss_passes_check_layer(targets):
    assert horn.check_layer(DistillLoss(alpha=0.3, temperature=2.5), targets=targets)


def test_distill_loss_is_alpha_ce_plus_t2_kl_by_hand():
    rng = np.random.default_rng(1)
    x, labels = rng.standard_normal((6, 5)) * 3, rng.integers(0, 5, 6)
    soft = softmax(rng.standard_normal((6, 5)))
    a, t = 0.3, 2.5
    ce = -np.log(softmax(x)[np.arange(6), labels]).mean()
    kl = (soft * (np.log(soft) - np.log(softmax(x / t)))).sum(axis=1).mean()
    assert bound_loss(a, t).forward(x, (labels, soft)) == pytest.approx(
        a * ce + (1 - a) * t * t * kl
    )
    split = bound_loss(a, t).forward(x, (labels[:2], soft[2:]))
    ce2 = -np.log(softmax(x[:2])[np.arange(2), labels[:2]]).mean()
    kl4 = (soft[2:] * (np.log(soft[2:]) - np.log(softmax(x[2:] / t)))).sum(axis=1).mean()
    assert split == pytest.approx(a * ce2 + (1 - a) * t * t * kl4)
    assert bound_loss(0.0, t).forward(x, (None, soft)) == pytest.approx(t * t * kl)


@pytest.mark.parametrize("layout", ["same rows", "split"])
def test_distill_loss_gradient_by_finite_differences(layout):
    """check_layer's float64 central differences, on the mixed (labels, soft) targets."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 5))
    labels, soft = rng.integers(0, 5, 6), softmax(rng.standard_normal((6, 5)))
    targets = (labels, soft) if layout == "same rows" else (labels[:2], soft[2:])
    loss = bound_loss(0.4, 3.0)
    loss.forward(x, targets)
    grad, eps = loss.backward().copy(), 1e-6
    for i in np.ndindex(x.shape):
        keep = x[i]
        x[i] = keep + eps
        up = loss.forward(x, targets)
        x[i] = keep - eps
        down = loss.forward(x, targets)
        x[i] = keep
        assert grad[i] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8)


def test_distill_loss_rejects_targets_that_do_not_tile_the_batch():
    with pytest.raises(ValueError, match="must split it or both cover it"):
        bound_loss(0.5, 1.0).forward(np.zeros((4, 5)), (np.zeros(1, np.int64), np.ones((2, 5)) / 5))


# ---- batches and the distillation loop -----------------------------------------------
def test_distill_batches_layouts():
    backend = get_backend("numpy")
    x, teacher = np.arange(20.0).reshape(10, 2), np.tile(np.arange(10.0)[:, None], (1, 3))
    own = (np.full((4, 2), -1.0), np.arange(4))
    xb, (labels, soft) = DistillBatches(backend, x, teacher, 6, np.random.default_rng(0)).next()
    assert labels is None and np.array_equal(soft[:, 0], xb[:, 0] / 2)  # rows stay paired
    xb, (labels, soft) = DistillBatches(
        backend, x, teacher, 6, np.random.default_rng(0), labeled=own
    ).next()
    assert xb.shape == (6, 2) and len(labels) == 3 and len(soft) == 3
    assert (xb[:3] == -1).all() and np.array_equal(soft[:, 0], xb[3:, 0] / 2)
    batches = DistillBatches(backend, x, teacher, 4, np.random.default_rng(0), labels=np.arange(10))
    seen = np.concatenate([batches.next()[1][0] for _ in range(5)])
    assert np.array_equal(np.sort(seen[:10]), np.arange(10))  # shuffled passes, none skipped


def test_distillation_moves_the_student_to_the_teacher():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((256, 6)).astype(np.float32)
    make = lambda seed: Model(
        [Dense(32, "relu"), Dense(4)],
        SoftmaxCrossEntropy(),
        6,  # noqa: E731
        "numba",
        seed=seed,
    )
    teacher = make(1).predict(x)
    student = make(2)
    kl = lambda: float((teacher * np.log(teacher / student.predict(x))).sum(1).mean())  # noqa: E731
    before = kl()
    batches = DistillBatches(student.backend, x, teacher, 32, np.random.default_rng(0))
    first, last = distill(
        student, SGD(student, momentum=0.9), DistillLoss(0.0, 1.0), batches, 300, 0.1
    )
    assert kl() < 0.2 * before and last < first
    assert student.loss.spec()["type"] == "softmax_cross_entropy"  # its own loss is back


def test_shared_inputs_are_a_seeded_sample_split_across_workers(tmp_path):
    rng = np.random.default_rng(4)
    data = types.SimpleNamespace(
        x_train=rng.standard_normal((50, 3)).astype(np.float32),
        features=3,
        name="t",
        scaler=types.SimpleNamespace(apply=lambda a, where="scaler": a * 2),
    )
    settings = EnsembleSettings(distill_size=20)

    def setup(workers, worker):
        return types.SimpleNamespace(
            data=data,
            seed=0,
            base_dir=str(tmp_path),
            peer=types.SimpleNamespace(workers=workers, worker=worker),
            model=types.SimpleNamespace(in_features=3),
        )

    parts = [shared_inputs(setup(2, w), settings) for w in (0, 1)]
    whole = shared_inputs(setup(1, 0), settings)
    assert len(whole) == 20 and np.array_equal(np.concatenate(parts), whole)
    np.savez(tmp_path / "unlabeled.npz", x=np.ones((8, 3), np.float32))
    from_file = EnsembleSettings(distill_size=20, distill_file="unlabeled.npz")
    assert np.array_equal(shared_inputs(setup(1, 0), from_file), np.full((8, 3), 2.0))


def test_resolved_job_keeps_the_distill_file_findable(tmp_path):
    from horn.jobs import load_job, write_resolved

    (tmp_path / "job.toml").write_text(textwrap.dedent(JOB) + "distill_file = 'u.npz'\n")
    write_resolved(load_job(tmp_path / "job.toml"), tmp_path / "job.json")
    resolved = json.loads((tmp_path / "job.json").read_text())["parallel"]["ensemble"]
    resolved = resolved["distill_file"]
    assert resolved == str(tmp_path / "u.npz")


# ---- shards --------------------------------------------------------------------------
def test_dirichlet_shards_are_disjoint_equal_sized_and_skewed():
    labels = np.repeat(np.arange(10), 300)[np.random.default_rng(5).permutation(3000)]

    def shards(alpha):
        return [dirichlet_shard_indices(labels, 4, g, alpha, seed=0) for g in range(4)]

    skewed = shards(0.1)
    assert np.array_equal(np.sort(np.concatenate(skewed)), np.arange(3000))
    assert [len(s) for s in skewed] == [750] * 4
    assert all(np.array_equal(a, b) for a, b in zip(skewed, shards(0.1)))  # seeded
    top = lambda idx: np.bincount(labels[idx], minlength=10).max() / len(idx)  # noqa: E731
    iid = [shard_indices(3000, 4, g, 0) for g in range(4)]
    assert min(top(s) for s in skewed[:3]) > 0.3 and max(top(s) for s in iid) < 0.15
    assert max(top(s) for s in shards(1000.0)) < 0.15


# ---- saved ensembles -----------------------------------------------------------------
def test_ensemble_predicts_the_weighted_mean_and_round_trips(tmp_path):
    spec = Model([Dense(8, "relu"), Dense(3)], SoftmaxCrossEntropy(), 4, seed=0).spec()
    flat = [Model.from_spec(spec, seed=s).params for s in (1, 2, 3)]
    ens = Ensemble.from_flat(spec, flat, weights=[1, 1, 2])
    x = np.random.default_rng(6).standard_normal((10, 4)).astype(np.float32)
    want = sum(w * m.predict(x) for w, m in zip([0.25, 0.25, 0.5], ens.members))
    assert np.allclose(ens.predict(x), want, atol=1e-6)
    ens.save(tmp_path / "e.npz", meta={"k": 1})
    again, meta = load_predictor(tmp_path / "e.npz")
    assert meta == {"k": 1} and np.array_equal(again.predict(x), ens.predict(x))
    ens.members[0].save(tmp_path / "m.npz")
    single, _ = load_predictor(tmp_path / "m.npz")
    assert isinstance(single, Model) and np.array_equal(
        single.predict(x), ens.members[0].predict(x)
    )


# ---- multi-rank ----------------------------------------------------------------------
JOB = """
name = "ec"
[data]
name = "digits"
[model]
layers = [{ type = "dense", units = 32, activation = "relu" }, { type = "dense", units = 10 }]
[train]
epochs = 3
batch_size = 16
lr = 0.05
backend = "numpy"
[parallel]
barrier = "ensemble"
local_steps = 40
[parallel.ensemble]
distill_steps = 20
distill_size = 200
"""


def run_ec(tmp_path, ranks, *sets):
    path = tmp_path / "ec.toml"
    path.write_text(textwrap.dedent(JOB) + f"[log]\ndir = '{tmp_path / 'runs'}'\nplot = false\n")
    args = ["-m", "horn.cli", "run", path, "--quiet"]
    for item in sets:
        args += ["--set", item]
    result = mpirun(ranks, args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = result.stdout.strip().splitlines()[-1].split("run directory ")[1]
    rows = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    return run_dir, [r for r in rows if r["kind"] == "barrier"], rows[-1]


def test_shared_teacher_on_4_groups_reports_every_barrier(tmp_path):
    """One Allreduce of N x C + 1 floats per barrier; the best compressed model is kept."""
    run_dir, barriers, final = run_ec(tmp_path, 4, "parallel.ensemble.ensemble_weights=validation")
    allreduce = 2 * 3 * 4 * (200 * 10 + 1) // 4
    assert [b["step"] for b in barriers] == list(range(40, final["steps"], 40)) + [final["steps"]]
    for b in barriers:
        assert len(b["member_val_accuracy"]) == len(b["compressed_val_accuracy"]) == 4
        assert b["distill_s"] > 0 and b["metric_bytes_sent"] > 0
    assert all(b["bytes_sent"] == allreduce for b in barriers[:-1])
    last = barriers[-1]
    assert last["bytes_sent"] >= allreduce  # + the winning model, sent to rank 0 unless its own
    assert last["final_group"] == int(np.argmax(last["compressed_val_accuracy"]))
    assert final["val_accuracy"] == max(last["compressed_val_accuracy"])
    assert final["test_accuracy"] > 0.85
    assert last["ensemble_val_accuracy"] >= np.mean(last["member_val_accuracy"])


def test_local_teacher_on_4_groups_allgathers_parameters_once_per_barrier(tmp_path):
    run_dir, barriers, final = run_ec(
        tmp_path, 4, "parallel.ensemble.teacher_data=local", "parallel.ensemble.student=average"
    )
    size = load_predictor(f"{run_dir}/model.npz")[0].size
    assert barriers and all(b["bytes_sent"] == 3 * 4 * (size + 1) for b in barriers[:-1])
    assert final["test_accuracy"] > 0.85


def test_final_ensemble_predictions_are_the_mean_of_the_members(tmp_path):
    run_dir, barriers, final = run_ec(tmp_path, 2, "parallel.ensemble.final=ensemble")
    ens, meta = load_predictor(f"{run_dir}/model.npz")
    assert isinstance(ens, Ensemble) and len(ens.members) == 2 and meta["classes"] == 10
    x = np.random.default_rng(7).random((5, 64)).astype(np.float32) * 16
    np.savez(tmp_path / "x.npz", x=x)
    out = horn_cli("predict", run_dir, tmp_path / "x.npz", "--out", tmp_path / "p.csv")
    assert out.returncode == 0, out.stderr
    probs = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)[:, 1:]
    scaled = x / float(meta["scaler"]["scale"])
    members = np.mean([m.predict(scaled) for m in ens.members], axis=0)
    assert np.allclose(probs, members, atol=2e-6)
    evaluated = horn_cli("eval", run_dir)
    assert f"test accuracy {final['test_accuracy']:.4f}" in evaluated.stdout
    assert barriers[-1]["ensemble_val_accuracy"] == final["val_accuracy"]


def test_teachers_against_numpy_by_hand_on_three_ranks():
    result = mpirun(3, [ROOT / "tests/mpi_progs/ensemble_teacher.py"], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_sub_network_groups_with_the_local_teacher(tmp_path):
    """2 groups x 2 workers: intra-group rounds are SubnetSync's; each worker distills its
    sub-network on its half of the rows, then the group reassembles its parent."""
    run_dir, barriers, final = run_ec(
        tmp_path, 4, "parallel.workers=2", "parallel.ensemble.teacher_data=local"
    )
    parent = load_predictor(f"{run_dir}/model.npz")[0]
    assert parent.layers[0].params["W"].shape == (64, 32)
    allgather = 1 * 4 * (parent.size + 1)
    assert barriers and all(b["bytes_sent"] > allgather for b in barriers)  # + reassembly
    assert len(barriers[0]["compressed_val_accuracy"]) == 2
    rows = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    assert any(r["kind"] == "partition" for r in rows)
    assert final["test_accuracy"] > 0.8


def test_killed_ensemble_run_resumes_bit_for_bit(tmp_path):
    """Barrier counters go into checkpoints; the teacher and distillation rows are
    drawn from seeds, so a resumed run repeats the uninterrupted one exactly."""
    killer = (
        textwrap.dedent(JOB)
        .replace(
            '{ type = "dense", units = 10 }',
            '{ type = "killer:KillAt" }, { type = "dense", units = 10 }',
        )
        .replace("local_steps = 40", "local_steps = 20\nglobal_every = 2")
        .replace("[model]\n", '[model]\nimports = ["killer"]\n')
    )
    env = {"PYTHONPATH": f"{ROOT / 'tests/mpi_progs'}:{ROOT}"}
    dirs = {}
    for name, extra in (
        ("whole", {}),
        ("killed", {"HORN_TEST_KILL_RANK": "1", "HORN_TEST_KILL_AT": "70"}),
    ):
        path = tmp_path / f"{name}.toml"
        path.write_text(
            killer + f"[checkpoint]\nevery = 1\n[log]\ndir = '{tmp_path / name}'\nplot = false\n"
        )
        result = mpirun(2, ["-m", "horn.cli", "run", path, "--quiet"], 120, {**env, **extra})
        assert (result.returncode == 0) == (name == "whole"), result.stderr
        (dirs[name],) = (tmp_path / name).iterdir()
    resumed = mpirun(2, ["-m", "horn.cli", "run", "--resume", dirs["killed"], "--quiet"], 120, env)
    assert resumed.returncode == 0, resumed.stderr
    timing = (
        "time_s",
        "samples_per_s",
        "compute_s",
        "comm_s",
        "teacher_s",
        "distill_s",
        "rank_compute_s",
        "rank_wait_s",
        "waited_for",
    )
    rows = [
        [
            {k: v for k, v in json.loads(line).items() if k not in timing}
            for line in open(d / "metrics.jsonl")
        ]
        for d in dirs.values()
    ]
    assert rows[0] == rows[1] and sum(r["kind"] == "barrier" for r in rows[0]) >= 3
    a, b = (np.load(d / "model.npz") for d in dirs.values())
    params = [k for k in a.files if k.startswith("param/")]
    assert params and all(np.array_equal(a[k], b[k]) for k in params)
