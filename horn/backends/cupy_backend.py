"""GPU backend: CuPy arrays, cuBLAS for matmuls, hand-written CUDA for the rest.

The fused kernels live in ``horn/backends/cuda/kernels.cu`` (shipped as package
data) and are compiled once per device with NVRTC through ``cupy.RawModule``.
They do what :mod:`horn.backends.numba_backend` does on CPU, one pass each:
bias + activation, activation backward (+ bias gradient), hash-mask dropout,
softmax cross-entropy, softmax, the row/column gather/scatter between a parent
and its sub-networks, the SGD and Adam updates, the finite check, and for
convolutions the im2col lowering and its adjoint, the NCHW bias + activation
epilogue and its backward, and max/average pooling with their backwards. Masks use
the same splitmix64 hash as :func:`horn.backends.numpy_backend.hash_uniform`,
so they are bit-identical on every backend.

Every kernel is queued on CuPy's current stream and returns at once. Call
:meth:`CupyBackend.synchronize` before any MPI call reads or writes a device
buffer: MPI does not know about the stream and would otherwise see memory the
GPU has not finished writing (or overwrite memory it is still reading).

This module imports cupy at the top; :func:`horn.backends.get_backend` only
imports it once ``available_backends()`` has found CuPy and a device.
"""

import importlib.resources
import math

import cupy
import numpy as np

from horn.backends.base import ACTIVATIONS, Backend, out_size

_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}  # identity, relu, tanh, sigmoid

#: Every ``extern "C" __global__`` function of kernels.cu (tests check the PTX has them).
KERNEL_NAMES = (
    "bias_act",
    "act_backward",
    "act_backward_bias",
    "col_sum",
    "activation",
    "scale",
    "dropout",
    "hash_uniform",
    "softmax_xent",
    "softmax",
    "gather",
    "scatter",
    "sgd_update",
    "adam_update",
    "any_nonfinite",
    "im2col",
    "col2im",
    "bias_act_nchw",
    "act_backward_nchw",
    "row_sum",
    "max_pool",
    "max_pool_backward",
    "avg_pool",
    "avg_pool_backward",
    "compress_half",
    "decompress_half_add",
    "compress_int8",
    "decompress_int8_add",
)

_BLOCK = 256  # threads per block of the 1-D grid-stride kernels
_ROWS_PER_BLOCK = 8  # warps (rows) per block of softmax / softmax_xent
_COLSUM_ROWS = 8  # blockDim.y of act_backward_bias / col_sum (HORN_COLSUM_ROWS)
_MIN_CHUNK = 64  # fewest rows one act_backward_bias block sums


def kernel_source():
    """The CUDA C text of kernels.cu (package data next to this module)."""
    return (importlib.resources.files("horn.backends") / "cuda" / "kernels.cu").read_text()


def _f32(x):
    return np.float32(x)


def _i64(x):
    return np.int64(x)


def _i32(x):
    return np.int32(x)


def _act_code(act):
    try:
        return _ACT_CODE[act]
    except KeyError:
        raise ValueError(
            f"unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}"
        ) from None


def _target(a, name):
    """An array a kernel writes into: it must already be float32, C-contiguous, on device."""
    if not isinstance(a, cupy.ndarray):
        raise TypeError(f"{name} must be a cupy array, got {type(a).__name__}")
    if a.dtype != cupy.float32 or not a.flags.c_contiguous:
        raise ValueError(
            f"{name} must be float32 and C-contiguous, got {a.dtype} "
            f"(c_contiguous={a.flags.c_contiguous})"
        )
    return a


def _source(a):
    """An array a kernel only reads: made float32, C-contiguous and on device (no copy if it is)."""
    return cupy.ascontiguousarray(cupy.asarray(a), dtype=cupy.float32)


