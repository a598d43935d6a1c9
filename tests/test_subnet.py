"""Sub-networks: partitions, extraction/assembly, equivalence with masked parents,
gradients, and multi-rank runs against a single-process simulation."""

import json
import textwrap

import numpy as np
import pytest

from horn.backends import get_backend
from horn.errors import HornError
from horn.layers import Dense, Dropout, SoftmaxCrossEntropy
from horn.model import Model
from horn.partition import PARTITION_KINDS, partition
from horn.subnet import SubnetLayout, gather, scatter
from tests.mpirun import mpirun, train_on_ranks


@pytest.mark.parametrize("kind", PARTITION_KINDS)
@pytest.mark.parametrize("n,workers", [(10, 2), (1024, 4), (7, 7), (100, 3)])
def test_partitions_are_disjoint_and_cover_every_unit(kind, n, workers):
    rng = np.random.default_rng(5)
    parts = partition(n, workers, kind, rng, weights=list(range(1, workers + 1)), min_share=0.5)
    assert len(parts) == workers and all(len(p) >= 1 for p in parts)
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))
    again = partition(n, workers, kind, np.random.default_rng(5), list(range(1, workers + 1)))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again)), "same seed, same partition"


def test_partition_kinds_have_their_shapes():
    rng = np.random.default_rng(0)
    balanced = [len(p) for p in partition(1000, 3, "balanced", rng)]
    assert max(balanced) - min(balanced) <= 1
    weighted = [len(p) for p in partition(1000, 3, "weighted", rng, weights=[1, 2, 5])]
    assert weighted == [125, 250, 625]
    sizes = [
        [len(p) for p in partition(1000, 4, "irregular", rng, min_share=0.5)] for _ in range(20)
    ]
    assert min(min(s) for s in sizes) >= 125
    assert len({tuple(s) for s in sizes}) > 1 and any(max(s) - min(s) > 10 for s in sizes)
    with pytest.raises(HornError, match="cannot split 3 units among 4 workers"):
        partition(3, 4, "balanced", rng)


def parent_model(backend="numpy", dtype=np.float32, dropout=0.0):
    layers = [Dense(12, "relu"), Dense(10, "tanh")]
    if dropout:
        layers.insert(1, Dropout(dropout))
    return Model(layers + [Dense(4)], SoftmaxCrossEntropy(), 6, backend, seed=3, dtype=dtype)


def plans_for(parent, workers, kind="irregular", seed=1, **options):
    layout = SubnetLayout(parent, **options)
    rng = np.random.default_rng(seed)
    parts = [partition(n, workers, kind, rng) for n in layout.sizes]
    return layout, [layout.plan(parts, w) for w in range(workers)], parts


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("workers", [2, 3])
def test_extract_then_assemble_returns_the_parent_bit_for_bit(backend, workers):
    parent = parent_model(backend)
    before = parent.params.copy()
    layout, plans, _ = plans_for(parent, workers)
    be = get_backend(backend)
    blocks = []
    for plan in plans:
        block = np.empty(plan.size, np.float32)
        gather(be, layout, plan, parent.params, block)
        blocks.append(block)
    parent.params[...] = np.nan  # assembly alone must restore every trained entry
    scatter(be, layout, plans, blocks, parent.params)
    untouched = np.isnan(parent.params)
    assert np.array_equal(parent.params[~untouched], before[~untouched])
    # what no worker holds are exactly the cross-worker connections (and alignment padding)
    layer_w = parent.layers[1].params["W"]
    owned = np.zeros(layer_w.shape, bool)
    for plan in plans:
        rows, cols = plan.index["1.W"]
        owned[np.ix_(rows, cols)] = True
    assert np.isnan(layer_w[~owned]).all() and not np.isnan(layer_w[owned]).any()


