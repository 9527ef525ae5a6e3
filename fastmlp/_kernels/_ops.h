/* The per-element ops of fastmlp/tables.py: one small function per row of its
 * tables, included by _fused_level.h once per REAL (float, double) and kernel
 * level. FN names a function of this instantiation, FT a type of this REAL, EXP
 * and LOG are the libm functions of that type.
 *
 * The kernels' mechanics (_fused_impl.h, _sparse_impl.h, _blas_impl.h) reach
 * these only through fm_activate, fm_act_grad, fm_row_loss_grad and
 * fm_step_dense, whose switches are generated from the tables FM_ACTIVATIONS,
 * FM_LOSSES and FM_OPTIMIZERS of _fused.h: a new activation is a line there and its two functions
 * here.
 */

/* exp(x) for |x| <= 708 in plain arithmetic that vectorises (libm's exp is a
 * call per element): exp(x) = 2^k exp(r), r = x - k ln 2 in [-ln2 / 2, ln2 / 2],
 * exp(r) by the Pade form of Cephes (S. L. Moshier), 2^k through the exponent
 * bits. */
static FM_INLINE double FN(fm_exp_d)(double x)
{
    const double k = floor(1.4426950408889634073599 * x + 0.5);
    const double r = (x - k * 6.93145751953125e-1) - k * 1.42860682030941723212e-6;
    const double rr = r * r;
    const double p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
                          + 9.99999999999999999910e-1);
    const double q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
                      + 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
    const double e = 1.0 + 2.0 * (p / (q - p));
    /* NaN: keep the conversion to an integer defined; e is NaN, and so the result */
    const int64_t bits = (int64_t)((k == k ? k : 0.0) + 1023.0) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return e * scale;
}

/* ---- activations: f(x), and f'(x) written from the output h = f(x) ---- */

/* tanh in plain arithmetic that vectorises (libm's tanh and tanhf do not).
 * float: x * P(x^2) / Q(x^2) on the input clamped to [-9, 9], a rational minimax
 * fit made for fastmlp (max abs error 3.6e-7 against tanh over all floats,
 * tested); at |x| = 9, 1 - tanh(x) = 3e-8, below float's resolution at 1.
 * double: Cephes' method: x + x^3 P(x^2) / Q(x^2) for |x| < 0.625, else
 * 1 - 2 / (exp(2|x|) + 1), clamped at |x| = 22 where tanh rounds to 1 (max abs
 * error 2e-16, tested). NaN propagates in both. */
static FM_INLINE REAL FN(fm_f_tanh)(REAL x)
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

static FM_INLINE REAL FN(fm_df_tanh)(REAL h) { return R(1) - h * h; }

/* relu: NaN stays NaN (NaN < 0 is false); the derivative is 0 at 0, as in
 * PyTorch and scikit-learn. */
static FM_INLINE REAL FN(fm_f_relu)(REAL x) { return x < 0 ? R(0) : x; }

static FM_INLINE REAL FN(fm_df_relu)(REAL h) { return h > 0 ? R(1) : R(0); }

/* logistic 1 / (1 + exp(-x)), in double arithmetic (fm_exp_d) rounded once; -x
 * is clamped where the result is 0 or 1 to the type's precision (float: +-104;
 * double: +-708.4, just beyond -ln of the smallest normal double, so that below
 * it the result stays within that smallest normal of the true one). NaN
 * propagates. */
static FM_INLINE REAL FN(fm_f_logistic)(REAL x)
{
    const double c = sizeof(REAL) == sizeof(float) ? 104.0 : 708.4;
    const double m = -(double)x;
    const double y = 1.0 / (1.0 + FN(fm_exp_d)(m < -c ? -c : (m > c ? c : m)));
    return x != x ? x : (REAL)y;
}

static FM_INLINE REAL FN(fm_df_logistic)(REAL h) { return h * (R(1) - h); }

static FM_INLINE REAL FN(fm_f_identity)(REAL x) { return x; }

