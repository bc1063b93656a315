/* AVX2 + FMA variants of the decoder's non-matmul slots (ops.h), installed by mg_cpu_init
 * (cpu.c) only on CPUs that have them. Like quants_avx2.c, each function carries a target attribute
 * instead of the file being built with -mavx2.
 *
 * exp8 is a vectorized expf: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2 (ln2 in two parts,
 * the first product exact in the FMA), Cephes' degree-7 polynomial for e^r, then 2^n applied in two
 * halves so that results in the subnormal range round once, like expf's. Under 1 ulp from the exact
 * value over the normal range (the tests allow 2); exp(-inf) and anything below -104 give 0, above
 * 88.73 inf; NaN stays NaN.
 *
 * Attention tiles: scores are dots of 3 query rows with 4 keys at once (12 accumulators; each 8-wide
 * step loads 7 vectors for 12 FMAs), folded into 4 sums per row by horizontal adds; a dozen rows or
 * more go through transposed keys instead (ops_x86.h), into the same floats. P.V keeps a block
 * of 3 rows x 32 outputs in 12 accumulators while the tile's keys stream by. head_dim need not be a
 * multiple of 8: the last partial vector of a row goes through masked loads and stores. The f16
 * variants load K and V rows as halves and convert them in registers (head_dim a multiple of 8).
 */
#include "ops.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)

#include <math.h>
#include <string.h>

#include "ops_x86.h"

/* --- helpers ------------------------------------------------------------------------------------- */

static const int32_t mask_tab[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/* lanes [0, k) set, 0 <= k <= 8 */
AVX2 static inline __m256i mask_first(int64_t k) {
    return _mm256_loadu_si256((const __m256i *)(mask_tab + 8 - k));
}

AVX2 static inline float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2 static inline __m256 exp8(__m256 x) {
    /* max(lo, x) and min(hi, x) return x when it is NaN */
    x = _mm256_min_ps(_mm256_set1_ps(EXP_HI), _mm256_max_ps(_mm256_set1_ps(EXP_LO), x));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
    const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    const __m256i ni = _mm256_cvtps_epi32(n), n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(y, s1), s2);
}

/* --- elementwise ------------------------------------------------------------------------------- */

AVX2 static void exp_avx2(const float *x, float *y, int64_t n) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, exp8(_mm256_loadu_ps(x + j)));
    if (j < n) {
        const __m256i mk = mask_first(n - j);
        _mm256_maskstore_ps(y + j, mk, exp8(_mm256_maskload_ps(x + j, mk)));
    }
}

AVX2 static void rms_norm_avx2(const float *restrict x, const float *restrict g, float *restrict out,
                               int64_t n, int64_t d, float eps) {
    for (int64_t i = 0; i < n; i++) {
        const float *restrict xi = x + i * d;
        float *restrict oi = out + i * d;
        __m256d a0 = _mm256_setzero_pd(), a1 = a0;
        int64_t j = 0;
        for (; j + 8 <= d; j += 8) {
            const __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(xi + j)), hi = _mm256_cvtps_pd(_mm_loadu_ps(xi + j + 4));
            a0 = _mm256_fmadd_pd(lo, lo, a0);
            a1 = _mm256_fmadd_pd(hi, hi, a1);
        }
        __m256d a = _mm256_add_pd(a0, a1);
        __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
        double ss = _mm_cvtsd_f64(_mm_add_sd(s2, _mm_unpackhi_pd(s2, s2)));
        for (; j < d; j++) ss += (double)xi[j] * xi[j];
        const float inv = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
        const __m256 vinv = _mm256_set1_ps(inv);
        for (j = 0; j + 8 <= d; j += 8)
            _mm256_storeu_ps(oi + j, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xi + j), vinv), _mm256_loadu_ps(g + j)));
        for (; j < d; j++) oi[j] = xi[j] * inv * g[j];
    }
}

