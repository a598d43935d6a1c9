"""DropConnect: a Bernoulli mask on the weights in training (Wan et al., 2013)."""

from collections.abc import Callable

from horn import register_layer
from horn.layers.dense import Dense


@register_layer("dropconnect_dense")
class DropConnectDense(Dense):
    """Dense whose weights are masked with keep probability ``1 - p`` in training,
    scaled by ``1 / (1 - p)`` (inverted), so evaluation uses W as it is.

    The mask is a hash of (key, index): recomputed in backward, never stored.
    """

    def __init__(
        self,
        units: int,
        p: float = 0.5,
        activation: str = "identity",
        init: str | Callable = "he",
        bias: bool = True,
    ):
        super().__init__(units, activation, init, bias)
        if not 0 <= p < 1:
            raise ValueError(f"p must be in [0, 1), found {p!r}")
        self.p = p

    def dropconnect_spec(self, spec, p):
        return spec  # already masked: the layer keeps its own p

    def weights(self, train):
        self.masked = train and self.p > 0
        if not self.masked:
            return self.params["W"]
        self.key = self.new_key()
        w = self.buffer("w_masked", self.params["W"].shape)
        self.ops.mask_weights(self.params["W"], self.key, 1 - self.p, w)
        return w

    def weight_grad_done(self):
        if self.masked:  # d/dW of (W * m / keep) is the same mask
            g = self.grads["W"]
            self.ops.mask_weights(g, self.key, 1 - self.p, g)
