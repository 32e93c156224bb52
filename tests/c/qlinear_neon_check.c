/*
 * qlinear_neon_check.c - the AArch64 NEON (sdot) and i8mm (smmla) paths of qc_qlinear.c against
 * its scalar path.  Built three times with the same source and flags but for -march, and run under
 * qemu-aarch64:
 *
 *   aarch64-linux-gnu-gcc -std=c11 -O2 -Wall -Werror -march=armv8.2-a+dotprod -I <runtime> \
 *       tests/c/qlinear_neon_check.c <runtime>/qc_qlinear.c -o check_neon -lm      (NEON path)
 *   ... -march=armv8.2-a+dotprod+i8mm ... -o check_i8mm       (smmla row pairs, sdot otherwise)
 *   ... -march=armv8-a ... -o check_scalar                                         (scalar path)
 *   qemu-aarch64 -cpu max -L /usr/aarch64-linux-gnu ./check_neon > neon.txt   (same for scalar)
 *
 * Each build packs deterministic pseudo-random weights itself, following the layout contract of
 * qc_qlinear.h, quantizes activations with qc_quantize_rows, runs qc_qlinear_panel on every panel
 * and prints one line per case: the shape, FNV-1a hashes of y and of (xq, xscale, xsum), and the
 * bits of a few outputs.  The builds' outputs must be identical (tests/test_qlinear_neon.py):
 * the scalar build is the reference.  Each build also checks its outputs against a direct
 * evaluation of the header's math from the unpacked codes (which also checks this file's packer)
 * and exits 1 on a difference.  Cases: all four families, G = 32/64/128 (4-bit), N = 16/32/48/
 * 64/96/128 (T = 1/2/1/4/2/4, 1-3 panels), M = 1,2,3,4,5,9,17 (every row block 4/2/1 and subtile
 * batch), several K (int8: odd and even chunk counts, for smmla's chunk pairs), and
 * activation/weight modes: random, extreme codes in some columns against +-127 rows, and all
 * codes extreme against all +127 or all -127.  Then quantizer cases with NaN,
 * infinities, signed zeros, denormals, .5 ties, all-zero rows and lengths that leave vector tails.
 *
 * qc_quantize_rows_static likewise, with constant ranges (ties, saturation, specials).
 *
 *   ./check sigill [M]   quantizes M rows (default 1), prints "kernel" and runs one kernel call
 *                        (for the SIGILL tests; M = 4 reaches the i8mm build's smmla rows)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qc_qlinear.h"

static uint64_t rng_s = 0x243F6A8885A308D3ull;
static uint64_t rnext(void) { /* splitmix64 */
    uint64_t z = (rng_s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static int rint_in(int lo, int hi) { return lo + (int)(rnext() % (uint64_t)(hi - lo + 1)); }
/* a float in (-1, 1) with a full random mantissa, times 2^e */
static float rfloat(int e) {
    const int32_t u = (int32_t)(rnext() >> 40) - (1 << 23); /* [-2^23, 2^23) */
    return ldexpf((float)u, e - 23);
}

static uint64_t fnv(uint64_t h, const void* p, size_t n) {
    const uint8_t* b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001B3ull;
    return h;
}
#define FNV0 0xCBF29CE484222325ull

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static const int BITS[4] = {8, 4, 4, 2};
static const int CLO[4] = {-127, 1, 0, 0}, CHI[4] = {127, 15, 15, 2}; /* stored code ranges */
static const char* NAMES[4] = {"int8", "int4", "uint4", "ternary"};

/* zero point of (g, n) for codes c: I = sum (c - zp) * xq */
static int zp_of(int fam, const uint8_t* zp, int64_t g, int64_t N, int64_t n) {
    return fam == QC_QL_INT4 ? 8 : fam == QC_QL_TERNARY ? 1 : fam == QC_QL_UINT4 ? zp[g * N + n] : 0;
}

/* Pack codes c[K][N] (int8 for int8, else 0..15 / 0..2) per qc_qlinear.h. */
static void pack(int fam, const int* c, const float* s, const uint8_t* zp, int64_t K, int64_t N,
                 int64_t G, int T, uint8_t* w, float* sp, uint8_t* zpp, int32_t* colsum) {
    const int b = BITS[fam], v = 8 / b, kc = 4 * v, W = 16 * T;
    const int64_t nch = K / kc, ng = K / G, npan = N / W;
    memset(w, 0, (size_t)(K * N * b / 8));
    for (int64_t p = 0; p < npan; p++)
        for (int64_t ch = 0; ch < nch; ch++)
            for (int t = 0; t < T; t++) {
                uint8_t* chunk = w + ((p * nch + ch) * T + t) * 64;
                for (int nl = 0; nl < 16; nl++)
                    for (int j = 0; j < 4; j++)
                        for (int f = 0; f < v; f++) {
                            const int64_t n = (p * T + t) * 16 + nl, k = ch * kc + f * 4 + j;
                            const unsigned code = (unsigned)c[k * N + n] & ((1u << b) - 1);
                            chunk[nl * 4 + j] |= (uint8_t)(code << (f * b));
                        }
            }
    for (int64_t p = 0; p < npan; p++)
        for (int64_t g = 0; g < ng; g++)
            for (int l = 0; l < W; l++) {
                sp[(p * ng + g) * W + l] = s[g * N + p * W + l];
                zpp[(p * ng + g) * W + l] = zp[g * N + p * W + l];
            }
    for (int64_t n = 0; n < N; n++) { /* [N/W][W] = column n; int8 codes are q (ignored otherwise) */
        int32_t cs = 0;
        for (int64_t k = 0; k < K; k++) cs += c[k * N + n];
        colsum[n] = cs;
    }
}

static int failures = 0;
static void run_case_x(int id, int fam, int64_t K, int64_t N, int64_t G, int64_t M, int mode,
                       int sigill_only, int run_only, int reps);

/* mode 0: random; 1: extreme codes in columns 0-15 (highest) and 16-31 (lowest) against rows of
 * integers with amax 127 (xq == x), row 0 all +127, row 1 all -127; 2: every code the highest,
 * every activation +127; 3: every code the lowest, activations -127; 4: the ARMv8.0 ternary
 * table-lookup kernel's worst case for its byte sums: codes lowest at k%8 < 4, else the code of
 * q = 0 (ternary: every table entry used is -1: low part 31, high part -1), activations 1 at
 * k%8 < 4, +-127 at k%8 == 7, random otherwise (integers, xq == x).
 * mode 5 and 6 (not ternary: its table-lookup sums assume xq >= -127): activations imported with
 * a file's static scale reach xq = -128, which the quantizer never makes: xq is overwritten after
 * quantizing, 5 with every activation -128 against the highest codes (6: the lowest), and
 * every other row random over the whole int8 range.
 * run_only: no checks and no output (instruction counts: the "run" mode) */
static void run_case(int id, int fam, int64_t K, int64_t N, int64_t G, int64_t M, int mode,
                     int sigill_only) {
    run_case_x(id, fam, K, N, G, M, mode, sigill_only, 0, 1);
}
static void run_case_x(int id, int fam, int64_t K, int64_t N, int64_t G, int64_t M, int mode,
                       int sigill_only, int run_only, int reps) {
    const int T = N % 64 == 0 ? 4 : N % 32 == 0 ? 2 : 1, W = 16 * T, b = BITS[fam];
    const int64_t ng = K / G;
    int* c = malloc(sizeof(int) * K * N);
    float* s = malloc(sizeof(float) * ng * N);
    uint8_t* zp = malloc(ng * N);
    float* x = malloc(sizeof(float) * M * K);
    uint8_t* w = malloc(K * N * b / 8 + 64);
    float* sp = malloc(sizeof(float) * ng * N);
    uint8_t* zpp = malloc(ng * N);
    int32_t* colsum = malloc(sizeof(int32_t) * N);
    int8_t* xq = malloc(M * K + 1);
    float* xscale = malloc(sizeof(float) * (M + 1));
    int32_t* xsum = malloc(sizeof(int32_t) * (M * ng + 1));
    float* y = malloc(sizeof(float) * (M * N + 1));

    for (int64_t k = 0; k < K; k++)
        for (int64_t n = 0; n < N; n++) {
            int code = rint_in(CLO[fam], CHI[fam]);
            if (mode == 1 && n < 16) code = CHI[fam];
            if (mode == 1 && n >= 16 && n < 32) code = CLO[fam];
            if (mode == 2 || mode == 5) code = CHI[fam];
            if (mode == 3 || mode == 6) code = CLO[fam];
            if (mode == 4) code = k % 8 < 4 ? CLO[fam] : fam == QC_QL_INT8 ? 0 : (CLO[fam] + CHI[fam] + 1) / 2;
            c[k * N + n] = code;
        }
    for (int64_t i = 0; i < ng * N; i++) {
        s[i] = rfloat(rint_in(-6, 2));
        zp[i] = fam == QC_QL_UINT4 ? (uint8_t)(mode >= 2 ? (mode == 2 ? 0 : 15) : rint_in(0, 15)) : 0;
    }
    for (int64_t m = 0; m < M; m++) {
        const float sc = ldexpf(1.0f, rint_in(-10, 10));
        for (int64_t k = 0; k < K; k++) {
            float v;
            if (mode == 0) v = rfloat(0) + rfloat(-1) + rfloat(-2);
            else if (mode == 1) v = (float)(m == 0 ? 127 : m == 1 ? -127 : k == 0 ? 127 : rint_in(-127, 127));
            else if (mode == 4) v = (float)(k % 8 < 4 ? 1 : k % 8 == 7 ? (m % 2 ? -127 : 127) : rint_in(-127, 127));
            else v = mode == 2 ? 127.0f : -127.0f;
            x[m * K + k] = v * sc;
        }
        if (mode == 0 && M > 2 && m == M - 2) memset(x + m * K, 0, sizeof(float) * K); /* xscale 0 */
    }
    pack(fam, c, s, zp, K, N, G, T, w, sp, zpp, colsum);

    int32_t rc = qc_quantize_rows(x, xq, xscale, xsum, 0, M, K, G);
    if (mode >= 5) {    /* the full int8 range, -128 included (see above); xsum to match */
        for (int64_t m = 0; m < M; m++)
            for (int64_t g = 0; g < ng; g++) {
                int32_t sum = 0;
                for (int64_t k = g * G; k < (g + 1) * G; k++) {
                    xq[m * K + k] = (int8_t)(m % 2 ? rint_in(-128, 127) : -128);
                    sum += xq[m * K + k];
                }
                xsum[m * ng + g] = sum;
            }
    }
    if (sigill_only) {
        printf("kernel\n");
        fflush(stdout);
    }
    for (int rep = 0; rep < reps; rep++)
        for (int64_t p = 0; rc == 0 && p < N / W; p++)
            rc = qc_qlinear_panel(y, w, sp, zpp, colsum, xq, xscale, xsum, M, K, N, G, b, fam, T, p);
    if (rc != 0) {
        printf("case %d: return code %d\n", id, (int)rc);
        failures++;
    }
    if (sigill_only) return;
    if (run_only) {
        uint64_t h = fnv(FNV0, y, sizeof(float) * M * N);
        printf("run %s %016llx\n", NAMES[fam], (unsigned long long)h);
        free(c), free(s), free(zp), free(x), free(w), free(sp), free(zpp), free(colsum), free(xq);
        free(xscale), free(xsum), free(y);
        return;
    }

    /* direct evaluation of the header's math from the codes */
    int mism = 0;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            float acc = 0.0f;
            for (int64_t g = 0; g < ng; g++) {
                int32_t I = 0;
                for (int64_t k = g * G; k < (g + 1) * G; k++)
                    I += (c[k * N + n] - zp_of(fam, zp, g, N, n)) * xq[m * K + k];
                acc = fmaf(s[g * N + n], (float)I, acc);
            }
            const float want = xscale[m] * acc;
            if (fbits(want) != fbits(y[m * N + n]) && mism++ < 3)
                printf("case %d: y[%lld][%lld] = %a, header math gives %a\n", id, (long long)m,
                       (long long)n, y[m * N + n], want);
        }
    if (mism) failures++;
    uint64_t hx = fnv(fnv(fnv(FNV0, xq, M * K), xscale, sizeof(float) * M), xsum, sizeof(int32_t) * M * ng);
    printf("case %d %s K=%lld N=%lld G=%lld T=%d M=%lld mode=%d y=%016llx xq=%016llx "
           "y0=%08x ylast=%08x mismatches=%d\n",
           id, NAMES[fam], (long long)K, (long long)N, (long long)G, T, (long long)M, mode,
           (unsigned long long)fnv(FNV0, y, sizeof(float) * M * N), (unsigned long long)hx,
           (unsigned)fbits(y[0]), (unsigned)fbits(y[M * N - 1]), mism);
    free(c), free(s), free(zp), free(x), free(w), free(sp), free(zpp), free(colsum), free(xq);
    free(xscale), free(xsum), free(y);
}

