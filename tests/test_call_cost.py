"""The fixed cost of a call: the compiled finite check, the dense-to-CSR conversion at
every kernel level, the finite check deferred to that conversion, the sparse input
shared instead of copied, and the chunks lengthened where saving the parameters costs
more than their compiled time; none of which may change a result."""

import time

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import BACKENDS, COMPILED, random_problem

import fastmlp
from fastmlp import backends
from fastmlp import reference as ref
from fastmlp._kernels import epochs
from fastmlp._validation import check_sparse_X, count_nonfinite

cy = pytest.importorskip("fastmlp._kernels._cy", reason="the Cython kernels are not built")
LEVELS = [level for level in (4, 3, 1) if cy.set_clone_level(level) == level]
cy.set_clone_level(4)


@pytest.fixture
def each_level(request):
    yield
    cy.set_clone_level(4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 17, 65535, 65536 + 17, 200_001])
def test_count_nonfinite_counts_nan_and_both_infinities(dtype, n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal(n).astype(dtype)
    bad = rng.choice(n, size=min(n, 7), replace=False) if n else np.empty(0, int)
    a[bad] = rng.choice([np.nan, np.inf, -np.inf], size=len(bad))
    if n:
        a[-1] = np.finfo(dtype).max  # the largest finite value counts as finite
        bad = bad[bad != n - 1]
    expected = int((~np.isfinite(a)).sum())
    assert expected == len(bad)
    assert cy.count_nonfinite(a) == expected
    assert count_nonfinite(a) == expected
    assert count_nonfinite(a.reshape(-1, 1)[::2]) == int((~np.isfinite(a[::2])).sum())  # strided: copied first
    with np.errstate(over="ignore"):
        half = a.astype(np.float16)
    assert count_nonfinite(half) == int((~np.isfinite(half)).sum())


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_to_csr_equals_scipy_at_every_kernel_level(each_level, level, dtype):
    """The levels pack the non-zeros by compress (AVX-512) or shuffle (AVX2)
    instructions, whole vectors at a time, the baseline entry by entry: each gives
    scipy's CSR of every row, whatever its width and density (NaN is a non-zero)."""
    cy.set_clone_level(level)
    rng = np.random.default_rng(level)
    for density in (0.0, 0.05, 0.2, 0.5, 0.95, 1.0):
        for n_in in (1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 100, 784):
            X = (rng.random((37, n_in)) < density) * rng.standard_normal((37, n_in))
            X[rng.random(X.shape) < 0.01] = np.nan
            X = X.astype(dtype)
            data, indices, indptr = cy.dense_to_csr(X)
            expected = sp.csr_matrix(np.nan_to_num(X, nan=7.0))
            np.testing.assert_array_equal(indptr, expected.indptr)
            np.testing.assert_array_equal(indices, expected.indices)
            np.testing.assert_array_equal(np.nan_to_num(data, nan=7.0), expected.data)
            assert data.dtype == dtype and indices.dtype == np.int32 and indptr.dtype == np.int64


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_tiled_copy_equals_numpys_for_transposes_slices_and_odd_shapes(each_level, level, dtype):
    """copy_2d moves the parameters between the model's layout and the sparse path's
    transposed one: every element lands where NumPy puts it, for shapes that are no
    multiple of the tile, large ones on threads, slices with padded strides, either
    side transposed; what it cannot take it leaves untouched and says so."""
    cy.set_clone_level(level)
    rng = np.random.default_rng(level)
    for n0, n1 in [(1, 1), (3, 70), (65, 129), (100, 1000), (700, 100)]:
        src = rng.standard_normal((n1, n0 + 5)).astype(dtype)[:, 2 : n0 + 2].T  # (n0, n1), transposed
        dst = np.full((n0, n1 + 3), np.nan, dtype)
        assert cy.copy_2d(dst[:, :n1], src)
        np.testing.assert_array_equal(dst[:, :n1], src)
        assert np.isnan(dst[:, n1:]).all()  # the padding beyond the view is not written
        back = np.zeros((n1, n0 + 5), dtype)
        assert cy.copy_2d(back[:, 2 : n0 + 2].T, dst[:, :n1])  # the destination transposed
        np.testing.assert_array_equal(back[:, 2 : n0 + 2].T, src)
        assert not back[:, :2].any() and not back[:, n0 + 2 :].any()
        plain = np.empty((n0, n1), dtype)
        assert cy.copy_2d(plain, np.ascontiguousarray(src))
        np.testing.assert_array_equal(plain, src)
    a = np.arange(12.0, dtype=dtype).reshape(3, 4)
    for dst, src in [
        (np.zeros((3, 4), np.int64), a.astype(np.int64)),  # not a float dtype
        (np.zeros((3, 4), np.float32 if dtype == np.float64 else np.float64), a),  # two dtypes
        (np.zeros((4, 3), dtype), a),  # two shapes
        (np.zeros(12, dtype), a.ravel()),  # not 2-D
        (a[:, ::-1], a),  # a negative stride (and the same memory)
        (a.T.T, a),  # overlapping
    ]:
        before = dst.copy()
        assert not cy.copy_2d(dst, src)
        np.testing.assert_array_equal(dst, before)


# ---- the finite check of a dense X, deferred to the pass that converts it ----

PATHS = [  # (batch, density of X): the layout the sparse path or the BLAS path reads
    (16, 0.1),  # CSR
    (1, 1.0),  # dense rows
    (16, 1.0),  # the BLAS path
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch,density", PATHS)
@pytest.mark.parametrize(
    "bad,message",
    [
        (np.nan, "X contains NaN or infinity"),
        (-np.inf, "X contains NaN or infinity"),
        (1e300, "X has values too large"),
    ],
)
def test_a_dense_X_that_is_not_finite_is_refused_before_any_step(backend, batch, density, bad, message):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 20)) * (rng.random((300, 20)) < density)
    X[rng.integers(300), rng.integers(20)] = bad
    y = rng.integers(0, 3, 300)
    model = fastmlp.MLP(20, 8, 3, dtype=np.float32, seed=0)
    before = {k: v.copy() for k, v in model.params.items()}
    kept = X.copy()
    with pytest.raises(ValueError, match=f"^{message}"):
        fastmlp.train(model, X, y, batch_size=batch, backend=backend)
    for k, v in before.items():
        np.testing.assert_array_equal(model.params[k], v)
    np.testing.assert_array_equal(X, kept)
    fastmlp.train(model, np.nan_to_num(X, posinf=0, neginf=0) % 3, y, batch_size=batch, backend=backend)  # free again


