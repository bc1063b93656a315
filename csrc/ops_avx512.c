/* AVX-512 variants of attention's inner slots (ops.h): scores (f16 keys of a decode step's few rows
 * too), P.V over float32 or f16 values, and the probabilities' exp and sum. mg_cpu_init installs them
 * over the AVX2 slots on CPUs with the avx512vnni kernels (cpu.c), and they hand what they do not
 * cover (float32 keys of few rows, head_dim not a multiple of 16 in P.V) back to those slots.
 *
 * They round exactly as the AVX2 slots do, so one NumPy twin (numpy_ref.attention) holds for both:
 * a score's lanes, a value's FMAs and a probability's exp are per-element chains that do not depend
 * on the vector width, and the sums keep AVX2's 8 lanes (a 16-wide exp adds its low half, then its
 * high half). What the wider registers buy is fewer instructions per FMA and twice the registers:
 * scores take 8 rows at a time (8 independent chains, each FMA broadcasting its q from memory), or
 * for a decode step's few rows 8 f16 keys at a time, two keys per register (12 accumulators for 3
 * rows); P.V 4 rows x 64 outputs (16 accumulators). The AVX2 slots' 16 registers could not hold a
 * decode step's 12 accumulators and its operands: they spilled to the stack on every key. Measured
 * (bench/attention.py, SmolLM2's decode step: 9 heads over 3 kv heads of 64, f16 cache, 1 thread):
 * 130 positions 17.3 -> 20.9 GFMA/s, 2,048 positions 23.5 -> 31.4.
 */
#include "ops.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)

#include "ops_x86.h"

#define AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

static struct { /* the AVX2 slots, for the cases left to them */
    void (*scores)(const float *restrict, int64_t, const float *restrict, int64_t, int64_t, float *restrict, int64_t);
    void (*scores_f16)(const float *restrict, int64_t, const uint16_t *restrict, int64_t, int64_t, float *restrict,
                       int64_t);
    void (*pv)(const float *restrict, int64_t, int64_t, const float *restrict, int64_t, int64_t, float *restrict);
    void (*pv_f16)(const float *restrict, int64_t, int64_t, const uint16_t *restrict, int64_t, int64_t,
                   float *restrict);
} ymm;

/* --- scores ----------------------------------------------------------------------------------------- */

/* s[i * lds + t] = q_i . k_t for rows i < rb (1 to 8) and the 16 keys of kt (transpose_keys): as
 * ops_x86.h's transposition comment says, one chain per row and lane j, over columns j, j + 8, ... */
AVX512 static INLINE void scores_t8(const int rb, const float *q, int64_t hd, const float *restrict kt, float *s,
                                    int64_t lds) {
    __m512 lanes[8][8]; /* [lane][row] */
    for (int j = 0; j < 8; j++) {
        __m512 a[8];
        for (int i = 0; i < rb; i++) a[i] = _mm512_setzero_ps();
        for (int64_t d = j; d < hd; d += 8) {
            const __m512 k = _mm512_loadu_ps(kt + d * T_KEYS);
            for (int i = 0; i < rb; i++) a[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i * hd + d]), k, a[i]);
        }
        for (int i = 0; i < rb; i++) lanes[j][i] = a[i];
    }
    for (int i = 0; i < rb; i++) { /* fold4's order */
        const __m512 lo = _mm512_add_ps(_mm512_add_ps(lanes[0][i], lanes[1][i]), _mm512_add_ps(lanes[2][i], lanes[3][i]));
        const __m512 hi = _mm512_add_ps(_mm512_add_ps(lanes[4][i], lanes[5][i]), _mm512_add_ps(lanes[6][i], lanes[7][i]));
        _mm512_storeu_ps(s + i * lds, _mm512_add_ps(lo, hi));
    }
}

/* the upper 8 lanes */
AVX512 static inline __m256 upper(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }

