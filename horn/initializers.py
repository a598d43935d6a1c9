"""Parameter initializers, run on the host with a seeded numpy Generator."""

import numpy as np


def _fans(shape, fan_in, fan_out):
    fan_in = fan_in or (shape[0] if shape else 1)
    fan_out = fan_out or (shape[-1] if shape else 1)
    return fan_in, fan_out


def he(rng, shape, fan_in=None, fan_out=None):
    """Kaiming normal: keeps ReLU activations' variance constant across layers."""
    fi, _ = _fans(shape, fan_in, fan_out)
    return rng.standard_normal(shape) * np.sqrt(2.0 / fi)


def xavier(rng, shape, fan_in=None, fan_out=None):
    """Glorot uniform: the usual choice for tanh/sigmoid layers."""
    fi, fo = _fans(shape, fan_in, fan_out)
    limit = np.sqrt(6.0 / (fi + fo))
    return rng.uniform(-limit, limit, shape)


def normal(rng, shape, fan_in=None, fan_out=None):
    """N(0, 0.01^2), the classic small-random init."""
    return rng.standard_normal(shape) * 0.01


def zeros(rng, shape, fan_in=None, fan_out=None):
    return np.zeros(shape)


def ones(rng, shape, fan_in=None, fan_out=None):
    return np.ones(shape)


INITIALIZERS = {"he": he, "xavier": xavier, "normal": normal, "zeros": zeros, "ones": ones}


def initialize(init, rng, shape, fan_in=None, fan_out=None):
    fn = INITIALIZERS[init] if isinstance(init, str) else init
    return np.asarray(fn(rng, shape, fan_in, fan_out))
