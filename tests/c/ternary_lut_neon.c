/*
 * ternary_lut_neon.c - prototype table-lookup (T-MAC / bitnet TL1 style) ternary GEMV kernels for
 * M = 1 on AArch64 baseline NEON (ARMv8.0, no sdot), checked bit-exactly against qc_qlinear_panel,
 * plus a run mode for dynamic instruction counts (tools/arm_insn_count.py).  Issue 5.
 *
 *   aarch64-linux-gnu-gcc -std=gnu11 -O3 -march=armv8-a -I qcompile/artifact/runtime \
 *       tests/c/ternary_lut_neon.c qcompile/artifact/runtime/qc_qlinear.c -o lut -lm
 *   qemu-aarch64 -L /usr/aarch64-linux-gnu ./lut check            built-in cases, prints "ok ..."
 *   ./lut check K N XMODE WMODE                                    one case
 *   ./lut run KERNEL K N REPS                                      pack, then REPS kernel calls
 *   ./lut loop N                                                   a known 3-instruction x N loop
 * KERNEL: none (setup only), lut1, lut4, mul, qc (qc_qlinear_panel over all panels: the sdot path
 * in a -march=armv8.2-a+dotprod build, the portable scalar C path in a -march=armv8-a build).
 *
 * All kernels read the packed layout of qc_qlinear.h unchanged (ternary, "dot4-16x4"): a chunk is
 * 64 bytes = 16 columns x 16 k, byte nl*4 + j holds the 2-bit code c = q+1 of column nl at
 * k = f*4 + j in bits [2f, 2f+2).  So the low nibble of a byte is the base-4 index c0 + 4*c1 of the
 * k-pair (j, 4+j) and the high nibble that of the pair (8+j, 12+j).
 *
 * Tables (built once per call from xq, M = 1): for chunk ch, half h (nibble), j, entry e = c0+4*c1
 *   T(e) = (c0-1)*x[k0] + (c1-1)*x[k1],  k0 = 16ch + 8h + j, k1 = k0 + 4   (0 where c0 or c1 is 3)
 * i.e. partial sums of q*xq, so the zero point is already applied and I = sum T exactly (the same
 * integer as qc_qlinear's D - xsum).  |T| <= 254 does not fit a byte, so T is split exactly as
 * T = 2^s*H + L, L = T & (2^s-1) unsigned, H = T >> s signed, into two byte tables; stored per chunk
 * as [h][part L,H][j][16] = 256 bytes (K*16 bytes in all; shared by every column).
 *
 *   lut4 (same register lanes as loaded): a q-register i of a chunk = columns 4i..4i+3 x j, lane
 *     l = 4*(col) + j; index = nibble | 16*j, one vqtbl4q_u8 over the 64-byte [j][16] table per
 *     (nibble, part): 4 tbl4 per 64 weights.  s = 8 (L = low byte in [0,255], H in {-1,0}); uadalp /
 *     sadalp sum the two lanes j, j+1 of a column into u16 / s16 (free half of the reduction).
 *     No overflow: a u16 lane gains <= 2 nibbles * 2 lanes * 255 = 1020 per chunk, so <= 64 chunks
 *     (65280) before the flush into int32 (uadalp/sadalp u16/s16 -> 32, which also sums the j pairs).
 *   lut1 (T-MAC proper): vld4q_u8 de-interleaves a chunk into 4 registers, register j = the 16
 *     columns at that j, so every lane of register j uses the same 16-entry table: vqtbl1q_u8.
 *     s = 5 (L in [0,31], H in [-8,7]): the 8 lookups of a chunk per part (4 j x 2 nibbles) sum in
 *     bytes exactly (L <= 8*31 = 248 unsigned, H in [-64,56] signed), then widen once per chunk into
 *     u16/s16 (<= 248 resp. 64 per chunk: 256 chunks before the int32 flush).
 *   mul (no tables; the fair ARMv8.0 non-LUT baseline): the qc_qlinear sdot loop with each sdot
 *     replaced by smlal + smlal2 (int8 x int8 -> int16 lanes = (column, j)); codes c in 0..2, so a
 *     lane gains <= 4 fields * 2*127 = 1016 per chunk, <= 32 chunks (32512) before sadalp into int32;
 *     I = D - xsum like qc_qlinear.
 * Output, all: y[n] = xscale * fma(s[n], (float)I, 0) with vfmaq_f32 / vmulq_f32: the operations
 * and order of qc_qlinear's group end, so results are bit-identical.
 * Requirements: K % 16 == 0, N % 16 == 0 (panels of T = 4/2/1 subtiles as in qc_qlinear.h).
 */
