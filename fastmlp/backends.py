"""The backend registry: "numpy", "cython", "numba", and "auto".

A backend is a module of ``fastmlp._kernels`` that implements the kernel
contract. A backend whose module fails to import (no compiler at build time, no
numba) is simply absent from ``available_backends()``; the rest works.
"""

from __future__ import annotations

import contextlib
import importlib
import threading

from threadpoolctl import threadpool_limits

_MODULES = {
    "numpy": "fastmlp._kernels._np",
    "cython": "fastmlp._kernels._cy",
    "numba": "fastmlp._kernels._nb",
}
NAMES = tuple(_MODULES) + ("auto",)

# "auto": the fastest available backend for a batch size, counting what a process
# pays before its first epoch. Measured on MNIST 784-100-10 float32, one epoch, the
# two backends alternated 7 times in one process (medians of the numba/cython time
# ratio; 2-core AVX-512 machine, one BLAS thread below batch 64, 2026-11-24):
#     batch                          1     10     32     64    128    256
#     OpenBLAS AVX2 (Haswell)     0.93   0.94   0.92   1.02   1.01   1.02
#     OpenBLAS AVX-512 (SkylakeX) 0.92   1.03   1.03   1.02   1.02   1.02
# Numba is 6-8% faster on the hand-written small-batch path (its AVX-512 non-zero
# scan; ~0.008 s per epoch) and level on the BLAS path. But its first use costs
# 0.4 s per process to load the cached code (7 s to compile on a machine's first
# use), which the small-batch gain repays only after ~50 MNIST epochs in one
# process; Cython costs nothing. So: Cython, then Numba, then the NumPy reference.
# Each row: (largest batch size it covers or None for all, backends fastest first).
AUTO_ORDER = (
    (None, ("cython", "numba", "numpy")),
)

# One BLAS thread below this batch size: for small GEMMs a second thread costs
# more in synchronisation than it gains (measured: batch 1 and 10 slower with two).
BLAS_THREADS_MIN_BATCH = 64

_loaded: dict = {}
_errors: dict = {}


def _load(name):
    if name not in _loaded and name not in _errors:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except Exception as exc:  # an absent or broken backend must not break the package
            _errors[name] = exc
    return _loaded.get(name)


def available_backends():
    """Names of the backends that really load on this machine, e.g. ["numpy", "cython", "numba"]."""
    return [name for name in _MODULES if _load(name) is not None]


def unavailable_backends():
    """{name: reason} for the backends that failed to load."""
    available_backends()
    return {name: f"{type(exc).__name__}: {exc}" for name, exc in _errors.items()}


def resolve(name, batch_size=None):
    """The concrete backend name for ``name`` ("auto" picks by batch size)."""
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    if name != "auto":
        if _load(name) is None:
            raise ValueError(
                f"backend {name!r} is not available ({unavailable_backends()[name]}); "
                f"available backends: {available_backends()}"
            )
        return name
    available = available_backends()
    for max_batch, order in AUTO_ORDER:
        if max_batch is None or (batch_size is not None and batch_size <= max_batch):
            return next(b for b in order if b in available)
    return "numpy"


def kernels(name, batch_size=None):
    """The kernel module of backend ``name`` (resolving "auto")."""
    return _load(resolve(name, batch_size))


class _BlasThreads:
    """The BLAS thread count for training, shared by concurrent trainings.

    OpenBLAS's thread count is process-wide, and its results depend on it in the
    last bits. The first training to start sets it (one thread below
    BLAS_THREADS_MIN_BATCH, else the library's default), trainings that overlap it
    keep that setting, and the last one to finish restores the previous one. So a
    training never sees the count change under it, and models trained in parallel
    threads end bitwise equal to the same models trained one after another.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._limiter = None

    @contextlib.contextmanager
    def __call__(self, batch_size):
        with self._lock:
            if self._users == 0:
                one = batch_size < BLAS_THREADS_MIN_BATCH
                self._limiter = threadpool_limits(limits=1 if one else None, user_api="blas")
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._limiter.restore_original_limits()
                    self._limiter = None


blas_limits = _BlasThreads()
blas_limits.__doc__ = """blas_limits(batch_size): a context manager that sets the BLAS thread count
suited to ``batch_size`` for the duration of a training (see _BlasThreads)."""
