"""The reference backend: plain numpy, written for clarity, not speed.

Every other backend is tested against this one.
"""

import numpy as np

from horn.backends.base import GOLDEN, MIX1, MIX2, Backend


def hash_uniform(key, n, xp=np):
    """Uniform floats in [0, 1) from a splitmix64 hash of ``(key, i)`` for i < n."""
    u64 = xp.uint64
    z = xp.arange(1, n + 1, dtype=u64) * u64(GOLDEN) + u64(key)
    z ^= z >> u64(30)
    z *= u64(MIX1)
    z ^= z >> u64(27)
    z *= u64(MIX2)
    z ^= z >> u64(31)
    return (z >> u64(40)).astype(xp.float32) * xp.float32(2.0 ** -24)


def _act(x, act):
    if act == "identity":
        return x
    if act == "relu":
        return np.maximum(x, 0)
    if act == "tanh":
        return np.tanh(x)
    if act == "sigmoid":
        return 1 / (1 + np.exp(-x))
    raise ValueError(f"unknown activation {act!r}")


def _act_grad(y, act):
    if act == "identity":
        return np.ones_like(y)
    if act == "relu":
        return (y > 0).astype(y.dtype)
    if act == "tanh":
        return 1 - y * y
    if act == "sigmoid":
        return y * (1 - y)
    raise ValueError(f"unknown activation {act!r}")


def _log_softmax(logits, temperature):
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def to_host(self, a):
        return np.asarray(a)

    def bias_act(self, z, b, act, scale=1.0):
        z[...] = _act(z * z.dtype.type(scale) + b, act)

    def act_backward(self, dy, y, act, db=None):
        dy *= _act_grad(y, act)
        if db is not None:
            db[...] = dy.sum(axis=0)

    def activation(self, x, act, out):
        out[...] = _act(x, act)

    def scale(self, a, s):
        a *= a.dtype.type(s)

    def dropout(self, x, key, keep, out):
        m = hash_uniform(key, x.size).reshape(x.shape) < keep
        out[...] = x * m * x.dtype.type(1.0 / keep)

    def softmax(self, logits, out, temperature=1.0):
        out[...] = np.exp(_log_softmax(logits, temperature))

    def softmax_xent(self, logits, targets, grad, temperature=1.0, weight=1.0):
        n = logits.shape[0]
        logp = _log_softmax(logits, temperature)
        if targets.ndim == 1:
            loss = -logp[np.arange(n), targets].mean()
            soft = np.zeros_like(logp)
            soft[np.arange(n), targets] = 1.0
        else:
            loss = -(targets * logp).sum(axis=1).mean()
            soft = targets
        grad[...] = (np.exp(logp) - soft) * (weight / (n * temperature))
        return float(loss)

    def gather(self, parent, rows, cols, out):
        sub = parent if rows is None else parent[rows]
        out[...] = sub if cols is None else sub[:, cols]

    def scatter(self, compact, rows, cols, parent):
        r = slice(None) if rows is None else rows
        c = slice(None) if cols is None else cols
        if rows is not None and cols is not None:
            parent[np.ix_(rows, cols)] = compact
        else:
            parent[r, c] = compact

    def sgd_update(self, p, g, v, lr, momentum, weight_decay, nesterov):
        g = g + np.float32(weight_decay) * p if weight_decay else g
        if momentum:
            v *= np.float32(momentum)
            v += g
            d = g + np.float32(momentum) * v if nesterov else v
        else:
            d = g
        p -= np.float32(lr) * d

    def adam_update(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, t):
        g = g + np.float32(weight_decay) * p if weight_decay else g
        m *= np.float32(beta1)
        m += np.float32(1 - beta1) * g
        v *= np.float32(beta2)
        v += np.float32(1 - beta2) * g * g
        mhat = m / np.float32(1 - beta1 ** t)
        vhat = v / np.float32(1 - beta2 ** t)
        p -= np.float32(lr) * mhat / (np.sqrt(vhat) + np.float32(eps))
