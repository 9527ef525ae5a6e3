"""The public API: semantics users rely on, on every backend."""

from pathlib import Path

import numpy as np
import pytest
from helpers import ACTIVATIONS, BACKENDS, DTYPES, random_problem

import fastmlp
from fastmlp import reference as ref


def make_model(n_in=4, n_hidden=6, n_out=3, dtype=np.float64, seed=0):
    return fastmlp.MLP(n_in, n_hidden, n_out, dtype=dtype, init="normal", seed=seed)


def params_of(model):
    return {k: v.copy() for k, v in model.params.items()}


def test_version_and_backends():
    assert fastmlp.__version__ == fastmlp._version.__version__
    backends = fastmlp.available_backends()
    assert backends[0] == "numpy" and "cython" in backends


@pytest.mark.parametrize("dtype", DTYPES)
def test_model_shapes_dtype_and_assignment(dtype):
    m = fastmlp.MLP(5, 7, 3, dtype=dtype)
    assert (m.Wh.shape, m.bh.shape, m.Wy.shape, m.by.shape) == ((7, 5), (7,), (3, 7), (3,))
    assert all(a.dtype == dtype for a in (m.Wh, m.bh, m.Wy, m.by))
    new = np.asfortranarray(np.arange(35.0).reshape(7, 5))
    m.Wh = new
    assert m.Wh.dtype == dtype and m.Wh.flags.c_contiguous
    np.testing.assert_array_equal(m.Wh, new)
    new[0, 0] = -1  # the model holds its own copy
    assert m.Wh[0, 0] == 0
    with pytest.raises(ValueError, match="Wy must have shape"):
        m.Wy = np.zeros((7, 3))


def test_init_schemes_and_seed():
    a, b = fastmlp.MLP(3, 4, 2, seed=1), fastmlp.MLP(3, 4, 2, seed=1)
    np.testing.assert_array_equal(a.Wh, b.Wh)
    assert not np.array_equal(a.Wh, fastmlp.MLP(3, 4, 2, seed=2).Wh)
    n = fastmlp.MLP(3, 4, 2, init="normal", seed=1)
    expected = ref.init_params(3, 4, 2, "normal", np.float32, 1)
    for k in ref.PARAM_NAMES:
        np.testing.assert_array_equal(n.params[k], expected[k])


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_updates_in_place_and_matches_reference_loop(backend):
    X, y, _ = random_problem(23, 4, 6, 3, np.float64)
    m = make_model()
    arrays = {k: v for k, v in m.params.items()}
    expected = params_of(m)
    hist = fastmlp.train(m, X, y, epochs=3, batch_size=5, lr=0.1, backend=backend, shuffle=False)
    for k in ref.PARAM_NAMES:
        assert m.params[k] is arrays[k]  # same arrays, updated in place
    perm = np.arange(23)
    losses = []
    for _ in range(3):
        s, _c = ref.train_epoch(expected, X, y, perm, 5, 0.1)
        losses.append(s / 23)
    for k in ref.PARAM_NAMES:
        np.testing.assert_allclose(m.params[k], expected[k], rtol=1e-9)
    np.testing.assert_allclose(hist.loss, losses, rtol=1e-9)
    assert hist.backend == backend and len(hist.seconds) == 3 and hist.epochs == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_hot_and_labels_give_identical_results(backend):
    X, y, _ = random_problem(30, 4, 6, 3, np.float64)
    a, b = make_model(), make_model()
    ha = fastmlp.train(a, X, y, epochs=2, batch_size=4, backend=backend)
    hb = fastmlp.train(b, X, ref.one_hot(y, 3), epochs=2, batch_size=4, backend=backend)
    for k in ref.PARAM_NAMES:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert ha.loss == hb.loss and ha.accuracy == hb.accuracy


