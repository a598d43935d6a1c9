"""The partition protocol (horn.layer.Layer): sub-networks learn how to split a layer
only from it. A user's layer with its own parameter names (tests/user_layers.py) is
split, reassembled bit for bit, computes the masked parent, and trains in sub-networks
across mpirun ranks exactly as a single-process simulation; layers without the protocol,
or with a wrong declaration, are refused with one line."""

import json
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import horn
from horn.backends import get_backend
from horn.errors import HornError
from horn.layers import MSE, Dense, Dropout, SoftmaxCrossEntropy, Tanh
from horn.model import Model
from horn.partition import PARTITION_KINDS, partition
from horn.subnet import SubnetLayout, gather, scatter
from tests.mpirun import train_on_ranks
from tests.test_subnet import simulate
from tests.user_layers import Affine, Gain

AFFINE = "tests.user_layers:Affine"


def plans_for(parent, workers, kind="irregular", seed=1, **options):
    layout = SubnetLayout(parent, **options)
    rng = np.random.default_rng(seed)
    weights = list(range(1, workers + 1))  # for kind = "weighted"
    parts = [partition(n, workers, kind, rng, weights) for n in layout.sizes]
    return layout, [layout.plan(parts, w) for w in range(workers)], parts


def masked_parent_forward(layout, parts, worker, x, scale=lambda k: 1.0 / k):
    """The parent's output with every unit another worker owns zeroed where it enters the
    next split layer, and the kept ones scaled by the rule: what worker's compact
    sub-network must compute. Units follow the layers' own map_partition; on images the
    units are the channels (axis 1)."""
    kept, fraction, j = None, None, 0
    for layer in layout.parent.layers:
        if layer.partition_role == "split":
            if kept is not None:
                mask = np.zeros(x.shape[1])
                mask[kept] = scale(fraction)
                x = x * mask.reshape((1, -1) + (1,) * (x.ndim - 2))
            x = layer.forward(x, False)
            if j < len(layout.sizes):
                kept, fraction = parts[j][worker], len(parts[j][worker]) / layout.sizes[j]
            else:
                kept = None
            j += 1
        else:
            x = layer.forward(x, False)
            kept = None if kept is None else layer.map_partition(kept)
    return x


def extract_then_assemble(parent, layout, plans, backend):
    """Gather every worker's block from the parent, poison the parent, scatter back."""
    be = get_backend(backend)
    blocks = []
    for plan in plans:
        block = be.xp.empty(plan.size, parent.dtype)
        gather(be, layout, plan, parent.params, block)
        blocks.append(block)
    before = parent.params.copy()
    parent.params[...] = np.nan
    scatter(be, layout, plans, blocks, parent.params)
    return before, parent.params


def test_the_user_layer_passes_check_layer():
    assert "gradients" in " ".join(horn.check_layer(Affine(5, "relu"), in_features=4))


def test_the_protocol_defaults_mean_not_partitionable():
    layer = horn.Layer()
    assert layer.partition_role is None and layer.input_scale == 1.0
    assert layer.partition_axes() == {} and layer.dropconnect_spec({}, 0.5) is None
    parent = Model([Dense(8, "relu"), Gain(), Dense(3)], SoftmaxCrossEntropy(), 4)
    with pytest.raises(
        HornError,
        match=r"^sub-networks: layer 1 \(tests\.user_layers:Gain\) "
        r"does not implement the partition protocol",
    ):
        SubnetLayout(parent)


class _Declares(Affine):
    """Affine with a wrong partition declaration, chosen by ``case``."""

    def __init__(self, width, case="missing"):
        super().__init__(width)
        self.case = case

    def partition_axes(self):
        return {
            "missing": {"kernel": (1, 0)},
            "axis": {"kernel": (1, 2), "offset": (None, 0)},
            "input": {"kernel": (0, 1), "offset": (None, 0)},
            "outputs": {"kernel": (1, None), "offset": (None, None)},
        }[self.case]


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", r"partition_axes\(\) must name every parameter \['kernel', 'offset'\]"),
        ("axis", r"partition_axes\(\)\['kernel'\] must be \(input axis, output axis\)"),
        (
            "input",
            r"axis 0 of parameter 'kernel' \(shape \(6, 5\)\) is declared to follow the "
            r"layer's 5 input units, but has 6 entries",
        ),
        ("outputs", r"must give its parameters one output width, found none"),
    ],
)
def test_a_wrong_declaration_is_a_one_line_error(case, message):
    parent = Model([Dense(5, "relu"), _Declares(6, case), Dense(3)], MSE(), 4, seed=1)
    with pytest.raises(HornError, match=message) as err:
        SubnetLayout(parent)
    assert "\n" not in str(err.value)


def test_dropconnect_is_refused_for_a_layer_without_a_variant():
    parent = Model([Affine(6, "relu"), Dense(3)], MSE(), 4)
    with pytest.raises(
        HornError,
        match=r"layer 0 \(tests\.user_layers:Affine\) has no "
        r"DropConnect variant",
    ):
        SubnetLayout(parent, dropconnect=0.3)
    plan = plans_for(Model([Dense(6), Dense(3)], MSE(), 4), 2, dropconnect=0.3)[1][0]
    assert [s["type"] for s in plan.spec["layers"]] == ["dropconnect_dense"] * 2


def test_a_loss_says_whether_it_predicts_probabilities():
    assert SoftmaxCrossEntropy.predicts_probabilities and not MSE.predicts_probabilities
    assert not horn.Loss.predicts_probabilities


