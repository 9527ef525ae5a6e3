/* The types and functions of _fused.h for one REAL (float, double): included by
 * _fused.h once per REAL, with REAL and FM_D (a name of this REAL: name_f or
 * name_d) defined. */

/* The step of each batch, by `kind` (a code of FM_OPTIMIZERS):
 *
 * - FM_SGD, torch.optim.SGD's (dampening 0): g = grad + decay * W for the weights
 *   (not the biases), v = momentum * v + g, W -= lr * v (lr * (g + momentum * v)
 *   with nesterov); without momentum W -= lr * g.
 * - FM_ADAM, torch.optim.Adam's: g = grad + decay * W, m = m + (1 - beta1) (g - m),
 *   v = beta2 v + (1 - beta2) g^2, W -= lr / (1 - beta1^t) m / (sqrt(v) /
 *   sqrt(1 - beta2^t) + eps) at step t. With sklearn_eps, scikit-learn's: eps is
 *   added to sqrt(v) before the bias correction (eps / sqrt(1 - beta2^t) above).
 * - FM_ADAMW, torch.optim.AdamW's: W *= 1 - lr * decay, then Adam's step without decay.
 * - FM_GRADIENT, no step: the parameters stay, and their state v (the velocity
 *   block) takes the batch's gradient, grad + decay * W for the weights: the
 *   loss-and-gradient primitive of full-batch optimizers (L-BFGS).
 *
 * With decay_by_weight_sum the decay of a batch is decay / (sum of its sample
 * weights) (scikit-learn's alpha). grad is the batch's (weighted) mean gradient.
 * Batch i of a call is step t = steps + i + 1. step_size, bc2_sqrt and eps_t are
 * not inputs: fm_step_at sets them for each batch, in a copy. */
typedef struct {
    REAL lr, momentum, decay;
    int nesterov, decay_by_weight_sum;
    int kind, sklearn_eps;
    REAL beta1, beta2, eps;
    int64_t steps;
    REAL step_size, bc2_sqrt, eps_t;
} FM_D(fm_step);

/* The network of the sparse epoch: the hidden activation and the loss (codes of
 * FM_ACTIVATIONS and FM_LOSSES), nh hidden units and nout outputs, and the
 * parameters. The hidden units, padded with zero units to whole cache lines, are
 * cut into n_groups groups of at most four lines (group g: lines group_line[g] ..
 * group_line[g + 1]); slice s holds the groups slice_group[s] .. slice_group[s +
 * 1] in arrays of its own, each row `stride` elements apart: WhT (n_slices, n_in,
 * stride) the transposed hidden weights, bh (n_slices, stride), Wy (n_slices,
 * nout, stride); by (n_slices, nout_pad) holds one copy of the output biases per
 * slice, nout_pad being nout rounded up to whole cache lines. Every block starts
 * on a cache line. VWhT, Vbh, VWy, Vby: their velocities (or Adam's first
 * moments), SWhT, Sbh, SWy, Sby Adam's second moments, in the same layout (NULL
 * where the step keeps none). */
typedef struct {
    int act, loss;
    REAL *WhT, *bh, *Wy, *by;
    REAL *VWhT, *Vbh, *VWy, *Vby;
    REAL *SWhT, *Sbh, *SWy, *Sby;
    ptrdiff_t n_in, nh, nout, stride;
    int n_slices, n_groups;
    const int32_t *slice_group, *group_line;
} FM_D(fm_net);

/* The examples: rows order[0 .. n) of the data, batch at a time (the last batch
 * may be smaller). CSR rows: row r's values data[indptr[r] .. indptr[r + 1]] at
 * inputs indices[...]; with indptr NULL, dense rows of n_in values and indices
 * 0 .. n_in - 1. weights: each row's sample weight (NULL: all 1). What the loss
 * compares row r's outputs with: its class label labels[r], or, for a loss of
 * value targets (FM_VALUE_TARGETS), its nout values targets[r * nout ...]; the
 * other may be NULL. */
typedef struct {
    const REAL *data;
    const int32_t *indices;
    const int64_t *indptr;
    const intptr_t *labels, *order;
    const REAL *weights;
    ptrdiff_t n_in, n, batch;
    const REAL *targets;
} FM_D(fm_rows);

