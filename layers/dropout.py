"""Inverted dropout: scale at training time so evaluation is the identity."""

from horn import Layer, register_layer


@register_layer("dropout")
class Dropout(Layer):
    partition_role = "through"  # elementwise: sub-networks carry the partition on

    def __init__(self, p: float = 0.5):
        if not 0 <= p < 1:
            raise ValueError(f"p must be in [0, 1), found {p!r}")
        self.p = p

    def forward(self, x, train):
        self.active = train and self.p > 0
        if not self.active:
            return x
        self.key = self.new_key()
        y = self.buffer("y", x.shape)
        self.ops.dropout(x, self.key, 1 - self.p, y)
        return y

    def backward(self, dy):
        if self.active:  # same key, same mask: the forward kernel is its own backward
            self.ops.dropout(dy, self.key, 1 - self.p, dy)
        return dy