# ---- generated networks of built-in and user layers ----------------------------------
LAYER = st.sampled_from(["dense", "affine"])


@st.composite
def networks(draw):
    """A parent of 2-4 split layers (Dense or the user's Affine, hidden widths >= workers),
    through layers between some of them, and a partition of it."""
    workers = draw(st.integers(2, 4))
    kinds = draw(st.lists(LAYER, min_size=2, max_size=4))
    widths = [draw(st.integers(workers, 9)) for _ in kinds[:-1]] + [draw(st.integers(1, 4))]
    layers = []
    for kind, width in zip(kinds, widths):
        layers.append(Dense(width, "relu") if kind == "dense" else Affine(width, "relu"))
        if draw(st.booleans()):
            layers.append(draw(st.sampled_from([Tanh, lambda: Dropout(0.3)]))())
    inputs = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    return layers, inputs, workers, draw(st.sampled_from(PARTITION_KINDS)), seed


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(net=networks(), backend=st.sampled_from(["numpy", "numba"]))
def test_extract_then_assemble_is_bit_exact_for_any_mix(net, backend):
    layers, inputs, workers, kind, seed = net
    parent = Model(layers, MSE(), inputs, backend, seed=seed)
    parent.params[...] = np.random.default_rng(seed).standard_normal(parent.size)
    layout, plans, _ = plans_for(parent, workers, kind, seed)
    before, after = extract_then_assemble(parent, layout, plans, backend)
    owned = ~np.isnan(after)
    assert np.array_equal(after[owned], before[owned])
    for name, (off, shape) in layout.parent_slots.items():  # exactly cross-worker entries lost
        lost = np.isnan(after[off : off + int(np.prod(shape))]).reshape(shape)
        index, pname = name.split(".")
        axes = layout.axes[int(index)][pname]
        assert not lost.any() or None not in axes, name


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(net=networks(), scale=st.sampled_from(["inverse", "sqrt", "none"]))
def test_compact_forward_equals_the_masked_parent_for_any_mix(net, scale):
    layers, inputs, workers, kind, seed = net
    parent = Model(layers, MSE(), inputs, dtype=np.float64, seed=seed)
    layout, plans, parts = plans_for(parent, workers, kind, seed, scale=scale)
    rule = {"inverse": lambda k: 1 / k, "sqrt": lambda k: k**-0.5, "none": lambda k: 1.0}
    x = np.random.default_rng(seed).standard_normal((5, inputs))
    for w, plan in enumerate(plans):
        compact = Model.from_spec(plan.spec, "numpy", dtype=np.float64, initialize_params=False)
        gather(get_backend("numpy"), layout, plan, parent.params, compact.params)
        for i, s in plan.input_scales.items():
            compact.layers[i].input_scale = s
        np.testing.assert_allclose(
            compact.forward(x),
            masked_parent_forward(layout, parts, w, x, rule[scale]),
            rtol=1e-12,
            atol=1e-12,
        )


def test_the_user_layer_folds_the_scale_into_its_kernel_only():
    parent = Model([Affine(8, "relu"), Affine(6, "relu"), Dense(3)], MSE(), 4, dtype=np.float64)
    layout, plans, _ = plans_for(parent, 2, scale_at="weights")
    assert set(plans[0].weight_scales) == {"1.kernel", "2.W"}


# ---- the user's layer trains in sub-networks across ranks ---------------------------
JOB = f"""
name = "user-layer-sub"
[data]
name = "digits"
[model]
imports = ["tests.user_layers"]
layers = [{{ type = "{AFFINE}", width = 24, activation = "relu" }},
          {{ type = "tanh" }},
          {{ type = "dense", units = 20, activation = "relu" }},
          {{ type = "{AFFINE}", width = 10 }}]
[train]
steps = 60
batch_size = 16
lr = 0.1
momentum = 0.9
backend = "numpy"
[parallel]
local_steps = 10
"""


@pytest.mark.parametrize(
    "groups,workers,extra", [(1, 4, ""), (2, 2, 'scale_at = "weights"\nwarmup_steps = 10\n')]
)
def test_a_user_layer_trains_in_sub_networks_across_ranks(tmp_path, groups, workers, extra):
    from horn.data import load_dataset
    from horn.jobs import load_job

    path = tmp_path / "sub.toml"
    path.write_text(
        textwrap.dedent(JOB) + f"groups = {groups}\nworkers = {workers}\n"
        f"[parallel.subnet]\npartition = 'irregular'\n{extra}"
        f"[log]\ndir = '{tmp_path}'\n"
    )
    run_dir, saved = train_on_ranks(path, groups * workers, timeout=120)
    assert saved.layers[0].type_name is None and type(saved.layers[0]).__name__ == "Affine"
    job = load_job(path)
    np.testing.assert_allclose(saved.params, simulate(job, groups, workers), rtol=1e-5, atol=1e-6)
    with open(f"{run_dir}/metrics.jsonl") as f:
        rounds = [r for r in map(json.loads, f) if "partition_sizes" in r]
    assert len(rounds) == (60 - job.parallel.of("subnet").warmup_steps) // 10
    assert all([sum(s) for s in r["partition_sizes"]] == [24, 20] for r in rounds)
    data = load_dataset(job.data)
    untrained = Model.from_spec(saved.spec(), seed=job.train.seed)
    loss = [m.loss.forward(m.forward(data.x_train), data.y_train) for m in (untrained, saved)]
    assert loss[1] < loss[0] - 0.05, loss  # it trained (a parent left as it was: equal)
