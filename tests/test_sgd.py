"""SGD as users know it: momentum, Nesterov, weight decay, schedules, sample and class
weights, on every backend and path, against torch.optim.SGD and scikit-learn."""

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import ACTIVATIONS, BACKENDS, pairwise, random_problem, trains

import fastmlp
from fastmlp import backends, schedules
from fastmlp import reference as ref
from fastmlp._kernels import _np, epochs


def paths():
    """(backend, path, inputs) for every path of every backend, dense inputs, and
    CSR inputs on the sparse path."""
    out = []
    for b in BACKENDS:
        for path in backends.kernels(b).PATHS:
            out.append((b, path, "dense"))
            if path == "sparse":
                out.append((b, path, "csr"))
    return out


# ---- against torch.optim.SGD: 300 steps from the same weights ----


@pairwise(trains, kernel=paths(), nesterov=[False, True], activation=ACTIVATIONS, hidden=[16, (16, 12), (12, 10, 8)])
def test_300_steps_equal_torch_optim_sgd(kernel, nesterov, activation, hidden):
    """Every path (the reference's too) against torch.optim.SGD with momentum, Nesterov
    or not, and weight decay, through torch's autograd, for every activation, with
    one, two and three hidden layers."""
    torch = pytest.importorskip("torch")
    backend, path, inputs = kernel
    X, y, p = random_problem(600, 20, hidden, 4, np.float64, seed=3, sparse=True)
    model = fastmlp.MLP(20, hidden, 4, dtype=np.float64, activation=activation)
    for k, value in p.items():
        model.params[k][...] = value
    seq = model.to_torch()
    weights = [m.weight for m in seq[0::2]]
    biases = [m.bias for m in seq[0::2]]
    opt = torch.optim.SGD(
        [{"params": weights, "weight_decay": 1e-3}, {"params": biases, "weight_decay": 0.0}],
        lr=0.05,
        momentum=0.9,
        nesterov=nesterov,
    )
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    for _ in range(5):  # 5 epochs x 60 batches of 10, in order
        for s in range(0, 600, 10):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(seq(Xt[s : s + 10]), yt[s : s + 10]).backward()
            opt.step()
    Xin = sp.csr_matrix(X) if inputs == "csr" else X
    runner = epochs.EpochRunner(
        backends.kernels(backend),
        model.params,
        Xin,
        y,
        batch_size=10,
        path=path,
        activation=activation,
        velocity={k: np.zeros_like(v) for k, v in model.params.items()},
    )
    with epochs.blas_limits(True):
        for _ in range(5):
            runner.epoch(np.arange(600), epochs.Step(0.05, 0.9, 1e-3, nesterov))
    rtol = 1e-6 if path == "sparse" else 1e-9
    expected = fastmlp.MLP.from_torch(seq)
    assert model.params.keys() == expected.params.keys()
    for k in model.params:
        np.testing.assert_allclose(model.params[k], expected.params[k], rtol=rtol, atol=rtol * 1e-3)


# ---- every path against the reference ----


@pairwise(
    trains,
    kernel=paths(),
    dtype=[np.float32, np.float64],
    options=[(0.0, False, 1e-2, False), (0.9, False, 0.0, False), (0.9, True, 1e-3, False), (0.5, True, 0.3, True)],
    batch=[1, 7, 200],
    activation=ACTIVATIONS,
    hidden=[70, (40, 24), (24, 20, 16)],
)
def test_momentum_decay_and_weights_match_the_reference(kernel, dtype, options, batch, activation, hidden):
    (backend, path, inputs), (momentum, nesterov, decay, by_weights) = kernel, options
    X, y, p0 = random_problem(200, 30, hidden, 3, dtype, seed=4, sparse=True)
    w = np.random.default_rng(5).random(200).astype(dtype) * 3
    perm = np.random.default_rng(6).permutation(200)
    expected = {k: v.copy() for k, v in p0.items()}
    ve = {k: np.zeros_like(v) for k, v in p0.items()}
    p = {k: v.copy() for k, v in p0.items()}
    v = {k: np.zeros_like(a) for k, a in p0.items()} if momentum else None
    opt = epochs.Step(0.01, momentum, decay, nesterov, by_weights)
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
        velocity=v,
    )
    for _ in range(2):
        codes = epochs.codes(activation, "ce")
        r_loss, r_correct = _np.reference_epoch(expected, X, y, w, perm, batch, opt, codes, ve)
        with epochs.blas_limits(True):
            k_loss, k_correct = runner.epoch(perm, opt)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(k_loss, r_loss, **tol)
    np.testing.assert_allclose(k_correct, r_correct, rtol=1e-6)
    for k in p0:
        np.testing.assert_allclose(p[k], expected[k], **tol)
        if momentum:
            np.testing.assert_allclose(v[k], ve[k], **tol)


