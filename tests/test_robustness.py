"""Bad input, divergence, interruption, checkpoints, model files and threads."""

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import BACKENDS, random_problem

import fastmlp
from fastmlp import backends
from fastmlp import reference as ref
from fastmlp._kernels import epochs

# ---- a table of bad inputs: each names its argument, before any work is done ----

X_OK, Y_OK, _ = random_problem(20, 4, 5, 3, np.float64)


def _train(**kw):
    model = kw.pop("model", None) or fastmlp.MLP(4, 5, 3, seed=0)
    args = dict(X=X_OK, y=Y_OK)
    args.update({k: kw.pop(k) for k in ("X", "y") if k in kw})
    return fastmlp.train(model, args["X"], args["y"], **kw)


def _one_hot_bad():
    Y = ref.one_hot(Y_OK, 3)
    Y[3, :] = [1, 1, 0]
    return Y


BAD_CALLS = [
    # MLP(...)
    ("n_in", ValueError, lambda: fastmlp.MLP(0, 5, 3)),
    ("n_in", ValueError, lambda: fastmlp.MLP(2.5, 5, 3)),
    ("n_hidden", ValueError, lambda: fastmlp.MLP(4, -1, 3)),
    ("n_out", ValueError, lambda: fastmlp.MLP(4, 5, 1)),
    ("dtype", ValueError, lambda: fastmlp.MLP(4, 5, 3, dtype=np.int32)),
    ("dtype", ValueError, lambda: fastmlp.MLP(4, 5, 3, dtype="float16")),
    ("init", ValueError, lambda: fastmlp.MLP(4, 5, 3, init="he")),
    ("seed", ValueError, lambda: fastmlp.MLP(4, 5, 3, seed=-1)),
    # train(...): X
    ("X", ValueError, lambda: _train(X=X_OK[0])),
    ("X", ValueError, lambda: _train(X=X_OK[None])),
    ("X", ValueError, lambda: _train(X=X_OK[:, :3])),
    ("X", ValueError, lambda: _train(X=X_OK[:0], y=Y_OK[:0])),
    ("X", ValueError, lambda: _train(X=np.where(np.eye(20, 4) > 0, np.nan, X_OK))),
    ("X", ValueError, lambda: _train(X=np.where(np.eye(20, 4) > 0, -np.inf, X_OK))),
    ("X", TypeError, lambda: _train(X=X_OK.astype(str))),
    ("X", TypeError, lambda: _train(X=X_OK + 1j)),
    ("X", ValueError, lambda: _train(X=np.full((20, 4), 1e300), model=fastmlp.MLP(4, 5, 3, dtype=np.float32))),
    # train(...): y
    ("y", ValueError, lambda: _train(y=Y_OK[:-1])),
    ("y", ValueError, lambda: _train(y=np.where(np.arange(20) == 5, 3, Y_OK))),
    ("y", ValueError, lambda: _train(y=np.where(np.arange(20) == 5, -1, Y_OK))),
    ("y", ValueError, lambda: _train(y=Y_OK + 0.5)),
    ("y", ValueError, lambda: _train(y=_one_hot_bad())),
    ("y", ValueError, lambda: _train(y=ref.one_hot(Y_OK, 4))),
    ("y", ValueError, lambda: _train(y=Y_OK[:, None, None])),
    ("y", TypeError, lambda: _train(y=Y_OK.astype(str))),
    # train(...): hyperparameters
    ("lr", ValueError, lambda: _train(lr=0)),
    ("lr", ValueError, lambda: _train(lr=float("nan"))),
    ("lr", ValueError, lambda: _train(lr=float("inf"))),
    ("lr", ValueError, lambda: _train(lr="0.1")),
    ("epochs", ValueError, lambda: _train(epochs=-1)),
    ("epochs", ValueError, lambda: _train(epochs=1.5)),
    ("batch_size", ValueError, lambda: _train(batch_size=0)),
    ("batch_size", ValueError, lambda: _train(batch_size=True)),
    ("loss", ValueError, lambda: _train(loss="hinge")),
    ("backend", ValueError, lambda: _train(backend="gpu")),
    ("seed", ValueError, lambda: _train(seed=-3)),
    ("shuffle", TypeError, lambda: _train(shuffle="yes")),
    ("checkpoint_every", ValueError, lambda: _train(checkpoint_every=0)),
    ("checkpoint", FileNotFoundError, lambda: _train(checkpoint="/nonexistent-dir/c.npz")),
    ("validation_data", ValueError, lambda: _train(validation_data=X_OK)),
    ("validation_data[0]", ValueError, lambda: _train(validation_data=(X_OK[:, :2], Y_OK))),
    ("validation_data[1]", ValueError, lambda: _train(validation_data=(X_OK, Y_OK[:3]))),
    ("model", TypeError, lambda: fastmlp.train(object(), X_OK, Y_OK)),
    # evaluate / predict / parameters / load
    ("y", ValueError, lambda: fastmlp.evaluate(fastmlp.MLP(4, 5, 3), X_OK, Y_OK[:4])),
    ("loss", ValueError, lambda: fastmlp.evaluate(fastmlp.MLP(4, 5, 3), X_OK, Y_OK, loss="l1")),
    ("X", ValueError, lambda: fastmlp.MLP(4, 5, 3).predict(X_OK[:, :2])),
    ("X", ValueError, lambda: fastmlp.MLP(4, 5, 3).predict_proba(np.full((2, 4), np.nan))),
    ("Wh", ValueError, lambda: setattr(fastmlp.MLP(4, 5, 3), "Wh", np.zeros((4, 5)))),
    ("by", TypeError, lambda: setattr(fastmlp.MLP(4, 5, 3), "by", np.array(["a", "b", "c"]))),
]


