/* Template body of _fused.c, included by _fused_level.h once per REAL (float,
 * double) and kernel level after _ops.h: FN names a function of this
 * instantiation, FT a type of this REAL.
 *
 * The mechanics that reach the per-element ops of _ops.h (activations, losses,
 * the SGD step) through the codes of the tables in _fused.h, and the fused steps
 * around the GEMMs. Notation (fastmlp/reference.py): H = f(X Wh^T + bh),
 * Z = H Wy^T + by, dZ = dl/dZ / B, dH = (dZ Wy) * f'(H). All arrays row-major.
 */

/* h[0:n] = f(h[0:n]) for the activation `act` (a code of FM_ACTIVATIONS, checked
 * by the caller). */
static FM_INLINE void FN(fm_activate)(int act, REAL *restrict h, ptrdiff_t n)
{
    switch (act) {
#define FM_CASE(code, name)                                                                        \
    case code:                                                                                     \
        _Pragma("omp simd") for (ptrdiff_t j = 0; j < n; j++) h[j] = FN(fm_f_##name)(h[j]);        \
        return;
        FM_ACTIVATIONS(FM_CASE)
#undef FM_CASE
    }
}

/* d[0:n] *= f'(h[0:n]), the derivative of the activation `act` written from its
 * outputs h. */
static FM_INLINE void FN(fm_act_grad)(int act, REAL *restrict d, const REAL *restrict h, ptrdiff_t n)
{
    switch (act) {
#define FM_CASE(code, name)                                                                        \
    case code:                                                                                     \
        _Pragma("omp simd") for (ptrdiff_t j = 0; j < n; j++) d[j] *= FN(fm_df_##name)(h[j]);      \
        return;
        FM_ACTIVATIONS(FM_CASE)
#undef FM_CASE
    }
}

/* d[0:n] *= f'(h[0:n]) as fm_act_grad, and y[0:n] += a d[0:n] in the same pass: the
 * sum of a bias's gradient (a = 1) or its plain SGD step (a = -lr). */
static FM_INLINE void FN(fm_act_grad_axpy)(int act, REAL *restrict d, const REAL *restrict h, ptrdiff_t n,
                                           REAL *restrict y, REAL a)
{
    switch (act) {
#define FM_CASE(code, name)                                                                        \
    case code:                                                                                     \
        _Pragma("omp simd") for (ptrdiff_t j = 0; j < n; j++) {                                    \
            d[j] *= FN(fm_df_##name)(h[j]);                                                        \
            y[j] += a * d[j];                                                                      \
        }                                                                                          \
        return;
        FM_ACTIVATIONS(FM_CASE)
#undef FM_CASE
    }
}

/* One row of logits z, of example r, -> dz = scale * dl/dz (z and dz may be the
 * same row) for the loss `loss` (a code of FM_LOSSES, checked by the caller, as
 * that the labels or the targets it reads are given: fm_rows); adds the row's
 * loss and whether it is predicted right, both times `weight`. */
static FM_INLINE void FN(fm_row_loss_grad)(int loss, const REAL *z, const intptr_t *labels, const REAL *targets,
                                           intptr_t r, REAL *dz, ptrdiff_t n, REAL scale, double weight,
                                           fm_tally *tally)
{
    const intptr_t y = labels ? labels[r] : 0;
    const REAL *t = targets ? targets + r * n : NULL;
    int correct = 0;
    double l = 0;
    switch (loss) {
#define FM_CASE(code, name)                                                                        \
    case code:                                                                                     \
        l = FN(fm_loss_##name)(z, y, t, dz, n, scale, &correct);                                   \
        break;
        FM_LOSSES(FM_CASE)
#undef FM_CASE
    }
    tally->loss_sum += weight * l;
    tally->correct += weight * correct;
}

/* The exported forms of the activation ops: FM_ERR_ACT for an unknown code. */
FM_LEVEL_FN int FN(fm_apply_act)(int act, REAL *restrict x, ptrdiff_t n)
{
    if (!fm_valid_act(act))
        return FM_ERR_ACT;
    FN(fm_activate)(act, x, n);
    return FM_OK;
}

/* H = f(H + b), b broadcast over the B rows: runs right after the GEMM that
 * wrote H, while it is in cache. */
static FM_INLINE void FN(fm_add_bias_activate)(int act, REAL *restrict H, const REAL *restrict b, ptrdiff_t B,
                                               ptrdiff_t n)
{
    for (ptrdiff_t r = 0; r < B; r++) {
        REAL *restrict h = H + r * n;
        for (ptrdiff_t j = 0; j < n; j++) h[j] += b[j];
        FN(fm_activate)(act, h, n);
    }
}

FM_LEVEL_FN int FN(fm_bias_act)(int act, REAL *restrict H, const REAL *restrict b, ptrdiff_t B, ptrdiff_t n)
{
    if (!fm_valid_act(act))
        return FM_ERR_ACT;
    FN(fm_add_bias_activate)(act, H, b, B, n);
    return FM_OK;
}

/* dH *= f'(H): the derivative from the activations already stored. */
FM_LEVEL_FN int FN(fm_apply_act_grad)(int act, REAL *restrict dH, const REAL *restrict H, ptrdiff_t len)
{
    if (!fm_valid_act(act))
        return FM_ERR_ACT;
    FN(fm_act_grad)(act, dH, H, len);
    return FM_OK;
}

FM_LEVEL_FN void FN(fm_bias_add)(REAL *restrict Z, const REAL *restrict b, ptrdiff_t B, ptrdiff_t n)
{
    for (ptrdiff_t r = 0; r < B; r++)
        for (ptrdiff_t j = 0; j < n; j++)
            Z[r * n + j] += b[j];
}

FM_LEVEL_FN int FN(fm_loss_grad)(const REAL *Z, const intptr_t *labels, const REAL *targets, REAL *dZ,
                                 ptrdiff_t B, ptrdiff_t n, int loss, REAL scale, fm_tally *tally)
{
    if (!fm_valid_loss(loss))
        return FM_ERR_LOSS;
    if (fm_check_targets(loss, labels, targets) != FM_OK)
        return FM_ERR_LAYOUT;
    for (ptrdiff_t r = 0; r < B; r++)
        FN(fm_row_loss_grad)(loss, Z + r * n, labels, targets, r, dZ + r * n, n, scale, 1.0, tally);
    return FM_OK;
}

/* b -= lr * (sum of the rows of D): the bias step, straight into b. */
FM_LEVEL_FN void FN(fm_bias_update)(REAL *restrict b, const REAL *restrict D, ptrdiff_t B, ptrdiff_t n, REAL lr)
{
    for (ptrdiff_t r = 0; r < B; r++)
        for (ptrdiff_t j = 0; j < n; j++)
            b[j] -= lr * D[r * n + j];
}


/* The weights of a batch's rows (examples order[start .. start + B)): their
 * total, and so each row's share of the batch mean, scale_b = w_b / total
 * (1 / B without weights; 0 where the weights sum to 0: no step). */
static FM_INLINE double FN(fm_batch_weight)(const REAL *weights, const intptr_t *order, ptrdiff_t start, ptrdiff_t B)
{
    if (!weights)
        return (double)B;
    double total = 0;
    for (ptrdiff_t b = 0; b < B; b++) total += weights[order[start + b]];
    return total;
}

/* The decay a batch's weights take: opt->decay, or decay / (the batch's weight
 * sum) for scikit-learn's alpha. */
static FM_INLINE REAL FN(fm_batch_decay)(const FT(fm_step) *opt, double weight_sum)
{
    if (!opt->decay_by_weight_sum)
        return opt->decay;
    return weight_sum > 0 ? (REAL)(opt->decay / weight_sum) : R(0);
}

/* opt for batch i of a call (step t = opt->steps + i + 1), with Adam's factors of
 * step t: step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t), and eps_t
 * = eps (torch) or eps / bc2_sqrt (scikit-learn), all taken in double. */
static FM_INLINE FT(fm_step) FN(fm_step_at)(const FT(fm_step) *opt, ptrdiff_t i)
{
    FT(fm_step) at = *opt;
    if (FM_SECOND_MOMENT(opt->kind)) {
        const double t = (double)(opt->steps + i + 1);
        const double bc2_sqrt = sqrt(1.0 - pow((double)opt->beta2, t));
        at.step_size = (REAL)((double)opt->lr / (1.0 - pow((double)opt->beta1, t)));
        at.bc2_sqrt = (REAL)bc2_sqrt;
        at.eps_t = opt->sklearn_eps ? (REAL)((double)opt->eps / bc2_sqrt) : opt->eps;
    }
    return at;
}

/* Whether a batch's step is plain SGD (W -= lr g, straight into the weights). */
static FM_INLINE int FN(fm_step_plain)(const FT(fm_step) *opt, REAL decay)
{
    return opt->kind == FM_SGD && opt->momentum == 0 && decay == 0;
}

/* p[0:n] steps (fm_step) from the gradient g (NULL: zero; SGD only), with `decay`
 * for these parameters; v the velocities (SGD with momentum) or Adam's first
 * moments, s Adam's second moments; FM_GRADIENT writes g + decay p into v and
 * leaves p. One loop per form, so that each vectorises. */
#define FM_SGD_LOOP(MOMENTUM, NESTEROV, G, V)                                                      \
    _Pragma("omp simd") for (ptrdiff_t j = 0; j < n; j++)                                         \
        p[j] = FN(fm_sgd1)(p[j], V, G, lr, mu, decay, MOMENTUM, NESTEROV);
#define FM_SGD_FORMS(G)                                                                            \
    if (mu == 0) {                                                                                 \
        FM_SGD_LOOP(0, 0, G, NULL)                                                                 \
    } else if (opt->nesterov) {                                                                    \
        FM_SGD_LOOP(1, 1, G, v + j)                                                                \
    } else {                                                                                       \
        FM_SGD_LOOP(1, 0, G, v + j)                                                                \
    }

static FM_INLINE void FN(fm_step_dense)(REAL *restrict p, REAL *restrict v, REAL *restrict s, const REAL *restrict g,
                                        ptrdiff_t n, const FT(fm_step) *opt, REAL decay)
{
    const REAL lr = opt->lr, mu = opt->momentum;
    if (opt->kind == FM_GRADIENT) {
#pragma omp simd
        for (ptrdiff_t j = 0; j < n; j++)
            v[j] = g[j] + decay * p[j];
    } else if (opt->kind != FM_SGD) {
        const REAL b1 = opt->beta1, b2 = opt->beta2, step = opt->step_size, bc2 = opt->bc2_sqrt, eps = opt->eps_t;
        const int adamw = opt->kind == FM_ADAMW;
        const REAL l2 = adamw ? R(0) : decay, shrink = adamw ? R(1) - lr * decay : R(1);
#pragma omp simd
        for (ptrdiff_t j = 0; j < n; j++)
            p[j] = FN(fm_adam1)(p[j], v + j, s + j, g[j], b1, b2, step, bc2, eps, l2, shrink);
    } else if (g) {
        FM_SGD_FORMS(g[j])
    } else {
        FM_SGD_FORMS(R(0))
    }
}
#undef FM_SGD_FORMS
#undef FM_SGD_LOOP

/* The coefficient of the gradient in an SGD step, which is affine in it: the step
 * from g is the step from a zero gradient, then p -= c g (and v += g with momentum). */
static FM_INLINE REAL FN(fm_step_coef)(const FT(fm_step) *opt)
{
    return opt->nesterov ? opt->lr * (R(1) + opt->momentum) : opt->lr;
}
