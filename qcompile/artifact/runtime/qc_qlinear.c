/*
 * qc_qlinear.c - quantized linear micro-kernels; layout, math and API in qc_qlinear.h.
 *
 * Kernel shape (the SIMD paths: AVX-512, AVX2, NEON)
 *   Rows go in blocks of R = 4, then 2, then 1, so a decoded weight chunk feeds R rows.  For a
 *   row block, each group g is walked once per batch of TB subtiles: per chunk, load the TB
 *   subtiles' 64 bytes, split each into its v bit fields with constant shift + and, and
 *   dot-accumulate every field against the broadcast 4 activation bytes it pairs with into
 *   int32 accumulators acc[R][TB](x2 ymm halves); AVX2 2-/4-bit (4-bit only for R = 1) first sum
 *   the products of NB chunks in int16 and widen once per block (bounds below).  TB is T when the accumulators fit in
 *   registers (always for R = 1, so decode reads the panel exactly once, in stream order);
 *   otherwise the panel is walked in TB-subtile passes, which re-read it from cache: a panel is
 *   re-read per row block anyway.  At each group end the zero-point correction and the scale
 *   fma go into a small float accumulator on the stack; the last step multiplies by xscale.
 *
 * No-overflow arguments (xq in [-128,127]: the per-token quantizer never makes -128, static
 * activation scales imported from a file (int8 with a zero point) do):
 *   AVX2 4-/2-bit: one vpmaddubsw lane is c0*x0 + c1*x1 with c <= 15 (4-bit) or c <= 2 (ternary
 *   codes are 0..2), so lane is in [-2*15*128, 2*15*127] = [-3840, 3810] or [-512, 508]: no
 *   saturation.  A chunk's v fields sum to |.| <= 7680 (4-bit) or 2048 (ternary) per int16 lane, so
 *   int16 sums over NB = 4 chunks (30720) or 16 chunks ([-32768, 32512]) fit in int16 and need one
 *   vpmaddwd per NB chunks.  Ternary fields 1, 3 enter pre-scaled by 4 (<= 2*8*128 = 2048 per lane,
 *   two of them 4096) and their exact multiple-of-4 sum is shifted back before joining the rest.
 *   AVX2 int8: maddubs(|x|, sign(w, x)) lane is w0*x0 + w1*x1, |.| <= 2*128*127 = 32512 < 32767.
 *   int32 dots: |D| <= G*255*127 fits for any practical K; vpdpbusd wraps, and since the
 *   corrected value fits in int32 the wrap-around cancels (int8 AVX-512: (x+128)*w - 128*colsum).
 *   NEON sdot sums 4 int8 x int8 products straight into int32 (codes <= 15 or the int8 weight
 *   itself), so there is no narrow intermediate at all; i8mm smmla (row pairs) likewise, 8 at a time.
 *   ARMv8.0 NEON (no sdot): smlal into int16, widened every 2 (int8) / 4 (4-bit) / 16 (ternary)
 *   chunks, and the ternary lookup tables' byte sums: bounds at that section ("ARMv8.0 NEON").
 *   That path runs rows in blocks of 2 then 1 and one subtile at a time (TB = 1).
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1 /* syscall(), for the AMX tile-state permission request */
#endif
#include "qc_qlinear.h"

#include <math.h>
#include <string.h>

#if defined(QL_EMULATE_X86)
/* Test build: the AVX-512 path on plain-C emulations of its intrinsics (tests/c/emu_x86.h, on the
 * include path), so it runs bit-exactly on any host; -DQL_EMULATE_AMX also forces the AMX path. */
#define QL_AVX512 1
#include "emu_x86.h"
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define QL_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__)
#define QL_AVX2 1
#include <immintrin.h>
#elif defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD) && defined(__ARM_NEON) &&            \
    defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* e.g. -march=armv8.2-a+dotprod, -mcpu=neoverse-n1: the binary then needs the dot product
 * instructions (sdot) at run time -- the artifact checks the CPU features when it is loaded */
#define QL_NEON 1
#define QL_NEON_DOT 1
#include <arm_neon.h>
#elif defined(__aarch64__) && defined(__ARM_NEON) && defined(__BYTE_ORDER__) &&                   \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* e.g. -march=armv8-a, -mcpu=cortex-a72: baseline ARMv8.0 NEON only (no sdot): smlal widening
 * multiplies, and table lookups (tbl) for ternary single rows; runs on every AArch64 CPU */
#define QL_NEON 1
#define QL_NEON_V80 1
#include <arm_neon.h>
#endif

#define QL_INLINE static inline __attribute__((always_inline))
/* Software prefetch distance in chunk rows (one row = T*64 bytes of the stream); 0 disables.
 * Off by default: on Zen 4 the hardware prefetcher already streams the panel, and prefetching
 * 4-32 rows ahead measured 10-30% slower from DRAM (M = 1, K = N = 4096). */
#ifndef QL_PREFETCH_ROWS
#define QL_PREFETCH_ROWS 0
#endif
#define QL_PREFETCH(p)                                                                             \
    do {                                                                                           \
        if (QL_PREFETCH_ROWS > 0) __builtin_prefetch(p);                                           \
    } while (0)

typedef struct {
    const uint8_t* w;       /* this panel's stream */
    const float* s;         /* this panel's scales [ng][W] */
    const uint8_t* zp;      /* this panel's zero points [ng][W] (uint4) */
    const int32_t* colsum;  /* this panel's column sums [W] (int8) */
    int64_t K, N, ng, gchunks; /* gchunks: chunks per group */
    int T, W, family;          /* W = 16*T columns */
} panel_t;

static inline int32_t ld32(const int8_t* p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Zero point of (group, column) for the families with a constant or per-column one. */
static inline int32_t zero_point(const panel_t* P, int64_t g, int col) {
    switch (P->family) {
    case QC_QL_INT4: return 8;
    case QC_QL_TERNARY: return 1;
    case QC_QL_UINT4: return P->zp[g * P->W + col];
    default: return 0;
    }
}

#if QL_NEON
/* zp * xsum of group g for the 16 columns col0.., as 4 registers of 4 columns (int8: 0) */
QL_INLINE void neon_zp_xsum(const panel_t* P, int64_t g, int col0, int32_t xs, int32x4_t zpx[4]) {
    if (P->family == QC_QL_UINT4) {
        const uint8x16_t z8 = vld1q_u8(P->zp + g * P->W + col0);
        const uint16x8_t lo = vmovl_u8(vget_low_u8(z8)), hi = vmovl_high_u8(z8);
        zpx[0] = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(lo)));
        zpx[1] = vreinterpretq_s32_u32(vmovl_high_u16(lo));
        zpx[2] = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(hi)));
        zpx[3] = vreinterpretq_s32_u32(vmovl_high_u16(hi));
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) zpx[i] = vmulq_n_s32(zpx[i], xs);
    } else {
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) zpx[i] = vdupq_n_s32(zero_point(P, g, col0) * xs);
    }
}
#endif

/* ------------------------------------------------------------------ AVX-512 VNNI */
#if QL_AVX512
#define QL_SIMD 1
QL_INLINE void simd_rows(const panel_t* P, const int8_t* x, const float* xscale,
                         const int32_t* xsum, float* y, const int R, const int TB, const int B) {
    const int V = 8 / B, KC = 4 * V;
    const int64_t K = P->K, rowb = (int64_t)P->T * 64;
    const __m512i mask = _mm512_set1_epi8((char)((1 << B) - 1));
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    float yacc[4][64];
    for (int r = 0; r < R; r++) memset(yacc[r], 0, sizeof(float) * P->W);

    for (int64_t g = 0; g < P->ng; g++) {
        for (int t0 = 0; t0 < P->T; t0 += TB) {
            __m512i acc[4][4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
#pragma GCC unroll 4
                for (int t = 0; t < TB; t++) acc[r][t] = _mm512_setzero_si512();
            const uint8_t* wp = P->w + g * P->gchunks * rowb + t0 * 64;
            const int8_t* xk = x + g * P->gchunks * KC;
            for (int64_t c = 0; c < P->gchunks; c++, wp += rowb, xk += KC) {
#pragma GCC unroll 4
                for (int t = 0; t < TB; t++) QL_PREFETCH(wp + QL_PREFETCH_ROWS * rowb + t * 64);
#pragma GCC unroll 4
                for (int t = 0; t < TB; t++) {
                    const __m512i raw = _mm512_loadu_si512((const void*)(wp + t * 64));
                    if (B == 8) {
                        /* vpdpbusd wants u8 x s8: activations +128 as the unsigned side */
#pragma GCC unroll 4
                        for (int r = 0; r < R; r++) {
                            __m512i xb = _mm512_xor_si512(_mm512_set1_epi32(ld32(xk + r * K)), bias);
                            acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], xb, raw);
                        }
                    } else {
                        __m512i fld[4];
#pragma GCC unroll 4
                        for (int f = 0; f < V; f++)
                            fld[f] = _mm512_and_si512(f ? _mm512_srli_epi16(raw, f * B) : raw, mask);
#pragma GCC unroll 4
                        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
                            for (int f = 0; f < V; f++)
                                acc[r][t] = _mm512_dpbusd_epi32(
                                    acc[r][t], fld[f], _mm512_set1_epi32(ld32(xk + r * K + 4 * f)));
                    }
                }
            }
            /* group end: I = D - zp*xsum, then yacc += s * I */
            const float* sg = P->s + g * P->W;
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const int32_t xs = xsum[r * P->ng + g];
#pragma GCC unroll 4
                for (int t = 0; t < TB; t++) {
                    const int col = (t0 + t) * 16;
                    __m512i I = acc[r][t];
                    if (P->family == QC_QL_INT8)
                        I = _mm512_sub_epi32(I, _mm512_slli_epi32(_mm512_loadu_si512(P->colsum + col), 7));
                    else if (P->family == QC_QL_UINT4)
                        I = _mm512_sub_epi32(I, _mm512_mullo_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                                                    (const __m128i*)(P->zp + g * P->W + col))),
                                                _mm512_set1_epi32(xs)));
                    else
                        I = _mm512_sub_epi32(I, _mm512_set1_epi32(zero_point(P, g, col) * xs));
                    _mm512_storeu_ps(yacc[r] + col,
                                     _mm512_fmadd_ps(_mm512_loadu_ps(sg + col), _mm512_cvtepi32_ps(I),
                                                     _mm512_loadu_ps(yacc[r] + col)));
                }
            }
        }
    }
    for (int r = 0; r < R; r++) {
        const __m512 xs = _mm512_set1_ps(xscale[r]);
        for (int col = 0; col < P->W; col += 16)
            _mm512_storeu_ps(y + r * P->N + col, _mm512_mul_ps(xs, _mm512_loadu_ps(yacc[r] + col)));
    }
}