@pytest.mark.parametrize("argument,exc,call", BAD_CALLS, ids=[f"{i}-{a}" for i, (a, _, _) in enumerate(BAD_CALLS)])
def test_bad_input_names_the_argument(argument, exc, call):
    with pytest.raises(exc) as info:
        call()
    assert str(info.value).startswith(argument) or f"{argument} " in str(info.value), str(info.value)


def test_bad_input_table_is_large():
    assert len(BAD_CALLS) + len(BAD_CLI) >= 30


def test_bad_training_arguments_leave_the_model_untouched():
    model = fastmlp.MLP(4, 5, 3, seed=0)
    before = {k: v.copy() for k, v in model.params.items()}
    for kw in (dict(validation_data=(X_OK[:, :2], Y_OK)), dict(lr=-1), dict(y=Y_OK[:-1])):
        with pytest.raises(ValueError):
            _train(model=model, **kw)
    for k in ref.PARAM_NAMES:
        np.testing.assert_array_equal(model.params[k], before[k])


def test_unavailable_backend_names_the_available_ones(monkeypatch):
    monkeypatch.setitem(backends._errors, "numba", ImportError("no numba here"))
    monkeypatch.delitem(backends._loaded, "numba", raising=False)
    with pytest.raises(
        ValueError,
        match=r"backend 'numba' is not available \(ImportError: no numba here\); "
        r"available backends: \['numpy', 'cython'\]",
    ):
        _train(backend="numba")


