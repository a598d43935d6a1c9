"""The low-level layer API: everything a new layer needs, and nothing more.

A layer declares its parameters in :meth:`Layer.build`, computes its output in
:meth:`Layer.forward` (keeping what backward needs) and returns the input
gradient from :meth:`Layer.backward` after *filling* (overwriting, never
accumulating) its parameter gradients. It never imports numpy or cupy: the
model hands it ``self.xp`` (the array module) and ``self.ops`` (the backend's
fused kernels). Parameters and gradients are views into the model's single
flat buffers, so a barrier moves a whole model in one collective.
"""

import inspect

import numpy as np

from horn.backends.base import GOLDEN, MIX1, MIX2

_MASK64 = (1 << 64) - 1


def mix64(a, b):
    """A splitmix64-style hash of two integers: independent 63-bit mask keys."""
    z = (a * GOLDEN + b + 1) & _MASK64
    z = ((z ^ (z >> 30)) * MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * MIX2) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


class ParamSpec:
    """A declared parameter: where it lives in the flat buffer is the model's business."""

    __slots__ = ("name", "shape", "init", "fan_in", "fan_out")

    def __init__(self, name, shape, init, fan_in, fan_out):
        self.name, self.shape, self.init = name, tuple(int(s) for s in shape), init
        self.fan_in, self.fan_out = fan_in, fan_out

    @property
    def size(self):
        return int(np.prod(self.shape)) if self.shape else 1


class Layer:
    """Base class of every layer. Subclass it; see the README for a complete example.

    Set by the model before :meth:`build`: ``xp``, ``ops``, ``dtype``,
    ``needs_input_grad`` (False for the first layer: its input gradient is never
    used, so Dense skips that matmul). After build: ``params`` and ``grads``,
    dicts of named views into the model's flat buffers.
    """

    type_name = None  # set by horn.registry.register_layer

    def __new__(cls, *args, **kwargs):
        # Record the constructor arguments so a model can be saved as a spec and rebuilt.
        obj = super().__new__(cls)
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        bound.apply_defaults()
        obj._config = {k: v for k, v in list(bound.arguments.items())[1:]
                       if k not in ("args", "kwargs")}
        obj._specs, obj._buffers = [], {}
        obj.params, obj.grads = {}, {}
        obj.xp = obj.ops = obj._keys = None
        obj.dtype = np.float32
        obj.needs_input_grad = True
        return obj

    # ---- what a layer implements -------------------------------------------
    def build(self, in_features):
        """Declare parameters with :meth:`declare`; return the output width."""
        return in_features

    def forward(self, x, train):
        """Return the output for input ``x`` (n, in_features); keep what backward needs."""
        raise NotImplementedError

    def backward(self, dy):
        """Fill ``self.grads`` and return d(loss)/dx (or None when not ``needs_input_grad``).

        ``dy`` belongs to the layer now: it may be overwritten in place.
        """
        raise NotImplementedError

    # ---- helpers a layer calls ---------------------------------------------
    def declare(self, name, shape, init="zeros", fan_in=None, fan_out=None):
        """Declare a parameter; ``init`` is a name from horn.initializers or a
        callable ``(rng, shape, fan_in, fan_out) -> array``."""
        if any(s.name == name for s in self._specs):
            raise ValueError(f"parameter {name!r} declared twice")
        self._specs.append(ParamSpec(name, shape, init, fan_in, fan_out))

    def buffer(self, name, shape):
        """A reusable work array: allocated once per shape, so steps allocate nothing."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != tuple(shape):
            buf = self.xp.empty(shape, dtype=self.dtype)
            self._buffers[name] = buf
        return buf

    def new_key(self):
        """A fresh key for a hash mask (dropout, DropConnect); deterministic per model seed."""
        return self._keys()

    @property
    def config(self):
        """The constructor arguments: with ``type_name`` this rebuilds the layer."""
        return dict(self._config)

    def spec(self):
        return {"type": self.type_name or f"{type(self).__module__}:{type(self).__qualname__}",
                **self.config}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"


class Loss(Layer):
    """A loss ends the model: :meth:`forward` takes targets and returns a float,
    :meth:`backward` takes no argument and returns d(loss)/d(input)."""

    def forward(self, x, targets):
        raise NotImplementedError

    def backward(self):
        raise NotImplementedError

    def predict(self, x, out):
        """Turn the model's output into predictions (e.g. probabilities) written to ``out``."""
        out[...] = x
