"""Runs epochs of mini-batch SGD on a backend's compiled primitives.

This is the one place that decides, for a training run:

- the loss table: a loss name -> the integer code the compiled primitives take;
- the epoch path: "small" (hand-written loops over the non-zero inputs, no BLAS)
  or "blas" (scipy's GEMMs), by the measured rule of ``takes_small_path``;
- the parameter layout of that path (the small path works on a padded,
  transposed, cache-line aligned copy of the parameters) and the workspaces;
- the batch order (a full batch reads X in place) and the chunking of an epoch
  into compiled calls (Ctrl-C and divergence are noticed between chunks);
- the BLAS thread count;

then it calls the chosen backend's primitive for that path. The backends
(``_cy``, ``_nb``, ``_np``) only compute; see ``fastmlp/_kernels/__init__.py``
for their contract.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import threading
from typing import NamedTuple

import numpy as np

# ---- the loss table ----

# name -> code. Adding a loss: its functions in fastmlp/reference.py, a row here,
# and its branch in each backend's row-loss function (_fused_impl.h
# fm_row_loss_grad, _nb.py _row_loss_grad); the compiled code rejects any other code.
LOSS_CODES = {"ce": 0, "mse": 1}


def loss_code(name):
    """The code of loss ``name`` for the compiled primitives."""
    try:
        return LOSS_CODES[name]
    except KeyError:
        raise ValueError(f"loss must be one of {tuple(LOSS_CODES)}, got {name!r}") from None


# ---- the epoch path ----

PATHS = ("auto", "small", "blas")

# Which epoch path "auto" takes. The small path (hand-written, no BLAS) costs in
# proportion to the non-zero inputs; the BLAS path pays a fixed cost per GEMM call
# that depends on OpenBLAS's kernel. Seconds per MNIST epoch (784-100-10 float32,
# 81% of pixels zero; Cython, Numba within 5%), one BLAS thread, 2-core AVX-512
# machine, OpenBLAS 0.3.30, 2026-11-24:
#
#     batch                       1      4     10     16     32     63
#     small path               0.13   0.13   0.13   0.13   0.13   0.13
#     BLAS, AVX2 kernels       1.92   0.53   0.36   0.26   0.22   0.21
#     BLAS, AVX-512 kernels    0.31   0.15   0.12   0.18   0.14   0.13
#
# On dense inputs the small path takes ~3x longer (0.39 s per 60,000 rows at every
# batch size) and BLAS wins from batch 10 with AVX2 kernels, from batch 2 with
# AVX-512 ones, for this network; tiny networks (circles) favour the small path.
# So: the small path up to batch 4 always; up to 63 (BLAS would run on one
# thread) when the inputs are sparse and OpenBLAS runs AVX2 kernels, as it does
# where OPENBLAS_CORETYPE=Haswell is set: 1.6-2.7x faster there.
SMALL_BATCH_MAX = 4
SPARSE_SMALL_BATCH_MAX = 63
SPARSE_DENSITY_MAX = 0.5  # fraction of non-zero inputs
_AVX512_KERNELS = {"skylakex", "cooperlake", "sapphirerapids"}


@functools.lru_cache(maxsize=None)
def blas_has_avx512_kernels():
    """True unless the OpenBLAS that scipy loaded runs a kernel without AVX-512
    (True also for other BLAS libraries: no measurements say otherwise)."""
    from threadpoolctl import threadpool_info

    importlib.import_module("scipy.linalg.cython_blas")  # the BLAS the kernels call is loaded
    kernels = {str(pool.get("architecture", "")).lower() for pool in threadpool_info()
               if pool.get("internal_api") == "openblas"}
    return not kernels or bool(kernels & _AVX512_KERNELS)


def input_density(X, rows=256):
    """Fraction of non-zero entries in up to ``rows`` rows spread evenly over X."""
    if X.size == 0:
        return 0.0
    sample = X[::max(1, X.shape[0] // rows)][:rows]
    return float(np.count_nonzero(sample) / sample.size)


def auto_path(batch, density):
    """``(path, why)``: the path "auto" takes for batches of ``batch`` examples over
    inputs with this fraction of non-zero entries, and the reason, in words."""
    if batch <= SMALL_BATCH_MAX:
        return "small", f"batch <= {SMALL_BATCH_MAX}: hand-written loops beat any GEMM call"
    if blas_has_avx512_kernels():
        return "blas", f"batch > {SMALL_BATCH_MAX} and OpenBLAS runs AVX-512 kernels"
    if batch > SPARSE_SMALL_BATCH_MAX:
        return "blas", f"batch > {SPARSE_SMALL_BATCH_MAX}"
    if density > SPARSE_DENSITY_MAX:
        return "blas", f"more than {SPARSE_DENSITY_MAX:.0%} of the inputs are non-zero"
    return "small", (f"OpenBLAS runs AVX2 kernels, whose small GEMMs are slow, and at most "
                     f"{SPARSE_DENSITY_MAX:.0%} of the inputs are non-zero")


def takes_small_path(path, batch, X):
    """Whether an epoch of ``batch``-sized batches over X runs the small path."""
    if path != "auto":
        return path == "small"
    if batch <= SMALL_BATCH_MAX:  # no need to look at X
        return True
    return auto_path(batch, input_density(X))[0] == "small"


def choose_path(kernels, path, batch, X):
    """The path an epoch runs: ``path`` if given, else by ``takes_small_path``,
    among the paths backend ``kernels`` implements."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path == "auto":
        path = "small" if takes_small_path("auto", batch, X) else "blas"
    if path not in kernels.PATHS:
        if len(kernels.PATHS) == 1:  # the reference has one path for everything
            return kernels.PATHS[0]
        raise ValueError(f"path {path!r} is not one of {kernels.PATHS}")
    return path