def test_a_canonical_sparse_X_is_shared_not_copied_and_never_written():
    X = sp.random(500, 300, density=0.05, format="csr", dtype=np.float32, random_state=0)
    arrays = [X.data.copy(), X.indices.copy(), X.indptr.copy()]
    checked = check_sparse_X(X, dtype=np.float32)
    assert np.shares_memory(checked.data, X.data) and np.shares_memory(checked.indices, X.indices)
    y = np.arange(500) % 4
    fastmlp.train(fastmlp.MLP(300, 16, 4, dtype=np.float32), X, y, epochs=2, batch_size=8)
    for a, b in zip((X.data, X.indices, X.indptr), arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    # a non-canonical one (a duplicate entry) is summed in a copy of its own
    D = sp.csr_matrix((np.ones(3, np.float32), np.array([1, 1, 0]), np.array([0, 2, 3])), shape=(2, 3))
    out = check_sparse_X(D, dtype=np.float32)
    assert out.has_canonical_format and out.nnz == 2 and not np.shares_memory(out.data, D.data)
    assert D.nnz == 3


# ---- chunks lengthened where saving the parameters costs more than the steps ----


RUN = epochs.EpochRunner.run


def _fit(backend, X, y, monkeypatch, overhead_max, **kw):
    monkeypatch.setattr(epochs, "CHUNK_EXAMPLES", 64)
    monkeypatch.setattr(epochs, "CHUNK_OVERHEAD_MAX", overhead_max)
    lengths = []

    def counted(self, order, opt):
        lengths.append(len(order))
        return RUN(self, order, opt)

    monkeypatch.setattr(epochs.EpochRunner, "run", counted)
    model = fastmlp.MLP(X.shape[1], kw.pop("hidden", 12), 3, dtype=np.float64, seed=0)
    history = fastmlp.train(model, X, y, backend=backend, **kw)
    return model, history, lengths


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "dense,kw",
    [
        (False, dict(epochs=2, batch_size=4, lr=0.05)),
        (True, dict(epochs=2, batch_size=16, optimizer="adam", lr=0.01)),
        (False, dict(epochs=2, batch_size=8, momentum=0.9, hidden=(10, 6))),
    ],
)
def test_lengthened_chunks_train_bitwise_as_the_first_length(backend, dense, kw, monkeypatch):
    X, y, _ = random_problem(1000, 30, 12, 3, np.float64, seed=3, sparse=not dense)
    fixed, h_fixed, n_fixed = _fit(backend, X, y, monkeypatch, np.inf, **dict(kw))
    grown, h_grown, n_grown = _fit(backend, X, y, monkeypatch, 1e-12, **dict(kw))
    assert max(n_fixed) == 64 and max(n_grown) > 64  # the chunks did grow
    # whole batches, each chunk starting where one of the first length would: only an
    # epoch's last chunk is not a whole number of them
    assert sum(n_grown) == 2000 and all(n % 64 in (0, 1000 % 64) for n in n_grown)
    for k in fixed.params:
        np.testing.assert_array_equal(grown.params[k], fixed.params[k])
    np.testing.assert_allclose(h_grown.loss, h_fixed.loss, rtol=1e-12)  # summed over other chunks


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("slow_copy", [False, True])
def test_the_first_chunks_free_save_is_priced_as_the_load(backend, slow_copy, monkeypatch):
    """On the sparse path the first chunk's save costs nothing (the model's arrays hold
    its start) but every later one is a copy as long as the load: the chunks grow by
    the load's price, and only by it."""
    X, y, _ = random_problem(1000, 30, 12, 3, np.float64, seed=3, sparse=True)
    if slow_copy:
        copy = epochs.copy_into

        def slow(dst, src):
            time.sleep(0.01)
            copy(dst, src)

        monkeypatch.setattr(epochs, "copy_into", slow)
    # chunks grow only where saving and checking cost more than 10x their compiled time
    _, _, lengths = _fit(backend, X, y, monkeypatch, 10.0, epochs=1, batch_size=4, lr=0.05)
    assert sum(lengths) == 1000
    assert (lengths[1] > 64) == slow_copy  # grown from the second chunk on


