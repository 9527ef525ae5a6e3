"""A sweep of 36 models (3 learning rates x 3 hidden sizes x 4 seeds, 2 epochs) on
the whole MNIST training set: sequential, on the local process pool, and on a Dask
LocalCluster with 2 workers.

On 2 cores the pool and the cluster should take about half the sequential time;
extra_info records the speed-up and the overhead per task against that ideal
(worker start-up, shipping the data once, scheduling).
"""

import time

import pytest
from bench_common import load_network

import fastmlp

GRID = {"lr": [0.03, 0.1, 0.3], "n_hidden": [50, 100, 200], "seed": [0, 1, 2, 3], "batch_size": [64]}
_sequential = {}


@pytest.mark.parametrize("where", ["sequential", "pool", "dask"])
def test_sweep(benchmark, where, request):
    smoke = request.config.getoption("benchmark_disable", False)
    name, X, labels, _ = load_network("mnist", smoke, rows=None)
    kwargs = dict(epochs=2, as_frame=False)
    if where == "dask":
        distributed = pytest.importorskip("dask.distributed")
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        )
        client = distributed.Client(cluster)
        kwargs["client"] = client
    else:
        kwargs["n_jobs"] = 1 if where == "sequential" else 2
    try:

        def run():
            t0 = time.perf_counter()
            records = fastmlp.sweep(X, labels, GRID, **kwargs)
            return records, time.perf_counter() - t0

        records, wall = benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        if where == "dask":
            client.close()
            cluster.close()
    assert len(records) == 36 and not any(r["error"] for r in records)
    train_seconds = sum(r["seconds"] for r in records)
    benchmark.group = f"sweep {name} 36 models"
    benchmark.extra_info.update(where=where, models=36, training_seconds=train_seconds)
    if where == "sequential":
        _sequential[name] = wall
    elif name in _sequential:
        ideal = _sequential[name] / 2
        benchmark.extra_info.update(speedup=_sequential[name] / wall, overhead_per_task_s=(wall - ideal) / 36)
