"""The low-level layer API: everything a new layer needs, and nothing more.

A layer declares its parameters in :meth:`Layer.build`, computes its output in
:meth:`Layer.forward` (keeping what backward needs) and returns the input
gradient from :meth:`Layer.backward` after *filling* (overwriting, never
accumulating) its parameter gradients. It never imports numpy or cupy: the
model hands it ``self.xp`` (the array module) and ``self.ops`` (the backend's
fused kernels). Parameters and gradients are views into the model's single
flat buffers, so a barrier moves a whole model in one collective.

Shapes: ``build`` receives the shape of one sample and returns the shape of one
output sample. A flat vector's shape is an int (what Dense and every layer
written before images existed expect); an image's is a tuple ``(C, H, W)``,
and a batch of them arrives as an (N, C, H, W) array. :func:`as_shape`
normalises: a 1-tuple is an int, so a 1-D shape always reaches ``build`` as an int.
"""

import inspect
import math

import numpy as np

from horn.backends.base import GOLDEN, MIX1, MIX2
from horn.options import check_options

_MASK64 = (1 << 64) - 1


def mix64(a, b):
    """A splitmix64-style hash of two integers: independent 63-bit mask keys."""
    z = (a * GOLDEN + b + 1) & _MASK64
    z = ((z ^ (z >> 30)) * MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * MIX2) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def as_shape(shape):
    """One sample's shape as horn passes it: an int for a flat vector, a tuple for more
    axes; ``None`` when ``shape`` is neither (non-positive sizes included)."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        return int(shape) if shape > 0 else None
    if (
        not isinstance(shape, (tuple, list))
        or not shape
        or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in shape
        )
    ):
        return None
    return int(shape[0]) if len(shape) == 1 else tuple(int(d) for d in shape)


def shape_size(shape):
    """Number of values in one sample of ``shape`` (an int or a tuple)."""
    return int(shape) if isinstance(shape, int) else math.prod(shape)


def batch_shape(n, shape):
    """The array shape of ``n`` samples of ``shape``."""
    return (n, shape) if isinstance(shape, int) else (n, *shape)


def _is_shape(shape):
    """A tuple or list of non-negative ints (numpy's too, never bool)."""
    return isinstance(shape, (tuple, list)) and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in shape
    )