static FM_INLINE REAL FN(fm_df_identity)(REAL h)
{
    (void)h;
    return R(1);
}

/* ---- losses: one row of logits z -> dz = scale * dl/dz (z and dz may be the
 * same row); each returns the row's loss and sets *correct to whether the row is
 * predicted right. A loss over class labels reads the label y (and not t), a loss
 * of value targets the row t of n targets (and not y). ---- */

/* The softmax of row z into p (which may be z itself): returns the sum s of
 * exp(z - m); *m is the row's max, *am its first argmax. float: exp in double
 * arithmetic that vectorises, rounded once; below -104 the float result is 0. */
static FM_INLINE REAL FN(fm_softmax_row)(const REAL *z, REAL *p, ptrdiff_t n, REAL *m, ptrdiff_t *am)
{
    ptrdiff_t arg = 0;
    REAL max = z[0];
    for (ptrdiff_t i = 1; i < n; i++)
        if (z[i] > max) { max = z[i]; arg = i; }
    if (sizeof(REAL) == sizeof(float)) {
#pragma omp simd
        for (ptrdiff_t i = 0; i < n; i++) {
            const double x = (double)(z[i] - max);
            p[i] = (REAL)FN(fm_exp_d)(x < -104.0 ? -104.0 : x);
        }
    } else {
        for (ptrdiff_t i = 0; i < n; i++) p[i] = EXP(z[i] - max);
    }
    REAL s = 0;
    for (ptrdiff_t i = 0; i < n; i++) s += p[i];
    *m = max;
    *am = arg;
    return s;
}

/* softmax + cross-entropy: l = log sum exp(z - m) - (z_y - m); dl/dz = softmax(z) - onehot(y) */
static FM_INLINE double FN(fm_loss_ce)(const REAL *z, intptr_t y, const REAL *t, REAL *dz, ptrdiff_t n, REAL scale,
                                       int *correct)
{
    (void)t;
    REAL m;
    ptrdiff_t am;
    const REAL zy = z[y]; /* z and dz may be the same row */
    const REAL s = FN(fm_softmax_row)(z, dz, n, &m, &am), inv_s = R(1) / s;
    for (ptrdiff_t i = 0; i < n; i++)
        dz[i] = (dz[i] * inv_s - (i == y)) * scale;
    *correct = am == y;
    return (double)LOG(s) - (double)(zy - m);
}

/* softmax + squared error: l = 0.5 |p - y|^2; dl/dz = J^T g = p * (g - p.g), g = p - onehot(y) */
static FM_INLINE double FN(fm_loss_mse)(const REAL *z, intptr_t y, const REAL *t, REAL *dz, ptrdiff_t n, REAL scale,
                                        int *correct)
{
    (void)t;
    REAL m, l = 0, pg = 0;
    ptrdiff_t am;
    const REAL inv_s = R(1) / FN(fm_softmax_row)(z, dz, n, &m, &am);
    *correct = am == y;
    for (ptrdiff_t i = 0; i < n; i++) {
        const REAL p = dz[i] * inv_s, g = p - (i == y);
        dz[i] = p;
        l += g * g;
        pg += p * g;
    }
    for (ptrdiff_t i = 0; i < n; i++)
        dz[i] = dz[i] * ((dz[i] - (i == y)) - pg) * scale;
    return 0.5 * (double)l;
}

/* logistic per output + binary cross-entropy: l = sum_i max(z_i, 0) - t_i z_i +
 * log(1 + exp(-|z_i|)) (-t log s(z) - (1 - t) log(1 - s(z)), stably);
 * dl/dz = s(z) - t. Right where every output is on the side of 1/2 of its target
 * (scikit-learn's subset accuracy). */
