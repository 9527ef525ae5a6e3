"""Runs epochs of mini-batch SGD on a backend's compiled primitives.

This is the one place that decides, for a training run:

- the codes of the network's activation and loss (rows of ``fastmlp.tables``)
  that the compiled primitives take;
- the epoch path: "sparse" (hand-written loops over the non-zero inputs, every
  batch size, on every core) or "blas" (scipy's GEMMs, for dense inputs), by the
  measured rule of ``auto_path``;
- the layout of that path: the sparse path's inputs as CSR rows (dense inputs
  that are sparse enough are converted once, by a compiled scan) and its
  parameters as per-thread slices of the hidden units, padded, transposed and
  cache-line aligned; the workspaces;
- the threads: how many (``n_threads``, threadpoolctl's limits, the cores, and the
  other trainings running in this process) and, for the BLAS path, OpenBLAS's;
- the batch order (a full batch reads X in place) and the chunking of an epoch
  into compiled calls (Ctrl-C and divergence are noticed between chunks);

then it calls the chosen backend's primitive for that path. The backends
(``_cy``, ``_nb``, ``_np``) only compute; see ``fastmlp/_kernels/__init__.py``
for their contract.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import threading
import time
from typing import NamedTuple

import numpy as np

from .. import tables
from .._validation import count_nonfinite, is_sparse
from ..network import CACHE_LINE, aligned_zeros
from . import caches, tuning

# ---- the network's codes ----


class Codes(NamedTuple):
    """The network's choices as the compiled primitives take them: the codes of its
    hidden activation and of its loss (rows of ``fastmlp.tables``). Every primitive
    rejects a code its backend does not know."""

    act: int
    loss: int


def loss_code(name):
    """The code of loss ``name`` for the compiled primitives."""
    return tables.loss(name).code


def codes(activation="tanh", loss="ce"):
    """The ``Codes`` of an activation and a loss, by name."""
    return Codes(tables.activation(activation).code, tables.loss(loss).code)


# ---- the epoch path ----

PATHS = ("auto", "sparse", "blas", "reference")

# Which path "auto" takes for dense inputs. The sparse path costs in proportion
# to the non-zero inputs; the BLAS path in proportion to all of them, at the GEMM
# rate of the batch size, plus a GEMM call per batch that dwarfs a row at batches
# of one or two. So: CSR up to 35% non-zeros at every batch size; up to 50% for
# batches of at most 4 or at least 32, and at every batch size where OpenBLAS runs
# kernels without AVX-512; denser inputs row by row on the sparse path at batch 1,
# GEMMs from batch 32, and in between up to the batch where the two cross on this
# machine (``tuning.crossover``: measured once and kept, as no constant held on
# the CPUs measured); from batch 32 on the sparse path updates each touched row
# once per batch. The thresholds come from where the paths cross on the machines
# docs/design/kernels.md names; `fastmlp info --explain` times both paths on the
# machine it runs on and shows how far auto's choice is from the fastest at each point.
SPARSE_DENSITY_MAX = 0.35  # dense inputs with at most this fraction of non-zeros go to CSR
MIDDLE_DENSITY_MAX = 0.5  # ... and up to this fraction where the GEMMs do not win:
SMALL_BATCH_MAX = 4  # batches up to this size,
LARGE_BATCH_MIN = 32  # batches from this size up (the sparse path's SPARSE_GROUP_MIN), or any batch with
# OpenBLAS kernels without AVX-512
_AVX512_KERNELS = {"skylakex", "cooperlake", "sapphirerapids"}


@functools.cache
def blas_has_avx512_kernels():
    """True unless the OpenBLAS that scipy loaded runs a kernel without AVX-512
    (True also for other BLAS libraries: no measurements say otherwise)."""
    kernels = {
        str(pool.get("architecture", "")).lower()
        for pool in blas_controller().info()
        if pool.get("internal_api") == "openblas"
    }
    return not kernels or bool(kernels & _AVX512_KERNELS)


def input_density(X, rows=256):
    """Fraction of non-zero entries in up to ``rows`` rows spread evenly over X
    (all of X for a sparse matrix)."""
    if is_sparse(X):
        return X.nnz / max(1, X.shape[0] * X.shape[1])
    if X.size == 0:
        return 0.0
    sample = X[:: max(1, X.shape[0] // rows)][:rows]
    return float(np.count_nonzero(sample) / sample.size)


def needs_crossing(batch, density, sparse_input=False):
    """Whether ``auto_path`` needs this machine's measured crossing (dense inputs at
    batches of 2 to LARGE_BATCH_MIN - 1)."""
    return not sparse_input and density > MIDDLE_DENSITY_MAX and 1 < batch < LARGE_BATCH_MIN


def dense_rows_crossing(kernels, dtype, n_threads=None, layer=None):
    """``tuning.Crossover``: the batch size up to which dense inputs take the sparse
    path row by row on backend ``kernels`` in ``dtype`` on the threads a training
    asks for, for a first layer of ``layer`` = (inputs, hidden units) (None: an
    MNIST-sized one); measured here once, then kept (see ``tuning``)."""
    shape = tuning.SHAPE if layer is None else tuning.shape_for(*layer)
    return tuning.crossover(kernels, dtype, wanted_threads(n_threads, kernels), shape)


def auto_path(batch, density, sparse_input=False, crossing=None):
    """``(path, rows, why)`` for batches of ``batch`` examples over inputs with this
    fraction of non-zero entries: the path "auto" takes, the layout of its rows
    ("csr", "dense" or None for the BLAS path), and the reason, in words.
    ``crossing`` (a ``tuning.Crossover``) is needed where ``needs_crossing``."""
    if sparse_input:
        return "sparse", "csr", "sparse input: never densified"
    if density <= SPARSE_DENSITY_MAX:
        return "sparse", "csr", f"at most {SPARSE_DENSITY_MAX:.0%} of the inputs are non-zero: converted to CSR once"
    if density <= MIDDLE_DENSITY_MAX:
        at_most = f"at most {MIDDLE_DENSITY_MAX:.0%} of the inputs are non-zero"
        if batch <= SMALL_BATCH_MAX:
            return "sparse", "csr", f"batch <= {SMALL_BATCH_MAX} and {at_most}: converted to CSR once"
        if batch >= LARGE_BATCH_MIN:
            return "sparse", "csr", f"batch >= {LARGE_BATCH_MIN} and {at_most}: converted to CSR once"
        if not blas_has_avx512_kernels():
            return "sparse", "csr", f"{at_most} and OpenBLAS runs kernels without AVX-512: converted to CSR once"
        return "blas", None, f"{at_most}, batch {SMALL_BATCH_MAX + 1}-{LARGE_BATCH_MIN - 1}, AVX-512 GEMMs: GEMMs"
    if batch <= 1:
        return "sparse", "dense", "dense inputs, batch 1: a GEMM call costs more than a row"
    if batch >= LARGE_BATCH_MIN:
        return "blas", None, f"dense inputs, batch >= {LARGE_BATCH_MIN}: GEMMs"
    if crossing is None:
        raise ValueError(f"dense inputs at batch {batch}: the path needs this machine's crossing (tuning.crossover)")
    if batch <= crossing.rows_max:
        return "sparse", "dense", f"dense inputs, batch <= {crossing.rows_max} ({crossing.source}): rows beat GEMMs"
    return "blas", None, f"dense inputs, batch > {crossing.rows_max} ({crossing.source}): GEMMs"


def choose_path(kernels, path, batch, X, deep=False, n_threads=None, n_hidden=None):
    """``(path, rows)``: the path an epoch runs and the layout of its rows, ``path``
    if given, else by ``auto_path``, among the paths backend ``kernels`` implements
    (for a network of several hidden layers, ``deep``, among its DEEP_PATHS) on
    ``n_threads`` threads (None: the default), for a first layer of ``n_hidden``
    units (None: the crossing of an MNIST-sized layer)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if kernels.PATHS == ("reference",):  # the NumPy backend: one path for everything
        return "reference", None
    if path not in kernels.PATHS + ("auto",):
        raise ValueError(f"path {path!r} is not one of this backend's {kernels.PATHS}")
    sparse_input = is_sparse(X)
    if deep:
        if path not in kernels.DEEP_PATHS + ("auto",):
            raise ValueError(
                f"path {path!r} trains networks of one hidden layer; this backend trains several on "
                f"{kernels.DEEP_PATHS}"
            )
        path = kernels.DEEP_PATHS[0] if path == "auto" else path
    if path == "auto":
        density = input_density(X)
        crossing = None
        if needs_crossing(batch, density, sparse_input):
            layer = None if n_hidden is None else (X.shape[1], n_hidden)
            crossing = dense_rows_crossing(kernels, X.dtype, n_threads, layer)
        path, rows, _ = auto_path(batch, density, sparse_input, crossing)
        return path, rows
    if path == "blas" and sparse_input:
        raise ValueError("path 'blas' needs dense inputs; sparse inputs take the 'sparse' path")
    if path == "sparse":
        return path, "csr" if sparse_input or input_density(X) <= MIDDLE_DENSITY_MAX else "dense"
    return path, None


