/* The x8 kernels (layout: packed.c), written once for every x86 flavour of "dot 4 bytes per lane".
 *
 * Included by packed_avx2.c once per instruction set, after it defines:
 *   TARGET              the function attribute enabling that instruction set
 *   NAME(f)             f with the instruction set's suffix
 *   dot4(acc, u, s)     acc (8 x int32) += per-lane sum of 4 products u (unsigned bytes) * s (signed)
 *   dot4x2(acc, u0, s0, u1, s1)  two dot4 steps, for u < 32 (the q4, q5 and q4_k types), into an
 *                       accumulator that q4_total(acc, ch) turns into int32 lanes (AVX2 keeps it in
 *                       int16 pairs: q4's whole block, 8 steps, stays below 8 * 2 * 15 * 127 < 2^15;
 *                       q5's codes need int32 sooner, so q5_total widens each accumulator on its own:
 *                       one takes 4 / CH(nt) <= 2 code vectors, 4 steps, 4 * 2 * 31 * 127 < 2^15)
 *   q8_unsigned(w)      signed weight bytes -> the unsigned operand of dot4
 *   q8_signed(x, w)     broadcast input bytes -> the signed operand, given the weight bytes
 *   Q8_BIAS             what q8_unsigned adds to a weight (sum w*x = dot4 result - Q8_BIAS * sum x,
 *                       taken off in integers: every instruction set gets the same exact lanes)
 *   dot2(acc, a, b)     acc (8 x int32) += per-lane sum of 2 products of int16 a * int16 b
 *
 * Each kernel computes out[t * ldo + r] for r < 8, t < nt (1..4): the dot products of one group's 8
 * rows with inputs x + t * ldx (q8 blocks, nb of them). Per block: int32 lanes from 8 dot4 steps per
 * input, then sum_t += (d_w * d_x) * lanes + bias_w * s_x, where s_x = d_x * sum(q_x) and bias_w is
 * -8 d_w (q4_0), -16 d_w (q5_0) or m_w (q4_1, q5_1): the codes are dotted as stored (unsigned, 0..15
 * or 0..31) and the offset is taken out once per block; q8_0 has no offset term (its lanes are the
 * exact signed dot products). The q5 codes are the q4 nibbles with the fifth bit put in from the qh
 * vector (packed.c): per code vector l, (qh << 4 - l) & 0x10 into the low nibbles and (qh >> l) & 0x10
 * into the high ones; 16-bit shifts are enough, the mask drops what crosses a byte.
 *
 * The float steps are the same on both instruction sets here, in the same order, and independent of how
 * many inputs a call takes (nt) or how rows are split over threads: per row and input, block after
 * block, sum = fma(float(d_w * d_x), float(lanes), sum) and sumb = fma(bias_w, s_x, sumb), then
 * sum + sumb. minigpt/kernels/numpy_ref.py computes exactly these roundings (its x8 twin), which is
 * what makes the NumPy oracle agree with this path bit for bit.
 *
 * Dependency chains: a dot instruction waits for its accumulator, so each input's products go into
 * CH(nt) independent accumulators (4 for one input, 2 for four), added up once per block; the scale
 * and bias terms also accumulate separately. One input (decode) would otherwise run at the latency
 * of the chain, not at the throughput of the machine.
 *
 * The q16 kernels do the same with int16 inputs (mg_block_q16), for the matmuls whose inputs need
 * more than 8 bits: each 4-byte lane of weight codes is split into two int16 pairs, (e0, e2) and
 * (e1, e3), which is why a q16 block stores each group of 4 inputs in that order.
 *
 * The K-quants step per super-block (8 activation blocks) and, inside it, activation block after block,
 * so their float steps are those above, per 32-element block:
 *   q4_k  a q4_1 block with dw = d * sc_j and bias_w = -(dmin * m_j) (both products exact in float32).
 *   q6_k  lanes = sc_a * dot_a + sc_b * dot_b, dot_a and dot_b the integer dots of the signed codes
 *         q - 32 with the block's two halves of 16 inputs, sc_a and sc_b their sub-blocks' int8 scales;
 *         sum = fma(float(d_w * d_x), float(lanes), sum), no bias. With int8 inputs the codes go through
 *         the sign trick (|c| . (x with c's sign): 4 maddubs per half stay below 4 * 2 * 32 * 127 <
 *         2^15 in int16) and madd multiplies the int16 sums by the scales, exactly. Both instruction
 *         sets run these same maddubs steps (vpdpbusd would need a 32-bit multiply per half for the
 *         scales). With int16 inputs sc * dot can reach 2^31 - 2^16, so each half's lanes are
 *         their own step: sum = fma(float(d_w * d_x), float(sc_a * dot_a), sum), then the same for b.
 */

