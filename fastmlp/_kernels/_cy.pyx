# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Cython kernels of fastmlp, float32 and float64 through the fused type ``floating``.

The kernel contract shared with ``_nb`` and ``_np`` (see ``fastmlp/_kernels/__init__.py``):
inputs are C-contiguous arrays of one floating dtype, labels and permutations are
``np.intp``; parameters are updated in place. Callers validate; kernels trust.

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

from ._common import PATHS, aligned_zeros, batch_order, padded_parameters, takes_small_path

cdef extern from "_fused.h" nogil:
    void fm_tanh_f(float *x, Py_ssize_t n)
    void fm_tanh_d(double *x, Py_ssize_t n)
    void fm_bias_tanh_f(float *H, const float *b, Py_ssize_t B, Py_ssize_t n)
    void fm_bias_tanh_d(double *H, const double *b, Py_ssize_t B, Py_ssize_t n)
    void fm_bias_add_f(float *Z, const float *b, Py_ssize_t B, Py_ssize_t n)
    void fm_bias_add_d(double *Z, const double *b, Py_ssize_t B, Py_ssize_t n)
    void fm_loss_grad_f(const float *Z, const intptr_t *labels, float *dZ, Py_ssize_t B,
                        Py_ssize_t n, int loss, float scale, double *loss_sum, int64_t *n_correct)
    void fm_loss_grad_d(const double *Z, const intptr_t *labels, double *dZ, Py_ssize_t B,
                        Py_ssize_t n, int loss, double scale, double *loss_sum, int64_t *n_correct)
    void fm_dtanh_f(float *dH, const float *H, Py_ssize_t n)
    void fm_dtanh_d(double *dH, const double *H, Py_ssize_t n)
    void fm_bias_update_f(float *b, const float *D, Py_ssize_t B, Py_ssize_t n, float lr)
    void fm_bias_update_d(double *b, const double *D, Py_ssize_t B, Py_ssize_t n, double lr)
    void fm_small_epoch_f(const float *X, Py_ssize_t n_in, const intptr_t *labels,
                          const intptr_t *perm, Py_ssize_t n_ex, Py_ssize_t batch,
                          float *WhT, float *bh, float *Wy, float *by, Py_ssize_t nh,
                          Py_ssize_t nout, float lr, int loss, float *work, intptr_t *nz,
                          double *loss_sum, int64_t *n_correct)
    void fm_small_epoch_d(const double *X, Py_ssize_t n_in, const intptr_t *labels,
                          const intptr_t *perm, Py_ssize_t n_ex, Py_ssize_t batch,
                          double *WhT, double *bh, double *Wy, double *by, Py_ssize_t nh,
                          Py_ssize_t nout, double lr, int loss, double *work, intptr_t *nz,
                          double *loss_sum, int64_t *n_correct)

LOSS_CODES = {"ce": 0, "mse": 1}


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


cdef inline void _loss_grad(const floating *Z, const Py_ssize_t *labels, floating *dZ,
                            Py_ssize_t B, Py_ssize_t n, int loss, floating scale,
                            double *loss_sum, int64_t *n_correct) noexcept nogil:
    if floating is float:
        fm_loss_grad_f(Z, <const intptr_t*>labels, dZ, B, n, loss, scale, loss_sum, n_correct)
    else:
        fm_loss_grad_d(Z, <const intptr_t*>labels, dZ, B, n, loss, scale, loss_sum, n_correct)


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


cdef void _blas_epoch(const floating *X, Py_ssize_t n_in, const Py_ssize_t *labels,
                      const Py_ssize_t *perm, Py_ssize_t n_ex, Py_ssize_t batch,
                      floating *Wh, floating *bh, floating *Wy, floating *by,
                      Py_ssize_t nh, Py_ssize_t nout, floating lr, int loss,
                      floating *Xbuf, floating *H, floating *dH, floating *Z, Py_ssize_t *lb,
                      double *loss_sum, int64_t *n_correct) noexcept nogil:
    cdef Py_ssize_t start = 0, b, B
    cdef const floating *Xb
    cdef bint in_order
    while start < n_ex:
        B = min(batch, n_ex - start)
        # Gather the batch's rows, unless they already lie in order in X.
        in_order = True
        for b in range(B):
            lb[b] = labels[perm[start + b]]
            if perm[start + b] != perm[start] + b:
                in_order = False
        if in_order:
            Xb = X + perm[start] * n_in
        else:
            for b in range(B):
                memcpy(Xbuf + b * n_in, X + perm[start + b] * n_in, n_in * sizeof(floating))
            Xb = Xbuf
        # forward: H = tanh(Xb Wh^T + bh), Z = H Wy^T + by
        _gemm(False, True, <int>B, <int>nh, <int>n_in, <floating>1, Xb, <int>n_in, Wh, <int>n_in,
              <floating>0, H, <int>nh)
        _bias_tanh(H, bh, B, nh)
        _gemm(False, True, <int>B, <int>nout, <int>nh, <floating>1, H, <int>nh, Wy, <int>nh,
              <floating>0, Z, <int>nout)
        _bias_add(Z, by, B, nout)
        # loss, accuracy and dZ = dl/dZ / B in one pass over the logits (in place)
        _loss_grad(Z, lb, Z, B, nout, loss, <floating>1 / <floating>B, loss_sum, n_correct)
        _step_backward(Xb, H, Z, dH, Wh, bh, Wy, by, <int>B, <int>n_in, <int>nh, <int>nout, lr)
        start += B


