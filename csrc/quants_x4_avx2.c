/* AVX2 kernels of four input rows per weight row (the vec_dot_x4 slot: a batch of decode steps, e.g.
 * the float32 output head of several sequences): each block is widened to floats once for the four,
 * and each row's sums run exactly as in the one-row kernel of quants_avx2.c, so out[t] is its result.
 * Installed with the rest by mg_install_avx2. */
#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)

#include "quants_avx2.h"

/* acc[t] += d * (q . x_t) for the four inputs x_t = x + t * ldx of one block: q its 32 signed codes,
 * widened once, each sum as vec_dot's */
AVX2 static inline void block_x4(__m256i q, float d, const float *x, int64_t ldx, __m256 acc[4]) {
    __m256 f[4];
    widen_i8(q, f);
    const __m256 dv = _mm256_set1_ps(d);
    for (int t = 0; t < 4; t++) acc[t] = _mm256_fmadd_ps(dv, dot_block(f, x + t * ldx), acc[t]);
}

AVX2 static void vec_dot_f16_x4_avx2(int64_t k, const void *restrict vw, const float *restrict x, int64_t ldx,
                                     float *restrict out) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    __m256 a0[4], a1[4];
    for (int t = 0; t < 4; t++) a0[t] = a1[t] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= k; j += 16) {
        const __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * j)));
        const __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * j + 16)));
        for (int t = 0; t < 4; t++) {
            a0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * ldx + j), a0[t]);
            a1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * ldx + j + 8), a1[t]);
        }
    }
    for (int t = 0; t < 4; t++) {
        float s = hsum8(_mm256_add_ps(a0[t], a1[t]));
        for (int64_t i = j; i < k; i++) s += mg_fp16_to_fp32(mg_rd16(w + 2 * i)) * x[t * ldx + i];
        out[t] = s;
    }
}

AVX2 static void vec_dot_q8_0_x4_avx2(int64_t k, const void *restrict vw, const float *restrict x, int64_t ldx,
                                      float *restrict out) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    __m256 acc[4];
    for (int t = 0; t < 4; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 34, x += MG_QK) block_x4(load32(w + 2), fp16(w), x, ldx, acc);
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]);
}

AVX2 static void vec_dot_q4_0_x4_avx2(int64_t k, const void *restrict vw, const float *restrict x, int64_t ldx,
                                      float *restrict out) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    __m256 acc[4];
    for (int t = 0; t < 4; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 18, x += MG_QK)
        block_x4(_mm256_sub_epi8(nibbles32(w + 2), _mm256_set1_epi8(8)), fp16(w), x, ldx, acc);
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]);
}

AVX2 static void vec_dot_q4_1_x4_avx2(int64_t k, const void *restrict vw, const float *restrict x, int64_t ldx,
                                      float *restrict out) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK;
    __m256 acc[4], accm[4];
    for (int t = 0; t < 4; t++) acc[t] = accm[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 20, x += MG_QK) {
        block_x4(nibbles32(w + 4), fp16(w), x, ldx, acc);
        const __m256 m = _mm256_set1_ps(fp16(w + 2));
        for (int t = 0; t < 4; t++) accm[t] = _mm256_fmadd_ps(m, sum_block(x + t * ldx), accm[t]);
    }
    for (int t = 0; t < 4; t++) out[t] = hsum8(_mm256_add_ps(acc[t], accm[t]));
}

AVX2 static void vec_dot_q4_k_x4_avx2(int64_t k, const void *restrict vw, const float *restrict x, int64_t ldx,
                                      float *restrict out) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK_K;
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256 acc[4], accm[4];
    for (int t = 0; t < 4; t++) acc[t] = accm[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 144, x += MG_QK_K) {
        const float d = fp16(w), dmin = fp16(w + 2);
        uint8_t sc[8], m[8];
        mg_q4_k_scales(w + 4, sc, m);
        for (int j = 0; j < 8; j++) {
            const __m256i v = load32(w + 16 + 32 * (j / 2));
            const __m256i q = _mm256_and_si256(j % 2 ? _mm256_srli_epi16(v, 4) : v, low);
            block_x4(q, d * (float)sc[j], x + 32 * j, ldx, acc);
            const __m256 dm = _mm256_set1_ps(-(dmin * (float)m[j]));
            for (int t = 0; t < 4; t++) accm[t] = _mm256_fmadd_ps(dm, sum_block(x + t * ldx + 32 * j), accm[t]);
        }
    }
    for (int t = 0; t < 4; t++) out[t] = hsum8(_mm256_add_ps(acc[t], accm[t]));
}

AVX2 static void vec_dot_q6_k_x4_avx2(int64_t k, const void *restrict vw, const float *restrict x, int64_t ldx,
                                      float *restrict out) {
    const uint8_t *restrict w = (const uint8_t *)vw;
    const int64_t nb = k / MG_QK_K;
    __m256 acc[4];
    for (int t = 0; t < 4; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 210, x += MG_QK_K) {
        const float d = fp16(w + 208);
        const int8_t *restrict sc = (const int8_t *)(w + 192);
        for (int j = 0; j < 8; j++) {
            __m256 f[4];
            widen_i8(q6_k_codes(w, j), f);
            const __m256 da = _mm256_set1_ps(d * (float)sc[2 * j]), db = _mm256_set1_ps(d * (float)sc[2 * j + 1]);
            for (int t = 0; t < 4; t++) acc[t] = q6_k_block(f, x + t * ldx + 32 * j, da, db, acc[t]);
        }
    }
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]);
}

void mg_install_x4_avx2(void) {
    mg_traits[MG_F16].vec_dot_x4 = vec_dot_f16_x4_avx2;
    mg_traits[MG_Q8_0].vec_dot_x4 = vec_dot_q8_0_x4_avx2;
    mg_traits[MG_Q4_0].vec_dot_x4 = vec_dot_q4_0_x4_avx2;
    mg_traits[MG_Q4_1].vec_dot_x4 = vec_dot_q4_1_x4_avx2;
    mg_traits[MG_Q4_K].vec_dot_x4 = vec_dot_q4_k_x4_avx2;
    mg_traits[MG_Q6_K].vec_dot_x4 = vec_dot_q6_k_x4_avx2;
}

#endif
