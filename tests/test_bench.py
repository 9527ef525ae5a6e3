"""fastmlp.bench's measurements: what each figure of ``fastmlp bench`` is made of."""

import io
import re

import numpy as np
import pytest

from fastmlp import backends, bench
from fastmlp import reference as ref
from fastmlp._kernels import epochs

TWO_CORES = pytest.mark.skipif(epochs.available_cpus() < 2, reason="needs two cores")


def sparse_net(n=1024, seed=0):
    """784-100-10 on inputs 20% non-zero: the sparse path, on two threads where there are two cores."""
    X = bench.synthetic_inputs(n, 784, 0.2, seed=seed)
    labels = np.random.default_rng(seed).integers(0, 10, n).astype(np.intp)
    return X, labels, (784, 100, 10)


def test_batch_spread_is_the_slowest_over_the_fastest_epoch_from_batch_10_up():
    rows = [
        dict(network="a", backend="cython", batch=1, seconds=9.0),  # below batch 10: left out
        dict(network="a", backend="cython", batch=10, seconds=3.0),
        dict(network="a", backend="cython", batch=64, seconds=2.0),
        dict(network="a", backend="cython", batch="full", seconds=1.5),
        dict(network="a", backend="numba", batch=10, seconds=4.0),  # one batch size: no spread
        dict(network="b", backend="cython", batch=256, seconds=1.0),
        dict(network="b", backend="cython", batch=32, seconds=1.2),
    ]
    assert bench.batch_spread(rows) == {("a", "cython"): (2.0, 10, "full"), ("b", "cython"): (1.2, 32, 256)}
    assert bench.batch_spread(rows, smallest=1)[("a", "cython")] == (6.0, 1, "full")


@TWO_CORES
def test_thread_speedup_times_one_thread_against_two_on_the_same_epoch():
    X, labels, shape = sparse_net()
    params = ref.init_params(*shape, dtype=np.float32, seed=0)
    one, two, ran = bench.thread_speedup("cython", params, X, labels, 64, 0.1, 2, repeats=3)
    assert one > 0 and two > 0
    assert ran == ("sparse", 2)
    for k in ref.PARAM_NAMES:  # the caller's parameters are not trained
        np.testing.assert_array_equal(params[k], ref.init_params(*shape, dtype=np.float32, seed=0)[k])


@TWO_CORES
@pytest.mark.parametrize("backend", [b for b in backends.available_backends() if b != "numpy"])
def test_bench_prints_the_thread_speedup_and_the_batch_spread_it_returns(backend, monkeypatch):
    # (the Numba compile time, measured in a process of its own, is not what this checks)
    monkeypatch.setattr(bench, "numba_first_call_seconds", lambda: (0.0, 0.0))
    X, labels, shape = sparse_net()
    out = io.StringIO()
    rows = bench.run({"synthetic": (X, labels, shape)}, (10, 64), names=["numpy", backend], out=out)
    text = out.getvalue()
    assert "x 1 thr" in text
    for r in rows:
        printed = re.search(rf"^\s+{r['batch']}\s+{r['backend']}\s.*\s(\S+)\s+(\S+), (\d+)$", text, re.M)
        if r["backend"] == "numpy":  # the reference is not timed on threads
            assert r["threads_speedup"] is None and r["one_thread_seconds"] is None
            assert printed is None or printed.group(1) == "-"
            continue
        assert r["threads"] == 2
        assert r["threads_speedup"] == r["one_thread_seconds"] / r["all_threads_seconds"] > 0
        assert printed.group(1) == f"{r['threads_speedup']:.2f}", text
    spread = bench.batch_spread(rows)
    for b in ("numpy", backend):
        ratio, slow, fast = spread[("synthetic", b)]
        seconds = {r["batch"]: r["seconds"] for r in rows if r["backend"] == b}
        assert ratio == max(seconds.values()) / min(seconds.values()) >= 1
        assert seconds[slow] == max(seconds.values()) and seconds[fast] == min(seconds.values())
        assert f"{b} {ratio:.2f}x (batch {slow} / {fast})" in text