# ---- layouts: the parameter block and the workspaces ----

class Params(NamedTuple):
    """The parameters as one block. In the model's layout ``Wh`` is (n_hidden, n_in);
    in the small path's layout (``padded_params``) ``Wh`` holds Wh transposed,
    (n_in, nhp), and the hidden dimension of ``Wh``, ``bh`` and ``Wy`` is padded with
    zero units to ``nhp``, a whole number of cache lines."""

    Wh: np.ndarray
    bh: np.ndarray
    Wy: np.ndarray
    by: np.ndarray


CACHE_LINE = 64  # bytes


def padded_width(n, itemsize):
    """``n`` rounded up to a whole number of cache lines of ``itemsize`` elements."""
    per_line = CACHE_LINE // itemsize
    return -(-n // per_line) * per_line


def aligned_zeros(shape, dtype):
    """A zero-filled C-contiguous array whose data starts on a cache-line boundary.

    With the hidden dimension padded to whole cache lines (``padded_width``) and
    the rows aligned as well, every vector load and store of a row stays inside
    one cache line.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(nbytes + CACHE_LINE, np.uint8)
    skip = -raw.ctypes.data % CACHE_LINE
    return raw[skip:skip + nbytes].view(dtype).reshape(shape)


def padded_params(n_in, nh, nout, dtype):
    """A zeroed block in the small path's layout (see ``Params``)."""
    nhp = padded_width(nh, np.dtype(dtype).itemsize)
    return Params(aligned_zeros((n_in, nhp), dtype), aligned_zeros(nhp, dtype),
                  aligned_zeros((nout, nhp), dtype), np.zeros(nout, dtype))


class SmallWork(NamedTuple):
    """Workspace of the small path for batches of up to ``batch`` examples."""

    H: np.ndarray      # (batch, nhp) hidden activations
    dH: np.ndarray     # (batch, nhp) dl/dh~
    dZ: np.ndarray     # (batch, nout) dl/dz
    nz: np.ndarray     # (batch, n_in) indices of each example's non-zero inputs
    nnz: np.ndarray    # (batch,) how many


class BlasWork(NamedTuple):
    """Workspace of the BLAS path for batches of up to ``batch`` examples."""

    Xb: np.ndarray     # (batch, n_in) the gathered batch, or (1, n_in) when batches are read in place
    H: np.ndarray      # (batch, nh)
    dH: np.ndarray     # (batch, nh)
    Z: np.ndarray      # (batch, nout) logits, then dl/dz
    labels: np.ndarray  # (batch,) the batch's labels


def batch_order(perm, n_rows, batch_size):
    """``(perm, in_order)`` for an epoch over ``X[perm]``.

    A single batch over all rows has the same gradient in any order (up to the
    rounding of the sums), so then ``perm`` becomes ``arange(n_rows)`` and the
    kernels read X in place instead of gathering a shuffled copy of the whole
    dataset each epoch. ``in_order`` tells that every batch is a run of
    consecutive rows of X, so no gather buffer is needed.
    """
    perm = np.asarray(perm)
    n = len(perm)
    if batch_size >= n == n_rows and n > 0:
        counts = np.bincount(perm, minlength=n_rows)
        if len(counts) == n_rows and (counts == 1).all():
            return np.arange(n_rows, dtype=np.intp), True
    in_order = batch_size >= n and n > 0 and bool((np.diff(perm) == 1).all())
    return perm, in_order


# ---- BLAS threads ----

# One BLAS thread below this batch size: for small GEMMs a second thread costs
# more in synchronisation than it gains (measured: batch 1 and 10 slower with two).
BLAS_THREADS_MIN_BATCH = 64


class _BlasThreads:
    """The BLAS thread count for training, shared by concurrent trainings.

    OpenBLAS's thread count is process-wide, and its results depend on it in the
    last bits. The first training to start sets it (one thread below
    BLAS_THREADS_MIN_BATCH, else the library's default), trainings that overlap it
    keep that setting, and the last one to finish restores the previous one. So a
    training never sees the count change under it, and models trained in parallel
    threads end bitwise equal to the same models trained one after another.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._limiter = None

    @contextlib.contextmanager
    def __call__(self, batch_size):
        from threadpoolctl import threadpool_limits

        with self._lock:
            if self._users == 0:
                one = batch_size < BLAS_THREADS_MIN_BATCH
                self._limiter = threadpool_limits(limits=1 if one else None, user_api="blas")
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._limiter.restore_original_limits()
                    self._limiter = None


blas_limits = _BlasThreads()
blas_limits.__doc__ = """blas_limits(batch_size): a context manager that sets the BLAS thread count
suited to ``batch_size`` for the duration of a training (see _BlasThreads)."""


# ---- running epochs ----

# Each compiled call covers about this many examples (whole batches): short enough
# that Ctrl-C and divergence are noticed within milliseconds, long enough that the
# per-call overhead stays under 1%.
CHUNK_EXAMPLES = 8192

PARAM_NAMES = Params._fields


class Diverged(FloatingPointError):
    """A step made the loss or a parameter non-finite; ``batch`` is its index in the
    epoch (0-based). The parameters are those from before that step."""

    def __init__(self, batch):
        super().__init__(f"diverged at batch {batch}")
        self.batch = batch


class EpochRunner:
    """Mini-batch SGD epochs of one training run, on one backend.

    ``params`` are the model's live arrays ({"Wh", "bh", "Wy", "by"}, C-contiguous,
    one floating dtype), updated in place; ``X`` (C-contiguous, that dtype) and
    ``labels`` (``np.intp``) are trusted (``fastmlp.train`` validates them). The
    path, the layout and the workspaces are chosen once, here.
    """

    def __init__(self, kernels, params, X, labels, *, batch_size, loss="ce", path="auto"):
        self.kernels = kernels
        self.params = params
        self.X, self.labels = X, labels
        self.batch_size = int(batch_size)
        self.loss = loss_code(loss)
        batch = max(1, min(self.batch_size, len(X)))
        self.path = choose_path(kernels, path, batch, X)
        nh, n_in = params["Wh"].shape
        nout = params["Wy"].shape[0]
        dtype = params["Wh"].dtype
        if self.path == "small":
            self.block = padded_params(n_in, nh, nout, dtype)
            nhp = self.block.bh.shape[0]
            self.work = SmallWork(aligned_zeros((batch, nhp), dtype), aligned_zeros((batch, nhp), dtype),
                                  np.empty((batch, nout), dtype), np.empty((batch, n_in), np.intp),
                                  np.empty(batch, np.intp))
        else:
            self.block = Params(*(params[k] for k in PARAM_NAMES))
            self.work = BlasWork(np.empty((0, n_in), dtype), np.empty((batch, nh), dtype),
                                 np.empty((batch, nh), dtype), np.empty((batch, nout), dtype),
                                 np.empty(batch, np.intp))

    # -- moving the parameters between the model and the path's layout --

    def _load(self):
        if self.path == "small":
            Wh, bh, Wy, by = (self.params[k] for k in PARAM_NAMES)
            nh = bh.shape[0]
            self.block.Wh[:, :nh] = Wh.T
            self.block.bh[:nh] = bh
            self.block.Wy[:, :nh] = Wy
            self.block.by[:] = by

    def _store(self):
        if self.path == "small":
            Wh, bh, Wy, by = (self.params[k] for k in PARAM_NAMES)
            nh = bh.shape[0]
            Wh[...] = self.block.Wh[:, :nh].T
            bh[...] = self.block.bh[:nh]
            Wy[...] = self.block.Wy[:, :nh]
            by[...] = self.block.by

    # -- one compiled call --

    def run(self, order, lr):
        """SGD over the batches of ``X[order]`` in one compiled call; returns
        (loss_sum, n_correct) measured in each batch's forward pass."""
        if len(order) == 0:
            return 0.0, 0
        lr = float(lr)  # each primitive rounds it to the parameters' dtype
        if self.path == "small":
            order = np.ascontiguousarray(order, dtype=np.intp)
            self._load()
            result = self.kernels.small_epoch(self.block, self.X, self.labels, order, self.batch_size, lr,
                                              self.loss, self.work)
            self._store()
            return result
        order, in_order = batch_order(order, len(self.X), self.batch_size)
        order = np.ascontiguousarray(order, dtype=np.intp)
        if not in_order and len(self.work.Xb) < min(self.batch_size, len(order)):
            self.work = self.work._replace(Xb=np.empty((len(self.work.H), self.X.shape[1]), self.X.dtype))
        return self.kernels.blas_epoch(self.block, self.X, self.labels, order, self.batch_size, lr,
                                       self.loss, self.work)

    # -- a whole epoch, in chunks --

    def epoch(self, perm, lr):
        """One epoch over ``X[perm]`` in compiled chunks of whole batches; returns
        (loss_sum, n_correct).

        Between chunks Python regains control: Ctrl-C is passed on with the
        parameters of the chunk's start (a Python-level backend could stop between
        two parameter updates), and a chunk that made the loss or a parameter
        non-finite is replayed batch by batch (the kernels are deterministic) to
        raise ``Diverged`` with the parameters from before the failing step.
        """
        chunk = max(1, CHUNK_EXAMPLES // self.batch_size) * self.batch_size
        loss_sum, n_correct = 0.0, 0
        for start in range(0, len(perm), chunk):
            before = {k: v.copy() for k, v in self.params.items()}
            try:
                ls, nc = self.run(perm[start:start + chunk], lr)
            except KeyboardInterrupt:
                self._restore(before)
                raise
            if not (np.isfinite(ls) and self._finite()):
                self._locate_divergence(perm, start, chunk, lr, before)
            loss_sum += ls
            n_correct += nc
        return loss_sum, n_correct

    def _restore(self, saved):
        for k in PARAM_NAMES:
            self.params[k][...] = saved[k]

    def _finite(self):
        return all(np.isfinite(v).all() for v in self.params.values())

    def _locate_divergence(self, perm, start, chunk, lr, before):
        self._restore(before)
        for b0 in range(start, min(start + chunk, len(perm)), self.batch_size):
            saved = {k: v.copy() for k, v in self.params.items()}
            ls, _ = self.run(perm[b0:b0 + self.batch_size], lr)
            if not (np.isfinite(ls) and self._finite()):
                self._restore(saved)
                raise Diverged(b0 // self.batch_size)
        raise Diverged(start // self.batch_size)  # not reproduced: report the chunk's start


def train_epoch(kernels, X, labels, perm, params, lr, batch_size, loss="ce", path="auto"):
    """One epoch over ``X[perm]`` with backend module ``kernels``, updating the
    arrays of ``params`` in place; returns (loss_sum, n_correct). Raises
    ``Diverged`` as ``EpochRunner.epoch`` does. For tests and benchmarks; training
    runs keep one ``EpochRunner``."""
    runner = EpochRunner(kernels, params, X, labels, batch_size=batch_size, loss=loss, path=path)
    return runner.epoch(perm, lr)
