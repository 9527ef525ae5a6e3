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

from cython cimport floating
from libc.stdint cimport int32_t, int64_t, intptr_t
from libc.string cimport memcpy
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef extern from "_fused.h" nogil:
    int FM_OK, FM_ERR_LOSS, FM_ERR_LAYOUT, FM_LOSS_CE, FM_LOSS_MSE
    ctypedef struct fm_tally:
        double loss_sum
        int64_t n_correct
    ctypedef struct fm_net_f:
        float *WhT
        float *bh
        float *Wy
        float *by
        Py_ssize_t n_in, nout, stride
        int n_slices, n_groups
        const int32_t *slice_group
        const int32_t *group_line
    ctypedef struct fm_net_d:
        double *WhT
        double *bh
        double *Wy
        double *by
        Py_ssize_t n_in, nout, stride
        int n_slices, n_groups
        const int32_t *slice_group
        const int32_t *group_line
    ctypedef struct fm_batches_f:
        const float *X
        const intptr_t *labels
        const intptr_t *order
        Py_ssize_t n_in, n, batch
    ctypedef struct fm_batches_d:
        const double *X
        const intptr_t *labels
        const intptr_t *order
        Py_ssize_t n_in, n, batch
    ctypedef struct fm_dense_f:
        float *Wh
        float *bh
        float *Wy
        float *by
        Py_ssize_t n_in, nh, nout
        int n_blocks
        const int32_t *block_unit
        Py_ssize_t block_max
    ctypedef struct fm_dense_d:
        double *Wh
        double *bh
        double *Wy
        double *by
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
        int64_t *row_correct
        int32_t *sync
    ctypedef struct fm_bwork_d:
        double *Xb
        double *H
        double *dH
        double *Zp
        double *dZ
        double *row_loss
        int64_t *row_correct
        int32_t *sync
    ctypedef void (*fm_gemm_ptr_f)(const char *, const char *, const int *, const int *, const int *,
                                   const float *, const float *, const int *, const float *, const int *,
                                   const float *, float *, const int *)
    ctypedef void (*fm_gemm_ptr_d)(const char *, const char *, const int *, const int *, const int *,
                                   const double *, const double *, const int *, const double *, const int *,
                                   const double *, double *, const int *)
    int fm_blas_epoch_f(const fm_dense_f *P, const fm_batches_f *D, float lr, int loss, const fm_bwork_f *W,
                        fm_gemm_ptr_f gemm, int n_threads, fm_tally *tally)
    int fm_blas_epoch_d(const fm_dense_d *P, const fm_batches_d *D, double lr, int loss, const fm_bwork_d *W,
                        fm_gemm_ptr_d gemm, int n_threads, fm_tally *tally)
    ctypedef struct fm_rows_f:
        const float *data
        const int32_t *indices
        const int64_t *indptr
        const intptr_t *labels
        const intptr_t *order
        Py_ssize_t n_in, n, batch
    ctypedef struct fm_rows_d:
        const double *data
        const int32_t *indices
        const int64_t *indptr
        const intptr_t *labels
        const intptr_t *order
        Py_ssize_t n_in, n, batch
    ctypedef struct fm_swork_f:
        float *H
        float *dH
        float *P
        float *dZ
        float *gWy
        float *gbh
        double *row_loss
        int64_t *row_correct
        int32_t *sync
    ctypedef struct fm_swork_d:
        double *H
        double *dH
        double *P
        double *dZ
        double *gWy
        double *gbh
        double *row_loss
        int64_t *row_correct
        int32_t *sync
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
    int fm_sparse_epoch_f(const fm_net_f *P, const fm_rows_f *D, float lr, int loss, const fm_swork_f *W,
                          int n_threads, fm_tally *tally)
    int fm_sparse_epoch_d(const fm_net_d *P, const fm_rows_d *D, double lr, int loss, const fm_swork_d *W,
                          int n_threads, fm_tally *tally)
    void fm_row_passes_f(const fm_net_f *P, const fm_rows_f *D, const fm_swork_f *W, int n_threads)
    void fm_row_passes_d(const fm_net_d *P, const fm_rows_d *D, const fm_swork_d *W, int n_threads)
    void fm_csr_counts_f(const float *X, Py_ssize_t n_rows, Py_ssize_t n_in, int64_t *counts)
    void fm_csr_counts_d(const double *X, Py_ssize_t n_rows, Py_ssize_t n_in, int64_t *counts)
    void fm_csr_fill_f(const float *X, Py_ssize_t n_rows, Py_ssize_t n_in, const int64_t *indptr,
                       int32_t *indices, float *data)
    void fm_csr_fill_d(const double *X, Py_ssize_t n_rows, Py_ssize_t n_in, const int64_t *indptr,
                       int32_t *indices, double *data)
    int fm_max_threads()

