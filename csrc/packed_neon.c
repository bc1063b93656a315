/* x8 kernels (layout: packed.c) for aarch64 NEON, installed by mg_cpu_init (cpu.c).
 *
 * An x8 vector of 32 bytes is two 128-bit registers here: rows 0-3 and rows 4-7, 4 bytes per row, so
 * every kernel keeps two int32x4 (and two float32x4) accumulators per input where x86 keeps one.
 *
 *   int8 inputs, dotprod   sdot by element (vdotq_laneq_s32): lane r += 4 weight bytes of row r . the
 *                          4 input bytes in lane l of a 16-byte input register; one instruction, signed
 *                          x signed, so q8_0 needs no bias. ARMv8.2 dotprod (Cortex-A55/A76 on, Apple,
 *                          Neoverse): built with a function-level target, called only if HWCAP says so.
 *   int8 inputs, baseline  ARMv8.0: smull/smlal (8 bytes x 8 bytes -> 8 int16 products) on the input's
 *                          4 bytes broadcast (ld1r), pairwise adds to int32 at the end. q4 and q5 sum a
 *                          block's 8 products per int16 lane (8 * 31 * 127 < 2^15); q8_0 sums 2
 *                          (2 * 128 * 127) before sadalp widens them into int32.
 *   int16 inputs           one variant (NEON has no int16 dot): ld4 de-interleaves 64 bytes of codes into
 *                          "element i of rows 0-7" registers, which widen to int16 and meet the input in
 *                          smlal by element, 4 products per instruction. The q16 input order (x0, x2,
 *                          x1, x3) only changes which lane holds x_i.
 *
 * Unlike packed_x86.h, q4_0 and q5_0 codes are made signed (q - 8, q - 16) before the dot, so they have
 * no bias term; q4_1 and q5_1 add m_w * s_x per block as x86 does (s_x = d_x * sum(q_x)). The q5 codes
 * are the nibbles with the fifth bit put in from the qh vector (packed.c): for code vector l, qh shifted
 * left by 4 - l (low nibbles) or right by l (high ones), per byte, masked to bit 4.
 *
 * The K-quants step per super-block and then per activation block j, as on x86: q4_k is q4_1 with
 * dw = d * sc_j and bias -(dmin * m_j); q6_k dots the signed codes q - 32 of each half block (16
 * inputs) apart, multiplies each half's int32 lanes by its int8 scale, and adds them (int8 inputs:
 * exact, |.| < 2^24) or applies them one after the other (int16 inputs). Baseline int16 sums: q4_k
 * 8 products of <= 15 * 127 per lane, q6_k 4 of <= 32 * 127 per half.
 *
 * Lane operands must be constants: the helpers below switch on the lane, and the loops around them
 * are unrolled so the switches fold away.
 */
#include <string.h>

#include "kernels.h"

#if defined(__aarch64__) && defined(__GNUC__)

#include <arm_neon.h>

#ifdef __clang__
#define DOTPROD __attribute__((target("dotprod")))
#else
#define DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 8")

#define CH(nt) ((nt) == 1 ? 4 : (nt) == 2 ? 2 : 1) /* accumulator pairs per input: independent chains */

/* q16 stores each group of 4 inputs as (x0, x2, x1, x3): x_i sits at position Q16_POS[i] */
static const int Q16_POS[4] = {0, 2, 1, 3};

/* --- helpers ------------------------------------------------------------------------------------- */

/* the 8 fp16 scales at p, as floats: rows 0-3, rows 4-7 */
INLINE void scales8(const uint8_t *p, float32x4_t s[2]) {
    const float16x8_t h = vreinterpretq_f16_u8(vld1q_u8(p));
    s[0] = vcvt_f32_f16(vget_low_f16(h));
    s[1] = vcvt_high_f32_f16(h);
}

/* sum[h] += (dw[h] * dx) * lanes[h] for both row halves */
INLINE void apply(float32x4_t sum[2], const float32x4_t dw[2], float dx, int32x4_t lo, int32x4_t hi) {
    sum[0] = vfmaq_f32(sum[0], vmulq_n_f32(dw[0], dx), vcvtq_f32_s32(lo));
    sum[1] = vfmaq_f32(sum[1], vmulq_n_f32(dw[1], dx), vcvtq_f32_s32(hi));
}

/* the fifth bits of q5 code vector l from qh bytes (packed.c), at bit 4: for its low nibbles or high ones */
INLINE uint8x16_t fifth(uint8x16_t qh, int l, int high) {
    return vandq_u8(vshlq_u8(qh, vdupq_n_s8((int8_t)(high ? -l : 4 - l))), vdupq_n_u8(0x10));
}

/* q5's fifth bits for the ld4 bytes of code vectors l and l + 1 (gemm_q4x8_16): qh_i is qh byte i of
 * rows 0-7, the same for both vectors */
INLINE uint8x16_t fifth_pair(uint8x8_t qh_i, int l, int high) {
    const uint8x16_t q = vcombine_u8(qh_i, qh_i);
    return vcombine_u8(vget_low_u8(fifth(q, l, high)), vget_high_u8(fifth(q, l + 1, high)));
}

/* the codes of 16 bytes, low or high nibbles, with q5's fifth bits h put in (if q5), as signed bytes
 * minus off (8 for q4_0, 16 for q5_0, 0 for q4_1 and q5_1) */
INLINE int8x16_t codes(uint8x16_t v, uint8x16_t h, int high, int8x16_t off, const int q5) {
    const uint8x16_t u = high ? vshrq_n_u8(v, 4) : vandq_u8(v, vdupq_n_u8(0x0F));
    return vsubq_s8(vreinterpretq_s8_u8(q5 ? vorrq_u8(u, h) : u), off);
}

/* 4-bit codes of 16 bytes, low or high nibbles, as signed bytes minus off (the K-quants' q4_k: 0) */
INLINE int8x16_t nibbles(uint8x16_t v, int high, int8x16_t off) {
    return codes(v, vdupq_n_u8(0), high, off, 0);
}