AVX2 static void rope_avx2(float *restrict x, int64_t n, int64_t heads, int64_t hd, int64_t rope_dim,
                           const float *restrict cos_t, const float *restrict sin_t) {
    const int64_t half = rope_dim / 2, p4 = half / 4 * 4;
    float cc[MG_ATTN_MAX_HEAD_DIM], ss[MG_ATTN_MAX_HEAD_DIM]; /* this token's tables, each entry twice */
    for (int64_t i = 0; i < n; i++) {
        const float *restrict c = cos_t + i * half, *restrict s = sin_t + i * half;
        for (int64_t p = 0; p < p4; p += 4) {
            const __m128 c4 = _mm_loadu_ps(c + p), s4 = _mm_loadu_ps(s + p);
            _mm256_storeu_ps(cc + 2 * p, _mm256_set_m128(_mm_unpackhi_ps(c4, c4), _mm_unpacklo_ps(c4, c4)));
            _mm256_storeu_ps(ss + 2 * p, _mm256_set_m128(_mm_unpackhi_ps(s4, s4), _mm_unpacklo_ps(s4, s4)));
        }
        for (int64_t h = 0; h < heads; h++) {
            float *restrict v = x + (i * heads + h) * hd;
            for (int64_t p = 0; p < p4; p += 4) { /* even lanes x0 c - x1 s, odd lanes x1 c + x0 s */
                const __m256 xv = _mm256_loadu_ps(v + 2 * p), xs = _mm256_permute_ps(xv, 0xB1);
                const __m256 t = _mm256_mul_ps(xs, _mm256_loadu_ps(ss + 2 * p));
                _mm256_storeu_ps(v + 2 * p, _mm256_fmaddsub_ps(xv, _mm256_loadu_ps(cc + 2 * p), t));
            }
            for (int64_t p = p4; p < half; p++) {
                const float x0 = v[2 * p], x1 = v[2 * p + 1];
                v[2 * p] = x0 * c[p] - x1 * s[p];
                v[2 * p + 1] = x0 * s[p] + x1 * c[p];
            }
        }
    }
}

AVX2 static void rope_neox_avx2(float *restrict x, int64_t n, int64_t heads, int64_t hd, int64_t rope_dim,
                                const float *restrict cos_t, const float *restrict sin_t) {
    const int64_t half = rope_dim / 2, p8 = half / 8 * 8;
    for (int64_t i = 0; i < n; i++) {
        const float *restrict c = cos_t + i * half, *restrict s = sin_t + i * half;
        for (int64_t h = 0; h < heads; h++) {
            float *restrict v = x + (i * heads + h) * hd;
            for (int64_t p = 0; p < p8; p += 8) {
                const __m256 x0 = _mm256_loadu_ps(v + p), x1 = _mm256_loadu_ps(v + p + half);
                const __m256 cv = _mm256_loadu_ps(c + p), sv = _mm256_loadu_ps(s + p);
                _mm256_storeu_ps(v + p, _mm256_fmsub_ps(x0, cv, _mm256_mul_ps(x1, sv)));
                _mm256_storeu_ps(v + p + half, _mm256_fmadd_ps(x0, sv, _mm256_mul_ps(x1, cv)));
            }
            for (int64_t p = p8; p < half; p++) {
                const float x0 = v[p], x1 = v[p + half];
                v[p] = x0 * c[p] - x1 * s[p];
                v[p + half] = x0 * s[p] + x1 * c[p];
            }
        }
    }
}

/* g * sigmoid(z) * u with z = g (SwiGLU) or z = 2 sqrt(2/pi) (g + 0.044715 g^3) (GELU-tanh) */
AVX2 static INLINE __m256 gated8(__m256 g, __m256 u, int gelu) {
    const __m256 z = gelu ? _mm256_mul_ps(_mm256_set1_ps(1.5957691216057308f),
                                          _mm256_mul_ps(g, _mm256_fmadd_ps(_mm256_set1_ps(0.044715f),
                                                                           _mm256_mul_ps(g, g), _mm256_set1_ps(1.0f))))
                          : g;
    const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), z));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

AVX2 static INLINE void gated_avx2(float *restrict g, const float *restrict u, int64_t m, int gelu) {
    int64_t j = 0;
    for (; j + 8 <= m; j += 8) _mm256_storeu_ps(g + j, gated8(_mm256_loadu_ps(g + j), _mm256_loadu_ps(u + j), gelu));
    if (j < m) {
        const __m256i mk = mask_first(m - j);
        _mm256_maskstore_ps(g + j, mk, gated8(_mm256_maskload_ps(g + j, mk), _mm256_maskload_ps(u + j, mk), gelu));
    }
}