/* values that exercise the NaN, infinity, denormal, signed-zero, tie and saturation paths */
static const float specials[] = {NAN, -NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1e-45f, -3e-39f,
                                 0.5f, 1.5f, 2.5f, -2.5f, 126.5f, -126.5f, 127.0f, 3.4e38f};

/* One quantize case's buffers: x [M,K] in, xq/xs/xsum out (xsum sized for groups of 1). */
typedef struct {
    float* x;
    int8_t* xq;
    float* xs;
    int32_t* xsum;
} quant_bufs;

static quant_bufs quant_alloc(int64_t M, int64_t K) {
    quant_bufs b = {malloc(sizeof(float) * M * K), malloc(M * K), malloc(sizeof(float) * M),
                    malloc(sizeof(int32_t) * M * K)};
    return b;
}

/* Prints `head`, rc, every output hashed and the first row's xq; then frees the buffers. */
static void quant_report(const char* head, quant_bufs* b, int64_t M, int64_t K, int64_t G, int32_t rc) {
    uint64_t h = fnv(fnv(fnv(FNV0, b->xq, M * K), b->xs, sizeof(float) * M), b->xsum, sizeof(int32_t) * M * (K / G));
    printf("%s rc=%d h=%016llx xs0=%08x xq0=", head, (int)rc, (unsigned long long)h, (unsigned)fbits(b->xs[0]));
    for (int64_t k = 0; k < K; k++) printf("%d%c", b->xq[k], k + 1 < K ? ',' : '\n');
    free(b->x), free(b->xq), free(b->xs), free(b->xsum);
}

