"""Numba kernels of fastmlp: the contract of ``fastmlp._kernels``, JIT-compiled.

Numba compiles for the host CPU, so these loops use AVX-512 where the machine
has it. The GEMMs call scipy's BLAS directly (through the function pointers
``scipy.linalg.cython_blas`` exports), so the updates are written straight into
the weights with beta = 1, as in the Cython kernels; every function runs without
the GIL (``nogil=True``).

LLVM's loop vectoriser by default runs four vectors (64 floats) per iteration,
which for a hidden layer of ~100 units leaves half the work to a narrower
epilogue loop; every kernel here is compiled with one vector per iteration
instead (see ``_codegen``).

Numba cannot say that two arrays do not overlap, so a sum kept in an array is
loaded and stored again at every row of WhT that a loop adds to it; LLVM did not
keep even a buffer on the stack in registers. The loops over rows of WhT (the
forward gather, the updates) and the output step at batch 1 hold their sums in
values of ``_Lines`` instead: one to four cache lines as LLVM vectors, with +, -
and *, which LLVM keeps in registers as gcc keeps the C kernels' vector types,
at the full width of the CPU's vectors. Full unrolling is switched off while
fastmlp compiles.

Each thread's loop takes its arrays borrowed (``_borrowed``: no reference
counts). Every call from one compiled function into another otherwise
increments and decrements the count of each array it passes, atomically, and two
threads passing the same arrays made those counts' cache lines go back and forth
between the cores.

Compiled code is cached on disk (``cache=True``). Where no cache directory is
writable (a read-only site-packages and a read-only home), Numba refuses to
cache; the kernels are then compiled in memory on first use instead.
"""

import contextlib
import math
import operator
import threading
from typing import NamedTuple

import llvmlite.binding as llvm_binding
import numba as nb
import numpy as np
from llvmlite import ir
from numba import literally
from numba.core import cgutils, errors, types
from numba.core.compiler_lock import global_compiler_lock
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import get_cython_function_address, intrinsic, models, overload, register_model

from .epochs import check_mask

PATHS = ("sparse", "blas")
THREADED_PATHS = ("sparse",)  # its BLAS path runs on one thread
DEEP_PATHS = ("sparse",)  # several hidden layers: the first sparse-first, the rest dense (_deep_thread)
SPARSE_CHUNK_ROWS = 128  # larger batches are taken in chunks where epochs.sparse_work says so
SPARSE_GROUP_MIN, SPARSE_MASK_ROWS = 32, 256  # batches of 32-256 examples update each touched row once
DEEP_GEMM_MIN = 32  # chunks of 32 examples or more take the dense layers of a deep network by GEMMs
_LINE = 64  # bytes in a cache line: the hidden units go in groups of up to four lines


def _compile(func, fastmath, **more):
    # error_model="numpy": a float division by zero gives inf/NaN as in C instead
    # of a check per element that stops the loop from vectorising.
    # "contract" lets LLVM fuse a * b + c into FMAs (as gcc does), nothing else.
    options = dict(nogil=True, error_model="numpy", fastmath=fastmath, **more)
    try:
        return nb.njit(cache=True, **options)(func)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return nb.njit(**options)(func)


def _jit(func):
    return _compile(func, {"contract"})


def _jit_inline(func):
    return _compile(func, {"contract"}, inline="always")


@contextlib.contextmanager
def _codegen():
    """LLVM's loop vectoriser set to one vector per iteration, and full unrolling
    off, for this process's compilations while the block runs (see the module's
    docstring).

    Numba has no per-function or per-loop setting for this; the option is global
    to LLVM, so it is set under Numba's compiler lock (no other code compiles
    meanwhile) and set back to LLVM's defaults afterwards (0: its own choice of
    interleave; no limit on full unrolling).
    """
    with global_compiler_lock:
        llvm_binding.set_option("fastmlp", "-force-vector-interleave=1")
        llvm_binding.set_option("fastmlp", "-unroll-full-max-count=1")
        try:
            yield
        finally:
            llvm_binding.set_option("fastmlp", "-force-vector-interleave=0")
            llvm_binding.set_option("fastmlp", "-unroll-full-max-count=4294967295")


def _arg_key(a):
    # what Numba's type of an argument depends on, more cheaply than typeof
    if isinstance(a, np.ndarray):
        f = a.flags
        return (a.dtype, a.ndim, f.c_contiguous, f.f_contiguous, f.writeable, f.aligned)
    if isinstance(a, tuple):
        return (type(a), *map(_arg_key, a))
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
def _borrowed(typingctx, arrays):
    """The (named) tuple with its arrays without reference counts (null meminfos),
    for arrays that the caller keeps alive; other members as they are. Passing an
    array to another compiled function increments and decrements its count,
    atomically; with two threads passing the same arrays at every batch, the
    counts' cache lines would go back and forth between the cores."""
    if not isinstance(arrays, types.BaseTuple):
        raise errors.TypingError("_borrowed takes a tuple")

    def codegen(context, builder, signature, args):
        out = []
        for i, ty in enumerate(signature.args[0]):
            value = builder.extract_value(args[0], i)
            if isinstance(ty, types.Array):
                ary = context.make_array(ty)(context, builder, value=value)
                ary.meminfo = cgutils.get_null_value(ary.meminfo.type)
                ary.parent = cgutils.get_null_value(ary.parent.type)
                value = ary._getvalue()
            out.append(value)
        return context.make_tuple(builder, signature.return_type, out)

    return arrays(arrays), codegen


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
    args = (
        _ptr(ws_char, 0),
        _ptr(ws_char, 1),
        _ptr(ws_int, 0),
        _ptr(ws_int, 1),
        _ptr(ws_int, 2),
        _ptr(ws_real, 0),
        _ptr(B, 0),
        _ptr(ws_int, 3),
        _ptr(A, 0),
        _ptr(ws_int, 4),
        _ptr(ws_real, 1),
        _ptr(C, 0),
        _ptr(ws_int, 5),
    )
    if C.itemsize == 4:
        _sgemm(*args)
    else:
        _dgemm(*args)


# ---- the per-element ops of fastmlp.tables, as _ops.h has them ----
#
# Scalar ops; where float32 and float64 take different arithmetic, _by_precision
# picks one at compile time. The mechanics reach them only through _activate,
# _act_grad, _row_loss_grad and _sgd_row, whose branches follow the tables
# ACTIVATION_OPS and LOSS_OPS below.

_F = np.float32  # constants in float32 take the precision of the other operand
_TANH_P = tuple(
    _F(c)
    for c in (9.999999404e-01, 1.291923672e-01, 2.920770319e-03, 9.267499991e-06, -1.278068140e-08, 1.825586730e-11)
)
_TANH_Q = tuple(_F(c) for c in (4.625251889e-01, 2.376320399e-02, 2.281013876e-04))


def _by_precision(f32, f64):
    """Decorates a stub: calls to it from compiled code run ``f32`` on float32 and
    ``f64`` on float64, the one chosen when the caller is compiled."""

    def register(stub):
        @overload(stub)
        def _typed(x):
            return (lambda x: f32(x)) if x == types.float32 else (lambda x: f64(x))

        return stub

    return register