# ---- sample and class weights ----


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_integer_weight_in_full_batch_equals_repeating_the_row(backend):
    X, y, _ = random_problem(30, 6, 8, 3, np.float64, seed=7)
    k = np.random.default_rng(8).integers(0, 4, 30)  # zero drops a row
    repeated = fastmlp.MLP(6, 8, 3, dtype=np.float64, seed=1)
    weighted = repeated.copy()
    fastmlp.train(
        repeated,
        np.repeat(X, k, axis=0),
        np.repeat(y, k),
        epochs=5,
        batch_size=10**6,
        lr=0.3,
        backend=backend,
        momentum=0.5,
    )
    hist = fastmlp.train(
        weighted, X, y, epochs=5, batch_size=10**6, lr=0.3, backend=backend, momentum=0.5, sample_weight=k
    )
    for name in ref.PARAM_NAMES:
        np.testing.assert_allclose(weighted.params[name], repeated.params[name], rtol=1e-10, atol=1e-13)
    loss, acc = fastmlp.evaluate(weighted, X, y, sample_weight=k)
    assert (loss, acc) == pytest.approx(fastmlp.evaluate(weighted, np.repeat(X, k, axis=0), np.repeat(y, k)), rel=1e-12)
    assert len(hist.loss) == 5


def test_balanced_class_weight_is_n_over_classes_times_count():
    X, y, _ = random_problem(40, 5, 6, 3, np.float64, seed=9)
    y = np.where(np.arange(40) < 30, 0, y)  # class 0 dominates
    counts = np.bincount(y, minlength=3)
    sample_weight = (40 / (np.count_nonzero(counts) * counts))[y]
    a, b = fastmlp.MLP(5, 6, 3, dtype=np.float64), fastmlp.MLP(5, 6, 3, dtype=np.float64)
    fastmlp.train(a, X, y, epochs=3, batch_size=8, class_weight="balanced")
    fastmlp.train(b, X, y, epochs=3, batch_size=8, sample_weight=sample_weight)
    for name in ref.PARAM_NAMES:
        np.testing.assert_allclose(a.params[name], b.params[name], rtol=1e-12)
    c = fastmlp.MLP(5, 6, 3, dtype=np.float64)
    fastmlp.train(c, X, y, epochs=3, batch_size=8, class_weight={0: 0.5, 2: 3.0}, sample_weight=np.full(40, 2.0))
    d = fastmlp.MLP(5, 6, 3, dtype=np.float64)
    fastmlp.train(d, X, y, epochs=3, batch_size=8, sample_weight=2.0 * np.array([0.5, 1.0, 3.0])[y])
    for name in ref.PARAM_NAMES:
        np.testing.assert_allclose(c.params[name], d.params[name], rtol=1e-12)


# ---- schedules ----


def test_schedules_give_the_documented_rates():
    assert schedules.build("constant", 0.1, epochs=9, n_samples=50)(7) == 0.1
    inv = schedules.build("invscaling", 0.1, epochs=9, n_samples=50, power_t=0.5)
    assert inv(0) == 0.1 and inv(2) == pytest.approx(0.1 / 101**0.5)
    step = schedules.build("step", 1.0, epochs=9, n_samples=50)
    assert [step(e) for e in (0, 2, 3, 6, 8)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])
    cos = schedules.build("cosine", 1.0, epochs=10, n_samples=50)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0, abs=1e-15)


