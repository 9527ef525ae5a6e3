"""The mini-batch training loop: validation, shuffling, history and backend choice.

The loop itself lives in the backends' compiled ``train_epoch``; this module
prepares clean inputs for it once, draws one permutation per epoch and records
what each epoch measured.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import backends
from . import reference as ref
from ._validation import (
    check_choice,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_X,
    check_y,
)


@dataclass
class History:
    """What ``train`` measured, one entry per epoch.

    ``loss`` and ``accuracy`` are running figures over the epoch: each batch's
    loss and correct count measured in its forward pass, before its update.
    ``val_loss``/``val_accuracy`` are measured after the epoch (empty without
    validation data). ``seconds`` is the wall time of each epoch's training.
    """

    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    backend: str = ""

    @property
    def epochs(self):
        return len(self.loss)


def _check_model(model):
    from .model import MLP

    if not isinstance(model, MLP):
        raise TypeError(f"model must be a fastmlp.MLP, got {type(model).__name__}")
    return model


def _check_validation_data(validation_data, model):
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise ValueError("validation_data must be a pair (X_val, y_val)")
    X_val = check_X(validation_data[0], "validation_data[0]", model.n_in, model.dtype)
    y_val = check_y(validation_data[1], len(X_val), model.n_out, "validation_data[1]")
    return X_val, y_val


def train(model, X, y, epochs=1, batch_size=64, lr=0.1, loss="ce", backend="auto",
          shuffle=True, seed=0, validation_data=None, progress=False):
    """Train ``model`` in place by mini-batch SGD and return its ``History``.

    Each step applies ``p -= lr * (mean over the batch of dl/dp)``; the last batch
    of an epoch may be smaller and averages over its own size. ``batch_size=1`` is
    online gradient descent, ``batch_size >= len(X)`` full-batch.

    Parameters
    ----------
    model : MLP
    X : array (n_samples, n_in)
        Any real dtype and memory layout; converted once to the model's dtype.
    y : array
        Integer class labels (n_samples,) in [0, n_out) or one-hot rows (n_samples, n_out).
    epochs, batch_size : int
    lr : float
        The learning rate.
    loss : {"ce", "mse"}
        Cross-entropy, or squared error on the softmax output.
    backend : {"auto", "numpy", "cython", "numba"}
        "auto" takes the fastest available backend for this batch size.
    shuffle : bool
        Draw a new permutation of the examples each epoch; otherwise take them in order.
    seed : int
        Seed of the shuffling: the same seed gives the same batches on every backend.
    validation_data : (X_val, y_val), optional
        Evaluated after every epoch.
    progress : bool
        Print one line per epoch to stderr.
    """
    model = _check_model(model)
    epochs = check_nonnegative_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive_float(lr, "lr")
    check_choice(loss, "loss", ref.LOSSES)
    check_choice(backend, "backend", backends.NAMES)
    check_nonnegative_int(seed, "seed")
    X = check_X(X, "X", model.n_in, model.dtype)
    labels = check_y(y, len(X), model.n_out, "y")
    val = _check_validation_data(validation_data, model)
    name = backends.resolve(backend, batch_size)
    kernels = backends.kernels(name)

    history = History(backend=name)
    rng = np.random.default_rng(seed)
    n = len(X)
    p = model.params
    model.loss = loss
    with backends.blas_limits(batch_size):
        for epoch in range(epochs):
            perm = rng.permutation(n) if shuffle else np.arange(n, dtype=np.intp)
            t0 = time.perf_counter()
            loss_sum, n_correct = kernels.train_epoch(
                X, labels, perm, p["Wh"], p["bh"], p["Wy"], p["by"], lr, batch_size, loss
            )
            history.seconds.append(time.perf_counter() - t0)
            history.loss.append(loss_sum / n)
            history.accuracy.append(n_correct / n)
            if val is not None:
                vl, va = _evaluate(model, *val, loss)
                history.val_loss.append(vl)
                history.val_accuracy.append(va)
            if progress:
                _print_progress(epoch, epochs, history)
    return history


def _print_progress(epoch, epochs, history):
    line = (f"epoch {epoch + 1}/{epochs}  loss {history.loss[-1]:.4f}  "
            f"accuracy {history.accuracy[-1]:.4f}")
    if history.val_loss:
        line += f"  val_loss {history.val_loss[-1]:.4f}  val_accuracy {history.val_accuracy[-1]:.4f}"
    print(line + f"  ({history.seconds[-1]:.3f} s)", file=sys.stderr, flush=True)


def _evaluate(model, X, labels, loss):
    Z = model._logits(X)
    return ref.loss_accuracy(ref.softmax(Z), labels, loss, logits=Z)


def evaluate(model, X, y, loss="ce"):
    """(mean loss, accuracy) of ``model`` on ``X``, ``y`` (labels or one-hot)."""
    model = _check_model(model)
    check_choice(loss, "loss", ref.LOSSES)
    X = check_X(X, "X", model.n_in, model.dtype)
    labels = check_y(y, len(X), model.n_out, "y")
    return _evaluate(model, X, labels, loss)
