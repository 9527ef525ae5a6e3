"""The kernel primitives (see ``fastmlp._kernels``) implemented with ``fastmlp.reference``.

This is the "numpy" backend: the reference loop, the baseline of every benchmark.
Its one epoch path is the reference's ``train_epoch``, GEMMs through NumPy, on
dense arrays or scipy.sparse matrices alike.
"""

import numpy as np

from .. import reference as ref
from .epochs import LOSS_CODES

PATHS = ("reference",)
THREADED_PATHS = ()
SPARSE_CHUNK_ROWS = 0  # no sparse path
_LOSS_NAMES = {code: name for name, code in LOSS_CODES.items()}


def _loss_name(code):
    try:
        return _LOSS_NAMES[code]
    except KeyError:
        raise ValueError(f"unknown loss code {code!r}; known: {_LOSS_NAMES}") from None


def tanh(x):
    return np.tanh(x)


forward_hidden = ref.hidden_layer
forward_logits = ref.output_layer


def loss_grad(Z, labels, loss):
    Y_hat = ref.softmax(Z)
    mean_loss, accuracy = ref.loss_accuracy(Y_hat, labels, _loss_name(loss), logits=Z)
    dZ = ref.output_delta(Y_hat, labels, _loss_name(loss)) / len(Z)
    return dZ, mean_loss * len(Z), round(accuracy * len(Z))


def backward_update(X, H, dZ, P, lr):
    dH = ref.hidden_delta(P.Wy, H, dZ)
    ref.sgd_step(P._asdict(), ref.param_grads(X, H, dZ, dH), lr)
    return dH


def reference_epoch(P, X, labels, weights, order, batch, opt, loss, velocity=None):
    name = _loss_name(loss)
    # overflow is reported by the caller's divergence check, as for the compiled kernels
    with np.errstate(over="ignore", invalid="ignore"):
        return ref.train_epoch(
            P._asdict(),
            X,
            labels,
            order,
            batch,
            opt.lr,
            name,
            momentum=opt.momentum,
            nesterov=opt.nesterov,
            weight_decay=opt.decay,
            velocity=velocity,
            weights=weights,
            decay_by_weight_sum=opt.decay_by_weight_sum,
        )
