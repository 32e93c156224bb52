/*
 * emu_x86.h - plain-C emulation of the x86 intrinsics that the QL_AVX512 path of
 * qcompile/artifact/runtime/qc_qlinear.c uses (AVX-512 F/BW/VNNI, the AVX/AVX2/SSE helpers of
 * its activation quantizer, and the AMX-TILE / AMX-INT8 tile intrinsics), so that path can be
 * compiled and run, bit for bit, on any host:
 *
 *     gcc -std=c11 -DQL_EMULATE_X86 [-DQL_EMULATE_AMX] -I tests/c qc_qlinear.c ...
 *
 * Semantics follow the Operation sections of Intel's intrinsics guide / SDM: integer lanes wrap
 * (computed in unsigned arithmetic, so no C signed overflow), float ops are single IEEE roundings
 * (fmadd = fmaf), max/min return the second operand when either is NaN, cvtps_epi32 rounds in the
 * current mode and returns 0x80000000 for NaN / out of range, packs saturate.
 *
 * AMX: the 8 tile registers and the tile configuration are thread-local (like the real per-thread
 * XSAVE state).  Every condition under which the hardware raises #GP or #UD that the kernel could
 * hit (bad palette / reserved bytes / shapes, an unconfigured tile, mismatched dot-product shapes,
 * a repeated tile operand) aborts with a message instead, so shape bugs fail loudly here.
 *
 * Only what qc_qlinear.c needs is here; this is a test tool, not a general library.
 */
#ifndef QC_EMU_X86_H_
#define QC_EMU_X86_H_

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ vector types
 * Distinct struct types (as distinct as the real ones) so mixing them up fails to compile. */
typedef union { int8_t i8[64]; uint8_t u8[64]; int16_t i16[32]; uint16_t u16[32]; int32_t i32[16]; uint32_t u32[16]; } __m512i;
typedef union { float f[16]; uint32_t u32[16]; } __m512;
typedef union { int8_t i8[32]; uint8_t u8[32]; int16_t i16[16]; int32_t i32[8]; uint32_t u32[8]; } __m256i;
typedef union { float f[8]; uint32_t u32[8]; } __m256;
typedef union { int8_t i8[16]; uint8_t u8[16]; int16_t i16[8]; int32_t i32[4]; uint32_t u32[4]; } __m128i;
typedef union { float f[4]; uint32_t u32[4]; } __m128;

#define EMU_INLINE static __attribute__((noinline, unused))

/* ------------------------------------------------------------------ AVX-512 integer */
EMU_INLINE __m512i _mm512_setzero_si512(void) { __m512i r; memset(&r, 0, sizeof r); return r; }
EMU_INLINE __m512i _mm512_set1_epi8(char a) { __m512i r; memset(r.u8, (uint8_t)a, 64); return r; }
EMU_INLINE __m512i _mm512_set1_epi32(int a) {
    __m512i r;
    for (int i = 0; i < 16; i++) r.i32[i] = a;
    return r;
}
EMU_INLINE __m512i _mm512_loadu_si512(const void* p) { __m512i r; memcpy(&r, p, 64); return r; }
EMU_INLINE void _mm512_storeu_si512(void* p, __m512i a) { memcpy(p, &a, 64); }
EMU_INLINE __m512i _mm512_and_si512(__m512i a, __m512i b) {
    for (int i = 0; i < 16; i++) a.u32[i] &= b.u32[i];
    return a;
}
EMU_INLINE __m512i _mm512_xor_si512(__m512i a, __m512i b) {
    for (int i = 0; i < 16; i++) a.u32[i] ^= b.u32[i];
    return a;
}
/* logical shift of each 16-bit lane; counts > 15 give 0 */
EMU_INLINE __m512i _mm512_srli_epi16(__m512i a, unsigned int imm) {
    for (int i = 0; i < 32; i++) a.u16[i] = imm > 15 ? 0 : (uint16_t)(a.u16[i] >> imm);
    return a;
}
/* shift of each 32-bit lane; counts > 31 give 0 */
EMU_INLINE __m512i _mm512_slli_epi32(__m512i a, unsigned int imm) {
    for (int i = 0; i < 16; i++) a.u32[i] = imm > 31 ? 0 : a.u32[i] << imm;
    return a;
}
EMU_INLINE __m512i _mm512_add_epi32(__m512i a, __m512i b) {
    for (int i = 0; i < 16; i++) a.u32[i] += b.u32[i];
    return a;
}
EMU_INLINE __m512i _mm512_sub_epi32(__m512i a, __m512i b) {
    for (int i = 0; i < 16; i++) a.u32[i] -= b.u32[i];
    return a;
}
/* low 32 bits of the 64-bit product */
EMU_INLINE __m512i _mm512_mullo_epi32(__m512i a, __m512i b) {
    for (int i = 0; i < 16; i++) a.u32[i] *= b.u32[i];
    return a;
}
EMU_INLINE __m512i _mm512_cvtepu8_epi32(__m128i a) {
    __m512i r;
    for (int i = 0; i < 16; i++) r.i32[i] = a.u8[i];
    return r;
}
/* VPDPBUSD: per dword, src + sum_j ZeroExtend(a.byte[j]) * SignExtend(b.byte[j]), wrapping
 * (the non-saturating form) */
