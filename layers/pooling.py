"""Pooling on (N, C, H, W) images: max, average and global average; flatten."""

import math

from horn import Layer, register_layer
from horn.layers._windows import image_shape, output_hw, pair


class _Pool2d(Layer):
    """Shared options: ``kernel`` (2), ``stride`` (the kernel), ``padding`` (0, at most
    half the kernel, so every window holds at least one pixel)."""

    input_rank = 3
    partition_role = "through"  # per channel: sub-networks carry the channel partition on

    def __init__(
        self,
        kernel: int | list[int] = 2,
        stride: int | list[int] | None = None,
        padding: int | list[int] = 0,
    ):
        self.kernel = pair(kernel, "kernel", 1)
        self.stride = self.kernel if stride is None else pair(stride, "stride", 1)
        self.padding = pair(padding, "padding", 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            raise ValueError(
                f"padding must be at most half the kernel {self.kernel}, found {padding!r}"
            )

    def build(self, in_shape):
        c, h, w = image_shape(in_shape, self.type_name)
        self.channels = c
        self.out_hw = output_hw(h, w, self.kernel, self.stride, self.padding, self.type_name)
        return (c, *self.out_hw)

    def _out(self, x, name="y", dtype=None):
        return self.buffer(name, (*x.shape[:2], *self.out_hw), dtype)


@register_layer("max_pool2d")
class MaxPool2d(_Pool2d):
    """Window maxima; the winners' positions are kept for backward (int32, one per output)."""

    def work_bytes(self, batch):
        """The int32 argmax, one per output value, kept for backward."""
        return 4 * batch * self.channels * self.out_hw[0] * self.out_hw[1]

    def forward(self, x, train):
        y, self.argmax = self._out(x), self._out(x, "argmax", "int32")
        self.ops.max_pool(x, self.kernel, self.stride, self.padding, y, self.argmax)
        self.in_shape = x.shape
        return y

    def backward(self, dy):
        dx = self.buffer("dx", self.in_shape)
        self.ops.max_pool_backward(dy, self.argmax, self.kernel, self.stride, self.padding, dx)
        return dx


@register_layer("avg_pool2d")
class AvgPool2d(_Pool2d):
    """Window means; padding counts as zeros (PyTorch's ``count_include_pad=True``)."""

    def forward(self, x, train):
        y = self._out(x)
        self.ops.avg_pool(x, self.kernel, self.stride, self.padding, y)
        self.in_shape = x.shape
        return y

    def backward(self, dy):
        dx = self.buffer("dx", self.in_shape)
        self.ops.avg_pool_backward(dy, self.kernel, self.stride, self.padding, dx)
        return dx


@register_layer("global_avg_pool")
class GlobalAvgPool(Layer):
    """(N, C, H, W) -> (N, C): each channel's mean (an average pool over the whole image)."""

    input_rank = 3
    partition_role = "through"  # channel c becomes feature c

    def build(self, in_shape):
        c, h, w = image_shape(in_shape, "global_avg_pool")
        self.hw = (h, w)
        return c

    def forward(self, x, train):
        y = self.buffer("y", (*x.shape[:2], 1, 1))
        self.ops.avg_pool(x, self.hw, self.hw, (0, 0), y)
        self.in_shape = x.shape
        return y.reshape(x.shape[:2])

    def backward(self, dy):
        dx = self.buffer("dx", self.in_shape)
        self.ops.avg_pool_backward(dy.reshape(*dy.shape, 1, 1), self.hw, self.hw, (0, 0), dx)
        return dx


@register_layer("flatten")
class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W) in C order: a view both ways, nothing is copied.
    In a sub-network, a kept channel becomes its block of H*W features."""

    partition_role = "through"

    def build(self, in_shape):
        self.block = math.prod(in_shape[1:]) if isinstance(in_shape, tuple) else 1
        return math.prod(in_shape) if isinstance(in_shape, tuple) else in_shape

    def map_partition(self, kept):
        return self.unit_blocks(kept, self.block)

    def forward(self, x, train):
        self.in_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.in_shape)