/* the 4 bytes at p, repeated over 16 bytes (one ld1r) */
INLINE int8x16_t bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

DOTPROD INLINE int32x4_t sdot_lane(int32x4_t acc, int8x16_t w, int8x16_t x, const int lane) {
    switch (lane) {
    case 0: return vdotq_laneq_s32(acc, w, x, 0);
    case 1: return vdotq_laneq_s32(acc, w, x, 1);
    case 2: return vdotq_laneq_s32(acc, w, x, 2);
    default: return vdotq_laneq_s32(acc, w, x, 3);
    }
}

/* acc[0] += low 4 of w * x[lane]; acc[1] += high 4 of w * x[lane] (int16 -> int32) */
INLINE void mlal_lane(int32x4_t acc[2], int16x8_t w, int16x8_t x, const int lane) {
    switch (lane) {
#define CASE(n)                                                                                         \
    case n:                                                                                             \
        acc[0] = vmlal_laneq_s16(acc[0], vget_low_s16(w), x, n);                                        \
        acc[1] = vmlal_high_laneq_s16(acc[1], w, x, n);                                                 \
        break;
        CASE(0) CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6)
#undef CASE
    default:
        acc[0] = vmlal_laneq_s16(acc[0], vget_low_s16(w), x, 7);
        acc[1] = vmlal_high_laneq_s16(acc[1], w, x, 7);
    }
}

/* acc[t][c][h] -> summed over c < ch into lanes[h] */
INLINE void total32(int32x4_t acc[][2], int ch, int32x4_t lanes[2]) {
    lanes[0] = acc[0][0];
    lanes[1] = acc[0][1];
    for (int c = 1; c < ch; c++) {
        lanes[0] = vaddq_s32(lanes[0], acc[c][0]);
        lanes[1] = vaddq_s32(lanes[1], acc[c][1]);
    }
}

INLINE void store8(float *out, const float32x4_t sum[2]) {
    vst1q_f32(out, sum[0]);
    vst1q_f32(out + 4, sum[1]);
}

/* --- int8 inputs, dotprod ----------------------------------------------------------------------- */

/* q4_0, q4_1, q5_0, q5_1 (has_m: an fp16 m per row; q5: a qh vector before the codes) */
DOTPROD INLINE void gemm_q4x8_dot(int64_t nb, const uint8_t *restrict w, const mg_block_q8 *restrict x,
                                  int64_t ldx, float *restrict out, int64_t ldo, const int nt,
                                  const int has_m, const int q5) {
    const int64_t hdr = has_m ? 32 : 16, cod = hdr + 32 * q5, gb = cod + 128;
    const int ch = CH(nt);
    const int8x16_t off = vdupq_n_s8(has_m ? 0 : q5 ? 16 : 8);
    float32x4_t sum[4][2];
    for (int t = 0; t < nt; t++) sum[t][0] = sum[t][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++, w += gb) {
        int32x4_t acc[4][4][2];
        int8x16_t xq[4][2];
        UNROLL for (int t = 0; t < nt; t++) {
            for (int c = 0; c < ch; c++) acc[t][c][0] = acc[t][c][1] = vdupq_n_s32(0);
            xq[t][0] = vld1q_s8(x[t * ldx + b].q);
            xq[t][1] = vld1q_s8(x[t * ldx + b].q + 16);
        }
        const uint8x16_t qh0 = vld1q_u8(w + hdr), qh1 = vld1q_u8(w + hdr + 16);   /* q5 only */
        UNROLL for (int l = 0; l < 4; l++) {
            const uint8x16_t v0 = vld1q_u8(w + cod + 32 * l), v1 = vld1q_u8(w + cod + 32 * l + 16);
            const int8x16_t lo0 = codes(v0, fifth(qh0, l, 0), 0, off, q5), hi0 = codes(v0, fifth(qh0, l, 1), 1, off, q5);
            const int8x16_t lo1 = codes(v1, fifth(qh1, l, 0), 0, off, q5), hi1 = codes(v1, fifth(qh1, l, 1), 1, off, q5);
            UNROLL for (int t = 0; t < nt; t++) {
                int32x4_t *a = acc[t][l % ch];
                a[0] = sdot_lane(sdot_lane(a[0], lo0, xq[t][0], l), hi0, xq[t][1], l);
                a[1] = sdot_lane(sdot_lane(a[1], lo1, xq[t][0], l), hi1, xq[t][1], l);
            }
        }
        float32x4_t dw[2], m[2];
        scales8(w, dw);
        if (has_m) scales8(w + 16, m);
        UNROLL for (int t = 0; t < nt; t++) {
            int32x4_t lanes[2];
            total32(acc[t], ch, lanes);
            apply(sum[t], dw, x[t * ldx + b].d, lanes[0], lanes[1]);
            if (has_m) {
                sum[t][0] = vfmaq_n_f32(sum[t][0], m[0], x[t * ldx + b].s);
                sum[t][1] = vfmaq_n_f32(sum[t][1], m[1], x[t * ldx + b].s);
            }
        }
    }
    for (int t = 0; t < nt; t++) store8(out + t * ldo, sum[t]);
}

