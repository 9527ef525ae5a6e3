"""Every backend's kernels against fastmlp.reference: one contract, one suite."""

import contextlib
import os
import platform
import sys

import numpy as np
import pytest
from helpers import ACTIVATIONS, BACKENDS, DTYPES, hidden_tuple, pairwise, random_problem, step_size, trains

from fastmlp import backends, tables
from fastmlp import reference as ref
from fastmlp._kernels import _np, caches, epochs

# (n, n_in, n_hidden, n_out): degenerate sizes, odd sizes, MNIST-like widths
SHAPES = [(1, 1, 1, 2), (5, 1, 3, 2), (9, 7, 1, 3), (33, 13, 17, 5), (64, 784, 100, 10)]
LOSSES = list(ref.LOSSES)


def tol(dtype, deep=False):
    """float32's tolerance grows with the depth: each layer's rounding feeds the next."""
    if dtype == np.float32:
        return dict(rtol=1e-4, atol=1e-5 if deep else 1e-6)
    return dict(rtol=1e-10, atol=1e-13)


def trains_shape(row):
    """A pairwise filter: rows whose shape (``shape_batch``) has several hidden layers
    only with a kernel (backend, path, ...) that trains them."""
    if "shape_batch" not in row:
        return True
    return trains({"kernel": row.get("kernel"), "hidden": row["shape_batch"][0][2]} if "kernel" in row else {})


def kernel_paths():
    """(backend, path) for every epoch path of every available backend."""
    return [(b, p) for b in BACKENDS for p in backends.kernels(b).PATHS]


@pytest.fixture(params=BACKENDS)
def kern(request):
    return backends.kernels(request.param)


def act(name):
    return tables.activation(name).code


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_hidden_and_logits(kern, dtype, shape, activation):
    X, _, p = random_problem(*shape, dtype)
    H = kern.forward_hidden(X, p["Wh"], p["bh"], act(activation))
    Z = kern.forward_logits(H, p["Wy"], p["by"])
    out = ref.forward(p, X, activation)
    assert H.dtype == dtype and Z.dtype == dtype
    np.testing.assert_allclose(H, out.H, **tol(dtype))
    np.testing.assert_allclose(Z, ref.output_layer(H, p["Wy"], p["by"]), **tol(dtype))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_loss_grad(kern, dtype, shape, loss):
    X, y, p = random_problem(*shape, dtype, seed=2, loss=loss)
    out = ref.forward(p, X, loss=loss)
    dZ, loss_sum, n_correct = kern.loss_grad(out.Z, y, epochs.loss_code(loss))
    mean_loss, acc = ref.loss_accuracy(out.Y_hat, y, loss, logits=out.Z)
    assert dZ.dtype == dtype
    np.testing.assert_allclose(dZ, ref.output_delta(out.Y_hat, y, loss) / len(X), **tol(dtype))
    np.testing.assert_allclose(loss_sum, mean_loss * len(X), **tol(dtype))
    assert n_correct == round(acc * len(X))


