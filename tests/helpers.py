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


def pairwise(**dims):
    """``pytest.mark.parametrize`` over rows that hold every pair of values of any
    two of the dimensions (allpairspy), instead of every product: the matrix of
    activations x paths x backends x dtypes x losses grows by a sum, not a product.
    Each row's id names its values."""
    names = list(dims)
    rows = [tuple(row) for row in AllPairs([list(v) for v in dims.values()])]
    return pytest.mark.parametrize(",".join(names), rows, ids=["-".join(map(_id, row)) for row in rows])


def _id(value):
    if isinstance(value, tuple):
        return "/".join(map(_id, value))
    if isinstance(value, type):
        return value.__name__
    return str(value)


def random_problem(n, n_in, n_hidden, n_out, dtype, seed=0, sparse=False):
    """A small random dataset and initial parameters."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in))
    if sparse:
        X[rng.random(X.shape) < 0.7] = 0.0
    y = rng.integers(0, n_out, size=n).astype(np.intp)
    params = fastmlp.reference.init_params(n_in, n_hidden, n_out, "normal", dtype, seed + 1)
    return X.astype(dtype), y, params