DOTPROD INLINE void gemm_q8x8_dot(int64_t nb, const uint8_t *restrict w, const mg_block_q8 *restrict x,
                                  int64_t ldx, float *restrict out, int64_t ldo, const int nt) {
    const int ch = CH(nt);
    float32x4_t sum[4][2];
    for (int t = 0; t < nt; t++) sum[t][0] = sum[t][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++, w += 272) {
        int32x4_t acc[4][4][2];
        int8x16_t xq[4][2];
        UNROLL for (int t = 0; t < nt; t++) {
            for (int c = 0; c < ch; c++) acc[t][c][0] = acc[t][c][1] = vdupq_n_s32(0);
            xq[t][0] = vld1q_s8(x[t * ldx + b].q);
            xq[t][1] = vld1q_s8(x[t * ldx + b].q + 16);
        }
        UNROLL for (int v = 0; v < 8; v++) {
            const int8_t *wrow = (const int8_t *)w + 16 + 32 * v;
            const int8x16_t w0 = vld1q_s8(wrow), w1 = vld1q_s8(wrow + 16);
            UNROLL for (int t = 0; t < nt; t++) {
                int32x4_t *a = acc[t][v % ch];
                a[0] = sdot_lane(a[0], w0, xq[t][v / 4], v % 4);
                a[1] = sdot_lane(a[1], w1, xq[t][v / 4], v % 4);
            }
        }
        float32x4_t dw[2];
        scales8(w, dw);
        UNROLL for (int t = 0; t < nt; t++) {
            int32x4_t lanes[2];
            total32(acc[t], ch, lanes);
            apply(sum[t], dw, x[t * ldx + b].d, lanes[0], lanes[1]);
        }
    }
    for (int t = 0; t < nt; t++) store8(out + t * ldo, sum[t]);
}

/* --- int8 inputs, baseline ARMv8.0 ---------------------------------------------------------------- */

/* p[q] (int16x8, rows 2q and 2q + 1, 4 columns each) += w's 8 bytes of those rows * x's 8 bytes */
INLINE void mlal8(int16x8_t p[4], int8x16_t w0, int8x16_t w1, int8x16_t x) {
    p[0] = vmlal_s8(p[0], vget_low_s8(w0), vget_low_s8(x));
    p[1] = vmlal_high_s8(p[1], w0, x);
    p[2] = vmlal_s8(p[2], vget_low_s8(w1), vget_low_s8(x));
    p[3] = vmlal_high_s8(p[3], w1, x);
}

INLINE void gemm_q4x8_neon(int64_t nb, const uint8_t *restrict w, const mg_block_q8 *restrict x,
                           int64_t ldx, float *restrict out, int64_t ldo, const int nt, const int has_m,
                           const int q5) {
    const int64_t hdr = has_m ? 32 : 16, cod = hdr + 32 * q5, gb = cod + 128;
    const int8x16_t off = vdupq_n_s8(has_m ? 0 : q5 ? 16 : 8);
    float32x4_t sum[4][2];
    for (int t = 0; t < nt; t++) sum[t][0] = sum[t][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++, w += gb) {
        int16x8_t p[4][4]; /* per input: 8 products of one (row, column) pair at most, |.| <= 8 * 31 * 127 */
        for (int t = 0; t < nt; t++) p[t][0] = p[t][1] = p[t][2] = p[t][3] = vdupq_n_s16(0);
        const uint8x16_t qh0 = vld1q_u8(w + hdr), qh1 = vld1q_u8(w + hdr + 16);   /* q5 only */
        UNROLL for (int l = 0; l < 4; l++) {
            const uint8x16_t v0 = vld1q_u8(w + cod + 32 * l), v1 = vld1q_u8(w + cod + 32 * l + 16);
            const int8x16_t lo0 = codes(v0, fifth(qh0, l, 0), 0, off, q5), hi0 = codes(v0, fifth(qh0, l, 1), 1, off, q5);
            const int8x16_t lo1 = codes(v1, fifth(qh1, l, 0), 0, off, q5), hi1 = codes(v1, fifth(qh1, l, 1), 1, off, q5);
            UNROLL for (int t = 0; t < nt; t++) {
                mlal8(p[t], lo0, lo1, bcast4(x[t * ldx + b].q + 4 * l));
                mlal8(p[t], hi0, hi1, bcast4(x[t * ldx + b].q + 16 + 4 * l));
            }
        }
        float32x4_t dw[2], m[2];
        scales8(w, dw);
        if (has_m) scales8(w + 16, m);
        UNROLL for (int t = 0; t < nt; t++) {
            const int32x4_t lo = vpaddq_s32(vpaddlq_s16(p[t][0]), vpaddlq_s16(p[t][1]));
            const int32x4_t hi = vpaddq_s32(vpaddlq_s16(p[t][2]), vpaddlq_s16(p[t][3]));
            apply(sum[t], dw, x[t * ldx + b].d, lo, hi);
            if (has_m) {
                sum[t][0] = vfmaq_n_f32(sum[t][0], m[0], x[t * ldx + b].s);
                sum[t][1] = vfmaq_n_f32(sum[t][1], m[1], x[t * ldx + b].s);
            }
        }
    }
    for (int t = 0; t < nt; t++) store8(out + t * ldo, sum[t]);
}

INLINE void gemm_q8x8_neon(int64_t nb, const uint8_t *restrict w, const mg_block_q8 *restrict x,
                           int64_t ldx, float *restrict out, int64_t ldo, const int nt) {
    float32x4_t sum[4][2];
    for (int t = 0; t < nt; t++) sum[t][0] = sum[t][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++, w += 272) {
        int32x4_t acc[4][4]; /* per input: rows 0-1, 2-3, 4-5, 6-7, two partial sums per row */
        for (int t = 0; t < nt; t++) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = vdupq_n_s32(0);
        UNROLL for (int v = 0; v < 8; v += 2) { /* two vectors' products per int16: |.| <= 2 * 128 * 127 */
            const int8_t *wrow = (const int8_t *)w + 16 + 32 * v;
            const int8x16_t a0 = vld1q_s8(wrow), a1 = vld1q_s8(wrow + 16), b0 = vld1q_s8(wrow + 32), b1 = vld1q_s8(wrow + 48);
            UNROLL for (int t = 0; t < nt; t++) {
                const int8x16_t xa = bcast4(x[t * ldx + b].q + 4 * v), xb = bcast4(x[t * ldx + b].q + 4 * v + 4);
                int16x8_t p[4] = {vmull_s8(vget_low_s8(a0), vget_low_s8(xa)), vmull_high_s8(a0, xa),
                                  vmull_s8(vget_low_s8(a1), vget_low_s8(xa)), vmull_high_s8(a1, xa)};
                mlal8(p, b0, b1, xb);
                for (int q = 0; q < 4; q++) acc[t][q] = vpadalq_s16(acc[t][q], p[q]);
            }
        }
        float32x4_t dw[2];
        scales8(w, dw);
        UNROLL for (int t = 0; t < nt; t++)
            apply(sum[t], dw, x[t * ldx + b].d, vpaddq_s32(acc[t][0], acc[t][1]), vpaddq_s32(acc[t][2], acc[t][3]));
    }
    for (int t = 0; t < nt; t++) store8(out + t * ldo, sum[t]);
}

