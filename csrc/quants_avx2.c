/* AVX2 + FMA + F16C variants of the per-type kernels, installed by mg_cpu_init (cpu.c) only on CPUs
 * that have them.
 *
 * Every function carries a target attribute instead of the file being built with -mavx2, so the
 * rest of the extension stays plain x86-64 and this code is never reached on an older CPU.
 *
 * Two families:
 *   exact (f32 activations): each block's codes widen to float32 and meet x in FMAs.
 *   q8 (int8 activations):   maddubs multiplies unsigned by signed bytes into int16 pairs, madd
 *                            sums pairs into int32; one float FMA per block applies both scales.
 *                            Signed x signed uses the sign trick: |w| . (x with w's sign).
 *                            No int16 saturation: |pair| <= 2 * 128 * 127 (q8_0), 2 * 15 * 127 (q4_1).
 * The exact kernels of four input rows at a time (vec_dot_x4) are in quants_x4_avx2.c; the helpers both
 * files use, in quants_avx2.h.
 */
#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)

#include <float.h>

#include "quants_avx2.h"

/* --- exact: f32 activations ------------------------------------------------------------------------ */

AVX2 static float vec_dot_f32_avx2(int64_t k, const void *restrict vw, const float *restrict x) {
    const float *restrict w = (const float *)vw;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t j = 0;
    for (; j + 32 <= k; j += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j), _mm256_loadu_ps(x + j), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j + 8), _mm256_loadu_ps(x + j + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j + 16), _mm256_loadu_ps(x + j + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j + 24), _mm256_loadu_ps(x + j + 24), a3);
    }
    for (; j + 8 <= k; j += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j), _mm256_loadu_ps(x + j), a0);
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; j < k; j++) s += w[j] * x[j];
    return s;
}

AVX2 static float vec_dot_f16_avx2(int64_t k, const void *restrict vw, const float *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t j = 0;
    for (; j + 16 <= k; j += 16) {
        const __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * j)));
        const __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * j + 16)));
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + j), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + j + 8), a1);
    }
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; j < k; j++) s += mg_fp16_to_fp32(mg_rd16(w + 2 * j)) * x[j];
    return s;
}

AVX2 static float vec_dot_q8_0_avx2(int64_t k, const void *restrict vw, const float *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 34, x += MG_QK)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(w)), dot_i8_f32(load32(w + 2), x), acc);
    return hsum8(acc);
}

AVX2 static float vec_dot_q4_0_avx2(int64_t k, const void *restrict vw, const float *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 18, x += MG_QK) {
        const __m256i q = _mm256_sub_epi8(nibbles32(w + 2), _mm256_set1_epi8(8));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(w)), dot_i8_f32(q, x), acc);
    }
    return hsum8(acc);
}

AVX2 static float vec_dot_q4_1_avx2(int64_t k, const void *restrict vw, const float *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    __m256 acc = _mm256_setzero_ps(), accm = acc;
    for (int64_t b = 0; b < nb; b++, w += 20, x += MG_QK) {
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(w)), dot_i8_f32(nibbles32(w + 4), x), acc);
        accm = _mm256_fmadd_ps(_mm256_set1_ps(fp16(w + 2)), sum_block(x), accm);
    }
    return hsum8(_mm256_add_ps(acc, accm));
}

/* q4_k: the 32 bytes of qs at 32c hold sub-block 2c (low nibbles) and 2c + 1 (high), in element order */
AVX2 static float vec_dot_q4_k_avx2(int64_t k, const void *restrict vw, const float *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK_K;
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps(), accm = acc;
    for (int64_t b = 0; b < nb; b++, w += 144, x += MG_QK_K) {
        const float d = fp16(w), dmin = fp16(w + 2);
        uint8_t sc[8], m[8];
        mg_q4_k_scales(w + 4, sc, m);
        for (int j = 0; j < 8; j++) {
            const __m256i v = load32(w + 16 + 32 * (j / 2));
            const float *xj = x + 32 * j;
            const __m256i q = _mm256_and_si256(j % 2 ? _mm256_srli_epi16(v, 4) : v, low);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc[j]), dot_i8_f32(q, xj), acc);
            accm = _mm256_fmadd_ps(_mm256_set1_ps(-(dmin * (float)m[j])), sum_block(xj), accm);
        }
    }
    return hsum8(_mm256_add_ps(acc, accm));
}

AVX2 static float vec_dot_q6_k_avx2(int64_t k, const void *restrict vw, const float *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK_K;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 210, x += MG_QK_K) {
        const float d = fp16(w + 208);
        const int8_t *restrict sc = (const int8_t *)(w + 192);
        for (int j = 0; j < 8; j++) {
            __m256 f[4];
            widen_i8(q6_k_codes(w, j), f);
            acc = q6_k_block(f, x + 32 * j, _mm256_set1_ps(d * (float)sc[2 * j]),
                             _mm256_set1_ps(d * (float)sc[2 * j + 1]), acc);
        }
    }
    return hsum8(acc);
}