cdef void _small_epoch(const floating *X, Py_ssize_t n_in, const Py_ssize_t *labels,
                       const Py_ssize_t *perm, Py_ssize_t n_ex, Py_ssize_t batch,
                       floating *Wh, floating *bh, floating *Wy, floating *by, Py_ssize_t nh,
                       Py_ssize_t nout, floating lr, int loss, floating *WhT, floating *bhp,
                       floating *Wyp, Py_ssize_t nhp, floating *work, Py_ssize_t *nz,
                       double *loss_sum, int64_t *n_correct) noexcept nogil:
    # WhT (n_in, nhp), bhp (nhp,), Wyp (nout, nhp) and work are zero-filled, padded
    # to nhp hidden units (whole cache lines) and start on cache-line boundaries.
    # The padded units have no weights in or out, so they stay zero through every
    # step (tanh(0) = 0 and their dh is 0). The parameters are copied in and back.
    cdef Py_ssize_t i, j, o
    for j in range(nh):
        bhp[j] = bh[j]
        for i in range(n_in):
            WhT[i * nhp + j] = Wh[j * n_in + i]
    for o in range(nout):
        memcpy(&Wyp[o * nhp], &Wy[o * nh], nh * sizeof(floating))
    if floating is float:
        fm_small_epoch_f(X, n_in, <const intptr_t*>labels, <const intptr_t*>perm, n_ex, batch,
                         WhT, bhp, Wyp, by, nhp, nout, lr, loss, work, <intptr_t*>nz,
                         loss_sum, n_correct)
    else:
        fm_small_epoch_d(X, n_in, <const intptr_t*>labels, <const intptr_t*>perm, n_ex, batch,
                         WhT, bhp, Wyp, by, nhp, nout, lr, loss, work, <intptr_t*>nz,
                         loss_sum, n_correct)
    for j in range(nh):
        bh[j] = bhp[j]
        for i in range(n_in):
            Wh[j * n_in + i] = WhT[i * nhp + j]
    for o in range(nout):
        memcpy(&Wy[o * nh], &Wyp[o * nhp], nh * sizeof(floating))


# ---- the Python-callable kernels (the shared contract) ----

def _loss_code(loss):
    try:
        return LOSS_CODES[loss]
    except KeyError:
        raise ValueError(f"loss must be one of {tuple(LOSS_CODES)}, got {loss!r}") from None


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


def forward_hidden(const floating[:, ::1] X, const floating[:, ::1] Wh, const floating[::1] bh):
    """H = tanh(X Wh^T + bh): one GEMM, then bias and tanh while H is in cache."""
    cdef int B = X.shape[0], n_in = X.shape[1], nh = Wh.shape[0]
    out = np.empty((B, nh), dtype=np.asarray(Wh).dtype)
    cdef floating[:, ::1] H = out
    with nogil:
        _gemm(False, True, B, nh, n_in, <floating>1, &X[0, 0], n_in, &Wh[0, 0], n_in,
              <floating>0, &H[0, 0], nh)
        _bias_tanh(&H[0, 0], &bh[0], B, nh)
    return out


def forward_logits(const floating[:, ::1] H, const floating[:, ::1] Wy, const floating[::1] by):
    """Z = H Wy^T + by."""
    cdef int B = H.shape[0], nh = H.shape[1], nout = Wy.shape[0]
    out = np.empty((B, nout), dtype=np.asarray(Wy).dtype)
    cdef floating[:, ::1] Z = out
    with nogil:
        _gemm(False, True, B, nout, nh, <floating>1, &H[0, 0], nh, &Wy[0, 0], nh,
              <floating>0, &Z[0, 0], nout)
        _bias_add(&Z[0, 0], &by[0], B, nout)
    return out


