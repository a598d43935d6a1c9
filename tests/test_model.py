"""The model's flat buffers, its file format, and its training maths."""

import json

import numpy as np
import pytest

from horn.errors import HornError
from horn.layers import Dense, Dropout, SoftmaxCrossEntropy
from horn.model import ALIGN, Model
from horn.optim import SGD, Adam
from horn.schedules import Schedule


def small(backend="numpy", seed=0):
    return Model(
        [Dense(16, "relu"), Dropout(0.1), Dense(3)], SoftmaxCrossEntropy(), 5, backend, seed=seed
    )


def test_parameters_are_views_into_one_aligned_buffer():
    m = small()
    names = [name for name, *_ in m.slots]
    assert names == ["0.W", "0.b", "2.W", "2.b"]
    for name, layer, off, shape in m.slots:
        assert off % ALIGN == 0
        view = layer.params[name.split(".")[1]]
        assert view.base is m.params or view.base is m.params.base
        assert np.shares_memory(view, m.params) and view.shape == shape
        assert np.shares_memory(layer.grads[name.split(".")[1]], m.grads)
    m.params[...] = 7
    assert (m.layers[0].params["W"] == 7).all()
    assert m.params.dtype == np.float32 and m.num_params == 5 * 16 + 16 + 16 * 3 + 3


def test_first_layer_skips_the_input_gradient():
    m = small()
    x = np.ones((4, 5), np.float32)
    m.train_step(x, np.array([0, 1, 2, 0]))
    assert m.layers[0].needs_input_grad is False and m.layers[2].needs_input_grad is True
    assert "dx" not in m.layers[0]._buffers


def test_save_load_round_trip(tmp_path):
    m = small(seed=4)
    path = tmp_path / "m.npz"
    m.save(path, meta={"classes": 3})
    loaded, meta = Model.load(path)
    assert meta == {"classes": 3} and loaded.spec() == m.spec()
    assert np.array_equal(loaded.params, m.params)
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    assert np.array_equal(loaded.predict(x), m.predict(x))


def test_model_file_with_wrong_shape_is_a_clear_error(tmp_path):
    m = small()
    arrays = m.state_arrays()
    arrays["param/2.W"] = np.zeros((16, 4), np.float32)
    header = {"format": "horn-model-1", "spec": m.spec(), "meta": {}}
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(HornError, match=r"param/2.W.*shape \(16, 4\).*expects \(16, 3\)"):
        Model.load(tmp_path / "bad.npz")


def test_pickled_npz_is_refused(tmp_path):
    np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(HornError, match="refusing pickled data"):
        Model.load(tmp_path / "evil.npz")


def test_sgd_step_matches_hand_computation():
    m = Model([Dense(2, init="ones")], SoftmaxCrossEntropy(), 3, "numpy")
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    m.train_step(x, np.array([0]))
    w0, g = m.params.copy(), m.grads.copy()
    # softmax of equal logits is uniform: dlogits = [0.5 - 1, 0.5]
    np.testing.assert_allclose(m.layers[0].grads["W"], np.outer(x[0], [-0.5, 0.5]))
    opt = SGD(m, momentum=0.9, nesterov=False, weight_decay=0.0)
    opt.step(0.1)
    opt.step(0.1)  # same gradient twice: v = g, then 1.9 g
    np.testing.assert_allclose(m.params, w0 - 0.1 * g - 0.1 * 1.9 * g, rtol=1e-6)


def test_adam_first_step_moves_by_lr():
    m = Model([Dense(2, init="ones")], SoftmaxCrossEntropy(), 3, "numpy")
    m.train_step(np.array([[1.0, 2.0, 3.0]], np.float32), np.array([0]))
    w0 = m.params.copy()
    Adam(m).step(0.01)
    moved = np.abs(m.params - w0)[m.grads != 0]
    np.testing.assert_allclose(moved, 0.01, rtol=1e-4)


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("constant", [0.5, 1.0, 1.0, 1.0]),
        ("step", [0.5, 1.0, 1.0, 0.1]),
        ("cosine", [0.5, 1.0, 0.5, 0.0]),
    ],
)
def test_schedules_with_warmup(kind, expected):
    s = Schedule(kind, 1.0, total_steps=6, warmup_steps=2, step_size=4, gamma=0.1)
    np.testing.assert_allclose([s(0), s(2), s(4), s(6)], expected, atol=1e-12)


def test_divergence_names_the_layer():
    m = small()
    m.layers[2].params["W"][0, 0] = np.nan
    m.train_step(np.ones((2, 5), np.float32), np.array([0, 1]))
    assert m.first_nonfinite() == "parameter 'W' of layer 2 (dense)"