/* 16 zmm accumulators leave room for fields, broadcasts and temporaries in 32 registers. */
static inline int subtile_batch(int R, int T) { return R * T <= 16 ? T : 16 / R; }

/* ------------------------------------------------------------------ AMX int8 prefill (AVX-512 build)
 * Whole 16-row blocks when the CPU has AMX-TILE + AMX-INT8 and Linux granted the tile state
 * (checked once per process; VNNI for good otherwise); the rows left over go through simd_rows.
 * Tiles (palette 1): tmm0-3 C of subtile t (16 rows x 16 int32), tmm4/5 A/B for 64 k (A: 16 rows
 * of xq, row stride K; B: 16 k-quad rows x 64 bytes), tmm6/7 A/B for the G % 64 k left in a group.
 * A field f of chunk c is exactly one B row in VNNI layout (byte nl*4 + j = column nl, k-quad
 * c*v + f), so 2-/4-bit chunks are split into fields in a 1 KiB buffer and int8 chunks are loaded
 * in place (row stride T*64).  C = sum c*xq exactly (tdpbsud: signed xq x unsigned codes;
 * tdpbssd for int8: signed x signed, so no colsum term), then per group the same zero-point
 * correction and fma as simd_rows, in the same order: bit-identical to the VNNI and scalar paths. */
#if defined(QL_EMULATE_X86) || (defined(__x86_64__) && defined(__linux__) &&                      \
                                (defined(__clang__) ? __clang_major__ >= 12 : __GNUC__ >= 11))
#define QL_AMX 1
#if defined(QL_EMULATE_X86)
#define QL_AMX_TARGET
/* the emulated build runs the AMX path only when asked to (tests) */
static int amx_usable(void) {
#if defined(QL_EMULATE_AMX)
    return 1;
#else
    return 0;
#endif
}
#else
#include <cpuid.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>
/* the plain -march=icelake-server (etc.) build stays loadable on CPUs without AMX: only these
 * functions are compiled for it, and only called after amx_usable() */
#define QL_AMX_TARGET __attribute__((target("amx-tile,amx-int8")))
#define QL_ARCH_GET_XCOMP_PERM 0x1022
#define QL_ARCH_REQ_XCOMP_PERM 0x1023
#define QL_XFEATURE_XTILEDATA 18
static int amx_probe(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    if (!(d & (1u << 24)) || !(d & (1u << 25))) return 0; /* AMX-TILE, AMX-INT8 */
    if (syscall(SYS_arch_prctl, QL_ARCH_REQ_XCOMP_PERM, QL_XFEATURE_XTILEDATA) != 0) return 0;
    unsigned long perm = 0;
    if (syscall(SYS_arch_prctl, QL_ARCH_GET_XCOMP_PERM, &perm) != 0) return 0;
    return (perm >> QL_XFEATURE_XTILEDATA) & 1;
}
/* 0: not probed yet, 2: being probed (by one thread; the others use VNNI meanwhile), 1: usable,
 * -1: not usable.  The probe, and so the permission request, runs once per process. */
static atomic_int amx_state;
static int amx_usable(void) {
    int s = atomic_load_explicit(&amx_state, memory_order_acquire);
    if (s == 0) {
        int expected = 0;
        if (!atomic_compare_exchange_strong(&amx_state, &expected, 2)) return expected == 1;
        s = amx_probe() ? 1 : -1;
        atomic_store_explicit(&amx_state, s, memory_order_release);
    }
    return s == 1;
}
#endif

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} ql_tilecfg_t;

/* The compilers' tile intrinsics are asm statements that do not tell the compiler they read
 * memory (ldtilecfg claims 8 bytes, tileloadd none): make the pointed-to memory escape and order
 * all memory accesses around them. */
#define QL_MEM_FENCE(p) __asm__ volatile("" : : "r"(p) : "memory")
#define QL_TLOAD(tile, p, stride)                                                                  \
    do {                                                                                           \
        QL_MEM_FENCE(p);                                                                           \
        _tile_loadd(tile, p, stride);                                                              \
        QL_MEM_FENCE(p);                                                                           \
    } while (0)
/* tile numbers must be literals: one case per C tile */
#define QL_TDP(B, c, a, b)                                                                         \
    do {                                                                                           \
        if ((B) == 8) _tile_dpbssd(c, a, b);                                                       \
        else _tile_dpbsud(c, a, b);                                                                \
    } while (0)
#define QL_AMX_FN static __attribute__((noinline)) QL_AMX_TARGET
#define QL_ON_CTILE(t, OP, ...)                                                                    \
    do {                                                                                           \
        switch (t) {                                                                               \
        case 0: OP(0, __VA_ARGS__); break;                                                         \
        case 1: OP(1, __VA_ARGS__); break;                                                         \
        case 2: OP(2, __VA_ARGS__); break;                                                         \
        default: OP(3, __VA_ARGS__); break;                                                        \
        }                                                                                          \
    } while (0)
#define QL_TZERO(c, unused) _tile_zero(c)
#define QL_TSTORE(c, p) _tile_stored(c, p, 64)
#define QL_TDP_FULL(c, B) QL_TDP(B, c, 4, 5)
#define QL_TDP_REM(c, B) QL_TDP(B, c, 6, 7)

/* B rows for nch chunks of one subtile from wp on (chunk stride rowb): field f of chunk i goes to
 * row i*V + f of buf; int8 chunks are used in place.  Returns the rows and sets their stride. */
QL_INLINE const uint8_t* amx_b_rows(const uint8_t* wp, int64_t rowb, int nch, uint8_t* buf,
                                    int64_t* stride, const int B) {
    if (B == 8) {
        *stride = rowb;
        return wp;
    }
    const int V = 8 / B;
    const __m512i mask = _mm512_set1_epi8((char)((1 << B) - 1));
    for (int i = 0; i < nch; i++) {
        const __m512i raw = _mm512_loadu_si512((const void*)(wp + i * rowb));
#pragma GCC unroll 4
        for (int f = 0; f < V; f++)
            _mm512_storeu_si512((void*)(buf + (i * V + f) * 64),
                                _mm512_and_si512(f ? _mm512_srli_epi16(raw, f * B) : raw, mask));
    }
    *stride = 64;
    return buf;
}

/* rows [0, M16) (M16 % 16 == 0) of the panel */
QL_INLINE QL_AMX_TARGET void amx_rows(const panel_t* P, const int8_t* xq, const float* xscale, const int32_t* xsum,
                        float* y, int64_t M16, const int B) {
    const int V = 8 / B, KC = 4 * V;
    const int64_t K = P->K, G = P->gchunks * KC, rowb = (int64_t)P->T * 64;
    const int64_t nfull = G / 64;
    const int rem = (int)(G % 64); /* a multiple of KC (G % KC == 0) and so of 4 */
    ql_tilecfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < P->T; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    if (nfull) cfg.rows[4] = 16, cfg.colsb[4] = 64, cfg.rows[5] = 16, cfg.colsb[5] = 64;
    if (rem) cfg.rows[6] = 16, cfg.colsb[6] = (uint16_t)rem, cfg.rows[7] = (uint8_t)(rem / 4), cfg.colsb[7] = 64;
    QL_MEM_FENCE(&cfg);
    _tile_loadconfig(&cfg);

    _Alignas(64) uint8_t bbuf[16 * 64];
    _Alignas(64) int32_t cbuf[4][16][16];
    _Alignas(64) float yacc[16][64];
    for (int64_t m = 0; m < M16; m += 16) {
        const int8_t* x = xq + m * K;
        memset(yacc, 0, sizeof yacc);
        for (int64_t g = 0; g < P->ng; g++) {
            for (int t = 0; t < P->T; t++) QL_ON_CTILE(t, QL_TZERO, 0);
            const uint8_t* wg = P->w + g * P->gchunks * rowb;
            const int8_t* xg = x + g * G;
            for (int64_t s = 0; s < nfull; s++) {
                QL_TLOAD(4, xg + s * 64, K);
                for (int t = 0; t < P->T; t++) {
                    int64_t stride;
                    const uint8_t* b = amx_b_rows(wg + s * (64 / KC) * rowb + t * 64, rowb, 64 / KC, bbuf, &stride, B);
                    QL_TLOAD(5, b, stride);
                    QL_ON_CTILE(t, QL_TDP_FULL, B);
                }
            }
            if (rem) {
                QL_TLOAD(6, xg + nfull * 64, K);
                for (int t = 0; t < P->T; t++) {
                    int64_t stride;
                    const uint8_t* b = amx_b_rows(wg + nfull * (64 / KC) * rowb + t * 64, rowb, rem / KC, bbuf, &stride, B);
                    QL_TLOAD(7, b, stride);
                    QL_ON_CTILE(t, QL_TDP_REM, B);
                }
            }
            for (int t = 0; t < P->T; t++) QL_ON_CTILE(t, QL_TSTORE, cbuf[t]);
            QL_MEM_FENCE(cbuf);
            /* group end, as in simd_rows: I = D - zp*xsum (int8: D already is sum q*xq), yacc += s*I */
            const float* sg = P->s + g * P->W;
            for (int r = 0; r < 16; r++) {
                const int32_t xs = xsum[(m + r) * P->ng + g];
                for (int t = 0; t < P->T; t++) {
                    const int col = t * 16;
                    __m512i I = _mm512_loadu_si512((const void*)cbuf[t][r]);
                    if (P->family == QC_QL_UINT4)
                        I = _mm512_sub_epi32(I, _mm512_mullo_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                                                    (const __m128i*)(P->zp + g * P->W + col))),
                                                _mm512_set1_epi32(xs)));
                    else if (P->family != QC_QL_INT8)
                        I = _mm512_sub_epi32(I, _mm512_set1_epi32(zero_point(P, g, col) * xs));
                    _mm512_storeu_ps(yacc[r] + col,
                                     _mm512_fmadd_ps(_mm512_loadu_ps(sg + col), _mm512_cvtepi32_ps(I),
                                                     _mm512_loadu_ps(yacc[r] + col)));
                }
            }
        }
        for (int r = 0; r < 16; r++) {
            const __m512 xs = _mm512_set1_ps(xscale[m + r]);
            for (int col = 0; col < P->W; col += 16)
                _mm512_storeu_ps(y + (m + r) * P->N + col, _mm512_mul_ps(xs, _mm512_loadu_ps(yacc[r] + col)));
        }
    }
    _tile_release();
}