EMU_INLINE __m512i _mm512_dpbusd_epi32(__m512i src, __m512i a, __m512i b) {
    for (int i = 0; i < 16; i++) {
        uint32_t s = src.u32[i];
        for (int j = 0; j < 4; j++) s += (uint32_t)((int32_t)a.u8[4 * i + j] * (int32_t)b.i8[4 * i + j]);
        src.u32[i] = s;
    }
    return src;
}

/* ------------------------------------------------------------------ AVX-512 float */
EMU_INLINE __m512 _mm512_set1_ps(float a) {
    __m512 r;
    for (int i = 0; i < 16; i++) r.f[i] = a;
    return r;
}
EMU_INLINE __m512 _mm512_setzero_ps(void) { return _mm512_set1_ps(0.0f); }
EMU_INLINE __m512 _mm512_loadu_ps(const void* p) { __m512 r; memcpy(&r, p, 64); return r; }
EMU_INLINE void _mm512_storeu_ps(void* p, __m512 a) { memcpy(p, &a, 64); }
EMU_INLINE __m512 _mm512_mul_ps(__m512 a, __m512 b) {
    for (int i = 0; i < 16; i++) a.f[i] = a.f[i] * b.f[i];
    return a;
}
/* a*b + c with a single rounding */
EMU_INLINE __m512 _mm512_fmadd_ps(__m512 a, __m512 b, __m512 c) {
    for (int i = 0; i < 16; i++) a.f[i] = fmaf(a.f[i], b.f[i], c.f[i]);
    return a;
}
/* int32 -> float in the current rounding mode (C's conversion does the same) */
EMU_INLINE __m512 _mm512_cvtepi32_ps(__m512i a) {
    __m512 r;
    for (int i = 0; i < 16; i++) r.f[i] = (float)a.i32[i];
    return r;
}

/* ------------------------------------------------------------------ SSE / AVX / AVX2 helpers */
EMU_INLINE __m128i _mm_loadu_si128(const __m128i* p) { __m128i r; memcpy(&r, p, 16); return r; }
EMU_INLINE void _mm_storel_epi64(__m128i* p, __m128i a) { memcpy(p, &a, 8); }
EMU_INLINE int16_t emu_sat16(int32_t v) { return (int16_t)(v > 32767 ? 32767 : v < -32768 ? -32768 : v); }
EMU_INLINE int8_t emu_sat8(int32_t v) { return (int8_t)(v > 127 ? 127 : v < -128 ? -128 : v); }
EMU_INLINE __m128i _mm_packs_epi32(__m128i a, __m128i b) {
    __m128i r;
    for (int i = 0; i < 4; i++) r.i16[i] = emu_sat16(a.i32[i]), r.i16[4 + i] = emu_sat16(b.i32[i]);
    return r;
}
EMU_INLINE __m128i _mm_packs_epi16(__m128i a, __m128i b) {
    __m128i r;
    for (int i = 0; i < 8; i++) r.i8[i] = emu_sat8(a.i16[i]), r.i8[8 + i] = emu_sat8(b.i16[i]);
    return r;
}
/* MAXPS/MINPS: dst = a > b ? a : b (resp. <), so a NaN in either operand returns b */
EMU_INLINE float emu_maxf(float a, float b) { return a > b ? a : b; }
EMU_INLINE float emu_minf(float a, float b) { return a < b ? a : b; }
EMU_INLINE __m128 _mm_max_ps(__m128 a, __m128 b) {
    for (int i = 0; i < 4; i++) a.f[i] = emu_maxf(a.f[i], b.f[i]);
    return a;
}
EMU_INLINE __m128 _mm_max_ss(__m128 a, __m128 b) { a.f[0] = emu_maxf(a.f[0], b.f[0]); return a; }
EMU_INLINE __m128 _mm_movehl_ps(__m128 a, __m128 b) {
    __m128 r = {{b.f[2], b.f[3], a.f[2], a.f[3]}};
    return r;
}
EMU_INLINE __m128 _mm_shuffle_ps(__m128 a, __m128 b, unsigned int imm) {
    __m128 r = {{a.f[imm & 3], a.f[(imm >> 2) & 3], b.f[(imm >> 4) & 3], b.f[(imm >> 6) & 3]}};
    return r;
}
EMU_INLINE float _mm_cvtss_f32(__m128 a) { return a.f[0]; }

