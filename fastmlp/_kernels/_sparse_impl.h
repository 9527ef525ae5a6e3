/* Template body of the sparse epoch, included by _fused.c once per REAL and
 * kernel level after _fused_impl.h (whose tanh and row loss it uses).
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
 * between threads). Per batch the threads meet once: each writes the logits'
 * partial sums of its groups, and after the barrier every thread adds them in
 * group order and computes the same dl/dz; the rest of the step (dh~, every
 * update) touches only the thread's own units. The arithmetic of a unit, and the
 * order of every sum, is the same for any number of threads: results are bitwise
 * identical for every thread count.
 *
 * In a group, the forward pass keeps the group's lines in registers while it
 * runs over the example's non-zero inputs (each line in vector registers, VL), and
 * the update keeps the example's dh~ lines in registers while it runs over the
 * same rows, last first (the forward pass has just left them in L1).
 *
 * A batch larger than the workspace (the driver allows it where the inputs are no
 * more than the batch's examples) is taken a chunk of examples at a time: the
 * chunk's activations stay in cache, its gradient of WhT is summed in G, and the
 * step is taken after the last chunk. A whole batch's activations would stream
 * through memory and push WhT out of L2: full-batch epochs on MNIST took 0.095 s
 * against 0.081-0.084 s in chunks of 64-256 on 2 threads. An epoch of one full
 * batch goes further: its examples are taken in row order, so its chunks are the
 * same every epoch and their non-zeros are grouped by input once per fit
 * (fm_group_chunks); each row of G then takes one sum per chunk, held in
 * registers over dh~ rows in L1, instead of one update per non-zero (0.055-0.061 s
 * on 2 threads, 0.096-0.10 s on one, in chunks of 128).
 *
 * Batches (and chunks) of 32 examples or more update each row of WhT they touch
 * once, with the sum over their examples (fm_grouped_rows): the forward pass sets
 * a bit per example in a per-thread mask of the inputs (one OR per non-zero, while
 * the row is being read anyway), and the update walks the inputs in order, taking
 * each example's next non-zero from a cursor into its row (rows have sorted,
 * unique indices), its dh~ row from L1 and the sums in registers. MNIST on 2 Zen 4
 * cores: batch 64 0.075 -> 0.066-0.069 s, batch 32 0.075 -> 0.069-0.072 s; from
 * batch 10 to 16 the walk over every input costs what it saves, so they keep the
 * update per non-zero. On 2 cores of an Intel Xeon (AVX-512), once the narrower
 * thread asks for whole input rows (fm_prefetch_row), grouping saves 9-14% from
 * batch 64 up and costs about 5% at 32 (on one core it saves 26-33% from 32 up);
 * the threshold stays at 32. Tried before and slower: a counting sort per batch (6-7
 * cycles per non-zero, each thread sorting the whole batch), per-input buckets
 * filled in the forward pass, linked lists, the mask beside a dense copy of the
 * batch, and the mask filled in a pass of its own (it took the misses on the
 * rows' indices that the forward pass hides). Passing over the inputs instead of
 * the examples in the forward pass (each row read once per batch, the examples' h
 * in L1): no faster on Zen 4, bound by the stores to h; on an Intel Xeon with
 * AVX-512 (one 512-bit store a cycle) 0.089-0.12 s against 0.064 s at batch 64, as
 * the mask then needs a pass of its own over the indices, and the walk's loads of
 * each example's next value, through up to 64 cursors at once, miss in L1 (a third
 * of the samples of a profile). Where a batch-64 epoch's time goes there (2
 * threads, cycles counted per phase): the forward gather about 45%, the update
 * about 40% (a sixth of it the output layer's gradients), the rest tanh, logits,
 * dl/dz and the waits at the meetings. The gather is not paced by where the rows
 * of WhT come from (forced into L1: no faster at batch 64, 14% at batch 10) but by
 * the examples' own values and indices, read from memory: with the rows of only
 * 1024 examples (in L2), epochs took 10-15% less. Asking for them sooner did not
 * buy that back; the wait moved into the requests: the widest thread asking for
 * whole rows, asking two examples ahead, asking a line every eight non-zeros, or
 * asking for the next batch's rows during the update (batch 32 up to 7% faster,
 * 128-256 up to 13% slower). Nor would reading them in order: the same epochs over
 * rows stored in the shuffled order (read one after the other) took 6-13% less at
 * batch 1-1024 (20% at 32), about what copying the rows into that order costs each
 * epoch (8-10 ms on 2 threads). Indices of 16 bits (a quarter fewer bytes per
 * non-zero): batch 32 5-7% faster, 64 3-6%, 10, 256 and the full batch the same.
 * Also no faster: the inputs taken in blocks of 64 in the forward pass, so that a
 * block's rows of WhT stay in L1 while the batch's examples pass over it; the
 * threads taking the examples in opposite orders; one mask for both threads, set
 * by the narrower. The full batch's forward pass taken
 * input by input over its chunks' lists (fm_group_chunks: no mask, no cursors, the
 * row in registers, each example's h~ added to in L1, the same sums in the same
 * order): 0.046 against 0.043 s, with or without padding H's rows apart. Grouping
 * at batch 10 and 16 with the walk as it is now: 0.077 -> 0.10 s and 0.072 ->
 * 0.087 s (the OR per non-zero makes that gather 45% slower). Two threads, each
 * with its own L2 and half the rows' width, take 1.5-1.9x less time than one,
 * although most of an epoch is paid per non-zero rather than per line of a row
 * (the widths below).
 * (The 4 + 3 cache-line split of 100 units between two threads is not what limits
 * them: 3 + 3 lines measured only 3-7% faster.)
 * Prefetching the next rows two or three examples ahead instead of one: no faster.
 * A second level of bits (one per input touched) so that the grouped update visits
 * only the touched inputs: slower (a second OR per non-zero in the forward pass),
 * and no help from 10 to 16 examples. Every thread computing every row of dl/dz up
 * to 16 examples (no second meeting): no difference measurable on a shared machine.
 * The narrower thread computing every row of dl/dz (Intel Xeon): 5-15% slower at
 * batch 10 to 64, as the widest thread then reads every row from the other core.
 * Two examples' rows walked together in the forward pass, a row both touch read
 * once (a quarter fewer row reads on MNIST): 15-25% slower, with or without
 * branches, as each step of the merge waits on the one before, so the row reads
 * can no longer be issued far ahead. Two sets of sums in the forward pass (even and
 * odd non-zeros) or in the grouped update (even and odd examples of an input), and
 * the per-non-zero update taking the batch's examples last first (the last
 * example's rows are in L1): no faster. Nor the per-non-zero update of batches
 * of 2 to 31 taken a block of inputs at a time, every example's entries in the
 * block before the next block, so that the block's rows stay in L1 (bitwise the
 * same; Intel Xeon, 2 threads: blocks of 64 inputs 12-17% slower, the short runs
 * cost more than the L1 hits save; blocks of 256 the same). How the time of an epoch
 * depends on the width (MNIST batch 64, 2 threads, Zen 4): 4 lines per thread
 * 0.070 s, 3 lines 0.062 s, 2 lines 0.055 s; most of it is paid per non-zero
 * whatever the width.
 */

