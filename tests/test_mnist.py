"""Accuracy on real MNIST (skips where the data is absent)."""

import pytest

import fastmlp


@pytest.mark.slow
def test_numpy_backend_reaches_965_percent_on_mnist(mnist):
    X_train, y_train, X_test, y_test = mnist
    model = fastmlp.MLP(784, 100, 10, seed=0)
    fastmlp.train(model, X_train, y_train, epochs=10, batch_size=64, lr=0.1, backend="numpy", seed=0)
    loss, acc = fastmlp.evaluate(model, X_test, y_test)
    print(f"MNIST 784-100-10, numpy backend, 10 epochs, batch 64, lr 0.1: test accuracy {acc:.4f}")
    assert acc >= 0.965


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b in fastmlp.available_backends() if b != "numpy"])
def test_compiled_backends_reach_the_same_accuracy(mnist, backend):
    X_train, y_train, X_test, y_test = mnist
    model = fastmlp.MLP(784, 100, 10, seed=0)
    fastmlp.train(model, X_train, y_train, epochs=10, batch_size=64, lr=0.1, backend=backend, seed=0)
    acc = fastmlp.evaluate(model, X_test, y_test)[1]
    print(f"MNIST 784-100-10, {backend} backend: test accuracy {acc:.4f}")
    assert acc >= 0.965