/* --- int16 inputs ---------------------------------------------------------------------------------- */

/* acc[t] += e[k][i] (element i of rows 0-7 in vector k of a pair) * input t's x, for the pair's two
 * groups of 4 inputs at xs + 4 * k */
INLINE void q16_pair(int32x4_t acc[4][4][2], int ch, const int16x8_t e[2][4], const mg_block_q16 *restrict x,
                     int64_t ldx, int64_t b, int xoff, const int nt) {
    UNROLL for (int t = 0; t < nt; t++) {
        const int16x8_t xv = vld1q_s16(x[t * ldx + b].q + xoff);
        UNROLL for (int k = 0; k < 2; k++)
            UNROLL for (int i = 0; i < 4; i++) mlal_lane(acc[t][(4 * k + i) % ch], e[k][i], xv, 4 * k + Q16_POS[i]);
    }
}

/* e[k][i] = the int8 codes d[i] of vectors k = 0, 1 (ld4 order), widened */
INLINE void widen_pair(const int8x16_t d[4], int16x8_t e[2][4]) {
    for (int i = 0; i < 4; i++) {
        e[0][i] = vmovl_s8(vget_low_s8(d[i]));
        e[1][i] = vmovl_high_s8(d[i]);
    }
}

/* the int32 lanes of each input -> sum (plus m_w * s_x for q4_1, q5_1) */
INLINE void q16_apply(float32x4_t sum[4][2], int32x4_t acc[4][4][2], int ch, const uint8_t *w,
                      const mg_block_q16 *restrict x, int64_t ldx, int64_t b, const int nt, const int has_m) {
    float32x4_t dw[2], m[2];
    scales8(w, dw);
    if (has_m) scales8(w + 16, m);
    UNROLL for (int t = 0; t < nt; t++) {
        int32x4_t lanes[2];
        total32(acc[t], ch, lanes);
        apply(sum[t], dw, x[t * ldx + b].d, lanes[0], lanes[1]);
        if (has_m) {
            sum[t][0] = vfmaq_n_f32(sum[t][0], m[0], x[t * ldx + b].s);
            sum[t][1] = vfmaq_n_f32(sum[t][1], m[1], x[t * ldx + b].s);
        }
    }
}

/* ld4 on vectors l, l + 1: d[i] = byte i of rows 0-7 of vector l, then of vector l + 1; low nibbles are
 * elements 4l + i (inputs 4l..), high nibbles 16 + 4l + i (inputs 16 + 4l..). q5: ld4 on the qh vector
 * gives byte i of rows 0-7, whose fifth bits for vectors l and l + 1 are the two halves of h[i]. */
INLINE void gemm_q4x8_16(int64_t nb, const uint8_t *restrict w, const mg_block_q16 *restrict x, int64_t ldx,
                         float *restrict out, int64_t ldo, const int nt, const int has_m, const int q5) {
    const int64_t hdr = has_m ? 32 : 16, cod = hdr + 32 * q5, gb = cod + 128;
    const int ch = CH(nt);
    const int8x16_t off = vdupq_n_s8(has_m ? 0 : q5 ? 16 : 8);
    float32x4_t sum[4][2];
    for (int t = 0; t < nt; t++) sum[t][0] = sum[t][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++, w += gb) {
        int32x4_t acc[4][4][2];
        for (int t = 0; t < nt; t++)
            for (int c = 0; c < ch; c++) acc[t][c][0] = acc[t][c][1] = vdupq_n_s32(0);
        const uint8x8x4_t qh = vld4_u8(w + hdr);   /* q5 only */
        UNROLL for (int l = 0; l < 4; l += 2) {
            const uint8x16x4_t d = vld4q_u8(w + cod + 32 * l);
            UNROLL for (int high = 0; high < 2; high++) {
                int8x16_t c[4];
                int16x8_t e[2][4];
                for (int i = 0; i < 4; i++) c[i] = codes(d.val[i], fifth_pair(qh.val[i], l, high), high, off, q5);
                widen_pair(c, e);
                q16_pair(acc, ch, e, x, ldx, b, 16 * high + 4 * l, nt);
            }
        }
        q16_apply(sum, acc, ch, w, x, ldx, b, nt, has_m);
    }
    for (int t = 0; t < nt; t++) store8(out + t * ldo, sum[t]);
}

INLINE void gemm_q8x8_16(int64_t nb, const uint8_t *restrict w, const mg_block_q16 *restrict x, int64_t ldx,
                         float *restrict out, int64_t ldo, const int nt) {
    const int ch = CH(nt);
    float32x4_t sum[4][2];
    for (int t = 0; t < nt; t++) sum[t][0] = sum[t][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++, w += 272) {
        int32x4_t acc[4][4][2];
        for (int t = 0; t < nt; t++)
            for (int c = 0; c < ch; c++) acc[t][c][0] = acc[t][c][1] = vdupq_n_s32(0);
        UNROLL for (int v = 0; v < 8; v += 2) {
            const int8x16x4_t d = vld4q_s8((const int8_t *)w + 16 + 32 * v);
            int16x8_t e[2][4];
            widen_pair(d.val, e);
            q16_pair(acc, ch, e, x, ldx, b, 4 * v, nt);
        }
        q16_apply(sum, acc, ch, w, x, ldx, b, nt, 0);
    }
    for (int t = 0; t < nt; t++) store8(out + t * ldo, sum[t]);
}