#define LANES ((ptrdiff_t)(FM_LINE / sizeof(REAL)))
/* A vector register of the level (FM_VBYTES bytes: 64 for AVX-512, 32 for AVX2,
 * 16 for the baseline), VPL of them to a cache line, VLANES values in each. The
 * loops hold a line as VPL registers: gcc keeps vector types of the register's
 * width in registers, where a vector type twice as wide goes through the stack
 * at every operation (a whole line as one type made the AVX2 and baseline
 * builds 6-18x slower than the AVX-512 one on MNIST, 2 threads of an Intel Xeon). */
#define VL FN(fm_vreg)
#define VPL (FM_LINE / FM_VBYTES)
#define VLANES ((ptrdiff_t)(FM_VBYTES / sizeof(REAL)))
/* The row length of by, gby, Vby (one row per slice) and dZ: nout padded to whole
 * cache lines, so that no two threads write to one line. Each thread steps its own
 * copy of by and writes its own dl/dz; had they shared lines, the line would move
 * between the cores at every example: 10% of an epoch at batch 1 on 2 threads. */
#define OUT_STRIDE(nout) (((nout) + LANES - 1) / LANES * LANES)

#if FM_VECTORS
typedef REAL VL __attribute__((vector_size(FM_VBYTES), may_alias));
typedef REAL FN(fm_v32) __attribute__((vector_size(32), may_alias));
typedef REAL FN(fm_v16) __attribute__((vector_size(16), may_alias));

/* The sum of a line's lanes (its VPL registers v[0 ..]): halves added to halves,
 * lane by lane, in registers, down to the last lane; the same order at every
 * level. (The vectorised `omp simd reduction` it replaces ended in one dependent
 * scalar add per lane, 16 in float32, for each of an example's logits.) */
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
static FM_INLINE ptrdiff_t FN(fm_row)(const FT(fm_rows) *D, intptr_t r, const REAL **vals, const int32_t **idx)
{
    if (D->indptr) {
        const int64_t a = D->indptr[r];
        *vals = D->data + a;
        *idx = D->indices + a;
        return (ptrdiff_t)(D->indptr[r + 1] - a);
    }
    *vals = D->data + r * D->n_in; /* dense rows: every input, indices 0..n_in-1 */
    *idx = D->indices;
    return D->n_in;
}

/* Asks for the start of row r's values and indices to be brought into cache (the
 * hardware prefetcher follows on from there; asking for every line measured no
 * faster), and for the offsets of row r2. The examples are visited in random
 * order, so nothing else can guess them: without this, one epoch at batch 1
 * took twice as long.
 *
 * With `whole`, the rest of row r's lines are asked for too, into L2. In the
 * sparse epoch, the threads whose slices are narrower than the widest ask for
 * that: every thread reads every example's row, and the narrower threads, which
 * finish their update first, reach each row first and wait for it from memory;
 * where the batch's update is grouped (each thread walks every non-zero, whatever
 * its width) they have no time to spare for that wait and set the pace. The
 * widest thread, which sets the pace otherwise, finds the rows brought in and
 * does not pay for the requests. (MNIST float32 on two threads of an Intel Xeon,
 * three interleaved runs: batch 32 0.069-0.075 -> 0.063-0.065 s, batch 64
 * 0.062-0.075 -> 0.052 s, the other batch sizes the same or up to 5% faster.
 * Every thread asking for whole rows cost 3-10% from batch 128 up, and on one
 * thread: the requests compete with the row reads for the line fill buffers.) */