static FM_INLINE double FN(fm_loss_bce)(const REAL *z, intptr_t y, const REAL *t, REAL *dz, ptrdiff_t n, REAL scale,
                                        int *correct)
{
    (void)y;
    double l = 0;
    int right = 1;
    for (ptrdiff_t i = 0; i < n; i++) {
        const REAL x = z[i], ti = t[i];
        const double a = x < 0 ? -(double)x : (double)x;
        l += (x > 0 ? (double)x : 0.0) - (double)ti * (double)x + log1p(FN(fm_exp_d)(-(a < 708.0 ? a : 708.0)));
        right &= (x > 0) == (ti > R(0.5));
        dz[i] = (FN(fm_f_logistic)(x) - ti) * scale;
    }
    *correct = right;
    return l;
}

/* identity + squared error: l = 0.5 |z - t|^2; dl/dz = z - t. No accuracy. */
static FM_INLINE double FN(fm_loss_squared_error)(const REAL *z, intptr_t y, const REAL *t, REAL *dz, ptrdiff_t n,
                                                  REAL scale, int *correct)
{
    (void)y;
    double l = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        const REAL d = z[i] - t[i];
        l += (double)d * (double)d;
        dz[i] = d * scale;
    }
    *correct = 0;
    return 0.5 * l;
}

/* exp + half Poisson deviance: mu = exp(z), l = sum_i t_i log(t_i / mu_i) - t_i +
 * mu_i (0 log 0 = 0); dl/dz = mu - t. No accuracy. */
static FM_INLINE double FN(fm_loss_poisson)(const REAL *z, intptr_t y, const REAL *t, REAL *dz, ptrdiff_t n,
                                            REAL scale, int *correct)
{
    (void)y;
    double l = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        const REAL x = z[i], ti = t[i], mu = EXP(x);
        l += (ti > 0 ? (double)ti * log((double)ti) : 0.0) - (double)ti * (double)x - (double)ti + (double)mu;
        dz[i] = (mu - ti) * scale;
    }
    *correct = 0;
    return l;
}

/* ---- the SGD step of one element, as torch.optim.SGD takes it (dampening 0) ----
 * g' = g + decay p; with momentum v = mu v + g' and p -= lr v (lr (g' + mu v)
 * with Nesterov); without, p -= lr g'. `momentum` and `nesterov` are constants
 * at each call site, so the loops that call this keep one form each. */
static FM_INLINE REAL FN(fm_sgd1)(REAL p, REAL *restrict v, REAL g, REAL lr, REAL mu, REAL decay, int momentum,
                                  int nesterov)
{
    const REAL gd = g + decay * p;
    if (!momentum)
        return p - lr * gd;
    const REAL vn = mu * *v + gd;
    *v = vn;
    return p - lr * (nesterov ? gd + mu * vn : vn);
}

/* ---- the Adam step of one element (fm_step's FM_ADAM and FM_ADAMW) ----
 * p *= shrink (AdamW's decoupled decay, 1 for Adam); g' = g + decay p (Adam's
 * L2, 0 for AdamW); m += (1 - beta1) (g' - m) (torch's lerp); v = beta2 v +
 * (1 - beta2) g'^2; p -= step_size m / (sqrt(v) / bc2_sqrt + eps). */
static FM_INLINE REAL FN(fm_sqrt)(REAL x) { return sizeof(REAL) == sizeof(float) ? (REAL)sqrtf((float)x) : (REAL)sqrt((double)x); }

static FM_INLINE REAL FN(fm_adam1)(REAL p, REAL *restrict m, REAL *restrict v, REAL g, REAL beta1, REAL beta2,
                                   REAL step_size, REAL bc2_sqrt, REAL eps, REAL decay, REAL shrink)
{
    p *= shrink;
    const REAL gd = g + decay * p;
    const REAL mn = *m + (R(1) - beta1) * (gd - *m);
    const REAL vn = beta2 * *v + (R(1) - beta2) * gd * gd;
    *m = mn;
    *v = vn;
    return p - step_size * (mn / (FN(fm_sqrt)(vn) / bc2_sqrt + eps));
}
