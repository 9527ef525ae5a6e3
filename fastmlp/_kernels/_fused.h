/* Hand-written loops of the fastmlp kernels (implemented in _fused.c).
 *
 * Row-major arrays, one example per row. Every function exists for float (_f)
 * and double (_d); see _fused_impl.h for the math of each.
 */
#ifndef FASTMLP_FUSED_H
#define FASTMLP_FUSED_H

#include <stddef.h>
#include <stdint.h>

#define FM_LOSS_CE 0
#define FM_LOSS_MSE 1

#define FM_DECLARE(REAL, S)                                                              \
    void fm_tanh_##S(REAL *x, ptrdiff_t n);                                              \
    void fm_bias_tanh_##S(REAL *H, const REAL *b, ptrdiff_t B, ptrdiff_t n);            \
    void fm_bias_add_##S(REAL *Z, const REAL *b, ptrdiff_t B, ptrdiff_t n);             \
    void fm_loss_grad_##S(const REAL *Z, const intptr_t *labels, REAL *dZ, ptrdiff_t B, \
                          ptrdiff_t n, int loss, REAL scale, double *loss_sum,           \
                          int64_t *n_correct);                                           \
    void fm_dtanh_##S(REAL *dH, const REAL *H, ptrdiff_t len);                           \
    void fm_bias_update_##S(REAL *b, const REAL *D, ptrdiff_t B, ptrdiff_t n, REAL lr);  \
    void fm_small_epoch_##S(const REAL *X, ptrdiff_t n_in, const intptr_t *labels,       \
                            const intptr_t *perm, ptrdiff_t n_ex, ptrdiff_t batch,       \
                            REAL *WhT, REAL *bh, REAL *Wy, REAL *by, ptrdiff_t nh,       \
                            ptrdiff_t nout, REAL lr, int loss, REAL *work, intptr_t *nz, \
                            double *loss_sum, int64_t *n_correct);

FM_DECLARE(float, f)
FM_DECLARE(double, d)

#undef FM_DECLARE

#endif
