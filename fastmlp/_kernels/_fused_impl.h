/* Template body of _fused.c, included once per REAL (float, double) with
 * S the name suffix, EXP/LOG the libm functions of that type.
 *
 * Notation (fastmlp/reference.py): H = tanh(X Wh^T + bh), Z = H Wy^T + by,
 * dZ = dl/dZ / B, dH = (dZ Wy) * (1 - H*H). All arrays row-major.
 */

#define FM_CAT_(a, b) a##_##b
#define FM_CAT(a, b) FM_CAT_(a, b)
#define FN(name) FM_CAT(name, S)
#define R(x) ((REAL)(x))

/* tanh. float: x * P(x^2) / Q(x^2) on the input clamped to [-9, 9], a rational
 * minimax fit made for fastmlp (max abs error 3.6e-7 against tanh over all
 * floats, tested), plain arithmetic that vectorises where tanhf does not.
 * At |x| = 9, 1 - tanh(x) = 3e-8, below float's resolution at 1.
 * double: libm's tanh, exact. NaN propagates in both. */
static inline REAL FN(fm_tanh1)(REAL x)
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
    return (REAL)tanh((double)x);
}

FM_CLONES void FN(fm_tanh)(REAL *restrict x, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = FN(fm_tanh1)(x[i]);
}

/* H = tanh(H + b), b broadcast over the B rows: runs right after the GEMM that
 * wrote H, while it is in cache. */
FM_CLONES void FN(fm_bias_tanh)(REAL *restrict H, const REAL *restrict b, ptrdiff_t B, ptrdiff_t n)
{
    for (ptrdiff_t r = 0; r < B; r++) {
        REAL *restrict h = H + r * n;
        for (ptrdiff_t j = 0; j < n; j++)
            h[j] = FN(fm_tanh1)(h[j] + b[j]);
    }
}

FM_CLONES void FN(fm_bias_add)(REAL *restrict Z, const REAL *restrict b, ptrdiff_t B, ptrdiff_t n)
{
    for (ptrdiff_t r = 0; r < B; r++)
        for (ptrdiff_t j = 0; j < n; j++)
            Z[r * n + j] += b[j];
}

static inline int FN(fm_valid_loss)(int loss)
{
    return loss == FM_LOSS_CE || loss == FM_LOSS_MSE;
}

/* One row of logits z -> dz = scale * dl/dz, adds the row's loss and whether
 * its argmax (first on ties) is the label. One pass for max, one for exp.
 * The loss code has been checked (fm_valid_loss) by the caller. */
static inline void FN(fm_row_loss_grad)(const REAL *z, intptr_t y, REAL *dz, ptrdiff_t n,
                                        int loss, REAL scale, fm_tally *tally)
{
    ptrdiff_t am = 0;
    REAL m = z[0];
    for (ptrdiff_t i = 1; i < n; i++)
        if (z[i] > m) { m = z[i]; am = i; }
    tally->n_correct += (am == y);
    const REAL zy = z[y]; /* z and dz may be the same row */
    REAL s = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        dz[i] = EXP(z[i] - m);
        s += dz[i];
    }
    const REAL inv_s = R(1) / s;
    if (loss == FM_LOSS_CE) {
        /* l = log sum exp(z - m) - (z_y - m); dl/dz = softmax(z) - onehot(y) */
        tally->loss_sum += (double)LOG(s) - (double)(zy - m);
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
        tally->loss_sum += 0.5 * (double)l;
        for (ptrdiff_t i = 0; i < n; i++)
            dz[i] = dz[i] * ((dz[i] - (i == y)) - pg) * scale;
    }
}

FM_CLONES int FN(fm_loss_grad)(const REAL *Z, const intptr_t *labels, REAL *dZ, ptrdiff_t B,
                               ptrdiff_t n, int loss, REAL scale, fm_tally *tally)
{
    if (!FN(fm_valid_loss)(loss))
        return FM_ERR_LOSS;
    for (ptrdiff_t r = 0; r < B; r++)
        FN(fm_row_loss_grad)(Z + r * n, labels[r], dZ + r * n, n, loss, scale, tally);
    return FM_OK;
}

