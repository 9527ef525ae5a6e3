"""Constants and data shared by the benchmark modules."""

import os
from pathlib import Path

import numpy as np

import fastmlp
from fastmlp import bench

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("FASTMLP_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))

BATCH_SIZES = [1, 10, 64, 256, "full"]
DTYPES = [np.float32, np.float64]
NETWORKS = ["circles", "mnist"]
TORCH = ["torch-autograd", "torch-manual"] if bench.torch_available() else []
BACKENDS = fastmlp.available_backends()
SMOKE_ROWS = 512
# Rows of an epoch in the full run: 10,000 keeps `pytest benches` to minutes
# (the NumPy and PyTorch loops need ~10 s per 60,000-row epoch at batch 1);
# FASTMLP_BENCH_ROWS=all times whole 60,000-row MNIST epochs. `fastmlp bench`
# always reports full epochs.
FULL_ROWS = os.environ.get("FASTMLP_BENCH_ROWS", "10000")


def load_network(name, smoke, rows=FULL_ROWS):
    if name == "circles":
        X, y = fastmlp.datasets.circles(10_000, noise=0.1, seed=0)
        shape = (2, 10, 2)
    elif (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        X, y, _, _ = fastmlp.datasets.load_mnist(MNIST_DIR)
        shape = (784, 100, 10)
    else:
        rng = np.random.default_rng(0)
        X = rng.random((60_000, 784), dtype=np.float32) * (rng.random((60_000, 784)) > 0.81)
        y = rng.integers(0, 10, 60_000)
        name, shape = "mnist-synthetic", (784, 100, 10)
    rows = SMOKE_ROWS if smoke else (None if rows in (None, "all") else int(rows))
    X, y = X[:rows], y[:rows]
    return name, np.ascontiguousarray(X), np.ascontiguousarray(y, dtype=np.intp), shape