#include <arm_neon.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qc_qlinear.h"

#define INL static inline __attribute__((always_inline))
#define NOINL __attribute__((noinline))
/* compiler-only barrier: keeps GCC from hoisting all table loads of a chunk together */
#define LUT_FENCE() __asm__ volatile("" ::: "memory")

/* ------------------------------------------------------------------ data */
static uint64_t rng_s;
static uint64_t rnext(void) { /* splitmix64 */
    uint64_t z = (rng_s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static int rint_in(int lo, int hi) { return lo + (int)(rnext() % (uint64_t)(hi - lo + 1)); }

static int tiles_of(int64_t N) { return N % 64 == 0 ? 4 : N % 32 == 0 ? 2 : 1; }

/* codes c[K][N] in 0..2 -> packed w (qc_qlinear.h layout, ternary: 4 fields per byte) */
static void pack(const uint8_t* c, int64_t K, int64_t N, uint8_t* w) {
    const int T = tiles_of(N), W = 16 * T;
    const int64_t nch = K / 16;
    memset(w, 0, (size_t)(K * N / 4));
    for (int64_t p = 0; p < N / W; p++)
        for (int64_t ch = 0; ch < nch; ch++)
            for (int t = 0; t < T; t++) {
                uint8_t* chunk = w + ((p * nch + ch) * T + t) * 64;
                for (int nl = 0; nl < 16; nl++)
                    for (int j = 0; j < 4; j++)
                        for (int f = 0; f < 4; f++) {
                            const int64_t n = (p * T + t) * 16 + nl, k = ch * 16 + f * 4 + j;
                            chunk[nl * 4 + j] |= (uint8_t)(c[k * N + n] << (2 * f));
                        }
            }
}

typedef struct {
    int64_t K, N;
    int T;
    uint8_t* c;   /* codes [K][N] */
    uint8_t* w;   /* packed */
    float* s;     /* scales [N] (ternary, one group: the packed order is column order) */
    int8_t* xq;   /* [K] */
    float xscale;
    int32_t xsum;
    uint8_t* tab; /* LUT scratch, K*16 bytes */
} problem_t;

/* xmode 0 random, 1 zero, 2 all +127, 3 all -127, 4 alternating +-127, 5 "low byte max" (x = 1 on
 * k%8 < 4, else random; with wmode 3 every table entry used is -1: L = 255 / 31, H = -1);
 * wmode -1 random packed bytes, no codes (run mode), 0 random, 1 all 2, 2 all 0, 3 code 0 on
 * k%8 < 4 else 1, 4 columns 0-15 all 2 and 16-31 all 0 */
static void make_problem(problem_t* P, int64_t K, int64_t N, int xmode, int wmode, uint64_t seed) {
    rng_s = seed;
    P->K = K, P->N = N, P->T = tiles_of(N);
    P->c = malloc((size_t)(K * N));
    P->w = malloc((size_t)(K * N / 4 + 64));
    P->s = malloc(sizeof(float) * N);
    P->xq = malloc((size_t)K);
    P->tab = aligned_alloc(64, (size_t)(K * 16 + 64));
    if (wmode < 0) {
        /* run mode: random packed bytes straight away (every field 0..2), 8 bytes per step, so
         * the setup adds few translation blocks to an instruction-count trace; no codes */
        uint8_t valid[81];
        for (int v = 0, i = 0; v < 256; v++)
            if ((v & 3) < 3 && ((v >> 2) & 3) < 3 && ((v >> 4) & 3) < 3 && (v >> 6) < 3)
                valid[i++] = (uint8_t)v;
        for (int64_t i = 0; i < K * N / 4; i += 8) {
            const uint64_t r = rnext();
#pragma GCC unroll 8
            for (int b = 0; b < 8; b++) P->w[i + b] = valid[((r >> (8 * b)) & 0xFF) % 81];
        }
    }
    for (int64_t k = 0; wmode >= 0 && k < K; k++)
        for (int64_t n = 0; n < N; n++) {
            int code = rint_in(0, 2);
            if (wmode == 1) code = 2;
            if (wmode == 2) code = 0;
            if (wmode == 3) code = k % 8 < 4 ? 0 : 1;
            if (wmode == 4 && n < 16) code = 2;
            if (wmode == 4 && n >= 16 && n < 32) code = 0;
            P->c[k * N + n] = (uint8_t)code;
        }
    for (int64_t n = 0; n < N; n++) {
        const int32_t u = (int32_t)(rnext() >> 40) - (1 << 23);
        P->s[n] = ldexpf((float)u, rint_in(-6, 2) - 23);
    }
    P->xsum = 0;
    for (int64_t k = 0; k < K; k++) {
        int v = rint_in(-127, 127);
        if (xmode == 1) v = 0;
        if (xmode == 2) v = 127;
        if (xmode == 3) v = -127;
        if (xmode == 4) v = k % 2 ? -127 : 127;
        if (xmode == 5 && k % 8 < 4) v = 1;
        P->xq[k] = (int8_t)v;
        P->xsum += v;
    }
    P->xscale = xmode == 1 ? 0.0f : ldexpf(1.0f + (float)rint_in(0, 1000) / 1000.0f, rint_in(-12, -4));
    if (wmode >= 0) pack(P->c, K, N, P->w);
}

static void free_problem(problem_t* P) {
    free(P->c), free(P->w), free(P->s), free(P->xq), free(P->tab);
}

/* ------------------------------------------------------------------ group end (shared) */
/* y[col0 .. col0+15] = xscale * fma(s, (float)I, 0), I[i] = columns col0+4i..+3 */
INL void store_cols(float* y, const float* s, float xscale, int64_t col0, const int32x4_t I[4]) {
    const float32x4_t xs = vdupq_n_f32(xscale), zero = vdupq_n_f32(0.0f);
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        const float32x4_t a = vfmaq_f32(zero, vld1q_f32(s + col0 + 4 * i), vcvtq_f32_s32(I[i]));
        vst1q_f32(y + col0 + 4 * i, vmulq_f32(xs, a));
    }
}

/* ------------------------------------------------------------------ tables */
/* For chunk ch: tab[ch*256 + h*128 + part*64 + j*16 + e], part 0 = L = T & (2^S-1), 1 = H = T >> S. */
INL void build_tables(const int8_t* xq, int64_t K, uint8_t* tab, const int S) {
    /* lanes e = c0 + 4*c1: A = c0-1 (0 for c0 = 3); B = c1-1 for entries 0..7 (c1 = 0, 1) and 8..15
     * (c1 = 2, 3 -> 0) */
    static const int16_t A_[8] = {-1, 0, 1, 0, -1, 0, 1, 0};
    static const int16_t BL_[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
    static const int16_t BH_[8] = {1, 1, 1, 1, 0, 0, 0, 0};
    const int16x8_t A = vld1q_s16(A_), BL = vld1q_s16(BL_), BH = vld1q_s16(BH_);
    const int16x8_t lmask = vdupq_n_s16((int16_t)((1 << S) - 1));
    for (int64_t ch = 0; ch < K / 16; ch++, tab += 256) {
        const int8x16_t x8 = vld1q_s8(xq + ch * 16);
        const int16x8_t xw[2] = {vmovl_s8(vget_low_s8(x8)), vmovl_high_s8(x8)}; /* k 0..7, 8..15 */
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++)
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                /* lo: entries 0..7, hi: 8..15 = A*x[k0] + B*x[k1] (lane numbers must be constants) */
#define LUT_ENTRIES(J)                                                                             \
    a = vmulq_laneq_s16(A, xw[h], J);                                                              \
    lo = vmlaq_laneq_s16(a, BL, xw[h], J + 4);                                                     \
    hi = vmlaq_laneq_s16(a, BH, xw[h], J + 4)
                int16x8_t a, lo, hi;
                switch (j) {
                case 0: LUT_ENTRIES(0); break;
                case 1: LUT_ENTRIES(1); break;
                case 2: LUT_ENTRIES(2); break;
                default: LUT_ENTRIES(3); break;
                }
#undef LUT_ENTRIES
                uint8x16_t L, H;
                if (S == 8) { /* bytes of the int16 (little-endian): uzp1 = low, uzp2 = high */
                    L = vuzp1q_u8(vreinterpretq_u8_s16(lo), vreinterpretq_u8_s16(hi));
                    H = vuzp2q_u8(vreinterpretq_u8_s16(lo), vreinterpretq_u8_s16(hi));
                } else {
                    L = vuzp1q_u8(vreinterpretq_u8_s16(vandq_s16(lo, lmask)),
                                  vreinterpretq_u8_s16(vandq_s16(hi, lmask)));
                    H = vuzp1q_u8(vreinterpretq_u8_s16(vshrq_n_s16(lo, S)),
                                  vreinterpretq_u8_s16(vshrq_n_s16(hi, S)));
                }
                /* lut4 (S = 8): [h][part][j][16], a tbl4 operand per (h, part); lut1: [j][h][part][16],
                 * the 4 tables of one j in one ld1 (fewer live registers) */
                vst1q_u8(tab + (S == 8 ? h * 128 + j * 16 : j * 64 + h * 32), L);
                vst1q_u8(tab + (S == 8 ? h * 128 + 64 + j * 16 : j * 64 + h * 32 + 16), H);
            }
    }
}

