"""The kernel contract (see ``fastmlp._kernels``) implemented with ``fastmlp.reference``.

This is the "numpy" backend: the reference loop, the baseline of every benchmark.
"""

import numpy as np

from .. import reference as ref

PATHS = ("auto",)


def tanh(x):
    return np.tanh(x)


forward_hidden = ref.hidden_layer
forward_logits = ref.output_layer


def loss_grad(Z, labels, loss="ce"):
    Y_hat = ref.softmax(Z)
    mean_loss, accuracy = ref.loss_accuracy(Y_hat, labels, loss, logits=Z)
    dZ = ref.output_delta(Y_hat, labels, loss) / len(Z)
    return dZ, mean_loss * len(Z), round(accuracy * len(Z))


def backward_update(X, H, dZ, Wh, bh, Wy, by, lr):
    dH = ref.hidden_delta(Wy, H, dZ)
    ref.sgd_step({"Wh": Wh, "bh": bh, "Wy": Wy, "by": by}, ref.param_grads(X, H, dZ, dH), lr)
    return dH


def train_epoch(X, labels, perm, Wh, bh, Wy, by, lr, batch_size, loss="ce", path="auto"):
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    params = {"Wh": Wh, "bh": bh, "Wy": Wy, "by": by}
    # overflow is reported by the caller's divergence check, as for the compiled kernels
    with np.errstate(over="ignore", invalid="ignore"):
        return ref.train_epoch(params, X, labels, perm, batch_size, lr, loss)