def test_a_schedule_sets_each_epochs_rate():
    X, y, _ = random_problem(50, 4, 5, 3, np.float64, seed=10)
    rates = [0.3, 0.1, 0.05]
    a = fastmlp.MLP(4, 5, 3, dtype=np.float64)
    fastmlp.train(a, X, y, epochs=3, batch_size=7, lr=1.0, lr_schedule=lambda e: rates[e], seed=2)
    b = fastmlp.MLP(4, 5, 3, dtype=np.float64)
    rng = np.random.default_rng(2)
    for lr in rates:
        epochs.train_epoch(backends.kernels("cython"), X, y, rng.permutation(50), b.params, lr, 7)
    for name in ref.PARAM_NAMES:
        np.testing.assert_array_equal(a.params[name], b.params[name])


def test_checkpoints_keep_the_momentum_and_resume_bitwise(tmp_path):
    X, y, _ = random_problem(300, 8, 12, 3, np.float32, seed=11)
    kw = dict(batch_size=16, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, lr_schedule="invscaling")
    whole = fastmlp.MLP(8, 12, 3, seed=0)
    fastmlp.train(whole, X, y, epochs=6, **kw)
    part = fastmlp.MLP(8, 12, 3, seed=0)
    path = tmp_path / "run.npz"
    fastmlp.train(part, X, y, epochs=6, checkpoint=path, **kw)  # to fill the checkpoint at 6 first
    saved = np.load(path)
    assert all(f"velocity_{k}" in saved for k in whole.network.numbered_names())
    part = fastmlp.MLP(8, 12, 3, seed=0)
    fastmlp.train(part, X, y, epochs=3, checkpoint=path, **kw)
    resumed = fastmlp.MLP(8, 12, 3, seed=5)
    fastmlp.train(resumed, X, y, epochs=6, resume=path, **kw)
    for name in ref.PARAM_NAMES:
        np.testing.assert_array_equal(resumed.params[name], whole.params[name])
    with pytest.raises(ValueError, match="momentum 0.9 vs 0.5"):
        fastmlp.train(fastmlp.MLP(8, 12, 3), X, y, epochs=6, resume=path, **dict(kw, momentum=0.5))


# ---- bad values, before any work ----

X_OK, Y_OK, _ = random_problem(20, 4, 5, 3, np.float64)
BAD = [
    (dict(momentum=-0.1), ValueError, "momentum must be a number in [0, 1)"),
    (dict(momentum=1.0), ValueError, "momentum must be a number in [0, 1)"),
    (dict(nesterov=True), ValueError, "nesterov=True needs momentum > 0"),
    (dict(weight_decay=-1e-3), ValueError, "weight_decay must be a non-negative finite number"),
    (dict(sample_weight=-np.ones(20)), ValueError, "sample_weight must be non-negative and finite"),
    (dict(sample_weight=np.ones(19)), ValueError, "sample_weight must have shape (20,)"),
    (dict(class_weight={5: 1.0}), ValueError, "class_weight names unknown classes [5]"),
    (dict(class_weight={0: -1.0}), ValueError, "class_weight[0] must be a non-negative number"),
    (dict(class_weight="even"), ValueError, 'class_weight must be a dict {class: weight} or "balanced"'),
    (dict(lr_schedule=lambda e: 0.0), ValueError, "lr_schedule returned 0.0 for epoch 0"),
    (dict(lr_schedule="linear"), ValueError, "lr_schedule must be one of"),
    (dict(power_t=-1), ValueError, "power_t must be a non-negative finite number"),
]


