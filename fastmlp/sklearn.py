"""A scikit-learn classifier around fastmlp (needs the optional extra: ``pip install fastmlp[sklearn]``).

    from fastmlp.sklearn import MLPClassifier
    clf = MLPClassifier(n_hidden=100, learning_rate=0.1, batch_size=32, max_iter=50)
    clf.fit(X, y).score(X_test, y_test)

It passes scikit-learn's estimator checks and works in ``Pipeline`` and
``GridSearchCV``. Labels may be of any kind scikit-learn accepts (strings too).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from .model import MLP
from .train import evaluate, train


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """One-hidden-layer tanh network with a softmax output, trained by mini-batch SGD.

    Parameters
    ----------
    n_hidden : int, default 100
        Hidden units.
    learning_rate : float, default 0.1
    batch_size : int, default 32
        Clipped to the number of training samples.
    max_iter : int, default 200
        Epochs (passes over the training data).
    loss : {"ce", "mse"}, default "ce"
    init : {"xavier", "normal"}, default "xavier"
    dtype : {"float32", "float64"}, default "float64"
    backend : {"auto", "numpy", "cython", "numba"}, default "auto"
    shuffle : bool, default True
    random_state : int, RandomState or None
        Seeds the initialisation and the shuffling.
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the training data and stop when its loss
        has not improved by ``tol`` for ``n_iter_no_change`` epochs; the parameters of
        the best epoch are kept.
    validation_fraction : float, default 0.1
    n_iter_no_change : int, default 10
    tol : float, default 1e-4

    Attributes
    ----------
    classes_ : array of shape (n_classes,)
    model_ : fastmlp.MLP
    n_iter_ : int
        Epochs run.
    loss_curve_ : list of float
        Training loss per epoch.
    validation_scores_ : list of float
        With early stopping, the held-out accuracy per epoch.
    n_features_in_ : int
    """

    def __init__(self, n_hidden=100, learning_rate=0.1, batch_size=32, max_iter=200, loss="ce", init="xavier",
                 dtype="float64", backend="auto", shuffle=True, random_state=None, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=1e-4):
        self.n_hidden = n_hidden
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.loss = loss
        self.init = init
        self.dtype = dtype
        self.backend = backend
        self.shuffle = shuffle
        self.random_state = random_state
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol

    # ---- fitting ----

    def _validate(self, X, y, reset):
        X, y = validate_data(self, X, y, reset=reset, dtype=[np.float64, np.float32])
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        return X, y

    def _encode(self, y):
        index = np.searchsorted(self.classes_, y)
        index = np.minimum(index, len(self.classes_) - 1)
        unknown = self.classes_[index] != y
        if unknown.any():
            raise ValueError(f"y contains labels not seen in classes: {np.unique(y[unknown])[:10]}")
        return index

    def _new_model(self, n_features, rng):
        if len(self.classes_) < 2:
            raise ValueError(f"MLPClassifier needs samples of at least 2 classes; got 1 class: {self.classes_}")
        self.model_ = MLP(n_features, self.n_hidden, len(self.classes_), dtype=self.dtype, init=self.init,
                          seed=int(rng.randint(2 ** 31 - 1)))
        self.loss_curve_ = []
        self.validation_scores_ = []
        self.n_iter_ = 0

    def _epochs(self, X, y, epochs, rng):
        batch = max(1, min(self.batch_size, X.shape[0]))
        hist = train(self.model_, X, y, epochs=epochs, batch_size=batch, lr=self.learning_rate, loss=self.loss,
                     backend=self.backend, shuffle=self.shuffle, seed=int(rng.randint(2 ** 31 - 1)))
        self.loss_curve_.extend(hist.loss)
        self.n_iter_ += hist.epochs

    def fit(self, X, y):
        """Train from scratch for ``max_iter`` epochs (fewer with early stopping)."""
        X, y = self._validate(X, y, reset=True)
        self.classes_ = np.unique(y)
        rng = check_random_state(self.random_state)
        self._new_model(X.shape[1], rng)
        labels = self._encode(y)
        if not self.early_stopping:
            self._epochs(X, labels, self.max_iter, rng)
            return self
        order = rng.permutation(X.shape[0])
        n_val = max(1, int(round(self.validation_fraction * X.shape[0])))
        if n_val >= X.shape[0]:
            raise ValueError(f"validation_fraction={self.validation_fraction} leaves no training samples")
        val, tr = order[:n_val], order[n_val:]
        best, best_params, stale = np.inf, None, 0
        for _ in range(self.max_iter):
            self._epochs(X[tr], labels[tr], 1, rng)
            val_loss, val_acc = evaluate(self.model_, X[val], labels[val], self.loss)
            self.validation_scores_.append(val_acc)
            if val_loss < best - self.tol:
                best, best_params, stale = val_loss, self.model_.copy(), 0
            else:
                stale += 1
                if stale >= self.n_iter_no_change:
                    break
        if best_params is not None:
            self.model_ = best_params
        return self

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y), continuing from the current parameters.

        ``classes`` (all labels that will ever be seen) is required on the first call.
        """
        first = not hasattr(self, "classes_")
        X, y = self._validate(X, y, reset=first)
        rng = check_random_state(self.random_state)
        if first:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            self.classes_ = np.unique(np.asarray(classes))
            self._new_model(X.shape[1], rng)
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes={classes!r} differs from the classes of the first call {self.classes_}")
        self._epochs(X, self._encode(y), 1, rng)
        return self

    # ---- prediction ----

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self.model_.predict_proba(X)

    def predict(self, X):
        """The most probable class of each sample."""
        check_is_fitted(self)
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        tags.input_tags.allow_nan = False
        return tags
