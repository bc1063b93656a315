/* What the x86 slot files share (ops_avx2.c, ops_avx512.c): the target attribute of their AVX2
 * code, exp's constants, and the loads and the transposition of attention's key rows, so that both
 * files round every score, probability and sum the same way (the NumPy twin's way).
 */
#ifndef MINIGPT_OPS_X86_H
#define MINIGPT_OPS_X86_H

#include <immintrin.h>
#include <stdint.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE __attribute__((always_inline)) inline /* so that a block's row count is a constant */

/* exp: clamps, Cody-Waite ln2 in two parts (the first product exact in the FMA), Cephes' polynomial */
#define EXP_LO -104.0f
#define EXP_HI 89.0f
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693147182464599609375f /* float(ln2) */
#define EXP_LN2_LO -1.904654299957768e-09f  /* ln2 - float(ln2) */
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

/* lanes added as ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)) */
AVX2 static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 4 accumulators -> their 4 sums, in order: each ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)) */
AVX2 static INLINE __m128 fold4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* 8 values of row x from column d: float32, or f16 converted as it loads (exactly) */
AVX2 static INLINE __m256 load8(const int f16, const void *x, int64_t d) {
    return f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)x + d)))
               : _mm256_loadu_ps((const float *)x + d);
}

/* Many rows against the same keys: the keys transposed. Lane j of scores_rx4's accumulators sums the
 * columns d = j (mod 8); here each lane gets accumulators of its own, with 8 keys across a vector,
 * so the same products go into the same chains, and the 8 lanes' sums add up vertically, in fold4's
 * order: the same floats, without the horizontal adds (~20 % of the dot form's time, on the ports
 * the FMAs need). The transposition costs ~25 shuffles per 64 values, which pays off once a dozen
 * rows share it (prefill); a decode step's few rows keep the dot form. */
#define T_KEYS 16     /* keys per transposed block: 2 AVX2 vectors, 1 AVX-512 */
#define T_MIN_ROWS 12 /* rows from which the scores go through the transposed keys */
#define T_MAX_HEAD_DIM 256 /* and head_dim up to: a transposed block's scratch is on the stack */

/* kt[d * T_KEYS + i] = k_i[d] for 16 keys (hd apart; f16 converted), hd a multiple of 8 */
AVX2 static INLINE void transpose_keys(const int f16, const void *k, int64_t hd, float *restrict kt) {
    const int64_t es = f16 ? 2 : 4;
    for (int h = 0; h < 2; h++)
        for (int64_t d = 0; d < hd; d += 8) {
            const char *k0 = (const char *)k + 8 * h * hd * es;
            __m256 r0 = load8(f16, k0, d), r1 = load8(f16, k0 + hd * es, d), r2 = load8(f16, k0 + 2 * hd * es, d);
            __m256 r3 = load8(f16, k0 + 3 * hd * es, d), r4 = load8(f16, k0 + 4 * hd * es, d);
            __m256 r5 = load8(f16, k0 + 5 * hd * es, d), r6 = load8(f16, k0 + 6 * hd * es, d);
            __m256 r7 = load8(f16, k0 + 7 * hd * es, d);
            const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
            const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            r0 = _mm256_shuffle_ps(t0, t2, 0x44), r1 = _mm256_shuffle_ps(t0, t2, 0xee);
            r2 = _mm256_shuffle_ps(t1, t3, 0x44), r3 = _mm256_shuffle_ps(t1, t3, 0xee);
            r4 = _mm256_shuffle_ps(t4, t6, 0x44), r5 = _mm256_shuffle_ps(t4, t6, 0xee);
            r6 = _mm256_shuffle_ps(t5, t7, 0x44), r7 = _mm256_shuffle_ps(t5, t7, 0xee);
            float *o = kt + d * T_KEYS + 8 * h; /* column d + m: the lo halves of r_m, r_(m+4); d + m + 4: their hi */
            _mm256_storeu_ps(o + 0 * T_KEYS, _mm256_permute2f128_ps(r0, r4, 0x20));
            _mm256_storeu_ps(o + 1 * T_KEYS, _mm256_permute2f128_ps(r1, r5, 0x20));
            _mm256_storeu_ps(o + 2 * T_KEYS, _mm256_permute2f128_ps(r2, r6, 0x20));
            _mm256_storeu_ps(o + 3 * T_KEYS, _mm256_permute2f128_ps(r3, r7, 0x20));
            _mm256_storeu_ps(o + 4 * T_KEYS, _mm256_permute2f128_ps(r0, r4, 0x31));
            _mm256_storeu_ps(o + 5 * T_KEYS, _mm256_permute2f128_ps(r1, r5, 0x31));
            _mm256_storeu_ps(o + 6 * T_KEYS, _mm256_permute2f128_ps(r2, r6, 0x31));
            _mm256_storeu_ps(o + 7 * T_KEYS, _mm256_permute2f128_ps(r3, r7, 0x31));
        }
}

#endif /* MINIGPT_OPS_X86_H */