/* s[i * lds + t] = q_i . k_t for rows i < rb (1 to 3) and 8 keys k_0 .. k_7 (hd apart, f16, hd a
 * multiple of 8): a decode step's few rows. Each register holds two keys' 8 lanes, so its chains are
 * those of the AVX2 slot's accumulators (lane j sums the columns d = j mod 8, in order), and its
 * halves fold as that slot folds them: the same floats, in half the instructions and no spills. */
AVX512 static INLINE void scores_rx8_f16(const int rb, const float *q, const uint16_t *k, int64_t hd, float *s,
                                         int64_t lds) {
    __m512 a[3][4];
    for (int i = 0; i < rb; i++)
        for (int p = 0; p < 4; p++) a[i][p] = _mm512_setzero_ps();
    for (int64_t d = 0; d < hd; d += 8) {
        __m512 kv[4];
        for (int p = 0; p < 4; p++) {
            const __m128i lo = _mm_loadu_si128((const __m128i *)(k + 2 * p * hd + d));
            const __m128i hi = _mm_loadu_si128((const __m128i *)(k + (2 * p + 1) * hd + d));
            kv[p] = _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
        }
        for (int i = 0; i < rb; i++) {
            const __m256d q8 = _mm256_castps_pd(_mm256_loadu_ps(q + i * hd + d));
            const __m512 x = _mm512_castpd_ps(_mm512_broadcast_f64x4(q8)); /* its 8 columns for both keys */
            for (int p = 0; p < 4; p++) a[i][p] = _mm512_fmadd_ps(x, kv[p], a[i][p]);
        }
    }
    for (int i = 0; i < rb; i++)
        for (int h = 0; h < 2; h++) {
            const __m512 p0 = a[i][2 * h], p1 = a[i][2 * h + 1];
            _mm_storeu_ps(s + i * lds + 4 * h, fold4(_mm512_castps512_ps256(p0), upper(p0), _mm512_castps512_ps256(p1),
                                                     upper(p1)));
        }
}

/* whole 16-key blocks here, the rest (and few rows) by the AVX2 slot; returns the keys done */
AVX512 static INLINE int64_t scores_avx512(const int f16, const float *restrict q, int64_t r, const void *restrict k,
                                           int64_t tn, int64_t hd, float *restrict s, int64_t lds) {
    if (r < T_MIN_ROWS || hd % 8 != 0 || hd > T_MAX_HEAD_DIM) return 0;
    const int64_t es = f16 ? 2 : 4;
    float kt[T_MAX_HEAD_DIM * T_KEYS];
    int64_t t = 0;
    for (; t + T_KEYS <= tn; t += T_KEYS) {
        transpose_keys(f16, (const char *)k + t * hd * es, hd, kt);
        int64_t i = 0;
        for (; i + 8 <= r; i += 8) scores_t8(8, q + i * hd, hd, kt, s + i * lds + t, lds);
        switch (r - i) { /* a constant row count in each copy */
        case 7: scores_t8(7, q + i * hd, hd, kt, s + i * lds + t, lds); break;
        case 6: scores_t8(6, q + i * hd, hd, kt, s + i * lds + t, lds); break;
        case 5: scores_t8(5, q + i * hd, hd, kt, s + i * lds + t, lds); break;
        case 4: scores_t8(4, q + i * hd, hd, kt, s + i * lds + t, lds); break;
        case 3: scores_t8(3, q + i * hd, hd, kt, s + i * lds + t, lds); break;
        case 2: scores_t8(2, q + i * hd, hd, kt, s + i * lds + t, lds); break;
        case 1: scores_t8(1, q + i * hd, hd, kt, s + i * lds + t, lds); break;
        }
    }
    return t;
}

AVX512 static void attn_scores_avx512(const float *restrict q, int64_t r, const float *restrict k, int64_t tn,
                                      int64_t hd, float *restrict s, int64_t lds) {
    const int64_t t = scores_avx512(0, q, r, k, tn, hd, s, lds);
    if (t < tn) ymm.scores(q, r, k + t * hd, tn - t, hd, s + t, lds);
}

