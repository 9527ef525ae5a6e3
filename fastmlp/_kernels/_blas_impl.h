/* Template body of the BLAS epoch, included by _fused_level.h once per REAL and
 * kernel level after _ops.h and _fused_impl.h (whose fused steps it uses).
 *
 * Mini-batch SGD over dense rows with GEMMs, the model's own layout: Wh (nh, n_in),
 * bh, Wy (nout, nh), by. Threads split the hidden units into blocks fixed by nh
 * alone (about 64 units each) and each thread owns whole blocks: per block one
 * GEMM each for H = f(Xb Wh^T + bh), the block's partial logits, dH, and the
 * updates of Wy and Wh (straight into the weights, beta = 1), every GEMM on one
 * BLAS thread. The GEMMs' shapes, and so their arithmetic, do not depend on the
 * thread count, and the partial logits are added in block order: results are
 * bitwise identical for every thread count (OpenBLAS's own threads are not:
 * they differ in the last bits between one thread and two).
 *
 * Per batch the threads meet three times: after gathering the batch's rows (each
 * thread copies a share), after the partial logits, and after dl/dz (each thread
 * computes a share of the rows).
 */

/* Row-major C (M, N) = alpha op(A) op(B) + beta C; lda/ldb/ldc are row strides.
 * Column-major BLAS sees a row-major matrix as its transpose, so this is the
 * column-major C^T = alpha op(B)^T op(A)^T + beta C^T. */
static FM_INLINE void FN(fm_gemm)(FT(fm_gemm_ptr) gemm, int ta, int tb, int M, int N, int K, REAL alpha,
                                  const REAL *A, int lda, const REAL *B, int ldb, REAL beta, REAL *C, int ldc)
{
    if (M == 0 || N == 0)
        return;
    const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
    gemm(&cb, &ca, &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta, C, &ldc);
}