TARGET static inline __m256i NAME(bcast4)(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* the 8 fp16 scales at p, as floats */
TARGET static inline __m256 NAME(scales8)(const uint8_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

#define CH(nt) ((nt) <= 2 ? 4 : 2) /* accumulators per input */

/* With several inputs (nt > 1), asks for the lines of [p, p + bytes) ahead of their use. Weights stream
 * through once, and a block's arithmetic for several inputs is long enough that the hardware prefetcher
 * alone leaves the core waiting on memory between blocks; one input's is not, and it needs no help
 * (docs/performance.md, "Several streams: longer shares and prefetching"). 3 KB: with both cores
 * streaming, memory answers late enough that 1 KB ahead still waited (docs/performance.md, "Several
 * streams: the weights asked for 3 KB ahead"). */
#define X8_AHEAD 3072 /* bytes: how far ahead of its block a q4 / q5 / q8 kernel asks */
TARGET static inline __attribute__((always_inline)) void NAME(prefetch)(const uint8_t *p, int64_t bytes, int nt) {
    if (nt > 1)
        for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch((const char *)p + o, _MM_HINT_T0);
}

/* the int32 total of ch accumulators */
TARGET static inline __attribute__((always_inline)) __m256i NAME(total32)(const __m256i *acc, int ch) {
    __m256i lanes = acc[0];
    for (int c = 1; c < ch; c++) lanes = _mm256_add_epi32(lanes, acc[c]);
    return lanes;
}

/* the int32 total of ch q4-style accumulators, each widened before they are added (q5's codes) */
TARGET static inline __attribute__((always_inline)) __m256i NAME(q5_total)(const __m256i *acc, int ch) {
    __m256i lanes = q4_total(acc, 1);
    for (int c = 1; c < ch; c++) lanes = _mm256_add_epi32(lanes, q4_total(acc + c, 1));
    return lanes;
}

/* sum += (dw * d_x) * lanes, for an input block with scale d_x */
TARGET static inline __attribute__((always_inline)) void NAME(apply)(__m256 *sum, __m256 dw, float dx, __m256i lanes) {
    *sum = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(dx)), _mm256_cvtepi32_ps(lanes), *sum);
}

/* apply, and sumb += bias * s_x for an input block with s_x = d_x * sum(q_x) */
TARGET static inline __attribute__((always_inline)) void NAME(apply_bias)(
    __m256 *sum, __m256 *sumb, __m256 dw, __m256 bias, float dx, float sx, __m256i lanes) {
    NAME(apply)(sum, dw, dx, lanes);
    *sumb = _mm256_fmadd_ps(bias, _mm256_set1_ps(sx), *sumb);
}

/* the fifth bits of code vector l (0..3) at bit 4 of each byte, for its low nibbles and its high ones */
#define Q5_LO(qh, l) _mm256_and_si256(_mm256_slli_epi16(qh, 4 - (l)), _mm256_set1_epi8(0x10))
#define Q5_HI(qh, l) _mm256_and_si256(_mm256_srli_epi16(qh, l), _mm256_set1_epi8(0x10))

/* q4_0x8, q4_1x8, q5_0x8, q5_1x8: the code vectors are the same (q5: plus the fifth bits); only the
 * bias differs. has_m: an fp16 m per row (q4_1, q5_1), else the bias is -8 d (q4_0) or -16 d (q5_0). */
