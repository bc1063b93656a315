/* Per-type kernels, portable C99: dequantize a row, dot a stored row with a float vector (or q8 blocks).
 *
 * Written for the auto-vectorizer: fixed-trip inner loops over the 16 byte pairs of a block, and
 * sums kept in 16 independent lanes (acc[16]) so no reassociation (-ffast-math) is needed to use
 * SIMD registers. The lanes are added up once at the end of the row.
 */
#include <float.h>
#include <math.h>

#include "kernels.h"

#define LANES 16

/* A plain loop on purpose: a tree of array sums here makes GCC vectorize the block loops across
 * blocks (gathers) instead of within a block, at half the speed. */
static float sum_lanes(const float *acc) {
    float s = 0.0f;
    for (int j = 0; j < LANES; j++) s += acc[j];
    return s;
}

/* --- f32 ----------------------------------------------------------------------------------------- */

static void dequant_f32(const void *restrict vw, float *restrict y, int64_t k) {
    const float *restrict w = (const float *)vw;
    for (int64_t j = 0; j < k; j++) y[j] = w[j];
}

static float vec_dot_f32(int64_t k, const void *restrict vw, const float *restrict x) {
    const float *restrict w = (const float *)vw;
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= k; j += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += w[j + l] * x[j + l];
    float s = sum_lanes(acc);
    for (; j < k; j++) s += w[j] * x[j];
    return s;
}

/* --- f16 ----------------------------------------------------------------------------------------- */

static void dequant_f16(const void *restrict vw, float *restrict y, int64_t k) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    for (int64_t j = 0; j < k; j++) y[j] = mg_fp16_to_fp32(mg_rd16(w + 2 * j));
}

static float vec_dot_f16(int64_t k, const void *restrict vw, const float *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= k; j += LANES) {
        float t[LANES];
        for (int l = 0; l < LANES; l++) t[l] = mg_fp16_to_fp32(mg_rd16(w + 2 * (j + l)));
        for (int l = 0; l < LANES; l++) acc[l] += t[l] * x[j + l];
    }
    float s = sum_lanes(acc);
    for (; j < k; j++) s += mg_fp16_to_fp32(mg_rd16(w + 2 * j)) * x[j];
    return s;
}

/* --- q8_0: fp16 d, int8 q[32] ---------------------------------------------------------------------- */

static void dequant_q8_0(const void *restrict vw, float *restrict y, int64_t k) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK; /* hoisted: recomputed in the loop test it derails GCC */
    for (int64_t b = 0; b < nb; b++, w += 34, y += MG_QK) {
        const float d = mg_fp16_to_fp32(mg_rd16(w));
        const int8_t *restrict q = (const int8_t *)(w + 2);
        for (int j = 0; j < MG_QK; j++) y[j] = d * (float)q[j];
    }
}

static float vec_dot_q8_0(int64_t k, const void *restrict vw, const float *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    float acc[LANES] = {0};
    const int64_t nb = k / MG_QK; /* hoisted: recomputed in the loop test it derails GCC */
    for (int64_t b = 0; b < nb; b++, w += 34, x += MG_QK) {
        const float d = mg_fp16_to_fp32(mg_rd16(w));
        const int8_t *restrict q = (const int8_t *)(w + 2);
        float s[LANES];
        for (int j = 0; j < 16; j++) s[j] = (float)q[j] * x[j] + (float)q[j + 16] * x[j + 16];
        for (int j = 0; j < 16; j++) acc[j] += d * s[j];
    }
    return sum_lanes(acc);
}

/* --- q4_0: fp16 d, 16 bytes of nibbles ------------------------------------------------------------- */

MG_SLP_ONLY static void dequant_q4_0(const void *restrict vw, float *restrict y, int64_t k) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK; /* hoisted: recomputed in the loop test it derails GCC */
    for (int64_t b = 0; b < nb; b++, w += 18, y += MG_QK) {
        const float d = mg_fp16_to_fp32(mg_rd16(w));
        const uint8_t *restrict qs = w + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)((int)(qs[j] & 0x0F) - 8);
            y[j + 16] = d * (float)((int)(qs[j] >> 4) - 8);
        }
    }
}

