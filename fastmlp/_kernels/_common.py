"""Helpers shared by the kernel modules (Python level, run once per epoch)."""

import numpy as np


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
