"""What a ``fastmlp.train`` call costs beyond its compiled epochs.

Each benchmark times whole one-epoch calls, each on a new model (so every call is a
model's first), and records in ``extra_info`` the seconds the same call spent inside
the backend's compiled epoch calls (``kernel_seconds``) and the rest (``fixed_seconds``:
checking the inputs, converting a dense X to CSR, moving the parameters into the
sparse path's layout and back, saving and checking them around each compiled chunk).
The fixed cost and the ratio of a call to its kernels are printed per benchmark.

- "call mnist": MNIST float32 784-100-10, relu, scikit-learn's defaults (Adam,
  batch 200) and plain SGD at batch 64: the fixed cost of a call;
- "call bag-of-words": a generated bag-of-words input, 90,000 documents over 100,000
  features with ~100 tokens each (Zipf's law), 100 hidden units (10M weights),
  batch 1: the ratio of a one-epoch call to its kernels.
"""

import time

import numpy as np
import pytest
import scipy.sparse as sp
from bench_common import MNIST_DIR, SMOKE_ROWS

import fastmlp
from fastmlp import backends, bench

COMPILED = [b for b in fastmlp.available_backends() if b != "numpy"]


def bag_of_words(n_docs, n_features, tokens=100, n_classes=20, seed=0):
    """A CSR matrix of word counts (float32) and a label per document: tokens drawn by
    Zipf's law over the features, a tenth of each document's from 50 words its class
    favours (so the labels can be learned)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_features + 1)
    cols = rng.choice(n_features, size=(n_docs, tokens), p=p / p.sum())
    y = rng.integers(0, n_classes, n_docs)
    vocab = rng.choice(n_features, size=(n_classes, 50), replace=False)
    k = tokens // 10
    cols[:, :k] = vocab[y[:, None], rng.integers(0, 50, (n_docs, k))]
    rows = np.repeat(np.arange(n_docs), tokens)
    X = sp.csr_matrix((np.ones(cols.size, np.float32), (rows, cols.ravel())), shape=(n_docs, n_features))
    X.sum_duplicates()
    return X, y


def _timed_kernels(monkeypatch, backend):
    """A list that collects the seconds of each compiled epoch call of ``backend``."""
    kern, spent = backends.kernels(backend), []
    for name in ("sparse_epoch", "deep_epoch", "blas_epoch"):
        original = getattr(kern, name, None)
        if original is None:
            continue

        def timed(*args, _original=original, **kwargs):
            t0 = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - t0)

        monkeypatch.setattr(kern, name, timed)
    return spent


def _bench_calls(benchmark, monkeypatch, backend, make_model, X, y, group, rounds, **train_kw):
    spent = _timed_kernels(monkeypatch, backend)
    totals, kernels = [], []

    def call(model):
        spent.clear()
        t0 = time.perf_counter()
        fastmlp.train(model, X, y, epochs=1, backend=backend, **train_kw)
        totals.append(time.perf_counter() - t0)
        kernels.append(sum(spent))

    fastmlp.train(make_model(), X[: min(64, X.shape[0])], y[: min(64, X.shape[0])], backend=backend, **train_kw)
    benchmark.group = group
    benchmark.pedantic(call, setup=lambda: ((make_model(),), {}), rounds=rounds, iterations=1)
    total, kernel = float(np.median(totals)), float(np.median(kernels))
    fixed = float(np.median(np.subtract(totals, kernels)))
    benchmark.extra_info.update(
        backend=backend,
        kernel_seconds=kernel,
        fixed_seconds=fixed,
        call_over_kernels=total / max(kernel, 1e-12),
        blas=bench.blas_description(),
        **{k: str(v) for k, v in train_kw.items()},
    )
    print(f"\n{group} {backend}: call {total * 1e3:.1f} ms, kernels {kernel * 1e3:.1f} ms, "
          f"fixed {fixed * 1e3:.1f} ms, call/kernels {total / max(kernel, 1e-12):.2f}")  # fmt: skip


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("settings", ["adam-200", "sgd-64"])
def test_call_mnist(benchmark, monkeypatch, request, backend, settings):
    smoke = request.config.getoption("benchmark_disable", False)
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST is not in {MNIST_DIR} (set FASTMLP_MNIST_DIR)")
    X, y, _, _ = fastmlp.datasets.load_mnist(MNIST_DIR)
    if smoke:
        X, y = X[:SMOKE_ROWS], y[:SMOKE_ROWS]
    kw = dict(optimizer="adam", lr=1e-3, batch_size=200) if settings == "adam-200" else dict(lr=0.1, batch_size=64)
    _bench_calls(
        benchmark, monkeypatch, backend,
        lambda: fastmlp.MLP(784, 100, 10, dtype=np.float32, activation="relu", seed=0),
        X, y, f"call mnist float32 784-100-10 {settings}", 1 if smoke else 7, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("backend", COMPILED)
def test_call_bag_of_words(benchmark, monkeypatch, request, backend):
    smoke = request.config.getoption("benchmark_disable", False)
    n_docs, n_features = (2_000, 5_000) if smoke else (90_000, 100_000)
    X, y = bag_of_words(n_docs, n_features)
    _bench_calls(
        benchmark, monkeypatch, backend,
        lambda: fastmlp.MLP(n_features, 100, 20, dtype=np.float32, seed=0),
        X, y, f"call bag-of-words {n_docs}x{n_features} batch=1", 1 if smoke else 5, lr=0.05, batch_size=1,
    )  # fmt: skip