PATHS = ("sparse", "blas")
THREADED_PATHS = ("sparse", "blas")
# The C enum of loss codes, for the test that checks it against epochs.LOSS_CODES.
C_LOSS_CODES = {"ce": FM_LOSS_CE, "mse": FM_LOSS_MSE}


cdef int _check(int status) except -1:
    if status == FM_ERR_LOSS:
        raise ValueError(f"unknown loss code; known: {C_LOSS_CODES}")
    if status == FM_ERR_LAYOUT:
        raise ValueError("the parameter block's layout is not one the sparse epoch takes")
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
    return out, tally.loss_sum, tally.n_correct


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


cdef _sparse_epoch(floating[:, :, ::1] WhT, P, rows, const Py_ssize_t[::1] labels,
                   const Py_ssize_t[::1] order, Py_ssize_t batch, double lr, int loss, work, int n_threads,
                   bint floor=False):
    cdef floating[:, ::1] bh = P.bh, by = P.by, gbh = work.gbh
    cdef floating[:, :, ::1] Wy = P.Wy, H = work.H, dH = work.dH, dZ = work.dZ, gWy = work.gWy
    cdef floating[:, :, :, ::1] Pl = work.P
    cdef const floating[::1] data = rows.data
    cdef const int32_t[::1] indices = rows.indices
    cdef const int64_t[::1] indptr
    cdef const int64_t *indptr_p = NULL
    cdef const int32_t[::1] slice_group = P.slice_group, group_line = P.group_line
    cdef int32_t[::1] sync = work.sync
    cdef double[::1] row_loss = work.row_loss
    cdef int64_t[::1] row_correct = work.row_correct
    cdef fm_tally tally = fm_tally(0, 0)
    cdef int status
    cdef fm_net_f Nf
    cdef fm_net_d Nd
    cdef fm_rows_f Rf
    cdef fm_rows_d Rd
    cdef fm_swork_f Wf
    cdef fm_swork_d Wd
    if rows.indptr is not None:
        indptr = rows.indptr
        indptr_p = &indptr[0]
    if H.shape[0] != WhT.shape[0] or H.shape[1] < min(batch, order.shape[0]):
        raise ValueError("the workspace does not fit the parameter block and the batch size")
    batch = min(batch, order.shape[0])
    with nogil:
        if floating is float:
            Nf = fm_net_f(&WhT[0, 0, 0], &bh[0, 0], &Wy[0, 0, 0], &by[0, 0], WhT.shape[1], Wy.shape[1],
                          WhT.shape[2], <int>WhT.shape[0], <int>(group_line.shape[0] - 1), &slice_group[0],
                          &group_line[0])
            Rf = fm_rows_f(&data[0], &indices[0], indptr_p, <const intptr_t*>&labels[0],
                           <const intptr_t*>&order[0], WhT.shape[1], order.shape[0], batch)
            Wf = fm_swork_f(&H[0, 0, 0], &dH[0, 0, 0], &Pl[0, 0, 0, 0], &dZ[0, 0, 0], &gWy[0, 0, 0], &gbh[0, 0],
                            &row_loss[0], &row_correct[0], &sync[0])
            if floor:
                fm_row_passes_f(&Nf, &Rf, &Wf, n_threads)
                status = FM_OK
            else:
                status = fm_sparse_epoch_f(&Nf, &Rf, <float>lr, loss, &Wf, n_threads, &tally)
        else:
            Nd = fm_net_d(&WhT[0, 0, 0], &bh[0, 0], &Wy[0, 0, 0], &by[0, 0], WhT.shape[1], Wy.shape[1],
                          WhT.shape[2], <int>WhT.shape[0], <int>(group_line.shape[0] - 1), &slice_group[0],
                          &group_line[0])
            Rd = fm_rows_d(&data[0], &indices[0], indptr_p, <const intptr_t*>&labels[0],
                           <const intptr_t*>&order[0], WhT.shape[1], order.shape[0], batch)
            Wd = fm_swork_d(&H[0, 0, 0], &dH[0, 0, 0], &Pl[0, 0, 0, 0], &dZ[0, 0, 0], &gWy[0, 0, 0], &gbh[0, 0],
                            &row_loss[0], &row_correct[0], &sync[0])
            if floor:
                fm_row_passes_d(&Nd, &Rd, &Wd, n_threads)
                status = FM_OK
            else:
                status = fm_sparse_epoch_d(&Nd, &Rd, lr, loss, &Wd, n_threads, &tally)
    _check(status)
    return tally.loss_sum, tally.n_correct


def row_passes(P, rows, labels, order, Py_ssize_t batch, work, int n_threads):
    """The row-pass floor of a sparse epoch (_sparse_impl.h fm_row_passes): only
    the two passes over rows of P.WhT per non-zero input, on ``n_threads`` threads
    meeting every ``batch`` examples. Changes P.WhT; for timing only."""
    if len(order) == 0:
        return
    if P.WhT.dtype == np.float32:
        _sparse_epoch[float](P.WhT, P, rows, labels, order, batch, 0.0, 0, work, n_threads, True)
    else:
        _sparse_epoch[double](P.WhT, P, rows, labels, order, batch, 0.0, 0, work, n_threads, True)