BAD_CLI = [
    (("train", "--lr", "-1"), "argument --lr: expected a positive number, got '-1'"),
    (("train", "--lr", "0"), "argument --lr: expected a positive number, got '0'"),
    (("train", "--lr", "abc"), "argument --lr: expected a positive number, got 'abc'"),
    (("train", "--lr", "nan"), "argument --lr: expected a positive number, got 'nan'"),
    (("train", "--epochs", "-2"), "argument --epochs: expected a non-negative integer, got '-2'"),
    (("train", "--batch-size", "0"), "argument --batch-size: expected a positive integer, got '0'"),
    (("train", "--hidden", "0"), "argument --hidden: expected comma-separated positive integers, got '0'"),
    (("train", "--hidden", "2.5"), "argument --hidden: expected comma-separated positive integers, got '2.5'"),
    (("train", "--n-samples", "0"), "argument --n-samples: expected a positive integer, got '0'"),
    (("train", "--noise", "-0.1"), "argument --noise: expected a non-negative number, got '-0.1'"),
    (("train", "--seed", "-1"), "argument --seed: expected a non-negative integer, got '-1'"),
    (("train", "--dataset", "cifar"), "argument --dataset: invalid choice"),
    (("train", "--backend", "gpu"), "argument --backend: invalid choice"),
    (("train", "--loss", "hinge"), "argument --loss: invalid choice"),
    (("train", "--dataset", "mnist", "--data-dir", "/nonexistent"), "does not exist"),
    (("train", "--save", "/nonexistent-dir/m.npz"), "--save: directory '/nonexistent-dir' does not exist"),
    (("train", "--plot", "/nonexistent-dir/p.png"), "--plot: directory '/nonexistent-dir' does not exist"),
    (("sweep", "--lr", "0.1,x"), "--lr: expected comma-separated numbers, got '0.1,x'"),
    (("sweep", "--out", "/nonexistent-dir/r.csv"), "--out: directory '/nonexistent-dir' does not exist"),
    (("sweep", "--repeats", "0"), "argument --repeats: expected a positive integer, got '0'"),
    (("bench", "--batch-sizes", "0"), "--batch-sizes: expected positive integers"),
    (("nonsense",), "invalid choice"),
]


