"""The kernel primitives (see ``fastmlp._kernels``) implemented with ``fastmlp.reference``.

This is the "numpy" backend: the reference loop, the baseline of every benchmark.
Its one epoch path is the reference's ``train_epoch``, GEMMs through NumPy, on
dense arrays or scipy.sparse matrices alike. The codes the primitives take are
those of ``fastmlp.tables``; any other raises ValueError.
"""

import numpy as np

from .. import reference as ref
from .. import tables

PATHS = ("reference",)
THREADED_PATHS = ()
DEEP_PATHS = ("reference",)  # any number of hidden layers
SPARSE_CHUNK_ROWS = 0  # no sparse path
_ACTIVATIONS = {row.code: name for name, row in tables.ACTIVATIONS.items()}
_LOSSES = {row.code: name for name, row in tables.LOSSES.items()}
ACTIVATION_CODES, LOSS_CODES = frozenset(_ACTIVATIONS), frozenset(_LOSSES)
OPTIMIZER_CODES = frozenset(row.code for row in tables.OPTIMIZERS.values())


def _name(table, what, code):
    try:
        return table[code]
    except KeyError:
        raise ValueError(f"unknown {what} code {code!r}; known: {table}") from None


def activation(x, act):
    return tables.ACTIVATIONS[_name(_ACTIVATIONS, "activation", act)].f(x)


def forward_hidden(X, Wh, bh, act):
    return ref.hidden_layer(X, Wh, bh, _name(_ACTIVATIONS, "activation", act))


forward_logits = ref.output_layer


def loss_grad(Z, labels, loss):
    name = _name(_LOSSES, "loss", loss)
    Y_hat = tables.LOSSES[name].output(Z)
    mean_loss, accuracy = ref.loss_accuracy(Y_hat, labels, name, logits=Z)
    dZ = ref.output_delta(Y_hat, labels, name) / len(Z)
    return dZ, mean_loss * len(Z), round(accuracy * len(Z))


def backward_update(X, H, dZ, P, lr, act):
    dH = ref.hidden_delta(P.Wy, H, dZ, _name(_ACTIVATIONS, "activation", act))
    ref.sgd_step(P._asdict(), ref.param_grads(X, H, dZ, dH), lr)
    return dH


def reference_epoch(P, X, labels, weights, order, batch, opt, codes, velocity=None, second_moment=None):
    params = P if isinstance(P, dict) else P._asdict()
    activation_name = _name(_ACTIVATIONS, "activation", codes.act)
    loss_name = _name(_LOSSES, "loss", codes.loss)
    # overflow is reported by the caller's divergence check, as for the compiled kernels
    with np.errstate(over="ignore", invalid="ignore"):
        return ref.train_epoch(
            params,
            X,
            labels,
            order,
            batch,
            opt.lr,
            loss_name,
            momentum=opt.momentum,
            nesterov=opt.nesterov,
            weight_decay=opt.decay,
            velocity=velocity,
            weights=weights,
            decay_by_weight_sum=opt.decay_by_weight_sum,
            activation=activation_name,
            optimizer=opt.optimizer,
            adam=opt.adam,
            second_moment=second_moment,
            steps=opt.steps,
        )
