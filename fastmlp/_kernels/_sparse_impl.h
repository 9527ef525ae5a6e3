/* Template body of the sparse epoch, included by _fused_level.h once per REAL
 * and kernel level after _ops.h and _fused_impl.h.
 *
 * Mini-batch SGD organised around the non-zero inputs. The hidden weights are
 * held transposed, WhT (n_in, hidden), so that the forward pass
 *     h~ = bh + sum over the non-zero inputs i of x_i WhT[i, :]
 * and the update WhT[i, :] -= lr x_i dh~ are passes over rows of WhT, taken only
 * for the inputs that are non-zero.
 *
 * Threads split the hidden units. The units are padded with zero units to whole
 * cache lines, the lines are cut into groups of at most four (fixed by the number
 * of hidden units alone), and each thread owns a slice of whole groups: its
 * columns of WhT, bh and Wy live in arrays of their own (no cache line is shared
 * between threads, whose prefetchers and writes would otherwise fight over
 * neighbouring lines). Per batch the threads meet once: each writes the logits'
 * partial sums of its groups, and after the barrier the partial sums are added
 * in group order to give dl/dz; the rest of the step (dh~, every update) touches
 * only the thread's own units. The arithmetic of a unit, and the order of every
 * sum, is the same for any number of threads: results are bitwise identical for
 * every thread count. The activation applies to the hidden units only: the
 * padded units have no weights in or out, so their sums stay zero, whatever f(0)
 * is (logistic(0) = 0.5 would give them weights out).
 *
 * In a group, the forward pass keeps the group's lines in registers while it
 * runs over the example's non-zero inputs (each line in VPL vector registers),
 * and the update keeps the example's dh~ lines in registers while it runs over
 * the same rows, last first (the forward pass has just left them in L1).
 *
 * Three ways to update WhT, by batch size (epochs.sparse_work sets them up):
 * - per non-zero: each example's rows take their own update (small batches);
 * - grouped: batches (or chunks) of group_min examples or more update each row
 *   they touch once, with the sum over their examples (fm_grouped_rows): the
 *   forward pass sets a bit per example in a per-thread mask of the inputs (one
 *   OR per non-zero, while the row is read anyway), and the update walks the
 *   inputs in order, taking each example's next non-zero from a cursor into its
 *   row (rows have sorted, unique indices), its dh~ row from L1 and the sums in
 *   registers;
 * - in chunks: a batch larger than the workspace is taken `rows` examples at a
 *   time, the chunk's activations staying in cache, its gradient of WhT summed in
 *   gWhT and the step taken after the last chunk. An epoch of one full batch takes
 *   its examples in row order, so its chunks are the same every epoch and their
 *   non-zeros are grouped by input once per fit (fm_group_chunks): each row of
 *   gWhT then takes one sum per chunk instead of an update per non-zero.
 *
 * docs/design/kernels.md records the measurements behind these choices and the
 * variants that were tried and measured slower.
 */

#define LANES ((ptrdiff_t)(FM_LINE / sizeof(REAL)))
/* A vector register of the level (FM_VBYTES bytes: 64 for AVX-512, 32 for AVX2,
 * 16 for the baseline), VPL of them to a cache line, VLANES values in each. The
 * loops hold a line as VPL registers: gcc keeps vector types of the register's
 * width in registers, where a vector type twice as wide goes through the stack
 * at every operation. */
#define VL FN(fm_vreg)
#define VPL (FM_LINE / FM_VBYTES)
#define VLANES ((ptrdiff_t)(FM_VBYTES / sizeof(REAL)))
/* The row length of by, gby, Vby (one row per slice) and dZ: nout padded to whole
 * cache lines, so that no two threads write to one line. Each thread steps its own
 * copy of by and writes its own dl/dz; had they shared lines, the line would move
 * between the cores at every example. */
#define OUT_STRIDE(nout) (((nout) + LANES - 1) / LANES * LANES)

/* BODY(NL) for the number of lines nl from 1 to 4, each a loop compiled for its
 * width with its sums in registers; returns from the function that uses it. */
#define FM_BY_LINES(nl, BODY)                                                                      \
    switch (nl) {                                                                                  \
    case 1: BODY(1) return;                                                                        \
    case 2: BODY(2) return;                                                                        \
    case 3: BODY(3) return;                                                                        \
    case 4: BODY(4) return;                                                                        \
    default: break;                                                                                \
    }

#if FM_VECTORS
typedef REAL VL __attribute__((vector_size(FM_VBYTES), may_alias));
typedef REAL FN(fm_v32) __attribute__((vector_size(32), may_alias));
typedef REAL FN(fm_v16) __attribute__((vector_size(16), may_alias));

/* The sum of a line's lanes (its VPL registers v[0 ..]): halves added to halves,
 * lane by lane, in registers, down to the last lane; the same order at every
 * level (an `omp simd reduction` would end in one dependent scalar add per lane). */
static FM_INLINE REAL FN(fm_line_sum)(const VL *v)
{
    VL u[VPL];
    for (int p = 0; p < VPL; p++) u[p] = v[p];
    for (int w = VPL / 2; w > 0; w /= 2)
        for (int p = 0; p < w; p++) u[p] += u[p + w];
#if FM_VBYTES == 64
    union {
        VL v;
        FN(fm_v32) half[2];
    } a = {u[0]};
    union {
        FN(fm_v32) v;
        FN(fm_v16) half[2];
    } b = {a.half[0] + a.half[1]};
#elif FM_VBYTES == 32
    union {
        FN(fm_v32) v;
        FN(fm_v16) half[2];
    } b = {u[0]};
#endif
    union {
        FN(fm_v16) v;
        REAL lane[16 / sizeof(REAL)];
    } c = {
#if FM_VBYTES >= 32
        b.half[0] + b.half[1]
#else
        u[0]
#endif
    };
    const int n = 16 / sizeof(REAL); /* 4 in float, 2 in double */
    for (int w = n / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++) c.lane[j] += c.lane[j + w];
    return c.lane[0];
}
#endif

/* Row r of the data: its values, their input features, and their number. */
static FM_INLINE ptrdiff_t FN(fm_row)(const FT(fm_rows) *ex, intptr_t r, const REAL **vals, const int32_t **idx)
{
    if (ex->indptr) {
        const int64_t a = ex->indptr[r];
        *vals = ex->data + a;
        *idx = ex->indices + a;
        return (ptrdiff_t)(ex->indptr[r + 1] - a);
    }
    *vals = ex->data + r * ex->n_in; /* dense rows: every input, indices 0..n_in-1 */
    *idx = ex->indices;
    return ex->n_in;
}

/* Asks for the start of row r's values and indices to be brought into cache (the
 * hardware prefetcher follows on from there), and for the offsets of row r2. The
 * examples are visited in random order, so nothing else can guess them.
 *
 * With `whole`, the rest of row r's lines are asked for too, into L2. In the
 * sparse epoch, the threads whose slices are narrower than the widest ask for
 * that: every thread reads every example's row, and the narrower threads, which
 * finish their update first, reach each row first and would wait for it from
 * memory. The widest thread, which sets the pace otherwise, finds the rows
 * brought in and does not pay for the requests (which compete with the row reads
 * for the line fill buffers). */
