"""Sparse inputs (scipy.sparse, any format) and threads: the same training as dense
inputs and one thread, never densified, bad structures refused before any work."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import ACTIVATIONS, BACKENDS, DTYPES, pairwise
from threadpoolctl import threadpool_limits

import fastmlp
from fastmlp import backends
from fastmlp import reference as ref
from fastmlp._kernels import epochs

FORMATS = {
    "csr_matrix": sp.csr_matrix,
    "csr_array": sp.csr_array,
    "csc_matrix": sp.csc_matrix,
    "coo_array": sp.coo_array,
}


def sparse_problem(n=120, n_in=30, n_out=3, density=0.15, seed=0):
    """Dense X with empty rows and all-zero columns, and its labels."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in)) * (rng.random((n, n_in)) < density)
    X[::7] = 0.0  # empty rows
    X[:, [c for c in (0, 5, 17) if c < n_in - 1]] = 0.0  # all-zero columns
    return X, rng.integers(0, n_out, n)


def train_pair(backend, X_dense, X_sparse, y, dtype, activation="tanh", **kw):
    models = []
    for X in (X_dense, X_sparse):
        n_in, n_out = X_dense.shape[1], int(y.max()) + 1
        m = fastmlp.MLP(n_in, 20, n_out, dtype=dtype, init="normal", seed=1, activation=activation)
        fastmlp.train(m, X, y, backend=backend, **kw)
        models.append(m)
    return models