/* Float tile product for prefill: 6 weight rows x 16 inputs in 12 accumulators (+2 x, 1 broadcast). */
enum { TILE_NR = 6, TILE_MI = 16 };

AVX2 static void gemm_tile_avx2(int64_t kc, const float *restrict w, int64_t ldw, const float *restrict xp,
                                float *restrict acc) {
    __m256 a[TILE_NR][2];
    for (int r = 0; r < TILE_NR; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
    for (int64_t j = 0; j < kc; j++) {
        const __m256 x0 = _mm256_loadu_ps(xp + j * TILE_MI), x1 = _mm256_loadu_ps(xp + j * TILE_MI + 8);
        for (int r = 0; r < TILE_NR; r++) {
            const __m256 wj = _mm256_broadcast_ss(w + r * ldw + j);
            a[r][0] = _mm256_fmadd_ps(wj, x0, a[r][0]);
            a[r][1] = _mm256_fmadd_ps(wj, x1, a[r][1]);
        }
    }
    for (int r = 0; r < TILE_NR; r++) {
        _mm256_storeu_ps(acc + r * TILE_MI, a[r][0]);
        _mm256_storeu_ps(acc + r * TILE_MI + 8, a[r][1]);
    }
}

/* --- q8: int8 activations -------------------------------------------------------------------------- */

/* One block of 32 inputs x as the C quantizers round it, for codes up to qmax: d = amax / qmax (0 below
 * FLT_MIN), q = rint(x * (1/d)) -> q[4] (8 int32 each, in order); returns d, and *sum = sum of q (exact).
 * The same float32 operations in the same order as the C code (amax is exact in any order), and
 * _mm256_round_ps to nearest even is rintf under the default rounding mode. */
AVX2 static inline float quantize_block(const float *restrict x, float qmax, __m256i q[4], int32_t *sum) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(x + 8 * i);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float d = amax / qmax >= FLT_MIN ? amax / qmax : 0.0f;
    const __m256 mul = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    for (int i = 0; i < 4; i++)
        q[i] = _mm256_cvtps_epi32(
            _mm256_round_ps(_mm256_mul_ps(v[i], mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
    *sum = _mm_cvtsi128_si32(s4);
    return d;
}

/* Same bytes as quantize_row_q8_c (quants.c). */
AVX2 static void quantize_row_q8_avx2(const float *restrict x, mg_block_q8 *restrict y, int64_t k) {
    const int64_t nb = k / MG_QK;
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < nb; b++, x += MG_QK) {
        __m256i q[4];
        y[b].d = quantize_block(x, 127.0f, q, &y[b].sum);
        y[b].s = y[b].d * (float)y[b].sum;
        /* packs work within 128-bit lanes: the permute puts the 8 groups of 4 back in order */
        const __m256i p16a = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
        _mm256_storeu_si256((__m256i *)y[b].q, _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), perm));
    }
}

AVX2 static float vec_dot_q8_q8_0_avx2(int64_t k, const void *restrict vw, const mg_block_q8 *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 34) {
        const __m256i qw = load32(w + 2), qx = load32(x[b].q);
        const __m256 p = dot_us8(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(w) * x[b].d), p, acc);
    }
    return hsum8(acc);
}

AVX2 static float vec_dot_q8_q4_0_avx2(int64_t k, const void *restrict vw, const mg_block_q8 *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 18) {
        const __m256i qw = _mm256_sub_epi8(nibbles32(w + 2), _mm256_set1_epi8(8)), qx = load32(x[b].q);
        const __m256 p = dot_us8(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(w) * x[b].d), p, acc);
    }
    return hsum8(acc);
}

AVX2 static float vec_dot_q8_q4_1_avx2(int64_t k, const void *restrict vw, const mg_block_q8 *restrict x) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    __m256 acc = _mm256_setzero_ps();
    float summ = 0.0f;
    for (int64_t b = 0; b < nb; b++, w += 20) {
        const __m256 p = dot_us8(nibbles32(w + 4), load32(x[b].q));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(w) * x[b].d), p, acc);
        summ += fp16(w + 2) * x[b].s;
    }
    return hsum8(acc) + summ;
}

/* Four activation rows per weight row (prefill): the weight block is loaded and unpacked once. */

