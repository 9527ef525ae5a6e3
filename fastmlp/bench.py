"""Epoch timing of every backend against its peers: ``fastmlp bench``.

The figures are seconds per training epoch (one pass over the training set,
mini-batch SGD, loss and accuracy included), median of repeats, all measured in
one process so that the ratios between backends hold even on a noisy machine.
The peers are the NumPy reference loop, PyTorch (nn + autograd + optim.SGD, and
hand-written tensor ops) and scikit-learn's MLPClassifier(solver="sgd"), where
installed. Each sparse-path epoch is also put against its row-pass floor: the
bare two passes over rows of the hidden weights per non-zero input that any
sparse epoch makes, on the same data and threads. The compiled backends are also
timed on one thread against all of them, in turns, and each backend's epochs from
batch 10 up are put side by side (the slowest over the fastest).
Slow runs (the NumPy and PyTorch loops at small batch sizes) are timed on a
prefix of the epoch and scaled to the full epoch; the table marks them with "~".

The pytest-benchmark suites in ``benches/`` time the same things per kernel.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import threading
import time

import numpy as np

from . import backends
from . import reference as ref
from ._kernels import caches, epochs
from ._kernels.caches import cpu_description

__all__ = [
    "OPENBLAS_VARS",
    "PEERS",
    "EXPLAIN_DENSITIES",
    "EXPLAIN_BATCHES",
    "run",
    "networks",
    "time_epoch",
    "thread_speedup",
    "batch_spread",
    "row_pass_floor",
    "explain_paths",
    "print_explanation",
    "synthetic_inputs",
    "environment",
    "write_json",
    "cpu_description",
    "blas_description",
    "gemm_peak_gflops",
    "flop_per_example",
    "init_params",
    "shape_name",
    "gil_release_ratio",
    "run_in_threads",
    "numba_first_call_seconds",
    "torch_available",
    "sklearn_available",
    "TorchTrainer",
    "SklearnTrainer",
]

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def flop_per_example(*sizes):
    """Multiply-adds x 2 of one example's forward and backward pass through layers of
    ``sizes`` (n_in, n_1, ..., n_out): per layer of weights (n_{k-1} by n_k), forward
    2 n_{k-1} n_k, its gradient 2 n_{k-1} n_k, and dl/dh of the layer below 2
    n_{k-1} n_k except for the first. 784-100-10: 319,600.
    """
    layers = [m * n for m, n in zip(sizes[:-1], sizes[1:], strict=True)]
    return 4 * sum(layers) + 2 * sum(layers[1:])


def init_params(shape, dtype, seed=0):
    """The benchmark's initial parameters of a network of layer sizes ``shape``."""
    return ref.init_params(shape[0], shape[1:-1], shape[-1], dtype=dtype, seed=seed)


def shape_name(shape):
    """ "784-256-128-10" """
    return "-".join(map(str, shape))