@pairwise(backend=BACKENDS, fmt=list(FORMATS), batch_size=[1, 8, 120], activation=ACTIVATIONS)
def test_sparse_input_trains_as_the_dense_input(backend, fmt, batch_size, activation):
    X, y = sparse_problem()
    dense, csr = train_pair(
        backend, X, FORMATS[fmt](X), y, np.float64, activation, epochs=2, batch_size=batch_size, lr=0.2
    )
    for k in ref.PARAM_NAMES:
        np.testing.assert_allclose(csr.params[k], dense.params[k], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_duplicate_and_unsorted_indices_are_canonicalised(backend, dtype, index_dtype):
    X, y = sparse_problem(seed=3)
    canonical = sp.csr_matrix(X)
    # every entry stored as two halves, the row's entries in reverse order
    data, cols, ptr = [], [], [0]
    for r in range(X.shape[0]):
        a, b = canonical.indptr[r], canonical.indptr[r + 1]
        for c, v in zip(canonical.indices[a:b][::-1], canonical.data[a:b][::-1], strict=True):
            cols += [c, c]
            data += [v / 2, v / 2]
        ptr.append(len(cols))
    messy = sp.csr_matrix((np.array(data), np.array(cols, index_dtype), np.array(ptr, index_dtype)), shape=X.shape)
    assert not messy.has_canonical_format
    before = (messy.data.copy(), messy.indices.copy(), messy.indptr.copy())
    a, b = train_pair(backend, X.astype(dtype), messy.astype(dtype), y, dtype, epochs=1, batch_size=5)
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    for k in ref.PARAM_NAMES:
        np.testing.assert_allclose(b.params[k], a.params[k], **tol)
    for got, was in zip(
        (messy.data, messy.indices, messy.indptr), before, strict=True
    ):  # the caller's matrix is untouched
        np.testing.assert_array_equal(got, was)


def test_mnist_slices_train_the_same_as_csr(mnist):
    X, y, X_test, y_test = mnist
    X, y = X[:3000].astype(np.float64), y[:3000]
    for backend in [b for b in BACKENDS if b != "numpy"]:
        for batch_size in (1, 32, 3000):
            dense, csr = train_pair(
                backend, X, sp.csr_matrix(X), y, np.float64, epochs=1, batch_size=batch_size, lr=0.05
            )
            for k in ref.PARAM_NAMES:
                np.testing.assert_allclose(csr.params[k], dense.params[k], rtol=1e-12, atol=1e-15)
    m = fastmlp.MLP(784, 32, 10, dtype=np.float64, seed=0)
    fastmlp.train(m, sp.csr_matrix(X), y, epochs=1, batch_size=32)
    Xt = X_test[:500]
    np.testing.assert_allclose(m.predict_proba(sp.csr_matrix(Xt)), m.predict_proba(Xt), rtol=1e-12)
    np.testing.assert_array_equal(m.predict(sp.csc_matrix(Xt)), m.predict(Xt))
    assert fastmlp.evaluate(m, sp.coo_array(Xt), y_test[:500]) == pytest.approx(
        fastmlp.evaluate(m, Xt, y_test[:500]), rel=1e-12
    )


def _bad_csr(kind):
    X, _ = sparse_problem(n=20, n_in=6, density=0.5, seed=4)
    m = sp.csr_matrix(X)
    data, indices, indptr = m.data.copy(), m.indices.copy(), m.indptr.copy()
    if kind == "nan":
        data[3] = np.nan
    elif kind == "inf":
        data[0] = -np.inf
    elif kind == "negative index":
        indices[2] = -1
    elif kind == "index out of range":
        indices[4] = 6
    elif kind == "indptr not monotone":
        indptr[5], indptr[6] = indptr[6], indptr[5] - 1
    elif kind == "indptr length":
        bad = sp.csr_matrix((data, indices, indptr), shape=(20, 6))
        bad.indptr = indptr[:-2]
        return bad
    bad = sp.csr_matrix((data, indices, indptr), shape=(20, 6), copy=False)
    bad.data, bad.indices, bad.indptr = data, indices, indptr  # past scipy's own checks
    return bad


BAD_SPARSE = [
    ("nan", ValueError, "X contains NaN or infinity"),
    ("inf", ValueError, "X contains NaN or infinity"),
    ("negative index", ValueError, "X has column indices outside [0, 6)"),
    ("index out of range", ValueError, "X has column indices outside [0, 6)"),
    ("indptr not monotone", ValueError, "X.indptr must start at 0 and never decrease"),
    ("indptr length", ValueError, "X.indptr must hold n_rows + 1 = 21 offsets"),
]


@pytest.mark.parametrize("kind,exc,message", BAD_SPARSE, ids=[k for k, _, _ in BAD_SPARSE])
def test_bad_sparse_input_is_refused_before_any_work(kind, exc, message):
    X = _bad_csr(kind)
    y = np.arange(20) % 3
    model = fastmlp.MLP(6, 4, 3, seed=0)
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(exc) as info:
        fastmlp.train(model, X, y, epochs=1)
    assert str(info.value).startswith(message), str(info.value)
    for k in ref.PARAM_NAMES:
        np.testing.assert_array_equal(model.params[k], before[k])
    with pytest.raises(exc, match=message.split(" ", 1)[0]):
        model.predict(X)


def test_sparse_shape_and_dtype_errors_name_the_argument():
    model = fastmlp.MLP(6, 4, 3)
    y = np.zeros(5, int)
    with pytest.raises(ValueError, match=r"^X must have 6 columns \(the model's n_in\), got shape \(5, 7\)"):
        fastmlp.train(model, sp.random(5, 7, density=0.5, format="csr", random_state=0), y)
    with pytest.raises(TypeError, match="^X must hold real numbers, got sparse data of dtype complex128"):
        fastmlp.train(model, sp.csr_matrix(np.ones((5, 6)) * 1j), y)
    with pytest.raises(ValueError, match="^X must have at least one row"):
        fastmlp.train(model, sp.csr_matrix((0, 6)), y[:0])
    with pytest.raises(ValueError, match="^validation_data\\[0\\] must have 6 columns"):
        fastmlp.train(model, sp.csr_matrix(np.ones((5, 6))), y, validation_data=(sp.csr_matrix(np.ones((5, 2))), y))
    with pytest.raises(ValueError, match="^X has values too large for float32"):
        fastmlp.train(model, sp.csr_matrix(np.full((5, 6), 1e300)), y)


# ---- threads ----


def thread_cases():
    """(backend, path, inputs) for every path of every backend, dense and CSR inputs
    where the path takes them."""
    cases = []
    for b in BACKENDS:
        for path in backends.kernels(b).PATHS:
            for inputs in ("dense", "csr"):
                if not (path == "blas" and inputs == "csr"):
                    cases.append((b, path, inputs))
    return cases


@pairwise(kernel=thread_cases(), dtype=DTYPES, batch_size=[1, 16, 200], activation=ACTIVATIONS)
def test_parameters_are_bitwise_equal_for_every_thread_count(kernel, dtype, batch_size, activation):
    backend, path, inputs = kernel
    X, y = sparse_problem(n=200, n_in=40, density=0.2 if inputs == "csr" else 0.9, seed=5)
    X = X.astype(dtype)
    Xin = sp.csr_matrix(X) if inputs == "csr" else X
    results = []
    for n_threads in (1, 2, 3):
        p = ref.init_params(40, 150, 3, "normal", dtype, 2)  # 150 units: several groups and blocks
        runner = epochs.EpochRunner(
            backends.kernels(backend),
            p,
            Xin,
            y.astype(np.intp),
            batch_size=batch_size,
            path=path,
            n_threads=n_threads,
            activation=activation,
        )
        with epochs.blas_limits(epochs.wants_one_blas_thread(runner.path, batch_size)):
            loss = runner.epoch(np.random.default_rng(0).permutation(200), 0.1)
        results.append((p, loss, runner.threads))
    for p, loss, _ in results[1:]:
        assert loss == results[0][1]
        for k in ref.PARAM_NAMES:
            np.testing.assert_array_equal(p[k], results[0][0][k])
    if path in backends.kernels(backend).THREADED_PATHS and os.cpu_count() > 1:
        assert results[1][2] == 2  # the two-thread run used two


def test_threadpool_limits_one_makes_training_single_threaded():
    X, y = sparse_problem(n=300, n_in=40, density=0.2)
    m = fastmlp.MLP(40, 150, 3, seed=0)
    with threadpool_limits(1):
        assert fastmlp.train(m, X, y, epochs=1, batch_size=8).threads == 1
        assert fastmlp.train(m, X, y, epochs=1, batch_size=8, n_threads=4).threads == 1
    if os.cpu_count() > 1:
        assert fastmlp.train(m, X, y, epochs=1, batch_size=8).threads > 1


def test_n_threads_is_validated():
    X, y = sparse_problem(n=20)
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="^n_threads must be a positive integer"):
            fastmlp.train(fastmlp.MLP(30, 4, 3), X, y, n_threads=bad)


