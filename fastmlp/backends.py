"""The backend registry: "numpy", "cython", "numba", and "auto".

A backend is a module of ``fastmlp._kernels`` that exports the kernel primitives
(see ``fastmlp._kernels``). A backend whose module fails to import (no compiler
at build time; Numba, an optional extra, not installed) is absent from
``available_backends()``; the rest works. Choosing "auto" never imports Numba.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = [
    "NAMES",
    "AUTO",
    "COMPILED",
    "DIFFERENCES",
    "available_backends",
    "unavailable_backends",
    "install_hint",
    "resolve",
    "kernels",
    "features",
]

_MODULES = {
    "numpy": "fastmlp._kernels._np",
    "cython": "fastmlp._kernels._cy",
    "numba": "fastmlp._kernels._nb",
}
NAMES = tuple(_MODULES) + ("auto",)
_INSTALL_HINT = {"numba": 'pip install "fastmlp[numba]"'}

# "auto" is Cython wherever it loads, at every batch size, else the NumPy reference;
# for a network of several hidden layers, the first of them with an epoch path
# for it (the backend's DEEP_PATHS).
# Numba is about as fast (`fastmlp bench` shows both), but its first use in a
# process loads its cached machine code (and compiles it on a machine's first
# use), which a training run of a few epochs does not repay.
AUTO = ("cython", "numpy")

# The compiled backends, kept at parity: a feature of one is a feature of the other,
# or the difference is declared here, with its reason. tests/test_backends.py
# fails on any other difference (and on a declared one that no longer holds);
# `fastmlp info` prints these.
COMPILED = ("cython", "numba")
DIFFERENCES = {
    ("numba", "threads on the blas path"): (
        "Numba's BLAS epoch runs on one thread: the C epoch's threads meet three times a batch around "
        "GEMMs they each call on their own blocks of units, a protocol not written in Numba; the "
        "sparse path, which dense inputs take at small batches, is threaded in both"
    ),
}

_loaded: dict = {}
_errors: dict = {}


def _load(name):
    if name not in _loaded and name not in _errors:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except Exception as exc:  # an absent or broken backend must not break the package
            _errors[name] = exc
    return _loaded.get(name)


def available_backends() -> list[str]:
    """Names of the backends that really load on this machine, e.g. ["numpy", "cython", "numba"].

    Loads every backend (Numba's included, where installed) to find out.

    Examples
    --------
    >>> fastmlp.available_backends()[:2]
    ['numpy', 'cython']
    """
    return [name for name in _MODULES if _load(name) is not None]


def unavailable_backends() -> dict[str, str]:
    """{name: reason} for the backends that failed to load."""
    available_backends()
    return {name: f"{type(exc).__name__}: {exc}" for name, exc in _errors.items()}


def install_hint(name: str) -> str:
    """How to install what backend ``name`` needs, or ""."""
    return f"install it with: {_INSTALL_HINT[name]}" if name in _INSTALL_HINT else ""


def resolve(name: str, deep: bool = False) -> str:
    """The concrete backend name for ``name`` ("auto": the first of ``AUTO`` that
    loads and, for a network of several hidden layers (``deep``), trains one)."""
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    if name == "auto":
        return next(b for b in AUTO if _load(b) is not None and (not deep or _load(b).DEEP_PATHS))
    if _load(name) is None:
        hint = install_hint(name)
        raise ValueError(
            f"backend {name!r} is not available ({unavailable_backends()[name]}); "
            f"available backends: {available_backends()}" + (f"; {hint}" if hint else "")
        )
    if deep and not _load(name).DEEP_PATHS:
        deep_ones = [b for b in available_backends() if _load(b).DEEP_PATHS]
        raise ValueError(
            f"backend {name!r} trains networks of one hidden layer; backends for several: {deep_ones} (or 'auto')"
        )
    return name


def kernels(name: str) -> ModuleType:
    """The primitives module of backend ``name`` (resolving "auto")."""
    return _load(resolve(name))


def features(name: str) -> set[str]:
    """What backend ``name`` implements, in words: its epoch paths ("path sparse"),
    those it runs on several threads ("threads on the sparse path"), the activations
    and losses of ``fastmlp.tables`` it has ops for ("activation relu", "loss mse"),
    and the sparse path's ways of taking large batches ("chunked batches",
    "grouped updates")."""
    from . import tables

    kern = kernels(name)
    out = {f"path {p}" for p in kern.PATHS} | {f"threads on the {p} path" for p in kern.THREADED_PATHS}
    out |= {f"several hidden layers on the {p} path" for p in kern.DEEP_PATHS}
    out |= {f"activation {n}" for n, row in tables.ACTIVATIONS.items() if row.code in kern.ACTIVATION_CODES}
    out |= {f"loss {n}" for n, row in tables.LOSSES.items() if row.code in kern.LOSS_CODES}
    if getattr(kern, "SPARSE_CHUNK_ROWS", 0):
        out.add("chunked batches")
    if getattr(kern, "SPARSE_GROUP_MIN", 0):
        out.add("grouped updates")
    return out
