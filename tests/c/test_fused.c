/* The hand-written kernels of fastmlp/_kernels/_fused.c, tested in C alone: the
 * sparse epoch on a small problem (CSR rows and dense rows, one and two threads,
 * the hidden units in several groups and slices, every activation and loss of the
 * tables in _fused.h) against the same SGD written plainly in double, for float
 * and double; tanh against libm; unknown activation and loss codes.
 *
 * Built and run (natively, and for aarch64 under qemu) by tools/check_c.sh:
 *     cc -O2 -fopenmp -Wall -Wextra -Ifastmlp/_kernels tests/c/test_fused.c fastmlp/_kernels/_fused.c -lm
 * Exits 0 when every check passes, 1 otherwise.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_fused.h"

enum { N = 11, N_IN = 6, NH = 70, NOUT = 3, LINE = 64 };

static int failures = 0;

static void check(int ok, const char *what)
{
    if (!ok) {
        printf("FAIL: %s\n", what);
        failures++;
    }
}

/* The data and initial parameters, in double: X has zeros (the kernels skip them). */
static double X[N][N_IN], Wh0[NH][N_IN], bh0[NH], Wy0[NOUT][NH], by0[NOUT];
static intptr_t labels[N], order[N];
static double targets[N][NOUT]; /* the value losses' targets: 0 or 1, valid for each */

static void make_problem(void)
{
    unsigned s = 12345;
    for (int r = 0; r < N; r++) {
        for (int i = 0; i < N_IN; i++) {
            s = s * 1103515245u + 12345u;
            X[r][i] = ((s >> 16) % 3 == 0) ? 0.0 : ((double)((s >> 8) % 2001) / 1000.0 - 1.0);
        }
        labels[r] = r % NOUT;
        for (int o = 0; o < NOUT; o++)
            targets[r][o] = (r + o) % 3 == 0;
        order[r] = (r * 7) % N; /* a permutation: 7 and 11 are coprime */
    }
    for (int j = 0; j < NH; j++) {
        bh0[j] = 0.1 * (j - 2);
        for (int i = 0; i < N_IN; i++)
            Wh0[j][i] = 0.3 * sin(1.0 + j * N_IN + i);
    }
    for (int o = 0; o < NOUT; o++) {
        by0[o] = -0.05 * o;
        for (int j = 0; j < NH; j++)
            Wy0[o][j] = 0.4 * cos(2.0 + o * NH + j);
    }
}

/* The activations of fastmlp/tables.py by code, in double with libm: f(a), and f'
 * written from the output h. */
static double activation(int act, double a)
{
    switch (act) {
    case 0: return tanh(a);
    case 1: return a > 0 ? a : 0;
    case 2: return 1 / (1 + exp(-a));
    case 3: return a;
    default: return NAN;
    }
}

static double activation_grad(int act, double h)
{
    switch (act) {
    case 0: return 1 - h * h;
    case 1: return h > 0;
    case 2: return h * (1 - h);
    case 3: return 1;
    default: return NAN;
    }
}