@pytest.mark.parametrize("scale", ["inverse", "none", "sqrt"])
def test_subnetwork_forward_equals_masked_and_scaled_parent(scale):
    parent = parent_model(dtype=np.float64)
    layout, plans, parts = plans_for(parent, 3, scale=scale)
    be = get_backend("numpy")
    x = np.random.default_rng(0).standard_normal((5, 6))
    rule = {"inverse": lambda k: 1 / k, "none": lambda k: 1.0, "sqrt": lambda k: k**-0.5}[scale]
    for w, plan in enumerate(plans):
        compact = Model.from_spec(plan.spec, "numpy", dtype=np.float64, initialize_params=False)
        gather(be, layout, plan, parent.params, compact.params)
        for i, s in plan.scales.items():
            compact.layers[i].input_scale = s
        got = compact.forward(x)
        # the parent with every other worker's hidden units zeroed, inputs scaled by 1/kept
        h = np.maximum(x @ parent.layers[0].params["W"] + parent.layers[0].params["b"], 0)
        mask1 = np.zeros(12)
        mask1[parts[0][w]] = 1
        h = h * mask1 * rule(len(parts[0][w]) / 12)
        h = np.tanh(h @ parent.layers[1].params["W"] + parent.layers[1].params["b"])
        mask2 = np.zeros(10)
        mask2[parts[1][w]] = 1
        h = h * mask2 * rule(len(parts[1][w]) / 10)
        expected = h @ parent.layers[2].params["W"] + parent.layers[2].params["b"]
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_gradients_through_a_subnetwork_match_finite_differences():
    parent = parent_model(dtype=np.float64)
    layout, plans, _ = plans_for(parent, 2, dropconnect=0.0)
    plan = plans[1]
    compact = Model.from_spec(plan.spec, "numpy", dtype=np.float64, initialize_params=False)
    gather(get_backend("numpy"), layout, plan, parent.params, compact.params)
    for i, s in plan.scales.items():
        compact.layers[i].input_scale = s
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((7, 6)), rng.integers(0, 4, 7)
    compact.train_step(x, y)
    analytic = compact.grads.copy()
    eps = 1e-6
    for i in rng.choice(compact.size, 60, replace=False):
        keep = compact.params[i]
        compact.params[i] = keep + eps
        up = compact.loss.forward(compact.forward(x), y)
        compact.params[i] = keep - eps
        down = compact.loss.forward(compact.forward(x), y)
        compact.params[i] = keep
        assert abs((up - down) / (2 * eps) - analytic[i]) < 1e-6 + 1e-5 * abs(analytic[i])


@pytest.mark.parametrize("workers", [2, 3])
def test_folded_scale_gives_the_same_function_and_round_trips(workers):
    """scale_at="weights": gathering s*W gives the forward of input_scale = s, and
    scatter divides s back out, so extract -> assemble returns the parent."""
    parent = parent_model(dtype=np.float64)
    before = parent.params.copy()
    be = get_backend("numpy")
    x = np.random.default_rng(0).standard_normal((5, 6))
    _, plans_in, parts = plans_for(parent, workers)
    layout, plans, _ = plans_for(parent, workers, scale_at="weights")
    blocks = []
    for plan_in, plan in zip(plans_in, plans):
        assert plan.input_scales == {} and plan.weight_scales
        folded = Model.from_spec(plan.spec, "numpy", dtype=np.float64, initialize_params=False)
        gather(be, layout, plan, parent.params, folded.params)
        scaled = Model.from_spec(plan.spec, "numpy", dtype=np.float64, initialize_params=False)
        gather(be, layout, plan_in, parent.params, scaled.params)
        for i, s in plan_in.input_scales.items():
            scaled.layers[i].input_scale = s
        np.testing.assert_allclose(folded.forward(x), scaled.forward(x), rtol=1e-12)
        blocks.append(folded.params.copy())
    parent.params[...] = 0
    scatter(be, layout, plans, blocks, parent.params)
    owned = parent.params != 0
    np.testing.assert_allclose(parent.params[owned], before[owned], rtol=1e-12)


