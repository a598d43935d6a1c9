"""The kernel interface every backend implements.

Layers call these instead of writing elementwise numpy so that a backend can
fuse them (Numba on CPU, CUDA on GPU). Matmuls are not here: they always go to
BLAS through ``xp.matmul(a, b, out=...)``.

Random masks (dropout, DropConnect) come from a counter-based hash of
``(key, element index)`` rather than a stateful generator: the mask is a pure
function, so it never has to be stored between forward and backward, it is the
same on every backend (tests compare exactly), and parallel kernels need no
per-thread RNG state.
"""

ACTIVATIONS = ("identity", "relu", "tanh", "sigmoid")

GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
KEY_MASK = (1 << 63) - 1

CODECS = ("fp16", "bf16", "int8")
FP16_MAX = 65504.0
BF16_MAX_BITS = 0x7F7F0000  # the largest finite bfloat16, as float32 bits


def message_size(codec, n, block):
    """Bytes of one compressed message of ``n`` float32 values: 2 n for fp16/bf16;
    for int8, one float32 scale per ``block`` values, then n int8 (``4 ceil(n/B) + n``)."""
    if codec == "int8":
        return 4 * -(-n // block) + n
    return 2 * n


def out_size(size, kernel, stride, pad):
    """Output length of a window sliding over ``size`` (+ ``pad`` on both sides)."""
    return (size + 2 * pad - kernel) // stride + 1


class Backend:
    """Kernel set on one array module. All float arrays are float32 and C-contiguous."""

    name = "base"
    xp = None

    # --- moving data -------------------------------------------------------
    def asarray(self, a, dtype=None):
        """Put a host array on this backend's device (no copy where possible)."""
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a):
        """Return a numpy array (device -> host copy where needed)."""
        raise NotImplementedError

    def synchronize(self):
        """Wait for queued device work (a no-op on CPU); call before MPI touches a buffer."""

    # --- fused elementwise -------------------------------------------------
    def bias_act(self, z, b, act, scale=1.0):
        """In place: ``z = act(scale * z + b)`` over a (n, m) matrix, b of shape (m,)."""
        raise NotImplementedError

    def act_backward(self, dy, y, act, db=None):
        """In place: ``dy *= act'(y)`` where y is the activation's output.

        With ``db`` given, also write the column sums of the result into it (the
        bias gradient), in the same pass.
        """
        raise NotImplementedError

    def activation(self, x, act, out):
        """``out = act(x)``."""
        raise NotImplementedError

    def scale(self, a, s):
        """In place ``a *= s``."""
        raise NotImplementedError

    # --- masks ---------------------------------------------------------------
    def dropout(self, x, key, keep, out):
        """``out = x * m / keep`` with ``m = hash(key, i) < keep``; the same call with
        the same key is its own backward (pass dy as x)."""
        raise NotImplementedError

    def mask_weights(self, w, key, keep, out):
        """DropConnect: ``out = w * m / keep`` elementwise, mask as in :meth:`dropout`."""
        return self.dropout(w, key, keep, out)

    # --- losses ----------------------------------------------------------------
    def softmax_xent(self, logits, targets, grad, temperature=1.0, weight=1.0):
        """Mean cross-entropy of softmax(logits / T) against targets.

        ``targets`` are int class labels of shape (n,) or soft targets (n, c)
        whose rows sum to 1. Writes ``weight * d(loss)/d(logits)`` into ``grad``
        (which may alias nothing) and returns the loss as a float.
        """
        raise NotImplementedError

    def softmax(self, logits, out, temperature=1.0):
        """Row-wise ``out = softmax(logits / T)``."""
        raise NotImplementedError

    # --- sub-network gather/scatter -------------------------------------------
    def gather(self, parent, rows, cols, out):
        """``out = parent[rows][:, cols]``; rows/cols are int64 index arrays or None (all)."""
        raise NotImplementedError

    def scatter(self, compact, rows, cols, parent):
        """``parent[rows][:, cols] = compact`` (the inverse of :meth:`gather`)."""
        raise NotImplementedError

    # --- convolution and pooling on (N, C, H, W) images --------------------------
    # ``kernel``, ``stride`` and ``pad`` are (height, width) pairs of ints. An output
    # size is ``(H + 2 pad - kernel) // stride + 1``; padding reads as zero for the
    # lowering and average pooling, and is never chosen by max pooling.
    def im2col(self, x, kernel, stride, pad, out):
        """Lower images x (N, C, H, W) to ``out`` (C*KH*KW, N*OH*OW): column
        ``(n, oh, ow)`` holds the receptive field of output pixel (oh, ow) of sample n in
        (c, kh, kw) order, so a convolution is one BLAS matmul W (O, C*KH*KW) @ out.
        (This orientation, not its transpose, because OpenBLAS ran the conv(32->64)
        forward matmul 1.3-1.4x faster as (64, 288) @ (288, N*196) than as
        (N*196, 288) @ (288, 64), and every row is a contiguous, vectorisable copy.)"""
        raise NotImplementedError

    def col2im(self, cols, kernel, stride, pad, out):
        """The adjoint of :meth:`im2col`: ``out`` (N, C, H, W) = the sum of every
        column entry into the pixel it was read from (the input gradient)."""
        raise NotImplementedError

    def bias_act_nchw(self, z, b, act, out):
        """Convolution epilogue: ``z`` (O, N*P), the weights times the im2col columns,
        to ``out`` (N, O, P) = act(z + b), b per output channel, in one pass."""
        raise NotImplementedError

    def act_backward_nchw(self, dy, y, act, dz, db):
        """Backward of :meth:`bias_act_nchw`: ``dz`` (O, N*P) = dy * act'(y) from dy, y
        (N, O, P); ``db`` (O,) = its sums over n and p, in the same pass."""
        raise NotImplementedError

    def max_pool(self, x, kernel, stride, pad, out, argmax):
        """``out`` (N, C, OH, OW) = window maxima of x; ``argmax`` (int32, same shape)
        = the winner's index in its H*W plane (the first maximum in row-major order)."""
        raise NotImplementedError

    def max_pool_backward(self, dy, argmax, kernel, stride, pad, dx):
        """``dx`` (N, C, H, W) = dy routed to the winners of :meth:`max_pool` with the
        same window (summed where windows overlap)."""
        raise NotImplementedError

    def avg_pool(self, x, kernel, stride, pad, out):
        """``out`` = window means, padding counted as zeros (divides by KH*KW)."""
        raise NotImplementedError

    def avg_pool_backward(self, dy, kernel, stride, pad, dx):
        """``dx`` (N, C, H, W) = dy / (KH*KW) spread over each window, summed."""
        raise NotImplementedError

    # --- optimizer updates on the flat buffers --------------------------------
    def sgd_update(self, p, g, v, lr, momentum, weight_decay, nesterov):
        """One SGD step in place on flat buffers: ``g' = g + wd p; v = mu v + g';
        p -= lr (g' + mu v if nesterov else v)``. ``v`` may be None when mu == 0."""
        raise NotImplementedError

    def adam_update(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, t):
        """One Adam step (bias-corrected, L2 weight decay into the gradient)."""
        raise NotImplementedError

    # --- compressed exchanges (horn.barriers.compress) -------------------------
    def compress(self, codec, x, residual, block, message):
        """Error-feedback compression of flat float32 ``x``: ``v = x + residual``,
        ``message`` (uint8, :func:`message_size` bytes) = codec(v), ``residual = v -
        decoded(message)``. fp16 saturates at +-65504 and bf16 at its largest finite value
        (round to nearest even); int8 scales each block by max|v| / 127 and rounds half up."""
        raise NotImplementedError

    def decompress_add(self, codec, message, block, out):
        """``out += decoded(message)`` (flat float32)."""
        raise NotImplementedError

    # --- reductions ---------------------------------------------------------
    def all_finite(self, a):
        """True when every element of a is finite."""
        return bool(self.xp.isfinite(a).all())