AVX2 static void swiglu_avx2(float *restrict g, const float *restrict u, int64_t m) { gated_avx2(g, u, m, 0); }

AVX2 static void geglu_avx2(float *restrict g, const float *restrict u, int64_t m) { gated_avx2(g, u, m, 1); }

AVX2 static void add_avx2(float *restrict x, const float *restrict y, int64_t m) {
    int64_t j = 0;
    for (; j + 8 <= m; j += 8) _mm256_storeu_ps(x + j, _mm256_add_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j)));
    for (; j < m; j++) x[j] += y[j];
}

/* --- attention ------------------------------------------------------------------------------------ */

/* the sum of one accumulator, added up as fold4 adds each: a score is the same float whether
 * scores_rx4 or dot_avx2 computed it */
AVX2 static inline float fold1(__m256 a) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a, a), a);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

/* s[i * lds + t] = q_i . k_t for rows i < rb (1 to 3) and 4 keys k_0 .. k_3 (hd apart; float32, or f16
 * with hd a multiple of 8) */
AVX2 static INLINE void scores_rx4(const int rb, const int f16, const float *q, const void *k, int64_t hd, float *s,
                                   int64_t lds) {
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m256 a20 = a00, a21 = a00, a22 = a00, a23 = a00;
    const int64_t es = f16 ? 2 : 4; /* bytes per element */
    const char *k0 = (const char *)k, *k1 = k0 + hd * es, *k2 = k0 + 2 * hd * es, *k3 = k0 + 3 * hd * es;
    int64_t d = 0;
    for (; d + 8 <= hd; d += 8) {
        const __m256 v0 = load8(f16, k0, d), v1 = load8(f16, k1, d), v2 = load8(f16, k2, d), v3 = load8(f16, k3, d);
        const __m256 x0 = _mm256_loadu_ps(q + d);
        a00 = _mm256_fmadd_ps(x0, v0, a00), a01 = _mm256_fmadd_ps(x0, v1, a01);
        a02 = _mm256_fmadd_ps(x0, v2, a02), a03 = _mm256_fmadd_ps(x0, v3, a03);
        if (rb > 1) {
            const __m256 x1 = _mm256_loadu_ps(q + hd + d);
            a10 = _mm256_fmadd_ps(x1, v0, a10), a11 = _mm256_fmadd_ps(x1, v1, a11);
            a12 = _mm256_fmadd_ps(x1, v2, a12), a13 = _mm256_fmadd_ps(x1, v3, a13);
        }
        if (rb > 2) {
            const __m256 x2 = _mm256_loadu_ps(q + 2 * hd + d);
            a20 = _mm256_fmadd_ps(x2, v0, a20), a21 = _mm256_fmadd_ps(x2, v1, a21);
            a22 = _mm256_fmadd_ps(x2, v2, a22), a23 = _mm256_fmadd_ps(x2, v3, a23);
        }
    }
    if (!f16 && d < hd) {
        const __m256i mk = mask_first(hd - d);
        const float *f0 = (const float *)k0, *f1 = (const float *)k1, *f2 = (const float *)k2, *f3 = (const float *)k3;
        const __m256 v0 = _mm256_maskload_ps(f0 + d, mk), v1 = _mm256_maskload_ps(f1 + d, mk);
        const __m256 v2 = _mm256_maskload_ps(f2 + d, mk), v3 = _mm256_maskload_ps(f3 + d, mk);
        const __m256 x0 = _mm256_maskload_ps(q + d, mk);
        a00 = _mm256_fmadd_ps(x0, v0, a00), a01 = _mm256_fmadd_ps(x0, v1, a01);
        a02 = _mm256_fmadd_ps(x0, v2, a02), a03 = _mm256_fmadd_ps(x0, v3, a03);
        if (rb > 1) {
            const __m256 x1 = _mm256_maskload_ps(q + hd + d, mk);
            a10 = _mm256_fmadd_ps(x1, v0, a10), a11 = _mm256_fmadd_ps(x1, v1, a11);
            a12 = _mm256_fmadd_ps(x1, v2, a12), a13 = _mm256_fmadd_ps(x1, v3, a13);
        }
        if (rb > 2) {
            const __m256 x2 = _mm256_maskload_ps(q + 2 * hd + d, mk);
            a20 = _mm256_fmadd_ps(x2, v0, a20), a21 = _mm256_fmadd_ps(x2, v1, a21);
            a22 = _mm256_fmadd_ps(x2, v2, a22), a23 = _mm256_fmadd_ps(x2, v3, a23);
        }
    }
    _mm_storeu_ps(s, fold4(a00, a01, a02, a03));
    if (rb > 1) _mm_storeu_ps(s + lds, fold4(a10, a11, a12, a13));
    if (rb > 2) _mm_storeu_ps(s + 2 * lds, fold4(a20, a21, a22, a23));
}

