"""Numba kernels of fastmlp: the contract of ``fastmlp._kernels``, JIT-compiled.

Numba compiles for the host CPU, so these loops use AVX-512 where the machine
has it. The GEMMs call scipy's BLAS directly (through the function pointers
``scipy.linalg.cython_blas`` exports), so the updates are written straight into
the weights with beta = 1, as in the Cython kernels; every function runs without
the GIL (``nogil=True``).

LLVM's loop vectoriser by default runs four vectors (64 floats) per iteration,
which for a hidden layer of ~100 units leaves half the work to a narrower
epilogue loop; every kernel here is compiled with one vector per iteration
instead (see ``_codegen``), which measured ~10% faster epochs at batch 1.

Compiled code is cached on disk (``cache=True``). Where no cache directory is
writable (a read-only site-packages and a read-only home), Numba refuses to
cache; the kernels are then compiled in memory on first use instead.
"""

import contextlib

import llvmlite.binding as llvm_binding
import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.compiler_lock import global_compiler_lock
from numba.extending import get_cython_function_address, intrinsic

from .epochs import LOSS_CODES

PATHS = ("small", "blas")
_CE, _MSE = LOSS_CODES["ce"], LOSS_CODES["mse"]  # compile-time constants of the compiled code


def _compile(func, fastmath):
    # error_model="numpy": a float division by zero gives inf/NaN as in C instead
    # of a check per element that stops the loop from vectorising.
    # "contract" lets LLVM fuse a * b + c into FMAs (as gcc does), nothing else.
    options = dict(nogil=True, error_model="numpy", fastmath=fastmath)
    try:
        return nb.njit(cache=True, **options)(func)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return nb.njit(**options)(func)


def _jit(func):
    return _compile(func, {"contract"})


@contextlib.contextmanager
def _codegen():
    """LLVM's loop vectoriser set to one vector per iteration, for this process's
    compilations while the block runs.

    Numba has no per-function or per-loop setting for this; the option is global
    to LLVM, so it is set under Numba's compiler lock (no other code compiles
    meanwhile) and set back to its default (0: LLVM's own choice) afterwards.
    """
    with global_compiler_lock:
        llvm_binding.set_option("fastmlp", "-force-vector-interleave=1")
        try:
            yield
        finally:
            llvm_binding.set_option("fastmlp", "-force-vector-interleave=0")


def _arg_key(a):
    # what Numba's type of an argument depends on, cheaply (typeof costs ~3 us)
    if isinstance(a, np.ndarray):
        f = a.flags
        return (a.dtype, a.ndim, f.c_contiguous, f.f_contiguous, f.writeable, f.aligned)
    return type(a)


_compiled_keys: set = set()


def _call(kernel, *args):
    """kernel(*args), compiling (or loading from the cache) its specialisation for
    these argument types under ``_codegen`` first. Every call from Python into the
    compiled code goes through here, so every function (and every helper compiled
    with it) is built the same way whichever is called first: the order of a
    vectorised sum, and so the last bits of a result, do not depend on call order."""
    key = (kernel, *map(_arg_key, args))
    if key not in _compiled_keys:
        sig = tuple(kernel.typeof_pyval(a) for a in args)
        if sig not in kernel.overloads:
            with _codegen():
                kernel.compile(sig)
        _compiled_keys.add(key)
    return kernel(*args)


def _jit_fast_reduce(func):
    # only for dot products: lets LLVM reorder the sum so that it vectorises
    return _compile(func, {"contract", "reassoc"})


# scipy's BLAS GEMMs as external symbols: resolved by name when compiled code is
# linked, so the on-disk cache stays valid across processes (a ctypes pointer
# would be baked into the code and forbid caching).
for _name in ("sgemm", "dgemm"):
    llvm_binding.add_symbol(f"fastmlp_{_name}", get_cython_function_address("scipy.linalg.cython_blas", _name))
_GEMM_SIG = types.void(*([types.voidptr] * 13))
_sgemm = types.ExternalFunction("fastmlp_sgemm", _GEMM_SIG)
_dgemm = types.ExternalFunction("fastmlp_dgemm", _GEMM_SIG)

