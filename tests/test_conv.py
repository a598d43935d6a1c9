"""Convolution, pooling, flatten and batch norm: kernels against the numpy reference and
an independent direct convolution, every layer through check_layer, and the shape rule."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import horn
from horn import memory
from horn.backends import get_backend
from horn.backends.base import out_size
from horn.backends.numba_backend import PARALLEL_MIN, SAMPLES_PER_TASK
from horn.data import load_dataset
from horn.errors import HornError
from horn.jobs import job_from_dict, load_job, model_spec
from horn.layers import (
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    MaxPool2d,
    ReLU,
    SoftmaxCrossEntropy,
    Tanh,
)
from horn.model import Model
from horn.optim import SGD
from horn.runner import build, check_fit, input_shape
from tests.cli import ROOT
from tests.cli import horn as horn_cli
from tests.mpirun import PROGS, mpirun
from tests.test_resume import run_dir_in, same_run

REF, NB = get_backend("numpy"), get_backend("numba")
ACTS = ("identity", "relu", "tanh", "sigmoid")
KERNEL_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None)


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def direct_conv(x, w, b, stride, pad):
    """Convolution by its definition (float64): a sum over kernel offsets of shifted images."""
    (sh, sw), (ph, pw) = stride, pad
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = out_size(h, kh, sh, ph), out_size(wd, kw, sw, pw)
    padded = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    padded[:, :, ph : ph + h, pw : pw + wd] = x
    y = np.zeros((n, o, oh, ow)) + b[None, :, None, None]
    for i in range(kh):
        for j in range(kw):
            patch = padded[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.float64))
    return y


@st.composite
def windows(draw, max_pad=2):
    """A batch shape and a window (kernel, stride, padding) that fits it."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = tuple(draw(st.integers(0, min(max_pad, k // 2 if max_pad < 2 else 2))) for k in kernel)
    h = draw(st.integers(max(1, kernel[0] - 2 * pad[0]), 8))
    w = draw(st.integers(max(1, kernel[1] - 2 * pad[1]), 8))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return (n, c, h, w), kernel, stride, pad


@KERNEL_SETTINGS
@given(windows(), st.integers(1, 4), st.sampled_from(["numpy", "numba"]), st.integers(0, 99))
def test_conv2d_im2col_equals_direct_convolution(window, channels, backend, seed):
    shape, kernel, stride, pad = window
    x = rand(shape, seed)
    layer = Conv2d(channels, list(kernel), list(stride), list(pad))
    model = Model([layer, Flatten()], SoftmaxCrossEntropy(), shape[1:], backend=backend, seed=seed)
    b = rand(channels, seed + 1)
    layer.params["b"][...] = b
    got = layer.forward(x, train=False)
    want = direct_conv(x, layer.params["W"], b, stride, pad)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    flat = model.forward(x.reshape(len(x), -1))  # flat rows are reshaped to images: a view
    np.testing.assert_array_equal(flat, got.reshape(len(x), -1))


def im2col(backend, x, kernel, stride, pad):
    n, c, h, w = x.shape
    oh, ow = out_size(h, kernel[0], stride[0], pad[0]), out_size(w, kernel[1], stride[1], pad[1])
    cols = np.full((c * kernel[0] * kernel[1], n * oh * ow), np.nan, np.float32)
    backend.im2col(x, kernel, stride, pad, cols)
    return cols


@KERNEL_SETTINGS
@given(windows(), st.integers(0, 99))
def test_im2col_col2im_match_the_reference_and_are_adjoint(window, seed):
    shape, kernel, stride, pad = window
    x = rand(shape, seed)
    cols = im2col(NB, x, kernel, stride, pad)
    np.testing.assert_array_equal(cols, im2col(REF, x, kernel, stride, pad))
    c = rand(cols.shape, seed + 1)
    dx1, dx2 = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
    NB.col2im(c, kernel, stride, pad, dx1)
    REF.col2im(c, kernel, stride, pad, dx2)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-5, atol=1e-5)
    # <im2col(x), c> = <x, col2im(c)>: col2im is the input gradient of the lowering
    assert np.isclose(
        np.vdot(cols.astype(np.float64), c),
        np.vdot(x.astype(np.float64), dx1),
        rtol=1e-4,
        atol=1e-4,
    )


