"""CPU backend: BLAS for matmuls, Numba for every elementwise pass.

Each kernel does in one parallel pass what numpy would do in several (and
without temporaries): bias + activation, activation backward + bias gradient,
hash-mask dropout, softmax-cross-entropy, the optimizer updates, and the
row/column gather/scatter between a parent and its sub-networks.
"""

import math
import os

os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")  # see THREADING_LAYER below

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from horn.backends.base import ACTIVATIONS, BF16_MAX_BITS, GOLDEN, MIX1, MIX2, Backend

_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}  # identity, relu, tanh, sigmoid
_GOLDEN, _MIX1, _MIX2 = np.uint64(GOLDEN), np.uint64(MIX1), np.uint64(MIX2)
_S30, _S27, _S31, _S40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)
_ONE = np.uint64(1)
_INV24 = np.float32(2.0**-24)
_BF16_MAX_BITS = np.uint32(BF16_MAX_BITS)

# OpenBLAS's worker threads spin after each matmul; GNU OpenMP's spin too, and on
# a 2-core host the two pools starve each other (measured: 130 ms per step
# instead of 14). Numba's own workqueue pool does not spin. (The environment
# variable is set too: numba re-reads its config from it.)
numba.config.THREADING_LAYER = os.environ["NUMBA_THREADING_LAYER"]
PARALLEL_MIN = 1 << 16  # elements: below this, waking a thread pool costs more than it saves


def _kernel(fn):
    """Compile ``fn`` twice, serial and parallel; calls pick one by problem size."""
    return (njit(cache=True, nogil=True)(fn), njit(parallel=True, cache=True, nogil=True)(fn))


def _pick(pair, size):
    return pair[size >= PARALLEL_MIN]


@njit(inline="always", cache=True)
def _uniform(key, i):
    z = key + (np.uint64(i) + _ONE) * _GOLDEN
    z ^= z >> _S30
    z *= _MIX1
    z ^= z >> _S27
    z *= _MIX2
    z ^= z >> _S31
    return np.float32(z >> _S40) * _INV24


@_kernel
def _bias_act(z, b, act, scale):
    n, m = z.shape
    for i in prange(n):
        row = z[i]
        if act == 1:
            for j in range(m):
                row[j] = max(row[j] * scale + b[j], np.float32(0))
        elif act == 2:
            for j in range(m):
                row[j] = math.tanh(row[j] * scale + b[j])
        elif act == 3:
            for j in range(m):
                row[j] = np.float32(1) / (np.float32(1) + math.exp(-(row[j] * scale + b[j])))
        else:
            for j in range(m):
                row[j] = row[j] * scale + b[j]


@njit(inline="always", cache=True)
def _deriv_row(dy, y, act):
    m = dy.shape[0]
    if act == 1:
        for j in range(m):
            if y[j] <= 0:
                dy[j] = 0
    elif act == 2:
        for j in range(m):
            dy[j] *= np.float32(1) - y[j] * y[j]
    elif act == 3:
        for j in range(m):
            dy[j] *= y[j] * (np.float32(1) - y[j])


@_kernel
def _act_backward(dy, y, act):
    for i in prange(dy.shape[0]):
        _deriv_row(dy[i], y[i], act)


@_kernel
def _act_backward_bias(dy, y, act, db, threads):
    n, m = dy.shape
    chunks = min(threads, n)
    partial = np.zeros((chunks, m), dtype=np.float32)
    for c in prange(chunks):
        lo, hi = c * n // chunks, (c + 1) * n // chunks
        acc = partial[c]
        for i in range(lo, hi):
            _deriv_row(dy[i], y[i], act)
            row = dy[i]
            for j in range(m):
                acc[j] += row[j]
    for j in range(m):
        db[j] = 0
    for c in range(chunks):
        for j in range(m):
            db[j] += partial[c, j]


@_kernel
def _activation(x, act, out):
    for i in prange(x.size):
        v = x[i]
        if act == 1:
            v = max(v, np.float32(0))
        elif act == 2:
            v = math.tanh(v)
        elif act == 3:
            v = np.float32(1) / (np.float32(1) + math.exp(-v))
        out[i] = v