/* qc_quantize_rows on special values; prints every output hashed, plus the first row's xq */
static void quant_cases(void) {
    for (int id = 0; id < 60; id++) {
        const int64_t K = 1 + id % 37, M = 1 + id % 5;
        const int64_t G = id % 3 == 0 ? K : 1;
        quant_bufs b = quant_alloc(M, K);
        float* x = b.x;
        for (int64_t m = 0; m < M; m++)
            for (int64_t k = 0; k < K; k++) {
                const int r = rint_in(0, 15);
                float v = rfloat(rint_in(-130, 100));
                if (id % 4 == 1 && r < 4) v = specials[rint_in(0, 15)]; /* sprinkled specials */
                if (id % 4 == 2) v = (float)rint_in(-254, 254) * 0.5f;  /* ties once amax = 127 */
                if (id % 4 == 2 && k == 0) v = 127.0f;
                if (id % 4 == 3) v = m == 0 ? 0.0f : m == 1 ? NAN : m == 2 ? specials[k % 16] : ldexpf(v, -20);
                x[m * K + k] = v;
            }
        const int32_t rc = qc_quantize_rows(x, b.xq, b.xs, b.xsum, 0, M, K, G);
        char head[96];
        snprintf(head, sizeof head, "quant %d K=%lld M=%lld G=%lld", id, (long long)K, (long long)M, (long long)G);
        quant_report(head, &b, M, K, G, rc);
    }
}