/* Plain mini-batch SGD in double: the math of fastmlp/reference.py, loop by loop. */
static void reference_epoch(double Wh[NH][N_IN], double bh[NH], double Wy[NOUT][NH], double by[NOUT],
                            int batch, double lr, int act, int loss, double *loss_sum, long *n_correct)
{
    for (int start = 0; start < N; start += batch) {
        int B = N - start < batch ? N - start : batch;
        double gWh[NH][N_IN] = {{0}}, gbh[NH] = {0}, gWy[NOUT][NH] = {{0}}, gby[NOUT] = {0};
        for (int b = 0; b < B; b++) {
            const double *x = X[order[start + b]];
            intptr_t y = labels[order[start + b]];
            double h[NH], z[NOUT], p[NOUT], dz[NOUT], dh[NH], m = -INFINITY, s = 0;
            for (int j = 0; j < NH; j++) {
                double a = bh[j];
                for (int i = 0; i < N_IN; i++) a += Wh[j][i] * x[i];
                h[j] = activation(act, a);
            }
            int am = 0;
            for (int o = 0; o < NOUT; o++) {
                z[o] = by[o];
                for (int j = 0; j < NH; j++) z[o] += Wy[o][j] * h[j];
                if (z[o] > m) { m = z[o]; am = o; }
            }
            const double *t = targets[order[start + b]];
            for (int o = 0; o < NOUT; o++) s += exp(z[o] - m);
            for (int o = 0; o < NOUT; o++) p[o] = exp(z[o] - m) / s;
            if (loss >= 2) { /* bce, squared_error, poisson: dl/dz = output - t */
                int right = loss == 2;
                for (int o = 0; o < NOUT; o++) {
                    const double out = loss == 2 ? 1 / (1 + exp(-z[o])) : loss == 3 ? z[o] : exp(z[o]);
                    *loss_sum += loss == 2   ? fmax(z[o], 0) - t[o] * z[o] + log1p(exp(-fabs(z[o])))
                                 : loss == 3 ? 0.5 * (z[o] - t[o]) * (z[o] - t[o])
                                             : (t[o] > 0 ? t[o] * log(t[o] / out) : 0) - t[o] + out;
                    dz[o] = out - t[o];
                    right &= (z[o] > 0) == (t[o] > 0.5);
                }
                *n_correct += right;
            } else if (loss == 0) { /* ce */
                *loss_sum += -log(p[y]);
                for (int o = 0; o < NOUT; o++) dz[o] = p[o] - (o == y);
            } else {
                double pg = 0, l = 0;
                for (int o = 0; o < NOUT; o++) {
                    double g = p[o] - (o == y);
                    l += 0.5 * g * g;
                    pg += p[o] * g;
                }
                *loss_sum += l;
                for (int o = 0; o < NOUT; o++) dz[o] = p[o] * ((p[o] - (o == y)) - pg);
            }
            if (loss < 2)
                *n_correct += (am == y);
            for (int j = 0; j < NH; j++) {
                dh[j] = 0;
                for (int o = 0; o < NOUT; o++) dh[j] += Wy[o][j] * dz[o];
                dh[j] *= activation_grad(act, h[j]);
            }
            for (int o = 0; o < NOUT; o++) {
                gby[o] += dz[o] / B;
                for (int j = 0; j < NH; j++) gWy[o][j] += dz[o] * h[j] / B;
            }
            for (int j = 0; j < NH; j++) {
                gbh[j] += dh[j] / B;
                for (int i = 0; i < N_IN; i++) gWh[j][i] += dh[j] * x[i] / B;
            }
        }
        for (int j = 0; j < NH; j++) {
            bh[j] -= lr * gbh[j];
            for (int i = 0; i < N_IN; i++) Wh[j][i] -= lr * gWh[j][i];
        }
        for (int o = 0; o < NOUT; o++) {
            by[o] -= lr * gby[o];
            for (int j = 0; j < NH; j++) Wy[o][j] -= lr * gWy[o][j];
        }
    }
}

static void *aligned_zeros(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, LINE, bytes ? bytes : LINE) != 0) {
        printf("out of memory\n");
        exit(1);
    }
    memset(p, 0, bytes);
    return p;
}

/* The layout of epochs.py sparse_net: the padded hidden lines cut into groups of
 * at most 4, as even as can be; slices of whole groups balanced by lines. */
static int make_layout(int lanes, int n_slices, int32_t *group_line, int32_t *slice_group, int *stride)
{
    const int lines = (NH + lanes - 1) / lanes, n_groups = (lines + 3) / 4;
    group_line[0] = 0;
    for (int g = 0; g < n_groups; g++)
        group_line[g + 1] = group_line[g] + lines / n_groups + (g < lines % n_groups);
    if (n_slices > n_groups)
        n_slices = n_groups;
    slice_group[0] = 0;
    for (int s = 1; s < n_slices; s++) {
        int g = 0;
        while (group_line[g] < (double)lines * s / n_slices) g++;
        slice_group[s] = g > slice_group[s - 1] ? g : slice_group[s - 1] + 1;
    }
    slice_group[n_slices] = n_groups;
    *stride = 0;
    for (int s = 0; s < n_slices; s++) {
        const int w = (group_line[slice_group[s + 1]] - group_line[slice_group[s]]) * lanes;
        if (w > *stride) *stride = w;
    }
    return n_slices;
}

/* The learning rate of the test's epochs: smaller for the value losses and the
 * unbounded activations (relu, identity: codes 1 and 3), which 0.5 steps make
 * diverge at batch 1. */
#define LR(act, loss) ((loss) >= 2 ? 0.002 : ((act) & 1) ? 0.05 : 0.5)

/* One epoch of the sparse kernel of type REAL (suffix S) from the double problem,
 * compared with reference_epoch to relative tolerance TOL; returns the trained
 * hidden weights (n_in x NH, row-major) for comparisons between thread counts.
 * chunk > 0: a workspace of `chunk` rows with a gradient buffer, so that larger
 * batches are taken in chunks (a full batch of CSR rows with its non-zeros grouped
 * by input in each chunk). group: a mask, so that batches (or chunks) of two
 * examples or more update each touched row once. */