AVX512 static void attn_scores_f16_avx512(const float *restrict q, int64_t r, const uint16_t *restrict k, int64_t tn,
                                          int64_t hd, float *restrict s, int64_t lds) {
    int64_t t = scores_avx512(1, q, r, k, tn, hd, s, lds);
    if (t == 0 && hd % 8 == 0) /* few rows: 8 keys at a time, rows 3 at a time */
        for (; t + 8 <= tn; t += 8) {
            int64_t i = 0;
            for (; i + 3 <= r; i += 3) scores_rx8_f16(3, q + i * hd, k + t * hd, hd, s + i * lds + t, lds);
            if (r - i == 2) scores_rx8_f16(2, q + i * hd, k + t * hd, hd, s + i * lds + t, lds);
            if (r - i == 1) scores_rx8_f16(1, q + i * hd, k + t * hd, hd, s + i * lds + t, lds);
        }
    if (t < tn) ymm.scores_f16(q, r, k + t * hd, tn - t, hd, s + t, lds);
}

/* --- P.V -------------------------------------------------------------------------------------------- */

/* 16 values of row x from column d: float32, or f16 converted as it loads (exactly) */
AVX512 static INLINE __m512 load16(const int f16, const void *x, int64_t d) {
    return f16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)x + d)))
               : _mm512_loadu_ps((const float *)x + d);
}

/* o[i, 0 .. 16 * nv) += sum_t p[i, t] v[t, ..] for rows i < rb (1..4) and nv (1..4) vectors of
 * columns: per output, one FMA per key in key order, as the AVX2 slot */
AVX512 static INLINE void pv_r4(const int rb, const int nv, const int f16, const float *p, int64_t ldp, const void *v,
                                int64_t tn, int64_t hd, float *o) {
    __m512 a[4][4];
    for (int i = 0; i < rb; i++)
        for (int u = 0; u < nv; u++) a[i][u] = _mm512_loadu_ps(o + i * hd + 16 * u);
    for (int64_t t = 0; t < tn; t++) {
        __m512 vt[4];
        for (int u = 0; u < nv; u++) vt[u] = load16(f16, v, t * hd + 16 * u);
        for (int i = 0; i < rb; i++) {
            const __m512 pi = _mm512_set1_ps(p[i * ldp + t]);
            for (int u = 0; u < nv; u++) a[i][u] = _mm512_fmadd_ps(pi, vt[u], a[i][u]);
        }
    }
    for (int i = 0; i < rb; i++)
        for (int u = 0; u < nv; u++) _mm512_storeu_ps(o + i * hd + 16 * u, a[i][u]);
}

/* rows 4 at a time over column blocks of 64 (then 16): rb and nv constants in each copy */
AVX512 static INLINE void pv_cols(const int nv, const int f16, const float *restrict p, int64_t ldp, int64_t r,
                                  const void *restrict v, int64_t tn, int64_t hd, float *restrict o) {
    int64_t i = 0;
    for (; i + 4 <= r; i += 4) pv_r4(4, nv, f16, p + i * ldp, ldp, v, tn, hd, o + i * hd);
    if (r - i == 3) pv_r4(3, nv, f16, p + i * ldp, ldp, v, tn, hd, o + i * hd);
    if (r - i == 2) pv_r4(2, nv, f16, p + i * ldp, ldp, v, tn, hd, o + i * hd);
    if (r - i == 1) pv_r4(1, nv, f16, p + i * ldp, ldp, v, tn, hd, o + i * hd);
}

