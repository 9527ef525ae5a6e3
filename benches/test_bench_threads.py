"""The GIL is released during an epoch: two models in two threads against one model.

On a 2-core machine the two-thread group should take about the time of one epoch
(compare the two groups' medians); with the GIL held it would take twice as long.
"""

import numpy as np
import pytest
from bench_common import BACKENDS

from fastmlp import backends, bench
from fastmlp import reference as ref
from fastmlp._kernels import epochs


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
@pytest.mark.parametrize("models", [1, 2], ids=["one-model", "two-models-two-threads"])
def test_gil_released(benchmark, backend, models, network):
    name, X, labels, shape = network
    X = X.astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(X))
    kern = backends.kernels(backend)
    params = [ref.init_params(*shape, dtype=np.float32, seed=i) for i in range(models)]

    def epoch(p):
        epochs.train_epoch(kern, X, labels, perm, p, 0.1, 64)

    def run():
        bench.run_in_threads(epoch, params)

    # the threads' models must end where sequential training ends
    check = [ref.init_params(*shape, dtype=np.float32, seed=i) for i in range(models)]
    with epochs.blas_limits(True):  # the same BLAS threads: results are then bitwise equal
        for p in check:
            epoch(p)
        run()
    for p, q in zip(params, check, strict=True):
        for k in ref.PARAM_NAMES:
            np.testing.assert_array_equal(p[k], q[k])

    benchmark.group = f"gil {name} {backend} batch=64"
    benchmark.extra_info.update(backend=backend, models=models)
    with epochs.blas_limits(True):
        benchmark.pedantic(run, rounds=3, iterations=1)