#define TEST_SPARSE_EPOCH(REAL, S, TOL)                                                         \
    static double *test_sparse_epoch_##S(int batch, int act, int loss, int threads, int csr, int chunk, int group) \
    {                                                                                           \
        const int lanes = LINE / sizeof(REAL);                                                  \
        int32_t group_line[16], slice_group[16];                                                \
        int stride;                                                                             \
        const int n_slices = make_layout(lanes, threads, group_line, slice_group, &stride);    \
        const int n_groups = (((NH + lanes - 1) / lanes) + 3) / 4;                              \
        const int opad = (NOUT + lanes - 1) / lanes * lanes; /* by, gby, dZ rows: whole lines */ \
        REAL *WhT = aligned_zeros(n_slices * N_IN * stride * sizeof(REAL));                     \
        REAL *bh = aligned_zeros(n_slices * stride * sizeof(REAL));                             \
        REAL *Wy = aligned_zeros(n_slices * NOUT * stride * sizeof(REAL));                      \
        REAL *by = aligned_zeros(n_slices * opad * sizeof(REAL));                               \
        for (int s = 0; s < n_slices; s++) {                                                    \
            const int u0 = group_line[slice_group[s]] * lanes;                                  \
            for (int j = u0; j < NH && j < u0 + stride; j++) {                                  \
                bh[s * stride + j - u0] = (REAL)bh0[j];                                         \
                for (int i = 0; i < N_IN; i++) WhT[(s * N_IN + i) * stride + j - u0] = (REAL)Wh0[j][i]; \
                for (int o = 0; o < NOUT; o++) Wy[(s * NOUT + o) * stride + j - u0] = (REAL)Wy0[o][j]; \
            }                                                                                   \
            for (int o = 0; o < NOUT; o++) by[s * opad + o] = (REAL)by0[o];                     \
        }                                                                                       \
        REAL x[N][N_IN], vals[N * N_IN], t[N * NOUT];                                           \
        for (int r = 0; r < N * NOUT; r++) t[r] = (REAL)targets[r / NOUT][r % NOUT];            \
        int32_t cols[N * N_IN], iota[N_IN];                                                     \
        int64_t indptr[N + 1] = {0};                                                            \
        for (int i = 0; i < N_IN; i++) iota[i] = i;                                             \
        for (int r = 0; r < N; r++) {                                                           \
            indptr[r + 1] = indptr[r];                                                          \
            for (int i = 0; i < N_IN; i++) {                                                    \
                x[r][i] = (REAL)X[r][i];                                                        \
                if (x[r][i] != 0) {                                                             \
                    vals[indptr[r + 1]] = x[r][i];                                              \
                    cols[indptr[r + 1]++] = i;                                                  \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
        fm_net_##S net = {act, loss, WhT, bh, Wy, by, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, N_IN, NH, NOUT, stride, n_slices, \
                          n_groups, slice_group, group_line};                                   \
        fm_rows_##S ex = {csr ? vals : &x[0][0], csr ? cols : iota, csr ? indptr : NULL, labels, order, \
                          NULL, N_IN, N, batch < N ? batch : N, t};                                 \
        fm_step_##S opt = {.lr = (REAL)LR(act, loss), .kind = FM_SGD};                                   \
        const int rows = chunk > 0 ? chunk : N;                                                 \
        fm_swork_##S ws = {aligned_zeros(n_slices * rows * stride * sizeof(REAL)),               \
                          aligned_zeros(n_slices * rows * stride * sizeof(REAL)),               \
                          aligned_zeros(2 * rows * n_groups * NOUT * sizeof(REAL)),             \
                          aligned_zeros(n_slices * rows * opad * sizeof(REAL)),                 \
                          aligned_zeros(n_slices * NOUT * stride * sizeof(REAL)),               \
                          aligned_zeros(n_slices * stride * sizeof(REAL)),                      \
                          aligned_zeros(n_slices * opad * sizeof(REAL)),                        \
                          chunk > 0 ? aligned_zeros(n_slices * N_IN * stride * sizeof(REAL)) : NULL, \
                          aligned_zeros(rows * sizeof(double)), aligned_zeros(rows * sizeof(double)), \
                          aligned_zeros(128), rows, NULL, NULL, NULL,                           \
                          group ? aligned_zeros(n_slices * N_IN * ((rows + 63) / 64) * 8) : NULL, 2}; \
        int64_t cptr[(N + 1) * (N_IN + 1)], cursor[N_IN];                                       \
        uint16_t crow[N * N_IN];                                                                \
        REAL cval[N * N_IN];                                                                    \
        if (chunk > 0 && csr && batch >= N) { /* a full batch: its chunks' non-zeros grouped */  \
            fm_group_chunks_##S(&ex, rows, cptr, crow, cval, cursor);                           \
            ws.cptr = cptr;                                                                     \
            ws.crow = crow;                                                                     \
            ws.cval = cval;                                                                     \
        }                                                                                       \
        fm_tally tally = {0, 0};                                                                \
        int status = fm_sparse_epoch_##S(&net, &ex, &opt, &ws, threads, &tally);                \
        check(status == FM_OK, #S " sparse epoch status");                                      \
        double Wh[NH][N_IN], b_h[NH], W_y[NOUT][NH], b_y[NOUT], loss_sum = 0;                   \
        long n_correct = 0;                                                                     \
        double Xsave[N][N_IN];                                                                  \
        memcpy(Xsave, X, sizeof X);                                                             \
        memcpy(Wh, Wh0, sizeof Wh); memcpy(b_h, bh0, sizeof b_h);                               \
        memcpy(W_y, Wy0, sizeof W_y); memcpy(b_y, by0, sizeof b_y);                             \
        for (int r = 0; r < N; r++) /* the reference sees the same rounded inputs */           \
            for (int i = 0; i < N_IN; i++) X[r][i] = (double)x[r][i];                           \
        reference_epoch(Wh, b_h, W_y, b_y, batch, (double)(REAL)LR(act, loss), act, loss, &loss_sum, &n_correct); \
        memcpy(X, Xsave, sizeof X);                                                             \
        double worst = 0, *out = malloc(sizeof(double) * N_IN * NH);                            \
        for (int s = 0; s < n_slices; s++) {                                                    \
            const int u0 = group_line[slice_group[s]] * lanes;                                  \
            const int u1 = group_line[slice_group[s + 1]] * lanes;                              \
            for (int j = u0; j < u1; j++) {                                                     \
                const REAL bj = bh[s * stride + j - u0];                                        \
                if (j >= NH) { /* the padded units stay exactly zero */                         \
                    check(bj == 0 && WhT[s * N_IN * stride + j - u0] == 0 && Wy[s * NOUT * stride + j - u0] == 0, \
                          #S " padded units stay zero");                                        \
                    continue;                                                                   \
                }                                                                               \
                worst = fmax(worst, fabs(bj - b_h[j]) / (1 + fabs(b_h[j])));                    \
                for (int i = 0; i < N_IN; i++) {                                                \
                    const double w = WhT[(s * N_IN + i) * stride + j - u0];                     \
                    out[i * NH + j] = w;                                                        \
                    worst = fmax(worst, fabs(w - Wh[j][i]) / (1 + fabs(Wh[j][i])));            \
                }                                                                               \
                for (int o = 0; o < NOUT; o++)                                                  \
                    worst = fmax(worst, fabs(Wy[(s * NOUT + o) * stride + j - u0] - W_y[o][j]) / (1 + fabs(W_y[o][j]))); \
            }                                                                                   \
            for (int o = 0; o < NOUT; o++)                                                      \
                worst = fmax(worst, fabs(by[s * opad + o] - b_y[o]) / (1 + fabs(b_y[o])));      \
        }                                                                                       \
        worst = fmax(worst, fabs(tally.loss_sum - loss_sum) / (1 + fabs(loss_sum)));            \
        if (!isfinite(tally.loss_sum) || !isfinite(loss_sum)) /* fmax would hide a NaN */       \
            worst = INFINITY;                                                                   \
        char what[200];                                                                         \
        snprintf(what, sizeof what, #S " sparse epoch, %s rows, batch %d, chunk %d%s, %s, %s, %d thread(s), " \
                 "%d slice(s): worst relative error %.3g", csr ? "CSR" : "dense", batch, chunk,           \
                 group ? ", grouped" : "", fm_activation_name(act), fm_loss_name(loss), threads, n_slices, worst); \
        check(worst <= (TOL), what);                                                            \
        check(tally.correct == (double)n_correct, #S " sparse epoch correct count");            \
        printf("ok   %s\n", what);                                                              \
        free(WhT); free(bh); free(Wy); free(by);                                                \
        free(ws.H); free(ws.dH); free(ws.Zp); free(ws.dZ); free(ws.gWy); free(ws.gbh); free(ws.gby); \
        free(ws.gWhT); free(ws.sync); free(ws.row_loss); free(ws.row_correct); free(ws.mask);   \
        return out;                                                                             \
    }

TEST_SPARSE_EPOCH(float, f, 2e-5)
TEST_SPARSE_EPOCH(double, d, 1e-12)

static void test_unknown_codes_are_refused(void)
{
    float z[3] = {1, 2, 3}, dz[3];
    double zd[3] = {1, 2, 3}, dzd[3];
    intptr_t y = 0;
    fm_tally t = {0, 0};
    check(fm_loss_grad_f(z, &y, NULL, dz, 1, 3, 7, 1.0f, &t) == FM_ERR_LOSS, "float loss_grad refuses code 7");
    check(fm_loss_grad_d(zd, &y, NULL, dzd, 1, 3, -1, 1.0, &t) == FM_ERR_LOSS, "double loss_grad refuses code -1");
    check(fm_loss_grad_f(z, &y, NULL, dz, 1, 3, 3, 1.0f, &t) == FM_ERR_LAYOUT, "a loss of values refuses labels alone");
    check(fm_loss_grad_d(zd, NULL, zd, dzd, 1, 3, 0, 1.0, &t) == FM_ERR_LAYOUT, "a loss of labels refuses values alone");
    check(t.correct == 0 && t.loss_sum == 0, "a refused call tallies nothing");
    check(fm_apply_act_f(99, z, 3) == FM_ERR_ACT && z[0] == 1, "float activation refuses code 99, untouched");
    check(fm_apply_act_grad_d(-1, zd, dzd, 3) == FM_ERR_ACT, "double activation gradient refuses code -1");
    check(fm_activation_name(99) == NULL && fm_loss_name(-1) == NULL, "unknown codes have no name");
    printf("ok   unknown activation and loss codes are refused\n");
}

static void test_tanh_double(void)
{
    enum { M = 400001 };
    static double x[M], t[M];
    for (int i = 0; i < M; i++) x[i] = t[i] = -40.0 + 80.0 * (double)i / (M - 1);
    check(fm_apply_act_d(0, t, M) == FM_OK, "double tanh: code 0");
    double worst = 0;
    for (int i = 0; i < M; i++)
        worst = fmax(worst, fabs(t[i] - tanh(x[i])));
    char what[96];
    snprintf(what, sizeof what, "double tanh within 1e-15 of libm's on [-40, 40] (worst %.3g)", worst);
    check(worst <= 1e-15, what);
    printf("ok   %s\n", what);
}

static void test_tanh_float(void)
{
    enum { M = 200001 };
    static float x[M], t[M];
    for (int i = 0; i < M; i++) x[i] = t[i] = -12.0f + 24.0f * (float)i / (M - 1);
    check(fm_apply_act_f(0, t, M) == FM_OK, "float tanh: code 0");
    double worst = 0;
    for (int i = 0; i < M; i++)
        worst = fmax(worst, fabs((double)t[i] - tanh((double)x[i])));
    char what[96];
    snprintf(what, sizeof what, "float tanh within 1e-6 of libm's on [-12, 12] (worst %.3g)", worst);
    check(worst <= 1e-6, what);
    printf("ok   %s\n", what);
}

int main(void)
{
    make_problem();
    /* every build of the kernels this CPU can run (one where they are built once) */
    const int levels[] = {4, 3, 1};
    for (int li = 0; li < 3; li++) {
        const int level = fm_set_clone_level(levels[li]);
        if (level != levels[li] && !(level == 0 && li == 0))
            continue;
        printf("kernel level %d\n", level);
        for (int act = 0; fm_activation_name(act); act++)
            for (int loss = 0; fm_loss_name(loss); loss++)
                for (int batch = 1; batch <= N + 2; batch += 3)
                    for (int csr = 0; csr <= 1; csr++)
                        for (int chunk = 0; chunk <= 2; chunk += 2) /* whole batches; chunks of 2 */
                            for (int group = 0; group <= 1; group++) {
                                double *f1 = test_sparse_epoch_f(batch, act, loss, 1, csr, chunk, group);
                                double *f2 = test_sparse_epoch_f(batch, act, loss, 2, csr, chunk, group);
                                double *d1 = test_sparse_epoch_d(batch, act, loss, 1, csr, chunk, group);
                                double *d2 = test_sparse_epoch_d(batch, act, loss, 2, csr, chunk, group);
                                check(memcmp(f1, f2, sizeof(double) * N_IN * NH) == 0,
                                      "float: bitwise equal with 1 and 2 threads");
                                check(memcmp(d1, d2, sizeof(double) * N_IN * NH) == 0,
                                      "double: bitwise equal with 1 and 2 threads");
                                free(f1);
                                free(f2);
                                free(d1);
                                free(d2);
                            }
        test_unknown_codes_are_refused();
        test_tanh_float();
        test_tanh_double();
        if (level == 0)
            break;
    }
    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
