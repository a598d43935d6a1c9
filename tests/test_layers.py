"""Every built-in layer passes check_layer, and check_layer can fail."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import horn
from horn.checks import LayerCheckError
from horn.errors import HornError
from horn.layers import (
    MSE,
    Dense,
    DropConnectDense,
    Dropout,
    ReLU,
    Sigmoid,
    SoftmaxCrossEntropy,
    Tanh,
)
from horn.model import Model

LAYERS = [
    Dense(5),
    Dense(4, "relu"),
    Dense(3, "tanh", "xavier"),
    Dense(6, "sigmoid", "normal"),
    Dense(4, "relu", bias=False),
    ReLU(),
    Tanh(),
    Sigmoid(),
    Dropout(0.3),
    Dropout(0.0),
    DropConnectDense(5, 0.4, "relu"),
    DropConnectDense(3, 0.2, "tanh", bias=False),
]


@pytest.mark.parametrize("layer", LAYERS, ids=repr)
def test_builtin_layers_pass_check_layer(layer):
    passed = horn.check_layer(layer)
    assert "gradients (finite differences, float64)" in passed and "backend numba" in passed


@pytest.mark.parametrize(
    "loss,targets",
    [
        (SoftmaxCrossEntropy(), "labels"),
        (SoftmaxCrossEntropy(), "soft"),
        (SoftmaxCrossEntropy(3.0), "soft"),
        (MSE(), "labels"),
        (MSE(), "soft"),
    ],
    ids=repr,
)
def test_losses_pass_check_layer(loss, targets):
    assert horn.check_layer(loss, targets=targets)


class WrongGradient(horn.Layer):
    """Scales x by w, but reports a gradient 10% too large."""

    def build(self, n):
        self.declare("w", (n,), init="ones")
        return n

    def forward(self, x, train):
        self.x = x
        return x * self.params["w"]

    def backward(self, dy):
        self.grads["w"][...] = 1.1 * (dy * self.x).sum(axis=0)
        return dy * self.params["w"]


class Accumulates(WrongGradient):
    def backward(self, dy):
        self.grads["w"][...] += (dy * self.x).sum(axis=0)
        return dy * self.params["w"]


class ModifiesInput(horn.Layer):
    def forward(self, x, train):
        x *= 2
        return x

    def backward(self, dy):
        return 2 * dy


class WrongShape(horn.Layer):
    def build(self, n):
        return n + 1

    def forward(self, x, train):
        return x

    def backward(self, dy):
        return dy


@pytest.mark.parametrize(
    "layer,message",
    [
        (WrongGradient(), "gradient of parameter 'w'"),
        (Accumulates(), "did not fill grads"),
        (ModifiesInput(), "modified its input"),
        (WrongShape(), "forward returned shape"),
    ],
)
def test_check_layer_catches_broken_layers(layer, message):
    with pytest.raises(LayerCheckError, match=message):
        horn.check_layer(layer)


def test_dropout_is_identity_at_eval_and_scaled_in_training():
    model = Model([Dropout(0.25)], MSE(), 1000, "numba")
    x = np.ones((4, 1000), np.float32)
    assert np.array_equal(model.forward(x, train=False), x)
    y = model.forward(x, train=True)
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 1 / 0.75, rtol=1e-6)
    assert 0.7 < kept.size / y.size < 0.8


def test_dropconnect_is_deterministic_at_eval_and_masks_weights_in_training():
    model = Model([DropConnectDense(50, p=0.5)], MSE(), 40, "numba", seed=3)
    x = np.random.default_rng(0).standard_normal((8, 40)).astype(np.float32)
    e1, e2 = model.forward(x).copy(), model.forward(x).copy()
    assert np.array_equal(e1, e2)
    w = model.layers[0].params["W"]
    np.testing.assert_allclose(e1, x @ w + model.layers[0].params["b"], rtol=1e-5, atol=1e-5)
    t1, t2 = model.forward(x, train=True).copy(), model.forward(x, train=True).copy()
    assert not np.array_equal(t1, t2), "each training step draws a new mask"
    masked = model.layers[0].buffer("w_masked", w.shape)
    zero = masked == 0
    assert 0.4 < zero.mean() < 0.6
    np.testing.assert_allclose(masked[~zero], 2 * w[~zero], rtol=1e-6)


def test_layers_are_importable_under_the_horn_namespace_only():
    import importlib.util

    import horn.layers

    assert horn.layers.Dense is Dense
    installed_layers = importlib.util.find_spec("layers")
    assert installed_layers is None or "site-packages" not in (installed_layers.origin or "")


@pytest.mark.parametrize("bias", [True, False])
def test_dense_input_scale_passes_check_layer(bias):
    layer = Dense(4, "tanh", bias=bias)
    layer.input_scale = 2.5  # check_layer's rebuilt copy keeps it
    assert horn.check_layer(layer)
    scaled = Dense(3, bias=bias)
    scaled.input_scale = 2.5
    m = Model([scaled], SoftmaxCrossEntropy(), 5, "numpy")
    x = np.ones((2, 5), np.float32)
    w = m.layers[0].params["W"]
    np.testing.assert_allclose(m.forward(x), 2.5 * x @ w, rtol=1e-6)


class ForgetsTheScale(horn.Layer):
    """y = input_scale * x * w, whose weight gradient leaves the scale out."""

    partition_role = "split"

    def build(self, n):
        self.declare("w", (n,), init="ones")
        return n

    def forward(self, x, train):
        self.x = x
        return self.input_scale * x * self.params["w"]

    def backward(self, dy):
        self.grads["w"][...] = (dy * self.x).sum(axis=0)
        return self.input_scale * dy * self.params["w"]


def test_check_layer_checks_the_input_scale_set_on_the_instance():
    assert horn.check_layer(ForgetsTheScale())  # at scale 1 the bug cannot show
    layer = ForgetsTheScale()
    layer.input_scale = 2.5
    with pytest.raises(LayerCheckError, match="gradient of parameter 'w'"):
        horn.check_layer(layer)


SHAPES = st.one_of(
    st.integers(-3, 5),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.none(),
    st.lists(
        st.one_of(st.integers(-3, 5), st.booleans(), st.floats(0, 4), st.tuples(st.integers(1, 4))),
        max_size=3,
    ).flatmap(lambda dims: st.sampled_from([dims, tuple(dims)])),
)


class Declares(horn.Layer):
    def __init__(self, shape=None):
        self.shape = shape

    def build(self, n):
        self.declare("p", self.shape)
        return n

    def forward(self, x, train):
        return x

    def backward(self, dy):
        return dy


@settings(max_examples=300, deadline=None)
@given(shape=SHAPES)
def test_a_declared_shape_is_ints_or_a_one_line_error_naming_the_layer(shape):
    """Any shape a build() may pass (an image shape where a width was meant included):
    a model is built, or refused with horn's one-line error; never another exception."""
    good = isinstance(shape, (list, tuple)) and all(type(s) is int and s >= 0 for s in shape)
    try:
        model = Model([Declares(shape), Dense(2)], SoftmaxCrossEntropy(), 3, "numpy")
    except HornError as exc:
        assert not good and str(exc).startswith("layer 0 (") and "declare('p')" in str(exc)
        assert "\n" not in str(exc)
        return
    assert good and model.layers[0].params["p"].shape == tuple(shape)