/* dH *= 1 - H*H: the tanh derivative, from the activations already stored. */
FM_CLONES void FN(fm_dtanh)(REAL *restrict dH, const REAL *restrict H, ptrdiff_t len)
{
    for (ptrdiff_t i = 0; i < len; i++)
        dH[i] *= R(1) - H[i] * H[i];
}

/* b -= lr * (sum of the rows of D): the bias step, straight into b. */
FM_CLONES void FN(fm_bias_update)(REAL *restrict b, const REAL *restrict D, ptrdiff_t B, ptrdiff_t n, REAL lr)
{
    for (ptrdiff_t r = 0; r < B; r++)
        for (ptrdiff_t j = 0; j < n; j++)
            b[j] -= lr * D[r * n + j];
}

/* y += a x over n contiguous elements; restrict parameters let gcc vectorise it. */
static inline void FN(fm_axpy)(REAL *restrict y, REAL a, const REAL *restrict x, ptrdiff_t n)
{
#pragma omp simd
    for (ptrdiff_t j = 0; j < n; j++)
        y[j] += a * x[j];
}

/* The indices of the non-zero entries of x, in order; returns their count.
 * Blocks of 16 that are all zero (image borders) are skipped in one test; inside
 * a block the loop is branch-free, as zero and non-zero pixels alternate at random. */
static inline ptrdiff_t FN(fm_nonzeros)(const REAL *restrict x, ptrdiff_t n, intptr_t *restrict idx)
{
    ptrdiff_t k = 0, i = 0;
    for (; i + 16 <= n; i += 16) {
        int any = 0;
        for (int u = 0; u < 16; u++) any |= (x[i + u] != 0);
        if (!any) continue;
        for (int u = 0; u < 16; u++) {
            idx[k] = i + u;
            k += (x[i + u] != 0);
        }
    }
    for (; i < n; i++) {
        idx[k] = i;
        k += (x[i] != 0);
    }
    return k;
}

/* Asks for the n values at x to be brought into cache. The examples are visited
 * in random order, so the hardware prefetcher cannot guess the next input row; its
 * first touch, the non-zero scan, then waited on main memory for every line. */
static inline void FN(fm_prefetch_row)(const REAL *x, ptrdiff_t n)
{
#if defined(__GNUC__) || defined(__clang__)
    const char *p = (const char *)x;
    for (ptrdiff_t off = 0; off < n * (ptrdiff_t)sizeof(REAL); off += 64)
        __builtin_prefetch(p + off, 0, 3);
#else
    (void)x;
    (void)n;
#endif
}

/* h += sum_t x[idx[t]] * WhT[idx[t], :] over the k listed inputs: four rows per
 * sweep over h, so h is loaded and stored a quarter as often. */
static inline void FN(fm_gather_axpy)(REAL *restrict h, const REAL *restrict x,
                                      const intptr_t *restrict idx, ptrdiff_t k,
                                      const REAL *restrict WhT, ptrdiff_t nh)
{
    ptrdiff_t t = 0;
    for (; t + 4 <= k; t += 4) {
        const REAL a0 = x[idx[t]], a1 = x[idx[t + 1]], a2 = x[idx[t + 2]], a3 = x[idx[t + 3]];
        const REAL *restrict w0 = WhT + idx[t] * nh;
        const REAL *restrict w1 = WhT + idx[t + 1] * nh;
        const REAL *restrict w2 = WhT + idx[t + 2] * nh;
        const REAL *restrict w3 = WhT + idx[t + 3] * nh;
#pragma omp simd
        for (ptrdiff_t j = 0; j < nh; j++)
            h[j] += (a0 * w0[j] + a1 * w1[j]) + (a2 * w2[j] + a3 * w3[j]);
    }
    for (; t < k; t++)
        FN(fm_axpy)(h, x[idx[t]], WhT + idx[t] * nh, nh);
}