static FM_INLINE void FN(fm_prefetch_row)(const FT(fm_rows) *ex, intptr_t r, intptr_t r2, int whole)
{
#if defined(__GNUC__) || defined(__clang__)
    const REAL *vals;
    const int32_t *idx;
    const ptrdiff_t k = FN(fm_row)(ex, r, &vals, &idx);
    __builtin_prefetch(vals, 0, 3);
    if (ex->indptr) {
        __builtin_prefetch(idx, 0, 3);
        __builtin_prefetch(ex->indptr + r2, 0, 3);
        if (whole) {
            for (ptrdiff_t e = LANES; e < k; e += LANES) __builtin_prefetch(vals + e, 0, 2);
            const ptrdiff_t idx_lanes = FM_LINE / (ptrdiff_t)sizeof(int32_t);
            for (ptrdiff_t e = idx_lanes; e < k; e += idx_lanes) __builtin_prefetch(idx + e, 0, 2);
        }
    }
#else
    (void)ex;
    (void)r;
    (void)r2;
    (void)whole;
#endif
}

/* h[0 : NL lines] = b + sum_t vals[t] W[idx[t] * stride : + NL lines], the NL
 * accumulators held in registers through the loop over the non-zeros; with a
 * mask, mask[idx[t] * words] |= bit for each of them on the way (see
 * fm_grouped_rows). */
#if FM_VECTORS
#define FM_GATHER(NL)                                                                \
    {                                                                                \
        VL a[NL * VPL];                                                              \
        for (int l = 0; l < NL * VPL; l++) a[l] = ((const VL *)b)[l];                \
        for (ptrdiff_t t = 0; t < k; t++) {                                          \
            const REAL x = vals[t];                                                  \
            const VL *restrict w = (const VL *)(W + (ptrdiff_t)idx[t] * stride);     \
            if (mask)                                                                \
                mask[(ptrdiff_t)idx[t] * words] |= bit;                              \
            for (int l = 0; l < NL * VPL; l++) a[l] += x * w[l];                     \
        }                                                                            \
        for (int l = 0; l < NL * VPL; l++) ((VL *)h)[l] = a[l];                      \
    }
#endif

static FM_INLINE void FN(fm_gather)(REAL *restrict h, const REAL *restrict b, int nl, const REAL *restrict vals,
                                    const int32_t *restrict idx, ptrdiff_t k, const REAL *restrict W,
                                    ptrdiff_t stride, uint64_t *restrict mask, ptrdiff_t words, uint64_t bit)
{
#if FM_VECTORS
    FM_BY_LINES(nl, FM_GATHER)
#endif
    const ptrdiff_t n = nl * LANES;
    for (ptrdiff_t j = 0; j < n; j++) h[j] = b[j];
    for (ptrdiff_t t = 0; t < k; t++) {
        const REAL x = vals[t];
        const REAL *restrict w = W + (ptrdiff_t)idx[t] * stride;
        if (mask)
            mask[(ptrdiff_t)idx[t] * words] |= bit;
#pragma omp simd
        for (ptrdiff_t j = 0; j < n; j++) h[j] += x * w[j];
    }
}

/* W[idx[e], 0 : NL lines] -= (lr vals[e]) d[0 : NL lines] for the entries e of one
 * example, last first (the forward pass just read them: the last are in L1), d
 * held in registers. */
#if FM_VECTORS
#define FM_UPDATE(NL)                                                                \
    {                                                                                \
        VL dv[NL * VPL];                                                             \
        for (int l = 0; l < NL * VPL; l++) dv[l] = ((const VL *)d)[l];               \
        for (ptrdiff_t e = k - 1; e >= 0; e--) {                                     \
            const REAL a = lr * vals[e];                                             \
            VL *restrict w = (VL *)(W + (ptrdiff_t)idx[e] * stride);                 \
            for (int l = 0; l < NL * VPL; l++) w[l] -= a * dv[l];                    \
        }                                                                            \
    }
#endif

static FM_INLINE void FN(fm_update)(REAL *restrict W, ptrdiff_t stride, int nl, REAL lr, const REAL *restrict vals,
                                    const int32_t *restrict idx, ptrdiff_t k, const REAL *restrict d)
{
#if FM_VECTORS
    FM_BY_LINES(nl, FM_UPDATE)
#endif
    const ptrdiff_t n = nl * LANES;
    for (ptrdiff_t e = k - 1; e >= 0; e--) {
        const REAL a = lr * vals[e];
        REAL *restrict w = W + (ptrdiff_t)idx[e] * stride;
#pragma omp simd
        for (ptrdiff_t j = 0; j < n; j++) w[j] -= a * d[j];
    }
}

/* Each row of W that the examples of a batch (or chunk) touch, once: for every
 * input i with bits in mask[i * words .. + words) (cleared as read where `clear`;
 * the rows of W `stride` elements apart, those of d `dstride`),
 * s = the sum, over those examples b in order, of x_bi d[b * dstride, 0 : nl lines],
 * then W[i, :] -= c s and, with V, V[i, :] += s. x_bi is the next entry of example
 * b's row, *next[b]++: the inputs go in order and each row's indices are
 * sorted and unique. The sums are held in registers, the d rows read from L1, and
 * the mask was filled by the forward pass (fm_gather): no sorting. The inputs are
 * taken 64 at a time: first one word of which of them any example touched (a
 * loop without branches), then only those, in order. */
#if FM_VECTORS
#define FM_GROUPED_ROWS(NL)                                                           \
    for (ptrdiff_t i0 = 0; i0 < n_in; i0 += 64) {                                     \
        const ptrdiff_t ni = n_in - i0 < 64 ? n_in - i0 : 64;                         \
        uint64_t live = 0;                                                            \
        for (ptrdiff_t j = 0; j < ni; j++) {                                          \
            uint64_t m = 0;                                                           \
            for (ptrdiff_t q = 0; q < words; q++) m |= mask[(i0 + j) * words + q];    \
            live |= (uint64_t)(m != 0) << j;                                          \
        }                                                                             \
        while (live) {                                                                \
            const ptrdiff_t i = i0 + __builtin_ctzll(live);                           \
            live &= live - 1;                                                         \
            uint64_t *restrict mi = mask + i * words;                                 \
            VL a[NL * VPL];                                                           \
            for (int l = 0; l < NL * VPL; l++) a[l] = (VL){0};                        \
            for (ptrdiff_t q = 0; q < words; q++) {                                   \
                uint64_t m = mi[q];                                                   \
                if (!m)                                                               \
                    continue;                                                         \
                if (clear)                                                            \
                    mi[q] = 0;                                                        \
                do {                                                                  \
                    const ptrdiff_t b = q * 64 + __builtin_ctzll(m);                  \
                    m &= m - 1;                                                       \
                    const REAL x = *next[b]++;                                        \
                    const VL *restrict dv = (const VL *)(d + b * dstride);            \
                    for (int l = 0; l < NL * VPL; l++) a[l] += x * dv[l];             \
                } while (m);                                                          \
            }                                                                         \
            VL *restrict w = (VL *)(W + i * stride);                                  \
            for (int l = 0; l < NL * VPL; l++) w[l] -= c * a[l];                      \
            if (V) {                                                                  \
                VL *restrict v = (VL *)(V + i * stride);                              \
                for (int l = 0; l < NL * VPL; l++) v[l] += a[l];                      \
            }                                                                         \
        }                                                                             \
    }
#endif

