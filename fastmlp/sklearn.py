"""Drop-ins for scikit-learn's ``MLPClassifier`` and ``MLPRegressor`` (needs the
optional extra: ``pip install fastmlp[sklearn]``).

    from fastmlp.sklearn import MLPClassifier, MLPRegressor  # instead of sklearn.neural_network
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
(scipy's L-BFGS-B over the compiled kernels' full-batch gradient). The outputs are
scikit-learn's: a softmax over the classes of a multiclass target, one logistic
unit for two classes and one per label of a multilabel indicator matrix, the
identity (``loss="squared_error"``) or exp (``loss="poisson"``) for regression.
Where it differs: float32 (``dtype``) and the compiled kernels' order of
operations change the last bits; the loss curve adds the L2 term at the epoch's
end weights; with several regression targets, "lbfgs" minimises the mean over
rows of ``0.5 * sum of squared errors`` (the objective whose gradient
scikit-learn's lbfgs takes) while ``loss_`` reports scikit-learn's mean over the
targets too. Beyond scikit-learn: ``class_weight``, the classifier's ``loss``,
``dtype``, ``backend`` and ``n_threads``. Both pass scikit-learn's estimator
checks and work in ``Pipeline`` and ``GridSearchCV``, with dense or sparse inputs.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils._available_if import available_if
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data

from . import tables
from ._typing import Inputs
from ._validation import check_nonnegative_float, check_positive_int, check_X
from .model import MLP
from .train import DivergenceError, _evaluate, _Training

# scikit-learn's error for a network whose weights are no longer finite
_NON_FINITE = (
    "Solver produced non-finite parameter weights. The input data may contain large values and need to be preprocessed."
)

__all__ = [
    "MLPClassifier",
    "MLPRegressor",
]


_SHARED_PARAMETERS = """
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
        Hold out ``validation_fraction`` (stratified for class labels) and stop when
        its score (``score``) has not improved by ``tol`` for ``n_iter_no_change``
        epochs; keep the best epoch.
    validation_fraction : float, default 0.1
    beta_1, beta_2 : float, default 0.9, 0.999
        Adam's decay rates of the first and second moments, in [0, 1).
    epsilon : float, default 1e-8
        Adam's term for numerical stability, > 0.
    n_iter_no_change : int or np.inf, default 10
    max_fun : int, default 15000
        "lbfgs": the most loss-and-gradient evaluations."""

_SHARED_EXTRAS = """
    dtype : {"float64", "float32"} or None, default None
        The dtype of the parameters and the arithmetic; None: X's (float32 input
        trains in float32, anything else in float64), as scikit-learn's.
    backend : {"auto", "numpy", "cython", "numba"}, default "auto"
    n_threads : int or None
        Threads of the compiled kernels (None: the cores available)."""


class _BaseMLP(BaseEstimator):
    """What the two estimators share: scikit-learn's parameters, its initialisation,
    its solvers and stopping rules over ``fastmlp.train``'s machinery. A subclass
    says what its targets are (``_targets``), which loss trains them
    (``_train_loss``) and how a held-out set is scored (``_validation_score``)."""

    def __init__(
        self,
        hidden_layer_sizes,
        activation,
        *,
        solver,
        alpha,
        batch_size,
        learning_rate,
        learning_rate_init,
        power_t,
        max_iter,
        shuffle,
        random_state,
        tol,
        verbose,
        warm_start,
        momentum,
        nesterovs_momentum,
        early_stopping,
        validation_fraction,
        beta_1,
        beta_2,
        epsilon,
        n_iter_no_change,
        max_fun,
        loss,
        dtype,
        backend,
        n_threads,
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
        if self.loss not in self._LOSSES:
            raise ValueError(f"loss must be one of {self._LOSSES}, got {self.loss!r}")
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

    # ---- what a subclass says ----

    def _validate(self, X, y, reset):
        X, y = validate_data(
            self,
            X,
            y,
            reset=reset,
            dtype=[np.float64, np.float32],
            accept_sparse=["csr", "csc", "coo"],
            multi_output=True,
            y_numeric=not is_classifier(self),
            ensure_all_finite=False,  # fastmlp.train checks X in its conversion pass, before any step
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _class_weight(self):
        return None

    # ---- fitting ----

    def _initialise(self, n_features, n_hidden, rng):
        """scikit-learn's initialisation, drawn from the same RandomState in the same
        order: per layer, weights then biases ~ U(-b, b), b = sqrt(6 / (fan_in +
        fan_out)), sqrt(2 / ...) for logistic units."""
        loss = self._train_loss()
        self.model_ = MLP(n_features, n_hidden, self._n_out(), dtype=self._dtype, activation=self.activation, loss=loss)
        factor = 2.0 if self.activation == "logistic" else 6.0
        sizes = self.model_.network.sizes
        for W, b, fan_in, fan_out in zip(self.model_.coefs, self.model_.intercepts, sizes[:-1], sizes[1:], strict=True):
            bound = np.sqrt(factor / (fan_in + fan_out))
            W[...] = rng.uniform(-bound, bound, (fan_in, fan_out)).T
            b[...] = rng.uniform(-bound, bound, fan_out)
        self.loss_curve_ = []
        # as scikit-learn's: the figures of the stopping rule in use, None for the other
        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
        else:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = None, None, np.inf
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

    def _warm(self, n_hidden):
        """Whether ``fit`` continues from the fitted network (``warm_start``)."""
        return (
            self.warm_start
            and hasattr(self, "model_")
            and self.model_.hidden == n_hidden
            and self.model_.activation == self.activation
            and self.model_.loss == self._train_loss()
            and self.model_.n_out == self._n_out()
        )

    def _fit_dtype(self, X, warm):
        """The parameters' dtype: the fitted network's when it goes on, else ``dtype``,
        else X's where it is float32 (float64 otherwise)."""
        if warm:
            return self.model_.dtype
        if self.dtype is not None:
            return np.dtype(self.dtype)
        return np.dtype(np.float32 if X.dtype == np.float32 else np.float64)

    def fit(self, X: Inputs, y: npt.ArrayLike, sample_weight: npt.ArrayLike | None = None):
        """Train for up to ``max_iter`` epochs (from scratch unless ``warm_start``)."""
        n_hidden = self._check_params()
        X, y = self._validate(X, y, reset=True)
        sample_weight = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        rng = check_random_state(self.random_state)
        # with warm_start the classes (and so the outputs) stay those of the last fit,
        # or _targets refuses y: whether the network goes on is known before y is read
        warm = self._warm(n_hidden)
        self._dtype = self._fit_dtype(X, warm)
        targets = self._targets(y, first=not self.warm_start)
        if warm:
            self._reset_optimizer()
        else:
            self._initialise(X.shape[1], n_hidden, rng)
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, targets, sample_weight)
        else:
            self._fit_stochastic(X, targets, sample_weight, rng, self.max_iter, self.early_stopping)
        return self

    def _stochastic(self):
        if self.solver == "lbfgs":
            raise AttributeError(
                f"partial_fit is only available for stochastic optimizers. {self.solver} is not stochastic."
            )
        return True

    def _training(self, X, targets, sample_weight, **settings):
        """``fastmlp.train``'s run over the fitted network: the estimator's loss, L2
        term (scikit-learn's alpha, per sample weight), backend and threads."""
        return _Training(
            self.model_,
            X,
            targets,
            loss=self._train_loss(),
            backend=self.backend,
            n_threads=self.n_threads,
            weight_decay=self.alpha,
            sample_weight=sample_weight,
            class_weight=self._class_weight(),
            decay_by_weight_sum=True,
            **settings,
        )

    def _reported(self, data_loss, total):
        """scikit-learn's ``loss_`` from the mean data loss: its squared error is
        also a mean over the targets (the gradient is not), and the L2 term
        ``alpha / 2 * sum W**2 / total``."""
        scale = 1.0 / self.model_.n_out if self._train_loss() == "squared_error" else 1.0
        l2 = 0.5 * self.alpha * sum(float(np.sum(W * W)) for W in self.model_.coefs) / total
        return data_loss * scale + l2

    def _fit_lbfgs(self, X, targets, sample_weight):
        """scikit-learn's solver="lbfgs": L-BFGS-B on the mean loss plus ``alpha / 2 *
        sum W**2 / n``, its gradient from the kernels; ``loss_`` is that objective at
        the end, ``n_iter_`` the iterations."""
        training = self._training(X, targets, sample_weight, lr=float(self.learning_rate_init), optimizer="lbfgs")

        def report(fun):
            if self.verbose:
                print(f"Iteration {training.epoch}, loss = {fun:.8f}")

        with training:
            try:
                result = training.run_lbfgs(self.max_iter, self.max_fun, self.tol, report)
            except DivergenceError as error:
                raise ValueError(_NON_FINITE) from error
        self.n_iter_ = int(result.nit)
        total = X.shape[0] if sample_weight is None else float(np.sum(sample_weight))
        self.loss_ = self._reported(training.history.loss[-1], total) if training.history.loss else float(result.fun)
        if result.status != 0:
            warnings.warn(
                f"lbfgs failed to converge after {self.n_iter_} iteration(s) (status={result.status}): "
                f"{result.message}. Increase the number of iterations (max_iter) or scale the data.",
                ConvergenceWarning,
                stacklevel=3,
            )

    def _partial_fit(self, X, y, sample_weight, classes):
        n_hidden = self._check_params()
        if self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "model_")
        X, y = self._validate(X, y, reset=first)
        sample_weight = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        rng = check_random_state(self.random_state)
        self._dtype = self._fit_dtype(X, warm=not first)
        targets = self._targets(y, first=first, classes=classes, incremental=True)
        if first:
            self._initialise(X.shape[1], n_hidden, rng)
        self._fit_stochastic(X, targets, sample_weight, rng, 1, False, incremental=True)
        return self

    def _fit_stochastic(self, X, targets, sample_weight, rng, max_iter, early_stopping, incremental=False):
        """Up to ``max_iter`` epochs; ``n_iter_`` counts this call's, as scikit-learn's
        does (``t_`` and ``loss_curve_`` go on through warm starts and ``partial_fit``)."""
        if early_stopping:
            # as scikit-learn: stratified by class for a classifier of one output (two classes)
            one = is_classifier(self) and self.model_.n_out == 1
            stratify = targets.astype(bool) if one else None  # its (n, 1) booleans
            parts = train_test_split(
                X,
                targets,
                *([] if sample_weight is None else [sample_weight]),
                random_state=rng,
                test_size=self.validation_fraction,
                stratify=stratify,
            )
            X, X_val, targets, y_val = parts[:4]
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

        training = self._training(
            X,
            targets,
            sample_weight,
            batch_size=batch,
            lr=self._learning_rate,
            shuffle=bool(self.shuffle),
            permutations=permutations,
            momentum=0.0 if adam else float(self.momentum),
            nesterov=not adam and bool(self.nesterovs_momentum) and self.momentum > 0,
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
                try:
                    history = training.run_epoch(self._learning_rate)
                except DivergenceError as error:
                    # scikit-learn's network would go on with non-finite weights: its
                    # fit fails, or with early stopping keeps the best epoch scored
                    # before (its last validation score NaN)
                    if not early_stopping:
                        raise ValueError(_NON_FINITE) from error
                    self.validation_scores_.append(np.nan)
                    break
                self.n_iter_ += 1
                self.t_ += n
                # scikit-learn adds each batch's L2 term over its own size: n_batches / n in all
                self.loss_ = self._reported(history.loss[-1], n / n_batches)
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
            X_val = check_X(X_val, "X", self.model_.n_in, self.model_.dtype)
            score = self._validation_score(X_val, y_val, None if w_val is None else np.asarray(w_val, np.float64))
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

    @property
    def n_outputs_(self) -> int:
        """Output units, as scikit-learn's: one per class of a multiclass target, one
        for two classes, one per label or regression target."""
        check_is_fitted(self)
        return self.model_.n_out

    @property
    def out_activation_(self) -> str:
        """The output activation, scikit-learn's name: "softmax", "logistic", "identity" or "exp"."""
        check_is_fitted(self)
        return _OUT_ACTIVATIONS[self.model_.loss]

    def _outputs(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32], accept_sparse=["csr", "csc", "coo"])
        return tables.loss(self.model_.loss).output(self.model_.logits(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = True
        return tags


# scikit-learn's name of the output activation of each loss
_OUT_ACTIVATIONS = {"ce": "softmax", "mse": "softmax", "bce": "logistic", "squared_error": "identity", "poisson": "exp"}


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = (
        """Multilayer perceptron classifier, trained by Adam, mini-batch SGD or L-BFGS.

    A multiclass target gets a softmax over its classes; two classes get one
    logistic unit, and a multilabel indicator matrix one per label (each label's
    binary cross-entropy), as scikit-learn's.

    Parameters
    ----------"""
        + _SHARED_PARAMETERS
        + """
    class_weight : dict, "balanced" or None
        Weights per class, multiplied into ``sample_weight`` (not for multilabel targets).
    loss : {"ce", "mse"}, default "ce"
        "ce": scikit-learn's log loss (softmax cross-entropy, or the binary
        cross-entropy of the logistic units). "mse": squared error on a softmax
        over the classes, two classes too (not for multilabel targets)."""
        + _SHARED_EXTRAS
        + """

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
    )
    _LOSSES = ("ce", "mse")

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
        dtype=None,
        backend="auto",
        n_threads=None,
    ):
        super().__init__(
            hidden_layer_sizes,
            activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            max_fun=max_fun,
            loss=loss,
            dtype=dtype,
            backend=backend,
            n_threads=n_threads,
        )
        self.class_weight = class_weight

    # ---- targets ----

    def _targets(self, y, first, classes=None, incremental=False):
        """The classes of y (set on a first fit, else checked against ``classes_``), and
        y as the training loss takes them: class indices, or 0/1 columns."""
        check_classification_targets(y)
        multilabel = type_of_target(y) == "multilabel-indicator"
        if first or not hasattr(self, "classes_"):
            if incremental and classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            binarizer = LabelBinarizer()
            binarizer.fit(y if not incremental or multilabel else np.asarray(classes))
            if multilabel and self.loss != "ce":
                raise ValueError(f'loss={self.loss!r} models one class per sample; a multilabel target needs loss="ce"')
            self._label_binarizer = binarizer
            self.classes_ = binarizer.classes_
            unknown = np.setdiff1d(unique_labels(y), self.classes_) if incremental and not multilabel else []
            if len(unknown):
                raise ValueError(f"`y` has classes not in `classes`: {unknown[:10]}; classes={self.classes_}")
        else:
            if classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
                raise ValueError(f"classes={classes!r} differs from the classes of the first call {self.classes_}")
            seen = np.arange(y.shape[1]) if multilabel else unique_labels(y)
            if self.warm_start and not incremental:
                if set(seen.tolist()) != set(self.classes_.tolist()):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in the previous call to "
                        f"fit. Previously got {self.classes_}, `y` has {seen}"
                    )
            elif len(np.setdiff1d(seen, self.classes_)):
                raise ValueError(
                    f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. 'y' has {seen}."
                )
        if self._train_loss() == "bce":
            columns = self._label_binarizer.transform(y)
            return np.ascontiguousarray(columns, dtype=self._dtype)
        return np.searchsorted(self.classes_, y)

    def _train_loss(self):
        kind = self._label_binarizer.y_type_
        return "bce" if self.loss == "ce" and kind in ("binary", "multilabel-indicator") else self.loss

    def _n_out(self):
        """One logistic unit for two classes, else one output per class or label."""
        if self._train_loss() == "bce" and not self._multilabel():
            return 1
        return len(self.classes_)

    def _multilabel(self):
        return self._label_binarizer.y_type_ == "multilabel-indicator"

    def _class_weight(self):
        """class_weight keyed by position in classes_ (train() takes class indices)."""
        if self.class_weight is None:
            return None
        if self._train_loss() == "bce":
            return None  # taken into the sample weights (_training)
        if isinstance(self.class_weight, str):
            return self.class_weight
        self._check_class_weight()
        return {int(np.searchsorted(self.classes_, c)): w for c, w in self.class_weight.items()}

    def _check_class_weight(self):
        if not isinstance(self.class_weight, (dict, str)):
            raise TypeError(
                f'class_weight must be a dict {{class: weight}}, "balanced" or None, got {self.class_weight!r}'
            )
        if isinstance(self.class_weight, dict):
            unknown = [c for c in self.class_weight if c not in set(self.classes_.tolist())]
            if unknown:
                raise ValueError(
                    f"class_weight names unknown classes {unknown[:10]}; the classes are {self.classes_.tolist()[:10]}"
                )

    def _training(self, X, targets, sample_weight, **settings):
        if self.class_weight is not None and self._train_loss() == "bce":
            if self._multilabel():
                raise ValueError("class_weight weighs the classes of one label per sample, not a multilabel target")
            self._check_class_weight()
            y = self.classes_[targets[:, 0].astype(np.intp)]
            weights = compute_sample_weight(self.class_weight, y)
            sample_weight = weights if sample_weight is None else sample_weight * weights
        return super()._training(X, targets, sample_weight, **settings)

    def _validation_score(self, X_val, y_val, w_val):
        return _evaluate(self.model_, X_val, y_val, self.model_.loss, w_val)[1]

    # ---- fitting and prediction ----

    @available_if(_BaseMLP._stochastic)
    def partial_fit(
        self,
        X: Inputs,
        y: npt.ArrayLike,
        sample_weight: npt.ArrayLike | None = None,
        classes: npt.ArrayLike | None = None,
    ) -> MLPClassifier:
        """One epoch over (X, y), continuing from the current parameters and optimizer
        state. ``classes`` (all labels that will ever be seen) is required first,
        except for a multilabel target."""
        return self._partial_fit(X, y, sample_weight, classes)

    def predict_proba(self, X: Inputs) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``: (n_samples, 2) for
        two classes (``1 - p, p``), each label's own probability for a multilabel
        target."""
        P = self._outputs(X)
        if P.shape[1] == 1:
            return np.hstack([1 - P, P])
        return P

    def predict_log_proba(self, X: Inputs) -> np.ndarray:
        """The logarithm of ``predict_proba``."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: Inputs) -> np.ndarray:
        """The most probable class of each sample, or each label whose probability
        exceeds 1/2 (a multilabel indicator row)."""
        P = self._outputs(X)
        if self.model_.loss == "bce":
            return self._label_binarizer.inverse_transform(P.astype(np.float64), threshold=0.5)
        return self.classes_[P.argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = (
        """Multilayer perceptron regressor, trained by Adam, mini-batch SGD or L-BFGS.

    One output per target: the identity with the (half) squared error, or exp with
    the half Poisson deviance (``loss="poisson"``, targets >= 0), as scikit-learn's.

    Parameters
    ----------
    loss : {"squared_error", "poisson"}, default "squared_error\""""
        + _SHARED_PARAMETERS
        + _SHARED_EXTRAS
        + """

    Attributes
    ----------
    n_features_in_, model_ (fastmlp.MLP), coefs_, intercepts_, n_iter_, t_, loss_,
    loss_curve_, best_loss_, validation_scores_, best_validation_score_,
    n_layers_, n_outputs_, out_activation_
        As scikit-learn's ``MLPRegressor``; ``model_`` is the trained network.

    Examples
    --------
    >>> from sklearn.datasets import make_regression
    >>> from fastmlp.sklearn import MLPRegressor
    >>> X, y = make_regression(n_samples=400, n_features=8, noise=1.0, random_state=0)
    >>> reg = MLPRegressor(hidden_layer_sizes=(50,), max_iter=500, learning_rate_init=0.01,
    ...                    random_state=0).fit(X[:300], y[:300])
    >>> reg.score(X[300:], y[300:]) > 0.9
    True
    """
    )
    _LOSSES = ("squared_error", "poisson")

    def __init__(
        self,
        loss="squared_error",
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
        dtype=None,
        backend="auto",
        n_threads=None,
    ):
        super().__init__(
            hidden_layer_sizes,
            activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            max_fun=max_fun,
            loss=loss,
            dtype=dtype,
            backend=backend,
            n_threads=n_threads,
        )

    def _targets(self, y, first, classes=None, incremental=False):
        """y as a matrix of one column per target, in the estimator's dtype (checked
        by ``fastmlp.train``: finite, and >= 0 for "poisson")."""
        Y = y.reshape(len(y), -1)
        if not first and hasattr(self, "model_") and Y.shape[1] != self.model_.n_out:
            raise ValueError(f"y has {Y.shape[1]} targets; the fitted network has {self.model_.n_out}")
        self._n_targets = Y.shape[1]
        return np.ascontiguousarray(Y, dtype=self._dtype)

    def _train_loss(self):
        return self.loss

    def _n_out(self):
        return self._n_targets

    def _validation_score(self, X_val, y_val, w_val):
        with np.errstate(over="ignore", invalid="ignore"):
            pred = tables.loss(self.model_.loss).output(self.model_._logits(X_val))
        if not np.isfinite(pred).all():  # a diverging network: no score, as scikit-learn's
            return np.nan
        return float(r2_score(y_val, pred, sample_weight=w_val))

    @available_if(_BaseMLP._stochastic)
    def partial_fit(self, X: Inputs, y: npt.ArrayLike, sample_weight: npt.ArrayLike | None = None) -> MLPRegressor:
        """One epoch over (X, y), continuing from the current parameters and optimizer state."""
        return self._partial_fit(X, y, sample_weight, None)

    def predict(self, X: Inputs) -> np.ndarray:
        """The predicted values: (n_samples,) for one target, else (n_samples, n_outputs)."""
        Y = self._outputs(X)
        return Y.ravel() if Y.shape[1] == 1 else Y