EMU_INLINE __m256 _mm256_set1_ps(float a) {
    __m256 r;
    for (int i = 0; i < 8; i++) r.f[i] = a;
    return r;
}
EMU_INLINE __m256 _mm256_setzero_ps(void) { return _mm256_set1_ps(0.0f); }
EMU_INLINE __m256i _mm256_set1_epi32(int a) {
    __m256i r;
    for (int i = 0; i < 8; i++) r.i32[i] = a;
    return r;
}
EMU_INLINE __m256 _mm256_loadu_ps(const float* p) { __m256 r; memcpy(&r, p, 32); return r; }
EMU_INLINE __m256 _mm256_castsi256_ps(__m256i a) { __m256 r; memcpy(&r, &a, 32); return r; }
EMU_INLINE __m256 _mm256_and_ps(__m256 a, __m256 b) {
    for (int i = 0; i < 8; i++) a.u32[i] &= b.u32[i];
    return a;
}
EMU_INLINE __m256 _mm256_max_ps(__m256 a, __m256 b) {
    for (int i = 0; i < 8; i++) a.f[i] = emu_maxf(a.f[i], b.f[i]);
    return a;
}
EMU_INLINE __m256 _mm256_min_ps(__m256 a, __m256 b) {
    for (int i = 0; i < 8; i++) a.f[i] = emu_minf(a.f[i], b.f[i]);
    return a;
}
EMU_INLINE __m256 _mm256_mul_ps(__m256 a, __m256 b) {
    for (int i = 0; i < 8; i++) a.f[i] = a.f[i] * b.f[i];
    return a;
}
EMU_INLINE __m128 _mm256_castps256_ps128(__m256 a) { __m128 r; memcpy(&r, &a, 16); return r; }
EMU_INLINE __m128 _mm256_extractf128_ps(__m256 a, int imm) { __m128 r; memcpy(&r, &a.f[(imm & 1) * 4], 16); return r; }
EMU_INLINE __m128i _mm256_castsi256_si128(__m256i a) { __m128i r; memcpy(&r, &a, 16); return r; }
EMU_INLINE __m128i _mm256_extracti128_si256(__m256i a, int imm) { __m128i r; memcpy(&r, &a.i32[(imm & 1) * 4], 16); return r; }
/* CVTPS2DQ: round in the current mode (nearest-even by default); NaN or out of int32 range gives
 * the integer indefinite 0x80000000 */
EMU_INLINE __m256i _mm256_cvtps_epi32(__m256 a) {
    __m256i r;
    for (int i = 0; i < 8; i++) {
        const float v = nearbyintf(a.f[i]);
        r.i32[i] = (v >= -2147483648.0f && v < 2147483648.0f) ? (int32_t)v : INT32_MIN;
    }
    return r;
}

/* ------------------------------------------------------------------ AMX (palette 1) */
typedef struct {
    int configured;         /* a valid palette-1 config is loaded */
    uint8_t rows[8];        /* per tile */
    uint16_t colsb[8];      /* bytes per row, per tile */
    uint8_t data[8][16][64];
} emu_amx_state;
static _Thread_local emu_amx_state emu_amx;

static inline void emu_amx_fault(const char* what) {
    fprintf(stderr, "emu_x86.h: AMX fault: %s\n", what);
    abort();
}

/* LDTILECFG: 64 bytes = palette, start_row, 14 reserved (0), colsb[16] (u16), rows[16] (u8).
 * Palette 0 is the init state (same as TILERELEASE). */
EMU_INLINE void _tile_loadconfig(const void* config) {
    uint8_t c[64];
    memcpy(c, config, 64);
    memset(&emu_amx, 0, sizeof emu_amx);
    if (c[0] == 0) return;
    if (c[0] != 1) emu_amx_fault("palette other than 0/1");
    for (int i = 1; i < 16; i++)
        if (c[i]) emu_amx_fault("start_row / reserved bytes not zero");
    for (int t = 0; t < 16; t++) {
        uint16_t colsb;
        memcpy(&colsb, c + 16 + 2 * t, 2);
        const uint8_t rows = c[48 + t];
        if (t >= 8 && (colsb || rows)) emu_amx_fault("palette 1 has 8 tiles");
        if (t >= 8) continue;
        if (rows > 16 || colsb > 64) emu_amx_fault("tile larger than 16 rows x 64 bytes");
        if ((rows == 0) != (colsb == 0)) emu_amx_fault("tile with rows xor colsb zero");
        emu_amx.rows[t] = rows;
        emu_amx.colsb[t] = colsb;
    }
    emu_amx.configured = 1;
}
EMU_INLINE void _tile_release(void) { memset(&emu_amx, 0, sizeof emu_amx); }