static FM_INLINE void FN(fm_grouped_rows)(REAL *restrict W, REAL *restrict V, ptrdiff_t stride, int nl, REAL c,
                                          uint64_t *restrict mask, ptrdiff_t words, int clear, ptrdiff_t n_in,
                                          const REAL **restrict next, const REAL *restrict d, ptrdiff_t dstride)
{
#if FM_VECTORS
    FM_BY_LINES(nl, FM_GROUPED_ROWS)
#endif
    const ptrdiff_t n = nl * LANES;
    REAL a[4 * LANES];
    for (ptrdiff_t i = 0; i < n_in; i++) {
        int any = 0;
        for (ptrdiff_t j = 0; j < n; j++) a[j] = 0;
        for (ptrdiff_t b = 0; b < words * 64; b++) {
            uint64_t *restrict mq = mask + i * words + b / 64;
            if (!((*mq >> (b % 64)) & 1))
                continue;
            any = 1;
            const REAL x = *next[b]++;
#pragma omp simd
            for (ptrdiff_t j = 0; j < n; j++) a[j] += x * d[b * dstride + j];
        }
        if (clear)
            for (ptrdiff_t q = 0; q < words; q++) mask[i * words + q] = 0;
        if (!any)
            continue;
#pragma omp simd
        for (ptrdiff_t j = 0; j < n; j++) W[i * stride + j] -= c * a[j];
        if (V)
#pragma omp simd
            for (ptrdiff_t j = 0; j < n; j++) V[i * stride + j] += a[j];
    }
}

/* The lines of group g of the slice starting at group g0: (offset in elements, lines). */
#define GROUP_OFF(g) ((net->group_line[g] - net->group_line[g0]) * LANES)
#define GROUP_LINES(g) ((int)(net->group_line[(g) + 1] - net->group_line[g]))

/* How many of the `width` units of slice s are hidden units, not padding. */
static FM_INLINE ptrdiff_t FN(fm_live_units)(const FT(fm_net) *net, int s, ptrdiff_t width)
{
    const ptrdiff_t live = net->nh - (ptrdiff_t)net->group_line[net->slice_group[s]] * LANES;
    return live < 0 ? 0 : (live > width ? width : live);
}

/* Whether C examples at a time update each touched row once (fm_grouped_slice):
 * with a mask, from group_min examples up, and not where a full batch's chunks
 * come grouped already (cptr). */
#define FM_GROUPED(ws, C) ((ws)->mask && !(ws)->cptr && (C) >= (ws)->group_min)
/* Words of the mask per input, and thread t's block of it (see fm_swork). */
#define MASK_WORDS(ws) (((ws)->rows + 63) / 64)
#define THREAD_MASK(ws, t, n_in) ((ws)->mask + (t) * (n_in) * MASK_WORDS(ws))

/* fm_grouped_rows over the groups of slice s for thread t: Ws (and Vs) the slice's
 * rows of WhT or gWhT (and VWhT), the C examples order[start ..], dl/dh~ in dH. The
 * thread's mask is cleared on its last slice's last group. */
static FM_INLINE void FN(fm_grouped_slice)(const FT(fm_net) *net, const FT(fm_rows) *ex, const FT(fm_swork) *ws, int t,
                                           int nt, int s, REAL *Ws, REAL *Vs, REAL c, ptrdiff_t start, ptrdiff_t C,
                                           const REAL *dH)
{
    const ptrdiff_t n_in = ex->n_in, stride = net->stride, words = MASK_WORDS(ws);
    const int g0 = net->slice_group[s], g1 = net->slice_group[s + 1];
    const REAL *vals[FM_MASK_ROWS], *next[FM_MASK_ROWS];
    for (ptrdiff_t b = 0; b < C; b++) {
        const int32_t *idx;
        FN(fm_row)(ex, ex->order[start + b], &vals[b], &idx);
    }
    for (int g = g0; g < g1; g++) {
        for (ptrdiff_t b = 0; b < C; b++) next[b] = vals[b];
        FN(fm_grouped_rows)(Ws + GROUP_OFF(g), Vs ? Vs + GROUP_OFF(g) : NULL, stride, GROUP_LINES(g), c,
                            THREAD_MASK(ws, t, n_in), words, g == g1 - 1 && s + nt >= net->n_slices, n_in, next,
                            dH + GROUP_OFF(g), stride);
    }
}

/* dl/dz of examples [b0, b1) of the batch starting at `start` (B examples whose
 * sample weights sum to weight_sum): the groups' partial logits added to by in
 * group order, then the row loss, scaled by the row's share of the batch mean.
 * Each row's weighted loss and correctness go to row_loss/row_correct where
 * given, else into *tally. */
static FM_INLINE void FN(fm_sparse_dz)(const FT(fm_net) *net, const FT(fm_rows) *ex, const REAL *by,
                                       ptrdiff_t start, double weight_sum, ptrdiff_t b0, ptrdiff_t b1,
                                       const REAL *restrict Zp, REAL *restrict dZ, double *row_loss,
                                       double *row_correct, fm_tally *tally)
{
    const ptrdiff_t nout = net->nout, ostride = OUT_STRIDE(nout);
    const int n_groups = net->n_groups;
    for (ptrdiff_t b = b0; b < b1; b++) {
        REAL *restrict dz = dZ + b * ostride;
        for (ptrdiff_t o = 0; o < nout; o++) {
            REAL z = by[o];
            for (int g = 0; g < n_groups; g++) z += Zp[(b * n_groups + g) * nout + o];
            dz[o] = z;
        }
        const intptr_t r = ex->order[start + b];
        const double w = ex->weights ? (double)ex->weights[r] : 1.0;
        const REAL scale = weight_sum > 0 ? (REAL)(w / weight_sum) : R(0);
        fm_tally row = {0, 0};
        FN(fm_row_loss_grad)(net->loss, dz, ex->labels, ex->targets, r, dz, nout, scale, w, row_loss ? &row : tally);
        if (row_loss) {
            row_loss[b] = row.loss_sum;
            row_correct[b] = row.correct;
        }
    }
}

/* W[idx[e], 0:n] -= (c vals[e]) d[0:n] and V[idx[e], 0:n] += vals[e] d[0:n] for the
 * entries of one example: the sparse part of a momentum step (see fm_sparse_step). */
static FM_INLINE void FN(fm_update_momentum)(REAL *restrict W, REAL *restrict V, ptrdiff_t stride, ptrdiff_t n, REAL c,
                                             const REAL *restrict vals, const int32_t *restrict idx, ptrdiff_t k,
                                             const REAL *restrict d)
{
    for (ptrdiff_t e = k - 1; e >= 0; e--) {
        const REAL x = vals[e], a = c * vals[e];
        REAL *restrict w = W + (ptrdiff_t)idx[e] * stride, *restrict v = V ? V + (ptrdiff_t)idx[e] * stride : NULL;
        if (v) {
#pragma omp simd
            for (ptrdiff_t j = 0; j < n; j++) {
                w[j] -= a * d[j];
                v[j] += x * d[j];
            }
        } else {
#pragma omp simd
            for (ptrdiff_t j = 0; j < n; j++) w[j] -= a * d[j];
        }
    }
}

/* For slice s, over examples [0, C) of the workspace: dh~ = (Wy^T dz) * f'(h)
 * with Wy before the step, and the gradients of Wy, bh and by summed into gWy,
 * gbh and gby: afresh where `fresh`, else added to the sums of the batch's earlier
 * chunks. */