AVX2 static void vec_dot_q8_q8_0_x4_avx2(int64_t k, const void *restrict vw, const mg_block_q8 *restrict x,
                                         int64_t ldx, float *restrict out) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    __m256 acc[4];
    for (int t = 0; t < 4; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 34) {
        const __m256i qw = load32(w + 2), aw = _mm256_sign_epi8(qw, qw);
        const float dw = fp16(w);
        for (int t = 0; t < 4; t++) {
            const mg_block_q8 *xb = x + t * ldx + b;
            const __m256 p = dot_us8(aw, _mm256_sign_epi8(load32(xb->q), qw));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb->d), p, acc[t]);
        }
    }
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]);
}

AVX2 static void vec_dot_q8_q4_0_x4_avx2(int64_t k, const void *restrict vw, const mg_block_q8 *restrict x,
                                         int64_t ldx, float *restrict out) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    __m256 acc[4];
    for (int t = 0; t < 4; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 18) {
        const __m256i qw = _mm256_sub_epi8(nibbles32(w + 2), _mm256_set1_epi8(8)), aw = _mm256_sign_epi8(qw, qw);
        const float dw = fp16(w);
        for (int t = 0; t < 4; t++) {
            const mg_block_q8 *xb = x + t * ldx + b;
            const __m256 p = dot_us8(aw, _mm256_sign_epi8(load32(xb->q), qw));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb->d), p, acc[t]);
        }
    }
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]);
}

AVX2 static void vec_dot_q8_q4_1_x4_avx2(int64_t k, const void *restrict vw, const mg_block_q8 *restrict x,
                                         int64_t ldx, float *restrict out) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    __m256 acc[4];
    float summ[4] = {0};
    for (int t = 0; t < 4; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 20) {
        const __m256i qw = nibbles32(w + 4);
        const float dw = fp16(w), mw = fp16(w + 2);
        for (int t = 0; t < 4; t++) {
            const mg_block_q8 *xb = x + t * ldx + b;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb->d), dot_us8(qw, load32(xb->q)), acc[t]);
            summ[t] += mw * xb->s;
        }
    }
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]) + summ[t];
}

/* Same values as quantize_row_q16_c (packed.c). The codes are within +-32767: the saturating pack is exact. */
AVX2 static void quantize_row_q16_avx2(const float *restrict x, mg_block_q16 *restrict y, int64_t k) {
    const int64_t nb = k / MG_QK;
    /* within each 128-bit lane, each group of 4 int16 (x0, x1, x2, x3) -> (x0, x2, x1, x3) */
    const __m256i order = _mm256_setr_epi8(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15,
                                           0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15);
    for (int64_t b = 0; b < nb; b++, x += MG_QK) {
        __m256i q[4];
        int32_t sum;
        y[b].d = quantize_block(x, 32767.0f, q, &sum);
        y[b].s = y[b].d * (float)sum;
        /* packs works within 128-bit lanes: the 64-bit permute puts inputs 0-15 (16-31) back in order */
        for (int h = 0; h < 2; h++) {
            const __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2 * h], q[2 * h + 1]), 0xD8);
            _mm256_storeu_si256((__m256i *)(y[b].q + 16 * h), _mm256_shuffle_epi8(p, order));
        }
    }
}

/* --- installation ---------------------------------------------------------------------------------- */

int mg_install_avx2(void) {
    mg_traits[MG_F32].vec_dot = vec_dot_f32_avx2;
    mg_traits[MG_F16].vec_dot = vec_dot_f16_avx2;
    mg_traits[MG_Q8_0].vec_dot = vec_dot_q8_0_avx2;
    mg_traits[MG_Q4_0].vec_dot = vec_dot_q4_0_avx2;
    mg_traits[MG_Q4_1].vec_dot = vec_dot_q4_1_avx2;
    mg_traits[MG_Q4_K].vec_dot = vec_dot_q4_k_avx2;
    mg_traits[MG_Q6_K].vec_dot = vec_dot_q6_k_avx2;
    mg_install_x4_avx2();
    mg_traits[MG_Q8_0].vec_dot_q8 = vec_dot_q8_q8_0_avx2;
    mg_traits[MG_Q4_0].vec_dot_q8 = vec_dot_q8_q4_0_avx2;
    mg_traits[MG_Q4_1].vec_dot_q8 = vec_dot_q8_q4_1_avx2;
    mg_traits[MG_Q8_0].vec_dot_q8_x4 = vec_dot_q8_q8_0_x4_avx2;
    mg_traits[MG_Q4_0].vec_dot_q8_x4 = vec_dot_q8_q4_0_x4_avx2;
    mg_traits[MG_Q4_1].vec_dot_q8_x4 = vec_dot_q8_q4_1_x4_avx2;
    mg_quantize_row_q8 = quantize_row_q8_avx2;
    mg_quantize_row_q16 = quantize_row_q16_avx2;
    mg_gemm.nr = TILE_NR;
    mg_gemm.mi = TILE_MI;
    mg_gemm.tile = gemm_tile_avx2;
    return 1;
}

#else

int mg_install_avx2(void) { return 0; }

#endif
