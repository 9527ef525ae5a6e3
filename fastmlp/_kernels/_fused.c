/* Instantiates the hand-written kernels for float and double: _ops.h (the
 * per-element ops of the activations, losses and SGD step), _fused_impl.h (the
 * fused steps around the GEMMs), _sparse_impl.h (the sparse epoch) and
 * _blas_impl.h (the BLAS epoch).
 *
 * Wheels must run on any x86-64, so nothing here is compiled for the build
 * machine's CPU. Where gcc supports it (11 or later, x86-64 Linux), the kernels
 * are compiled three times, for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and
 * the baseline, each with vector types of its own registers' width, and each
 * exported function calls the build for the CPU it runs on (fm_clone_level).
 * Elsewhere they are compiled once, for the compiler's target: with gcc in
 * 16-byte vectors, with clang in vectors of a cache line (which it splits into
 * the target's registers well).
 * Threads come from OpenMP where the compiler has it (setup.py finds out), else
 * the kernels run on one thread.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "_fused.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(_MSC_VER) && !defined(__clang__)
#define restrict __restrict
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 11
#define FM_HAS_LEVELS 1
#endif
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h> /* the compress and shuffle instructions of the x86 levels (dense -> CSR) */
#endif
/* the exported kernels of one level, called by the dispatchers at the end */
#define FM_LEVEL_FN static

/* gcc and clang's vector types: a cache line of values in registers */
#if defined(__GNUC__) || defined(__clang__)
#define FM_VECTORS 1
#else
#define FM_VECTORS 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FM_INLINE inline __attribute__((always_inline))
#else
#define FM_INLINE inline
#endif

/* A barrier of the n threads of an epoch, whose state `sync` (two cache lines,
 * zero-filled before the first use) lives in its workspace. The waits are short
 * (one batch's work, down to one example's), so it spins, far more cheaply than
 * an OpenMP barrier; after FM_SPINS checks it yields the core at each check
 * instead, so a machine with more threads than cores still moves. */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(_WIN32) && defined(_OPENMP)
#include <sched.h>
#define FM_SPIN_BARRIER 1
#define FM_SPINS 4096