def test_loss_grad_is_stable_and_breaks_ties_low(kern):
    Z = np.array([[1e4, 0.0, -1e4], [3.0, 3.0, 1.0], [-800.0, -800.0, -801.0]], dtype=np.float32)
    y = np.array([0, 1, 0], dtype=np.intp)
    dZ, loss_sum, n_correct = kern.loss_grad(Z, y, epochs.loss_code("ce"))
    assert np.isfinite(dZ).all() and np.isfinite(loss_sum)
    assert n_correct == 2  # row 1: argmax is class 0 (first of the tie), label 1
    Zd = Z.astype(np.float64)
    expected = -ref.log_softmax(Zd)[np.arange(3), y].sum()
    assert np.isclose(loss_sum, expected, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_gradient_is_accurate_down_to_underflow(kern, dtype):
    """exp(z - max z) from 0 down to where it rounds to zero (float32 below about
    -104): each probability within a few units in the last place of float64's,
    times exp's condition number |z - max z|."""
    gaps = np.array([0.0, -1e-6, -0.5, -1.0, -10.0, -30.0, -50.0, -70.0, -87.0, -95.0, -100.0, -104.0, -110.0, -800.0])
    Z = np.stack([gaps, gaps[::-1] + 3.0]).astype(dtype)
    y = np.array([3, 0], dtype=np.intp)
    dZ, loss_sum, _ = kern.loss_grad(Z, y, epochs.loss_code("ce"))
    Zd = Z.astype(np.float64)
    p = np.exp(ref.log_softmax(Zd))
    tiny = np.finfo(dtype).smallest_subnormal
    eps = np.finfo(dtype).eps * np.maximum(1.0, np.abs(Zd - Zd.max(axis=1, keepdims=True)))
    assert (np.abs(dZ * 2 + np.eye(Z.shape[1])[y] - p) <= 4 * eps * p + 4 * tiny).all()
    expected = -ref.log_softmax(Zd)[np.arange(2), y].sum()
    np.testing.assert_allclose(loss_sum, expected, rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_update(kern, dtype, shape, activation):
    X, y, p = random_problem(*shape, dtype, seed=5)
    out = ref.forward(p, X, activation)
    dZ = (ref.output_delta(out.Y_hat, y) / len(X)).astype(dtype)
    dZ_before = dZ.copy()
    expected = {k: v.copy() for k, v in p.items()}
    dH_expected = ref.hidden_delta(p["Wy"], out.H, dZ, activation)  # from Wy before the step
    ref.sgd_step(expected, ref.param_grads(X, out.H, dZ, dH_expected), 0.3)
    dH = kern.backward_update(X, out.H, dZ, epochs.Params(**p), 0.3, act(activation))
    np.testing.assert_allclose(dH, dH_expected, **tol(dtype))
    np.testing.assert_array_equal(dZ, dZ_before)
    for k in ref.PARAM_NAMES:
        np.testing.assert_allclose(p[k], expected[k], **tol(dtype))


def kernel_inputs():
    """(backend, path, inputs): every path of every backend with the inputs it takes
    (dense rows; CSR from dense inputs with few non-zeros; scipy.sparse CSR)."""
    return [
        (b, p, i) for b, p in kernel_paths() for i in ("dense", "sparse", "csr") if not (p == "blas" and i == "csr")
    ]


@pairwise(
    trains_shape,
    kernel=kernel_inputs(),
    loss=LOSSES,
    dtype=DTYPES,
    shape_batch=[
        ((1, 1, 1, 2), 1),
        ((7, 3, 4, 2), 3),
        ((7, 3, 4, 2), 50),
        ((40, 13, 17, 5), 1),
        ((40, 13, 17, 5), 8),
        ((64, 784, 100, 10), 16),
        ((30, 9, 150, 3), 4),
        ((1, 1, (1, 1), 2), 1),
        ((7, 3, (4, 5), 2), 50),
        ((40, 13, (17, 9), 5), 8),
        ((64, 784, (130, 70), 10), 16),
        ((30, 9, (70, 40, 20), 3), 4),
        ((33, 12, (9, 20, 7), 4), 1),
    ],
    activation=ACTIVATIONS,
)
def test_train_epoch_matches_reference(kernel, loss, dtype, shape_batch, activation):
    """Every backend, path and kind of input against the reference, with every pair of
    them, the losses, dtypes, shapes (one, two and three hidden layers) and batch
    sizes, and the activations."""
    import scipy.sparse as sp

    (backend, path, inputs), (shape, batch) = kernel, shape_batch
    kern = backends.kernels(backend)
    X, y, p = random_problem(*shape, dtype, seed=7, sparse=inputs != "dense", loss=loss)
    expected = {k: v.copy() for k, v in p.items()}
    perm = np.random.default_rng(0).permutation(len(X))
    lr = step_size(loss, 0.05)
    r_loss, r_correct = ref.train_epoch(expected, X, y, perm, batch, lr, loss, activation=activation)
    k_loss, k_correct = epochs.train_epoch(
        kern, sp.csr_matrix(X) if inputs == "csr" else X, y, perm, p, lr, batch, loss, path, activation=activation
    )
    assert k_correct == r_correct
    deep = len(hidden_tuple(shape[2])) > 1
    np.testing.assert_allclose(k_loss, r_loss, **tol(dtype, deep))
    for k in expected:
        np.testing.assert_allclose(p[k], expected[k], **tol(dtype, deep))


@pairwise(trains, kernel=kernel_paths(), loss=LOSSES, activation=ACTIVATIONS, hidden=[16, (16, 12), (12, 10, 8)])
def test_200_steps_match_reference_float64(kernel, loss, activation, hidden):
    """200 steps in order (shuffle=False): errors must not accumulate, at any depth."""
    backend, path = kernel
    X, y, p = random_problem(400, 20, hidden, 4, np.float64, seed=11, loss=loss)
    expected = {k: v.copy() for k, v in p.items()}
    perm = np.arange(len(X), dtype=np.intp)
    kern = backends.kernels(backend)
    for _ in range(2):  # 2 epochs x 100 batches of 4
        ref.train_epoch(expected, X, y, perm, 4, step_size(loss, 0.2), loss, activation=activation)
        epochs.train_epoch(kern, X, y, perm, p, step_size(loss, 0.2), 4, loss, path, activation=activation)
    for k in expected:
        np.testing.assert_allclose(p[k], expected[k], rtol=1e-8, atol=1e-12)


def test_tanh_float32_error_over_the_whole_float_range(kern):
    """max |tanh_kernel(x) - tanh(x)| <= 1e-6 for float32 x: a strided walk over every
    bit pattern (all exponents, mantissas sampled), a dense grid where tanh bends,
    and the special values."""
    bits = np.arange(0, 0x7F800000, 61, dtype=np.uint32)
    x = bits.view(np.float32)
    x = np.concatenate(
        [
            x,
            -x,
            np.linspace(-12, 12, 2_000_001, dtype=np.float32),
            np.float32([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45]),
        ]
    )
    t = kern.activation(x, act("tanh"))
    assert t.dtype == np.float32
    err = np.abs(t.astype(np.float64) - np.tanh(x.astype(np.float64)))
    assert err.max() <= 1e-6, x[err.argmax()]
    assert np.isnan(kern.activation(np.float32([np.nan]), act("tanh"))).all()


def test_tanh_float64_error(kern):
    x = np.concatenate([np.linspace(-40, 40, 1_000_001), np.logspace(-300, 2, 10_000)])
    x = np.concatenate([x, -x, [np.inf, -np.inf, 0.0]])
    t = kern.activation(x, act("tanh"))
    assert t.dtype == np.float64
    assert np.abs(t - np.tanh(x)).max() <= 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_error_over_the_whole_range(kern, dtype):
    """The kernels' logistic (exp in float64 arithmetic, rounded once) within a few
    units in the last place of float64's expit, from where it underflows (within the
    smallest normal number there) to where it rounds to 1, and NaN stays NaN."""
    from scipy.special import expit

    x = np.concatenate([np.linspace(-800, 800, 400_001), np.logspace(-30, 2.9, 10_000)])
    x = np.concatenate([x, -x, [np.inf, -np.inf, 0.0]]).astype(dtype)
    y = kern.activation(x, act("logistic"))
    assert y.dtype == dtype
    exact = expit(x.astype(np.float64))
    bad = np.abs(y - exact) > 4 * np.finfo(dtype).eps * exact + np.finfo(dtype).tiny
    assert not bad.any(), x[bad][:5]
    assert np.isnan(kern.activation(np.array([np.nan], dtype), act("logistic"))).all()


@pytest.mark.parametrize("name,exact", [("relu", lambda x: np.maximum(x, 0)), ("identity", lambda x: x)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_piecewise_linear_activations_are_exact_and_keep_nan(kern, dtype, name, exact):
    x = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.25, np.inf, np.nan], dtype)
    np.testing.assert_array_equal(kern.activation(x, act(name)), exact(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (784, 100), (3, 0), (1, 1, 5)])
def test_sparse_path_buffers_are_zeroed_and_cache_line_aligned(dtype, shape):
    for _ in range(5):  # a different allocation each time
        a = epochs.aligned_zeros(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.size == 0 or a.ctypes.data % epochs.CACHE_LINE == 0
        assert not a.any()
    itemsize = np.dtype(dtype).itemsize
    for n in (1, 15, 16, 17, 100, 128):
        w = epochs.padded_width(n, itemsize)
        assert w >= n and w * itemsize % epochs.CACHE_LINE == 0 and (w - n) * itemsize < epochs.CACHE_LINE


def test_auto_path_choice():
    """The driver's rule: sparse inputs, and dense ones with few non-zeros, take the
    sparse path (as CSR) at every batch size; inputs up to half non-zero take it at
    small and large batches (and at all where OpenBLAS lacks AVX-512 kernels); denser
    inputs take it row by row up to the batch where GEMMs overtake the rows (measured
    on a user's machine, pinned in the suite) and the BLAS path above; explicit paths
    are obeyed."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    dense = rng.random((1000, 50)) + 0.1
    sparse = dense * (rng.random(dense.shape) < 0.2)  # 20% non-zero, like MNIST
    kern = backends.kernels("cython")
    for batch in (1, 10, 64, 1000):
        assert epochs.choose_path(kern, "auto", batch, sparse) == ("sparse", "csr")
        assert epochs.choose_path(kern, "auto", batch, sp.csr_matrix(dense)) == ("sparse", "csr")
        assert epochs.choose_path(kern, "sparse", batch, dense) == ("sparse", "dense")
        assert epochs.choose_path(kern, "blas", batch, sparse) == ("blas", None)
    crossing = epochs.dense_rows_crossing(kern, dense.dtype)  # the suite pins it (conftest)
    rows_max = crossing.rows_max
    assert epochs.choose_path(kern, "auto", 1, dense) == ("sparse", "dense")
    assert epochs.choose_path(kern, "auto", rows_max, dense) == ("sparse", "dense")
    assert epochs.choose_path(kern, "auto", rows_max + 1, dense) == ("blas", None)
    middling = dense * (rng.random(dense.shape) < 0.45)
    assert epochs.choose_path(kern, "auto", epochs.SMALL_BATCH_MAX, middling) == ("sparse", "csr")
    assert epochs.choose_path(kern, "auto", epochs.LARGE_BATCH_MIN, middling) == ("sparse", "csr")
    assert epochs.LARGE_BATCH_MIN == kern.SPARSE_GROUP_MIN  # the rule was measured where grouping starts
    # between them, GEMMs where OpenBLAS has AVX-512 kernels; the sparse path where it has not
    between = ("blas", None) if epochs.blas_has_avx512_kernels() else ("sparse", "csr")
    for batch in (epochs.SMALL_BATCH_MAX + 1, epochs.LARGE_BATCH_MIN - 1):
        assert epochs.choose_path(kern, "auto", batch, middling) == between
    denser = dense * (rng.random(dense.shape) < 0.7)
    for batch in (rows_max + 1, epochs.LARGE_BATCH_MIN, 1000):
        assert epochs.choose_path(kern, "auto", batch, denser) == ("blas", None)
    with pytest.raises(ValueError, match="needs dense inputs"):
        epochs.choose_path(kern, "blas", 10, sp.csr_matrix(dense))
    assert epochs.choose_path(backends.kernels("numpy"), "auto", 10, dense) == ("reference", None)
    assert epochs.input_density(sparse) == pytest.approx(0.2, abs=0.02)
    assert epochs.input_density(np.zeros((0, 3))) == 0.0
    for batch in (1, 10, 63, 64, 60000):  # the words fastmlp info prints name the same path
        for density, X in ((0.2, sparse), (0.45, middling), (1.0, dense)):
            path, rows, why = epochs.auto_path(batch, density, crossing=crossing)
            assert (path, rows) == epochs.choose_path(kern, "auto", batch, X) and why
    with pytest.raises(ValueError, match="crossing"):
        epochs.auto_path(10, 1.0)  # dense inputs between batch 2 and 31 need the measured crossing


def test_blas_kernel_detection_follows_openblas():
    from threadpoolctl import threadpool_info

    kernels = {p.get("architecture", "").lower() for p in threadpool_info() if p.get("internal_api") == "openblas"}
    assert kernels, "scipy's OpenBLAS should be loaded"
    assert epochs.blas_has_avx512_kernels() is bool(kernels & {"skylakex", "cooperlake", "sapphirerapids"})


def test_the_compiled_tables_are_the_python_tables():
    """Each compiled backend has an op for exactly the rows of fastmlp.tables, under
    their codes: the C tables name them (_fused.h), Numba's are dicts of ops."""
    acts = {row.code: name for name, row in tables.ACTIVATIONS.items()}
    losses = {row.code: name for name, row in tables.LOSSES.items()}
    opts = {row.code: name for name, row in tables.OPTIMIZERS.items()}
    assert tuple(acts.values()) == ref.ACTIVATIONS and tuple(losses.values()) == ref.LOSSES
    if "cython" in BACKENDS:
        assert backends.kernels("cython").c_codes() == (acts, losses, opts)
        assert backends.kernels("cython").OPTIMIZER_CODES == set(opts)
    if "numba" in BACKENDS:
        nb = backends.kernels("numba")
        assert set(nb.ACTIVATION_OPS) == set(acts) and set(nb.LOSS_OPS) == set(losses)
        assert nb.OPTIMIZER_CODES == set(opts)
    assert backends.kernels("numpy").OPTIMIZER_CODES == set(opts)


UNKNOWN_LOSS = max(row.code for row in tables.LOSSES.values()) + 1
UNKNOWN_ACT = max(row.code for row in tables.ACTIVATIONS.values()) + 1
UNKNOWN_OPTIMIZER = max(row.code for row in tables.OPTIMIZERS.values()) + 1


@pytest.mark.parametrize("backend,path", kernel_paths())
def test_an_unknown_code_raises_in_every_primitive(backend, path):
    kern = backends.kernels(backend)
    X, y, p = random_problem(12, 5, 4, 3, np.float64, seed=3, sparse=True)
    before = {k: v.copy() for k, v in p.items()}
    with pytest.raises(ValueError, match="loss code"):
        kern.loss_grad(ref.forward(p, X).Z, y, UNKNOWN_LOSS)
    for call in (
        lambda: kern.activation(X[0], UNKNOWN_ACT),
        lambda: kern.forward_hidden(X, p["Wh"], p["bh"], UNKNOWN_ACT),
        lambda: kern.backward_update(X, ref.forward(p, X).H, np.zeros((12, 3)), epochs.Params(**p), 0.1, UNKNOWN_ACT),
    ):
        with pytest.raises(ValueError, match="activation code"):
            call()
    runner = epochs.EpochRunner(kern, p, X, y, batch_size=4, path=path)
    unknown = ((epochs.Codes(0, UNKNOWN_LOSS), "loss code"), (epochs.Codes(UNKNOWN_ACT, 0), "activation code"))
    for codes, what in unknown:
        runner.codes = codes  # past the driver's own check, straight to the primitive
        with pytest.raises(ValueError, match=what):
            runner.run(np.arange(12), 0.1)
    if backend != "numpy":  # the compiled primitives take the optimizer's code

        class UnknownOptimizer(epochs.Step):
            code = UNKNOWN_OPTIMIZER

        runner.codes = epochs.codes()
        with pytest.raises(ValueError, match="optimizer code"):
            runner.run(np.arange(12), UnknownOptimizer(0.1))
    for k in ref.PARAM_NAMES:  # rejected before any step
        np.testing.assert_array_equal(p[k], before[k])
    with pytest.raises(ValueError, match="loss must be one of"):
        epochs.loss_code("hinge")
    with pytest.raises(ValueError, match="activation must be one of"):
        epochs.codes("softplus")


# ---- large batches on the sparse path, taken in chunks with their gradient summed ----


CHUNKING_BACKENDS = GROUPING_BACKENDS = ["cython", "numba"]  # those with chunks and a grouped update


def _chunking_kernels(monkeypatch, chunk, backend="cython"):
    """A backend's kernels with chunks of ``chunk`` examples (small, so that small
    problems exercise every chunk boundary)."""
    if backend not in BACKENDS:
        pytest.skip(f"the {backend} backend is not available")
    kern = backends.kernels(backend)
    assert kern.SPARSE_CHUNK_ROWS > 0
    monkeypatch.setattr(kern, "SPARSE_CHUNK_ROWS", chunk)
    return kern


def _grouping_kernels(monkeypatch, group_min, backend="cython"):
    """A backend's kernels grouping the updates of batches from ``group_min`` examples
    up (small, so that small problems take the grouped update at many sizes), up to
    128 at a time whatever this CPU's L1d (the blocks of a 48 KiB one)."""
    if backend not in BACKENDS:
        pytest.skip(f"the {backend} backend is not available")
    kern = backends.kernels(backend)
    assert 0 < kern.SPARSE_GROUP_MIN <= kern.SPARSE_MASK_ROWS
    monkeypatch.setattr(kern, "SPARSE_GROUP_MIN", group_min)
    monkeypatch.setenv(caches.L1D_VAR, "48K")
    return kern


def _check_two_epochs_against_the_reference(runner, p, v, expected, ve, X, y, w, batch, opt, loss, dtype):
    """Two epochs of ``runner`` (on ``p`` and velocities ``v``) and of the reference
    (on ``expected`` and ``ve``) over the same shuffle: the same loss, accuracy,
    parameters and velocities."""
    perm = np.random.default_rng(2).permutation(len(y))
    assert runner.codes.loss == epochs.loss_code(loss)
    for _ in range(2):
        r_loss, r_correct = _np.reference_epoch(epochs.Params(**expected), X, y, w, perm, batch, opt, runner.codes, ve)
        k_loss, k_correct = runner.epoch(perm, opt)
    np.testing.assert_allclose(k_correct, r_correct, rtol=1e-6)  # weighted counts with weights
    np.testing.assert_allclose(k_loss, r_loss, **tol(dtype))
    for k in ref.PARAM_NAMES:
        np.testing.assert_allclose(p[k], expected[k], **tol(dtype))
        if v is not None:
            np.testing.assert_allclose(v[k], ve[k], **tol(dtype))


# momentum, nesterov, decay, weighted
SGD_OPTIONS = [(0.0, False, 0.0, False), (0.9, True, 1e-2, True), (0.5, False, 0.1, False)]


@pairwise(
    backend=CHUNKING_BACKENDS,
    inputs=["dense", "csr"],
    loss=LOSSES,
    dtype=DTYPES,
    options=SGD_OPTIONS,
    chunk_batch=[(1, 40), (7, 40), (7, 100), (64, 100)],
    activation=ACTIVATIONS,
)
def test_chunked_batches_match_the_reference(
    monkeypatch, backend, inputs, loss, dtype, options, chunk_batch, activation
):
    import scipy.sparse as sp

    (momentum, nesterov, decay, weighted), (chunk, batch) = options, chunk_batch
    kern = _chunking_kernels(monkeypatch, chunk, backend)
    X, y, p = random_problem(100, 13, 40, 4, dtype, seed=3, sparse=True, loss=loss)
    w = np.random.default_rng(1).random(100).astype(dtype) * 2 if weighted else None
    expected = {k: v.copy() for k, v in p.items()}
    ve = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(a) for k, a in p.items()} if momentum else None
    runner = epochs.EpochRunner(
        kern,
        p,
        sp.csr_matrix(X) if inputs == "csr" else X,
        y,
        batch_size=batch,
        path="sparse",
        n_threads=2,
        loss=loss,
        activation=activation,
        weights=w,
        velocity=v,
    )
    assert runner.work.gWhT.size > 0 and runner.work.H.shape[1] == min(chunk, batch)
    opt = epochs.Step(step_size(loss, 0.05), momentum, decay, nesterov, weighted)
    _check_two_epochs_against_the_reference(runner, p, v, expected, ve, X, y, w, batch, opt, loss, dtype)


@pairwise(
    dtype=DTYPES,
    # chunks of 9 (200: a full batch, its chunks grouped by input); updates grouped
    # by the mask (100: two words of bits)
    update_batch=[
        ("chunked", 64),
        ("chunked", 200),
        ("chunked-numba", 64),
        ("chunked-numba", 200),
        ("grouped", 40),
        ("grouped", 100),
        ("grouped-numba", 40),
        ("grouped-numba", 100),
        ("grouped-chunks", 40),
        ("grouped-chunks-numba", 40),
    ],
    activation=ACTIVATIONS,
)
def test_large_batches_are_bitwise_equal_for_every_thread_count(monkeypatch, dtype, update_batch, activation):
    update, batch = update_batch
    backend = "numba" if update.endswith("-numba") else "cython"
    update = update.removesuffix("-numba")
    if update == "chunked":
        kern = _chunking_kernels(monkeypatch, 9, backend)
    elif update == "grouped-chunks":  # a batch too large for the mask, in chunks of 8 that it holds
        kern = _small_mask_kernels(monkeypatch, backend)
    else:
        kern = _grouping_kernels(monkeypatch, 32, backend)
    X, y, p0 = random_problem(200, 30, 150, 3, dtype, seed=8, sparse=True)  # 150 units: several groups
    results = []
    for n_threads in (1, 2, 3):
        p = {k: v.copy() for k, v in p0.items()}
        runner = epochs.EpochRunner(
            kern, p, X, y, batch_size=batch, path="sparse", n_threads=n_threads, activation=activation
        )
        assert (runner.work.gWhT if update == "chunked" else runner.work.mask).size > 0
        assert (runner.work.gWhT.size > 0) == (update in ("chunked", "grouped-chunks"))
        loss = runner.epoch(np.random.default_rng(0).permutation(200), 0.1)
        results.append((p, loss))
    for p, loss in results[1:]:
        assert loss == results[0][1]
        for k in ref.PARAM_NAMES:
            np.testing.assert_array_equal(p[k], results[0][0][k])


@pairwise(
    backend=GROUPING_BACKENDS,
    rows=["csr", "dense"],
    loss=LOSSES,
    dtype=DTYPES,
    options=SGD_OPTIONS,
    batch=[2, 7, 64, 70, 150, 300],  # 70: two words of bits; 300: chunks of 128
    activation=ACTIVATIONS,
)
def test_grouped_updates_match_the_reference(monkeypatch, backend, rows, loss, dtype, options, batch, activation):
    """Each touched row of WhT (or gWhT) updated once per batch with the sum over the
    batch's examples: the reference's step, for every option, on CSR and dense rows."""
    momentum, nesterov, decay, weighted = options
    kern = _grouping_kernels(monkeypatch, 2, backend)
    X, y, p = random_problem(300, 13, 40, 4, dtype, seed=3, sparse=rows == "csr", loss=loss)
    # weights in [0.5, 1.5): with decay / (the batch's weight sum), a batch of two
    # near-zero weights would take a step that amplifies any rounding (either update)
    w = 0.5 + np.random.default_rng(1).random(300).astype(dtype) if weighted else None
    expected = {k: v.copy() for k, v in p.items()}
    ve = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(a) for k, a in p.items()} if momentum else None
    runner = epochs.EpochRunner(
        kern, p, X, y, batch_size=batch, path="sparse", n_threads=2, loss=loss, activation=activation, weights=w,
        velocity=v,
    )  # fmt: skip
    # batch 2 of CSR rows: 2 x 3.9 non-zeros are fewer than the 13 inputs, so no mask;
    # a backend that takes batches whole has a mask up to SPARSE_MASK_ROWS examples
    held = min(batch, kern.SPARSE_CHUNK_ROWS or batch)
    assert (runner.work.mask.size > 0) == ((batch > 2 or rows == "dense") and held <= kern.SPARSE_MASK_ROWS)
    assert (runner.rows.indptr is None) == (rows == "dense")
    opt = epochs.Step(0.01, momentum, decay, nesterov, weighted)  # a stable walk at every batch size
    _check_two_epochs_against_the_reference(runner, p, v, expected, ve, X, y, w, batch, opt, loss, dtype)
    assert not runner.work.mask.any()  # every bit cleared for the next batch


@pytest.mark.parametrize("backend", GROUPING_BACKENDS)
@pytest.mark.parametrize("batch", [1, 10, 64, 300])
def test_padded_units_stay_zero_whatever_the_activation_gives_at_zero(backend, batch):
    """The sparse path pads the hidden units to whole cache lines. logistic(0) = 0.5:
    the kernels set the padded units' activations to zero, so their weights in and
    out, their biases and velocities stay exactly zero through every kind of update
    (per example, per non-zero, grouped, in chunks), with momentum and decay."""
    if backend not in BACKENDS:
        pytest.skip(f"the {backend} backend is not available")
    X, y, p = random_problem(300, 13, 40, 4, np.float32, seed=4, sparse=True)  # 40 units: 8 padded in float32
    v = {k: np.zeros_like(a) for k, a in p.items()}
    runner = epochs.EpochRunner(
        backends.kernels(backend), p, X, y, batch_size=batch, path="sparse", n_threads=2, activation="logistic",
        velocity=v,
    )  # fmt: skip
    runner.epoch(np.random.default_rng(0).permutation(300), epochs.Step(0.1, 0.9, 1e-2, True))
    net = runner.block
    padded = 0
    for s in range(net.WhT.shape[0]):
        u0, u1 = epochs.slice_units(net, s, 40)
        for block in (net.WhT, net.Wy, net.VWhT, net.VWy):
            padded += block[s, :, u1 - u0 :].size
            assert not block[s, :, u1 - u0 :].any()
        for block in (net.bh, net.Vbh):
            assert not block[s, u1 - u0 :].any()
    assert padded > 0 and np.abs(net.WhT).max() > 0


def test_updates_are_grouped_where_the_walk_over_the_inputs_pays():
    """The mask costs a walk over every input per batch: set up from the backend's
    SPARSE_GROUP_MIN examples up, where the batch's non-zeros are at least the inputs."""
    kern = backends.kernels("cython") if "cython" in BACKENDS else pytest.skip("the Cython backend is not built")
    group = (kern.SPARSE_GROUP_MIN, kern.SPARSE_MASK_ROWS)
    net = epochs.sparse_net(784, 100, 10, np.float32, 2)
    work = epochs.sparse_work(net, 64, 128, group, nnz_per_row=150.0)  # MNIST
    assert work.mask.shape == (2, 784, 1) and work.group_min == kern.SPARSE_GROUP_MIN
    assert epochs.sparse_work(net, 60000, 128, group, 150.0).mask.shape == (2, 784, 2)  # chunks of 128
    assert epochs.sparse_work(net, 10, 128, group, 150.0).mask.size == 0  # too few examples
    assert epochs.sparse_work(net, 64, 128, None, 150.0).mask.size == 0  # the backend does not group
    wide = epochs.sparse_net(2**18, 100, 10, np.float32, 2)
    assert epochs.sparse_work(wide, 64, 128, group, 131.0).mask.size == 0  # 8,384 non-zeros, 262,144 inputs


def test_batches_too_large_for_the_mask_are_grouped_in_chunks():
    """A batch the mask cannot hold whole is taken in chunks that it can hold, where
    their non-zeros pay for the walk over the inputs; otherwise it stays whole (an
    update per non-zero)."""
    kern = backends.kernels("cython") if "cython" in BACKENDS else pytest.skip("the Cython backend is not built")
    group = (kern.SPARSE_GROUP_MIN, kern.SPARSE_MASK_ROWS)
    net = epochs.sparse_net(784, 100, 10, np.float32, 2)
    for batch in (384, 512, 768):  # MNIST: more inputs than examples, 150 non-zeros a row
        work = epochs.sparse_work(net, batch, 128, group, 150.0)
        assert work.H.shape[1] == 128 and work.gWhT.shape == net.WhT.shape and work.mask.shape == (2, 784, 2)
    whole = epochs.sparse_work(net, 256, 128, group, 150.0)  # the mask holds it whole
    assert whole.H.shape[1] == 256 and whole.gWhT.size == 0 and whole.mask.shape == (2, 784, 4)
    assert epochs.sparse_work(net, 512, 128, None, 150.0).gWhT.size == 0  # the backend does not group
    wide = epochs.sparse_net(2**18, 100, 10, np.float32, 2)
    work = epochs.sparse_work(wide, 512, 128, group, 131.0)  # chunks' 16,768 non-zeros < 262,144 inputs
    assert work.H.shape[1] == 512 and work.gWhT.size == 0 and work.mask.size == 0


def _small_mask_kernels(monkeypatch, backend="cython"):
    """A backend's kernels with a mask of 16 examples and chunks of 8, grouping from 2
    examples up: a batch of 40 is too large for the mask, its chunks are not."""
    kern = _grouping_kernels(monkeypatch, 2, backend)
    monkeypatch.setattr(kern, "SPARSE_MASK_ROWS", 16)
    monkeypatch.setattr(kern, "SPARSE_CHUNK_ROWS", 8)
    return kern


@pairwise(
    backend=CHUNKING_BACKENDS, loss=LOSSES, dtype=DTYPES, options=SGD_OPTIONS, activation=ACTIVATIONS,
    limit=["mask", "l1d"],
)  # fmt: skip
def test_grouped_blocks_of_a_batch_too_large_to_group_whole_match_the_reference(
    monkeypatch, cache_env, backend, loss, dtype, options, activation, limit
):
    """A batch of 40 taken 8 examples at a time, each block grouped, the gradient
    summed: the reference's step. The limit is the mask's 16 examples (chunks of 8),
    or an L1d that holds dl/dh~ of only 8 examples (40 hidden units in groups of at
    most three cache lines, 192 bytes a row, in either dtype; L1d set to 3 KiB)."""
    momentum, nesterov, decay, weighted = options
    if limit == "mask":
        kern = _small_mask_kernels(monkeypatch, backend)
    else:
        kern = _grouping_kernels(monkeypatch, 2, backend)
        cache_env(l1d="3K")
    X, y, p = random_problem(300, 60, 40, 4, dtype, seed=5, sparse=True, loss=loss)  # 60 inputs > 40 examples
    w = 0.5 + np.random.default_rng(1).random(300).astype(dtype) if weighted else None
    expected = {k: v.copy() for k, v in p.items()}
    ve = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(a) for k, a in p.items()} if momentum else None
    runner = epochs.EpochRunner(
        kern, p, X, y, batch_size=40, path="sparse", n_threads=2, loss=loss, activation=activation, weights=w,
        velocity=v,
    )  # fmt: skip
    assert runner.work.H.shape[1] == 8 and runner.work.gWhT.size > 0 and runner.work.mask.size > 0
    opt = epochs.Step(0.01, momentum, decay, nesterov, weighted)
    _check_two_epochs_against_the_reference(runner, p, v, expected, ve, X, y, w, 40, opt, loss, dtype)
    assert not runner.work.mask.any()  # every bit cleared for the next batch