/* ------------------------------------------------------------------ lut4: tbl4, same lanes */
#ifndef LUT4_BLOCK
#define LUT4_BLOCK 64 /* chunks per u16 block: 64 * 1020 = 65280 */
#endif
NOINL void gemv_lut4(const problem_t* P, float* y) {
    const int64_t K = P->K, N = P->N, nch = K / 16;
    const int T = P->T;
    uint8_t* tab = P->tab;
    build_tables(P->xq, K, tab, 8);
    static const uint8_t offs_[16] = {0, 16, 32, 48, 0, 16, 32, 48, 0, 16, 32, 48, 0, 16, 32, 48};
    const uint8x16_t offs = vld1q_u8(offs_), jv = vshrq_n_u8(offs, 4);
    for (int64_t p = 0; p < N / (16 * T); p++)
        for (int t = 0; t < T; t++) {
            const uint8_t* wp0 = P->w + p * nch * 64 * T + t * 64;
            int32x4_t D[4];
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) D[i] = vdupq_n_s32(0);
            for (int64_t c0 = 0; c0 < nch; c0 += LUT4_BLOCK) {
                const int64_t c1 = c0 + LUT4_BLOCK < nch ? c0 + LUT4_BLOCK : nch;
                uint16x8_t L16[4];
                int16x8_t H16[4];
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) L16[i] = vdupq_n_u16(0), H16[i] = vdupq_n_s16(0);
                const uint8_t* wp = wp0 + c0 * 64 * T;
                const uint8_t* tp = tab + c0 * 256;
                for (int64_t c = c0; c < c1; c++, wp += 64 * T, tp += 256) {
                    /* indices first, then one 64-byte table at a time (compiler fences): tbl4
                     * needs 4 consecutive registers, and with all 16 table registers live GCC 12
                     * spills and copies tables inside the loop (73 instead of 50 instructions) */
                    uint8x16_t i0[4], i1[4];
#pragma GCC unroll 4
                    for (int i = 0; i < 4; i++) {
                        const uint8x16_t raw = vld1q_u8(wp + 16 * i);
                        i1[i] = vorrq_u8(vshrq_n_u8(raw, 4), offs);
                        i0[i] = vsliq_n_u8(raw, jv, 4); /* (j << 4) | (raw & 15) in one sli */
                    }
#pragma GCC unroll 4
                    for (int q = 0; q < 4; q++) { /* q = 2*half + part */
                        LUT_FENCE();
                        const uint8x16x4_t tb = vld1q_u8_x4(tp + 64 * q);
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++) {
                            const uint8x16_t v = vqtbl4q_u8(tb, q < 2 ? i0[i] : i1[i]);
                            if (q & 1) H16[i] = vpadalq_s8(H16[i], vreinterpretq_s8_u8(v));
                            else L16[i] = vpadalq_u8(L16[i], v);
                        }
                    }
                }
                /* flush: lanes (column, j pair) -> columns; I = 256*H + L */
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {
                    const int32x4_t l32 = vreinterpretq_s32_u32(vpaddlq_u16(L16[i]));
                    const int32x4_t h32 = vpaddlq_s16(H16[i]);
                    D[i] = vaddq_s32(D[i], vaddq_s32(l32, vshlq_n_s32(h32, 8)));
                }
            }
            store_cols(y, P->s, P->xscale, p * 16 * T + t * 16, D);
        }
}

