/* Template body of the sparse epoch of a network of several hidden layers,
 * included by _fused_level.h once per REAL and kernel level after _sparse_impl.h
 * (whose row gathers and row updates it takes) and _blas_impl.h (its GEMM call).
 *
 * Layer k maps the n[k-1] values of the layer below to n[k] units; every weight
 * matrix is held transposed, WT_k (rows: the layer's inputs, s[k] columns: its
 * units padded with zero units to whole cache lines). WT_1 is held in panels of
 * DGROUP columns, one after the other (panel g: the n[0] rows of its units
 * g DGROUP .. + DGROUP, DGROUP apart; the last panel padded to DGROUP with zeros):
 * each thread's units then lie in panels of their own, where two threads writing
 * halves of the same rows slowed each other down (docs/design/kernels.md).
 * The first layer is the sparse-first pass of the one-layer epoch:
 *     h_1 = f(b_1 + sum over the non-zero inputs i of x_i WT_1[i, :])
 * and its update WT_1[i, :] -= lr x_i d_1 visits the rows of the non-zero inputs
 * only. The layers after it are dense, one pass over WT_k per batch each way:
 *     forward   h_k = f(b_k + sum_i h_{k-1}[i] WT_k[i, :])
 *     backward  d_{k-1}[i] = (d_k . WT_k[i, :]) f'(h_{k-1}[i])
 *     update    WT_k[i, :] -= lr sum_b h_{k-1}[b, i] d_k[b, :]
 * and backward reuses the activations the forward pass stored, layer by layer.
 *
 * Threads split each hidden layer's units into groups of at most four cache
 * lines (fixed by the layer's width alone) and own whole groups: thread t owns
 * its units' columns of WT_1 and b_k, and the rows of WT_{k+1} that read them.
 * A layer's forward pass writes, per group of the layer below, the partial sums
 * of its rows (P); after a barrier each thread adds them in group order for its
 * own units. Backward, the owner of rows i of WT_k computes d_{k-1}[i] from the
 * whole d_k (after a barrier) and updates its own rows. Every thread computes the
 * logits, the loss and dl/dz of the whole batch from the output's partial sums
 * and keeps its own copy of the output biases, so nothing else is shared: the
 * arithmetic of each value and the order of each sum do not depend on the number
 * of threads, and results are bitwise identical for every thread count.
 *
 * The dense layers' three passes run as loops over rows of WT_k, the sums held
 * in registers (the first layer's gathers and updates, over every row of a group
 * instead of the non-zero ones), or, for chunks of at least gemm_min examples, as
 * one GEMM per group of rows: the shapes of each GEMM depend on the layer widths
 * and the chunk alone, so the results do not depend on the thread count either.
 *
 * Chunks of group_min examples or more update each row of WT_1 they touch once,
 * with the sum over their examples (_sparse_impl.h fm_grouped_rows), through a
 * mask of each thread's that the gather fills (the rows' indices must then be
 * sorted and unique).
 *
 * Plain SGD on a batch that fits the workspace updates the weights as it goes
 * (each row of WT_k after its d_{k-1} is computed). Otherwise (momentum, weight
 * decay, or a batch taken `rows` examples at a time) the gradient is summed in
 * GW, Gb and the step of torch.optim.SGD taken after the batch's last chunk.
 */

#define DLANES ((ptrdiff_t)(FM_LINE / sizeof(REAL)))
#define DGROUP (4 * DLANES) /* units per group: four cache lines */

/* The columns [*j0, *j1) of the groups of a layer of `width` (padded) units that
 * thread t of nt owns; 0 where it owns none. */
static FM_INLINE void FN(fm_deep_own)(ptrdiff_t width, int t, int nt, ptrdiff_t *j0, ptrdiff_t *j1)
{
    const ptrdiff_t ng = (width + DGROUP - 1) / DGROUP;
    const ptrdiff_t g0 = ng * t / nt, g1 = ng * (t + 1) / nt;
    *j0 = g0 * DGROUP < width ? g0 * DGROUP : width;
    *j1 = g1 * DGROUP < width ? g1 * DGROUP : width;
}