QL_AMX_FN void amx_rows_b2(const panel_t* P, const int8_t* xq, const float* xscale,
                           const int32_t* xsum, float* y, int64_t M16) {
    amx_rows(P, xq, xscale, xsum, y, M16, 2);
}
QL_AMX_FN void amx_rows_b4(const panel_t* P, const int8_t* xq, const float* xscale,
                           const int32_t* xsum, float* y, int64_t M16) {
    amx_rows(P, xq, xscale, xsum, y, M16, 4);
}
QL_AMX_FN void amx_rows_b8(const panel_t* P, const int8_t* xq, const float* xscale,
                           const int32_t* xsum, float* y, int64_t M16) {
    amx_rows(P, xq, xscale, xsum, y, M16, 8);
}
#endif /* AMX */

/* ------------------------------------------------------------------ AVX2 + FMA */
#elif QL_AVX2
#define QL_SIMD 1
/* 2-/4-bit: one chunk row (TB subtiles x 2 halves) against R rows, summed into int16 sums
 * s16[t][h][r] (the caller widens them every NB chunks, see top).  2-bit decodes 4 fields with
 * 1 shift + 4 ands: with s = raw >> 4 (16-bit shift), fields 0, 2 are raw & 3, s & 3, and fields
 * 1, 3 come pre-scaled by 4 as raw & 0xC, s & 0xC; their products are summed apart (exactly
 * divisible by 4) and shifted back before going into s16. */
QL_INLINE void narrow_chunk(const uint8_t* wp, int64_t rowb, const int8_t* xk, int64_t K,
                            __m256i s16[4][2][4], const int R, const int TB, const int B) {
    const __m256i m3 = _mm256_set1_epi8(B == 2 ? 0x03 : 0x0F), m12 = _mm256_set1_epi8(0x0C);
#pragma GCC unroll 4
    for (int t = 0; t < TB; t++)
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            if (h == 0) QL_PREFETCH(wp + QL_PREFETCH_ROWS * rowb + t * 64);
            const __m256i raw = _mm256_loadu_si256((const __m256i*)(wp + t * 64 + h * 32));
            const __m256i s = _mm256_srli_epi16(raw, 4);
            if (B == 4) {
                const __m256i f0 = _mm256_and_si256(raw, m3), f1 = _mm256_and_si256(s, m3);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    const int8_t* xr = xk + r * K;
                    __m256i a = _mm256_add_epi16(s16[t][h][r], _mm256_maddubs_epi16(f0, _mm256_set1_epi32(ld32(xr))));
                    s16[t][h][r] = _mm256_add_epi16(a, _mm256_maddubs_epi16(f1, _mm256_set1_epi32(ld32(xr + 4))));
                }
            } else {
                const __m256i f0 = _mm256_and_si256(raw, m3), f2 = _mm256_and_si256(s, m3);
                const __m256i f1x4 = _mm256_and_si256(raw, m12), f3x4 = _mm256_and_si256(s, m12);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    const int8_t* xr = xk + r * K;
                    const __m256i lo = _mm256_add_epi16(_mm256_maddubs_epi16(f0, _mm256_set1_epi32(ld32(xr))),
                                                        _mm256_maddubs_epi16(f2, _mm256_set1_epi32(ld32(xr + 8))));
                    const __m256i hi = _mm256_add_epi16(_mm256_maddubs_epi16(f1x4, _mm256_set1_epi32(ld32(xr + 4))),
                                                        _mm256_maddubs_epi16(f3x4, _mm256_set1_epi32(ld32(xr + 12))));
                    s16[t][h][r] = _mm256_add_epi16(s16[t][h][r], _mm256_add_epi16(lo, _mm256_srai_epi16(hi, 2)));
                }
            }
        }
}

QL_INLINE void simd_rows(const panel_t* P, const int8_t* x, const float* xscale,
                         const int32_t* xsum, float* y, const int R, const int TB, const int B) {
    const int V = 8 / B, KC = 4 * V;
    const int NB = B == 2 ? 16 : 4; /* chunks per int16 block (2-/4-bit), see top */
    const int64_t K = P->K, rowb = (int64_t)P->T * 64;
    const __m256i ones = _mm256_set1_epi16(1);
    float yacc[4][64];
    for (int r = 0; r < R; r++) memset(yacc[r], 0, sizeof(float) * P->W);

    for (int64_t g = 0; g < P->ng; g++) {
        for (int t0 = 0; t0 < P->T; t0 += TB) {
            __m256i acc[4][2][4]; /* [subtile][half: columns 0-7, 8-15][row] */
#pragma GCC unroll 4
            for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) acc[t][0][r] = acc[t][1][r] = _mm256_setzero_si256();
            const uint8_t* wp = P->w + g * P->gchunks * rowb + t0 * 64;
            const int8_t* xk = x + g * P->gchunks * KC;
            if (B == 8 || (B == 4 && R > 1)) {
                /* one vpmaddwd per chunk half and row: for 4-bit with R > 1, int16 sums over chunks
                 * (8 of them for R = 4) measured slower than this, from the spills */
                const __m256i m15 = _mm256_set1_epi8(0x0F);
                for (int64_t c = 0; c < P->gchunks; c++, wp += rowb, xk += KC) {
#pragma GCC unroll 4
                    for (int t = 0; t < TB; t++)
#pragma GCC unroll 2
                        for (int h = 0; h < 2; h++) {
                            const __m256i raw = _mm256_loadu_si256((const __m256i*)(wp + t * 64 + h * 32));
                            if (B == 8) {
                                /* sign trick: |x| is the unsigned operand (128 for x = -128 reads
                                 * right as a byte), w takes x's sign (|w| <= 127 stays in range) */
#pragma GCC unroll 4
                                for (int r = 0; r < R; r++) {
                                    const __m256i xb = _mm256_set1_epi32(ld32(xk + r * K));
                                    const __m256i sw = _mm256_sign_epi8(raw, xb);
                                    acc[t][h][r] = _mm256_add_epi32(
                                        acc[t][h][r],
                                        _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(xb), sw), ones));
                                }
                            } else {
                                const __m256i f0 = _mm256_and_si256(raw, m15);
                                const __m256i f1 = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m15);
#pragma GCC unroll 4
                                for (int r = 0; r < R; r++) {
                                    /* both fields summed in int16 (<= 7620, see top) */
                                    const __m256i p = _mm256_add_epi16(
                                        _mm256_maddubs_epi16(f0, _mm256_set1_epi32(ld32(xk + r * K))),
                                        _mm256_maddubs_epi16(f1, _mm256_set1_epi32(ld32(xk + r * K + 4))));
                                    acc[t][h][r] = _mm256_add_epi32(acc[t][h][r], _mm256_madd_epi16(p, ones));
                                }
                            }
                        }
                }
            } else {
                /* blocks of NB chunks in stream order, summed in int16 and widened once per block */
                for (int64_t c0 = 0; c0 < P->gchunks; c0 += NB) {
                    const int64_t nc = P->gchunks - c0 < NB ? P->gchunks - c0 : NB;
                    __m256i s16[4][2][4];
#pragma GCC unroll 4
                    for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
                        for (int r = 0; r < R; r++) s16[t][0][r] = s16[t][1][r] = _mm256_setzero_si256();
                    for (int64_t c = 0; c < nc; c++, wp += rowb, xk += KC) narrow_chunk(wp, rowb, xk, K, s16, R, TB, B);
#pragma GCC unroll 4
                    for (int t = 0; t < TB; t++)
#pragma GCC unroll 2
                        for (int h = 0; h < 2; h++)
#pragma GCC unroll 4
                            for (int r = 0; r < R; r++)
                                acc[t][h][r] = _mm256_add_epi32(acc[t][h][r], _mm256_madd_epi16(s16[t][h][r], ones));
                }
            }
            /* group end: I = D - zp*xsum, then yacc += s * I */
            const float* sg = P->s + g * P->W;
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const int32_t xs = xsum[r * P->ng + g];
#pragma GCC unroll 4
                for (int t = 0; t < TB; t++)
#pragma GCC unroll 2
                    for (int h = 0; h < 2; h++) {
                        const int col = (t0 + t) * 16 + h * 8;
                        __m256i I = acc[t][h][r];
                        if (P->family == QC_QL_UINT4)
                            I = _mm256_sub_epi32(I, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                                        (const __m128i*)(P->zp + g * P->W + col))),
                                                    _mm256_set1_epi32(xs)));
                        else if (P->family != QC_QL_INT8)
                            I = _mm256_sub_epi32(I, _mm256_set1_epi32(zero_point(P, g, col) * xs));
                        _mm256_storeu_ps(yacc[r] + col,
                                         _mm256_fmadd_ps(_mm256_loadu_ps(sg + col), _mm256_cvtepi32_ps(I),
                                                         _mm256_loadu_ps(yacc[r] + col)));
                    }
            }
        }
    }
    for (int r = 0; r < R; r++) {
        const __m256 xs = _mm256_set1_ps(xscale[r]);
        for (int col = 0; col < P->W; col += 8)
            _mm256_storeu_ps(y + r * P->N + col, _mm256_mul_ps(xs, _mm256_loadu_ps(yacc[r] + col)));
    }
}

/* 8 ymm accumulators leave room for fields, constants and temporaries in 16 registers. */
static inline int subtile_batch(int R, int T) { return R * T <= 4 ? T : 4 / R; }
/* ------------------------------------------------------------------ AArch64 NEON + dot product
 * sdot (vdotq_s32) is signed x signed: the 2-/4-bit codes (0..15, 0..2) are valid int8 values, so
 * fields are dotted as they are and the zero-point correction stays as in the other paths; int8
 * weights are dotted as their raw signed bytes (zp = 0, no colsum term).  One 64-byte chunk is
 * four q-registers, register i = columns 4i..4i+3 x 4 k (byte 4*l + j: column 4i + l, k-quad j),
 * exactly one sdot operand: field f of register i against the 4 activations of k-quad f (an
 * indexed sdot picks that quad from the chunk's activations loaded once per row: 16 bytes for
 * 2-bit, 8 for 4-bit; int8 broadcasts its 4 bytes) adds into acc[r][t][i] (4 columns, int32).
 * Exact: |D| <= G*127*127 per lane as in the scalar path.  Accumulators: 4 per (row, subtile);
 * R*TB <= 4 keeps them at 16 of the 32 q-registers, leaving room for the activations (R), a
 * chunk's raw registers, its fields and the masks.  Group end: I = D - zp*xsum, yacc = fma(s, I,
 * yacc) (vfmaq_f32 is fused, like fmaf), y = xscale * yacc: the scalar path's operations, in its
 * order, so the results are bit-identical. */
