import os
import sys

import pytest

# The helpers module sits beside this file; with --import-mode=importlib (testing an
# installed wheel from outside the tree) pytest puts no test directory on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import MNIST_DIR  # noqa: E402

import fastmlp  # noqa: E402


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