/* h[j0 .. j1) = f(h) for the live units (< n), 0 for the padded ones, whatever
 * f(0) is: they have no weights in or out. */
static FM_INLINE void FN(fm_deep_activate)(int act, REAL *restrict h, ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t n)
{
    const ptrdiff_t live = j1 < n ? j1 : n;
    if (live > j0)
        FN(fm_activate)(act, h + j0, live - j0);
    for (ptrdiff_t j = live > j0 ? live : j0; j < j1; j++) h[j] = 0;
}

/* y[0:n] += a x[0:n] */
static FM_INLINE void FN(fm_axpy)(REAL *restrict y, REAL a, const REAL *restrict x, ptrdiff_t n)
{
#pragma omp simd
    for (ptrdiff_t j = 0; j < n; j++) y[j] += a * x[j];
}

/* x[0:n] . y[0:n] for rows of whole cache lines, cache aligned: four lines of
 * products summed at a time in registers, the four added line by line, then the
 * line's lanes by halves (fm_line_sum; an `omp simd reduction` ends in one
 * dependent scalar add per lane, which dominated the backward pass). */
static FM_INLINE REAL FN(fm_dot)(const REAL *restrict x, const REAL *restrict y, ptrdiff_t n)
{
#if FM_VECTORS
    typedef FN(fm_vreg) V;
    enum { P = FM_LINE / FM_VBYTES };
    V a[4][P];
    for (int q = 0; q < 4; q++)
        for (int p = 0; p < P; p++) a[q][p] = (V){0};
    ptrdiff_t j = 0;
    for (; j + 4 * DLANES <= n; j += 4 * DLANES)
        for (int q = 0; q < 4; q++)
            for (int p = 0; p < P; p++)
                a[q][p] += ((const V *)(x + j + q * DLANES))[p] * ((const V *)(y + j + q * DLANES))[p];
    for (; j < n; j += DLANES)
        for (int p = 0; p < P; p++) a[0][p] += ((const V *)(x + j))[p] * ((const V *)(y + j))[p];
    for (int p = 0; p < P; p++) a[0][p] = (a[0][p] + a[1][p]) + (a[2][p] + a[3][p]);
    return FN(fm_line_sum)(a[0]);
#else
    REAL s = 0;
    for (ptrdiff_t j = 0; j < n; j++) s += x[j] * y[j];
    return s;
#endif
}

/* The partial sums of one group (rows a .. e of WT, the columns of Hin they read)
 * for C rows: P[r, :] = sum_i Hin[r, i] WT[i, :], four lines of columns at a
 * time held in registers; or one GEMM. */
static FM_INLINE void FN(fm_deep_partial)(REAL *restrict P, const REAL *restrict Hin, ptrdiff_t sin,
                                          const REAL *restrict WT, ptrdiff_t sk, ptrdiff_t a, ptrdiff_t e,
                                          ptrdiff_t C, const int32_t *iota, const REAL *zero, FT(fm_gemm_ptr) gemm)
{
    if (gemm) {
        FN(fm_gemm)(gemm, 0, 0, (int)C, (int)sk, (int)(e - a), R(1), Hin + a, (int)sin, WT + a * sk, (int)sk, R(0),
                    P, (int)sk);
        return;
    }
    for (ptrdiff_t r = 0; r < C; r++)
        for (ptrdiff_t c = 0; c < sk; c += DGROUP) {
            const int nl = (int)((sk - c < DGROUP ? sk - c : DGROUP) / DLANES);
            FN(fm_gather)(P + r * sk + c, zero, nl, Hin + r * sin + a, iota + a, e - a, WT + c, sk, NULL, 0, 0);
        }
}

/* target[i, :] += coef sum_r Hin[r, i] dk[r, :] for the rows i = a .. e: the
 * update (coef = -lr) or the gradient's sum (coef = 1), dk's lines held in
 * registers over the rows; or one GEMM (beta = 1). */