def test_shuffle_false_takes_batches_in_order_and_last_batch_averages_its_own_size():
    X, y, _ = random_problem(7, 3, 4, 2, np.float64)
    m = make_model(3, 4, 2)
    manual = params_of(m)
    fastmlp.train(m, X, y, epochs=1, batch_size=5, lr=0.1, shuffle=False, backend="numpy")
    for rows in (slice(0, 5), slice(5, 7)):  # a batch of 5, then one of 2
        ref.sgd_step(manual, ref.backward(manual, ref.forward(manual, X[rows]), y[rows]), 0.1)
    for k in ref.PARAM_NAMES:
        np.testing.assert_allclose(m.params[k], manual[k], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixed_seed_is_deterministic_and_seed_changes_order(backend):
    X, y, _ = random_problem(50, 4, 6, 3, np.float32)
    runs = []
    for seed in (3, 3, 4):
        m = make_model(dtype=np.float32)
        fastmlp.train(m, X, y, epochs=2, batch_size=8, seed=seed, backend=backend)
        runs.append(m.Wh.copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_agrees_with_numpy(backend):
    X, y, _ = random_problem(100, 6, 8, 3, np.float64)
    results = {}
    for b in ("numpy", backend):
        m = make_model(6, 8, 3)
        results[b] = (fastmlp.train(m, X, y, epochs=3, batch_size=7, lr=0.2, backend=b), m)
    for k in ref.PARAM_NAMES:
        np.testing.assert_allclose(results[backend][1].params[k], results["numpy"][1].params[k], rtol=1e-9)
    np.testing.assert_allclose(results[backend][0].loss, results["numpy"][0].loss, rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inconvenient_arrays_give_the_same_result_and_are_not_modified(backend):
    X, y, _ = random_problem(40, 5, 6, 3, np.float64)
    clean = make_model(5, 6, 3, dtype=np.float32)
    fastmlp.train(clean, X.astype(np.float32), y, epochs=2, batch_size=6, backend=backend)
    variants = [
        np.asfortranarray(X),  # Fortran order, float64
        np.repeat(X, 2, axis=1)[:, ::2],  # strided view
        X.copy(),  # read-only below
    ]
    variants[2].setflags(write=False)
    for Xv in variants:
        before = Xv.copy()
        m = make_model(5, 6, 3, dtype=np.float32)
        fastmlp.train(m, Xv, y.astype(np.int32), epochs=2, batch_size=6, backend=backend)
        np.testing.assert_array_equal(Xv, before)
        for k in ref.PARAM_NAMES:
            np.testing.assert_array_equal(m.params[k], clean.params[k])


def test_int_X_for_float32_model():
    Xi = np.random.default_rng(0).integers(0, 3, size=(20, 4))
    a, b = make_model(dtype=np.float32), make_model(dtype=np.float32)
    y = np.arange(20) % 3
    fastmlp.train(a, Xi, y, backend="numpy")
    fastmlp.train(b, Xi.astype(np.float32), y, backend="numpy")
    np.testing.assert_array_equal(a.Wh, b.Wh)


def test_validation_history_predict_and_evaluate():
    X, y = fastmlp.datasets.circles(600, noise=0.05, seed=0)
    Xv, yv = fastmlp.datasets.circles(300, noise=0.05, seed=1)
    m = fastmlp.MLP(2, 10, 2, seed=0)
    hist = fastmlp.train(m, X, y, epochs=60, batch_size=10, lr=0.1, validation_data=(Xv, yv))
    assert len(hist.val_loss) == len(hist.val_accuracy) == 60
    assert hist.loss[-1] < hist.loss[0]
    loss, acc = fastmlp.evaluate(m, Xv, yv)
    assert acc == hist.val_accuracy[-1] and np.isclose(loss, hist.val_loss[-1])
    assert acc > 0.95
    P = m.predict_proba(Xv)
    np.testing.assert_allclose(P.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(m.predict(Xv), P.argmax(axis=1))
    assert np.mean(m.predict(Xv) == yv) == acc


def test_auto_backend_is_a_compiled_one_when_available():
    m = make_model()
    X, y, _ = random_problem(10, 4, 6, 3, np.float64)
    hist = fastmlp.train(m, X, y, backend="auto")
    assert hist.backend in fastmlp.available_backends() and hist.backend != "numpy"


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_save_load_round_trip(tmp_path, dtype, activation):
    m = fastmlp.MLP(6, 5, 4, dtype=dtype, seed=3, activation=activation)
    X, y, _ = random_problem(20, 6, 5, 4, np.float64)
    fastmlp.train(m, X, y, epochs=1, loss="mse", backend="numpy")
    path = tmp_path / "model.npz"
    m.save(path)
    m2 = fastmlp.MLP.load(path)
    assert (m2.n_in, m2.n_hidden, m2.n_out, m2.dtype, m2.loss) == (6, 5, 4, np.dtype(dtype), "mse")
    assert m2.activation == activation
    for k in ref.PARAM_NAMES:
        np.testing.assert_array_equal(m2.params[k], m.params[k])
    np.testing.assert_array_equal(m2.predict_proba(X), m.predict_proba(X))
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temporary left behind


def test_model_files_written_by_fastmlp_0_2_0_load_and_predict_the_same():
    """tests/data/model-0.2.0.npz: a 2-7-2 tanh network trained by fastmlp 0.2.0
    (model format 1) with the squared error, float64; beside it the class
    probabilities 0.2.0 predicted for datasets.circles(20, noise=0.1, seed=5)."""
    data = Path(__file__).parent / "data"
    m = fastmlp.MLP.load(data / "model-0.2.0.npz")
    assert (m.n_in, m.n_hidden, m.n_out, m.dtype, m.activation, m.loss) == (2, 7, 2, np.float64, "tanh", "mse")
    X, _ = fastmlp.datasets.circles(20, noise=0.1, seed=5)
    # the same network: its predictions to the last bits that NumPy's tanh and exp,
    # which differ by an ulp between CPUs (AVX-512 and AVX2 code), leave alike
    np.testing.assert_allclose(m.predict_proba(X), np.load(data / "model-0.2.0-proba.npy"), rtol=1e-14, atol=0)


def test_load_rejects_garbage_and_truncated_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable fastmlp model"):
        fastmlp.MLP.load(bad)
    good = tmp_path / "good.npz"
    fastmlp.MLP(3, 4, 2).save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable fastmlp model"):
        fastmlp.MLP.load(truncated)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        fastmlp.MLP.load(other)
