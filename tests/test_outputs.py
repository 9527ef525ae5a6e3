"""The output table at the level users meet it: ``fastmlp.train`` and the model with
logistic outputs per label (two classes, multilabel), regression (identity) and
counts (Poisson), on every backend, path, depth and optimizer, against the
reference; their targets checked before any work; predictions and files that
follow the loss."""

import pickle

import numpy as np
import pytest
from helpers import COMPILED, DTYPES, pairwise, random_targets

import fastmlp
from fastmlp import reference as ref

VALUE_LOSSES = [n for n, row in fastmlp.tables.LOSSES.items() if row.targets == "values"]


def _problem(loss, n=120, n_in=7, n_out=3, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in))
    return X, random_targets(loss, n, n_out, dtype, rng)


@pairwise(
    loss=VALUE_LOSSES,
    backend=COMPILED,
    dtype=DTYPES,
    hidden=[8, (8, 6)],
    optimizer=["sgd", "adam", "lbfgs"],
    path=["auto", "dense"],
)
def test_training_a_value_loss_equals_the_reference_backend(loss, backend, dtype, hidden, optimizer, path):
    """The compiled backends train each value loss as the reference backend does: the
    same parameters and history, at every depth, dtype and optimizer, with the
    inputs dense or mostly zero (the sparse-first path)."""
    X, y = _problem(loss, dtype=dtype)
    if path == "auto":
        X[np.random.default_rng(1).random(X.shape) < 0.7] = 0
    settings = dict(epochs=3, batch_size=16, lr=0.01, loss=loss, optimizer=optimizer, seed=3, validation_data=(X, y))
    new = dict(dtype=dtype, activation="relu", loss=loss, seed=2)
    models = {b: fastmlp.MLP(7, hidden, 3, **new) for b in (backend, "numpy")}
    histories = {b: fastmlp.train(m, X, y, backend=b, **settings) for b, m in models.items()}
    rtol = 2e-4 if dtype == np.float32 else 1e-9
    for k in models["numpy"].params:
        np.testing.assert_allclose(models[backend].params[k], models["numpy"].params[k], rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(histories[backend].loss, histories["numpy"].loss, rtol=rtol)
    classifies = fastmlp.tables.loss(loss).classifies
    assert np.isnan(histories[backend].accuracy).all() != classifies
    assert np.isnan(histories[backend].val_accuracy).all() != classifies


def test_regression_learns_a_smooth_function_and_predicts_values():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, size=(2000, 2))
    y = np.column_stack([np.sin(X[:, 0]) + 0.5 * X[:, 1], X[:, 0] * X[:, 1]])
    model = fastmlp.MLP(2, 64, 2, activation="relu", loss="squared_error", seed=0)
    history = fastmlp.train(model, X, y, epochs=60, batch_size=32, lr=3e-3, optimizer="adam", loss="squared_error")
    pred = model.predict(X)
    assert pred.shape == (2000, 2)
    r2 = 1 - ((pred - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    assert r2.min() > 0.95, r2
    assert history.loss[-1] < history.loss[0] / 10
    with pytest.raises(ValueError, match="predicts values, not probabilities"):
        model.predict_proba(X)


def test_multilabel_and_binary_outputs_predict_each_label_from_its_own_probability():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 4))
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 3] < 0.5]).astype(int)
    model = fastmlp.MLP(4, 32, 3, activation="relu", loss="bce", seed=0)
    history = fastmlp.train(model, X, Y, epochs=30, batch_size=32, lr=3e-3, optimizer="adam", loss="bce")
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba, 1 / (1 + np.exp(-model.logits(X).astype(np.float64))), rtol=1e-5)
    pred = model.predict(X)
    np.testing.assert_array_equal(pred, (proba > 0.5).astype(int))
    subset_accuracy = (pred == Y).all(axis=1).mean()
    assert subset_accuracy > 0.95
    np.testing.assert_allclose(history.accuracy[-1], subset_accuracy, atol=0.03)  # running vs final figure
    binary = fastmlp.MLP(4, 16, 1, activation="relu", loss="bce", seed=0)
    fastmlp.train(binary, X, Y[:, 0], epochs=20, batch_size=32, lr=3e-3, optimizer="adam", loss="bce")
    assert binary.predict(X).shape == (3000, 1) and (binary.predict(X)[:, 0] == Y[:, 0]).mean() > 0.97


