"""Adam and AdamW as users know them (torch.optim.Adam / AdamW, scikit-learn's
solver="adam"), on every backend, path and depth, against the reference, PyTorch
and scikit-learn."""

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import ACTIVATIONS, BACKENDS, pairwise, random_problem, trains
from test_sgd import paths

import fastmlp
from fastmlp import backends
from fastmlp import reference as ref
from fastmlp._kernels import _np, epochs

OPTIMIZERS = ["adam", "adamw"]


def _moments(params):
    return {k: np.zeros_like(v) for k, v in params.items()}, {k: np.zeros_like(v) for k, v in params.items()}


# ---- against torch.optim.Adam and AdamW: 300 steps from the same weights ----


@pairwise(trains, kernel=paths(), optimizer=OPTIMIZERS, activation=ACTIVATIONS, hidden=[16, (16, 12)])
def test_300_steps_equal_torch_optim_adam(kernel, optimizer, activation, hidden):
    """Every path (the reference's too) against torch.optim.Adam / AdamW with weight
    decay on the weights, through torch's autograd, for every activation, with one
    and two hidden layers: every weight's moments advance every step, also on the
    sparse path where most rows of the first layer see no input in a batch."""
    torch = pytest.importorskip("torch")
    backend, path, inputs = kernel
    X, y, p = random_problem(600, 20, hidden, 4, np.float64, seed=3, sparse=True)
    model = fastmlp.MLP(20, hidden, 4, dtype=np.float64, activation=activation)
    for k, value in p.items():
        model.params[k][...] = value
    seq = model.to_torch()
    weights = [m.weight for m in seq[0::2]]
    biases = [m.bias for m in seq[0::2]]
    cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
    opt = cls([{"params": weights, "weight_decay": 1e-2}, {"params": biases, "weight_decay": 0.0}], lr=0.01)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    for _ in range(5):  # 5 epochs x 60 batches of 10, in order
        for s in range(0, 600, 10):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(seq(Xt[s : s + 10]), yt[s : s + 10]).backward()
            opt.step()
    m, v = _moments(model.params)
    runner = epochs.EpochRunner(
        backends.kernels(backend),
        model.params,
        sp.csr_matrix(X) if inputs == "csr" else X,
        y,
        batch_size=10,
        path=path,
        activation=activation,
        velocity=m,
        second_moment=v,
    )
    step = epochs.Step(0.01, decay=1e-2, optimizer=optimizer)
    with epochs.blas_limits(True):
        for epoch in range(5):
            runner.epoch(np.arange(600), step._replace(steps=60 * epoch))
    rtol = 1e-6 if path == "sparse" else 1e-9
    expected = fastmlp.MLP.from_torch(seq)
    for k in model.params:
        np.testing.assert_allclose(model.params[k], expected.params[k], rtol=rtol, atol=rtol * 1e-3)
    # the moments too: torch's state of each parameter
    in_order = [q for pair in zip(weights, biases, strict=True) for q in pair]
    for k, param in zip(model.params, in_order, strict=True):
        state = opt.state[param]
        assert int(state["step"]) == 300
        np.testing.assert_allclose(v[k], state["exp_avg_sq"].detach().numpy(), rtol=1e-6, atol=1e-15)


def test_the_reference_takes_scikit_learns_adam_step_with_sklearn_eps():
    """scikit-learn adds eps to sqrt(v) before the bias correction; with sklearn_eps
    the reference's step is scikit-learn's AdamOptimizer's, step for step."""
    pytest.importorskip("sklearn")
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer

    rng = np.random.default_rng(0)
    params = {"W1": rng.normal(size=(5, 4)), "b1": rng.normal(size=5)}
    ours = {k: a.copy() for k, a in params.items()}
    theirs = [params["W1"].copy(), params["b1"].copy()]
    sk = AdamOptimizer(theirs, learning_rate_init=0.01, epsilon=1e-3)  # a large eps shows the form
    m, v = _moments(ours)
    for t in range(1, 40):
        grads = {"W1": rng.normal(size=(5, 4)) * 1e-2, "b1": rng.normal(size=5) * 1e-2}
        sk.update_params(theirs, [grads["W1"], grads["b1"]])
        ref.adam_step(ours, grads, 0.01, t, m, v, eps=1e-3, sklearn_eps=True)
    np.testing.assert_allclose(ours["W1"], theirs[0], rtol=1e-13)
    np.testing.assert_allclose(ours["b1"], theirs[1], rtol=1e-13)
    torch_form = {k: a.copy() for k, a in params.items()}
    m, v = _moments(torch_form)
    ref.adam_step(torch_form, grads, 0.01, 1, m, v, eps=1e-3)
    assert not np.allclose(torch_form["W1"], theirs[0])  # the two forms differ