_N, _T = 78, 84  # ord("N"), ord("T")


@intrinsic
def _ptr(typingctx, arr, i):
    """The address of arr.flat[i] as void*, without making a view (a view costs
    reference-count updates; a GEMM call passes 13 pointers)."""
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        item = builder.gep(ary.data, [args[1]])
        return builder.bitcast(item, cgutils.voidptr_t)
    return types.voidptr(arr, i), codegen


@intrinsic
def _prefetch(typingctx, arr, i):
    """Asks for the cache line holding arr.flat[i] to be brought into cache (LLVM's
    prefetch: read, keep in all levels); no effect on results."""
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        item = builder.bitcast(builder.gep(ary.data, [args[1]]), cgutils.voidptr_t)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [item, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.none(arr, i), codegen


@_jit
def _prefetch_row(X, row):
    """Brings row ``row`` of X towards the cache. The examples are visited in random
    order, so the hardware prefetcher cannot guess the next input row; its first
    touch, the non-zero scan, otherwise waits on main memory for every line."""
    n = X.shape[1]
    step = max(1, 64 // X.itemsize)
    for i in range(0, n, step):
        _prefetch(X, row * n + i)


@_jit
def _gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ws_int, ws_char, ws_real):
    """Row-major C (M, N) = alpha op(A) op(B) + beta C; lda/ldb/ldc are row strides.

    Column-major BLAS sees a row-major matrix as its transpose, so this is the
    column-major C^T = alpha op(B)^T op(A)^T + beta C^T. BLAS takes every argument
    by pointer: the small ws_* arrays hold them (allocated once per epoch).
    A, B, C may be views starting anywhere; they are passed by data pointer.
    """
    ws_char[0] = _T if tb else _N
    ws_char[1] = _T if ta else _N
    ws_int[0] = N
    ws_int[1] = M
    ws_int[2] = K
    ws_int[3] = ldb
    ws_int[4] = lda
    ws_int[5] = ldc
    ws_real[0] = alpha
    ws_real[1] = beta
    args = (_ptr(ws_char, 0), _ptr(ws_char, 1), _ptr(ws_int, 0), _ptr(ws_int, 1), _ptr(ws_int, 2),
            _ptr(ws_real, 0), _ptr(B, 0), _ptr(ws_int, 3), _ptr(A, 0), _ptr(ws_int, 4), _ptr(ws_real, 1),
            _ptr(C, 0), _ptr(ws_int, 5))
    if C.itemsize == 4:
        _sgemm(*args)
    else:
        _dgemm(*args)


@_jit
def _tanh_inplace(h):
    """float32: the rational approximation of _fused_impl.h (max abs error 3.6e-7);
    float64: libm's tanh."""
    if h.itemsize == 4:
        t = h.dtype.type
        c = t(9.0)
        a0, a1, a2 = t(9.999999404e-01), t(1.291923672e-01), t(2.920770319e-03)
        a3, a4, a5 = t(9.267499991e-06), t(-1.278068140e-08), t(1.825586730e-11)
        b1, b2, b3 = t(4.625251889e-01), t(2.376320399e-02), t(2.281013876e-04)
        one = t(1.0)
        for j in range(h.size):
            x = h[j]
            x = -c if x < -c else (c if x > c else x)
            s = x * x
            p = ((((a5 * s + a4) * s + a3) * s + a2) * s + a1) * s + a0
            q = ((b3 * s + b2) * s + b1) * s + one
            h[j] = x * p / q
    else:
        for j in range(h.size):
            h[j] = np.tanh(h[j])


@_jit_fast_reduce
def _dot(a, b):
    acc = a.dtype.type(0)
    for j in range(a.size):
        acc += a[j] * b[j]
    return acc


@_jit
def _row_loss_grad(Z, r, y, dZ, loss, scale):
    """Row r of the logits Z -> row r of dZ = scale * dl/dz (Z and dZ may be the same
    array). Returns (loss, correct) of the row; argmax ties go to the first index.
    Rows are indexed in 2-D: a row view would cost reference-count updates. The
    loss code has been checked (_check_loss) by the caller."""
    n = Z.shape[1]
    am = 0
    m = Z[r, 0]
    for i in range(1, n):
        if Z[r, i] > m:
            m = Z[r, i]
            am = i
    zy = Z[r, y]
    t = Z.dtype.type
    s = t(0)
    for i in range(n):
        dZ[r, i] = np.exp(Z[r, i] - m)
        s += dZ[r, i]
    inv_s = t(1) / s
    row_loss = 0.0
    if loss == _CE:
        row_loss = float(np.log(s)) - float(zy - m)
        for i in range(n):
            dZ[r, i] = (dZ[r, i] * inv_s - (t(1) if i == y else t(0))) * scale
    elif loss == _MSE:
        l2 = t(0)
        pg = t(0)
        for i in range(n):
            p = dZ[r, i] * inv_s
            g = p - (t(1) if i == y else t(0))
            dZ[r, i] = p
            l2 += g * g
            pg += p * g
        row_loss = 0.5 * float(l2)
        for i in range(n):
            dZ[r, i] = dZ[r, i] * ((dZ[r, i] - (t(1) if i == y else t(0))) - pg) * scale
    return row_loss, 1 if am == y else 0


@intrinsic
def _nonzero_indices16(typingctx, x, i, idx, k):
    """Writes to idx[k:] those of the indices i, ..., i + 15 where x is non-zero (NaN
    counts as non-zero), in order; returns how many. One vector compare and one
    compress-store (LLVM's masked.compressstore: vpcompressq on AVX-512)."""
    def codegen(context, builder, signature, args):
        xty, ity, idxty, _ = signature.args
        xa = context.make_array(xty)(context, builder, args[0])
        ia = context.make_array(idxty)(context, builder, args[2])
        lane = ir.IntType(32)
        vf = ir.VectorType(context.get_value_type(xty.dtype), 16)
        vi = ir.VectorType(context.get_value_type(idxty.dtype), 16)
        src = builder.bitcast(builder.gep(xa.data, [args[1]]), vf.as_pointer())
        values = builder.load(src, align=xty.dtype.bitwidth // 8)
        mask = builder.fcmp_unordered("!=", values, ir.Constant(vf, [0.0] * 16))
        first = context.cast(builder, args[1], ity, idxty.dtype)
        splat = builder.shuffle_vector(
            builder.insert_element(ir.Constant(vi, ir.Undefined), first, lane(0)),
            ir.Constant(vi, ir.Undefined), ir.Constant(ir.VectorType(lane, 16), [0] * 16))
        indices = builder.add(splat, ir.Constant(vi, list(range(16))))
        dst = builder.gep(ia.data, [args[3]])
        store = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vi, dst.type, mask.type]),
            f"llvm.masked.compressstore.v16i{idxty.dtype.bitwidth}")
        builder.call(store, [indices, dst, mask])
        i16 = ir.IntType(16)
        popcount = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i16, [i16]), "llvm.ctpop.i16")
        return builder.zext(builder.call(popcount, [builder.bitcast(mask, i16)]), ir.IntType(64))
    return types.int64(x, i, idx, k), codegen