#elif QL_NEON
#define QL_SIMD 1
/* Compiler-only barrier (no instruction) at the end of each subtile of a chunk row, and for 2-bit
 * after each register's 4 fields: without it GCC 12's scheduler hoists the loads of all TB
 * subtiles (up to 16 q-registers), or decodes all 16 fields of a subtile, ahead of the sdots and
 * spills accumulators in the inner loop (none with it, at -O2, -O3 and -Os). */
#define QL_NEON_SUBTILE_FENCE() __asm__ volatile("" ::: "memory")
/* Group end for one row and the 16 columns col0.. of one subtile, D[i] = columns col0+4i..+3:
 * I = D - zp*xsum (int8: zp = 0), yacc = fma(s, I, yacc). */
QL_INLINE void neon_group_end(const panel_t* P, int64_t g, int col0, int32_t xs, const int32x4_t D[4],
                              float* yr) {
    const float* sg = P->s + g * P->W;
    int32x4_t zpx[4];
    neon_zp_xsum(P, g, col0, xs, zpx);
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        const int col = col0 + i * 4;
        const int32x4_t I = vsubq_s32(D[i], zpx[i]);
        vst1q_f32(yr + col, vfmaq_f32(vld1q_f32(yr + col), vld1q_f32(sg + col), vcvtq_f32_s32(I)));
    }
}

#if QL_NEON_DOT
#if defined(__ARM_FEATURE_MATMUL_INT8)
/* ---------------- i8mm prefill: row pairs through smmla (-march=...+i8mm)
 * vmmlaq_s32(acc, a, b): acc (int32 2x2: [r0c0, r0c1, r1c0, r1c1]) += a (2 rows x 8 k, int8)
 * times b (2 columns x 8 k, int8) transposed; signed x signed like sdot, so codes and int8 weights
 * go in as they are and D is the same exact integer dot.  Operands per row pair p and 8 k:
 *   a: the two rows' 8 activation bytes side by side (two 8-byte loads; 2-bit: one 16-byte load
 *      per row, then vzip1/vzip2 on 64-bit lanes give k 0..7 and k 8..15 of the chunk);
 *   b: register i of a field holds columns 4i..4i+3 x one k-quad (32-bit lane l = column 4i+l);
 *      the two fields with consecutive k-quads (4-bit: lo, hi nibble; 2-bit: fields 0,1 and 2,3;
 *      int8: register i of chunks c, c+1) go through vtrn1/vtrn2 on 32-bit lanes: e = columns
 *      4i, 4i+2 x 8 k, o = columns 4i+1, 4i+3.  An odd last int8 chunk has a's upper k-quads 0.
 * acc[p][t][2i] / [2i+1] are the tiles of e / o: [r0 c, r0 c+2, r1 c, r1 c+2]; at group end
 * vzip1/vzip2 on 32-bit lanes of the two give rows 2p / 2p+1 x columns 4i..4i+3, which go through
 * neon_group_end like the sdot accumulators: bit-identical output.  8 accumulators per (pair,
 * subtile) = the sdot path's 4*R*TB q-registers, so subtile_batch and the instances are shared.
 *
 * Used where its inner loop is shorter than the sdot one (GCC 12, -O2 and -O3; instructions per
 * chunk row of the (R, TB) instance, loop overhead included, sdot -> smmla):
 *   R = 4 (TB = 1):  int8 62 -> 42 (per 8 k), 4-bit 51 -> 45, 2-bit 100 -> 88
 *   R = 2, int8:     TB = 1 40 -> 31, TB = 2 64 -> 51 (per 8 k)
 *   R = 2, TB = 1:   4-bit 39 -> 34, 2-bit 71 -> 69
 *   R = 2, TB = 2:   4-bit 59 -> 60, 2-bit 126 -> 128: kept on sdot
 * For one pair the 2-/4-bit interleave costs one trn per smmla, exactly the sdots it saves (per
 * 2 rows x 16 columns x 8 k: 4-bit 8 and/ushr + 16 sdot vs 8 and/ushr + 8 trn + 8 smmla), so
 * R = 2 only gains from a cheaper activation side (int8: one 8-byte load per row per 8 k instead
 * of a 4-byte broadcast per chunk) or from register moves GCC adds to the sdot loop (TB = 1);
 * two pairs share the interleaved weights.  M = 1 rows and an odd last row always use sdot. */
#define QL_MMLA 1
QL_INLINE void mmla_rows(const panel_t* P, const int8_t* x, const float* xscale,
                         const int32_t* xsum, float* y, const int R, const int TB, const int B) {
    const int KC = 4 * (8 / B), NP = R / 2;
    const int64_t K = P->K, rowb = (int64_t)P->T * 64;
    const uint8x16_t m15 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(0x03);
    float yacc[4][64];
    for (int r = 0; r < R; r++) memset(yacc[r], 0, sizeof(float) * P->W);

    for (int64_t g = 0; g < P->ng; g++) {
        for (int t0 = 0; t0 < P->T; t0 += TB) {
            int32x4_t acc[2][4][8]; /* [pair][subtile][2x2 tile j: columns 4(j/2) + j%2 and +2] */
#pragma GCC unroll 2
            for (int p = 0; p < NP; p++)
#pragma GCC unroll 4
                for (int t = 0; t < TB; t++)
#pragma GCC unroll 8
                    for (int j = 0; j < 8; j++) acc[p][t][j] = vdupq_n_s32(0);
            const uint8_t* wp = P->w + g * P->gchunks * rowb + t0 * 64;
            const int8_t* xk = x + g * P->gchunks * KC;
            if (B == 8) {
                int64_t c = 0;
                for (; c + 2 <= P->gchunks; c += 2, wp += 2 * rowb, xk += 8) {
                    int8x16_t a[2];
#pragma GCC unroll 2
                    for (int p = 0; p < NP; p++)
                        a[p] = vcombine_s8(vld1_s8(xk + 2 * p * K), vld1_s8(xk + (2 * p + 1) * K));
#pragma GCC unroll 4
                    for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++) {
                            const int32x4_t q0 = vreinterpretq_s32_u8(vld1q_u8(wp + t * 64 + i * 16));
                            const int32x4_t q1 = vreinterpretq_s32_u8(vld1q_u8(wp + rowb + t * 64 + i * 16));
                            const int8x16_t e = vreinterpretq_s8_s32(vtrn1q_s32(q0, q1));
                            const int8x16_t o = vreinterpretq_s8_s32(vtrn2q_s32(q0, q1));
#pragma GCC unroll 2
                            for (int p = 0; p < NP; p++) {
                                acc[p][t][2 * i] = vmmlaq_s32(acc[p][t][2 * i], a[p], e);
                                acc[p][t][2 * i + 1] = vmmlaq_s32(acc[p][t][2 * i + 1], a[p], o);
                            }
                            if (i == 3) QL_NEON_SUBTILE_FENCE();
                        }
                }
                if (c < P->gchunks) { /* odd last chunk: a's second k-quads are 0, b's are unused */
                    int8x16_t a[2];
#pragma GCC unroll 2
                    for (int p = 0; p < NP; p++) {
                        int32x4_t av = vdupq_n_s32(0);
                        av = vsetq_lane_s32(ld32(xk + 2 * p * K), av, 0);
                        a[p] = vreinterpretq_s8_s32(vsetq_lane_s32(ld32(xk + (2 * p + 1) * K), av, 2));
                    }
#pragma GCC unroll 4
                    for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++) {
                            const int32x4_t q0 = vreinterpretq_s32_u8(vld1q_u8(wp + t * 64 + i * 16));
                            const int8x16_t e = vreinterpretq_s8_s32(q0);
                            const int8x16_t o = vreinterpretq_s8_s32(vtrn2q_s32(q0, q0));
#pragma GCC unroll 2
                            for (int p = 0; p < NP; p++) {
                                acc[p][t][2 * i] = vmmlaq_s32(acc[p][t][2 * i], a[p], e);
                                acc[p][t][2 * i + 1] = vmmlaq_s32(acc[p][t][2 * i + 1], a[p], o);
                            }
                        }
                }
            } else if (B == 4) {
                for (int64_t c = 0; c < P->gchunks; c++, wp += rowb, xk += KC) {
                    int8x16_t a[2]; /* k-quads 0, 1 of the chunk, row 2p then 2p+1 */
#pragma GCC unroll 2
                    for (int p = 0; p < NP; p++)
                        a[p] = vcombine_s8(vld1_s8(xk + 2 * p * K), vld1_s8(xk + (2 * p + 1) * K));
#pragma GCC unroll 4
                    for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++) {
                            const uint8x16_t raw = vld1q_u8(wp + t * 64 + i * 16);
                            const int32x4_t f0 = vreinterpretq_s32_u8(vandq_u8(raw, m15));
                            const int32x4_t f1 = vreinterpretq_s32_u8(vshrq_n_u8(raw, 4));
                            const int8x16_t e = vreinterpretq_s8_s32(vtrn1q_s32(f0, f1));
                            const int8x16_t o = vreinterpretq_s8_s32(vtrn2q_s32(f0, f1));
#pragma GCC unroll 2
                            for (int p = 0; p < NP; p++) {
                                acc[p][t][2 * i] = vmmlaq_s32(acc[p][t][2 * i], a[p], e);
                                acc[p][t][2 * i + 1] = vmmlaq_s32(acc[p][t][2 * i + 1], a[p], o);
                            }
                            if (i == 3) QL_NEON_SUBTILE_FENCE();
                        }
                }
            } else {
                for (int64_t c = 0; c < P->gchunks; c++, wp += rowb, xk += KC) {
                    int8x16_t a[2][2]; /* [pair][k 0..7, 8..15 of the chunk] */
#pragma GCC unroll 2
                    for (int p = 0; p < NP; p++) {
                        const int64x2_t x0 = vreinterpretq_s64_s8(vld1q_s8(xk + 2 * p * K));
                        const int64x2_t x1 = vreinterpretq_s64_s8(vld1q_s8(xk + (2 * p + 1) * K));
                        a[p][0] = vreinterpretq_s8_s64(vzip1q_s64(x0, x1));
                        a[p][1] = vreinterpretq_s8_s64(vzip2q_s64(x0, x1));
                    }
#pragma GCC unroll 4
                    for (int t = 0; t < TB; t++) {
                        uint8x16_t raw[4];
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++) raw[i] = vld1q_u8(wp + t * 64 + i * 16);
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++) {
                            const int32x4_t f0 = vreinterpretq_s32_u8(vandq_u8(raw[i], m3));
                            const int32x4_t f1 = vreinterpretq_s32_u8(vandq_u8(vshrq_n_u8(raw[i], 2), m3));
                            const int32x4_t f2 = vreinterpretq_s32_u8(vandq_u8(vshrq_n_u8(raw[i], 4), m3));
                            const int32x4_t f3 = vreinterpretq_s32_u8(vshrq_n_u8(raw[i], 6));
                            const int8x16_t e0 = vreinterpretq_s8_s32(vtrn1q_s32(f0, f1));
                            const int8x16_t o0 = vreinterpretq_s8_s32(vtrn2q_s32(f0, f1));
                            const int8x16_t e1 = vreinterpretq_s8_s32(vtrn1q_s32(f2, f3));
                            const int8x16_t o1 = vreinterpretq_s8_s32(vtrn2q_s32(f2, f3));
#pragma GCC unroll 2
                            for (int p = 0; p < NP; p++) {
                                int32x4_t ae = vmmlaq_s32(acc[p][t][2 * i], a[p][0], e0);
                                acc[p][t][2 * i] = vmmlaq_s32(ae, a[p][1], e1);
                                int32x4_t ao = vmmlaq_s32(acc[p][t][2 * i + 1], a[p][0], o0);
                                acc[p][t][2 * i + 1] = vmmlaq_s32(ao, a[p][1], o1);
                            }
                            QL_NEON_SUBTILE_FENCE();
                        }
                    }
                }
            }
            /* tiles [r0 c, r0 c+2, r1 c, r1 c+2] of the even (2i: c = 4i) and odd (2i+1: c = 4i+1)
             * columns -> row 2p = vzip1 on 32-bit lanes, row 2p+1 = vzip2, then the group end */