/* qc_quantize_rows_static: constant clipping ranges (ties at amax = 127 and 63.5, saturation
 * beyond +-amax, specials, vector tails), printed like quant_cases; then refused ranges' codes */
static void quant_static_cases(void) {
    static const float ranges[] = {127.0f, 63.5f, 1.0f, 0.75f, 3.0e38f, 1e-30f, 5.0f, 200.0f};
    for (int id = 0; id < 48; id++) {
        const int64_t K = 1 + (id * 7) % 45, M = 1 + id % 4;
        const int64_t G = id % 3 == 0 ? K : 1;
        const float amax = ranges[id % 8];
        quant_bufs b = quant_alloc(M, K);
        float* x = b.x;
        for (int64_t m = 0; m < M; m++)
            for (int64_t k = 0; k < K; k++) {
                float v = rfloat(rint_in(-4, 10));                            /* some beyond amax */
                if (id % 8 < 2) v = (float)rint_in(-300, 300) * (id % 8 ? 0.25f : 0.5f); /* ties */
                if (id % 5 == 1 && rint_in(0, 3) == 0) v = specials[rint_in(0, 15)];
                if (m == 3) v = 0.0f;                                      /* a zero row */
                x[m * K + k] = v;
            }
        const int32_t rc = qc_quantize_rows_static(x, b.xq, b.xs, b.xsum, 0, M, K, G, amax);
        char head[128];
        snprintf(head, sizeof head, "quant-static %d K=%lld M=%lld G=%lld amax=%a", id, (long long)K, (long long)M,
                 (long long)G, amax);
        quant_report(head, &b, M, K, G, rc);
    }
    static const float bad[] = {0.0f, -0.0f, -1.0f, NAN, INFINITY, 1e-38f};
    float x[8] = {0}, xs[1];
    int8_t xq[8];
    int32_t xsum[8];
    printf("quant-static refused:");
    for (int i = 0; i < 6; i++) printf(" %d", (int)qc_quantize_rows_static(x, xq, xs, xsum, 0, 1, 8, 8, bad[i]));
    printf("\n");
}

