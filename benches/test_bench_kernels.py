"""Each kernel of the contract on its own, per backend, against the NumPy reference.

Groups are "<kernel> <network> <dtype> batch=<B>".
"""

import numpy as np
import pytest
from bench_common import BACKENDS

from fastmlp import backends
from fastmlp import reference as ref
from fastmlp._kernels import epochs


def _tolerance(dtype):
    return dict(rtol=1e-4, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-13)


def _inputs(network, dtype, batch):
    name, X, labels, shape = network
    bs = len(X) if batch == "full" else batch
    Xb = np.ascontiguousarray(X[:bs], dtype=dtype)
    params = ref.init_params(*shape, dtype=dtype, seed=0)
    out = ref.forward(params, Xb)
    return name, Xb, labels[:bs], params, out


def _group(benchmark, kernel, name, dtype, batch, backend):
    benchmark.group = f"{kernel} {name} {dtype.name} batch={batch}"
    benchmark.extra_info.update(backend=backend, kernel=kernel, network=name, dtype=dtype.name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_hidden(benchmark, backend, network, dtype, batch):
    name, Xb, _, p, out = _inputs(network, dtype, batch)
    kern = backends.kernels(backend)
    np.testing.assert_allclose(kern.forward_hidden(Xb, p["Wh"], p["bh"]), out.H, **_tolerance(dtype))
    _group(benchmark, "forward_hidden", name, dtype, batch, backend)
    with epochs.blas_limits(len(Xb) < epochs.BLAS_THREADS_MIN_BATCH):
        benchmark(kern.forward_hidden, Xb, p["Wh"], p["bh"])


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_update(benchmark, backend, network, dtype, batch):
    name, Xb, yb, p, out = _inputs(network, dtype, batch)
    kern = backends.kernels(backend)
    dZ = (ref.output_delta(out.Y_hat, yb) / len(Xb)).astype(dtype)
    expected = {k: v.copy() for k, v in p.items()}
    ref.sgd_step(expected, ref.param_grads(Xb, out.H, dZ, ref.hidden_delta(p["Wy"], out.H, dZ)), 1e-3)
    got = {k: v.copy() for k, v in p.items()}
    kern.backward_update(Xb, out.H, dZ, epochs.Params(**got), 1e-3)
    for k in ref.PARAM_NAMES:
        np.testing.assert_allclose(got[k], expected[k], **_tolerance(dtype))
    _group(benchmark, "backward_update", name, dtype, batch, backend)
    with epochs.blas_limits(len(Xb) < epochs.BLAS_THREADS_MIN_BATCH):
        benchmark(kern.backward_update, Xb, out.H, dZ, epochs.Params(**got), 1e-3)