def test_flops_count_every_layer():
    assert bench.flop_per_example(784, 100, 10) == 319_600
    # 784-256-128-10: forward and gradients of the three layers, dl/dh of the two above the first
    layers = 784 * 256 + 256 * 128 + 128 * 10
    assert bench.flop_per_example(784, 256, 128, 10) == 4 * layers + 2 * (256 * 128 + 128 * 10)


@pytest.mark.parametrize("style", ["autograd", "manual"])
def test_the_torch_peers_train_the_same_deep_network_as_the_reference(style):
    torch = pytest.importorskip("torch")
    X, labels, _ = sparse_net(200)
    X = X[:, :50].astype(np.float64)
    shape = (50, 24, 16, 10)
    params = bench.init_params(shape, np.float64)
    expected = {k: v.copy() for k, v in params.items()}
    ref.train_epoch(expected, X, labels, np.arange(200), 10, 0.05, activation="relu")
    trainer = bench.TorchTrainer(params, style, "relu")
    trainer.epoch(torch.from_numpy(X), torch.from_numpy(labels.astype(np.int64)), torch.arange(200), 10, 0.05)
    got = trainer.params()
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-9, atol=1e-12)


def test_bench_runs_a_deep_network_with_every_backend_and_names_its_shape(monkeypatch):
    monkeypatch.setattr(bench, "numba_first_call_seconds", lambda: (0.0, 0.0))
    X, labels, _ = sparse_net(512)
    shape = (784, 130, 70, 10)
    names = backends.available_backends() + (["sklearn"] if bench.sklearn_available() else [])
    out = io.StringIO()
    rows = bench.run({"synthetic": (X, labels, shape)}, (1, 64), names=names, out=out)
    text = out.getvalue()
    assert "synthetic 784-130-70-10" in text and "row-pass floor (first layer, 784-130-10)" in text
    assert {r["shape"] for r in rows} == {"784-130-70-10"}
    for r in rows:
        if r["backend"] in ("cython", "numba"):
            assert r["path"] == "sparse" and r["floor"] is not None
        assert r["gflops"] == pytest.approx(bench.flop_per_example(*shape) * len(X) / r["seconds"] / 1e9)


@pytest.mark.parametrize("style", ["autograd", "manual"])
def test_the_torch_peers_take_the_same_adam_steps_as_the_reference(style):
    """Two epochs: the peers' Adam keeps its moments and step count between them."""
    torch = pytest.importorskip("torch")
    X, labels, _ = sparse_net(200)
    X = X[:, :50].astype(np.float64)
    params = bench.init_params((50, 24, 16, 10), np.float64)
    expected = {k: v.copy() for k, v in params.items()}
    m, v = ({k: np.zeros_like(a) for k, a in params.items()} for _ in range(2))
    trainer = bench.TorchTrainer(params, style, "relu", optimizer="adam")
    Xt, yt = torch.from_numpy(X), torch.from_numpy(labels.astype(np.int64))
    for epoch in range(2):
        ref.train_epoch(expected, X, labels, np.arange(200), 10, 1e-3, activation="relu", optimizer="adam",
                        velocity=m, second_moment=v, steps=20 * epoch)  # fmt: skip
        trainer.epoch(Xt, yt, torch.arange(200), 10, 1e-3)
    got = trainer.params()
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-9, atol=1e-12)


def test_bench_times_adam_on_every_backend_and_says_so(monkeypatch):
    monkeypatch.setattr(bench, "numba_first_call_seconds", lambda: (0.0, 0.0))
    X, labels, shape = sparse_net(400)
    names = backends.available_backends() + (["sklearn"] if bench.sklearn_available() else [])
    out = io.StringIO()
    rows = bench.run({"synthetic": (X, labels, shape)}, (1, 200), names=names, out=out, optimizer="adam")
    assert "relu" not in out.getvalue() and ", Adam, seconds per epoch" in out.getvalue()
    assert {r["optimizer"] for r in rows} == {"adam"} and {r["backend"] for r in rows} == set(names)
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adam'"):
        bench.run({"synthetic": (X, labels, shape)}, (1,), names=names, out=out, optimizer="lbfgs")
