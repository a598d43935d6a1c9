"""Optimizers over a model's flat buffers: one fused kernel call per step.

They step the buffers' trainable prefix (``model.trainable_size``): statistics a
layer declares with ``trainable=False`` sit after it and are never decayed or moved.
"""


class SGD:
    """SGD with (Nesterov) momentum and L2 weight decay."""

    def __init__(self, model, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.model, self.momentum, self.nesterov = model, momentum, nesterov
        self.weight_decay = weight_decay
        self.velocity = model.xp.zeros_like(model.params) if momentum else None

    def step(self, lr):
        m, k = self.model, self.model.trainable_size
        m.backend.sgd_update(
            m.params[:k],
            m.grads[:k],
            None if self.velocity is None else self.velocity[:k],
            lr,
            self.momentum,
            self.weight_decay,
            self.nesterov,
        )

    def state(self):
        """Named state buffers (flat, like the parameters): averaged or checkpointed."""
        return {} if self.velocity is None else {"velocity": self.velocity}

    def counters(self):
        """JSON-able scalar state a checkpoint keeps beside :meth:`state`."""
        return {}

    def restore_counters(self, counters):
        """Undo :meth:`counters`."""


class Adam:
    """Adam (Kingma & Ba) with bias correction and L2 weight decay."""

    def __init__(self, model, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        self.model, self.beta1, self.beta2, self.eps = model, beta1, beta2, eps
        self.weight_decay, self.t = weight_decay, 0
        self.m = model.xp.zeros_like(model.params)
        self.v = model.xp.zeros_like(model.params)

    def step(self, lr):
        self.t += 1
        m, k = self.model, self.model.trainable_size
        m.backend.adam_update(
            m.params[:k],
            m.grads[:k],
            self.m[:k],
            self.v[:k],
            lr,
            self.beta1,
            self.beta2,
            self.eps,
            self.weight_decay,
            self.t,
        )

    def state(self):
        return {"m": self.m, "v": self.v}

    def counters(self):
        return {"t": self.t}  # the bias correction's step count

    def restore_counters(self, counters):
        self.t = counters["t"]


def make_optimizer(train, model):
    """The optimizer a job's [train] section asks for."""
    if train.optimizer == "adam":
        return Adam(model, train.beta1, train.beta2, train.eps, train.weight_decay)
    return SGD(model, train.momentum, train.nesterov, train.weight_decay)