#pragma GCC unroll 2
            for (int p = 0; p < NP; p++)
#pragma GCC unroll 4
                for (int t = 0; t < TB; t++)
#pragma GCC unroll 2
                    for (int h = 0; h < 2; h++) {
                        int32x4_t D[4];
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++) {
                            const int32x4_t ev = acc[p][t][2 * i], od = acc[p][t][2 * i + 1];
                            D[i] = h ? vzip2q_s32(ev, od) : vzip1q_s32(ev, od);
                        }
                        const int r = 2 * p + h;
                        neon_group_end(P, g, (t0 + t) * 16, xsum[r * P->ng + g], D, yacc[r]);
                    }
        }
    }
    for (int r = 0; r < R; r++) {
        const float32x4_t xs = vdupq_n_f32(xscale[r]);
        for (int col = 0; col < P->W; col += 4)
            vst1q_f32(y + r * P->N + col, vmulq_f32(xs, vld1q_f32(yacc[r] + col)));
    }
}
#endif
QL_INLINE void simd_rows(const panel_t* P, const int8_t* x, const float* xscale,
                         const int32_t* xsum, float* y, const int R, const int TB, const int B) {
#if QL_MMLA
    if (R == 4 || (R == 2 && (B == 8 || TB == 1))) { /* row pairs through smmla: see mmla_rows */
        mmla_rows(P, x, xscale, xsum, y, R, TB, B);
        return;
    }
#endif
    const int KC = 4 * (8 / B); /* k per chunk */
    const int64_t K = P->K, rowb = (int64_t)P->T * 64;
    const uint8x16_t m15 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(0x03);
    float yacc[4][64];
    for (int r = 0; r < R; r++) memset(yacc[r], 0, sizeof(float) * P->W);

    for (int64_t g = 0; g < P->ng; g++) {
        for (int t0 = 0; t0 < P->T; t0 += TB) {
            int32x4_t acc[4][4][4]; /* [row][subtile][register: columns 4i..4i+3] */
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
#pragma GCC unroll 4
                for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
                    for (int i = 0; i < 4; i++) acc[r][t][i] = vdupq_n_s32(0);
            const uint8_t* wp = P->w + g * P->gchunks * rowb + t0 * 64;
            const int8_t* xk = x + g * P->gchunks * KC;
            for (int64_t c = 0; c < P->gchunks; c++, wp += rowb, xk += KC) {
#pragma GCC unroll 4
                for (int t = 0; t < TB; t++) QL_PREFETCH(wp + QL_PREFETCH_ROWS * rowb + t * 64);
                if (B == 8) {
                    int8x16_t xb[4];
#pragma GCC unroll 4
                    for (int r = 0; r < R; r++) xb[r] = vreinterpretq_s8_s32(vdupq_n_s32(ld32(xk + r * K)));
#pragma GCC unroll 4
                    for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++) {
                            const int8x16_t w8 = vld1q_s8((const int8_t*)wp + t * 64 + i * 16);
#pragma GCC unroll 4
                            for (int r = 0; r < R; r++) acc[r][t][i] = vdotq_s32(acc[r][t][i], w8, xb[r]);
                            if (i == 3) QL_NEON_SUBTILE_FENCE();
                        }
                } else if (B == 4) {
                    int8x8_t xb[4]; /* k-quads 0, 1 of the chunk = lanes 0, 1 */
#pragma GCC unroll 4
                    for (int r = 0; r < R; r++) xb[r] = vld1_s8(xk + r * K);
#pragma GCC unroll 4
                    for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++) {
                            const uint8x16_t raw = vld1q_u8(wp + t * 64 + i * 16);
                            const int8x16_t f0 = vreinterpretq_s8_u8(vandq_u8(raw, m15));
                            const int8x16_t f1 = vreinterpretq_s8_u8(vshrq_n_u8(raw, 4));
#pragma GCC unroll 4
                            for (int r = 0; r < R; r++) {
                                int32x4_t a = vdotq_lane_s32(acc[r][t][i], f0, xb[r], 0);
                                acc[r][t][i] = vdotq_lane_s32(a, f1, xb[r], 1);
                            }
                            if (i == 3) QL_NEON_SUBTILE_FENCE();
                        }
                } else {
                    int8x16_t xb[4]; /* k-quads 0..3 of the chunk = lanes 0..3 */
#pragma GCC unroll 4
                    for (int r = 0; r < R; r++) xb[r] = vld1q_s8(xk + r * K);
#pragma GCC unroll 4
                    for (int t = 0; t < TB; t++) {
                        /* the subtile's 4 registers are loaded first (ldp pairs), then
                         * decoded and dotted one at a time, fenced */
                        uint8x16_t raw[4];
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++) raw[i] = vld1q_u8(wp + t * 64 + i * 16);
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++) {
                            const int8x16_t f0 = vreinterpretq_s8_u8(vandq_u8(raw[i], m3));
                            const int8x16_t f1 = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(raw[i], 2), m3));
                            const int8x16_t f2 = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(raw[i], 4), m3));
                            const int8x16_t f3 = vreinterpretq_s8_u8(vshrq_n_u8(raw[i], 6));
#pragma GCC unroll 4
                            for (int r = 0; r < R; r++) {
                                int32x4_t a = vdotq_laneq_s32(acc[r][t][i], f0, xb[r], 0);
                                a = vdotq_laneq_s32(a, f1, xb[r], 1);
                                a = vdotq_laneq_s32(a, f2, xb[r], 2);
                                acc[r][t][i] = vdotq_laneq_s32(a, f3, xb[r], 3);
                            }
                            QL_NEON_SUBTILE_FENCE();
                        }
                    }
                }
            }
            /* group end: I = D - zp*xsum, then yacc += s * I */
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
#pragma GCC unroll 4
                for (int t = 0; t < TB; t++)
                    neon_group_end(P, g, (t0 + t) * 16, xsum[r * P->ng + g], acc[r][t], yacc[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        const float32x4_t xs = vdupq_n_f32(xscale[r]);
        for (int col = 0; col < P->W; col += 4)
            vst1q_f32(y + r * P->N + col, vmulq_f32(xs, vld1q_f32(yacc[r] + col)));
    }
}

/* 4*R*TB accumulator q-registers: at most 16 of the 32. */
static inline int subtile_batch(int R, int T) { return R * T <= 4 ? T : 4 / R; }

#else /* QL_NEON_V80 */
/* ---------------- ARMv8.0 NEON without sdot (-march=armv8-a, Cortex-A53/A72)
 * Rows go in blocks of R = 2, then 1, one subtile at a time (TB = 1: the int16 accumulators take
 * 8 q-registers per row and subtile).  Register i of a chunk (bytes 4l + j: column 4i + l, k-quad
 * lane j) is one smlal / smlal2 operand: low half = columns 4i, 4i+1, high = 4i+2, 4i+3, against
 * the 4 activations of the field's k-quad broadcast to every 32-bit lane (the same register for
 * both halves); the products go into int16 lanes (column, j).
 *   int8: 2 chunks per int16 lane (|w*x| <= 128*127 = 16256, two: 32512), smull + smlal, then
 *     sadalp into int32 [i][half] (lanes = (column, j pair)), addp at group end -> 4 columns.
 *   4-/2-bit (fields as in the sdot path, codes 0..15 / 0..2 as int8): NB chunks per int16 block,
 *     then addp of the two halves (the j pairs of a column: lanes (column, j01 / j23)) and sadalp
 *     into int32 [i] = columns 4i..4i+3.  A lane gains <= V*15*128 = 3840 (4-bit) or 4*2*128 = 1024
 *     (ternary) per chunk; the addp sums two lanes, so NB = 4 (2*4*3840 = 30720) or 16 (two lanes
 *     in [-16*1024, 16*1016]: [-32768, 32512]) keeps that sum in int16 (int16 adds wrap, so only the
 *     sums that are widened must fit: they are exact).
 *   ternary, single rows (R = 1: M = 1 decode, an odd last row): table lookups (T-MAC style, the
 *     "lut1" kernel of tests/c/ternary_lut_neon.c).  The low nibble of a byte is the base-4 index
 *     e = c0 + 4*c1 of the k pair (j, 4+j) of the chunk, the high nibble that of (8+j, 12+j); per
 *     chunk, half h (nibble) and j a 16-entry table T(e) = (c0-1)*x[k0] + (c1-1)*x[k1] (0 where
 *     c0 or c1 is 3), k0 = 16*ch + 8h + j, k1 = k0 + 4, holds exact partial sums of q*xq (the zero
 *     point applied: I = sum T).  |T| <= 254, so T = 32*H + L, L = T & 31 in [0,31], H = T >> 5
 *     in [-8,7], two byte tables; layout per chunk [j][h][part L,H][16] = 256 bytes.  vld4q_u8
 *     de-interleaves a subtile's chunk into 4 registers (register j = the 16 columns at lane j),
 *     so every lane of register j uses the same table: vqtbl1q_u8, 8 lookups per part per chunk,
 *     summed exactly in bytes (L <= 8*31 = 248 unsigned; H in [-64,56], two chunks [-128,112]
 *     signed), widened into u16/s16 per chunk (pair), and into int32 per block of QL_LUT_CHUNKS
 *     (<= 256) chunks: I = L + 32*H.  The tables depend on the row's xq only: they are built per
 *     block of QL_LUT_CHUNKS chunks on the stack (16 KiB) or, with QL_LUT_CACHE (default on), for
 *     the whole row once per thread and row contents (a per-thread buffer, see lut_cache) and
 *     reused by every panel call of that thread with the same xq.
 * Group end: the sdot path's neon_group_end (the LUT passes xsum 0: its I has no zero-point term),
 * so results are bit-identical to the scalar path. */