static float vec_dot_q4_0(int64_t k, const void *restrict vw, const float *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    float acc[LANES] = {0};
    const int64_t nb = k / MG_QK; /* hoisted: recomputed in the loop test it derails GCC */
    for (int64_t b = 0; b < nb; b++, w += 18, x += MG_QK) {
        const float d = mg_fp16_to_fp32(mg_rd16(w));
        const uint8_t *restrict qs = w + 2;
        float s[LANES];
        for (int j = 0; j < 16; j++)
            s[j] = (float)((int)(qs[j] & 0x0F) - 8) * x[j] + (float)((int)(qs[j] >> 4) - 8) * x[j + 16];
        for (int j = 0; j < 16; j++) acc[j] += d * s[j];
    }
    return sum_lanes(acc);
}

/* --- q4_1: fp16 d, fp16 m, 16 bytes of nibbles ---------------------------------------------------- */

MG_SLP_ONLY static void dequant_q4_1(const void *restrict vw, float *restrict y, int64_t k) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK; /* hoisted: recomputed in the loop test it derails GCC */
    for (int64_t b = 0; b < nb; b++, w += 20, y += MG_QK) {
        const float d = mg_fp16_to_fp32(mg_rd16(w));
        const float m = mg_fp16_to_fp32(mg_rd16(w + 2));
        const uint8_t *restrict qs = w + 4;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)(qs[j] & 0x0F) + m;
            y[j + 16] = d * (float)(qs[j] >> 4) + m;
        }
    }
}

static float vec_dot_q4_1(int64_t k, const void *restrict vw, const float *restrict x) {
    /* sum (d*q + m)*x = d * sum q*x + m * sum x, per block */
    const uint8_t *restrict w = (const uint8_t *)vw;
    float acc[LANES] = {0}, accm[LANES] = {0};
    const int64_t nb = k / MG_QK; /* hoisted: recomputed in the loop test it derails GCC */
    for (int64_t b = 0; b < nb; b++, w += 20, x += MG_QK) {
        const float d = mg_fp16_to_fp32(mg_rd16(w));
        const float m = mg_fp16_to_fp32(mg_rd16(w + 2));
        const uint8_t *restrict qs = w + 4;
        float s[LANES], sx[LANES];
        for (int j = 0; j < 16; j++) {
            s[j] = (float)(qs[j] & 0x0F) * x[j] + (float)(qs[j] >> 4) * x[j + 16];
            sx[j] = x[j] + x[j + 16];
        }
        for (int j = 0; j < 16; j++) {
            acc[j] += d * s[j];
            accm[j] += m * sx[j];
        }
    }
    return sum_lanes(acc) + sum_lanes(accm);
}

/* --- q5_0: fp16 d, u32 qh, 16 bytes of nibbles; q5_1: fp16 d, fp16 m, u32 qh, 16 bytes ----------- */

/* the 32 codes (0..31) of a q5 block: nibbles as q4's, bit j of the little-endian qh is bit 4 of code j */
static inline void q5_codes(const uint8_t *restrict qh, const uint8_t *restrict qs, int8_t *restrict c) {
    const uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
    for (int j = 0; j < 16; j++) {
        c[j] = (int8_t)((qs[j] & 0x0F) | (h >> j & 1) << 4);
        c[j + 16] = (int8_t)((qs[j] >> 4) | (h >> (j + 16) & 1) << 4);
    }
}

MG_SLP_ONLY static void dequant_q5_0(const void *restrict vw, float *restrict y, int64_t k) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    for (int64_t b = 0; b < nb; b++, w += 22, y += MG_QK) {
        const float d = mg_fp16_to_fp32(mg_rd16(w));
        int8_t c[MG_QK];
        q5_codes(w + 2, w + 6, c);
        for (int j = 0; j < MG_QK; j++) y[j] = d * (float)(c[j] - 16);
    }
}

static float vec_dot_q5_0(int64_t k, const void *restrict vw, const float *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    float acc[LANES] = {0};
    const int64_t nb = k / MG_QK;
    for (int64_t b = 0; b < nb; b++, w += 22, x += MG_QK) {
        const float d = mg_fp16_to_fp32(mg_rd16(w));
        int8_t c[MG_QK];
        q5_codes(w + 2, w + 6, c);
        float s[LANES];
        for (int j = 0; j < 16; j++) s[j] = (float)(c[j] - 16) * x[j] + (float)(c[j + 16] - 16) * x[j + 16];
        for (int j = 0; j < 16; j++) acc[j] += d * s[j];
    }
    return sum_lanes(acc);
}