static FM_INLINE void FN(fm_deep_rows)(REAL *restrict target, REAL coef, const REAL *restrict Hin, ptrdiff_t sin,
                                       const REAL *restrict dk, ptrdiff_t sk, ptrdiff_t a, ptrdiff_t e,
                                       ptrdiff_t C, const int32_t *iota, FT(fm_gemm_ptr) gemm)
{
    if (gemm) {
        FN(fm_gemm)(gemm, 1, 0, (int)(e - a), (int)sk, (int)C, coef, Hin + a, (int)sin, dk, (int)sk, R(1),
                    target + a * sk, (int)sk);
        return;
    }
    for (ptrdiff_t r = 0; r < C; r++)
        for (ptrdiff_t c = 0; c < sk; c += DGROUP) {
            const int nl = (int)((sk - c < DGROUP ? sk - c : DGROUP) / DLANES);
            FN(fm_update)(target + c, sk, nl, -coef, Hin + r * sin + a, iota + a, e - a, dk + r * sk + c);
        }
}

/* Thread t's share of the epoch. tally: thread 0's (the others count nothing). */
static void FN(fm_deep_thread)(const FT(fm_deep) *net, const FT(fm_rows) *ex, const FT(fm_step) *opt,
                               const FT(fm_dwork) *ws, FT(fm_gemm_ptr) gemm, int t, int nt, fm_tally *tally)
{
    const int L = net->n_layers; /* layers of weights: L - 1 hidden layers */
    const int64_t *n = net->n, *s = net->s;
    const ptrdiff_t rows = ws->rows, nout = n[L], sout = s[L];
    const int adam = FM_SECOND_MOMENT(opt->kind), momentum = opt->momentum != 0 || opt->kind != FM_SGD;
    const int plain = FN(fm_step_plain)(opt, opt->decay);
    /* this thread's dl/dz rows and its copy of the output biases (state, gradient) */
    REAL *dZ = ws->own + t * FM_DEEP_OWN(rows, sout, DLANES), *by = dZ + rows * sout;
    REAL *Vby = by + sout, *Sby = Vby + sout, *Gby = Sby + sout;
    memset(dZ, 0, (size_t)FM_DEEP_OWN(rows, sout, DLANES) * sizeof(REAL));
    memcpy(by, net->b + net->b_off[L - 1], (size_t)nout * sizeof(REAL));
    if (momentum)
        memcpy(Vby, net->Vb + net->b_off[L - 1], (size_t)nout * sizeof(REAL));
    if (adam)
        memcpy(Sby, net->Sb + net->b_off[L - 1], (size_t)nout * sizeof(REAL));
    fm_tally none = {0, 0};
    fm_tally *tl = tally ? tally : &none;
    int parity = 0;
    for (ptrdiff_t start = 0; start < ex->n; start += ex->batch) {
        const ptrdiff_t B = ex->n - start < ex->batch ? ex->n - start : ex->batch;
        const double weight_sum = FN(fm_batch_weight)(ex->weights, ex->order, start, B);
        const REAL decay = FN(fm_batch_decay)(opt, weight_sum);
        const int summed = !plain || B > rows; /* the gradient summed, the step after the batch */
        const FT(fm_step) step = FN(fm_step_at)(opt, start / ex->batch);
        for (ptrdiff_t c0 = 0; c0 < B; c0 += rows) {
            const ptrdiff_t C = B - c0 < rows ? B - c0 : rows;
            const intptr_t *order = ex->order + start + c0;
            FT(fm_gemm_ptr) const chunk_gemm = ws->gemm_min > 0 && C >= ws->gemm_min ? gemm : NULL;
            /* the first layer's rows updated once per chunk each, through the mask the gather fills */
            const ptrdiff_t words = (rows + 63) / 64;
            uint64_t *const mask = ws->mask && C >= ws->group_min ? ws->mask + t * n[0] * words : NULL;
            /* ---- forward: the first layer from the non-zero inputs ---- */
            {
                ptrdiff_t j0, j1;
                FN(fm_deep_own)(s[1], t, nt, &j0, &j1);
                REAL *H = ws->H + ws->h_off[0];
                const REAL *WT = net->W + net->w_off[0], *b = net->b + net->b_off[0];
                for (ptrdiff_t r = 0; r < C; r++) {
                    const REAL *vals;
                    const int32_t *idx;
                    const ptrdiff_t k = FN(fm_row)(ex, order[r], &vals, &idx);
                    for (ptrdiff_t j = j0; j < j1; j += DGROUP) {
                        const int nl = (int)(((j1 - j < DGROUP ? j1 - j : DGROUP)) / DLANES);
                        uint64_t *const m = mask && j == j0 ? mask + r / 64 : NULL; /* marked once per example */
                        FN(fm_gather)(H + r * s[1] + j, b + j, nl, vals, idx, k, WT + j * n[0], DGROUP, m, words,
                                      (uint64_t)1 << (r % 64));
                    }
                    FN(fm_deep_activate)(net->act, H + r * s[1], j0, j1, n[1]);
                }
            }
            /* ---- forward: the dense layers, partial sums per group of the layer below ---- */
            for (int k = 2; k <= L; k++) {
                ptrdiff_t i0, i1;
                FN(fm_deep_own)(s[k - 1], t, nt, &i0, &i1);
                const REAL *Hin = ws->H + ws->h_off[k - 2], *WT = net->W + net->w_off[k - 1];
                REAL *P = ws->P + parity * ws->p_half + ws->p_off[k - 1];
                const ptrdiff_t sk = s[k], n_groups = (s[k - 1] + DGROUP - 1) / DGROUP;
                for (ptrdiff_t g = i0 / DGROUP; i0 < i1 && g * DGROUP < i1; g++) {
                    const ptrdiff_t a = g * DGROUP, e = a + DGROUP < s[k - 1] ? a + DGROUP : s[k - 1];
                    FN(fm_deep_partial)(P + g * rows * sk, Hin, s[k - 1], WT, sk, a, e, C, ws->iota, ws->zero,
                                        chunk_gemm);
                }
                FM_BARRIER(ws->sync, nt);
                if (k < L) {
                    ptrdiff_t j0, j1;
                    FN(fm_deep_own)(sk, t, nt, &j0, &j1);
                    REAL *H = ws->H + ws->h_off[k - 1];
                    const REAL *b = net->b + net->b_off[k - 1];
                    for (ptrdiff_t r = 0; r < C; r++) {
                        REAL *h = H + r * sk;
                        for (ptrdiff_t j = j0; j < j1; j++) h[j] = b[j];
                        for (ptrdiff_t g = 0; g < n_groups; g++)
                            FN(fm_axpy)(h + j0, R(1), P + (g * rows + r) * sk + j0, j1 - j0);
                        FN(fm_deep_activate)(net->act, h, j0, j1, n[k]);
                    }
                } else { /* the logits, the loss and dl/dz of every row, in every thread */
                    for (ptrdiff_t r = 0; r < C; r++) {
                        REAL *z = dZ + r * sout;
                        for (ptrdiff_t j = 0; j < nout; j++) z[j] = by[j];
                        for (ptrdiff_t g = 0; g < n_groups; g++)
                            FN(fm_axpy)(z, R(1), P + (g * rows + r) * sk, nout);
                        const REAL w = ex->weights ? ex->weights[order[r]] : R(1);
                        const REAL scale = weight_sum > 0 ? (REAL)(w / weight_sum) : R(0);
                        FN(fm_row_loss_grad)(net->loss, z, ex->labels, ex->targets, order[r], z, nout, scale, (double)w,
                                             tl);
                    }
                }
            }
            parity ^= 1;
            /* ---- backward, from the top: d_{k-1} for the rows this thread owns, then their update ---- */
            for (int k = L; k >= 2; k--) {
                if (k < L)
                    FM_BARRIER(ws->sync, nt); /* d_k complete */
                ptrdiff_t i0, i1;
                FN(fm_deep_own)(s[k - 1], t, nt, &i0, &i1);
                const ptrdiff_t sk = s[k], sin = s[k - 1];
                const REAL *dk = k == L ? dZ : ws->D + ws->h_off[k - 1];
                const REAL *Hin = ws->H + ws->h_off[k - 2];
                REAL *Din = ws->D + ws->h_off[k - 2];
                REAL *WT = net->W + net->w_off[k - 1];
                REAL *target = summed ? ws->GW + net->w_off[k - 1] : WT;
                const REAL coef = summed ? R(1) : -opt->lr;
                for (ptrdiff_t g = i0 / DGROUP; i0 < i1 && g * DGROUP < i1; g++) {
                    const ptrdiff_t a = g * DGROUP, e = a + DGROUP < sin ? a + DGROUP : sin;
                    if (chunk_gemm)
                        FN(fm_gemm)(chunk_gemm, 0, 1, (int)C, (int)(e - a), (int)sk, R(1), dk, (int)sk, WT + a * sk,
                                    (int)sk, R(0), Din + a, (int)sin);
                    else
                        for (ptrdiff_t r = 0; r < C; r++)
                            for (ptrdiff_t i = a; i < e; i++)
                                Din[r * sin + i] = FN(fm_dot)(dk + r * sk, WT + i * sk, sk);
                    for (ptrdiff_t r = 0; r < C; r++)
                        FN(fm_act_grad)(net->act, Din + r * sin + a, Hin + r * sin + a, e - a);
                    FN(fm_deep_rows)(target, coef, Hin, sin, dk, sk, a, e, C, ws->iota, chunk_gemm);
                }
                /* the biases of layer k: the output's in every thread's copy, a hidden layer's by the owner */
                ptrdiff_t j0 = 0, j1 = nout;
                REAL *bias = summed ? Gby : by;
                if (k < L) {
                    FN(fm_deep_own)(sk, t, nt, &j0, &j1);
                    bias = summed ? ws->Gb + net->b_off[k - 1] : net->b + net->b_off[k - 1];
                }
                for (ptrdiff_t r = 0; r < C; r++)
                    FN(fm_axpy)(bias + j0, coef, dk + r * sk + j0, j1 - j0);
            }
            /* ---- the first layer's rows of the non-zero inputs, and its biases ---- */
            {
                ptrdiff_t j0, j1;
                FN(fm_deep_own)(s[1], t, nt, &j0, &j1);
                const REAL *D = ws->D + ws->h_off[0];
                REAL *WT = (summed ? ws->GW : net->W) + net->w_off[0];
                REAL *b = (summed ? ws->Gb : net->b) + net->b_off[0];
                const REAL lr = summed ? R(-1) : opt->lr; /* fm_update subtracts lr x d */
                if (mask) { /* each touched row once, with the sum over the chunk's examples */
                    const REAL *vals[FM_MASK_ROWS], *next[FM_MASK_ROWS];
                    for (ptrdiff_t r = 0; r < C; r++) {
                        const int32_t *idx;
                        FN(fm_row)(ex, order[r], &vals[r], &idx);
                    }
                    for (ptrdiff_t j = j0; j < j1; j += DGROUP) {
                        const int nl = (int)(((j1 - j < DGROUP ? j1 - j : DGROUP)) / DLANES);
                        for (ptrdiff_t r = 0; r < C; r++) next[r] = vals[r];
                        FN(fm_grouped_rows)(WT + j * n[0], NULL, DGROUP, nl, lr, mask, words, j + DGROUP >= j1, n[0],
                                            next, D + j, s[1]);
                    }
                }
                for (ptrdiff_t r = 0; r < C; r++) {
                    if (!mask) {
                        const REAL *vals;
                        const int32_t *idx;
                        const ptrdiff_t k = FN(fm_row)(ex, order[r], &vals, &idx);
                        for (ptrdiff_t j = j0; j < j1; j += DGROUP) {
                            const int nl = (int)(((j1 - j < DGROUP ? j1 - j : DGROUP)) / DLANES);
                            FN(fm_update)(WT + j * n[0], DGROUP, nl, lr, vals, idx, k, D + r * s[1] + j);
                        }
                    }
                    FN(fm_axpy)(b + j0, -lr, D + r * s[1] + j0, j1 - j0);
                }
            }
        }
        if (!summed)
            continue;
        /* ---- the step (fm_step_dense) from the batch's gradient, on what this thread owns ---- */
        for (int k = 1; k <= L; k++) {
            ptrdiff_t j0, j1;
            FN(fm_deep_own)(s[k], t, nt, &j0, &j1); /* columns of WT_1 and of the hidden biases */
            REAL *W = net->W + net->w_off[k - 1], *G = ws->GW + net->w_off[k - 1];
            REAL *V = momentum ? net->VW + net->w_off[k - 1] : NULL, *S = adam ? net->SW + net->w_off[k - 1] : NULL;
            if (k == 1) { /* this thread's panels, one block */
                const ptrdiff_t at = j0 * n[0], len = (j1 - j0 + DGROUP - 1) / DGROUP * DGROUP * n[0];
                FN(fm_step_dense)(W + at, V ? V + at : NULL, S ? S + at : NULL, G + at, len, &step, decay);
                memset(G + at, 0, (size_t)len * sizeof(REAL));
            } else {
                ptrdiff_t i0, i1;
                FN(fm_deep_own)(s[k - 1], t, nt, &i0, &i1); /* rows of WT_k */
                const ptrdiff_t at = i0 * s[k], len = (i1 - i0) * s[k];
                FN(fm_step_dense)(W + at, V ? V + at : NULL, S ? S + at : NULL, G + at, len, &step, decay);
                memset(G + at, 0, (size_t)len * sizeof(REAL));
            }
            if (k < L) {
                const ptrdiff_t at = net->b_off[k - 1] + j0;
                FN(fm_step_dense)(net->b + at, momentum ? net->Vb + at : NULL, adam ? net->Sb + at : NULL, ws->Gb + at,
                                  j1 - j0, &step, R(0));
                memset(ws->Gb + at, 0, (size_t)(j1 - j0) * sizeof(REAL));
            }
        }
        FN(fm_step_dense)(by, Vby, Sby, Gby, nout, &step, R(0));
        memset(Gby, 0, (size_t)nout * sizeof(REAL));
    }
    if (t == 0) { /* every thread's copy of the output biases is the same */
        memcpy(net->b + net->b_off[L - 1], by, (size_t)nout * sizeof(REAL));
        if (momentum)
            memcpy(net->Vb + net->b_off[L - 1], Vby, (size_t)nout * sizeof(REAL));
        if (adam)
            memcpy(net->Sb + net->b_off[L - 1], Sby, (size_t)nout * sizeof(REAL));
    }
}