@pytest.mark.parametrize("backend", GROUPING_BACKENDS)
def test_unsorted_and_duplicate_csr_indices_are_canonicalised_for_the_kernels(monkeypatch, backend):
    import scipy.sparse as sp

    kern = _grouping_kernels(monkeypatch, 2, backend)
    X, y, p0 = random_problem(64, 20, 30, 3, np.float64, seed=4, sparse=True)
    C = sp.csr_matrix(X)
    # each row's entries reversed, and one entry split in two halves
    data, indices, indptr = [], [], [0]
    for r in range(64):
        d, i = C.data[C.indptr[r] : C.indptr[r + 1]][::-1], C.indices[C.indptr[r] : C.indptr[r + 1]][::-1]
        if len(d):
            d, i = np.concatenate([d[:1] / 2, d[:1] / 2, d[1:]]), np.concatenate([i[:1], i])
        data.extend(d), indices.extend(i), indptr.append(len(data))
    messy = sp.csr_matrix((np.array(data), np.array(indices), np.array(indptr)), shape=C.shape)
    assert not messy.has_canonical_format
    results = []
    for inputs in (C, messy):
        p = {k: v.copy() for k, v in p0.items()}
        epochs.EpochRunner(kern, p, inputs, y, batch_size=32, path="sparse").epoch(np.arange(64), 0.1)
        results.append(p)
    for k in ref.PARAM_NAMES:
        np.testing.assert_allclose(results[1][k], results[0][k], rtol=1e-12, atol=1e-15)