/* head_dim a multiple of 16 (else the AVX2 slot); an f16 v converted as it loads */
AVX512 static INLINE void pv_avx512(const int f16, const float *restrict p, int64_t ldp, int64_t r,
                                    const void *restrict v, int64_t tn, int64_t hd, float *restrict o) {
    const int64_t es = f16 ? 2 : 4;
    int64_t d = 0;
    for (; d + 64 <= hd; d += 64) pv_cols(4, f16, p, ldp, r, (const char *)v + d * es, tn, hd, o + d);
    for (; d < hd; d += 16) pv_cols(1, f16, p, ldp, r, (const char *)v + d * es, tn, hd, o + d);
}

AVX512 static void attn_pv_avx512(const float *restrict p, int64_t ldp, int64_t r, const float *restrict v,
                                  int64_t tn, int64_t hd, float *restrict o) {
    if (hd % 16 != 0)
        ymm.pv(p, ldp, r, v, tn, hd, o);
    else
        pv_avx512(0, p, ldp, r, v, tn, hd, o);
}

AVX512 static void attn_pv_f16_avx512(const float *restrict p, int64_t ldp, int64_t r, const uint16_t *restrict v,
                                      int64_t tn, int64_t hd, float *restrict o) {
    if (hd % 16 != 0)
        ymm.pv_f16(p, ldp, r, v, tn, hd, o);
    else
        pv_avx512(1, p, ldp, r, v, tn, hd, o);
}

/* --- probabilities ------------------------------------------------------------------------------------ */

/* exp8 (ops_avx2.c) on 16 lanes: the same steps, so the same floats */
AVX512 static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_set1_ps(EXP_HI), _mm512_max_ps(_mm512_set1_ps(EXP_LO), x));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
    const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    const __m512i ni = _mm512_cvtps_epi32(n), n1 = _mm512_srai_epi32(ni, 1), n2 = _mm512_sub_epi32(ni, n1);
    const __m512i bias = _mm512_set1_epi32(127);
    const __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, bias), 23));
    const __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, bias), 23));
    return _mm512_mul_ps(_mm512_mul_ps(y, s1), s2);
}

/* the AVX2 slot's 8 lanes, fed 8 keys at a time in order (the masked tail's lanes add +0: no change) */
AVX512 static inline __m256 add_halves(__m256 acc, __m512 e) {
    acc = _mm256_add_ps(acc, _mm512_castps512_ps256(e));
    return _mm256_add_ps(acc, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)));
}

AVX512 static float exp_sum_avx512(float *restrict s, int64_t tn, float m) {
    const __m512 vm = _mm512_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 32 <= tn; t += 32) { /* two independent exps in flight: each is a long chain */
        const __m512 e0 = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + t), vm));
        const __m512 e1 = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + t + 16), vm));
        _mm512_storeu_ps(s + t, e0), _mm512_storeu_ps(s + t + 16, e1);
        acc = add_halves(add_halves(acc, e0), e1);
    }
    for (; t < tn; t += 16) {
        const __mmask16 k = tn - t >= 16 ? 0xffff : (__mmask16)((1u << (tn - t)) - 1);
        const __m512 e = _mm512_maskz_mov_ps(k, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + t), vm)));
        _mm512_mask_storeu_ps(s + t, k, e);
        acc = add_halves(acc, e);
    }
    return hsum8(acc);
}

int mg_install_ops_avx512(void) {
    ymm.scores = mg_lops.attn_scores, ymm.scores_f16 = mg_lops.attn_scores_f16, ymm.pv = mg_lops.attn_pv;
    ymm.pv_f16 = mg_lops.attn_pv_f16;
    if (!ymm.scores || !ymm.scores_f16 || !ymm.pv || !ymm.pv_f16) return 0; /* the AVX2 slots go in first */
    mg_lops.attn_scores = attn_scores_avx512;
    mg_lops.attn_scores_f16 = attn_scores_f16_avx512;
    mg_lops.attn_pv = attn_pv_avx512;
    mg_lops.attn_pv_f16 = attn_pv_f16_avx512;
    mg_lops.exp_sum = exp_sum_avx512;
    return 1;
}

#else

int mg_install_ops_avx512(void) { return 0; }

#endif