MG_SLP_ONLY static void dequant_q5_1(const void *restrict vw, float *restrict y, int64_t k) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    for (int64_t b = 0; b < nb; b++, w += 24, y += MG_QK) {
        const float d = mg_fp16_to_fp32(mg_rd16(w));
        const float m = mg_fp16_to_fp32(mg_rd16(w + 2));
        int8_t c[MG_QK];
        q5_codes(w + 4, w + 8, c);
        for (int j = 0; j < MG_QK; j++) y[j] = d * (float)c[j] + m;
    }
}

static float vec_dot_q5_1(int64_t k, const void *restrict vw, const float *restrict x) {
    /* sum (d*q + m)*x = d * sum q*x + m * sum x, per block */
    const uint8_t *restrict w = (const uint8_t *)vw;
    float acc[LANES] = {0}, accm[LANES] = {0};
    const int64_t nb = k / MG_QK;
    for (int64_t b = 0; b < nb; b++, w += 24, x += MG_QK) {
        const float d = mg_fp16_to_fp32(mg_rd16(w));
        const float m = mg_fp16_to_fp32(mg_rd16(w + 2));
        int8_t c[MG_QK];
        q5_codes(w + 4, w + 8, c);
        float s[LANES], sx[LANES];
        for (int j = 0; j < 16; j++) {
            s[j] = (float)c[j] * x[j] + (float)c[j + 16] * x[j + 16];
            sx[j] = x[j] + x[j + 16];
        }
        for (int j = 0; j < 16; j++) {
            acc[j] += d * s[j];
            accm[j] += m * sx[j];
        }
    }
    return sum_lanes(acc) + sum_lanes(accm);
}

/* --- q4_k: fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles ------------------ */

/* y[64c + l] (sub-block 2c) and y[64c + 32 + l] (sub-block 2c + 1): low and high nibbles of qs[32c + l] */
MG_SLP_ONLY static void dequant_q4_k(const void *restrict vw, float *restrict y, int64_t k) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK_K;
    for (int64_t b = 0; b < nb; b++, w += 144, y += MG_QK_K) {
        const float d = mg_fp16_to_fp32(mg_rd16(w)), dmin = mg_fp16_to_fp32(mg_rd16(w + 2));
        uint8_t sc[8], m[8];
        mg_q4_k_scales(w + 4, sc, m);
        const uint8_t *restrict qs = w + 16;
        for (int c = 0; c < 4; c++) {
            const float d0 = d * (float)sc[2 * c], m0 = dmin * (float)m[2 * c];
            const float d1 = d * (float)sc[2 * c + 1], m1 = dmin * (float)m[2 * c + 1];
            for (int l = 0; l < 32; l++) {
                y[64 * c + l] = d0 * (float)(qs[32 * c + l] & 0x0F) - m0;
                y[64 * c + 32 + l] = d1 * (float)(qs[32 * c + l] >> 4) - m1;
            }
        }
    }
}

static float vec_dot_q4_k(int64_t k, const void *restrict vw, const float *restrict x) {
    /* per sub-block: (d*sc) * sum q*x - (dmin*m) * sum x */
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK_K;
    float acc[LANES] = {0}, accm[LANES] = {0};
    for (int64_t b = 0; b < nb; b++, w += 144, x += MG_QK_K) {
        const float d = mg_fp16_to_fp32(mg_rd16(w)), dmin = mg_fp16_to_fp32(mg_rd16(w + 2));
        uint8_t sc[8], m[8];
        mg_q4_k_scales(w + 4, sc, m);
        const uint8_t *restrict qs = w + 16;
        for (int j = 0; j < 8; j++) {
            const uint8_t *restrict q = qs + 32 * (j / 2);
            const float *restrict xj = x + 32 * j;
            const int sh = 4 * (j % 2);
            const float ds = d * (float)sc[j], ms = dmin * (float)m[j];
            float s[LANES], sx[LANES];
            for (int l = 0; l < 16; l++) {
                s[l] = (float)((q[l] >> sh) & 0x0F) * xj[l] + (float)((q[l + 16] >> sh) & 0x0F) * xj[l + 16];
                sx[l] = xj[l] + xj[l + 16];
            }
            for (int l = 0; l < 16; l++) {
                acc[l] += ds * s[l];
                accm[l] += ms * sx[l];
            }
        }
    }
    return sum_lanes(acc) - sum_lanes(accm);
}