def _targets_avx512():
    """Whether Numba compiles for a CPU with AVX-512F: the host, unless the
    NUMBA_CPU_NAME / NUMBA_CPU_FEATURES settings name another target."""
    from numba.core import config

    if config.CPU_FEATURES is not None:
        return "+avx512f" in config.CPU_FEATURES.replace(" ", "").split(",")
    if config.CPU_NAME not in (None, "host"):
        return False  # a named (often generic) target: do not assume
    try:
        return bool(llvm_binding.get_host_cpu_features().get("avx512f", False))
    except RuntimeError:  # llvmlite cannot read this host's features: assume none
        return False


# With AVX-512 the non-zero scan compresses 16 indices at a time (3x faster than
# the scalar loop over MNIST rows, and the Numba epoch at batch 1 ~9% faster than
# the portable C build's); elsewhere LLVM would emulate the compress-store lane by
# lane, so the scalar loop stays. A compile-time constant to the compiled code.
_COMPRESS = _targets_avx512()


@_jit
def _nonzeros(x, idx):
    """The indices of the non-zero entries of x, in order; returns their count."""
    n = x.size
    k = 0
    i = 0
    if _COMPRESS:
        while i + 16 <= n:
            k += _nonzero_indices16(x, i, idx, k)
            i += 16
    else:
        # all-zero blocks of 16 (image borders) are skipped in one test
        while i + 16 <= n:
            count = 0  # an integer count vectorises; a boolean "or" does not
            for u in range(16):
                count += x[i + u] != 0
            if count:
                for u in range(16):
                    idx[k] = i + u
                    k += x[i + u] != 0
            i += 16
    while i < n:
        idx[k] = i
        k += x[i] != 0
        i += 1
    return k


