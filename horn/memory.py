"""Will the job fit in memory? One rank's need, estimated before anything is allocated.

A model's flat float32 buffer is not its only cost: the gradients, the initial
values drawn on the host, the optimizer state, the sub-network parent and the
ensemble's gathered members are buffers of the same size, and every layer keeps
its output and input gradient for a batch (an evaluation batch has up to 2,048
rows). The sum, times the ranks that share the host, is compared with the
kernel's MemAvailable, so a model that cannot fit is a one-line error instead
of a traceback (or the OOM killer) half-way through allocating it.
"""

from dataclasses import dataclass

from horn.errors import HornError
from horn.layer import as_shape, shape_size

VALUE_BYTES = 4  # float32
EVAL_ROWS = 2048  # Model.predict's batch


def available_bytes(meminfo="/proc/meminfo"):
    """MemAvailable in bytes, or None where the kernel does not report it."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gib(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


@dataclass(frozen=True)
class Estimate:
    """One rank's memory: ``buffers`` counts parameter-sized buffers by purpose."""

    parameters: int
    buffers: dict
    activation_bytes: int
    ranks: int = 1  # ranks on this host, each needing as much

    @property
    def rank_bytes(self):
        return self.parameters * VALUE_BYTES * sum(self.buffers.values()) + self.activation_bytes

    @property
    def host_bytes(self):
        return self.rank_bytes * self.ranks

    def text(self):
        parts = " + ".join(
            f"{name} x{count}" if count != 1 else name for name, count in self.buffers.items()
        )
        per = f" x {self.ranks} ranks on this host" if self.ranks > 1 else ""
        return (
            f"{_gib(self.host_bytes)} ({self.parameters:,} parameters as {parts}, "
            f"{_gib(self.activation_bytes)} of activations{per})"
        )


def parameter_buffers(job):
    """``{purpose: count}`` of the buffers as large as the model a rank of ``job`` holds."""
    train, parallel = job.train, job.parallel
    counts = {"parameters": 1, "gradients": 1, "initial values": 1}
    state = 2 if train.optimizer == "adam" else int(train.momentum > 0)
    if state:
        counts["optimizer state"] = state
    if parallel.workers > 1:  # the group's parent, its optimizer state, the gathered parts
        counts["sub-network parent"] = 2 + state
    if parallel.barrier == "ensemble":  # every member gathered, plus the student's scratch copy
        counts["ensemble members"] = max(parallel.groups, 1) + 2
    return counts


def activation_values(layers, in_shape):
    """Values one sample keeps alive in a training step: each layer's input gradient
    and output (forward) and output gradient (backward). ``layers`` are fresh: this
    builds them."""
    shape, total = as_shape(in_shape), 0
    for layer in layers:
        out = as_shape(layer.build(shape))
        total += shape_size(shape) + 2 * shape_size(out)
        shape = out
    return total


def estimate(job, spec, eval_samples, ranks=1, where="model"):
    """The :class:`Estimate` for a rank of ``job`` training the model ``spec``
    (see :func:`horn.jobs.model_spec`) and evaluating ``eval_samples`` at most at once.
    Nothing is allocated; a model that cannot be laid out is a HornError naming ``where``."""
    from horn.model import layer_from_spec, layout

    def fresh():
        return [layer_from_spec(s, f"model.layers[{i}]") for i, s in enumerate(spec["layers"])]

    try:
        _, _, size, _ = layout(fresh(), spec["in_features"])
    except HornError as exc:
        raise HornError(f"{where}: {exc}") from None
    rows = max(job.train.batch_size, min(EVAL_ROWS, eval_samples))
    activations = rows * activation_values(fresh(), spec["in_features"]) * VALUE_BYTES
    return Estimate(size, parameter_buffers(job), activations, ranks)


def check_fits(need, where, available=None):
    """HornError when ``need`` (an Estimate) exceeds the available memory; returns the
    available bytes (None: unknown, not checked)."""
    available = available_bytes() if available is None else available
    if available is not None and need.host_bytes > available:
        raise HornError(
            f"{where}: the model does not fit in memory: it needs about "
            f"{need.text()}, {_gib(available)} is available; make it smaller "
            f"(fewer units or layers, a smaller train.batch_size)"
        )
    return available