/* Workspace of the sparse epoch, for `rows` examples at a time (the batch, or
 * chunks of it: see gWhT): H, dH (n_slices, rows, stride) the hidden activations
 * and dl/dh~; Zp (2, rows, n_groups, nout) the partial logits, one half per
 * parity; dZ (n_slices, rows, nout_pad) dl/dz, one copy per thread (shared, the
 * first, where the threads share its rows out); row_loss, row_correct (rows,);
 * gWy (n_slices, nout, stride), gbh (n_slices, stride), gby (n_slices, nout_pad)
 * the summed gradients of Wy, bh and by; sync the threads' barrier (32 int32,
 * zero-filled, cache aligned). gWhT (n_slices, n_in, stride), zero-filled, or
 * NULL: with it, a batch of more than `rows` examples is taken `rows` at a time,
 * its gradient of WhT summed in gWhT and the step taken after its last chunk
 * (else rows >= batch). cptr, crow, cval, or NULL: for an epoch of one batch
 * (every example), CSR rows and gWhT, the non-zeros of each chunk grouped by
 * input (fm_group_chunks), so that each row of gWhT takes one sum per chunk. mask
 * (n_slices, n_in, (rows + 63) / 64), zero-filled, or NULL (NULL where rows >
 * FM_MASK_ROWS): one bit per example of the batch (or chunk) for each input where
 * it is non-zero, per thread; with it, batches and chunks of at least group_min
 * examples update each row of WhT (or gWhT) they touch once, with the sum over
 * their examples (the rows' indices must then be sorted and unique). */
typedef struct {
    REAL *H, *dH, *Zp, *dZ, *gWy, *gbh, *gby, *gWhT;
    double *row_loss, *row_correct;
    int32_t *sync;
    ptrdiff_t rows;
    const int64_t *cptr;
    const uint16_t *crow;
    const REAL *cval;
    uint64_t *mask;
    ptrdiff_t group_min;
} FM_D(fm_swork);

/* The examples of a dense epoch: rows order[0 .. n) of X (n_rows, n_in), batch
 * at a time (the last batch may be smaller); weights, labels and targets as in
 * fm_rows. */
typedef struct {
    const REAL *X;
    const intptr_t *labels, *order;
    const REAL *weights;
    ptrdiff_t n_in, n, batch;
    const REAL *targets;
} FM_D(fm_batches);

/* The network of the BLAS epoch: the activation and loss codes, the parameters
 * in the model's layout: Wh (nh, n_in), bh (nh,), Wy (nout, nh), by (nout,); the
 * hidden units cut into n_blocks blocks (block j: units block_unit[j] ..
 * block_unit[j + 1], at most block_max). VWh, Vbh, VWy, Vby: their velocities
 * (or Adam's first moments), SWh, Sbh, SWy, Sby Adam's second moments (NULL where
 * the step keeps none). */
typedef struct {
    int act, loss;
    REAL *Wh, *bh, *Wy, *by;
    REAL *VWh, *Vbh, *VWy, *Vby;
    REAL *SWh, *Sbh, *SWy, *Sby;
    ptrdiff_t n_in, nh, nout;
    int n_blocks;
    const int32_t *block_unit;
    ptrdiff_t block_max;
} FM_D(fm_dense);

/* Workspace of the BLAS epoch: Xb (2, batch, n_in) the gathered rows, one half
 * per batch parity (unused where batches lie in order in X); H, dH (n_blocks,
 * batch, block_max), each block's rows `width` apart; Zp (n_blocks, batch, nout)
 * the partial logits; dZ (batch, nout); row_loss, row_correct (batch,); GWh
 * (nh, n_in), GWy (nout, nh), gb (nh + nout,) the gradients, taken apart from the
 * weights for any step but plain SGD (else NULL); sync the threads' barrier (32
 * int32, zero-filled, cache aligned). */
typedef struct {
    REAL *Xb, *H, *dH, *Zp, *dZ;
    double *row_loss, *row_correct;
    REAL *GWh, *GWy, *gb;
    int32_t *sync;
} FM_D(fm_bwork);

/* The network of the sparse epoch of several hidden layers (_deep_impl.h): the
 * activation and loss codes; n_layers layers of weights (one more than the hidden
 * layers); n (n_layers + 1,) the widths, n[0] the inputs and n[n_layers] the
 * outputs; s (n_layers + 1,) the same padded to whole cache lines (s[0] = n[0]);
 * layer k + 1's weights transposed, WT (s[k] rows by s[k + 1]; the first's as
 * panels of DGROUP columns, n[0] rows each, the last padded to DGROUP), at
 * W + w_off[k], its biases (s[k + 1],) at b + b_off[k], each
 * cache-aligned; the padded rows and columns zero. VW, Vb: their velocities (or
 * Adam's first moments), SW, Sb Adam's second moments, in the same layout (NULL
 * where the step keeps none). */
typedef struct {
    int act, loss, n_layers;
    const int64_t *n, *s, *w_off, *b_off;
    REAL *W, *b, *VW, *Vb, *SW, *Sb;
} FM_D(fm_deep);