class CupyBackend(Backend):
    name = "cupy"
    xp = cupy

    def __init__(self):
        self._source = kernel_source()
        self._modules = {}  # device id -> cupy.RawModule
        self._functions = {}  # (device id, name) -> cupy.RawKernel
        self._sm_count = {}  # device id -> multiprocessor count

    # --- kernel plumbing ----------------------------------------------------
    def _fn(self, name):
        dev = cupy.cuda.Device().id
        fn = self._functions.get((dev, name))
        if fn is None:
            module = self._modules.get(dev)
            if module is None:
                module = self._modules[dev] = cupy.RawModule(code=self._source)
            fn = self._functions[(dev, name)] = module.get_function(name)
        return fn

    def _sms(self):
        dev = cupy.cuda.Device()
        n = self._sm_count.get(dev.id)
        if n is None:
            n = self._sm_count[dev.id] = dev.attributes["MultiProcessorCount"]
        return n

    def _launch_1d(self, name, size, args):
        """Launch a grid-stride kernel over ``size`` elements (nothing to do at 0)."""
        if size <= 0:
            return
        blocks = min(-(-size // _BLOCK), self._sms() * 16)
        self._fn(name)((blocks,), (_BLOCK,), args)

    def _launch_rows(self, name, n, args):
        """Launch a one-warp-per-row kernel over ``n`` rows."""
        if n <= 0:
            return
        self._fn(name)((-(-n // _ROWS_PER_BLOCK),), (32, _ROWS_PER_BLOCK), args)

    def _index(self, idx):
        """An int64 device index array, or the (unread) empty one for "all"."""
        if idx is None:
            return cupy.empty(0, dtype=cupy.int64), 1
        return cupy.ascontiguousarray(cupy.asarray(idx), dtype=cupy.int64), 0

    # --- moving data ------------------------------------------------------------
    def to_host(self, a):
        return cupy.asnumpy(a)

    def synchronize(self):
        """Wait for every kernel queued on the current stream.

        Must be called before any MPI call touches a device buffer (CUDA-aware
        MPI or a host staging copy alike): kernels launch asynchronously.
        """
        cupy.cuda.get_current_stream().synchronize()

    # --- fused elementwise ------------------------------------------------------
    def bias_act(self, z, b, act, scale=1.0):
        _target(z, "z")
        b = _source(b)
        m = z.shape[-1] if z.ndim else 1
        if b.size != m:
            raise ValueError(f"bias has {b.size} elements for {m} columns")
        if z.size == 0:
            return
        self._launch_1d(
            "bias_act", z.size, (z, b, _i64(z.size), _i64(m), _i32(_act_code(act)), _f32(scale))
        )

    def act_backward(self, dy, y, act, db=None):
        _target(dy, "dy")
        y = _source(y)
        code = _act_code(act)
        if db is None:
            if code != 0:
                self._launch_1d("act_backward", dy.size, (dy, y, _i64(dy.size), _i32(code)))
            return
        _target(db, "db")
        n, m = dy.shape
        if db.size != m:
            raise ValueError(f"db has {db.size} elements for {m} columns")
        if m == 0:
            return
        if n == 0:
            db.fill(0)
            return
        col_tiles = -(-m // 32)
        # enough row chunks to fill the GPU (~8 blocks of 256 threads per SM),
        # each at least _MIN_CHUNK rows; the partial sums are then added by col_sum
        chunks = max(1, min(-(-n // _MIN_CHUNK), -(-self._sms() * 8 // col_tiles), 65535))
        chunk = -(-n // chunks)
        chunks = -(-n // chunk)
        partial = db if chunks == 1 else cupy.empty((chunks, m), dtype=cupy.float32)
        self._fn("act_backward_bias")(
            (col_tiles, chunks),
            (32, _COLSUM_ROWS),
            (dy, y, partial, _i64(n), _i64(m), _i32(code), _i64(chunk)),
        )
        if chunks > 1:
            self._col_sum(partial, db)

    def _col_sum(self, a, out):
        n, m = a.shape
        self._fn("col_sum")((-(-m // 32),), (32, _COLSUM_ROWS), (a, out, _i64(n), _i64(m)))

    def bias_grad(self, dy, db):
        """``db = dy.sum(axis=0)`` with the col_sum kernel (deterministic)."""
        _target(db, "db")
        dy = _source(dy)
        if dy.shape[1] and dy.shape[0]:
            self._col_sum(dy, db)
        else:
            db.fill(0)

    def activation(self, x, act, out):
        _target(out, "out")
        x = _source(x)
        if x.size != out.size:
            raise ValueError(f"activation: x has {x.size} elements, out {out.size}")
        self._launch_1d("activation", x.size, (x, out, _i64(x.size), _i32(_act_code(act))))

    def scale(self, a, s):
        _target(a, "a")
        self._launch_1d("scale", a.size, (a, _i64(a.size), _f32(s)))

    # --- masks --------------------------------------------------------------------
    def dropout(self, x, key, keep, out):
        _target(out, "out")
        x = _source(x)
        if x.size != out.size:
            raise ValueError(f"dropout: x has {x.size} elements, out {out.size}")
        self._launch_1d(
            "dropout", x.size, (x, out, _i64(x.size), np.uint64(key), _f32(keep), _f32(1.0 / keep))
        )

    def hash_uniform(self, key, n):
        """The uniform floats behind the masks, as a device array (for tests)."""
        u = cupy.empty(n, dtype=cupy.float32)
        self._launch_1d("hash_uniform", n, (u, _i64(n), np.uint64(key)))
        return u

    # --- losses -----------------------------------------------------------------
    def softmax_xent(self, logits, targets, grad, temperature=1.0, weight=1.0):
        logits = _source(logits)
        _target(grad, "grad")
        n, c = logits.shape
        if grad.shape != logits.shape:
            raise ValueError(f"grad has shape {grad.shape}, logits {logits.shape}")
        targets = cupy.asarray(targets)
        if targets.ndim == 1:
            labels = cupy.ascontiguousarray(targets, dtype=cupy.int64)
            soft = cupy.empty(0, dtype=cupy.float32)
            use_soft = 0
        else:
            labels = cupy.empty(0, dtype=cupy.int64)
            soft = _source(targets)
            if soft.shape != logits.shape:
                raise ValueError(f"soft targets have shape {soft.shape}, logits {logits.shape}")
            use_soft = 1
        if n == 0:
            return math.nan
        losses = cupy.empty(n, dtype=cupy.float32)
        coef = weight / (n * temperature)
        self._launch_rows(
            "softmax_xent",
            n,
            (
                logits,
                labels,
                soft,
                _i32(use_soft),
                grad,
                losses,
                _i64(n),
                _i64(c),
                _f32(1.0 / temperature),
                _f32(coef),
            ),
        )
        return float(losses.sum(dtype=cupy.float64).item()) / n

    def softmax(self, logits, out, temperature=1.0):
        _target(out, "out")
        logits = _source(logits)
        n, c = logits.shape
        if out.shape != logits.shape:
            raise ValueError(f"out has shape {out.shape}, logits {logits.shape}")
        self._launch_rows("softmax", n, (logits, out, _i64(n), _i64(c), _f32(1.0 / temperature)))

    # --- sub-network gather/scatter -----------------------------------------------
    def _sub_shape(self, parent, rows, cols):
        n = parent.shape[0] if rows is None else len(rows)
        m = parent.shape[1] if cols is None else len(cols)
        return n, m

    def gather(self, parent, rows, cols, out):
        _target(out, "out")
        parent = _source(parent)
        n, m = self._sub_shape(parent, rows, cols)
        if out.shape != (n, m):
            raise ValueError(f"gather: out has shape {out.shape}, expected {(n, m)}")
        r, all_rows = self._index(rows)
        c, all_cols = self._index(cols)
        self._launch_1d(
            "gather",
            n * m,
            (
                parent,
                r,
                c,
                out,
                _i64(n),
                _i64(m),
                _i64(parent.shape[1]),
                _i32(all_rows),
                _i32(all_cols),
            ),
        )

    def scatter(self, compact, rows, cols, parent):
        _target(parent, "parent")
        compact = _source(compact)
        n, m = self._sub_shape(parent, rows, cols)
        if compact.shape != (n, m):
            raise ValueError(f"scatter: compact has shape {compact.shape}, expected {(n, m)}")
        r, all_rows = self._index(rows)
        c, all_cols = self._index(cols)
        self._launch_1d(
            "scatter",
            n * m,
            (
                compact,
                r,
                c,
                parent,
                _i64(n),
                _i64(m),
                _i64(parent.shape[1]),
                _i32(all_rows),
                _i32(all_cols),
            ),
        )

    # --- convolution and pooling -----------------------------------------------------
    @staticmethod
    def _window(images, kernel, stride, pad):
        """The 12 sizes kernels.cu's HORN_WINDOW_ARGS take (int64 scalars) for a window
        sliding over ``images`` (the input side: x forward, dx backward)."""
        n, c, h, w = images.shape
        oh, ow = (
            out_size(h, kernel[0], stride[0], pad[0]),
            out_size(w, kernel[1], stride[1], pad[1]),
        )
        return tuple(_i64(v) for v in (n, c, h, w, *kernel, *stride, *pad, oh, ow))

    def im2col(self, x, kernel, stride, pad, out):
        _target(out, "out")
        x = _source(x)
        self._launch_1d("im2col", out.size, (x, out, *self._window(x, kernel, stride, pad)))

    def col2im(self, cols, kernel, stride, pad, out):
        _target(out, "out")
        self._launch_1d(
            "col2im", out.size, (_source(cols), out, *self._window(out, kernel, stride, pad))
        )

    def bias_act_nchw(self, z, b, act, out):
        _target(out, "out")
        n, o, p = out.shape
        self._launch_1d(
            "bias_act_nchw",
            out.size,
            (_source(z), _source(b), out, _i64(n), _i64(o), _i64(p), _i32(_act_code(act))),
        )

    def act_backward_nchw(self, dy, y, act, dz, db):
        _target(dz, "dz")
        _target(db, "db")
        n, o, p = dy.shape
        self._launch_1d(
            "act_backward_nchw",
            dz.size,
            (_source(dy), _source(y), dz, _i64(n), _i64(o), _i64(p), _i32(_act_code(act))),
        )
        self._fn("row_sum")((min(o, 65535),), (256,), (dz, db, _i64(o), _i64(n * p)))

    def max_pool(self, x, kernel, stride, pad, out, argmax):
        _target(out, "out")
        x = _source(x)
        if argmax.dtype != cupy.int32:
            raise ValueError(f"argmax must be int32, got {argmax.dtype}")
        self._launch_1d(
            "max_pool", out.size, (x, out, argmax, *self._window(x, kernel, stride, pad))
        )

    def max_pool_backward(self, dy, argmax, kernel, stride, pad, dx):
        _target(dx, "dx")
        self._launch_1d(
            "max_pool_backward",
            dx.size,
            (
                _source(dy),
                cupy.ascontiguousarray(argmax, dtype=cupy.int32),
                dx,
                *self._window(dx, kernel, stride, pad),
            ),
        )

    def avg_pool(self, x, kernel, stride, pad, out):
        _target(out, "out")
        x = _source(x)
        self._launch_1d("avg_pool", out.size, (x, out, *self._window(x, kernel, stride, pad)))

    def avg_pool_backward(self, dy, kernel, stride, pad, dx):
        _target(dx, "dx")
        self._launch_1d(
            "avg_pool_backward", dx.size, (_source(dy), dx, *self._window(dx, kernel, stride, pad))
        )

    # --- optimizer updates on the flat buffers --------------------------------------
    def sgd_update(self, p, g, v, lr, momentum, weight_decay, nesterov):
        _target(p, "p")
        g = _source(g)
        if momentum:
            _target(v, "v")
        else:
            v = p  # never read or written when momentum == 0
        self._launch_1d(
            "sgd_update",
            p.size,
            (
                p,
                g,
                v,
                _i64(p.size),
                _f32(lr),
                _f32(momentum),
                _f32(weight_decay),
                _i32(bool(nesterov)),
            ),
        )

    def adam_update(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, t):
        _target(p, "p")
        _target(m, "m")
        _target(v, "v")
        g = _source(g)
        self._launch_1d(
            "adam_update",
            p.size,
            (
                p,
                g,
                m,
                v,
                _i64(p.size),
                _f32(lr),
                _f32(beta1),
                _f32(beta2),
                _f32(eps),
                _f32(weight_decay),
                _f32(1 - beta1**t),
                _f32(1 - beta2**t),
            ),
        )

    # --- compressed exchanges ---------------------------------------------------
    def compress(self, codec, x, residual, block, message):
        _target(residual, "residual")
        x = _source(x)
        if codec == "int8":
            nb = -(-x.size // block)
            self._launch_1d(
                "compress_int8",
                nb,
                (
                    x,
                    residual,
                    message[: 4 * nb].view(cupy.float32),
                    message[4 * nb :].view(cupy.int8),
                    _i64(x.size),
                    _i64(block),
                    _i64(nb),
                ),
            )
        else:
            self._launch_1d(
                "compress_half",
                x.size,
                (x, residual, message.view(cupy.uint16), _i64(x.size), _i32(codec == "bf16")),
            )

    def decompress_add(self, codec, message, block, out):
        _target(out, "out")
        if codec == "int8":
            nb = -(-out.size // block)
            self._launch_1d(
                "decompress_int8_add",
                out.size,
                (
                    message[4 * nb :].view(cupy.int8),
                    message[: 4 * nb].view(cupy.float32),
                    out,
                    _i64(out.size),
                    _i64(block),
                ),
            )
        else:
            self._launch_1d(
                "decompress_half_add",
                out.size,
                (message.view(cupy.uint16), out, _i64(out.size), _i32(codec == "bf16")),
            )

    # --- reductions -------------------------------------------------------------
    def all_finite(self, a):
        a = cupy.asarray(a)
        if a.dtype != cupy.float32:  # the kernel reads float32; anything else the generic way
            return bool(cupy.isfinite(a).all())
        a = cupy.ascontiguousarray(a)
        bad = cupy.zeros(1, dtype=cupy.int32)
        self._launch_1d("any_nonfinite", a.size, (a, _i64(a.size), bad))
        return not bool(bad.item())
