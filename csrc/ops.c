/* Portable C99 versions of the decoder's non-matmul slots (ops.h): what non-AVX2 CPUs run, and
 * the plain statement of what each AVX2 variant (ops_avx2.c) computes. */
#include <math.h>
#include <string.h>

#include "ops.h"

#define LANES 8 /* independent partial sums, so the compiler can vectorize the reductions */

static void rms_norm_c(const float *restrict x, const float *restrict g, float *restrict out, int64_t n,
                       int64_t d, float eps) {
    for (int64_t i = 0; i < n; i++) {
        const float *restrict xi = x + i * d;
        double ss = 0.0;
        for (int64_t j = 0; j < d; j++) ss += (double)xi[j] * xi[j];
        const float inv = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
        for (int64_t j = 0; j < d; j++) out[i * d + j] = xi[j] * inv * g[j];
    }
}

static void rope_c(float *restrict x, int64_t n, int64_t heads, int64_t hd, int64_t rope_dim,
                   const float *restrict cos_t, const float *restrict sin_t) {
    const int64_t half = rope_dim / 2;
    for (int64_t i = 0; i < n; i++)
        for (int64_t h = 0; h < heads; h++) {
            float *restrict v = x + (i * heads + h) * hd;
            const float *restrict c = cos_t + i * half, *restrict s = sin_t + i * half;
            for (int64_t p = 0; p < half; p++) {
                const float x0 = v[2 * p], x1 = v[2 * p + 1];
                v[2 * p] = x0 * c[p] - x1 * s[p];
                v[2 * p + 1] = x0 * s[p] + x1 * c[p];
            }
        }
}

static void rope_neox_c(float *restrict x, int64_t n, int64_t heads, int64_t hd, int64_t rope_dim,
                        const float *restrict cos_t, const float *restrict sin_t) {
    const int64_t half = rope_dim / 2;
    for (int64_t i = 0; i < n; i++)
        for (int64_t h = 0; h < heads; h++) {
            float *restrict v = x + (i * heads + h) * hd;
            const float *restrict c = cos_t + i * half, *restrict s = sin_t + i * half;
            for (int64_t p = 0; p < half; p++) {
                const float x0 = v[p], x1 = v[p + half];
                v[p] = x0 * c[p] - x1 * s[p];
                v[p + half] = x0 * s[p] + x1 * c[p];
            }
        }
}

static void swiglu_c(float *restrict g, const float *restrict u, int64_t m) {
    for (int64_t j = 0; j < m; j++) g[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
}

#define GELU_A 1.5957691216057308f /* 2 sqrt(2 / pi): gelu_tanh(x) = x * sigmoid(GELU_A (x + GELU_B x^3)) */
#define GELU_B 0.044715f

static void geglu_c(float *restrict g, const float *restrict u, int64_t m) {
    for (int64_t j = 0; j < m; j++) {
        const float x = g[j];
        g[j] = x / (1.0f + expf(-GELU_A * (x + GELU_B * x * x * x))) * u[j];
    }
}

static void add_c(float *restrict x, const float *restrict y, int64_t m) {
    for (int64_t j = 0; j < m; j++) x[j] += y[j];
}

static void exp_c(const float *x, float *y, int64_t n) {
    for (int64_t j = 0; j < n; j++) y[j] = expf(x[j]);
}

/* --- attention inner loops ------------------------------------------------------------------------ */

static float dot(const float *restrict a, const float *restrict b, int64_t k) {
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= k; j += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[j + l] * b[j + l];
    float s = 0.0f;
    for (int l = 0; l < LANES; l++) s += acc[l];
    for (; j < k; j++) s += a[j] * b[j];
    return s;
}

static void attn_scores_c(const float *restrict q, int64_t r, const float *restrict k, int64_t tn,
                          int64_t hd, float *restrict s, int64_t lds) {
    for (int64_t t = 0; t < tn; t++) /* key outer: each key row is read once for the r rows */
        for (int64_t i = 0; i < r; i++) s[i * lds + t] = dot(q + i * hd, k + t * hd, hd);
}

static void attn_pv_c(const float *restrict p, int64_t ldp, int64_t r, const float *restrict v, int64_t tn,
                      int64_t hd, float *restrict o) {
    for (int64_t t = 0; t < tn; t++) {
        const float *restrict vt = v + t * hd;
        for (int64_t i = 0; i < r; i++) {
            const float pi = p[i * ldp + t];
            float *restrict oi = o + i * hd;
            for (int64_t d = 0; d < hd; d++) oi[d] += pi * vt[d];
        }
    }
}

static float exp_sum_c(float *restrict s, int64_t tn, float m) {
    float sum = 0.0f;
    for (int64_t t = 0; t < tn; t++) sum += (s[t] = expf(s[t] - m));
    return sum;
}

static float max_c(const float *restrict s, int64_t tn, float m0) {
    float mx = m0;
    for (int64_t t = 0; t < tn; t++) mx = s[t] > mx ? s[t] : mx;
    return mx;
}

/* --- KV cache rows ----------------------------------------------------------------------------------- */

static void f32_to_f16_c(const float *restrict x, uint16_t *restrict y, int64_t n) {
    for (int64_t j = 0; j < n; j++) y[j] = mg_fp32_to_fp16(x[j]);
}

static void f16_to_f32_c(const uint16_t *restrict x, float *restrict y, int64_t n) {
    for (int64_t j = 0; j < n; j++) y[j] = mg_fp16_to_fp32(x[j]);
}

/* Through the activations' quantizer slot (mg_quantize_row_q8, AVX2 where installed): the same codes
 * and scales as the int8 matmuls', then only q and d are kept. */
static void f32_to_q8_0_c(const float *restrict x, uint8_t *restrict y, int64_t rows, int64_t hd) {
    mg_block_q8 b[MG_ATTN_MAX_HEAD_DIM / MG_QK];
    const int64_t nb = hd / MG_QK;
    for (int64_t i = 0; i < rows; i++, x += hd, y += hd + 4 * nb) {
        mg_quantize_row_q8(x, b, hd);
        for (int64_t k = 0; k < nb; k++) {
            memcpy(y + k * MG_QK, b[k].q, MG_QK);
            memcpy(y + hd + 4 * k, &b[k].d, sizeof(float)); /* native order: little-endian on x86, ARM64 */
        }
    }
}

static void q8_0_to_f32_c(const uint8_t *restrict x, float *restrict y, int64_t rows, int64_t hd) {
    for (int64_t i = 0; i < rows; i++, x += hd + hd / 8, y += hd)
        for (int64_t k = 0; k < hd / MG_QK; k++) {
            float d;
            memcpy(&d, x + hd + 4 * k, sizeof d);
            for (int j = 0; j < MG_QK; j++) y[k * MG_QK + j] = (float)(int8_t)x[k * MG_QK + j] * d;
        }
}

mg_ops mg_lops = {rms_norm_c, rope_c, rope_neox_c, swiglu_c, geglu_c, add_c, exp_c,
                        attn_scores_c, attn_pv_c, NULL, NULL, exp_sum_c, max_c,
                        f32_to_f16_c, f16_to_f32_c, f32_to_q8_0_c, q8_0_to_f32_c};

const mg_kernel_table mg_kernels = {mg_matmul,   mg_matmul_q8,       mg_matmul_q16, mg_matmul_x8_many,
                                    mg_matmul_screened, mg_get_rows, mg_attention_batch, &mg_lops};
