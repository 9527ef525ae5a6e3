import pytest

import fastmlp
from helpers import MNIST_DIR


@pytest.fixture
def mnist():
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found in {MNIST_DIR} (set FASTMLP_MNIST_DIR)")
    return fastmlp.datasets.load_mnist(MNIST_DIR)
