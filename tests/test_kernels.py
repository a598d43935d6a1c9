"""Every Numba kernel equals the numpy reference (masks bit for bit), on sizes
below and above the serial/parallel switch."""

import numpy as np
import pytest

from horn.backends import ACTIVATIONS, get_backend
from horn.backends.numba_backend import PARALLEL_MIN

REF, NB = get_backend("numpy"), get_backend("numba")
SHAPES = [(7, 13), (300, 257)]  # 91 elements: serial kernels; 77k: parallel ones
assert SHAPES[0][0] * SHAPES[0][1] < PARALLEL_MIN <= SHAPES[1][0] * SHAPES[1][1]


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_bias_act_and_backward(shape, act):
    z, b = rand(shape), rand(shape[1], 1)
    a, c = z.copy(), z.copy()
    NB.bias_act(a, b, act, 0.5)
    REF.bias_act(c, b, act, 0.5)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
    dy = rand(shape, 2)
    d1, d2, db1, db2 = (
        dy.copy(),
        dy.copy(),
        np.zeros(shape[1], np.float32),
        np.zeros(shape[1], np.float32),
    )
    NB.act_backward(d1, a, act, db1)
    REF.act_backward(d2, c, act, db2)
    np.testing.assert_allclose(d1, d2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(db1, db2, rtol=1e-4, atol=1e-4)
    d3 = dy.copy()
    NB.act_backward(d3, a, act)
    np.testing.assert_allclose(d3, d2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation(shape, act):
    x = rand(shape)
    o1, o2 = np.empty_like(x), np.empty_like(x)
    NB.activation(x, act, o1)
    REF.activation(x, act, o2)
    np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_dropout_mask_is_bit_identical(shape, keep):
    x = rand(shape)
    o1, o2 = np.empty_like(x), np.empty_like(x)
    NB.dropout(x, 987654321, keep, o1)
    REF.dropout(x, 987654321, keep, o2)
    assert np.array_equal(o1, o2)
    assert abs((o1 != 0).mean() - keep) < 0.1
    o3 = np.empty_like(x)
    NB.dropout(x, 987654322, keep, o3)
    assert not np.array_equal(o1, o3), "another key must give another mask"
    w = np.empty_like(x)
    NB.mask_weights(x, 5, keep, w)
    REF.mask_weights(x, 5, keep, o2)
    assert np.array_equal(w, o2)


@pytest.mark.parametrize("shape", [(9, 10), (700, 100)])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("soft", [False, True])
def test_softmax_xent(shape, temperature, soft):
    x = rand(shape) * 5
    rng = np.random.default_rng(1)
    if soft:
        t = rng.random(shape).astype(np.float32)
        targets = t / t.sum(axis=1, keepdims=True)
    else:
        targets = rng.integers(0, shape[1], shape[0])
    g1, g2 = np.empty_like(x), np.empty_like(x)
    l1 = NB.softmax_xent(x, targets, g1, temperature, 2.0)
    l2 = REF.softmax_xent(x, targets, g2, temperature, 2.0)
    assert abs(l1 - l2) <= 1e-5 * max(1, abs(l2))
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-7)
    p1, p2 = np.empty_like(x), np.empty_like(x)
    NB.softmax(x, p1, temperature)
    REF.softmax(x, p2, temperature)
    np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-7)


def test_softmax_xent_is_stable_for_huge_logits():
    x = np.array([[1e4, 0, -1e4], [-3e4, 3e4, 0]], np.float32)
    g = np.empty_like(x)
    loss = NB.softmax_xent(x, np.array([0, 1]), g)
    assert np.isfinite(loss) and loss < 1e-6 and np.isfinite(g).all()


@pytest.mark.parametrize("rows,cols", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("shape", [(20, 30), (600, 400)])
def test_gather_scatter(shape, rows, cols):
    rng = np.random.default_rng(3)
    parent = rand(shape)
    r = np.sort(rng.choice(shape[0], shape[0] // 3, replace=False)) if rows else None
    c = rng.permutation(shape[1])[: shape[1] // 2] if cols else None
    out_shape = (shape[0] if r is None else len(r), shape[1] if c is None else len(c))
    o1, o2 = np.empty(out_shape, np.float32), np.empty(out_shape, np.float32)
    NB.gather(parent, r, c, o1)
    REF.gather(parent, r, c, o2)
    assert np.array_equal(o1, o2)
    p1, p2 = parent.copy(), parent.copy()
    NB.scatter(o1 * 3, r, c, p1)
    REF.scatter(o1 * 3, r, c, p2)
    assert np.array_equal(p1, p2)
    assert not np.array_equal(p1, parent)


@pytest.mark.parametrize("size", [100, 200_003])
@pytest.mark.parametrize(
    "momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 1e-3), (0.9, True, 1e-4)]
)
def test_sgd_update(size, momentum, nesterov, wd):
    p, g = rand(size), rand(size, 1)
    p1, p2 = p.copy(), p.copy()
    v1 = np.zeros_like(p) if momentum else None
    v2 = np.zeros_like(p) if momentum else None
    for _ in range(3):
        NB.sgd_update(p1, g, v1, 0.1, momentum, wd, nesterov)
        REF.sgd_update(p2, g, v2, 0.1, momentum, wd, nesterov)
    np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(p1, p)


@pytest.mark.parametrize("size", [100, 200_003])
def test_adam_update(size):
    p, g = rand(size), rand(size, 1)
    p1, p2 = p.copy(), p.copy()
    state = [np.zeros_like(p) for _ in range(4)]
    for t in range(1, 4):
        NB.adam_update(p1, g, state[0], state[1], 1e-2, 0.9, 0.999, 1e-8, 1e-4, t)
        REF.adam_update(p2, g, state[2], state[3], 1e-2, 0.9, 0.999, 1e-8, 1e-4, t)
    np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [50, 100_000])
def test_all_finite(size):
    a = rand(size)
    assert NB.all_finite(a) and REF.all_finite(a)
    a[size // 2] = np.nan
    assert not NB.all_finite(a) and not REF.all_finite(a)
    a[size // 2] = np.inf
    assert not NB.all_finite(a)