/* --- q6_k: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales, fp16 d ----------------------- */

/* the 6-bit codes of a super-block's 256 elements, in element order */
static void q6_k_codes(const uint8_t *restrict w, uint8_t *restrict q) {
    const uint8_t *restrict ql = w, *restrict qh = w + 128;
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const int lo0 = ql[64 * h + l], lo1 = ql[64 * h + 32 + l], hi = qh[32 * h + l];
            q[128 * h + l] = (uint8_t)((lo0 & 0x0F) | ((hi & 3) << 4));
            q[128 * h + 32 + l] = (uint8_t)((lo1 & 0x0F) | (((hi >> 2) & 3) << 4));
            q[128 * h + 64 + l] = (uint8_t)((lo0 >> 4) | (((hi >> 4) & 3) << 4));
            q[128 * h + 96 + l] = (uint8_t)((lo1 >> 4) | ((hi >> 6) << 4));
        }
}

MG_SLP_ONLY static void dequant_q6_k(const void *restrict vw, float *restrict y, int64_t k) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK_K;
    for (int64_t b = 0; b < nb; b++, w += 210, y += MG_QK_K) {
        const float d = mg_fp16_to_fp32(mg_rd16(w + 208));
        const int8_t *restrict sc = (const int8_t *)(w + 192);
        uint8_t q[MG_QK_K];
        q6_k_codes(w, q);
        for (int s = 0; s < 16; s++) {
            const float ds = d * (float)sc[s];
            for (int l = 0; l < 16; l++) y[16 * s + l] = ds * (float)((int)q[16 * s + l] - 32);
        }
    }
}

static float vec_dot_q6_k(int64_t k, const void *restrict vw, const float *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK_K;
    float acc[LANES] = {0};
    for (int64_t b = 0; b < nb; b++, w += 210, x += MG_QK_K) {
        const float d = mg_fp16_to_fp32(mg_rd16(w + 208));
        const int8_t *restrict sc = (const int8_t *)(w + 192);
        uint8_t q[MG_QK_K];
        q6_k_codes(w, q);
        for (int s = 0; s < 16; s++) {
            const float ds = d * (float)sc[s];
            for (int l = 0; l < 16; l++) acc[l] += ds * ((float)((int)q[16 * s + l] - 32) * x[16 * s + l]);
        }
    }
    return sum_lanes(acc);
}

/* --- q8 activations: the integer path ------------------------------------------------------------ */

/* rintf, not roundf: halves to even, as the AVX2 variant (and np.rint) round. rintf also keeps the
 * product x*id a separately rounded float32, where a compiler could fuse x*id + magic into an FMA.
 * A block with d below FLT_MIN (all |x| < 1.5e-36) is stored as zeros: 1/d would overflow. */
static void quantize_row_q8_c(const float *restrict x, mg_block_q8 *restrict y, int64_t k) {
    const int64_t nb = k / MG_QK;
    for (int64_t b = 0; b < nb; b++, x += MG_QK) {
        float amax = 0.0f;
        for (int j = 0; j < MG_QK; j++) {
            const float a = fabsf(x[j]);
            amax = a > amax ? a : amax;
        }
        const float d = amax / 127.0f >= FLT_MIN ? amax / 127.0f : 0.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < MG_QK; j++) {
            const int q = (int)rintf(x[j] * id);
            y[b].q[j] = (int8_t)q;
            sum += q;
        }
        y[b].d = d;
        y[b].s = d * (float)sum;
        y[b].sum = sum;
    }
}

mg_quantize_row_q8_fn mg_quantize_row_q8 = quantize_row_q8_c;

/* Products of codes summed in float32 lanes, like the exact kernels above (GCC vectorizes this form
 * far better than an int32 sum of int8 products): still exact per block, since |q_w * q_x| <= 2^14
 * and the two-term lane sums stay far below 2^24. Then one multiply-add per lane by both scales. */

