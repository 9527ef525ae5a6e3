/* Instantiates _fused_impl.h for float and double.
 *
 * Wheels must run on any x86-64, so nothing here is compiled for the build
 * machine's CPU. Where gcc supports it, each hot function is cloned for
 * x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and the baseline, and the
 * dynamic loader picks the best clone for the CPU it runs on.
 */
#include <math.h>
#include "_fused.h"

#if defined(_MSC_VER) && !defined(__clang__)
#define restrict __restrict
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 11
#define FM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FM_CLONES
#endif

#define REAL float
#define S f
#define EXP expf
#define LOG logf
#include "_fused_impl.h"
#undef REAL
#undef S
#undef EXP
#undef LOG

#define REAL double
#define S d
#define EXP exp
#define LOG log
#include "_fused_impl.h"