def test_batches_are_taken_whole_where_a_gradient_buffer_would_outgrow_them():
    """Chunks need a buffer the size of WhT: only where the inputs are no more than
    the batch's examples (wide sparse inputs keep whole batches)."""
    net = epochs.sparse_net(5000, 100, 10, np.float32, 2)
    assert epochs.sparse_work(net, 1024, 256).gWhT.size == 0  # 5000 inputs > 1024 examples
    assert epochs.sparse_work(net, 1024, 256).H.shape[1] == 1024
    net = epochs.sparse_net(784, 100, 10, np.float32, 2)
    work = epochs.sparse_work(net, 60000, 256)
    assert work.H.shape[1] == 256 and work.gWhT.shape == net.WhT.shape
    assert epochs.sparse_work(net, 256, 256).gWhT.size == 0  # a batch that fits a chunk
    assert epochs.sparse_work(net, 60000, 0).H.shape[1] == 60000  # backends without chunks


@pytest.mark.parametrize("backend", GROUPING_BACKENDS)
def test_a_mask_that_does_not_fit_the_workspace_is_refused(backend):
    """The kernels write one bit per example held, for each input and slice: a mask
    of another shape (or a group_min below 1) is refused before any work."""
    if backend not in BACKENDS:
        pytest.skip(f"the {backend} backend is not available")
    kern = backends.kernels(backend)
    net = epochs.sparse_net(30, 100, 10, np.float64, 2)
    work = epochs.sparse_work(net, 70, 0, (2, 256), nnz_per_row=30.0)
    assert work.mask.shape == (2, 30, 2)
    X = np.ones((70, 30))
    rows = epochs.Rows(*kern.dense_to_csr(X))
    args = (np.zeros(70, np.intp), None, np.arange(70), 70, epochs.Step(0.1), epochs.Codes(0, 0))
    WhT = net.WhT.copy()
    for bad in (np.zeros((2, 30, 1), np.uint64), np.zeros((1, 30, 2), np.uint64), np.zeros((2, 29, 2), np.uint64)):
        with pytest.raises(ValueError, match="one bit per example"):
            kern.sparse_epoch(net, rows, *args, work._replace(mask=bad), 2)
    with pytest.raises(ValueError, match="one bit per example"):
        kern.sparse_epoch(net, rows, *args, work._replace(group_min=0), 2)
    np.testing.assert_array_equal(net.WhT, WhT)  # nothing was done
    assert kern.sparse_epoch(net, rows, *args, work, 2)[1] >= 0
    assert not work.mask.any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_out", [1, 10, 17])
