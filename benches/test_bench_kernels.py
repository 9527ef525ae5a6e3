"""Each kernel of the contract on its own, per backend, against the NumPy reference.

Groups are "<kernel> <network> <dtype> batch=<B>" (and "<activation>" for the
kernels that apply one).
"""

import numpy as np
import pytest
from bench_common import BACKENDS

from fastmlp import backends, tables
from fastmlp import reference as ref
from fastmlp._kernels import epochs

ACTIVATIONS = list(tables.ACTIVATIONS)


def _tolerance(dtype):
    return dict(rtol=1e-4, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-13)


def _inputs(network, dtype, batch, activation="tanh"):
    name, X, labels, shape = network
    bs = len(X) if batch == "full" else batch
    Xb = np.ascontiguousarray(X[:bs], dtype=dtype)
    params = ref.init_params(*shape, dtype=dtype, seed=0)
    out = ref.forward(params, Xb, activation)
    return name, Xb, labels[:bs], params, out


def _group(benchmark, kernel, name, dtype, batch, backend, activation=""):
    benchmark.group = f"{kernel} {name} {dtype.name} batch={batch} {activation}".rstrip()
    benchmark.extra_info.update(backend=backend, kernel=kernel, network=name, dtype=dtype.name, activation=activation)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_hidden(benchmark, backend, network, dtype, batch, activation):
    name, Xb, _, p, out = _inputs(network, dtype, batch, activation)
    kern = backends.kernels(backend)
    code = tables.activation(activation).code
    np.testing.assert_allclose(kern.forward_hidden(Xb, p["Wh"], p["bh"], code), out.H, **_tolerance(dtype))
    _group(benchmark, "forward_hidden", name, dtype, batch, backend, activation)
    with epochs.blas_limits(len(Xb) < epochs.BLAS_THREADS_MIN_BATCH):
        benchmark(kern.forward_hidden, Xb, p["Wh"], p["bh"], code)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_grad(benchmark, backend, network, dtype, batch):
    name, Xb, yb, p, out = _inputs(network, dtype, batch)
    kern = backends.kernels(backend)
    dZ, loss_sum, _ = kern.loss_grad(out.Z, yb, epochs.loss_code("ce"))
    np.testing.assert_allclose(dZ, ref.output_delta(out.Y_hat, yb) / len(Xb), **_tolerance(dtype))
    np.testing.assert_allclose(
        loss_sum / len(Xb), ref.loss_accuracy(out.Y_hat, yb, logits=out.Z)[0], **_tolerance(dtype)
    )
    _group(benchmark, "loss_grad", name, dtype, batch, backend)
    benchmark(kern.loss_grad, out.Z, yb, epochs.loss_code("ce"))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_update(benchmark, backend, network, dtype, batch, activation):
    name, Xb, yb, p, out = _inputs(network, dtype, batch, activation)
    kern = backends.kernels(backend)
    code = tables.activation(activation).code
    dZ = (ref.output_delta(out.Y_hat, yb) / len(Xb)).astype(dtype)
    expected = {k: v.copy() for k, v in p.items()}
    dH = ref.hidden_delta(p["Wy"], out.H, dZ, activation)
    ref.sgd_step(expected, ref.param_grads(Xb, out.H, dZ, dH), 1e-3)
    got = {k: v.copy() for k, v in p.items()}
    kern.backward_update(Xb, out.H, dZ, epochs.Params(**got), 1e-3, code)
    for k in ref.PARAM_NAMES:
        np.testing.assert_allclose(got[k], expected[k], **_tolerance(dtype))
    _group(benchmark, "backward_update", name, dtype, batch, backend, activation)
    with epochs.blas_limits(len(Xb) < epochs.BLAS_THREADS_MIN_BATCH):
        benchmark(kern.backward_update, Xb, out.H, dZ, epochs.Params(**got), 1e-3, code)
