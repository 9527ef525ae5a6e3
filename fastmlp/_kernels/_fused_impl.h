/* Template body of _fused.c, included once per REAL (float, double) and kernel
 * level (see _fused.c): FN names a function of this instantiation, FT a type of
 * this REAL, EXP/LOG are the libm functions of that type.
 *
 * Notation (fastmlp/reference.py): H = tanh(X Wh^T + bh), Z = H Wy^T + by,
 * dZ = dl/dZ / B, dH = (dZ Wy) * (1 - H*H). All arrays row-major.
 */

/* tanh in plain arithmetic that vectorises (libm's tanh and tanhf do not: a
 * scalar call per element cost more than a small network's whole epoch).
 * float: x * P(x^2) / Q(x^2) on the input clamped to [-9, 9], a rational minimax
 * fit made for fastmlp (max abs error 3.6e-7 against tanh over all floats,
 * tested); at |x| = 9, 1 - tanh(x) = 3e-8, below float's resolution at 1.
 * double: Cephes' method (S. L. Moshier): x + x^3 P(x^2) / Q(x^2) for |x| < 0.625,
 * else 1 - 2 / (exp(2|x|) + 1) with exp by range reduction and a Pade form,
 * clamped at |x| = 22 where tanh rounds to 1 (max abs error 2e-16, tested).
 * NaN propagates in both. */
static FM_INLINE double FN(fm_exp_d)(double x)
{
    /* exp(x) = 2^k exp(r), r = x - k ln 2 in [-ln2 / 2, ln2 / 2], for |x| <= 44 */
    const double k = floor(1.4426950408889634073599 * x + 0.5);
    const double r = (x - k * 6.93145751953125e-1) - k * 1.42860682030941723212e-6;
    const double rr = r * r;
    const double p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
                          + 9.99999999999999999910e-1);
    const double q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
                      + 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
    const double e = 1.0 + 2.0 * (p / (q - p));
    /* times 2^k, through the exponent bits */
    const int64_t bits = (int64_t)(k + 1023.0) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return e * scale;
}

