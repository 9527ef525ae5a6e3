# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Cython kernels of fastmlp, float32 and float64 through the fused type ``floating``.

The primitives shared with ``_nb`` and ``_np`` (see ``fastmlp/_kernels/__init__.py``):
inputs are C-contiguous arrays of one floating dtype, labels and orders are
``np.intp``; parameters are updated in place. The driver (``epochs.py``) prepares
the layouts and workspaces; the primitives trust them.

GEMMs go to scipy's BLAS (``scipy.linalg.cython_blas``); the memory-bound steps
around them (bias + tanh, softmax + loss + gradient, the tanh derivative, bias
steps) and the whole small-batch epoch are hand-written C in ``_fused.c``.
Every epoch runs with the GIL released.
"""

import numpy as np

cnp.import_array()

cimport numpy as cnp
from cython cimport floating
from libc.stdint cimport int32_t, int64_t, intptr_t, uint16_t, uint64_t
from libc.string cimport memcpy
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef extern from "_fused.h" nogil:
    int FM_OK, FM_ERR_LOSS, FM_ERR_LAYOUT, FM_LOSS_CE, FM_LOSS_MSE, FM_MASK_ROWS
    ctypedef struct fm_tally:
        double loss_sum
        double correct
    void fm_tanh_f(float *x, Py_ssize_t n)
    void fm_tanh_d(double *x, Py_ssize_t n)
    void fm_bias_tanh_f(float *H, const float *b, Py_ssize_t B, Py_ssize_t n)
    void fm_bias_tanh_d(double *H, const double *b, Py_ssize_t B, Py_ssize_t n)
    void fm_bias_add_f(float *Z, const float *b, Py_ssize_t B, Py_ssize_t n)
    void fm_bias_add_d(double *Z, const double *b, Py_ssize_t B, Py_ssize_t n)
    int fm_loss_grad_f(const float *Z, const intptr_t *labels, float *dZ, Py_ssize_t B,
                       Py_ssize_t n, int loss, float scale, fm_tally *tally)
    int fm_loss_grad_d(const double *Z, const intptr_t *labels, double *dZ, Py_ssize_t B,
                       Py_ssize_t n, int loss, double scale, fm_tally *tally)
    void fm_dtanh_f(float *dH, const float *H, Py_ssize_t n)
    void fm_dtanh_d(double *dH, const double *H, Py_ssize_t n)
    void fm_bias_update_f(float *b, const float *D, Py_ssize_t B, Py_ssize_t n, float lr)
    void fm_bias_update_d(double *b, const double *D, Py_ssize_t B, Py_ssize_t n, double lr)
    int fm_max_threads()
    int fm_clone_level()
    int fm_set_clone_level(int level)
    ctypedef struct fm_sgd_f:
        float lr, momentum, decay
        int nesterov, decay_by_weight_sum
    ctypedef struct fm_net_f:
        float *WhT
        float *bh
        float *Wy
        float *by
        float *VWhT
        float *Vbh
        float *VWy
        float *Vby
        Py_ssize_t n_in, nout, stride
        int n_slices, n_groups
        const int32_t *slice_group
        const int32_t *group_line
    ctypedef struct fm_rows_f:
        const float *data
        const int32_t *indices
        const int64_t *indptr
        const intptr_t *labels
        const intptr_t *order
        const float *weights
        Py_ssize_t n_in, n, batch
    ctypedef struct fm_swork_f:
        float *H
        float *dH
        float *P
        float *dZ
        float *gWy
        float *gbh
        float *gby
        float *G
        double *row_loss
        double *row_correct
        int32_t *sync
        Py_ssize_t rows
        const int64_t *cptr
        const uint16_t *crow
        const float *cval
        uint64_t *mask
        Py_ssize_t group_min
    ctypedef struct fm_batches_f:
        const float *X
        const intptr_t *labels
        const intptr_t *order
        const float *weights
        Py_ssize_t n_in, n, batch
    ctypedef struct fm_dense_f:
        float *Wh
        float *bh
        float *Wy
        float *by
        float *VWh
        float *Vbh
        float *VWy
        float *Vby
        Py_ssize_t n_in, nh, nout
        int n_blocks
        const int32_t *block_unit
        Py_ssize_t block_max
    ctypedef struct fm_bwork_f:
        float *Xb
        float *H
        float *dH
        float *Zp
        float *dZ
        double *row_loss
        double *row_correct
        float *GWh
        float *GWy
        float *gb
        int32_t *sync
    ctypedef void (*fm_gemm_ptr_f)(const char *, const char *, const int *, const int *, const int *,
                                   const float *, const float *, const int *, const float *, const int *,
                                   const float *, float *, const int *)
    int fm_sparse_epoch_f(const fm_net_f *P, const fm_rows_f *D, const fm_sgd_f *opt, int loss,
                          const fm_swork_f *W, int n_threads, fm_tally *tally)
    void fm_row_passes_f(const fm_net_f *P, const fm_rows_f *D, const fm_swork_f *W, int n_threads)
    void fm_group_chunks_f(const fm_rows_f *D, Py_ssize_t rows, int64_t *cptr, uint16_t *crow, float *cval,
                             int64_t *cursor)
    int fm_blas_epoch_f(const fm_dense_f *P, const fm_batches_f *D, const fm_sgd_f *opt, int loss,
                        const fm_bwork_f *W, fm_gemm_ptr_f gemm, int n_threads, fm_tally *tally)
    void fm_csr_counts_f(const float *X, Py_ssize_t n_rows, Py_ssize_t n_in, int64_t *counts)
    void fm_csr_fill_f(const float *X, Py_ssize_t n_rows, Py_ssize_t n_in, const int64_t *indptr,
                       int32_t *indices, float *data)
    ctypedef struct fm_sgd_d:
        double lr, momentum, decay
        int nesterov, decay_by_weight_sum
    ctypedef struct fm_net_d:
        double *WhT
        double *bh
        double *Wy
        double *by
        double *VWhT
        double *Vbh
        double *VWy
        double *Vby
        Py_ssize_t n_in, nout, stride
        int n_slices, n_groups
        const int32_t *slice_group
        const int32_t *group_line
    ctypedef struct fm_rows_d:
        const double *data
        const int32_t *indices
        const int64_t *indptr
        const intptr_t *labels
        const intptr_t *order
        const double *weights
        Py_ssize_t n_in, n, batch
    ctypedef struct fm_swork_d:
        double *H
        double *dH
        double *P
        double *dZ
        double *gWy
        double *gbh
        double *gby
        double *G
        double *row_loss
        double *row_correct
        int32_t *sync
        Py_ssize_t rows
        const int64_t *cptr
        const uint16_t *crow
        const double *cval
        uint64_t *mask
        Py_ssize_t group_min
    ctypedef struct fm_batches_d:
        const double *X
        const intptr_t *labels
        const intptr_t *order
        const double *weights
        Py_ssize_t n_in, n, batch
    ctypedef struct fm_dense_d:
        double *Wh
        double *bh
        double *Wy
        double *by
        double *VWh
        double *Vbh
        double *VWy
        double *Vby
        Py_ssize_t n_in, nh, nout
        int n_blocks
        const int32_t *block_unit
        Py_ssize_t block_max
    ctypedef struct fm_bwork_d:
        double *Xb
        double *H
        double *dH
        double *Zp
        double *dZ
        double *row_loss
        double *row_correct
        double *GWh
        double *GWy
        double *gb
        int32_t *sync
    ctypedef void (*fm_gemm_ptr_d)(const char *, const char *, const int *, const int *, const int *,
                                   const double *, const double *, const int *, const double *, const int *,
                                   const double *, double *, const int *)
    int fm_sparse_epoch_d(const fm_net_d *P, const fm_rows_d *D, const fm_sgd_d *opt, int loss,
                          const fm_swork_d *W, int n_threads, fm_tally *tally)
    void fm_row_passes_d(const fm_net_d *P, const fm_rows_d *D, const fm_swork_d *W, int n_threads)
    void fm_group_chunks_d(const fm_rows_d *D, Py_ssize_t rows, int64_t *cptr, uint16_t *crow, double *cval,
                             int64_t *cursor)
    int fm_blas_epoch_d(const fm_dense_d *P, const fm_batches_d *D, const fm_sgd_d *opt, int loss,
                        const fm_bwork_d *W, fm_gemm_ptr_d gemm, int n_threads, fm_tally *tally)
    void fm_csr_counts_d(const double *X, Py_ssize_t n_rows, Py_ssize_t n_in, int64_t *counts)
    void fm_csr_fill_d(const double *X, Py_ssize_t n_rows, Py_ssize_t n_in, const int64_t *indptr,
                       int32_t *indices, double *data)
PATHS = ("sparse", "blas")
THREADED_PATHS = ("sparse", "blas")
# A larger batch on the sparse path is taken this many examples at a time, its
# gradient summed (epochs.sparse_work says when): its activations stay in cache.
SPARSE_CHUNK_ROWS = 128
# Batches (or chunks) of at least this many examples update each row of WhT they
# touch once, with the sum over their examples, where the workspace has a mask of
# their inputs (epochs.sparse_work says when); up to SPARSE_MASK_ROWS examples.
SPARSE_GROUP_MIN = 32
SPARSE_MASK_ROWS = FM_MASK_ROWS
# The C enum of loss codes, for the test that checks it against epochs.LOSS_CODES.
C_LOSS_CODES = {"ce": FM_LOSS_CE, "mse": FM_LOSS_MSE}

from .epochs import SGD, check_mask

_PLAIN = SGD(0.0)


cdef int _check(int status) except -1:
    if status == FM_ERR_LOSS:
        raise ValueError(f"unknown loss code; known: {C_LOSS_CODES}")
    if status == FM_ERR_LAYOUT:
        raise ValueError("the parameter block or workspace lacks what the step needs (velocities, gradients)")
    return 0


# ---- thin wrappers: one place where floating picks the C or BLAS routine ----

cdef inline void _gemm(bint ta, bint tb, int M, int N, int K, floating alpha,
                       const floating *A, int lda, const floating *B, int ldb,
                       floating beta, floating *C, int ldc) noexcept nogil:
    """Row-major C (M, N) = alpha op(A) op(B) + beta C, lda/ldb/ldc the row strides.

    BLAS is column-major, where a row-major matrix reads as its transpose, so
    this is the column-major C^T = alpha op(B)^T op(A)^T + beta C^T.
    """
    cdef char ca = b'T' if ta else b'N'
    cdef char cb = b'T' if tb else b'N'
    if floating is float:
        sgemm(&cb, &ca, &N, &M, &K, &alpha, <float*>B, &ldb, <float*>A, &lda, &beta, C, &ldc)
    else:
        dgemm(&cb, &ca, &N, &M, &K, &alpha, <double*>B, &ldb, <double*>A, &lda, &beta, C, &ldc)


cdef inline void _bias_tanh(floating *H, const floating *b, Py_ssize_t B, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fm_bias_tanh_f(H, b, B, n)
    else:
        fm_bias_tanh_d(H, b, B, n)


cdef inline void _bias_add(floating *Z, const floating *b, Py_ssize_t B, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fm_bias_add_f(Z, b, B, n)
    else:
        fm_bias_add_d(Z, b, B, n)


cdef inline int _loss_grad(const floating *Z, const Py_ssize_t *labels, floating *dZ,
                           Py_ssize_t B, Py_ssize_t n, int loss, floating scale,
                           fm_tally *tally) noexcept nogil:
    if floating is float:
        return fm_loss_grad_f(Z, <const intptr_t*>labels, dZ, B, n, loss, scale, tally)
    else:
        return fm_loss_grad_d(Z, <const intptr_t*>labels, dZ, B, n, loss, scale, tally)


cdef inline void _dtanh(floating *dH, const floating *H, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fm_dtanh_f(dH, H, n)
    else:
        fm_dtanh_d(dH, H, n)


cdef inline void _bias_update(floating *b, const floating *D, Py_ssize_t B, Py_ssize_t n,
                              floating lr) noexcept nogil:
    if floating is float:
        fm_bias_update_f(b, D, B, n, lr)
    else:
        fm_bias_update_d(b, D, B, n, lr)


# ---- one step, in pieces: the fused building blocks of the BLAS epoch ----

cdef void _step_backward(const floating *Xb, const floating *H, floating *dZ, floating *dH,
                         floating *Wh, floating *bh, floating *Wy, floating *by,
                         int B, int n_in, int nh, int nout, floating lr) noexcept nogil:
    """dH = (dZ Wy) * (1 - H*H) before Wy changes, then every parameter steps in place."""
    _gemm(False, False, B, nh, nout, <floating>1, dZ, nout, Wy, nh, <floating>0, dH, nh)
    _dtanh(dH, H, <Py_ssize_t>B * nh)
    _gemm(True, False, nout, nh, B, -lr, dZ, nout, H, nh, <floating>1, Wy, nh)
    _bias_update(by, dZ, B, nout, lr)
    _gemm(True, False, nh, n_in, B, -lr, dH, nh, Xb, n_in, <floating>1, Wh, n_in)
    _bias_update(bh, dH, B, nh, lr)


# ---- the primitives (the contract of fastmlp._kernels) ----

def tanh(const floating[::1] x):
    """tanh of a 1-D array, with the approximation the kernels use (float32)."""
    out = np.array(x, copy=True)
    cdef floating[::1] y = out
    if y.shape[0] == 0:
        return out
    with nogil:
        if floating is float:
            fm_tanh_f(&y[0], y.shape[0])
        else:
            fm_tanh_d(&y[0], y.shape[0])
    return out


cdef _affine(const floating[:, ::1] A, const floating[:, ::1] W, const floating[::1] b, bint tanh):
    """A W^T + b by one GEMM, then tanh while the result is in cache if ``tanh``."""
    cdef int B = A.shape[0], n_in = A.shape[1], n_out = W.shape[0]
    out = np.empty((B, n_out), dtype=np.asarray(W).dtype)
    cdef floating[:, ::1] C = out
    with nogil:
        _gemm(False, True, B, n_out, n_in, <floating>1, &A[0, 0], n_in, &W[0, 0], n_in,
              <floating>0, &C[0, 0], n_out)
        if tanh:
            _bias_tanh(&C[0, 0], &b[0], B, n_out)
        else:
            _bias_add(&C[0, 0], &b[0], B, n_out)
    return out


def forward_hidden(const floating[:, ::1] X, const floating[:, ::1] Wh, const floating[::1] bh):
    """H = tanh(X Wh^T + bh): one GEMM, then bias and tanh while H is in cache."""
    return _affine(X, Wh, bh, True)


def forward_logits(const floating[:, ::1] H, const floating[:, ::1] Wy, const floating[::1] by):
    """Z = H Wy^T + by."""
    return _affine(H, Wy, by, False)


def loss_grad(const floating[:, ::1] Z, const Py_ssize_t[::1] labels, int loss):
    """(dZ, loss_sum, n_correct): dZ = dl/dZ / B, the summed loss, the correct count."""
    cdef Py_ssize_t B = Z.shape[0], n = Z.shape[1]
    out = np.empty_like(np.asarray(Z))
    cdef floating[:, ::1] dZ = out
    cdef fm_tally tally = fm_tally(0, 0)
    cdef int status
    with nogil:
        status = _loss_grad(&Z[0, 0], &labels[0], &dZ[0, 0], B, n, loss, <floating>1 / <floating>B, &tally)
    _check(status)
    return out, tally.loss_sum, int(tally.correct)


def backward_update(const floating[:, ::1] X, const floating[:, ::1] H, const floating[:, ::1] dZ, P,
                    double lr):
    """In place on the block P: Wy -= lr dZ^T H, by -= lr sum(dZ), Wh -= lr dH^T X,
    bh -= lr sum(dH), with dH = (dZ Wy) * (1 - H*H) taken before Wy changes. Returns dH."""
    cdef floating[:, ::1] Wh = P.Wh, Wy = P.Wy
    cdef floating[::1] bh = P.bh, by = P.by
    cdef int B = X.shape[0], n_in = X.shape[1], nh = Wh.shape[0], nout = Wy.shape[0]
    out = np.empty((B, nh), dtype=np.asarray(Wh).dtype)
    cdef floating[:, ::1] dH = out
    dZc = np.array(dZ, copy=True)  # the caller's dZ is left as it was
    cdef floating[:, ::1] dZw = dZc
    with nogil:
        _step_backward(&X[0, 0], &H[0, 0], &dZw[0, 0], &dH[0, 0], &Wh[0, 0], &bh[0], &Wy[0, 0],
                       &by[0], B, n_in, nh, nout, <floating>lr)
    return out


def max_threads():
    """The threads an OpenMP region would use in this thread now (threadpoolctl's
    limits and OMP_NUM_THREADS included); 1 where the kernels were built without OpenMP."""
    return fm_max_threads()


def clone_level():
    """Which build of the hot C kernels runs here: 0 where they were compiled once
    (the compiler's flags decide), else the x86-64 level of the build that runs: 4
    (AVX-512), 3 (AVX2 + FMA) or 1 (the baseline). The best the CPU supports, unless
    the environment variable FASTMLP_KERNEL_LEVEL (read once) or set_clone_level
    asked for a lower one."""
    return fm_clone_level()


def set_clone_level(int level):
    """Run the highest build of the C kernels that the CPU supports and that is no
    higher than ``level`` (4, 3 or 1) from now on, in every thread; returns the level
    that runs (0 where the kernels were compiled once). For tests and measurements
    of the lower builds on a machine that has the higher ones."""
    return fm_set_clone_level(level)


def dense_to_csr(const floating[:, ::1] X):
    """(data, indices int32, indptr int64): the non-zero entries of X, row by row, in
    two compiled passes (count, then fill)."""
    cdef Py_ssize_t n_rows = X.shape[0], n_in = X.shape[1]
    counts = np.zeros(n_rows + 1, dtype=np.int64)
    cdef int64_t[::1] c = counts
    if n_rows and n_in:
        with nogil:
            if floating is float:
                fm_csr_counts_f(&X[0, 0], n_rows, n_in, &c[1])
            else:
                fm_csr_counts_d(&X[0, 0], n_rows, n_in, &c[1])
    indptr = np.cumsum(counts)
    cdef int64_t nnz = indptr[n_rows]
    data = np.empty(nnz, dtype=np.asarray(X).dtype)
    indices = np.empty(nnz, dtype=np.int32)
    cdef int64_t[::1] ip = indptr
    cdef int32_t[::1] ix = indices
    cdef floating[::1] dv = data
    if nnz:
        with nogil:
            if floating is float:
                fm_csr_fill_f(&X[0, 0], n_rows, n_in, &ip[0], &ix[0], &dv[0])
            else:
                fm_csr_fill_d(&X[0, 0], n_rows, n_in, &ip[0], &ix[0], &dv[0])
    return data, indices, indptr


cdef inline void *_ptr(object a):
    """The data of array ``a`` (C-contiguous, built by the driver), NULL for None or
    an empty array."""
    if a is None:
        return NULL
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_SIZE(arr) == 0:
        return NULL
    return cnp.PyArray_DATA(arr)


cdef _sparse_call(P, rows, labels, weights, order, Py_ssize_t batch, opt, int loss, work, int n_threads,
                  bint floor):
    cdef Py_ssize_t n_slices = P.WhT.shape[0], n_in = P.WhT.shape[1], stride = P.WhT.shape[2]
    cdef Py_ssize_t nout = P.Wy.shape[1], n = len(order)
    cdef int n_groups = len(P.group_line) - 1, status = FM_OK
    cdef fm_tally tally = fm_tally(0, 0)
    cdef fm_net_f Nf
    cdef fm_rows_f Rf
    cdef fm_sgd_f Of
    cdef fm_swork_f Wf
    cdef fm_net_d Nd
    cdef fm_rows_d Rd
    cdef fm_sgd_d Od
    cdef fm_swork_d Wd
    cdef Py_ssize_t work_rows = work.H.shape[1]
    if work.H.shape[0] != n_slices or (work_rows < min(batch, n) and work.G.size == 0):
        raise ValueError("the workspace does not fit the parameter block and the batch size")
    cdef Py_ssize_t lanes = 64 // P.WhT.itemsize, out_pad = (nout + lanes - 1) // lanes * lanes
    if P.by.shape[1] != out_pad or work.gby.shape[1] != out_pad or work.dZ.shape[2] != out_pad:
        raise ValueError("by, gby and the rows of dZ must be n_out padded to whole cache lines")
    check_mask(P, work)
    batch = min(batch, n)
    if P.WhT.dtype == np.float32:
        Nf = fm_net_f(<float*>_ptr(P.WhT), <float*>_ptr(P.bh), <float*>_ptr(P.Wy), <float*>_ptr(P.by),
                      <float*>_ptr(P.VWhT), <float*>_ptr(P.Vbh), <float*>_ptr(P.VWy), <float*>_ptr(P.Vby),
                      n_in, nout, stride, <int>n_slices, n_groups, <const int32_t*>_ptr(P.slice_group),
                      <const int32_t*>_ptr(P.group_line))
        Rf = fm_rows_f(<const float*>_ptr(rows.data), <const int32_t*>_ptr(rows.indices),
                       <const int64_t*>_ptr(rows.indptr), <const intptr_t*>_ptr(labels),
                       <const intptr_t*>_ptr(order), <const float*>_ptr(weights), n_in, n, batch)
        Of = fm_sgd_f(opt.lr, opt.momentum, opt.decay, opt.nesterov, opt.decay_by_weight_sum)
        Wf = fm_swork_f(<float*>_ptr(work.H), <float*>_ptr(work.dH), <float*>_ptr(work.P), <float*>_ptr(work.dZ),
                        <float*>_ptr(work.gWy), <float*>_ptr(work.gbh), <float*>_ptr(work.gby), <float*>_ptr(work.G),
                        <double*>_ptr(work.row_loss), <double*>_ptr(work.row_correct), <int32_t*>_ptr(work.sync),
                        work_rows, <const int64_t*>_ptr(work.cptr), <const uint16_t*>_ptr(work.crow),
                        <const float*>_ptr(work.cval), <uint64_t*>_ptr(work.mask), work.group_min)
        with nogil:
            if floor:
                fm_row_passes_f(&Nf, &Rf, &Wf, n_threads)
            else:
                status = fm_sparse_epoch_f(&Nf, &Rf, &Of, loss, &Wf, n_threads, &tally)
    else:
        Nd = fm_net_d(<double*>_ptr(P.WhT), <double*>_ptr(P.bh), <double*>_ptr(P.Wy), <double*>_ptr(P.by),
                      <double*>_ptr(P.VWhT), <double*>_ptr(P.Vbh), <double*>_ptr(P.VWy), <double*>_ptr(P.Vby),
                      n_in, nout, stride, <int>n_slices, n_groups, <const int32_t*>_ptr(P.slice_group),
                      <const int32_t*>_ptr(P.group_line))
        Rd = fm_rows_d(<const double*>_ptr(rows.data), <const int32_t*>_ptr(rows.indices),
                       <const int64_t*>_ptr(rows.indptr), <const intptr_t*>_ptr(labels),
                       <const intptr_t*>_ptr(order), <const double*>_ptr(weights), n_in, n, batch)
        Od = fm_sgd_d(opt.lr, opt.momentum, opt.decay, opt.nesterov, opt.decay_by_weight_sum)
        Wd = fm_swork_d(<double*>_ptr(work.H), <double*>_ptr(work.dH), <double*>_ptr(work.P),
                        <double*>_ptr(work.dZ), <double*>_ptr(work.gWy), <double*>_ptr(work.gbh),
                        <double*>_ptr(work.gby), <double*>_ptr(work.G), <double*>_ptr(work.row_loss),
                        <double*>_ptr(work.row_correct), <int32_t*>_ptr(work.sync), work_rows,
                        <const int64_t*>_ptr(work.cptr), <const uint16_t*>_ptr(work.crow),
                        <const double*>_ptr(work.cval), <uint64_t*>_ptr(work.mask), work.group_min)
        with nogil:
            if floor:
                fm_row_passes_d(&Nd, &Rd, &Wd, n_threads)
            else:
                status = fm_sparse_epoch_d(&Nd, &Rd, &Od, loss, &Wd, n_threads, &tally)
    _check(status)
    return tally.loss_sum, tally.correct


def group_chunks(rows, order, Py_ssize_t chunk_rows, Py_ssize_t n_in):
    """The non-zeros of the CSR ``rows`` (epochs.Rows) of examples ``order``,
    ``chunk_rows`` at a time, grouped by input within each chunk (_sparse_impl.h
    fm_group_chunks): (cptr int64 (n_chunks, n_in + 1), crow uint16, cval)."""
    cdef Py_ssize_t n = len(order), n_chunks = (n + chunk_rows - 1) // chunk_rows
    if rows.indptr is None or not 0 < chunk_rows <= 65536:
        raise ValueError("grouping needs CSR rows and chunks of at most 65536 examples")
    order = np.ascontiguousarray(order, dtype=np.intp)
    cdef Py_ssize_t nnz = int((rows.indptr[order + 1] - rows.indptr[order]).sum())
    cptr = np.empty((n_chunks, n_in + 1), np.int64)
    crow = np.empty(nnz, np.uint16)
    cval = np.empty(nnz, rows.data.dtype)
    cursor = np.empty(n_in, np.int64)
    cdef fm_rows_f Rf
    cdef fm_rows_d Rd
    cdef int64_t *pc
    cdef uint16_t *pr
    cdef void *pv
    cdef int64_t *pu
    pc, pr, pv, pu = <int64_t*>_ptr(cptr), <uint16_t*>_ptr(crow), _ptr(cval), <int64_t*>_ptr(cursor)
    if rows.data.dtype == np.float32:
        Rf = fm_rows_f(<const float*>_ptr(rows.data), <const int32_t*>_ptr(rows.indices),
                       <const int64_t*>_ptr(rows.indptr), NULL, <const intptr_t*>_ptr(order), NULL, n_in, n, n)
        with nogil:
            fm_group_chunks_f(&Rf, chunk_rows, pc, pr, <float*>pv, pu)
    else:
        Rd = fm_rows_d(<const double*>_ptr(rows.data), <const int32_t*>_ptr(rows.indices),
                       <const int64_t*>_ptr(rows.indptr), NULL, <const intptr_t*>_ptr(order), NULL, n_in, n, n)
        with nogil:
            fm_group_chunks_d(&Rd, chunk_rows, pc, pr, <double*>pv, pu)
    return cptr, crow, cval


def row_passes(P, rows, labels, order, Py_ssize_t batch, work, int n_threads):
    """The row-pass floor of a sparse epoch (_sparse_impl.h fm_row_passes): only
    the two passes over rows of P.WhT per non-zero input, on ``n_threads`` threads
    meeting every ``batch`` examples. Changes P.WhT; for timing only."""
    if len(order):
        _sparse_call(P, rows, labels, None, order, batch, _PLAIN, 0, work, n_threads, True)


def sparse_epoch(P, rows, labels, weights, order, Py_ssize_t batch, opt, int loss, work, int n_threads):
    """Mini-batch SGD over the batches of rows[order] on the sparse path, in place on
    the block P (epochs.SparseNet, with its velocities), with the step ``opt``
    (epochs.SGD) and the sample ``weights`` (or None), on ``n_threads`` threads, the
    GIL released. Returns (loss_sum, correct) measured in each batch's forward pass."""
    if len(order) == 0:
        return 0.0, 0.0
    return _sparse_call(P, rows, labels, weights, order, batch, opt, loss, work, n_threads, False)


def blas_epoch(P, X, labels, weights, order, Py_ssize_t batch, opt, int loss, work, int n_threads):
    """Mini-batch SGD over the batches of X[order] with GEMMs, in place on the block P
    (epochs.BlasNet: the model's layout, its velocities and its blocks of hidden
    units), with the step ``opt`` and the sample ``weights`` (or None), on
    ``n_threads`` threads, the GIL released. A batch whose rows lie in order in X is
    read in place, any other is gathered into work.Xb. Returns (loss_sum, correct)."""
    cdef Py_ssize_t n = len(order), n_in = X.shape[1], nh = P.Wh.shape[0], nout = P.Wy.shape[0]
    cdef int n_blocks = len(P.block_unit) - 1, status
    cdef Py_ssize_t block_max = work.H.shape[2]
    cdef fm_tally tally = fm_tally(0, 0)
    cdef fm_dense_f Pf
    cdef fm_batches_f Df
    cdef fm_sgd_f Of
    cdef fm_bwork_f Wf
    cdef fm_dense_d Pd
    cdef fm_batches_d Dd
    cdef fm_sgd_d Od
    cdef fm_bwork_d Wd
    if n == 0:
        return 0.0, 0.0
    batch = min(batch, n)
    if work.H.shape[1] < batch or (work.Xb.shape[1] and work.Xb.shape[1] < batch):
        raise ValueError("the workspace does not fit the batch size")
    if P.Wh.dtype == np.float32:
        Pf = fm_dense_f(<float*>_ptr(P.Wh), <float*>_ptr(P.bh), <float*>_ptr(P.Wy), <float*>_ptr(P.by),
                        <float*>_ptr(P.VWh), <float*>_ptr(P.Vbh), <float*>_ptr(P.VWy), <float*>_ptr(P.Vby),
                        n_in, nh, nout, n_blocks, <const int32_t*>_ptr(P.block_unit), block_max)
        Df = fm_batches_f(<const float*>_ptr(X), <const intptr_t*>_ptr(labels), <const intptr_t*>_ptr(order),
                          <const float*>_ptr(weights), n_in, n, batch)
        Of = fm_sgd_f(opt.lr, opt.momentum, opt.decay, opt.nesterov, opt.decay_by_weight_sum)
        Wf = fm_bwork_f(<float*>_ptr(work.Xb), <float*>_ptr(work.H), <float*>_ptr(work.dH), <float*>_ptr(work.Zp),
                        <float*>_ptr(work.dZ), <double*>_ptr(work.row_loss), <double*>_ptr(work.row_correct),
                        <float*>_ptr(work.GWh), <float*>_ptr(work.GWy), <float*>_ptr(work.gb),
                        <int32_t*>_ptr(work.sync))
        with nogil:
            status = fm_blas_epoch_f(&Pf, &Df, &Of, loss, &Wf, <fm_gemm_ptr_f>sgemm, n_threads, &tally)
    else:
        Pd = fm_dense_d(<double*>_ptr(P.Wh), <double*>_ptr(P.bh), <double*>_ptr(P.Wy), <double*>_ptr(P.by),
                        <double*>_ptr(P.VWh), <double*>_ptr(P.Vbh), <double*>_ptr(P.VWy), <double*>_ptr(P.Vby),
                        n_in, nh, nout, n_blocks, <const int32_t*>_ptr(P.block_unit), block_max)
        Dd = fm_batches_d(<const double*>_ptr(X), <const intptr_t*>_ptr(labels), <const intptr_t*>_ptr(order),
                          <const double*>_ptr(weights), n_in, n, batch)
        Od = fm_sgd_d(opt.lr, opt.momentum, opt.decay, opt.nesterov, opt.decay_by_weight_sum)
        Wd = fm_bwork_d(<double*>_ptr(work.Xb), <double*>_ptr(work.H), <double*>_ptr(work.dH),
                        <double*>_ptr(work.Zp), <double*>_ptr(work.dZ), <double*>_ptr(work.row_loss),
                        <double*>_ptr(work.row_correct), <double*>_ptr(work.GWh), <double*>_ptr(work.GWy),
                        <double*>_ptr(work.gb), <int32_t*>_ptr(work.sync))
        with nogil:
            status = fm_blas_epoch_d(&Pd, &Dd, &Od, loss, &Wd, <fm_gemm_ptr_d>dgemm, n_threads, &tally)
    _check(status)
    return tally.loss_sum, tally.correct
