"""A drop-in for scikit-learn's ``MLPClassifier`` (needs the optional extra: ``pip
install fastmlp[sklearn]``).

    from fastmlp.sklearn import MLPClassifier       # instead of sklearn.neural_network
    clf = MLPClassifier(hidden_layer_sizes=(100,), max_iter=20)
    clf.fit(X, y).score(X_test, y_test)

The parameters are scikit-learn's, with their meanings and defaults (relu, Adam
with learning rate 0.001, batches of ``min(200, n_samples)``), and the update
rules follow scikit-learn's code (its initialisation, its Adam step, momentum and
Nesterov momentum for "sgd", the L2 term ``alpha``, the "constant",
"invscaling" and "adaptive" learning rates, the stopping rules), so the same
settings give the same kind of training; every activation ("identity",
"logistic", "tanh", "relu") has scikit-learn's meaning. ``hidden_layer_sizes``
takes any number of hidden layers. The solvers are "adam", "sgd" and "lbfgs"
(scipy's L-BFGS-B over the compiled kernels' full-batch gradient). Where it
differs: the output
is a softmax over every class (scikit-learn uses one logistic unit for two
classes); float32 (``dtype``) and the compiled kernels' order of operations
change the last bits; the loss curve adds the L2 term at the epoch's end weights.
Beyond scikit-learn: ``class_weight``, ``loss``, ``dtype``, ``backend`` and
``n_threads``. It passes scikit-learn's estimator checks and works in
``Pipeline`` and ``GridSearchCV``, with dense or sparse inputs.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._available_if import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data

from . import tables
from ._typing import Inputs
from ._validation import check_nonnegative_float, check_positive_int, check_X
from .model import MLP
from .train import _evaluate, _Training

__all__ = [
    "MLPClassifier",
]


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """Multilayer perceptron with a softmax output, trained by Adam or mini-batch SGD.

    Parameters
    ----------
    hidden_layer_sizes : int or tuple of int, default (100,)
        The width of each hidden layer: ``(256, 128)`` is two hidden layers.
    activation : {"identity", "logistic", "tanh", "relu"}, default "relu"
        The hidden activation, as scikit-learn's ("logistic" is the sigmoid).
    solver : {"adam", "sgd", "lbfgs"}, default "adam"
        "adam": scikit-learn's Adam (``beta_1``, ``beta_2``, ``epsilon``, eps added to
        sqrt(v) before the bias correction), its moments and step count kept
        through ``partial_fit`` calls and reset by ``fit``; the learning rate stays
        ``learning_rate_init``. "sgd": with ``momentum``, ``nesterovs_momentum`` and
        the ``learning_rate`` schedules. "lbfgs": scipy's L-BFGS-B on the whole
        training set with ``max_iter``, ``max_fun`` and ``tol``, as scikit-learn's
        (no ``partial_fit``, no batches, no early stopping).
    alpha : float, default 1e-4
        Strength of the L2 term: each step adds ``alpha * W / (sum of the batch's
        sample weights)`` to the gradients of the weights, as scikit-learn does.
    batch_size : int or "auto", default "auto"
        "auto" is ``min(200, n_samples)``; larger values are clipped.
    learning_rate : {"constant", "invscaling", "adaptive"}, default "constant"
        For "sgd" only. "invscaling": ``learning_rate_init / (t + 1) ** power_t`` with ``t`` the samples
        seen; "adaptive": divided by 5 each time ``n_iter_no_change`` epochs fail to
        improve by ``tol`` (stops below 1e-6).
    learning_rate_init : float, default 0.001
    power_t : float, default 0.5
    max_iter : int, default 200
        Epochs ("lbfgs": iterations).
    shuffle : bool, default True
    random_state : int, RandomState or None
        Seeds the initialisation, the shuffling and the early-stopping split.
    tol : float, default 1e-4
    verbose : bool, default False
        Print the loss (and the validation score) after each epoch.
    warm_start : bool, default False
        Continue from the previous fit's weights.
    momentum : float, default 0.9
        For "sgd" only.
    nesterovs_momentum : bool, default True
        For "sgd" only.
    early_stopping : bool, default False
        Hold out ``validation_fraction`` (stratified) and stop when its accuracy has
        not improved by ``tol`` for ``n_iter_no_change`` epochs; keep the best epoch.
    validation_fraction : float, default 0.1
    beta_1, beta_2 : float, default 0.9, 0.999
        Adam's decay rates of the first and second moments, in [0, 1).
    epsilon : float, default 1e-8
        Adam's term for numerical stability, > 0.
    n_iter_no_change : int or np.inf, default 10
    max_fun : int, default 15000
        "lbfgs": the most loss-and-gradient evaluations.
    class_weight : dict, "balanced" or None
        Weights per class, multiplied into ``sample_weight``.
    loss : {"ce", "mse"}, default "ce"
    dtype : {"float64", "float32"}, default "float64"
    backend : {"auto", "numpy", "cython", "numba"}, default "auto"
    n_threads : int or None
        Threads of the compiled kernels (None: the cores available).

    Attributes
    ----------
    classes_, n_features_in_, model_ (fastmlp.MLP), coefs_, intercepts_, n_iter_,
    t_, loss_, loss_curve_, best_loss_, validation_scores_, best_validation_score_,
    n_layers_, n_outputs_, out_activation_
        As scikit-learn's ``MLPClassifier``; ``model_`` is the trained network.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from fastmlp.sklearn import MLPClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = MLPClassifier(hidden_layer_sizes=(50,), max_iter=30,
    ...                     random_state=0).fit(X[:1500] / 16, y[:1500])
    >>> clf.score(X[1500:] / 16, y[1500:]) > 0.85
    True
    """

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        class_weight=None,
        loss="ce",
        dtype="float64",
        backend="auto",
        n_threads=None,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.class_weight = class_weight
        self.loss = loss
        self.dtype = dtype
        self.backend = backend
        self.n_threads = n_threads

    # ---- parameters ----

    def _check_params(self):
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, numbers.Integral) else list(sizes)
        if not sizes:
            raise ValueError(f"hidden_layer_sizes must name at least one hidden layer, got {self.hidden_layer_sizes!r}")
        n_hidden = tuple(check_positive_int(n, f"hidden_layer_sizes[{k}]") for k, n in enumerate(sizes))
        if self.activation not in tables.ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(tables.ACTIVATIONS)}, got {self.activation!r}")
        if self.solver not in ("adam", "sgd", "lbfgs"):
            raise ValueError(f'solver must be "adam", "sgd" or "lbfgs", got {self.solver!r}')
        for name in ("beta_1", "beta_2"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not isinstance(self.epsilon, numbers.Real) or not self.epsilon > 0:
            raise ValueError(f"epsilon must be a positive number, got {self.epsilon!r}")
        if self.learning_rate not in ("constant", "invscaling", "adaptive"):
            raise ValueError(
                f'learning_rate must be "constant", "invscaling" or "adaptive", got {self.learning_rate!r}'
            )
        for name in ("alpha", "tol", "power_t"):
            check_nonnegative_float(getattr(self, name), name)
        if not isinstance(self.learning_rate_init, numbers.Real) or not self.learning_rate_init > 0:
            raise ValueError(f"learning_rate_init must be a positive number, got {self.learning_rate_init!r}")
        for name in ("max_iter", "max_fun"):
            check_positive_int(getattr(self, name), name)
        if self.n_iter_no_change != np.inf:  # scikit-learn's way to never stop on a plateau
            check_positive_int(self.n_iter_no_change, "n_iter_no_change")
        if not isinstance(self.momentum, numbers.Real) or not 0 <= self.momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum!r}")
        if not isinstance(self.validation_fraction, numbers.Real) or not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        if self.batch_size != "auto" and (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, numbers.Integral)
            or self.batch_size < 1
        ):
            raise ValueError(f'batch_size must be a positive integer or "auto", got {self.batch_size!r}')
        return n_hidden

    # ---- fitting ----

    def _validate(self, X, y, reset):
        X, y = validate_data(
            self, X, y, reset=reset, dtype=[np.float64, np.float32], accept_sparse=["csr", "csc", "coo"]
        )
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

    def _class_weight(self):
        """class_weight keyed by position in classes_ (train() takes class indices)."""
        if self.class_weight is None or isinstance(self.class_weight, str):
            return self.class_weight
        if not isinstance(self.class_weight, dict):
            raise TypeError(
                f'class_weight must be a dict {{class: weight}}, "balanced" or None, got {self.class_weight!r}'
            )
        unknown = [c for c in self.class_weight if c not in set(self.classes_.tolist())]
        if unknown:
            raise ValueError(
                f"class_weight names unknown classes {unknown[:10]}; the classes are {self.classes_.tolist()[:10]}"
            )
        return {int(np.searchsorted(self.classes_, c)): w for c, w in self.class_weight.items()}

    def _initialise(self, n_features, n_hidden, rng):
        """scikit-learn's initialisation, drawn from the same RandomState in the same
        order: per layer, weights then biases ~ U(-b, b), b = sqrt(6 / (fan_in +
        fan_out)), sqrt(2 / ...) for logistic units."""
        if len(self.classes_) < 2:
            raise ValueError(f"MLPClassifier needs samples of at least 2 classes; got 1 class: {self.classes_}")
        n_out = len(self.classes_)
        self.model_ = MLP(n_features, n_hidden, n_out, dtype=self.dtype, activation=self.activation)
        factor = 2.0 if self.activation == "logistic" else 6.0
        sizes = self.model_.network.sizes
        for W, b, fan_in, fan_out in zip(self.model_.coefs, self.model_.intercepts, sizes[:-1], sizes[1:], strict=True):
            bound = np.sqrt(factor / (fan_in + fan_out))
            W[...] = rng.uniform(-bound, bound, (fan_in, fan_out)).T
            b[...] = rng.uniform(-bound, bound, fan_out)
        self.loss_curve_ = []
        self.validation_scores_ = []
        self.best_loss_ = np.inf
        self.best_validation_score_ = -np.inf
        self.n_iter_ = 0
        self.t_ = 0
        self._reset_optimizer()
        self._no_improvement_count = 0
        self._best = None

    def _reset_optimizer(self):
        """A new optimizer, as scikit-learn makes for each ``fit`` (and the first
        ``partial_fit``): zero velocities or moments, no steps, the initial rate."""
        self._velocity = self._second_moment = None
        self._steps = 0
        self._learning_rate = float(self.learning_rate_init)

    def fit(self, X: Inputs, y: npt.ArrayLike, sample_weight: npt.ArrayLike | None = None) -> MLPClassifier:
        """Train for up to ``max_iter`` epochs (from scratch unless ``warm_start``)."""
        n_hidden = self._check_params()
        X, y = self._validate(X, y, reset=True)
        sample_weight = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        rng = check_random_state(self.random_state)
        if not (
            self.warm_start
            and hasattr(self, "model_")
            and np.array_equal(np.unique(y), self.classes_)
            and self.model_.hidden == n_hidden
            and self.model_.activation == self.activation
        ):
            self.classes_ = np.unique(y)
            self._initialise(X.shape[1], n_hidden, rng)
        else:
            self._reset_optimizer()
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, self._encode(y), sample_weight)
        else:
            self._fit_stochastic(X, self._encode(y), sample_weight, rng, self.max_iter, self.early_stopping)
        return self

    def _stochastic(self):
        if self.solver == "lbfgs":
            raise AttributeError(
                f"partial_fit is only available for stochastic optimizers. {self.solver} is not stochastic."
            )
        return True

    def _fit_lbfgs(self, X, labels, sample_weight):
        """scikit-learn's solver="lbfgs": L-BFGS-B on the mean loss plus ``alpha / 2 *
        sum W**2 / n``, its gradient from the kernels; ``loss_`` is that objective at
        the end, ``n_iter_`` the iterations."""
        training = _Training(
            self.model_,
            X,
            labels,
            lr=float(self.learning_rate_init),
            loss=self.loss,
            backend=self.backend,
            n_threads=self.n_threads,
            weight_decay=self.alpha,
            sample_weight=sample_weight,
            class_weight=self._class_weight(),
            decay_by_weight_sum=True,
            optimizer="lbfgs",
        )

        def report(fun):
            if self.verbose:
                print(f"Iteration {training.epoch}, loss = {fun:.8f}")

        with training:
            result = training.run_lbfgs(self.max_iter, self.max_fun, self.tol, report)
        self.n_iter_ = int(result.nit)
        self.loss_ = float(result.fun)
        if result.status != 0:
            warnings.warn(
                f"lbfgs failed to converge after {self.n_iter_} iteration(s) (status={result.status}): "
                f"{result.message}. Increase the number of iterations (max_iter) or scale the data.",
                ConvergenceWarning,
                stacklevel=3,
            )

    @available_if(_stochastic)
    def partial_fit(
        self,
        X: Inputs,
        y: npt.ArrayLike,
        sample_weight: npt.ArrayLike | None = None,
        classes: npt.ArrayLike | None = None,
    ) -> MLPClassifier:
        """One epoch over (X, y), continuing from the current parameters and optimizer
        state. ``classes`` (all labels that will ever be seen) is required first."""
        n_hidden = self._check_params()
        first = not hasattr(self, "classes_")
        X, y = self._validate(X, y, reset=first)
        sample_weight = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        rng = check_random_state(self.random_state)
        if first:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            self.classes_ = np.unique(np.asarray(classes))
            self._initialise(X.shape[1], n_hidden, rng)
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes={classes!r} differs from the classes of the first call {self.classes_}")
        self._fit_stochastic(X, self._encode(y), sample_weight, rng, 1, False, incremental=True)
        return self

    def _fit_stochastic(self, X, labels, sample_weight, rng, max_iter, early_stopping, incremental=False):
        """Up to ``max_iter`` epochs; ``n_iter_`` counts this call's, as scikit-learn's
        does (``t_`` and ``loss_curve_`` go on through warm starts and ``partial_fit``)."""
        if early_stopping:
            parts = train_test_split(
                X,
                labels,
                *([] if sample_weight is None else [sample_weight]),
                random_state=rng,
                test_size=self.validation_fraction,
                stratify=labels,
            )
            X, X_val, labels, y_val = parts[:4]
            sample_weight, w_val = (parts[4], parts[5]) if sample_weight is not None else (None, None)
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' or the size of your dataset."
                )
        n = X.shape[0]
        batch = min(200, n) if self.batch_size == "auto" else int(np.clip(self.batch_size, 1, n))
        adam = self.solver == "adam"
        order = np.arange(n)

        def permutations():
            # scikit-learn's shuffle: each epoch's order a shuffle of the last one's,
            # drawn from the same RandomState
            nonlocal order
            if self.shuffle:
                indices = np.arange(n)
                rng.shuffle(indices)
                order = order[indices]
            return order

        training = _Training(
            self.model_,
            X,
            labels,
            batch_size=batch,
            lr=self._learning_rate,
            loss=self.loss,
            backend=self.backend,
            shuffle=bool(self.shuffle),
            permutations=permutations,
            n_threads=self.n_threads,
            momentum=0.0 if adam else float(self.momentum),
            nesterov=not adam and bool(self.nesterovs_momentum) and self.momentum > 0,
            weight_decay=self.alpha,
            sample_weight=sample_weight,
            class_weight=self._class_weight(),
            decay_by_weight_sum=True,
            optimizer=self.solver,
            beta1=float(self.beta_1),
            beta2=float(self.beta_2),
            eps=float(self.epsilon),
            sklearn_eps=True,
        )
        # the optimizer's state from the last partial_fit call
        for saved, state in ((self._velocity, training.velocity), (self._second_moment, training.second_moment)):
            if saved is not None and state is not None:
                for k, v in state.items():
                    v[...] = saved[k]
        training.steps = self._steps
        n_batches = -(-n // batch)
        self.n_iter_ = 0
        with training:
            for _ in range(max_iter):
                history = training.run_epoch(self._learning_rate)
                self.n_iter_ += 1
                self.t_ += n
                l2 = 0.5 * self.alpha * sum(float(np.sum(W * W)) for W in self.model_.coefs) * n_batches / n
                self.loss_ = history.loss[-1] + l2
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                self._update_no_improvement_count(
                    early_stopping,
                    X_val if early_stopping else None,
                    y_val if early_stopping else None,
                    w_val if early_stopping else None,
                )
                old = self._learning_rate
                if self.learning_rate == "invscaling" and not adam:
                    self._learning_rate = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t
                stop = False
                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping or adam or self.learning_rate != "adaptive" or self._learning_rate <= 1e-6:
                        stop = True
                    else:
                        self._learning_rate /= 5.0
                        self._no_improvement_count = 0
                        if self.verbose:
                            print(f"Setting learning rate to {self._learning_rate:f}")
                if self._learning_rate != old:
                    # scikit-learn's velocity holds lr * v: keep it, as its steps do
                    training.scale_velocity(old / self._learning_rate)
                if stop:
                    break
                if not incremental and self.n_iter_ == max_iter:
                    warnings.warn(
                        f"Stochastic Optimizer: Maximum iterations ({max_iter}) reached and the optimization "
                        "hasn't converged yet.",
                        ConvergenceWarning,
                        stacklevel=3,
                    )
        self._velocity = {k: v.copy() for k, v in training.velocity.items()} if training.velocity is not None else None
        second = training.second_moment
        self._second_moment = {k: v.copy() for k, v in second.items()} if second is not None else None
        self._steps = training.steps
        if early_stopping and self._best is not None:
            for k, v in self._best.items():
                self.model_.params[k][...] = v

    def _update_no_improvement_count(self, early_stopping, X_val, y_val, w_val):
        if early_stopping:
            score = _evaluate(
                self.model_,
                check_X(X_val, "X", self.model_.n_in, self.model_.dtype),
                y_val,
                self.loss,
                None if w_val is None else np.asarray(w_val, np.float64),
            )[1]
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best = {k: v.copy() for k, v in self.model_.params.items()}
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    # ---- fitted attributes in scikit-learn's shapes ----

    @property
    def coefs_(self) -> list[np.ndarray]:
        """Each layer's weights (fan_in, fan_out), as scikit-learn's: ``[Wh.T, Wy.T]``
        for one hidden layer."""
        check_is_fitted(self)
        return [W.T for W in self.model_.coefs]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """Each layer's biases (fan_out,), as scikit-learn's: ``[bh, by]`` for one hidden layer."""
        check_is_fitted(self)
        return self.model_.intercepts

    @property
    def n_layers_(self) -> int:
        """Layers counted as scikit-learn counts them: input, each hidden layer, output."""
        check_is_fitted(self)
        return len(self.model_.network.sizes)

    out_activation_ = property(lambda self: "softmax")

    @property
    def n_outputs_(self) -> int:
        """Number of outputs: one per class."""
        check_is_fitted(self)
        return len(self.classes_)

    # ---- prediction ----

    def predict_proba(self, X: Inputs) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32], accept_sparse=["csr", "csc", "coo"])
        return self.model_.predict_proba(X)

    def predict(self, X: Inputs) -> np.ndarray:
        """The most probable class of each sample."""
        check_is_fitted(self)
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = True
        return tags
