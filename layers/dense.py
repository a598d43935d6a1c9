"""Fully connected layer with a fused bias + activation."""

from collections.abc import Callable

from horn import Layer, register_layer

ACTIVATIONS = ("identity", "relu", "tanh", "sigmoid")


@register_layer("dense")
class Dense(Layer):
    """y = act(s * (x @ W) + b). Fusing the activation saves a pass over the output.

    Partition protocol (sub-networks): W's rows follow the input units, its columns
    and b the output units. ``input_scale`` (s, default 1) is set by sub-network
    training: a worker that sees only a fraction k of this layer's inputs scales them
    by 1/k (structured inverted dropout), so the reassembled parent needs no rescaling.
    """

    input_rank = 1  # flat vectors: images go through flatten first
    partition_role = "split"

    def __init__(
        self,
        units: int,
        activation: str = "identity",
        init: str | Callable = "he",
        bias: bool = True,
    ):
        if int(units) != units or units <= 0:
            raise ValueError(f"units must be a positive integer, found {units!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, found {activation!r}")
        self.units, self.activation, self.init, self.bias = int(units), activation, init, bias

    def build(self, in_features):
        self.declare("W", (in_features, self.units), init=self.init)
        if self.bias:
            self.declare("b", (self.units,), init="zeros")
        return self.units

    def partition_axes(self):
        return {"W": (0, 1), "b": (None, 0)} if self.bias else {"W": (0, 1)}

    def partition_spec(self, units):
        return {**self.spec(), "units": units}

    def dropconnect_spec(self, spec, p):
        return {**spec, "type": "dropconnect_dense", "p": p}

    def weights(self, train):
        """The matrix the matmul uses (DropConnectDense masks it)."""
        return self.params["W"]

    def forward(self, x, train):
        self.x = x
        self.w_used = self.weights(train)
        y = self.buffer("y", (x.shape[0], self.units))
        self.xp.matmul(x, self.w_used, out=y)
        if self.bias:
            self.ops.bias_act(y, self.params["b"], self.activation, self.input_scale)
        else:
            if self.input_scale != 1.0:
                self.ops.scale(y, self.input_scale)
            if self.activation != "identity":
                self.ops.activation(y, self.activation, y)
        self.y = y
        return y

    def backward(self, dy):
        self.ops.act_backward(dy, self.y, self.activation, self.grads.get("b"))
        if self.input_scale != 1.0:  # after the bias gradient: the bias is not scaled
            self.ops.scale(dy, self.input_scale)
        self.xp.matmul(self.x.T, dy, out=self.grads["W"])
        self.weight_grad_done()
        if not self.needs_input_grad:
            return None
        dx = self.buffer("dx", self.x.shape)
        return self.xp.matmul(dy, self.w_used.T, out=dx)

    def weight_grad_done(self):
        """Hook after grads['W'] holds d(loss)/d(weights used)."""
