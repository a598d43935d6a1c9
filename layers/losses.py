"""Losses: fused softmax + cross-entropy (hard or soft targets) and MSE."""

from horn import Loss, register_layer


@register_layer("softmax_cross_entropy")
class SoftmaxCrossEntropy(Loss):
    """Mean cross-entropy of softmax(x / T), numerically stable (max-shifted).

    Targets are int labels (n,) or probability rows (n, classes): soft targets
    are what distillation from an ensemble needs. With ``temperature`` T the
    gradient is scaled by T^2 (Hinton et al.) so its size does not depend on T.
    """

    predicts_probabilities = True  # softmax rows: an ensemble averages and distils them

    def __init__(self, temperature: float = 1.0):
        if not 0.01 <= temperature <= 100:  # T^2 and x / T stay well inside float32
            raise ValueError(f"temperature must be in [0.01, 100], found {temperature!r}")
        self.temperature = temperature

    def forward(self, x, targets):
        self.grad = self.buffer("grad", x.shape)
        t = self.temperature
        return t * t * self.ops.softmax_xent(x, targets, self.grad, t, t * t)

    def backward(self):
        return self.grad

    def predict(self, x, out):
        self.ops.softmax(x, out)


@register_layer("mse")
class MSE(Loss):
    """Mean over all elements of (x - target)^2; targets are (n, outputs) or labels
    (one-hot encoded here, so MSE can also train a classifier)."""

    def forward(self, x, targets):
        xp = self.xp
        self.grad = self.buffer("grad", x.shape)
        if targets.ndim == 1:
            self.grad[...] = x
            self.grad[xp.arange(x.shape[0]), targets] -= 1
        else:
            xp.subtract(x, targets, out=self.grad)
        loss = float((self.grad * self.grad).mean())
        self.grad *= 2.0 / self.grad.size
        return loss

    def backward(self):
        return self.grad