AVX2 static INLINE float dot_avx2(const int f16, const float *a, const void *b, int64_t hd) {
    __m256 acc = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 8 <= hd; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), load8(f16, b, d), acc);
    if (!f16 && d < hd) {
        const __m256i mk = mask_first(hd - d);
        acc = _mm256_fmadd_ps(_mm256_maskload_ps(a + d, mk), _mm256_maskload_ps((const float *)b + d, mk), acc);
    }
    return fold1(acc);
}

/* s[i * lds + t] = q_i . k_t for rows i < rb (1 to 4) and the 16 keys of kt: per lane j, 8 chains
 * (rows x 2 key vectors) over the columns j, j + 8, ...; the lanes' sums wait in `lanes` */
AVX2 static INLINE void scores_t4(const int rb, const float *q, int64_t hd, const float *restrict kt, float *s,
                                  int64_t lds) {
    __m256 lanes[8][8]; /* [lane][row * 2 + key vector] */
    for (int j = 0; j < 8; j++) {
        __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
        for (int64_t d = j; d < hd; d += 8) {
            const __m256 k0 = _mm256_loadu_ps(kt + d * T_KEYS), k1 = _mm256_loadu_ps(kt + d * T_KEYS + 8);
            __m256 x = _mm256_broadcast_ss(q + d);
            a00 = _mm256_fmadd_ps(x, k0, a00), a01 = _mm256_fmadd_ps(x, k1, a01);
            if (rb > 1) x = _mm256_broadcast_ss(q + hd + d), a10 = _mm256_fmadd_ps(x, k0, a10), a11 = _mm256_fmadd_ps(x, k1, a11);
            if (rb > 2) x = _mm256_broadcast_ss(q + 2 * hd + d), a20 = _mm256_fmadd_ps(x, k0, a20), a21 = _mm256_fmadd_ps(x, k1, a21);
            if (rb > 3) x = _mm256_broadcast_ss(q + 3 * hd + d), a30 = _mm256_fmadd_ps(x, k0, a30), a31 = _mm256_fmadd_ps(x, k1, a31);
        }
        lanes[j][0] = a00, lanes[j][1] = a01, lanes[j][2] = a10, lanes[j][3] = a11;
        lanes[j][4] = a20, lanes[j][5] = a21, lanes[j][6] = a30, lanes[j][7] = a31;
    }
    for (int u = 0; u < 2 * rb; u++) {
        const __m256 lo = _mm256_add_ps(_mm256_add_ps(lanes[0][u], lanes[1][u]), _mm256_add_ps(lanes[2][u], lanes[3][u]));
        const __m256 hi = _mm256_add_ps(_mm256_add_ps(lanes[4][u], lanes[5][u]), _mm256_add_ps(lanes[6][u], lanes[7][u]));
        _mm256_storeu_ps(s + (u / 2) * lds + 8 * (u % 2), _mm256_add_ps(lo, hi));
    }
}