/* --- K-quants (layouts: packed.c) ---------------------------------------------------------------- */

/* 8 unsigned bytes at p (one per row) as floats: rows 0-3, rows 4-7 */
INLINE void u8x8_f32(const uint8_t *p, float32x4_t f[2]) {
    const uint16x8_t h = vmovl_u8(vld1_u8(p));
    f[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(h)));
    f[1] = vcvtq_f32_u32(vmovl_high_u16(h));
}

/* 8 int8 scales at p (one per row) as int32: rows 0-3, rows 4-7 */
INLINE void i8x8_s32(const uint8_t *p, int32x4_t s[2]) {
    const int16x8_t h = vmovl_s8(vld1_s8((const int8_t *)p));
    s[0] = vmovl_s16(vget_low_s16(h));
    s[1] = vmovl_high_s16(h);
}

/* q4_kx8, sub-block j: dw = d * sc_j and bias = -(dmin * m_j), rows 0-3 and 4-7 */
INLINE void q4k_scales(const uint8_t *w, int j, float32x4_t dw[2], float32x4_t bias[2]) {
    float32x4_t d[2], dmin[2], sc[2], m[2];
    scales8(w, d);
    scales8(w + 16, dmin);
    u8x8_f32(w + 32 + 8 * j, sc);
    u8x8_f32(w + 96 + 8 * j, m);
    for (int h = 0; h < 2; h++) {
        dw[h] = vmulq_f32(d[h], sc[h]);
        bias[h] = vnegq_f32(vmulq_f32(dmin[h], m[h]));
    }
}

/* q6_k signed codes q - 32 of activation block j = 4h + k from ql bytes l and qh bytes hb */
INLINE int8x16_t q6k_signed(uint8x16_t l, uint8x16_t hb, int k) {
    const uint8x16_t lo = k / 2 ? vshrq_n_u8(l, 4) : vandq_u8(l, vdupq_n_u8(0x0F));
    const uint8x16_t hi = vshlq_n_u8(vandq_u8(vshlq_u8(hb, vdupq_n_s8((int8_t)(-2 * k))), vdupq_n_u8(3)), 4);
    return vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, hi)), vdupq_n_s8(32));
}

/* where block j's ql and qh vectors start in a q6_kx8 block */
INLINE const uint8_t *q6k_ql(const uint8_t *w, int j) { return w + 144 + 512 * (j / 4) + 256 * (j % 4 % 2); }
INLINE const uint8_t *q6k_qh(const uint8_t *w, int j) { return w + 1168 + 256 * (j / 4); }

/* vector v of block j's signed codes: rows 0-3, rows 4-7 */
INLINE void q6k_codes(const uint8_t *w, int j, int v, int8x16_t c[2]) {
    const uint8_t *ql = q6k_ql(w, j) + 32 * v, *qh = q6k_qh(w, j) + 32 * v;
    c[0] = q6k_signed(vld1q_u8(ql), vld1q_u8(qh), j % 4);
    c[1] = q6k_signed(vld1q_u8(ql + 16), vld1q_u8(qh + 16), j % 4);
}

/* lanes[h] = a[h] * sa[h] + b[h] * sb[h]: a q6_k block's two halves, each times its scales */
INLINE void q6k_lanes(const int32x4_t a[2], const int32x4_t b[2], const int32x4_t sa[2], const int32x4_t sb[2],
                      int32x4_t lanes[2]) {
    for (int h = 0; h < 2; h++) lanes[h] = vmlaq_s32(vmulq_s32(a[h], sa[h]), b[h], sb[h]);
}

DOTPROD INLINE void gemm_q4kx8_dot(int64_t nb, const uint8_t *restrict w, const mg_block_q8 *restrict x,
                                   int64_t ldx, float *restrict out, int64_t ldo, const int nt) {
    const int ch = CH(nt);
    const int8x16_t zero = vdupq_n_s8(0);
    float32x4_t sum[4][2];
    for (int t = 0; t < nt; t++) sum[t][0] = sum[t][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++, w += 1184) {
        const mg_block_q8 *restrict xs = x + 8 * b;
        for (int j = 0; j < 8; j++) {
            const uint8_t *qs = w + 160 + 256 * (j / 2);
            int32x4_t acc[4][4][2];
            int8x16_t xq[4][2];
            UNROLL for (int t = 0; t < nt; t++) {
                for (int c = 0; c < ch; c++) acc[t][c][0] = acc[t][c][1] = vdupq_n_s32(0);
                xq[t][0] = vld1q_s8(xs[t * ldx + j].q);
                xq[t][1] = vld1q_s8(xs[t * ldx + j].q + 16);
            }
            UNROLL for (int v = 0; v < 8; v++) {
                const int8x16_t c0 = nibbles(vld1q_u8(qs + 32 * v), j % 2, zero);
                const int8x16_t c1 = nibbles(vld1q_u8(qs + 32 * v + 16), j % 2, zero);
                UNROLL for (int t = 0; t < nt; t++) {
                    int32x4_t *a = acc[t][v % ch];
                    a[0] = sdot_lane(a[0], c0, xq[t][v / 4], v % 4);
                    a[1] = sdot_lane(a[1], c1, xq[t][v / 4], v % 4);
                }
            }
            float32x4_t dw[2], bias[2];
            q4k_scales(w, j, dw, bias);
            UNROLL for (int t = 0; t < nt; t++) {
                int32x4_t lanes[2];
                total32(acc[t], ch, lanes);
                apply(sum[t], dw, xs[t * ldx + j].d, lanes[0], lanes[1]);
                sum[t][0] = vfmaq_n_f32(sum[t][0], bias[0], xs[t * ldx + j].s);
                sum[t][1] = vfmaq_n_f32(sum[t][1], bias[1], xs[t * ldx + j].s);
            }
        }
    }
    for (int t = 0; t < nt; t++) store8(out + t * ldo, sum[t]);
}