/* ------------------------------------------------------------------ lut1: ld4 + tbl1 */
/* one chunk of one subtile: L (8 lookups summed in bytes, <= 248) widened into L16, H (8 lookups,
 * [-64, 56]) added to hs and returned */
INL int8x16_t lut1_chunk(const uint8_t* tp, const uint8_t* wp, uint8x16_t m15, uint16x8_t L16[2],
                         int8x16_t hs) {
    LUT_FENCE();
    const uint8x16x4_t r = vld4q_u8(wp); /* r.val[j][col] */
    uint8x16_t ls = vdupq_n_u8(0), h8 = vreinterpretq_u8_s8(hs);
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        const uint8x16x4_t tb = vld1q_u8_x4(tp + 64 * j); /* L0, H0, L1, H1 of this j */
        const uint8x16_t i0 = vandq_u8(r.val[j], m15), i1 = vshrq_n_u8(r.val[j], 4);
        const uint8x16_t a = vaddq_u8(vqtbl1q_u8(tb.val[0], i0), vqtbl1q_u8(tb.val[2], i1));
        const uint8x16_t b = vaddq_u8(vqtbl1q_u8(tb.val[1], i0), vqtbl1q_u8(tb.val[3], i1));
        ls = j ? vaddq_u8(ls, a) : a;
        h8 = vaddq_u8(h8, b); /* wrapping byte adds: exact while the signed sum fits */
    }
    L16[0] = vaddw_u8(L16[0], vget_low_u8(ls));
    L16[1] = vaddw_high_u8(L16[1], ls);
    return vreinterpretq_s8_u8(h8);
}