/* rows 3 at a time: a key block's rows are loaded (or converted) once per 3 rows */
AVX2 static INLINE void scores_avx2(const int f16, const float *restrict q, int64_t r, const void *restrict k,
                                    int64_t tn, int64_t hd, float *restrict s, int64_t lds) {
    const int64_t es = f16 ? 2 : 4;
    int64_t t = 0;
    if (r >= T_MIN_ROWS && hd % 8 == 0 && hd <= T_MAX_HEAD_DIM) {
        float kt[T_MAX_HEAD_DIM * T_KEYS];
        for (; t + T_KEYS <= tn; t += T_KEYS) {
            transpose_keys(f16, (const char *)k + t * hd * es, hd, kt);
            int64_t i = 0;
            for (; i + 4 <= r; i += 4) scores_t4(4, q + i * hd, hd, kt, s + i * lds + t, lds);
            if (r - i == 3) scores_t4(3, q + i * hd, hd, kt, s + i * lds + t, lds);
            if (r - i == 2) scores_t4(2, q + i * hd, hd, kt, s + i * lds + t, lds);
            if (r - i == 1) scores_t4(1, q + i * hd, hd, kt, s + i * lds + t, lds);
        }
    }
    for (; t + 4 <= tn; t += 4) { /* key blocks outer: 4 key rows stay in L1 while the rows go by */
        const char *kt = (const char *)k + t * hd * es;
        int64_t i = 0;
        for (; i + 3 <= r; i += 3) scores_rx4(3, f16, q + i * hd, kt, hd, s + i * lds + t, lds);
        if (r - i == 2) scores_rx4(2, f16, q + i * hd, kt, hd, s + i * lds + t, lds);
        if (r - i == 1) scores_rx4(1, f16, q + i * hd, kt, hd, s + i * lds + t, lds);
    }
    for (; t < tn; t++)
        for (int64_t i = 0; i < r; i++) s[i * lds + t] = dot_avx2(f16, q + i * hd, (const char *)k + t * hd * es, hd);
}

AVX2 static void attn_scores_avx2(const float *restrict q, int64_t r, const float *restrict k, int64_t tn,
                                  int64_t hd, float *restrict s, int64_t lds) {
    scores_avx2(0, q, r, k, tn, hd, s, lds);
}

AVX2 static void attn_scores_f16_avx2(const float *restrict q, int64_t r, const uint16_t *restrict k, int64_t tn,
                                      int64_t hd, float *restrict s, int64_t lds) {
    scores_avx2(1, q, r, k, tn, hd, s, lds);
}

/* o[i, d0 .. d0 + 32) += sum_t p[i, t] v[t, d0 ..] for rows i < rb (1..3, a constant once inlined),
 * in named accumulators: GCC keeps an array of them in memory, storing it on every key */
#define LD(i, u) (rb > i ? _mm256_loadu_ps(o + i * hd + 8 * u) : _mm256_setzero_ps())
#define ST(i, u, a) if (rb > i) _mm256_storeu_ps(o + i * hd + 8 * u, a)
AVX2 static INLINE void pv_rx32(const int rb, const int f16, const float *p, int64_t ldp, const void *v, int64_t tn,
                                int64_t hd, float *o) {
    const int64_t es = f16 ? 2 : 4;
    __m256 a00 = LD(0, 0), a01 = LD(0, 1), a02 = LD(0, 2), a03 = LD(0, 3);
    __m256 a10 = LD(1, 0), a11 = LD(1, 1), a12 = LD(1, 2), a13 = LD(1, 3);
    __m256 a20 = LD(2, 0), a21 = LD(2, 1), a22 = LD(2, 2), a23 = LD(2, 3);
    for (int64_t t = 0; t < tn; t++) {
        const char *vt = (const char *)v + t * hd * es;
        const __m256 v0 = load8(f16, vt, 0), v1 = load8(f16, vt, 8), v2 = load8(f16, vt, 16), v3 = load8(f16, vt, 24);
        __m256 pi = _mm256_broadcast_ss(p + t);
        a00 = _mm256_fmadd_ps(pi, v0, a00), a01 = _mm256_fmadd_ps(pi, v1, a01);
        a02 = _mm256_fmadd_ps(pi, v2, a02), a03 = _mm256_fmadd_ps(pi, v3, a03);
        if (rb > 1) {
            pi = _mm256_broadcast_ss(p + ldp + t);
            a10 = _mm256_fmadd_ps(pi, v0, a10), a11 = _mm256_fmadd_ps(pi, v1, a11);
            a12 = _mm256_fmadd_ps(pi, v2, a12), a13 = _mm256_fmadd_ps(pi, v3, a13);
        }
        if (rb > 2) {
            pi = _mm256_broadcast_ss(p + 2 * ldp + t);
            a20 = _mm256_fmadd_ps(pi, v0, a20), a21 = _mm256_fmadd_ps(pi, v1, a21);
            a22 = _mm256_fmadd_ps(pi, v2, a22), a23 = _mm256_fmadd_ps(pi, v3, a23);
        }
    }
    ST(0, 0, a00); ST(0, 1, a01); ST(0, 2, a02); ST(0, 3, a03);
    ST(1, 0, a10); ST(1, 1, a11); ST(1, 2, a12); ST(1, 3, a13);
    ST(2, 0, a20); ST(2, 1, a21); ST(2, 2, a22); ST(2, 3, a23);
}
#undef LD
#undef ST

