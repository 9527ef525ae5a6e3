"""The math of the network in tables: hidden activations, losses, optimizer steps.

Each row holds what the rest of the package needs to know about one choice, once:

- ``name``: what the public API takes (``MLP(activation="relu")``, ``train(loss="ce")``);
- ``code``: what the compiled kernels take; each backend holds one small
  per-element op per code (C: ``fastmlp/_kernels/_ops.h``; Numba: the op tables of
  ``fastmlp/_kernels/_nb.py``) and rejects any other code;
- the NumPy definition, which the reference (``fastmlp/reference.py``) uses;
- the PyTorch equivalent, for ``MLP.to_torch`` and the tests against autograd;
- for a loss, the output it pairs with and what its targets are (class labels or
  a matrix of values);
- the facts the kernels rely on.

Adding an activation is a row of ``ACTIVATIONS`` and its op in each backend: the
kernels' mechanics (row gathers and updates, threads, chunks, dispatch) do not
know which activation, loss or step they serve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, xlogy

__all__ = [
    "Activation",
    "Loss",
    "Optimizer",
    "ACTIVATIONS",
    "LOSSES",
    "OPTIMIZERS",
    "activation",
    "loss",
    "optimizer",
]


@dataclass(frozen=True)
class Activation:
    """A hidden activation ``h = f(h~)``.

    ``df`` is its derivative written from the output, ``f'(h~) = df(h)``, so that
    backpropagation needs only the stored activations. ``torch`` names the
    ``torch.nn`` module. ``zero_at_zero`` says whether ``f(0) = 0``; the kernels do
    not rely on it (the sparse path sets its padded units to zero after the
    activation), but a test does, for every row where it is False.
    """

    name: str
    code: int
    f: Callable[[np.ndarray], np.ndarray]
    df: Callable[[np.ndarray], np.ndarray]
    torch: str
    zero_at_zero: bool


def _relu(x):
    return np.maximum(x, 0)  # NaN stays NaN, as in torch


def _relu_grad(h):
    return (h > 0).astype(h.dtype)  # 0 at 0, as torch and scikit-learn take it


ACTIVATIONS = {
    a.name: a
    for a in (
        Activation("tanh", 0, np.tanh, lambda h: 1 - h * h, "Tanh", True),
        Activation("relu", 1, _relu, _relu_grad, "ReLU", True),
        Activation("logistic", 2, expit, lambda h: h * (1 - h), "Sigmoid", False),
        Activation("identity", 3, lambda x: x, np.ones_like, "Identity", True),
    )
}


def _log_softmax(Z):
    Zs = Z - Z.max(axis=1, keepdims=True)
    return Zs - np.log(np.exp(Zs).sum(axis=1, keepdims=True))


def _softmax(Z):
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def _one_hot(labels, n, dtype):
    Y = np.zeros((len(labels), n), dtype=dtype)
    Y[np.arange(len(labels)), labels] = 1
    return Y


def _ce_rows(Z, labels):
    return -_log_softmax(Z)[np.arange(len(labels)), labels]


def _ce_delta(Y_hat, labels):
    return Y_hat - _one_hot(labels, Y_hat.shape[1], Y_hat.dtype)


def _mse_rows(Z, labels):
    d = _softmax(Z) - _one_hot(labels, Z.shape[1], Z.dtype)
    return 0.5 * np.sum(d * d, axis=1)


def _mse_delta(Y_hat, labels):
    # J^T g with the softmax Jacobian J = diag(y^) - y^ y^T (symmetric), g = y^ - y
    g = Y_hat - _one_hot(labels, Y_hat.shape[1], Y_hat.dtype)
    return Y_hat * (g - np.sum(Y_hat * g, axis=1, keepdims=True))


def _argmax_correct(Z, labels):
    return (Z.argmax(axis=1) == labels).astype(np.float64)


def _bce_rows(Z, T):
    # -t log s(z) - (1 - t) log(1 - s(z)) = max(z, 0) - t z + log(1 + exp(-|z|)), stable
    return np.sum(np.maximum(Z, 0) - T * Z + np.log1p(np.exp(-np.abs(Z))), axis=1)


def _bce_correct(Z, T):
    # every output on the right side of 1/2: scikit-learn's subset accuracy
    return np.all((Z > 0) == (T > 0.5), axis=1).astype(np.float64)


def _squared_rows(Z, T):
    d = Z - T
    return 0.5 * np.sum(d * d, axis=1)


def _poisson_rows(Z, T):
    # half the Poisson deviance of the mean exp(z): t log(t / exp(z)) - t + exp(z)
    return np.sum(xlogy(T, T) - T * Z - T + np.exp(Z), axis=1)


def _no_correct(Z, T):
    return np.zeros(len(Z))


def _delta(Y_hat, T):
    return Y_hat - T


def _check_binary(T):
    if not np.all((T == 0) | (T == 1)):
        return "indicator targets of 0 and 1"
    return None


def _check_finite(T):
    if not np.all(np.isfinite(T)):
        return "finite target values"
    return None


def _check_counts(T):
    if not np.all(np.isfinite(T)) or np.any(T < 0):
        return "finite, non-negative target values"
    return None


@dataclass(frozen=True)
class Loss:
    """An output and its loss.

    ``output(Z)`` turns logits into the model's outputs ``y^``; ``rows(Z, y)``
    is each row's loss from the logits (computed stably); ``delta(Y_hat, y)`` is
    ``dl/dz`` per row; ``correct(Z, y)`` is 1.0 for each row predicted right, else
    0.0 (always 0.0 for a regression loss). ``targets`` says what ``y`` is:
    ``"labels"``, integer class labels (n,), or ``"values"``, a float matrix (n,
    n_out) of one column per output. ``classifies`` says whether the model
    predicts classes (labels, or 0/1 per output) and so has an accuracy.
    ``check(T)``, for value targets, says what the values must be when ``T`` is
    not that (None when it is). ``torch`` names the ``torch.nn`` module of the
    output, None for the identity.
    """

    name: str
    code: int
    output: Callable[[np.ndarray], np.ndarray]
    rows: Callable[[np.ndarray, np.ndarray], np.ndarray]
    delta: Callable[[np.ndarray, np.ndarray], np.ndarray]
    description: str
    targets: str = "labels"
    classifies: bool = True
    correct: Callable[[np.ndarray, np.ndarray], np.ndarray] = _argmax_correct
    check: Callable[[np.ndarray], str | None] | None = None
    torch: str | None = "Softmax"


LOSSES = {
    row.name: row
    for row in (
        Loss("ce", 0, _softmax, _ce_rows, _ce_delta, "softmax output, cross-entropy"),
        Loss("mse", 1, _softmax, _mse_rows, _mse_delta, "softmax output, squared error 0.5 |y^ - y|^2"),
        Loss(
            "bce",
            2,
            expit,
            _bce_rows,
            _delta,
            "logistic output per column, binary cross-entropy (two classes, multilabel)",
            "values",
            True,
            _bce_correct,
            _check_binary,
            "Sigmoid",
        ),
        Loss(
            "squared_error",
            3,
            lambda Z: Z,
            _squared_rows,
            _delta,
            "identity output, squared error 0.5 |y^ - y|^2 (regression)",
            "values",
            False,
            _no_correct,
            _check_finite,
            None,
        ),
        Loss(
            "poisson",
            4,
            np.exp,
            _poisson_rows,
            _delta,
            "exp output, half Poisson deviance y log(y / y^) - y + y^ (counts)",
            "values",
            False,
            _no_correct,
            _check_counts,
            None,
        ),
    )
}


def _sgd_step(p, g, velocity, lr, momentum=0.0, nesterov=False, decay=0.0):
    """In place: ``torch.optim.SGD``'s step of ``p`` from its gradient ``g`` (dampening
    0): ``g' = g + decay p``; with momentum ``v = momentum v + g'`` and ``p -= lr v``
    (``lr (g' + momentum v)`` with Nesterov); without, ``p -= lr g'``."""
    if decay:
        g = g + decay * p
    if momentum:
        velocity *= momentum
        velocity += g
        g = g + momentum * velocity if nesterov else velocity
    p -= (lr * g).astype(p.dtype, copy=False)


def _adam_step(p, g, state, lr, beta1=0.9, beta2=0.999, eps=1e-8, decay=0.0, t=1, sklearn_eps=False):
    """In place: ``torch.optim.Adam``'s step ``t`` (1, 2, ...) of ``p`` from its gradient
    ``g``, ``state`` its moments ``(m, v)``: ``g' = g + decay p``, ``m += (1 - beta1)
    (g' - m)``, ``v = beta2 v + (1 - beta2) g'^2``, ``p -= lr / (1 - beta1^t) m /
    (sqrt(v) / sqrt(1 - beta2^t) + eps)``. With ``sklearn_eps``, scikit-learn's form:
    eps is added to ``sqrt(v)`` before the bias correction (``eps / sqrt(1 - beta2^t)``
    above)."""
    m, v = state
    if decay:
        g = g + decay * p
    m += (1 - beta1) * (g - m)
    v *= beta2
    v += (1 - beta2) * g * g
    bc2_sqrt = math.sqrt(1 - beta2**t)
    eps_t = eps / bc2_sqrt if sklearn_eps else eps
    p -= (lr / (1 - beta1**t) * (m / (np.sqrt(v) / bc2_sqrt + eps_t))).astype(p.dtype, copy=False)


def _adamw_step(p, g, state, lr, beta1=0.9, beta2=0.999, eps=1e-8, decay=0.0, t=1, sklearn_eps=False):
    """In place: ``torch.optim.AdamW``'s step: ``p *= 1 - lr decay`` (decoupled weight
    decay), then Adam's step without decay."""
    if decay:
        p *= 1 - lr * decay
    _adam_step(p, g, state, lr, beta1, beta2, eps, 0.0, t, sklearn_eps)


def _gradient_step(p, g, state, lr=0.0, decay=0.0, **_):
    """In place: no step. ``state`` (a block like ``p``) takes the gradient with its
    decay, ``g + decay p``, and ``p`` stays: the loss-and-gradient primitive of the
    full-batch optimizers (``fastmlp.train(optimizer="lbfgs")``)."""
    state[...] = g + decay * p if decay else g


@dataclass(frozen=True)
class Optimizer:
    """A step rule.

    ``step(p, g, state, lr, **settings)`` is the NumPy definition, in place on ``p``
    and its state (SGD: the velocity or None; Adam: the moments ``(m, v)``).
    ``state_blocks(settings)`` is how many blocks of the parameters' layout its state
    takes. ``linear`` says that the step is affine in the gradient (``p' = A(p,
    state) - c g``): the sparse path may then take every row's step without the
    gradient and add the gradient's part only to the rows the batch touched; a step
    that is not (Adam) moves every weight's state every step, from the batch's
    summed gradient. ``per_batch`` is False for a row that only the package's own
    drivers take (not a name ``fastmlp.train`` accepts).
    """

    name: str
    code: int
    step: Callable[..., None]
    state_blocks: Callable[[dict], int]
    linear: bool
    description: str = ""
    per_batch: bool = True


OPTIMIZERS = {
    row.name: row
    for row in (
        Optimizer("sgd", 0, _sgd_step, lambda s: 1 if s.get("momentum") else 0, True, "torch.optim.SGD"),
        Optimizer("adam", 1, _adam_step, lambda s: 2, False, "torch.optim.Adam (L2 decay in the gradient)"),
        Optimizer("adamw", 2, _adamw_step, lambda s: 2, False, "torch.optim.AdamW (decoupled weight decay)"),
        Optimizer("gradient", 3, _gradient_step, lambda s: 1, False, "the gradient into the state, no step", False),
    )
}


def _lookup(table, what, name):
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"{what} must be one of {tuple(table)}, got {name!r}") from None


def activation(name: str) -> Activation:
    """The row of ``ACTIVATIONS`` for ``name``; ValueError naming the choices otherwise."""
    return _lookup(ACTIVATIONS, "activation", name)


def loss(name: str) -> Loss:
    """The row of ``LOSSES`` for ``name``."""
    return _lookup(LOSSES, "loss", name)


def optimizer(name: str) -> Optimizer:
    """The row of ``OPTIMIZERS`` for ``name``."""
    return _lookup(OPTIMIZERS, "optimizer", name)
