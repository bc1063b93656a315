/* What the AVX2 kernels of quants_avx2.c (one input row per call) and quants_x4_avx2.c (four) share:
 * the target attribute, and the helpers that widen, unpack and sum blocks. Included only where the
 * compiler is GCC-compatible and the target x86 (the files' own guard). */
#ifndef MG_QUANTS_AVX2_H
#define MG_QUANTS_AVX2_H

#include <immintrin.h>

#include "kernels.h"

#define AVX2 __attribute__((target("avx2,fma,f16c")))

/* --- helpers ------------------------------------------------------------------------------------- */

AVX2 static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2 static inline float fp16(const uint8_t *p) { return _cvtsh_ss(mg_rd16(p)); }

/* 16 bytes of nibbles -> 32 bytes 0..15 in element order (low nibbles, then high nibbles) */
AVX2 static inline __m256i nibbles32(const uint8_t *qs) {
    const __m128i t = _mm_loadu_si128((const __m128i *)qs);
    const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

/* 32 signed bytes -> f[4]: the 32 values as floats, in element order */
AVX2 static inline void widen_i8(__m256i q, __m256 f[4]) {
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    f[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    f[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
    f[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    f[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}

/* sum over a block of f[j] * x[j]: 32 values (widen_i8's f), 32 floats -> 8 partial sums */
AVX2 static inline __m256 dot_block(const __m256 f[4], const float *x) {
    __m256 s = _mm256_mul_ps(f[0], _mm256_loadu_ps(x));
    s = _mm256_fmadd_ps(f[1], _mm256_loadu_ps(x + 8), s);
    s = _mm256_fmadd_ps(f[2], _mm256_loadu_ps(x + 16), s);
    return _mm256_fmadd_ps(f[3], _mm256_loadu_ps(x + 24), s);
}

/* sum over the block of q[j] * x[j]: q 32 signed bytes, x 32 floats -> 8 partial sums */
AVX2 static inline __m256 dot_i8_f32(__m256i q, const float *x) {
    __m256 f[4];
    widen_i8(q, f);
    return dot_block(f, x);
}

/* (x[0] + x[8]) + (x[16] + x[24]) lane by lane: a block's sum of x, in 8 lanes */
AVX2 static inline __m256 sum_block(const float *x) {
    return _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)),
                         _mm256_add_ps(_mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)));
}

/* unsigned bytes a . signed bytes b -> 8 int32 sums of 4 products, as floats */
AVX2 static inline __m256 dot_us8(__m256i a, __m256i b) {
    const __m256i p16 = _mm256_maddubs_epi16(a, b);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

AVX2 static inline __m256i load32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* q6_k: block j = 4h + k of a super-block is 32 codes in element order: ql bytes 64h + 32(k%2) (nibble
 * k/2) | qh bytes 32h (bits 2k, 2k+1) << 4; its two halves have their own scales */
AVX2 static inline __m256i q6_k_codes(const uint8_t *restrict w, int j) {
    const int h = j / 4, kk = j % 4;
    const __m256i ql = load32(w + 64 * h + 32 * (kk % 2)), qh = load32(w + 128 + 32 * h);
    const __m256i lo = _mm256_and_si256(kk / 2 ? _mm256_srli_epi16(ql, 4) : ql, _mm256_set1_epi8(0x0F));
    const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * kk), _mm256_set1_epi8(3)), 4);
    return _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(32));
}

/* q6_k's block j: its two halves' sums f . x into acc, each with its own scale */
AVX2 static inline __m256 q6_k_block(const __m256 f[4], const float *x, __m256 da, __m256 db, __m256 acc) {
    const __m256 sa = _mm256_fmadd_ps(f[1], _mm256_loadu_ps(x + 8), _mm256_mul_ps(f[0], _mm256_loadu_ps(x)));
    const __m256 sb = _mm256_fmadd_ps(f[3], _mm256_loadu_ps(x + 24), _mm256_mul_ps(f[2], _mm256_loadu_ps(x + 16)));
    return _mm256_fmadd_ps(db, sb, _mm256_fmadd_ps(da, sa, acc));
}

/* installs the vec_dot_x4 slots (quants_x4_avx2.c); called by mg_install_avx2 */
void mg_install_x4_avx2(void);

#endif
