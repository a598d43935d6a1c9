"""``check_layer``: the conformance suite a user runs on a new layer.

Like scikit-learn's ``check_estimator``: it builds the layer the way a model
would, then checks the contract (output shapes, no mutation of the input,
gradients overwritten rather than accumulated, deterministic evaluation, a
spec that rebuilds the layer) and the gradients, by central finite differences
in float64 on the numpy reference backend.
"""

import json

import numpy as np

from horn.layer import Loss, as_shape, batch_shape
from horn.model import Model


class LayerCheckError(AssertionError):
    """A layer broke horn's layer contract; the message says which check and how."""


class _Probe(Loss):
    """A linear loss sum(y * R): its gradient is exactly R, so dy is known."""

    def __init__(self, r=None):
        self.r = r

    def forward(self, x, targets):
        self.shape = x.shape
        return float((x * self.r).sum())

    def backward(self):
        return self.r.copy()


def _fresh(layer):
    """An unbuilt copy of ``layer`` from its recorded constructor arguments, with the
    partition protocol's ``input_scale`` (set on the instance, so a split layer's
    scaled path is checked: ``layer.input_scale = 2.0; check_layer(layer)``)."""
    copy = type(layer)(**layer.config)
    if getattr(layer, "input_scale", 1.0) != 1.0:
        copy.input_scale = layer.input_scale
    return copy


def _fail(layer, what):
    raise LayerCheckError(f"check_layer({layer!r}): {what}")


def _probe_entries(rng, size, limit):
    return np.arange(size) if size <= limit else rng.choice(size, limit, replace=False)


def _close(a, b, rtol, atol):
    return np.abs(a - b) <= atol + rtol * np.abs(b)


def check_layer(
    layer,
    in_features=6,
    batch=4,
    targets=None,
    seed=0,
    eps=1e-6,
    rtol=1e-4,
    atol=1e-6,
    max_entries=40,
    backends=("numpy", "numba"),
):
    """Check ``layer`` (a Layer or a Loss instance) against horn's layer contract.

    ``in_features`` is one input sample's shape: an int (flat vectors) or a tuple
    such as ``(C, H, W)`` for a layer on images.
    ``targets`` (losses only): ``"labels"`` (default) or ``"soft"``.
    Raises :class:`LayerCheckError` naming the failed check; returns the list of
    checks that passed.
    """
    passed = []
    try:
        json.dumps(layer.spec())
        rebuilt = _fresh(layer)
    except Exception as exc:  # noqa: BLE001 - any failure here is a contract violation to report
        _fail(layer, f"spec/config cannot rebuild the layer: {exc!r}")
    if rebuilt.config != layer.config:
        _fail(layer, "rebuilding from config gives a different config")
    passed.append("spec")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(batch_shape(batch, as_shape(in_features)))
    if isinstance(layer, Loss):
        passed += _check_loss(layer, x, targets or "labels", rng, eps, rtol, atol, max_entries)
    else:
        passed += _check_plain(layer, x, rng, eps, rtol, atol, max_entries, backends)
    return passed


def _harness(layer, in_features, backend="numpy", dtype=np.float64, probe=None):
    layer = _fresh(layer)
    model = Model([layer], probe or _Probe(), in_features, backend=backend, seed=1, dtype=dtype)
    layer.needs_input_grad = True
    return model, layer


