"""L-BFGS as scikit-learn's solver="lbfgs" runs it: the compiled full-batch
loss-and-gradient primitive (the step "gradient") on every backend, path, depth
and dtype against the reference's objective, the objective against finite
differences and torch autograd, ``train(optimizer="lbfgs")`` and the estimator
against scikit-learn's."""

import warnings

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp
from helpers import ACTIVATIONS, BACKENDS, pairwise, random_problem, trains
from test_sgd import paths

import fastmlp
from fastmlp import _full_batch, backends
from fastmlp import reference as ref
from fastmlp._kernels import epochs


def _gradient(backend, path, X, y, p, activation, weights=None, decay=0.0, n_threads=2):
    """(loss sum, correct, gradient by name) of the primitive: one batch of every row
    with the step "gradient"; the parameters must stay as they were."""
    before = {k: v.copy() for k, v in p.items()}
    g = {k: np.full_like(v, np.nan) for k, v in p.items()}  # every element must be written
    runner = epochs.EpochRunner(
        backends.kernels(backend), p, X, y, batch_size=X.shape[0], path=path, n_threads=n_threads,
        activation=activation, weights=weights, velocity=g, summed=True,
    )  # fmt: skip
    step = epochs.Step(0.0, decay=decay, decay_by_weight_sum=True, optimizer="gradient")
    with epochs.blas_limits(True):
        loss_sum, correct = runner.epoch(np.arange(X.shape[0]), step)
    for k in p:
        np.testing.assert_array_equal(p[k], before[k])
    return loss_sum, correct, g


# ---- the primitive against the reference's objective ----


@pairwise(
    trains,
    kernel=paths(),
    dtype=[np.float32, np.float64],
    activation=ACTIVATIONS,
    hidden=[70, (40, 24), (24, 20, 16)],
    weighted=[False, True],
    alpha=[0.0, 0.3],
)
def test_the_gradient_primitive_equals_the_reference_objective(kernel, dtype, activation, hidden, weighted, alpha):
    """The primitive's loss and gradient are the reference objective's (scikit-learn's
    lbfgs objective, L2 term by the weight sum) to 1e-12 in float64, on every path,
    one to three hidden layers, with sample weights; the parameters are untouched."""
    backend, path, inputs = kernel
    X, y, p = random_problem(300, 30, hidden, 3, dtype, seed=11, sparse=True)
    w = np.random.default_rng(12).random(300).astype(dtype) * 3 if weighted else None
    expected_f, expected_g = ref.objective(p, X, y, alpha=alpha, weights=w, activation=activation)
    Xin = sp.csr_matrix(X) if inputs == "csr" else X
    loss_sum, _, g = _gradient(backend, path, Xin, y, {k: v.copy() for k, v in p.items()}, activation, w, alpha)
    total = 300 if w is None else float(w.sum())
    f = loss_sum / total + 0.5 * alpha / total * sum(float(np.vdot(v, v)) for k, v in p.items() if ref.is_weight(k))
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(f, expected_f, **tol)
    for k in p:
        np.testing.assert_allclose(g[k], expected_g[k], **tol)


@pytest.mark.parametrize("backend", [b for b in ("cython", "numba") if b in BACKENDS])
@pytest.mark.parametrize("hidden", [150, (150, 40)])
def test_the_gradient_primitive_is_bitwise_the_same_for_every_thread_count(backend, hidden):
    X, y, p = random_problem(500, 40, hidden, 3, np.float32, seed=13, sparse=True)
    results = [
        _gradient(backend, "sparse", sp.csr_matrix(X), y, {k: v.copy() for k, v in p.items()}, "relu", None, 0.1, n)
        for n in (1, 2, 3)
    ]
    for loss_sum, correct, g in results[1:]:
        assert (loss_sum, correct) == results[0][:2]
        for k in p:
            np.testing.assert_array_equal(g[k], results[0][2][k])


# ---- the reference's objective against finite differences and autograd ----


