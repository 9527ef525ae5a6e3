"""Shared set-up of the pytest-benchmark suites.

Full run (for people):          pytest benches
    epochs of 10,000 rows (FASTMLP_BENCH_ROWS=all: the whole dataset)
Smoke run (CI, seconds):        pytest benches --benchmark-disable
    with --benchmark-disable every benchmark runs once, on 512-row datasets: the
    correctness checks still run, so the suites never rot.

Real MNIST is read from $FASTMLP_MNIST_DIR (default ../shared/data/mnist beside the
repository); without it, a synthetic MNIST-shaped dataset (784 features, 81% zeros,
10 classes) stands in, and the benchmark names say so.
"""

import numpy as np
import pytest
from bench_common import BACKENDS, BATCH_SIZES, DTYPES, NETWORKS, TORCH, load_network

import fastmlp
from fastmlp import bench


def pytest_report_header(config):
    return [f"fastmlp {fastmlp.__version__}; backends {BACKENDS + TORCH}", f"BLAS: {bench.blas_description()}"]


def _smoke(config):
    return config.getoption("benchmark_disable", False)


_cache = {}


@pytest.fixture(params=NETWORKS)
def network(request):
    """(name, X float64, labels, (n_in, n_hidden, n_out)); cached per session."""
    key = (request.param, _smoke(request.config))
    if key not in _cache:
        _cache[key] = load_network(request.param, key[1])
    return _cache[key]


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture(params=BATCH_SIZES, ids=lambda b: f"batch{b}")
def batch(request):
    return request.param
