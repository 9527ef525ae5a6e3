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
 * fm_df_<name>, fm_loss_<name>). fm_activation_name and fm_loss_name give the
 * name of a code, so that a test checks these against the Python tables. A
 * function given any other code returns FM_ERR_ACT or FM_ERR_LOSS. */
#define FM_ACTIVATIONS(X) \
    X(0, tanh)            \
    X(1, relu)            \
    X(2, logistic)        \
    X(3, identity)
#define FM_LOSSES(X) \
    X(0, ce)         \
    X(1, mse)
enum { FM_OK = 0, FM_ERR_LOSS = -1, FM_ERR_LAYOUT = -2, FM_ERR_ACT = -3 };

/* Bytes of a cache line: the unit of the hidden-unit padding and of the slices. */
#define FM_LINE 64
/* The most examples a workspace with a mask (fm_swork) may hold at a time. */
#define FM_MASK_ROWS 256
/* The most threads an epoch runs on. */
#define FM_MAX_THREADS 256

/* What an epoch measured in each batch's forward pass: the loss summed over its
 * examples and how many were classified correctly, each example counted with
 * its sample weight (1 without weights). */
typedef struct {
    double loss_sum;
    double correct;
} fm_tally;

#define FM_DECLARE(REAL, S)                                                                  \
    /* One SGD step as torch.optim.SGD takes it (dampening 0): g = grad + decay * W    \
     * for the weights (not the biases), v = momentum * v + g, W -= lr * v (lr * (g +  \
     * momentum * v) with nesterov); without momentum W -= lr * g. With                \
     * decay_by_weight_sum the decay of a batch is decay / (sum of its sample weights) \
     * (scikit-learn's alpha). grad is the batch's (weighted) mean gradient. */        \
    typedef struct {                                                                   \
        REAL lr, momentum, decay;                                                      \
        int nesterov, decay_by_weight_sum;                                             \
    } fm_sgd_##S;                                                                      \
    /* The network of the sparse epoch: the hidden activation and the loss (codes of   \
     * FM_ACTIVATIONS and FM_LOSSES), nh hidden units and nout outputs, and the        \
     * parameters. The hidden units, padded with zero units to whole cache lines, are  \
     * cut into n_groups groups of at most four lines (group g: lines group_line[g] .. \
     * group_line[g + 1]); slice s holds the groups slice_group[s] .. slice_group[s +  \
     * 1] in arrays of its own, each row `stride` elements apart: WhT (n_slices, n_in, \
     * stride) the transposed hidden weights, bh (n_slices, stride), Wy (n_slices,     \
     * nout, stride); by (n_slices, nout_pad) holds one copy of the output biases per  \
     * slice, nout_pad being nout rounded up to whole cache lines. Every block starts  \
     * on a cache line. VWhT, Vbh, VWy, Vby: their velocities, in the same layout      \
     * (NULL without momentum). */                                                     \
    typedef struct {                                                                   \
        int act, loss;                                                                 \
        REAL *WhT, *bh, *Wy, *by;                                                      \
        REAL *VWhT, *Vbh, *VWy, *Vby;                                                  \
        ptrdiff_t n_in, nh, nout, stride;                                              \
        int n_slices, n_groups;                                                        \
        const int32_t *slice_group, *group_line;                                       \
    } fm_net_##S;                                                                      \
    /* The examples: rows order[0 .. n) of the data, batch at a time (the last batch   \
     * may be smaller). CSR rows: row r's values data[indptr[r] .. indptr[r + 1]] at   \
     * inputs indices[...]; with indptr NULL, dense rows of n_in values and indices    \
     * 0 .. n_in - 1. weights: each row's sample weight (NULL: all 1). */              \
    typedef struct {                                                                   \
        const REAL *data;                                                              \
        const int32_t *indices;                                                        \
        const int64_t *indptr;                                                         \
        const intptr_t *labels, *order;                                                \
        const REAL *weights;                                                           \
        ptrdiff_t n_in, n, batch;                                                      \
    } fm_rows_##S;                                                                     \
    /* Workspace of the sparse epoch, for `rows` examples at a time (the batch, or    \
     * chunks of it: see gWhT): H, dH (n_slices, rows, stride) the hidden activations  \
     * and dl/dh~; Zp (2, rows, n_groups, nout) the partial logits, one half per       \
     * parity; dZ (n_slices, rows, nout_pad) dl/dz, one copy per thread (shared, the   \
     * first, where the threads share its rows out); row_loss, row_correct (rows,);    \
     * gWy (n_slices, nout, stride), gbh (n_slices, stride), gby (n_slices, nout_pad)  \
     * the summed gradients of Wy, bh and by; sync the threads' barrier (32 int32,     \
     * zero-filled, cache aligned). gWhT (n_slices, n_in, stride), zero-filled, or     \
     * NULL: with it, a batch of more than `rows` examples is taken `rows` at a time,  \
     * its gradient of WhT summed in gWhT and the step taken after its last chunk      \
     * (else rows >= batch). cptr, crow, cval, or NULL: for an epoch of one batch      \
     * (every example), CSR rows and gWhT, the non-zeros of each chunk grouped by      \
     * input (fm_group_chunks), so that each row of gWhT takes one sum per chunk. mask \
     * (n_slices, n_in, (rows + 63) / 64), zero-filled, or NULL (NULL where rows >     \
     * FM_MASK_ROWS): one bit per example of the batch (or chunk) for each input where \
     * it is non-zero, per thread; with it, batches and chunks of at least group_min   \
     * examples update each row of WhT (or gWhT) they touch once, with the sum over    \
     * their examples (the rows' indices must then be sorted and unique). */           \
    typedef struct {                                                                   \
        REAL *H, *dH, *Zp, *dZ, *gWy, *gbh, *gby, *gWhT;                               \
        double *row_loss, *row_correct;                                                \
        int32_t *sync;                                                                 \
        ptrdiff_t rows;                                                                \
        const int64_t *cptr;                                                           \
        const uint16_t *crow;                                                          \
        const REAL *cval;                                                              \
        uint64_t *mask;                                                                \
        ptrdiff_t group_min;                                                           \
    } fm_swork_##S;                                                                    \
    /* The examples of a dense epoch: rows order[0 .. n) of X (n_rows, n_in), batch  \
     * at a time (the last batch may be smaller); weights as in fm_rows. */            \
    typedef struct {                                                                   \
        const REAL *X;                                                                 \
        const intptr_t *labels, *order;                                                \
        const REAL *weights;                                                           \
        ptrdiff_t n_in, n, batch;                                                      \
    } fm_batches_##S;                                                                  \
    /* The network of the BLAS epoch: the activation and loss codes, the parameters  \
     * in the model's layout: Wh (nh, n_in), bh (nh,), Wy (nout, nh), by (nout,); the  \
     * hidden units cut into n_blocks blocks (block j: units block_unit[j] ..          \
     * block_unit[j + 1], at most block_max). VWh, Vbh, VWy, Vby: their velocities    \
     * (NULL without momentum). */                                                     \
    typedef struct {                                                                   \
        int act, loss;                                                                 \
        REAL *Wh, *bh, *Wy, *by;                                                       \
        REAL *VWh, *Vbh, *VWy, *Vby;                                                   \
        ptrdiff_t n_in, nh, nout;                                                      \
        int n_blocks;                                                                  \
        const int32_t *block_unit;                                                     \
        ptrdiff_t block_max;                                                           \
    } fm_dense_##S;                                                                    \
    /* Workspace of the BLAS epoch: Xb (2, batch, n_in) the gathered rows, one half    \
     * per batch parity (unused where batches lie in order in X); H, dH (n_blocks,     \
     * batch, block_max), each block's rows `width` apart; Zp (n_blocks, batch, nout)  \
     * the partial logits; dZ (batch, nout); row_loss, row_correct (batch,); GWh     \
     * (nh, n_in), GWy (nout, nh), gb (nh + nout,) the gradients, taken apart from the \
     * weights with momentum or decay (else NULL); sync the threads' barrier (32       \
     * int32, zero-filled, cache aligned). */                                          \
    typedef struct {                                                                   \
        REAL *Xb, *H, *dH, *Zp, *dZ;                                                   \
        double *row_loss, *row_correct;                                                \
        REAL *GWh, *GWy, *gb;                                                          \
        int32_t *sync;                                                                 \
    } fm_bwork_##S;                                                                    \
    /* A BLAS GEMM (column-major, arguments by address), e.g. scipy's cython_blas. */ \
    typedef void (*fm_gemm_ptr_##S)(const char *, const char *, const int *, const int *, const int *, \
                                    const REAL *, const REAL *, const int *, const REAL *, const int *, \
                                    const REAL *, REAL *, const int *);               \
    int fm_blas_epoch_##S(const fm_dense_##S *net, const fm_batches_##S *ex, const fm_sgd_##S *opt,   \
                          const fm_bwork_##S *ws, fm_gemm_ptr_##S gemm, int n_threads, fm_tally *tally); \
    int fm_apply_act_##S(int act, REAL *x, ptrdiff_t n);                                 \
    int fm_bias_act_##S(int act, REAL *H, const REAL *b, ptrdiff_t B, ptrdiff_t n);      \
    void fm_bias_add_##S(REAL *Z, const REAL *b, ptrdiff_t B, ptrdiff_t n);           \
    int fm_loss_grad_##S(const REAL *Z, const intptr_t *labels, REAL *dZ, ptrdiff_t B,  \
                         ptrdiff_t n, int loss, REAL scale, fm_tally *tally);          \
    int fm_apply_act_grad_##S(int act, REAL *dH, const REAL *H, ptrdiff_t len);         \
    void fm_bias_update_##S(REAL *b, const REAL *D, ptrdiff_t B, ptrdiff_t n, REAL lr);  \
    int fm_sparse_epoch_##S(const fm_net_##S *net, const fm_rows_##S *ex, const fm_sgd_##S *opt,     \
                            const fm_swork_##S *ws, int n_threads, fm_tally *tally);   \
    void fm_row_passes_##S(const fm_net_##S *net, const fm_rows_##S *ex, const fm_swork_##S *ws, int n_threads); \
    void fm_group_chunks_##S(const fm_rows_##S *ex, ptrdiff_t rows, int64_t *cptr, uint16_t *crow, REAL *cval, \
                             int64_t *cursor);                                         \
    void fm_csr_counts_##S(const REAL *X, ptrdiff_t n_rows, ptrdiff_t n_in, int64_t *counts); \
    void fm_csr_fill_##S(const REAL *X, ptrdiff_t n_rows, ptrdiff_t n_in, const int64_t *indptr, \
                         int32_t *indices, REAL *data);

FM_DECLARE(float, f)
FM_DECLARE(double, d)

#undef FM_DECLARE

/* The name of an activation or loss code (FM_ACTIVATIONS, FM_LOSSES), NULL for
 * an unknown one. */
const char *fm_activation_name(int code);
const char *fm_loss_name(int code);

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