def sparse_epoch(P, rows, labels, order, Py_ssize_t batch, double lr, int loss, work, int n_threads):
    """Mini-batch SGD over the batches of rows[order] on the sparse path, in place on
    the block P (epochs.SparseNet), on ``n_threads`` threads, the GIL released.
    Returns (loss_sum, n_correct) measured in each batch's forward pass."""
    if len(order) == 0:
        return 0.0, 0
    if P.WhT.dtype == np.float32:
        return _sparse_epoch[float](P.WhT, P, rows, labels, order, batch, lr, loss, work, n_threads)
    return _sparse_epoch[double](P.WhT, P, rows, labels, order, batch, lr, loss, work, n_threads)


cdef _blas_epoch(floating[:, ::1] Wh, P, const floating[:, ::1] X, const Py_ssize_t[::1] labels,
                 const Py_ssize_t[::1] order, Py_ssize_t batch, double lr, int loss, work, int n_threads):
    cdef floating[::1] bh = P.bh, by = P.by
    cdef floating[:, ::1] Wy = P.Wy, dZ = work.dZ
    cdef floating[:, :, ::1] Xb = work.Xb, H = work.H, dH = work.dH, Zp = work.Zp
    cdef const int32_t[::1] block_unit = P.block_unit
    cdef double[::1] row_loss = work.row_loss
    cdef int64_t[::1] row_correct = work.row_correct
    cdef int32_t[::1] sync = work.sync
    cdef fm_tally tally = fm_tally(0, 0)
    cdef int status
    cdef fm_dense_f Pf
    cdef fm_dense_d Pd
    cdef fm_batches_f Df
    cdef fm_batches_d Dd
    cdef fm_bwork_f Wf
    cdef fm_bwork_d Wd
    batch = min(batch, order.shape[0])
    if H.shape[1] < batch or (Xb.shape[1] and Xb.shape[1] < batch):
        raise ValueError("the workspace does not fit the batch size")
    cdef floating *xb = &Xb[0, 0, 0] if Xb.shape[1] else NULL
    with nogil:
        if floating is float:
            Pf = fm_dense_f(&Wh[0, 0], &bh[0], &Wy[0, 0], &by[0], Wh.shape[1], Wh.shape[0], Wy.shape[0],
                            <int>(block_unit.shape[0] - 1), &block_unit[0], H.shape[2])
            Df = fm_batches_f(&X[0, 0], <const intptr_t*>&labels[0], <const intptr_t*>&order[0], X.shape[1],
                              order.shape[0], batch)
            Wf = fm_bwork_f(xb, &H[0, 0, 0], &dH[0, 0, 0], &Zp[0, 0, 0], &dZ[0, 0], &row_loss[0], &row_correct[0],
                            &sync[0])
            status = fm_blas_epoch_f(&Pf, &Df, <float>lr, loss, &Wf, <fm_gemm_ptr_f>sgemm, n_threads, &tally)
        else:
            Pd = fm_dense_d(&Wh[0, 0], &bh[0], &Wy[0, 0], &by[0], Wh.shape[1], Wh.shape[0], Wy.shape[0],
                            <int>(block_unit.shape[0] - 1), &block_unit[0], H.shape[2])
            Dd = fm_batches_d(&X[0, 0], <const intptr_t*>&labels[0], <const intptr_t*>&order[0], X.shape[1],
                              order.shape[0], batch)
            Wd = fm_bwork_d(xb, &H[0, 0, 0], &dH[0, 0, 0], &Zp[0, 0, 0], &dZ[0, 0], &row_loss[0], &row_correct[0],
                            &sync[0])
            status = fm_blas_epoch_d(&Pd, &Dd, lr, loss, &Wd, <fm_gemm_ptr_d>dgemm, n_threads, &tally)
    _check(status)
    return tally.loss_sum, tally.n_correct


def blas_epoch(P, X, labels, order, Py_ssize_t batch, double lr, int loss, work, int n_threads):
    """Mini-batch SGD over the batches of X[order] with GEMMs, in place on the block P
    (epochs.BlasNet: the model's layout and its blocks of hidden units), on
    ``n_threads`` threads, the GIL released. A batch whose rows lie in order in X is
    read in place, any other is gathered into work.Xb. Returns (loss_sum, n_correct)."""
    if len(order) == 0:
        return 0.0, 0
    if P.Wh.dtype == np.float32:
        return _blas_epoch[float](P.Wh, P, X, labels, order, batch, lr, loss, work, n_threads)
    return _blas_epoch[double](P.Wh, P, X, labels, order, batch, lr, loss, work, n_threads)