# ---- every path against the reference ----


@pairwise(
    trains,
    kernel=paths(),
    dtype=[np.float32, np.float64],
    options=[("adam", 0.0, False), ("adam", 1e-2, True), ("adamw", 1e-2, False), ("adam", 0.3, True)],
    batch=[1, 7, 64, 200],
    activation=ACTIVATIONS,
    hidden=[70, (40, 24), (24, 20, 16)],
)
def test_adam_matches_the_reference(kernel, dtype, options, batch, activation, hidden):
    """Adam and AdamW, with decay (by the batch's weight sum: scikit-learn's alpha) and
    sample weights, on every path, both dtypes, one to three hidden layers: the
    reference's parameters and moments after two epochs."""
    (backend, path, inputs), (optimizer, decay, sklearn_form) = kernel, options
    X, y, p0 = random_problem(200, 30, hidden, 3, dtype, seed=4, sparse=True)
    w = np.random.default_rng(5).random(200).astype(dtype) * 3
    perm = np.random.default_rng(6).permutation(200)
    expected = {k: v.copy() for k, v in p0.items()}
    me, ve = _moments(p0)
    p = {k: v.copy() for k, v in p0.items()}
    m, v = _moments(p0)
    opt = epochs.Step(0.01, 0.0, decay, False, sklearn_form, optimizer, sklearn_eps=sklearn_form)
    runner = epochs.EpochRunner(
        backends.kernels(backend),
        p,
        sp.csr_matrix(X) if inputs == "csr" else X,
        y,
        batch_size=batch,
        path=path,
        n_threads=2,
        activation=activation,
        weights=w,
        velocity=m,
        second_moment=v,
    )
    codes = epochs.codes(activation, "ce")
    steps = 0
    for _ in range(2):
        at = opt._replace(steps=steps)
        r_loss, r_correct = _np.reference_epoch(expected, X, y, w, perm, batch, at, codes, me, ve)
        with epochs.blas_limits(True):
            k_loss, k_correct = runner.epoch(perm, at)
        steps += -(-200 // batch)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(k_loss, r_loss, **tol)
    np.testing.assert_allclose(k_correct, r_correct, rtol=1e-6)
    for k in p0:
        np.testing.assert_allclose(p[k], expected[k], **tol)
        np.testing.assert_allclose(m[k], me[k], **tol)
        np.testing.assert_allclose(v[k], ve[k], rtol=tol["rtol"], atol=tol["atol"] ** 2)


@pytest.mark.parametrize("backend", [b for b in ("cython", "numba") if b in BACKENDS])
@pytest.mark.parametrize("hidden,batch", [(150, 1), (150, 64), (150, 300), ((150, 40), 10), ((150, 40), 200)])
def test_adam_is_bitwise_the_same_for_every_thread_count(backend, hidden, batch):
    X, y, p0 = random_problem(300, 30, hidden, 3, np.float32, seed=8, sparse=True)
    results = []
    for n_threads in (1, 2, 3):
        p = {k: v.copy() for k, v in p0.items()}
        m, v = _moments(p)
        runner = epochs.EpochRunner(
            backends.kernels(backend), p, sp.csr_matrix(X), y, batch_size=batch, path="sparse",
            n_threads=n_threads, activation="relu", velocity=m, second_moment=v,
        )  # fmt: skip
        loss = runner.epoch(np.random.default_rng(0).permutation(300), epochs.Step(0.01, optimizer="adam"))
        results.append((p, m, v, loss))
    for p, m, v, loss in results[1:]:
        assert loss == results[0][3]
        for k in p0:
            for a, b in zip((p, m, v), results[0][:3], strict=True):
                np.testing.assert_array_equal(a[k], b[k])


def test_a_runner_refuses_a_step_whose_state_it_lacks():
    kern = backends.kernels(BACKENDS[-1])
    X, y, p = random_problem(20, 5, 8, 3, np.float64)
    before = {k: a.copy() for k, a in p.items()}
    m, _ = _moments(p)
    runner = epochs.EpochRunner(kern, p, X, y, batch_size=4, path=kern.PATHS[0], velocity=m)
    with pytest.raises(ValueError, match="keeps 2 blocks of state; the runner has 1"):
        runner.epoch(np.arange(20), epochs.Step(0.1, optimizer="adam"))
    with pytest.raises(ValueError, match="second_moment needs the first moments"):
        epochs.EpochRunner(kern, p, X, y, batch_size=4, second_moment=m)
    for k in p:
        np.testing.assert_array_equal(p[k], before[k])


# ---- fastmlp.train(optimizer=...) ----


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_with_adam_learns_the_circles(backend):
    X, y = fastmlp.datasets.circles(1000, noise=0.1, seed=0)
    X_test, y_test = fastmlp.datasets.circles(1000, noise=0.1, seed=1)
    model = fastmlp.MLP(2, 16, 2, activation="relu", seed=0)
    history = fastmlp.train(
        model, X, y, epochs=20, batch_size=32, lr=0.01, optimizer="adam", backend=backend,
        validation_data=(X_test, y_test),
    )  # fmt: skip
    assert history.val_accuracy[-1] > 0.95


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("hidden", [16, (16, 8)])
def test_a_resumed_adam_run_ends_with_the_uninterrupted_runs_parameters(tmp_path, optimizer, hidden):
    """The checkpoint keeps both moments and the step count (the bias corrections
    depend on it): 3 epochs, then 3 more from the checkpoint, bitwise the 6."""
    X, y = fastmlp.datasets.circles(300, noise=0.1, seed=0)
    settings = dict(batch_size=16, lr=0.01, optimizer=optimizer, weight_decay=1e-3, beta1=0.8, beta2=0.99, eps=1e-7)
    straight = fastmlp.MLP(2, hidden, 2, seed=1)
    fastmlp.train(straight, X, y, epochs=6, **settings)
    resumed = fastmlp.MLP(2, hidden, 2, seed=1)
    fastmlp.train(resumed, X, y, epochs=3, checkpoint=tmp_path / "ck.npz", **settings)
    with np.load(tmp_path / "ck.npz") as data:
        assert int(data["steps_done"]) == 3 * 19
        assert {k for k in data.files if k.startswith("second_moment_")}
    fastmlp.train(resumed, X, y, epochs=6, resume=tmp_path / "ck.npz", **settings)
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])
    with pytest.raises(ValueError, match="optimizer 'adam.*'sgd'|optimizer 'adamw'.*'sgd'"):
        fastmlp.train(fastmlp.MLP(2, hidden, 2, seed=1), X, y, epochs=7, resume=tmp_path / "ck.npz",
                      **{**settings, "optimizer": "sgd"})  # fmt: skip


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(optimizer="rmsprop"), r"optimizer must be one of \('sgd', 'adam', 'adamw', 'lbfgs'\), got str 'rmsprop'"),
        (dict(optimizer="adam", momentum=0.9), "momentum is a setting of optimizer='sgd'"),
        (dict(optimizer="adam", beta1=1.0), r"beta1 must be a number in \[0, 1\)"),
        (dict(optimizer="adam", beta2=-0.1), r"beta2 must be a number in \[0, 1\)"),
        (dict(optimizer="adam", eps=0.0), "eps must be"),
    ],
)
def test_bad_adam_settings_are_named_before_any_work(kwargs, message):
    X, y = fastmlp.datasets.circles(50, seed=0)
    model = fastmlp.MLP(2, 8, 2, seed=0)
    before = {k: a.copy() for k, a in model.params.items()}
    with pytest.raises(ValueError, match=message):
        fastmlp.train(model, X, y, epochs=1, **kwargs)
    for k in before:
        np.testing.assert_array_equal(model.params[k], before[k])
