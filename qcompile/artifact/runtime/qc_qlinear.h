/*
 * qc_qlinear.h - C micro-kernels for quantized linear layers: y[M,N] = x[M,K] @ W[K,N] with
 * 2/4/8-bit weights and int8 activations (per-token scales, or one static clipping range).
 * Plain C11; the packer and a numpy reference of the same math live in
 * qcompile/targets/qlinear_layout.py.
 *
 * ISA paths, chosen at compile time from the compiler's predefined macros:
 *   __AVX512F__ && __AVX512BW__ && __AVX512VNNI__  zmm, vpdpbusd; plus, for whole 16-row blocks
 *                                                  (M >= 16) on x86-64 Linux, AMX int8 tiles
 *                                                  (tdpbsud/tdpbssd) when CPUID has AMX-TILE and
 *                                                  AMX-INT8 and the kernel grants the tile state
 *                                                  (checked once per process, at the first call
 *                                                  with M >= 16; VNNI otherwise)
 *   __AVX2__ && __FMA__                            ymm, vpmaddubsw + vpmaddwd
 *   __aarch64__ && __ARM_FEATURE_DOTPROD           NEON q-registers, sdot (signed x signed: codes
 *     (little-endian; e.g. -march=armv8.2-a+dotprod) and int8 weights dotted as stored); such a
 *                                                  binary raises SIGILL on CPUs without the dot
 *                                                  product extension (e.g. Cortex-A72), so the
 *                                                  loader must check the CPU features first
 *     + __ARM_FEATURE_MATMUL_INT8                  additionally smmla (i8mm) for row pairs
 *     (e.g. -march=armv8.2-a+dotprod+i8mm)         (prefill; M = 1 and an odd last row stay on
 *                                                  sdot); SIGILL on CPUs without i8mm (e.g.
 *                                                  Cortex-A76, Neoverse N1) at the first call
 *                                                  that runs a row pair through smmla
 *   __aarch64__ && __ARM_NEON, no dotprod          ARMv8.0 NEON (little-endian; e.g. -march=armv8-a,
 *     (Cortex-A53/A72: Raspberry Pi 3/4)           -mcpu=cortex-a72): smlal/smlal2 widening
 *                                                  multiplies into int16 sums widened (sadalp)
 *                                                  before they can overflow, rows in pairs; ternary
 *                                                  single rows (M = 1, an odd last row) by table
 *                                                  lookup (vld4q + tbl over per-row tables of k-pair
 *                                                  partial sums, built from xq; cached per thread)
 *   otherwise                                      portable scalar C (e.g. -march=armv8-a+nosimd)
 * All paths give bit-identical results (same integer dots, same fma order in float); the
 * activation quantizer too (vector loops on x86 and NEON builds, the same IEEE operations).
 * QL_EMULATE_X86 (tests only, with tests/c on the include path) builds the AVX-512 path on plain-C
 * emulations of its intrinsics; QL_EMULATE_AMX additionally forces its AMX path.
 *
 * Weight formats (logical q[k,n], stored code c, zero point zp):
 *   QC_QL_INT8     q in [-127,127], one group (G = K), scales [N]; stored as the signed byte q
 *   QC_QL_INT4     q in [-8,7], groups of G k, scales [K/G,N];   c = q+8, zp = 8
 *   QC_QL_UINT4    q in [0,15], groups of G k, scales and zero points [K/G,N]; c = q, zp = z[g,n]
 *   QC_QL_TERNARY  q in {-1,0,1}, one group (G = K), per-column scales [N]; c = q+1, zp = 1
 *
 * Packed layout: bits b = 8/4/4/2, v = 8/b codes per byte.  A chunk is 64 bytes = 16 columns
 * x 4v consecutive k: byte i = nl*4 + j holds in bits [f*b, f*b+b) the code of column
 * subtile*16 + nl at k = chunk*4v + f*4 + j.  A panel is T subtiles (T = 4 if N % 64 == 0, else 2
 * if N % 32 == 0, else 1) = columns [p*16T, (p+1)*16T); its bytes are
 *   for chunk c in K/(4v): for t in T: chunk c of subtile p*T + t      (64*T*K/(4v) bytes)
 * and the panels follow each other.  scales: float [N/16T][K/G][16T]; zero_points (uint4):
 * uint8, same shape; colsum (int8): int32 [N/16T][16T] = sum_k q[k,n].
 * Requirements: N % 16T == 0, K % 4v == 0, G % 4v == 0, K % G == 0.
 *
 * Activations (qc_quantize_rows): per row amax = max|x|, inv = 127/amax, xscale = amax/127
 * (both 0 if amax == 0), xq = rint(clamp(x*inv, -127, 127)) (nearest-even, NaN -> -127),
 * xsum[m][g] = sum of xq over group g.  xq is never -128, which the no-overflow arguments use.
 * qc_quantize_rows_static does the same with amax a constant (a calibrated clipping range, the
 * same for every row): values beyond +-amax saturate at +-127.
 *
 * Output: I = sum_{k in g} c*xq - zp*xsum (exact int32), acc = fma(s[g,n], (float)I, acc) over
 * g = 0, 1, ..., y = xscale[m] * acc.
 *
 * No pointer needs to be aligned (unaligned loads throughout), though 64-byte-aligned weights
 * and scales are faster.  No global state besides the AMX probe's once-per-process flag (atomic)
 * and, in ARMv8.0 NEON builds, a per-thread cache of the last ternary row's lookup tables (K*17
 * bytes on the heap, a pthread key: freed when the thread exits; reused only for the same K and
 * the same xq bytes): panels may run concurrently on several threads (tile state is per thread).
 */
