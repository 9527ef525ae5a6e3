"""The network in plain NumPy: the oracle every compiled kernel is tested against.

Readable first, fast never. Per example (column vectors), with a mini-batch
averaging over its rows::

    h~ = Wh x + bh          h  = f(h~)        f: the hidden activation
    y~ = Wy h + by          y^ = softmax(y~)
    ce : l = -sum_i y_i log y^_i = log sum_j exp(y~_j) - y~_label
    mse: l = 0.5 * sum_i (y^_i - y_i)^2

With several hidden layers each one is ``h_k = f(W_k h_{k-1} + b_k)`` from
``h_0 = x``, and the output layer reads the last; the parameters are then named
by layer number, ``W1, b1, ..., W_{L+1}, b_{L+1}`` (``Wh, bh, Wy, by`` are
``W1, b1, W2, b2`` of one hidden layer). Backpropagation walks the layers back
once, reusing each layer's stored activations::

    d_{L+1} = dl/dy~                       dW_k = d_k^T h_{k-1},  db_k = sum d_k
    d_k     = (d_{k+1} W_{k+1}) * f'(h_k)

Arrays hold one example per row, so in batch form ``H = f(X Wh^T + bh)`` and
``Z = H Wy^T + by``. Shapes follow the out-by-in convention of
``torch.nn.Linear``: Wh (n_hidden, n_in), bh (n_hidden,), Wy (n_out, n_hidden),
by (n_out,). The activations, losses and the SGD step are the rows of
``fastmlp.tables``; the activation is "tanh" unless said otherwise.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from . import tables
from ._typing import Params

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "INITS",
    "PARAM_NAMES",
    "WEIGHT_NAMES",
    "Outputs",
    "layers",
    "param_names",
    "is_weight",
    "init_params",
    "log_softmax",
    "softmax",
    "one_hot",
    "as_labels",
    "as_targets",
    "hidden_layer",
    "output_layer",
    "forward",
    "loss_accuracy",
    "output_delta",
    "backward",
    "hidden_delta",
    "param_grads",
    "sgd_step",
    "adam_step",
    "objective",
    "train_epoch",
    "row_losses",
]

ACTIVATIONS = tuple(tables.ACTIVATIONS)
LOSSES = tuple(tables.LOSSES)
INITS = ("xavier", "normal")
PARAM_NAMES = ("Wh", "bh", "Wy", "by")
WEIGHT_NAMES = ("Wh", "Wy")  # the parameters weight decay applies to (not the biases)


def is_weight(name: str) -> bool:
    """Whether parameter ``name`` is a weight matrix (weight decay applies), not a bias."""
    return name[0] == "W"


class Outputs(NamedTuple):
    """Everything the forward pass computes that the backward pass needs."""

    X: np.ndarray  # (B, n_in) inputs
    H: np.ndarray  # (B, n_L) the last hidden layer's activations f(h~)
    Z: np.ndarray  # (B, n_out) logits y~
    Y_hat: np.ndarray  # (B, n_out) the loss's output of y~ (softmax for "ce" and "mse")
    hidden: tuple = ()  # every hidden layer's activations, first to last (H is the last)


def param_names(n_layers: int) -> tuple[str, ...]:
    """The parameters' names of a network of ``n_layers`` layers of weights, weights
    then biases per layer: ``("Wh", "bh", "Wy", "by")`` for two (one hidden layer),
    ``("W1", "b1", ..., "W{n}", "b{n}")`` for more."""
    if n_layers == 2:
        return ("Wh", "bh", "Wy", "by")
    return tuple(f"{p}{k}" for k in range(1, n_layers + 1) for p in "Wb")


def layers(params: Params) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(W_1, b_1), ..., (W_{L+1}, b_{L+1})]``: the layers of ``params`` in order,
    named ``Wh, bh, Wy, by`` (one hidden layer) or ``W1, b1, W2, b2, ...``."""
    if "Wh" in params:
        return [(params["Wh"], params["bh"]), (params["Wy"], params["by"])]
    out, k = [], 1
    while f"W{k}" in params:
        out.append((params[f"W{k}"], params[f"b{k}"]))
        k += 1
    if len(out) < 2:
        raise ValueError(f"params must hold Wh, bh, Wy, by or W1, b1, W2, b2, ...; got {sorted(params)}")
    return out