# ---- threads ----


def available_cpus():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _ThreadBudget:
    """The cores shared by the trainings running in this process: a training
    asks for threads for each compiled chunk and gets what the others leave (at
    least one: its own Python thread runs anyway), so two trainings in two Python
    threads do not oversubscribe the cores for longer than one chunk. Results do
    not depend on the thread count."""

    def __init__(self):
        self._lock = threading.Lock()
        self._in_use = 0

    @contextlib.contextmanager
    def __call__(self, wanted):
        with self._lock:
            granted = max(1, min(wanted, available_cpus() - self._in_use))
            self._in_use += granted
        try:
            yield granted
        finally:
            with self._lock:
                self._in_use -= granted


thread_budget = _ThreadBudget()


def wanted_threads(n_threads, kernels):
    """The threads a training asks for: ``n_threads`` (None: the cores this process
    may use), within OpenMP's limit in this thread (which threadpoolctl's
    ``threadpool_limits`` and OMP_NUM_THREADS set)."""
    limit = kernels.max_threads() if hasattr(kernels, "max_threads") else 1
    n = available_cpus() if n_threads is None else int(n_threads)
    return max(1, min(n, limit))


# The reference path (NumPy) runs its GEMMs on one BLAS thread below this batch
# size: for small GEMMs a second thread costs more in synchronisation than it
# gains. The compiled paths always run OpenBLAS on one thread: their own threads
# split the work, and OpenBLAS's results differ in the last bits between one
# thread and two.
BLAS_THREADS_MIN_BATCH = 64


def wants_one_blas_thread(path, batch_size):
    """Whether a training on ``path`` runs OpenBLAS on one thread."""
    return path != "reference" or batch_size < BLAS_THREADS_MIN_BATCH