@_jit
def _gather_axpy(h, x, idx, k, WhT):
    """h += sum_t x[idx[t]] * WhT[idx[t], :], eight rows per sweep over h (four
    measured slower here: each sweep is a loop of its own, with its own checks)."""
    nh = h.size
    t = 0
    # 2-D indexing rather than row views: a view costs reference-count updates
    while t + 8 <= k:
        i0, i1, i2, i3 = idx[t], idx[t + 1], idx[t + 2], idx[t + 3]
        i4, i5, i6, i7 = idx[t + 4], idx[t + 5], idx[t + 6], idx[t + 7]
        a0, a1, a2, a3 = x[i0], x[i1], x[i2], x[i3]
        a4, a5, a6, a7 = x[i4], x[i5], x[i6], x[i7]
        for j in range(nh):
            h[j] += (((a0 * WhT[i0, j] + a1 * WhT[i1, j]) + (a2 * WhT[i2, j] + a3 * WhT[i3, j]))
                     + ((a4 * WhT[i4, j] + a5 * WhT[i5, j]) + (a6 * WhT[i6, j] + a7 * WhT[i7, j])))
        t += 8
    while t < k:
        i0 = idx[t]
        a = x[i0]
        for j in range(nh):
            h[j] += a * WhT[i0, j]
        t += 1


@_jit
def _check_loss(loss):
    if loss != _CE and loss != _MSE:
        raise ValueError("unknown loss code")


@_jit
def _small_epoch(WhT, bh, Wy, by, X, labels, perm, batch, lr, loss, H, dH, dZ, nz, nnz):
    """Mini-batch SGD for small batches without BLAS; see fm_small_epoch in
    _fused_impl.h. P.Wh is Wh transposed, WhT (n_in, nhp), so the forward pass and
    the update of Wh are contiguous axpys over the hidden units, for non-zero
    inputs only. The hidden units are padded with zero units to nhp, whole cache
    lines (epochs.padded_params); the padded units have no weights in or out, so
    they stay zero through every step (tanh(0) = 0, and their dh is 0)."""
    # 2-D indexing throughout the per-example loops: a row view costs
    # reference-count updates, which at ~150 views per example add up.
    _check_loss(loss)
    n_ex = perm.size
    nh = WhT.shape[1]
    nout = Wy.shape[0]
    one = WhT.dtype.type(1)
    zero = WhT.dtype.type(0)
    loss_sum = 0.0
    n_correct = 0
    start = 0
    while start < n_ex:
        B = min(batch, n_ex - start)
        scale = one / WhT.dtype.type(B)
        for b in range(B):
            row = perm[start + b]
            x = X[row]
            if start + b + 1 < n_ex:
                _prefetch_row(X, perm[start + b + 1])
            idx = nz[b]
            h = H[b]
            dz = dZ[b]
            dh = dH[b]
            k = _nonzeros(x, idx)
            nnz[b] = k
            for j in range(nh):
                h[j] = bh[j]
            _gather_axpy(h, x, idx, k, WhT)
            _tanh_inplace(h)
            for o in range(nout):
                dz[o] = _dot(Wy[o], h) + by[o]  # _dot may reorder the sum: it vectorises
            rl, rc = _row_loss_grad(dZ, b, labels[row], dZ, loss, scale)
            loss_sum += rl
            n_correct += rc
            for j in range(nh):
                dh[j] = zero
            for o in range(nout):
                d = dz[o]
                for j in range(nh):
                    dh[j] += d * Wy[o, j]
            for j in range(nh):
                dh[j] *= one - h[j] * h[j]
        for b in range(B):
            x = X[perm[start + b]]
            for o in range(nout):
                a = lr * dZ[b, o]
                for j in range(nh):
                    Wy[o, j] -= a * H[b, j]
                by[o] -= a
            k = nnz[b]
            t = 0
            while t + 2 <= k:  # two rows per sweep: dh is loaded once for both
                i0, i1 = nz[b, t], nz[b, t + 1]
                a0, a1 = lr * x[i0], lr * x[i1]
                for j in range(nh):
                    d = dH[b, j]
                    WhT[i0, j] -= a0 * d
                    WhT[i1, j] -= a1 * d
                t += 2
            if t < k:
                i = nz[b, t]
                a = lr * x[i]
                for j in range(nh):
                    WhT[i, j] -= a * dH[b, j]
            for j in range(nh):
                bh[j] -= lr * dH[b, j]
        start += B
    return loss_sum, n_correct