static FM_INLINE void FN(fm_blas_thread)(const FT(fm_dense) *net, const FT(fm_batches) *ex, const FT(fm_step) *opt,
                                         const FT(fm_bwork) *ws, FT(fm_gemm_ptr) gemm, int t, int nt,
                                         fm_tally *tally)
{
    const REAL lr = opt->lr;
    const int n_in = (int)ex->n_in, nh = (int)net->nh, nout = (int)net->nout;
    const ptrdiff_t n = ex->n, batch = ex->batch;
    const int nb = net->n_blocks;
    const int j0 = (int)((int64_t)nb * t / nt), j1 = (int)((int64_t)nb * (t + 1) / nt);
    int parity = 0;
    for (ptrdiff_t start = 0; start < n; start += batch, parity ^= 1) {
        const int B = (int)(n - start < batch ? n - start : batch);
        const ptrdiff_t r0 = (ptrdiff_t)B * t / nt, r1 = (ptrdiff_t)B * (t + 1) / nt;
        /* the batch's rows: in place where they lie in order in X, else gathered */
        int in_order = 1;
        for (int b = 1; b < B && in_order; b++)
            in_order = ex->order[start + b] == ex->order[start] + b;
        const REAL *Xb = ex->X + ex->order[start] * (ptrdiff_t)n_in;
        if (!in_order) {
            REAL *buf = ws->Xb + parity * batch * (ptrdiff_t)n_in;
            for (ptrdiff_t b = r0; b < r1; b++)
                memcpy(buf + b * n_in, ex->X + ex->order[start + b] * (ptrdiff_t)n_in, sizeof(REAL) * n_in);
            Xb = buf;
            FM_BARRIER(ws->sync, nt);
        }
        /* per block: H = f(Xb Wh^T + bh), then the block's partial logits */
        for (int j = j0; j < j1; j++) {
            const int u0 = net->block_unit[j], w = net->block_unit[j + 1] - u0;
            REAL *H = ws->H + j * batch * net->block_max, *Zp = ws->Zp + j * batch * (ptrdiff_t)nout;
            FN(fm_gemm)(gemm, 0, 1, B, w, n_in, R(1), Xb, n_in, net->Wh + (ptrdiff_t)u0 * n_in, n_in, R(0), H, w);
            FN(fm_add_bias_activate)(net->act, H, net->bh + u0, B, w);
            FN(fm_gemm)(gemm, 0, 1, B, nout, w, R(1), H, w, net->Wy + u0, nh, R(0), Zp, nout);
        }
        FM_BARRIER(ws->sync, nt);
        /* dl/dz of a share of the rows: the blocks' partial logits added in block
         * order, each row scaled by its share of the (weighted) batch mean */
        const double weight_sum = FN(fm_batch_weight)(ex->weights, ex->order, start, B);
        const REAL decay = FN(fm_batch_decay)(opt, weight_sum);
        const int plain = FN(fm_step_plain)(opt, decay);
        const FT(fm_step) step = FN(fm_step_at)(opt, start / batch);
        for (ptrdiff_t b = r0; b < r1; b++) {
            REAL *dz = ws->dZ + b * nout;
            for (int o = 0; o < nout; o++) {
                REAL z = net->by[o];
                for (int j = 0; j < nb; j++) z += ws->Zp[(j * batch + b) * nout + o];
                dz[o] = z;
            }
            const intptr_t r = ex->order[start + b];
            const double w = ex->weights ? (double)ex->weights[r] : 1.0;
            fm_tally row = {0, 0};
            FN(fm_row_loss_grad)(net->loss, dz, ex->labels, ex->targets, r, dz, nout,
                                 weight_sum > 0 ? (REAL)(w / weight_sum) : R(0), w, &row);
            ws->row_loss[b] = row.loss_sum;
            ws->row_correct[b] = row.correct;
        }
        FM_BARRIER(ws->sync, nt);
        /* per block: dH = (dZ Wy) * f'(H) before Wy changes, then the updates:
         * plain SGD straight into the weights (GEMMs with beta = 1); else the
         * gradients apart first, then the step (fm_step_dense) */
        for (int j = j0; j < j1; j++) {
            const int u0 = net->block_unit[j], w = net->block_unit[j + 1] - u0;
            const REAL *H = ws->H + j * batch * net->block_max;
            REAL *dH = ws->dH + j * batch * net->block_max;
            FN(fm_gemm)(gemm, 0, 0, B, w, nout, R(1), ws->dZ, nout, net->Wy + u0, nh, R(0), dH, w);
            FN(fm_act_grad)(net->act, dH, H, (ptrdiff_t)B * w);
            if (plain) {
                FN(fm_gemm)(gemm, 1, 0, nout, w, B, -lr, ws->dZ, nout, H, w, R(1), net->Wy + u0, nh);
                FN(fm_bias_update)(net->bh + u0, dH, B, w, lr);
                FN(fm_gemm)(gemm, 1, 0, w, n_in, B, -lr, dH, w, Xb, n_in, R(1), net->Wh + (ptrdiff_t)u0 * n_in, n_in);
                continue;
            }
            REAL *gWy = ws->GWy + u0, *gWh = ws->GWh + (ptrdiff_t)u0 * n_in, *gbh = ws->gb + u0;
            FN(fm_gemm)(gemm, 1, 0, nout, w, B, R(1), ws->dZ, nout, H, w, R(0), gWy, nh);
            for (int o = 0; o < nout; o++)
                FN(fm_step_dense)(net->Wy + o * nh + u0, net->VWy ? net->VWy + o * nh + u0 : NULL,
                                 net->SWy ? net->SWy + o * nh + u0 : NULL, gWy + o * nh, w, &step, decay);
            for (int c = 0; c < w; c++) gbh[c] = 0;
            for (int b = 0; b < B; b++)
                for (int c = 0; c < w; c++) gbh[c] += dH[b * w + c];
            FN(fm_step_dense)(net->bh + u0, net->Vbh ? net->Vbh + u0 : NULL, net->Sbh ? net->Sbh + u0 : NULL, gbh, w, &step,
                              R(0));
            FN(fm_gemm)(gemm, 1, 0, w, n_in, B, R(1), dH, w, Xb, n_in, R(0), gWh, n_in);
            FN(fm_step_dense)(net->Wh + (ptrdiff_t)u0 * n_in, net->VWh ? net->VWh + (ptrdiff_t)u0 * n_in : NULL,
                              net->SWh ? net->SWh + (ptrdiff_t)u0 * n_in : NULL, gWh, (ptrdiff_t)w * n_in, &step, decay);
        }
        if (t == 0) { /* read again only after the next batch's second barrier */
            if (plain) {
                FN(fm_bias_update)(net->by, ws->dZ, B, nout, lr);
            } else {
                REAL *gby = ws->gb + nh;
                for (int o = 0; o < nout; o++) gby[o] = 0;
                for (int b = 0; b < B; b++)
                    for (int o = 0; o < nout; o++) gby[o] += ws->dZ[b * nout + o];
                FN(fm_step_dense)(net->by, net->Vby, net->Sby, gby, nout, &step, R(0));
            }
            for (int b = 0; b < B; b++) {
                tally->loss_sum += ws->row_loss[b];
                tally->correct += ws->row_correct[b];
            }
        }
    }
}

FM_LEVEL_FN int FN(fm_blas_epoch)(const FT(fm_dense) *net, const FT(fm_batches) *ex, const FT(fm_step) *opt,
                                  const FT(fm_bwork) *ws, FT(fm_gemm_ptr) gemm, int n_threads, fm_tally *tally)
{
    const int status = fm_check_codes(net->act, net->loss, opt->kind);
    if (status != FM_OK)
        return status;
    const int summed = opt->kind != FM_SGD, adam = FM_SECOND_MOMENT(opt->kind);
    if ((summed || opt->momentum != 0 || opt->decay != 0) && !(ws->GWh && ws->GWy && ws->gb))
        return FM_ERR_LAYOUT;
    if ((summed || opt->momentum != 0) && !(net->VWh && net->Vbh && net->VWy && net->Vby))
        return FM_ERR_LAYOUT;
    if ((adam && !(net->SWh && net->Sbh && net->SWy && net->Sby)) ||
        fm_check_targets(net->loss, ex->labels, ex->targets) != FM_OK)
        return FM_ERR_LAYOUT;
    n_threads = n_threads > net->n_blocks ? net->n_blocks : n_threads;
    n_threads = n_threads < 1 ? 1 : (n_threads > FM_MAX_THREADS ? FM_MAX_THREADS : n_threads);
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
    FN(fm_blas_thread)(net, ex, opt, ws, gemm, omp_get_thread_num(), omp_get_num_threads(), tally);
#else
    FN(fm_blas_thread)(net, ex, opt, ws, gemm, 0, 1, tally);
#endif
    return FM_OK;
}
