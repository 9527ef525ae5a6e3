"""The public training loop: validation, shuffling, history, checkpoints.

This module checks the inputs once, draws one permutation per epoch and records
what each epoch measured. The epochs themselves run in the kernel driver
(``fastmlp._kernels.epochs.EpochRunner``), which calls the chosen backend's
compiled primitives.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from . import _full_batch, backends, schedules, tables
from . import reference as ref
from ._kernels.epochs import Diverged, EpochRunner, Step, blas_limits, wants_one_blas_thread
from ._progress import Progress
from ._typing import Inputs, PathLike, Schedule, Targets
from ._validation import (
    check_bool,
    check_choice,
    check_class_weight,
    check_fraction,
    check_nonnegative_float,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_sample_weight,
    check_targets,
    check_X,
    is_finite_real,
    is_sparse,
    raise_nonfinite,
)

if TYPE_CHECKING:
    from .model import MLP

__all__ = [
    "train",
    "evaluate",
    "History",
    "DivergenceError",
    "CHECKPOINT_VERSION",
]


@dataclass
class History:
    """What ``train`` measured, one entry per epoch.

    ``loss`` and ``accuracy`` are running figures over the epoch: each batch's
    loss and correct count measured in its forward pass, before its update. A
    row is correct when its most probable class is its label, or, with "bce",
    when every output is on its target's side of 1/2; the accuracy of a
    regression loss ("squared_error", "poisson") is NaN.
    ``val_loss``/``val_accuracy`` are measured after the epoch (empty without
    validation data). ``seconds`` is the wall time of each epoch's training.
    ``backend``, ``path`` and ``threads`` say what ran: the backend, its epoch path
    ("sparse", "blas" or "reference") and the threads of the last epoch.
    With ``optimizer="lbfgs"`` each entry is an iteration, its loss and accuracy
    measured at the new iterate over the whole training set; ``evaluations``
    counts the loss-and-gradient evaluations and ``message`` is why L-BFGS-B
    stopped (scipy's words).

    Examples
    --------
    >>> X, y = fastmlp.datasets.circles(500, seed=0)
    >>> history = fastmlp.train(fastmlp.MLP(2, 10, 2), X, y, epochs=3, batch_size=1, lr=0.03)
    >>> history.epochs, history.path
    (3, 'sparse')
    """

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    backend: str = ""
    path: str = ""
    threads: int = 0
    evaluations: int = 0
    message: str = ""

    @property
    def epochs(self) -> int:
        """Number of epochs recorded."""
        return len(self.loss)


def _check_model(model):
    from .model import MLP

    if not isinstance(model, MLP):
        raise TypeError(f"model must be a fastmlp.MLP, got {type(model).__name__}")
    return model


def _check_validation_data(validation_data, model, loss):
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise ValueError("validation_data must be a pair (X_val, y_val)")
    X_val = check_X(validation_data[0], "validation_data[0]", model.n_in, model.dtype)
    y_val = check_targets(validation_data[1], X_val.shape[0], model.n_out, loss, model.dtype, "validation_data[1]")
    return X_val, y_val


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or parameter (usually: the learning rate is too large).

    ``epoch`` and ``batch`` (0-based) locate the failing step; ``history`` holds
    the epochs completed before it. The model keeps the parameters it had before
    the failing step.

    Examples
    --------
    >>> X, y = fastmlp.datasets.circles(500, seed=0)
    >>> model = fastmlp.MLP(2, 10, 2, seed=0)
    >>> try:
    ...     fastmlp.train(model, X, y, epochs=5, lr=1e30)
    ... except fastmlp.DivergenceError as error:
    ...     print(error.epoch, error.batch, np.isfinite(model.Wh).all())
    0 1 True
    """

    def __init__(self, epoch: int, batch: int, history: History) -> None:
        self.epoch, self.batch, self.history = epoch, batch, history
        super().__init__(
            f"training diverged at epoch {epoch}, batch {batch} (0-based): the loss or a parameter became "
            f"NaN or infinite (try a smaller lr); the model keeps its parameters from before that step"
        )


CHECKPOINT_VERSION = 4  # 2: with the momentum buffers and the optimizer settings; 3: model format 2; 4: Adam
# The optimizer settings a checkpoint of version 2 or 3 was written with (SGD was the only one).
_SGD_SETTINGS = dict(optimizer="sgd", beta1=0.9, beta2=0.999, eps=1e-8)
# The steps ``train`` takes per batch, and "lbfgs": scipy's L-BFGS-B over full-batch gradients
OPTIMIZERS = (*(name for name, row in tables.OPTIMIZERS.items() if row.per_batch), "lbfgs")
# The per-epoch lists of a History, as a checkpoint stores them.
_HISTORY_SERIES = ("loss", "accuracy", "val_loss", "val_accuracy", "seconds")


def train(
    model: MLP,
    X: Inputs,
    y: Targets,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 0.1,
    loss: str = "ce",
    backend: str = "auto",
    shuffle: bool = True,
    seed: int = 0,
    validation_data: tuple[Inputs, Targets] | None = None,
    progress: bool = False,
    checkpoint: PathLike | None = None,
    checkpoint_every: int = 1,
    resume: PathLike | None = None,
    n_threads: int | None = None,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    lr_schedule: str | Schedule = "constant",
    power_t: float = 0.5,
    sample_weight: npt.ArrayLike | None = None,
    class_weight: Mapping[int, float] | str | None = None,
    optimizer: str = "sgd",
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    max_fun: int = 15000,
    tol: float = 1e-4,
) -> History:
    """Train ``model`` in place by mini-batch SGD (or Adam, or L-BFGS) and return its ``History``.

    Each step applies ``p -= lr * (mean over the batch of dl/dp)`` (with the
    options below, the step of ``torch.optim.SGD``; with ``optimizer="adam"``,
    ``torch.optim.Adam``'s); the last batch of an epoch may be smaller and averages
    over its own size. ``batch_size=1`` is online gradient
    descent, ``batch_size >= len(X)`` full-batch.

    Parameters
    ----------
    model : MLP
    X : array or scipy.sparse matrix (n_samples, n_in)
        Any real dtype and memory layout; converted once to the model's dtype.
        Sparse matrices and arrays of any format are converted once to CSR and
        never densified; dense inputs with few non-zeros are converted to CSR
        once per call (``fastmlp info`` shows the rule). The caller's arrays are
        never modified.
    y : array
        For "ce" and "mse": integer class labels (n_samples,) in [0, n_out) or
        one-hot rows (n_samples, n_out). For the other losses: the target values
        (n_samples, n_out), a vector for one output: 0 or 1 ("bce"), finite
        ("squared_error"), finite and non-negative ("poisson").
    epochs : int
        Total number of epochs (with ``resume``: including those already done).
    batch_size : int
    lr : float
        The learning rate (of the first epoch, under a schedule).
    loss : {"ce", "mse", "bce", "squared_error", "poisson"}
        The output and its loss (``fastmlp.tables.LOSSES``): softmax with
        cross-entropy or squared error over class labels; a logistic per output
        with binary cross-entropy (two classes, or several labels per row, as 0/1
        columns); the identity with squared error (regression); exp with the half
        Poisson deviance (counts). The model keeps it (``MLP.loss``), and its
        ``predict`` and ``predict_proba`` follow it.
    backend : {"auto", "numpy", "cython", "numba"}
        "auto" takes the compiled Cython kernels where they load.
    shuffle : bool
        Draw a new permutation of the examples each epoch; otherwise take them in order.
    seed : int
        Seed of the shuffling: the same seed gives the same batches on every backend.
    validation_data : (X_val, y_val), optional
        Evaluated after every epoch.
    progress : bool
        Show progress on stderr once per epoch (loss, accuracy, examples/s): a tqdm
        bar where tqdm is installed (``pip install fastmlp[progress]``), else a line.
    checkpoint : path, optional
        Write a checkpoint there (atomically) every ``checkpoint_every`` epochs and
        after the last: the parameters, the optimizer's state (momentum buffers,
        Adam's moments and step count), the epochs done, the shuffling RNG's state
        and the history.
    resume : path, optional
        Continue from a checkpoint: a run killed and resumed ends with exactly the
        parameters of an uninterrupted run with the same settings.
    n_threads : int, optional
        Threads for the compiled epochs (None: the cores this process may use),
        within threadpoolctl's limits (``threadpool_limits(1)`` makes training
        single-threaded) and shared with other trainings running at the same time.
        The trained parameters are bitwise the same for every thread count.
    momentum : float
        ``torch.optim.SGD``'s momentum (dampening 0): ``v = momentum * v + g``,
        ``p -= lr * v``. The buffers start at zero, live through the epochs of this
        call and are saved in checkpoints.
    nesterov : bool
        Nesterov momentum: ``p -= lr * (g + momentum * v)``; needs momentum > 0.
    weight_decay : float
        Adds ``weight_decay * W`` to the gradients of the weights (not the biases);
        with "adamw", shrinks the weights by ``1 - lr * weight_decay`` before each
        step instead (decoupled weight decay).
    lr_schedule : {"constant", "invscaling", "step", "cosine"} or callable
        The learning rate of each epoch (``fastmlp.schedules``); a callable takes the
        epoch (0-based) and returns a positive rate.
    power_t : float
        The exponent of "invscaling".
    sample_weight : array (n_samples,), optional
        Non-negative weights: each batch's gradient is the weighted mean of its rows'
        (an integer weight k counts as the row k times; a batch whose weights sum to
        zero takes no step), and the history's loss and accuracy are weighted.
    class_weight : dict or "balanced", optional
        Weights per class (label -> weight), multiplied into ``sample_weight``;
        "balanced" gives each class n_samples / (n_classes * its count).
    optimizer : {"sgd", "adam", "adamw", "lbfgs"}
        "sgd": ``torch.optim.SGD`` (with momentum, nesterov, weight_decay). "adam"
        and "adamw": ``torch.optim.Adam`` and ``AdamW`` with ``beta1``, ``beta2``,
        ``eps`` and ``weight_decay``; the moments of every parameter advance every
        step (on the sparse path too), start at zero, live through the epochs of
        this call and are saved in checkpoints with the step count. "lbfgs":
        scipy's L-BFGS-B on the full-batch objective of scikit-learn's
        ``solver="lbfgs"``, the mean loss plus ``weight_decay / 2 * sum W**2``
        (``fastmlp.reference.objective``), its gradient from the compiled kernels
        on every thread; ``epochs`` is the most iterations, each one an entry of the
        history; ``batch_size``, ``lr``, the schedule and ``shuffle`` do not apply,
        nor do checkpoints (L-BFGS-B's state lives inside scipy).
    beta1, beta2 : float
        Adam's decay rates of the first and second moments, in [0, 1).
    eps : float
        Adam's term added to the denominator, > 0.
    max_fun : int
        "lbfgs": the most loss-and-gradient evaluations.
    tol : float
        "lbfgs": stop where every component of the gradient is at most ``tol`` in
        absolute value (scipy's ``gtol``).

    Returns
    -------
    History
        Per epoch: the running training loss and accuracy, the validation loss
        and accuracy, the seconds; and what ran (backend, path, threads).

    Raises
    ------
    DivergenceError
        A step made the loss or a parameter non-finite; the model keeps the
        parameters from before that step.
    KeyboardInterrupt
        Passed on within a fraction of a second; the model holds the parameters from
        the start of the interrupted compiled chunk of the epoch (8,192 examples, or
        more where the parameters far outnumber them, at most 0.2 s of compiled work
        back), never a half-applied step.
    RuntimeError
        The model is being trained by another thread at the same time.

    Examples
    --------
    The practical's first experiment, two concentric circles:

    >>> X, y = fastmlp.datasets.circles(1000, noise=0.1, seed=0)
    >>> X_test, y_test = fastmlp.datasets.circles(1000, noise=0.1, seed=1)
    >>> model = fastmlp.MLP(2, 10, 2, seed=0)
    >>> history = fastmlp.train(model, X, y, epochs=60, batch_size=10, lr=0.03,
    ...                         validation_data=(X_test, y_test))
    >>> history.epochs, history.val_accuracy[-1] > 0.95
    (60, True)

    With torch.optim.SGD's options and a schedule:

    >>> history = fastmlp.train(model, X, y, epochs=5, lr=0.05, momentum=0.9, nesterov=True,
    ...                         weight_decay=1e-4, lr_schedule="cosine")
    >>> len(history.loss)
    5

    With Adam, as scikit-learn's MLPClassifier and PyTorch users train:

    >>> history = fastmlp.train(fastmlp.MLP(2, 10, 2, seed=0), X, y, epochs=20, batch_size=32,
    ...                         lr=0.01, optimizer="adam", validation_data=(X_test, y_test))
    >>> history.val_accuracy[-1] > 0.95
    True

    With L-BFGS on the whole training set, as scikit-learn's ``solver="lbfgs"``:

    >>> history = fastmlp.train(fastmlp.MLP(2, 10, 2, seed=0), X, y, epochs=100, optimizer="lbfgs",
    ...                         validation_data=(X_test, y_test))
    >>> history.val_accuracy[-1] > 0.95
    True
    """
    model = _check_model(model)
    epochs = check_nonnegative_int(epochs, "epochs")
    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    if optimizer == "lbfgs":
        max_fun = check_positive_int(max_fun, "max_fun")
        tol = check_nonnegative_float(tol, "tol")
        for value, name in ((checkpoint, "checkpoint"), (resume, "resume")):
            if value is not None:
                raise ValueError(
                    f"{name} is not available with optimizer='lbfgs' (L-BFGS-B's state lives inside scipy)"
                )
    if checkpoint is not None:
        _check_writable_dir(checkpoint, "checkpoint")
    check_bool(progress, "progress")
    training = _Training(
        model,
        X,
        y,
        batch_size=batch_size,
        lr=lr,
        loss=loss,
        backend=backend,
        shuffle=shuffle,
        seed=seed,
        validation_data=validation_data,
        n_threads=n_threads,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        sample_weight=sample_weight,
        class_weight=class_weight,
        optimizer=optimizer,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
    )
    schedule = schedules.build(
        lr_schedule, lr, epochs=epochs, n_samples=training.n, power_t=check_nonnegative_float(power_t, "power_t")
    )
    settings = dict(
        training.settings,
        lr_schedule=lr_schedule if isinstance(lr_schedule, str) else "callable",
        power_t=float(power_t),
    )
    if resume is not None:
        training.restore(_read_checkpoint(resume, model, settings))
    first = training.epoch
    if training.lbfgs:
        with training, Progress(epochs, "iteration", enabled=progress) as bar:
            if epochs:
                update = (lambda fun: bar.update(**_epoch_stats(training.history, training.n))) if bar.enabled else None
                training.run_lbfgs(epochs, max_fun, tol, update)
        return training.history
    if first < epochs:
        _check_lr_at(schedule, first)  # before any work
    with training:
        with Progress(epochs, "epoch", initial=first, enabled=progress) as bar:
            for epoch in range(first, epochs):
                training.run_epoch(_check_lr_at(schedule, epoch))
                if checkpoint is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
                    _write_checkpoint(checkpoint, training, settings)
                if bar.enabled:  # the statistics are formatted only for a visible bar
                    bar.update(**_epoch_stats(training.history, training.n))
    return training.history


def _epoch_stats(history, n):
    stats = {"loss": f"{history.loss[-1]:.4f}", "acc": f"{history.accuracy[-1]:.4f}"}
    if history.val_loss:
        stats.update(val_loss=f"{history.val_loss[-1]:.4f}", val_acc=f"{history.val_accuracy[-1]:.4f}")
    stats["ex/s"] = f"{n / max(history.seconds[-1], 1e-12):.3g}"
    return stats


def _check_lr_at(schedule, epoch):
    """The schedule's learning rate for ``epoch``, which must be positive and finite."""
    value = schedule(epoch)
    if not is_finite_real(value) or value <= 0:
        raise ValueError(
            f"lr_schedule returned {value!r} for epoch {epoch}; a learning rate must be a positive finite number"
        )
    return float(value)


class _Training:
    """One training run, epoch by epoch: the checked inputs, the epoch runner, the
    shuffling RNG, the optimizer's state and the history. ``train`` drives it; so
    does the scikit-learn estimator, which decides its learning rate and when to
    stop after each epoch, and draws its own orders (``permutations``: a callable
    giving each epoch's order of the rows). Use it as a context manager around the
    epochs: it holds the model against other threads and sets the BLAS threads."""

    def __init__(
        self,
        model,
        X,
        y,
        *,
        batch_size=64,
        lr=0.1,
        loss="ce",
        backend="auto",
        shuffle=True,
        seed=0,
        validation_data=None,
        n_threads=None,
        momentum=0.0,
        nesterov=False,
        weight_decay=0.0,
        sample_weight=None,
        class_weight=None,
        decay_by_weight_sum=False,
        permutations=None,
        optimizer="sgd",
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        sklearn_eps=False,
    ):
        self.model = model
        self.permutations = permutations
        self.batch_size = check_positive_int(batch_size, "batch_size")
        check_positive_float(lr, "lr")
        check_choice(loss, "loss", ref.LOSSES)
        model.network.replace(loss=loss)  # the model's outputs fit the loss (n_out >= 2 for classes)
        check_choice(backend, "backend", backends.NAMES)
        check_nonnegative_int(seed, "seed")
        if n_threads is not None:
            n_threads = check_positive_int(n_threads, "n_threads")
        shuffle = check_bool(shuffle, "shuffle")
        momentum = check_fraction(momentum, "momentum")
        weight_decay = check_nonnegative_float(weight_decay, "weight_decay")
        nesterov = check_bool(nesterov, "nesterov")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0 (Nesterov momentum without momentum is plain SGD)")
        check_choice(optimizer, "optimizer", OPTIMIZERS)
        beta1, beta2 = check_fraction(beta1, "beta1"), check_fraction(beta2, "beta2")
        eps = check_positive_float(eps, "eps")
        if optimizer != "sgd" and momentum:
            has = "beta1 (its momentum) and beta2" if optimizer.startswith("adam") else "no momentum"
            raise ValueError(f"momentum is a setting of optimizer='sgd'; {optimizer!r} has {has}")
        self.lbfgs = optimizer == "lbfgs"
        # a dense X's values are checked in the pass that converts it to CSR, on
        # entering (raise_nonfinite), before any step
        self.X = check_X(X, "X", model.n_in, model.dtype, finite=False)
        self._X_given = X
        self.labels = check_targets(y, self.X.shape[0], model.n_out, loss, model.dtype, "y")
        self.n = self.X.shape[0]
        self.classifies = tables.loss(loss).classifies
        if self.lbfgs:  # one batch of every row: the primitive's gradient is the full batch's
            self.batch_size = max(1, self.n)
        weights = check_sample_weight(sample_weight, self.n, "sample_weight")
        if class_weight is not None and tables.loss(loss).targets != "labels":
            raise ValueError(f"class_weight weighs class labels; loss {loss!r} takes target values")
        cw = check_class_weight(class_weight, self.labels, model.n_out)
        if cw is not None:
            weights = cw[self.labels] if weights is None else weights * cw[self.labels]
        self.weights = None if weights is None else np.ascontiguousarray(weights, dtype=model.dtype)
        self.val = _check_validation_data(validation_data, model, loss)
        self.backend = backends.resolve(backend, deep=model.network.deep)
        self.loss, self.shuffle, self.seed, self.n_threads = loss, bool(shuffle), seed, n_threads
        self.momentum, self.nesterov, self.weight_decay = momentum, bool(nesterov), weight_decay
        self.decay_by_weight_sum = decay_by_weight_sum
        self.step = Step(
            float(lr),
            momentum,
            weight_decay,
            self.nesterov,
            decay_by_weight_sum,
            "gradient" if self.lbfgs else optimizer,
            beta1,
            beta2,
            eps,
            bool(sklearn_eps),
        )
        self.settings = dict(
            batch_size=self.batch_size,
            lr=float(lr),
            loss=loss,
            shuffle=self.shuffle,
            seed=seed,
            n_samples=self.n,
            momentum=momentum,
            nesterov=self.nesterov,
            weight_decay=weight_decay,
            optimizer=optimizer,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
        )
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.steps = 0  # the steps taken (Adam's bias corrections count them)
        self.history = History(backend=self.backend)
        # the optimizer's state, each a block of the parameters' layout: the momentum
        # buffers (SGD) or Adam's first moments, and Adam's second moments
        blocks = self.step.state_blocks
        self.velocity = model.network.named(model.network.block()) if blocks >= 1 else None
        self.second_moment = model.network.named(model.network.block()) if blocks >= 2 else None
        self.runner = None

    def restore(self, state):
        """Continue from a checkpoint's state (``_read_checkpoint``)."""
        self.epoch = state["epoch"]
        self.rng.bit_generator.state = state["rng"]
        for key, values in state["history"].items():
            getattr(self.history, key).extend(values)
        self.steps = state["steps"]
        for k in self.model.network.param_names():
            self.model.params[k][...] = state["params"][k]
            if self.velocity is not None:
                self.velocity[k][...] = state["velocity"][k]
            if self.second_moment is not None:
                self.second_moment[k][...] = state["second_moment"][k]

    def scale_velocity(self, factor):
        """Multiply the momentum buffers (scikit-learn keeps lr inside its velocity:
        on a change of rate the estimator rescales, so that its steps are sklearn's)."""
        if self.velocity is not None:
            for v in self.velocity.values():
                v *= factor

    def __enter__(self):
        if not self.model._training.acquire(blocking=False):
            raise RuntimeError("model is already being trained in another thread; train a copy (model.copy()) instead")
        try:
            self.model.loss = self.loss
            self.runner = EpochRunner(
                backends.kernels(self.backend),
                self.model.params,
                self.X,
                self.labels,
                batch_size=self.batch_size,
                loss=self.loss,
                activation=self.model.activation,
                n_threads=self.n_threads,
                weights=self.weights,
                velocity=self.velocity,
                second_moment=self.second_moment,
                summed=not tables.optimizer(self.step.optimizer).linear,
            )
            if not is_sparse(self.X) and self.runner.nonfinite_inputs():  # a sparse X's were checked
                raise_nonfinite(self._X_given, "X", self.model.dtype)
            self.history.path = self.runner.path
            self._blas = blas_limits(wants_one_blas_thread(self.runner.path, self.batch_size))
            self._blas.__enter__()
        except BaseException:
            self.model._training.release()
            raise
        return self

    def __exit__(self, *exc):
        try:
            self._blas.__exit__(*exc)
        finally:
            self.model._training.release()

    def run_lbfgs(self, max_iter, max_fun, tol, on_iteration=None):
        """Up to ``max_iter`` iterations of L-BFGS-B (``_full_batch.minimize``), each
        appended to the history as an epoch (its loss and accuracy measured at the
        new iterate); returns scipy's ``OptimizeResult``."""
        total = self.n if self.weights is None else float(self.weights.sum())
        objective = _full_batch.Objective(self.runner, self.model.params, self.velocity, self.step, total)
        h = self.history
        t0 = [time.perf_counter()]

        def iteration(fun):
            h.seconds.append(time.perf_counter() - t0[0])
            h.threads = self.runner.threads
            h.loss.append(float(objective.last[0]))
            h.accuracy.append(float(objective.last[1]) if self.classifies else math.nan)
            if self.val is not None:
                vl, va = _evaluate(self.model, *self.val, self.loss)
                h.val_loss.append(vl)
                h.val_accuracy.append(va)
            self.epoch += 1
            if on_iteration is not None:
                on_iteration(fun)
            t0[0] = time.perf_counter()

        try:
            result = _full_batch.minimize(objective, max_iter, max_fun, tol, iteration)
        except Diverged as exc:
            raise DivergenceError(exc.batch, 0, h) from None
        finally:
            h.evaluations += objective.evaluations
        h.message = str(result.message)
        return result

    def run_epoch(self, lr):
        """One epoch at learning rate ``lr``; appends to the history."""
        n = self.n
        if self.permutations is not None:
            perm = self.permutations()
        else:
            perm = self.rng.permutation(n) if self.shuffle else np.arange(n, dtype=np.intp)
        opt = self.step._replace(lr=lr, steps=self.steps)
        t0 = time.perf_counter()
        try:
            loss_sum, correct = self.runner.epoch(perm, opt)
        except Diverged as exc:
            raise DivergenceError(self.epoch, exc.batch, self.history) from None
        self.steps += -(-len(perm) // self.batch_size)
        h = self.history
        h.seconds.append(time.perf_counter() - t0)
        h.threads = self.runner.threads
        total = n if self.weights is None else float(self.weights.sum())
        h.loss.append(loss_sum / total if total > 0 else 0.0)
        h.accuracy.append((correct / total if total > 0 else 0.0) if self.classifies else math.nan)
        if self.val is not None:
            vl, va = _evaluate(self.model, *self.val, self.loss)
            h.val_loss.append(vl)
            h.val_accuracy.append(va)
        self.epoch += 1
        return h


def _check_writable_dir(path, name):
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{name}: directory {directory!r} does not exist")


def _write_checkpoint(path, training, settings):
    from .model import _atomic_savez

    arrays = training.model._file_arrays()
    arrays.update(
        checkpoint_version=np.int64(CHECKPOINT_VERSION),
        epochs_done=np.int64(training.epoch),
        steps_done=np.int64(training.steps),
        rng_state=np.str_(json.dumps(training.rng.bit_generator.state)),
        settings=np.str_(json.dumps(settings)),
        **{f"history_{k}": np.asarray(getattr(training.history, k), dtype=np.float64) for k in _HISTORY_SERIES},
        **_velocity_arrays(training),
    )
    _atomic_savez(path, **arrays)


def _velocity_arrays(training):
    """The optimizer's state as a checkpoint stores it: velocity_W1, velocity_b1, ...
    (the momentum buffers, or Adam's first moments) and second_moment_W1, ...,
    named as the model file names the parameters."""
    names = training.model.network.numbered_names()
    out = {}
    for prefix, state in (("velocity", training.velocity), ("second_moment", training.second_moment)):
        if state is not None:
            out.update({f"{prefix}_{k}": v for k, v in zip(names, state.values(), strict=True)})
    return out


def _read_state(data, version, model, prefix):
    """One block of the optimizer's state of a checkpoint by parameter name (version
    2 named it as the parameters, Wh, bh, Wy, by)."""
    names = model.network.param_names()
    stored = names if version == 2 else model.network.numbered_names()
    return {k: data[f"{prefix}_{s}"] for k, s in zip(names, stored, strict=True) if f"{prefix}_{s}" in data}


def _read_checkpoint(path, model, settings):
    from .model import MLP, _read_npz

    data = _read_npz(path, "checkpoint")
    if "checkpoint_version" not in data:
        raise ValueError(f"resume: {path!r} is not a fastmlp checkpoint (a model file has no training state)")
    version = int(data["checkpoint_version"])
    if version not in (2, 3, CHECKPOINT_VERSION):
        raise ValueError(
            f"resume: {path!r} has checkpoint version {version}, this fastmlp reads versions 2 to {CHECKPOINT_VERSION}"
        )
    saved = MLP._from_arrays(data, path)
    if saved.network.replace(loss="ce") != model.network.replace(loss="ce"):
        raise ValueError(f"resume: {path!r} holds a {saved!r}, the model is a {model!r}")
    old = json.loads(str(data["settings"]))
    if version < 4:
        old = {**_SGD_SETTINGS, **old}
    differ = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
    if differ:
        raise ValueError(
            "resume: the checkpoint was written with other settings (checkpoint, now): "
            + ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in differ.items())
        )
    return dict(
        epoch=int(data["epochs_done"]),
        rng=json.loads(str(data["rng_state"])),
        params=saved.params,
        steps=int(data["steps_done"]) if "steps_done" in data else 0,
        velocity=_read_state(data, version, model, "velocity"),
        second_moment=_read_state(data, version, model, "second_moment"),
        history={k: data[f"history_{k}"].tolist() for k in _HISTORY_SERIES},
    )


def _evaluate(model, X, targets, loss, weights=None):
    Z = model._logits(X)
    row = tables.loss(loss)
    outputs = ref.Outputs(None, None, Z, row.output(Z))
    row_loss, row_correct = ref.row_losses(outputs, targets, loss)
    if weights is None:
        weights = np.ones(len(Z))
    total = float(weights.sum())
    if total <= 0:
        raise ValueError("sample_weight must not all be zero")
    accuracy = float(np.dot(weights, row_correct) / total) if row.classifies else math.nan
    return float(np.dot(weights, row_loss) / total), accuracy


def evaluate(
    model: MLP, X: Inputs, y: Targets, loss: str = "ce", sample_weight: npt.ArrayLike | None = None
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``X``, ``y``.

    Parameters
    ----------
    model : MLP
    X : array or scipy.sparse matrix (n_samples, n_in)
    y : array
        Integer labels (n_samples,) or one-hot rows (n_samples, n_out).
    loss : {"ce", "mse", "bce", "squared_error", "poisson"}
        As in ``train``; ``y`` as that loss takes it.
    sample_weight : array (n_samples,), optional
        With weights: the weighted mean loss and the weighted fraction correct.

    Returns
    -------
    loss, accuracy : float

    Examples
    --------
    >>> X, y = fastmlp.datasets.circles(200, seed=0)
    >>> loss, accuracy = fastmlp.evaluate(fastmlp.MLP(2, 10, 2), X, y)
    >>> 0 <= accuracy <= 1 and loss > 0
    True
    """
    model = _check_model(model)
    check_choice(loss, "loss", ref.LOSSES)
    X = check_X(X, "X", model.n_in, model.dtype)
    targets = check_targets(y, X.shape[0], model.n_out, loss, model.dtype, "y")
    weights = check_sample_weight(sample_weight, X.shape[0], "sample_weight")
    return _evaluate(model, X, targets, loss, weights)