@_kernel
def _scale(a, s):
    for i in prange(a.size):
        a[i] *= s


@_kernel
def _dropout(x, key, keep, out):
    inv = np.float32(1.0 / keep)
    for i in prange(x.size):
        out[i] = x[i] * inv if _uniform(key, i) < keep else np.float32(0)


@_kernel
def _softmax_xent(logits, labels, soft, use_soft, grad, inv_t, coef):
    n, c = logits.shape
    losses = np.empty(n, dtype=np.float64)
    for i in prange(n):
        row = logits[i]
        g = grad[i]
        zmax = row[0] * inv_t
        for j in range(1, c):
            zmax = max(zmax, row[j] * inv_t)
        total = 0.0
        for j in range(c):
            e = math.exp(row[j] * inv_t - zmax)
            g[j] = e
            total += e
        logz = zmax + math.log(total)
        loss = 0.0
        for j in range(c):
            t = soft[i, j] if use_soft else (1.0 if j == labels[i] else 0.0)
            loss -= t * (row[j] * inv_t - logz)
            g[j] = (g[j] / total - t) * coef
        losses[i] = loss
    return losses.sum() / n


@_kernel
def _softmax(logits, out, inv_t):
    n, c = logits.shape
    for i in prange(n):
        zmax = logits[i, 0] * inv_t
        for j in range(1, c):
            zmax = max(zmax, logits[i, j] * inv_t)
        total = 0.0
        for j in range(c):
            e = math.exp(logits[i, j] * inv_t - zmax)
            out[i, j] = e
            total += e
        for j in range(c):
            out[i, j] /= total


@_kernel
def _gather(parent, rows, cols, out):
    n, m = out.shape
    for i in prange(n):
        src = parent[rows[i]] if rows.size else parent[i]
        dst = out[i]
        if cols.size:
            for j in range(m):
                dst[j] = src[cols[j]]
        else:
            dst[:] = src


@_kernel
def _scatter(compact, rows, cols, parent):
    n, m = compact.shape
    for i in prange(n):
        dst = parent[rows[i]] if rows.size else parent[i]
        src = compact[i]
        if cols.size:
            for j in range(m):
                dst[cols[j]] = src[j]
        else:
            dst[:] = src


# ---- convolution and pooling: every kernel runs one sample, one (n, c) plane or (below)
# one block of samples' rows or channels per task, so no two threads write the same output
# and the sums are deterministic.


@njit(inline="always", cache=True)
def _valid(size, out, stride, offset):
    """[j0, j1): the output positions j whose input j * stride + offset is in [0, size)."""
    j0, j1 = 0, out
    while j0 < out and j0 * stride + offset < 0:
        j0 += 1
    while j1 > j0 and (j1 - 1) * stride + offset >= size:
        j1 -= 1
    return j0, j1


@_kernel
def _im2col(x, kh, kw, sh, sw, ph, pw, out):
    n, c, h, w = x.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    for s in prange(n):  # sample s fills columns [s*oh*ow, (s+1)*oh*ow) of every row
        for ch in range(c):
            for a in range(kh):
                i0, i1 = _valid(h, oh, sh, a - ph)
                for b in range(kw):
                    j0, j1 = _valid(w, ow, sw, b - pw)
                    dst = out[(ch * kh + a) * kw + b, s * oh * ow : (s + 1) * oh * ow]
                    for i in range(oh):
                        row = dst[i * ow : (i + 1) * ow]
                        if i < i0 or i >= i1:
                            row[:] = 0
                            continue
                        src = x[s, ch, i * sh + a - ph]
                        for j in range(j0):
                            row[j] = 0
                        for j in range(j0, j1):
                            row[j] = src[j * sw + b - pw]
                        for j in range(j1, ow):
                            row[j] = 0


def _full_rows(kernel, stride, pad):
    """Stride 1 and "same" padding across: output rows as wide as the input's."""
    return tuple(stride) == (1, 1) and 2 * pad[1] == kernel[1] - 1


