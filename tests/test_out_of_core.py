"""Out of core: scikit-learn's partial_fit under dask-ml's Incremental trains block by
block on Dask arrays (dense or sparse blocks), on more data than the memory allowed."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="dask is not installed (pip install 'fastmlp[dask]')")
wrappers = pytest.importorskip("dask_ml.wrappers", reason="dask-ml is not installed (pip install 'fastmlp[dask]')")
sklearn_mlp = pytest.importorskip("fastmlp.sklearn")


def _blocks(n, n_features, chunk, seed=0):
    """A labelled Dask array: a linear rule over uniform features, block by block."""
    X = da.random.RandomState(seed).random_sample((n, n_features), chunks=(chunk, n_features)).astype(np.float32)
    w = np.random.default_rng(seed).standard_normal(n_features)
    y = (X @ w > w.sum() / 2).astype(np.int64)
    return X, y


@pytest.mark.parametrize("sparse", [False, True])
def test_incremental_trains_block_by_block_as_partial_fit_does(sparse):
    X, y = _blocks(6000, 20, 1500)
    if sparse:
        import scipy.sparse as sp

        X = X.map_blocks(lambda block: sp.csr_matrix(np.where(block > 0.5, block, 0)), dtype=np.float32)
    inc = wrappers.Incremental(
        sklearn_mlp.MLPClassifier(hidden_layer_sizes=(16,), random_state=0, shuffle=False),
        scoring="accuracy",
        shuffle_blocks=False,
    )
    inc.fit(X, y, classes=[0, 1])
    # the same blocks, in the same order, through partial_fit by hand
    by_hand = sklearn_mlp.MLPClassifier(hidden_layer_sizes=(16,), random_state=0, shuffle=False)
    for Xb, yb in zip(X.to_delayed().ravel(), y.to_delayed().ravel(), strict=True):
        by_hand.partial_fit(Xb.compute(), yb.compute(), classes=[0, 1])
    assert inc.estimator_.t_ == 6000
    for a, b in zip(inc.estimator_.coefs_, by_hand.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)
    assert inc.score(X, y) > 0.6


LIMITED = """
import resource, sys
import numpy as np, dask, dask.array as da
from dask_ml.wrappers import Incremental
from fastmlp.sklearn import MLPClassifier
clf = MLPClassifier(hidden_layer_sizes=(32,), random_state=0)
clf.partial_fit(np.random.rand(64, 100).astype(np.float32), np.arange(64) % 2, classes=[0, 1])  # compile
# from here the process may take {cap} MB more than it holds: Linux counts its data
# (heap and private mappings) against RLIMIT_DATA
with open("/proc/self/status") as f:
    data_kb = next(int(line.split()[1]) for line in f if line.startswith("VmData:"))
cap = data_kb * 1024 + {cap} * 2**20
resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
try:
    np.ones({total} * 2**20 // 4, np.float32)
except MemoryError:
    print("the whole array does not fit", flush=True)
X = da.random.RandomState(0).random_sample(({rows}, 100), chunks=({chunk}, 100)).astype(np.float32)
w = np.random.default_rng(0).standard_normal(100)
y = (X @ w > w.sum() / 2).astype(np.int64)
with dask.config.set(scheduler="synchronous"):
    inc = Incremental(clf, scoring="accuracy").fit(X, y, classes=[0, 1])
    print("trained", inc.estimator_.t_, "rows", flush=True)  # Incremental trains a clone
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA caps heap and mappings on Linux")
def test_incremental_trains_on_a_dask_array_larger_than_the_memory_cap():
    cap, total = 300, 800  # MB: the array X is 800 MB of float32, in blocks of 20 MB
    rows, chunk = total * 2**20 // 400, 20 * 2**20 // 400
    script = LIMITED.format(cap=cap, total=total, rows=rows, chunk=chunk)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "the whole array does not fit" in out.stdout
    assert f"trained {rows} rows" in out.stdout
