"""The NumPy reference against finite differences and against the math."""

import numpy as np
import pytest
from helpers import ACTIVATIONS, LOSSES, random_problem

import fastmlp
from fastmlp import reference as ref


def _loss(params, X, y, loss, activation="tanh"):
    out = ref.forward(params, X, activation, loss)
    return ref.loss_accuracy(out.Y_hat, y, loss, logits=out.Z)[0]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize(
    "shape", [(7, 5, 4, 3), (1, 1, 1, 2), (12, 3, 8, 2), (7, 5, (4, 6), 3), (6, 4, (5, 3, 4), 3)], ids=str
)
def test_backward_matches_central_differences(loss, shape, activation):
    """One, two and three hidden layers: every gradient against central differences."""
    n, n_in, nh, n_out = shape
    X, y, params = random_problem(n, n_in, nh, n_out, np.float64, seed=3, loss=loss, init="normal")
    # no pre-activation within the steps of a kink (relu at 0): the derivative is one-sided there
    H = X
    for W, b in ref.layers(params)[:-1]:
        assert np.abs(H @ W.T + b).min() > 1e-4
        H = ref.hidden_layer(H, W, b, activation)
    grads = ref.backward(params, ref.forward(params, X, activation, loss), y, loss, activation=activation)
    assert grads.keys() == params.keys()
    eps = 1e-6
    for name in params:
        p = params[name]
        numeric = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            up = _loss(params, X, y, loss, activation)
            p[i] = old - eps
            down = _loss(params, X, y, loss, activation)
            p[i] = old
            numeric[i] = (up - down) / (2 * eps)
        rel = np.linalg.norm(grads[name] - numeric) / max(np.linalg.norm(grads[name] + numeric), 1e-300)
        assert rel < 1e-6, (name, rel)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_float32_backward_agrees_with_float64(loss, activation):
    X, y, p64 = random_problem(20, 6, 5, 3, np.float64, seed=4, loss=loss)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    g64 = ref.backward(p64, ref.forward(p64, X, activation), y, loss, activation=activation)
    g32 = ref.backward(p32, ref.forward(p32, X.astype(np.float32), activation), y, loss, activation=activation)
    for name in ref.PARAM_NAMES:
        assert g32[name].dtype == np.float32
        np.testing.assert_allclose(g32[name], g64[name], rtol=1e-4, atol=1e-6)


def test_softmax_and_log_softmax_are_stable_for_huge_logits():
    Z = np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]])
    P = ref.softmax(Z)
    assert np.isfinite(P).all()
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    np.testing.assert_allclose(P[1], 1 / 3)
    L = ref.log_softmax(Z)
    np.testing.assert_allclose(L[0], [0.0, -1000.0, -2000.0])
    loss, acc = ref.loss_accuracy(P, np.array([2, 0]), "ce", logits=Z)
    assert np.isclose(loss, (2000.0 + np.log(3)) / 2) and acc == 0.5


def test_ce_loss_is_log_sum_exp_minus_label_logit():
    Z = np.array([[1.0, 2.0, 3.0]])
    expected = np.log(np.exp(Z).sum()) - 2.0
    assert np.isclose(ref.loss_accuracy(ref.softmax(Z), np.array([1]), "ce")[0], expected)
    assert np.isclose(ref.loss_accuracy(ref.softmax(Z), np.array([1]), "ce", logits=Z)[0], expected)


def test_mse_loss_value():
    P = np.array([[0.2, 0.8], [0.6, 0.4]])
    loss, acc = ref.loss_accuracy(P, np.array([1, 1]), "mse")
    assert np.isclose(loss, (0.5 * (0.04 + 0.04) + 0.5 * (0.36 + 0.36)) / 2)
    assert acc == 0.5