def loss_grad(const floating[:, ::1] Z, const Py_ssize_t[::1] labels, loss="ce"):
    """(dZ, loss_sum, n_correct): dZ = dl/dZ / B, the summed loss, the correct count."""
    cdef int code = _loss_code(loss)
    cdef Py_ssize_t B = Z.shape[0], n = Z.shape[1]
    out = np.empty_like(np.asarray(Z))
    cdef floating[:, ::1] dZ = out
    cdef double loss_sum = 0
    cdef int64_t n_correct = 0
    with nogil:
        _loss_grad(&Z[0, 0], &labels[0], &dZ[0, 0], B, n, code, <floating>1 / <floating>B,
                   &loss_sum, &n_correct)
    return out, loss_sum, n_correct


def backward_update(const floating[:, ::1] X, const floating[:, ::1] H, const floating[:, ::1] dZ,
                    floating[:, ::1] Wh, floating[::1] bh, floating[:, ::1] Wy, floating[::1] by,
                    double lr):
    """In place: Wy -= lr dZ^T H, by -= lr sum(dZ), Wh -= lr dH^T X, bh -= lr sum(dH),
    with dH = (dZ Wy) * (1 - H*H) taken before Wy changes. Returns dH."""
    cdef int B = X.shape[0], n_in = X.shape[1], nh = Wh.shape[0], nout = Wy.shape[0]
    out = np.empty((B, nh), dtype=np.asarray(Wh).dtype)
    cdef floating[:, ::1] dH = out
    dZc = np.array(dZ, copy=True)  # the caller's dZ is left as it was
    cdef floating[:, ::1] dZw = dZc
    with nogil:
        _step_backward(&X[0, 0], &H[0, 0], &dZw[0, 0], &dH[0, 0], &Wh[0, 0], &bh[0], &Wy[0, 0],
                       &by[0], B, n_in, nh, nout, <floating>lr)
    return out


def train_epoch(const floating[:, ::1] X, const Py_ssize_t[::1] labels, const Py_ssize_t[::1] perm,
                floating[:, ::1] Wh, floating[::1] bh, floating[:, ::1] Wy, floating[::1] by,
                double lr, Py_ssize_t batch_size, loss="ce", path="auto"):
    """One epoch of mini-batch SGD over X[perm], in place, the GIL released.

    Returns (loss_sum, n_correct) measured in each batch's forward pass.
    ``path``: "small" (hand-written, sparse-aware), "blas" (GEMMs), or "auto"
    (chosen by ``_common.takes_small_path``).
    """
    cdef int code = _loss_code(loss)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    cdef Py_ssize_t n_ex = perm.shape[0], n_in = X.shape[1]
    cdef Py_ssize_t nh = Wh.shape[0], nout = Wy.shape[0]
    cdef Py_ssize_t batch = min(batch_size, max(n_ex, 1))
    cdef double loss_sum = 0
    cdef int64_t n_correct = 0
    cdef bint small = takes_small_path(path, batch, np.asarray(X))
    if n_ex == 0:
        return 0.0, 0
    dtype = np.asarray(Wh).dtype
    perm_arr, in_order = batch_order(perm, X.shape[0], batch)
    perm = perm_arr
    cdef floating[::1] work, bhp
    cdef floating[:, ::1] WhT, Wyp, Xbuf, H, dH, Z
    cdef Py_ssize_t nhp
    cdef Py_ssize_t[::1] nz, lb
    if small:
        nhp, WhT, bhp, Wyp = padded_parameters(n_in, nh, nout, dtype)
        work = aligned_zeros(batch * (2 * nhp + nout), dtype)
        nz = np.empty(batch * (n_in + 1), dtype=np.intp)
        with nogil:
            _small_epoch(&X[0, 0], n_in, &labels[0], &perm[0], n_ex, batch, &Wh[0, 0], &bh[0],
                         &Wy[0, 0], &by[0], nh, nout, <floating>lr, code, &WhT[0, 0], &bhp[0],
                         &Wyp[0, 0], nhp, &work[0], &nz[0], &loss_sum, &n_correct)
    else:
        Xbuf = np.empty((1 if in_order else batch, n_in), dtype=dtype)  # in order: X is read in place
        H = np.empty((batch, nh), dtype=dtype)
        dH = np.empty((batch, nh), dtype=dtype)
        Z = np.empty((batch, nout), dtype=dtype)
        lb = np.empty(batch, dtype=np.intp)
        with nogil:
            _blas_epoch(&X[0, 0], n_in, &labels[0], &perm[0], n_ex, batch, &Wh[0, 0], &bh[0],
                        &Wy[0, 0], &by[0], nh, nout, <floating>lr, code, &Xbuf[0, 0], &H[0, 0],
                        &dH[0, 0], &Z[0, 0], &lb[0], &loss_sum, &n_correct)
    return loss_sum, n_correct
