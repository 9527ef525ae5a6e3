/* Hand-written loops of the fastmlp kernels (implemented in _fused.c).
 *
 * Row-major arrays, one example per row. Every function exists for float (_f)
 * and double (_d); see _fused_impl.h for the math of each.
 */
#ifndef FASTMLP_FUSED_H
#define FASTMLP_FUSED_H

#include <stddef.h>
#include <stdint.h>

/* Loss codes: fastmlp/_kernels/epochs.py LOSS_CODES names them (a test checks
 * that the two agree). A function given any other code returns FM_ERR_LOSS. */
enum { FM_LOSS_CE = 0, FM_LOSS_MSE = 1 };
enum { FM_OK = 0, FM_ERR_LOSS = -1 };

/* What an epoch measured: the loss summed over its examples and how many were
 * classified correctly, both in each batch's forward pass. */
typedef struct {
    double loss_sum;
    int64_t n_correct;
} fm_tally;

#define FM_DECLARE(REAL, S)                                                                 \
    /* The parameters as one block. In the small path's layout Wh holds Wh          \
     * transposed, (n_in, nh), and nh counts the hidden units padded with zero ones   \
     * to whole cache lines; bh (nh,), Wy (nout, nh), by (nout,). */                  \
    typedef struct {                                                                  \
        REAL *Wh, *bh, *Wy, *by;                                                      \
        ptrdiff_t n_in, nh, nout;                                                     \
    } fm_params_##S;                                                                  \
    /* The examples of an epoch in batches: rows order[0..n) of X (n_rows, n_in),    \
     * batch at a time (the last batch may be smaller). */                            \
    typedef struct {                                                                  \
        const REAL *X;                                                                \
        const intptr_t *labels, *order;                                               \
        ptrdiff_t n_in, n, batch;                                                     \
    } fm_batches_##S;                                                                 \
    void fm_tanh_##S(REAL *x, ptrdiff_t n);                                           \
    void fm_bias_tanh_##S(REAL *H, const REAL *b, ptrdiff_t B, ptrdiff_t n);         \
    void fm_bias_add_##S(REAL *Z, const REAL *b, ptrdiff_t B, ptrdiff_t n);          \
    int fm_loss_grad_##S(const REAL *Z, const intptr_t *labels, REAL *dZ, ptrdiff_t B, \
                         ptrdiff_t n, int loss, REAL scale, fm_tally *tally);         \
    void fm_dtanh_##S(REAL *dH, const REAL *H, ptrdiff_t len);                        \
    void fm_bias_update_##S(REAL *b, const REAL *D, ptrdiff_t B, ptrdiff_t n, REAL lr); \
    int fm_small_epoch_##S(const fm_params_##S *P, const fm_batches_##S *D, REAL lr,  \
                           int loss, REAL *H, REAL *dH, REAL *dZ, intptr_t *nz,       \
                           intptr_t *nnz, fm_tally *tally);

FM_DECLARE(float, f)
FM_DECLARE(double, d)

#undef FM_DECLARE

#endif
