"""Outer optimizers over averaged replicas (DiLoCo, FedAvgM, FedAdam).

At a barrier the replicas' mean is known on every rank. Plain model averaging
takes it as the new model. An outer optimizer treats the **pseudo-gradient**
``delta = anchor - mean`` (the anchor: the model at the last barrier) as a gradient
and steps the anchor with SGD (``lr = 1``, no momentum: the mean itself),
Nesterov momentum (DiLoCo: lr 0.7, momentum 0.9) or Adam (FedAdam). Every rank
computes the same step from the same mean, so the outer state is identical
everywhere and costs no bytes. The step runs through the backend's fused
optimizer kernels over the flat buffer; statistics (``trainable=False``
parameters, after ``trainable_size``) are taken from the mean unchanged.
"""

from horn.optim import SGD, Adam

OUTER_OPTIMIZERS = ("sgd", "nesterov", "adam")


class _Flat:
    """The anchor and its pseudo-gradient, shaped as an optimizer's model."""

    def __init__(self, model):
        self.backend, self.xp, self.trainable_size = model.backend, model.xp, model.trainable_size
        self.params = model.xp.array(model.params, copy=True)
        self.grads = model.xp.zeros_like(model.params)


class OuterOptimizer:
    """Steps an anchor copy of ``model`` with the pseudo-gradient at every barrier."""

    def __init__(self, model, kind, lr, momentum):
        self.flat = _Flat(model)
        if kind == "adam":
            self.optimizer = Adam(self.flat, beta1=momentum)
        else:
            self.optimizer = SGD(
                self.flat, momentum if kind == "nesterov" else 0.0, nesterov=kind == "nesterov"
            )
        self.lr = lr

    @staticmethod
    def wanted(kind, lr):
        """False for SGD with lr 1: the mean itself, so plain averaging (bit for bit)."""
        return not (kind == "sgd" and lr == 1.0)

    def step(self, model):
        """``model.params`` holds the replicas' mean; leave the stepped anchor there."""
        anchor, delta, k = self.flat.params, self.flat.grads, self.flat.trainable_size
        delta[...] = anchor
        delta -= model.params
        self.optimizer.step(self.lr)
        anchor[k:] = model.params[k:]  # statistics: the mean, never stepped
        model.params[...] = anchor

    def buffers(self):
        """Checkpoint buffers (identical on every rank that steps)."""
        return {"anchor": self.flat.params, **self.optimizer.state()}

    def counters(self):
        return self.optimizer.counters()

    def restore_counters(self, counters):
        self.optimizer.restore_counters(counters)