def test_concurrent_trainings_share_the_cores(monkeypatch):
    """The thread budget: a training gets what the running ones leave, at least one."""
    monkeypatch.setattr(epochs, "available_cpus", lambda: 2)
    budget = epochs._ThreadBudget()
    with budget(2) as a:
        with budget(2) as b:
            with budget(5) as c:
                assert (a, b, c) == (2, 1, 1)
        with budget(2) as d:
            assert d == 1
    with budget(2) as e:
        assert e == 2


# ---- never densified ----

BIG_SPARSE = """
import time, numpy as np, scipy.sparse as sp, fastmlp
rng = np.random.default_rng(0)
n, n_in, per_row = 100_000, 2 ** 18, 131          # 0.05% of 2^18 columns
indptr = np.arange(n + 1, dtype=np.int64) * per_row
indices = np.sort(rng.integers(0, n_in, size=(n, per_row)).astype(np.int32), axis=1).ravel()
X = sp.csr_matrix((rng.random(n * per_row, dtype=np.float32), indices, indptr), shape=(n, n_in))
y = rng.integers(0, 2, n)
m = fastmlp.MLP(n_in, 100, 2, seed=0)
t0 = time.perf_counter()
h = fastmlp.train(m, X, y, epochs=1, batch_size=64, lr=0.05)
# this process's peak resident memory (getrusage's ru_maxrss would count the parent's from before exec)
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(h.path, h.threads, round(time.perf_counter() - t0, 2), peak_kib)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
def test_a_wide_sparse_dataset_trains_without_densifying():
    """100,000 rows x 2^18 features at 0.05% density (105 GB dense): an epoch of a
    100-unit model with peak RSS under 1.5 GB."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BIG_SPARSE)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    path, threads, seconds, max_rss_kib = out.stdout.split()
    assert path == "sparse"
    assert int(max_rss_kib) < 1.5 * 2**20, f"peak RSS {int(max_rss_kib) / 2**20:.2f} GiB"