#define QL_MAX_R 2
/* chunks per int16 block of the 4-/2-bit smlal kernel (see above; overridable only so that the
 * tests can check that their worst cases catch a block one chunk too long) */
#ifndef QL_V80_NB4
#define QL_V80_NB4 4
#endif
#ifndef QL_V80_NB2
#define QL_V80_NB2 16
#endif

/* neon_group_end with the 16 columns' float accumulators in registers: the same operations */
QL_INLINE void v80_group_end(const panel_t* P, int64_t g, int col0, int32_t xs, const int32x4_t D[4],
                             float32x4_t yv[4]) {
    const float* sg = P->s + g * P->W;
    int32x4_t zpx[4];
    neon_zp_xsum(P, g, col0, xs, zpx);
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
        yv[i] = vfmaq_f32(yv[i], vld1q_f32(sg + col0 + i * 4), vcvtq_f32_s32(vsubq_s32(D[i], zpx[i])));
}

/* One 2-/4-bit chunk of one subtile into the int16 sums s16[row][register][half] of R rows
 * (first: the block's first chunk, which sets them). */
QL_INLINE void smlal_chunk(const uint8_t* wp, const int8_t* xk, int64_t K, int16x8_t s16[2][4][2],
                           const int R, const int B, const int first) {
    const int V = 8 / B;
    const uint8x16_t m15 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(0x03);
    int8x16_t xb[2][4]; /* the 4 activations of k-quad f, in every 32-bit lane */
#pragma GCC unroll 2
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int f = 0; f < V; f++) xb[r][f] = vreinterpretq_s8_s32(vdupq_n_s32(ld32(xk + r * K + 4 * f)));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        const uint8x16_t raw = vld1q_u8(wp + i * 16);
        int8x16_t fl[4];
        if (B == 4) {
            fl[0] = vreinterpretq_s8_u8(vandq_u8(raw, m15));
            fl[1] = vreinterpretq_s8_u8(vshrq_n_u8(raw, 4));
        } else {
            fl[0] = vreinterpretq_s8_u8(vandq_u8(raw, m3));
            fl[1] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(raw, 2), m3));
            fl[2] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(raw, 4), m3));
            fl[3] = vreinterpretq_s8_u8(vshrq_n_u8(raw, 6));
        }
#pragma GCC unroll 2
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int f = 0; f < V; f++) {
                if (first && f == 0) {
                    s16[r][i][0] = vmull_s8(vget_low_s8(fl[f]), vget_low_s8(xb[r][f]));
                    s16[r][i][1] = vmull_high_s8(fl[f], xb[r][f]);
                } else {
                    s16[r][i][0] = vmlal_s8(s16[r][i][0], vget_low_s8(fl[f]), vget_low_s8(xb[r][f]));
                    s16[r][i][1] = vmlal_high_s8(s16[r][i][1], fl[f], xb[r][f]);
                }
            }
        QL_NEON_SUBTILE_FENCE();
    }
}

QL_INLINE void smlal_rows(const panel_t* P, const int8_t* x, const float* xscale, const int32_t* xsum,
                          float* y, const int R, const int B) {
    const int V = 8 / B, KC = 4 * V;
    const int NB = B == 4 ? QL_V80_NB4 : QL_V80_NB2; /* chunks per int16 block, see above */
    const int64_t K = P->K, rowb = (int64_t)P->T * 64, gchunks = P->gchunks; /* locals: not reloaded at the fences */
    /* subtile by subtile, its groups in order: the float accumulators of its 16 columns stay in
     * registers (the same fma order per column as the other paths) */
    for (int t = 0; t < P->T; t++) {
        float32x4_t yv[2][4];
#pragma GCC unroll 2
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) yv[r][i] = vdupq_n_f32(0.0f);
        for (int64_t g = 0; g < P->ng; g++) {
            const uint8_t* wp = P->w + g * gchunks * rowb + t * 64;
            const int8_t* xk = x + g * gchunks * KC;
            int32x4_t D[2][4];
            if (B == 8) {
                int32x4_t a32[2][4][2]; /* [row][register][half] */
#pragma GCC unroll 2
                for (int r = 0; r < R; r++)
#pragma GCC unroll 4
                    for (int i = 0; i < 4; i++) a32[r][i][0] = a32[r][i][1] = vdupq_n_s32(0);
                int64_t c = 0;
                for (; c + 2 <= gchunks; c += 2, wp += 2 * rowb, xk += 8) {
                    int8x16_t x0[2], x1[2];
#pragma GCC unroll 2
                    for (int r = 0; r < R; r++) {
                        x0[r] = vreinterpretq_s8_s32(vdupq_n_s32(ld32(xk + r * K)));
                        x1[r] = vreinterpretq_s8_s32(vdupq_n_s32(ld32(xk + r * K + 4)));
                    }
#pragma GCC unroll 4
                    for (int i = 0; i < 4; i++) {
                        const int8x16_t w0 = vld1q_s8((const int8_t*)wp + i * 16);
                        const int8x16_t w1 = vld1q_s8((const int8_t*)wp + rowb + i * 16);
#pragma GCC unroll 2
                        for (int r = 0; r < R; r++) {
                            const int16x8_t lo = vmlal_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0[r])),
                                                          vget_low_s8(w1), vget_low_s8(x1[r]));
                            const int16x8_t hi = vmlal_high_s8(vmull_high_s8(w0, x0[r]), w1, x1[r]);
                            a32[r][i][0] = vpadalq_s16(a32[r][i][0], lo);
                            a32[r][i][1] = vpadalq_s16(a32[r][i][1], hi);
                        }
                    }
                }
                if (c < gchunks) { /* odd last chunk */
#pragma GCC unroll 4
                    for (int i = 0; i < 4; i++) {
                        const int8x16_t w0 = vld1q_s8((const int8_t*)wp + i * 16);
#pragma GCC unroll 2
                        for (int r = 0; r < R; r++) {
                            const int8x16_t x0 = vreinterpretq_s8_s32(vdupq_n_s32(ld32(xk + r * K)));
                            a32[r][i][0] = vpadalq_s16(a32[r][i][0], vmull_s8(vget_low_s8(w0), vget_low_s8(x0)));
                            a32[r][i][1] = vpadalq_s16(a32[r][i][1], vmull_high_s8(w0, x0));
                        }
                    }
                }
#pragma GCC unroll 2
                for (int r = 0; r < R; r++)
#pragma GCC unroll 4
                    for (int i = 0; i < 4; i++) D[r][i] = vpaddq_s32(a32[r][i][0], a32[r][i][1]);
            } else {
#pragma GCC unroll 2
                for (int r = 0; r < R; r++)
#pragma GCC unroll 4
                    for (int i = 0; i < 4; i++) D[r][i] = vdupq_n_s32(0);
                for (int64_t c0 = 0; c0 < gchunks; c0 += NB) {
                    const int64_t nc = gchunks - c0 < NB ? gchunks - c0 : NB;
                    int16x8_t s16[2][4][2]; /* [row][register][half]: set by the block's first chunk */
                    smlal_chunk(wp, xk, K, s16, R, B, 1);
                    wp += rowb, xk += KC;
                    for (int64_t c = 1; c < nc; c++, wp += rowb, xk += KC) smlal_chunk(wp, xk, K, s16, R, B, 0);
                    /* lanes (column, j01 / j23) of both halves, then the 4 columns' sums */
#pragma GCC unroll 2
                    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++)
                            D[r][i] = vpadalq_s16(D[r][i], vpaddq_s16(s16[r][i][0], s16[r][i][1]));
                }
            }
#pragma GCC unroll 2
            for (int r = 0; r < R; r++) v80_group_end(P, g, t * 16, xsum[r * P->ng + g], D[r], yv[r]);
        }
#pragma GCC unroll 2
        for (int r = 0; r < R; r++) {
            const float32x4_t xs = vdupq_n_f32(xscale[r]);
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) vst1q_f32(y + r * P->N + t * 16 + 4 * i, vmulq_f32(xs, yv[r][i]));
        }
    }
}

/* ---------------- ternary single rows: table lookups (see above) */
#ifndef QL_LUT_CHUNKS
#define QL_LUT_CHUNKS 64 /* chunks (16 k) per table block: 16 KiB on the stack; <= 256 (u16 sums) */
#endif
#ifndef QL_LUT_CACHE
#define QL_LUT_CACHE 1
#endif

