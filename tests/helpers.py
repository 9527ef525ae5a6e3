"""Helpers shared by the test modules."""

import os
from pathlib import Path

import numpy as np
import pytest
from allpairspy import AllPairs

import fastmlp

ROOT = Path(__file__).resolve().parents[1]
# Real MNIST for accuracy tests: $FASTMLP_MNIST_DIR, else the shared data folder
# beside the project. Tests that need it skip where it is absent.
MNIST_DIR = Path(os.environ.get("FASTMLP_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))

BACKENDS = fastmlp.available_backends()
COMPILED = [b for b in BACKENDS if b != "numpy"]
DTYPES = [np.float32, np.float64]
ACTIVATIONS = list(fastmlp.tables.ACTIVATIONS)
LOSSES = list(fastmlp.tables.LOSSES)


def pairwise(filter=None, **dims):
    """``pytest.mark.parametrize`` over rows that hold every pair of values of any
    two of the dimensions (allpairspy), instead of every product: the matrix of
    activations x paths x backends x dtypes x losses grows by a sum, not a product.
    ``filter(row)``, given a dict of the values chosen so far, drops the rows no
    backend runs (``trains``). Each row's id names its values."""
    names = list(dims)

    def keep(row):
        return filter is None or filter(dict(zip(names, row, strict=False)))

    rows = [tuple(row) for row in AllPairs([list(v) for v in dims.values()], filter_func=keep)]
    return pytest.mark.parametrize(",".join(names), rows, ids=["-".join(map(_id, row)) for row in rows])


def _id(value):
    if isinstance(value, tuple):
        return "/".join(map(_id, value))
    if isinstance(value, type):
        return value.__name__
    return str(value)


def random_targets(loss, n, n_out, dtype, rng):
    """Targets of ``n`` rows for ``loss``: class labels in [0, n_out) (np.intp), or
    target values (n, n_out) in ``dtype``: indicators (bce), normal values
    (squared_error), Poisson counts (poisson)."""
    if fastmlp.tables.loss(loss).targets == "labels":
        return rng.integers(0, n_out, size=n).astype(np.intp)
    if loss == "bce":
        values = rng.random((n, n_out)) < 0.4
    elif loss == "poisson":
        values = rng.poisson(1.0, size=(n, n_out))
    else:
        values = rng.normal(size=(n, n_out))
    return np.ascontiguousarray(values, dtype=dtype)


def step_size(loss, lr):
    """A test's learning rate ``lr`` for ``loss``: a tenth of it for the losses of
    target values, whose unbounded outputs (identity, exp) diverge at the rates
    the softmax takes."""
    return lr if fastmlp.tables.loss(loss).targets == "labels" else lr / 10


def random_problem(n, n_in, n_hidden, n_out, dtype, seed=0, sparse=False, loss="ce", init=None):
    """A small random dataset, its targets for ``loss`` and initial parameters
    (``init`` as ``reference.init_params`` takes it; by default see below)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in))
    if sparse:
        X[rng.random(X.shape) < 0.7] = 0.0
    y = random_targets(loss, n, n_out, dtype, rng)
    # the outputs of a regression or of a logistic per output are unbounded: Glorot's
    # scale keeps its first steps finite (exp(z) of the Poisson loss above all)
    if init is None:
        init = "normal" if fastmlp.tables.loss(loss).targets == "labels" else "xavier"
    params = fastmlp.reference.init_params(n_in, n_hidden, n_out, init, dtype, seed + 1)
    return X.astype(dtype), y, params


def hidden_tuple(hidden):
    return (hidden,) if np.ndim(hidden) == 0 else tuple(hidden)


def trains(row):
    """Whether the kernel of a pairwise row (``kernel``: (backend, path, inputs))
    trains its network (``hidden``: a width or a tuple): several hidden layers
    need the path among the backend's DEEP_PATHS."""
    if "kernel" not in row or "hidden" not in row or len(hidden_tuple(row["hidden"])) == 1:
        return True
    backend, path = row["kernel"][:2]
    return path in fastmlp.backends.kernels(backend).DEEP_PATHS
