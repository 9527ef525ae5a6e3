import os
import sys
import tempfile

import pytest

# The helpers module sits beside this file; with --import-mode=importlib (testing an
# installed wheel from outside the tree) pytest puts no test directory on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import MNIST_DIR  # noqa: E402

import fastmlp  # noqa: E402
from fastmlp._kernels import caches, tuning  # noqa: E402

# The batch up to which "auto" trains dense inputs row by row is measured on a user's
# machine once and kept (fastmlp._kernels.tuning); the suite pins it, so that its
# paths do not depend on timings, and keeps anything it measures out of the home
# directory. Subprocesses (the CLI tests) inherit both. test_tuning.py lifts the pin.
os.environ.setdefault(tuning.VAR, "5")
os.environ.setdefault(tuning.CACHE_DIR_VAR, os.path.join(tempfile.gettempdir(), "fastmlp-tests"))


def pytest_report_header(config):
    return [
        f"fastmlp {fastmlp.__version__} from {os.path.dirname(fastmlp.__file__)}; "
        f"backends {fastmlp.available_backends()}"
    ]


@pytest.fixture
def mnist():
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found in {MNIST_DIR} (set FASTMLP_MNIST_DIR)")
    return fastmlp.datasets.load_mnist(MNIST_DIR)


@pytest.fixture
def cache_env(monkeypatch):
    """Sets the cache-size variables (FASTMLP_L1D_CACHE, FASTMLP_L2_CACHE) for one
    test (the kernels read them at each layout); what the OS reports is read afresh."""

    def set_sizes(l1d=None, l2=None):
        for var, value in ((caches.L1D_VAR, l1d), (caches.L2_VAR, l2)):
            if value is None:
                monkeypatch.delenv(var, raising=False)
            else:
                monkeypatch.setenv(var, value)
        caches._reported.cache_clear()

    yield set_sizes
    monkeypatch.undo()
    caches._reported.cache_clear()