def test_what_each_thread_writes_at_every_batch_lies_on_lines_of_its_own(dtype, n_out):
    """Each slice's copy of by (and its state and gradient) and each row of dl/dz
    start on a cache line and fill whole lines, so two threads never write to one
    line; the kernel refuses a workspace laid out otherwise."""
    net = epochs.sparse_net(30, 100, n_out, dtype, 2, state=2)
    work = epochs.sparse_work(net, 8)
    for a in (net.by, net.Vby, net.Sby, work.gby, work.dZ):
        assert a.ctypes.data % epochs.CACHE_LINE == 0
        assert a.strides[-2] % epochs.CACHE_LINE == 0 and a.shape[-1] >= n_out
    kern = backends.kernels("cython")
    X = np.ones((8, 30), dtype)
    rows = epochs.Rows(*kern.dense_to_csr(X))
    args = (np.zeros(8, np.intp), None, np.arange(8), 8, epochs.Step(0.1), epochs.Codes(0, 0))
    assert kern.sparse_epoch(net, rows, *args, work, 2)[1] >= 0
    with pytest.raises(ValueError, match="padded to whole cache lines"):
        kern.sparse_epoch(net, rows, *args, work._replace(dZ=np.zeros((2, 8, n_out), dtype)), 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", CHUNKING_BACKENDS)
def test_a_full_batch_in_chunks_does_not_depend_on_the_shuffle(monkeypatch, backend, dtype):
    """A full batch is one gradient: in chunks it is summed in row order, so every
    permutation gives the same parameters, bitwise, and the reference's up to rounding."""
    import scipy.sparse as sp

    kern = _chunking_kernels(monkeypatch, 16, backend)
    X, y, p0 = random_problem(150, 20, 40, 3, dtype, seed=9, sparse=True)
    results = []
    for seed in range(3):
        p = {k: v.copy() for k, v in p0.items()}
        runner = epochs.EpochRunner(kern, p, sp.csr_matrix(X), y, batch_size=150, path="sparse", n_threads=2)
        perm = np.random.default_rng(seed).permutation(150)
        for _ in range(3):
            loss = runner.epoch(perm, 0.2)
        results.append((p, loss))
    expected = {k: v.copy() for k, v in p0.items()}
    for _ in range(3):
        r_loss, r_correct = ref.train_epoch(expected, X, y, np.arange(150), 150, 0.2, "ce")
    for p, loss in results:
        assert loss == results[0][1]
        np.testing.assert_allclose(loss, (r_loss, r_correct), **tol(dtype))
        for k in ref.PARAM_NAMES:
            np.testing.assert_array_equal(p[k], results[0][0][k])
            np.testing.assert_allclose(p[k], expected[k], **tol(dtype))


@pytest.mark.parametrize("backend", CHUNKING_BACKENDS)
def test_group_chunks_groups_each_chunks_nonzeros_by_input(backend):
    """The grouping of a full batch's non-zeros equals scipy's CSC of each chunk."""
    import scipy.sparse as sp

    if backend not in BACKENDS:
        pytest.skip(f"the {backend} backend is not available")
    kern = backends.kernels(backend)
    rng = np.random.default_rng(4)
    dense = sp.random(53, 17, density=0.3, random_state=5, dtype=np.float64).toarray()
    dense[7] = 0  # an empty row
    X = sp.csr_matrix(dense)
    rows = epochs.Rows(X.data, X.indices.astype(np.int32), X.indptr.astype(np.int64))
    order = rng.permutation(53)
    cptr, crow, cval = kern.group_chunks(rows, order, 10, 17)
    assert cptr.shape == (6, 18) and crow.dtype == np.uint16 and cval.dtype == np.float64
    for c in range(6):
        chunk = X[order[c * 10 : (c + 1) * 10]].tocsc()
        np.testing.assert_array_equal(cptr[c] - cptr[c, 0], chunk.indptr)
        np.testing.assert_array_equal(crow[cptr[c, 0] : cptr[c, -1]], chunk.indices)
        np.testing.assert_array_equal(cval[cptr[c, 0] : cptr[c, -1]], chunk.data)
    assert cptr[-1, -1] == X.nnz
    with pytest.raises(ValueError, match="CSR rows and chunks of at most 65536"):
        kern.group_chunks(rows, order, 70000, 17)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


def test_the_c_kernels_say_which_clone_runs_and_release_builds_carry_them():
    """clone_level(): 0 where the C kernels were compiled once, else the x86-64
    level of the build that runs, never one the CPU lacks. Release builds
    (FASTMLP_REQUIRE_CLONES=1: tools/build_wheels.sh and cibuildwheel set it) must
    carry the AVX2 and AVX-512 builds on x86-64 Linux: compiled once (by gcc 10, as
    in manylinux2014 images, or by clang), the kernels run the x86-64 baseline,
    1.6-2.5x slower per epoch on MNIST than the AVX-512 build."""
    if "cython" not in BACKENDS:
        pytest.skip("the Cython backend is not built")
    level = backends.kernels("cython").clone_level()
    assert level in (0, 1, 3, 4)
    x86_linux = platform.machine() in ("x86_64", "AMD64") and sys.platform.startswith("linux")
    if level:
        assert x86_linux
        flags = _cpu_flags()
        assert level < 4 or "avx512f" in flags
        assert level < 3 or {"avx2", "fma"} <= set(flags)
    if os.environ.get("FASTMLP_REQUIRE_CLONES") == "1" and x86_linux:
        assert level >= 1, "the C kernels were built without the x86-64-v3/v4 clones (gcc 11 or later builds them)"


@pytest.mark.parametrize("backend", CHUNKING_BACKENDS)
def test_a_workspace_that_cannot_hold_the_batches_is_refused(backend):
    """A batch larger than the workspace's rows needs its gradient buffer G, and grouped
    chunks (cptr) belong to one full batch of CSR rows: anything else is refused
    before any work."""
    if backend not in BACKENDS:
        pytest.skip(f"the {backend} backend is not available")
    kern = backends.kernels(backend)
    net = epochs.sparse_net(30, 100, 10, np.float64, 2)
    X = (np.random.default_rng(0).random((40, 30)) > 0.5).astype(np.float64)
    rows = epochs.Rows(*kern.dense_to_csr(X))
    chunked = epochs.sparse_work(net, 40, 8)
    assert chunked.H.shape[1] == 8 and chunked.gWhT.size
    cptr, crow, cval = kern.group_chunks(rows, np.arange(40), 8, 30)
    grouped = chunked._replace(cptr=cptr, crow=crow, cval=cval)
    labels, order = np.zeros(40, np.intp), np.arange(40)

    def epoch(work, batch, rows=rows):
        return kern.sparse_epoch(net, rows, labels, None, order, batch, epochs.Step(0.1), epochs.Codes(0, 0), work, 2)

    WhT = net.WhT.copy()
    bad = [
        (chunked._replace(gWhT=np.zeros(0)), 40),  # no gradient buffer for a batch of 40 in chunks of 8
        (grouped, 20),  # grouped chunks, but batches of 20 of 40 examples
        (grouped._replace(gWhT=np.zeros(0)), 40),
    ]
    for work, batch in bad:
        with pytest.raises(ValueError):
            epoch(work, batch)
    with pytest.raises(ValueError):
        epoch(grouped, 40, epochs.Rows(X, None, None))  # dense rows
    np.testing.assert_array_equal(net.WhT, WhT)  # nothing was done
    assert epoch(grouped, 40)[1] >= 0 and epoch(chunked, 40)[1] >= 0


@contextlib.contextmanager
def _level_kept(cy):
    """The Cython kernels ``cy``, the build of its C kernels that ran before
    (clone_level) running again afterwards."""
    before = cy.clone_level()
    try:
        yield cy
    finally:
        cy.set_clone_level(before)


def _kernel_levels():
    """The builds of the C kernels this CPU runs (4, 3, 1; [0] where they are built once)."""
    if "cython" not in BACKENDS:
        return []
    with _level_kept(backends.kernels("cython")) as cy:
        return sorted({cy.set_clone_level(level) for level in (4, 3, 1)}, reverse=True)


@pytest.fixture
def cy_levels():
    """The Cython kernels, whose tests may run lower builds (set_clone_level)."""
    with _level_kept(backends.kernels("cython")) as cy:
        yield cy


@pytest.mark.parametrize("level", _kernel_levels())
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_build_of_the_c_kernels_trains_as_the_reference(cy_levels, level, dtype):
    """Each build (AVX-512, AVX2, baseline: each with vectors of its own width)
    takes the same steps as the reference on both paths, at batch sizes that reach
    each way of updating (per example, per non-zero, grouped by input, in chunks, a
    full batch's grouped chunks), with momentum, and gives the same bits on one
    thread and two."""
    import scipy.sparse as sp

    cy = cy_levels
    assert cy.set_clone_level(level or 4) == level
    X, y, p0 = random_problem(300, 40, 100, 7, dtype, seed=5, sparse=True)
    perm = np.random.default_rng(1).permutation(len(X))
    for path, inputs in (("sparse", sp.csr_matrix(X)), ("sparse", X), ("blas", X)):
        for batch, opt in (
            (1, epochs.Step(0.05)),
            (10, epochs.Step(0.05)),
            (70, epochs.Step(0.05, 0.9, 1e-3, True)),
            (300, epochs.Step(0.2)),
            (150, epochs.Step(0.1, 0.5)),
        ):
            loss = "mse" if batch == 10 else "ce"
            expected = {k: v.copy() for k, v in p0.items()}
            v_ref = {k: np.zeros_like(v) for k, v in p0.items()}
            ref.train_epoch(
                expected, X, y, perm, batch, opt.lr, loss, opt.momentum, opt.nesterov, opt.decay, velocity=v_ref
            )
            runs = []
            for threads in (1, 2):
                p = {k: v.copy() for k, v in p0.items()}
                velocity = {k: np.zeros_like(v) for k, v in p0.items()}
                epochs.train_epoch(cy, inputs, y, perm, p, opt, batch, loss, path, n_threads=threads, velocity=velocity)
                runs.append(p)
            for k in ref.PARAM_NAMES:
                np.testing.assert_allclose(runs[0][k], expected[k], **tol(dtype), err_msg=f"{path} {batch} {k}")
                np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=f"{path} {batch} {k}")


