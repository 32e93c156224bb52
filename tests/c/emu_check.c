/*
 * emu_check.c - differential check of tests/c/emu_x86.h against the real intrinsics, for the
 * operations a host with AVX2 + FMA can run: each emulated 512-bit op is compared with the real
 * 256-bit op on both halves, the 128/256-bit ones directly, on random and special inputs (NaN,
 * infinities, signed zeros, denormals, int32 limits, .5 ties).  (vpdpbusd and the AMX tile ops
 * have no AVX2 counterpart; their emulation is checked by the kernel tests against the scalar C.)
 * Exact bit equality everywhere, except that NaN results of mul/fmadd only have to be NaN: which
 * input NaN's payload x86 returns depends on the operand order of the instruction the compiler
 * picks (mul commutes, vfmadd132/213/231), so it is not defined at the intrinsic level either.
 *
 *   gcc -std=c11 -O2 -DEMU_SIDE -I tests/c -c tests/c/emu_check.c -o emu_side.o
 *   gcc -std=c11 -O2 -mavx2 -mfma tests/c/emu_check.c emu_side.o -o emu_check -lm && ./emu_check
 * Prints "ok <cases>" and exits 0, or prints the first mismatch and exits 1.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { OP_SRLI16, OP_SLLI32, OP_MULLO32, OP_SUB32, OP_ADD32, OP_AND, OP_XOR, OP_CVTEPU8_32,
       OP_CVTEPI32_PS, OP_FMADD_PS, OP_MUL_PS, OP_CVTPS_EPI32, OP_MAX_PS, OP_MIN_PS, OP_PACKS32,
       OP_PACKS16, OP_MOVEHL, OP_SHUFFLE1, OP_SHUFFLE_E4, OP_MAX_SS, OP_AND_PS, OP_HMAX, NOPS };

void emu_op(int op, const uint8_t* a, const uint8_t* b, const uint8_t* c, int imm, uint8_t* out);

#ifdef EMU_SIDE
#include "emu_x86.h"

void emu_op(int op, const uint8_t* a, const uint8_t* b, const uint8_t* c, int imm, uint8_t* out) {
    __m512i ia = _mm512_loadu_si512(a), ib = _mm512_loadu_si512(b);
    __m512 fa = _mm512_loadu_ps(a), fb = _mm512_loadu_ps(b), fc = _mm512_loadu_ps(c);
    __m256 ha, hb;
    __m128 qa, qb;
    __m128i xa, xb;
    memcpy(&ha, a, 32), memcpy(&hb, b, 32), memcpy(&qa, a, 16), memcpy(&qb, b, 16);
    memcpy(&xa, a, 16), memcpy(&xb, b, 16);
    switch (op) {
    case OP_SRLI16: _mm512_storeu_si512(out, _mm512_srli_epi16(ia, (unsigned)imm)); break;
    case OP_SLLI32: _mm512_storeu_si512(out, _mm512_slli_epi32(ia, (unsigned)imm)); break;
    case OP_MULLO32: _mm512_storeu_si512(out, _mm512_mullo_epi32(ia, ib)); break;
    case OP_SUB32: _mm512_storeu_si512(out, _mm512_sub_epi32(ia, ib)); break;
    case OP_ADD32: _mm512_storeu_si512(out, _mm512_add_epi32(ia, ib)); break;
    case OP_AND: _mm512_storeu_si512(out, _mm512_and_si512(ia, ib)); break;
    case OP_XOR: _mm512_storeu_si512(out, _mm512_xor_si512(ia, ib)); break;
    case OP_CVTEPU8_32: _mm512_storeu_si512(out, _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)a))); break;
    case OP_CVTEPI32_PS: _mm512_storeu_ps(out, _mm512_cvtepi32_ps(ia)); break;
    case OP_FMADD_PS: _mm512_storeu_ps(out, _mm512_fmadd_ps(fa, fb, fc)); break;
    case OP_MUL_PS: _mm512_storeu_ps(out, _mm512_mul_ps(fa, fb)); break;
    case OP_CVTPS_EPI32: memcpy(out, (__m256i[]){_mm256_cvtps_epi32(ha)}, 32); break;
    case OP_MAX_PS: memcpy(out, (__m256[]){_mm256_max_ps(ha, hb)}, 32); break;
    case OP_MIN_PS: memcpy(out, (__m256[]){_mm256_min_ps(ha, hb)}, 32); break;
    case OP_PACKS32: memcpy(out, (__m128i[]){_mm_packs_epi32(xa, xb)}, 16); break;
    case OP_PACKS16: _mm_storel_epi64((__m128i*)out, _mm_packs_epi16(xa, xb)); break;
    case OP_MOVEHL: memcpy(out, (__m128[]){_mm_movehl_ps(qa, qb)}, 16); break;
    case OP_SHUFFLE1: memcpy(out, (__m128[]){_mm_shuffle_ps(qa, qb, 1)}, 16); break;
    case OP_SHUFFLE_E4: memcpy(out, (__m128[]){_mm_shuffle_ps(qa, qb, 0xE4)}, 16); break;
    case OP_MAX_SS: memcpy(out, (__m128[]){_mm_max_ss(qa, qb)}, 16); break;
    case OP_AND_PS: memcpy(out, (__m256[]){_mm256_and_ps(ha, _mm256_castsi256_ps(_mm256_set1_epi32(imm)))}, 32); break;
    case OP_HMAX: { /* the quantizer's horizontal max sequence */
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(ha), _mm256_extractf128_ps(ha, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        const float f = _mm_cvtss_f32(m4);
        memcpy(out, &f, 4);
        break;
    }
    }
}