def test_poisson_regression_fits_the_mean_of_counts():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(4000, 3))
    mean = np.exp(0.5 * X[:, 0] - 0.3 * X[:, 1])
    y = rng.poisson(mean)
    model = fastmlp.MLP(3, 16, 1, activation="tanh", loss="poisson", dtype=np.float64, seed=0)
    fastmlp.train(model, X, y, epochs=40, lr=1e-3, optimizer="lbfgs", loss="poisson")
    pred = model.predict(X)[:, 0]
    assert (pred > 0).all()
    assert np.abs(np.log(pred) - np.log(mean)).mean() < 0.1
    loss, accuracy = fastmlp.evaluate(model, X, y, loss="poisson")
    rows = ref.row_losses(ref.forward(model.params, X, "tanh", "poisson"), y, "poisson")[0]
    assert np.isclose(loss, rows.mean()) and np.isnan(accuracy)


@pytest.mark.parametrize(
    "loss, y, match",
    [
        ("squared_error", lambda y: np.where(np.arange(y.size).reshape(y.shape) == 5, np.nan, y), "finite"),
        ("squared_error", lambda y: y[:, :2], "3 columns"),
        ("squared_error", lambda y: y[:-1], "rows but X has"),
        ("bce", lambda y: y + 0.5, "indicator targets of 0 and 1"),
        ("bce", lambda y: y.astype(str), "real target values"),
        ("poisson", lambda y: y - 2, "non-negative"),
        ("squared_error", lambda y: np.full(y.shape, 1e300), "finite"),  # beyond float32
    ],
)
def test_bad_targets_are_named_before_any_work(loss, y, match):
    X, good = _problem(loss, dtype=np.float64)
    model = fastmlp.MLP(7, 8, 3, loss=loss, seed=0)
    before = model.params["Wh"].copy()
    with pytest.raises((ValueError, TypeError), match=match):
        fastmlp.train(model, X, y(good), epochs=1, loss=loss)
    np.testing.assert_array_equal(model.params["Wh"], before)


def test_what_does_not_fit_the_loss_is_refused_before_any_work():
    X, y = _problem("bce")
    with pytest.raises(ValueError, match="class_weight weighs class labels"):
        fastmlp.train(fastmlp.MLP(7, 8, 3), X, y, loss="bce", class_weight="balanced")
    with pytest.raises(ValueError, match="n_out must be at least 2"):
        fastmlp.MLP(7, 8, 1)
    one = fastmlp.MLP(7, 8, 1, loss="squared_error")
    with pytest.raises(ValueError, match="n_out must be at least 2 .classes. for loss 'ce'"):
        fastmlp.train(one, X, y[:, 0], loss="ce")
    assert one.loss == "squared_error"
    with pytest.raises(ValueError, match=r"validation_data\[1\] must hold indicator targets"):
        fastmlp.train(fastmlp.MLP(7, 8, 3), X, y, loss="bce", validation_data=(X, y + 2))


@pytest.mark.parametrize("loss", VALUE_LOSSES)
def test_a_model_of_each_loss_round_trips_through_files_and_pickle(tmp_path, loss):
    X, y = _problem(loss, n_out=1)
    model = fastmlp.MLP(7, (6, 5), 1, activation="relu", loss=loss, seed=0)
    fastmlp.train(model, X, y, epochs=2, lr=0.01, loss=loss)
    model.save(tmp_path / "m.npz")
    for other in (fastmlp.MLP.load(tmp_path / "m.npz"), pickle.loads(pickle.dumps(model))):
        assert other.loss == loss and other.n_out == 1
        np.testing.assert_array_equal(other.predict(X), model.predict(X))