static FM_INLINE void FN(fm_sparse_output_grads)(const FT(fm_net) *net, const FT(fm_swork) *ws, int s, ptrdiff_t width,
                                                 ptrdiff_t C, const REAL *restrict dZ, int fresh)
{
    const ptrdiff_t nout = net->nout, ostride = OUT_STRIDE(nout), stride = net->stride, rows = ws->rows;
    const REAL *restrict Wy = net->Wy + s * nout * stride, *restrict H = ws->H + s * rows * stride;
    REAL *restrict dH = ws->dH + s * rows * stride, *restrict gWy = ws->gWy + s * nout * stride;
    REAL *restrict gbh = ws->gbh + s * stride, *restrict gby = ws->gby + s * ostride;
#if FM_VECTORS
    /* register by register: each example's Wy^T dz summed over the outputs, and
     * each output's gradient summed over the examples, in registers (the same
     * sums, in the same order, as the loops below) */
    for (ptrdiff_t l = 0; l < width / VLANES; l++) {
        for (ptrdiff_t b = 0; b < C; b++) {
            const REAL *restrict dz = dZ + b * ostride;
            VL dv = (VL){0};
            for (ptrdiff_t o = 0; o < nout; o++) dv += dz[o] * ((const VL *)(Wy + o * stride))[l];
            ((VL *)(dH + b * stride))[l] = dv;
        }
        for (ptrdiff_t o = 0; o < nout; o++) {
            VL *restrict gw = (VL *)(gWy + o * stride) + l;
            VL g = fresh ? (VL){0} : *gw;
            for (ptrdiff_t b = 0; b < C; b++) g += dZ[b * ostride + o] * ((const VL *)(H + b * stride))[l];
            *gw = g;
        }
    }
#else
    if (fresh)
        for (ptrdiff_t o = 0; o < nout; o++)
            for (ptrdiff_t j = 0; j < width; j++) gWy[o * stride + j] = 0;
    for (ptrdiff_t b = 0; b < C; b++) {
        const REAL *restrict h = H + b * stride, *restrict dz = dZ + b * ostride;
        REAL *restrict dh = dH + b * stride;
        for (ptrdiff_t j = 0; j < width; j++) dh[j] = 0;
        for (ptrdiff_t o = 0; o < nout; o++) {
            const REAL d = dz[o];
            const REAL *restrict wy = Wy + o * stride;
            REAL *restrict gw = gWy + o * stride;
#pragma omp simd
            for (ptrdiff_t j = 0; j < width; j++) {
                dh[j] += d * wy[j];
                gw[j] += d * h[j];
            }
        }
    }
#endif
    if (fresh)
        for (ptrdiff_t j = 0; j < width; j++) gbh[j] = 0;
    for (ptrdiff_t b = 0; b < C; b++)
        FN(fm_act_grad_axpy)(net->act, dH + b * stride, H + b * stride, width, gbh, R(1));
    for (ptrdiff_t o = 0; o < nout; o++) {
        REAL dsum = 0;
        for (ptrdiff_t b = 0; b < C; b++) dsum += dZ[b * ostride + o];
        gby[o] = fresh ? dsum : gby[o] + dsum;
    }
}

/* The steps of slice s's Wy (with decay), by and bh from the sums in gWy, gby, gbh. */
static FM_INLINE void FN(fm_sparse_output_step)(const FT(fm_net) *net, const FT(fm_step) *opt, REAL decay,
                                                const FT(fm_swork) *ws, int s, ptrdiff_t width)
{
    const ptrdiff_t nout = net->nout, ostride = OUT_STRIDE(nout), stride = net->stride;
    for (ptrdiff_t o = 0; o < nout; o++) {
        const ptrdiff_t at_b = s * ostride + o, at_w = (s * nout + o) * stride;
        FN(fm_step_dense)(net->by + at_b, net->Vby ? net->Vby + at_b : NULL, net->Sby ? net->Sby + at_b : NULL,
                          ws->gby + at_b, 1, opt, R(0));
        FN(fm_step_dense)(net->Wy + at_w, net->VWy ? net->VWy + at_w : NULL, net->SWy ? net->SWy + at_w : NULL,
                          ws->gWy + at_w, width, opt, decay);
    }
    FN(fm_step_dense)(net->bh + s * stride, net->Vbh ? net->Vbh + s * stride : NULL,
                      net->Sbh ? net->Sbh + s * stride : NULL, ws->gbh + s * stride, width, opt, R(0));
}

/* W[i, 0 : nl lines] += sum over e in [cp[i], cp[i + 1]) of val[e] d[row[e], 0 : nl
 * lines] for every input i: one chunk's non-zeros grouped by input, the sums held
 * in registers, each row of W touched once. */
#if FM_VECTORS
#define FM_GROUPED_SUM(NL)                                                            \
    for (ptrdiff_t i = 0; i < n_in; i++) {                                            \
        const int64_t e0 = cp[i], e1 = cp[i + 1];                                     \
        if (e0 == e1)                                                                 \
            continue;                                                                 \
        VL a[NL * VPL];                                                               \
        for (int l = 0; l < NL * VPL; l++) a[l] = (VL){0};                            \
        for (int64_t e = e0; e < e1; e++) {                                           \
            const REAL x = val[e];                                                    \
            const VL *restrict dv = (const VL *)(d + (ptrdiff_t)row[e] * stride);     \
            for (int l = 0; l < NL * VPL; l++) a[l] += x * dv[l];                     \
        }                                                                             \
        VL *restrict w = (VL *)(W + i * stride);                                      \
        for (int l = 0; l < NL * VPL; l++) w[l] += a[l];                              \
    }
#endif

static FM_INLINE void FN(fm_grouped_sum)(REAL *restrict W, ptrdiff_t stride, int nl, const int64_t *restrict cp,
                                         ptrdiff_t n_in, const uint16_t *restrict row, const REAL *restrict val,
                                         const REAL *restrict d)
{
#if FM_VECTORS
    FM_BY_LINES(nl, FM_GROUPED_SUM)
#endif
    const ptrdiff_t n = nl * LANES;
    for (ptrdiff_t i = 0; i < n_in; i++)
        for (int64_t e = cp[i]; e < cp[i + 1]; e++) {
            const REAL x = val[e];
            const REAL *restrict dv = d + (ptrdiff_t)row[e] * stride;
#pragma omp simd
            for (ptrdiff_t j = 0; j < n; j++) W[i * stride + j] += x * dv[j];
        }
}

/* One chunk of a batch taken in chunks (see fm_swork's gWhT), for thread t: dh~ of
 * the chunk's C examples (order[start ..]) and their gradients added to gWy, gbh,
 * gby and, over each example's non-zero inputs, to gWhT; the sums start from zero
 * at the batch's first chunk (`fresh`). Nothing steps until fm_sparse_apply. */
static FM_INLINE void FN(fm_sparse_accumulate)(const FT(fm_net) *net, const FT(fm_rows) *ex, const FT(fm_swork) *ws,
                                               int t, int nt, ptrdiff_t start, ptrdiff_t C,
                                               const REAL *restrict dZ, int fresh)
{
    const ptrdiff_t n_in = ex->n_in, rows = ws->rows, stride = net->stride;
    for (int s = t; s < net->n_slices; s += nt) {
        const int g0 = net->slice_group[s], g1 = net->slice_group[s + 1];
        const ptrdiff_t width = GROUP_OFF(g1);
        const REAL *restrict dH = ws->dH + s * rows * stride;
        REAL *restrict gWhT = ws->gWhT + s * n_in * stride;
        FN(fm_sparse_output_grads)(net, ws, s, width, C, dZ, fresh);
        if (ws->cptr) {
            /* the chunk's non-zeros grouped by input: gWhT[i, :] += sum over them of x_bi dh~_b */
            const int64_t *cp = ws->cptr + (start / rows) * (n_in + 1);
            for (int g = g0; g < g1; g++)
                FN(fm_grouped_sum)(gWhT + GROUP_OFF(g), stride, GROUP_LINES(g), cp, n_in, ws->crow, ws->cval,
                                   dH + GROUP_OFF(g));
            continue;
        }
        if (FM_GROUPED(ws, C)) {
            FN(fm_grouped_slice)(net, ex, ws, t, nt, s, gWhT, NULL, R(-1), start, C, dH);
            continue;
        }
        /* gWhT[i, :] += x_bi dh~_b (a row update with a step of -1) */
        for (ptrdiff_t b = 0; b < C; b++) {
            const REAL *vals;
            const int32_t *idx;
            const ptrdiff_t k = FN(fm_row)(ex, ex->order[start + b], &vals, &idx);
            for (int g = g0; g < g1; g++)
                FN(fm_update)(gWhT + GROUP_OFF(g), stride, GROUP_LINES(g), R(-1), vals, idx, k,
                              dH + b * stride + GROUP_OFF(g));
        }
    }
}