class _BlasThreads:
    """The BLAS thread count for training, shared by concurrent trainings.

    OpenBLAS's thread count is process-wide, and its results depend on it in the
    last bits. While any running training wants one thread (every compiled path
    does), OpenBLAS runs on one; otherwise on the library's default. The last
    training to finish restores the previous setting. So a compiled path never
    sees more than one BLAS thread, and models trained in parallel threads end
    bitwise equal to the same models trained one after another.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._wants = []
        self._limiter = None

    @contextlib.contextmanager
    def __call__(self, one_thread):
        with self._lock:
            self._wants.append(bool(one_thread))
            self._apply()
        try:
            yield
        finally:
            with self._lock:
                self._wants.remove(bool(one_thread))
                self._apply()

    def _apply(self):
        one = any(self._wants)
        if self._limiter is not None and (not self._wants or one != self._one):
            self._limiter.restore_original_limits()
            self._limiter = None
        if self._wants and self._limiter is None:
            self._one = one
            self._limiter = blas_controller().limit(limits=1 if one else None, user_api="blas")


@functools.cache
def blas_controller():
    """threadpoolctl's controller of the thread pools loaded once the kernels' BLAS
    is (finding the libraries reads the process's memory map: once, not per call)."""
    from threadpoolctl import ThreadpoolController

    importlib.import_module("scipy.linalg.cython_blas")
    return ThreadpoolController()


blas_limits = _BlasThreads()
blas_limits.__doc__ = """blas_limits(one_thread): a context manager that runs OpenBLAS on one
thread (or leaves it to its default) for the duration of a training (see _BlasThreads)."""


# ---- layouts: parameter blocks, rows, workspaces ----


class Step(NamedTuple):
    """The step of each batch (_fused_decl.h fm_step), by ``optimizer`` (a name of
    ``fastmlp.tables.OPTIMIZERS``):

    - "sgd", ``torch.optim.SGD``'s (dampening 0): the gradient of the weights (not
      the biases) gets ``decay * W``; with ``momentum`` the velocity ``v = momentum
      * v + g`` and ``p -= lr * v`` (``lr * (g + momentum * v)`` with ``nesterov``);
      without, ``p -= lr * g``;
    - "adam" and "adamw", ``torch.optim.Adam`` and ``AdamW``'s with ``beta1``,
      ``beta2``, ``eps`` (scikit-learn's form of eps with ``sklearn_eps``, see
      ``fastmlp.reference.adam_step``); batch i of a call is step ``steps + i + 1``.

    With ``decay_by_weight_sum`` a batch's decay is ``decay / (sum of its sample
    weights)``: scikit-learn's alpha."""

    lr: float
    momentum: float = 0.0
    decay: float = 0.0
    nesterov: bool = False
    decay_by_weight_sum: bool = False
    optimizer: str = "sgd"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    sklearn_eps: bool = False
    steps: int = 0

    @property
    def plain(self):
        """Plain SGD: the updates go straight into the weights."""
        return self.optimizer == "sgd" and self.momentum == 0 and self.decay == 0

    @property
    def code(self):
        return tables.optimizer(self.optimizer).code

    @property
    def state_blocks(self):
        """How many blocks of the parameters' layout its state takes (0, 1 or 2)."""
        return tables.optimizer(self.optimizer).state_blocks(self._asdict())

    @property
    def adam(self):
        """Adam's settings as ``fastmlp.reference.adam_step`` takes them."""
        return dict(beta1=self.beta1, beta2=self.beta2, eps=self.eps, sklearn_eps=self.sklearn_eps)


def as_step(opt):
    """``opt`` as a ``Step``: a learning rate is plain SGD's."""
    return opt if isinstance(opt, Step) else Step(float(opt))


class Params(NamedTuple):
    """The parameters as one block, in the model's layout: Wh (n_hidden, n_in),
    bh (n_hidden,), Wy (n_out, n_hidden), by (n_out,)."""

    Wh: np.ndarray
    bh: np.ndarray
    Wy: np.ndarray
    by: np.ndarray


PARAM_NAMES = Params._fields


class SparseNet(NamedTuple):
    """The parameters in the sparse path's layout (see _sparse_impl.h).

    The hidden units, padded with zero units to whole cache lines, are cut into
    groups of at most four lines (``group_line``: the first line of each group and
    the end); slice s, one per thread, holds groups ``slice_group[s]`` to
    ``slice_group[s + 1]`` in blocks of its own: ``WhT[s]`` (n_in, stride) Wh's
    columns of its units, transposed, ``bh[s]``, ``Wy[s]`` (n_out, stride) and a copy
    of ``by`` per slice; ``V*`` their velocities (or Adam's first moments) and
    ``S*`` Adam's second moments in the same layout (empty where the step keeps
    none). The padded units have no weights in or out, and the kernels apply
    the activation to the hidden units only, so they stay zero through every step
    whatever f(0) is."""

    WhT: np.ndarray  # (n_slices, n_in, stride)
    bh: np.ndarray  # (n_slices, stride)
    Wy: np.ndarray  # (n_slices, n_out, stride)
    by: np.ndarray  # (n_slices, n_out padded to whole cache lines)
    VWhT: np.ndarray
    Vbh: np.ndarray
    VWy: np.ndarray
    Vby: np.ndarray
    SWhT: np.ndarray
    Sbh: np.ndarray
    SWy: np.ndarray
    Sby: np.ndarray
    slice_group: np.ndarray  # (n_slices + 1,) int32
    group_line: np.ndarray  # (n_groups + 1,) int32
    n_hidden: int  # the hidden units, padding excluded


class Rows(NamedTuple):
    """The examples as the sparse path reads them: CSR (``data``, ``indices``
    int32, ``indptr`` int64), or dense rows (``data`` = X flattened, ``indices`` =
    0 .. n_in - 1, ``indptr`` None)."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray | None


class SparseWork(NamedTuple):
    """Workspace of the sparse path for ``rows`` examples at a time: whole batches,
    or chunks of larger ones whose gradient of WhT is summed in ``gWhT`` (see
    _fused.h fm_swork)."""

    H: np.ndarray  # (n_slices, rows, stride) hidden activations
    dH: np.ndarray  # (n_slices, rows, stride) dl/dh~
    Zp: np.ndarray  # (2, rows, n_groups, n_out) partial logits, per parity
    dZ: np.ndarray  # (n_slices, rows, n_out padded) dl/dz, one copy per thread
    gWy: np.ndarray  # (n_slices, n_out, stride) the batch's summed gradient of Wy
    gbh: np.ndarray  # (n_slices, stride) and of bh
    gby: np.ndarray  # (n_slices, n_out padded) and of by
    gWhT: np.ndarray  # (n_slices, n_in, stride) and of WhT, for chunked batches; else empty
    row_loss: np.ndarray  # (rows,) float64
    row_correct: np.ndarray  # (rows,) float64
    sync: np.ndarray  # (32,) int32 the threads' barrier
    # a full batch's non-zeros grouped by input in each chunk (group_chunks), or empty
    cptr: np.ndarray = np.empty(0, np.int64)  # (n_chunks, n_in + 1)
    crow: np.ndarray = np.empty(0, np.uint16)  # the example's place in its chunk
    cval: np.ndarray = np.empty(0)  # its value
    # the batch's examples that have each input non-zero, one bit each, per thread:
    # batches (or chunks) of group_min examples or more update each touched row once
    mask: np.ndarray = np.empty(0, np.uint64)  # (n_slices, n_in, words), or empty
    group_min: int = 0


class BlasNet(NamedTuple):
    """The parameters in the model's layout for the BLAS path, their velocities
    (or Adam's first moments) and Adam's second moments (empty where the step keeps
    none), and the blocks of hidden units its threads own
    (``block_unit``: the first unit of each block and the end; fixed by n_hidden
    alone, so results do not depend on the thread count)."""

    Wh: np.ndarray
    bh: np.ndarray
    Wy: np.ndarray
    by: np.ndarray
    VWh: np.ndarray
    Vbh: np.ndarray
    VWy: np.ndarray
    Vby: np.ndarray
    SWh: np.ndarray
    Sbh: np.ndarray
    SWy: np.ndarray
    Sby: np.ndarray
    block_unit: np.ndarray  # (n_blocks + 1,) int32


class BlasWork(NamedTuple):
    """Workspace of the BLAS path for batches of up to ``batch`` examples (see
    _fused.h fm_bwork)."""

    Xb: np.ndarray  # (2, batch, n_in) the gathered rows per batch parity; (2, 0, n_in) while unused
    H: np.ndarray  # (n_blocks, batch, block_max)
    dH: np.ndarray  # (n_blocks, batch, block_max)
    Zp: np.ndarray  # (n_blocks, batch, n_out) partial logits
    dZ: np.ndarray  # (batch, n_out)
    row_loss: np.ndarray  # (batch,) float64
    row_correct: np.ndarray  # (batch,) float64
    GWh: np.ndarray  # (nh, n_in) the gradients apart from the weights (any step but plain SGD; else empty)
    GWy: np.ndarray  # (n_out, nh)
    gb: np.ndarray  # (nh + n_out,)
    sync: np.ndarray  # (32,) int32 the threads' barrier


GROUP_LINES = 4  # cache lines of hidden units a group holds in registers


def padded_width(n, itemsize):
    """``n`` rounded up to a whole number of cache lines of ``itemsize`` elements."""
    per_line = CACHE_LINE // itemsize
    return -(-n // per_line) * per_line


def hidden_groups(n_hidden, itemsize):
    """The first line of each group of hidden units and the end (int32): the lines
    of the padded units cut into groups of at most GROUP_LINES, as even as can be.
    Fixed by the number of units alone, so the sums over them do not depend on
    the thread count."""
    lines = -(-n_hidden * itemsize // CACHE_LINE)
    n_groups = -(-lines // GROUP_LINES)
    sizes = np.full(n_groups, lines // n_groups)
    sizes[: lines % n_groups] += 1
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)


def slice_groups(group_line, n_slices):
    """The first group of each of ``n_slices`` slices and the end (int32): whole
    groups, contiguous, balanced by lines."""
    lines = group_line[-1]
    bounds = [0]
    for s in range(1, n_slices):
        g = int(np.searchsorted(group_line, lines * s / n_slices, side="left"))
        bounds.append(min(max(g, bounds[-1] + 1), len(group_line) - 1 - (n_slices - s)))
    bounds.append(len(group_line) - 1)
    return np.asarray(bounds, dtype=np.int32)


def sparse_net(n_in, n_hidden, n_out, dtype, n_threads, state=0):
    """A zeroed SparseNet for ``n_threads`` threads (fewer slices if there are fewer
    groups of units), with ``state`` blocks of optimizer state (1: velocities; 2:
    Adam's two moments)."""
    itemsize = np.dtype(dtype).itemsize
    group_line = hidden_groups(n_hidden, itemsize)
    n_slices = max(1, min(n_threads, len(group_line) - 1))
    slice_group = slice_groups(group_line, n_slices)
    stride = int(np.diff(group_line[slice_group]).max()) * (CACHE_LINE // itemsize)
    out_pad = padded_width(n_out, itemsize)  # each slice's copy of by on lines of its own
    shapes = ((n_slices, n_in, stride), (n_slices, stride), (n_slices, n_out, stride), (n_slices, out_pad))
    arrays = [aligned_zeros(shape, dtype) for shape in shapes]
    states = [aligned_zeros(shape if state > k else (0,) * len(shape), dtype) for k in (0, 1) for shape in shapes]
    return SparseNet(*arrays, *states, slice_group, group_line, int(n_hidden))


def slice_units(net, s, n_hidden):
    """The hidden units (start, stop) of slice ``s``, padding excluded."""
    lanes = CACHE_LINE // net.WhT.itemsize
    first = int(net.group_line[net.slice_group[s]]) * lanes
    last = int(net.group_line[net.slice_group[s + 1]]) * lanes
    return min(first, n_hidden), min(last, n_hidden)


def sparse_blocks(kernels, group_bytes):
    """(chunk rows, (group_min, most rows grouped at once) or None) of one hidden
    layer on the sparse path of ``kernels`` for hidden-unit groups of ``group_bytes``:
    the backend's bounds (SPARSE_CHUNK_ROWS; SPARSE_GROUP_MIN, SPARSE_MASK_ROWS), and
    within them the block whose slice of dl/dh~ stays in this CPU's L1
    (``caches.block_rows``). A larger batch is taken a block at a time, its gradient
    summed (``sparse_work``)."""
    chunk, group_min = kernels.SPARSE_CHUNK_ROWS, getattr(kernels, "SPARSE_GROUP_MIN", 0)
    if not group_min:
        return chunk, None
    rows = caches.block_rows(group_bytes, group_min, kernels.SPARSE_MASK_ROWS)
    return min(chunk, rows), (group_min, rows)


def sparse_work(net, batch, chunk_rows=0, group=None, nnz_per_row=0.0, summed=False):
    """The workspace of ``net`` for batches of up to ``batch`` examples.

    With ``chunk_rows`` (a backend's SPARSE_CHUNK_ROWS), a batch of more examples
    than that is taken ``chunk_rows`` examples at a time where either
    - it has no more inputs than examples: the chunk's activations stay in cache,
      where a whole batch's would stream through memory and push the rows of WhT
      out of cache, and the gradient of WhT is summed in a buffer the size of WhT
      (no larger than the activations of the whole batch it stands in for); or
    - it is too large for the mask (below) while its chunks are not: each chunk then
      updates the rows of the buffer it touches once. The buffer costs one pass
      over every input per batch, no more than the chunk's walk over the inputs.
    The arithmetic is the batch's gradient either way, summed in example order. An
    epoch of one full batch also groups each chunk's non-zeros by input, once per
    fit (``EpochRunner`` does it).

    With ``group`` (a backend's (SPARSE_GROUP_MIN, SPARSE_MASK_ROWS)), batches or
    chunks of at least SPARSE_GROUP_MIN examples update each row of WhT (or gWhT) they
    touch once, with the sum over their examples, instead of once per non-zero: the
    forward pass marks each example's inputs in a bit mask, and the update walks the
    inputs in order. It needs up to SPARSE_MASK_ROWS examples at a time and pays a
    walk over every input per batch, so it is set up where that walk costs no more
    than the batch's non-zeros (``n_in <= rows * nnz_per_row``, the mean non-zeros
    of a row).

    With ``summed`` (a step that is not affine in the gradient: Adam, "gradient"), every batch's
    gradient of WhT is summed in that buffer and the step taken from it."""
    n_slices, n_in, stride = net.WhT.shape
    n_out, dtype = net.Wy.shape[1], net.WhT.dtype
    n_groups = len(net.group_line) - 1
    out_pad = net.by.shape[1]  # the rows of dl/dz on lines of their own, as by
    grouped_chunks = group is not None and _groups(n_in, chunk_rows, group, nnz_per_row)
    too_large_to_group = group is not None and batch > group[1]
    chunked = 0 < chunk_rows < batch and (n_in <= batch or (too_large_to_group and grouped_chunks))
    rows = chunk_rows if chunked else batch
    return SparseWork(
        aligned_zeros((n_slices, rows, stride), dtype),
        aligned_zeros((n_slices, rows, stride), dtype),
        np.zeros((2, rows, n_groups, n_out), dtype),
        aligned_zeros((n_slices, rows, out_pad), dtype),
        aligned_zeros((n_slices, n_out, stride), dtype),
        aligned_zeros((n_slices, stride), dtype),
        aligned_zeros((n_slices, out_pad), dtype),
        aligned_zeros((n_slices, n_in, stride) if chunked or summed else (0,), dtype),
        np.zeros(rows, np.float64),
        np.zeros(rows, np.float64),
        aligned_zeros(CACHE_LINE // 2, np.int32),
        **_group_mask(n_slices, n_in, rows, group, nnz_per_row),
    )


def mask_shape(n_slices, n_in, rows):
    """The shape of SparseWork's mask: a bit per example held (``rows``), in 64-bit
    words, for each input and slice."""
    return (n_slices, n_in, -(-rows // 64))


def check_mask(net, work):
    """Raises ValueError where ``work`` has a mask the sparse kernels would write
    out of bounds (or a group_min below 1)."""
    if work.mask.size and (work.mask.shape != mask_shape(*net.WhT.shape[:2], work.H.shape[1]) or work.group_min < 1):
        raise ValueError("the workspace's mask must hold one bit per example of a batch, for each input and slice")


def _groups(n_in, rows, group, nnz_per_row):
    """Whether ``rows`` examples at a time update each touched row once: the mask
    holds them (``group``: the backend's (SPARSE_GROUP_MIN, SPARSE_MASK_ROWS)) and
    their non-zeros are at least the inputs the update walks over."""
    return group[0] <= rows <= group[1] and n_in <= rows * nnz_per_row


def _group_mask(n_slices, n_in, rows, group, nnz_per_row):
    """SparseWork's mask and group_min: a zeroed mask where grouping pays (see
    sparse_work), else none."""
    if group is None or not _groups(n_in, rows, group, nnz_per_row):
        return {}
    return dict(mask=aligned_zeros(mask_shape(n_slices, n_in, rows), np.uint64), group_min=int(group[0]))


# ---- the sparse path of several hidden layers (_deep_impl.h) ----


class DeepNet(NamedTuple):
    """The parameters of a network of several hidden layers in the sparse path's
    layout (_fused_decl.h fm_deep): every layer's weights transposed, WT_k (its
    inputs by its units padded to whole cache lines, ``s[k]``; WT_1 in panels of a
    group of units each, see ``deep_panels``), one after the other
    in ``W`` from ``w_off[k - 1]``, the biases (``s[k]`` each) in ``b`` from
    ``b_off[k - 1]``, every block cache-aligned, the padding zero; ``VW``, ``Vb``
    their velocities (or Adam's first moments), ``SW``, ``Sb`` Adam's second moments
    (empty where the step keeps none). ``n``: the widths (n_in, n_1, ...,
    n_out). The layout does not depend on the thread count."""

    W: np.ndarray
    b: np.ndarray
    VW: np.ndarray
    Vb: np.ndarray
    SW: np.ndarray
    Sb: np.ndarray
    n: np.ndarray  # int64 (n_layers + 1,)
    s: np.ndarray  # int64 (n_layers + 1,): n padded to whole cache lines (s[0] = n_in)
    w_off: np.ndarray  # int64 (n_layers,)
    b_off: np.ndarray  # int64 (n_layers,)


class DeepWork(NamedTuple):
    """Workspace of the sparse path of several hidden layers for ``rows`` examples
    at a time (_fused_decl.h fm_dwork)."""

    H: np.ndarray  # each hidden layer's activations (rows, s[k]) from h_off[k - 1]
    D: np.ndarray  # and its dl/dh~
    P: np.ndarray  # (2, p_half): per parity, each layer's partial sums (groups below, rows, s[k])
    GW: np.ndarray  # the gradient in W's layout where a step sums it, else empty
    Gb: np.ndarray  # and in b's
    own: np.ndarray  # (threads, rows * s_out + 4 s_out) each thread's dl/dz rows and output biases
    h_off: np.ndarray  # int64
    p_off: np.ndarray  # int64
    rows: int
    iota: np.ndarray  # int32 0 .. the widest hidden layer's padded width - 1
    zero: np.ndarray  # four cache lines of zeros
    gemm_min: int  # chunks of this many examples or more take the dense layers by GEMMs (0: never)
    mask: np.ndarray  # (threads, n_in, words) uint64, or empty: chunks of group_min or more update
    group_min: int  # each touched row of the first layer once
    sync: np.ndarray  # (32,) int32 the threads' barrier


DEEP_GROUP_LINES = 4  # cache lines of units per group of a hidden layer (_deep_impl.h DGROUP)


def deep_net(sizes, dtype, state=0):
    """A zeroed DeepNet of layer widths ``sizes`` (n_in, n_1, ..., n_out), with
    ``state`` blocks of optimizer state (1: velocities; 2: Adam's two moments)."""
    itemsize = np.dtype(dtype).itemsize
    n = np.asarray(sizes, np.int64)
    s = np.asarray([n[0]] + [padded_width(int(k), itemsize) for k in n[1:]], np.int64)
    blocks = [math.prod(_panels_shape(n, s, itemsize))] + [int(s[k - 1]) * int(s[k]) for k in range(2, len(n))]
    w_off = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(np.int64)
    b_off = np.concatenate([[0], np.cumsum(s[1:])[:-1]]).astype(np.int64)
    W, b = aligned_zeros((sum(blocks),), dtype), aligned_zeros((int(s[1:].sum()),), dtype)
    VW, Vb, SW, Sb = (aligned_zeros(a.shape if state > k else (0,), dtype) for k in (0, 1) for a in (W, b))
    return DeepNet(W, b, VW, Vb, SW, Sb, n, s, w_off, b_off)


def _deep_group(itemsize):
    """Units per group of a hidden layer (_deep_impl.h DGROUP)."""
    return DEEP_GROUP_LINES * CACHE_LINE // itemsize


def _panels_shape(n, s, itemsize):
    """(panels, n_in, units a panel) of WT_1 for the widths n and padded widths s."""
    group = _deep_group(itemsize)
    return -(-int(s[1]) // group), int(n[0]), group


def deep_panels(net, W):
    """WT_1 in ``W`` (``net``'s layout: the parameters, a state, or any array of
    that shape) as its panels, a group of units each: (ng, n_in, group). Panel g
    holds the units g group .. + group, its rows ``group`` apart, so that each
    thread's units (whole groups) lie in memory of their own (_deep_impl.h); the
    last panel is padded with zeros."""
    shape = _panels_shape(net.n, net.s, net.W.itemsize)
    return W[: math.prod(shape)].reshape(shape)


def deep_views(net, W, b):
    """Per layer, the live part of ``W`` and ``b`` (in ``net``'s layout: the
    parameters or their velocities): [([(u0, WT_k[:, u0 : u0 + width]), ...], b_k
    (n_k,)), ...], each WT_k as its column blocks (n_{k-1}, width) from unit u0: one
    per panel for the first layer, one for the others."""
    n, s = net.n, net.s
    out = []
    for k in range(1, len(n)):
        bk = b[net.b_off[k - 1] : net.b_off[k - 1] + n[k]]
        if k == 1:
            panels = deep_panels(net, W)
            group = panels.shape[2]
            out.append(([(u0, panels[u0 // group, :, : min(group, n[1] - u0)]) for u0 in range(0, n[1], group)], bk))
            continue
        WT = W[net.w_off[k - 1] : net.w_off[k - 1] + s[k - 1] * s[k]].reshape(int(s[k - 1]), int(s[k]))
        out.append(([(0, WT[: n[k - 1], : n[k]])], bk))
    return out


def deep_groups(net):
    """The fewest groups of units of any hidden layer: the threads the path keeps busy."""
    group = _deep_group(net.W.itemsize)
    return min(-(-int(w) // group) for w in net.s[1:-1])


def deep_work(net, batch, n_threads, chunk_rows, summed=False, gemm_min=0, grouping=None):
    """The workspace of ``net`` for batches of up to ``batch`` examples on up to
    ``n_threads`` threads, ``chunk_rows`` (a backend's SPARSE_CHUNK_ROWS) examples
    at a time at most, with the gradient buffers where ``summed`` (any step but
    plain SGD, or a batch larger than that); chunks of ``gemm_min`` examples
    or more (a backend's DEEP_GEMM_MIN; 0: never) take the dense layers by GEMMs;
    with ``grouping`` (a backend's SPARSE_GROUP_MIN, SPARSE_MASK_ROWS), chunks of at
    least that many examples update each touched row of the first layer once."""
    dtype, s, L = net.W.dtype, net.s, len(net.n) - 1
    rows = max(1, min(batch, chunk_rows))
    group = _deep_group(dtype.itemsize)
    h_sizes = [rows * int(s[k]) for k in range(1, L)]
    p_sizes = [0] + [-(-int(s[k - 1]) // group) * rows * int(s[k]) for k in range(2, L + 1)]
    h_off = np.concatenate([[0], np.cumsum(h_sizes)[:-1]]).astype(np.int64)
    p_off = np.concatenate([[0], np.cumsum(p_sizes)[:-1]]).astype(np.int64)
    p_half = padded_width(sum(p_sizes), dtype.itemsize)
    own = padded_width(rows * int(s[L]) + 4 * int(s[L]), dtype.itemsize)  # _fused.h FM_DEEP_OWN
    summed = summed or batch > rows
    grouped = grouping is not None and 0 < grouping[0] <= rows <= grouping[1]
    return DeepWork(
        H=aligned_zeros((sum(h_sizes),), dtype),
        D=aligned_zeros((sum(h_sizes),), dtype),
        P=aligned_zeros((2, p_half), dtype),
        GW=aligned_zeros(net.W.shape if summed else (0,), dtype),
        Gb=aligned_zeros(net.b.shape if summed else (0,), dtype),
        own=aligned_zeros((max(1, n_threads), own), dtype),
        h_off=h_off,
        p_off=p_off,
        rows=rows,
        iota=np.arange(max(int(w) for w in s[1:-1]), dtype=np.int32),
        zero=aligned_zeros((group,), dtype),
        gemm_min=int(gemm_min),
        mask=aligned_zeros((max(1, n_threads), int(net.n[0]), -(-rows // 64)) if grouped else (0, 0, 0), np.uint64),
        group_min=grouping[0] if grouped else 0,
        sync=aligned_zeros((32,), np.int32),
    )


BLAS_BLOCK_UNITS = 64  # about this many hidden units per block of the BLAS path


def blas_blocks(n_hidden):
    """The first hidden unit of each block of the BLAS path and the end (int32):
    ceil(n_hidden / 64) blocks, as even as can be."""
    n_blocks = -(-n_hidden // BLAS_BLOCK_UNITS)
    sizes = np.full(n_blocks, n_hidden // n_blocks)
    sizes[: n_hidden % n_blocks] += 1
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)


def blas_work(net, batch, n_in, gathered, gradients):
    """The BLAS path's workspace: room for gathered batches if ``gathered``, for the
    gradients apart from the weights if ``gradients`` (any step but plain SGD)."""
    n_blocks, width = len(net.block_unit) - 1, int(np.diff(net.block_unit).max())
    nh, n_out, dtype = net.Wh.shape[0], net.Wy.shape[0], net.Wh.dtype
    g = 1 if gradients else 0
    return BlasWork(
        np.empty((2, batch if gathered else 0, n_in), dtype),
        np.empty((n_blocks, batch, width), dtype),
        np.empty((n_blocks, batch, width), dtype),
        np.empty((n_blocks, batch, n_out), dtype),
        np.empty((batch, n_out), dtype),
        np.empty(batch, np.float64),
        np.empty(batch, np.float64),
        np.empty((nh * g, n_in), dtype),
        np.empty((n_out * g, nh), dtype),
        np.empty((nh + n_out) * g, dtype),
        aligned_zeros(CACHE_LINE // 2, np.int32),
    )


# arrays smaller than this are copied by NumPy: the call costs more than the tiles save
COPY_TILED_MIN = 4096


def dense_to_csr(X, kernels):
    """(data, indices int32, indptr int64) of dense X by a compiled two-pass scan: the
    C one where the Cython kernels are built (far faster than np.nonzero), else the
    backend's own."""
    try:
        from . import _cy
    except ImportError:
        return kernels.dense_to_csr(X)
    return _cy.dense_to_csr(X)


def copy_into(dst, src):
    """``dst[...] = src`` for the copies between the model's layout and a path's
    transposed one: by the compiled tiled copy where the Cython kernels are built
    (NumPy's copy of a transposed view misses the cache on each element of its
    strided side; docs/design/kernels.md has the figures), else NumPy's."""
    if dst.size >= COPY_TILED_MIN:
        try:
            from . import _cy
        except ImportError:
            pass
        else:
            if _cy.copy_2d(dst, src):
                return
    dst[...] = src


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


# ---- running epochs ----

# Each compiled call covers about this many examples (whole batches): short enough
# that Ctrl-C and divergence are noticed within milliseconds, long enough that the
# per-call overhead stays under 1%.
CHUNK_EXAMPLES = 8192
# Before each chunk the parameters are saved (to hand back on Ctrl-C or locate a
# divergence) and after it checked. Where that costs more than this fraction of
# the first chunk's compiled time (many weights, few examples: wide sparse inputs),
# the next chunks are longer, by the rate the first one measured: as many whole
# runs of CHUNK_EXAMPLES as keep the saving at that fraction, up to
# CHUNK_SECONDS_MAX of compiled time each, so Ctrl-C is still answered within a second.
CHUNK_OVERHEAD_MAX = 0.02
CHUNK_SECONDS_MAX = 0.2


class Diverged(FloatingPointError):
    """A step made the loss or a parameter non-finite; ``batch`` is its index in the
    epoch (0-based). The parameters are those from before that step."""

    def __init__(self, batch):
        super().__init__(f"diverged at batch {batch}")
        self.batch = batch


class EpochRunner:
    """Mini-batch SGD epochs of one training run, on one backend.

    ``params`` are the model's live arrays ({"Wh", "bh", "Wy", "by"}, C-contiguous,
    one floating dtype), updated in place; the optimizer's state in the same
    layout, updated in place too: ``velocity`` the momentum buffers (SGD) or Adam's
    first moments, ``second_moment`` Adam's second moments (None where the step
    keeps none).
    ``activation`` and ``loss`` name rows of ``fastmlp.tables``. ``X``
    (C-contiguous in that dtype, or a canonical scipy.sparse CSR matrix of it),
    ``labels`` (class labels, ``np.intp``, or for a loss of target values those
    values, (n_rows, n_out) C-contiguous in the parameters' dtype) and ``weights``
    (per row, the parameters' dtype, or None) are trusted (``fastmlp.train``
    validates them). The path and the rows'
    layout are chosen once, here; the parameter layout per thread count.
    ``summed``: the steps it will take are not affine in the gradient (Adam, or
    "gradient"), so that the sparse path sums every batch's gradient before its
    step; by default, where the runner keeps Adam's two blocks of state.
    """

    def __init__(
        self,
        kernels,
        params,
        X,
        labels,
        *,
        batch_size,
        loss="ce",
        activation="tanh",
        path="auto",
        n_threads=None,
        weights=None,
        velocity=None,
        second_moment=None,
        summed=None,
    ):
        self.kernels = kernels
        self.params, self.velocity, self.second_moment = params, velocity, second_moment
        self.n_state = (velocity is not None) + (second_moment is not None)
        self.summed = self.n_state == 2 if summed is None else bool(summed)
        if second_moment is not None and velocity is None:
            raise ValueError("second_moment needs the first moments too (velocity)")
        if (np.ndim(labels) == 2) != (tables.loss(loss).targets == "values"):
            raise ValueError(f"loss {loss!r} takes {tables.loss(loss).targets} as targets")
        self.X, self.labels, self.weights = X, labels, weights
        self.n_rows = X.shape[0]
        self.batch_size = int(batch_size)
        self.codes = codes(activation, loss)
        self.batch = max(1, min(self.batch_size, self.n_rows))
        self.deep = "Wh" not in params
        if self.deep and not kernels.DEEP_PATHS:
            raise ValueError("this backend trains networks of one hidden layer (its DEEP_PATHS are empty)")
        n_hidden = None if self.deep else params["bh"].shape[0]
        self.path, rows = choose_path(kernels, path, self.batch, X, self.deep, n_threads, n_hidden)
        self.n_threads = n_threads
        self._layouts = {}
        self._full_batch = None  # a full batch's chunks grouped by input, once built
        self._saved = []  # the parameters and state from before the current chunk (not sparse)
        self._stored = True  # the model's arrays hold the block's values
        self._chunk_scale = 1  # chunks of this many times CHUNK_EXAMPLES (_rescale)
        self._rescaled = False
        self._move_seconds = 0.0  # the last load of the sparse path's layout
        self.threads = 1  # until an epoch asks for more (the sparse path: below)
        if self.path == "sparse":
            self.rows = self._rows(rows)
            if self.deep:
                sizes = [params["W1"].shape[1]] + [params[f"b{k}"].shape[0] for k in range(1, len(params) // 2 + 1)]
                self._deep_net = deep_net(sizes, params["W1"].dtype, state=self.n_state)
            # the layout for the threads the first chunk asks for: moving to another
            # costs a copy of every parameter
            self.threads = self._usable(wanted_threads(n_threads, kernels))
            self.block, self.work = self._layout(self.threads)
        elif self.path == "blas":
            empty = [np.empty((0,) * params[k].ndim, params[k].dtype) for k in PARAM_NAMES]
            states = [[state[k] for k in PARAM_NAMES] if state is not None else empty for state in self._states()]
            self.block = BlasNet(
                *(params[k] for k in PARAM_NAMES), *states[0], *states[1], blas_blocks(params["bh"].shape[0])
            )
            self.work = blas_work(self.block, self.batch, X.shape[1], gathered=False, gradients=False)
        else:  # the reference: the parameters by name, at any depth
            self.block = dict(params)

    def nonfinite_inputs(self):
        """The number of NaN and infinite values in X, counted where it is cheapest:
        in the non-zeros of the CSR rows (each non-finite entry is one), else in X.
        For a caller that left a dense X's values unchecked."""
        if self.path == "sparse" and self.rows.indptr is not None:
            return count_nonfinite(self.rows.data)
        return count_nonfinite(self.X)

    def _states(self):
        """(velocity, second_moment): the optimizer's state blocks by name, or None."""
        return self.velocity, self.second_moment

    def _rows(self, layout):
        X = self.X
        if is_sparse(X):
            if not X.has_canonical_format:  # the kernels read each row's inputs in order, once each
                X = X.copy()
                X.sum_duplicates()
            return Rows(X.data, X.indices.astype(np.int32, copy=False), X.indptr.astype(np.int64, copy=False))
        if layout == "csr":
            return Rows(*dense_to_csr(X, self.kernels))
        return Rows(X.reshape(-1), np.arange(X.shape[1], dtype=np.int32), None)

    # -- the sparse path's layout for a thread count; moving the parameters in and out --

    def _usable(self, n_threads):
        """How many of ``n_threads`` threads the path can keep busy: one per group of
        hidden units (sparse path) or per block (BLAS path), on the paths the backend
        runs on threads (its THREADED_PATHS); the rest run on one."""
        if self.path not in self.kernels.THREADED_PATHS:
            return 1
        if self.path == "sparse" and self.deep:
            return min(n_threads, deep_groups(self._deep_net))
        if self.path == "sparse":
            return min(n_threads, len(hidden_groups(self.params["bh"].shape[0], self.params["bh"].itemsize)) - 1)
        return min(n_threads, len(self.block.block_unit) - 1)

    def _group(self):
        """(SPARSE_GROUP_MIN, SPARSE_MASK_ROWS) of a backend that groups updates, else None."""
        group_min = getattr(self.kernels, "SPARSE_GROUP_MIN", 0)
        return (group_min, self.kernels.SPARSE_MASK_ROWS) if group_min else None

    def _layout(self, n_threads):
        if n_threads not in self._layouts and self.deep:
            net = self._deep_net
            # The backend's block, not the L1 one: a chunk of a smaller block than the
            # batch costs a pass over every layer's weights (docs/design/kernels.md).
            work = deep_work(
                net,
                self.batch,
                n_threads,
                self.kernels.SPARSE_CHUNK_ROWS,
                summed=self.n_state > 0,
                gemm_min=self.kernels.DEEP_GEMM_MIN,
                grouping=self._group(),
            )
            self._layouts[n_threads] = (net, work)
        if n_threads not in self._layouts:
            nh, n_in = self.params["Wh"].shape
            net = sparse_net(
                n_in,
                nh,
                self.params["Wy"].shape[0],
                self.params["Wh"].dtype,
                n_threads,
                state=self.n_state,
            )
            chunk, group = sparse_blocks(self.kernels, int(np.diff(net.group_line).max()) * CACHE_LINE)
            nnz_per_row = self.rows.indptr[-1] / max(1, self.n_rows) if self.rows.indptr is not None else n_in
            work = sparse_work(net, self.batch, chunk, group, nnz_per_row, summed=self.summed)
            self._layouts[n_threads] = (net, work)
        return self._layouts[n_threads]

    def _slice_views(self):
        """(the model's array, the block's array) view pairs that cover each slice's
        share of every parameter and state (each slice holds its own copy of by)."""
        net = self.block
        sources = [self.params] + [state for state in self._states() if state is not None]
        if self.deep:
            for source, (W, b) in zip(sources, ((net.W, net.b), (net.VW, net.Vb), (net.SW, net.Sb)), strict=False):
                layers = list(source.values())
                for (blocks, bk), Wm, bm in zip(deep_views(net, W, b), layers[0::2], layers[1::2], strict=True):
                    for u0, WT in blocks:
                        yield Wm[u0 : u0 + WT.shape[1]].T, WT
                    yield bm, bk
            return
        for source, (WhT, bhs, Wys, bys) in zip(sources, (net[:4], net[4:8], net[8:12]), strict=False):
            Wh, bh, Wy, by = (source[k] for k in PARAM_NAMES)
            for s in range(net.WhT.shape[0]):
                u0, u1 = slice_units(net, s, len(bh))
                yield Wh[u0:u1].T, WhT[s, :, : u1 - u0]
                yield bh[u0:u1], bhs[s, : u1 - u0]
                yield Wy[:, u0:u1], Wys[s, :, : u1 - u0]
                yield by, bys[s, : len(by)]

    def _load(self):
        if self.path == "sparse":
            t0 = time.perf_counter()
            for model, block in self._slice_views():
                copy_into(block, model)
            self._move_seconds = time.perf_counter() - t0
        self._stored = True

    def _store(self):
        """The block's values into the model's arrays (where they differ)."""
        if self.path == "sparse" and not self._stored:
            for model, block in self._slice_views():
                copy_into(model, block)
        self._stored = True

    # -- one compiled call --

    def run(self, order, opt):
        """The batches of ``X[order]`` in one compiled call on the current block, with
        the step ``opt`` (``Step``, or a learning rate for plain SGD); returns
        (loss_sum, correct) measured in each batch's forward pass."""
        if len(order) == 0:
            return 0.0, 0
        opt = as_step(opt)
        self._stored = self.path != "sparse"  # the steps change the block
        if opt.state_blocks > self.n_state:
            raise ValueError(
                f"a {opt.optimizer} step with these settings keeps {opt.state_blocks} blocks of state; "
                f"the runner has {self.n_state} (velocity, second_moment)"
            )
        if self.path == "sparse" and self.deep:
            order = np.ascontiguousarray(order, dtype=np.intp)
            if not opt.plain and self.work.GW.size == 0:
                self.work = self.work._replace(GW=aligned_zeros(self.block.W.shape, self.block.W.dtype))
                self.work = self.work._replace(Gb=aligned_zeros(self.block.b.shape, self.block.b.dtype))
                self._layouts[self.threads] = (self.block, self.work)
            args = (self.labels, self.weights, order, self.batch_size, opt, self.codes, self.work, self.threads)
            return self.kernels.deep_epoch(self.block, self.rows, *args)
        if self.path == "sparse":
            order = np.ascontiguousarray(order, dtype=np.intp)
            work = self.work
            if len(order) == self.n_rows <= self.batch_size and work.gWhT.size and self.rows.indptr is not None:
                rows, every_row = batch_order(order, self.n_rows, self.batch_size)
                if every_row:
                    order, work = rows, self._grouped_full_batch(work)
            args = (self.labels, self.weights, order, self.batch_size, opt, self.codes, work, self.threads)
            return self.kernels.sparse_epoch(self.block, self.rows, *args)
        if self.path == "reference":
            args = (self.X, self.labels, self.weights, order, self.batch_size, opt, self.codes)
            return self.kernels.reference_epoch(self.block, *args, self.velocity, self.second_moment)
        order, in_order = batch_order(order, self.n_rows, self.batch_size)
        order = np.ascontiguousarray(order, dtype=np.intp)
        gradients = not opt.plain
        if (not in_order and self.work.Xb.shape[1] == 0) or (gradients and self.work.GWh.size == 0):
            self.work = blas_work(
                self.block,
                self.batch,
                self.X.shape[1],
                gathered=not in_order or self.work.Xb.shape[1] > 0,
                gradients=gradients or self.work.GWh.size > 0,
            )
        args = (self.labels, self.weights, order, self.batch_size, opt, self.codes, self.work, self.threads)
        return self.kernels.blas_epoch(self.block, self.X, *args)

    # -- a whole epoch, in chunks --

    def epoch(self, perm, opt):
        """One epoch over ``X[perm]`` in compiled chunks of whole batches with the step
        ``opt`` (``Step``, or a learning rate for plain SGD; its ``steps``, the steps
        taken before this epoch); returns (loss_sum, correct).

        The epoch works on the path's block, loaded from the model's arrays at the
        start and stored back at the end (also when it raises). Each chunk asks the
        thread budget for its threads, so a training shrinks within one chunk when
        another one starts. Between chunks Python regains control: Ctrl-C is passed
        on with the parameters of the chunk's start (a Python-level backend could
        stop between two parameter updates), and a chunk that made the loss or a
        parameter non-finite is replayed batch by batch (the kernels are
        deterministic) to raise ``Diverged`` with the parameters from before the
        failing step.
        """
        self._load()
        try:
            return self._chunks(perm, as_step(opt))
        finally:
            self._store()

    def _grouped_full_batch(self, work):
        """``work`` for one batch of every row taken in row order (the batch's gradient
        is the same sum, and its chunks the same every epoch), with each chunk's
        non-zeros grouped by input once per fit, so that each row of the gradient
        takes one sum per chunk instead of one update per non-zero."""
        if self._full_batch is None:
            every_row = np.arange(self.n_rows, dtype=np.intp)
            n_in = self.block.WhT.shape[1]
            self._full_batch = self.kernels.group_chunks(self.rows, every_row, work.H.shape[1], n_in)
        cptr, crow, cval = self._full_batch
        return work._replace(cptr=cptr, crow=crow, cval=cval)

    def _use_threads(self, threads):
        """Run the next chunks on ``threads`` threads: the sparse path moves the
        parameters into the layout for that many (bitwise the same results); with
        several hidden layers one layout serves every thread count, and only the
        workspace changes."""
        if threads != self.threads and self.path == "sparse":
            net, work = self._layout(threads)
            if net is not self.block:
                self._store()
                self.block = net
                self._load()
            self.work = work
        self.threads = threads

    def _chunks(self, perm, opt):
        base = max(1, CHUNK_EXAMPLES // self.batch_size) * self.batch_size
        wanted = self._usable(wanted_threads(self.n_threads, self.kernels))
        loss_sum, n_correct = 0.0, 0
        start = 0
        while start < len(perm):
            chunk = base * self._chunk_scale  # chunks start at multiples of base
            with thread_budget(wanted) as threads:
                self._use_threads(threads)
                t0 = time.perf_counter()
                before = self._snapshot()
                t1 = time.perf_counter()
                try:
                    ls, nc = self.run(perm[start : start + chunk], self._at(opt, start))
                except KeyboardInterrupt:
                    self._restore(before)
                    raise
                t2 = time.perf_counter()
                if not (np.isfinite(ls) and self._finite()):
                    self._locate_divergence(perm, start, chunk, opt, before)
                if start + chunk < len(perm):
                    # a save the model's arrays made free (they held the chunk's start)
                    # is priced as the sparse path's load: the same copy back
                    saved = max(t1 - t0, self._move_seconds)
                    self._rescale(saved + time.perf_counter() - t2, t2 - t1)
            loss_sum += ls
            n_correct += nc
            start += chunk
        return loss_sum, n_correct

    def _rescale(self, overhead, compiled):
        """After a chunk of the current length that took ``compiled`` seconds in the
        kernels and ``overhead`` to save and check: the length of the next ones (see
        CHUNK_OVERHEAD_MAX), set once per run."""
        if self._rescaled or overhead <= CHUNK_OVERHEAD_MAX * compiled:
            return
        self._rescaled = True
        wanted = overhead / max(CHUNK_OVERHEAD_MAX * compiled, 1e-12)
        affordable = CHUNK_SECONDS_MAX / max(compiled, 1e-9)
        self._chunk_scale = max(1, int(min(wanted, affordable)) * self._chunk_scale)

    def _arrays(self):
        """The arrays a step changes: the parameters and their optimizer state."""
        if self.path == "reference":
            return [a for d in (self.params, *self._states()) if d is not None for a in d.values()]
        per_block = 2 if self.deep else 4
        return list(self.block[: per_block * (1 + self.n_state)])

    def _snapshot(self):
        """What ``_restore`` takes back to: on the sparse path, the model's arrays,
        which its layout is stored into (no memory beyond the model's); on the others,
        whose block is the model's arrays, a copy in buffers allocated once."""
        if self.path == "sparse":
            self._store()
            return None
        arrays = self._arrays()
        if [b.shape for b in self._saved] != [a.shape for a in arrays]:
            self._saved = [np.empty_like(a) for a in arrays]
        for a, b in zip(arrays, self._saved, strict=True):
            np.copyto(b, a)
        return self._saved

    def _restore(self, saved):
        if saved is None:
            self._load()
            return
        for a, b in zip(self._arrays(), saved, strict=True):
            a[...] = b

    def _finite(self):
        return all(count_nonfinite(a) == 0 for a in self._arrays())

    def _at(self, opt, start):
        """``opt`` for the batches from example ``start`` of the epoch on (Adam's step count)."""
        return opt._replace(steps=opt.steps + start // self.batch_size) if start else opt

    def _locate_divergence(self, perm, start, chunk, opt, before):
        self._restore(before)
        for b0 in range(start, min(start + chunk, len(perm)), self.batch_size):
            saved = [a.copy() for a in self._arrays()]
            ls, _ = self.run(perm[b0 : b0 + self.batch_size], self._at(opt, b0))
            if not (np.isfinite(ls) and self._finite()):
                self._restore(saved)
                raise Diverged(b0 // self.batch_size)
        raise Diverged(start // self.batch_size)  # not reproduced: report the chunk's start


def train_epoch(kernels, X, labels, perm, params, opt, batch_size, loss="ce", path="auto", **options):
    """One epoch over ``X[perm]`` with backend module ``kernels``, updating the
    arrays of ``params`` (and the optimizer state) in place; ``opt`` a ``Step`` or a learning
    rate; ``options`` the other keywords of ``EpochRunner`` (``activation``,
    ``n_threads``, ``weights``, ``velocity``, ``second_moment``); returns (loss_sum, correct). Raises ``Diverged`` as
    ``EpochRunner.epoch`` does. For tests and benchmarks; training runs keep one
    ``EpochRunner``."""
    runner = EpochRunner(kernels, params, X, labels, batch_size=batch_size, loss=loss, path=path, **options)
    return runner.epoch(perm, opt)
