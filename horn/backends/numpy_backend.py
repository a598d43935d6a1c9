"""The reference backend: plain numpy, written for clarity, not speed.

Every other backend is tested against this one.
"""

import numpy as np

from horn.backends.base import BF16_MAX_BITS, FP16_MAX, GOLDEN, MIX1, MIX2, Backend, out_size


def hash_uniform(key, n, xp=np):
    """Uniform floats in [0, 1) from a splitmix64 hash of ``(key, i)`` for i < n."""
    u64 = xp.uint64
    z = xp.arange(1, n + 1, dtype=u64) * u64(GOLDEN) + u64(key)
    z ^= z >> u64(30)
    z *= u64(MIX1)
    z ^= z >> u64(27)
    z *= u64(MIX2)
    z ^= z >> u64(31)
    return (z >> u64(40)).astype(xp.float32) * xp.float32(2.0**-24)


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


def _windows(x, kernel, stride, pad, fill):
    """(N, C, KH, KW, OH, OW) view-copies: entry [..., i, j, oh, ow] is the pixel that
    kernel position (i, j) of output pixel (oh, ow) reads (``fill`` in the padding)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    padded = np.full((n, c, h + 2 * ph, w + 2 * pw), fill, dtype=x.dtype)
    padded[:, :, ph : ph + h, pw : pw + w] = x
    win = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            win[:, :, i, j] = padded[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw]
    return win


def _unwindow(win, kernel, stride, pad, shape):
    """Adjoint of :func:`_windows`: every window entry added back into its pixel."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    n, c, h, w = shape
    oh, ow = win.shape[4:]
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=win.dtype)
    for i in range(kh):
        for j in range(kw):
            padded[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw] += win[:, :, i, j]
    return padded[:, :, ph : ph + h, pw : pw + w]


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

    def im2col(self, x, kernel, stride, pad, out):
        win = _windows(x, kernel, stride, pad, 0)  # (N, C, KH, KW, OH, OW)
        out[...] = win.transpose(1, 2, 3, 0, 4, 5).reshape(out.shape)

    def col2im(self, cols, kernel, stride, pad, out):
        n, c, h, w = out.shape
        oh = out_size(h, kernel[0], stride[0], pad[0])
        ow = out_size(w, kernel[1], stride[1], pad[1])
        win = cols.reshape(c, kernel[0], kernel[1], n, oh, ow).transpose(3, 0, 1, 2, 4, 5)
        out[...] = _unwindow(win, kernel, stride, pad, out.shape)

    def bias_act_nchw(self, z, b, act, out):
        n, o, p = out.shape
        out[...] = _act(z + b[:, None], act).reshape(o, n, p).transpose(1, 0, 2)

    def act_backward_nchw(self, dy, y, act, dz, db):
        g = dy * _act_grad(y, act)
        dz[...] = g.transpose(1, 0, 2).reshape(dz.shape)
        db[...] = g.sum(axis=(0, 2))

    def max_pool(self, x, kernel, stride, pad, out, argmax):
        win = _windows(x, kernel, stride, pad, -np.inf)
        n, c, kh, kw, oh, ow = win.shape
        flat = win.reshape(n, c, kh * kw, oh, ow)
        best = flat.argmax(axis=2)  # the first maximum in (i, j) row-major order
        out[...] = np.take_along_axis(flat, best[:, :, None], axis=2)[:, :, 0]
        i, j = best // kw, best % kw
        rows = np.arange(oh)[:, None] * stride[0] - pad[0] + i
        cols = np.arange(ow)[None, :] * stride[1] - pad[1] + j
        argmax[...] = rows * x.shape[3] + cols

    def max_pool_backward(self, dy, argmax, kernel, stride, pad, dx):
        n, c, h, w = dx.shape
        planes = np.zeros((n * c, h * w), dtype=dx.dtype)
        idx = argmax.reshape(n * c, -1)
        np.add.at(planes, (np.arange(n * c)[:, None], idx), dy.reshape(n * c, -1))
        dx[...] = planes.reshape(dx.shape)

    def avg_pool(self, x, kernel, stride, pad, out):
        out[...] = _windows(x, kernel, stride, pad, 0).mean(axis=(2, 3))

    def avg_pool_backward(self, dy, kernel, stride, pad, dx):
        kh, kw = kernel
        win = np.broadcast_to(
            (dy / (kh * kw))[:, :, None, None], dy.shape[:2] + (kh, kw) + dy.shape[2:]
        )
        dx[...] = _unwindow(win, kernel, stride, pad, dx.shape)

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
        mhat = m / np.float32(1 - beta1**t)
        vhat = v / np.float32(1 - beta2**t)
        p -= np.float32(lr) * mhat / (np.sqrt(vhat) + np.float32(eps))

    # --- compressed exchanges: the reference the kernels are tested against -----
    def compress(self, codec, x, residual, block, message):
        v = x + residual
        n = v.size
        if codec == "int8":
            nb = -(-n // block)
            scales, q = message[: 4 * nb].view(np.float32), message[4 * nb :].view(np.int8)
            blocks = np.zeros(nb * block, np.float32)
            blocks[:n] = v
            blocks = blocks.reshape(nb, block)
            scales[:] = np.abs(blocks).max(axis=1) / np.float32(127)
            safe = np.where(scales > 0, scales, np.float32(1))[:, None]
            k = np.clip(np.floor(blocks / safe + np.float32(0.5)), -127, 127)
            k[scales == 0] = 0
            q[:] = k.reshape(-1)[:n].astype(np.int8)
        else:
            message.view(np.uint16)[:] = _to_half_bits(codec, v)
        residual[:] = v
        residual -= _decoded(codec, message, block, n)

    def decompress_add(self, codec, message, block, out):
        out += _decoded(codec, message, block, out.size)


def _to_half_bits(codec, v):
    if codec == "fp16":
        return np.clip(v, -FP16_MAX, FP16_MAX).astype(np.float16).view(np.uint16)
    top = np.float32(np.array([BF16_MAX_BITS], np.uint32).view(np.float32)[0])
    bits = np.clip(v, -top, top).astype(np.float32).view(np.uint32)
    return (
        (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    ).astype(np.uint16)


def _decoded(codec, message, block, n):
    if codec == "int8":
        nb = -(-n // block)
        scales, q = message[: 4 * nb].view(np.float32), message[4 * nb :].view(np.int8)
        return q.astype(np.float32) * np.repeat(scales, block)[:n]
    half = message.view(np.uint16)
    if codec == "fp16":
        return half.view(np.float16).astype(np.float32)
    return (half.astype(np.uint32) << np.uint32(16)).view(np.float32)