DOTPROD INLINE void gemm_q6kx8_dot(int64_t nb, const uint8_t *restrict w, const mg_block_q8 *restrict x,
                                   int64_t ldx, float *restrict out, int64_t ldo, const int nt) {
    float32x4_t sum[4][2];
    for (int t = 0; t < nt; t++) sum[t][0] = sum[t][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++, w += 1680) {
        const mg_block_q8 *restrict xs = x + 8 * b;
        float32x4_t dw[2];
        scales8(w, dw);
        for (int j = 0; j < 8; j++) {
            int32x4_t acc[4][2][2]; /* [input][half][rows 0-3, 4-7] */
            int8x16_t xq[4][2];
            UNROLL for (int t = 0; t < nt; t++) {
                acc[t][0][0] = acc[t][0][1] = acc[t][1][0] = acc[t][1][1] = vdupq_n_s32(0);
                xq[t][0] = vld1q_s8(xs[t * ldx + j].q);
                xq[t][1] = vld1q_s8(xs[t * ldx + j].q + 16);
            }
            UNROLL for (int v = 0; v < 8; v++) {
                int8x16_t c[2];
                q6k_codes(w, j, v, c);
                UNROLL for (int t = 0; t < nt; t++) {
                    int32x4_t *a = acc[t][v / 4];
                    a[0] = sdot_lane(a[0], c[0], xq[t][v / 4], v % 4);
                    a[1] = sdot_lane(a[1], c[1], xq[t][v / 4], v % 4);
                }
            }
            int32x4_t sa[2], sb[2];
            i8x8_s32(w + 16 + 16 * j, sa);
            i8x8_s32(w + 24 + 16 * j, sb);
            UNROLL for (int t = 0; t < nt; t++) {
                int32x4_t lanes[2];
                q6k_lanes(acc[t][0], acc[t][1], sa, sb, lanes);
                apply(sum[t], dw, xs[t * ldx + j].d, lanes[0], lanes[1]);
            }
        }
    }
    for (int t = 0; t < nt; t++) store8(out + t * ldo, sum[t]);
}

/* baseline: p[q] int16 sums (mlal8) -> int32 lanes of rows 0-3 and 4-7 */
INLINE void widen_rows(const int16x8_t p[4], int32x4_t lanes[2]) {
    lanes[0] = vpaddq_s32(vpaddlq_s16(p[0]), vpaddlq_s16(p[1]));
    lanes[1] = vpaddq_s32(vpaddlq_s16(p[2]), vpaddlq_s16(p[3]));
}

INLINE void gemm_q4kx8_neon(int64_t nb, const uint8_t *restrict w, const mg_block_q8 *restrict x,
                            int64_t ldx, float *restrict out, int64_t ldo, const int nt) {
    const int8x16_t zero = vdupq_n_s8(0);
    float32x4_t sum[4][2];
    for (int t = 0; t < nt; t++) sum[t][0] = sum[t][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++, w += 1184) {
        const mg_block_q8 *restrict xs = x + 8 * b;
        for (int j = 0; j < 8; j++) {
            const uint8_t *qs = w + 160 + 256 * (j / 2);
            int16x8_t p[4][4];
            for (int t = 0; t < nt; t++) p[t][0] = p[t][1] = p[t][2] = p[t][3] = vdupq_n_s16(0);
            UNROLL for (int v = 0; v < 8; v++) {
                const int8x16_t c0 = nibbles(vld1q_u8(qs + 32 * v), j % 2, zero);
                const int8x16_t c1 = nibbles(vld1q_u8(qs + 32 * v + 16), j % 2, zero);
                UNROLL for (int t = 0; t < nt; t++) mlal8(p[t], c0, c1, bcast4(xs[t * ldx + j].q + 4 * v));
            }
            float32x4_t dw[2], bias[2];
            q4k_scales(w, j, dw, bias);
            UNROLL for (int t = 0; t < nt; t++) {
                int32x4_t lanes[2];
                widen_rows(p[t], lanes);
                apply(sum[t], dw, xs[t * ldx + j].d, lanes[0], lanes[1]);
                sum[t][0] = vfmaq_n_f32(sum[t][0], bias[0], xs[t * ldx + j].s);
                sum[t][1] = vfmaq_n_f32(sum[t][1], bias[1], xs[t * ldx + j].s);
            }
        }
    }
    for (int t = 0; t < nt; t++) store8(out + t * ldo, sum[t]);
}

INLINE void gemm_q6kx8_neon(int64_t nb, const uint8_t *restrict w, const mg_block_q8 *restrict x,
                            int64_t ldx, float *restrict out, int64_t ldo, const int nt) {
    float32x4_t sum[4][2];
    for (int t = 0; t < nt; t++) sum[t][0] = sum[t][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++, w += 1680) {
        const mg_block_q8 *restrict xs = x + 8 * b;
        float32x4_t dw[2];
        scales8(w, dw);
        for (int j = 0; j < 8; j++) {
            int32x4_t half[4][2][2]; /* [input][half][rows 0-3, 4-7] */
            UNROLL for (int hv = 0; hv < 2; hv++) {
                int16x8_t p[4][4];
                for (int t = 0; t < nt; t++) p[t][0] = p[t][1] = p[t][2] = p[t][3] = vdupq_n_s16(0);
                UNROLL for (int v = 4 * hv; v < 4 * hv + 4; v++) {
                    int8x16_t c[2];
                    q6k_codes(w, j, v, c);
                    UNROLL for (int t = 0; t < nt; t++) mlal8(p[t], c[0], c[1], bcast4(xs[t * ldx + j].q + 4 * v));
                }
                for (int t = 0; t < nt; t++) widen_rows(p[t], half[t][hv]);
            }
            int32x4_t sa[2], sb[2];
            i8x8_s32(w + 16 + 16 * j, sa);
            i8x8_s32(w + 24 + 16 * j, sb);
            UNROLL for (int t = 0; t < nt; t++) {
                int32x4_t lanes[2];
                q6k_lanes(half[t][0], half[t][1], sa, sb, lanes);
                apply(sum[t], dw, xs[t * ldx + j].d, lanes[0], lanes[1]);
            }
        }
    }
    for (int t = 0; t < nt; t++) store8(out + t * ldo, sum[t]);
}

