/* Hand-written loops of the fastmlp kernels (implemented in _fused.c).
 *
 * Row-major arrays, one example per row. Every function exists for float (_f)
 * and double (_d); see _ops.h (the per-element ops of the activations, losses
 * and SGD step), _fused_impl.h (the fused steps around the GEMMs), _sparse_impl.h
 * (the sparse epoch) and _blas_impl.h (the BLAS epoch) for the math of each.
 */
#ifndef FASTMLP_FUSED_H
#define FASTMLP_FUSED_H

#include <stddef.h>
#include <stdint.h>

/* The tables of fastmlp/tables.py as the kernels know them: X(code, name) for each
 * activation and loss, name the suffix of its ops in _ops.h (fm_f_<name> and
 * fm_df_<name>, fm_loss_<name>), and each optimizer (its step: fm_step1 in
 * _fused_impl.h). fm_activation_name, fm_loss_name and fm_optimizer_name give the
 * name of a code, so that a test checks these against the Python tables. A
 * function given any other code returns FM_ERR_ACT, FM_ERR_LOSS or FM_ERR_OPT. */
#define FM_ACTIVATIONS(X) \
    X(0, tanh)            \
    X(1, relu)            \
    X(2, logistic)        \
    X(3, identity)
#define FM_LOSSES(X)   \
    X(0, ce)           \
    X(1, mse)          \
    X(2, bce)          \
    X(3, squared_error) \
    X(4, poisson)
/* Whether a loss compares the outputs with target values (a row of nout REALs per
 * example: fm_rows.targets) rather than a class label (fm_rows.labels). */
#define FM_VALUE_TARGETS(loss) ((loss) >= 2)
#define FM_OPTIMIZERS(X) \
    X(0, sgd)            \
    X(1, adam)           \
    X(2, adamw)          \
    X(3, gradient)
enum { FM_SGD = 0, FM_ADAM = 1, FM_ADAMW = 2, FM_GRADIENT = 3 };
/* Whether a step keeps Adam's second moments (its S blocks) */
#define FM_SECOND_MOMENT(kind) ((kind) == FM_ADAM || (kind) == FM_ADAMW)
enum { FM_OK = 0, FM_ERR_LOSS = -1, FM_ERR_LAYOUT = -2, FM_ERR_ACT = -3, FM_ERR_OPT = -4 };

/* Bytes of a cache line: the unit of the hidden-unit padding and of the slices. */
#define FM_LINE 64
/* The most examples a workspace with a mask (fm_swork) may hold at a time. */
#define FM_MASK_ROWS 256
/* The scratch of each thread of a deep epoch (fm_dwork.own), in elements: its
 * dl/dz rows and its copy of the output biases, their two state vectors (momentum
 * velocity; Adam's moments) and gradient, rounded up to whole cache lines of
 * `lanes` elements. */
#define FM_DEEP_OWN(rows, sout, lanes) (((rows) * (sout) + 4 * (sout) + (lanes) - 1) / (lanes) * (lanes))
/* The most threads an epoch runs on. */
#define FM_MAX_THREADS 256
/* Whole-array passes (finite checks) run on every thread from this many elements;
 * below, starting the threads costs more than the pass. */
#define FM_PARALLEL_MIN (1 << 16)

/* What an epoch measured in each batch's forward pass: the loss summed over its
 * examples and how many were classified correctly, each example counted with
 * its sample weight (1 without weights). */
typedef struct {
    double loss_sum;
    double correct;
} fm_tally;

/* The declarations of each REAL: name_f for float, name_d for double. */
#define FM_D_CAT(a, b) a##_##b
#define REAL float
#define FM_D(name) FM_D_CAT(name, f)
#include "_fused_decl.h"
#undef REAL
#undef FM_D
#define REAL double
#define FM_D(name) FM_D_CAT(name, d)
#include "_fused_decl.h"
#undef REAL
#undef FM_D
#undef FM_D_CAT

/* The name of an activation or loss code (FM_ACTIVATIONS, FM_LOSSES), NULL for
 * an unknown one. */
const char *fm_activation_name(int code);
const char *fm_loss_name(int code);
const char *fm_optimizer_name(int code);

/* The number of threads an OpenMP parallel region would use here (1 where the
 * kernels were built without OpenMP). */
int fm_max_threads(void);

/* Which build of the hot kernels runs here: 0 where they were compiled once
 * (gcc before 11, clang, MSVC, or not x86-64 Linux: the compiler's flags decide,
 * the x86-64 baseline for portable builds), else the x86-64 level of the build
 * that runs: 4 (AVX-512), 3 (AVX2 + FMA) or 1 (the baseline); the best the CPU
 * supports unless FASTMLP_KERNEL_LEVEL (read at the first call) or
 * fm_set_clone_level asked for a lower one. */
int fm_clone_level(void);

/* Runs the highest build the CPU supports that is no higher than `level` from
 * now on (where there are builds), and returns the level that runs. */
int fm_set_clone_level(int level);

#endif
