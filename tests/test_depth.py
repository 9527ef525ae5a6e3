"""Several hidden layers around the kernels: the model, its files, PyTorch, the
backends' choice, checkpoints, divergence, CSR input, scikit-learn and the CLI."""

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import BACKENDS, random_problem

import fastmlp
from fastmlp import backends
from fastmlp import reference as ref


def _deep_backends():
    return [b for b in BACKENDS if backends.kernels(b).DEEP_PATHS]


def test_the_model_holds_one_block_per_layer_in_sklearns_order():
    model = fastmlp.MLP(6, (5, 4), 3, activation="relu", seed=1)
    assert model.hidden == (5, 4) and model.n_hidden == (5, 4)
    assert model.network.sizes == (6, 5, 4, 3)
    assert [W.shape for W in model.coefs] == [(5, 6), (4, 5), (3, 4)]
    assert [b.shape for b in model.intercepts] == [(5,), (4,), (3,)]
    assert list(model.params) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert all(np.shares_memory(a, model._block.data) for a in model.params.values())
    assert fastmlp.MLP(6, (5,), 3).n_hidden == 5  # a tuple of one width is one hidden layer
    with pytest.raises(AttributeError, match="Wh names a parameter of a network with one hidden layer"):
        model.Wh  # noqa: B018


@pytest.mark.parametrize(
    "n_hidden, error, match",
    [
        ((), ValueError, "at least one hidden layer"),
        ((5, 0), ValueError, r"n_hidden\[1\] must be a positive integer"),
        ("5", TypeError, "n_hidden must be an int or a tuple"),
        ((4, 2.5), ValueError, r"n_hidden\[1\] must be a positive integer"),
        (0, ValueError, "n_hidden must be a positive integer"),
    ],
)
def test_bad_widths_are_refused_naming_the_layer(n_hidden, error, match):
    with pytest.raises(error, match=match):
        fastmlp.MLP(3, n_hidden, 2)


def test_predict_is_the_reference_forward_pass_at_depth_three():
    X, _, p = random_problem(40, 6, (7, 5, 4), 3, np.float64, seed=2)
    model = fastmlp.MLP(6, (7, 5, 4), 3, dtype=np.float64, activation="logistic")
    for k, v in p.items():
        model.params[k][...] = v
    out = ref.forward(p, X, "logistic")
    assert len(out.hidden) == 3 and out.H is out.hidden[-1]
    np.testing.assert_array_equal(model.logits(X), out.Z)
    np.testing.assert_array_equal(model.predict(X), out.Z.argmax(axis=1))


def test_init_draws_layer_by_layer_and_keeps_one_layers_draws():
    one = ref.init_params(5, 4, 3, seed=7)
    assert list(one) == ["Wh", "bh", "Wy", "by"]
    deep = ref.init_params(5, (4, 6), 3, "normal", np.float64, seed=7)
    assert [deep[f"W{k}"].shape for k in (1, 2, 3)] == [(4, 5), (6, 4), (3, 6)]
    np.testing.assert_array_equal(ref.init_params(5, (4,), 3, seed=7)["Wh"], one["Wh"])


def test_deep_model_files_round_trip_and_foreign_shapes_are_refused(tmp_path):
    model = fastmlp.MLP(6, (5, 4, 3), 2, activation="tanh", dtype=np.float64, seed=3)
    path = tmp_path / "deep.npz"
    model.save(path)
    back = fastmlp.MLP.load(path)
    assert back.network == model.network
    for k in model.params:
        np.testing.assert_array_equal(back.params[k], model.params[k])
    with np.load(path) as f:
        arrays = dict(f)
    arrays["W2"] = np.zeros((4, 9))  # does not chain with W1 (5, 6)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="inconsistent parameter shapes"):
        fastmlp.MLP.load(tmp_path / "bad.npz")
    del arrays["W3"]
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(ValueError, match=r"missing \['W3'\]"):
        fastmlp.MLP.load(tmp_path / "missing.npz")