def test_folded_scale_is_a_per_layer_learning_rate_correction():
    """One SGD step with the scale folded into the weights moves the parent's scaled
    weights by 1/s^2 of the step with input_scale = s, and everything else alike."""
    parent = parent_model(dtype=np.float64)
    be = get_backend("numpy")
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((7, 6)), rng.integers(0, 4, 7)
    deltas = {}
    for scale_at in ("input", "weights"):
        layout, plans, _ = plans_for(parent, 2, scale_at=scale_at)
        plan = plans[0]
        compact = Model.from_spec(plan.spec, "numpy", dtype=np.float64, initialize_params=False)
        gather(be, layout, plan, parent.params, compact.params)
        for i, s in plan.input_scales.items():
            compact.layers[i].input_scale = s
        compact.train_step(x, y)
        compact.params -= 0.1 * compact.grads
        after = parent.params.copy()
        scatter(be, layout, [plan], [compact.params.copy()], after)
        deltas[scale_at] = after - parent.params
    layout, plans, _ = plans_for(parent, 2)
    factor = np.ones_like(parent.params)
    for i, s in plans[0].scales.items():
        off, shape = layout.parent_slots[f"{i}.W"]
        factor[off : off + int(np.prod(shape))] = 1 / s**2
    np.testing.assert_allclose(deltas["weights"], deltas["input"] * factor, rtol=1e-9, atol=1e-15)
    assert np.abs(deltas["input"]).max() > 0


def test_unpartitionable_models_are_refused():
    from horn.layers import MSE

    with pytest.raises(HornError, match="at least two dense layers"):
        SubnetLayout(Model([Dense(3)], MSE(), 4))


# ---- multi-rank runs against a single-process simulation ---------------------------
JOB = """
name = "sub"
[data]
name = "digits"
[model]
layers = [{ type = "dense", units = 24, activation = "relu" },
          { type = "dense", units = 20, activation = "relu" },
          { type = "dense", units = 10 }]
[train]
steps = 30
batch_size = 16
lr = 0.05
momentum = 0.9
backend = "numpy"
[parallel]
local_steps = 5
"""