static FM_INLINE void FN(fm_prefetch_row)(const FT(fm_rows) *D, intptr_t r, intptr_t r2, int whole)
{
#if defined(__GNUC__) || defined(__clang__)
    const REAL *vals;
    const int32_t *idx;
    const ptrdiff_t k = FN(fm_row)(D, r, &vals, &idx);
    __builtin_prefetch(vals, 0, 3);
    if (D->indptr) {
        __builtin_prefetch(idx, 0, 3);
        __builtin_prefetch(D->indptr + r2, 0, 3);
        if (whole) {
            for (ptrdiff_t e = LANES; e < k; e += LANES) __builtin_prefetch(vals + e, 0, 2);
            const ptrdiff_t idx_lanes = FM_LINE / (ptrdiff_t)sizeof(int32_t);
            for (ptrdiff_t e = idx_lanes; e < k; e += idx_lanes) __builtin_prefetch(idx + e, 0, 2);
        }
    }
#else
    (void)D;
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
    switch (nl) {
    case 1: FM_GATHER(1) return;
    case 2: FM_GATHER(2) return;
    case 3: FM_GATHER(3) return;
    case 4: FM_GATHER(4) return;
    default: break;
    }
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
    switch (nl) {
    case 1: FM_UPDATE(1) return;
    case 2: FM_UPDATE(2) return;
    case 3: FM_UPDATE(3) return;
    case 4: FM_UPDATE(4) return;
    default: break;
    }
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
 * input i with bits in mask[i * words .. + words) (cleared as read where `clear`),
 * s = the sum, over those examples b in order, of x_bi d[b * stride, 0 : nl lines],
 * then W[i, :] -= c s and, with V, V[i, :] += s. x_bi is the next entry of example
 * b's row, *next[b]++: the inputs go in order and each row's indices are
 * sorted and unique. The sums are held in registers, the d rows read from L1, and
 * the mask was filled by the forward pass (fm_gather): no sorting. The inputs are
 * taken 64 at a time: first one word of which of them any example touched (a
 * loop without branches), then only those, in order. (Against testing each input
 * in turn, MNIST float32 on 2 threads of an Intel Xeon, 3 interleaved runs: batch
 * 64 3-6% faster, 128 2-3%, 256 3-7%, 32 the same; on one thread batch 64 7-9%.) */
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
                    const VL *restrict dv = (const VL *)(d + b * stride);             \
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
                                          const REAL **restrict next, const REAL *restrict d)
{
#if FM_VECTORS
    switch (nl) {
    case 1: FM_GROUPED_ROWS(1) return;
    case 2: FM_GROUPED_ROWS(2) return;
    case 3: FM_GROUPED_ROWS(3) return;
    case 4: FM_GROUPED_ROWS(4) return;
    default: break;
    }
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
            for (ptrdiff_t j = 0; j < n; j++) a[j] += x * d[b * stride + j];
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
#define GROUP_OFF(g) ((P->group_line[g] - P->group_line[g0]) * LANES)
#define GROUP_LINES(g) ((int)(P->group_line[(g) + 1] - P->group_line[g]))

/* Whether C examples at a time update each touched row once (fm_grouped_slice):
 * with a mask, from group_min examples up, and not where a full batch's chunks
 * come grouped already (cptr). */
#define FM_GROUPED(W, C) ((W)->mask && !(W)->cptr && (C) >= (W)->group_min)
/* Words of the mask per input, and thread t's block of it (see fm_swork). */
#define MASK_WORDS(W) (((W)->rows + 63) / 64)
#define THREAD_MASK(W, t, n_in) ((W)->mask + (t) * (n_in) * MASK_WORDS(W))

/* fm_grouped_rows over the groups of slice s for thread t: Ws (and Vs) the slice's
 * rows of WhT or G (and VWhT), the C examples order[start ..], dl/dh~ in dH. The
 * thread's mask is cleared on its last slice's last group. */
static FM_INLINE void FN(fm_grouped_slice)(const FT(fm_net) *P, const FT(fm_rows) *D, const FT(fm_swork) *W, int t,
                                           int nt, int s, REAL *Ws, REAL *Vs, REAL c, ptrdiff_t start, ptrdiff_t C,
                                           const REAL *dH)
{
    const ptrdiff_t n_in = D->n_in, stride = P->stride, words = MASK_WORDS(W);
    const int g0 = P->slice_group[s], g1 = P->slice_group[s + 1];
    const REAL *vals[FM_MASK_ROWS], *next[FM_MASK_ROWS];
    for (ptrdiff_t b = 0; b < C; b++) {
        const int32_t *idx;
        FN(fm_row)(D, D->order[start + b], &vals[b], &idx);
    }
    for (int g = g0; g < g1; g++) {
        for (ptrdiff_t b = 0; b < C; b++) next[b] = vals[b];
        FN(fm_grouped_rows)(Ws + GROUP_OFF(g), Vs ? Vs + GROUP_OFF(g) : NULL, stride, GROUP_LINES(g), c,
                            THREAD_MASK(W, t, n_in), words, g == g1 - 1 && s + nt >= P->n_slices, n_in, next,
                            dH + GROUP_OFF(g));
    }
}

/* dl/dz of examples [b0, b1) of the batch starting at `start` (B examples whose
 * sample weights sum to weight_sum): the groups' partial logits added to by in
 * group order, then the row loss, scaled by the row's share of the batch mean.
 * Each row's weighted loss and correctness go to row_loss/row_correct where
 * given, else into *tally. */
static FM_INLINE void FN(fm_sparse_dz)(const FT(fm_net) *P, const FT(fm_rows) *D, int loss, const REAL *by,
                                       ptrdiff_t start, double weight_sum, ptrdiff_t b0, ptrdiff_t b1,
                                       const REAL *restrict Pb, REAL *restrict dZ, double *row_loss,
                                       double *row_correct, fm_tally *tally)
{
    const ptrdiff_t nout = P->nout, ostride = OUT_STRIDE(nout);
    const int G = P->n_groups;
    for (ptrdiff_t b = b0; b < b1; b++) {
        REAL *restrict dz = dZ + b * ostride;
        for (ptrdiff_t o = 0; o < nout; o++) {
            REAL z = by[o];
            for (int g = 0; g < G; g++) z += Pb[(b * G + g) * nout + o];
            dz[o] = z;
        }
        const intptr_t r = D->order[start + b];
        const double w = D->weights ? (double)D->weights[r] : 1.0;
        const REAL scale = weight_sum > 0 ? (REAL)(w / weight_sum) : R(0);
        fm_tally row = {0, 0};
        FN(fm_row_loss_grad)(dz, D->labels[r], dz, nout, loss, scale, w, row_loss ? &row : tally);
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

/* For slice s, in one pass over examples [0, C) of the workspace: dh~ = (Wy^T dz)
 * * (1 - h*h) with Wy before the step, and the gradients of Wy, bh and by summed
 * into gWy, gbh and gby: afresh where `first`, else added to the sums of the
 * batch's earlier chunks. */
static FM_INLINE void FN(fm_sparse_output_grads)(const FT(fm_net) *P, const FT(fm_swork) *W, int s, ptrdiff_t width,
                                                 ptrdiff_t C, const REAL *restrict dZ, int first)
{
    const ptrdiff_t nout = P->nout, ostride = OUT_STRIDE(nout), stride = P->stride, rows = W->rows;
    const REAL *restrict Wy = P->Wy + s * nout * stride, *restrict H = W->H + s * rows * stride;
    REAL *restrict dH = W->dH + s * rows * stride, *restrict gWy = W->gWy + s * nout * stride;
    REAL *restrict gbh = W->gbh + s * stride, *restrict gby = W->gby + s * ostride;
#if FM_VECTORS
    /* register by register: each example's dh~ summed over the outputs, and each
     * output's gradient summed over the examples, in registers (the same sums, in
     * the same order, as the loops below) */
    for (ptrdiff_t l = 0; l < width / VLANES; l++) {
        VL gb = first ? (VL){0} : ((const VL *)gbh)[l];
        for (ptrdiff_t b = 0; b < C; b++) {
            const REAL *restrict dz = dZ + b * ostride;
            const VL hv = ((const VL *)(H + b * stride))[l];
            VL dv = (VL){0};
            for (ptrdiff_t o = 0; o < nout; o++) dv += dz[o] * ((const VL *)(Wy + o * stride))[l];
            dv *= R(1) - hv * hv;
            ((VL *)(dH + b * stride))[l] = dv;
            gb += dv;
        }
        ((VL *)gbh)[l] = gb;
        for (ptrdiff_t o = 0; o < nout; o++) {
            VL *restrict gw = (VL *)(gWy + o * stride) + l;
            VL g = first ? (VL){0} : *gw;
            for (ptrdiff_t b = 0; b < C; b++) g += dZ[b * ostride + o] * ((const VL *)(H + b * stride))[l];
            *gw = g;
        }
    }
#else
    if (first) {
        for (ptrdiff_t j = 0; j < width; j++) gbh[j] = 0;
        for (ptrdiff_t o = 0; o < nout; o++)
            for (ptrdiff_t j = 0; j < width; j++) gWy[o * stride + j] = 0;
    }
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
#pragma omp simd
        for (ptrdiff_t j = 0; j < width; j++) {
            dh[j] *= R(1) - h[j] * h[j];
            gbh[j] += dh[j];
        }
    }
#endif
    for (ptrdiff_t o = 0; o < nout; o++) {
        REAL dsum = 0;
        for (ptrdiff_t b = 0; b < C; b++) dsum += dZ[b * ostride + o];
        gby[o] = first ? dsum : gby[o] + dsum;
    }
}

/* The steps of slice s's Wy (with decay), by and bh from the sums in gWy, gby, gbh. */
static FM_INLINE void FN(fm_sparse_output_step)(const FT(fm_net) *P, const FT(fm_sgd) *opt, REAL decay,
                                                const FT(fm_swork) *W, int s, ptrdiff_t width)
{
    const ptrdiff_t nout = P->nout, ostride = OUT_STRIDE(nout), stride = P->stride;
    for (ptrdiff_t o = 0; o < nout; o++) {
        FN(fm_sgd_dense)(P->by + s * ostride + o, P->Vby ? P->Vby + s * ostride + o : NULL, W->gby + s * ostride + o, 1,
                         opt, R(0));
        FN(fm_sgd_dense)(P->Wy + (s * nout + o) * stride, P->VWy ? P->VWy + (s * nout + o) * stride : NULL,
                         W->gWy + (s * nout + o) * stride, width, opt, decay);
    }
    FN(fm_sgd_dense)(P->bh + s * stride, P->Vbh ? P->Vbh + s * stride : NULL, W->gbh + s * stride, width, opt, R(0));
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
    switch (nl) {
    case 1: FM_GROUPED_SUM(1) return;
    case 2: FM_GROUPED_SUM(2) return;
    case 3: FM_GROUPED_SUM(3) return;
    case 4: FM_GROUPED_SUM(4) return;
    default: break;
    }
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

/* One chunk of a batch taken in chunks (see fm_swork's G), for thread t: dh~ of
 * the chunk's C examples (order[start ..]) and their gradients added to gWy, gbh,
 * gby and, over each example's non-zero inputs, to G; the sums start from zero at
 * the batch's first chunk. Nothing steps until fm_sparse_apply. */
static FM_INLINE void FN(fm_sparse_accumulate)(const FT(fm_net) *P, const FT(fm_rows) *D, const FT(fm_swork) *W,
                                               int t, int nt, ptrdiff_t start, ptrdiff_t C,
                                               const REAL *restrict dZ, int first)
{
    const ptrdiff_t n_in = D->n_in, rows = W->rows, stride = P->stride;
    for (int s = t; s < P->n_slices; s += nt) {
        const int g0 = P->slice_group[s], g1 = P->slice_group[s + 1];
        const ptrdiff_t width = GROUP_OFF(g1);
        const REAL *restrict dH = W->dH + s * rows * stride;
        REAL *restrict Gs = W->G + s * n_in * stride;
        FN(fm_sparse_output_grads)(P, W, s, width, C, dZ, first);
        if (W->cptr) {
            /* the chunk's non-zeros grouped by input: G[i, :] += sum over them of x_bi dh~_b */
            const int64_t *cp = W->cptr + (start / rows) * (n_in + 1);
            for (int g = g0; g < g1; g++)
                FN(fm_grouped_sum)(Gs + GROUP_OFF(g), stride, GROUP_LINES(g), cp, n_in, W->crow, W->cval,
                                   dH + GROUP_OFF(g));
            continue;
        }
        if (FM_GROUPED(W, C)) {
            FN(fm_grouped_slice)(P, D, W, t, nt, s, Gs, NULL, R(-1), start, C, dH);
            continue;
        }
        /* G[i, :] += x_bi dh~_b (a row update with a step of -1) */
        for (ptrdiff_t b = 0; b < C; b++) {
            const REAL *vals;
            const int32_t *idx;
            const ptrdiff_t k = FN(fm_row)(D, D->order[start + b], &vals, &idx);
            for (int g = g0; g < g1; g++)
                FN(fm_update)(Gs + GROUP_OFF(g), stride, GROUP_LINES(g), R(-1), vals, idx, k,
                              dH + b * stride + GROUP_OFF(g));
        }
    }
}

/* The step of a batch taken in chunks, for thread t, from the gradients summed
 * by fm_sparse_accumulate: every row of WhT steps with its row of G (which is
 * zeroed for the next batch), then Wy, by and bh. */
static FM_INLINE void FN(fm_sparse_apply)(const FT(fm_net) *P, const FT(fm_rows) *D, const FT(fm_sgd) *opt,
                                          REAL decay, const FT(fm_swork) *W, int t, int nt)
{
    const ptrdiff_t n_in = D->n_in, stride = P->stride;
    for (int s = t; s < P->n_slices; s += nt) {
        const int g0 = P->slice_group[s], g1 = P->slice_group[s + 1];
        const ptrdiff_t width = GROUP_OFF(g1);
        REAL *restrict WhT = P->WhT + s * n_in * stride, *restrict Gs = W->G + s * n_in * stride;
        REAL *VWhT = P->VWhT ? P->VWhT + s * n_in * stride : NULL;
        for (ptrdiff_t i = 0; i < n_in; i++) {
            FN(fm_sgd_dense)(WhT + i * stride, VWhT ? VWhT + i * stride : NULL, Gs + i * stride, width, opt, decay);
            for (ptrdiff_t j = 0; j < width; j++) Gs[i * stride + j] = 0;
        }
        FN(fm_sparse_output_step)(P, opt, decay, W, s, width);
    }
}

/* The rest of a batch's step for thread t once dl/dz of every example is in dZ:
 * dh~ and the updates of the thread's slices, with the batch's decay. */
static FM_INLINE void FN(fm_sparse_step)(const FT(fm_net) *P, const FT(fm_rows) *D, const FT(fm_sgd) *opt,
                                         REAL decay, const FT(fm_swork) *W, int t, int nt, ptrdiff_t start,
                                         ptrdiff_t B, const REAL *restrict dZ)
{
    const ptrdiff_t n_in = D->n_in, rows = W->rows, nout = P->nout, stride = P->stride;
    const REAL lr = opt->lr, mu = opt->momentum;
    const int plain = mu == 0 && decay == 0;
    for (int s = t; s < P->n_slices; s += nt) {
        const int g0 = P->slice_group[s], g1 = P->slice_group[s + 1];
        const ptrdiff_t width = GROUP_OFF(g1);
        REAL *restrict WhT = P->WhT + s * n_in * stride, *restrict bh = P->bh + s * stride;
        REAL *restrict Wy = P->Wy + s * nout * stride, *restrict bys = P->by + s * OUT_STRIDE(nout);
        const REAL *restrict H = W->H + s * rows * stride;
        REAL *restrict dH = W->dH + s * rows * stride;
        REAL *VWhT = P->VWhT ? P->VWhT + s * n_in * stride : NULL;

        if (B == 1 && plain) {
            /* one example, plain SGD: dh~ from each row of Wy, then that row's step, in one pass */
            const REAL *restrict h = H, *restrict dz = dZ;
            REAL *restrict dh = dH;
#if FM_VECTORS
            /* register by register, each one's dh~ held through the rows of Wy */
            for (ptrdiff_t l = 0; l < width / VLANES; l++) {
                const VL hv = ((const VL *)h)[l];
                VL dv = (VL){0};
                for (ptrdiff_t o = 0; o < nout; o++) {
                    VL *restrict wy = (VL *)(Wy + o * stride) + l;
                    dv += dz[o] * *wy;
                    *wy -= (lr * dz[o]) * hv;
                }
                dv *= R(1) - hv * hv;
                ((VL *)dh)[l] = dv;
                ((VL *)bh)[l] -= lr * dv;
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
#pragma omp simd
            for (ptrdiff_t j = 0; j < width; j++) {
                dh[j] *= R(1) - h[j] * h[j];
                bh[j] -= lr * dh[j];
            }
#endif
            for (ptrdiff_t o = 0; o < nout; o++) bys[o] -= lr * dz[o];
        } else {
            FN(fm_sparse_output_grads)(P, W, s, width, B, dZ, 1);
            FN(fm_sparse_output_step)(P, opt, decay, W, s, width);
        }

        if (!plain) {
            /* With momentum or decay every row of WhT steps. The gradient of row i is
             * decay w_i (every row) + s_i (the batch's non-zeros in feature i), so the
             * step splits exactly into a pass over every row with t = mu v + decay w:
             *     w -= lr (nesterov ? decay w + mu t : t),  v = t,
             * and a pass over the non-zeros: v += s_i, w -= lr (nesterov ? 1 + mu : 1) s_i. */
            for (ptrdiff_t i = 0; i < n_in; i++) {
                REAL *restrict w = WhT + i * stride, *restrict v = VWhT ? VWhT + i * stride : NULL;
                if (!v) {
#pragma omp simd
                    for (ptrdiff_t j = 0; j < width; j++) w[j] -= lr * decay * w[j];
                } else if (opt->nesterov) {
#pragma omp simd
                    for (ptrdiff_t j = 0; j < width; j++) {
                        const REAL tj = mu * v[j] + decay * w[j];
                        w[j] -= lr * (decay * w[j] + mu * tj);
                        v[j] = tj;
                    }
                } else {
#pragma omp simd
                    for (ptrdiff_t j = 0; j < width; j++) {
                        v[j] = mu * v[j] + decay * w[j];
                        w[j] -= lr * v[j];
                    }
                }
            }
        }
        const REAL c = opt->nesterov ? lr * (R(1) + mu) : lr; /* lr for plain SGD (mu = 0) */
        if (FM_GROUPED(W, B)) {
            FN(fm_grouped_slice)(P, D, W, t, nt, s, WhT, plain ? NULL : VWhT, c, start, B, dH);
            continue;
        }
        if (plain) {
            /* WhT[i, :] -= lr x_bi dh~_b over each example's non-zero inputs */
            for (ptrdiff_t b = 0; b < B; b++) {
                const REAL *vals;
                const int32_t *idx;
                const ptrdiff_t k = FN(fm_row)(D, D->order[start + b], &vals, &idx);
                for (int g = g0; g < g1; g++)
                    FN(fm_update)(WhT + GROUP_OFF(g), stride, GROUP_LINES(g), lr, vals, idx, k,
                                  dH + b * stride + GROUP_OFF(g));
            }
            continue;
        }
        for (ptrdiff_t b = 0; b < B; b++) {
            const REAL *vals;
            const int32_t *idx;
            const ptrdiff_t k = FN(fm_row)(D, D->order[start + b], &vals, &idx);
            FN(fm_update_momentum)(WhT, VWhT, stride, width, c, vals, idx, k, dH + b * stride);
        }
    }
}

/* One thread's share of an epoch (see the top of this file): thread t of nt owns
 * the slices t, t + nt, ... Every thread runs the same sequence of barriers.
 * Inlined into the parallel region. */
static FM_INLINE void FN(fm_sparse_thread)(const FT(fm_net) *P, const FT(fm_rows) *D, const FT(fm_sgd) *opt,
                                           int loss, const FT(fm_swork) *W, int t, int nt, fm_tally *tally)
{
    const ptrdiff_t n_in = D->n_in, n = D->n, batch = D->batch, rows = W->rows, nout = P->nout, stride = P->stride;
    const ptrdiff_t words = MASK_WORDS(W);
    const int G = P->n_groups;
    REAL *restrict dZ = t < P->n_slices ? W->dZ + t * rows * OUT_STRIDE(nout) : NULL;
    fm_tally ignored = {0, 0};
    /* each thread's weight in the rows of dl/dz: 1 + how many lines short of the widest it is */
    int64_t row_share[FM_MAX_THREADS + 1] = {0}, lines[FM_MAX_THREADS] = {0}, widest = 0;
    for (int u = 0; u < nt && u < FM_MAX_THREADS; u++) {
        for (int s = u; s < P->n_slices; s += nt)
            lines[u] += P->group_line[P->slice_group[s + 1]] - P->group_line[P->slice_group[s]];
        widest = lines[u] > widest ? lines[u] : widest;
    }
    for (int u = 0; u < nt; u++)
        row_share[u + 1] = row_share[u] + (u < FM_MAX_THREADS ? 1 + widest - lines[u] : 1);
    /* a thread narrower than the widest asks for each next row whole (fm_prefetch_row) */
    const int narrow = t < FM_MAX_THREADS && lines[t] < widest;
    int parity = 0;

    for (ptrdiff_t start = 0; start < n; start += batch) {
        const ptrdiff_t B = n - start < batch ? n - start : batch;
        const double weight_sum = FN(fm_batch_weight)(D->weights, D->order, start, B);
        const REAL decay = FN(fm_batch_decay)(opt, weight_sum);
        /* a batch larger than the workspace is taken in chunks of `rows` examples,
         * its gradients summed (fm_sparse_accumulate) and the step taken at the end */
        const int chunked = B > rows;
        for (ptrdiff_t c0 = 0; c0 < B; c0 += rows, parity ^= 1) {
            const ptrdiff_t C = B - c0 < rows ? B - c0 : rows, first = start + c0;
            REAL *restrict Pb = W->P + parity * rows * G * nout;

            /* forward, example by example: each owned slice's hidden units (the
             * example's non-zero inputs' rows summed in registers) and its groups'
             * partial logits; with grouped updates, each example's inputs are also
             * marked in the thread's mask (its bit in word b / 64 of each input) */
            uint64_t *mask = FM_GROUPED(W, C) && dZ ? THREAD_MASK(W, t, n_in) : NULL;
            for (ptrdiff_t b = 0; b < C; b++) {
                const REAL *vals;
                const int32_t *idx;
                const ptrdiff_t k = FN(fm_row)(D, D->order[first + b], &vals, &idx);
                if (first + b + 1 < n)
                    FN(fm_prefetch_row)(D, D->order[first + b + 1],
                                        D->order[first + b + 2 < n ? first + b + 2 : n - 1], narrow);
                const uint64_t bit = (uint64_t)1 << (b % 64);
                for (int s = t; s < P->n_slices; s += nt) {
                    const int g0 = P->slice_group[s], g1 = P->slice_group[s + 1];
                    const ptrdiff_t width = GROUP_OFF(g1);
                    const REAL *WhT = P->WhT + s * n_in * stride, *bh = P->bh + s * stride;
                    const REAL *Wy = P->Wy + s * nout * stride;
                    REAL *restrict h = W->H + (s * rows + b) * stride;
                    for (int g = g0; g < g1; g++)
                        FN(fm_gather)(h + GROUP_OFF(g), bh + GROUP_OFF(g), GROUP_LINES(g), vals, idx, k,
                                      WhT + GROUP_OFF(g), stride, s == t && g == g0 && mask ? mask + b / 64 : NULL,
                                      words, bit);
                    for (ptrdiff_t j = 0; j < width; j++) h[j] = FN(fm_tanh1)(h[j]);
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
                            Pb[(b * G + g) * nout + o] = FN(fm_line_sum)(v);
#else
                            const REAL *restrict wy = Wy + o * stride + off;
                            REAL sum = 0;
                            for (ptrdiff_t j = 0; j < nl * LANES; j++) sum += h[off + j] * wy[j];
                            Pb[(b * G + g) * nout + o] = sum;
#endif
                        }
                    }
                }
            }
            FM_BARRIER(W->sync, nt);
            const REAL *dz_rows = dZ;
            if (C == 1 || nt == 1) {
                /* every thread computes the same dl/dz (a second meeting would cost more) */
                if (dZ)
                    FN(fm_sparse_dz)(P, D, loss, P->by + t * OUT_STRIDE(nout), first, weight_sum, 0, C, Pb, dZ, NULL, NULL,
                                     tally ? tally : &ignored);
            } else {
                /* dl/dz shared out by rows, the threads with the narrowest slices taking
                 * the most (their forward pass was the shortest), then a second meeting */
                const ptrdiff_t b0 = C * row_share[t] / row_share[nt], b1 = C * row_share[t + 1] / row_share[nt];
                FN(fm_sparse_dz)(P, D, loss, P->by, first, weight_sum, b0, b1, Pb, W->dZ, W->row_loss,
                                 W->row_correct, NULL);
                FM_BARRIER(W->sync, nt);
                if (tally)
                    for (ptrdiff_t b = 0; b < C; b++) {
                        tally->loss_sum += W->row_loss[b];
                        tally->correct += W->row_correct[b];
                    }
                dz_rows = W->dZ;
            }
            if (!dZ)
                continue;
            if (!chunked) {
                FN(fm_sparse_step)(P, D, opt, decay, W, t, nt, start, B, dz_rows);
            } else {
                FN(fm_sparse_accumulate)(P, D, W, t, nt, first, C, dz_rows, c0 == 0);
                if (c0 + C == B)
                    FN(fm_sparse_apply)(P, D, opt, decay, W, t, nt);
            }
        }
    }
}

FM_LEVEL_FN int FN(fm_sparse_epoch)(const FT(fm_net) *P, const FT(fm_rows) *D, const FT(fm_sgd) *opt, int loss,
                                    const FT(fm_swork) *W, int n_threads, fm_tally *tally)
{
    if (!FN(fm_valid_loss)(loss))
        return FM_ERR_LOSS;
    if (P->stride % LANES || (opt->momentum != 0 && !(P->VWhT && P->Vbh && P->VWy && P->Vby)) ||
        W->rows < 1 || (W->rows < (D->batch < D->n ? D->batch : D->n) && !W->G) ||
        (W->cptr && (!W->G || !D->indptr || D->batch < D->n || W->rows > 65536)) ||
        (W->mask && (W->rows > FM_MASK_ROWS || W->group_min < 1)))
        return FM_ERR_LAYOUT;
    n_threads = n_threads < 1 ? 1 : (n_threads > FM_MAX_THREADS ? FM_MAX_THREADS : n_threads);
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
    {
        const int t = omp_get_thread_num();
        FN(fm_sparse_thread)(P, D, opt, loss, W, t, omp_get_num_threads(), t == 0 ? tally : NULL);
    }
#else
    FN(fm_sparse_thread)(P, D, opt, loss, W, 0, 1, tally);
#endif
    return FM_OK;
}

/* The row-pass floor of an epoch: only the two passes over rows of WhT per
 * non-zero input that any sparse epoch makes (the forward gather and the row
 * update, with a fixed dh~), on the same slices and threads, the threads meeting
 * every `batch` examples; nothing else (no tanh, logits, loss). The epoch's
 * time over this one's says what the rest of the step costs. Changes WhT. */
FM_LEVEL_FN void FN(fm_row_passes)(const FT(fm_net) *P, const FT(fm_rows) *D, const FT(fm_swork) *W, int n_threads)
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
        const ptrdiff_t n_in = D->n_in, stride = P->stride;
        for (ptrdiff_t start = 0; start < D->n; start += D->batch) {
            const ptrdiff_t B = D->n - start < D->batch ? D->n - start : D->batch;
            for (ptrdiff_t b = 0; b < B; b++) {
                const REAL *vals;
                const int32_t *idx;
                const ptrdiff_t k = FN(fm_row)(D, D->order[start + b], &vals, &idx);
                if (start + b + 1 < D->n)
                    FN(fm_prefetch_row)(D, D->order[start + b + 1],
                                        D->order[start + b + 2 < D->n ? start + b + 2 : D->n - 1], 0);
                for (int s = t; s < P->n_slices; s += nt) {
                    const int g0 = P->slice_group[s], g1 = P->slice_group[s + 1];
                    REAL *WhT = P->WhT + s * n_in * stride, *h = W->H + s * W->rows * stride;
                    for (int g = g0; g < g1; g++)
                        FN(fm_gather)(h + GROUP_OFF(g), P->bh + s * stride + GROUP_OFF(g), GROUP_LINES(g), vals, idx,
                                      k, WhT + GROUP_OFF(g), stride, NULL, 0, 0);
                    for (int g = g0; g < g1; g++) /* dh~: the bias row, a fixed small vector */
                        FN(fm_update)(WhT + GROUP_OFF(g), stride, GROUP_LINES(g), R(1e-7), vals, idx, k,
                                      P->bh + s * stride + GROUP_OFF(g));
                }
            }
            FM_BARRIER(W->sync, nt);
        }
    }
}