@pytest.mark.parametrize("args,message", BAD_CLI, ids=[" ".join(a) for a, _ in BAD_CLI])
def test_cli_errors_are_one_line(args, message):
    out = subprocess.run([sys.executable, "-m", "fastmlp.cli", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


# ---- divergence ----


@pytest.mark.parametrize("backend", BACKENDS)
def test_divergence_stops_with_the_step_and_keeps_the_last_finite_parameters(backend):
    X, y, _ = random_problem(64, 4, 5, 3, np.float32, seed=1)
    model = fastmlp.MLP(4, 5, 3, dtype=np.float32, seed=0)
    start = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(fastmlp.DivergenceError) as info:
        fastmlp.train(model, X, y, epochs=3, batch_size=4, lr=3e38, backend=backend, seed=5)
    err = info.value
    assert err.epoch == 0 and err.history.epochs == 0 and "epoch 0, batch" in str(err)
    assert all(np.isfinite(v).all() for v in model.params.values())
    # the model holds exactly the parameters after the err.batch steps before the failing one
    perm = np.random.default_rng(5).permutation(64)
    replay = start
    kern = backends.kernels(backend)
    with epochs.blas_limits(True):
        epochs.train_epoch(kern, X, y, perm[: 4 * err.batch], replay, 3e38, 4)
    for k in ref.PARAM_NAMES:
        np.testing.assert_array_equal(model.params[k], replay[k])


# ---- model files ----


def test_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    old = fastmlp.MLP(3, 4, 2, seed=1)
    old.save(path)
    before = path.read_bytes()

    def broken_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        fastmlp.MLP(3, 4, 2, seed=2).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
    np.testing.assert_array_equal(fastmlp.MLP.load(path).Wh, old.Wh)


def test_load_rejects_wrong_version_and_wrong_shapes(tmp_path):
    m = fastmlp.MLP(3, 4, 2)
    arrays = m._file_arrays()
    np.savez(tmp_path / "v3.npz", **{**arrays, "format_version": np.int64(3)})
    with pytest.raises(ValueError, match="format version 3"):
        fastmlp.MLP.load(tmp_path / "v3.npz")
    np.savez(tmp_path / "shape.npz", **{**arrays, "W2": np.zeros((2, 5), np.float32)})
    with pytest.raises(ValueError, match="inconsistent parameter shapes"):
        fastmlp.MLP.load(tmp_path / "shape.npz")
    np.savez(tmp_path / "sizes.npz", **{**arrays, "sizes": np.array([3, 5, 2])})
    with pytest.raises(ValueError, match=r"records sizes \[3, 5, 2\] but holds weights of sizes \(3, 4, 2\)"):
        fastmlp.MLP.load(tmp_path / "sizes.npz")
    np.savez(tmp_path / "act.npz", **{**arrays, "activation": np.str_("softplus")})
    with pytest.raises(ValueError, match="unknown activation 'softplus'"):
        fastmlp.MLP.load(tmp_path / "act.npz")
    np.savez(tmp_path / "dtype.npz", **{**arrays, "b1": np.zeros(4, np.float64)})
    with pytest.raises(ValueError, match="must all be float32 or all float64"):
        fastmlp.MLP.load(tmp_path / "dtype.npz")
    np.savez(tmp_path / "pickled.npz", **{**arrays, "loss": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="not a readable fastmlp model file"):
        fastmlp.MLP.load(tmp_path / "pickled.npz")
    with pytest.raises(FileNotFoundError):
        fastmlp.MLP.load(tmp_path / "absent.npz")


# ---- checkpoints: killed with SIGKILL, resumed, bitwise equal ----

TRAIN_SCRIPT = """
import sys, numpy as np, fastmlp
backend, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
X, y = fastmlp.datasets.circles(2000, noise=0.1, seed=0)
model = fastmlp.MLP(2, 16, 2, seed=0)
resume = path if len(sys.argv) > 4 else None
fastmlp.train(model, X, y, epochs=200, batch_size=8, lr=0.05, backend=backend, seed=3,
              checkpoint=path, checkpoint_every=1, resume=resume)
model.save(out)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_killed_and_resumed_run_ends_where_an_uninterrupted_run_ends(tmp_path, backend):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    full = tmp_path / "full.npz"
    subprocess.run(
        [sys.executable, str(script), backend, str(tmp_path / "c0.npz"), str(full)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    ckpt, resumed = tmp_path / "c1.npz", tmp_path / "resumed.npz"
    proc = subprocess.Popen([sys.executable, str(script), backend, str(ckpt), str(resumed)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for a few epochs, then kill without warning
        if ckpt.exists() and int(np.load(ckpt)["epochs_done"]) >= 5:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not resumed.exists()
    done = int(np.load(ckpt)["epochs_done"])
    assert 5 <= done < 200
    subprocess.run(
        [sys.executable, str(script), backend, str(ckpt), str(resumed), "resume"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    a, b = fastmlp.MLP.load(full), fastmlp.MLP.load(resumed)
    for k in ref.PARAM_NAMES:
        np.testing.assert_array_equal(a.params[k], b.params[k])


def test_resume_refuses_other_settings_and_other_models(tmp_path):
    X, y = fastmlp.datasets.circles(100, seed=0)
    path = tmp_path / "c.npz"
    fastmlp.train(fastmlp.MLP(2, 4, 2), X, y, epochs=2, batch_size=8, checkpoint=path)
    with pytest.raises(ValueError, match="batch_size 8 vs 16"):
        fastmlp.train(fastmlp.MLP(2, 4, 2), X, y, epochs=3, batch_size=16, resume=path)
    with pytest.raises(ValueError, match="holds a MLP"):
        fastmlp.train(fastmlp.MLP(2, 5, 2), X, y, epochs=3, batch_size=8, resume=path)
    model_file = tmp_path / "m.npz"
    fastmlp.MLP(2, 4, 2).save(model_file)
    with pytest.raises(ValueError, match="not a fastmlp checkpoint"):
        fastmlp.train(fastmlp.MLP(2, 4, 2), X, y, epochs=3, batch_size=8, resume=model_file)
    m = fastmlp.MLP(2, 4, 2)
    hist = fastmlp.train(m, X, y, epochs=3, batch_size=8, resume=path)
    assert hist.epochs == 3 and len(hist.seconds) == 3


# ---- Ctrl-C ----

INTERRUPT_SCRIPT = """
import signal, sys, time, numpy as np, fastmlp
# Python raises KeyboardInterrupt on SIGINT only where it starts with SIGINT's default
# action; a shell's background job starts with SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
from fastmlp import backends
from fastmlp._kernels import epochs
backend = sys.argv[1]
rng = np.random.default_rng(0)
X = rng.random((20000, 200), dtype=np.float32)
y = rng.integers(0, 10, 20000)
model = fastmlp.MLP(200, 64, 10, seed=0)
start = {k: v.copy() for k, v in model.params.items()}
fastmlp.train(model.copy(), X[:10], y[:10], batch_size=1, backend=backend)  # compile before the clock starts
print("ready", flush=True)
try:
    fastmlp.train(model, X, y, epochs=1000, batch_size=1, lr=0.01, backend=backend, shuffle=False)
except KeyboardInterrupt:
    t = time.perf_counter()
    print("interrupted", flush=True)
# the model must hold the state after a whole number of compiled chunks
kern, p = backends.kernels(backend), start
chunk = epochs.CHUNK_EXAMPLES
order = np.arange(20000)
def replay():
    for epoch in range(1000):
        for start in range(0, 20000, chunk):
            if all(np.array_equal(p[k], model.params[k]) for k in p):
                return epoch * 20000 + start
            epochs.train_epoch(kern, X, y.astype(np.intp), order[start:start + chunk], p, 0.01, 1)
with epochs.blas_limits(True):
    print("consistent after", replay(), "steps", flush=True)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_returns_promptly_with_a_consistent_model(tmp_path, backend):
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), backend], stdout=subprocess.PIPE, text=True)

    def next_line(within):  # a line of the script's output, or fail instead of waiting forever
        if not select.select([proc.stdout], [], [], within)[0]:
            proc.kill()
            pytest.fail(f"no output from the training script within {within} s")
        return proc.stdout.readline().strip()

    assert next_line(300) == "ready"
    time.sleep(1.5)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    assert next_line(60) == "interrupted"
    latency = time.perf_counter() - t0
    # the rest through the same buffered reader: readline may already hold the next
    # line (communicate() would read past it, from the pipe itself)
    assert proc.wait(timeout=300) == 0
    rest = proc.stdout.read()
    assert re.search(r"consistent after \d+ steps", rest), rest
    assert latency < 1.0, latency