FM_LEVEL_FN int FN(fm_deep_epoch)(const FT(fm_deep) *net, const FT(fm_rows) *ex, const FT(fm_step) *opt,
                                  const FT(fm_dwork) *ws, FT(fm_gemm_ptr) gemm, int n_threads, fm_tally *tally)
{
    const int status = fm_check_codes(net->act, net->loss, opt->kind);
    if (status != FM_OK)
        return status;
    const int L = net->n_layers, adam = FM_SECOND_MOMENT(opt->kind);
    int bad = L < 2 || ws->rows < 1 || ((opt->kind != FM_SGD || opt->momentum != 0) && !(net->VW && net->Vb)) ||
              (adam && !(net->SW && net->Sb)) || fm_check_targets(net->loss, ex->labels, ex->targets) != FM_OK;
    for (int k = 1; k <= L && !bad; k++)
        bad = net->s[k] % DLANES || net->s[k] < net->n[k] || (k < L && ws->n_iota < net->s[k]);
    const int summed = !FN(fm_step_plain)(opt, opt->decay) || ws->rows < (ex->batch < ex->n ? ex->batch : ex->n);
    n_threads = n_threads < 1 ? 1 : (n_threads > FM_MAX_THREADS ? FM_MAX_THREADS : n_threads);
    if (bad || (summed && !(ws->GW && ws->Gb)) || ws->n_own < n_threads ||
        (ws->mask && (ws->rows > FM_MASK_ROWS || ws->group_min < 1 || ws->n_mask < n_threads)))
        return FM_ERR_LAYOUT;
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
    {
        const int t = omp_get_thread_num();
        FN(fm_deep_thread)(net, ex, opt, ws, gemm, t, omp_get_num_threads(), t == 0 ? tally : NULL);
    }
#else
    FN(fm_deep_thread)(net, ex, opt, ws, gemm, 0, 1, tally);
#endif
    return FM_OK;
}

#undef DGROUP
#undef DLANES