/* The step of a batch taken in chunks, for thread t, from the gradients summed
 * by fm_sparse_accumulate: every row of WhT steps with its row of gWhT (which is
 * zeroed for the next batch), then Wy, by and bh. */
static FM_INLINE void FN(fm_sparse_apply)(const FT(fm_net) *net, const FT(fm_rows) *ex, const FT(fm_step) *opt,
                                          REAL decay, const FT(fm_swork) *ws, int t, int nt)
{
    const ptrdiff_t n_in = ex->n_in, stride = net->stride;
    for (int s = t; s < net->n_slices; s += nt) {
        const int g0 = net->slice_group[s], g1 = net->slice_group[s + 1];
        const ptrdiff_t width = GROUP_OFF(g1);
        REAL *restrict WhT = net->WhT + s * n_in * stride, *restrict gWhT = ws->gWhT + s * n_in * stride;
        REAL *VWhT = net->VWhT ? net->VWhT + s * n_in * stride : NULL;
        REAL *SWhT = net->SWhT ? net->SWhT + s * n_in * stride : NULL;
        for (ptrdiff_t i = 0; i < n_in; i++) {
            FN(fm_step_dense)(WhT + i * stride, VWhT ? VWhT + i * stride : NULL, SWhT ? SWhT + i * stride : NULL,
                              gWhT + i * stride, width, opt, decay);
            for (ptrdiff_t j = 0; j < width; j++) gWhT[i * stride + j] = 0;
        }
        FN(fm_sparse_output_step)(net, opt, decay, ws, s, width);
    }
}

/* The rest of a batch's step for thread t once dl/dz of every example is in dZ:
 * dh~ and the updates of the thread's slices, with the batch's decay.
 *
 * The SGD step is affine in the gradient, and the gradient of row i of WhT is
 * decay w_i (every row) plus the batch's sum over its examples with input i
 * non-zero. So the step splits exactly into the step of every row with a zero
 * gradient (fm_step_dense without one; nothing to do for plain SGD) and, for the
 * touched rows only, the gradient's part: w -= c g and, with momentum, v += g
 * (c = fm_step_coef). */
static FM_INLINE void FN(fm_sparse_step)(const FT(fm_net) *net, const FT(fm_rows) *ex, const FT(fm_step) *opt,
                                         REAL decay, const FT(fm_swork) *ws, int t, int nt, ptrdiff_t start,
                                         ptrdiff_t B, const REAL *restrict dZ)
{
    const ptrdiff_t n_in = ex->n_in, rows = ws->rows, nout = net->nout, stride = net->stride;
    const REAL lr = opt->lr, c = FN(fm_step_coef)(opt);
    const int plain = opt->momentum == 0 && decay == 0;
    for (int s = t; s < net->n_slices; s += nt) {
        const int g0 = net->slice_group[s], g1 = net->slice_group[s + 1];
        const ptrdiff_t width = GROUP_OFF(g1);
        REAL *restrict WhT = net->WhT + s * n_in * stride, *restrict bh = net->bh + s * stride;
        REAL *restrict Wy = net->Wy + s * nout * stride, *restrict bys = net->by + s * OUT_STRIDE(nout);
        const REAL *restrict H = ws->H + s * rows * stride;
        REAL *restrict dH = ws->dH + s * rows * stride;
        REAL *VWhT = opt->momentum != 0 ? net->VWhT + s * n_in * stride : NULL;

        if (B == 1 && plain) {
            /* one example, plain SGD: Wy^T dz from each row of Wy, then that row's
             * step, in one pass; then dh~ and the biases' steps */
            const REAL *restrict h = H, *restrict dz = dZ;
            REAL *restrict dh = dH;
#if FM_VECTORS
            /* register by register, each one's sum held through the rows of Wy */
            for (ptrdiff_t l = 0; l < width / VLANES; l++) {
                const VL hv = ((const VL *)h)[l];
                VL dv = (VL){0};
                for (ptrdiff_t o = 0; o < nout; o++) {
                    VL *restrict wy = (VL *)(Wy + o * stride) + l;
                    dv += dz[o] * *wy;
                    *wy -= (lr * dz[o]) * hv;
                }
                ((VL *)dh)[l] = dv;
            }
#else
            for (ptrdiff_t j = 0; j < width; j++) dh[j] = 0;
            for (ptrdiff_t o = 0; o < nout; o++) {
                const REAL d = dz[o], lrd = lr * dz[o];
                REAL *restrict wy = Wy + o * stride;
#pragma omp simd
                for (ptrdiff_t j = 0; j < width; j++) {
                    dh[j] += d * wy[j];
                    wy[j] -= lrd * h[j];
                }
            }
#endif
            FN(fm_act_grad_axpy)(net->act, dh, h, width, bh, -lr);
            for (ptrdiff_t o = 0; o < nout; o++) bys[o] -= lr * dz[o];
        } else {
            FN(fm_sparse_output_grads)(net, ws, s, width, B, dZ, 1);
            FN(fm_sparse_output_step)(net, opt, decay, ws, s, width);
        }

        if (!plain)
            for (ptrdiff_t i = 0; i < n_in; i++)
                FN(fm_step_dense)(WhT + i * stride, VWhT ? VWhT + i * stride : NULL, NULL, NULL, width, opt, decay);
        if (FM_GROUPED(ws, B)) {
            FN(fm_grouped_slice)(net, ex, ws, t, nt, s, WhT, VWhT, c, start, B, dH);
            continue;
        }
        if (!VWhT) {
            /* WhT[i, :] -= c x_bi dh~_b over each example's non-zero inputs */
            for (ptrdiff_t b = 0; b < B; b++) {
                const REAL *vals;
                const int32_t *idx;
                const ptrdiff_t k = FN(fm_row)(ex, ex->order[start + b], &vals, &idx);
                for (int g = g0; g < g1; g++)
                    FN(fm_update)(WhT + GROUP_OFF(g), stride, GROUP_LINES(g), c, vals, idx, k,
                                  dH + b * stride + GROUP_OFF(g));
            }
            continue;
        }
        for (ptrdiff_t b = 0; b < B; b++) {
            const REAL *vals;
            const int32_t *idx;
            const ptrdiff_t k = FN(fm_row)(ex, ex->order[start + b], &vals, &idx);
            FN(fm_update_momentum)(WhT, VWhT, stride, width, c, vals, idx, k, dH + b * stride);
        }
    }
}