/* A whole epoch (or a slice of one) of mini-batch SGD for small batches, with
 * no BLAS: the hidden weights are held transposed, P->Wh is WhT (n_in, nh), so
 * that both the forward pass h~ = bh + sum_i x_i WhT[i,:] and the update
 * WhT[i,:] -= lr x_i dh~ are contiguous axpys over the hidden units, taken only
 * for the inputs that are non-zero (81% of MNIST pixels are zero).
 *
 * For each batch: forward every example with the weights as they are, keeping
 * h, dz and dh~ = (Wy^T dz) * (1 - h*h) (dz scaled by 1/B); then apply the summed
 * rank-1 updates. Workspace: H and dH (batch, nh), dZ (batch, nout), nz
 * (batch, n_in) and nnz (batch,) for each example's non-zero inputs. */
FM_CLONES int FN(fm_small_epoch)(const FN(fm_params) *P, const FN(fm_batches) *D, REAL lr, int loss,
                                 REAL *restrict Hb, REAL *restrict dHb, REAL *restrict dZb,
                                 intptr_t *restrict nz, intptr_t *restrict nnz, fm_tally *tally)
{
    if (!FN(fm_valid_loss)(loss))
        return FM_ERR_LOSS;
    REAL *restrict WhT = P->Wh, *restrict bh = P->bh, *restrict Wy = P->Wy, *restrict by = P->by;
    const ptrdiff_t nh = P->nh, nout = P->nout, n_in = D->n_in, n_ex = D->n, batch = D->batch;
    const REAL *restrict X = D->X;
    const intptr_t *restrict order = D->order, *restrict labels = D->labels;

    for (ptrdiff_t start = 0; start < n_ex; start += batch) {
        const ptrdiff_t B = n_ex - start < batch ? n_ex - start : batch;
        const REAL scale = R(1) / (REAL)B;

        for (ptrdiff_t b = 0; b < B; b++) {
            const intptr_t row = order[start + b];
            const REAL *restrict x = X + row * n_in;
            if (start + b + 1 < n_ex)
                FN(fm_prefetch_row)(X + order[start + b + 1] * n_in, n_in);
            intptr_t *restrict idx = nz + b * n_in;
            REAL *restrict h = Hb + b * nh;
            REAL *restrict dh = dHb + b * nh;
            REAL *restrict dz = dZb + b * nout;

            const ptrdiff_t k = FN(fm_nonzeros)(x, n_in, idx);
            nnz[b] = k;

            for (ptrdiff_t j = 0; j < nh; j++) h[j] = bh[j];
            FN(fm_gather_axpy)(h, x, idx, k, WhT, nh);
            for (ptrdiff_t j = 0; j < nh; j++) h[j] = FN(fm_tanh1)(h[j]);

            for (ptrdiff_t o = 0; o < nout; o++) {
                const REAL *restrict wy = Wy + o * nh;
                REAL acc = 0;
#pragma omp simd reduction(+ : acc)
                for (ptrdiff_t j = 0; j < nh; j++) acc += wy[j] * h[j];
                dz[o] = acc + by[o];
            }
            FN(fm_row_loss_grad)(dz, labels[row], dz, nout, loss, scale, tally);

            for (ptrdiff_t j = 0; j < nh; j++) dh[j] = 0;
            for (ptrdiff_t o = 0; o < nout; o++)
                FN(fm_axpy)(dh, dz[o], Wy + o * nh, nh);
            for (ptrdiff_t j = 0; j < nh; j++) dh[j] *= R(1) - h[j] * h[j];
        }

        for (ptrdiff_t b = 0; b < B; b++) {
            const REAL *restrict h = Hb + b * nh;
            const REAL *restrict dh = dHb + b * nh;
            const REAL *restrict dz = dZb + b * nout;
            const REAL *restrict x = X + order[start + b] * n_in;
            const intptr_t *restrict idx = nz + b * n_in;
            for (ptrdiff_t o = 0; o < nout; o++) {
                FN(fm_axpy)(Wy + o * nh, -lr * dz[o], h, nh);
                by[o] -= lr * dz[o];
            }
            for (ptrdiff_t t = 0; t < nnz[b]; t++)
                FN(fm_axpy)(WhT + idx[t] * nh, -lr * x[idx[t]], dh, nh);
            for (ptrdiff_t j = 0; j < nh; j++) bh[j] -= lr * dh[j];
        }
    }
    return FM_OK;
}

#undef FM_CAT_
#undef FM_CAT
#undef FN
#undef R