def test_torch_round_trip_at_depth_three():
    torch = pytest.importorskip("torch")
    model = fastmlp.MLP(6, (5, 4, 3), 2, activation="relu", dtype=np.float64, seed=4)
    seq = model.to_torch()
    assert [type(m).__name__ for m in seq] == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    X = np.random.default_rng(0).normal(size=(9, 6))
    np.testing.assert_allclose(seq(torch.from_numpy(X)).detach().numpy(), model.logits(X), rtol=1e-12)
    back = fastmlp.MLP.from_torch(seq)
    assert back.network == model.network
    mixed = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4), torch.nn.Tanh())
    with pytest.raises(ValueError, match="sizes chain"):
        fastmlp.MLP.from_torch(mixed)
    with pytest.raises(ValueError, match="sizes chain"):
        fastmlp.MLP.from_torch(torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(4, 2)))


def test_each_backend_trains_several_layers_or_says_it_does_not():
    X, y = fastmlp.datasets.circles(300, noise=0.1, seed=0)
    for name in BACKENDS:
        model = fastmlp.MLP(2, (8, 8), 2, seed=0)
        if backends.kernels(name).DEEP_PATHS:
            assert fastmlp.train(model, X, y, epochs=1, backend=name).backend == name
        else:
            with pytest.raises(ValueError, match=f"backend {name!r} trains networks of one hidden layer"):
                fastmlp.train(model, X, y, epochs=1, backend=name)
    history = fastmlp.train(fastmlp.MLP(2, (8, 8), 2), X, y, epochs=1)
    assert history.backend == backends.resolve("auto", deep=True) and history.backend in _deep_backends()


@pytest.mark.parametrize("backend", _deep_backends())
def test_circles_are_learnt_by_two_relu_layers(backend):
    X, y = fastmlp.datasets.circles(1000, noise=0.1, seed=0)
    X_test, y_test = fastmlp.datasets.circles(1000, noise=0.1, seed=1)
    model = fastmlp.MLP(2, (16, 8), 2, activation="relu", seed=0)
    fastmlp.train(model, X, y, epochs=30, batch_size=10, lr=0.05, momentum=0.9, backend=backend)
    assert fastmlp.evaluate(model, X_test, y_test)[1] > 0.95


@pytest.mark.parametrize("backend", _deep_backends())
def test_csr_inputs_train_as_dense_ones_at_depth_two(backend):
    X, y, p = random_problem(120, 12, (9, 7), 3, np.float64, seed=5, sparse=True)
    models = []
    for inputs in (X, sp.csr_matrix(X)):
        model = fastmlp.MLP(12, (9, 7), 3, dtype=np.float64)
        for k, v in p.items():
            model.params[k][...] = v
        fastmlp.train(model, inputs, y, epochs=2, batch_size=8, lr=0.1, momentum=0.5, backend=backend)
        models.append(model)
    for k in p:
        np.testing.assert_allclose(models[0].params[k], models[1].params[k], rtol=1e-12, atol=1e-14)