static FM_INLINE void fm_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static FM_INLINE void fm_barrier(int32_t *sync, int n)
{
    int32_t *count = sync, *generation = sync + FM_LINE / sizeof(int32_t);
    const int32_t g = __atomic_load_n(generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(count, 1, __ATOMIC_ACQ_REL) == n) {
        __atomic_store_n(count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(generation, g + 1, __ATOMIC_RELEASE);
        return;
    }
    for (int spins = 0; __atomic_load_n(generation, __ATOMIC_ACQUIRE) == g;) {
        if (spins < FM_SPINS) {
            fm_pause();
            spins++;
        } else {
            sched_yield();
        }
    }
}
#endif

/* The threads of a parallel region meet here (no-op for one thread). */
#if FM_SPIN_BARRIER
#define FM_BARRIER(sync, n) do { if ((n) > 1) fm_barrier((sync), (n)); } while (0)
#elif defined(_OPENMP)
#define FM_BARRIER(sync, n) do { if ((n) > 1) { _Pragma("omp barrier") } } while (0)
#else
#define FM_BARRIER(sync, n) do { (void)(sync); } while (0)
#endif

/* The level whose build runs here: the best the CPU supports, or a lower one
 * asked for by FASTMLP_KERNEL_LEVEL (read at the first call) or by
 * fm_set_clone_level. */
static int fm_level_found = -1;

#ifdef FM_HAS_LEVELS
static int fm_best_level(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("x86-64-v4") ? 4 : __builtin_cpu_supports("x86-64-v3") ? 3 : 1;
}

/* The highest level the CPU supports that is no higher than `asked` (1, 3 or 4). */
static int fm_supported_level(int asked)
{
    const int best = fm_best_level();
    return asked >= 4 ? best : asked >= 3 ? (best >= 3 ? 3 : 1) : 1;
}
#endif

int fm_clone_level(void)
{
#ifdef FM_HAS_LEVELS
    int level = __atomic_load_n(&fm_level_found, __ATOMIC_RELAXED);
    if (level < 0) {
        const char *asked = getenv("FASTMLP_KERNEL_LEVEL");
        level = fm_supported_level(asked && asked[0] ? atoi(asked) : 4);
        __atomic_store_n(&fm_level_found, level, __ATOMIC_RELAXED);
    }
    return level;
#else
    (void)fm_level_found;
    return 0;
#endif
}

int fm_set_clone_level(int level)
{
#ifdef FM_HAS_LEVELS
    __atomic_store_n(&fm_level_found, fm_supported_level(level), __ATOMIC_RELAXED);
#else
    (void)level;
#endif
    return fm_clone_level();
}

/* Whether a code is in a table of _fused.h (fm_valid_act, fm_valid_loss,
 * fm_valid_opt), and its name (fm_activation_name, fm_loss_name,
 * fm_optimizer_name; NULL for an unknown code). */
#define FM_CASE_LABEL(code, name) case code:
#define FM_CASE_NAME(code, name) case code: return #name;
#define FM_TABLE_LOOKUPS(TABLE, valid, name_of)                                                    \
    static int valid(int code)                                                                     \
    {                                                                                              \
        switch (code) {                                                                            \
            TABLE(FM_CASE_LABEL)                                                                   \
            return 1;                                                                              \
        default:                                                                                   \
            return 0;                                                                              \
        }                                                                                          \
    }                                                                                              \
    const char *name_of(int code)                                                                  \
    {                                                                                              \
        switch (code) {                                                                            \
            TABLE(FM_CASE_NAME)                                                                    \
        default:                                                                                   \
            return NULL;                                                                           \
        }                                                                                          \
    }
FM_TABLE_LOOKUPS(FM_ACTIVATIONS, fm_valid_act, fm_activation_name)
FM_TABLE_LOOKUPS(FM_LOSSES, fm_valid_loss, fm_loss_name)
FM_TABLE_LOOKUPS(FM_OPTIMIZERS, fm_valid_opt, fm_optimizer_name)
#undef FM_TABLE_LOOKUPS
#undef FM_CASE_NAME
#undef FM_CASE_LABEL

/* FM_OK, or the error of the first unknown code. */
static int fm_check_codes(int act, int loss, int opt)
{
    return !fm_valid_act(act) ? FM_ERR_ACT : !fm_valid_loss(loss) ? FM_ERR_LOSS : !fm_valid_opt(opt) ? FM_ERR_OPT : FM_OK;
}

/* FM_ERR_LAYOUT where the targets the loss reads are missing, else FM_OK. */
static int fm_check_targets(int loss, const void *labels, const void *targets)
{
    return (FM_VALUE_TARGETS(loss) ? targets : labels) ? FM_OK : FM_ERR_LAYOUT;
}

int fm_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

#define FM_CAT_(a, b) a##_##b
#define FM_CAT(a, b) FM_CAT_(a, b)
#define FT(name) FM_CAT(name, S)                  /* a type of this REAL (_fused.h) */
#define FN(name) FM_CAT(FM_CAT(name, S), FM_LEVEL) /* a function of this REAL and level */
#define R(x) ((REAL)(x))

/* The levels' kernels: FM_LEVEL names them, FM_VBYTES is their vectors' width. */
#ifdef FM_HAS_LEVELS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define FM_LEVEL v4
#define FM_VBYTES 64
#include "_fused_level.h"
#undef FM_LEVEL
#undef FM_VBYTES
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define FM_LEVEL v3
#define FM_VBYTES 32
#include "_fused_level.h"
#undef FM_LEVEL
#undef FM_VBYTES
#pragma GCC pop_options
#endif

#define FM_LEVEL v1
#ifdef __clang__
#define FM_VBYTES FM_LINE /* clang splits a vector of a whole line into the target's registers itself */
#else
#define FM_VBYTES 16 /* the baseline's registers (SSE2, NEON) */
#endif
#include "_fused_level.h"
#undef FM_LEVEL
#undef FM_VBYTES

/* The exported kernels (_fused.h): each calls its build for fm_clone_level(). */
#ifdef FM_HAS_LEVELS
#define FM_CALL(name, args)                                                                        \
    switch (fm_clone_level()) {                                                                    \
    case 4: return name##_v4 args;                                                                 \
    case 3: return name##_v3 args;                                                                 \
    default: return name##_v1 args;                                                                \
    }
#define FM_CALL_VOID(name, args)                                                                   \
    switch (fm_clone_level()) {                                                                    \
    case 4: name##_v4 args; return;                                                                \
    case 3: name##_v3 args; return;                                                                \
    default: name##_v1 args; return;                                                               \
    }
#else
#define FM_CALL(name, args) return name##_v1 args;
#define FM_CALL_VOID(name, args) name##_v1 args;
#endif

#define FM_EXPORT(REAL, S)                                                                         \
    int fm_blas_epoch_##S(const fm_dense_##S *net, const fm_batches_##S *ex, const fm_step_##S *opt,            \
                          const fm_bwork_##S *ws, fm_gemm_ptr_##S gemm, int n_threads, fm_tally *tally)    \
    {                                                                                              \
        FM_CALL(fm_blas_epoch_##S, (net, ex, opt, ws, gemm, n_threads, tally))                     \
    }                                                                                              \
    int fm_apply_act_##S(int act, REAL *x, ptrdiff_t n) { FM_CALL(fm_apply_act_##S, (act, x, n)) }   \
    int fm_bias_act_##S(int act, REAL *H, const REAL *b, ptrdiff_t B, ptrdiff_t n)                 \
    {                                                                                              \
        FM_CALL(fm_bias_act_##S, (act, H, b, B, n))                                                \
    }                                                                                              \
    void fm_bias_add_##S(REAL *Z, const REAL *b, ptrdiff_t B, ptrdiff_t n)                         \
    {                                                                                              \
        FM_CALL_VOID(fm_bias_add_##S, (Z, b, B, n))                                                \
    }                                                                                              \
    int fm_loss_grad_##S(const REAL *Z, const intptr_t *labels, const REAL *targets, REAL *dZ, ptrdiff_t B, \
                         ptrdiff_t n, int loss, REAL scale, fm_tally *tally)                       \
    {                                                                                              \
        FM_CALL(fm_loss_grad_##S, (Z, labels, targets, dZ, B, n, loss, scale, tally))              \
    }                                                                                              \
    int fm_apply_act_grad_##S(int act, REAL *dH, const REAL *H, ptrdiff_t len)                     \
    {                                                                                              \
        FM_CALL(fm_apply_act_grad_##S, (act, dH, H, len))                                          \
    }                                                                                              \
    void fm_bias_update_##S(REAL *b, const REAL *D, ptrdiff_t B, ptrdiff_t n, REAL lr)             \
    {                                                                                              \
        FM_CALL_VOID(fm_bias_update_##S, (b, D, B, n, lr))                                         \
    }                                                                                              \
    int fm_deep_epoch_##S(const fm_deep_##S *net, const fm_rows_##S *ex, const fm_step_##S *opt,                \
                          const fm_dwork_##S *ws, fm_gemm_ptr_##S gemm, int n_threads, fm_tally *tally) \
    {                                                                                              \
        FM_CALL(fm_deep_epoch_##S, (net, ex, opt, ws, gemm, n_threads, tally))                     \
    }                                                                                              \
    int fm_sparse_epoch_##S(const fm_net_##S *net, const fm_rows_##S *ex, const fm_step_##S *opt,               \
                            const fm_swork_##S *ws, int n_threads, fm_tally *tally)                \
    {                                                                                              \
        FM_CALL(fm_sparse_epoch_##S, (net, ex, opt, ws, n_threads, tally))                         \
    }                                                                                              \
    void fm_row_passes_##S(const fm_net_##S *net, const fm_rows_##S *ex, const fm_swork_##S *ws, int n_threads) \
    {                                                                                              \
        FM_CALL_VOID(fm_row_passes_##S, (net, ex, ws, n_threads))                                  \
    }                                                                                              \
    void fm_group_chunks_##S(const fm_rows_##S *ex, ptrdiff_t rows, int64_t *cptr, uint16_t *crow, REAL *cval, \
                             int64_t *cursor)                                                      \
    {                                                                                              \
        FM_CALL_VOID(fm_group_chunks_##S, (ex, rows, cptr, crow, cval, cursor))                    \
    }                                                                                              \
    void fm_csr_counts_##S(const REAL *X, ptrdiff_t n_rows, ptrdiff_t n_in, int64_t *counts)       \
    {                                                                                              \
        FM_CALL_VOID(fm_csr_counts_##S, (X, n_rows, n_in, counts))                                 \
    }                                                                                              \
    void fm_csr_fill_##S(const REAL *X, ptrdiff_t n_rows, ptrdiff_t n_in, const int64_t *indptr, int32_t *indices, \
                         REAL *data)                                                               \
    {                                                                                              \
        FM_CALL_VOID(fm_csr_fill_##S, (X, n_rows, n_in, indptr, indices, data))                    \
    }                                                                                              \
    ptrdiff_t fm_count_nonfinite_##S(const REAL *x, ptrdiff_t n)                                   \
    {                                                                                              \
        FM_CALL(fm_count_nonfinite_##S, (x, n))                                                    \
    } \
    void fm_copy_2d_##S(const REAL *src, ptrdiff_t s0, ptrdiff_t s1, REAL *dst, ptrdiff_t d0, ptrdiff_t d1,      \
                        ptrdiff_t n0, ptrdiff_t n1)                                                \
    {                                                                                              \
        FM_CALL_VOID(fm_copy_2d_##S, (src, s0, s1, dst, d0, d1, n0, n1))                           \
    }

FM_EXPORT(float, f)
FM_EXPORT(double, d)