/* One thread's share of an epoch (see the top of this file): thread t of nt owns
 * the slices t, t + nt, ... Every thread runs the same sequence of barriers.
 * Inlined into the parallel region. */
static FM_INLINE void FN(fm_sparse_thread)(const FT(fm_net) *net, const FT(fm_rows) *ex, const FT(fm_step) *opt,
                                           const FT(fm_swork) *ws, int t, int nt, fm_tally *tally)
{
    const ptrdiff_t n_in = ex->n_in, n = ex->n, batch = ex->batch, rows = ws->rows, nout = net->nout, stride = net->stride;
    const ptrdiff_t words = MASK_WORDS(ws);
    const int n_groups = net->n_groups;
    REAL *restrict dZ = t < net->n_slices ? ws->dZ + t * rows * OUT_STRIDE(nout) : NULL;
    fm_tally ignored = {0, 0};
    /* each thread's weight in the rows of dl/dz: 1 + how many lines short of the widest it is */
    int64_t row_share[FM_MAX_THREADS + 1] = {0}, lines[FM_MAX_THREADS] = {0}, widest = 0;
    for (int u = 0; u < nt && u < FM_MAX_THREADS; u++) {
        for (int s = u; s < net->n_slices; s += nt)
            lines[u] += net->group_line[net->slice_group[s + 1]] - net->group_line[net->slice_group[s]];
        widest = lines[u] > widest ? lines[u] : widest;
    }
    for (int u = 0; u < nt; u++)
        row_share[u + 1] = row_share[u] + (u < FM_MAX_THREADS ? 1 + widest - lines[u] : 1);
    /* a thread narrower than the widest asks for each next row whole (fm_prefetch_row) */
    const int narrow = t < FM_MAX_THREADS && lines[t] < widest;
    int parity = 0;

    for (ptrdiff_t start = 0; start < n; start += batch) {
        const ptrdiff_t B = n - start < batch ? n - start : batch;
        const double weight_sum = FN(fm_batch_weight)(ex->weights, ex->order, start, B);
        const REAL decay = FN(fm_batch_decay)(opt, weight_sum);
        const FT(fm_step) step = FN(fm_step_at)(opt, start / batch);
        /* a batch larger than the workspace is taken in chunks of `rows` examples,
         * its gradients summed (fm_sparse_accumulate) and the step taken at the end;
         * so is every batch of a step that is not affine in the gradient (Adam, FM_GRADIENT) */
        const int chunked = B > rows || opt->kind != FM_SGD;
        for (ptrdiff_t c0 = 0; c0 < B; c0 += rows, parity ^= 1) {
            const ptrdiff_t C = B - c0 < rows ? B - c0 : rows, c_start = start + c0;
            REAL *restrict Zp = ws->Zp + parity * rows * n_groups * nout;

            /* forward, example by example: each owned slice's hidden units (the
             * example's non-zero inputs' rows summed in registers) and its groups'
             * partial logits; with grouped updates, each example's inputs are also
             * marked in the thread's mask (its bit in word b / 64 of each input) */
            uint64_t *mask = FM_GROUPED(ws, C) && dZ ? THREAD_MASK(ws, t, n_in) : NULL;
            for (ptrdiff_t b = 0; b < C; b++) {
                const REAL *vals;
                const int32_t *idx;
                const ptrdiff_t k = FN(fm_row)(ex, ex->order[c_start + b], &vals, &idx);
                if (c_start + b + 1 < n)
                    FN(fm_prefetch_row)(ex, ex->order[c_start + b + 1],
                                        ex->order[c_start + b + 2 < n ? c_start + b + 2 : n - 1], narrow);
                const uint64_t bit = (uint64_t)1 << (b % 64);
                for (int s = t; s < net->n_slices; s += nt) {
                    const int g0 = net->slice_group[s], g1 = net->slice_group[s + 1];
                    const ptrdiff_t width = GROUP_OFF(g1), live = FN(fm_live_units)(net, s, width);
                    const REAL *WhT = net->WhT + s * n_in * stride, *bh = net->bh + s * stride;
                    const REAL *Wy = net->Wy + s * nout * stride;
                    REAL *restrict h = ws->H + (s * rows + b) * stride;
                    for (int g = g0; g < g1; g++)
                        FN(fm_gather)(h + GROUP_OFF(g), bh + GROUP_OFF(g), GROUP_LINES(g), vals, idx, k,
                                      WhT + GROUP_OFF(g), stride, s == t && g == g0 && mask ? mask + b / 64 : NULL,
                                      words, bit);
                    FN(fm_activate)(net->act, h, live); /* the padded units' sums stay 0, whatever f(0) is */
                    for (int g = g0; g < g1; g++) {
                        /* the group's partial logits: each line's products summed across the
                         * lines, lane by lane, then the lanes (fm_line_sum) */
                        const ptrdiff_t off = GROUP_OFF(g);
                        const int nl = GROUP_LINES(g);
                        for (ptrdiff_t o = 0; o < nout; o++) {
#if FM_VECTORS
                            const VL *restrict hv = (const VL *)(h + off), *restrict wy = (const VL *)(Wy + o * stride + off);
                            VL v[VPL];
                            for (int p = 0; p < VPL; p++) v[p] = hv[p] * wy[p];
                            for (int l = 1; l < nl; l++)
                                for (int p = 0; p < VPL; p++) v[p] += hv[l * VPL + p] * wy[l * VPL + p];
                            Zp[(b * n_groups + g) * nout + o] = FN(fm_line_sum)(v);
#else
                            const REAL *restrict wy = Wy + o * stride + off;
                            REAL sum = 0;
                            for (ptrdiff_t j = 0; j < nl * LANES; j++) sum += h[off + j] * wy[j];
                            Zp[(b * n_groups + g) * nout + o] = sum;
#endif
                        }
                    }
                }
            }
            FM_BARRIER(ws->sync, nt);
            const REAL *dz_rows = dZ;
            if (C == 1 || nt == 1) {
                /* every thread computes the same dl/dz (a second meeting would cost more) */
                if (dZ)
                    FN(fm_sparse_dz)(net, ex, net->by + t * OUT_STRIDE(nout), c_start, weight_sum, 0, C, Zp, dZ, NULL,
                                     NULL, tally ? tally : &ignored);
            } else {
                /* dl/dz shared out by rows, the threads with the narrowest slices taking
                 * the most (their forward pass was the shortest), then a second meeting */
                const ptrdiff_t b0 = C * row_share[t] / row_share[nt], b1 = C * row_share[t + 1] / row_share[nt];
                FN(fm_sparse_dz)(net, ex, net->by, c_start, weight_sum, b0, b1, Zp, ws->dZ, ws->row_loss,
                                 ws->row_correct, NULL);
                FM_BARRIER(ws->sync, nt);
                if (tally)
                    for (ptrdiff_t b = 0; b < C; b++) {
                        tally->loss_sum += ws->row_loss[b];
                        tally->correct += ws->row_correct[b];
                    }
                dz_rows = ws->dZ;
            }
            if (!dZ)
                continue;
            if (!chunked) {
                FN(fm_sparse_step)(net, ex, &step, decay, ws, t, nt, start, B, dz_rows);
            } else {
                FN(fm_sparse_accumulate)(net, ex, ws, t, nt, c_start, C, dz_rows, c0 == 0);
                if (c0 + C == B)
                    FN(fm_sparse_apply)(net, ex, &step, decay, ws, t, nt);
            }
        }
    }
}