#ifndef LUT1_BLOCK
#define LUT1_BLOCK 256 /* chunks per u16/s16 block: 256 * 248 < 65536, 256 * 64 < 32768 */
#endif
NOINL void gemv_lut1(const problem_t* P, float* y) {
    const int64_t K = P->K, N = P->N, nch = K / 16;
    const int T = P->T;
    uint8_t* tab = P->tab;
    build_tables(P->xq, K, tab, 5);
    const uint8x16_t m15 = vdupq_n_u8(0x0F);
    for (int64_t p = 0; p < N / (16 * T); p++)
        for (int t = 0; t < T; t++) {
            const uint8_t* wp0 = P->w + p * nch * 64 * T + t * 64;
            int32x4_t L32[4], H32[4];
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) L32[i] = H32[i] = vdupq_n_s32(0);
            for (int64_t c0 = 0; c0 < nch; c0 += LUT1_BLOCK) {
                const int64_t c1 = c0 + LUT1_BLOCK < nch ? c0 + LUT1_BLOCK : nch;
                uint16x8_t L16[2] = {vdupq_n_u16(0), vdupq_n_u16(0)}; /* columns 0-7, 8-15 */
                int16x8_t H16[2] = {vdupq_n_s16(0), vdupq_n_s16(0)};
                const uint8_t* wp = wp0 + c0 * 64 * T;
                const uint8_t* tp = tab + c0 * 256;
                int64_t c = c0;
                /* H sums of two chunks stay in bytes ([-128, 112]): widened once per pair */
                for (; c + 2 <= c1; c += 2, wp += 128 * T, tp += 512) {
                    int8x16_t hs = lut1_chunk(tp, wp, m15, L16, vdupq_n_s8(0));
                    hs = lut1_chunk(tp + 256, wp + 64 * T, m15, L16, hs);
                    H16[0] = vaddw_s8(H16[0], vget_low_s8(hs));
                    H16[1] = vaddw_high_s8(H16[1], hs);
                }
                if (c < c1) {
                    const int8x16_t hs = lut1_chunk(tp, wp, m15, L16, vdupq_n_s8(0));
                    H16[0] = vaddw_s8(H16[0], vget_low_s8(hs));
                    H16[1] = vaddw_high_s8(H16[1], hs);
                }
#pragma GCC unroll 2
                for (int h = 0; h < 2; h++) {
                    const int32x4_t l0 = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(L16[h])));
                    const int32x4_t l1 = vreinterpretq_s32_u32(vmovl_high_u16(L16[h]));
                    L32[2 * h] = vaddq_s32(L32[2 * h], l0);
                    L32[2 * h + 1] = vaddq_s32(L32[2 * h + 1], l1);
                    H32[2 * h] = vaddw_s16(H32[2 * h], vget_low_s16(H16[h]));
                    H32[2 * h + 1] = vaddw_high_s16(H32[2 * h + 1], H16[h]);
                }
            }
            int32x4_t D[4];
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) D[i] = vaddq_s32(L32[i], vshlq_n_s32(H32[i], 5));
            store_cols(y, P->s, P->xscale, p * 16 * T + t * 16, D);
        }
}