@intrinsic
def _float64_from_bits(typingctx, bits):
    """The float64 whose bits are the int64 ``bits``."""
    if bits != types.int64:
        raise errors.TypingError("_float64_from_bits takes an int64")

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@_jit
def _exp_d(x):
    """exp of a float64 in plain arithmetic, as _ops.h fm_exp_d (|x| <= 708): 2^k
    through the exponent bits, so that no library call stops a loop from
    vectorising."""
    k = np.floor(1.4426950408889634073599 * x + 0.5)
    r = (x - k * 6.93145751953125e-1) - k * 1.42860682030941723212e-6
    rr = r * r
    p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 9.99999999999999999910e-1)
    q = (
        (3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr + 2.27265548208155028766e-1
    ) * rr + 2.00000000000000000009e0
    k = k if k == k else 0.0  # NaN: keep the conversion to an integer defined; the result stays NaN
    return (1.0 + 2.0 * (p / (q - p))) * _float64_from_bits(np.int64(k + 1023.0) << np.int64(52))


@_jit
def _tanh_f32(x):
    c = _F(9.0)
    x = -c if x < -c else (c if x > c else x)
    s = x * x
    p = ((((_TANH_P[5] * s + _TANH_P[4]) * s + _TANH_P[3]) * s + _TANH_P[2]) * s + _TANH_P[1]) * s + _TANH_P[0]
    q = ((_TANH_Q[2] * s + _TANH_Q[1]) * s + _TANH_Q[0]) * s + _F(1.0)
    return x * p / q


@_jit
def _tanh_f64(d):
    a = abs(d)
    z = d * d
    small = d + d * z * ((-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z - 1.61468768441708447952e3) / (
        ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z + 4.84406305325125486048e3
    )
    t = small if a < 0.625 else 1.0 - 2.0 / (_exp_d(2.0 * min(a, 22.0)) + 1.0)
    return d if d != d else math.copysign(t, d)


@_by_precision(_tanh_f32, _tanh_f64)
def _tanh_typed(x):
    raise NotImplementedError


@_jit
def _tanh(x):
    """tanh: float32 by a rational approximation (max abs error 3.6e-7), float64 by
    Cephes' method (2e-16)."""
    return _tanh_typed(x)


@_jit
def _tanh_grad(h):
    return _F(1) - h * h


@_jit
def _relu(x):
    return max(x, _F(0))  # NaN stays NaN


@_jit
def _relu_grad(h):
    return _F(1) if h > 0 else _F(0)


@_jit
def _logistic_f32(x):
    m = min(max(-np.float64(x), -104.0), 104.0)
    return x if x != x else np.float32(1.0 / (1.0 + _exp_d(m)))


@_jit
def _logistic_f64(x):
    m = min(max(-x, -708.4), 708.4)  # just beyond -ln of the smallest normal float64
    return x if x != x else 1.0 / (1.0 + _exp_d(m))


@_by_precision(_logistic_f32, _logistic_f64)
def _logistic_typed(x):
    raise NotImplementedError


@_jit
def _logistic(x):
    """1 / (1 + exp(-x)) in float64 arithmetic, rounded once."""
    return _logistic_typed(x)


@_jit
def _logistic_grad(h):
    return h * (_F(1) - h)


@_jit
def _identity(x):
    return x


@_jit
def _identity_grad(h):
    return _F(1)


# fastmlp.tables.ACTIVATIONS by code: (f, f' written from the output)
ACTIVATION_OPS = {
    0: (_tanh, _tanh_grad),
    1: (_relu, _relu_grad),
    2: (_logistic, _logistic_grad),
    3: (_identity, _identity_grad),
}


@_jit
def _activate(act, h):
    """h = f(h) in place, f the activation of code ``act`` (checked by the caller)."""
    if act == 0:
        for j in range(h.size):
            h[j] = _tanh(h[j])
    elif act == 1:
        for j in range(h.size):
            h[j] = _relu(h[j])
    elif act == 2:
        for j in range(h.size):
            h[j] = _logistic(h[j])
    elif act == 3:
        for j in range(h.size):
            h[j] = _identity(h[j])


@_jit
def _act_grad(act, d, h, y, a):
    """d *= f'(h) in place, from the outputs h of the activation of code ``act``, and
    y += a d in the same pass: the sum of a bias's gradient (a = 1) or its plain SGD
    step (a = -lr). (A loop of its own per op: passing the ops to one loop as
    arguments would keep the kernels out of Numba's cache.)"""
    if act == 0:
        for j in range(d.size):
            d[j] *= _tanh_grad(h[j])
            y[j] += a * d[j]
    elif act == 1:
        for j in range(d.size):
            d[j] *= _relu_grad(h[j])
            y[j] += a * d[j]
    elif act == 2:
        for j in range(d.size):
            d[j] *= _logistic_grad(h[j])
            y[j] += a * d[j]
    elif act == 3:
        for j in range(d.size):
            d[j] *= _identity_grad(h[j])
            y[j] += a * d[j]


@_jit
def _exp_f32(x):
    return np.float32(_exp_d(max(np.float64(x), -104.0)))  # below -104 the float32 result is 0


@_jit
def _exp_f64(x):
    return np.exp(x)


@_by_precision(_exp_f32, _exp_f64)
def _softmax_exp(x):
    """exp for the softmax: in float64 arithmetic for float32, as in C."""
    raise NotImplementedError


@_jit
def _softmax_row(Z, r, dZ):
    """Row r of dZ = exp(Z[r] - max) (Z and dZ may be one array); returns (the sum,
    the max, the first argmax)."""
    n = Z.shape[1]
    am = 0
    m = Z[r, 0]
    for i in range(1, n):
        if Z[r, i] > m:
            m = Z[r, i]
            am = i
    s = Z.dtype.type(0)
    for i in range(n):
        dZ[r, i] = _softmax_exp(Z[r, i] - m)
    for i in range(n):
        s += dZ[r, i]
    return s, m, am


# Each loss takes row r of Z to row r of dZ, from the label y or from row tr of the
# target values T (_ops.h: a loss over labels reads y, a loss of values T), and
# returns (the row's loss, 1 if the row is predicted right else 0).


@_jit
def _loss_ce(Z, r, y, T, tr, dZ, scale):
    """softmax + cross-entropy: l = log sum exp(z - m) - (z_y - m); dl/dz = softmax(z) - onehot(y)."""
    zy = Z[r, y]
    s, m, am = _softmax_row(Z, r, dZ)
    inv_s = Z.dtype.type(1) / s
    for i in range(Z.shape[1]):
        dZ[r, i] = (dZ[r, i] * inv_s - (_F(1) if i == y else _F(0))) * scale
    return float(np.log(s)) - float(zy - m), 1 if am == y else 0


@_jit
def _loss_mse(Z, r, y, T, tr, dZ, scale):
    """softmax + squared error: l = 0.5 |p - y|^2; dl/dz = p * (g - p.g), g = p - onehot(y)."""
    t = Z.dtype.type
    s, m, am = _softmax_row(Z, r, dZ)
    inv_s = t(1) / s
    l2 = t(0)
    pg = t(0)
    for i in range(Z.shape[1]):
        p = dZ[r, i] * inv_s
        g = p - (_F(1) if i == y else _F(0))
        dZ[r, i] = p
        l2 += g * g
        pg += p * g
    for i in range(Z.shape[1]):
        dZ[r, i] = dZ[r, i] * ((dZ[r, i] - (_F(1) if i == y else _F(0))) - pg) * scale
    return 0.5 * float(l2), 1 if am == y else 0


@_jit
def _loss_bce(Z, r, y, T, tr, dZ, scale):
    """logistic per output + binary cross-entropy: l = sum_i max(z, 0) - t z + log(1 +
    exp(-|z|)); dl/dz = s(z) - t; right where every output is on t's side of 1/2."""
    loss = 0.0
    right = 1
    for i in range(Z.shape[1]):
        x, ti = Z[r, i], T[tr, i]
        a = min(abs(float(x)), 708.0)
        loss += max(float(x), 0.0) - float(ti) * float(x) + np.log1p(_exp_f64(-a))
        if (x > 0) != (ti > 0.5):
            right = 0
        dZ[r, i] = (_logistic(x) - ti) * scale
    return loss, right


@_jit
def _loss_squared_error(Z, r, y, T, tr, dZ, scale):
    """identity + squared error: l = 0.5 |z - t|^2; dl/dz = z - t; no accuracy."""
    loss = 0.0
    for i in range(Z.shape[1]):
        d = Z[r, i] - T[tr, i]
        loss += float(d) * float(d)
        dZ[r, i] = d * scale
    return 0.5 * loss, 0


@_jit
def _loss_poisson(Z, r, y, T, tr, dZ, scale):
    """exp + half Poisson deviance: l = sum_i t log(t / mu) - t + mu, mu = exp(z);
    dl/dz = mu - t; no accuracy."""
    loss = 0.0
    for i in range(Z.shape[1]):
        x, ti = Z[r, i], T[tr, i]
        mu = np.exp(x)
        loss += (float(ti) * np.log(float(ti)) if ti > 0 else 0.0) - float(ti) * float(x) - float(ti) + float(mu)
        dZ[r, i] = (mu - ti) * scale
    return loss, 0


# fastmlp.tables.LOSSES by code
LOSS_OPS = {0: _loss_ce, 1: _loss_mse, 2: _loss_bce, 3: _loss_squared_error, 4: _loss_poisson}
# the codes of fastmlp.tables this backend has ops for
ACTIVATION_CODES, LOSS_CODES = frozenset(ACTIVATION_OPS), frozenset(LOSS_OPS)
OPTIMIZER_CODES = frozenset((0, 1, 2, 3))  # sgd (_sgd_row), adam, adamw and gradient (_step_row)


@_jit
def _row_loss_grad(loss, Z, r, labels, T, ex_row, dZ, scale):
    """Row r of the logits Z, of example ex_row, -> row r of dZ = scale * dl/dz (Z and
    dZ may be the same array) for the loss of code ``loss`` (checked by the caller),
    from the example's label (labels) or its target values (T). Returns (loss,
    correct) of the row; argmax ties go to the first index. Rows are indexed in 2-D:
    a row view would cost reference-count updates."""
    if loss < 2:
        y = labels[ex_row]
        if loss == 0:
            return _loss_ce(Z, r, y, T, 0, dZ, scale)
        return _loss_mse(Z, r, y, T, 0, dZ, scale)
    if loss == 2:
        return _loss_bce(Z, r, 0, T, ex_row, dZ, scale)
    if loss == 3:
        return _loss_squared_error(Z, r, 0, T, ex_row, dZ, scale)
    return _loss_poisson(Z, r, 0, T, ex_row, dZ, scale)


@_jit
def _sgd1(p, v, g, lr, mu, decay, momentum, nesterov):
    """torch.optim.SGD's step of one element (_ops.h fm_sgd1): g' = g + decay p; with
    momentum v = mu v + g' and p -= lr v (lr (g' + mu v) with Nesterov); without,
    p -= lr g'. Returns (p, v)."""
    gd = g + decay * p
    if not momentum:
        return p - lr * gd, v
    vn = mu * v + gd
    return p - lr * (gd + mu * vn if nesterov else vn), vn


def _check_codes(codes):
    """ValueError for a code this backend has no op for, before any work."""
    if codes.act not in ACTIVATION_OPS:
        raise ValueError(f"unknown activation code {codes.act!r}; known: {sorted(ACTIVATION_OPS)}")
    if codes.loss not in LOSS_OPS:
        raise ValueError(f"unknown loss code {codes.loss!r}; known: {sorted(LOSS_OPS)}")


def _check_targets(loss, y):
    """ValueError where an epoch's targets are not what the loss reads (class labels
    (n,) for the losses 0 and 1, target values (n, n_out) for the others: _fused.h
    FM_VALUE_TARGETS), as the C kernels refuse them."""
    if (np.ndim(y) == 2) != (loss >= 2):
        raise ValueError(
            "the parameter block, workspace or targets lack what the step needs "
            "(state, gradients, the loss's class labels or target values)"
        )


# ---- the sparse epoch (see _sparse_impl.h: the same algorithm and layout) ----


@intrinsic
def _atomic_add(typingctx, arr, i, v):
    """arr[i] += v atomically (acquire-release); returns the new value."""

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        old = builder.atomic_rmw("add", ptr, args[2], "acq_rel")
        return builder.add(old, args[2])

    return arr.dtype(arr, i, arr.dtype), codegen


@intrinsic
def _atomic_load(typingctx, arr, i):
    """arr[i], read atomically (acquire)."""

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        return builder.load_atomic(ptr, "acquire", signature.args[0].dtype.bitwidth // 8)

    return arr.dtype(arr, i), codegen


@intrinsic
def _atomic_store(typingctx, arr, i, v):
    """arr[i] = v, written atomically (release)."""

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        builder.store_atomic(args[2], ptr, "release", signature.args[0].dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(arr, i, arr.dtype), codegen


_sched_yield = types.ExternalFunction("sched_yield", types.int32())
_SPINS = 4096


@_jit
def _barrier(sync, n):
    """The threads' barrier of _fused.c fm_barrier: sync[0] counts the arrivals,
    sync[16] (another cache line) is the generation; spin, then yield the core."""
    g = _atomic_load(sync, 16)
    if _atomic_add(sync, 0, np.int32(1)) == n:
        _atomic_store(sync, 0, np.int32(0))
        _atomic_store(sync, 16, g + np.int32(1))
        return
    spins = 0
    while _atomic_load(sync, 16) == g:
        spins += 1
        if spins > _SPINS:
            _sched_yield()


@_jit
def _row_of(indptr, dense, n_in, r):
    """(values start, indices start, length) of row r: CSR rows have both at
    indptr[r]; dense rows start at r * n_in and all share the indices 0..n_in-1."""
    if dense:
        return r * n_in, 0, n_in
    return indptr[r], indptr[r], indptr[r + 1] - indptr[r]


class _Lines(types.Type):
    """A value of nl cache lines of a float dtype (nl from 1 to 4): nl LLVM vectors
    of one line each, as the C kernels' vector types. It lives in registers, so a
    sum kept in it is not loaded and stored again at every row of WhT, as a sum in
    an array would be (Numba cannot say that two arrays do not overlap). Made by
    _lines_load and _lines_zero, stored by _lines_store; +, - and * work line by
    line, with a scalar on either side, and a + x * v compiles to FMAs."""

    def __init__(self, dtype, nl):
        self.dtype, self.nl, self.lanes = dtype, nl, _LINE // (dtype.bitwidth // 8)
        super().__init__(name=f"Lines({dtype}, {nl})")


@register_model(_Lines)
class _LinesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        line = ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), fe_type.lanes)
        super().__init__(dmm, fe_type, ir.ArrayType(line, fe_type.nl))


def _lines_type(nl, dtype):
    """At typing: the _Lines of nl (a literal type) lines of dtype."""
    if not isinstance(nl, types.IntegerLiteral):
        raise errors.RequireLiteralValue(nl)
    if not 1 <= nl.literal_value <= 4:
        raise errors.TypingError(f"_Lines hold 1 to 4 cache lines, not {nl.literal_value}")
    return _Lines(dtype, nl.literal_value)


def _check_c_array(arr, lines=None):
    if not isinstance(arr, types.Array) or arr.layout != "C" or not isinstance(arr.dtype, types.Float):
        raise errors.TypingError(f"needs a C-contiguous float array, got {arr}")
    if lines is not None and (not isinstance(lines, _Lines) or lines.dtype != arr.dtype):
        raise errors.TypingError(f"needs _Lines of {arr.dtype}, got {lines}")


def _line_pointers(context, builder, aryty, ary, i, lt):
    """Pointers to the lt.nl lines that start at ary.flat[i]."""
    data = context.make_array(aryty)(context, builder, value=ary).data
    line = ir.VectorType(context.get_value_type(lt.dtype), lt.lanes).as_pointer()
    first = builder.gep(data, [i])
    return [
        builder.bitcast(builder.gep(first, [context.get_constant(types.intp, l * lt.lanes)]), line)
        for l in range(lt.nl)
    ]


@intrinsic
def _lines_load(typingctx, arr, i, nl):
    """arr.flat[i : i + nl lines] as _Lines (nl a literal; arr C-contiguous)."""
    _check_c_array(arr)
    lt = _lines_type(nl, arr.dtype)

    def codegen(context, builder, signature, args):
        v = ir.Constant(context.get_value_type(lt), ir.Undefined)
        for l, p in enumerate(_line_pointers(context, builder, signature.args[0], args[0], args[1], lt)):
            v = builder.insert_value(v, builder.load(p, align=lt.dtype.bitwidth // 8), l)
        return v

    return lt(arr, i, nl), codegen


@intrinsic
def _lines_store(typingctx, arr, i, v):
    """arr.flat[i : i + v's lines] = v."""
    _check_c_array(arr, v)

    def codegen(context, builder, signature, args):
        for l, p in enumerate(_line_pointers(context, builder, signature.args[0], args[0], args[1], v)):
            builder.store(builder.extract_value(args[2], l), p, align=v.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(arr, i, v), codegen


@intrinsic
def _lines_zero(typingctx, nl, like):
    """nl lines of zeros of like's dtype (nl a literal)."""
    lt = _lines_type(nl, like.dtype)

    def codegen(context, builder, signature, args):
        return ir.Constant(context.get_value_type(lt), None)

    return lt(nl, like), codegen


def _lines_operands(context, builder, lt, tys, vals):
    """Both operands as lists of lt.nl line vectors (a scalar broadcast to each)."""
    out = []
    for ty, val in zip(tys, vals, strict=True):
        if isinstance(ty, _Lines):
            out.append([builder.extract_value(val, l) for l in range(lt.nl)])
            continue
        line = ir.VectorType(context.get_value_type(lt.dtype), lt.lanes)
        x = context.cast(builder, val, ty, lt.dtype)
        one = builder.insert_element(ir.Constant(line, ir.Undefined), x, context.get_constant(types.int32, 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), lt.lanes), [0] * lt.lanes)
        out.append([builder.shuffle_vector(one, ir.Constant(line, ir.Undefined), zeros)] * lt.nl)
    return out


def _lines_operator(op, name):
    """op (+, - or *) for _Lines with _Lines of the same type or a real scalar on
    either side, line by line; "contract" lets LLVM fuse a * b + c into FMAs, as
    everywhere in these kernels."""

    @intrinsic
    def apply(typingctx, a, b):
        lt = a if isinstance(a, _Lines) else b
        for ty in (a, b):
            if not (ty == lt or isinstance(ty, (types.Float, types.Integer))):
                raise errors.TypingError(f"cannot {name} {a} and {b}")

        def codegen(context, builder, signature, args):
            xs, ys = _lines_operands(context, builder, lt, signature.args, args)
            v = ir.Constant(context.get_value_type(lt), ir.Undefined)
            for l in range(lt.nl):
                v = builder.insert_value(v, getattr(builder, name)(xs[l], ys[l], flags=("contract",)), l)
            return v

        return lt(a, b), codegen

    @overload(op)
    def overloaded(a, b):
        if isinstance(a, _Lines) or isinstance(b, _Lines):
            return lambda a, b: apply(a, b)

    return apply


for _op, _name in ((operator.add, "fadd"), (operator.sub, "fsub"), (operator.mul, "fmul")):
    _lines_operator(_op, _name)


@_jit
def _gather_at(H, h, bh, bo, W, w, stride, nl, vals, av, idx, ai, k):
    """The nl lines of H's elements from h (flat) = those of bh from bo + sum_t
    vals[av + t] (those of W from w + idx[ai + t] stride), the sums held in
    registers through the loop over the non-zeros (_sparse_impl.h FM_GATHER). nl
    is a literal: one compiled loop per width."""
    literally(nl)
    a = _lines_load(bh, bo, nl)
    for t in range(k):
        a = a + vals[av + t] * _lines_load(W, w + idx[ai + t] * stride, nl)
    _lines_store(H, h, a)


@_jit
def _gather_lines(H, s, b, off, nl, bh, W, vals, av, idx, ai, k):
    """H[s, b, off : + nl lines] = bh[s, off : ...] + sum_t vals[av + t] W[s, idx[ai + t], off : ...]
    (_gather_at)."""
    literally(nl)
    stride = W.shape[2]
    # fmt: off
    _gather_at(H, (s * H.shape[1] + b) * H.shape[2] + off, bh, s * bh.shape[1] + off, W, s * W.shape[1] * stride + off,
               stride, nl, vals, av, idx, ai, k)
    # fmt: on


@_jit
def _gather(H, s, b, first, g0, g1, group_line, bh, W, vals, av, idx, ai, k):
    """_gather_lines over the groups g0..g1 of slice s (at most four lines each)."""
    lanes = _LINE // W.itemsize
    for g in range(g0, g1):
        off = (group_line[g] - first) * lanes
        nl = group_line[g + 1] - group_line[g]
        if nl == 4:
            _gather_lines(H, s, b, off, 4, bh, W, vals, av, idx, ai, k)
        elif nl == 3:
            _gather_lines(H, s, b, off, 3, bh, W, vals, av, idx, ai, k)
        elif nl == 2:
            _gather_lines(H, s, b, off, 2, bh, W, vals, av, idx, ai, k)
        else:
            _gather_lines(H, s, b, off, 1, bh, W, vals, av, idx, ai, k)


@_jit_fast_reduce
def _dot_rows(H, Wy, s, b, o, off, n):
    """sum_j H[s, b, off + j] Wy[s, o, off + j] (the order may change: it vectorises;
    the unsigned offset spares the negative-index checks that would stop it)."""
    u = np.uint64(off)
    acc = H.dtype.type(0)
    for j in range(n):
        acc += H[s, b, u + np.uint64(j)] * Wy[s, o, u + np.uint64(j)]
    return acc


@_jit
def _sgd_row(P, V, r, c, G, gr, n, lr, mu, decay, nesterov):
    """P[r, c : c + n] steps from the gradient G[gr, :n] (a G with no rows: a zero
    gradient) by _sgd1, with `decay`; V the velocity (used only with momentum).
    One loop per form, so that each vectorises; on row slices (see _axpy)."""
    zero = P.dtype.type(0)
    p, v = P[r, c : c + n], V[r, c : c + n]
    has_g = G.shape[0] > 0
    g = G[gr, :n] if has_g else p  # p: never read
    if mu == 0:
        for j in range(n):
            p[j] = _sgd1(p[j], zero, g[j] if has_g else zero, lr, mu, decay, False, False)[0]
    elif nesterov:
        for j in range(n):
            p[j], v[j] = _sgd1(p[j], v[j], g[j] if has_g else zero, lr, mu, decay, True, True)
    else:
        for j in range(n):
            p[j], v[j] = _sgd1(p[j], v[j], g[j] if has_g else zero, lr, mu, decay, True, False)


@_jit
def _adam_at(step, i, like):
    """Adam's factors of batch i of a call, step t = step.steps + i + 1 (_fused_impl.h
    fm_step_at): (lr / (1 - beta1^t), sqrt(1 - beta2^t), eps or eps / that), in
    the dtype of the array ``like``, taken in double."""
    t = float(step.steps + i + 1)
    bc2_sqrt = np.sqrt(1.0 - float(step.beta2) ** t)
    eps = float(step.eps) / bc2_sqrt if step.sklearn_eps else float(step.eps)
    real = like.dtype.type
    return real(float(step.lr) / (1.0 - float(step.beta1) ** t)), real(bc2_sqrt), real(eps)


@_jit
def _second_moment(step):
    """Whether the step keeps Adam's second moments (_fused.h FM_SECOND_MOMENT)."""
    return step.kind == 1 or step.kind == 2


@_jit
def _step_row(P, V, S, r, c, G, gr, n, step, adam, decay):
    """P[r, c : c + n] steps (epochs.Step; _fused_impl.h fm_step_dense) from the
    gradient G[gr, :n] with `decay`: SGD by _sgd_row (V its velocity), Adam with V
    and S its moments and ``adam`` the batch's factors (_adam_at); "gradient" (code
    3) writes the gradient with its decay into V and leaves P."""
    if step.kind == 0:
        _sgd_row(P, V, r, c, G, gr, n, step.lr, step.momentum, decay, step.nesterov)
        return
    ps, vs, g = P[r, c : c + n], V[r, c : c + n], G[gr, :n]  # row slices (see _axpy)
    if step.kind == 3:
        for j in range(n):
            vs[j] = g[j] + decay * ps[j]
        return
    ss = S[r, c : c + n]
    one = P.dtype.type(1)
    b1, b2 = step.beta1, step.beta2
    step_size, bc2_sqrt, eps = adam
    adamw = step.kind == 2
    l2 = P.dtype.type(0) if adamw else decay
    shrink = one - step.lr * decay if adamw else one
    for j in range(n):
        p = ps[j] * shrink
        gd = g[j] + l2 * p
        m = vs[j]
        m = m + (one - b1) * (gd - m)
        v = b2 * ss[j] + (one - b2) * gd * gd
        vs[j] = m
        ss[j] = v
        ps[j] = p - step_size * (m / (np.sqrt(v) / bc2_sqrt + eps))


@_jit
def _step_vector(p, v, sv, c, g, n, step, adam, decay):
    """p[c : c + n] steps from the gradient g[:n], for a 1-D p (a bias); v, sv its
    state (p where the step keeps none)."""
    P = p.reshape((1, p.size))
    V = v.reshape((1, v.size)) if v.size else P
    S = sv.reshape((1, sv.size)) if sv.size else P
    _step_row(P, V, S, 0, c, g.reshape((1, g.size)), 0, n, step, adam, decay)


@_jit
def _batch_weight(weights, has_weights, order, start, B):
    if not has_weights:
        return float(B)
    total = 0.0
    for b in range(B):
        total += weights[order[start + b]]
    return total


@_jit
def _mark_inputs(mask, t, b, indices, ai, k):
    """Sets example b's bit in thread t's mask for each of its inputs (see
    _grouped_rows)."""
    q = b >> 6
    bit = np.uint64(1) << np.uint64(b & 63)
    for e in range(k):
        mask[t, indices[ai + e], q] |= bit


# fmt: off
@_jit
def _grouped_at(W, V, w, stride, nl, c, momentum, mask, t, clear, data, indptr, dense, n_in, order, start, B, dH, dh,
                dstride, cur):
    # fmt: on
    """Each row of W that the batch touches, once (_sparse_impl.h fm_grouped_rows),
    the nl lines from w + i stride (flat) of input i: for every input i with bits
    in thread t's mask (cleared as read where `clear`), a = the sum over those
    examples b, in order, of x_bi (dH's nl lines from dh + b dstride), held in
    registers; then W's row -= c a and, with momentum, V's row += a. x_bi is the
    next value of example b's row (data[cur[b]]): the inputs go in order, and each
    row's indices are sorted and unique. nl is a literal: one compiled loop per
    width."""
    literally(nl)
    for b in range(B):
        cur[b] = _row_of(indptr, dense, n_in, order[start + b])[0]
    words = mask.shape[2]
    zero = np.uint64(0)
    for i in range(n_in):
        touched = False
        a = _lines_zero(nl, W)
        for q in range(words):
            m = mask[t, i, q]
            if m == zero:
                continue
            if clear:
                mask[t, i, q] = zero
            touched = True
            while m != zero:
                e = q * 64 + trailing_zeros(m)
                m &= m - np.uint64(1)
                x = data[cur[e]]
                cur[e] += 1
                a = a + x * _lines_load(dH, dh + e * dstride, nl)
        if touched:
            r = w + i * stride
            _lines_store(W, r, _lines_load(W, r, nl) - c * a)
            if momentum:
                _lines_store(V, r, _lines_load(V, r, nl) + a)


# fmt: off
@_jit
def _grouped_lines(WhT, VWhT, s, off, nl, c, momentum, mask, t, clear, data, indptr, dense, n_in, order, start, B,
                   dH, cur):
    # fmt: on
    """Each row of WhT[s, :, off : + nl lines] that the batch touches, once, from
    dH[s, :, off : ...] (_grouped_at)."""
    literally(nl)
    stride = WhT.shape[2]
    # fmt: off
    _grouped_at(WhT, VWhT, s * WhT.shape[1] * stride + off, stride, nl, c, momentum, mask, t, clear, data, indptr,
                dense, n_in, order, start, B, dH, s * dH.shape[1] * dH.shape[2] + off, dH.shape[2], cur)
    # fmt: on


# fmt: off
@_jit
def _grouped_rows(WhT, VWhT, s, first, g0, g1, group_line, c, momentum, mask, t, clear, data, indptr, dense, n_in,
                  order, start, B, dH, cur):
    # fmt: on
    """_grouped_lines over the groups g0..g1 of slice s; the mask is cleared on
    the last group where `clear`."""
    lanes = _LINE // WhT.itemsize
    for g in range(g0, g1):
        off = (group_line[g] - first) * lanes
        nl = group_line[g + 1] - group_line[g]
        cl = clear and g == g1 - 1
        if nl == 4:
            _grouped_lines(WhT, VWhT, s, off, 4, c, momentum, mask, t, cl, data, indptr, dense, n_in, order,
                           start, B, dH, cur)
        elif nl == 3:
            _grouped_lines(WhT, VWhT, s, off, 3, c, momentum, mask, t, cl, data, indptr, dense, n_in, order,
                           start, B, dH, cur)
        elif nl == 2:
            _grouped_lines(WhT, VWhT, s, off, 2, c, momentum, mask, t, cl, data, indptr, dense, n_in, order,
                           start, B, dH, cur)
        else:
            _grouped_lines(WhT, VWhT, s, off, 1, c, momentum, mask, t, cl, data, indptr, dense, n_in, order,
                           start, B, dH, cur)


@_jit
def _update_at(W, V, momentum, w, stride, nl, c, data, av, indices, ai, k, dH, dh):
    """W's nl lines from w + i stride (flat) -= (c x) dH's from dh and, with
    momentum, V's += x dH's, for the entries (i, x) of an example's row, last first
    (the forward pass has just read them: the last are in L1), dH's lines held in
    registers (_sparse_impl.h FM_UPDATE)."""
    literally(nl)
    d = _lines_load(dH, dh, nl)
    for e in range(k - 1, -1, -1):
        r = w + indices[ai + e] * stride
        x = data[av + e]
        _lines_store(W, r, _lines_load(W, r, nl) - (c * x) * d)
        if momentum:
            _lines_store(V, r, _lines_load(V, r, nl) + x * d)


@_jit
def _update_lines(WhT, VWhT, momentum, s, off, nl, c, data, av, indices, ai, k, dH, b):
    """WhT[s, i, off : + nl lines] -= (c x) dH[s, b, off : ...] and, with momentum,
    VWhT[s, i, off : ...] += x dH[s, b, off : ...] for the entries (i, x) of example
    b's row (_update_at)."""
    literally(nl)
    stride = WhT.shape[2]
    # fmt: off
    _update_at(WhT, VWhT, momentum, s * WhT.shape[1] * stride + off, stride, nl, c, data, av, indices, ai, k, dH,
               (s * dH.shape[1] + b) * dH.shape[2] + off)
    # fmt: on


@_jit
def _update_rows(WhT, VWhT, momentum, s, first, g0, g1, group_line, c, data, av, indices, ai, k, dH, b):
    """_update_lines over the groups g0..g1 of slice s."""
    lanes = _LINE // WhT.itemsize
    for g in range(g0, g1):
        off = (group_line[g] - first) * lanes
        nl = group_line[g + 1] - group_line[g]
        if nl == 4:
            _update_lines(WhT, VWhT, momentum, s, off, 4, c, data, av, indices, ai, k, dH, b)
        elif nl == 3:
            _update_lines(WhT, VWhT, momentum, s, off, 3, c, data, av, indices, ai, k, dH, b)
        elif nl == 2:
            _update_lines(WhT, VWhT, momentum, s, off, 2, c, data, av, indices, ai, k, dH, b)
        else:
            _update_lines(WhT, VWhT, momentum, s, off, 1, c, data, av, indices, ai, k, dH, b)


@_jit_inline
def _output_step_one(act, s, width, net, ws, dZt, lr):
    """dh~ of one example and the plain SGD step of slice s's Wy, bh and by, Wy^T dz
    taken in the same pass over the rows of Wy as their step (_sparse_impl.h
    fm_sparse_step at batch 1): no gradient buffers. Line by line, the line's h and
    sum held in registers through the rows of Wy (as arrays, each row's sum would
    be stored and loaded again)."""
    Wy, H, dH = net.Wy, ws.H, ws.dH
    lanes = _LINE // H.itemsize
    h0 = s * H.shape[1] * H.shape[2]
    for u in range(0, width, lanes):
        hv = _lines_load(H, h0 + u, 1)
        dv = _lines_zero(1, H)
        for o in range(Wy.shape[1]):
            d = dZt[0, o]
            r = (s * Wy.shape[1] + o) * Wy.shape[2] + u
            wy = _lines_load(Wy, r, 1)
            dv = dv + d * wy
            _lines_store(Wy, r, wy - (lr * d) * hv)
        _lines_store(dH, h0 + u, dv)
    _act_grad(act, dH[s, 0, :width], H[s, 0, :width], net.bh[s, :width], -lr)
    for o in range(Wy.shape[1]):
        net.by[s, o] -= lr * dZt[0, o]


@_jit_inline
def _output_grads(act, s, width, C, net, ws, dZt, fresh):
    """dh~ = (Wy^T dz) * f'(h) of C examples, and the gradients of slice s's Wy, bh
    and by summed over them into gWy, gbh and gby: afresh where `fresh`, else added
    to the sums of the batch's earlier chunks (_sparse_impl.h
    fm_sparse_output_grads)."""
    Wy, H, dH, gWy, gbh, gby = net.Wy, ws.H, ws.dH, ws.gWy, ws.gbh, ws.gby
    nout = Wy.shape[1]
    if fresh:
        gbh[s, :width] = 0
        gWy[s, :, :width] = 0
        gby[s, :nout] = 0
    for b in range(C):
        for j in range(width):
            dH[s, b, j] = 0
        for o in range(nout):
            d = dZt[b, o]
            for j in range(width):
                dH[s, b, j] += d * Wy[s, o, j]
                gWy[s, o, j] += d * H[s, b, j]
        _act_grad(act, dH[s, b, :width], H[s, b, :width], gbh[s, :width], H.dtype.type(1))
    for o in range(nout):
        dsum = H.dtype.type(0)
        for b in range(C):
            dsum += dZt[b, o]
        gby[s, o] += dsum


@_jit_inline
def _output_apply(s, width, net, ws, step, adam, decay):
    """The steps of slice s's Wy (with decay), by and bh from the sums in gWy, gby and
    gbh (_sparse_impl.h fm_sparse_output_step)."""
    zero = net.Wy.dtype.type(0)
    state = step.kind != 0 or step.momentum != 0
    moments = _second_moment(step)
    Wy = net.Wy[s]
    VWy, SWy = net.VWy[s] if state else Wy, net.SWy[s] if moments else Wy
    by_v, by_s = net.Vby if state else net.by, net.Sby if moments else net.by
    _step_row(net.by, by_v, by_s, s, 0, ws.gby, s, net.Wy.shape[1], step, adam, zero)
    for o in range(net.Wy.shape[1]):
        _step_row(Wy, VWy, SWy, o, 0, ws.gWy[s], o, width, step, adam, decay)
    bh_v, bh_s = net.Vbh if state else net.bh, net.Sbh if moments else net.bh
    _step_row(net.bh, bh_v, bh_s, s, 0, ws.gbh, s, width, step, adam, zero)


@_jit
def _chunk_sum_lines(G, s, off, nl, cptr, cbase, n_in, crow, cval, dH):
    """G[s, i, off : + nl lines] += the sum over the chunk's entries e of input i
    (cptr[cbase + i] .. cptr[cbase + i + 1]) of cval[e] dH[s, crow[e], off : ...]:
    one chunk's non-zeros grouped by input (group_chunks), the sums held in
    registers, each row of G touched once (_sparse_impl.h FM_GROUPED_SUM)."""
    literally(nl)
    stride = G.shape[2]
    rows = s * G.shape[1] * stride + off
    dh = s * dH.shape[1] * dH.shape[2] + off
    for i in range(n_in):
        e0, e1 = cptr[cbase + i], cptr[cbase + i + 1]
        if e0 == e1:
            continue
        a = _lines_zero(nl, G)
        for e in range(e0, e1):
            a = a + cval[e] * _lines_load(dH, dh + crow[e] * dH.shape[2], nl)
        r = rows + i * stride
        _lines_store(G, r, _lines_load(G, r, nl) + a)


@_jit
def _chunk_sums(G, s, first, g0, g1, group_line, cptr, cbase, n_in, crow, cval, dH):
    """_chunk_sum_lines over the groups g0..g1 of slice s."""
    lanes = _LINE // G.itemsize
    for g in range(g0, g1):
        off = (group_line[g] - first) * lanes
        nl = group_line[g + 1] - group_line[g]
        if nl == 4:
            _chunk_sum_lines(G, s, off, 4, cptr, cbase, n_in, crow, cval, dH)
        elif nl == 3:
            _chunk_sum_lines(G, s, off, 3, cptr, cbase, n_in, crow, cval, dH)
        elif nl == 2:
            _chunk_sum_lines(G, s, off, 2, cptr, cbase, n_in, crow, cval, dH)
        else:
            _chunk_sum_lines(G, s, off, 1, cptr, cbase, n_in, crow, cval, dH)


@_jit_inline
def _sparse_dz(loss, t, net, ex, Zp, dZt, start, C, weight_sum):
    """dl/dz of examples order[start : start + C] into dZt (the same in every
    thread): the groups' partial logits added to thread t's copy of by in group
    order, then the row's loss, scaled by the row's share of its batch's weight_sum
    (_sparse_impl.h fm_sparse_dz). Returns their weighted (loss, correct)."""
    nout = dZt.shape[1]
    n_groups = Zp.shape[1]
    loss_sum = 0.0
    correct = 0.0
    for b in range(C):
        for o in range(nout):
            z = net.by[t, o]
            for g in range(n_groups):
                z += Zp[b, g, o]
            dZt[b, o] = z
        r = ex.order[start + b]
        w = ex.weights[r] if ex.has_weights else 1.0
        scale = dZt.dtype.type(w / weight_sum) if weight_sum > 0 else dZt.dtype.type(0)
        rl, rc = _row_loss_grad(loss, dZt, b, ex.labels, ex.targets, r, dZt, scale)
        loss_sum += w * rl
        correct += w * rc
    return loss_sum, correct


@_jit_inline
def _sparse_step(act, t, nt, net, ex, step, decay, ws, start, B, dZt, grouped, cur):
    """Given dl/dz of the batch in dZt: dh~ and the updates of thread t's slices
    (_sparse_impl.h fm_sparse_step, which says why the step splits into every row's
    step from a zero gradient and the gradient's part on the touched rows); where
    `grouped`, each touched row of WhT once (_grouped_rows)."""
    WhT, VWhT, slice_group, group_line = net.WhT, net.VWhT, net.slice_group, net.group_line
    lr, mu, nesterov = step.lr, step.momentum, step.nesterov
    n_slices, n_in = WhT.shape[:2]
    lanes = 64 // WhT.itemsize
    plain = mu == 0 and decay == 0
    no_gradient = WhT[0, :0, :]  # a gradient of no rows: _sgd_row's zero gradient
    c = lr * (WhT.dtype.type(1) + mu) if nesterov else lr
    for s in range(t, n_slices, nt):
        line0 = group_line[slice_group[s]]
        width = (group_line[slice_group[s + 1]] - line0) * lanes
        if B == 1 and plain:
            _output_step_one(act, s, width, net, ws, dZt, lr)
        else:
            _output_grads(act, s, width, B, net, ws, dZt, True)
            _output_apply(s, width, net, ws, step, (lr, lr, lr), decay)  # SGD: no Adam factors
        if not plain:
            Vs = VWhT[s] if mu != 0 else WhT[s]
            for i in range(n_in):
                _sgd_row(WhT[s], Vs, i, 0, no_gradient, 0, width, lr, mu, decay, nesterov)
        g0, g1 = slice_group[s], slice_group[s + 1]
        if grouped:
            # fmt: off
            _grouped_rows(WhT, VWhT, s, line0, g0, g1, group_line, c, mu != 0, ws.mask, t, s + nt >= n_slices,
                          ex.data, ex.indptr, ex.dense, n_in, ex.order, start, B, ws.dH, cur)
            # fmt: on
            continue
        for b in range(B):
            av, ai, k = _row_of(ex.indptr, ex.dense, n_in, ex.order[start + b])
            # fmt: off
            _update_rows(WhT, VWhT, mu != 0, s, line0, g0, g1, group_line, c, ex.data, av, ex.indices, ai, k, ws.dH,
                         b)
            # fmt: on


@_jit_inline
def _sparse_accumulate(act, t, nt, net, ex, ws, start, C, dZt, fresh, grouped, cur):
    """One chunk of a batch taken in chunks, for thread t: dh~ of its C examples
    (order[start ..]) and their gradients added to gWy, gbh, gby and gWhT, afresh at
    the batch's first chunk (`fresh`); nothing steps (_sparse_impl.h
    fm_sparse_accumulate). gWhT's rows take the chunk's sums grouped by input where
    the full batch's chunks come grouped (cptr), or from the mask where `grouped`,
    else an update per non-zero."""
    gWhT, slice_group, group_line = ws.gWhT, net.slice_group, net.group_line
    n_slices, n_in = gWhT.shape[:2]
    lanes = 64 // gWhT.itemsize
    minus_one = gWhT.dtype.type(-1)
    cbase = (start // ws.H.shape[1]) * (n_in + 1)  # the chunk's offsets in cptr
    for s in range(t, n_slices, nt):
        g0, g1 = slice_group[s], slice_group[s + 1]
        line0 = group_line[g0]
        width = (group_line[g1] - line0) * lanes
        _output_grads(act, s, width, C, net, ws, dZt, fresh)
        if ws.cptr.size:
            _chunk_sums(gWhT, s, line0, g0, g1, group_line, ws.cptr, cbase, n_in, ws.crow, ws.cval, ws.dH)
        elif grouped:
            # fmt: off
            _grouped_rows(gWhT, net.VWhT, s, line0, g0, g1, group_line, minus_one, False, ws.mask, t,
                          s + nt >= n_slices, ex.data, ex.indptr, ex.dense, n_in, ex.order, start, C, ws.dH, cur)
            # fmt: on
        else:
            for b in range(C):
                av, ai, k = _row_of(ex.indptr, ex.dense, n_in, ex.order[start + b])
                # fmt: off
                _update_rows(gWhT, net.VWhT, False, s, line0, g0, g1, group_line, minus_one, ex.data, av, ex.indices,
                             ai, k, ws.dH, b)
                # fmt: on


@_jit_inline
def _sparse_apply(t, nt, net, step, adam, decay, ws):
    """The step of a batch taken in chunks, for thread t, from the gradients that
    _sparse_accumulate summed: every row of WhT steps with its row of gWhT (zeroed
    for the next batch), then Wy, by and bh (_sparse_impl.h fm_sparse_apply)."""
    WhT = net.WhT
    state = step.kind != 0 or step.momentum != 0
    n_slices, n_in = WhT.shape[:2]
    lanes = 64 // WhT.itemsize
    for s in range(t, n_slices, nt):
        width = (net.group_line[net.slice_group[s + 1]] - net.group_line[net.slice_group[s]]) * lanes
        Ws, gWs = WhT[s], ws.gWhT[s]
        Vs = net.VWhT[s] if state else Ws
        Ss = net.SWhT[s] if _second_moment(step) else Ws
        for i in range(n_in):
            _step_row(Ws, Vs, Ss, i, 0, gWs, i, width, step, adam, decay)
            for j in range(width):
                gWs[i, j] = 0
        _output_apply(s, width, net, ws, step, adam, decay)


@_jit
def _sparse_thread(act, loss, t, nt, net, ex, step, ws):
    """Thread t's share of an epoch (_sparse_impl.h fm_sparse_thread; dl/dz is
    computed by every thread, not shared out): the network ``net`` (epochs.SparseNet)
    with the activation and loss codes ``act`` and ``loss``, the examples ``ex``
    (_Examples), the step (_Step) and the workspace ``ws`` (epochs.SparseWork). A
    batch larger than the workspace's rows is taken that many examples at a time,
    its gradient summed in gWhT and the step taken after its last chunk; the chunks
    of one full batch may come with their non-zeros grouped by input (cptr, crow,
    cval: group_chunks, flat). With a mask (up to its rows of examples at a time),
    batches or chunks of group_min examples or more mark each example's inputs in
    thread t's mask in the forward pass and update each touched row once."""
    # every array borrowed: the calls below count no references (_borrowed)
    net, ex, ws = _borrowed(net), _borrowed(ex), _borrowed(ws)
    WhT, bh, Wy, slice_group, group_line = net.WhT, net.bh, net.Wy, net.slice_group, net.group_line
    data, indices, indptr, dense, order, H = ex.data, ex.indices, ex.indptr, ex.dense, ex.order, ws.H
    n_slices, n_in = WhT.shape[:2]
    nout = Wy.shape[1]
    lanes = 64 // WhT.itemsize
    n = order.size
    loss_sum = 0.0
    correct = 0.0
    parity = 0
    # a thread narrower than the widest asks for each next row whole (_sparse_impl.h fm_prefetch_row)
    widest = 0
    mine = 0
    for u in range(nt):
        lines = 0
        for s in range(u, n_slices, nt):
            lines += group_line[slice_group[s + 1]] - group_line[slice_group[s]]
        widest = max(widest, lines)
        if u == t:
            mine = lines
    narrow = mine < widest
    start = 0
    cur = np.empty(max(ex.batch, 1), np.int64)
    rows = H.shape[1]
    while start < n:
        B = min(ex.batch, n - start)
        weight_sum = _batch_weight(ex.weights, ex.has_weights, order, start, B)
        d = step.decay
        if step.decay_by_weight_sum:
            d = WhT.dtype.type(step.decay / weight_sum) if weight_sum > 0 else WhT.dtype.type(0)
        # a step that is not affine in the gradient (Adam) sums every batch's
        chunked = B > rows or step.kind != 0
        adam = _adam_at(step, start // ex.batch, WhT)
        c0 = 0
        while c0 < B:
            C = min(rows, B - c0)
            c_start = start + c0
            Zp = ws.Zp[parity]
            grouped = ws.mask.size > 0 and C >= ws.group_min and ws.cptr.size == 0 and t < n_slices
            for b in range(C):
                av, ai, k = _row_of(indptr, dense, n_in, order[c_start + b])
                if c_start + b + 1 < n:  # the examples come in random order: ask for the next one
                    av1, ai1, k1 = _row_of(indptr, dense, n_in, order[c_start + b + 1])
                    _prefetch(data, av1)
                    _prefetch(indices, ai1)
                    if not dense:
                        _prefetch(indptr, order[c_start + b + 2 if c_start + b + 2 < n else n - 1])
                        if narrow:
                            for e in range(lanes, k1, lanes):
                                _prefetch(data, av1 + e)
                            for e in range(_LINE // 4, k1, _LINE // 4):
                                _prefetch(indices, ai1 + e)
                for s in range(t, n_slices, nt):
                    g0, g1 = slice_group[s], slice_group[s + 1]
                    line0 = group_line[g0]
                    width = (group_line[g1] - line0) * lanes
                    live = min(max(net.n_hidden - line0 * lanes, 0), width)
                    _gather(H, s, b, line0, g0, g1, group_line, bh, WhT, data, av, indices, ai, k)
                    if grouped and s == t:
                        _mark_inputs(ws.mask, t, b, indices, ai, k)
                    _activate(act, H[s, b, :live])  # the padded units' sums stay 0, whatever f(0) is
                    for g in range(g0, g1):
                        off = (group_line[g] - line0) * lanes
                        len_ = (group_line[g + 1] - group_line[g]) * lanes
                        for o in range(nout):
                            Zp[b, g, o] = _dot_rows(H, Wy, s, b, o, off, len_)
            if nt > 1:
                _barrier(ws.sync, nt)
            if t < n_slices:
                dZt = ws.dZ[t, :, :nout]
                ls, nc = _sparse_dz(loss, t, net, ex, Zp, dZt, c_start, C, weight_sum)
                loss_sum += ls
                correct += nc
                if not chunked:
                    _sparse_step(act, t, nt, net, ex, step, d, ws, start, B, dZt, grouped, cur)
                else:
                    _sparse_accumulate(act, t, nt, net, ex, ws, c_start, C, dZt, c0 == 0, grouped, cur)
                    if c0 + C == B:
                        _sparse_apply(t, nt, net, step, adam, d, ws)
            parity ^= 1
            c0 += C
        start += B
    return loss_sum, correct


# ---- the sparse epoch of several hidden layers (_deep_impl.h) ----


@_jit
def _deep_own(width, group, t, nt):
    """The columns (j0, j1) of the groups of `group` units of a layer of `width`
    (padded) units that thread t of nt owns (_deep_impl.h fm_deep_own)."""
    ng = (width + group - 1) // group
    g0, g1 = ng * t // nt, ng * (t + 1) // nt
    return min(g0 * group, width), min(g1 * group, width)


@_jit
def _deep_gather(H, r, j0, j1, s1, b, W, n_in, vals, av, idx, ai, k, lanes):
    """H[r, j0:j1] (rows of s1) = b + sum over the row's non-zeros of x WT_1[i, j0:j1],
    WT_1 in W as its panels (epochs.deep_panels), four lines at a time in
    registers (_gather_at)."""
    group = 4 * lanes
    for j in range(j0, j1, group):
        nl = min(j1 - j, group) // lanes
        h, w = r * s1 + j, j * n_in
        if nl == 4:
            _gather_at(H, h, b, j, W, w, group, 4, vals, av, idx, ai, k)
        elif nl == 3:
            _gather_at(H, h, b, j, W, w, group, 3, vals, av, idx, ai, k)
        elif nl == 2:
            _gather_at(H, h, b, j, W, w, group, 2, vals, av, idx, ai, k)
        else:
            _gather_at(H, h, b, j, W, w, group, 1, vals, av, idx, ai, k)


@_jit
def _deep_update(W, j0, j1, n_in, c, vals, av, idx, ai, k, D, r, s1, lanes):
    """WT_1[i, j0:j1] -= (c x) D[r, j0:j1] (rows of s1) over the row's non-zeros
    (i, x), WT_1 in W as its panels (_update_at)."""
    group = 4 * lanes
    for j in range(j0, j1, group):
        nl = min(j1 - j, group) // lanes
        w, d = j * n_in, r * s1 + j
        if nl == 4:
            _update_at(W, W, False, w, group, 4, c, vals, av, idx, ai, k, D, d)
        elif nl == 3:
            _update_at(W, W, False, w, group, 3, c, vals, av, idx, ai, k, D, d)
        elif nl == 2:
            _update_at(W, W, False, w, group, 2, c, vals, av, idx, ai, k, D, d)
        else:
            _update_at(W, W, False, w, group, 1, c, vals, av, idx, ai, k, D, d)


# fmt: off
@_jit
def _deep_grouped(W, j0, j1, n_in, c, mask, t, data, indptr, dense, order, first, C, D, s1, cur, lanes):
    # fmt: on
    """Each row of WT_1[:, j0:j1] (in W as its panels) that the chunk's examples
    order[first : first + C] touch, once: WT_1[i, j0:j1] -= c sum_r x_ri D[r, j0:j1]
    (rows of s1) over the examples with bits in thread t's mask, cleared on the
    last group (_grouped_at)."""
    group = 4 * lanes
    for j in range(j0, j1, group):
        nl = min(j1 - j, group) // lanes
        last, w = j + group >= j1, j * n_in
        if nl == 4:
            _grouped_at(W, W, w, group, 4, c, False, mask, t, last, data, indptr, dense, n_in, order, first, C, D, j,
                        s1, cur)
        elif nl == 3:
            _grouped_at(W, W, w, group, 3, c, False, mask, t, last, data, indptr, dense, n_in, order, first, C, D, j,
                        s1, cur)
        elif nl == 2:
            _grouped_at(W, W, w, group, 2, c, False, mask, t, last, data, indptr, dense, n_in, order, first, C, D, j,
                        s1, cur)
        else:
            _grouped_at(W, W, w, group, 1, c, False, mask, t, last, data, indptr, dense, n_in, order, first, C, D, j,
                        s1, cur)


@_jit
def _deep_activate(act, h, j0, j1, n):
    """h[j0:j1] = f(h) for the live units (< n), 0 for the padded ones."""
    live = min(j1, n)
    if live > j0:
        _activate(act, h[j0:live])
    for j in range(max(live, j0), j1):
        h[j] = 0


@_jit
def _grad_times(act, d, h):
    """d *= f'(h) in place, f' written from the outputs h."""
    if act == 0:
        for j in range(d.size):
            d[j] *= _tanh_grad(h[j])
    elif act == 1:
        for j in range(d.size):
            d[j] *= _relu_grad(h[j])
    elif act == 2:
        for j in range(d.size):
            d[j] *= _logistic_grad(h[j])
    elif act == 3:
        for j in range(d.size):
            d[j] *= _identity_grad(h[j])


@_jit
def _axpy(y, yo, a, x, xo, n):
    """y[yo : yo + n] += a x[xo : xo + n] (on slices: indexed by ``yo + j``, each
    load would check for a negative index, and the loop would not vectorise)"""
    ys, xs = y[yo : yo + n], x[xo : xo + n]
    for j in range(n):
        ys[j] += a * xs[j]


@_jit_fast_reduce
def _dot_flat(x, xo, y, yo, n):
    """x[xo : xo + n] . y[yo : yo + n] (the order may change: it vectorises, the same
    in every thread)"""
    xs, ys = x[xo : xo + n], y[yo : yo + n]
    acc = x.dtype.type(0)
    for j in range(n):
        acc += xs[j] * ys[j]
    return acc


@_jit
def _deep_thread(act, loss, t, nt, net, ex, step, ws):
    """Thread t's share of an epoch of a network of several hidden layers
    (_deep_impl.h fm_deep_thread, which describes the layout and the threads'
    meetings): ``net`` an epochs.DeepNet, ``ex`` the examples (_Rows), ``ws`` an
    epochs.DeepWork. Returns thread t's (loss_sum, correct) of the epoch."""
    net, ex, ws = _borrowed(net), _borrowed(ex), _borrowed(ws)
    W, bias, n, s, w_off, b_off = net.W, net.b, net.n, net.s, net.w_off, net.b_off
    data, indices, indptr, dense, order = ex.data, ex.indices, ex.indptr, ex.dense, ex.order
    L = n.size - 1
    n_in, s1, nout, sout = n[0], s[1], n[L], s[L]
    rows = ws.rows
    lanes = _LINE // W.itemsize
    group = 4 * lanes
    zero, one = W.dtype.type(0), W.dtype.type(1)
    mu = step.momentum
    moments = _second_moment(step)
    momentum = mu != 0 or step.kind != 0
    plain = not momentum and step.decay == 0
    # the first layer's weights (WT_1 as its panels), activations and dl/dh~ start each array
    G1 = ws.GW if ws.GW.size else W
    Gb = ws.Gb if ws.Gb.size else bias
    # this thread's dl/dz rows and its copy of the output biases (state, gradient)
    own = ws.own[t]
    own[:] = 0
    dz0, by0 = 0, rows * sout
    vb0, sb0, gb0 = by0 + sout, by0 + 2 * sout, by0 + 3 * sout
    for o in range(nout):
        own[by0 + o] = bias[b_off[L - 1] + o]
        own[vb0 + o] = net.Vb[b_off[L - 1] + o] if momentum else zero
        own[sb0 + o] = net.Sb[b_off[L - 1] + o] if moments else zero
    ws_int, ws_char, ws_real = np.zeros(6, np.int32), np.zeros(2, np.uint8), np.zeros(2, W.dtype)
    cur = np.empty(rows, np.int64)  # each example's next non-zero, for the grouped update
    loss_sum = 0.0
    correct = 0.0
    parity = 0
    start = 0
    N = order.size
    while start < N:
        B = min(ex.batch, N - start)
        weight_sum = _batch_weight(ex.weights, ex.has_weights, order, start, B)
        decay = step.decay
        if step.decay_by_weight_sum:
            decay = W.dtype.type(step.decay / weight_sum) if weight_sum > 0 else zero
        summed = not plain or B > rows
        adam = _adam_at(step, start // ex.batch, W)
        for c0 in range(0, B, rows):
            C = min(rows, B - c0)
            first = start + c0
            gemm = ws.gemm_min > 0 and C >= ws.gemm_min  # the dense layers by GEMMs, one per group
            # forward: the first layer from the non-zero inputs; where the chunk's rows
            # of it are updated once each, the gather marks each example's inputs
            j0, j1 = _deep_own(s1, group, t, nt)
            grouped = ws.mask.size > 0 and C >= ws.group_min and j1 > j0
            for r in range(C):
                av, ai, k = _row_of(indptr, dense, n_in, order[first + r])
                _deep_gather(ws.H, r, j0, j1, s1, bias, W, n_in, data, av, indices, ai, k, lanes)
                if grouped:
                    _mark_inputs(ws.mask, t, r, indices, ai, k)
                _deep_activate(act, ws.H[r * s1 : (r + 1) * s1], j0, j1, n[1])
            # forward: the dense layers, partial sums per group of the layer below
            for kk in range(2, L + 1):
                sin, sk = s[kk - 1], s[kk]
                i0, i1 = _deep_own(sin, group, t, nt)
                h_in, w_at = ws.h_off[kk - 2], w_off[kk - 1]
                p_at = parity * ws.P.shape[1] + ws.p_off[kk - 1]
                P = ws.P.reshape(-1)
                n_groups = (sin + group - 1) // group
                for g in range(i0 // group, (i1 + group - 1) // group if i1 > i0 else 0):
                    a, e = g * group, min(g * group + group, sin)
                    if gemm:
                        # fmt: off
                        _gemm(False, False, C, sk, e - a, one, ws.H[h_in + a :], sin, W[w_at + a * sk :], sk, zero,
                              P[p_at + g * rows * sk :], sk, ws_int, ws_char, ws_real)
                        # fmt: on
                        continue
                    for r in range(C):
                        p = p_at + (g * rows + r) * sk
                        P[p : p + sk] = zero
                        for i in range(a, e):
                            _axpy(P, p, ws.H[h_in + r * sin + i], W, w_at + i * sk, sk)
                if nt > 1:
                    _barrier(ws.sync, nt)
                if kk < L:
                    q0, q1 = _deep_own(sk, group, t, nt)
                    h_at, bk = ws.h_off[kk - 1], b_off[kk - 1]
                    for r in range(C):
                        h = h_at + r * sk
                        ws.H[h + q0 : h + q1] = bias[bk + q0 : bk + q1]
                        for g in range(n_groups):
                            _axpy(ws.H, h + q0, one, P, p_at + (g * rows + r) * sk + q0, q1 - q0)
                        _deep_activate(act, ws.H[h : h + sk], q0, q1, n[kk])
                else:  # the logits, the loss and dl/dz of every row, in every thread
                    Z = own[dz0 : dz0 + rows * sout].reshape((rows, sout))[:, :nout]
                    for r in range(C):
                        for o in range(nout):
                            Z[r, o] = own[by0 + o]
                        for g in range(n_groups):
                            _axpy(own, dz0 + r * sout, one, P, p_at + (g * rows + r) * sk, nout)
                        row = order[first + r]
                        w = ex.weights[row] if ex.has_weights else 1.0
                        scale = W.dtype.type(w / weight_sum) if weight_sum > 0 else zero
                        rl, rc = _row_loss_grad(loss, Z, r, ex.labels, ex.targets, row, Z, scale)
                        loss_sum += w * rl
                        correct += w * rc
            parity ^= 1
            # backward, from the top: d_{k-1} of the rows this thread owns, then their update
            coef = one if summed else -step.lr
            target = ws.GW if summed else W
            for kk in range(L, 1, -1):
                if kk < L and nt > 1:
                    _barrier(ws.sync, nt)
                sin, sk = s[kk - 1], s[kk]
                i0, i1 = _deep_own(sin, group, t, nt)
                h_in, w_at = ws.h_off[kk - 2], w_off[kk - 1]
                dk = own if kk == L else ws.D
                d_at = dz0 if kk == L else ws.h_off[kk - 1]
                for g in range(i0 // group, (i1 + group - 1) // group if i1 > i0 else 0):
                    a, e = g * group, min(g * group + group, sin)
                    if gemm:
                        # fmt: off
                        _gemm(False, True, C, e - a, sk, one, dk[d_at:], sk, W[w_at + a * sk :], sk, zero,
                              ws.D[h_in + a :], sin, ws_int, ws_char, ws_real)
                        # fmt: on
                    else:
                        for r in range(C):
                            for i in range(a, e):
                                ws.D[h_in + r * sin + i] = _dot_flat(dk, d_at + r * sk, W, w_at + i * sk, sk)
                    for r in range(C):
                        at = h_in + r * sin
                        _grad_times(act, ws.D[at + a : at + e], ws.H[at + a : at + e])
                    if gemm:
                        # fmt: off
                        _gemm(True, False, e - a, sk, C, coef, ws.H[h_in + a :], sin, dk[d_at:], sk, one,
                              target[w_at + a * sk :], sk, ws_int, ws_char, ws_real)
                        # fmt: on
                        continue
                    for i in range(a, e):
                        for r in range(C):
                            _axpy(target, w_at + i * sk, coef * ws.H[h_in + r * sin + i], dk, d_at + r * sk, sk)
                if kk == L:  # the output biases, in every thread's copy
                    for r in range(C):
                        _axpy(own, gb0 if summed else by0, coef, own, dz0 + r * sout, nout)
                else:
                    q0, q1 = _deep_own(sk, group, t, nt)
                    for r in range(C):
                        _axpy(Gb if summed else bias, b_off[kk - 1] + q0, coef, ws.D, ws.h_off[kk - 1] + r * sk + q0,
                              q1 - q0)  # fmt: skip
            # the first layer's rows of the non-zero inputs, and its biases
            c = -one if summed else step.lr
            if grouped:  # each touched row once, with the sum over the chunk's examples
                # fmt: off
                _deep_grouped(G1 if summed else W, j0, j1, n_in, c, ws.mask, t, data, indptr, dense, order, first, C,
                              ws.D, s1, cur, lanes)
                # fmt: on
            for r in range(C):
                if not grouped:
                    av, ai, k = _row_of(indptr, dense, n_in, order[first + r])
                    _deep_update(G1 if summed else W, j0, j1, n_in, c, data, av, indices, ai, k, ws.D, r, s1, lanes)
                _axpy(Gb if summed else bias, j0, -c, ws.D, r * s1 + j0, j1 - j0)
        start += B
        if not summed:
            continue
        # the step (_step_vector) from the batch's gradient, on what this thread owns
        V, S = net.VW if momentum else W, net.SW if moments else W
        Vb, Sb = net.Vb if momentum else bias, net.Sb if moments else bias
        for kk in range(1, L + 1):
            q0, q1 = _deep_own(s[kk], group, t, nt)
            w_at = w_off[kk - 1]
            if kk == 1:  # this thread's panels, one block
                at = w_at + q0 * n_in
                size = -(-(q1 - q0) // group) * group * n_in
                _step_vector(W, V, S, at, ws.GW[at : at + size], size, step, adam, decay)
                ws.GW[at : at + size] = zero
            else:
                i0, i1 = _deep_own(s[kk - 1], group, t, nt)
                at, size = w_at + i0 * s[kk], (i1 - i0) * s[kk]
                _step_vector(W, V, S, at, ws.GW[at : at + size], size, step, adam, decay)
                ws.GW[at : at + size] = zero
            if kk < L:
                at = b_off[kk - 1] + q0
                _step_vector(bias, Vb, Sb, at, ws.Gb[at : at + q1 - q0], q1 - q0, step, adam, zero)
                ws.Gb[at : at + q1 - q0] = zero
        # own[sout:] and own[2 sout:] put the state where _step_vector reads it: at by0 + j
        _step_vector(own, own[sout:], own[2 * sout :], by0, own[gb0 : gb0 + nout], nout, step, adam, zero)
        own[gb0 : gb0 + nout] = zero
    if t == 0:  # every thread's copy of the output biases is the same
        for o in range(nout):
            bias[b_off[L - 1] + o] = own[by0 + o]
            if momentum:
                net.Vb[b_off[L - 1] + o] = own[vb0 + o]
            if moments:
                net.Sb[b_off[L - 1] + o] = own[sb0 + o]
    return loss_sum, correct


@_jit
def _bias_act(act, H, b):
    """H = f(H + b), b broadcast over the rows."""
    for r in range(H.shape[0]):
        for j in range(H.shape[1]):
            H[r, j] += b[j]
    _activate(act, H.reshape(H.size))  # one flat view, not one per row


@_jit
def _step_backward(act, Xb, Hb, dZb, dHb, Wh, bh, Wy, by, lr, ws_int, ws_char, ws_real):
    """dH = (dZ Wy) * f'(H) before Wy changes, then every parameter steps in place."""
    B, n_in = Xb.shape
    nh = Wh.shape[0]
    nout = Wy.shape[0]
    t = Wh.dtype.type
    _gemm(False, False, B, nh, nout, t(1), dZb, nout, Wy, nh, t(0), dHb, nh, ws_int, ws_char, ws_real)
    for r in range(B):
        _act_grad(act, dHb[r], Hb[r], bh, -lr)
    _gemm(True, False, nout, nh, B, -lr, dZb, nout, Hb, nh, t(1), Wy, nh, ws_int, ws_char, ws_real)
    _gemm(True, False, nh, n_in, B, -lr, dHb, nh, Xb, n_in, t(1), Wh, n_in, ws_int, ws_char, ws_real)
    for r in range(B):
        for o in range(nout):
            by[o] -= lr * dZb[r, o]


@_jit
def _blas_epoch(act, loss, net, ex, step, ws, ws_int, ws_char, ws_real):
    """The BLAS epoch of _blas_impl.h on one thread: the network ``net``
    (epochs.BlasNet) with the codes ``act`` and ``loss``, the examples ``ex``
    (_Batches), the step (_Step), the workspace ``ws`` (epochs.BlasWork); the same
    blocks of hidden units as the C kernels' threads take (one GEMM each per step),
    their partial logits added in block order."""
    Wh, bh, Wy, by, VWh, Vbh, VWy, Vby = net.Wh, net.bh, net.Wy, net.by, net.VWh, net.Vbh, net.VWy, net.Vby
    SWh, Sbh, SWy, Sby = net.SWh, net.Sbh, net.SWy, net.Sby
    X, perm, block_unit, H, dH, Zp, dZ, gb = ex.X, ex.order, net.block_unit, ws.H, ws.dH, ws.Zp, ws.dZ, ws.gb
    lr, mu = step.lr, step.momentum
    n_ex = perm.size
    n_in = X.shape[1]
    nh = Wh.shape[0]
    nout = Wy.shape[0]
    nb = block_unit.size - 1
    t = Wh.dtype.type
    zero = t(0)
    loss_sum = 0.0
    correct = 0.0
    start = 0
    while start < n_ex:
        B = min(ex.batch, n_ex - start)
        in_order = True
        for b in range(1, B):
            if perm[start + b] != perm[start] + b:
                in_order = False
                break
        if in_order:
            Xb = X[perm[start] : perm[start] + B]
        else:
            for b in range(B):
                ws.Xb[0, b] = X[perm[start + b]]
            Xb = ws.Xb[0, :B]
        for j in range(nb):
            u0, u1 = block_unit[j], block_unit[j + 1]
            w = u1 - u0
            Hj = H[j].reshape(H.shape[1] * H.shape[2])[: B * w].reshape((B, w))
            _gemm(False, True, B, w, n_in, t(1), Xb, n_in, Wh[u0:], n_in, t(0), Hj, w, ws_int, ws_char, ws_real)
            _bias_act(act, Hj, bh[u0:u1])
            _gemm(False, True, B, nout, w, t(1), Hj, w, Wy[:, u0:], nh, t(0), Zp[j], nout, ws_int, ws_char, ws_real)
        weight_sum = _batch_weight(ex.weights, ex.has_weights, perm, start, B)
        d = step.decay
        if step.decay_by_weight_sum:
            d = t(step.decay / weight_sum) if weight_sum > 0 else zero
        plain = step.kind == 0 and mu == 0 and d == 0
        adam = _adam_at(step, start // ex.batch, Wh)
        state = step.kind != 0 or mu != 0
        SWy_ = SWy if _second_moment(step) else Wy
        for b in range(B):
            for o in range(nout):
                z = by[o]
                for j in range(nb):
                    z += Zp[j, b, o]
                dZ[b, o] = z
            r = perm[start + b]
            wt = ex.weights[r] if ex.has_weights else 1.0
            scale = t(wt / weight_sum) if weight_sum > 0 else zero
            rl, rc = _row_loss_grad(loss, dZ, b, ex.labels, ex.targets, r, dZ, scale)
            loss_sum += wt * rl
            correct += wt * rc
        for j in range(nb):
            u0, u1 = block_unit[j], block_unit[j + 1]
            w = u1 - u0
            Hj = H[j].reshape(H.shape[1] * H.shape[2])[: B * w].reshape((B, w))
            dHj = dH[j].reshape(dH.shape[1] * dH.shape[2])[: B * w].reshape((B, w))
            _gemm(False, False, B, w, nout, t(1), dZ, nout, Wy[:, u0:], nh, t(0), dHj, w, ws_int, ws_char, ws_real)
            if plain:  # f' and the step of bh in one pass per row, then the weights' steps
                for r in range(B):
                    _act_grad(act, dHj[r], Hj[r], bh[u0:u1], -lr)
                _gemm(True, False, nout, w, B, -lr, dZ, nout, Hj, w, t(1), Wy[:, u0:], nh, ws_int, ws_char, ws_real)
                _gemm(True, False, w, n_in, B, -lr, dHj, w, Xb, n_in, t(1), Wh[u0:], n_in, ws_int, ws_char, ws_real)
                continue
            GWy, GWh = ws.GWy, ws.GWh
            for c in range(w):
                gb[c] = zero
            for r in range(B):  # f' and the sum of bh's gradient in one pass per row
                _act_grad(act, dHj[r], Hj[r], gb[:w], t(1))
            _gemm(True, False, nout, w, B, t(1), dZ, nout, Hj, w, t(0), GWy[:, u0:], nh, ws_int, ws_char, ws_real)
            for o in range(nout):
                _step_row(Wy, VWy if state else Wy, SWy_, o, u0, GWy[:, u0:], o, w, step, adam, d)
            _step_vector(bh, Vbh, Sbh, u0, gb, w, step, adam, zero)
            _gemm(True, False, w, n_in, B, t(1), dHj, w, Xb, n_in, t(0), GWh[u0:], n_in, ws_int, ws_char, ws_real)
            VWh_, SWh_ = VWh if state else Wh, SWh if _second_moment(step) else Wh
            for c in range(w):
                _step_row(Wh, VWh_, SWh_, u0 + c, 0, GWh, u0 + c, n_in, step, adam, d)
        if plain:
            for b in range(B):
                for o in range(nout):
                    by[o] -= lr * dZ[b, o]
        else:
            for o in range(nout):
                gb[o] = zero
            for b in range(B):
                for o in range(nout):
                    gb[o] += dZ[b, o]
            _step_vector(by, Vby, Sby, 0, gb, nout, step, adam, zero)
        start += B
    return loss_sum, correct


def _gemm_workspace(dtype):
    return np.zeros(6, np.int32), np.zeros(2, np.uint8), np.zeros(2, dtype)


@_jit
def _loss_grad(Z, labels, T, dZ, loss):
    scale = Z.dtype.type(1) / Z.dtype.type(Z.shape[0])
    loss_sum = 0.0
    n_correct = 0
    for r in range(Z.shape[0]):
        rl, rc = _row_loss_grad(loss, Z, r, labels, T, r, dZ, scale)
        loss_sum += rl
        n_correct += rc
    return loss_sum, n_correct


# ---- what the compiled epochs take: epochs.py's layouts, their dtypes made exact ----


class _Rows(NamedTuple):
    """The examples of a sparse epoch (_fused.h fm_rows): CSR rows (data, indices,
    indptr) or dense ones (dense: indptr unused), their labels and sample weights
    (has_weights False: all 1), the order and the batch size."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    dense: bool
    labels: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    has_weights: bool
    order: np.ndarray
    batch: int


class _Batches(NamedTuple):
    """The examples of a BLAS epoch (_fused.h fm_batches): the rows of X in order."""

    X: np.ndarray
    labels: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    has_weights: bool
    order: np.ndarray
    batch: int


class _Step(NamedTuple):
    """epochs.Step in the parameters' dtype (_fused_decl.h fm_step)."""

    lr: np.floating
    momentum: np.floating
    decay: np.floating
    nesterov: bool
    decay_by_weight_sum: bool
    kind: int  # the optimizer's code
    sklearn_eps: bool
    beta1: np.floating
    beta2: np.floating
    eps: np.floating
    steps: int


def _step(opt, dtype):
    if opt.code not in OPTIMIZER_CODES:
        raise ValueError(f"unknown optimizer code {opt.code!r}; known: {sorted(OPTIMIZER_CODES)}")
    with np.errstate(over="ignore"):  # a learning rate beyond float32's range is inf, as in C
        numbers = [dtype.type(x) for x in (opt.lr, opt.momentum, opt.decay)]
        adam = [dtype.type(x) for x in (opt.beta1, opt.beta2, opt.eps)]
    flags = (bool(opt.nesterov), bool(opt.decay_by_weight_sum), int(opt.code), bool(opt.sklearn_eps))
    return _Step(*numbers, *flags, *adam, int(opt.steps))


def _weights(weights, dtype):
    return (np.zeros(0, dtype), False) if weights is None else (weights, True)


# ---- the primitives (the contract of fastmlp._kernels) ----


def activation(x, act):
    """f(x) of a 1-D array for the activation code ``act``, with the approximations
    the kernels use."""
    _check_codes(_codes(act, 0))
    out = np.array(x, copy=True)
    _call(_activate, act, out)
    return out


def _codes(act, loss):
    from .epochs import Codes

    return Codes(act, loss)


def _times_transposed(A, W):
    """A W^T by one GEMM, into a new array."""
    out = np.empty((A.shape[0], W.shape[0]), dtype=W.dtype)
    t = W.dtype.type
    n_in = A.shape[1]
    _call(_gemm, False, True, A.shape[0], W.shape[0], n_in, t(1), A, n_in, W, n_in, t(0), out, W.shape[0],
          *_gemm_workspace(W.dtype))  # fmt: skip
    return out


def forward_hidden(X, Wh, bh, act):
    """H = f(X Wh^T + bh)."""
    _check_codes(_codes(act, 0))
    H = _times_transposed(X, Wh)
    _call(_bias_act, act, H, bh)
    return H


def forward_logits(H, Wy, by):
    """Z = H Wy^T + by."""
    Z = _times_transposed(H, Wy)
    Z += by
    return Z


def _targets(y, dtype):
    """(labels, target values) of an epoch's targets ``y``: class labels (n,) or
    target values (n, n_out); the other an empty stand-in of its type."""
    if y.ndim == 1:
        return y, np.zeros((0, 1), dtype)
    return np.zeros(0, np.intp), y


def loss_grad(Z, y, loss):
    """(dZ, loss_sum, n_correct): dZ = dl/dZ / B, the summed loss, the correct count;
    y the labels (B,) or the target values (B, n_out) in Z's dtype."""
    _check_codes(_codes(0, loss))
    _check_targets(loss, y)
    dZ = np.empty_like(Z)
    return (dZ, *_call(_loss_grad, Z, *_targets(y, Z.dtype), dZ, loss))


def backward_update(X, H, dZ, P, lr, act):
    """In place on the block P: the SGD step of every parameter; returns dH = (dZ Wy) * f'(H)."""
    _check_codes(_codes(act, 0))
    dtype = P.Wh.dtype
    dH = np.empty((X.shape[0], P.Wh.shape[0]), dtype=dtype)
    with np.errstate(over="ignore"):
        lr = dtype.type(lr)
    _call(_step_backward, act, X, H, dZ.copy(), dH, *P, lr, *_gemm_workspace(dtype))
    return dH


def max_threads():
    """The threads a training may use: those OpenMP would use in this thread (the
    Cython kernels' runtime, which threadpoolctl's limits and OMP_NUM_THREADS
    set), where it loads; else the cores this process may use."""
    try:
        from . import _cy
    except ImportError:
        from .epochs import available_cpus

        return available_cpus()
    return _cy.max_threads()


def sparse_epoch(P, rows, labels, weights, order, batch, opt, codes, work, n_threads):
    """Mini-batch SGD over the batches of rows[order] on the sparse path, in place on
    the block P (epochs.SparseNet), with the step ``opt``, the network's ``codes``
    and the sample ``weights``, on ``n_threads`` threads: this thread and
    n_threads - 1 others, each running the compiled loop on its slices without the
    GIL and meeting the others once per batch (or chunk of one) at an atomic spin
    barrier. Returns (loss_sum, correct)."""
    if len(order) == 0:
        return 0.0, 0.0
    _check_codes(codes)
    _check_targets(codes.loss, labels)
    dtype = P.WhT.dtype
    if opt.state_blocks > (P.VWhT.size > 0) + (P.SWhT.size > 0):
        raise ValueError("the parameter block has no room for the step's state (velocities, moments)")
    if opt.optimizer != "sgd" and not work.gWhT.size:
        raise ValueError(f"a {opt.optimizer} step needs the workspace's gWhT: every batch's gradient is summed")
    if work.H.shape[1] < min(batch, len(order)) and not work.gWhT.size:
        raise ValueError("a batch larger than the workspace's rows needs the workspace's gWhT")
    check_mask(P, work)
    dense = rows.indptr is None
    n_chunks = -(-len(order) // work.H.shape[1])
    if work.cptr.size and (
        dense or not work.gWhT.size or batch < len(order) or work.cptr.shape != (n_chunks, P.WhT.shape[1] + 1)
    ):
        raise ValueError("grouped chunks (cptr) need CSR rows, one full batch in chunks, and a row per chunk")
    ex = _Rows(
        rows.data,
        rows.indices,
        np.zeros(1, np.int64) if dense else rows.indptr,
        dense,
        *_targets(labels, dtype),
        *_weights(weights, dtype),
        order,
        min(batch, len(order)),
    )
    # the workspace's optional arrays in the dimensions and dtypes of their full forms
    ws = work._replace(
        gWhT=work.gWhT if work.gWhT.size else np.zeros((0, 1, 1), dtype),
        cptr=work.cptr.reshape(-1),
        cval=work.cval if work.cval.size else np.zeros(0, dtype),
        mask=work.mask if work.mask.size else np.zeros((0, 1, 1), np.uint64),
        group_min=max(1, int(work.group_min)),
    )
    return _threads(_sparse_thread, (codes.act, codes.loss), (P, ex, _step(opt, dtype), ws), max(1, int(n_threads)))


def deep_epoch(P, rows, labels, weights, order, batch, opt, codes, work, n_threads):
    """Mini-batch SGD of a network of several hidden layers over the batches of
    rows[order] on the sparse path, in place on the block P (epochs.DeepNet), with
    the step ``opt``, the network's ``codes`` and the sample ``weights``, on
    ``n_threads`` threads (at most the workspace's) meeting at atomic spin barriers
    (_deep_thread). Returns (loss_sum, correct)."""
    if len(order) == 0:
        return 0.0, 0.0
    _check_codes(codes)
    _check_targets(codes.loss, labels)
    dtype = P.W.dtype
    batch = min(batch, len(order))
    summed = not opt.plain or work.rows < batch
    states = (P.VW.size > 0) + (P.SW.size > 0)
    if opt.state_blocks > states or (summed and work.GW.size == 0) or work.own.shape[0] < n_threads:
        raise ValueError("the parameter block or workspace lacks what the step needs (velocities, gradients)")
    dense = rows.indptr is None
    indptr = np.zeros(1, np.int64) if dense else rows.indptr
    targets = _targets(labels, dtype)
    ex = _Rows(rows.data, rows.indices, indptr, dense, *targets, *_weights(weights, dtype), order, batch)
    ws = work._replace(
        GW=work.GW if work.GW.size else np.zeros(0, dtype),
        Gb=work.Gb if work.Gb.size else np.zeros(0, dtype),
        rows=int(work.rows),
    )
    args = (codes.act, codes.loss)
    rest = (P, ex, _step(opt, dtype), ws)
    return _threads(_deep_thread, args, rest, max(1, int(n_threads)))


def _threads(kernel, first, rest, n_threads):
    """kernel(*first, t, n_threads, *rest) on threads t = 0 .. n_threads - 1 (this one
    and n_threads - 1 others), without the GIL; thread 0's result, after every
    thread is back (an exception in any is raised here)."""
    if n_threads == 1:
        return _call(kernel, *first, 0, 1, *rest)
    results = [None] * n_threads

    def run(t):
        try:
            results[t] = _call(kernel, *first, t, n_threads, *rest)
        except BaseException as exc:  # surfaced below, after every thread is back
            results[t] = exc

    others = [threading.Thread(target=run, args=(t,)) for t in range(1, n_threads)]
    for th in others:
        th.start()
    run(0)
    for th in others:
        th.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results[0]


@_jit
def _group_chunks(data, indices, indptr, order, rows, cptr, crow, cval, cursor):
    """The non-zeros of the CSR rows order[...], `rows` examples at a time, grouped
    by input within each chunk (_sparse_impl.h fm_group_chunks): chunk c's entries
    of input i are cptr[c, i] .. cptr[c, i + 1] of crow (the example's place in its
    chunk) and cval (its value), in example order. cursor: n_in scratch."""
    n_in = cptr.shape[1] - 1
    base = 0
    for c in range(cptr.shape[0]):
        c0 = c * rows
        C = min(rows, order.size - c0)
        for i in range(n_in + 1):
            cptr[c, i] = 0
        for b in range(C):
            r = order[c0 + b]
            for e in range(indptr[r], indptr[r + 1]):
                cptr[c, indices[e] + 1] += 1
        cptr[c, 0] = base
        for i in range(n_in):
            cptr[c, i + 1] += cptr[c, i]
            cursor[i] = cptr[c, i]
        for b in range(C):
            r = order[c0 + b]
            for e in range(indptr[r], indptr[r + 1]):
                p = cursor[indices[e]]
                cursor[indices[e]] += 1
                crow[p] = b
                cval[p] = data[e]
        base = cptr[c, n_in]


def group_chunks(rows, order, chunk_rows, n_in):
    """The non-zeros of the CSR ``rows`` (epochs.Rows) of examples ``order``,
    ``chunk_rows`` at a time, grouped by input within each chunk (_group_chunks):
    (cptr int64 (n_chunks, n_in + 1), crow uint16, cval)."""
    if rows.indptr is None or not 0 < chunk_rows <= 65536:
        raise ValueError("grouping needs CSR rows and chunks of at most 65536 examples")
    order = np.ascontiguousarray(order, dtype=np.intp)
    n_chunks = -(-len(order) // chunk_rows)
    nnz = int((rows.indptr[order + 1] - rows.indptr[order]).sum())
    cptr = np.empty((n_chunks, n_in + 1), np.int64)
    crow = np.empty(nnz, np.uint16)
    cval = np.empty(nnz, rows.data.dtype)
    _call(_group_chunks, rows.data, rows.indices, rows.indptr, order, int(chunk_rows), cptr, crow, cval,
          np.empty(n_in, np.int64))
    return cptr, crow, cval


@_jit
def _dense_to_csr(X, indptr, indices, data):
    for r in range(X.shape[0]):
        k = indptr[r]
        for i in range(X.shape[1]):
            if X[r, i] != 0:
                indices[k] = i
                data[k] = X[r, i]
                k += 1


@_jit
def _row_counts(X, counts):
    for r in range(X.shape[0]):
        c = 0
        for i in range(X.shape[1]):
            c += X[r, i] != 0
        counts[r + 1] = c


def dense_to_csr(X):
    """(data, indices int32, indptr int64): the non-zero entries of X, row by row."""
    counts = np.zeros(X.shape[0] + 1, np.int64)
    _call(_row_counts, X, counts)
    indptr = np.cumsum(counts)
    data, indices = np.empty(indptr[-1], X.dtype), np.empty(indptr[-1], np.int32)
    _call(_dense_to_csr, X, indptr, indices, data)
    return data, indices, indptr


def blas_epoch(P, X, labels, weights, order, batch, opt, codes, work, n_threads):
    """Mini-batch SGD over the batches of X[order] with GEMMs, in place on the block P
    (epochs.BlasNet), with the step ``opt``, the network's ``codes`` and the sample
    ``weights``, on one thread whatever ``n_threads`` says (the same blocks the
    Cython kernels' threads take); returns (loss_sum, correct)."""
    if len(order) == 0:
        return 0.0, 0.0
    _check_codes(codes)
    _check_targets(codes.loss, labels)
    dtype = P.Wh.dtype
    if not opt.plain and work.GWh.size == 0:
        raise ValueError("the workspace has no room for the gradients a step other than plain SGD needs")
    if opt.state_blocks > (P.VWh.size > 0) + (P.SWh.size > 0):
        raise ValueError("the parameter block has no room for the step's state (velocities, moments)")
    ex = _Batches(X, *_targets(labels, dtype), *_weights(weights, dtype), order, min(batch, len(order)))
    return _call(_blas_epoch, codes.act, codes.loss, P, ex, _step(opt, dtype), work, *_gemm_workspace(dtype))