static float vec_dot_q8_q8_0(int64_t k, const void *restrict vw, const mg_block_q8 *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    float acc[LANES] = {0};
    for (int64_t b = 0; b < nb; b++, w += 34) {
        const int8_t *restrict qw = (const int8_t *)(w + 2), *restrict qx = x[b].q;
        const float d = mg_fp16_to_fp32(mg_rd16(w)) * x[b].d;
        float s[LANES];
        for (int j = 0; j < 16; j++) s[j] = (float)qw[j] * (float)qx[j] + (float)qw[j + 16] * (float)qx[j + 16];
        for (int j = 0; j < 16; j++) acc[j] += d * s[j];
    }
    return sum_lanes(acc);
}

static float vec_dot_q8_q4_0(int64_t k, const void *restrict vw, const mg_block_q8 *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    float acc[LANES] = {0};
    for (int64_t b = 0; b < nb; b++, w += 18) {
        const uint8_t *restrict qs = w + 2;
        const int8_t *restrict qx = x[b].q;
        const float d = mg_fp16_to_fp32(mg_rd16(w)) * x[b].d;
        float s[LANES];
        for (int j = 0; j < 16; j++)
            s[j] = (float)((int)(qs[j] & 0x0F) - 8) * (float)qx[j] + (float)((int)(qs[j] >> 4) - 8) * (float)qx[j + 16];
        for (int j = 0; j < 16; j++) acc[j] += d * s[j];
    }
    return sum_lanes(acc);
}

static float vec_dot_q8_q4_1(int64_t k, const void *restrict vw, const mg_block_q8 *restrict x) {
    /* sum (dw*q + m) * dx*qx = dw*dx * sum q*qx + m * s */
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    float acc[LANES] = {0}, summ = 0.0f;
    for (int64_t b = 0; b < nb; b++, w += 20) {
        const uint8_t *restrict qs = w + 4;
        const int8_t *restrict qx = x[b].q;
        const float d = mg_fp16_to_fp32(mg_rd16(w)) * x[b].d;
        float s[LANES];
        for (int j = 0; j < 16; j++) s[j] = (float)(qs[j] & 0x0F) * (float)qx[j] + (float)(qs[j] >> 4) * (float)qx[j + 16];
        for (int j = 0; j < 16; j++) acc[j] += d * s[j];
        summ += mg_fp16_to_fp32(mg_rd16(w + 2)) * x[b].s;
    }
    return sum_lanes(acc) + summ;
}

static float vec_dot_q8_q5_0(int64_t k, const void *restrict vw, const mg_block_q8 *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    float acc[LANES] = {0};
    for (int64_t b = 0; b < nb; b++, w += 22) {
        const int8_t *restrict qx = x[b].q;
        const float d = mg_fp16_to_fp32(mg_rd16(w)) * x[b].d;
        int8_t c[MG_QK];
        q5_codes(w + 2, w + 6, c);
        float s[LANES];
        for (int j = 0; j < 16; j++)
            s[j] = (float)(c[j] - 16) * (float)qx[j] + (float)(c[j + 16] - 16) * (float)qx[j + 16];
        for (int j = 0; j < 16; j++) acc[j] += d * s[j];
    }
    return sum_lanes(acc);
}

static float vec_dot_q8_q5_1(int64_t k, const void *restrict vw, const mg_block_q8 *restrict x) {
    /* sum (dw*q + m) * dx*qx = dw*dx * sum q*qx + m * s */
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    float acc[LANES] = {0}, summ = 0.0f;
    for (int64_t b = 0; b < nb; b++, w += 24) {
        const int8_t *restrict qx = x[b].q;
        const float d = mg_fp16_to_fp32(mg_rd16(w)) * x[b].d;
        int8_t c[MG_QK];
        q5_codes(w + 4, w + 8, c);
        float s[LANES];
        for (int j = 0; j < 16; j++) s[j] = (float)c[j] * (float)qx[j] + (float)c[j + 16] * (float)qx[j + 16];
        for (int j = 0; j < 16; j++) acc[j] += d * s[j];
        summ += mg_fp16_to_fp32(mg_rd16(w + 2)) * x[b].s;
    }
    return sum_lanes(acc) + summ;
}