/* ------------------------------------------------------------------ mul: smlal, no tables */
#ifndef MUL_BLOCK
#define MUL_BLOCK 32 /* chunks per int16 block: 32 * 1016 = 32512 */
#endif
NOINL void gemv_mul(const problem_t* P, float* y) {
    const int64_t K = P->K, N = P->N, nch = K / 16;
    const int T = P->T;
    const uint8x16_t m3 = vdupq_n_u8(3);
    for (int64_t p = 0; p < N / (16 * T); p++)
        for (int t = 0; t < T; t++) {
            const uint8_t* wp0 = P->w + p * nch * 64 * T + t * 64;
            int32x4_t A32[4][2];
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) A32[i][0] = A32[i][1] = vdupq_n_s32(0);
            for (int64_t c0 = 0; c0 < nch; c0 += MUL_BLOCK) {
                const int64_t c1 = c0 + MUL_BLOCK < nch ? c0 + MUL_BLOCK : nch;
                int16x8_t A16[4][2]; /* [register i][lanes 0-7: columns 4i, 4i+1; 8-15: 4i+2, 4i+3] */
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) A16[i][0] = A16[i][1] = vdupq_n_s16(0);
                const uint8_t* wp = wp0 + c0 * 64 * T;
                const int8_t* xk = P->xq + c0 * 16;
                for (int64_t c = c0; c < c1; c++, wp += 64 * T, xk += 16) {
                    int8x16_t xb[4]; /* the 4 activations of k-quad f, broadcast */
                    int32_t xv[4];
                    memcpy(xv, xk, 16);
#pragma GCC unroll 4
                    for (int f = 0; f < 4; f++) xb[f] = vreinterpretq_s8_s32(vdupq_n_s32(xv[f]));
#pragma GCC unroll 4
                    for (int i = 0; i < 4; i++) {
                        const uint8x16_t raw = vld1q_u8(wp + 16 * i);
                        int8x16_t fl[4];
                        fl[0] = vreinterpretq_s8_u8(vandq_u8(raw, m3));
                        fl[1] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(raw, 2), m3));
                        fl[2] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(raw, 4), m3));
                        fl[3] = vreinterpretq_s8_u8(vshrq_n_u8(raw, 6));