@pytest.mark.parametrize("hidden", [7, (6, 5), (5, 4, 3)])
@pytest.mark.parametrize("activation", ["tanh", "logistic", "identity"])
def test_the_objective_gradient_equals_central_differences(hidden, activation):
    X, y, p = random_problem(40, 6, hidden, 3, np.float64, seed=14)
    w = np.random.default_rng(15).random(40) * 2
    _, g = ref.objective(p, X, y, alpha=0.7, weights=w, activation=activation)
    h = 1e-6
    for k, v in p.items():
        for i in np.random.default_rng(16).choice(v.size, size=min(6, v.size), replace=False):
            saved = v.flat[i]
            v.flat[i] = saved + h
            up = ref.objective(p, X, y, alpha=0.7, weights=w, activation=activation)[0]
            v.flat[i] = saved - h
            down = ref.objective(p, X, y, alpha=0.7, weights=w, activation=activation)[0]
            v.flat[i] = saved
            assert abs((up - down) / (2 * h) - g[k].flat[i]) <= 1e-7 * max(1.0, abs(g[k].flat[i]))


@pytest.mark.parametrize("hidden", [16, (16, 12)])
def test_the_objective_equals_torch_autograd(hidden):
    """scikit-learn's objective written in torch: the weighted mean cross-entropy plus
    alpha / 2 * sum W**2 / sum(w); value and gradient through autograd."""
    torch = pytest.importorskip("torch")
    X, y, p = random_problem(100, 10, hidden, 4, np.float64, seed=17)
    w = np.random.default_rng(18).random(100) * 2
    model = fastmlp.MLP(10, hidden, 4, dtype=np.float64, activation="relu")
    for k, value in p.items():
        model.params[k][...] = value
    seq = model.to_torch()
    wt = torch.from_numpy(w)
    rows = torch.nn.functional.cross_entropy(
        seq(torch.from_numpy(X)), torch.from_numpy(y.astype(np.int64)), reduction="none"
    )
    l2 = sum((m.weight**2).sum() for m in seq[0::2])
    f = (wt * rows).sum() / wt.sum() + 0.5 * 0.3 * l2 / wt.sum()
    f.backward()
    value, g = ref.objective(p, X, y, alpha=0.3, weights=w, activation="relu")
    np.testing.assert_allclose(value, f.item(), rtol=1e-13)
    params = [q for m in seq[0::2] for q in (m.weight, m.bias)]
    for k, q in zip(p, params, strict=True):
        np.testing.assert_allclose(g[k], q.grad.numpy(), rtol=1e-12, atol=1e-16)


# ---- train(optimizer="lbfgs") ----


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_lbfgs_takes_the_iterates_of_l_bfgs_b_on_the_reference_objective(backend):
    """15 iterations from the same float64 weights: scipy's L-BFGS-B over the
    reference's objective and over the kernels' reach the same weights."""
    X, y, p = random_problem(400, 12, (16, 8), 3, np.float64, seed=19, sparse=True)
    model = fastmlp.MLP(12, (16, 8), 3, dtype=np.float64, activation="tanh")
    for k, value in p.items():
        model.params[k][...] = value
    names = list(p)

    def fun(x):
        q = {}
        at = 0
        for k in names:
            q[k] = x[at : at + p[k].size].reshape(p[k].shape)
            at += p[k].size
        # train's weight_decay is the L2 coefficient itself; the objective's alpha is divided by n
        f, g = ref.objective(q, X, y, alpha=1e-2 * 400, activation="tanh")
        return f, np.concatenate([g[k].ravel() for k in names])

    x0 = np.concatenate([p[k].ravel() for k in names])
    expected = scipy.optimize.minimize(fun, x0, method="L-BFGS-B", jac=True, options=dict(maxiter=15, gtol=0))
    history = fastmlp.train(model, X, y, epochs=15, optimizer="lbfgs", weight_decay=1e-2, tol=0, backend=backend)
    assert history.epochs == 15 and history.evaluations >= 15 and "ITERATIONS" in history.message
    got = np.concatenate([model.params[k].ravel() for k in names])
    np.testing.assert_allclose(got, expected.x, rtol=1e-6, atol=1e-8)
    # each entry is measured at its iterate: the last one is the final model's
    loss, accuracy = fastmlp.evaluate(model, X, y)
    np.testing.assert_allclose(history.loss[-1], loss, rtol=1e-10)
    assert history.accuracy[-1] == pytest.approx(accuracy)