/* q4_k: sub-block j of 32 meets activation block j: (d*sc_j * d_x) * sum q*q_x - (dmin*m_j) * s_x */
static float vec_dot_q8_q4_k(int64_t k, const void *restrict vw, const mg_block_q8 *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK_K;
    float acc[LANES] = {0}, summ = 0.0f;
    for (int64_t b = 0; b < nb; b++, w += 144, x += 8) {
        const float d = mg_fp16_to_fp32(mg_rd16(w)), dmin = mg_fp16_to_fp32(mg_rd16(w + 2));
        uint8_t sc[8], m[8];
        mg_q4_k_scales(w + 4, sc, m);
        for (int j = 0; j < 8; j++) {
            const uint8_t *restrict q = w + 16 + 32 * (j / 2);
            const int8_t *restrict qx = x[j].q;
            const int sh = 4 * (j % 2);
            const float ds = d * (float)sc[j] * x[j].d;
            float s[LANES];
            for (int l = 0; l < 16; l++)
                s[l] = (float)((q[l] >> sh) & 0x0F) * (float)qx[l] + (float)((q[l + 16] >> sh) & 0x0F) * (float)qx[l + 16];
            for (int l = 0; l < 16; l++) acc[l] += ds * s[l];
            summ += dmin * (float)m[j] * x[j].s;
        }
    }
    return sum_lanes(acc) - summ;
}

/* q6_k: activation block j holds sub-blocks 2j, 2j + 1; their integer dots of (q - 32) with q_x, each
 * times its scale, add up exactly (|.| < 2^24) before one float multiply-add by d * d_x */
static float vec_dot_q8_q6_k(int64_t k, const void *restrict vw, const mg_block_q8 *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK_K;
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++, w += 210, x += 8) {
        const float d = mg_fp16_to_fp32(mg_rd16(w + 208));
        const int8_t *restrict sc = (const int8_t *)(w + 192);
        uint8_t q[MG_QK_K];
        q6_k_codes(w, q);
        for (int j = 0; j < 8; j++) {
            int32_t sa = 0, sb = 0;
            for (int l = 0; l < 16; l++) {
                sa += ((int32_t)q[32 * j + l] - 32) * x[j].q[l];
                sb += ((int32_t)q[32 * j + 16 + l] - 32) * x[j].q[16 + l];
            }
            acc += d * x[j].d * (float)(sc[2 * j] * sa + sc[2 * j + 1] * sb);
        }
    }
    return acc;
}

/* --- the table -------------------------------------------------------------------------------------- */

mg_type_traits mg_traits[MG_NQTYPES] = {
    [MG_F32] = {"f32", 1, 4, dequant_f32, vec_dot_f32, NULL, NULL, NULL},
    [MG_F16] = {"f16", 1, 2, dequant_f16, vec_dot_f16, NULL, NULL, NULL},
    [MG_Q8_0] = {"q8_0", MG_QK, 34, dequant_q8_0, vec_dot_q8_0, NULL, vec_dot_q8_q8_0, NULL},
    [MG_Q4_0] = {"q4_0", MG_QK, 18, dequant_q4_0, vec_dot_q4_0, NULL, vec_dot_q8_q4_0, NULL},
    [MG_Q4_1] = {"q4_1", MG_QK, 20, dequant_q4_1, vec_dot_q4_1, NULL, vec_dot_q8_q4_1, NULL},
    [MG_Q5_0] = {"q5_0", MG_QK, 22, dequant_q5_0, vec_dot_q5_0, NULL, vec_dot_q8_q5_0, NULL},
    [MG_Q5_1] = {"q5_1", MG_QK, 24, dequant_q5_1, vec_dot_q5_1, NULL, vec_dot_q8_q5_1, NULL},
    [MG_Q4_K] = {"q4_k", MG_QK_K, 144, dequant_q4_k, vec_dot_q4_k, NULL, vec_dot_q8_q4_k, NULL},
    [MG_Q6_K] = {"q6_k", MG_QK_K, 210, dequant_q6_k, vec_dot_q6_k, NULL, vec_dot_q8_q6_k, NULL},
};

int64_t mg_row_bytes(int qtype, int64_t cols) {
    if (qtype < 0 || qtype >= MG_NQTYPES) return -1;
    return cols / mg_traits[qtype].block * mg_traits[qtype].block_bytes;
}
