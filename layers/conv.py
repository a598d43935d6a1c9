"""2-D convolution lowered to one BLAS matmul (im2col), with a fused epilogue."""

from collections.abc import Callable

from horn import Layer, register_layer
from horn.layers._windows import image_shape, output_hw, pair

ACTIVATIONS = ("identity", "relu", "tanh", "sigmoid")


@register_layer("conv2d")
class Conv2d(Layer):
    """y = act(W * x + b) on (N, C, H, W) images; W has PyTorch's (O, C, KH, KW) layout.

    Forward: ``ops.im2col`` lowers the batch to (C*KH*KW, N*OH*OW) columns, one
    matmul with W gives (O, N*OH*OW), and ``ops.bias_act_nchw`` adds the bias,
    applies the activation and reorders to (N, O, OH, OW) in one pass. Backward is the same
    three steps in reverse: ``ops.act_backward_nchw`` (with the bias gradient), two
    matmuls (dW, d columns), ``ops.col2im`` (skipped for the first layer).

    Partition protocol (sub-networks split output channels): W's axis 0 and b follow
    the output channels, W's axis 1 the input channels. ``input_scale`` (s) multiplies
    the matmul's result before the epilogue (and dz after the bias gradient), only
    when it is not 1.
    """

    input_rank = 3
    partition_role = "split"

    def __init__(
        self,
        channels: int,
        kernel: int | list[int] = 3,
        stride: int | list[int] = 1,
        padding: int | list[int] = 0,
        activation: str = "identity",
        init: str | Callable = "he",
        bias: bool = True,
    ):
        if not (isinstance(channels, int) and not isinstance(channels, bool) and channels > 0):
            raise ValueError(f"channels must be a positive integer, found {channels!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, found {activation!r}")
        self.channels, self.activation, self.init, self.bias = channels, activation, init, bias
        self.kernel, self.stride = pair(kernel, "kernel", 1), pair(stride, "stride", 1)
        self.padding = pair(padding, "padding", 0)

    def build(self, in_shape):
        c, h, w = self.in_chw = image_shape(in_shape, "conv2d")
        kh, kw = self.kernel
        self.out_hw = output_hw(h, w, self.kernel, self.stride, self.padding, "conv2d")
        self.declare(
            "W",
            (self.channels, c, kh, kw),
            init=self.init,
            fan_in=c * kh * kw,
            fan_out=self.channels * kh * kw,
        )
        if self.bias:
            self.declare("b", (self.channels,), init="zeros")
        return (self.channels, *self.out_hw)

    def forward(self, x, train):
        n = x.shape[0]
        rows = n * self.out_hw[0] * self.out_hw[1]
        weights = self.params["W"].reshape(self.channels, -1)
        self.x = x
        self.cols = self.buffer("cols", (weights.shape[1], rows))
        self.ops.im2col(x, self.kernel, self.stride, self.padding, self.cols)
        z = self.buffer("z", (self.channels, rows))
        self.xp.matmul(weights, self.cols, out=z)
        if self.input_scale != 1.0:
            self.ops.scale(z, self.input_scale)
        self.y = self.buffer("y", (n, self.channels, *self.out_hw))
        bias = self.params["b"] if self.bias else self._zeros()
        self.ops.bias_act_nchw(z, bias, self.activation, self.y.reshape(n, self.channels, -1))
        return self.y

    def backward(self, dy):
        n = dy.shape[0]
        dz = self.buffer("z", (self.channels, self.cols.shape[1]))  # z is dead: reuse it
        db = self.grads["b"] if self.bias else self.buffer("db", (self.channels,))
        self.ops.act_backward_nchw(
            dy.reshape(n, self.channels, -1),
            self.y.reshape(n, self.channels, -1),
            self.activation,
            dz,
            db,
        )
        if self.input_scale != 1.0:  # after the bias gradient: the bias is not scaled
            self.ops.scale(dz, self.input_scale)
        self.xp.matmul(dz, self.cols.T, out=self.grads["W"].reshape(self.channels, -1))
        if not self.needs_input_grad:
            return None
        self.xp.matmul(self.params["W"].reshape(self.channels, -1).T, dz, out=self.cols)
        dx = self.buffer("dx", self.x.shape)
        self.ops.col2im(self.cols, self.kernel, self.stride, self.padding, dx)
        return dx

    def work_bytes(self, batch):
        """``cols`` (C*KH*KW, N*OH*OW) and ``z`` (O, N*OH*OW): forward fills them,
        backward reuses them for the column and output gradients, and they stay for
        the next step."""
        c = self.in_chw[0]
        pixels = batch * self.out_hw[0] * self.out_hw[1]
        return (c * self.kernel[0] * self.kernel[1] + self.channels) * pixels * self.itemsize

    def scratch_bytes(self, batch):
        """The numba backend's per-sample bias sums (N, O) in backward; the numpy
        reference's im2col (its windows and their reordered copy, each as large as
        ``cols``, after the padded batch) or its epilogue's backward (three arrays as
        large as ``z``)."""
        if getattr(self.ops, "name", None) != "numpy":
            return batch * self.channels * self.itemsize
        c, h, w = self.in_chw
        (kh, kw), (ph, pw) = self.kernel, self.padding
        pixels = batch * self.out_hw[0] * self.out_hw[1]
        padded = batch * c * (h + 2 * ph) * (w + 2 * pw)
        cols = c * kh * kw * pixels
        return max(padded + cols, 2 * cols, 3 * self.channels * pixels) * self.itemsize

    def partition_axes(self):
        return {"W": (1, 0), "b": (None, 0)} if self.bias else {"W": (1, 0)}

    def partition_spec(self, units):
        return {**self.spec(), "channels": units}

    def _zeros(self):
        zeros = self.buffer("no_bias", (self.channels,))
        zeros[...] = 0
        return zeros