# ---- threads ----


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_size", [1, 16, 128])
def test_models_trained_in_threads_equal_sequential_training(backend, batch_size):
    X, y, _ = random_problem(600, 30, 20, 4, np.float32, seed=2)
    seq = [fastmlp.MLP(30, 20, 4, seed=s) for s in range(3)]
    par = [m.copy() for m in seq]
    for m in seq:
        fastmlp.train(m, X, y, epochs=2, batch_size=batch_size, backend=backend)
    errors = []

    def work(m):
        try:
            fastmlp.train(m, X, y, epochs=2, batch_size=batch_size, backend=backend)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(m,)) for m in par]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for a, b in zip(seq, par, strict=True):
        for k in ref.PARAM_NAMES:
            np.testing.assert_array_equal(a.params[k], b.params[k])


def test_one_model_trained_from_two_threads_is_refused():
    X, y, _ = random_problem(20000, 50, 32, 4, np.float32)
    model = fastmlp.MLP(50, 32, 4)
    before = model.copy()
    outcome = []

    def long_training():
        outcome.append(fastmlp.train(model, X, y, epochs=500, batch_size=1, backend="cython"))

    t = threading.Thread(target=long_training)
    t.start()
    deadline = time.monotonic() + 10
    while not model._training.locked() and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(RuntimeError, match="already being trained in another thread"):
        fastmlp.train(model, X, y, epochs=1)
    t.join()
    assert outcome and outcome[0].epochs == 500
    expected = before.copy()
    fastmlp.train(expected, X, y, epochs=500, batch_size=1, backend="cython")
    for k in ref.PARAM_NAMES:  # the refused call changed nothing
        np.testing.assert_array_equal(model.params[k], expected.params[k])
    fastmlp.train(model, X[:100], y[:100])  # free again afterwards


# ---- memory ----


def _rss_bytes():
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_stays_flat_over_500_train_calls(backend):
    X, y = fastmlp.datasets.circles(300, seed=0)
    Xv, yv = fastmlp.datasets.circles(100, seed=1)

    def call():
        m = fastmlp.MLP(2, 10, 2)
        fastmlp.train(m, X, y, epochs=2, batch_size=16, backend=backend, validation_data=(Xv, yv))

    for _ in range(50):  # warm up: compile, caches, allocator pools
        call()
    before = _rss_bytes()
    for _ in range(500):
        call()
    growth = _rss_bytes() - before
    assert growth < 2 * 2**20, f"RSS grew {growth / 2**20:.2f} MiB over 500 calls"