/* Workspace of the sparse epoch of several hidden layers, for `rows` examples at
 * a time: H, D the activations and dl/dh~ of hidden layer k (rows, s[k]) at
 * h_off[k - 1]; P two halves (one per chunk parity), p_half apart, of the partial
 * sums of layer k's inputs (groups of the layer below, rows, s[k]) at p_off[k - 1];
 * GW, Gb (zero-filled, the layout of W and b) the gradient where a step needs it
 * summed (momentum, decay, Adam, or a batch of more than `rows` examples), else NULL;
 * own: n_own threads' scratch of FM_DEEP_OWN(rows, s[n_layers], lanes) each; iota
 * the integers 0 .. n_iota - 1 (at least the widest hidden layer's s[k]); zero four
 * cache lines of zeros (cache aligned); chunks of
 * gemm_min examples or more (0: none) take the dense layers by GEMMs; mask
 * (n_mask, n[0], (rows + 63) / 64), zero-filled, or NULL: with it (rows at most
 * FM_MASK_ROWS), chunks of group_min examples or more update each touched row of
 * the first layer once; sync the threads' barrier (32 int32, zero-filled, cache
 * aligned). */
typedef struct {
    REAL *H, *D, *P, *GW, *Gb, *own;
    const int64_t *h_off, *p_off;
    ptrdiff_t p_half, rows, n_own;
    const int32_t *iota;
    const REAL *zero;
    ptrdiff_t n_iota, gemm_min;
    uint64_t *mask;
    ptrdiff_t n_mask, group_min;
    int32_t *sync;
} FM_D(fm_dwork);

/* A BLAS GEMM (column-major, arguments by address), e.g. scipy's cython_blas. */
typedef void (*FM_D(fm_gemm_ptr))(const char *, const char *, const int *, const int *, const int *,
                                  const REAL *, const REAL *, const int *, const REAL *, const int *,
                                  const REAL *, REAL *, const int *);

int FM_D(fm_deep_epoch)(const FM_D(fm_deep) *net, const FM_D(fm_rows) *ex, const FM_D(fm_step) *opt,
                        const FM_D(fm_dwork) *ws, FM_D(fm_gemm_ptr) gemm, int n_threads, fm_tally *tally);
int FM_D(fm_blas_epoch)(const FM_D(fm_dense) *net, const FM_D(fm_batches) *ex, const FM_D(fm_step) *opt,
                        const FM_D(fm_bwork) *ws, FM_D(fm_gemm_ptr) gemm, int n_threads, fm_tally *tally);
int FM_D(fm_apply_act)(int act, REAL *x, ptrdiff_t n);
int FM_D(fm_bias_act)(int act, REAL *H, const REAL *b, ptrdiff_t B, ptrdiff_t n);
void FM_D(fm_bias_add)(REAL *Z, const REAL *b, ptrdiff_t B, ptrdiff_t n);
int FM_D(fm_loss_grad)(const REAL *Z, const intptr_t *labels, const REAL *targets, REAL *dZ, ptrdiff_t B,
                       ptrdiff_t n, int loss, REAL scale, fm_tally *tally);
int FM_D(fm_apply_act_grad)(int act, REAL *dH, const REAL *H, ptrdiff_t len);
void FM_D(fm_bias_update)(REAL *b, const REAL *D, ptrdiff_t B, ptrdiff_t n, REAL lr);
int FM_D(fm_sparse_epoch)(const FM_D(fm_net) *net, const FM_D(fm_rows) *ex, const FM_D(fm_step) *opt,
                          const FM_D(fm_swork) *ws, int n_threads, fm_tally *tally);
void FM_D(fm_row_passes)(const FM_D(fm_net) *net, const FM_D(fm_rows) *ex, const FM_D(fm_swork) *ws, int n_threads);
void FM_D(fm_group_chunks)(const FM_D(fm_rows) *ex, ptrdiff_t rows, int64_t *cptr, uint16_t *crow, REAL *cval,
                           int64_t *cursor);
void FM_D(fm_csr_counts)(const REAL *X, ptrdiff_t n_rows, ptrdiff_t n_in, int64_t *counts);
void FM_D(fm_csr_fill)(const REAL *X, ptrdiff_t n_rows, ptrdiff_t n_in, const int64_t *indptr,
                       int32_t *indices, REAL *data);
ptrdiff_t FM_D(fm_count_nonfinite)(const REAL *x, ptrdiff_t n);
void FM_D(fm_copy_2d)(const REAL *src, ptrdiff_t s0, ptrdiff_t s1, REAL *dst, ptrdiff_t d0, ptrdiff_t d1,
                     ptrdiff_t n0, ptrdiff_t n1);