def simulate(job, groups, workers):
    """The same rounds in one process: the warm-up (every rank trains the whole parent,
    averaged over all ranks every local_steps), then every worker's local steps and
    assembly (and the cross-group average), then the cool-down (the whole parent again,
    from fresh momentum), with no MPI at all."""
    from horn.data import load_dataset
    from horn.optim import make_optimizer
    from horn.parallel import derive_seed
    from horn.runner import build, shard

    data = load_dataset(job.data)
    be = get_backend("numpy")
    ranks = []
    for g in range(groups):
        peer = type("P", (), {"groups": groups, "group": g})()
        for w in range(workers):
            ranks.append(build(job, shard(data, peer, job.train.seed), be, g, w))
    parents = [ranks[g * workers][0] for g in range(groups)]
    outer = job.parallel.of("average")
    anchor, velocity = parents[0].params.astype(np.float64), 0.0
    p, settings, steps = job.parallel, job.parallel.of("subnet"), job.train.steps
    layout = SubnetLayout(parents[0], scale=settings.scale, scale_at=settings.scale_at)
    schedule = ranks[0][2]
    warmup, cooldown = settings.warmup_steps, settings.cooldown_steps

    def whole_parents(first, last):
        for start in range(first, last, p.local_steps):
            for model, opt, _, stream, _ in ranks:
                for step in range(start, min(start + p.local_steps, last)):
                    model.train_step(*stream.next())
                    opt.step(schedule(step))
            mean = np.mean([r[0].params for r in ranks], axis=0, dtype=np.float64)
            for r in ranks:
                r[0].params[...] = mean

    whole_parents(0, warmup)
    for r in range((steps - warmup - cooldown) // p.local_steps):
        for g in range(groups):
            rng = np.random.default_rng(derive_seed(job.train.seed + r, g, 1 << 20))
            parts = [partition(n, workers, settings.partition, rng) for n in layout.sizes]
            plans = [layout.plan(parts, w) for w in range(workers)]
            blocks = []
            for w, plan in enumerate(plans):
                compact = Model.from_spec(plan.spec, be, initialize_params=False)
                gather(be, layout, plan, parents[g].params, compact.params)
                for i, s in plan.input_scales.items():
                    compact.layers[i].input_scale = s
                opt = make_optimizer(job.train, compact)
                stream = ranks[g * workers + w][3]
                first = warmup + r * p.local_steps
                for step in range(first, first + p.local_steps):
                    compact.train_step(*stream.next())
                    opt.step(schedule(step))
                blocks.append(compact.params)
            scatter(be, layout, plans, blocks, parents[g].params)
        if groups > 1:
            mean = np.mean([m.params for m in parents], axis=0, dtype=np.float64)
            if outer.outer == "nesterov":  # the parents' anchor steps on anchor - mean
                delta = anchor - mean
                velocity = outer.outer_momentum * velocity + delta
                mean = anchor = anchor - outer.outer_lr * (delta + outer.outer_momentum * velocity)
            for m in parents:
                m.params[...] = mean
    if cooldown:
        for i, (model, opt, *_) in enumerate(ranks):
            model.params[...] = parents[i // workers].params
            for buf in opt.state().values():
                buf[...] = 0
        whole_parents(steps - cooldown, steps)
    return parents[0].params


@pytest.mark.parametrize(
    "groups,workers,extra",
    [
        (1, 2, ""),
        (1, 4, ""),
        (2, 2, ""),
        (1, 2, 'scale_at = "weights"\nwarmup_steps = 10\n'),
        (2, 2, 'scale_at = "weights"\nwarmup_steps = 10\n'),
        (2, 2, "[parallel.average]\nouter = 'nesterov'\nouter_lr = 0.7\n"),
        (1, 2, "warmup_steps = 5\ncooldown_steps = 10\n"),
        (2, 2, 'scale_at = "weights"\ncooldown_steps = 10\n'),
    ],
)
def test_multi_rank_parents_match_a_single_process_simulation(tmp_path, groups, workers, extra):
    from horn.jobs import load_job

    path = tmp_path / "sub.toml"
    path.write_text(
        textwrap.dedent(JOB) + f"groups = {groups}\nworkers = {workers}\n"
        f"[parallel.subnet]\npartition = 'irregular'\n{extra}"
        f"[log]\ndir = '{tmp_path}'\n"
    )
    run_dir, saved = train_on_ranks(path, groups * workers, timeout=120)
    expected = simulate(load_job(path), groups, workers)
    np.testing.assert_allclose(saved.params, expected, rtol=1e-5, atol=1e-6)
    rows = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    rounds = [r for r in rows if "partition_sizes" in r]
    settings = load_job(path).parallel.of("subnet")
    assert len(rounds) == (30 - settings.warmup_steps - settings.cooldown_steps) // 5 and all(
        sum(s) == n for r in rounds for s, n in zip(r["partition_sizes"], [24, 20])
    )
    assert all(r["bytes_sent"] > 0 for r in rows if "superstep" in r)


# ---- channel-partitioned sub-networks of CNNs (issue 15) ---------------------------
def cnn_parent(backend="numpy", dtype=np.float32, head="flatten"):
    """conv -> batch norm -> max pool -> conv -> avg pool -> flatten -> dense -> dense (or a
    global average pool head): every partition-protocol role on images."""
    from horn.layers import AvgPool2d, BatchNorm, Conv2d, Flatten, GlobalAvgPool, MaxPool2d

    layers = [
        Conv2d(6, 3, padding=1, activation="relu"),
        BatchNorm(),
        MaxPool2d(2),
        Conv2d(5, 3, padding=1, activation="tanh"),
        AvgPool2d(2),
    ]
    layers += (
        [Flatten(), Dense(7, "relu"), Dense(3)]
        if head == "flatten"
        else [Conv2d(3, 1), GlobalAvgPool()]
    )
    parent = Model(layers, SoftmaxCrossEntropy(), (2, 8, 8), backend, seed=3, dtype=dtype)
    parent.params[...] = np.random.default_rng(4).standard_normal(parent.size)  # stats too
    var = parent.layers[1].params["running_var"]
    var[...] = np.abs(var) + 0.5
    return parent


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("workers,head", [(2, "flatten"), (3, "flatten"), (2, "global")])
def test_cnn_extract_then_assemble_returns_the_parent_bit_for_bit(backend, workers, head):
    from tests.test_partition_protocol import extract_then_assemble

    parent = cnn_parent(backend, head=head)
    layout, plans, parts = plans_for(parent, workers)
    assert layout.sizes == ([6, 5, 7] if head == "flatten" else [6, 5])
    before, after = extract_then_assemble(parent, layout, plans, backend)
    owned = ~np.isnan(after)
    assert np.array_equal(after[owned], before[owned])
    for i in (1,):  # batch norm: every channel's parameters and statistics come back whole
        for name in ("gamma", "beta", "running_mean", "running_var"):
            off, shape = layout.parent_slots[f"{i}.{name}"]
            assert owned[off : off + shape[0]].all(), name
    w2 = after[slice(*(lambda o, s: (o, o + int(np.prod(s))))(*layout.parent_slots["3.W"]))]
    lost = np.isnan(w2.reshape(5, 6, 3, 3))  # conv 2 keeps only (own out, own in) channels
    for w in range(workers):
        assert not lost[np.ix_(parts[1][w], parts[0][w])].any()
    assert lost.all(axis=(2, 3)).sum() == 5 * 6 - sum(
        len(a) * len(b) for a, b in zip(parts[1], parts[0])
    )
    compact = Model.from_spec(plans[0].spec, backend, initialize_params=False)
    assert [s.get("channels") for s in plans[0].spec["layers"][:4:3]] == [
        len(parts[0][0]),
        len(parts[1][0]),
    ] and compact.out_features == parent.out_features


@pytest.mark.parametrize("head", ["flatten", "global"])
@pytest.mark.parametrize("scale", ["inverse", "sqrt"])
def test_cnn_subnetwork_forward_equals_the_channel_masked_parent(head, scale):
    from tests.test_partition_protocol import masked_parent_forward

    parent = cnn_parent(dtype=np.float64, head=head)
    layout, plans, parts = plans_for(parent, 3, scale=scale)
    rule = {"inverse": lambda k: 1 / k, "sqrt": lambda k: k**-0.5}[scale]
    x = np.random.default_rng(0).standard_normal((4, 2, 8, 8))
    for w, plan in enumerate(plans):
        compact = Model.from_spec(plan.spec, "numpy", dtype=np.float64, initialize_params=False)
        gather(get_backend("numpy"), layout, plan, parent.params, compact.params)
        for i, s in plan.input_scales.items():
            compact.layers[i].input_scale = s
        np.testing.assert_allclose(
            compact.forward(x),
            masked_parent_forward(layout, parts, w, x, rule),
            rtol=1e-10,
            atol=1e-12,
        )


def test_conv_input_scale_passes_check_layer():
    import horn
    from horn.layers import Conv2d

    layer = Conv2d(3, 3, padding=1, activation="relu")
    layer.input_scale = 2.5  # check_layer's rebuilt copy keeps it
    horn.check_layer(layer, in_features=(2, 6, 5))


def test_cnn_folded_scale_gives_the_same_function():
    parent = cnn_parent(dtype=np.float64)
    be = get_backend("numpy")
    x = np.random.default_rng(1).standard_normal((3, 2, 8, 8))
    _, plans_in, _ = plans_for(parent, 2)
    layout, plans, _ = plans_for(parent, 2, scale_at="weights")
    assert set(plans[0].weight_scales) == {"3.W", "6.W", "7.W"}  # W after the first: no b
    for plan_in, plan in zip(plans_in, plans):
        folded = Model.from_spec(plan.spec, "numpy", dtype=np.float64, initialize_params=False)
        gather(be, layout, plan, parent.params, folded.params)
        scaled = Model.from_spec(plan.spec, "numpy", dtype=np.float64, initialize_params=False)
        gather(be, layout, plan_in, parent.params, scaled.params)
        for i, s in plan_in.input_scales.items():
            scaled.layers[i].input_scale = s
        np.testing.assert_allclose(folded.forward(x), scaled.forward(x), rtol=1e-10)


CNN_JOB = """
name = "cnn-sub"
[data]
name = "digits"
[model]
layers = [{ type = "conv2d", channels = 8, padding = 1, activation = "relu" },
          { type = "batch_norm" },
          { type = "conv2d", channels = 8, padding = 1, activation = "relu" },
          { type = "max_pool2d" }, { type = "flatten" },
          { type = "dense", units = 16, activation = "relu" }, { type = "dense", units = 10 }]
[train]
steps = 30
batch_size = 16
lr = 0.03
momentum = 0.0
backend = "numpy"
[parallel]
local_steps = 5
"""
CNN_SUBNET = "[parallel.subnet]\npartition = 'irregular'\n"


@pytest.mark.parametrize("groups,workers,extra", [(1, 4, 'scale = "sqrt"\n'), (2, 2, "")])
def test_a_cnn_trains_in_channel_sub_networks_across_ranks(tmp_path, groups, workers, extra):
    """Every hidden conv layer's output channels (and the dense layer's units) are shared
    out; the parent saved by rank 0 equals the single-process simulation, and it trained."""
    from horn.data import load_dataset
    from horn.jobs import load_job

    path = tmp_path / "cnn.toml"
    path.write_text(
        textwrap.dedent(CNN_JOB) + f"groups = {groups}\nworkers = {workers}\n"
        f'{CNN_SUBNET}scale_at = "weights"\nwarmup_steps = 10\n{extra}'
        f"[log]\ndir = '{tmp_path}'\n"
    )
    run_dir, saved = train_on_ranks(path, groups * workers, timeout=180)
    job = load_job(path)
    np.testing.assert_allclose(saved.params, simulate(job, groups, workers), rtol=1e-5, atol=1e-6)
    with open(f"{run_dir}/metrics.jsonl") as f:
        rounds = [r for r in map(json.loads, f) if "partition_sizes" in r]
    assert len(rounds) == (30 - job.parallel.of("subnet").warmup_steps) // 5
    assert all([sum(s) for s in r["partition_sizes"]] == [8, 8, 16] for r in rounds)
    data = load_dataset(job.data)
    untrained = Model.from_spec(saved.spec(), seed=job.train.seed)
    loss = [m.loss.forward(m.forward(data.x_train), data.y_train) for m in (untrained, saved)]
    assert loss[1] < loss[0] - 0.1, loss  # it trained (a parent left as it was: equal)


def test_reassembled_cnn_parent_equals_the_scattered_pieces_on_every_rank(tmp_path):
    """tests/mpi_progs/cnn_subnet.py on 4 ranks (1 x 4), 3 rounds: bit-exact bookkeeping."""
    from tests.mpirun import PROGS

    path = tmp_path / "cnn.toml"
    path.write_text(textwrap.dedent(CNN_JOB) + "groups = 1\nworkers = 4\n" + CNN_SUBNET)
    result = mpirun(4, [PROGS / "cnn_subnet.py", path, 3], timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [
        json.loads(line[7:]) for line in result.stdout.splitlines() if line.startswith("RESULT ")
    ]
    assert sorted(r["rank"] for r in rows) == [0, 1, 2, 3]
    for row in rows:
        assert row["finite"] and len(row["rounds"]) == 3
        for check in row["rounds"]:
            assert check["block_mismatches"] == 0 and check["shared_is_mean"]
            assert check["unheld"] > 0 and check["unheld_changed"] == 0
            assert check["through_params"] == 4 and check["through_params_held"]
    assert len({r["parent_sha256"] for r in rows}) == 1  # every rank holds the same parent


@pytest.mark.parametrize("head", ["flatten", "global"])
def test_the_cnn_benchmarks_matmul_floor_runs_exactly_the_counted_flops(head):
    """bench/subnet.py --net cnn's "matmuls alone" step does the matmuls whose FLOPs make
    its ideal fraction: no more, no fewer (a shape that cannot multiply raises)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "subnet.py"
    spec = importlib.util.spec_from_file_location("bench_subnet", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    parent = cnn_parent(head=head)
    layout = SubnetLayout(parent)
    parts = [partition(n, 2, "balanced", np.random.default_rng(0)) for n in layout.sizes]
    compact = Model.from_spec(layout.plan(parts, 0).spec, "numpy", initialize_params=False)
    for model in (parent, compact):
        calls = bench.cnn_matmul_calls(model, batch=5)
        flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b, _ in calls)
        assert flops == bench.cnn_step_flops(model, batch=5)
        bench.cnn_matmuls(model, batch=5)()