@_jit
def _bias_tanh(H, b):
    for r in range(H.shape[0]):
        for j in range(H.shape[1]):
            H[r, j] += b[j]
    _tanh_inplace(H.reshape(H.size))  # one flat view, not one per row


@_jit
def _step_backward(Xb, Hb, dZb, dHb, Wh, bh, Wy, by, lr, ws_int, ws_char, ws_real):
    """dH = (dZ Wy) * (1 - H*H) before Wy changes, then every parameter steps in place."""
    B, n_in = Xb.shape
    nh = Wh.shape[0]
    nout = Wy.shape[0]
    t = Wh.dtype.type
    _gemm(False, False, B, nh, nout, t(1), dZb, nout, Wy, nh, t(0), dHb, nh, ws_int, ws_char, ws_real)
    for r in range(B):
        for j in range(nh):
            dHb[r, j] *= t(1) - Hb[r, j] * Hb[r, j]
    _gemm(True, False, nout, nh, B, -lr, dZb, nout, Hb, nh, t(1), Wy, nh, ws_int, ws_char, ws_real)
    _gemm(True, False, nh, n_in, B, -lr, dHb, nh, Xb, n_in, t(1), Wh, n_in, ws_int, ws_char, ws_real)
    for r in range(B):
        for o in range(nout):
            by[o] -= lr * dZb[r, o]
        for j in range(nh):
            bh[j] -= lr * dHb[r, j]


@_jit
def _blas_epoch(Wh, bh, Wy, by, X, labels, perm, batch, lr, loss, Xbuf, H, dH, Z, ws_int, ws_char, ws_real):
    _check_loss(loss)
    n_ex = perm.size
    n_in = X.shape[1]
    nh = Wh.shape[0]
    nout = Wy.shape[0]
    t = Wh.dtype.type
    loss_sum = 0.0
    n_correct = 0
    start = 0
    while start < n_ex:
        B = min(batch, n_ex - start)
        in_order = True
        for b in range(B):
            if perm[start + b] != perm[start] + b:
                in_order = False
                break
        if in_order:
            Xb = X[perm[start]:perm[start] + B]
        else:
            for b in range(B):
                row = perm[start + b]
                for i in range(n_in):
                    Xbuf[b, i] = X[row, i]
            Xb = Xbuf[:B]
        Hb, dHb, Zb = H[:B], dH[:B], Z[:B]
        _gemm(False, True, B, nh, n_in, t(1), Xb, n_in, Wh, n_in, t(0), Hb, nh, ws_int, ws_char, ws_real)
        _bias_tanh(Hb, bh)
        _gemm(False, True, B, nout, nh, t(1), Hb, nh, Wy, nh, t(0), Zb, nout, ws_int, ws_char, ws_real)
        scale = t(1) / t(B)
        for b in range(B):
            for o in range(nout):
                Zb[b, o] += by[o]
            rl, rc = _row_loss_grad(Zb, b, labels[perm[start + b]], Zb, loss, scale)
            loss_sum += rl
            n_correct += rc
        _step_backward(Xb, Hb, Zb, dHb, Wh, bh, Wy, by, lr, ws_int, ws_char, ws_real)
        start += B
    return loss_sum, n_correct