static FM_INLINE REAL FN(fm_tanh1)(REAL x)
{
    if (sizeof(REAL) == sizeof(float)) {
        const REAL c = R(9.0);
        x = x < -c ? -c : (x > c ? c : x);
        const REAL s = x * x;
        const REAL p = ((((R(1.825586730e-11) * s + R(-1.278068140e-08)) * s
                          + R(9.267499991e-06)) * s + R(2.920770319e-03)) * s
                        + R(1.291923672e-01)) * s + R(9.999999404e-01);
        const REAL q = ((R(2.281013876e-04) * s + R(2.376320399e-02)) * s
                        + R(4.625251889e-01)) * s + R(1.0);
        return x * p / q;
    }
    const double d = (double)x, a = d < 0 ? -d : d;
    const double z = d * d;
    const double small = d + d * z * ((-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
                                      - 1.61468768441708447952e3)
                                 / (((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
                                    + 4.84406305325125486048e3);
    const double large = 1.0 - 2.0 / (FN(fm_exp_d)(2.0 * (a < 22.0 ? a : 22.0)) + 1.0);
    const double t = a < 0.625 ? small : large;
    return (REAL)(d != d ? d : copysign(t, d)); /* tanh is odd: the sign of x, -0.0 included */
}

FM_LEVEL_FN void FN(fm_tanh)(REAL *restrict x, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = FN(fm_tanh1)(x[i]);
}

/* H = tanh(H + b), b broadcast over the B rows: runs right after the GEMM that
 * wrote H, while it is in cache. */
FM_LEVEL_FN void FN(fm_bias_tanh)(REAL *restrict H, const REAL *restrict b, ptrdiff_t B, ptrdiff_t n)
{
    for (ptrdiff_t r = 0; r < B; r++) {
        REAL *restrict h = H + r * n;
        for (ptrdiff_t j = 0; j < n; j++)
            h[j] = FN(fm_tanh1)(h[j] + b[j]);
    }
}

FM_LEVEL_FN void FN(fm_bias_add)(REAL *restrict Z, const REAL *restrict b, ptrdiff_t B, ptrdiff_t n)
{
    for (ptrdiff_t r = 0; r < B; r++)
        for (ptrdiff_t j = 0; j < n; j++)
            Z[r * n + j] += b[j];
}

static FM_INLINE int FN(fm_valid_loss)(int loss)
{
    return loss == FM_LOSS_CE || loss == FM_LOSS_MSE;
}

/* One row of logits z -> dz = scale * dl/dz, adds the row's loss and whether
 * its argmax (first on ties) is the label, both times `weight`. One pass for
 * max, one for exp. The loss code has been checked (fm_valid_loss) by the caller. */
static FM_INLINE void FN(fm_row_loss_grad)(const REAL *z, intptr_t y, REAL *dz, ptrdiff_t n,
                                        int loss, REAL scale, double weight, fm_tally *tally)
{
    ptrdiff_t am = 0;
    REAL m = z[0];
    for (ptrdiff_t i = 1; i < n; i++)
        if (z[i] > m) { m = z[i]; am = i; }
    tally->correct += weight * (am == y);
    const REAL zy = z[y]; /* z and dz may be the same row */
    REAL s = 0;
    if (sizeof(REAL) == sizeof(float)) {
        /* exp in double arithmetic that vectorises (expf is a call per element, paid
         * by every thread at every example at batch 1), rounded once to float; below
         * -104 the float result is 0 */
#pragma omp simd
        for (ptrdiff_t i = 0; i < n; i++) {
            const double x = (double)(z[i] - m);
            dz[i] = (REAL)FN(fm_exp_d)(x < -104.0 ? -104.0 : x);
        }
    } else {
        for (ptrdiff_t i = 0; i < n; i++) dz[i] = EXP(z[i] - m);
    }
    for (ptrdiff_t i = 0; i < n; i++) s += dz[i];
    const REAL inv_s = R(1) / s;
    if (loss == FM_LOSS_CE) {
        /* l = log sum exp(z - m) - (z_y - m); dl/dz = softmax(z) - onehot(y) */
        tally->loss_sum += weight * ((double)LOG(s) - (double)(zy - m));
        for (ptrdiff_t i = 0; i < n; i++)
            dz[i] = (dz[i] * inv_s - (i == y)) * scale;
    } else if (loss == FM_LOSS_MSE) {
        /* l = 0.5 |p - y|^2; dl/dz = J^T g = p * (g - p.g), g = p - onehot(y) */
        REAL l = 0, pg = 0;
        for (ptrdiff_t i = 0; i < n; i++) {
            const REAL p = dz[i] * inv_s, g = p - (i == y);
            dz[i] = p;
            l += g * g;
            pg += p * g;
        }
        tally->loss_sum += weight * 0.5 * (double)l;
        for (ptrdiff_t i = 0; i < n; i++)
            dz[i] = dz[i] * ((dz[i] - (i == y)) - pg) * scale;
    }
}

FM_LEVEL_FN int FN(fm_loss_grad)(const REAL *Z, const intptr_t *labels, REAL *dZ, ptrdiff_t B,
                                 ptrdiff_t n, int loss, REAL scale, fm_tally *tally)
{
    if (!FN(fm_valid_loss)(loss))
        return FM_ERR_LOSS;
    for (ptrdiff_t r = 0; r < B; r++)
        FN(fm_row_loss_grad)(Z + r * n, labels[r], dZ + r * n, n, loss, scale, 1.0, tally);
    return FM_OK;
}

/* dH *= 1 - H*H: the tanh derivative, from the activations already stored. */
FM_LEVEL_FN void FN(fm_dtanh)(REAL *restrict dH, const REAL *restrict H, ptrdiff_t len)
{
    for (ptrdiff_t i = 0; i < len; i++)
        dH[i] *= R(1) - H[i] * H[i];
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
static FM_INLINE REAL FN(fm_batch_decay)(const FT(fm_sgd) *opt, double weight_sum)
{
    if (!opt->decay_by_weight_sum)
        return opt->decay;
    return weight_sum > 0 ? (REAL)(opt->decay / weight_sum) : R(0);
}

/* p[0:n] -= lr * step, the step of torch.optim.SGD from the gradient g (decay not
 * yet added): g' = g + decay * p; with momentum v = mu v + g' and step v, or
 * g' + mu v with nesterov; without, step g'. */
static FM_INLINE void FN(fm_sgd_dense)(REAL *restrict p, REAL *restrict v, const REAL *restrict g, ptrdiff_t n,
                                       const FT(fm_sgd) *opt, REAL decay)
{
    const REAL lr = opt->lr, mu = opt->momentum;
    if (mu == 0) {
#pragma omp simd
        for (ptrdiff_t j = 0; j < n; j++) p[j] -= lr * (g[j] + decay * p[j]);
    } else if (opt->nesterov) {
#pragma omp simd
        for (ptrdiff_t j = 0; j < n; j++) {
            const REAL gj = g[j] + decay * p[j];
            v[j] = mu * v[j] + gj;
            p[j] -= lr * (gj + mu * v[j]);
        }
    } else {
#pragma omp simd
        for (ptrdiff_t j = 0; j < n; j++) {
            v[j] = mu * v[j] + (g[j] + decay * p[j]);
            p[j] -= lr * v[j];
        }
    }
}

static FM_INLINE int FN(fm_plain_sgd)(const FT(fm_sgd) *opt)
{
    return opt->momentum == 0 && opt->decay == 0;
}