#ifndef QC_QLINEAR_H_
#define QC_QLINEAR_H_

#include <stdint.h>

#define QC_QL_INT8 0
#define QC_QL_INT4 1
#define QC_QL_UINT4 2
#define QC_QL_TERNARY 3

#ifdef __cplusplus
extern "C" {
#endif

/* Loop indices (m0, m1, panel) are int32: TIR may narrow a parallel loop variable to int32, and
 * an int32 argument is read correctly by an int32 parameter whatever the ABI (an int64 parameter
 * on the stack would read an undefined upper half, as seen on AArch64).  Sizes stay int64. */

/* Rows [m0, m1) of x[., K] -> xq[., K], xscale[.], xsum[., K/group] (all indexed by the absolute
 * row).  Returns 0, or a negative value on bad arguments. */
int32_t qc_quantize_rows(const float* x, int8_t* xq, float* xscale, int32_t* xsum,
                         int32_t m0, int32_t m1, int64_t K, int64_t group);

/* Static activation scales: as qc_quantize_rows, but every row uses the given clipping range
 * amax instead of its own max|x| (inv = 127/amax, xscale = amax/127, the same float32 operations;
 * |x| > amax saturates at +-127, NaN -> -127).  amax must be positive and finite, with 127/amax
 * finite too (amax >= about 3.7e-37).  Returns 0, or a negative value on bad arguments. */
int32_t qc_quantize_rows_static(const float* x, int8_t* xq, float* xscale, int32_t* xsum,
                                int32_t m0, int32_t m1, int64_t K, int64_t group, float amax);

/* A file's static int8 activations (a QDQ model's QuantizeLinear output, int8 or uint8 with one
 * scale): rows [m0, m1) of x[., K] -> xq (uint8 u stored as u - 128, int8 as is; the caller
 * shifts the zero point to match), xscale = scale, xsum.  xq may be -128 here: the int8 and
 * 2-/4-bit paths take it (see qc_qlinear.c), the ternary table lookups do not.  Returns 0, or a
 * negative value on bad arguments (scale must be positive and finite). */
int32_t qc_file_rows(const void* x, int32_t is_uint8, int8_t* xq, float* xscale, int32_t* xsum, int32_t m0,
                     int32_t m1, int64_t K, int64_t group, float scale);

/* y[0:M, panel*16T : (panel+1)*16T] (row stride N) for one panel; w, scales, zero_points and
 * colsum are the whole packed tensors (the panel is located inside them).  zero_points is
 * required for uint4 and colsum for int8; both are ignored otherwise.  Returns 0, or a negative
 * value on bad arguments. */
int32_t qc_qlinear_panel(float* y, const uint8_t* w, const float* scales,
                         const uint8_t* zero_points, const int32_t* colsum,
                         const int8_t* xq, const float* xscale, const int32_t* xsum,
                         int64_t M, int64_t K, int64_t N, int64_t group, int32_t bits,
                         int32_t family, int32_t tiles, int32_t panel);

#ifdef __cplusplus
}
#endif

#endif /* QC_QLINEAR_H_ */