/* Tables of chunks [0, n) from xk (16 k per chunk): tab[ch*256 + j*64 + h*32 + part*16 + e]. */
static void lut_tables(const int8_t* xk, int64_t n, uint8_t* tab) {
    /* lanes e = c0 + 4*c1: A = c0-1 (0 for c0 = 3); B = c1-1 for entries 0..7 (c1 = 0, 1) and
     * 8..15 (c1 = 2, 3 -> 0) */
    static const int16_t A_[8] = {-1, 0, 1, 0, -1, 0, 1, 0};
    static const int16_t BL_[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
    static const int16_t BH_[8] = {1, 1, 1, 1, 0, 0, 0, 0};
    const int16x8_t A = vld1q_s16(A_), BL = vld1q_s16(BL_), BH = vld1q_s16(BH_);
    const uint8x16_t m31 = vdupq_n_u8(31);
    for (int64_t ch = 0; ch < n; ch++, tab += 256) {
        const int8x16_t x8 = vld1q_s8(xk + ch * 16);
        const int16x8_t xw[2] = {vmovl_s8(vget_low_s8(x8)), vmovl_high_s8(x8)}; /* k 0..7, 8..15 */
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++)
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                /* lo: entries 0..7, hi: 8..15 = A*x[k0] + B*x[k1] (lane numbers must be constants) */
#define QL_LUT_ENTRIES(J)                                                                          \
    a = vmulq_laneq_s16(A, xw[h], J);                                                              \
    lo = vmlaq_laneq_s16(a, BL, xw[h], J + 4);                                                     \
    hi = vmlaq_laneq_s16(a, BH, xw[h], J + 4)
                int16x8_t a, lo, hi;
                switch (j) {
                case 0: QL_LUT_ENTRIES(0); break;
                case 1: QL_LUT_ENTRIES(1); break;
                case 2: QL_LUT_ENTRIES(2); break;
                default: QL_LUT_ENTRIES(3); break;
                }
#undef QL_LUT_ENTRIES
                /* L: the low bytes (uzp1, little-endian) & 31; H = T >> 5 narrowed (shrn) */
                const uint8x16_t L = vandq_u8(vuzp1q_u8(vreinterpretq_u8_s16(lo), vreinterpretq_u8_s16(hi)), m31);
                const int8x16_t H = vcombine_s8(vshrn_n_s16(lo, 5), vshrn_n_s16(hi, 5));
                vst1q_u8(tab + j * 64 + h * 32, L);
                vst1q_u8(tab + j * 64 + h * 32 + 16, vreinterpretq_u8_s8(H));
            }
    }
}

/* One chunk of one subtile: L (8 lookups summed in bytes, <= 248) widened into L16, H (8 lookups,
 * [-64, 56]) added to hs and returned. */
QL_INLINE int8x16_t lut_chunk(const uint8_t* tp, const uint8_t* wp, uint8x16_t m15, uint16x8_t L16[2],
                              int8x16_t hs) {
    QL_NEON_SUBTILE_FENCE(); /* keeps GCC from hoisting the table loads of several chunks */
    const uint8x16x4_t r = vld4q_u8(wp); /* r.val[j][column] */
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

#if QL_LUT_CACHE
/* Per-thread table cache: one heap block per thread (a pthread key, freed when the thread exits)
 * holding the K and the xq of the last row whose tables it built, then the tables (K*16 bytes).
 * A panel call whose row has the same K and the same xq bytes (memcmp) reuses them: the tables are
 * a function of those bytes only, so this is exact whatever buffer the row comes from.  NULL when
 * the allocation fails (the caller then builds per block on the stack). */
#include <pthread.h>
#include <stdlib.h>
typedef struct {
    int64_t K, cap; /* cap: the K the block has room for */
    int valid;
} lut_cache_t;
static pthread_key_t lut_key;
static int lut_key_ok;
static pthread_once_t lut_once = PTHREAD_ONCE_INIT;
static void lut_key_init(void) { lut_key_ok = pthread_key_create(&lut_key, free) == 0; }

static const uint8_t* lut_cached_tables(const int8_t* x, int64_t K) {
    if (pthread_once(&lut_once, lut_key_init) != 0 || !lut_key_ok) return 0;
    const size_t head = 64; /* header, then xq copy (K rounded up to 64), then the tables */
    const size_t xbytes = (size_t)(K + 63) / 64 * 64;
    lut_cache_t* c = pthread_getspecific(lut_key);
    if (c && c->valid && c->K == K && memcmp((const uint8_t*)c + head, x, (size_t)K) == 0)
        return (const uint8_t*)c + head + xbytes;
    if (!c || c->cap < K) {
        free(c); /* the old block, if any, is this thread's: not used by anyone else */
        pthread_setspecific(lut_key, 0);
        c = malloc(head + xbytes + (size_t)K * 16);
        if (!c) return 0;
        c->cap = K;
        if (pthread_setspecific(lut_key, c) != 0) {
            free(c);
            return 0;
        }
    }
    uint8_t* xc = (uint8_t*)c + head;
    c->valid = 0;
    c->K = K;
    memcpy(xc, x, (size_t)K);
    lut_tables(x, K / 16, xc + (size_t)(K + 63) / 64 * 64);
    c->valid = 1;
    return xc + xbytes;
}
#endif

/* one row of a ternary panel (G = K) */
static void lut_row(const panel_t* P, const int8_t* x, const float* xscale, float* y) {
    const int64_t nch = P->K / 16, rowb = (int64_t)P->T * 64;
    const uint8x16_t m15 = vdupq_n_u8(0x0F);
    const uint8_t* cached = 0;
#if QL_LUT_CACHE
    cached = lut_cached_tables(x, P->K);
#endif
    _Alignas(16) uint8_t stab[QL_LUT_CHUNKS * 256];
    int32x4_t D[4][4]; /* [subtile][register: columns 4i..4i+3] */
    for (int t = 0; t < P->T; t++)
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) D[t][i] = vdupq_n_s32(0);
    for (int64_t b0 = 0; b0 < nch; b0 += QL_LUT_CHUNKS) {
        const int64_t nb = nch - b0 < QL_LUT_CHUNKS ? nch - b0 : QL_LUT_CHUNKS;
        const uint8_t* tab = cached ? cached + b0 * 256 : stab;
        if (!cached) lut_tables(x + b0 * 16, nb, stab);
        for (int t = 0; t < P->T; t++) {
            uint16x8_t L16[2] = {vdupq_n_u16(0), vdupq_n_u16(0)}; /* columns 0-7, 8-15 */
            int16x8_t H16[2] = {vdupq_n_s16(0), vdupq_n_s16(0)};
            const uint8_t* wp = P->w + b0 * rowb + t * 64;
            const uint8_t* tp = tab;
            int64_t c = 0;
            /* H sums of two chunks stay in bytes ([-128, 112]): widened once per pair */
            for (; c + 2 <= nb; c += 2, wp += 2 * rowb, tp += 512) {
                int8x16_t hs = lut_chunk(tp, wp, m15, L16, vdupq_n_s8(0));
                hs = lut_chunk(tp + 256, wp + rowb, m15, L16, hs);
                H16[0] = vaddw_s8(H16[0], vget_low_s8(hs));
                H16[1] = vaddw_high_s8(H16[1], hs);
            }
            if (c < nb) {
                const int8x16_t hs = lut_chunk(tp, wp, m15, L16, vdupq_n_s8(0));
                H16[0] = vaddw_s8(H16[0], vget_low_s8(hs));
                H16[1] = vaddw_high_s8(H16[1], hs);
            }
            /* I += L + 32*H, per column */
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                int32x4_t d0 = vreinterpretq_s32_u32(vaddw_u16(vreinterpretq_u32_s32(D[t][2 * h]), vget_low_u16(L16[h])));
                int32x4_t d1 = vreinterpretq_s32_u32(vaddw_high_u16(vreinterpretq_u32_s32(D[t][2 * h + 1]), L16[h]));
                D[t][2 * h] = vaddq_s32(d0, vshll_n_s16(vget_low_s16(H16[h]), 5));
                D[t][2 * h + 1] = vaddq_s32(d1, vshll_high_n_s16(H16[h], 5));
            }
        }
    }
    float yacc[64];
    memset(yacc, 0, sizeof(float) * P->W);
    for (int t = 0; t < P->T; t++) neon_group_end(P, 0, t * 16, 0, D[t], yacc);
    const float32x4_t xs = vdupq_n_f32(xscale[0]);
    for (int col = 0; col < P->W; col += 4) vst1q_f32(y + col, vmulq_f32(xs, vld1q_f32(yacc + col)));
}

QL_INLINE void simd_rows(const panel_t* P, const int8_t* x, const float* xscale,
                         const int32_t* xsum, float* y, const int R, const int TB, const int B) {
    (void)TB; /* always 1 */
    if (B == 2 && R == 1) lut_row(P, x, xscale, y);
    else smlal_rows(P, x, xscale, xsum, y, R, B);
}

/* one subtile at a time (8 int16 accumulators per row) */
static inline int subtile_batch(int R, int T) {
    (void)R, (void)T;
    return 1;
}
#endif /* QL_NEON_DOT / QL_NEON_V80 */
#endif

#if QL_SIMD
/* One instance per (rows, subtile batch, bits): constant trip counts keep acc[][] in registers. */
typedef void (*rows_fn)(const panel_t*, const int8_t*, const float*, const int32_t*, float*);
#define QL_ROWS_FN(R, TB, B)                                                                       \
    static void rows_r##R##_t##TB##_b##B(const panel_t* P, const int8_t* x, const float* xscale,   \
                                         const int32_t* xsum, float* y) {                          \
        simd_rows(P, x, xscale, xsum, y, R, TB, B);                                                \
    }
#define QL_ROWS_FN_B(R, TB) QL_ROWS_FN(R, TB, 2) QL_ROWS_FN(R, TB, 4) QL_ROWS_FN(R, TB, 8)
/* the (R, TB) pairs subtile_batch can return */
#if QL_AVX512
#define QL_COMBOS(X) X(1, 1) X(1, 2) X(1, 4) X(2, 1) X(2, 2) X(2, 4) X(4, 1) X(4, 2) X(4, 4)
#elif QL_NEON_V80
#define QL_COMBOS(X) X(1, 1) X(2, 1)
#else
#define QL_COMBOS(X) X(1, 1) X(1, 2) X(1, 4) X(2, 1) X(2, 2) X(4, 1)
#endif
QL_COMBOS(QL_ROWS_FN_B)

static rows_fn pick_rows(int R, int TB, int bits) {
#define QL_PICK(R_, TB_)                                                                           \
    if (R == R_ && TB == TB_)                                                                      \
        return bits == 2 ? rows_r##R_##_t##TB_##_b2 : bits == 4 ? rows_r##R_##_t##TB_##_b4 : rows_r##R_##_t##TB_##_b8;
    QL_COMBOS(QL_PICK)
#undef QL_PICK
    return 0;
}