/* The non-zeros of the CSR rows order[0 .. n), `rows` examples at a time, grouped
 * by input within each chunk: chunk c's entries of input i are cptr[c * (n_in + 1)
 * + i] .. [+ i + 1] of crow (the example's place in its chunk) and cval (its
 * value), in example order. cursor: n_in scratch. */
FM_LEVEL_FN void FN(fm_group_chunks)(const FT(fm_rows) *D, ptrdiff_t rows, int64_t *restrict cptr,
                                     uint16_t *restrict crow, REAL *restrict cval, int64_t *restrict cursor)
{
    const ptrdiff_t n_in = D->n_in;
    int64_t base = 0;
    for (ptrdiff_t c0 = 0; c0 < D->n; c0 += rows) {
        const ptrdiff_t C = D->n - c0 < rows ? D->n - c0 : rows;
        int64_t *restrict cp = cptr + (c0 / rows) * (n_in + 1);
        for (ptrdiff_t i = 0; i <= n_in; i++) cp[i] = 0;
        for (ptrdiff_t b = 0; b < C; b++) {
            const intptr_t r = D->order[c0 + b];
            for (int64_t e = D->indptr[r]; e < D->indptr[r + 1]; e++) cp[D->indices[e] + 1]++;
        }
        cp[0] = base;
        for (ptrdiff_t i = 0; i < n_in; i++) {
            cp[i + 1] += cp[i];
            cursor[i] = cp[i];
        }
        for (ptrdiff_t b = 0; b < C; b++) {
            const intptr_t r = D->order[c0 + b];
            for (int64_t e = D->indptr[r]; e < D->indptr[r + 1]; e++) {
                const int64_t p = cursor[D->indices[e]]++;
                crow[p] = (uint16_t)b;
                cval[p] = D->data[e];
            }
        }
        base = cp[n_in];
    }
}

/* Dense rows -> CSR, in two passes: fm_csr_counts writes each row's number of
 * non-zeros (NaN counts as non-zero), fm_csr_fill the indices and values of the
 * rows, given indptr (the running sum of the counts). */
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

FM_LEVEL_FN void FN(fm_csr_fill)(const REAL *restrict X, ptrdiff_t n_rows, ptrdiff_t n_in, const int64_t *restrict indptr,
                                 int32_t *restrict indices, REAL *restrict data)
{
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (ptrdiff_t r = 0; r < n_rows; r++) {
        const REAL *restrict x = X + r * n_in;
        int64_t k = indptr[r];
        for (ptrdiff_t i = 0; i < n_in; i++)
            if (x[i] != 0) {
                indices[k] = (int32_t)i;
                data[k++] = x[i];
            }
    }
}

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
