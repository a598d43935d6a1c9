"""horn: communication-efficient BSP training of neural networks over MPI.

The public low-level API for writing layers is re-exported here:
``Layer``, ``Loss``, ``register_layer`` and ``check_layer``; ``run`` trains a job
from Python (see :func:`horn.api.run`).
"""

from importlib.metadata import PackageNotFoundError, version

from horn.errors import HornError
from horn.layer import Layer, Loss
from horn.registry import register_layer

try:
    __version__ = version("horn")  # one source of truth: pyproject.toml, via the metadata
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "unknown (not installed)"


def check_layer(*args, **kwargs):
    """Run horn's conformance suite on a layer (see :func:`horn.checks.check_layer`)."""
    from horn.checks import check_layer as _check

    return _check(*args, **kwargs)


def run(job, overrides=(), progress=False):
    """Train a job (a path or a dict); returns a :class:`horn.api.RunResult` with the
    history, the model and the run directory (see :func:`horn.api.run`)."""
    from horn.api import run as _run

    return _run(job, overrides, progress)


__all__ = ["HornError", "Layer", "Loss", "check_layer", "register_layer", "run", "__version__"]