FM_LEVEL_FN int FN(fm_sparse_epoch)(const FT(fm_net) *net, const FT(fm_rows) *ex, const FT(fm_step) *opt,
                                    const FT(fm_swork) *ws, int n_threads, fm_tally *tally)
{
    const int status = fm_check_codes(net->act, net->loss, opt->kind);
    if (status != FM_OK)
        return status;
    const int summed = opt->kind != FM_SGD, adam = FM_SECOND_MOMENT(opt->kind);
    if (net->stride % LANES || ((summed || opt->momentum != 0) && !(net->VWhT && net->Vbh && net->VWy && net->Vby)) ||
        (summed && !ws->gWhT) || (adam && !(net->SWhT && net->Sbh && net->SWy && net->Sby)) ||
        ws->rows < 1 || (ws->rows < (ex->batch < ex->n ? ex->batch : ex->n) && !ws->gWhT) ||
        (ws->cptr && (!ws->gWhT || !ex->indptr || ex->batch < ex->n || ws->rows > 65536)) ||
        (ws->mask && (ws->rows > FM_MASK_ROWS || ws->group_min < 1)) ||
        fm_check_targets(net->loss, ex->labels, ex->targets) != FM_OK)
        return FM_ERR_LAYOUT;
    n_threads = n_threads < 1 ? 1 : (n_threads > FM_MAX_THREADS ? FM_MAX_THREADS : n_threads);
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
    {
        const int t = omp_get_thread_num();
        FN(fm_sparse_thread)(net, ex, opt, ws, t, omp_get_num_threads(), t == 0 ? tally : NULL);
    }
#else
    FN(fm_sparse_thread)(net, ex, opt, ws, 0, 1, tally);
#endif
    return FM_OK;
}

/* The row-pass floor of an epoch: only the two passes over rows of WhT per
 * non-zero input that any sparse epoch makes (the forward gather and the row
 * update, with a fixed dh~), on the same slices and threads, the threads meeting
 * every `batch` examples; nothing else (no activation, logits, loss). The epoch's
 * time over this one's says what the rest of the step costs. Changes WhT. */
FM_LEVEL_FN void FN(fm_row_passes)(const FT(fm_net) *net, const FT(fm_rows) *ex, const FT(fm_swork) *ws, int n_threads)
{
    n_threads = n_threads < 1 ? 1 : (n_threads > FM_MAX_THREADS ? FM_MAX_THREADS : n_threads);
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
#endif
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int t = 0, nt = 1;
#endif
        const ptrdiff_t n_in = ex->n_in, stride = net->stride;
        for (ptrdiff_t start = 0; start < ex->n; start += ex->batch) {
            const ptrdiff_t B = ex->n - start < ex->batch ? ex->n - start : ex->batch;
            for (ptrdiff_t b = 0; b < B; b++) {
                const REAL *vals;
                const int32_t *idx;
                const ptrdiff_t k = FN(fm_row)(ex, ex->order[start + b], &vals, &idx);
                if (start + b + 1 < ex->n)
                    FN(fm_prefetch_row)(ex, ex->order[start + b + 1],
                                        ex->order[start + b + 2 < ex->n ? start + b + 2 : ex->n - 1], 0);
                for (int s = t; s < net->n_slices; s += nt) {
                    const int g0 = net->slice_group[s], g1 = net->slice_group[s + 1];
                    REAL *WhT = net->WhT + s * n_in * stride, *h = ws->H + s * ws->rows * stride;
                    for (int g = g0; g < g1; g++)
                        FN(fm_gather)(h + GROUP_OFF(g), net->bh + s * stride + GROUP_OFF(g), GROUP_LINES(g), vals, idx,
                                      k, WhT + GROUP_OFF(g), stride, NULL, 0, 0);
                    for (int g = g0; g < g1; g++) /* dh~: the bias row, a fixed small vector */
                        FN(fm_update)(WhT + GROUP_OFF(g), stride, GROUP_LINES(g), R(1e-7), vals, idx, k,
                                      net->bh + s * stride + GROUP_OFF(g));
                }
            }
            FM_BARRIER(ws->sync, nt);
        }
    }
}

/* The non-zeros of the CSR rows order[0 .. n), `rows` examples at a time, grouped
 * by input within each chunk: chunk c's entries of input i are cptr[c * (n_in + 1)
 * + i] .. [+ i + 1] of crow (the example's place in its chunk) and cval (its
 * value), in example order. cursor: n_in scratch. */
FM_LEVEL_FN void FN(fm_group_chunks)(const FT(fm_rows) *ex, ptrdiff_t rows, int64_t *restrict cptr,
                                     uint16_t *restrict crow, REAL *restrict cval, int64_t *restrict cursor)
{
    const ptrdiff_t n_in = ex->n_in;
    int64_t base = 0;
    for (ptrdiff_t c0 = 0; c0 < ex->n; c0 += rows) {
        const ptrdiff_t C = ex->n - c0 < rows ? ex->n - c0 : rows;
        int64_t *restrict cp = cptr + (c0 / rows) * (n_in + 1);
        for (ptrdiff_t i = 0; i <= n_in; i++) cp[i] = 0;
        for (ptrdiff_t b = 0; b < C; b++) {
            const intptr_t r = ex->order[c0 + b];
            for (int64_t e = ex->indptr[r]; e < ex->indptr[r + 1]; e++) cp[ex->indices[e] + 1]++;
        }
        cp[0] = base;
        for (ptrdiff_t i = 0; i < n_in; i++) {
            cp[i + 1] += cp[i];
            cursor[i] = cp[i];
        }
        for (ptrdiff_t b = 0; b < C; b++) {
            const intptr_t r = ex->order[c0 + b];
            for (int64_t e = ex->indptr[r]; e < ex->indptr[r + 1]; e++) {
                const int64_t p = cursor[ex->indices[e]]++;
                crow[p] = (uint16_t)b;
                cval[p] = ex->data[e];
            }
        }
        base = cp[n_in];
    }
}

/* Dense rows -> CSR, in two passes: fm_csr_counts writes each row's number of
 * non-zeros (NaN counts as non-zero, so the non-finite entries of X are those of
 * the data), fm_csr_fill the indices and values of the rows, given indptr (the
 * running sum of the counts). */
FM_LEVEL_FN void FN(fm_csr_counts)(const REAL *restrict X, ptrdiff_t n_rows, ptrdiff_t n_in, int64_t *restrict counts)
{
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (ptrdiff_t r = 0; r < n_rows; r++) {
        const REAL *restrict x = X + r * n_in;
        int64_t c = 0;
        for (ptrdiff_t i = 0; i < n_in; i++) c += x[i] != 0;
        counts[r] = c;
    }
}

/* Packs the non-zeros of the leading whole vectors of row x into indices and data
 * from place *kp on (the row's places end at `end`), by the CPU's compress or
 * shuffle instructions where this level has them, and moves *kp past them; returns
 * how many entries of x it took (0 where it has none: the scalar loop takes them all). */