#pragma GCC unroll 4
                        for (int f = 0; f < 4; f++) {
                            A16[i][0] = vmlal_s8(A16[i][0], vget_low_s8(fl[f]), vget_low_s8(xb[f]));
                            A16[i][1] = vmlal_high_s8(A16[i][1], fl[f], xb[f]);
                        }
                    }
                }
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {
                    A32[i][0] = vpadalq_s16(A32[i][0], A16[i][0]);
                    A32[i][1] = vpadalq_s16(A32[i][1], A16[i][1]);
                }
            }
            int32x4_t D[4];
            const int32x4_t xs = vdupq_n_s32(P->xsum);
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) D[i] = vsubq_s32(vpaddq_s32(A32[i][0], A32[i][1]), xs);
            store_cols(y, P->s, P->xscale, p * 16 * T + t * 16, D);
        }
}

/* ------------------------------------------------------------------ qc_qlinear over all panels */
NOINL int gemv_qc(const problem_t* P, float* y) {
    const int T = P->T;
    for (int32_t p = 0; p < P->N / (16 * T); p++) {
        const int32_t rc = qc_qlinear_panel(y, P->w, P->s, 0, 0, P->xq, &P->xscale, &P->xsum, 1,
                                            P->K, P->N, P->K, 2, QC_QL_TERNARY, T, p);
        if (rc) return rc;
    }
    return 0;
}

/* the header's math straight from the codes */
static void gemv_ref(const problem_t* P, float* y) {
    for (int64_t n = 0; n < P->N; n++) {
        int32_t I = 0;
        for (int64_t k = 0; k < P->K; k++) I += ((int)P->c[k * P->N + n] - 1) * P->xq[k];
        y[n] = P->xscale * fmaf(P->s[n], (float)I, 0.0f);
    }
}

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

typedef void (*kern_fn)(const problem_t*, float*);
static const char* KNAMES[3] = {"lut1", "lut4", "mul"};
static const kern_fn KFNS[3] = {gemv_lut1, gemv_lut4, gemv_mul};

/* returns the number of mismatching outputs over all kernels */
static int check_case(int64_t K, int64_t N, int xmode, int wmode) {
    problem_t P;
    const uint64_t seed = 0x243F6A8885A308D3ull ^ (uint64_t)(K * 131 + N * 7 + xmode * 3 + wmode);
    make_problem(&P, K, N, xmode, wmode, seed);
    float* yq = malloc(sizeof(float) * N);
    float* yr = malloc(sizeof(float) * N);
    float* yk = malloc(sizeof(float) * N);
    int bad = 0;
    if (gemv_qc(&P, yq) != 0) {
        printf("K=%lld N=%lld: qc_qlinear_panel failed\n", (long long)K, (long long)N);
        bad++;
    }
    gemv_ref(&P, yr);
    for (int64_t n = 0; n < N; n++)
        if (fbits(yq[n]) != fbits(yr[n]) && bad++ < 3)
            printf("K=%lld N=%lld x%d w%d: qc y[%lld] = %a, reference %a\n", (long long)K, (long long)N,
                   xmode, wmode, (long long)n, yq[n], yr[n]);
    for (int kf = 0; kf < 3; kf++) {
        for (int64_t n = 0; n < N; n++) yk[n] = NAN;
        KFNS[kf](&P, yk);
        int mism = 0;
        for (int64_t n = 0; n < N; n++)
            if (fbits(yk[n]) != fbits(yq[n]) && mism++ < 3)
                printf("K=%lld N=%lld x%d w%d: %s y[%lld] = %a, qc_qlinear %a\n", (long long)K,
                       (long long)N, xmode, wmode, KNAMES[kf], (long long)n, yk[n], yq[n]);
        bad += mism;
    }
    uint64_t h = 0xCBF29CE484222325ull;
    for (int64_t n = 0; n < N; n++) h = (h ^ fbits(yq[n])) * 0x100000001B3ull;
    printf("case K=%lld N=%lld xmode=%d wmode=%d y=%016llx %s\n", (long long)K, (long long)N, xmode,
           wmode, (unsigned long long)h, bad ? "MISMATCH" : "same");
    free(yq), free(yr), free(yk);
    free_problem(&P);
    return bad;
}

