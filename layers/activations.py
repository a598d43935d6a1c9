"""Standalone activations (Dense also fuses them: prefer ``activation=`` there)."""

from horn import Layer, register_layer


class _Activation(Layer):
    kind = None
    partition_role = "through"  # elementwise: sub-networks carry the partition on

    def forward(self, x, train):
        self.y = self.buffer("y", x.shape)
        self.ops.activation(x, self.kind, self.y)
        return self.y

    def backward(self, dy):
        self.ops.act_backward(dy, self.y, self.kind)
        return dy


@register_layer("relu")
class ReLU(_Activation):
    kind = "relu"


@register_layer("tanh")
class Tanh(_Activation):
    kind = "tanh"


@register_layer("sigmoid")
class Sigmoid(_Activation):
    kind = "sigmoid"
