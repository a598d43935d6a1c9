"""Backends: an array module plus the fused kernels the hot path needs.

Pick one by name with :func:`get_backend` (``auto`` picks Numba on CPU). Every
backend implements :class:`horn.backends.base.Backend`; the numpy one is the
reference the others are tested against.
"""

from horn.backends.base import ACTIVATIONS, Backend
from horn.errors import HornError

BACKEND_NAMES = ("auto", "numpy", "numba", "cupy")


def available_backends():
    """Names of the backends that can be constructed on this machine."""
    names = ["numpy"]
    try:
        import numba  # noqa: F401

        names.append("numba")
    except ImportError:
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            names.append("cupy")
    except Exception:  # no cupy, no driver or no device: the GPU path is simply absent
        pass
    return names


def get_backend(name="auto"):
    """Construct the backend called ``name`` (one of BACKEND_NAMES)."""
    if name == "auto":
        name = "numba" if "numba" in available_backends() else "numpy"
    if name == "numpy":
        from horn.backends.numpy_backend import NumpyBackend

        return NumpyBackend()
    if name == "numba":
        from horn.backends.numba_backend import NumbaBackend

        return NumbaBackend()
    if name == "cupy":
        if "cupy" not in available_backends():
            raise HornError(
                "backend 'cupy' needs CuPy and a CUDA GPU; found none "
                "(pip install 'horn[gpu]' on a GPU machine, or use backend = \"numba\")"
            )
        from horn.backends.cupy_backend import CupyBackend

        return CupyBackend()
    raise HornError(f"unknown backend {name!r}; expected one of {', '.join(BACKEND_NAMES)}")


__all__ = ["ACTIVATIONS", "BACKEND_NAMES", "Backend", "available_backends", "get_backend"]
