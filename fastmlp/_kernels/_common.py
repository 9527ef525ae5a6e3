"""Helpers shared by the kernel modules (Python level, run once per epoch)."""

import functools

import numpy as np

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
# So: the small path up to batch 4 always (as before these measurements); up to 63
# (BLAS would run on one thread) when the inputs are sparse and OpenBLAS runs AVX2
# kernels, as it does where OPENBLAS_CORETYPE=Haswell is set: 1.6-2.7x faster there.
SMALL_BATCH_MAX = 4
SPARSE_SMALL_BATCH_MAX = 63
SPARSE_DENSITY_MAX = 0.5  # fraction of non-zero inputs
_AVX512_KERNELS = {"skylakex", "cooperlake", "sapphirerapids"}


@functools.lru_cache(maxsize=None)
def blas_has_avx512_kernels():
    """True unless the OpenBLAS that scipy loaded runs a kernel without AVX-512
    (True also for other BLAS libraries: no measurements say otherwise)."""
    import importlib

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


def small_path_rule():
    """The rule ``takes_small_path`` applies under "auto" on this machine, in words."""
    if blas_has_avx512_kernels():
        return f"hand-written loops up to batch {SMALL_BATCH_MAX}; BLAS GEMMs above (AVX-512 BLAS kernels)"
    return (f"hand-written loops up to batch {SPARSE_SMALL_BATCH_MAX} if at most "
            f"{SPARSE_DENSITY_MAX:.0%} of the inputs are non-zero, else up to {SMALL_BATCH_MAX}; "
            f"BLAS GEMMs above (AVX2 BLAS kernels)")


def takes_small_path(path, batch, X):
    """Whether an epoch of ``batch``-sized batches over X runs the small path."""
    if path != "auto":
        return path == "small"
    if batch <= SMALL_BATCH_MAX:
        return True
    return bool(batch <= SPARSE_SMALL_BATCH_MAX and not blas_has_avx512_kernels()
                and input_density(X) <= SPARSE_DENSITY_MAX)


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


CACHE_LINE = 64  # bytes


def padded_width(n, itemsize):
    """``n`` rounded up to a whole number of cache lines of ``itemsize`` elements."""
    per_line = CACHE_LINE // itemsize
    return -(-n // per_line) * per_line


def aligned_zeros(shape, dtype):
    """A zero-filled C-contiguous array whose data starts on a cache-line boundary.

    The small-batch kernels keep the hidden-unit dimension padded to whole cache
    lines (see ``padded_width``); with the rows aligned as well, every vector load
    and store of a row stays inside one cache line.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(nbytes + CACHE_LINE, np.uint8)
    skip = -raw.ctypes.data % CACHE_LINE
    return raw[skip:skip + nbytes].view(dtype).reshape(shape)


def padded_parameters(n_in, nh, nout, dtype):
    """``(nhp, WhT, bh, Wy)``: zeroed, cache-line aligned buffers for the small path's
    copy of the parameters, with nh padded to ``nhp`` hidden units (whole cache
    lines): WhT (n_in, nhp) holds Wh transposed, bh (nhp,), Wy (nout, nhp)."""
    nhp = padded_width(nh, np.dtype(dtype).itemsize)
    return nhp, aligned_zeros((n_in, nhp), dtype), aligned_zeros(nhp, dtype), aligned_zeros((nout, nhp), dtype)
