/* The hand-written kernels of fastmlp/_kernels/_fused.c, tested in C alone: the
 * small-batch epoch on a tiny problem against the same SGD written plainly in
 * double, for float and double; the float tanh against libm; unknown loss codes.
 *
 * Built and run (natively, and for aarch64 under qemu) by tools/check_c.sh:
 *     cc -O2 -Wall -Wextra -Ifastmlp/_kernels tests/c/test_fused.c fastmlp/_kernels/_fused.c -lm
 * Exits 0 when every check passes, 1 otherwise.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_fused.h"

enum { N = 11, N_IN = 6, NH = 5, NOUT = 3, LINE = 64 };

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

static void make_problem(void)
{
    unsigned s = 12345;
    for (int r = 0; r < N; r++) {
        for (int i = 0; i < N_IN; i++) {
            s = s * 1103515245u + 12345u;
            X[r][i] = ((s >> 16) % 3 == 0) ? 0.0 : ((double)((s >> 8) % 2001) / 1000.0 - 1.0);
        }
        labels[r] = r % NOUT;
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

/* Plain mini-batch SGD in double: the math of fastmlp/reference.py, loop by loop. */
static void reference_epoch(double Wh[NH][N_IN], double bh[NH], double Wy[NOUT][NH], double by[NOUT],
                            int batch, double lr, int loss, double *loss_sum, long *n_correct)
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
                h[j] = tanh(a);
            }
            int am = 0;
            for (int o = 0; o < NOUT; o++) {
                z[o] = by[o];
                for (int j = 0; j < NH; j++) z[o] += Wy[o][j] * h[j];
                if (z[o] > m) { m = z[o]; am = o; }
            }
            *n_correct += (am == y);
            for (int o = 0; o < NOUT; o++) s += exp(z[o] - m);
            for (int o = 0; o < NOUT; o++) p[o] = exp(z[o] - m) / s;
            if (loss == FM_LOSS_CE) {
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
            for (int j = 0; j < NH; j++) {
                dh[j] = 0;
                for (int o = 0; o < NOUT; o++) dh[j] += Wy[o][j] * dz[o];
                dh[j] *= 1 - h[j] * h[j];
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

/* One epoch of the kernel of type REAL (suffix S) from the double problem, compared
 * with reference_epoch to relative tolerance TOL. */
#define TEST_SMALL_EPOCH(REAL, S, TOL)                                                          \
    static void test_small_epoch_##S(int batch, int loss)                                      \
    {                                                                                           \
        const ptrdiff_t nhp = ((NH * sizeof(REAL) + LINE - 1) / LINE) * LINE / sizeof(REAL);    \
        REAL *WhT = aligned_zeros(N_IN * nhp * sizeof(REAL)), *bh = aligned_zeros(nhp * sizeof(REAL)); \
        REAL *Wy = aligned_zeros(NOUT * nhp * sizeof(REAL)), by[NOUT], x[N][N_IN];              \
        REAL *H = aligned_zeros(N * nhp * sizeof(REAL)), *dH = aligned_zeros(N * nhp * sizeof(REAL)); \
        REAL dZ[N * NOUT];                                                                      \
        intptr_t nz[N * N_IN], nnz[N];                                                          \
        for (int j = 0; j < NH; j++) {                                                          \
            bh[j] = (REAL)bh0[j];                                                               \
            for (int i = 0; i < N_IN; i++) WhT[i * nhp + j] = (REAL)Wh0[j][i];                  \
            for (int o = 0; o < NOUT; o++) Wy[o * nhp + j] = (REAL)Wy0[o][j];                   \
        }                                                                                       \
        for (int o = 0; o < NOUT; o++) by[o] = (REAL)by0[o];                                    \
        for (int r = 0; r < N; r++)                                                             \
            for (int i = 0; i < N_IN; i++) x[r][i] = (REAL)X[r][i];                             \
        fm_params_##S P = {WhT, bh, Wy, by, N_IN, nhp, NOUT};                                   \
        fm_batches_##S D = {&x[0][0], labels, order, N_IN, N, batch};                           \
        fm_tally tally = {0, 0};                                                                \
        int status = fm_small_epoch_##S(&P, &D, (REAL)0.5, loss, H, dH, dZ, nz, nnz, &tally);   \
        check(status == FM_OK, #S " small epoch status");                                       \
        double Wh[NH][N_IN], b_h[NH], W_y[NOUT][NH], b_y[NOUT], loss_sum = 0;                   \
        long n_correct = 0;                                                                     \
        memcpy(Wh, Wh0, sizeof Wh); memcpy(b_h, bh0, sizeof b_h);                               \
        memcpy(W_y, Wy0, sizeof W_y); memcpy(b_y, by0, sizeof b_y);                             \
        for (int r = 0; r < N; r++) /* the reference sees the same rounded inputs */           \
            for (int i = 0; i < N_IN; i++) X[r][i] = (double)x[r][i];                           \
        reference_epoch(Wh, b_h, W_y, b_y, batch, (double)(REAL)0.5, loss, &loss_sum, &n_correct); \
        double worst = 0;                                                                       \
        for (int j = 0; j < NH; j++) {                                                          \
            worst = fmax(worst, fabs(bh[j] - b_h[j]) / (1 + fabs(b_h[j])));                     \
            for (int i = 0; i < N_IN; i++)                                                      \
                worst = fmax(worst, fabs(WhT[i * nhp + j] - Wh[j][i]) / (1 + fabs(Wh[j][i])));  \
            for (int o = 0; o < NOUT; o++)                                                      \
                worst = fmax(worst, fabs(Wy[o * nhp + j] - W_y[o][j]) / (1 + fabs(W_y[o][j]))); \
        }                                                                                       \
        for (int o = 0; o < NOUT; o++) worst = fmax(worst, fabs(by[o] - b_y[o]) / (1 + fabs(b_y[o]))); \
        for (ptrdiff_t j = NH; j < nhp; j++) /* the padded units stay exactly zero */          \
            check(bh[j] == 0 && WhT[j] == 0 && Wy[j] == 0, #S " padded units stay zero");       \
        worst = fmax(worst, fabs(tally.loss_sum - loss_sum) / (1 + fabs(loss_sum)));            \
        char what[160];                                                                         \
        snprintf(what, sizeof what, #S " small epoch, batch %d, loss %d: worst relative error %.3g", \
                 batch, loss, worst);                                                           \
        check(worst <= (TOL), what);                                                            \
        check(tally.n_correct == n_correct, #S " small epoch correct count");                   \
        printf("ok   %s\n", what);                                                              \
        free(WhT); free(bh); free(Wy); free(H); free(dH);                                       \
    }

TEST_SMALL_EPOCH(float, f, 2e-5)
TEST_SMALL_EPOCH(double, d, 1e-12)

static void test_unknown_loss_is_refused(void)
{
    float z[3] = {1, 2, 3}, dz[3];
    double zd[3] = {1, 2, 3}, dzd[3];
    intptr_t y = 0;
    fm_tally t = {0, 0};
    check(fm_loss_grad_f(z, &y, dz, 1, 3, 7, 1.0f, &t) == FM_ERR_LOSS, "float loss_grad refuses code 7");
    check(fm_loss_grad_d(zd, &y, dzd, 1, 3, -1, 1.0, &t) == FM_ERR_LOSS, "double loss_grad refuses code -1");
    check(t.n_correct == 0 && t.loss_sum == 0, "a refused call tallies nothing");
    printf("ok   unknown loss codes are refused\n");
}

static void test_tanh_float(void)
{
    enum { M = 200001 };
    static float x[M], t[M];
    for (int i = 0; i < M; i++) x[i] = t[i] = -12.0f + 24.0f * (float)i / (M - 1);
    fm_tanh_f(t, M);
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
    for (int loss = FM_LOSS_CE; loss <= FM_LOSS_MSE; loss++)
        for (int batch = 1; batch <= N + 2; batch += 3) {
            double Xsave[N][N_IN];
            memcpy(Xsave, X, sizeof X);
            test_small_epoch_f(batch, loss);
            memcpy(X, Xsave, sizeof X);
            test_small_epoch_d(batch, loss);
        }
    test_unknown_loss_is_refused();
    test_tanh_float();
    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