def _check_plain(layer, x, rng, eps, rtol, atol, max_entries, backends):
    passed = []
    n, features = len(x), as_shape(x.shape[1:])
    model, lay = _harness(layer, features)
    model.set_fixed_mask_key(12345)  # a masked layer is then a deterministic function
    out = model.out_features
    x0 = x.copy()
    y = lay.forward(x, train=True)
    if y.shape != batch_shape(n, out):
        _fail(
            layer,
            f"forward returned shape {y.shape}, expected {batch_shape(n, out)} "
            f"(batch, build()'s shape)",
        )
    if y.dtype != x.dtype:
        _fail(layer, f"forward returned dtype {y.dtype} for {x.dtype} input")
    if not np.array_equal(x, x0):
        _fail(layer, "forward modified its input in place")
    e1 = lay.forward(x, train=False).copy()
    e2 = lay.forward(x, train=False).copy()
    if not np.array_equal(e1, e2):
        _fail(layer, "evaluation (train=False) is not deterministic")
    passed += ["shapes", "input untouched", "eval deterministic"]

    r = rng.standard_normal(batch_shape(n, out))

    def loss_at():
        return float((lay.forward(x, train=True) * r).sum())

    def grads():
        lay.forward(x, train=True)
        for g in lay.grads.values():
            g[...] = np.nan
        dx = lay.backward(r.copy())
        return (None if dx is None else dx.copy()), {k: g.copy() for k, g in lay.grads.items()}

    dx, g1 = grads()
    for name, g in g1.items():
        if not np.isfinite(g).all():
            _fail(layer, f"backward did not fill grads[{name!r}] (it must overwrite every entry)")
    _, g2 = grads()
    for name in g1:
        if not np.array_equal(g1[name], g2[name]):
            _fail(
                layer,
                f"grads[{name!r}] differ between two identical backward calls "
                f"(accumulating instead of overwriting?)",
            )
    passed.append("grads overwritten")
    for spec in lay._specs:
        if not spec.trainable and np.any(g1[spec.name]):
            _fail(layer, f"grads[{spec.name!r}] of a trainable=False statistic must be zero")
    if dx is None or dx.shape != x.shape:
        _fail(
            layer,
            f"backward returned {None if dx is None else dx.shape} for input of shape "
            f"{x.shape} with needs_input_grad=True",
        )
    _finite_diff(layer, "input", x, dx, loss_at, rng, eps, rtol, atol, max_entries)
    for name, p in lay.params.items():
        _finite_diff(
            layer, f"parameter {name!r}", p, g1[name], loss_at, rng, eps, rtol, atol, max_entries
        )
    passed.append("gradients (finite differences, float64)")
    for backend in backends:
        if backend == "numpy":
            continue
        _same_on_backend(layer, backend, model, lay, x, r)
        passed.append(f"backend {backend}")
    return passed


def _same_on_backend(layer, backend, model, lay, x, r):
    """Evaluation, training forward, input and parameter gradients in float32 on
    ``backend`` agree with the float64 numpy reference at the same parameters."""
    other, olay = _harness(layer, as_shape(x.shape[1:]), backend=backend, dtype=np.float32)
    other.set_fixed_mask_key(model.fixed_mask_key)
    device = other.backend.asarray
    other.params[...] = device(model.params.astype(np.float32))
    x32, r32 = device(x.astype(np.float32)), device(r.astype(np.float32))

    def compare(what, got, want):
        got = other.backend.to_host(got)
        if not np.allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(want).max())):
            _fail(
                layer,
                f"float32 {what} on backend {backend!r} differs from the float64 "
                f"numpy reference (max abs diff {np.abs(got - want).max():.3g})",
            )

    compare("forward (train=False)", olay.forward(x32, train=False), lay.forward(x, train=False))
    compare("forward (train=True)", olay.forward(x32, train=True), lay.forward(x, train=True))
    compare("input gradient", olay.backward(r32.copy()), lay.backward(r.copy()))
    for name, g in lay.grads.items():
        compare(f"grads[{name!r}]", olay.grads[name], g)


def _check_loss(layer, x, kind, rng, eps, rtol, atol, max_entries):
    n, features = x.shape
    model = Model([], _fresh(layer), features, backend="numpy", seed=1, dtype=np.float64)
    loss = model.loss
    if kind == "soft":
        t = rng.random((n, features))
        targets = t / t.sum(axis=1, keepdims=True)
    else:
        targets = rng.integers(0, features, n)
    value = loss.forward(x, targets)
    if not isinstance(value, float):
        _fail(layer, f"forward must return a Python float, returned {type(value).__name__}")
    dx = loss.backward().copy()
    if dx.shape != x.shape:
        _fail(layer, f"backward returned shape {dx.shape}, expected {x.shape}")
    _finite_diff(
        layer, "input", x, dx, lambda: loss.forward(x, targets), rng, eps, rtol, atol, max_entries
    )
    return ["loss value", f"gradients vs {kind} targets (finite differences, float64)"]


def _finite_diff(layer, what, array, analytic, loss_at, rng, eps, rtol, atol, max_entries):
    flat, grad = array.reshape(-1), analytic.reshape(-1)
    for i in _probe_entries(rng, flat.size, max_entries):
        keep = flat[i]
        flat[i] = keep + eps
        up = loss_at()
        flat[i] = keep - eps
        down = loss_at()
        flat[i] = keep
        numeric = (up - down) / (2 * eps)
        if not _close(grad[i], numeric, rtol, atol * max(1.0, abs(numeric))) and abs(
            grad[i] - numeric
        ) > 1e-4 * max(1.0, abs(numeric)):
            _fail(
                layer,
                f"gradient of {what} at flat index {i}: backward gives {grad[i]:.6g}, "
                f"finite differences give {numeric:.6g}",
            )