int main(int argc, char** argv) {
    const char* mode = argc > 1 ? argv[1] : "check";
    if (!strcmp(mode, "check")) {
        int bad = 0, n = 0;
        if (argc >= 6) {
            bad += check_case(atoll(argv[2]), atoll(argv[3]), atoi(argv[4]), atoi(argv[5]));
            n++;
        } else {
            static const int64_t KS[] = {16, 64, 1024}, NS[] = {16, 64, 128};
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++)
                    for (int xm = 0; xm < 6; xm++, n++)
                        bad += check_case(KS[a], NS[b], xm, xm == 5 ? 3 : 0);
            /* extremes and block boundaries: lut4 flushes every 64 chunks (1024 k), mul every 32
             * (512 k); N = 32/48/96 give T = 2/1/2 */
            static const int64_t XK[] = {16, 512, 528, 1040, 2048, 4112};
            static const int64_t XN[] = {32, 48, 96};
            for (int a = 0; a < 6; a++)
                for (int wm = 0; wm < 5; wm++)
                    for (int xm = 0; xm < 6; xm++, n++)
                        if (xm != 1 && (wm == 1 || wm == 2 || xm == 0 || (wm == 3 && xm == 5)))
                            bad += check_case(XK[a], XN[(a + wm) % 3], xm, wm);
                        else
                            n--;
        }
        printf("%s %d cases, %d mismatches\n", bad ? "FAIL" : "ok", n, bad);
        return bad ? 1 : 0;
    }
    if (!strcmp(mode, "run") && argc >= 6) {
        const char* kern = argv[2];
        const int64_t K = atoll(argv[3]), N = atoll(argv[4]);
        const int reps = atoi(argv[5]);
        problem_t P;
        make_problem(&P, K, N, 0, -1, 12345);
        float* y = calloc((size_t)N, sizeof(float));
        for (int r = 0; r < reps; r++) {
            if (!strcmp(kern, "lut1")) gemv_lut1(&P, y);
            else if (!strcmp(kern, "lut4")) gemv_lut4(&P, y);
            else if (!strcmp(kern, "mul")) gemv_mul(&P, y);
            else if (!strcmp(kern, "qc")) gemv_qc(&P, y);
            else if (strcmp(kern, "none")) return 2;
        }
        uint64_t h = 0;
        for (int64_t n = 0; n < N; n++) h = h * 31 + fbits(y[n]);
        printf("%s %016llx\n", kern, (unsigned long long)h);
        free(y);
        free_problem(&P);
        return 0;
    }
    if (!strcmp(mode, "loop") && argc >= 3) {
        /* exactly 3 instructions per iteration (add, subs, b.ne) */
        uint64_t n = strtoull(argv[2], 0, 10), acc = 0;
        if (n) __asm__ volatile("1:\n\tadd %0, %0, #3\n\tsubs %1, %1, #1\n\tb.ne 1b\n"
                                : "+r"(acc), "+r"(n)
                                :
                                : "cc");
        printf("loop %llu\n", (unsigned long long)acc);
        return 0;
    }
    fprintf(stderr, "usage: %s check [K N XMODE WMODE] | run KERNEL K N REPS | loop N\n", argv[0]);
    return 2;
}