static inline void emu_amx_check(int t) {
    if (!emu_amx.configured) emu_amx_fault("tile instruction without a tile config");
    if (t < 0 || t > 7) emu_amx_fault("tile register out of range");
    if (emu_amx.rows[t] == 0) emu_amx_fault("tile not configured (rows == 0)");
}
/* TILELOADD: rows x colsb bytes from base + row*stride; the rest of the tile becomes zero */
EMU_INLINE void emu_tile_loadd(int t, const void* base, long stride) {
    emu_amx_check(t);
    memset(emu_amx.data[t], 0, sizeof emu_amx.data[t]);
    for (int m = 0; m < emu_amx.rows[t]; m++)
        memcpy(emu_amx.data[t][m], (const uint8_t*)base + (long)m * stride, emu_amx.colsb[t]);
}
/* TILESTORED: rows x colsb bytes to base + row*stride */
EMU_INLINE void emu_tile_stored(int t, void* base, long stride) {
    emu_amx_check(t);
    for (int m = 0; m < emu_amx.rows[t]; m++)
        memcpy((uint8_t*)base + (long)m * stride, emu_amx.data[t][m], emu_amx.colsb[t]);
}
EMU_INLINE void emu_tile_zero(int t) {
    emu_amx_check(t);
    memset(emu_amx.data[t], 0, sizeof emu_amx.data[t]);
}
/* TDPB[SU][SU]D: dst.row[m].dword[n] += sum_{k < a.colsb/4} sum_j a.row[m].byte[4k+j] *
 * b.row[k].byte[4n+j], signedness of a / b per the name, wrapping int32 (no saturation). */
EMU_INLINE void emu_tile_dp(int d, int a, int b, int a_signed, int b_signed) {
    emu_amx_check(d), emu_amx_check(a), emu_amx_check(b);
    if (d == a || d == b || a == b) emu_amx_fault("tdp* with a repeated tile");
    if (emu_amx.colsb[d] % 4 || emu_amx.colsb[a] % 4) emu_amx_fault("tdp* colsb not a multiple of 4");
    if (emu_amx.colsb[a] / 4 != emu_amx.rows[b]) emu_amx_fault("tdp*: a.colsb/4 != b.rows");
    if (emu_amx.colsb[d] != emu_amx.colsb[b]) emu_amx_fault("tdp*: dst.colsb != b.colsb");
    if (emu_amx.rows[d] != emu_amx.rows[a]) emu_amx_fault("tdp*: dst.rows != a.rows");
    const int M = emu_amx.rows[d], N = emu_amx.colsb[d] / 4, K = emu_amx.colsb[a] / 4;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            uint32_t acc;
            memcpy(&acc, &emu_amx.data[d][m][4 * n], 4);
            for (int k = 0; k < K; k++)
                for (int j = 0; j < 4; j++) {
                    const uint8_t x = emu_amx.data[a][m][4 * k + j], y = emu_amx.data[b][k][4 * n + j];
                    const int32_t xv = a_signed ? (int32_t)(int8_t)x : (int32_t)x;
                    const int32_t yv = b_signed ? (int32_t)(int8_t)y : (int32_t)y;
                    acc += (uint32_t)(xv * yv);
                }
            memcpy(&emu_amx.data[d][m][4 * n], &acc, 4);
        }
    /* the bytes past dst.colsb and the rows past dst.rows are zeroed (already zero here) */
}
#define _tile_loadd(dst, base, stride) emu_tile_loadd((dst), (base), (long)(stride))
#define _tile_stored(src, base, stride) emu_tile_stored((src), (base), (long)(stride))
#define _tile_zero(dst) emu_tile_zero(dst)
#define _tile_dpbssd(dst, a, b) emu_tile_dp((dst), (a), (b), 1, 1)
#define _tile_dpbsud(dst, a, b) emu_tile_dp((dst), (a), (b), 1, 0)
#define _tile_dpbusd(dst, a, b) emu_tile_dp((dst), (a), (b), 0, 1)
#define _tile_dpbuud(dst, a, b) emu_tile_dp((dst), (a), (b), 0, 0)

#endif /* QC_EMU_X86_H_ */