#else
#include <immintrin.h>
#include <math.h>

/* the real op; 512-bit ones as two 256-bit halves */
static void real_op(int op, const uint8_t* a, const uint8_t* b, const uint8_t* c, int imm, uint8_t* out) {
    const __m128i cnt = _mm_cvtsi32_si128(imm);
    for (int h = 0; h < 2; h++) {
        const __m256i ia = _mm256_loadu_si256((const __m256i*)(a + 32 * h));
        const __m256i ib = _mm256_loadu_si256((const __m256i*)(b + 32 * h));
        const __m256 fa = _mm256_loadu_ps((const float*)(a + 32 * h)), fb = _mm256_loadu_ps((const float*)(b + 32 * h));
        const __m256 fc = _mm256_loadu_ps((const float*)(c + 32 * h));
        __m256i* oi = (__m256i*)(out + 32 * h);
        float* of = (float*)(out + 32 * h);
        switch (op) {
        case OP_SRLI16: _mm256_storeu_si256(oi, _mm256_srl_epi16(ia, cnt)); break;
        case OP_SLLI32: _mm256_storeu_si256(oi, _mm256_sll_epi32(ia, cnt)); break;
        case OP_MULLO32: _mm256_storeu_si256(oi, _mm256_mullo_epi32(ia, ib)); break;
        case OP_SUB32: _mm256_storeu_si256(oi, _mm256_sub_epi32(ia, ib)); break;
        case OP_ADD32: _mm256_storeu_si256(oi, _mm256_add_epi32(ia, ib)); break;
        case OP_AND: _mm256_storeu_si256(oi, _mm256_and_si256(ia, ib)); break;
        case OP_XOR: _mm256_storeu_si256(oi, _mm256_xor_si256(ia, ib)); break;
        case OP_CVTEPU8_32: _mm256_storeu_si256(oi, _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(a + 8 * h)))); break;
        case OP_CVTEPI32_PS: _mm256_storeu_ps(of, _mm256_cvtepi32_ps(ia)); break;
        case OP_FMADD_PS: _mm256_storeu_ps(of, _mm256_fmadd_ps(fa, fb, fc)); break;
        case OP_MUL_PS: _mm256_storeu_ps(of, _mm256_mul_ps(fa, fb)); break;
        }
    }
    const __m256 ha = _mm256_loadu_ps((const float*)a), hb = _mm256_loadu_ps((const float*)b);
    const __m128 qa = _mm_loadu_ps((const float*)a), qb = _mm_loadu_ps((const float*)b);
    const __m128i xa = _mm_loadu_si128((const __m128i*)a), xb = _mm_loadu_si128((const __m128i*)b);
    switch (op) {
    case OP_CVTPS_EPI32: _mm256_storeu_si256((__m256i*)out, _mm256_cvtps_epi32(ha)); break;
    case OP_MAX_PS: _mm256_storeu_ps((float*)out, _mm256_max_ps(ha, hb)); break;
    case OP_MIN_PS: _mm256_storeu_ps((float*)out, _mm256_min_ps(ha, hb)); break;
    case OP_PACKS32: _mm_storeu_si128((__m128i*)out, _mm_packs_epi32(xa, xb)); break;
    case OP_PACKS16: _mm_storel_epi64((__m128i*)out, _mm_packs_epi16(xa, xb)); break;
    case OP_MOVEHL: _mm_storeu_ps((float*)out, _mm_movehl_ps(qa, qb)); break;
    case OP_SHUFFLE1: _mm_storeu_ps((float*)out, _mm_shuffle_ps(qa, qb, 1)); break;
    case OP_SHUFFLE_E4: _mm_storeu_ps((float*)out, _mm_shuffle_ps(qa, qb, 0xE4)); break;
    case OP_MAX_SS: _mm_storeu_ps((float*)out, _mm_max_ss(qa, qb)); break;
    case OP_AND_PS: _mm256_storeu_ps((float*)out, _mm256_and_ps(ha, _mm256_castsi256_ps(_mm256_set1_epi32(imm)))); break;
    case OP_HMAX: {
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(ha), _mm256_extractf128_ps(ha, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        const float f = _mm_cvtss_f32(m4);
        memcpy(out, &f, 4);
        break;
    }
    }
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}
static float special(void) {
    static const float pool[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 1.5f, 2.5f, -2.5f, 126.5f, -126.5f,
                                 127.0f, -127.0f, 1e-40f, -1e-40f, 2147483648.0f, -2147483648.0f,
                                 2147483520.0f, 3e9f, -3e9f, INFINITY, -INFINITY, NAN, -NAN, 1e38f};
    const uint32_t r = rnd();
    if (r % 3 == 0) return pool[(r >> 8) % (sizeof pool / sizeof pool[0])];
    if (r % 3 == 1) return ((float)(int32_t)rnd()) / (float)(1 + (rnd() % 4096));
    float f;
    const uint32_t bits = rnd();
    memcpy(&f, &bits, 4);
    return f;
}