/* int16 inputs: ld4 on vectors v, v + 1 of a sub-block (q4_k) or half block (q6_k), as gemm_q4x8_16 */
INLINE void gemm_q4kx8_16(int64_t nb, const uint8_t *restrict w, const mg_block_q16 *restrict x, int64_t ldx,
                          float *restrict out, int64_t ldo, const int nt) {
    const int ch = CH(nt);
    const int8x16_t zero = vdupq_n_s8(0);
    float32x4_t sum[4][2];
    for (int t = 0; t < nt; t++) sum[t][0] = sum[t][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++, w += 1184) {
        const mg_block_q16 *restrict xs = x + 8 * b;
        for (int j = 0; j < 8; j++) {
            const uint8_t *qs = w + 160 + 256 * (j / 2);
            int32x4_t acc[4][4][2];
            for (int t = 0; t < nt; t++)
                for (int c = 0; c < ch; c++) acc[t][c][0] = acc[t][c][1] = vdupq_n_s32(0);
            UNROLL for (int v = 0; v < 8; v += 2) {
                const uint8x16x4_t d = vld4q_u8(qs + 32 * v);
                int8x16_t c[4];
                int16x8_t e[2][4];
                for (int i = 0; i < 4; i++) c[i] = nibbles(d.val[i], j % 2, zero);
                widen_pair(c, e);
                q16_pair(acc, ch, e, xs, ldx, j, 4 * v, nt);
            }
            float32x4_t dw[2], bias[2];
            q4k_scales(w, j, dw, bias);
            UNROLL for (int t = 0; t < nt; t++) {
                int32x4_t lanes[2];
                total32(acc[t], ch, lanes);
                apply(sum[t], dw, xs[t * ldx + j].d, lanes[0], lanes[1]);
                sum[t][0] = vfmaq_n_f32(sum[t][0], bias[0], xs[t * ldx + j].s);
                sum[t][1] = vfmaq_n_f32(sum[t][1], bias[1], xs[t * ldx + j].s);
            }
        }
    }
    for (int t = 0; t < nt; t++) store8(out + t * ldo, sum[t]);
}

INLINE void gemm_q6kx8_16(int64_t nb, const uint8_t *restrict w, const mg_block_q16 *restrict x, int64_t ldx,
                          float *restrict out, int64_t ldo, const int nt) {
    const int ch = CH(nt);
    float32x4_t sum[4][2];
    for (int t = 0; t < nt; t++) sum[t][0] = sum[t][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++, w += 1680) {
        const mg_block_q16 *restrict xs = x + 8 * b;
        float32x4_t dw[2];
        scales8(w, dw);
        for (int j = 0; j < 8; j++) {
            int32x4_t sc[2][2];
            i8x8_s32(w + 16 + 16 * j, sc[0]);
            i8x8_s32(w + 24 + 16 * j, sc[1]);
            UNROLL for (int hv = 0; hv < 2; hv++) {
                int32x4_t acc[4][4][2];
                for (int t = 0; t < nt; t++)
                    for (int c = 0; c < ch; c++) acc[t][c][0] = acc[t][c][1] = vdupq_n_s32(0);
                UNROLL for (int v = 4 * hv; v < 4 * hv + 4; v += 2) {
                    const uint8x16x4_t l = vld4q_u8(q6k_ql(w, j) + 32 * v), h = vld4q_u8(q6k_qh(w, j) + 32 * v);
                    int8x16_t c[4];
                    int16x8_t e[2][4];
                    for (int i = 0; i < 4; i++) c[i] = q6k_signed(l.val[i], h.val[i], j % 4);
                    widen_pair(c, e);
                    q16_pair(acc, ch, e, xs, ldx, j, 4 * v, nt);
                }
                UNROLL for (int t = 0; t < nt; t++) {
                    int32x4_t lanes[2];
                    total32(acc[t], ch, lanes);
                    apply(sum[t], dw, xs[t * ldx + j].d, vmulq_s32(lanes[0], sc[hv][0]), vmulq_s32(lanes[1], sc[hv][1]));
                }
            }
        }
    }
    for (int t = 0; t < nt; t++) store8(out + t * ldo, sum[t]);
}

/* --- slot functions: nt dispatched to constant-count copies, so the accumulators live in registers - */

#define X8_ENTRY(attr, fn, block, body)                                                                 \
    attr static void fn(int64_t nb, const uint8_t *restrict w, const block *restrict x, int64_t ldx,     \
                        int nt, float *restrict out, int64_t ldo) {                                     \
        switch (nt) {                                                                                   \
        case 1: body(1); break;                                                                         \
        case 2: body(2); break;                                                                         \
        case 3: body(3); break;                                                                         \
        default: body(4); break;                                                                        \
        }                                                                                               \
    }
