"""Batch normalization (Ioffe & Szegedy, 2015), per channel of images or per feature."""

from horn import Layer, register_layer


@register_layer("batch_norm")
class BatchNorm(Layer):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, statistics over the batch
    (and over H, W for images: one pair per channel, axis 1).

    Training normalizes with the batch's statistics and folds them into
    ``running_mean`` / ``running_var`` (``momentum`` is the weight of the new batch,
    PyTorch's convention; the variance is the unbiased one). Evaluation uses the
    running statistics, so it is deterministic and independent of the batch.

    The running statistics are declared ``trainable=False``: they live in the model's
    flat parameter buffer, after every trainable parameter. So model files and
    checkpoints hold them (a resumed run is bit-identical), model averaging
    averages them with the weights (each replica's running mean is an average over
    its own batches, so their mean is the mean over all of them; for the variance
    it is the mean of the replicas' variances, which leaves out the spread between
    the replicas' means: small when the shards are alike), and EC-DNN's members,
    shared or Allgathered as flat buffers, keep their own for the ensemble, while
    distillation (training-mode forward passes) updates the student's. The
    optimizer never steps them, so weight decay cannot shrink them. In sub-networks
    all four follow the channel partition (partition protocol: "through"): a worker
    normalizes, and keeps the running statistics of, its own channels only, and
    assembly writes each channel's back from the worker that owned it that round.
    """

    partition_role = "through"

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5):
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], found {momentum!r}")
        if not 0 < eps <= 1:  # larger ones flatten every channel (and overflow float32)
            raise ValueError(f"eps must be in (0, 1], found {eps!r}")
        self.momentum, self.eps = momentum, eps

    def build(self, in_shape):
        channels = in_shape[0] if isinstance(in_shape, tuple) else in_shape
        self.declare("gamma", (channels,), init="ones")
        self.declare("beta", (channels,), init="zeros")
        self.declare("running_mean", (channels,), init="zeros", trainable=False)
        self.declare("running_var", (channels,), init="ones", trainable=False)
        return in_shape

    def partition_axes(self):
        return {name: (0, None) for name in ("gamma", "beta", "running_mean", "running_var")}

    def _broadcast(self, v, ndim):
        return v.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, x, train):
        xp, p = self.xp, self.params
        axes = (0, *range(2, x.ndim))
        count = x.size // x.shape[1]
        self.train = train and count > 1
        if self.train:
            mean, var = x.mean(axis=axes), x.var(axis=axes)
            m = self.momentum
            p["running_mean"][...] = (1 - m) * p["running_mean"] + m * mean
            p["running_var"][...] = (1 - m) * p["running_var"] + m * var * (count / (count - 1))
        else:
            mean, var = p["running_mean"], p["running_var"]
        self.inv = 1 / xp.sqrt(var + self.eps)
        self.xhat = self.buffer("xhat", x.shape)
        xp.subtract(x, self._broadcast(mean, x.ndim), out=self.xhat)
        self.xhat *= self._broadcast(self.inv, x.ndim)
        y = self.buffer("y", x.shape)
        xp.multiply(self.xhat, self._broadcast(p["gamma"], x.ndim), out=y)
        y += self._broadcast(p["beta"], x.ndim)
        return y

    def backward(self, dy):
        g, nd = self.grads, dy.ndim
        axes = (0, *range(2, nd))
        g["beta"][...] = dy.sum(axis=axes)
        g["gamma"][...] = (dy * self.xhat).sum(axis=axes)
        g["running_mean"][...] = 0
        g["running_var"][...] = 0
        if not self.needs_input_grad:
            return None
        scale = self._broadcast(self.params["gamma"] * self.inv, nd)
        if self.train:  # the batch statistics depend on x too
            count = dy.size // dy.shape[1]
            dy -= self._broadcast(g["beta"] / count, nd)
            dy -= self.xhat * self._broadcast(g["gamma"] / count, nd)
        dy *= scale
        return dy
