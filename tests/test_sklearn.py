"""fastmlp.sklearn.MLPClassifier: scikit-learn's own estimator checks, Pipeline, GridSearchCV."""

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastmlp  # noqa: E402
from fastmlp.sklearn import MLPClassifier  # noqa: E402

# Checks expected to fail, with the reason (none so far).
EXPECTED_FAILED_CHECKS = {}


@parametrize_with_checks(
    [MLPClassifier(max_iter=100, random_state=0)], expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _circles():
    X, y = fastmlp.datasets.circles(600, noise=0.05, seed=0)
    return X, np.array(["inner", "outer"])[1 - y]


def test_string_labels_and_fitted_attributes():
    X, y = _circles()
    clf = MLPClassifier(
        hidden_layer_sizes=10, max_iter=60, batch_size=10, learning_rate_init=0.01, n_iter_no_change=100, random_state=0
    ).fit(X, y)
    assert list(clf.classes_) == ["inner", "outer"]
    assert clf.n_iter_ == 60 and len(clf.loss_curve_) == 60 and clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.score(X, y) > 0.95
    assert set(clf.predict(X[:20])) <= {"inner", "outer"}
    P = clf.predict_proba(X)
    np.testing.assert_allclose(P.sum(axis=1), 1)
    assert clf.get_params()["hidden_layer_sizes"] == 10
    assert clf.set_params(hidden_layer_sizes=(4,)).hidden_layer_sizes == (4,)
    assert [c.shape for c in clf.coefs_] == [(2, 10), (10, 2)] and clf.t_ == 60 * 600


def test_partial_fit_continues_training():
    X, y = _circles()
    clf = MLPClassifier(hidden_layer_sizes=(10,), batch_size=10, learning_rate_init=0.01, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    clf.partial_fit(X, y, classes=["inner", "outer"])
    first = clf.model_.Wh.copy()
    for _ in range(30):
        clf.partial_fit(X, y)
    # n_iter_ counts the call's epochs, t_ every sample seen, as scikit-learn's do
    assert clf.n_iter_ == 1 and clf.t_ == 31 * len(X) and not np.array_equal(first, clf.model_.Wh)
    assert clf.score(X, y) > 0.9


def test_early_stopping_keeps_the_best_epoch():
    X, y = _circles()
    clf = MLPClassifier(
        hidden_layer_sizes=(10,),
        batch_size=10,
        max_iter=500,
        early_stopping=True,
        n_iter_no_change=5,
        learning_rate_init=0.03,
        random_state=0,
    ).fit(X, y)
    assert clf.n_iter_ < 500 and len(clf.validation_scores_) == clf.n_iter_
    assert clf.score(X, y) > 0.95


def test_pipeline_and_grid_search():
    X, y = _circles()
    pipe = make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(8,), max_iter=40, batch_size=10, random_state=0)
    )
    search = GridSearchCV(pipe, {"mlpclassifier__learning_rate_init": [1e-5, 0.03]}, cv=3).fit(X, y)
    assert search.best_params_ == {"mlpclassifier__learning_rate_init": 0.03}
    assert search.score(X, y) > 0.95