#define Q4_0_DOT(n) gemm_q4x8_dot(nb, w, x, ldx, out, ldo, n, 0, 0)
#define Q4_1_DOT(n) gemm_q4x8_dot(nb, w, x, ldx, out, ldo, n, 1, 0)
#define Q5_0_DOT(n) gemm_q4x8_dot(nb, w, x, ldx, out, ldo, n, 0, 1)
#define Q5_1_DOT(n) gemm_q4x8_dot(nb, w, x, ldx, out, ldo, n, 1, 1)
#define Q8_0_DOT(n) gemm_q8x8_dot(nb, w, x, ldx, out, ldo, n)
#define Q4_0_NEON(n) gemm_q4x8_neon(nb, w, x, ldx, out, ldo, n, 0, 0)
#define Q4_1_NEON(n) gemm_q4x8_neon(nb, w, x, ldx, out, ldo, n, 1, 0)
#define Q5_0_NEON(n) gemm_q4x8_neon(nb, w, x, ldx, out, ldo, n, 0, 1)
#define Q5_1_NEON(n) gemm_q4x8_neon(nb, w, x, ldx, out, ldo, n, 1, 1)
#define Q8_0_NEON(n) gemm_q8x8_neon(nb, w, x, ldx, out, ldo, n)
#define Q4_0_16(n) gemm_q4x8_16(nb, w, x, ldx, out, ldo, n, 0, 0)
#define Q4_1_16(n) gemm_q4x8_16(nb, w, x, ldx, out, ldo, n, 1, 0)
#define Q5_0_16(n) gemm_q4x8_16(nb, w, x, ldx, out, ldo, n, 0, 1)
#define Q5_1_16(n) gemm_q4x8_16(nb, w, x, ldx, out, ldo, n, 1, 1)
#define Q8_0_16(n) gemm_q8x8_16(nb, w, x, ldx, out, ldo, n)
X8_ENTRY(DOTPROD, x8_q4_0_dot, mg_block_q8, Q4_0_DOT)
X8_ENTRY(DOTPROD, x8_q4_1_dot, mg_block_q8, Q4_1_DOT)
X8_ENTRY(DOTPROD, x8_q5_0_dot, mg_block_q8, Q5_0_DOT)
X8_ENTRY(DOTPROD, x8_q5_1_dot, mg_block_q8, Q5_1_DOT)
X8_ENTRY(DOTPROD, x8_q8_0_dot, mg_block_q8, Q8_0_DOT)
X8_ENTRY(, x8_q4_0_neon, mg_block_q8, Q4_0_NEON)
X8_ENTRY(, x8_q4_1_neon, mg_block_q8, Q4_1_NEON)
X8_ENTRY(, x8_q5_0_neon, mg_block_q8, Q5_0_NEON)
X8_ENTRY(, x8_q5_1_neon, mg_block_q8, Q5_1_NEON)
X8_ENTRY(, x8_q8_0_neon, mg_block_q8, Q8_0_NEON)
X8_ENTRY(, x8_16_q4_0, mg_block_q16, Q4_0_16)
X8_ENTRY(, x8_16_q4_1, mg_block_q16, Q4_1_16)
X8_ENTRY(, x8_16_q5_0, mg_block_q16, Q5_0_16)
X8_ENTRY(, x8_16_q5_1, mg_block_q16, Q5_1_16)
X8_ENTRY(, x8_16_q8_0, mg_block_q16, Q8_0_16)
#define Q4_K_DOT(n) gemm_q4kx8_dot(nb, w, x, ldx, out, ldo, n)
#define Q6_K_DOT(n) gemm_q6kx8_dot(nb, w, x, ldx, out, ldo, n)
#define Q4_K_NEON(n) gemm_q4kx8_neon(nb, w, x, ldx, out, ldo, n)
#define Q6_K_NEON(n) gemm_q6kx8_neon(nb, w, x, ldx, out, ldo, n)
#define Q4_K_16(n) gemm_q4kx8_16(nb, w, x, ldx, out, ldo, n)
#define Q6_K_16(n) gemm_q6kx8_16(nb, w, x, ldx, out, ldo, n)
X8_ENTRY(DOTPROD, x8_q4_k_dot, mg_block_q8, Q4_K_DOT)
X8_ENTRY(DOTPROD, x8_q6_k_dot, mg_block_q8, Q6_K_DOT)
X8_ENTRY(, x8_q4_k_neon, mg_block_q8, Q4_K_NEON)
X8_ENTRY(, x8_q6_k_neon, mg_block_q8, Q6_K_NEON)
X8_ENTRY(, x8_16_q4_k, mg_block_q16, Q4_K_16)
X8_ENTRY(, x8_16_q6_k, mg_block_q16, Q6_K_16)

int mg_install_x8_neon(int dotprod) {
    mg_gemm_x8[MG_Q4_0] = dotprod ? x8_q4_0_dot : x8_q4_0_neon;
    mg_gemm_x8[MG_Q4_1] = dotprod ? x8_q4_1_dot : x8_q4_1_neon;
    mg_gemm_x8[MG_Q5_0] = dotprod ? x8_q5_0_dot : x8_q5_0_neon;
    mg_gemm_x8[MG_Q5_1] = dotprod ? x8_q5_1_dot : x8_q5_1_neon;
    mg_gemm_x8[MG_Q8_0] = dotprod ? x8_q8_0_dot : x8_q8_0_neon;
    mg_gemm_x8_16[MG_Q4_0] = x8_16_q4_0;
    mg_gemm_x8_16[MG_Q4_1] = x8_16_q4_1;
    mg_gemm_x8_16[MG_Q5_0] = x8_16_q5_0;
    mg_gemm_x8_16[MG_Q5_1] = x8_16_q5_1;
    mg_gemm_x8_16[MG_Q8_0] = x8_16_q8_0;
    mg_gemm_x8[MG_Q4_K] = dotprod ? x8_q4_k_dot : x8_q4_k_neon;
    mg_gemm_x8[MG_Q6_K] = dotprod ? x8_q6_k_dot : x8_q6_k_neon;
    mg_gemm_x8_16[MG_Q4_K] = x8_16_q4_k;
    mg_gemm_x8_16[MG_Q6_K] = x8_16_q6_k;
    return 1;
}

#else

int mg_install_x8_neon(int dotprod) {
    (void)dotprod;
    return 0;
}

#endif