@pytest.mark.parametrize("backend", COMPILED)
def test_a_divergence_in_a_lengthened_chunk_is_located_to_its_step(backend, monkeypatch):
    X, y, _ = random_problem(2000, 10, 8, 3, np.float32, seed=4, sparse=True)
    monkeypatch.setattr(epochs, "CHUNK_EXAMPLES", 64)
    monkeypatch.setattr(epochs, "CHUNK_OVERHEAD_MAX", 1e-12)
    start = fastmlp.MLP(10, 8, 3, dtype=np.float32, seed=0)
    model = start.copy()
    lr = fastmlp.schedules.build(lambda e: 3e38 if e else 0.05, 0.05, epochs=2, n_samples=2000)
    with pytest.raises(fastmlp.DivergenceError) as info:
        fastmlp.train(model, X, y, epochs=2, batch_size=4, lr=0.05, lr_schedule=lr, backend=backend, seed=1)
    err = info.value
    assert err.epoch == 1 and err.history.epochs == 1
    # the model holds the parameters of the steps before the failing one, replayed
    replay = start.params
    kern = backends.kernels(backend)
    rng = np.random.default_rng(1)
    with epochs.blas_limits(True):
        epochs.train_epoch(kern, X, y, rng.permutation(2000), replay, 0.05, 4)
        epochs.train_epoch(kern, X, y, rng.permutation(2000)[: 4 * err.batch], replay, 3e38, 4)
    for k in ref.PARAM_NAMES:
        np.testing.assert_array_equal(model.params[k], replay[k])
