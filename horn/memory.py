"""Will the job fit in memory? One rank's need, estimated before anything is allocated.

A model's flat float32 buffer is not its only cost: the gradients, the initial
values drawn on the host, the optimizer state, the sub-network parent and the
ensemble's gathered members are buffers of the same size, and every layer keeps
its output and input gradient for a batch (an evaluation batch has up to 2,048
rows), and its work buffers (:meth:`horn.Layer.work_bytes`: conv2d's im2col
columns, many times its input) for the training batch and, again, for the
evaluation batch. The sum, times the ranks that share the host, is compared with the
kernel's MemAvailable, so a model that cannot fit is a one-line error instead
of a traceback (or the OOM killer) half-way through allocating it.
"""

import numbers
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
    work_bytes: int = 0  # the layers' work buffers (Layer.work_bytes), see estimate()

    @property
    def rank_bytes(self):
        return (
            self.parameters * VALUE_BYTES * sum(self.buffers.values())
            + self.activation_bytes
            + self.work_bytes
        )

    @property
    def host_bytes(self):
        return self.rank_bytes * self.ranks

    def text(self):
        parts = " + ".join(
            f"{name} x{count}" if count != 1 else name for name, count in self.buffers.items()
        )
        per = f" x {self.ranks} ranks on this host" if self.ranks > 1 else ""
        work = f", {_gib(self.work_bytes)} of layer work buffers" if self.work_bytes else ""
        return (
            f"{_gib(self.host_bytes)} ({self.parameters:,} parameters as {parts}, "
            f"{_gib(self.activation_bytes)} of activations{work}{per})"
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


def _bytes(layer, i, method, batch, where):
    """``layer.method(batch)``, checked; any failure of the layer's own is a HornError."""
    try:
        value = getattr(layer, method)(batch)
    except Exception as exc:  # noqa: BLE001 - a user's layer: its failure, on one line
        raise HornError(
            f"{where}[{i}] ({layer.spec()['type']}): {method}({batch}) failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise HornError(
            f"{where}[{i}] ({layer.spec()['type']}): {method}({batch}) must return "
            f"a non-negative int (bytes), returned {value!r}"
        )
    return int(value)


def work_bytes(layers, in_shape, batches, where="model"):
    """Bytes of the layers' work buffers: :meth:`horn.Layer.work_bytes` summed over
    the layers and over ``batches`` (one model's buffers per batch size), plus the
    largest :meth:`horn.Layer.scratch_bytes` of one step of the largest batch (one layer
    computes at a time). ``layers`` are fresh, bound to the job's backend (``ops``) or
    not: this builds them. A value that is not a non-negative int is a HornError naming
    the layer."""
    shape, kept, scratch = as_shape(in_shape), 0, 0
    for i, layer in enumerate(layers):
        shape = as_shape(layer.build(shape))
        kept += sum(_bytes(layer, i, "work_bytes", batch, where) for batch in batches)
        scratch = max(scratch, _bytes(layer, i, "scratch_bytes", max(batches, default=0), where))
    return kept + scratch


def _job_backend(name):
    """The CPU backend a job named ``name`` runs on (what ``Layer.work_bytes`` sees as
    ``ops``), or None for the GPU (device memory: not compared with the host's)."""
    from horn.backends import get_backend

    try:
        backend = get_backend(name)
    except HornError:
        return None
    return backend if backend.name in ("numpy", "numba") else None


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
    eval_rows = min(EVAL_ROWS, eval_samples)
    rows = max(job.train.batch_size, eval_rows)
    activations = rows * activation_values(fresh(), spec["in_features"]) * VALUE_BYTES
    # A layer's buffers live on at the last batch size it saw. The trained model holds
    # them for its larger batch (it evaluates too); a second model evaluating meanwhile
    # (best.npz in the final record, an averaged copy of the replicas) holds its own
    # for the evaluation batch: the digits CNN of docs/cnn.md peaks at both at once.
    backend, layers = _job_backend(job.train.backend), fresh()
    for layer in layers:
        layer.ops, layer.xp = backend, getattr(backend, "xp", None)
    work = work_bytes(layers, spec["in_features"], (rows, eval_rows), where)
    return Estimate(size, parameter_buffers(job), activations, ranks, work)


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
