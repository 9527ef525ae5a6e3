"""One epoch of each output of the table, fastmlp's estimators against scikit-learn's.

Each benchmark fits ``fastmlp.sklearn`` and ``sklearn.neural_network`` estimators for
one epoch (``max_iter=1``) at scikit-learn's defaults (relu, Adam at 1e-3, batch
200, one hidden layer of 100 units) on MNIST's images with targets made from their
digits, so that every output trains on the same inputs:

- "binary": is the digit odd (one logistic unit, binary cross-entropy);
- "multilabel": odd, greater than 4, prime (three logistic units);
- "regression": the digit's value and its square over 10 (identity, squared error);
- "poisson": the digit's value as a count (exp, Poisson deviance).

Groups are "output <name>": the two estimators side by side. The fastmlp row's
``extra_info`` holds scikit-learn's median seconds and the speed-up in the same run,
printed per benchmark. fastmlp's fitted model is scored against scikit-learn's:
the same model, so after one epoch fastmlp's may not trail by much.
"""

import time
import warnings

import numpy as np
import pytest
from bench_common import MNIST_DIR, SMOKE_ROWS

import fastmlp
from fastmlp import bench

pytest.importorskip("sklearn")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402

import fastmlp.sklearn as fsk  # noqa: E402

OUTPUTS = ["binary", "multilabel", "regression", "poisson"]
SCORE_GAP = 0.05  # accuracy or R^2 after one epoch, fastmlp's below scikit-learn's by at most this


def targets(name, digits):
    """(estimator classes (fastmlp, scikit-learn), keywords, targets) of output ``name``."""
    d = digits.astype(np.float64)
    if name == "binary":
        return (fsk.MLPClassifier, SkClassifier), {}, digits % 2
    if name == "multilabel":
        return (
            (fsk.MLPClassifier, SkClassifier),
            {},
            np.stack([digits % 2, digits > 4, np.isin(digits, [2, 3, 5, 7])], 1),
        )
    if name == "regression":
        return (fsk.MLPRegressor, SkRegressor), {}, np.stack([d, d * d / 10], 1)
    return (fsk.MLPRegressor, SkRegressor), {"loss": "poisson"}, d


def _fit(make, X, y):
    """(seconds of a one-epoch fit, the fitted estimator)."""
    model = make()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter=1: one epoch, as asked
        model.fit(X, y)
    return time.perf_counter() - t0, model


@pytest.mark.parametrize("output", OUTPUTS)
def test_output_epoch(benchmark, request, output):
    smoke = request.config.getoption("benchmark_disable", False)
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST is not in {MNIST_DIR} (set FASTMLP_MNIST_DIR)")
    X, digits, _, _ = fastmlp.datasets.load_mnist(MNIST_DIR)
    rows = SMOKE_ROWS if smoke else len(X)
    X, digits = np.ascontiguousarray(X[:rows], dtype=np.float32), digits[:rows]
    (ours, theirs), kw, y = targets(output, digits)
    kw = dict(kw, max_iter=1, random_state=0)

    theirs_fits = [_fit(lambda: theirs(**kw), X, y) for _ in range(1 if smoke else 3)]
    their_seconds, their_model = float(np.median([t for t, _ in theirs_fits])), theirs_fits[-1][1]
    _fit(lambda: ours(dtype=np.float32, **kw), X[:1000], y[:1000])  # warm-up: load, measure, fault in
    our_fits = []
    benchmark.group = f"output {output}"
    benchmark.pedantic(
        lambda: our_fits.append(_fit(lambda: ours(dtype=np.float32, **kw), X, y)),
        rounds=1 if smoke else 5,
        iterations=1,
    )
    our_seconds, our_model = float(np.median([t for t, _ in our_fits])), our_fits[-1][1]
    assert our_model.score(X, y) >= their_model.score(X, y) - SCORE_GAP

    benchmark.extra_info.update(
        output=output,
        rows=rows,
        sklearn_seconds=their_seconds,
        fastmlp_seconds=our_seconds,
        speedup=their_seconds / our_seconds,
        blas=bench.blas_description(),
    )
    print(
        f"\noutput {output}, {rows} rows, one epoch: fastmlp {our_seconds:.3f} s, scikit-learn {their_seconds:.3f} s, "
        f"{their_seconds / our_seconds:.1f}x"
    )