static void panel_rows(const panel_t* P, const int8_t* xq, const float* xscale, const int32_t* xsum,
                       float* y, int64_t M, int bits) {
    int64_t m = 0;
#if QL_AMX
    if (M >= 16 && amx_usable()) {
        m = M / 16 * 16;
        (bits == 2 ? amx_rows_b2 : bits == 4 ? amx_rows_b4 : amx_rows_b8)(P, xq, xscale, xsum, y, m);
    }
#endif
#ifndef QL_MAX_R
#define QL_MAX_R 4
#endif
    for (int R = QL_MAX_R; R >= 1; R /= 2) {
        const rows_fn fn = pick_rows(R, subtile_batch(R, P->T), bits);
        for (; m + R <= M; m += R) fn(P, xq + m * P->K, xscale + m, xsum + m * P->ng, y + m * P->N);
    }
}

/* ------------------------------------------------------------------ portable scalar */
#else
static void panel_rows(const panel_t* P, const int8_t* xq, const float* xscale, const int32_t* xsum,
                       float* y, int64_t M, int bits) {
    const int v = 8 / bits, kc = 4 * v, mask = (1 << bits) - 1;
    for (int64_t m = 0; m < M; m++) {
        const int8_t* x = xq + m * P->K;
        float yacc[64] = {0};
        for (int64_t g = 0; g < P->ng; g++) {
            for (int t = 0; t < P->T; t++) {
                int32_t acc[16] = {0};
                for (int64_t c = g * P->gchunks; c < (g + 1) * P->gchunks; c++) {
                    const uint8_t* ch = P->w + (c * P->T + t) * 64;
                    const int8_t* xk = x + c * kc;
                    for (int nl = 0; nl < 16; nl++)
                        for (int f = 0; f < v; f++)
                            for (int j = 0; j < 4; j++) {
                                const uint8_t byte = ch[nl * 4 + j];
                                const int code = bits == 8 ? (int8_t)byte : (byte >> (f * bits)) & mask;
                                acc[nl] += code * xk[f * 4 + j];
                            }
                }
                const int32_t xs = xsum[m * P->ng + g];
                for (int nl = 0; nl < 16; nl++) {
                    const int col = t * 16 + nl;
                    const int32_t I = acc[nl] - zero_point(P, g, col) * xs;
                    /* fmaf, like the SIMD paths, so every build gives the same bits */
                    yacc[col] = fmaf(P->s[g * P->W + col], (float)I, yacc[col]);
                }
            }
        }
        for (int col = 0; col < P->W; col++) y[m * P->N + col] = xscale[m] * yacc[col];
    }
}
#endif

int32_t qc_qlinear_panel(float* y, const uint8_t* w, const float* scales, const uint8_t* zero_points,
                         const int32_t* colsum, const int8_t* xq, const float* xscale,
                         const int32_t* xsum, int64_t M, int64_t K, int64_t N, int64_t group,
                         int32_t bits, int32_t family, int32_t tiles, int32_t panel) {
    static const int32_t family_bits[4] = {8, 4, 4, 2};
    if (family < 0 || family > 3 || bits != family_bits[family]) return -2;
    const int64_t kc = 4 * (8 / bits);
    if (M < 0 || K <= 0 || N <= 0 || group <= 0 || K % kc || group % kc || K % group) return -3;
    if ((family == QC_QL_INT8 || family == QC_QL_TERNARY) && group != K) return -3;
    if ((tiles != 1 && tiles != 2 && tiles != 4) || N % (16 * tiles)) return -3;
    if (panel < 0 || panel >= N / (16 * tiles)) return -4;
    if (!y || !w || !scales || !xq || !xscale || !xsum) return -1;
    if ((family == QC_QL_UINT4 && !zero_points) || (family == QC_QL_INT8 && !colsum)) return -1;

    const int W = 16 * tiles;
    const int64_t ng = K / group;
    panel_t P = {
        .w = w + panel * (K / kc) * 64 * tiles,
        .s = scales + panel * ng * W,
        .zp = family == QC_QL_UINT4 ? zero_points + panel * ng * W : 0,
        .colsum = family == QC_QL_INT8 ? colsum + panel * W : 0,
        .K = K, .N = N, .ng = ng, .gchunks = group / kc,
        .T = tiles, .W = W, .family = family,
    };
    panel_rows(&P, xq, xscale, xsum, y + panel * W, M, bits);
    return 0;
}

/* ------------------------------------------------------------------ activations
 * x86 (AVX-512 and AVX2 builds) and NEON vector loops for whole 8-/4-float blocks, scalar tails;
 * the same IEEE operations as the scalar code, so every build quantizes bit-identically. */
/* max |x[k]| over the row; a NaN never becomes the max */
static float row_amax(const float* x, int64_t K) {
    float amax = 0.0f;
    int64_t k = 0;
#if QL_AVX512 || QL_AVX2
    /* max is exact, so the lane order does not matter. maxps returns its second operand when
     * either is NaN: with the running max second, a NaN input never enters, as in the scalar loop */
    __m256 vmax = _mm256_setzero_ps();
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (; k + 8 <= K; k += 8) vmax = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + k), absmask), vmax);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    amax = _mm_cvtss_f32(m4);
#elif QL_NEON
    /* lane-wise "if (a > amax) amax = a", as below: a NaN never enters (the compare is false), so
     * every lane is +0 or a number and the exact across-lane max is the scalar loop's amax */
    float32x4_t vmax = vdupq_n_f32(0.0f);
    for (; k + 4 <= K; k += 4) {
        const float32x4_t a = vabsq_f32(vld1q_f32(x + k));
        vmax = vbslq_f32(vcgtq_f32(a, vmax), a, vmax);
    }
    amax = vmaxvq_f32(vmax);
#endif
    for (; k < K; k++) {
        const float a = fabsf(x[k]);
        if (a > amax) amax = a;
    }
    return amax;
}

/* Quantize one row with the clipping range amax (the row's own max, or a calibrated constant:
 * values beyond +-amax saturate at +-127).  The same float32 operations for both. */
static void quantize_row_amax(const float* x, int8_t* xq, float* xscale, int32_t* xsum, int64_t K,
                              int64_t group, float amax) {
    const float inv = amax == 0.0f ? 0.0f : 127.0f / amax;
    *xscale = amax == 0.0f ? 0.0f : amax / 127.0f;

    int64_t k = 0;
#if QL_AVX512 || QL_AVX2
    /* clamp before rounding (same result since +-127 are integers); max_ps(p, lo) maps NaN to lo */
    const __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    for (; k + 8 <= K; k += 8) {
        __m256 p = _mm256_mul_ps(_mm256_loadu_ps(x + k), vinv);
        p = _mm256_min_ps(_mm256_max_ps(p, lo), hi);
        const __m256i q = _mm256_cvtps_epi32(p); /* round half to even (default MXCSR) */
        const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_storel_epi64((__m128i*)(xq + k), _mm_packs_epi16(q16, q16));
    }
#elif QL_NEON
    /* "if (!(p >= -127)) p = -127" as a select (NaN -> -127), then min (no NaN left), then
     * fcvtns: round to nearest, ties to even, like rintf in the default rounding mode; the values
     * are in [-127, 127], so the narrowing moves are exact */
    const float32x4_t vinv = vdupq_n_f32(inv), lo = vdupq_n_f32(-127.0f), hi = vdupq_n_f32(127.0f);
    for (; k + 8 <= K; k += 8) {
        int32x4_t q[2];
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            float32x4_t p = vmulq_f32(vld1q_f32(x + k + 4 * h), vinv);
            p = vminq_f32(vbslq_f32(vcgeq_f32(p, lo), p, lo), hi);
            q[h] = vcvtnq_s32_f32(p);
        }
        vst1_s8(xq + k, vmovn_s16(vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1]))));
    }
#endif
    for (; k < K; k++) {
        float p = x[k] * inv;
        if (!(p >= -127.0f)) p = -127.0f;
        if (p > 127.0f) p = 127.0f;
        xq[k] = (int8_t)rintf(p);
    }
    for (int64_t g = 0; g < K / group; g++) {
        int32_t s = 0;
        for (int64_t i = g * group; i < (g + 1) * group; i++) s += xq[i];
        xsum[g] = s;
    }
}

int32_t qc_quantize_rows(const float* x, int8_t* xq, float* xscale, int32_t* xsum, int32_t m0,
                         int32_t m1, int64_t K, int64_t group) {
    if (m0 < 0 || m1 < m0 || K < 0 || group <= 0 || K % group) return -3;
    if (m1 > m0 && (!x || !xq || !xscale || !xsum)) return -1;
    for (int64_t m = m0; m < m1; m++)
        quantize_row_amax(x + m * K, xq + m * K, xscale + m, xsum + m * (K / group), K, group,
                          row_amax(x + m * K, K));
    return 0;
}

int32_t qc_quantize_rows_static(const float* x, int8_t* xq, float* xscale, int32_t* xsum, int32_t m0,
                                int32_t m1, int64_t K, int64_t group, float amax) {
    if (m0 < 0 || m1 < m0 || K < 0 || group <= 0 || K % group) return -3;
    /* a positive finite range whose 127/amax is finite too (else 0 * inv would be NaN) */
    if (!(amax > 0.0f) || !isfinite(amax) || !isfinite(127.0f / amax)) return -2;
    if (m1 > m0 && (!x || !xq || !xscale || !xsum)) return -1;
    for (int64_t m = m0; m < m1; m++)
        quantize_row_amax(x + m * K, xq + m * K, xscale + m, xsum + m * (K / group), K, group, amax);
    return 0;
}

int32_t qc_file_rows(const void* x, int32_t is_uint8, int8_t* xq, float* xscale, int32_t* xsum, int32_t m0,
                     int32_t m1, int64_t K, int64_t group, float scale) {
    if (m0 < 0 || m1 < m0 || K < 0 || group <= 0 || K % group) return -3;
    if (!(scale > 0.0f) || !isfinite(scale)) return -2;
    if (m1 > m0 && (!x || !xq || !xscale || !xsum)) return -1;
    for (int64_t m = m0; m < m1; m++) {
        const int8_t* in = (const int8_t*)x + m * K;
        int8_t* out = xq + m * K;
        /* uint8 u -> u - 128: flipping the top bit of the byte */
        if (is_uint8)
            for (int64_t i = 0; i < K; i++) out[i] = (int8_t)((uint8_t)in[i] ^ 0x80u);
        else
            memcpy(out, in, (size_t)K);
        xscale[m] = scale;
        for (int64_t g = 0; g < K / group; g++) {
            int32_t sum = 0;
            for (int64_t i = g * group; i < (g + 1) * group; i++) sum += out[i];
            xsum[m * (K / group) + g] = sum;
        }
    }
    return 0;
}