@pytest.mark.skipif(not {4, 3} <= set(_kernel_levels()), reason="needs a CPU with AVX-512")
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_avx512_and_avx2_builds_give_the_same_bits_on_the_sparse_path(cy_levels, dtype):
    """The same sums in the same order, with fused multiply-adds in both: what
    docs/user_guide/reproducibility.md promises across those machines."""
    import scipy.sparse as sp

    cy = cy_levels
    X, y, p0 = random_problem(300, 40, 100, 7, dtype, seed=9, sparse=True)
    perm = np.random.default_rng(2).permutation(len(X))
    results = {}
    for level in (4, 3):
        cy.set_clone_level(level)
        for batch in (1, 10, 64, 300):
            p = {k: v.copy() for k, v in p0.items()}
            epochs.train_epoch(cy, sp.csr_matrix(X), y, perm, p, 0.1, batch, "ce", "sparse", n_threads=2)
            results[level, batch] = p
    for batch in (1, 10, 64, 300):
        for k in ref.PARAM_NAMES:
            np.testing.assert_array_equal(results[4, batch][k], results[3, batch][k], err_msg=f"{batch} {k}")


# ---- several hidden layers on the compiled sparse path ----

DEEP_KERNELS = [b for b in BACKENDS if "sparse" in backends.kernels(b).DEEP_PATHS]