@st.composite
def full_row_windows(draw):
    """Stride-1 windows whose output rows are as wide as the input's (numba's flat-shift
    lowering): odd kernel widths with "same" padding, any kernel height and padding;
    batches of a few samples, or of one or more blocks of samples and a partial one."""
    blocks = st.integers(SAMPLES_PER_TASK - 1, 2 * SAMPLES_PER_TASK + 1)
    n, c = draw(st.one_of(st.integers(1, 3), blocks)), draw(st.integers(1, 3))
    kw = draw(st.sampled_from([1, 3, 5]))
    kh, ph = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 8))
    w = draw(st.integers(1, 8))
    return (n, c, h, w), (kh, kw), (ph, kw // 2)


@KERNEL_SETTINGS
@given(full_row_windows(), st.integers(0, 99), st.booleans())
def test_full_row_lowering_equals_the_general_kernels_bit_for_bit(window, seed, parallel):
    """numba's stride-1 fast path (one shifted slice per tap) against its general
    row-by-row kernels, serial and parallel: the same columns, the same sums."""
    from horn.backends import numba_backend as nb

    shape, kernel, pad = window
    x = rand(shape, seed)
    cols = im2col(NB, x, kernel, (1, 1), pad)
    fast = np.full(cols.shape, np.nan, np.float32)
    general = np.full(cols.shape, np.nan, np.float32)
    nb._im2col_full_rows[parallel](x, *kernel, *pad, fast)
    nb._im2col[parallel](x, *kernel, 1, 1, *pad, general)
    np.testing.assert_array_equal(fast, general)
    assert nb._full_rows(kernel, [1, 1], pad)  # the backend takes this path for the window
    np.testing.assert_array_equal(cols, general)  # what the backend's im2col gives
    c = rand(cols.shape, seed + 1)
    dx_fast, dx_general = (np.full(shape, np.nan, np.float32) for _ in range(2))
    nb._col2im_full_rows[parallel](c, *kernel, *pad, dx_fast)
    nb._col2im[parallel](c, *kernel, 1, 1, *pad, dx_general)
    np.testing.assert_array_equal(dx_fast, dx_general)


def pool_out(x, kernel, stride, pad, dtype=np.float32):
    n, c, h, w = x.shape
    return np.full(
        (
            n,
            c,
            out_size(h, kernel[0], stride[0], pad[0]),
            out_size(w, kernel[1], stride[1], pad[1]),
        ),
        -7,
        dtype,
    )


@KERNEL_SETTINGS
@given(windows(max_pad=1), st.integers(0, 99), st.booleans())
def test_pooling_kernels_match_the_reference(window, seed, ties):
    shape, kernel, stride, pad = window
    pad = tuple(min(p, k // 2) for p, k in zip(pad, kernel))  # what the layers allow
    x = rand(shape, seed)
    if ties:  # equal values: the first maximum in row-major order wins on every backend
        x = np.round(x)
    outs, args = [], []
    for backend in (NB, REF):
        out, arg = pool_out(x, kernel, stride, pad), pool_out(x, kernel, stride, pad, np.int32)
        backend.max_pool(x, kernel, stride, pad, out, arg)
        outs.append(out)
        args.append(arg)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(args[0], args[1])
    dy = rand(outs[0].shape, seed + 2)
    grads = []
    for backend in (NB, REF):
        dx = np.full(shape, np.nan, np.float32)
        backend.max_pool_backward(dy, args[0], kernel, stride, pad, dx)
        grads.append(dx)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6, atol=1e-6)
    means, backs = [], []
    for backend in (NB, REF):
        out, dx = pool_out(x, kernel, stride, pad), np.full(shape, np.nan, np.float32)
        backend.avg_pool(x, kernel, stride, pad, out)
        backend.avg_pool_backward(dy, kernel, stride, pad, dx)
        means.append(out)
        backs.append(dx)
    np.testing.assert_allclose(means[0], means[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backs[0], backs[1], rtol=1e-5, atol=1e-6)


# shapes below and above the serial/parallel switch; 2x2 stride 2 has its own kernel
LARGE = [
    ((2, 3, 7, 9), (2, 2), (2, 2), (0, 0)),
    ((16, 8, 28, 27), (2, 2), (2, 2), (0, 0)),
    ((16, 8, 28, 28), (3, 3), (1, 1), (1, 1)),
    ((8, 16, 15, 14), (3, 2), (2, 1), (1, 1)),
]
assert max(np.prod(s) for s, *_ in LARGE) >= PARALLEL_MIN


@pytest.mark.parametrize("shape,kernel,stride,pad", LARGE)
def test_kernels_on_large_inputs(shape, kernel, stride, pad):
    x = rand(shape, 5)
    np.testing.assert_array_equal(
        im2col(NB, x, kernel, stride, pad), im2col(REF, x, kernel, stride, pad)
    )
    out = [pool_out(x, kernel, stride, pad) for _ in range(2)]
    arg = [pool_out(x, kernel, stride, pad, np.int32) for _ in range(2)]
    NB.max_pool(x, kernel, stride, pad, out[0], arg[0])
    REF.max_pool(x, kernel, stride, pad, out[1], arg[1])
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(arg[0], arg[1])


@pytest.mark.parametrize("n,o,p", [(2, 3, 5), (64, 32, 196)])
@pytest.mark.parametrize("act", ACTS)
def test_conv_epilogue_and_its_backward(n, o, p, act):
    z, b = rand((o, n * p), 1), rand(o, 2)
    ys = [np.full((n, o, p), np.nan, np.float32) for _ in range(2)]
    NB.bias_act_nchw(z, b, act, ys[0])
    REF.bias_act_nchw(z, b, act, ys[1])
    np.testing.assert_allclose(ys[0], ys[1], rtol=1e-5, atol=1e-6)
    dy = rand((n, o, p), 3)
    dz = [np.full((o, n * p), np.nan, np.float32) for _ in range(2)]
    db = [np.full(o, np.nan, np.float32) for _ in range(2)]
    NB.act_backward_nchw(dy, ys[1], act, dz[0], db[0])
    REF.act_backward_nchw(dy, ys[1], act, dz[1], db[1])
    np.testing.assert_allclose(dz[0], dz[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(db[0], db[1], rtol=1e-4, atol=1e-4)


LAYERS = [
    (Conv2d(4, 3, 1, 1, "relu"), (2, 6, 5)),
    (Conv2d(3, [2, 3], [2, 1], [0, 1], "tanh"), (2, 7, 6)),
    (Conv2d(2, 1, activation="sigmoid", init="xavier"), (3, 4, 4)),
    (Conv2d(2, 3, bias=False), (1, 5, 5)),
    (MaxPool2d(2), (3, 6, 6)),
    (MaxPool2d(2), (2, 5, 7)),
    (MaxPool2d(3, 2, 1), (2, 7, 7)),
    (AvgPool2d(2), (3, 6, 5)),
    (AvgPool2d([3, 2], [2, 1], [1, 0]), (2, 7, 7)),
    (GlobalAvgPool(), (3, 4, 5)),
    (Flatten(), (3, 4, 5)),
    (Flatten(), 6),
    (BatchNorm(), (3, 4, 5)),
    (BatchNorm(0.5, 1e-3), 6),
    (ReLU(), (2, 3, 4)),
    (Tanh(), (2, 3, 4)),
    (Dropout(0.3), (2, 3, 4)),  # any shape
]


@pytest.mark.parametrize("layer,shape", LAYERS, ids=lambda v: repr(v))
def test_image_layers_pass_check_layer(layer, shape):
    passed = horn.check_layer(layer, in_features=shape)
    assert "gradients (finite differences, float64)" in passed and "backend numba" in passed


@pytest.mark.parametrize(
    "bad,message",
    [
        (lambda: Conv2d(0), "channels must be a positive integer"),
        (lambda: Conv2d(4, kernel=0), "kernel must be an integer >= 1"),
        (lambda: Conv2d(4, padding=[1, 2, 3]), "padding must be an integer >= 0 or a pair"),
        (lambda: MaxPool2d(2, padding=2), "padding must be at most half the kernel"),
        (lambda: BatchNorm(momentum=0), "momentum must be in"),
    ],
)
def test_bad_options_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


def test_layers_refuse_samples_of_the_wrong_rank_and_oversized_windows():
    with pytest.raises(
        HornError,
        match=r"layer 0 \(conv2d\) takes samples of 3 axes, found "
        r"samples of shape 784: set model.inputs",
    ):
        Model([Conv2d(4)], SoftmaxCrossEntropy(), 784)
    with pytest.raises(
        HornError,
        match=r"layer 1 \(dense\) takes flat vectors, found "
        r"samples of shape \(4, 3, 3\): put a flatten layer",
    ):
        Model([Conv2d(4, padding=1), Dense(3)], SoftmaxCrossEntropy(), (1, 3, 3))
    with pytest.raises(
        HornError,
        match=r"layer 0 \(conv2d\): conv2d: a 5x5 window with "
        r"padding .* does not fit a 3x3",
    ):
        Model([Conv2d(4, 5), Flatten()], SoftmaxCrossEntropy(), (1, 3, 3))


def cnn(backend="numpy", seed=0, shape=(1, 8, 8)):
    layers = [
        Conv2d(4, 3, padding=1, activation="relu"),
        BatchNorm(),
        MaxPool2d(2),
        Conv2d(6, 3, padding=1, activation="relu"),
        GlobalAvgPool(),
        Dense(10),
    ]
    return Model(layers, SoftmaxCrossEntropy(), shape, backend=backend, seed=seed)


def test_a_cnn_model_round_trips_through_its_spec_and_file(tmp_path):
    model = cnn()
    assert model.in_features == (1, 8, 8) and model.input_size == 64
    assert model.spec()["in_features"] == [1, 8, 8]
    x = rand((5, 64))
    model.save(tmp_path / "m.npz")
    loaded, _ = Model.load(tmp_path / "m.npz")
    assert loaded.in_features == (1, 8, 8)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_first_layer_skips_the_input_gradient_and_numba_trains_like_numpy():
    x, y = rand((16, 64), 3), np.arange(16) % 10
    models = [cnn("numpy"), cnn("numba")]
    opts = [SGD(m, momentum=0.9) for m in models]
    for _ in range(3):
        losses = [m.train_step(x, y) for m in models]
        for opt in opts:
            opt.step(0.05)
        assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    np.testing.assert_allclose(models[0].params, models[1].params, rtol=1e-3, atol=1e-4)
    first = models[0].layers[0]
    assert first.needs_input_grad is False and "dx" not in first._buffers


def test_batch_norm_statistics_are_parameters_the_optimizer_never_steps():
    model = cnn()
    bn = model.layers[1]
    names = [name for name, *_ in model.slots]
    stats = [names.index("1.running_mean"), names.index("1.running_var")]
    offsets = [model.slots[i][2] for i in stats]
    assert min(offsets) >= model.trainable_size  # after every trainable parameter
    x, y = rand((32, 64), 4), np.arange(32) % 10
    # SGD with weight decay: the statistics change only through the layer itself
    opt = SGD(model, momentum=0.9, weight_decay=0.5)
    h = model.layers[0].forward(x.reshape(32, 1, 8, 8), train=False)
    mean, var = h.mean(axis=(0, 2, 3)), h.var(axis=(0, 2, 3)) * (h[:, 0].size / (h[:, 0].size - 1))
    before = bn.params["running_mean"].copy(), bn.params["running_var"].copy()
    model.train_step(x, y)
    opt.step(0.1)
    np.testing.assert_allclose(
        bn.params["running_mean"], 0.9 * before[0] + 0.1 * mean, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        bn.params["running_var"], 0.9 * before[1] + 0.1 * var, rtol=1e-5, atol=1e-6
    )
    assert not np.any(bn.grads["running_mean"]) and not np.any(bn.grads["running_var"])
    # evaluation normalizes with the running statistics: independent of the batch
    np.testing.assert_allclose(model.predict(x[:1]), model.predict(x)[:1], rtol=1e-5)
    assert "param/1.running_mean" in model.state_arrays()  # saved and checkpointed with W


# ---- data shapes, the input-shape rule, jobs ---------------------------------------------


def test_image_sources_keep_their_sample_shape(tmp_path):
    assert load_dataset({"name": "digits"}).sample_shape == (1, 8, 8)
    for x_shape, want in [((30, 5, 6), (1, 5, 6)), ((30, 2, 3, 4), (2, 3, 4)), ((30, 7), 7)]:
        path = tmp_path / f"d{len(x_shape)}.npz"
        np.savez(path, x=rand(x_shape), y=np.arange(30) % 3)
        data = load_dataset({"name": "npz", "path": str(path)})
        assert data.sample_shape == want and data.x_train.ndim == 2  # rows stay flat


def job_text(layers, extra=""):
    return f"[data]\nname = 'digits'\n[model]\nlayers = [{layers}]\n{extra}"


CONV = "{ type = 'conv2d', channels = 4, padding = 1, activation = 'relu' }, "


@pytest.mark.parametrize(
    "layers,extra,shape",
    [
        ("{ type = 'dense', units = 10 }", "", 64),  # flat, as every MLP job
        (CONV + "{ type = 'global_avg_pool' }, { type = 'dense', units = 10 }", "", (1, 8, 8)),
        (
            CONV + "{ type = 'flatten' }, { type = 'dense', units = 10 }",
            "inputs = [1, 4, 16]\n",
            (1, 4, 16),
        ),
        ("{ type = 'dense', units = 10 }", "inputs = 64\n", 64),
    ],
)
def test_the_model_input_shape_comes_from_the_data_or_model_inputs(tmp_path, layers, extra, shape):
    path = tmp_path / "j.toml"
    path.write_text(job_text(layers, extra))
    job = load_job(path)
    data = load_dataset(job.data)
    assert input_shape(job, data) == shape
    model, *_ = build(job, data, get_backend("numpy"))
    check_fit(job, data, model)
    assert model.in_features == shape


@pytest.mark.parametrize(
    "layers,extra,data,message",
    [
        (
            CONV + "{ type = 'flatten' }, { type = 'dense', units = 10 }",
            "inputs = [1, 8, 9]\n",
            "digits",
            r"model.inputs is \[1, 8, 9\] but the data \(digits\) has 64 features",
        ),
        (
            CONV + "{ type = 'flatten' }, { type = 'dense', units = 10 }",
            "",
            "csv",
            r"model.layers\[0\] \(conv2d\) takes samples of 3 axes but the data \(csv\) "
            r"gives flat vectors of 64 values; set model.inputs = \[C, H, W\]",
        ),
        (
            CONV + "{ type = 'dense', units = 10 }",
            "",
            "digits",
            r"layer 1 \(dense\) takes flat vectors, found samples of shape \(4, 8, 8\)",
        ),
        (
            CONV[:-2],
            "",
            "digits",
            r"the model outputs samples of shape \(4, 8, 8\); end its image "
            r"layers with flatten or global_avg_pool",
        ),
    ],
)
def test_shape_mistakes_are_one_line_errors(tmp_path, layers, extra, data, message):
    csv = tmp_path / "d.csv"
    np.savetxt(csv, np.column_stack([rand((40, 64)), np.arange(40) % 10]), delimiter=",")
    path = tmp_path / "j.toml"
    path.write_text(
        job_text(layers, extra).replace(
            "name = 'digits'",
            "name = 'digits'" if data == "digits" else f"name = 'csv'\npath = '{csv}'",
        )
    )
    result = horn_cli("run", path, "--quiet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(message, result.stderr), result.stderr


def test_model_inputs_must_be_a_shape(tmp_path):
    path = tmp_path / "j.toml"
    path.write_text(job_text("{ type = 'dense', units = 10 }", "inputs = [8, 0]\n"))
    with pytest.raises(
        HornError,
        match=r"j.toml:5: model.inputs: expected a positive integer "
        r"or a list of them",
    ):
        load_job(path)


def test_model_averaging_averages_batch_norm_statistics_with_the_weights():
    result = mpirun(2, [PROGS / "cnn_average.py"], 120)
    assert result.returncode == 0, result.stderr
    rows = [
        json.loads(line[7:]) for line in result.stdout.splitlines() if line.startswith("RESULT ")
    ]
    assert len(rows) == 2 and all(r["averaged"] and r["stats_differed"] for r in rows)
    assert rows[0]["running_mean"] == rows[1]["running_mean"]


CNN_JOB = """
name = "cnn"
[data]
name = "digits"
[model]
imports = ["killer"]
layers = [{ type = "conv2d", channels = 4, padding = 1, activation = "relu" },
          { type = "killer:KillAt" }, { type = "batch_norm" }, { type = "max_pool2d" },
          { type = "dropout", p = 0.1 }, { type = "flatten" }, { type = "dense", units = 10 }]
[train]
epochs = 4
batch_size = 16
backend = "numpy"
[parallel]
local_steps = 4
[checkpoint]
every = 5
"""


def test_a_cnn_job_with_model_averaging_resumes_bit_identically(tmp_path):
    for name in ("whole", "killed"):
        (tmp_path / f"{name}.toml").write_text(CNN_JOB + f"[log]\ndir = '{tmp_path / name}'\n")
    env = {"PYTHONPATH": f"{PROGS}:{ROOT}"}
    whole = mpirun(2, ["-m", "horn.cli", "run", tmp_path / "whole.toml", "--quiet"], 240, env)
    assert whole.returncode == 0, whole.stderr
    killed = mpirun(
        2,
        ["-m", "horn.cli", "run", tmp_path / "killed.toml", "--quiet"],
        240,
        {**env, "HORN_TEST_KILL_RANK": "1", "HORN_TEST_KILL_AT": "100"},
    )
    assert killed.returncode != 0
    run_dir = run_dir_in(tmp_path, "killed")
    resumed = mpirun(2, ["-m", "horn.cli", "run", "--resume", run_dir, "--quiet"], 240, env)
    assert resumed.returncode == 0, resumed.stderr
    same_run(run_dir_in(tmp_path, "whole"), run_dir)
    final = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["test_accuracy"] > 0.3  # it learned (chance: 0.1): four epochs of 647 digits


def test_the_ensemble_compression_barrier_trains_a_cnn(tmp_path):
    path = tmp_path / "ec.toml"
    path.write_text(
        """
[data]
name = "digits"
[model]
layers = [{ type = "conv2d", channels = 8, padding = 1, activation = "relu" },
          { type = "max_pool2d" }, { type = "flatten" }, { type = "dense", units = 10 }]
[train]
epochs = 4
batch_size = 32
[parallel]
groups = 2
barrier = "ensemble"
local_steps = 40
[parallel.ensemble]
distill_size = 256
distill_steps = 20
"""
        + f"[log]\ndir = '{tmp_path / 'runs'}'\n"
    )
    result = mpirun(2, ["-m", "horn.cli", "run", path, "--quiet"], 240)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    barriers = [r for r in rows if r["kind"] == "barrier"]
    assert barriers and all(len(r["compressed_val_accuracy"]) == 2 for r in barriers)
    assert rows[-1]["test_accuracy"] > 0.5


@pytest.mark.parametrize("name", ["fashion_cnn", "fashion_cnn_ma", "fashion_cnn_ec"])
def test_the_cnn_jobs_are_valid(name):
    job = load_job(ROOT / "jobs" / f"{name}.toml")
    assert resolve_first(job).input_rank == 3  # so the model takes the (1, 28, 28) images


def resolve_first(job):
    from horn.registry import resolve

    return resolve(job.model.layers[0]["type"])


# ---- memory: conv2d's work buffers in the estimate; running out is one line ------------


def conv_job(batch_size, backend="numba", **train):
    return job_from_dict(
        {
            "name": "mem",
            "data": {"name": "digits"},
            "model": {"layers": [{"type": "dense", "units": 10}]},
            "train": {"batch_size": batch_size, "backend": backend, **train},
        }
    )


def im2col_bytes(c, o, kernel, n, out_hw):
    """conv2d's kept buffers, from their shapes: cols (C*KH*KW, N*OH*OW), z (O, N*OH*OW)."""
    pixels = n * out_hw[0] * out_hw[1]
    return 4 * (c * kernel[0] * kernel[1] * pixels + o * pixels)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(
    windows(),
    st.integers(1, 5),
    st.integers(1, 40),
    st.integers(0, 3000),
    st.sampled_from(["numpy", "numba"]),
)
def test_the_memory_estimate_counts_conv2d_work_buffers(window, channels, batch, evals, backend):
    (_, c, h, w), kernel, stride, pad = window
    out_hw = tuple((s + 2 * p - k) // t + 1 for s, p, k, t in zip((h, w), pad, kernel, stride))
    spec = {
        "in_features": [c, h, w],
        "layers": [
            {
                "type": "conv2d",
                "channels": channels,
                "kernel": list(kernel),
                "stride": list(stride),
                "padding": list(pad),
                "activation": "relu",
            },
            {"type": "flatten"},
            {"type": "dense", "units": 3},
        ],
        "loss": {"type": "softmax_cross_entropy"},
    }
    eval_rows = min(memory.EVAL_ROWS, evals)
    rows = max(batch, eval_rows)
    job = conv_job(batch, backend)
    need = memory.estimate(job, spec, evals)
    # the trained model's buffers for its largest batch, a second model's for evaluation,
    # and one step's temporaries: the numba backend's bias sums (N, O) or the numpy
    # reference's copies of the columns (two) after padding the batch
    pixels = rows * out_hw[0] * out_hw[1]
    cols = c * kernel[0] * kernel[1] * pixels
    if backend == "numba":
        scratch = 4 * rows * channels
    else:
        padded = rows * c * (h + 2 * pad[0]) * (w + 2 * pad[1])
        scratch = 4 * max(padded + cols, 2 * cols, 3 * channels * pixels)
    kept = im2col_bytes(c, channels, kernel, rows, out_hw)
    kept_all = kept + im2col_bytes(c, channels, kernel, eval_rows, out_hw) + scratch
    assert need.work_bytes == kept_all
    buffers = sum(memory.parameter_buffers(job).values())
    assert need.rank_bytes == need.parameters * 4 * buffers + need.activation_bytes + kept_all
    # and those are the buffers a training step really keeps
    model = Model.from_spec(spec, backend)
    x = rand((batch, c * h * w))
    model.train_step(x, np.arange(batch) % 3)
    conv = model.layers[0]
    pixels = batch * out_hw[0] * out_hw[1]
    assert conv._buffers["cols"].shape == (c * kernel[0] * kernel[1], pixels)
    assert conv._buffers["z"].shape == (channels, pixels)
    kept = conv._buffers["cols"].nbytes + conv._buffers["z"].nbytes
    assert kept == conv.work_bytes(batch) == im2col_bytes(c, channels, kernel, batch, out_hw)


def test_work_bytes_must_be_a_byte_count():
    class Greedy(horn.Layer):
        def forward(self, x, train):
            return x

        def work_bytes(self, batch):
            return -1.5

    with pytest.raises(HornError, match=r"model\[0\] .*work_bytes\(8\) must return a non-neg"):
        memory.work_bytes([Greedy()], 64, (8,))


def big_cnn(tmp_path, channels, batch_size, name="cnn_mem.toml"):
    path = tmp_path / name
    path.write_text(
        f"""
name = "cnn_mem"
[data]
name = "digits"
[model]
layers = [
  {{ type = "conv2d", channels = {channels}, kernel = 3, padding = 1 }},
  {{ type = "conv2d", channels = {channels}, kernel = 15, padding = 7 }},
  {{ type = "flatten" }},
  {{ type = "dense", units = 10 }},
]
[train]
steps = 1
batch_size = {batch_size}
[log]
plot = false
dir = "{tmp_path / "runs"}"
"""
    )
    return path


def test_validate_refuses_a_cnn_whose_im2col_columns_do_not_fit(tmp_path):
    """The tester's case: 256 channels, batch 2,048 on digits validated "ok" at 1.35 GiB
    while one training ``cols`` of the second layer is 256*15*15 x 2,048*8*8 floats."""
    batch = 2048
    available = memory.available_bytes()
    one_cols = 256 * 15 * 15 * 64 * 4  # per sample
    while available is not None and batch * one_cols < available:  # a host with more memory
        batch *= 2
    result = horn_cli("validate", big_cnn(tmp_path, 256, batch))
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("horn: error: "), result.stderr
    assert "does not fit in memory" in lines[0] and "of layer work buffers" in lines[0], lines
    assert "Traceback" not in result.stderr
    small = horn_cli("validate", big_cnn(tmp_path, 4, 16, "small.toml"))
    assert small.returncode == 0 and "layer work buffers" in small.stdout, small.stderr


RSS_RUN = """
import json, resource, sys
from horn.cli import main
code = main(["run", sys.argv[1], "--quiet"])
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, code)
"""


def test_the_estimate_of_a_cnn_is_near_its_measured_peak(tmp_path):
    """The tester's digits CNN (64 channels, kernels 3 and 15, batch 256, one step): the
    estimate said 65 MiB, the run peaks at about 2 GiB (evaluation ``cols`` of 1.23 GiB
    in two models at once: the trained one and best.npz's)."""
    path = big_cnn(tmp_path, 64, 256)
    job = load_job(path)
    data = load_dataset(job.data)
    spec = model_spec(job, input_shape(job, data))
    need = memory.estimate(job, spec, max(len(data.y_val), len(data.y_test)))
    result = subprocess.run(
        [sys.executable, "-c", RSS_RUN, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    peak = [line for line in result.stdout.splitlines() if line.startswith("PEAK ")]
    assert result.returncode == 0 and peak, result.stderr
    rss, code = map(int, peak[0].split()[1:])
    assert code == 0
    assert rss / 1.5 <= need.rank_bytes <= rss * 1.5, (rss, need.text())


HOG = '''
from horn import Layer


class Hog(Layer):
    """Runs out of memory on any batch but validate's 2-sample rehearsal."""

    def forward(self, x, train):
        if len(x) > 2:
            raise MemoryError("Unable to allocate 1.50 TiB for an array with shape (9, 9)")
        return x

    def backward(self, dy):
        return dy
'''


def hog_job(tmp_path, extra=""):
    (tmp_path / "hog.py").write_text(HOG)
    path = tmp_path / "hog.toml"
    path.write_text(
        f"""
name = "hog"
[data]
name = "digits"
[model]
imports = ["hog"]
layers = [{{ type = "dense", units = 16 }}, {{ type = "hog:Hog" }}, {{ type = "dense", units = 10 }}]
[train]
steps = 2
batch_size = 8
backend = "numpy"
[log]
plot = false
dir = "{tmp_path / "runs"}"
{extra}
"""
    )
    return path


def test_running_out_of_memory_is_one_line_and_exit_2(tmp_path):
    path = hog_job(tmp_path)
    result = horn_cli("run", path, "--quiet")
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("horn: error: memory ran out (Unable to allocate 1.50 TiB"), line
    assert "in forward of layer 1" in line and "train.batch_size" in line, line
    assert "horn validate" in line and "Traceback" not in result.stderr
    debug = horn_cli("run", path, "--quiet", "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr, debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == line


def test_running_out_of_memory_on_one_rank_is_one_line_per_job(tmp_path):
    path = hog_job(tmp_path, "[parallel]\ngroups = 2\n")
    result = mpirun(2, ["-m", "horn.cli", "run", path, "--quiet"], 120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("horn: ")]
    assert lines and all(
        re.match(
            r"horn: error: rank \d \(host [^,)]+(, group \d, worker \d)?\): memory ran out \(", line
        )
        for line in lines
    ), result.stderr
    assert "Traceback" not in result.stderr
