"""Time to 98.0% MNIST test accuracy, 784-100-10 float32: fastmlp and PyTorch, each
with its best settings found (the same here: SGD with Nesterov momentum 0.9, batch
64, learning rate 0.05, reached 98% in the fewest epochs of the settings tried;
see the README), in the same run. Training time only (evaluation after each epoch
is not counted); extra_info holds the epochs and seconds of each.

Smoke run (--benchmark-disable): one epoch on 2,000 rows, to keep it working.
"""

import time

import numpy as np
import pytest
from bench_common import MNIST_DIR

import fastmlp
from fastmlp import bench

TARGET = 0.98
MAX_EPOCHS = 30
BEST = dict(batch_size=64, lr=0.05, momentum=0.9, nesterov=True)


def _mnist(smoke):
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found in {MNIST_DIR}")
    X, y, X_test, y_test = fastmlp.datasets.load_mnist(MNIST_DIR)
    if smoke:
        X, y = X[:2000], y[:2000]
    return X, y, X_test, y_test


def _fastmlp(X, y, X_test, y_test, max_epochs):
    from fastmlp.train import _Training

    model = fastmlp.MLP(784, 100, 10, seed=0)
    training = _Training(
        model,
        X,
        y,
        batch_size=BEST["batch_size"],
        lr=BEST["lr"],
        momentum=BEST["momentum"],
        nesterov=BEST["nesterov"],
        seed=0,
    )
    seconds, accuracy = 0.0, 0.0
    with training:
        for epoch in range(max_epochs):
            seconds += training.run_epoch(BEST["lr"]).seconds[-1]
            accuracy = fastmlp.evaluate(model, X_test, y_test)[1]
            if accuracy >= TARGET:
                return epoch + 1, seconds, accuracy
    return None, seconds, accuracy


def _torch(X, y, X_test, y_test, max_epochs):
    import torch

    params = fastmlp.reference.init_params(784, 100, 10, dtype=np.float32, seed=0)
    trainer = bench.TorchTrainer(params, "autograd")
    opt = torch.optim.SGD(trainer.net.parameters(), lr=BEST["lr"], momentum=BEST["momentum"], nesterov=BEST["nesterov"])
    Xt, yt, Xv = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64)), torch.from_numpy(X_test)
    rng = np.random.default_rng(0)
    seconds, accuracy = 0.0, 0.0
    for epoch in range(max_epochs):
        perm = torch.from_numpy(rng.permutation(len(X)))
        t0 = time.perf_counter()
        for s in range(0, len(X), BEST["batch_size"]):
            idx = perm[s : s + BEST["batch_size"]]
            opt.zero_grad()
            trainer.loss(trainer.net(Xt[idx]), yt[idx]).backward()
            opt.step()
        seconds += time.perf_counter() - t0
        with torch.no_grad():
            accuracy = float((trainer.net(Xv).argmax(1).numpy() == y_test).mean())
        if accuracy >= TARGET:
            return epoch + 1, seconds, accuracy
    return None, seconds, accuracy


@pytest.mark.parametrize("who", ["fastmlp", "torch"])
def test_time_to_98_percent(benchmark, who, request):
    smoke = request.config.getoption("benchmark_disable", False)
    if who == "torch" and not bench.torch_available():
        pytest.skip("torch not installed (pip install -e '.[bench]')")
    X, y, X_test, y_test = _mnist(smoke)
    run = _fastmlp if who == "fastmlp" else _torch
    result = {}

    def go():
        result["epochs"], result["seconds"], result["accuracy"] = run(X, y, X_test, y_test, 1 if smoke else MAX_EPOCHS)

    benchmark.pedantic(go, rounds=1, iterations=1)
    benchmark.group = "time to 98% MNIST"
    benchmark.extra_info.update(who=who, settings=BEST, **result)
    print(f"\n{who}: {result}")
    if not smoke:
        assert result["epochs"] is not None, f"{who} did not reach {TARGET:.0%} in {MAX_EPOCHS} epochs: {result}"