@pytest.mark.parametrize("kwargs,exc,message", BAD, ids=[m.split(" ")[0] + str(i) for i, (_, _, m) in enumerate(BAD)])
def test_bad_sgd_options_are_refused_before_any_work(kwargs, exc, message):
    model = fastmlp.MLP(4, 5, 3, seed=0)
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(exc) as info:
        fastmlp.train(model, X_OK, Y_OK, epochs=2, **kwargs)
    assert str(info.value).startswith(message), str(info.value)
    for k in ref.PARAM_NAMES:
        np.testing.assert_array_equal(model.params[k], before[k])


def test_a_schedule_that_turns_bad_later_stops_before_that_epoch():
    model = fastmlp.MLP(4, 5, 3, seed=0)
    with pytest.raises(ValueError, match="lr_schedule returned -0.1 for epoch 2"):
        fastmlp.train(model, X_OK, Y_OK, epochs=4, lr_schedule=lambda e: 0.1 if e < 2 else -0.1)


# ---- scikit-learn's MLPClassifier ----

SETTINGS = [
    dict(),
    dict(momentum=0.0),
    dict(nesterovs_momentum=False),
    dict(learning_rate="invscaling", learning_rate_init=0.05),
    dict(alpha=0.01),
    dict(learning_rate="adaptive", learning_rate_init=0.01, batch_size=32),
    dict(activation="relu"),
    dict(activation="logistic", learning_rate_init=0.1),
    dict(activation="identity", momentum=0.5),
    dict(solver="adam"),
    dict(solver="adam", activation="relu", alpha=0.01, beta_1=0.8, batch_size=32),
    dict(solver="adam", learning_rate_init=0.01, beta_2=0.99, epsilon=1e-4),
    dict(solver="adam", learning_rate="adaptive", learning_rate_init=0.01),  # the schedule is SGD's only
    dict(activation=None, solver=None),  # scikit-learn's defaults: relu, Adam
]


@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_the_same_settings_train_as_scikit_learn(kwargs):
    """scikit-learn's own MLPClassifier and fastmlp's with the same keyword arguments
    on load_digits: the same weights after every epoch (the same initialisation,
    shuffles and update rules), so the same epochs and test accuracies."""
    sklearn = pytest.importorskip("sklearn")
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier as Reference
    from sklearn.preprocessing import StandardScaler

    from fastmlp.sklearn import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
    settings = dict(hidden_layer_sizes=(50,), activation="tanh", solver="sgd", max_iter=60, random_state=0)
    settings.update(kwargs)
    settings = {k: v for k, v in settings.items() if v is not None}  # None: the estimators' default
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        theirs = Reference(**settings).fit(X_train, y_train)
        ours = MLPClassifier(**settings).fit(X_train, y_train)
    assert abs(ours.score(X_test, y_test) - theirs.score(X_test, y_test)) <= 0.02
    assert ours.n_iter_ == theirs.n_iter_
    for a, b in zip(ours.coefs_, theirs.coefs_, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7)
    # the loss curve adds the L2 term at the epoch's end weights, scikit-learn at each
    # batch's: the larger alpha and the steps, the more the two differ (declared)
    alpha, lr = settings.get("alpha", 1e-4), settings.get("learning_rate_init", 1e-3)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-4 if alpha * lr <= 1e-7 else 2e-3)


def test_the_estimator_refuses_what_fastmlp_does_not_train():
    pytest.importorskip("sklearn")
    from fastmlp.sklearn import MLPClassifier

    X, y = X_OK, Y_OK
    for kwargs, message in [
        (dict(hidden_layer_sizes=(10, 0)), r"hidden_layer_sizes\[1\] must be a positive integer"),
        (dict(activation="softplus"), "activation must be one of"),
        (dict(solver="newton"), 'solver must be "adam", "sgd" or "lbfgs"'),
        (dict(beta_1=1.0), r"beta_1 must be in \[0, 1\)"),
        (dict(epsilon=0), "epsilon must be a positive number"),
        (dict(learning_rate=0.1), "learning_rate must be"),
        (dict(class_weight={"x": 2}), "class_weight names unknown classes"),
    ]:
        with pytest.raises(ValueError, match=message):
            MLPClassifier(**kwargs).fit(X, y)