def _gemm_workspace(dtype):
    return np.zeros(6, np.int32), np.zeros(2, np.uint8), np.zeros(2, dtype)


@_jit
def _loss_grad(Z, labels, dZ, loss):
    _check_loss(loss)
    scale = Z.dtype.type(1) / Z.dtype.type(Z.shape[0])
    loss_sum = 0.0
    n_correct = 0
    for r in range(Z.shape[0]):
        rl, rc = _row_loss_grad(Z, r, labels[r], dZ, loss, scale)
        loss_sum += rl
        n_correct += rc
    return loss_sum, n_correct


# ---- the primitives (the contract of fastmlp._kernels) ----

def tanh(x):
    """tanh of a 1-D array, with the approximation the kernels use (float32)."""
    out = np.array(x, copy=True)
    _call(_tanh_inplace, out)
    return out


def _times_transposed(A, W):
    """A W^T by one GEMM, into a new array."""
    out = np.empty((A.shape[0], W.shape[0]), dtype=W.dtype)
    t = W.dtype.type
    _call(_gemm, False, True, A.shape[0], W.shape[0], A.shape[1], t(1), A, A.shape[1], W, A.shape[1],
          t(0), out, W.shape[0], *_gemm_workspace(W.dtype))
    return out


def forward_hidden(X, Wh, bh):
    """H = tanh(X Wh^T + bh)."""
    H = _times_transposed(X, Wh)
    _call(_bias_tanh, H, bh)
    return H


def forward_logits(H, Wy, by):
    """Z = H Wy^T + by."""
    Z = _times_transposed(H, Wy)
    Z += by
    return Z


def loss_grad(Z, labels, loss):
    """(dZ, loss_sum, n_correct): dZ = dl/dZ / B, the summed loss, the correct count."""
    dZ = np.empty_like(Z)
    return (dZ, *_call(_loss_grad, Z, labels, dZ, loss))


def backward_update(X, H, dZ, P, lr):
    """In place on the block P: the SGD step of every parameter; returns dH = (dZ Wy) * (1 - H*H)."""
    dtype = P.Wh.dtype
    dH = np.empty((X.shape[0], P.Wh.shape[0]), dtype=dtype)
    _call(_step_backward, X, H, dZ.copy(), dH, *P, _as(dtype, lr), *_gemm_workspace(dtype))
    return dH


def _as(dtype, lr):
    with np.errstate(over="ignore"):  # a learning rate beyond float32's range is inf, as in C
        return dtype.type(lr)


def small_epoch(P, X, labels, order, batch, lr, loss, work):
    """Mini-batch SGD over the batches of X[order] on the hand-written path, in place on
    the block P (the small path's layout); returns (loss_sum, n_correct)."""
    if len(order) == 0:
        return 0.0, 0
    # the blocks go in flat: Numba's dispatcher types arrays in C, tuples in Python (~10 us each)
    return _call(_small_epoch, *P, X, labels, order, min(batch, len(order)), _as(P.Wh.dtype, lr), loss,
                 *work)


def blas_epoch(P, X, labels, order, batch, lr, loss, work):
    """Mini-batch SGD over the batches of X[order] with GEMMs, in place on the block P
    (the model's layout); returns (loss_sum, n_correct)."""
    if len(order) == 0:
        return 0.0, 0
    dtype = P.Wh.dtype
    return _call(_blas_epoch, *P, X, labels, order, min(batch, len(order)), _as(dtype, lr), loss,
                 *work[:4], *_gemm_workspace(dtype))
