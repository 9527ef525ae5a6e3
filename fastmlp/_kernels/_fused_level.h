/* One level's kernels for float and double, included by _fused.c once per
 * kernel level (FM_LEVEL, FM_VBYTES): the per-element ops, the fused steps
 * around the GEMMs, the sparse epochs (one hidden layer, several) and the BLAS epoch. */
#define REAL float
#define S f
#define EXP expf
#define LOG logf
#include "_ops.h"
#include "_fused_impl.h"
#include "_sparse_impl.h"
#include "_blas_impl.h"
#include "_deep_impl.h"
#undef REAL
#undef S
#undef EXP
#undef LOG

#define REAL double
#define S d
#define EXP exp
#define LOG log
#include "_ops.h"
#include "_fused_impl.h"
#include "_sparse_impl.h"
#include "_blas_impl.h"
#include "_deep_impl.h"
#undef REAL
#undef S
#undef EXP
#undef LOG