# The flat-shift kernels split work into (row or channel, block of samples) tasks, so each
# thread writes long contiguous runs instead of, per sample, 288 scattered 784-byte runs.
# bench/step.py's conv(32->64), between the step's matmuls: im2col 8.3-9.6 -> 4.3-4.6 ms
# at 1 thread, 5.1-5.3 -> 3.9-4.0 ms at 2 (a plain copy of its 29 MB takes 3.2-3.9 ms);
# col2im 7.9-8.1 -> 5.4-5.8 ms at 1 thread, unchanged (4.6-5.3 ms) at 2.
SAMPLES_PER_TASK = 32


@_kernel
def _im2col_full_rows(x, kh, kw, ph, pw, out):
    """``_im2col`` for stride 1 and output rows as wide as the input's (C-contiguous x and
    out): each row of ``out`` holds, per sample, the image plane shifted by one flat offset,
    so one slice copy fills it; then the out-of-range rows and the columns that wrapped
    around from the neighbouring image row are zeroed. 2.5-5x faster than ``_im2col``'s
    row-by-row copies on bench/step.py's layers."""
    n, c, h, w = x.shape
    oh, p, cols = h + 2 * ph - kh + 1, (h + 2 * ph - kh + 1) * w, out.shape[1]
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    blocks = -(-n // SAMPLES_PER_TASK)
    for task in prange(c * kh * kw * blocks):
        r, block = task // blocks, task % blocks  # out's row r = (ch, a, b)
        ch, a, b = r // (kh * kw), r // kw % kh, r % kw
        i0, i1 = _valid(h, oh, 1, a - ph)
        j0, j1 = _valid(w, w, 1, b - pw)
        # a run from the first valid pixel to the last (none: all zeros)
        lo, hi = (i0 * w + j0, (i1 - 1) * w + j1) if i0 < i1 and j0 < j1 else (0, 0)
        for s in range(block * SAMPLES_PER_TASK, min(n, (block + 1) * SAMPLES_PER_TASK)):
            start = r * cols + s * p
            shift = (s * c + ch) * h * w + (a - ph) * w + b - pw
            flat_out[start : start + lo] = 0
            flat_out[start + lo : start + hi] = flat_x[shift + lo : shift + hi]
            flat_out[start + hi : start + p] = 0
            for i in range(i0, i1):  # scalar loops: 0-2 elements each
                row = start + i * w
                for j in range(j0):
                    flat_out[row + j] = 0
                for j in range(j1, w):
                    flat_out[row + j] = 0


@_kernel
def _col2im(cols, kh, kw, sh, sw, ph, pw, out):
    n, c, h, w = out.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    p = oh * ow
    flat = out.reshape(-1)
    # Flat offsets, not nested slices: slicing every 14-element row made this 2.7x slower.
    for s in prange(n):  # sample s owns out[s]: no two threads add into one pixel
        for q in range(s * c * h * w, (s + 1) * c * h * w):
            flat[q] = 0
        for ch in range(c):
            plane = (s * c + ch) * h * w
            for a in range(kh):
                i0, i1 = _valid(h, oh, sh, a - ph)
                for b in range(kw):
                    j0, j1 = _valid(w, ow, sw, b - pw)
                    src = cols[(ch * kh + a) * kw + b]
                    for i in range(i0, i1):
                        row = s * p + i * ow
                        dst = plane + (i * sh + a - ph) * w + b - pw
                        for j in range(j0, j1):
                            flat[dst + j * sw] += src[row + j]


@_kernel
def _col2im_full_rows(cols, kh, kw, ph, pw, out):
    """``_col2im`` for stride 1 and output rows as wide as the input's (C-contiguous cols
    and out), ``_im2col_full_rows``'s adjoint: per channel, sample and tap, the tap's row of
    ``cols`` is copied to a scratch run, its wrapped-around columns zeroed, and the run
    added to the image plane at one flat offset (taps add in the same order as
    ``_col2im``'s, plus exact zeros)."""
    n, c, h, w = out.shape
    oh, p, width = h + 2 * ph - kh + 1, (h + 2 * ph - kh + 1) * w, cols.shape[1]
    flat_cols, flat_out = cols.reshape(-1), out.reshape(-1)
    blocks = -(-n // SAMPLES_PER_TASK)
    for task in prange(c * blocks):  # a task owns its channel of its samples' images
        ch, block = task // blocks, task % blocks
        run = np.empty(p, out.dtype)
        for s in range(block * SAMPLES_PER_TASK, min(n, (block + 1) * SAMPLES_PER_TASK)):
            plane = (s * c + ch) * h * w
            flat_out[plane : plane + h * w] = 0
            for a in range(kh):
                i0, i1 = _valid(h, oh, 1, a - ph)
                if i0 >= i1:
                    continue
                for b in range(kw):
                    j0, j1 = _valid(w, w, 1, b - pw)
                    if j0 >= j1:  # this tap sees only padding
                        continue
                    start = ((ch * kh + a) * kw + b) * width + s * p
                    shift = plane + (a - ph) * w + b - pw
                    lo, hi = i0 * w + j0, (i1 - 1) * w + j1
                    run[lo:hi] = flat_cols[start + lo : start + hi]
                    for i in range(i0, i1):  # scalar loops: 0-2 elements each
                        for j in range(j0):
                            run[i * w + j] = 0
                        for j in range(j1, w):
                            run[i * w + j] = 0
                    target, source = flat_out[shift + lo : shift + hi], run[lo:hi]
                    for q in range(hi - lo):
                        target[q] += source[q]


@njit(inline="always", cache=True)
def _act1(v, act):
    if act == 1:
        return max(v, np.float32(0))
    if act == 2:
        return math.tanh(v)
    if act == 3:
        return np.float32(1) / (np.float32(1) + math.exp(-v))
    return v


@njit(inline="always", cache=True)
def _deriv1(y, act):
    if act == 1:
        return np.float32(1) if y > 0 else np.float32(0)
    if act == 2:
        return np.float32(1) - y * y
    if act == 3:
        return y * (np.float32(1) - y)
    return np.float32(1)


@_kernel
def _bias_act_nchw(z, b, act, out):
    n, o, p = out.shape
    for s in prange(n):
        for k in range(o):
            src, dst, bias = z[k, s * p : (s + 1) * p], out[s, k], b[k]
            for q in range(p):
                dst[q] = _act1(src[q] + bias, act)


@_kernel
def _act_backward_nchw(dy, y, act, dz, db):
    n, o, p = dy.shape
    partial = np.zeros((n, o), dtype=np.float32)  # per-sample bias sums, added in order
    for s in prange(n):
        for k in range(o):
            dst, g, v = dz[k, s * p : (s + 1) * p], dy[s, k], y[s, k]
            total = np.float32(0)
            for q in range(p):
                d = g[q] * _deriv1(v[q], act)
                dst[q] = d
                total += d
            partial[s, k] = total
    for k in range(o):
        db[k] = 0
    for s in range(n):
        for k in range(o):
            db[k] += partial[s, k]


@_kernel
def _max_pool(x, kh, kw, sh, sw, ph, pw, out, argmax):
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for plane in prange(n * c):
        s, ch = plane // c, plane % c
        src, dst, arg = x[s, ch], out[s, ch], argmax[s, ch]
        for i in range(oh):
            a0, a1 = max(0, ph - i * sh), min(kh, h + ph - i * sh)  # rows inside the image
            for j in range(ow):
                b0, b1 = max(0, pw - j * sw), min(kw, w + pw - j * sw)
                r, col = i * sh - ph + a0, j * sw - pw + b0
                best, where = src[r, col], r * w + col
                for a in range(a0, a1):
                    r = i * sh - ph + a
                    for b in range(b0, b1):
                        v = src[r, j * sw - pw + b]
                        if v > best:
                            best, where = v, r * w + j * sw - pw + b
                dst[i, j] = best
                arg[i, j] = where


@_kernel
def _max_pool_2x2(x, out, argmax):
    """The common 2x2, stride 2, unpadded case, unrolled: 3-4x the general kernel's speed."""
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for plane in prange(n * c):
        s, ch = plane // c, plane % c
        src, dst, arg = x[s, ch], out[s, ch], argmax[s, ch]
        for i in range(oh):
            top, bottom = src[2 * i], src[2 * i + 1]
            for j in range(ow):
                best, where = top[2 * j], 2 * i * w + 2 * j
                if top[2 * j + 1] > best:
                    best, where = top[2 * j + 1], 2 * i * w + 2 * j + 1
                if bottom[2 * j] > best:
                    best, where = bottom[2 * j], (2 * i + 1) * w + 2 * j
                if bottom[2 * j + 1] > best:
                    best, where = bottom[2 * j + 1], (2 * i + 1) * w + 2 * j + 1
                dst[i, j] = best
                arg[i, j] = where


@_kernel
def _max_pool_backward(dy, argmax, dx):
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    for plane in prange(n * c):
        s, ch = plane // c, plane % c
        dst = dx[s, ch].reshape(h * w)
        dst[:] = 0
        for i in range(oh):
            for j in range(ow):
                dst[argmax[s, ch, i, j]] += dy[s, ch, i, j]


@_kernel
def _avg_pool(x, kh, kw, sh, sw, ph, pw, out):
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    inv = np.float32(1.0 / (kh * kw))
    for plane in prange(n * c):
        s, ch = plane // c, plane % c
        for i in range(oh):
            for j in range(ow):
                total = np.float32(0)
                for a in range(kh):
                    r = i * sh - ph + a
                    if 0 <= r < h:
                        for b in range(kw):
                            col = j * sw - pw + b
                            if 0 <= col < w:
                                total += x[s, ch, r, col]
                out[s, ch, i, j] = total * inv


@_kernel
def _avg_pool_backward(dy, kh, kw, sh, sw, ph, pw, dx):
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    inv = np.float32(1.0 / (kh * kw))
    for plane in prange(n * c):
        s, ch = plane // c, plane % c
        dst = dx[s, ch]
        dst[:, :] = 0
        for i in range(oh):
            for j in range(ow):
                g = dy[s, ch, i, j] * inv
                for a in range(kh):
                    r = i * sh - ph + a
                    if 0 <= r < h:
                        for b in range(kw):
                            col = j * sw - pw + b
                            if 0 <= col < w:
                                dst[r, col] += g


@_kernel
def _sgd(p, g, v, lr, mu, wd, nesterov):
    for i in prange(p.size):
        gi = g[i] + wd * p[i]
        if mu != 0:
            vi = mu * v[i] + gi
            v[i] = vi
            gi = gi + mu * vi if nesterov else vi
        p[i] -= lr * gi


@_kernel
def _adam(p, g, m, v, lr, b1, b2, eps, wd, c1, c2):
    for i in prange(p.size):
        gi = g[i] + wd * p[i]
        mi = b1 * m[i] + (np.float32(1) - b1) * gi
        vi = b2 * v[i] + (np.float32(1) - b2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= lr * (mi / c1) / (math.sqrt(vi / c2) + eps)


@_kernel
def _all_finite(a):
    bad = 0
    for i in prange(a.size):
        if not math.isfinite(a[i]):
            bad += 1
    return bad == 0


_NO_INDEX = np.empty(0, dtype=np.int64)
_NO_SOFT = np.empty((0, 0), dtype=np.float32)
_NO_LABELS = np.empty(0, dtype=np.int64)


# ---- compressed exchanges: error feedback fused with the codec (one pass each) -------
@njit(inline="always", cache=True)
def _fp16_bits(f):
    """IEEE half bits of float32 bits ``f``: round to nearest even, saturating at 65504."""
    sign = (f >> 16) & 0x8000
    e = np.int64((f >> 23) & 0xFF) - 112  # rebias 127 -> 15
    m = np.int64(f & 0x7FFFFF)
    if e >= 31:
        return sign | 0x7BFF
    if e <= 0:
        if e < -10:
            return sign
        m |= 0x800000
        shift = 14 - e
        h = m >> shift
        rem, half = m & ((1 << shift) - 1), 1 << (shift - 1)
        if rem > half or (rem == half and h & 1):
            h += 1
        return sign | h
    h = (e << 10) | (m >> 13)
    rem = m & 0x1FFF
    if rem > 0x1000 or (rem == 0x1000 and h & 1):
        h += 1
    return sign | min(h, 0x7BFF)


@njit(inline="always", cache=True)
def _bf16_bits(f):
    """bfloat16 bits of float32 bits ``f``: round to nearest even, saturating."""
    if (f & 0x7FFFFFFF) > _BF16_MAX_BITS:
        return ((f >> 16) & 0x8000) | 0x7F7F
    return (np.int64(f) + 0x7FFF + ((f >> 16) & 1)) >> 16


@njit(inline="always", cache=True)
def _half_value(h, brain):
    """The float32 value of fp16 (``brain`` False) or bf16 bits ``h``."""
    sign = -1.0 if h & 0x8000 else 1.0
    if brain:
        e, m = (h >> 7) & 0xFF, h & 0x7F
        value = math.ldexp(m, -133) if e == 0 else math.ldexp(m + 128, e - 134)
    else:
        e, m = (h >> 10) & 0x1F, h & 0x3FF
        value = math.ldexp(m, -24) if e == 0 else math.ldexp(m + 1024, e - 25)
    return np.float32(sign * value)


@_kernel
def _compress_half(v, vbits, residual, out, brain):
    # v = x + residual already (work buffer); vbits: its float32 bits (a view)
    for i in prange(v.size):
        h = _bf16_bits(vbits[i]) if brain else _fp16_bits(vbits[i])
        out[i] = np.uint16(h)
        residual[i] = v[i] - _half_value(h, brain)


@_kernel
def _decompress_half_add(h, out, brain):
    for i in prange(out.size):
        out[i] += _half_value(h[i], brain)


@_kernel
def _compress_int8(x, residual, block, scales, q):
    n = x.size
    for b in prange(scales.size):
        lo, hi = b * block, min(b * block + block, n)
        amax = np.float32(0)
        for i in range(lo, hi):
            a = abs(x[i] + residual[i])
            if a > amax:
                amax = a
        s = amax / np.float32(127)
        scales[b] = s
        for i in range(lo, hi):
            v = x[i] + residual[i]
            k = np.float32(0)
            if s > 0:
                k = min(max(np.floor(v / s + np.float32(0.5)), np.float32(-127)), np.float32(127))
            q[i] = np.int8(k)
            residual[i] = v - k * s


@_kernel
def _decompress_int8_add(q, scales, block, out):
    for i in prange(out.size):
        out[i] += np.float32(q[i]) * scales[i // block]


def _flat(a):
    return a.reshape(-1)


def _rows(a):
    return a.reshape(a.shape[0], -1)


def _f32(x):
    return np.float32(x)


class NumbaBackend(Backend):
    name = "numba"
    xp = np

    def to_host(self, a):
        return np.asarray(a)

    def bias_act(self, z, b, act, scale=1.0):
        _pick(_bias_act, z.size)(z, b, _ACT_CODE[act], _f32(scale))

    def act_backward(self, dy, y, act, db=None):
        if db is None:
            if act != "identity":  # any shape: (n, ...) as rows
                _pick(_act_backward, dy.size)(_rows(dy), _rows(y), _ACT_CODE[act])
        else:
            _pick(_act_backward_bias, dy.size)(dy, y, _ACT_CODE[act], db, numba.get_num_threads())

    def activation(self, x, act, out):
        _pick(_activation, x.size)(_flat(x), _ACT_CODE[act], _flat(out))

    def scale(self, a, s):
        _pick(_scale, a.size)(_flat(a), _f32(s))

    def dropout(self, x, key, keep, out):
        _pick(_dropout, x.size)(_flat(x), np.uint64(key), _f32(keep), _flat(out))

    def softmax(self, logits, out, temperature=1.0):
        _pick(_softmax, logits.size)(logits, out, 1.0 / temperature)

    def softmax_xent(self, logits, targets, grad, temperature=1.0, weight=1.0):
        coef = weight / (logits.shape[0] * temperature)
        if targets.ndim == 1:
            return float(
                _pick(_softmax_xent, logits.size)(
                    logits,
                    targets.astype(np.int64, copy=False),
                    _NO_SOFT,
                    False,
                    grad,
                    1.0 / temperature,
                    coef,
                )
            )
        return float(
            _pick(_softmax_xent, logits.size)(
                logits, _NO_LABELS, targets, True, grad, 1.0 / temperature, coef
            )
        )

    def gather(self, parent, rows, cols, out):
        _pick(_gather, out.size)(
            parent, _NO_INDEX if rows is None else rows, _NO_INDEX if cols is None else cols, out
        )

    def scatter(self, compact, rows, cols, parent):
        _pick(_scatter, compact.size)(
            compact,
            _NO_INDEX if rows is None else rows,
            _NO_INDEX if cols is None else cols,
            parent,
        )

    def im2col(self, x, kernel, stride, pad, out):
        if _full_rows(kernel, stride, pad) and x.flags.c_contiguous and out.flags.c_contiguous:
            _pick(_im2col_full_rows, out.size)(x, *kernel, *pad, out)
        else:
            _pick(_im2col, out.size)(x, *kernel, *stride, *pad, out)

    def col2im(self, cols, kernel, stride, pad, out):
        if _full_rows(kernel, stride, pad) and cols.flags.c_contiguous and out.flags.c_contiguous:
            _pick(_col2im_full_rows, cols.size)(cols, *kernel, *pad, out)
        else:
            _pick(_col2im, cols.size)(cols, *kernel, *stride, *pad, out)

    def bias_act_nchw(self, z, b, act, out):
        _pick(_bias_act_nchw, z.size)(z, b, _ACT_CODE[act], out)

    def act_backward_nchw(self, dy, y, act, dz, db):
        _pick(_act_backward_nchw, dy.size)(dy, y, _ACT_CODE[act], dz, db)

    def max_pool(self, x, kernel, stride, pad, out, argmax):
        if kernel == stride == (2, 2) and pad == (0, 0):
            _pick(_max_pool_2x2, x.size)(x, out, argmax)
        else:
            _pick(_max_pool, x.size)(x, *kernel, *stride, *pad, out, argmax)

    def max_pool_backward(self, dy, argmax, kernel, stride, pad, dx):
        _pick(_max_pool_backward, dx.size)(dy, argmax, dx)

    def avg_pool(self, x, kernel, stride, pad, out):
        _pick(_avg_pool, x.size)(x, *kernel, *stride, *pad, out)

    def avg_pool_backward(self, dy, kernel, stride, pad, dx):
        _pick(_avg_pool_backward, dx.size)(dy, *kernel, *stride, *pad, dx)

    def sgd_update(self, p, g, v, lr, momentum, weight_decay, nesterov):
        _pick(_sgd, p.size)(
            p,
            g,
            p if v is None else v,
            _f32(lr),
            _f32(momentum),
            _f32(weight_decay),
            bool(nesterov),
        )

    def adam_update(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, t):
        _pick(_adam, p.size)(
            p,
            g,
            m,
            v,
            _f32(lr),
            _f32(beta1),
            _f32(beta2),
            _f32(eps),
            _f32(weight_decay),
            _f32(1 - beta1**t),
            _f32(1 - beta2**t),
        )

    def compress(self, codec, x, residual, block, message):
        if codec == "int8":
            nb = -(-x.size // block)
            _pick(_compress_int8, x.size)(
                x,
                residual,
                block,
                message[: 4 * nb].view(np.float32),
                message[4 * nb :].view(np.int8),
            )
            return
        v = self._work(x.size)
        np.add(x, residual, out=v)
        _pick(_compress_half, x.size)(
            v, v.view(np.uint32), residual, message.view(np.uint16), codec == "bf16"
        )

    def decompress_add(self, codec, message, block, out):
        if codec == "int8":
            nb = -(-out.size // block)
            _pick(_decompress_int8_add, out.size)(
                message[4 * nb :].view(np.int8), message[: 4 * nb].view(np.float32), block, out
            )
        else:
            _pick(_decompress_half_add, out.size)(message.view(np.uint16), out, codec == "bf16")

    def _work(self, n):
        """A float32 scratch vector of ``n`` values, kept between calls."""
        work = getattr(self, "_work_buffer", None)
        if work is None or work.size < n:
            work = self._work_buffer = np.empty(n, np.float32)
        return work[:n]

    def all_finite(self, a):
        return bool(_pick(_all_finite, a.size)(_flat(a)))


def set_threads(n):
    """Set Numba's thread count (BLAS threads are set separately via threadpoolctl)."""
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
