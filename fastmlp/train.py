"""The public training loop: validation, shuffling, history, checkpoints.

This module checks the inputs once, draws one permutation per epoch and records
what each epoch measured. The epochs themselves run in the kernel driver
(``fastmlp._kernels.epochs.EpochRunner``), which calls the chosen backend's
compiled primitives.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import backends
from . import reference as ref
from ._kernels.epochs import CHUNK_EXAMPLES, Diverged, EpochRunner, blas_limits, wants_one_blas_thread
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
    ``backend``, ``path`` and ``threads`` say what ran: the backend, its epoch path
    ("sparse", "blas" or "reference") and the threads of the last epoch.
    """

    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    backend: str = ""
    path: str = ""
    threads: int = 0

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
    y_val = check_y(validation_data[1], X_val.shape[0], model.n_out, "validation_data[1]")
    return X_val, y_val


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or parameter (usually: the learning rate is too large).

    ``epoch`` and ``batch`` (0-based) locate the failing step; ``history`` holds
    the epochs completed before it. The model keeps the parameters it had before
    the failing step.
    """

    def __init__(self, epoch, batch, history):
        self.epoch, self.batch, self.history = epoch, batch, history
        super().__init__(
            f"training diverged at epoch {epoch}, batch {batch} (0-based): the loss or a parameter became "
            f"NaN or infinite (try a smaller lr); the model keeps its parameters from before that step"
        )


CHECKPOINT_VERSION = 1


def train(model, X, y, epochs=1, batch_size=64, lr=0.1, loss="ce", backend="auto",
          shuffle=True, seed=0, validation_data=None, progress=False,
          checkpoint=None, checkpoint_every=1, resume=None, n_threads=None):
    """Train ``model`` in place by mini-batch SGD and return its ``History``.

    Each step applies ``p -= lr * (mean over the batch of dl/dp)``; the last batch
    of an epoch may be smaller and averages over its own size. ``batch_size=1`` is
    online gradient descent, ``batch_size >= len(X)`` full-batch.

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
        Integer class labels (n_samples,) in [0, n_out) or one-hot rows (n_samples, n_out).
    epochs : int
        Total number of epochs (with ``resume``: including those already done).
    batch_size : int
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
        Show progress on stderr once per epoch (loss, accuracy, examples/s): a tqdm
        bar where tqdm is installed (``pip install fastmlp[progress]``), else a line.
    checkpoint : path, optional
        Write a checkpoint there (atomically) every ``checkpoint_every`` epochs and
        after the last: the parameters, the epochs done, the shuffling RNG's state
        and the history.
    resume : path, optional
        Continue from a checkpoint: a run killed and resumed ends with exactly the
        parameters of an uninterrupted run with the same settings.
    n_threads : int, optional
        Threads for the compiled epochs (None: the cores this process may use),
        within threadpoolctl's limits (``threadpool_limits(1)`` makes training
        single-threaded) and shared with other trainings running at the same time.
        The trained parameters are bitwise the same for every thread count.

    Raises
    ------
    DivergenceError
        A step made the loss or a parameter non-finite; the model keeps the
        parameters from before that step.
    KeyboardInterrupt
        Passed on within milliseconds; the model holds the parameters from the start
        of the interrupted chunk of the epoch (at most CHUNK_EXAMPLES examples back),
        never a half-applied step.
    RuntimeError
        The model is being trained by another thread at the same time.
    """
    model = _check_model(model)
    epochs = check_nonnegative_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive_float(lr, "lr")
    check_choice(loss, "loss", ref.LOSSES)
    check_choice(backend, "backend", backends.NAMES)
    check_nonnegative_int(seed, "seed")
    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    if n_threads is not None:
        n_threads = check_positive_int(n_threads, "n_threads")
    if not isinstance(shuffle, (bool, np.bool_)):
        raise TypeError(f"shuffle must be True or False, got {shuffle!r}")
    if checkpoint is not None:
        _check_writable_dir(checkpoint, "checkpoint")
    X = check_X(X, "X", model.n_in, model.dtype)
    labels = check_y(y, X.shape[0], model.n_out, "y")
    val = _check_validation_data(validation_data, model)
    name = backends.resolve(backend)
    settings = dict(batch_size=batch_size, lr=lr, loss=loss, shuffle=bool(shuffle), seed=seed, n_samples=X.shape[0])
    state = _read_checkpoint(resume, model, settings) if resume is not None else None

    if not model._training.acquire(blocking=False):
        raise RuntimeError("model is already being trained in another thread; train a copy (model.copy()) instead")
    try:
        history = History(backend=name)
        rng = np.random.default_rng(seed)
        first = 0
        if state is not None:
            first = state["epoch"]
            rng.bit_generator.state = state["rng"]
            for key, values in state["history"].items():
                getattr(history, key).extend(values)
            for k in ref.PARAM_NAMES:
                model.params[k][...] = state["params"][k]
        model.loss = loss
        runner = EpochRunner(backends.kernels(name), model.params, X, labels, batch_size=batch_size, loss=loss,
                             n_threads=n_threads)
        history.path = runner.path
        n = X.shape[0]
        bar = _Progress(epochs, first) if progress else None
        with blas_limits(wants_one_blas_thread(runner.path, batch_size)), (bar or contextlib.nullcontext()):
            for epoch in range(first, epochs):
                perm = rng.permutation(n) if shuffle else np.arange(n, dtype=np.intp)
                t0 = time.perf_counter()
                try:
                    loss_sum, n_correct = runner.epoch(perm, lr)
                except Diverged as exc:
                    raise DivergenceError(epoch, exc.batch, history) from None
                history.seconds.append(time.perf_counter() - t0)
                history.threads = runner.threads
                history.loss.append(loss_sum / n)
                history.accuracy.append(n_correct / n)
                if val is not None:
                    vl, va = _evaluate(model, *val, loss)
                    history.val_loss.append(vl)
                    history.val_accuracy.append(va)
                if checkpoint is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
                    _write_checkpoint(checkpoint, model, epoch + 1, rng, history, settings)
                if bar is not None:
                    bar.update(history, n)
    finally:
        model._training.release()
    return history


def _check_writable_dir(path, name):
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{name}: directory {directory!r} does not exist")


def _write_checkpoint(path, model, epochs_done, rng, history, settings):
    from .model import atomic_savez

    arrays = model._file_arrays()
    arrays.update(
        checkpoint_version=np.int64(CHECKPOINT_VERSION),
        epochs_done=np.int64(epochs_done),
        rng_state=np.str_(json.dumps(rng.bit_generator.state)),
        settings=np.str_(json.dumps(settings)),
        **{f"history_{k}": np.asarray(getattr(history, k), dtype=np.float64)
           for k in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds")},
    )
    atomic_savez(path, **arrays)


def _read_checkpoint(path, model, settings):
    from .model import MLP, read_npz

    data = read_npz(path, "checkpoint")
    if "checkpoint_version" not in data:
        raise ValueError(f"resume: {path!r} is not a fastmlp checkpoint (a model file has no training state)")
    if int(data["checkpoint_version"]) != CHECKPOINT_VERSION:
        raise ValueError(f"resume: {path!r} has checkpoint version {int(data['checkpoint_version'])}, "
                         f"this fastmlp reads version {CHECKPOINT_VERSION}")
    saved = MLP._from_arrays(data, path)
    if (saved.n_in, saved.n_hidden, saved.n_out, saved.dtype) != (model.n_in, model.n_hidden, model.n_out,
                                                                 model.dtype):
        raise ValueError(f"resume: {path!r} holds a {saved!r}, the model is a {model!r}")
    old = json.loads(str(data["settings"]))
    differ = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
    if differ:
        raise ValueError("resume: the checkpoint was written with other settings (checkpoint, now): "
                         + ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in differ.items()))
    return dict(
        epoch=int(data["epochs_done"]),
        rng=json.loads(str(data["rng_state"])),
        params=saved.params,
        history={k: data[f"history_{k}"].tolist()
                 for k in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds")},
    )


class _Progress:
    """Per-epoch progress on stderr: a tqdm bar where tqdm is installed, else one line
    per epoch. Updated between compiled epochs, never inside them."""

    def __init__(self, epochs, first):
        self.epochs = epochs
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=epochs, initial=first, unit="epoch", file=sys.stderr, dynamic_ncols=True)

    def update(self, history, n):
        stats = {"loss": f"{history.loss[-1]:.4f}", "acc": f"{history.accuracy[-1]:.4f}"}
        if history.val_loss:
            stats.update(val_loss=f"{history.val_loss[-1]:.4f}", val_acc=f"{history.val_accuracy[-1]:.4f}")
        stats["ex/s"] = f"{n / max(history.seconds[-1], 1e-12):.3g}"
        if self.bar is not None:
            self.bar.set_postfix(stats, refresh=False)
            self.bar.update(1)
        else:
            print(f"epoch {history.epochs}/{self.epochs}  " + "  ".join(f"{k} {v}" for k, v in stats.items()),
                  file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _evaluate(model, X, labels, loss):
    Z = model._logits(X)
    return ref.loss_accuracy(ref.softmax(Z), labels, loss, logits=Z)


def evaluate(model, X, y, loss="ce"):
    """(mean loss, accuracy) of ``model`` on ``X``, ``y`` (labels or one-hot)."""
    model = _check_model(model)
    check_choice(loss, "loss", ref.LOSSES)
    X = check_X(X, "X", model.n_in, model.dtype)
    labels = check_y(y, X.shape[0], model.n_out, "y")
    return _evaluate(model, X, labels, loss)
