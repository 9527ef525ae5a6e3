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
from libc.stdint cimport int64_t, intptr_t
from libc.string cimport memcpy
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef extern from "_fused.h" nogil:
    int FM_OK, FM_ERR_LOSS, FM_LOSS_CE, FM_LOSS_MSE
    ctypedef struct fm_tally:
        double loss_sum
        int64_t n_correct
    ctypedef struct fm_params_f:
        float *Wh
        float *bh
        float *Wy
        float *by
        Py_ssize_t n_in, nh, nout
    ctypedef struct fm_params_d:
        double *Wh
        double *bh
        double *Wy
        double *by
        Py_ssize_t n_in, nh, nout
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
    int fm_small_epoch_f(const fm_params_f *P, const fm_batches_f *D, float lr, int loss, float *H,
                         float *dH, float *dZ, intptr_t *nz, intptr_t *nnz, fm_tally *tally)
    int fm_small_epoch_d(const fm_params_d *P, const fm_batches_d *D, double lr, int loss, double *H,
                         double *dH, double *dZ, intptr_t *nz, intptr_t *nnz, fm_tally *tally)

PATHS = ("small", "blas")
# The C enum of loss codes, for the test that checks it against epochs.LOSS_CODES.
C_LOSS_CODES = {"ce": FM_LOSS_CE, "mse": FM_LOSS_MSE}


cdef int _check(int status) except -1:
    if status == FM_ERR_LOSS:
        raise ValueError(f"unknown loss code; known: {C_LOSS_CODES}")
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


cdef int _blas_epoch(const floating *X, Py_ssize_t n_in, const Py_ssize_t *labels,
                     const Py_ssize_t *order, Py_ssize_t n_ex, Py_ssize_t batch,
                     floating *Wh, floating *bh, floating *Wy, floating *by,
                     Py_ssize_t nh, Py_ssize_t nout, floating lr, int loss,
                     floating *Xbuf, floating *H, floating *dH, floating *Z, Py_ssize_t *lb,
                     fm_tally *tally) noexcept nogil:
    cdef Py_ssize_t start = 0, b, B
    cdef const floating *Xb
    cdef bint in_order
    while start < n_ex:
        B = min(batch, n_ex - start)
        # Gather the batch's rows, unless they already lie in order in X.
        in_order = True
        for b in range(B):
            lb[b] = labels[order[start + b]]
            if order[start + b] != order[start] + b:
                in_order = False
        if in_order:
            Xb = X + order[start] * n_in
        else:
            for b in range(B):
                memcpy(Xbuf + b * n_in, X + order[start + b] * n_in, n_in * sizeof(floating))
            Xb = Xbuf
        # forward: H = tanh(Xb Wh^T + bh), Z = H Wy^T + by
        _gemm(False, True, <int>B, <int>nh, <int>n_in, <floating>1, Xb, <int>n_in, Wh, <int>n_in,
              <floating>0, H, <int>nh)
        _bias_tanh(H, bh, B, nh)
        _gemm(False, True, <int>B, <int>nout, <int>nh, <floating>1, H, <int>nh, Wy, <int>nh,
              <floating>0, Z, <int>nout)
        _bias_add(Z, by, B, nout)
        # loss, accuracy and dZ = dl/dZ / B in one pass over the logits (in place)
        if _loss_grad(Z, lb, Z, B, nout, loss, <floating>1 / <floating>B, tally) != FM_OK:
            return FM_ERR_LOSS
        _step_backward(Xb, H, Z, dH, Wh, bh, Wy, by, <int>B, <int>n_in, <int>nh, <int>nout, lr)
        start += B
    return FM_OK


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


def small_epoch(P, const floating[:, ::1] X, const Py_ssize_t[::1] labels, const Py_ssize_t[::1] order,
                Py_ssize_t batch, double lr, int loss, work):
    """Mini-batch SGD over the batches of X[order] on the hand-written path, in place
    on the block P (the small path's layout, see epochs.Params), the GIL released.
    Returns (loss_sum, n_correct) measured in each batch's forward pass."""
    cdef floating[:, ::1] Wh = P.Wh, Wy = P.Wy, H = work.H, dH = work.dH, dZ = work.dZ
    cdef floating[::1] bh = P.bh, by = P.by
    cdef Py_ssize_t[:, ::1] nz = work.nz
    cdef Py_ssize_t[::1] nnz = work.nnz
    cdef fm_tally tally = fm_tally(0, 0)
    cdef int status
    cdef fm_params_f Pf
    cdef fm_params_d Pd
    cdef fm_batches_f Df
    cdef fm_batches_d Dd
    if order.shape[0] == 0:
        return 0.0, 0
    with nogil:
        if floating is float:
            Pf = fm_params_f(&Wh[0, 0], &bh[0], &Wy[0, 0], &by[0], Wh.shape[0], Wh.shape[1], Wy.shape[0])
            Df = fm_batches_f(&X[0, 0], <const intptr_t*>&labels[0], <const intptr_t*>&order[0], X.shape[1],
                              order.shape[0], min(batch, order.shape[0]))
            status = fm_small_epoch_f(&Pf, &Df, <float>lr, loss, &H[0, 0], &dH[0, 0], &dZ[0, 0],
                                      <intptr_t*>&nz[0, 0], <intptr_t*>&nnz[0], &tally)
        else:
            Pd = fm_params_d(&Wh[0, 0], &bh[0], &Wy[0, 0], &by[0], Wh.shape[0], Wh.shape[1], Wy.shape[0])
            Dd = fm_batches_d(&X[0, 0], <const intptr_t*>&labels[0], <const intptr_t*>&order[0], X.shape[1],
                              order.shape[0], min(batch, order.shape[0]))
            status = fm_small_epoch_d(&Pd, &Dd, lr, loss, &H[0, 0], &dH[0, 0], &dZ[0, 0],
                                      <intptr_t*>&nz[0, 0], <intptr_t*>&nnz[0], &tally)
    _check(status)
    return tally.loss_sum, tally.n_correct


def blas_epoch(P, const floating[:, ::1] X, const Py_ssize_t[::1] labels, const Py_ssize_t[::1] order,
               Py_ssize_t batch, double lr, int loss, work):
    """Mini-batch SGD over the batches of X[order] with GEMMs, in place on the block P
    (the model's layout), the GIL released. A batch whose rows lie in order in X is
    read in place, any other is gathered into work.Xb. Returns (loss_sum, n_correct)."""
    cdef floating[:, ::1] Wh = P.Wh, Wy = P.Wy, H = work.H, dH = work.dH, Z = work.Z
    cdef floating[::1] bh = P.bh, by = P.by
    cdef Py_ssize_t[::1] lb = work.labels
    cdef floating[:, ::1] Xb = work.Xb
    cdef floating *xbuf = &Xb[0, 0] if Xb.shape[0] > 0 else NULL
    cdef fm_tally tally = fm_tally(0, 0)
    cdef int status
    if order.shape[0] == 0:
        return 0.0, 0
    with nogil:
        status = _blas_epoch(&X[0, 0], X.shape[1], &labels[0], &order[0], order.shape[0],
                             min(batch, order.shape[0]), &Wh[0, 0], &bh[0], &Wy[0, 0], &by[0], Wh.shape[0],
                             Wy.shape[0], <floating>lr, loss, xbuf, &H[0, 0], &dH[0, 0], &Z[0, 0], &lb[0], &tally)
    _check(status)
    return tally.loss_sum, tally.n_correct