int main(void) {
    long cases = 0;
    for (int it = 0; it < 20000; it++) {
        uint8_t in[3][64], want[64], got[64];
        for (int k = 0; k < 3; k++)
            for (int i = 0; i < 16; i++) {
                uint32_t v;
                if (it % 2) {
                    const float f = special();
                    memcpy(&v, &f, 4);
                } else {
                    v = rnd();
                    if (it % 4 == 2) v = (uint32_t)(int32_t)(int16_t)v; /* small / saturating lanes */
                }
                memcpy(&in[k][4 * i], &v, 4);
            }
        for (int op = 0; op < NOPS; op++) {
            const int imm = op == OP_SRLI16 ? it % 18 : op == OP_SLLI32 ? it % 34 : op == OP_AND_PS ? 0x7fffffff : 0;
            memset(want, 0xAB, 64), memset(got, 0xAB, 64);
            real_op(op, in[0], in[1], in[2], imm, want);
            emu_op(op, in[0], in[1], in[2], imm, got);
            cases++;
            if (op == OP_FMADD_PS || op == OP_MUL_PS) /* NaN payloads: see top */
                for (int i = 0; i < 16; i++) {
                    float w, g;
                    memcpy(&w, want + 4 * i, 4), memcpy(&g, got + 4 * i, 4);
                    if (isnan(w) && isnan(g)) memcpy(got + 4 * i, want + 4 * i, 4);
                }
            if (memcmp(want, got, 64)) {
                printf("mismatch: op %d imm %d iteration %d\n", op, imm, it);
                for (int i = 0; i < 16; i++) {
                    uint32_t w, g, x;
                    memcpy(&w, want + 4 * i, 4), memcpy(&g, got + 4 * i, 4), memcpy(&x, in[0] + 4 * i, 4);
                    printf("  lane %2d: a %08x real %08x emu %08x\n", i, x, w, g);
                }
                return 1;
            }
        }
    }
    printf("ok %ld\n", cases);
    return 0;
}
#endif