def init_params(
    n_in: int,
    n_hidden: int | tuple[int, ...],
    n_out: int,
    init: str = "xavier",
    dtype: npt.DTypeLike = np.float32,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Initial parameters ``{"Wh", "bh", "Wy", "by"}``; with ``n_hidden`` a tuple of
    several widths, ``{"W1", "b1", ..., "W_{L+1}", "b_{L+1}"}``, drawn layer by layer.

    ``init="xavier"``: W ~ U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) (Glorot &
    Bengio 2010, suited to tanh), biases zero.
    ``init="normal"``: every parameter, biases included, ~ N(0, 0.3^2) (the
    practical's scheme).

    The draws are made in float64 from ``np.random.default_rng(seed)`` and then cast,
    so float32 and float64 models with the same seed start from the same values.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    hidden = (n_hidden,) if np.ndim(n_hidden) == 0 else tuple(n_hidden)
    sizes = (n_in, *hidden, n_out)
    rng = np.random.default_rng(seed)
    values = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        if init == "xavier":
            a = np.sqrt(6.0 / (fan_in + fan_out))
            values += [rng.uniform(-a, a, size=(fan_out, fan_in)), np.zeros(fan_out)]
        else:
            values += [rng.normal(0.0, 0.3, size=(fan_out, fan_in)), rng.normal(0.0, 0.3, size=fan_out)]
    return {k: np.ascontiguousarray(v, dtype=dtype) for k, v in zip(param_names(len(sizes) - 1), values, strict=True)}


def log_softmax(Z: np.ndarray) -> np.ndarray:
    """log softmax(Z) per row, stable: Z - max - log sum exp(Z - max)."""
    return tables._log_softmax(Z)


def softmax(Z: np.ndarray) -> np.ndarray:
    """softmax(Z)_i = exp(Z_i - max Z) / sum_j exp(Z_j - max Z), per row."""
    return tables._softmax(Z)


def one_hot(labels: npt.ArrayLike, n_out: int, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
    """(B,) integer labels -> (B, n_out) rows with a single 1."""
    return tables._one_hot(labels, n_out, dtype)


def as_labels(y: npt.ArrayLike) -> np.ndarray:
    """Integer class labels from labels (B,) or one-hot rows (B, n_out)."""
    y = np.asarray(y)
    return y.argmax(axis=1) if y.ndim == 2 else y.astype(np.intp, copy=False)


def as_targets(y: npt.ArrayLike, loss: str = "ce") -> np.ndarray:
    """What ``loss`` compares the outputs with: integer labels (B,) for a loss over
    class labels (from labels or one-hot rows), else the target values as a
    matrix (B, n_out) (a vector is one column)."""
    if tables.loss(loss).targets == "labels":
        return as_labels(y)
    y = np.asarray(y)
    return y.reshape(len(y), -1)


def hidden_layer(X: np.ndarray, Wh: np.ndarray, bh: np.ndarray, activation: str = "tanh") -> np.ndarray:
    """``H = f(X Wh^T + bh)``, f the ``activation``."""
    return tables.activation(activation).f(X @ Wh.T + bh)


def output_layer(H: np.ndarray, Wy: np.ndarray, by: np.ndarray) -> np.ndarray:
    """Logits ``Z = H Wy^T + by``."""
    return H @ Wy.T + by


def forward(params: Params, X: np.ndarray, activation: str = "tanh", loss: str = "ce") -> Outputs:
    """Forward pass: ``H = f(X Wh^T + bh)``, ``Z = H Wy^T + by``, ``Y_hat`` the
    output of ``loss`` (``softmax(Z)`` for "ce" and "mse"); with several hidden
    layers ``H_k = f(H_{k-1} W_k^T + b_k)`` from ``H_0 = X``.

    Returns
    -------
    Outputs
        The named tuple ``(X, H, Z, Y_hat, hidden)``, what :func:`backward` needs.

    Examples
    --------
    >>> from fastmlp import reference as ref
    >>> params = ref.init_params(2, 3, 2, dtype=np.float64)
    >>> out = ref.forward(params, np.array([[0.5, -1.0]]))
    >>> out.H.shape, out.Y_hat.sum()
    ((1, 3), np.float64(1.0))
    >>> grads = ref.backward(params, out, np.array([1]))
    >>> sorted(grads), grads["Wh"].shape
    (['Wh', 'Wy', 'bh', 'by'], (3, 2))
    """
    *hidden_params, (Wy, by) = layers(params)
    hidden, H = [], X
    for W, b in hidden_params:
        H = hidden_layer(H, W, b, activation)
        hidden.append(H)
    Z = output_layer(H, Wy, by)
    return Outputs(X, H, Z, tables.loss(loss).output(Z), tuple(hidden))


def loss_accuracy(
    y_hat: np.ndarray, y: np.ndarray, loss: str = "ce", logits: np.ndarray | None = None
) -> tuple[float, float]:
    """Mean loss over the batch and the fraction of rows predicted right.

    ``"ce"``
        Mean of ``-log y^_label``, computed as ``logsumexp(Z) - Z_label`` when the
        logits are given (stable), else from ``y_hat`` clipped at the smallest
        normal number.
    ``"mse"``
        Mean of ``0.5 * sum_i (y^_i - y_i)^2``.
    ``"bce"``, ``"squared_error"``, ``"poisson"``
        Mean of the rows' losses (``tables.LOSSES``), from the logits, which these
        need.

    ``y`` is integer labels (B,) or one-hot (B, n_out) for "ce" and "mse" (ties in
    the argmax go to the lowest class index, as ``np.argmax`` does), else the target
    values (B, n_out). A row of "bce" is right when every output is on the side of
    1/2 of its target (subset accuracy); a regression loss has accuracy 0.
    """
    row = tables.loss(loss)
    t = as_targets(y, loss)
    if logits is None:
        if row.targets != "labels":
            raise ValueError(f"loss {loss!r} needs the logits")
        accuracy = float(np.mean(y_hat.argmax(axis=1) == t))
        if loss == "ce":
            nll = -np.log(np.maximum(y_hat[np.arange(len(t)), t], np.finfo(y_hat.dtype).tiny))
            return float(np.mean(nll)), accuracy
        diff = y_hat - one_hot(t, y_hat.shape[1], y_hat.dtype)
        return float(np.mean(0.5 * np.sum(diff * diff, axis=1))), accuracy
    return float(np.mean(row.rows(logits, t))), float(np.mean(row.correct(logits, t)))


def output_delta(y_hat: np.ndarray, y: np.ndarray, loss: str = "ce") -> np.ndarray:
    """dl/dy~ per example, the error signal that enters the output layer.

    ``"ce"``, ``"bce"``, ``"squared_error"``, ``"poisson"``
        ``y^ - y``: each is its output's canonical loss.
    ``"mse"``
        ``J^T (y^ - y)`` with the softmax Jacobian ``J = diag(y^) - y^ y^T``, which
        is symmetric, so ``y^ * (g - sum(y^ * g))`` with ``g = y^ - y``.
    """
    return tables.loss(loss).delta(y_hat, as_targets(y, loss)).astype(y_hat.dtype, copy=False)


def backward(
    params: Params,
    outputs: Outputs,
    y: np.ndarray,
    loss: str = "ce",
    weights: np.ndarray | None = None,
    activation: str = "tanh",
) -> dict[str, np.ndarray]:
    """Gradients of the batch-mean loss, by hand.

    ``dZ = dl/dy~ / B``; ``dWy = dZ^T H``, ``dby = sum_rows dZ``;
    ``dH~ = (dZ Wy) * f'(H)``; ``dWh = dH~^T X``, ``dbh = sum_rows dH~``, with
    f' the derivative of the ``activation`` written from its output (tanh: 1 - H*H).
    With several hidden layers the same two steps repeat down the layers, each
    from its stored activations (see the module docstring); the gradients carry
    the parameters' names. With sample ``weights`` the batch mean is weighted:
    row b's dl/dy~ is scaled by ``w_b / sum(w)`` instead of ``1 / B`` (no update
    where the weights sum to 0).
    """
    X, _, Z, _, hidden = outputs
    Y_hat = tables.loss(loss).output(Z)
    delta = output_delta(Y_hat, y, loss)
    if weights is None:
        d = delta / Y_hat.shape[0]
    else:
        total = weights.sum()
        d = delta * (weights / total if total > 0 else np.zeros_like(weights))[:, None].astype(delta.dtype)
    pairs = layers(params)
    inputs = (X, *hidden)  # what each layer reads
    grads = []
    for k in range(len(pairs) - 1, -1, -1):
        grads[:0] = [d.T @ inputs[k], d.sum(axis=0)]
        if k:
            d = hidden_delta(pairs[k][0], inputs[k], d, activation)
    return dict(zip(param_names(len(pairs)), grads, strict=True))


def hidden_delta(Wy: np.ndarray, H: np.ndarray, dZ: np.ndarray, activation: str = "tanh") -> np.ndarray:
    """``dH~ = (dZ Wy) * f'(H)``: the error at the hidden pre-activations, from the
    stored activations H (tanh: ``1 - H*H``)."""
    return (dZ @ Wy) * tables.activation(activation).df(H)


def param_grads(X: np.ndarray, H: np.ndarray, dZ: np.ndarray, dH: np.ndarray) -> dict[str, np.ndarray]:
    """The outer products ``dWh = dH~^T X``, ``dbh = sum dH~``, ``dWy = dZ^T H``, ``dby = sum dZ``."""
    return {
        "Wh": dH.T @ X,
        "bh": dH.sum(axis=0),
        "Wy": dZ.T @ H,
        "by": dZ.sum(axis=0),
    }


def sgd_step(
    params: dict[str, np.ndarray],
    grads: Params,
    lr: float,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    velocity: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """In place: one step of SGD as ``torch.optim.SGD`` takes it (dampening 0).

    ``g = grad + weight_decay * p`` for the weights (Wh and Wy, or every W_k), not
    the biases;
    without momentum ``p <- p - lr * g``; with it the velocity ``v <- momentum * v + g``
    (``velocity``, a dict of arrays like ``params``, starts at zero) and
    ``p <- p - lr * v``, or ``p <- p - lr * (g + momentum * v)`` with ``nesterov``.
    """
    step = tables.optimizer("sgd").step
    for name in params:
        decay = weight_decay if is_weight(name) else 0.0
        v = velocity[name] if momentum else None
        step(params[name], grads[name], v, lr, momentum=momentum, nesterov=nesterov, decay=decay)
    return params


def adam_step(
    params: dict[str, np.ndarray],
    grads: Params,
    lr: float,
    t: int,
    first_moment: dict[str, np.ndarray],
    second_moment: dict[str, np.ndarray],
    weight_decay: float = 0.0,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    decoupled: bool = False,
    sklearn_eps: bool = False,
) -> dict[str, np.ndarray]:
    """In place: step ``t`` (1, 2, ...) of Adam as ``torch.optim.Adam`` takes it, or
    ``torch.optim.AdamW`` with ``decoupled``; the moments (dicts of arrays like
    ``params``, starting at zero) advance for every parameter.

    ``weight_decay`` applies to the weights, not the biases: Adam adds
    ``weight_decay * p`` to their gradients, AdamW shrinks them by ``1 - lr *
    weight_decay`` first. ``sklearn_eps``: scikit-learn's form of the step, eps added
    to ``sqrt(v)`` before the bias correction (see ``tables._adam_step``).
    """
    step = tables.optimizer("adamw" if decoupled else "adam").step
    for name in params:
        decay = weight_decay if is_weight(name) else 0.0
        state = (first_moment[name], second_moment[name])
        step(params[name], grads[name], state, lr, beta1, beta2, eps, decay, t, sklearn_eps)
    return params


def objective(
    params: Params,
    X: np.ndarray,
    y: np.ndarray,
    loss: str = "ce",
    alpha: float = 0.0,
    weights: np.ndarray | None = None,
    activation: str = "tanh",
) -> tuple[float, dict[str, np.ndarray]]:
    """The full-batch objective and its gradient by name, as scikit-learn's
    ``solver="lbfgs"`` defines them: the (weighted) mean loss over X plus ``alpha /
    2 * sum of the squared weights / n`` (n the number of rows, or the weights'
    sum), whose gradient adds ``alpha / n * W`` to each weight's.
    ``fastmlp.train(optimizer="lbfgs")`` minimises it."""
    out = forward(params, X, activation, loss)
    row_loss, _ = row_losses(out, y, loss)
    total = float(len(row_loss) if weights is None else weights.sum())
    value = float(row_loss.sum() if weights is None else np.dot(weights, row_loss)) / total
    grads = backward(params, out, y, loss, weights, activation)
    for name, p in params.items():
        if is_weight(name) and alpha:
            value += 0.5 * alpha * float(np.vdot(p, p)) / total
            grads[name] = grads[name] + (alpha / total) * p
    return value, grads


def train_epoch(
    params: dict[str, np.ndarray],
    X: np.ndarray,
    labels: np.ndarray,
    perm: np.ndarray,
    batch_size: int,
    lr: float,
    loss: str = "ce",
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    velocity: dict[str, np.ndarray] | None = None,
    weights: np.ndarray | None = None,
    decay_by_weight_sum: bool = False,
    activation: str = "tanh",
    optimizer: str = "sgd",
    adam: dict | None = None,
    second_moment: dict[str, np.ndarray] | None = None,
    steps: int = 0,
) -> tuple[float, float]:
    """One epoch of mini-batch SGD (or Adam) over ``X[perm]``, in place.

    Returns ``(loss_sum, correct)``: the loss summed over the examples and the
    number of correct predictions, both measured in each batch's forward pass
    before its update (the running figures every backend reports); with sample
    ``weights`` (one per row of X) both are weighted sums and each batch's
    gradient the weighted mean. ``momentum``, ``nesterov``, ``weight_decay`` and
    ``velocity`` as in ``sgd_step``; with ``decay_by_weight_sum`` the decay of a
    batch is ``weight_decay / (sum of its weights)`` (scikit-learn's ``alpha``).
    X may be a scipy.sparse CSR matrix: the same arithmetic, through scipy's
    products. ``activation`` is the hidden activation (a name of ``ACTIVATIONS``).

    ``optimizer`` "adam" or "adamw" takes ``adam_step`` instead, with ``velocity``
    the first moments, ``second_moment`` the second, ``adam`` its other settings
    (``beta1``, ``beta2``, ``eps``, ``sklearn_eps``) and ``steps`` the steps taken
    before this epoch (batch i is step ``steps + i + 1``). "gradient" takes no step:
    ``velocity`` gets each batch's gradient (with its decay) and the parameters stay.
    """
    loss_sum, correct = 0.0, 0
    for start in range(0, len(perm), batch_size):
        idx = perm[start : start + batch_size]
        Xb, yb = X[idx], labels[idx]
        wb = None if weights is None else weights[idx]
        out = forward(params, Xb, activation, loss)
        if wb is None:
            batch_loss, batch_acc = loss_accuracy(out.Y_hat, yb, loss, logits=out.Z)
            loss_sum += batch_loss * len(idx)
            correct += round(batch_acc * len(idx))
        else:
            row_loss, row_correct = row_losses(out, yb, loss)
            loss_sum += float(np.dot(wb, row_loss))
            correct += float(np.dot(wb, row_correct))
        decay = weight_decay
        if decay_by_weight_sum and weight_decay:
            total = len(idx) if wb is None else float(wb.sum())
            decay = weight_decay / total if total > 0 else 0.0
        grads = backward(params, out, yb, loss, wb, activation)
        if optimizer == "sgd":
            sgd_step(params, grads, lr, momentum, nesterov, decay, velocity)
        elif optimizer == "gradient":
            step = tables.optimizer(optimizer).step
            for name in params:
                step(params[name], grads[name], velocity[name], decay=decay if is_weight(name) else 0.0)
        else:
            t = steps + start // batch_size + 1
            decoupled = tables.optimizer(optimizer).name == "adamw"
            adam_step(params, grads, lr, t, velocity, second_moment, decay, decoupled=decoupled, **(adam or {}))
    return loss_sum, correct


def row_losses(outputs: Outputs, y: np.ndarray, loss: str = "ce") -> tuple[np.ndarray, np.ndarray]:
    """(loss of each row, 1.0 where it is predicted right else 0.0): see ``loss_accuracy``."""
    row, t = tables.loss(loss), as_targets(y, loss)
    return row.rows(outputs.Z, t).astype(np.float64), row.correct(outputs.Z, t)