/* the same for 8 columns (or fewer: the lanes of mk) */
AVX2 static INLINE void pv_rx8(const int rb, const int f16, const float *p, int64_t ldp, const void *v, int64_t tn,
                               int64_t hd, float *o, __m256i mk) {
    __m256 a0 = _mm256_maskload_ps(o, mk), a1 = _mm256_setzero_ps(), a2 = a1;
    if (rb > 1) a1 = _mm256_maskload_ps(o + hd, mk);
    if (rb > 2) a2 = _mm256_maskload_ps(o + 2 * hd, mk);
    for (int64_t t = 0; t < tn; t++) {
        const __m256 vt = f16 ? load8(1, v, t * hd) : _mm256_maskload_ps((const float *)v + t * hd, mk);
        a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + t), vt, a0);
        if (rb > 1) a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + ldp + t), vt, a1);
        if (rb > 2) a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + 2 * ldp + t), vt, a2);
    }
    _mm256_maskstore_ps(o, mk, a0);
    if (rb > 1) _mm256_maskstore_ps(o + hd, mk, a1);
    if (rb > 2) _mm256_maskstore_ps(o + 2 * hd, mk, a2);
}

/* an f16 v (hd a multiple of 8) is converted as it loads; its 8-column blocks are whole, never masked */
AVX2 static INLINE void pv_avx2(const int f16, const float *restrict p, int64_t ldp, int64_t r, const void *restrict v,
                                int64_t tn, int64_t hd, float *restrict o) {
    const int64_t es = f16 ? 2 : 4;
    int64_t d = 0;
    for (; d + 32 <= hd; d += 32) { /* column blocks outer: the tile's slice of V stays in L1 */
        const char *vd = (const char *)v + d * es;
        int64_t i = 0;
        for (; i + 3 <= r; i += 3) pv_rx32(3, f16, p + i * ldp, ldp, vd, tn, hd, o + i * hd + d);
        if (r - i == 2) pv_rx32(2, f16, p + i * ldp, ldp, vd, tn, hd, o + i * hd + d);
        if (r - i == 1) pv_rx32(1, f16, p + i * ldp, ldp, vd, tn, hd, o + i * hd + d);
    }
    for (; d < hd; d += 8) {
        const char *vd = (const char *)v + d * es;
        const __m256i mk = mask_first(hd - d < 8 ? hd - d : 8);
        int64_t i = 0;
        for (; i + 3 <= r; i += 3) pv_rx8(3, f16, p + i * ldp, ldp, vd, tn, hd, o + i * hd + d, mk);
        if (r - i == 2) pv_rx8(2, f16, p + i * ldp, ldp, vd, tn, hd, o + i * hd + d, mk);
        if (r - i == 1) pv_rx8(1, f16, p + i * ldp, ldp, vd, tn, hd, o + i * hd + d, mk);
    }
}

AVX2 static void attn_pv_avx2(const float *restrict p, int64_t ldp, int64_t r, const float *restrict v,
                              int64_t tn, int64_t hd, float *restrict o) {
    pv_avx2(0, p, ldp, r, v, tn, hd, o);
}

AVX2 static void attn_pv_f16_avx2(const float *restrict p, int64_t ldp, int64_t r, const uint16_t *restrict v,
                                  int64_t tn, int64_t hd, float *restrict o) {
    pv_avx2(1, p, ldp, r, v, tn, hd, o);
}