@pairwise(
    backend=DEEP_KERNELS,
    hidden=[(130, 70), (130, 70, 66)],  # every layer two groups or more in both dtypes: two threads busy
    dtype=DTYPES,
    batch_opt=[
        (1, epochs.Step(0.05)),
        (10, epochs.Step(0.05, 0.9, 1e-3, True)),
        (64, epochs.Step(0.05)),
        (200, epochs.Step(0.1)),  # more than the workspace's rows: in chunks, the gradient summed
        (200, epochs.Step(0.1, 0.5, 0.0, False, True)),
    ],
    activation=ACTIVATIONS,
)
def test_deep_epochs_are_bitwise_equal_for_every_thread_count_and_csr_equals_dense(
    backend, hidden, dtype, batch_opt, activation
):
    """Depth 2 and 3: one, two and three threads give the same bits; CSR rows the
    same as dense ones; both match the reference."""
    import scipy.sparse as sp

    batch, opt = batch_opt
    kern = backends.kernels(backend)
    X, y, p0 = random_problem(200, 30, hidden, 3, dtype, seed=8, sparse=True)
    for k in p0:  # gains below 1 per layer: identity layers do not blow up
        p0[k] *= dtype(0.2)
    w = np.random.default_rng(2).random(200).astype(dtype) if opt.decay_by_weight_sum else None
    perm = np.random.default_rng(0).permutation(200)
    runs = []
    for inputs, n_threads in ((X, 1), (X, 2), (X, 3), (sp.csr_matrix(X), 2)):
        p = {k: v.copy() for k, v in p0.items()}
        v = {k: np.zeros_like(a) for k, a in p0.items()} if opt.momentum else None
        runner = epochs.EpochRunner(
            kern, p, inputs, y, batch_size=batch, path="sparse", n_threads=n_threads, activation=activation,
            weights=w, velocity=v,
        )  # fmt: skip
        assert isinstance(runner.block, epochs.DeepNet)
        assert runner._usable(n_threads) >= min(n_threads, 2)  # threads really share the work
        # from the backend's SPARSE_GROUP_MIN examples a chunk, the first layer's rows are updated once each
        assert (runner.work.mask.size > 0) == (min(batch, kern.SPARSE_CHUNK_ROWS) >= kern.SPARSE_GROUP_MIN)
        runs.append((runner.epoch(perm, opt), p))
        assert not runner.work.mask.any()  # every bit cleared for the next chunk
    for result, p in runs[1:]:
        assert result == runs[0][0]
        for k in p0:
            np.testing.assert_array_equal(p[k], runs[0][1][k])
    expected = {k: v.copy() for k, v in p0.items()}
    ve = {k: np.zeros_like(v) for k, v in p0.items()}
    _np.reference_epoch(expected, X, y, w, perm, batch, opt, epochs.codes(activation, "ce"), ve)
    for k in p0:
        np.testing.assert_allclose(runs[0][1][k], expected[k], **tol(dtype, deep=True))