static FM_INLINE ptrdiff_t FN(fm_csr_pack)(const REAL *restrict x, ptrdiff_t n_in, int64_t *kp, int64_t end,
                                            int32_t *restrict indices, REAL *restrict data)
{
    ptrdiff_t i = 0;
    int64_t k = *kp;
#if defined(__AVX512F__) && defined(__AVX512VL__)
    (void)end; /* the stores are masked: they never pass the row's end */
    if (sizeof(REAL) == 4) { /* 16 floats a step: masked stores of the compressed lanes */
        const float *xf = (const float *)x;
        float *df = (float *)data;
        __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (; i + 16 <= n_in; i += 16) {
            __m512 v = _mm512_loadu_ps(xf + i);
            __mmask16 m = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NEQ_UQ);
            if (!m) continue;
            int c = __builtin_popcount(m);
            __mmask16 keep = (__mmask16)((1u << c) - 1u);
            __m512i idx = _mm512_add_epi32(iota, _mm512_set1_epi32((int)i));
            _mm512_mask_storeu_epi32(indices + k, keep, _mm512_maskz_compress_epi32(m, idx));
            _mm512_mask_storeu_ps(df + k, keep, _mm512_maskz_compress_ps(m, v));
            k += c;
        }
    } else { /* 8 doubles a step */
        const double *xd = (const double *)x;
        double *dd = (double *)data;
        __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (; i + 8 <= n_in; i += 8) {
            __m512d v = _mm512_loadu_pd(xd + i);
            __mmask8 m = _mm512_cmp_pd_mask(v, _mm512_setzero_pd(), _CMP_NEQ_UQ);
            if (!m) continue;
            int c = __builtin_popcount(m);
            __mmask8 keep = (__mmask8)((1u << c) - 1u);
            __m256i idx = _mm256_add_epi32(iota, _mm256_set1_epi32((int)i));
            _mm256_mask_storeu_epi32(indices + k, keep, _mm256_maskz_compress_epi32(m, idx));
            _mm512_mask_storeu_pd(dd + k, keep, _mm512_maskz_compress_pd(m, v));
            k += c;
        }
    }
#elif defined(__AVX2__)
    if (sizeof(REAL) == 4) { /* 4 floats a step, moved to the front by a byte shuffle */
#define L(a, b, c, d) {4 * a, 4 * a + 1, 4 * a + 2, 4 * a + 3, 4 * b, 4 * b + 1, 4 * b + 2, 4 * b + 3, \
                       4 * c, 4 * c + 1, 4 * c + 2, 4 * c + 3, 4 * d, 4 * d + 1, 4 * d + 2, 4 * d + 3}
        /* for each mask of non-zero lanes, those lanes in order */
        static const uint8_t front[16][16] = {L(0, 0, 0, 0), L(0, 0, 0, 0), L(1, 0, 0, 0), L(0, 1, 0, 0),
                                              L(2, 0, 0, 0), L(0, 2, 0, 0), L(1, 2, 0, 0), L(0, 1, 2, 0),
                                              L(3, 0, 0, 0), L(0, 3, 0, 0), L(1, 3, 0, 0), L(0, 1, 3, 0),
                                              L(2, 3, 0, 0), L(0, 2, 3, 0), L(1, 2, 3, 0), L(0, 1, 2, 3)};
#undef L
        const float *xf = (const float *)x;
        float *df = (float *)data;
        __m128i iota = _mm_setr_epi32(0, 1, 2, 3);
        /* each step stores four lanes, of which the non-zero ones count: the rest are
         * overwritten by the next steps, so the row's last four places stay scalar */
        for (; i + 4 <= n_in && k + 4 <= end; i += 4) {
            __m128 v = _mm_loadu_ps(xf + i);
            int m = _mm_movemask_ps(_mm_cmpneq_ps(v, _mm_setzero_ps()));
            if (!m) continue;
            __m128i shuffle = _mm_loadu_si128((const __m128i *)front[m]);
            __m128i idx = _mm_add_epi32(iota, _mm_set1_epi32((int)i));
            _mm_storeu_si128((__m128i *)(indices + k), _mm_shuffle_epi8(idx, shuffle));
            _mm_storeu_ps(df + k, _mm_castsi128_ps(_mm_shuffle_epi8(_mm_castps_si128(v), shuffle)));
            k += __builtin_popcount((unsigned)m);
        }
    }
#else
    (void)x, (void)n_in, (void)end, (void)indices, (void)data;
#endif
    *kp = k;
    return i;
}

FM_LEVEL_FN void FN(fm_csr_fill)(const REAL *restrict X, ptrdiff_t n_rows, ptrdiff_t n_in, const int64_t *restrict indptr,
                                 int32_t *restrict indices, REAL *restrict data)
{
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (ptrdiff_t r = 0; r < n_rows; r++) {
        const REAL *restrict x = X + r * n_in;
        int64_t k = indptr[r], end = indptr[r + 1];
        ptrdiff_t i = FN(fm_csr_pack)(x, n_in, &k, end, indices, data);
        /* Without branches: every entry is written at the next free place, which only
         * a non-zero one claims (a branch per entry mispredicts at MNIST's density). */
        for (; i < n_in && k < end; i++) {
            indices[k] = (int32_t)i;
            data[k] = x[i];
            k += x[i] != 0;
        }
    }
}

/* The number of NaN and infinite entries of x[0 .. n), on every thread for long
 * arrays: x - x is 0 exactly for the finite values. One read, no temporaries. */
FM_LEVEL_FN ptrdiff_t FN(fm_count_nonfinite)(const REAL *restrict x, ptrdiff_t n)
{
    ptrdiff_t bad = 0;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) reduction(+ : bad) if (n >= FM_PARALLEL_MIN)
#endif
    for (ptrdiff_t i = 0; i < n; i++) bad += !(x[i] - x[i] == 0);
    return bad;
}

/* dst[i * d0 + j * d1] = src[i * s0 + j * s1] for i < n0, j < n1 (strides in
 * elements): the copies between the model's layout and a path's transposed one.
 * Taken in tiles of FM_TILE x FM_TILE, so that the strided side of a transpose
 * reads (or writes) whole cache lines that stay in L1 while the tile uses them,
 * on every thread for large arrays. */
#ifndef FM_TILE
#define FM_TILE 64
#endif
FM_LEVEL_FN void FN(fm_copy_2d)(const REAL *restrict src, ptrdiff_t s0, ptrdiff_t s1, REAL *restrict dst, ptrdiff_t d0,
                                ptrdiff_t d1, ptrdiff_t n0, ptrdiff_t n1)
{
    ptrdiff_t t0 = (n0 + FM_TILE - 1) / FM_TILE, t1 = (n1 + FM_TILE - 1) / FM_TILE;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n0 * n1 >= FM_PARALLEL_MIN)
#endif
    for (ptrdiff_t t = 0; t < t0 * t1; t++) {
        ptrdiff_t i0 = t / t1 * FM_TILE, j0 = t % t1 * FM_TILE;
        ptrdiff_t i1 = i0 + FM_TILE < n0 ? i0 + FM_TILE : n0, j1 = j0 + FM_TILE < n1 ? j0 + FM_TILE : n1;
        if (d1 == 1) { /* the destination's rows contiguous: write them in order */
            for (ptrdiff_t i = i0; i < i1; i++)
                for (ptrdiff_t j = j0; j < j1; j++) dst[i * d0 + j] = src[i * s0 + j * s1];
        } else { /* else walk the tile by columns, the source's order in a transpose */
            for (ptrdiff_t j = j0; j < j1; j++)
                for (ptrdiff_t i = i0; i < i1; i++) dst[i * d0 + j * d1] = src[i * s0 + j * s1];
        }
    }
}

#undef FM_BY_LINES
#undef GROUP_OFF
#undef GROUP_LINES
#undef FM_GATHER
#undef FM_UPDATE
#undef FM_GROUPED_SUM
#undef FM_GROUPED_ROWS
#undef FM_GROUPED
#undef MASK_WORDS
#undef THREAD_MASK
#undef OUT_STRIDE
#undef LANES
#undef VL
#undef VPL
#undef VLANES