def gemm_peak_gflops(n=2048, repeats=3):
    """Measured float32 GEMM rate of scipy's BLAS (n x n x n), best of ``repeats``, GFLOP/s."""
    from scipy.linalg.blas import sgemm

    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.random((n, n), dtype=np.float32))
    b = np.asfortranarray(rng.random((n, n), dtype=np.float32))
    sgemm(1.0, a, b)
    best = min(_timed(lambda: sgemm(1.0, a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def blas_description():
    """The BLAS libraries loaded, their kernel (architecture) and thread counts."""
    from threadpoolctl import threadpool_info

    parts = []
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            lib = os.path.basename(pool.get("filepath", "")).split("-")[0].split(".")[0]
            parts.append(
                f"{pool.get('internal_api')} {pool.get('version')} kernel={pool.get('architecture')} "
                f"threads={pool.get('num_threads')} ({lib})"
            )
    return "; ".join(parts) or "no BLAS found by threadpoolctl"


def kernel_build():
    """Which build of the C kernels runs here: "x86-64-v4", "x86-64-v3", "x86-64
    baseline", "compiled once" (no builds per level), or None without the Cython
    backend."""
    if "cython" not in backends.available_backends():
        return None
    level = backends.kernels("cython").clone_level()
    return {0: "compiled once", 1: "x86-64 baseline"}.get(level, f"x86-64-v{level}")


def environment(dtype=np.float32):
    """What a measurement depends on: versions, CPU, cores, BLAS, threads."""
    import scipy

    from ._version import __version__

    model, simd = cpu_description()
    return {
        "date": time.strftime("%Y-%m-%d"),
        "fastmlp": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cpu": model,
        "simd": simd,
        "c_kernels": kernel_build(),
        "cores": epochs.available_cpus(),
        "caches": caches.caches()._asdict(),
        "threads": epochs.wanted_threads(None, backends.kernels("auto")),
        "blas": blas_description(),
        "openblas_env": {k: os.environ[k] for k in OPENBLAS_VARS if k in os.environ},
        "dtype": np.dtype(dtype).name,
    }


def write_json(path, environment, rows):
    """Write ``{"environment": ..., "rows": [...]}`` to ``path`` atomically, so a
    failure leaves any previous file as it was."""
    import json

    from .model import _atomic_write

    text = json.dumps({"environment": environment, "rows": rows}, indent=1, default=str)
    _atomic_write(path, lambda fh: fh.write(text.encode()))


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---- PyTorch: the same network and SGD, for comparison ----


def torch_available():
    import importlib.util

    return importlib.util.find_spec("torch") is not None


# The activations of fastmlp.tables as PyTorch tensor ops: f, and f' from the output.
_TORCH_OPS = {
    "tanh": (lambda t, x: t.tanh(x), lambda t, h: 1 - h * h),
    "relu": (lambda t, x: t.relu(x), lambda t, h: (h > 0).to(h.dtype)),
    "logistic": (lambda t, x: t.sigmoid(x), lambda t, h: h * (1 - h)),
    "identity": (lambda t, x: x, lambda t, h: t.ones_like(h)),
}


class TorchTrainer:
    """The same network and step in PyTorch, in two styles.

    ``style="autograd"``: ``torch.nn.Sequential(Linear, f, Linear)``,
    ``CrossEntropyLoss`` and ``torch.optim.SGD`` (or ``Adam``, kept through the
    epochs) — what a PyTorch user writes. ``style="manual"``: the forward and
    backward passes by hand with tensor ops and in-place ``addmm_`` updates (Adam's
    step in in-place tensor ops) — PyTorch at its leanest. f is the ``activation``;
    ``optimizer`` "sgd" (plain) or "adam" (torch's default betas and eps).
    """

    def __init__(self, params, style="autograd", activation="tanh", optimizer="sgd"):
        import torch

        from . import tables

        self.torch, self.style, self.optimizer = torch, style, optimizer
        self.opt, self.state, self.steps = None, {}, 0
        self.f, self.df = _TORCH_OPS[activation]
        self.names = list(params)
        t = {k: torch.from_numpy(np.array(v)) for k, v in params.items()}
        if style == "autograd":
            act = getattr(torch.nn, tables.activation(activation).torch)
            modules = []
            for W, _ in ref.layers(t):
                modules += [torch.nn.Linear(W.shape[1], W.shape[0], dtype=W.dtype), act()]
            self.net = torch.nn.Sequential(*modules[:-1])
            with torch.no_grad():
                for param, name in zip(self.net.parameters(), self.names, strict=True):
                    param.copy_(t[name])
            self.loss = torch.nn.CrossEntropyLoss()
        elif style == "manual":
            self.p = t
        else:
            raise ValueError(f"style must be 'autograd' or 'manual', got {style!r}")

    def params(self):
        if self.style == "autograd":
            pairs = zip(self.names, self.net.parameters(), strict=True)
            return {k: v.detach().numpy().copy() for k, v in pairs}
        return {k: v.numpy().copy() for k, v in self.p.items()}

    def epoch(self, X, labels, perm, batch_size, lr):
        """One epoch of SGD over X[perm] (torch tensors or arrays)."""
        torch = self.torch
        X = torch.as_tensor(X)
        labels = torch.as_tensor(labels)
        perm = torch.as_tensor(perm)
        if self.style == "autograd":
            if self.optimizer == "adam":
                self.opt = self.opt or torch.optim.Adam(self.net.parameters(), lr=lr)
            opt = self.opt or torch.optim.SGD(self.net.parameters(), lr=lr)
            for s in range(0, len(perm), batch_size):
                idx = perm[s : s + batch_size]
                opt.zero_grad()
                self.loss(self.net(X[idx]), labels[idx]).backward()
                opt.step()
            return
        layers = ref.layers(self.p)
        with torch.no_grad():
            for s in range(0, len(perm), batch_size):
                idx = perm[s : s + batch_size]
                xb, yb = X[idx], labels[idx]
                inputs = [xb]  # what each layer reads: the stored activations
                for W, b in layers[:-1]:
                    inputs.append(self.f(torch, torch.addmm(b, inputs[-1], W.T)))
                Wy, by = layers[-1]
                d = torch.softmax(torch.addmm(by, inputs[-1], Wy.T), dim=1)
                d[torch.arange(len(idx)), yb] -= 1
                d /= len(idx)
                self.steps += 1
                for k in range(len(layers) - 1, -1, -1):
                    W, b = layers[k]
                    below = (d @ W).mul_(self.df(torch, inputs[k])) if k else None
                    if self.optimizer == "adam":
                        self._adam(W, d.T @ inputs[k], lr)
                        self._adam(b, d.sum(0), lr)
                    else:
                        W.addmm_(d.T, inputs[k], alpha=-lr)
                        b.sub_(d.sum(0), alpha=lr)
                    d = below

    def _adam(self, p, g, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        """torch.optim.Adam's step of ``p`` from ``g``, in place, by hand."""
        m, v = self.state.setdefault(id(p), (self.torch.zeros_like(p), self.torch.zeros_like(p)))
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = v.sqrt().div_((1 - beta2**self.steps) ** 0.5).add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1 - beta1**self.steps))


# ---- the epoch table ----

PEERS = ("numpy", "torch-autograd", "torch-manual", "sklearn")


def sklearn_available():
    import importlib.util

    return importlib.util.find_spec("sklearn") is not None


class SklearnTrainer:
    """scikit-learn's ``MLPClassifier(solver="sgd", momentum=0)`` on the same network
    (``solver="adam"`` for ``optimizer="adam"``): the same hidden activation
    (scikit-learn names them as fastmlp does), a constant learning rate, no L2 term;
    an epoch is one ``partial_fit`` over the rows in the given order."""

    def __init__(self, params, batch_size, lr, activation="tanh", optimizer="sgd"):
        import warnings

        from sklearn.neural_network import MLPClassifier

        self.clf = MLPClassifier(
            hidden_layer_sizes=tuple(W.shape[0] for W, _ in ref.layers(params)[:-1]),
            activation=activation,
            solver=optimizer,
            momentum=0.0,
            nesterovs_momentum=False,
            alpha=0.0,
            learning_rate_init=lr,
            batch_size=batch_size,
            shuffle=False,
        )
        self.n_out = ref.layers(params)[-1][0].shape[0]
        self.warnings = warnings

    def epoch(self, X, labels, perm):
        with self.warnings.catch_warnings():
            self.warnings.simplefilter("ignore")
            self.clf.partial_fit(X[perm], labels[perm], classes=np.arange(self.n_out))


def _runner(name, params, X, labels, batch_size, lr, n_threads=None, activation="tanh", optimizer="sgd"):
    """(a function that runs one epoch (or its prefix) over a permutation and returns
    what ran, whether it wants OpenBLAS on one thread); ``optimizer`` "sgd" (plain)
    or "adam"."""
    if name.startswith("torch-"):
        trainer = TorchTrainer(params, name.split("-", 1)[1], activation, optimizer)
        import torch

        Xt, yt = torch.from_numpy(X), torch.from_numpy(labels.astype(np.int64))
        return (lambda perm: trainer.epoch(Xt, yt, torch.from_numpy(perm), batch_size, lr)), False
    if name == "sklearn":
        trainer = SklearnTrainer(params, batch_size, lr, activation, optimizer)
        return (lambda perm: trainer.epoch(X, labels, perm)), False
    p = {k: v.copy() for k, v in params.items()}
    state = [{k: np.zeros_like(v) for k, v in p.items()} for _ in range(2 if optimizer == "adam" else 0)]
    runner = epochs.EpochRunner(
        backends.kernels(name), p, X, labels, batch_size=batch_size, n_threads=n_threads, activation=activation,
        velocity=state[0] if state else None, second_moment=state[1] if state else None,
    )  # fmt: skip
    step = epochs.Step(lr, optimizer=optimizer)

    def run(perm):
        nonlocal step
        runner.epoch(perm, step)
        step = step._replace(steps=step.steps + -(-len(perm) // batch_size))
        return runner.path, runner.threads

    return run, epochs.wants_one_blas_thread(runner.path, batch_size)


def row_pass_floor(X, labels, shape, batch_size, n_threads, repeats=3):
    """Seconds per epoch of the row-pass floor (the sparse epoch's two passes over a
    row of the transposed hidden weights per non-zero input, nothing else), on
    ``n_threads`` threads meeting every ``batch_size`` examples; the median of
    ``repeats``, as the epochs it is put against. With several hidden layers, the
    first layer's (what the sparse-first passes cost; the dense layers after it add
    to it). None where the Cython kernels are not available."""
    if "cython" not in backends.available_backends():
        return None
    kern = backends.kernels("cython")
    params = ref.init_params(shape[0], shape[1], shape[-1], dtype=X.dtype, seed=0)
    runner = epochs.EpochRunner(kern, params, X, labels, batch_size=batch_size, path="sparse", n_threads=n_threads)
    runner._use_threads(runner._usable(n_threads))
    perm = np.random.default_rng(0).permutation(X.shape[0])

    def run():
        kern.row_passes(
            runner.block, runner.rows, labels, perm, min(batch_size, len(perm)), runner.work, runner.threads
        )

    run()
    return statistics.median(_timed(run) for _ in range(repeats))


def _warm_up(run, perm, batch_size, budget):
    """Runs ``run`` on a short prefix of ``perm`` (compile, fault in pages, spin up
    BLAS threads) and returns (what ran, how many examples of ``perm`` to time):
    all of them, or a prefix sized to ``budget`` seconds where a whole epoch would
    take much longer."""
    n = len(perm)
    warm = perm[: min(n, max(10 * batch_size, 2000))]
    ran = run(warm)
    estimate = _timed(lambda: run(warm)) * n / len(warm)
    if estimate > 2 * budget:
        return ran, max(batch_size, int(n * budget / estimate) // batch_size * batch_size)
    return ran, n


def time_epoch(
    name, params, X, labels, batch_size, lr, budget=1.0, repeats=3, perm=None, activation="tanh", optimizer="sgd"
):
    """(seconds per epoch, extrapolated?, (path, threads) or None) for backend ``name``
    training the network of ``params`` with the hidden ``activation``.

    A warm-up call on a short prefix compiles and fills caches. Then, if a whole
    epoch would take much longer than ``budget`` seconds, a prefix sized to the
    budget is timed and scaled; otherwise the median of ``repeats`` epochs.
    """
    n = len(X)
    if perm is None:
        perm = np.random.default_rng(0).permutation(n)
    run, one_blas_thread = _runner(name, params, X, labels, batch_size, lr, activation=activation, optimizer=optimizer)
    with epochs.blas_limits(one_blas_thread):
        ran, m = _warm_up(run, perm, batch_size, budget)
        if m < n:
            return _timed(lambda: run(perm[:m])) * n / m, True, ran
        return statistics.median(_timed(lambda: run(perm)) for _ in range(repeats)), False, ran


def thread_speedup(
    name, params, X, labels, batch_size, lr, n_threads, budget=1.0, repeats=5, perm=None, activation="tanh",
    optimizer="sgd",
):  # fmt: skip
    """(seconds per epoch on one thread, on ``n_threads``, (path, threads) of the
    latter) for the compiled backend ``name``: the two epochs timed in turns,
    ``repeats`` times each, so that the machine's noise falls on both alike;
    medians. Epochs that would take much longer than ``budget`` seconds are timed
    on a prefix and scaled."""
    n = len(X)
    if perm is None:
        perm = np.random.default_rng(0).permutation(n)
    kw = dict(activation=activation, optimizer=optimizer)
    one, one_blas_thread = _runner(name, params, X, labels, batch_size, lr, n_threads=1, **kw)
    many, _ = _runner(name, params, X, labels, batch_size, lr, n_threads=n_threads, **kw)
    with epochs.blas_limits(one_blas_thread):
        _, m = _warm_up(one, perm, batch_size, budget)
        ran, _ = _warm_up(many, perm, batch_size, budget)
        times = {one: [], many: []}
        for _ in range(repeats):
            for run, seconds in times.items():
                seconds.append(_timed(functools.partial(run, perm[:m])) * n / m)
    return statistics.median(times[one]), statistics.median(times[many]), ran


def batch_spread(rows, smallest=10):
    """{(network, backend): (slowest / fastest epoch, slowest batch, fastest batch)}
    over the rows' batch sizes from ``smallest`` up ("full" included), where a
    backend ran at two or more of them."""
    by = {}
    for r in rows:
        if r["batch"] == "full" or int(r["batch"]) >= smallest:
            by.setdefault((r["network"], r["backend"]), []).append((r["seconds"], r["batch"]))
    spread = {}
    for key, runs in by.items():
        if len(runs) > 1:
            (fast, fast_batch), (slow, slow_batch) = min(runs), max(runs)
            spread[key] = (slow / fast, slow_batch, fast_batch)
    return spread


def synthetic_inputs(n, n_in, density, seed=0, dtype=np.float32):
    """``n`` rows of ``n_in`` inputs in (0, 1], each non-zero with probability ``density``."""
    rng = np.random.default_rng(seed)
    X = (rng.random((n, n_in)) + 1e-3).astype(dtype)
    X[rng.random((n, n_in)) >= density] = 0
    return X


EXPLAIN_DENSITIES = (0.19, 0.3, 0.5, 1.0)
EXPLAIN_BATCHES = (1, 2, 4, 10, 64, 256, "full")


def explain_paths(
    densities=EXPLAIN_DENSITIES,
    batches=EXPLAIN_BATCHES,
    n=4000,
    shape=(784, 100, 10),
    backend="auto",
    dtype=np.float32,
    repeats=3,
    n_threads=None,
):
    """Measure the rule by which "auto" picks an epoch path, on this machine.

    For each input density and batch size, one epoch over ``n`` synthetic examples
    of an MNIST-sized network on the sparse path and on the BLAS path (medians of
    ``repeats``, scaled to seconds per 60,000 examples), next to the path "auto"
    takes. Returns a list of dicts: density, batch, sparse, blas (None where the
    path cannot run), auto (the path chosen), fastest, loss (auto's time over the
    fastest, 1.0 when auto chose it).
    """
    kern = backends.kernels(backend)
    if "blas" not in getattr(kern, "PATHS", ()):
        raise ValueError(f"backend {backend!r} has no compiled epoch paths to compare")
    labels = np.random.default_rng(1).integers(0, shape[2], n).astype(np.intp)
    perm = np.random.default_rng(2).permutation(n)
    rows = []
    for density in densities:
        X = synthetic_inputs(n, shape[0], density, dtype=dtype)
        measured_density = epochs.input_density(X)
        for b in batches:
            bs = n if b == "full" else int(b)
            times = {}
            for path in ("sparse", "blas"):
                if path == "blas" and bs == 1:
                    times[path] = None
                    continue
                params = ref.init_params(*shape, dtype=dtype, seed=0)
                runner = epochs.EpochRunner(kern, params, X, labels, batch_size=bs, path=path, n_threads=n_threads)
                with epochs.blas_limits(True):
                    runner.epoch(perm[: max(bs, 500)], 0.01)
                    epoch = functools.partial(runner.epoch, perm, 0.01)
                    seconds = statistics.median(_timed(epoch) for _ in range(repeats))
                times[path] = seconds * 60_000 / n
            crossing = None
            if epochs.needs_crossing(bs, measured_density):
                crossing = epochs.dense_rows_crossing(kern, dtype, n_threads, shape[:2])
            auto = epochs.auto_path(bs, measured_density, crossing=crossing)[0]
            ran = {k: v for k, v in times.items() if v is not None}
            fastest = min(ran, key=ran.get)
            rows.append(
                dict(
                    density=measured_density,
                    batch=b,
                    sparse=times["sparse"],
                    blas=times["blas"],
                    auto=auto,
                    fastest=fastest,
                    loss=ran[auto] / ran[fastest],
                )
            )
    return rows


def print_explanation(rows, out=None):
    """The table of :func:`explain_paths`, one line per density and batch size, to
    ``out`` (``sys.stdout`` at the time of the call by default)."""
    out = sys.stdout if out is None else out
    print("seconds per 60,000 examples, synthetic MNIST-sized inputs (784-100-10):", file=out)
    print(f"{'density':>8} {'batch':>6} {'sparse':>8} {'blas':>8}  {'auto':<7} {'fastest':<7} auto/fastest", file=out)
    for r in rows:
        blas = f"{r['blas']:.3f}" if r["blas"] is not None else "-"
        print(
            f"{r['density']:8.2f} {str(r['batch']):>6} {r['sparse']:8.3f} {blas:>8}  {r['auto']:<7} "
            f"{r['fastest']:<7} {r['loss']:.2f}",
            file=out,
        )
    worst = max(rows, key=lambda r: r["loss"])
    if worst["loss"] == 1.0:
        print("auto took the fastest path at every density and batch size here", file=out)
        return
    print(
        f"worst choice here: density {worst['density']:.2f}, batch {worst['batch']}: auto's path takes "
        f"{worst['loss']:.2f}x the time of the fastest",
        file=out,
    )


def gil_release_ratio(params, X, labels, batch_size, backend, lr=0.1):
    """(one model's epoch seconds, two models in two threads' seconds) for ``backend``."""
    kern = backends.kernels(backend)
    perm = np.random.default_rng(0).permutation(len(X))
    models = [{k: v.copy() for k, v in params.items()} for _ in range(2)]

    def epoch(p):
        epochs.train_epoch(kern, X, labels, perm, p, lr, batch_size)

    with epochs.blas_limits(True):  # one BLAS thread each: two threads fill the two cores
        epoch(models[0])
        one = statistics.median(_timed(lambda: epoch(models[0])) for _ in range(3))

        both = statistics.median(_timed(lambda: run_in_threads(epoch, models)) for _ in range(3))
    return one, both


def run_in_threads(fn, items):
    """fn(item) for every item, each in its own thread; returns when all are done."""
    threads = [threading.Thread(target=fn, args=(item,)) for item in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


_FIRST_CALLS = """
import time, numpy as np, fastmlp
from fastmlp import backends
from fastmlp._kernels import epochs
t0 = time.perf_counter()
k = backends.kernels("numba")
rng = np.random.default_rng(0)
X, y = rng.random((256, 784), dtype=np.float32), np.arange(256) % 10
for batch, path in ((1, "sparse"), (64, "sparse"), (64, "blas")):
    p = fastmlp.reference.init_params(784, 100, 10)
    epochs.train_epoch(k, X, y, np.arange(256), p, 0.1, batch, "ce", path)
tanh = fastmlp.tables.activation("tanh").code
H = k.forward_hidden(X, p["Wh"], p["bh"], tanh)
dZ = k.loss_grad(k.forward_logits(H, p["Wy"], p["by"]), y, epochs.loss_code("ce"))[0]
k.backward_update(X, H, dZ, epochs.Params(**p), 0.1, tanh)
k.activation(X[0], tanh)
print(time.perf_counter() - t0)
"""


def numba_first_call_seconds():
    """(seconds, seconds): the first call of every float32 Numba kernel (both epoch
    paths, 784-100-10) in a new process with an empty cache, then again with the
    cache that run wrote."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        times = [
            float(
                subprocess.run(
                    [sys.executable, "-c", _FIRST_CALLS], env=env, check=True, capture_output=True, text=True
                ).stdout
            )
            for _ in range(2)
        ]
    return times[0], times[1]


def networks(data_dir=None, which=("mnist", "circles"), hidden=None):
    """{name: (X float32, labels intp, (n_in, n_1, ..., n_out))} for the benchmark
    networks: 784-100-10 and 2-10-2, or with the hidden widths ``hidden`` (a tuple)."""
    from . import datasets

    out = {}
    for name in which:
        if name == "mnist":
            X, y, _, _ = datasets.load_mnist(data_dir, download=data_dir is None)
            out["mnist"] = (X, y.astype(np.intp), (784, *(hidden or (100,)), 10))
        elif name == "circles":
            X, y = datasets.circles(10_000, noise=0.1, seed=0)
            out["circles"] = (X.astype(np.float32), y.astype(np.intp), (2, *(hidden or (10,)), 2))
        else:
            raise ValueError(f"network must be 'mnist' or 'circles', got {name!r}")
    return out


def run(
    nets, batch_sizes=(1, 10, 64, 256, "full"), dtype=np.float32, names=None, budget=1.0, out=None,
    activation="tanh", optimizer="sgd",
):  # fmt: skip
    """Time every backend and peer on every network and batch size, every one training
    the hidden ``activation`` with ``optimizer``: plain SGD (lr 0.01 at batch 1, 0.1
    above) or Adam (scikit-learn's and PyTorch's defaults: lr 0.001, betas 0.9 and
    0.999, eps 1e-8); print and return the table rows. A row's "x peer" is
    the speed-up over the fastest peer (the NumPy loop, PyTorch two ways,
    scikit-learn) in the same run; "% floor" the row-pass floor of the same data on
    the same threads over the epoch (sparse path); "x 1 thr" a compiled backend's
    epoch on one thread over its epoch on all of them, the two timed in turns
    (``thread_speedup``). After each network, the slowest epoch from batch 10 up
    over the fastest, per backend (``batch_spread``). The table goes to ``out``
    (``sys.stdout`` at the time of the call by default)."""
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    out = sys.stdout if out is None else out
    if names is None:
        names = (
            backends.available_backends()
            + (["torch-autograd", "torch-manual"] if torch_available() else [])
            + (["sklearn"] if sklearn_available() else [])
        )
    peak = gemm_peak_gflops()
    threads = _torch_threads() if any(n.startswith("torch") for n in names) else None
    all_threads = epochs.wanted_threads(None, backends.kernels("auto"))
    compiled = [n for n in backends.available_backends() if n != "numpy"]
    print(
        f"fastmlp bench: {time.strftime('%Y-%m-%d')}, {np.dtype(dtype).name}, {activation} hidden units, "
        f"{'plain SGD' if optimizer == 'sgd' else 'Adam'}, "
        f"seconds per epoch (median; ~ = timed on part of the epoch and scaled)",
        file=out,
    )
    model, simd = cpu_description()
    print(
        f"CPU: {model} ({simd}), {epochs.available_cpus()} cores, {caches.describe()}; "
        f"C kernels: {kernel_build()} build",
        file=out,
    )
    print(f"BLAS: {blas_description()}; fastmlp's threads: {all_threads}", file=out)
    print(
        f"measured float32 GEMM peak: {peak:.0f} GFLOP/s" + (f"; torch threads: {threads}" if threads else ""), file=out
    )
    if "numba" in names:
        cold, cached = numba_first_call_seconds()
        print(
            f"numba first call of every float32 kernel: {cold:.1f} s compiling, {cached:.2f} s from the cache", file=out
        )
    rows = []
    for net, (X, labels, shape) in nets.items():
        X = np.ascontiguousarray(X, dtype=dtype)
        params = init_params(shape, dtype)
        flop = flop_per_example(*shape) * len(X)
        floor1 = row_pass_floor(X, labels, shape, 1, 1)
        first = f" (first layer, {shape_name((shape[0], shape[1], shape[-1]))})" if len(shape) > 3 else ""
        print(
            f"\n{net} {shape_name(shape)}, N = {len(X)}; row-pass floor{first}: one thread "
            + (f"{floor1:.4g} s" if floor1 else "-"),
            file=out,
        )
        header = (
            f"{'batch':>6} {'backend':>15} {'s/epoch':>9} {'x numpy':>8} {'x peer':>7} {'GFLOP/s':>8} "
            f"{'% peak':>7} {'floor':>7} {'% floor':>8} {'x 1 thr':>7}  path, threads"
        )
        print(header, file=out)
        for b in batch_sizes:
            bs = len(X) if b == "full" else int(b)
            lr = 1e-3 if optimizer == "adam" else 0.01 if bs == 1 else 0.1
            kw = dict(activation=activation, optimizer=optimizer)
            floor = row_pass_floor(X, labels, shape, bs, all_threads)
            times = {name: time_epoch(name, params, X, labels, bs, lr, budget, **kw) for name in names}
            scaling = {
                name: thread_speedup(name, params, X, labels, bs, lr, all_threads, budget, **kw)
                for name in names
                if name in compiled and all_threads > 1
            }
            # where the backend takes one thread anyway (a small network), there is no ratio
            scaling = {name: v for name, v in scaling.items() if v[2][1] > 1}
            peers = {n: t for n, (t, _, _) in times.items() if n in PEERS}
            best_peer = min(peers.values(), default=None)
            for name, (t, scaled, ran) in times.items():
                gflops = flop / t / 1e9
                row = dict(
                    network=net,
                    shape=shape_name(shape),
                    activation=activation,
                    optimizer=optimizer,
                    batch=b,
                    backend=name,
                    seconds=t,
                    scaled=scaled,
                    speedup_numpy=times["numpy"][0] / t if "numpy" in times else None,
                    speedup_peer=best_peer / t if best_peer else None,
                    best_peer=min(peers, key=peers.get) if peers else None,
                    gflops=gflops,
                    peak_fraction=gflops / peak,
                    path=ran[0] if ran else None,
                    threads=ran[1] if ran else None,
                    floor=floor if ran and ran[0] == "sparse" else None,
                    one_thread_seconds=scaling[name][0] if name in scaling else None,
                    all_threads_seconds=scaling[name][1] if name in scaling else None,
                    threads_speedup=scaling[name][0] / scaling[name][1] if name in scaling else None,
                )
                rows.append(row)
                on_floor = row["floor"] is not None
                print(
                    f"{str(b):>6} {name:>15} {('~' if scaled else '') + f'{t:.4g}':>9} "
                    f"{_fmt(row['speedup_numpy'])} {_fmt(row['speedup_peer'], 7)} {gflops:8.1f} "
                    f"{100 * gflops / peak:6.1f}% {f'{floor:.4g}' if on_floor else '-':>7} "
                    f"{f'{100 * floor / t:.0f}%' if on_floor else '-':>8} {_fmt(row['threads_speedup'], 7, 2)}"
                    + (f"  {ran[0]}, {ran[1]}" if ran else ""),
                    file=out,
                    flush=True,
                )
        spread = {b: v for (n, b), v in batch_spread(rows).items() if n == net}
        if spread:
            print(
                "slowest / fastest epoch from batch 10 up: "
                + ", ".join(f"{b} {r:.2f}x (batch {slow} / {fast})" for b, (r, slow, fast) in spread.items()),
                file=out,
            )
    return rows


def _fmt(x, width=8, digits=1):
    return f"{x:{width}.{digits}f}" if x is not None else f"{'-':>{width}}"


def _torch_threads():
    import torch

    return torch.get_num_threads()