@pytest.mark.parametrize("backend", DEEP_KERNELS)
def test_the_deep_layout_round_trips_and_keeps_the_padding_zero(backend):
    """The model's arrays go into the path's transposed, padded blocks and come back
    unchanged; after training under logistic (f(0) = 0.5) every padded row and
    column is still zero."""
    X, y, p0 = random_problem(50, 7, (20, 9), 3, np.float32, seed=1, sparse=True)
    p = {k: v.copy() for k, v in p0.items()}
    runner = epochs.EpochRunner(backends.kernels(backend), p, X, y, batch_size=5, path="sparse", activation="logistic")
    runner._load()
    runner._store()
    for k in p0:
        np.testing.assert_array_equal(p[k], p0[k])
    runner.epoch(np.arange(50), 0.5)
    net = runner.block
    live = np.zeros(net.W.shape, bool)
    live_b = np.zeros(net.b.shape, bool)
    for blocks, b in epochs.deep_views(net, live, live_b):
        for _, WT in blocks:
            WT[...] = True
        b[...] = True
    assert not net.W[~live].any() and not net.b[~live_b].any()
    assert np.abs(net.W[live]).sum() > 0


@pytest.mark.parametrize("backend", DEEP_KERNELS)
def test_a_deep_workspace_without_gradient_buffers_is_refused(backend):
    X, y, p = random_problem(20, 6, (8, 8), 3, np.float64, seed=2)
    runner = epochs.EpochRunner(backends.kernels(backend), p, X, y, batch_size=4, path="sparse")
    net, work = runner.block, runner.work
    args = (runner.rows, y, None, np.arange(20), 4, epochs.Step(0.1, 0.0, 1e-3), epochs.codes(), work, 1)
    with pytest.raises(ValueError, match="what the step needs"):
        runner.kernels.deep_epoch(net, *args)
    before = net.W.copy()
    with pytest.raises(ValueError, match="activation code"):
        runner.kernels.deep_epoch(net, *args[:6], epochs.Codes(UNKNOWN_ACT, 0), *args[7:])
    np.testing.assert_array_equal(net.W, before)


def test_the_blas_path_says_it_trains_one_hidden_layer():
    X, y, p = random_problem(20, 6, (8, 8), 3, np.float64, seed=2)
    for backend in DEEP_KERNELS:
        with pytest.raises(ValueError, match="path 'blas' trains networks of one hidden layer"):
            epochs.EpochRunner(backends.kernels(backend), p, X, y, batch_size=4, path="blas")
        assert epochs.EpochRunner(backends.kernels(backend), p, X, y, batch_size=64).path == "sparse"


@pytest.mark.parametrize("level", _kernel_levels())
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_build_of_the_c_kernels_trains_deep_networks_as_the_reference(cy_levels, level, dtype):
    cy = cy_levels
    assert cy.set_clone_level(level or 4) == level
    X, y, p0 = random_problem(300, 40, (100, 70), 7, dtype, seed=5, sparse=True)
    perm = np.random.default_rng(1).permutation(len(X))
    for batch, opt in ((1, epochs.Step(0.05)), (70, epochs.Step(0.05, 0.9, 1e-3, True)), (300, epochs.Step(0.2))):
        expected = {k: v.copy() for k, v in p0.items()}
        v_ref = {k: np.zeros_like(v) for k, v in p0.items()}
        ref.train_epoch(
            expected, X, y, perm, batch, opt.lr, "ce", opt.momentum, opt.nesterov, opt.decay, velocity=v_ref
        )
        runs = []
        for threads in (1, 2):
            p = {k: v.copy() for k, v in p0.items()}
            velocity = {k: np.zeros_like(v) for k, v in p0.items()}
            epochs.train_epoch(cy, X, y, perm, p, opt, batch, "ce", "sparse", n_threads=threads, velocity=velocity)
            runs.append(p)
        for k in p0:
            np.testing.assert_allclose(runs[0][k], expected[k], **tol(dtype, deep=True), err_msg=f"{batch} {k}")
            np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=f"{batch} {k}")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_targets_of_the_other_kind_are_refused_before_any_work(backend, loss):
    """A loss over class labels given target values, or the reverse, is refused by
    each compiled primitive (the C kernels' FM_ERR_LAYOUT, Numba's check), the
    parameters untouched."""
    kern = backends.kernels(backend)
    X, y, p = random_problem(20, 5, 8, 3, np.float64, seed=1, loss=loss)
    other = random_problem(20, 5, 8, 3, np.float64, seed=1, loss="ce" if loss == "bce" else "bce")[1]
    Z = ref.forward(p, X).Z
    with pytest.raises(ValueError, match="class labels or target values"):
        kern.loss_grad(Z, other, epochs.loss_code(loss))
    with pytest.raises(ValueError, match="takes"):
        epochs.EpochRunner(kern, p, X, other, batch_size=4, loss=loss)
    before = {k: v.copy() for k, v in p.items()}
    runner = epochs.EpochRunner(kern, p, X, y, batch_size=4, loss=loss, path="sparse")
    runner.labels = other  # past the runner's own check: the kernels refuse it too
    with pytest.raises(ValueError, match="class labels or target values"):
        runner.epoch(np.arange(20), epochs.Step(0.1))
    for k in p:
        np.testing.assert_array_equal(p[k], before[k])
