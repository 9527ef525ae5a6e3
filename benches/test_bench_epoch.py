"""One whole training epoch per backend, against the NumPy reference and PyTorch.

Groups are "epoch <network> <dtype> batch=<B>": --benchmark-group-by=group (the
default) shows the backends side by side for each batch size.
"""

import numpy as np
import pytest
from bench_common import BACKENDS, TORCH

from fastmlp import backends, bench
from fastmlp import reference as ref
from fastmlp._kernels import epochs

CHECK_ROWS = 600  # the correctness check runs on this prefix of the epoch


def _tolerance(dtype):
    return dict(rtol=2e-3, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS + TORCH)
def test_epoch(benchmark, backend, network, dtype, batch):
    name, X, labels, shape = network
    X = X.astype(dtype)
    bs = len(X) if batch == "full" else batch
    lr = 0.01 if bs == 1 else 0.1
    params = ref.init_params(*shape, dtype=dtype, seed=0)
    perm = np.random.default_rng(0).permutation(len(X))

    # 1. the backend must compute what the reference computes, on the same input
    check = perm[:CHECK_ROWS] if batch != "full" else perm
    expected = {k: v.copy() for k, v in params.items()}
    ref.train_epoch(expected, X, labels, check, bs, lr)
    got = {k: v.copy() for k, v in params.items()}
    if backend.startswith("torch"):
        trainer = bench.TorchTrainer(got, backend.split("-", 1)[1])
        trainer.epoch(X, labels, check, bs, lr)
        got = trainer.params()
    else:
        epochs.train_epoch(backends.kernels(backend), X, labels, check, got, lr, bs)
    for k in ref.PARAM_NAMES:
        np.testing.assert_allclose(got[k], expected[k], **_tolerance(dtype), err_msg=f"{backend} {k}")

    # 2. time whole epochs: successive epochs of one training run
    run, one_blas_thread = bench._runner(backend, params, X, labels, bs, lr)
    benchmark.group = f"epoch {name} {dtype.name} batch={batch}"
    benchmark.extra_info.update(
        backend=backend,
        network=name,
        dtype=dtype.name,
        batch=bs,
        n=len(X),
        flop_per_epoch=bench.flop_per_example(*shape) * len(X),
        blas=bench.blas_description(),
    )
    with epochs.blas_limits(one_blas_thread):
        run(perm[: max(bs, 64)])  # warm-up: compile, fault in pages
        benchmark.pedantic(run, args=(perm,), rounds=3, iterations=1)
