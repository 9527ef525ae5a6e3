"""The compiled backends at parity: what one implements, the other does too, or the
difference is declared (fastmlp.backends.DIFFERENCES) with its reason."""

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import BACKENDS, random_problem

from fastmlp import backends
from fastmlp._kernels import epochs

# every option of a training run that a path may or may not take
OPTIONS = {
    "momentum": dict(opt=epochs.Step(0.05, 0.9)),
    "nesterov": dict(opt=epochs.Step(0.05, 0.9, 0.0, True)),
    "weight decay": dict(opt=epochs.Step(0.05, 0.0, 1e-3)),
    "alpha (decay by weight sum)": dict(opt=epochs.Step(0.05, 0.0, 1e-3, False, True), weighted=True),
    "sample weights": dict(weighted=True),
    "float32": dict(dtype=np.float32),
    "float64": dict(dtype=np.float64),
    "CSR input": dict(csr=True),
    "two threads": dict(n_threads=2),
}


def _takes(kern, path, option):
    """Whether an epoch on ``path`` with ``option`` runs (and trains) on ``kern``."""
    o = OPTIONS[option]
    dtype = o.get("dtype", np.float64)
    X, y, p = random_problem(40, 9, 20, 3, dtype, seed=1, sparse=True)
    if o.get("csr") and path == "blas":
        return False  # the BLAS path takes dense inputs on every backend (epochs.choose_path)
    w = np.linspace(0.5, 1.5, 40).astype(dtype) if o.get("weighted") else None
    opt = o.get("opt", epochs.Step(0.05))
    v = {k: np.zeros_like(a) for k, a in p.items()} if opt.momentum else None
    before = p["Wh"].copy()
    runner = epochs.EpochRunner(
        kern, p, sp.csr_matrix(X) if o.get("csr") else X, y, batch_size=8, path=path,
        n_threads=o.get("n_threads", 1), weights=w, velocity=v,
    )  # fmt: skip
    try:
        runner.epoch(np.arange(40), opt)
    except (ValueError, NotImplementedError):
        return False
    return not np.array_equal(p["Wh"], before)


def _everything(name):
    kern = backends.kernels(name)
    out = backends.features(name)
    for path, option in itertools.product(kern.PATHS, OPTIONS):
        if _takes(kern, path, option):
            out.add(f"{option} on the {path} path")
    return out


@pytest.mark.skipif(not set(backends.COMPILED) <= set(BACKENDS), reason="needs both compiled backends")
def test_the_compiled_backends_differ_only_where_declared():
    have = {name: _everything(name) for name in backends.COMPILED}
    for name, other in itertools.permutations(backends.COMPILED):
        for feature in sorted(have[other] - have[name]):
            assert (name, feature) in backends.DIFFERENCES, f"{other} has {feature!r}, {name} has not, undeclared"
    for (name, feature), reason in backends.DIFFERENCES.items():
        others = set(backends.COMPILED) - {name}
        assert feature not in have[name], f"{name} has {feature!r} now: drop its declared difference"
        assert all(feature in have[o] for o in others), f"no backend has {feature!r}"
        assert len(reason) > 40, f"the difference {feature!r} needs its reason"


def test_every_backend_lists_the_tables_it_implements():
    """The compiled backends implement every activation and loss of fastmlp.tables,
    and the NumPy reference does by construction."""
    from fastmlp import tables

    for name in BACKENDS:
        features = backends.features(name)
        assert {f"activation {a}" for a in tables.ACTIVATIONS} <= features, name
        assert {f"loss {n}" for n in tables.LOSSES} <= features, name