def test_labels_and_one_hot_give_the_same_gradients():
    X, y, params = random_problem(9, 4, 3, 3, np.float64)
    out = ref.forward(params, X)
    for loss in ("ce", "mse"):
        g1 = ref.backward(params, out, y, loss)
        g2 = ref.backward(params, out, ref.one_hot(y, 3), loss)
        for name in ref.PARAM_NAMES:
            np.testing.assert_array_equal(g1[name], g2[name])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_init_shapes_dtypes_and_schemes(dtype):
    p = ref.init_params(784, 100, 10, "xavier", dtype, seed=0)
    assert {k: v.shape for k, v in p.items()} == {"Wh": (100, 784), "bh": (100,), "Wy": (10, 100), "by": (10,)}
    assert all(v.dtype == dtype and v.flags.c_contiguous for v in p.values())
    a = np.sqrt(6 / (784 + 100))
    assert np.abs(p["Wh"]).max() <= a and np.abs(p["Wh"]).max() > 0.9 * a
    assert not p["bh"].any() and not p["by"].any()
    q = ref.init_params(200, 300, 10, "normal", dtype, seed=0)
    for name in ("Wh", "Wy", "bh"):
        assert abs(q[name].std() - 0.3) < 0.03 and abs(q[name].mean()) < 0.06, name
    assert q["by"].all()


def test_sgd_step_is_p_minus_lr_grad_in_place():
    X, y, params = random_problem(5, 3, 4, 2, np.float64)
    before = {k: v.copy() for k, v in params.items()}
    ids = {k: id(v) for k, v in params.items()}
    grads = ref.backward(params, ref.forward(params, X), y)
    ref.sgd_step(params, grads, 0.5)
    for k in ref.PARAM_NAMES:
        assert id(params[k]) == ids[k]
        np.testing.assert_allclose(params[k], before[k] - 0.5 * grads[k])


def test_train_epoch_last_batch_averages_over_its_own_size():
    X, y, params = random_problem(7, 3, 4, 2, np.float64)
    manual = {k: v.copy() for k, v in params.items()}
    perm = np.arange(7)
    ref.train_epoch(params, X, y, perm, 5, 0.1)
    for idx in (slice(0, 5), slice(5, 7)):
        ref.sgd_step(manual, ref.backward(manual, ref.forward(manual, X[idx]), y[idx]), 0.1)
    for k in ref.PARAM_NAMES:
        np.testing.assert_allclose(params[k], manual[k], rtol=1e-14)


def _torch_rows(torch, Z, y, loss):
    """Each row's loss written with torch's own functions."""
    F = torch.nn.functional
    if loss == "ce":
        return F.cross_entropy(Z, y, reduction="none")
    if loss == "mse":
        return 0.5 * ((torch.softmax(Z, 1) - F.one_hot(y, Z.shape[1])) ** 2).sum(1)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(Z, y, reduction="none").sum(1)
    if loss == "squared_error":
        return 0.5 * F.mse_loss(Z, y, reduction="none").sum(1)
    # poisson_nll_loss(log_input) is exp(z) - t z: the deviance adds t log t - t
    return (F.poisson_nll_loss(Z, y, log_input=True, reduction="none") + torch.special.xlogy(y, y) - y).sum(1)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("hidden", [5, (5, 4)])
def test_every_loss_and_its_gradients_equal_torch_autograd(loss, hidden):
    """The loss of each row of the output table, its accuracy and the gradients of
    the weighted batch mean, against torch's own loss functions and autograd."""
    torch = pytest.importorskip("torch")
    X, y, p = random_problem(30, 6, hidden, 3, np.float64, seed=9, loss=loss)
    w = np.random.default_rng(3).random(30)
    model = fastmlp.MLP(6, hidden, 3, dtype=np.float64, activation="relu")
    for k, value in p.items():
        model.params[k][...] = value
    seq = model.to_torch()
    target = torch.from_numpy(y.astype(np.int64) if y.ndim == 1 else y)
    rows = _torch_rows(torch, seq(torch.from_numpy(X)), target, loss)
    wt = torch.from_numpy(w)
    ((wt * rows).sum() / wt.sum()).backward()
    out = ref.forward(p, X, "relu", loss)
    got_rows, correct = ref.row_losses(out, y, loss)
    np.testing.assert_allclose(got_rows, rows.detach().numpy(), rtol=1e-12)
    grads = ref.backward(p, out, y, loss, w, "relu")
    for k, q in zip(p, [q for m in seq[0::2] for q in (m.weight, m.bias)], strict=True):
        np.testing.assert_allclose(grads[k], q.grad.numpy(), rtol=1e-10, atol=1e-14)
    if fastmlp.tables.loss(loss).classifies:
        Z = out.Z
        expected = Z.argmax(1) == y if y.ndim == 1 else ((Z > 0) == (y > 0.5)).all(1)
        np.testing.assert_array_equal(correct, expected)
    else:
        assert not correct.any()
