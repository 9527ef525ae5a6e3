"""fastmlp.sklearn.MLPClassifier and MLPRegressor: scikit-learn's own estimator checks,
its outputs (two classes, multilabel, regression, Poisson) against scikit-learn's,
Pipeline, GridSearchCV."""

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastmlp  # noqa: E402
from fastmlp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# Checks expected to fail, with the reason (none so far).
EXPECTED_FAILED_CHECKS = {}


@parametrize_with_checks(
    [MLPClassifier(max_iter=100, random_state=0), MLPRegressor(max_iter=100, random_state=0)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
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
    assert [c.shape for c in clf.coefs_] == [(2, 10), (10, 1)] and clf.t_ == 60 * 600  # one logistic unit


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


def _both(cls, X, y, **params):
    """The same estimator fitted by fastmlp and by scikit-learn (float64, same seed)."""
    import warnings

    from sklearn import neural_network

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        ours = cls(random_state=0, **params).fit(X, y)
        theirs = getattr(neural_network, cls.__name__)(random_state=0, **params).fit(X, y)
    return ours, theirs


def _same_fit(ours, theirs, rtol):
    assert ours.n_outputs_ == theirs.n_outputs_ and ours.out_activation_ == theirs.out_activation_
    assert [c.shape for c in ours.coefs_] == [c.shape for c in theirs.coefs_]
    if hasattr(theirs, "loss_curve_"):  # the stochastic solvers
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol)
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=rtol)
    for a, b in zip(ours.coefs_, theirs.coefs_, strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


def test_two_classes_take_one_logistic_unit_as_scikit_learns():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    y = np.where(y > 4, "high", "low")
    ours, theirs = _both(MLPClassifier, X / 16, y, hidden_layer_sizes=(30,), max_iter=20)
    _same_fit(ours, theirs, 1e-6)
    assert ours.n_outputs_ == 1 and ours.out_activation_ == "logistic"
    np.testing.assert_allclose(ours.predict_proba(X / 16), theirs.predict_proba(X / 16), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(ours.predict(X / 16), theirs.predict(X / 16))


def test_multilabel_targets_take_one_logistic_unit_per_label_as_scikit_learns():
    from sklearn.datasets import make_multilabel_classification

    X, Y = make_multilabel_classification(300, 12, n_classes=4, random_state=0)
    ours, theirs = _both(MLPClassifier, X, Y, hidden_layer_sizes=(20, 10), max_iter=30)
    _same_fit(ours, theirs, 1e-6)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-6, atol=1e-9)
    assert ours.score(X, Y) == theirs.score(X, Y)  # subset accuracy
    with pytest.raises(ValueError, match="multilabel target"):
        MLPClassifier(class_weight="balanced", max_iter=2).fit(X, Y)
    ours.partial_fit(X, Y)  # later calls of a multilabel target need no classes


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_the_regressor_takes_scikit_learns_steps_for_one_and_several_targets(solver):
    from sklearn.datasets import make_regression

    X, y = make_regression(200, 6, n_targets=2, noise=1.0, random_state=0)
    y = y / y.std(axis=0)
    settings = dict(hidden_layer_sizes=(16,), max_iter=15, learning_rate_init=0.01, solver=solver)
    for target in (y, y[:, 0]):
        ours, theirs = _both(MLPRegressor, X, target, **settings)
        if solver == "lbfgs" and target.ndim == 2:
            # scikit-learn's lbfgs takes a gradient of sum, a loss of mean over targets
            assert ours.score(X, target) > 0.9 and ours.n_outputs_ == 2
            continue
        _same_fit(ours, theirs, 1e-5)
        assert ours.predict(X).shape == theirs.predict(X).shape
        np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-5, atol=1e-6)


def test_poisson_regression_as_scikit_learns_and_its_targets_checked():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = rng.poisson(np.exp(0.5 * X[:, 0]))
    ours, theirs = _both(MLPRegressor, X, y, loss="poisson", hidden_layer_sizes=(10,), max_iter=20)
    _same_fit(ours, theirs, 1e-6)
    assert ours.out_activation_ == "exp" and (ours.predict(X) > 0).all()
    with pytest.raises(ValueError, match="non-negative"):
        MLPRegressor(loss="poisson", max_iter=2).fit(X, y - 3.0)
    with pytest.raises(ValueError, match="loss must be one of"):
        MLPRegressor(loss="huber").fit(X, y)


def test_the_regressor_early_stopping_scores_r2_and_partial_fit_goes_on():
    from sklearn.datasets import make_regression

    X, y = make_regression(400, 5, noise=0.5, random_state=1)
    reg = MLPRegressor(
        hidden_layer_sizes=(20,), early_stopping=True, max_iter=400, learning_rate_init=0.01, random_state=0
    ).fit(X, y / y.std())
    assert len(reg.validation_scores_) == reg.n_iter_ < 400
    assert reg.best_validation_score_ == max(reg.validation_scores_) > 0.9
    part = MLPRegressor(hidden_layer_sizes=(20,), learning_rate_init=0.01, random_state=0)
    for _ in range(50):
        part.partial_fit(X, y / y.std())
    assert part.t_ == 50 * len(X) and part.score(X, y / y.std()) > 0.9
    with pytest.raises(ValueError, match="targets; the fitted network has 1"):
        part.partial_fit(X, np.column_stack([y, y]))


def test_class_weight_of_two_classes_weighs_their_samples():
    X, y = _circles()
    weighted = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, class_weight={"inner": 3.0}, random_state=0)
    by_sample = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        weighted.fit(X, y)
        by_sample.fit(X, y, sample_weight=np.where(y == "inner", 3.0, 1.0))
    for a, b in zip(weighted.coefs_, by_sample.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)
