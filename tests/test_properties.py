"""Property-based tests: for any shapes, dtypes, memory layouts (sparse ones
included), batch sizes and thread counts, every backend trains as the reference
does and leaves the caller's arrays alone."""

import numpy as np
from helpers import BACKENDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastmlp
from fastmlp import reference as ref

LAYOUTS = ["C", "F", "strided", "readonly", "int", "csr", "csc", "coo"]


def _layout(X, layout):
    if layout == "F":
        return np.asfortranarray(X)
    if layout == "strided":
        wide = np.zeros((X.shape[0] * 2, X.shape[1] * 3), dtype=X.dtype)
        wide[::2, ::3] = X
        return wide[::2, ::3]
    if layout == "readonly":
        X = X.copy()
        X.setflags(write=False)
        return X
    if layout == "int":
        return np.round(X * 3).astype(np.int16)
    if layout in ("csr", "csc", "coo"):
        import scipy.sparse as sp

        return {"csr": sp.csr_matrix, "csc": sp.csc_array, "coo": sp.coo_matrix}[layout](X)
    return X


@st.composite
def problems(draw):
    n = draw(st.integers(1, 40))
    n_in = draw(st.integers(1, 12))
    n_hidden = draw(st.integers(1, 12))
    n_out = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in)) * (rng.random((n, n_in)) < draw(st.floats(0.2, 1.0)))
    y = rng.integers(0, n_out, n)
    return dict(
        X=_layout(X, draw(st.sampled_from(LAYOUTS))),
        y=y if draw(st.booleans()) else ref.one_hot(y, n_out, np.int8),
        shape=(n_in, n_hidden, n_out),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        batch_size=draw(st.sampled_from([1, 2, 3, 5, 8, 16, 64])),
        loss=draw(st.sampled_from(["ce", "mse"])),
        activation=draw(st.sampled_from(list(fastmlp.tables.ACTIVATIONS))),
        shuffle=draw(st.booleans()),
        n_threads=draw(st.sampled_from([None, 1, 2, 3])),
        seed=seed,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.sampled_from(BACKENDS))
def test_every_backend_trains_as_the_reference(problem, backend):
    p = problem
    X_before, y_before = _dense(p["X"]).copy(), p["y"].copy()
    flags_before = _flags(p["X"])
    models = {}
    for name in ("numpy", backend):
        m = fastmlp.MLP(*p["shape"], dtype=p["dtype"], init="normal", seed=1, activation=p["activation"])
        hist = fastmlp.train(
            m,
            p["X"],
            p["y"],
            epochs=2,
            batch_size=p["batch_size"],
            lr=0.1,
            loss=p["loss"],
            backend=name,
            shuffle=p["shuffle"],
            seed=p["seed"],
            n_threads=p["n_threads"],
        )
        models[name] = (m, hist)
    tol = dict(rtol=1e-4, atol=1e-5) if p["dtype"] == np.float32 else dict(rtol=1e-9, atol=1e-12)
    for k in ref.PARAM_NAMES:
        np.testing.assert_allclose(models[backend][0].params[k], models["numpy"][0].params[k], **tol)
    np.testing.assert_allclose(models[backend][1].loss, models["numpy"][1].loss, **tol)
    np.testing.assert_array_equal(_dense(p["X"]), X_before)
    np.testing.assert_array_equal(p["y"], y_before)
    assert _flags(p["X"]) == flags_before


def _dense(X):
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X)


def _flags(X):
    if hasattr(X, "toarray"):
        return (X.format, X.dtype)
    return (X.dtype, X.flags.c_contiguous, X.flags.f_contiguous, X.flags.writeable)


@settings(max_examples=40, deadline=None)
@given(problems())
def test_predict_and_evaluate_accept_every_layout(problem):
    p = problem
    m = fastmlp.MLP(*p["shape"], dtype=p["dtype"], seed=2)
    clean = np.ascontiguousarray(_dense(p["X"]), dtype=p["dtype"])
    if hasattr(p["X"], "toarray"):  # scipy's sparse products sum in another order
        tol = dict(rtol=1e-5, atol=1e-6) if p["dtype"] == np.float32 else dict(rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(m.predict_proba(p["X"]), m.predict_proba(clean), **tol)
        np.testing.assert_allclose(fastmlp.evaluate(m, p["X"], p["y"]), fastmlp.evaluate(m, clean, p["y"]), **tol)
        return
    np.testing.assert_array_equal(m.predict_proba(p["X"]), m.predict_proba(clean))
    assert fastmlp.evaluate(m, p["X"], p["y"]) == fastmlp.evaluate(m, clean, p["y"])
