"""Numba's first-call cost, kept visible: every float32 kernel (784-100-10, both
epoch paths) called once in a new process with an empty cache, then with the cache
that run wrote. extra_info holds both; the timed figure is the cold one."""

import pytest
from bench_common import BACKENDS

from fastmlp import bench


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba not installed")
def test_numba_first_call(benchmark):
    result = {}

    def run():
        result["cold"], result["cached"] = bench.numba_first_call_seconds()

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.group = "numba first call"
    benchmark.extra_info.update(compile_seconds=result["cold"], cached_seconds=result["cached"])
    assert result["cached"] < result["cold"]
