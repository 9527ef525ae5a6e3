/* Instantiates the hand-written kernels for float and double:
 * _fused_impl.h (the fused steps around the GEMMs) and _sparse_impl.h (the
 * sparse epoch).
 *
 * Wheels must run on any x86-64, so nothing here is compiled for the build
 * machine's CPU. Where gcc supports it, each hot function is cloned for
 * x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and the baseline, and the
 * dynamic loader picks the best clone for the CPU it runs on. Threads come from
 * OpenMP where the compiler has it (setup.py finds out), else the kernels run on
 * one thread.
 */
#include <math.h>
#include <string.h>
#include "_fused.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(_MSC_VER) && !defined(__clang__)
#define restrict __restrict
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 11
#define FM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define FM_HAS_CLONES 1
#else
#define FM_CLONES
#endif

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

/* A barrier of the n threads of the sparse epoch, whose state `sync` (two cache
 * lines, zero-filled before the first use) lives in its workspace. The waits are
 * short (one batch's work), so it spins; after FM_SPINS checks it yields the core
 * at each check instead, so a machine with more threads than cores still moves.
 * A tenth of the time of an OpenMP barrier (0.03 against 0.3-0.5 us measured on
 * 2 cores), which matters when the threads meet once per example. (The first 256
 * checks without a pause: slower at batch 1 on an Intel Xeon, 0.090 against
 * 0.082 s per MNIST epoch. At batch 1 each thread of two waits here about a fifth
 * of an epoch, both alike. Each thread writing its partial logits and a sequence
 * number into a line of its own, the other spinning on that line instead of on
 * the barrier, saved only 1-3%: most of the wait is which thread's example took
 * longer, which goes both ways, not the meeting itself.) */
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

int fm_clone_level(void)
{
#ifdef FM_HAS_CLONES
    /* the loader's choice among the clones: the first the CPU supports */
    if (__builtin_cpu_supports("x86-64-v4"))
        return 4;
    if (__builtin_cpu_supports("x86-64-v3"))
        return 3;
    return 1;
#else
    return 0;
#endif
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
#define FN(name) FM_CAT(name, S)
#define R(x) ((REAL)(x))

#define REAL float
#define S f
#define EXP expf
#define LOG logf
#include "_fused_impl.h"
#include "_sparse_impl.h"
#include "_blas_impl.h"
#undef REAL
#undef S
#undef EXP
#undef LOG

#define REAL double
#define S d
#define EXP exp
#define LOG log
#include "_fused_impl.h"
#include "_sparse_impl.h"
#include "_blas_impl.h"