class ParamSpec:
    """A declared parameter: where it lives in the flat buffer is the model's business.

    ``trainable=False`` declares a statistic (batch norm's running mean): it lives in
    the flat parameter buffer, so model files, checkpoints and barriers carry it like
    a weight, but the optimizer never steps it (its gradient stays zero).
    """

    __slots__ = ("name", "shape", "init", "fan_in", "fan_out", "trainable")

    def __init__(self, name, shape, init, fan_in, fan_out, trainable=True):
        self.name, self.shape, self.init = name, tuple(int(s) for s in shape), init
        self.fan_in, self.fan_out, self.trainable = fan_in, fan_out, bool(trainable)

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
    #: Axes per sample the layer needs (3 for images (C, H, W)); None: any shape. When the
    #: first layer needs 3, the model takes image data in its (C, H, W) shape.
    input_rank = None

    def __new__(cls, *args, **kwargs):
        # Record the constructor arguments so a model can be saved as a spec and rebuilt.
        obj = super().__new__(cls)
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        check_options(cls, bound.arguments)  # typed options: before the constructor coerces
        bound.apply_defaults()
        obj._config = {
            k: v for k, v in list(bound.arguments.items())[1:] if k not in ("args", "kwargs")
        }
        obj._specs, obj._buffers = [], {}
        obj.params, obj.grads = {}, {}
        obj.xp = obj.ops = obj._keys = None
        obj.dtype = np.float32
        obj.needs_input_grad = True
        return obj

    # ---- what a layer implements -------------------------------------------
    def build(self, in_features):
        """Declare parameters with :meth:`declare`; return the output shape.

        ``in_features`` is one input sample's shape: an int (a flat vector) or a
        tuple such as ``(C, H, W)``; return an int or a tuple the same way.
        """
        return in_features

    def forward(self, x, train):
        """Return the output for input ``x`` (n, *in shape); keep what backward needs."""
        raise NotImplementedError

    def backward(self, dy):
        """Fill ``self.grads`` and return d(loss)/dx (or None when not ``needs_input_grad``).

        ``dy`` belongs to the layer now: it may be overwritten in place.
        """
        raise NotImplementedError

    def work_bytes(self, batch):
        """Bytes of the work buffers the layer keeps for a batch of ``batch`` rows,
        besides its output and input gradient (horn counts those itself): the
        :meth:`buffer` arrays that live from forward to backward and on between steps,
        e.g. conv2d's im2col columns and matmul output. The default, 0, suits a layer
        that keeps nothing larger than its output. See :meth:`scratch_bytes` for the
        temporaries of one step.

        Called after :meth:`build`, before anything is allocated, by ``horn validate``
        and ``horn run``'s memory estimate (:func:`horn.memory.estimate`), for the
        training batch and for the evaluation batch; ``self.ops`` is then the backend
        the job runs on (its ``name`` says which; None on the GPU) and :attr:`itemsize`
        the bytes of one value. Return a non-negative int. A layer that allocates per
        batch should override it, so that a job it cannot hold is refused before
        training instead of running out of memory in it.
        """
        return 0

    def scratch_bytes(self, batch):
        """Bytes of the largest set of temporary arrays alive at once inside one training
        step of ``batch`` rows (freed before the step ends, unlike :meth:`work_bytes`),
        e.g. what the numpy reference backend copies while lowering a convolution. Only
        one layer computes at a time, so the estimate adds the largest layer's.
        Default 0; called like :meth:`work_bytes`."""
        return 0

    # ---- the partition protocol: how sub-networks split a layer ----------------
    # Sub-network training (horn.subnet) gives each worker a disjoint share of every
    # hidden layer's output units (an image layer's output channels) and a compact copy
    # of each layer for that share. It learns everything it needs from these members;
    # the defaults mean "not partitionable", so a model holding such a layer is refused.

    #: None: the layer cannot be in a sub-network (the default). "split": it owns output
    #: units that workers share out (dense, conv2d): :meth:`partition_axes` and
    #: :meth:`partition_spec` say how. "through": its output units follow its input
    #: units (activations, dropout, pooling, batch norm, flatten): :meth:`map_partition`.
    partition_role = None
    #: The factor a "split" layer multiplies its inputs by (set by sub-network training
    #: when a worker sees only part of them; 1 elsewhere). A split layer must honour it.
    input_scale = 1.0

    def partition_axes(self):
        """``{parameter name: (input axis, output axis)}`` for every parameter: the axis
        that follows the layer's input units and the one that follows its output units
        (None: neither, e.g. a kernel's height). A "through" layer's parameters (batch
        norm's per-channel ones) name their axis as the input axis."""
        return {}

    def partition_spec(self, units):
        """A "split" layer: the spec (``{"type": ..., **options}``) of its compact copy
        with ``units`` output units."""
        raise NotImplementedError(f"{type(self).__name__} does not split its output units")

    def dropconnect_spec(self, spec, p):
        """A "split" layer: ``spec`` (a compact copy's) with its weights masked by
        DropConnect of drop probability ``p`` (``dropconnect`` of sub-networks); None
        (the default): the layer has no such variant and such a job is refused."""
        return None

    def map_partition(self, kept):
        """A "through" layer: the output units that follow input units ``kept`` (a sorted
        int64 array); the default: the same ones. Flatten maps channels to H*W blocks
        (:meth:`unit_blocks`)."""
        return kept

    @staticmethod
    def unit_blocks(kept, block):
        """The units that ``kept`` become when each unit becomes ``block`` consecutive
        ones (flatten: a channel's H*W pixels): a host int64 array, sorted like ``kept``."""
        return (np.asarray(kept, np.int64)[:, None] * block + np.arange(block)).reshape(-1)

    # ---- helpers a layer calls ---------------------------------------------
    def declare(self, name, shape, init="zeros", fan_in=None, fan_out=None, trainable=True):
        """Declare a parameter; ``init`` is a name from horn.initializers or a
        callable ``(rng, shape, fan_in, fan_out) -> array``. ``trainable=False``: a
        statistic the layer updates itself (see :class:`ParamSpec`); backward fills
        its gradient with zeros like any other."""
        if any(s.name == name for s in self._specs):
            raise ValueError(f"parameter {name!r} declared twice")
        if not _is_shape(shape):
            nested = isinstance(shape, (tuple, list)) and any(isinstance(s, tuple) for s in shape)
            hint = " (build received an image shape: one entry per channel?)" if nested else ""
            raise ValueError(
                f"declare({name!r}): expected a shape of non-negative ints, found {shape!r}{hint}"
            )
        self._specs.append(ParamSpec(name, shape, init, fan_in, fan_out, trainable))

    def buffer(self, name, shape, dtype=None):
        """A reusable work array (of the model's dtype unless ``dtype`` is given, e.g.
        int32 for pooling's argmax): allocated once per shape, so steps allocate nothing."""
        dtype = self.dtype if dtype is None else dtype
        buf = self._buffers.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = self.xp.empty(shape, dtype=dtype)
            self._buffers[name] = buf
        return buf

    @property
    def itemsize(self):
        """Bytes of one value of the model's dtype (4 for float32)."""
        return np.dtype(self.dtype).itemsize

    def new_key(self):
        """A fresh key for a hash mask (dropout, DropConnect); deterministic per model seed."""
        return self._keys()

    @property
    def config(self):
        """The constructor arguments: with ``type_name`` this rebuilds the layer."""
        return dict(self._config)

    def spec(self):
        return {
            "type": self.type_name or f"{type(self).__module__}:{type(self).__qualname__}",
            **self.config,
        }

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

    #: True when :meth:`predict` writes class probabilities (rows summing to 1), which an
    #: ensemble may average and distil (EC-DNN); False (the default) for anything else.
    predicts_probabilities = False

    def predict(self, x, out):
        """Turn the model's output into predictions (e.g. probabilities) written to ``out``."""
        out[...] = x