def test_train_lbfgs_learns_the_circles_and_records_every_iteration():
    X, y = fastmlp.datasets.circles(1000, noise=0.1, seed=0)
    X_test, y_test = fastmlp.datasets.circles(1000, noise=0.1, seed=1)
    model = fastmlp.MLP(2, 10, 2, seed=0)
    history = fastmlp.train(model, X, y, epochs=60, optimizer="lbfgs", validation_data=(X_test, y_test))
    assert history.epochs == len(history.val_loss) == len(history.seconds) == 60
    assert history.val_accuracy[-1] > 0.95
    assert history.loss[-1] < history.loss[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(checkpoint="ckpt.npz"), "checkpoint is not available with optimizer='lbfgs'"),
        (dict(resume="ckpt.npz"), "resume is not available with optimizer='lbfgs'"),
        (dict(momentum=0.9), "momentum is a setting of optimizer='sgd'; 'lbfgs' has no momentum"),
        (dict(max_fun=0), "max_fun must be"),
        (dict(tol=-1.0), "tol must be"),
    ],
)
def test_train_lbfgs_refuses_what_does_not_apply_before_any_work(kwargs, match):
    X, y = fastmlp.datasets.circles(50, seed=0)
    model = fastmlp.MLP(2, 4, 2, seed=0)
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(ValueError, match=match):
        fastmlp.train(model, X, y, epochs=3, optimizer="lbfgs", **kwargs)
    for k in before:
        np.testing.assert_array_equal(model.params[k], before[k])


def test_an_interrupted_lbfgs_leaves_the_model_at_its_last_iterate():
    X, y, p = random_problem(200, 8, 10, 3, np.float64, seed=20)
    g = {k: np.zeros_like(v) for k, v in p.items()}
    kern = backends.kernels(BACKENDS[-1])
    runner = epochs.EpochRunner(kern, p, X, y, batch_size=200, path=kern.PATHS[0], velocity=g, summed=True)
    objective = _full_batch.Objective(runner, p, g, epochs.Step(0.0, optimizer="gradient"), 200)
    seen = []

    def on_iteration(fun):
        seen.append({k: v.copy() for k, v in p.items()})
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _full_batch.minimize(objective, 50, 1000, 0.0, on_iteration)
    for k in p:
        np.testing.assert_array_equal(p[k], seen[-1][k])


# ---- the scikit-learn estimator ----


def test_sklearn_lbfgs_reaches_scikit_learns_iterates_and_accuracy_on_digits():
    """The same initial weights (scikit-learn's draws) and the same objective: the
    same number of iterations, the same final loss and the same accuracy as
    scikit-learn's solver="lbfgs" on load_digits (float64)."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier as Reference

    from fastmlp.sklearn import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16, y, random_state=0, stratify=y)
    ours = MLPClassifier(solver="lbfgs", random_state=1).fit(X_train, y_train)
    theirs = Reference(solver="lbfgs", random_state=1).fit(X_train, y_train)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-5)
    assert abs(ours.score(X_test, y_test) - theirs.score(X_test, y_test)) <= 0.01
    assert not hasattr(ours, "partial_fit")


def test_sklearn_lbfgs_warns_where_it_stops_at_max_iter():
    pytest.importorskip("sklearn")
    from sklearn.exceptions import ConvergenceWarning

    from fastmlp.sklearn import MLPClassifier

    X, y = fastmlp.datasets.circles(300, seed=0)
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge after 3 iteration"):
        clf = MLPClassifier(solver="lbfgs", max_iter=3, random_state=0).fit(X, y)
    assert clf.n_iter_ == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        MLPClassifier(solver="lbfgs", max_iter=500, random_state=0).fit(X, y)