TARGET static inline __attribute__((always_inline)) void NAME(gemm_q4x8)(
    int64_t nb, const uint8_t *restrict w, const mg_block_q8 *restrict x, int64_t ldx, float *restrict out,
    int64_t ldo, const int nt, const int has_m, const int q5) {
    const int64_t hdr = has_m ? 32 : 16, codes = hdr + 32 * q5, gb = codes + 128;
    const int ch = CH(nt);
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256 sum[4], sumb[4];
    for (int t = 0; t < nt; t++) sum[t] = sumb[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += gb) {
        __m256i acc[4][4];
        NAME(prefetch)(w + X8_AHEAD, gb, nt);
        for (int t = 0; t < nt; t++)
            for (int c = 0; c < ch; c++) acc[t][c] = _mm256_setzero_si256();
        const __m256i qh = q5 ? _mm256_loadu_si256((const __m256i *)(w + hdr)) : _mm256_setzero_si256();
        for (int l = 0; l < 4; l++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(w + codes + 32 * l));
            __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            if (q5) {
                lo = _mm256_or_si256(lo, Q5_LO(qh, l));
                hi = _mm256_or_si256(hi, Q5_HI(qh, l));
            }
            for (int t = 0; t < nt; t++) {
                const int8_t *q = x[t * ldx + b].q;
                __m256i *a = &acc[t][l % ch];
                *a = dot4x2(*a, lo, NAME(bcast4)(q + 4 * l), hi, NAME(bcast4)(q + 16 + 4 * l));
            }
        }
        const __m256 dw = NAME(scales8)(w);
        const __m256 bias = has_m ? NAME(scales8)(w + 16) : _mm256_mul_ps(dw, _mm256_set1_ps(q5 ? -16.0f : -8.0f));
        for (int t = 0; t < nt; t++)
            NAME(apply_bias)(&sum[t], &sumb[t], dw, bias, x[t * ldx + b].d, x[t * ldx + b].s,
                             q5 ? NAME(q5_total)(acc[t], ch) : q4_total(acc[t], ch));
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(out + t * ldo, _mm256_add_ps(sum[t], sumb[t]));
}