int main(int argc, char** argv) {
    if (argc > 7 && strcmp(argv[1], "run") == 0) { /* run FAMILY K N G M REPS: instruction counts */
        int fam = 0;
        while (fam < 3 && strcmp(NAMES[fam], argv[2])) fam++;
        run_case_x(0, fam, atoll(argv[3]), atoll(argv[4]), atoll(argv[5]), atoll(argv[6]), 0, 0, 1,
                   atoi(argv[7]));
        return failures ? 1 : 0;
    }
    const int sigill_only = argc > 1 && strcmp(argv[1], "sigill") == 0;
    if (sigill_only) {
        run_case(0, QC_QL_INT4, 64, 64, 32, argc > 2 ? atoi(argv[2]) : 1, 0, 1);
        return 0;
    }
    static const int64_t NS[] = {16, 32, 48, 64, 96, 128}, MS[] = {1, 2, 3, 4, 5, 9, 17};
    static const int64_t K8[] = {4, 12, 64, 132}, K2[] = {16, 48, 160, 256};
    int id = 0;
    for (int fam = 0; fam < 4; fam++)
        for (int gi = 0; gi < (fam == QC_QL_INT4 || fam == QC_QL_UINT4 ? 3 : 1); gi++)
            for (int ni = 0; ni < 6; ni++)
                for (int mi = 0; mi < 7; mi++, id++) {
                    const int64_t G4 = 32 << gi;
                    int64_t K, G;
                    if (fam == QC_QL_INT8) K = G = K8[id % 4];
                    else if (fam == QC_QL_TERNARY) K = G = K2[id % 4];
                    else G = G4, K = G4 * (1 + id % 3);
                    const int mode = id % 5 == 4 ? 2 + (id / 5) % 2 : id % 5 >= 2 ? 1 : 0;
                    run_case(id, fam, K, NS[ni], G, MS[mi], mode, 0);
                }
    /* large K at the worst cases of narrow (int16, byte) partial sums, for every row count the
     * row blocks see: codes and activations all extreme (modes 1-3), the table-lookup byte sums'
     * maximum (mode 4), random; int8 with an odd chunk count, ternary past 256 chunks (4 table
     * blocks of 64 chunks and one more, an odd count) */
    static const int64_t MX[] = {1, 2, 3, 5, 17}, NX[] = {64, 96, 48};
    for (int fam = 0; fam < 4; fam++)
        for (int mode = 0; mode <= 4; mode++, id++) {
            const int64_t K = fam == QC_QL_INT8 ? 4100 : fam == QC_QL_TERNARY ? 4112 : 4096;
            const int64_t G = fam == QC_QL_INT4 && mode % 2 ? 1024 : fam == QC_QL_UINT4 && mode == 4 ? 512 : K;
            run_case(id, fam, K, NX[(fam + mode) % 3], G, MX[(fam + mode) % 5], mode, 0);
        }
    /* activations at -128 (modes 5, 6): every family but ternary, every row count, large K too */
    for (int fam = 0; fam < 3; fam++)
        for (int mode = 5; mode <= 6; mode++)
            for (int mi = 0; mi < 7; mi++, id++) {
                const int64_t K = mi == 6 ? (fam == QC_QL_INT8 ? 4100 : 4096) : fam == QC_QL_INT8 ? 132 : 256;
                const int64_t G = fam == QC_QL_INT8 ? K : mi % 2 ? 128 : 32;
                run_case(id, fam, K, NS[(mi + mode) % 6], G, MS[mi], mode, 0);
            }
    /* random shapes, groups and row counts */
    for (int i = 0; i < 48; i++, id++) {
        const int fam = rint_in(0, 3), kc = 4 * (8 / BITS[fam]);
        const int64_t N = 16 * rint_in(1, 8), M = rint_in(1, 20), mode = rint_in(0, 4);
        int64_t G, K;
        if (fam == QC_QL_INT4 || fam == QC_QL_UINT4) G = kc * rint_in(1, 8), K = G * rint_in(1, 6);
        else G = K = kc * rint_in(1, 96);
        run_case(id, fam, K, N, G, M, (int)mode, 0);
    }
    quant_cases();
    quant_static_cases();
    printf("%s %d cases\n", failures ? "FAILED" : "ok", id);
    return failures ? 1 : 0;
}