AVX2 static float exp_sum_avx2(float *restrict s, int64_t tn, float m) {
    const __m256 vm = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 16 <= tn; t += 16) { /* two independent exps in flight: each is a long chain */
        const __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t), vm));
        const __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t + 8), vm));
        _mm256_storeu_ps(s + t, e0), _mm256_storeu_ps(s + t + 8, e1);
        acc = _mm256_add_ps(_mm256_add_ps(acc, e0), e1);
    }
    for (; t + 8 <= tn; t += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t), vm));
        _mm256_storeu_ps(s + t, e);
        acc = _mm256_add_ps(acc, e);
    }
    if (t < tn) {
        const __m256i mk = mask_first(tn - t);
        const __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_maskload_ps(s + t, mk), vm)), _mm256_castsi256_ps(mk));
        _mm256_maskstore_ps(s + t, mk, e);
        acc = _mm256_add_ps(acc, e);
    }
    return hsum8(acc);
}

AVX2 static float max_avx2(const float *restrict s, int64_t tn, float m0) {
    __m256 mx = _mm256_set1_ps(m0);
    int64_t t = 0;
    for (; t + 8 <= tn; t += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + t));
    float m = hmax8(mx);
    for (; t < tn; t++) m = s[t] > m ? s[t] : m;
    return m;
}

/* --- KV cache rows ------------------------------------------------------------------------------------- */

/* F16C rounds to nearest even as mg_fp32_to_fp16 does (NaNs too): the tail's bits are the vectors' */
AVX2 static void f32_to_f16_avx2(const float *restrict x, uint16_t *restrict y, int64_t n) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm_storeu_si128((__m128i *)(y + j), _mm256_cvtps_ph(_mm256_loadu_ps(x + j), _MM_FROUND_TO_NEAREST_INT));
    for (; j < n; j++) y[j] = mg_fp32_to_fp16(x[j]);
}

AVX2 static void f16_to_f32_avx2(const uint16_t *restrict x, float *restrict y, int64_t n) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + j))));
    for (; j < n; j++) y[j] = mg_fp16_to_fp32(x[j]);
}

/* (float)q * d: the int8 -> float conversions are exact, the product rounds once, as in ops.c */
AVX2 static void q8_0_to_f32_avx2(const uint8_t *restrict x, float *restrict y, int64_t rows, int64_t hd) {
    for (int64_t i = 0; i < rows; i++, x += hd + hd / 8, y += hd)
        for (int64_t k = 0; k < hd / MG_QK; k++) {
            float dk;
            memcpy(&dk, x + hd + 4 * k, sizeof dk);
            const __m256 d = _mm256_set1_ps(dk);
            for (int u = 0; u < MG_QK; u += 8) {
                const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(x + k * MG_QK + u)));
                _mm256_storeu_ps(y + k * MG_QK + u, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
            }
        }
}

int mg_install_ops_avx2(void) {
    mg_lops.rms_norm = rms_norm_avx2;
    mg_lops.rope = rope_avx2;
    mg_lops.rope_neox = rope_neox_avx2;
    mg_lops.swiglu = swiglu_avx2;
    mg_lops.geglu = geglu_avx2;
    mg_lops.add = add_avx2;
    mg_lops.exp = exp_avx2;
    mg_lops.attn_scores = attn_scores_avx2;
    mg_lops.attn_pv = attn_pv_avx2;
    mg_lops.attn_scores_f16 = attn_scores_f16_avx2;
    mg_lops.attn_pv_f16 = attn_pv_f16_avx2;
    mg_lops.exp_sum = exp_sum_avx2;
    mg_lops.max = max_avx2;
    mg_lops.f32_to_f16 = f32_to_f16_avx2;
    mg_lops.f16_to_f32 = f16_to_f32_avx2;
    mg_lops.q8_0_to_f32 = q8_0_to_f32_avx2; /* f32_to_q8_0 is ops.c's over the AVX2 quantizer */
    return 1;
}

#else

int mg_install_ops_avx2(void) { return 0; }

#endif