TARGET static inline __attribute__((always_inline)) void NAME(gemm_q8x8)(
    int64_t nb, const uint8_t *restrict w, const mg_block_q8 *restrict x, int64_t ldx, float *restrict out,
    int64_t ldo, const int nt) {
    const int ch = CH(nt);
    __m256 sum[4];
    for (int t = 0; t < nt; t++) sum[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 272) {
        __m256i acc[4][4];
        NAME(prefetch)(w + X8_AHEAD, 272, nt);
        for (int t = 0; t < nt; t++)
            for (int c = 0; c < ch; c++) acc[t][c] = _mm256_setzero_si256();
        for (int v = 0; v < 8; v++) {
            const __m256i qw = _mm256_loadu_si256((const __m256i *)(w + 16 + 32 * v)), uw = q8_unsigned(qw);
            for (int t = 0; t < nt; t++) {
                __m256i *a = &acc[t][v % ch];
                *a = dot4(*a, uw, q8_signed(NAME(bcast4)(x[t * ldx + b].q + 4 * v), qw));
            }
        }
        const __m256 dw = NAME(scales8)(w);
        for (int t = 0; t < nt; t++) {
            __m256i lanes = NAME(total32)(acc[t], ch);
            if (Q8_BIAS) lanes = _mm256_sub_epi32(lanes, _mm256_set1_epi32(Q8_BIAS * x[t * ldx + b].sum));
            NAME(apply)(&sum[t], dw, x[t * ldx + b].d, lanes);
        }
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(out + t * ldo, sum[t]);
}

/* q16 inputs. q4: per 16-bit word of codes (2 bytes: elements e0, e1 in the low nibbles, e0', e1' of
 * the hi group in the high ones) the four int16 values are word & 15, word >> 8 & 15, word >> 4 & 15,
 * word >> 12. q5: their fifth bits are bits l, 8 + l, 4 + l and 12 + l of the qh word, each shifted to
 * bit 4. */
TARGET static inline __attribute__((always_inline)) void NAME(gemm_q4x8_16)(
    int64_t nb, const uint8_t *restrict w, const mg_block_q16 *restrict x, int64_t ldx, float *restrict out,
    int64_t ldo, const int nt, const int has_m, const int q5) {
    const int64_t hdr = has_m ? 32 : 16, codes = hdr + 32 * q5, gb = codes + 128;
    const int ch = CH(nt);
    const __m256i low = _mm256_set1_epi16(0x0F), bit4 = _mm256_set1_epi16(0x10);
    __m256 sum[4], sumb[4];
    for (int t = 0; t < nt; t++) sum[t] = sumb[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += gb) {
        __m256i acc[4][4];
        NAME(prefetch)(w + X8_AHEAD, gb, nt);
        for (int t = 0; t < nt; t++)
            for (int c = 0; c < ch; c++) acc[t][c] = _mm256_setzero_si256();
        const __m256i qh = q5 ? _mm256_loadu_si256((const __m256i *)(w + hdr)) : _mm256_setzero_si256();
        for (int l = 0; l < 4; l++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(w + codes + 32 * l));
            __m256i e = _mm256_and_si256(v, low), o = _mm256_and_si256(_mm256_srli_epi16(v, 8), low);
            __m256i eh = _mm256_and_si256(_mm256_srli_epi16(v, 4), low), oh = _mm256_srli_epi16(v, 12);
            if (q5) {
                e = _mm256_or_si256(e, _mm256_and_si256(_mm256_slli_epi16(qh, 4 - l), bit4));
                o = _mm256_or_si256(o, _mm256_and_si256(_mm256_srli_epi16(qh, 4 + l), bit4));
                eh = _mm256_or_si256(eh, _mm256_and_si256(_mm256_srli_epi16(qh, l), bit4));
                oh = _mm256_or_si256(oh, _mm256_and_si256(_mm256_srli_epi16(qh, 8 + l), bit4));
            }
            for (int t = 0; t < nt; t++) {
                const int8_t *q = (const int8_t *)x[t * ldx + b].q;   /* bytes: 8 per group of 4 */
                __m256i *a = acc[t];
                a[0] = dot2(a[0], e, NAME(bcast4)(q + 8 * l));
                a[1] = dot2(a[1], o, NAME(bcast4)(q + 8 * l + 4));
                a[2 % ch] = dot2(a[2 % ch], eh, NAME(bcast4)(q + 32 + 8 * l));
                a[3 % ch] = dot2(a[3 % ch], oh, NAME(bcast4)(q + 32 + 8 * l + 4));
            }
        }
        const __m256 dw = NAME(scales8)(w);
        const __m256 bias = has_m ? NAME(scales8)(w + 16) : _mm256_mul_ps(dw, _mm256_set1_ps(q5 ? -16.0f : -8.0f));
        for (int t = 0; t < nt; t++)
            NAME(apply_bias)(&sum[t], &sumb[t], dw, bias, x[t * ldx + b].d, x[t * ldx + b].s, NAME(total32)(acc[t], ch));
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(out + t * ldo, _mm256_add_ps(sum[t], sumb[t]));
}

/* q8: the signed bytes of each word, sign-extended: (word << 8) >> 8 and word >> 8 (arithmetic) */
TARGET static inline __attribute__((always_inline)) void NAME(gemm_q8x8_16)(
    int64_t nb, const uint8_t *restrict w, const mg_block_q16 *restrict x, int64_t ldx, float *restrict out,
    int64_t ldo, const int nt) {
    const int ch = CH(nt);
    __m256 sum[4];
    for (int t = 0; t < nt; t++) sum[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 272) {
        __m256i acc[4][4];
        NAME(prefetch)(w + X8_AHEAD, 272, nt);
        for (int t = 0; t < nt; t++)
            for (int c = 0; c < ch; c++) acc[t][c] = _mm256_setzero_si256();
        for (int v = 0; v < 8; v++) {
            const __m256i qw = _mm256_loadu_si256((const __m256i *)(w + 16 + 32 * v));
            const __m256i e = _mm256_srai_epi16(_mm256_slli_epi16(qw, 8), 8), o = _mm256_srai_epi16(qw, 8);
            for (int t = 0; t < nt; t++) {
                const int8_t *q = (const int8_t *)x[t * ldx + b].q;
                __m256i *a = acc[t];
                a[(2 * v) % ch] = dot2(a[(2 * v) % ch], e, NAME(bcast4)(q + 8 * v));
                a[(2 * v + 1) % ch] = dot2(a[(2 * v + 1) % ch], o, NAME(bcast4)(q + 8 * v + 4));
            }
        }
        const __m256 dw = NAME(scales8)(w);
        for (int t = 0; t < nt; t++) NAME(apply)(&sum[t], dw, x[t * ldx + b].d, NAME(total32)(acc[t], ch));
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(out + t * ldo, sum[t]);
}

/* --- K-quants ------------------------------------------------------------------------------------- */

/* the block loops unrolled, so that each block's shifts and scale offsets are constants */
#ifndef X8_UNROLL
#define X8_UNROLL _Pragma("GCC unroll 8")
#endif

/* 8 unsigned bytes at p (one per row) as floats */
TARGET static inline __m256 NAME(u8x8_ps)(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* 8 int8 scales at p (one per row) as int32 lanes */
TARGET static inline __m256i NAME(i8x8_epi32)(const uint8_t *p) {
    return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
}

/* -v, exactly (sign bit flipped) */
TARGET static inline __m256 NAME(neg)(__m256 v) { return _mm256_xor_ps(v, _mm256_set1_ps(-0.0f)); }

/* q6_kx8: the unsigned codes (0..63) of vector v of activation block j = 4h + k, group block w */
TARGET static inline __attribute__((always_inline)) __m256i NAME(q6_codes)(const uint8_t *w, int j, int v) {
    const int h = j / 4, k = j % 4;
    const __m256i ql = _mm256_loadu_si256((const __m256i *)(w + 144 + 512 * h + 256 * (k % 2) + 32 * v));
    const __m256i qh = _mm256_loadu_si256((const __m256i *)(w + 1168 + 256 * h + 32 * v));
    const __m256i lo = _mm256_and_si256(k / 2 ? _mm256_srli_epi16(ql, 4) : ql, _mm256_set1_epi8(0x0F));
    const __m256i hi = k == 0 ? _mm256_slli_epi16(qh, 4) : k == 1 ? _mm256_slli_epi16(qh, 2)
                     : k == 2 ? qh : _mm256_srli_epi16(qh, 2);      /* bits 2k, 2k+1 -> bits 4, 5 */
    return _mm256_or_si256(lo, _mm256_and_si256(hi, _mm256_set1_epi8(0x30)));
}

TARGET static inline __attribute__((always_inline)) void NAME(gemm_q4kx8)(
    int64_t nb, const uint8_t *restrict w, const mg_block_q8 *restrict x, int64_t ldx, float *restrict out,
    int64_t ldo, const int nt) {
    const int ch = CH(nt);
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256 sum[4], sumb[4];
    for (int t = 0; t < nt; t++) sum[t] = sumb[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 1184) {
        NAME(prefetch)(w + 1184, 1184, nt); /* the next super-block */
        const mg_block_q8 *restrict xs = x + 8 * b;
        const __m256 d = NAME(scales8)(w), ndmin = NAME(neg)(NAME(scales8)(w + 16));
        X8_UNROLL for (int j = 0; j < 8; j++) {
            const uint8_t *qs = w + 160 + 256 * (j / 2);
            __m256i acc[4][4];
            for (int t = 0; t < nt; t++)
                for (int c = 0; c < ch; c++) acc[t][c] = _mm256_setzero_si256();
            for (int v = 0; v < 8; v += 2) {
                __m256i u0 = _mm256_loadu_si256((const __m256i *)(qs + 32 * v));
                __m256i u1 = _mm256_loadu_si256((const __m256i *)(qs + 32 * v + 32));
                if (j % 2) {
                    u0 = _mm256_srli_epi16(u0, 4);
                    u1 = _mm256_srli_epi16(u1, 4);
                }
                u0 = _mm256_and_si256(u0, low);
                u1 = _mm256_and_si256(u1, low);
                for (int t = 0; t < nt; t++) {
                    const int8_t *q = xs[t * ldx + j].q;
                    __m256i *a = &acc[t][(v / 2) % ch];
                    *a = dot4x2(*a, u0, NAME(bcast4)(q + 4 * v), u1, NAME(bcast4)(q + 4 * v + 4));
                }
            }
            const __m256 dw = _mm256_mul_ps(d, NAME(u8x8_ps)(w + 32 + 8 * j));
            const __m256 bias = _mm256_mul_ps(ndmin, NAME(u8x8_ps)(w + 96 + 8 * j));
            for (int t = 0; t < nt; t++)
                NAME(apply_bias)(&sum[t], &sumb[t], dw, bias, xs[t * ldx + j].d, xs[t * ldx + j].s, q4_total(acc[t], ch));
        }
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(out + t * ldo, _mm256_add_ps(sum[t], sumb[t]));
}

TARGET static inline __attribute__((always_inline)) void NAME(gemm_q6kx8)(
    int64_t nb, const uint8_t *restrict w, const mg_block_q8 *restrict x, int64_t ldx, float *restrict out,
    int64_t ldo, const int nt) {
    __m256 sum[4];
    for (int t = 0; t < nt; t++) sum[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 1680) {
        NAME(prefetch)(w + 1680, 1680, nt); /* the next super-block */
        const mg_block_q8 *restrict xs = x + 8 * b;
        const __m256 dw = NAME(scales8)(w);
        X8_UNROLL for (int j = 0; j < 8; j++) {
            __m256i acc[4][2]; /* per input: int16 sums of the halves */
            for (int t = 0; t < nt; t++) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
            for (int v = 0; v < 8; v++) {
                const __m256i c = _mm256_sub_epi8(NAME(q6_codes)(w, j, v), _mm256_set1_epi8(32));
                const __m256i uc = _mm256_abs_epi8(c);
                for (int t = 0; t < nt; t++) {
                    const __m256i xv = _mm256_sign_epi8(NAME(bcast4)(xs[t * ldx + j].q + 4 * v), c);
                    acc[t][v / 4] = _mm256_add_epi16(acc[t][v / 4], _mm256_maddubs_epi16(uc, xv));
                }
            }
            /* each row's int8 scale in both int16 halves of its lane, for madd */
            const __m256i sa = NAME(i8x8_epi32)(w + 16 + 16 * j), sb = NAME(i8x8_epi32)(w + 24 + 16 * j);
            const __m256i ka = _mm256_or_si256(_mm256_and_si256(sa, _mm256_set1_epi32(0xFFFF)), _mm256_slli_epi32(sa, 16));
            const __m256i kb = _mm256_or_si256(_mm256_and_si256(sb, _mm256_set1_epi32(0xFFFF)), _mm256_slli_epi32(sb, 16));
            for (int t = 0; t < nt; t++) {
                const __m256i lanes = _mm256_add_epi32(_mm256_madd_epi16(acc[t][0], ka), _mm256_madd_epi16(acc[t][1], kb));
                NAME(apply)(&sum[t], dw, xs[t * ldx + j].d, lanes);
            }
        }
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(out + t * ldo, sum[t]);
}

/* q16 inputs: q4_k as gemm_q4x8_16 per sub-block; q6_k codes minus 32 as int16 pairs, per half */
TARGET static inline __attribute__((always_inline)) void NAME(gemm_q4kx8_16)(
    int64_t nb, const uint8_t *restrict w, const mg_block_q16 *restrict x, int64_t ldx, float *restrict out,
    int64_t ldo, const int nt) {
    const int ch = CH(nt);
    const __m256i low = _mm256_set1_epi16(0x0F);
    __m256 sum[4], sumb[4];
    for (int t = 0; t < nt; t++) sum[t] = sumb[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 1184) {
        NAME(prefetch)(w + 1184, 1184, nt); /* the next super-block */
        const mg_block_q16 *restrict xs = x + 8 * b;
        const __m256 d = NAME(scales8)(w), ndmin = NAME(neg)(NAME(scales8)(w + 16));
        X8_UNROLL for (int j = 0; j < 8; j++) {
            const uint8_t *qs = w + 160 + 256 * (j / 2);
            __m256i acc[4][4];
            for (int t = 0; t < nt; t++)
                for (int c = 0; c < ch; c++) acc[t][c] = _mm256_setzero_si256();
            for (int v = 0; v < 8; v++) {
                const __m256i u = _mm256_loadu_si256((const __m256i *)(qs + 32 * v));
                const __m256i e = j % 2 ? _mm256_and_si256(_mm256_srli_epi16(u, 4), low) : _mm256_and_si256(u, low);
                const __m256i o = j % 2 ? _mm256_srli_epi16(u, 12) : _mm256_and_si256(_mm256_srli_epi16(u, 8), low);
                for (int t = 0; t < nt; t++) {
                    const int8_t *q = (const int8_t *)xs[t * ldx + j].q;
                    __m256i *a = acc[t];
                    a[(2 * v) % ch] = dot2(a[(2 * v) % ch], e, NAME(bcast4)(q + 8 * v));
                    a[(2 * v + 1) % ch] = dot2(a[(2 * v + 1) % ch], o, NAME(bcast4)(q + 8 * v + 4));
                }
            }
            const __m256 dw = _mm256_mul_ps(d, NAME(u8x8_ps)(w + 32 + 8 * j));
            const __m256 bias = _mm256_mul_ps(ndmin, NAME(u8x8_ps)(w + 96 + 8 * j));
            for (int t = 0; t < nt; t++)
                NAME(apply_bias)(&sum[t], &sumb[t], dw, bias, xs[t * ldx + j].d, xs[t * ldx + j].s,
                                 NAME(total32)(acc[t], ch));
        }
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(out + t * ldo, _mm256_add_ps(sum[t], sumb[t]));
}

TARGET static inline __attribute__((always_inline)) void NAME(gemm_q6kx8_16)(
    int64_t nb, const uint8_t *restrict w, const mg_block_q16 *restrict x, int64_t ldx, float *restrict out,
    int64_t ldo, const int nt) {
    const __m256i lowbyte = _mm256_set1_epi16(0xFF), off = _mm256_set1_epi16(32);
    __m256 sum[4];
    for (int t = 0; t < nt; t++) sum[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += 1680) {
        NAME(prefetch)(w + 1680, 1680, nt); /* the next super-block */
        const mg_block_q16 *restrict xs = x + 8 * b;
        const __m256 dw = NAME(scales8)(w);
        X8_UNROLL for (int j = 0; j < 8; j++) {
            __m256i acc[4][2]; /* per input: int32 dots of the halves */
            for (int t = 0; t < nt; t++) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
            for (int v = 0; v < 8; v++) {
                const __m256i u = NAME(q6_codes)(w, j, v);
                const __m256i e = _mm256_sub_epi16(_mm256_and_si256(u, lowbyte), off);
                const __m256i o = _mm256_sub_epi16(_mm256_srli_epi16(u, 8), off);
                for (int t = 0; t < nt; t++) {
                    const int8_t *q = (const int8_t *)xs[t * ldx + j].q;
                    acc[t][v / 4] = dot2(dot2(acc[t][v / 4], e, NAME(bcast4)(q + 8 * v)), o, NAME(bcast4)(q + 8 * v + 4));
                }
            }
            const __m256i sa = NAME(i8x8_epi32)(w + 16 + 16 * j), sb = NAME(i8x8_epi32)(w + 24 + 16 * j);
            for (int t = 0; t < nt; t++) {
                NAME(apply)(&sum[t], dw, xs[t * ldx + j].d, _mm256_mullo_epi32(acc[t][0], sa));
                NAME(apply)(&sum[t], dw, xs[t * ldx + j].d, _mm256_mullo_epi32(acc[t][1], sb));
            }
        }
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(out + t * ldo, sum[t]);
}

/* The slot functions: nt dispatched to constant-count copies, so the accumulators live in registers. */
#define X8_ENTRY(fn, block, body)                                                                       \
    TARGET static void NAME(fn)(int64_t nb, const uint8_t *restrict w, const block *restrict x,           \
                                int64_t ldx, int nt, float *restrict out, int64_t ldo) {                \
        switch (nt) {                                                                                   \
        case 1: body(1); break;                                                                         \
        case 2: body(2); break;                                                                         \
        case 3: body(3); break;                                                                         \
        default: body(4); break;                                                                        \
        }                                                                                               \
    }
#define Q4_0_BODY(n) NAME(gemm_q4x8)(nb, w, x, ldx, out, ldo, n, 0, 0)
#define Q4_1_BODY(n) NAME(gemm_q4x8)(nb, w, x, ldx, out, ldo, n, 1, 0)
#define Q5_0_BODY(n) NAME(gemm_q4x8)(nb, w, x, ldx, out, ldo, n, 0, 1)
#define Q5_1_BODY(n) NAME(gemm_q4x8)(nb, w, x, ldx, out, ldo, n, 1, 1)
#define Q8_0_BODY(n) NAME(gemm_q8x8)(nb, w, x, ldx, out, ldo, n)
X8_ENTRY(x8_q4_0, mg_block_q8, Q4_0_BODY)
X8_ENTRY(x8_q4_1, mg_block_q8, Q4_1_BODY)
X8_ENTRY(x8_q5_0, mg_block_q8, Q5_0_BODY)
X8_ENTRY(x8_q5_1, mg_block_q8, Q5_1_BODY)
X8_ENTRY(x8_q8_0, mg_block_q8, Q8_0_BODY)
#undef Q4_0_BODY
#undef Q4_1_BODY
#undef Q5_0_BODY
#undef Q5_1_BODY
#undef Q8_0_BODY
#define Q4_K_BODY(n) NAME(gemm_q4kx8)(nb, w, x, ldx, out, ldo, n)
#define Q6_K_BODY(n) NAME(gemm_q6kx8)(nb, w, x, ldx, out, ldo, n)
X8_ENTRY(x8_q4_k, mg_block_q8, Q4_K_BODY)
X8_ENTRY(x8_q6_k, mg_block_q8, Q6_K_BODY)
#undef Q4_K_BODY
#undef Q6_K_BODY
#define Q4_K_BODY(n) NAME(gemm_q4kx8_16)(nb, w, x, ldx, out, ldo, n)
#define Q6_K_BODY(n) NAME(gemm_q6kx8_16)(nb, w, x, ldx, out, ldo, n)
X8_ENTRY(x8_16_q4_k, mg_block_q16, Q4_K_BODY)
X8_ENTRY(x8_16_q6_k, mg_block_q16, Q6_K_BODY)
#undef Q4_K_BODY
#undef Q6_K_BODY
#define Q4_0_BODY(n) NAME(gemm_q4x8_16)(nb, w, x, ldx, out, ldo, n, 0, 0)
#define Q4_1_BODY(n) NAME(gemm_q4x8_16)(nb, w, x, ldx, out, ldo, n, 1, 0)
#define Q5_0_BODY(n) NAME(gemm_q4x8_16)(nb, w, x, ldx, out, ldo, n, 0, 1)
#define Q5_1_BODY(n) NAME(gemm_q4x8_16)(nb, w, x, ldx, out, ldo, n, 1, 1)
#define Q8_0_BODY(n) NAME(gemm_q8x8_16)(nb, w, x, ldx, out, ldo, n)
X8_ENTRY(x8_16_q4_0, mg_block_q16, Q4_0_BODY)
X8_ENTRY(x8_16_q4_1, mg_block_q16, Q4_1_BODY)
X8_ENTRY(x8_16_q5_0, mg_block_q16, Q5_0_BODY)
X8_ENTRY(x8_16_q5_1, mg_block_q16, Q5_1_BODY)
X8_ENTRY(x8_16_q8_0, mg_block_q16, Q8_0_BODY)
#undef Q4_0_BODY
#undef Q4_1_BODY
#undef Q5_0_BODY
#undef Q5_1_BODY
#undef Q8_0_BODY
#undef X8_ENTRY

static void NAME(install_x8)(void) {
    mg_gemm_x8[MG_Q4_0] = NAME(x8_q4_0);
    mg_gemm_x8[MG_Q4_1] = NAME(x8_q4_1);
    mg_gemm_x8[MG_Q5_0] = NAME(x8_q5_0);
    mg_gemm_x8[MG_Q5_1] = NAME(x8_q5_1);
    mg_gemm_x8[MG_Q8_0] = NAME(x8_q8_0);
    mg_gemm_x8_16[MG_Q4_0] = NAME(x8_16_q4_0);
    mg_gemm_x8_16[MG_Q4_1] = NAME(x8_16_q4_1);
    mg_gemm_x8_16[MG_Q5_0] = NAME(x8_16_q5_0);
    mg_gemm_x8_16[MG_Q5_1] = NAME(x8_16_q5_1);
    mg_gemm_x8_16[MG_Q8_0] = NAME(x8_16_q8_0);
    mg_gemm_x8[MG_Q4_K] = NAME(x8_q4_k);
    mg_gemm_x8[MG_Q6_K] = NAME(x8_q6_k);
    mg_gemm_x8_16[MG_Q4_K] = NAME(x8_16_q4_k);
    mg_gemm_x8_16[MG_Q6_K] = NAME(x8_16_q6_k);
}
#undef Q5_LO
#undef Q5_HI