def test_resume_from_a_checkpoint_is_exact_at_depth_two(tmp_path):
    X, y = fastmlp.datasets.circles(200, noise=0.1, seed=0)
    options = dict(batch_size=10, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    whole = fastmlp.MLP(2, (8, 6), 2, seed=1)
    fastmlp.train(whole, X, y, epochs=4, **options)
    part = fastmlp.MLP(2, (8, 6), 2, seed=1)
    ckpt = tmp_path / "ckpt.npz"
    fastmlp.train(part, X, y, epochs=2, checkpoint=ckpt, **options)
    with np.load(ckpt) as f:
        assert {"velocity_W3", "velocity_b3"} <= set(f.files)
    resumed = fastmlp.MLP(2, (8, 6), 2, seed=1)
    fastmlp.train(resumed, X, y, epochs=4, resume=ckpt, **options)
    for k in whole.params:
        np.testing.assert_array_equal(resumed.params[k], whole.params[k])
    with pytest.raises(ValueError, match="resume"):
        fastmlp.train(fastmlp.MLP(2, (8, 5), 2), X, y, epochs=4, resume=ckpt, **options)


def test_divergence_is_located_to_its_step_at_depth_two():
    X, y = fastmlp.datasets.circles(200, noise=0.1, seed=0)
    model = fastmlp.MLP(2, (8, 6), 2, activation="identity", seed=1)
    with pytest.raises(fastmlp.DivergenceError) as info:
        fastmlp.train(model, X * 1e30, y, epochs=1, batch_size=10, lr=1e30, shuffle=False)
    assert info.value.epoch == 0
    assert all(np.isfinite(v).all() for v in model.params.values())


def test_sklearn_hidden_layer_sizes_takes_several_layers():
    pytest.importorskip("sklearn")
    from fastmlp.sklearn import MLPClassifier

    X, y = fastmlp.datasets.circles(500, noise=0.1, seed=0)
    clf = MLPClassifier(hidden_layer_sizes=(16, 8), activation="relu", learning_rate_init=0.05, max_iter=60)
    clf.fit(X, y)
    assert [W.shape for W in clf.coefs_] == [(2, 16), (16, 8), (8, 1)]  # one logistic unit for two classes
    assert [b.shape for b in clf.intercepts_] == [(16,), (8,), (1,)]
    assert clf.n_layers_ == 4
    assert clf.score(X, y) > 0.95
    assert len(clf.loss_curve_) == clf.n_iter_
    with pytest.raises(ValueError, match=r"hidden_layer_sizes\[1\]"):
        MLPClassifier(hidden_layer_sizes=(4, 0)).fit(X, y)


def test_sklearn_draws_the_initial_weights_as_sklearn_does_at_depth_two():
    pytest.importorskip("sklearn")
    from sklearn.neural_network import MLPClassifier as SkMLP

    from fastmlp.sklearn import MLPClassifier

    X, y = fastmlp.datasets.circles(100, noise=0.1, seed=0)
    kw = dict(hidden_layer_sizes=(6, 5), solver="sgd", activation="tanh", max_iter=1, random_state=3)
    ours = MLPClassifier(**kw, learning_rate_init=1e-12, momentum=0.0, dtype=np.float64)
    theirs = SkMLP(**kw, learning_rate_init=1e-12, momentum=0.0)
    with pytest.warns(Warning):
        theirs.fit(X, y)
    ours.fit(X, y)
    assert ours.n_outputs_ == theirs.n_outputs_ == 1
    for a, b in zip(ours.coefs_, theirs.coefs_, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-9)


def _cli(*args):
    """The fastmlp command, as users run it: in a subprocess."""
    return subprocess.run([sys.executable, "-m", "fastmlp.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_trains_two_hidden_layers(tmp_path):
    path = tmp_path / "m.npz"
    out = _cli("train", "--hidden", "12,6", "--activation", "relu", "--epochs", "3", "--save", str(path))
    assert out.returncode == 0, out.stderr
    assert "circles 2-12-6-2 relu" in out.stdout
    assert fastmlp.MLP.load(path).hidden == (12, 6)


def test_cli_bench_takes_the_hidden_widths():
    args = ["bench", "--networks", "circles", "--hidden", "12,6", "--batch-sizes", "64", "--backends", "numpy,cython"]
    out = _cli(*args, "--budget", "0.05")
    assert out.returncode == 0, out.stderr
    assert "circles 2-12-6-2" in out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if line.strip().startswith("64 ")]
    assert {row[1] for row in rows} == {"numpy", "cython"}


def test_the_bench_table_goes_to_the_stdout_of_the_call(monkeypatch):
    import contextlib
    import io

    from fastmlp import bench

    monkeypatch.setattr(bench, "numba_first_call_seconds", lambda: (0.0, 0.0))
    X, y = fastmlp.datasets.circles(500, noise=0.1, seed=0)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        bench.run({"c": (X.astype(np.float32), y.astype(np.intp), (2, 6, 4, 2))}, (64,), names=["numpy"])
    assert "c 2-6-4-2" in buffer.getvalue()
