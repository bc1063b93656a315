/* The non-matmul steps of a decoder: elementwise ops and attention, with per-ISA slots (like kernels.h).
 *
 * mg_lops starts with the portable C versions (ops.c); mg_install_ops_avx2 (ops_avx2.c), called by
 * mg_cpu_init (cpu.c) on AVX2 CPUs, replaces them once, at import.
 * The attention driver (attention.c) tiles, masks and threads; the slots do its inner loops, and
 * convert the KV cache's rows (f16, q8_0) to and from float32.
 * Like kernels.h, everything here trusts the sizes it is given.
 */
#ifndef MINIGPT_OPS_H
#define MINIGPT_OPS_H

#include <stdint.h>

#include "kernels.h"

/* --- the slots ------------------------------------------------------------------------------------ */

typedef struct {
    /* out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * g,  x, out: (n, d); sums in double */
    void (*rms_norm)(const float *restrict x, const float *restrict g, float *restrict out, int64_t n,
                     int64_t d, float eps);
    /* rotate pairs (v[2p], v[2p+1]), p < rope_dim / 2, of every head of every token, in place.
     * x: (n, heads, hd); cos, sin: (n, rope_dim / 2), rows of the tokens' positions */
    void (*rope)(float *restrict x, int64_t n, int64_t heads, int64_t hd, int64_t rope_dim,
                 const float *restrict cos_t, const float *restrict sin_t);
    /* the same on pairs (v[p], v[p + rope_dim / 2]) ("NEOX" RoPE: halves, not adjacent pairs) */
    void (*rope_neox)(float *restrict x, int64_t n, int64_t heads, int64_t hd, int64_t rope_dim,
                      const float *restrict cos_t, const float *restrict sin_t);
    /* g = silu(g) * u over m values */
    void (*swiglu)(float *restrict g, const float *restrict u, int64_t m);
    /* g = gelu_tanh(g) * u = g / (1 + exp(-2 sqrt(2/pi) (g + 0.044715 g^3))) * u over m values */
    void (*geglu)(float *restrict g, const float *restrict u, int64_t m);
    /* x += y over m values */
    void (*add)(float *restrict x, const float *restrict y, int64_t m);
    /* y = exp(x) over n values (y may be x); the AVX2 variant is within 2 ulp of expf */
    void (*exp)(const float *x, float *y, int64_t n);

    /* attention inner loops, over a tile of r rows (query, head) and tn keys:
     * s[i, t] = q[i, :] . k[t, :]        q: (r, hd), k: (tn, hd), s: (r, lds)             */
    void (*attn_scores)(const float *restrict q, int64_t r, const float *restrict k, int64_t tn,
                        int64_t hd, float *restrict s, int64_t lds);
    /* o[i, :] += sum over t of p[i, t] * v[t, :]   p: (r, ldp), v: (tn, hd), o: (r, hd)   */
    void (*attn_pv)(const float *restrict p, int64_t ldp, int64_t r, const float *restrict v, int64_t tn,
                    int64_t hd, float *restrict o);
    /* the same two over an f16 cache's rows k, v (hd a multiple of 8), converted as they load: the
     * floats the float32 slots give on the converted rows. NULL where attention converts a tile first */
    void (*attn_scores_f16)(const float *restrict q, int64_t r, const uint16_t *restrict k, int64_t tn,
                            int64_t hd, float *restrict s, int64_t lds);
    void (*attn_pv_f16)(const float *restrict p, int64_t ldp, int64_t r, const uint16_t *restrict v, int64_t tn,
                        int64_t hd, float *restrict o);
    /* s[t] = exp(s[t] - m) for t < tn; returns the sum of the new s (max: returns max(m0, s[..]))  */
    float (*exp_sum)(float *restrict s, int64_t tn, float m);
    float (*max)(const float *restrict s, int64_t tn, float m0);

    /* KV cache rows (enum mg_kv_type below), written by the decoder and read back by attention:
     * y = x as IEEE halves (mg_fp32_to_fp16: to nearest even), and back, over n values          */
    void (*f32_to_f16)(const float *restrict x, uint16_t *restrict y, int64_t n);
    void (*f16_to_f32)(const uint16_t *restrict x, float *restrict y, int64_t n);
    /* rows x (rows, hd) -> q8_0 rows y (rows, hd + hd / 8 bytes), and back; hd a multiple of 32  */
    void (*f32_to_q8_0)(const float *restrict x, uint8_t *restrict y, int64_t rows, int64_t hd);
    void (*q8_0_to_f32)(const uint8_t *restrict x, float *restrict y, int64_t rows, int64_t hd);
} mg_ops;

extern mg_ops mg_lops;

/* ops_avx2.c: put the AVX2 variants in mg_lops; 0 if this build has none */
int mg_install_ops_avx2(void);
/* ops_neon.c: the same for aarch64 NEON (the KV row slots only) */
int mg_install_ops_neon(void);

/* --- the KV cache's rows ---------------------------------------------------------------------------- */

/* How a cache stores a position's head_dim keys (or values): minigpt/quant.py, "KV cache rows".
 *   MG_KV_F32   float[head_dim]
 *   MG_KV_F16   uint16_t[head_dim], IEEE halves
 *   MG_KV_Q8_0  int8_t q[head_dim], then float d[head_dim / 32] (little-endian): x = q * d per block
 *               of 32, quantized as the int8 activations (mg_quantize_row_q8); head_dim % 32 == 0 */
enum mg_kv_type { MG_KV_F32 = 0, MG_KV_F16 = 1, MG_KV_Q8_0 = 2 };

/* bytes of one stored row of head_dim values */
static inline int64_t mg_kv_row_bytes(int kv_type, int64_t head_dim) {
    return kv_type == MG_KV_Q8_0 ? head_dim + head_dim / 8 : kv_type == MG_KV_F16 ? 2 * head_dim : 4 * head_dim;
}

/* --- attention (attention.c) ------------------------------------------------------------------- */

/* What one layer's attention looks like. */
typedef struct {
    int64_t n_heads, n_kv_heads, head_dim; /* n_kv_heads divides n_heads */
    float scale;    /* multiplies q . k: usually 1 / sqrt(head_dim) */
    int64_t window; /* 0: query at position p sees keys [0, p]; else [p - window + 1, p] */
    int kv_type;    /* enum mg_kv_type: how kc and vc store their rows */
} mg_attn_params;

/* Causal grouped-query attention of n queries at positions [start, start + n) over the cache.
 * q:  (n, n_heads, head_dim)                                                      IN
 * kc, vc: (n_kv_heads, cap, row) rows of ap->kv_type, position t in slot t % cap, every position the
 *         queries see filled: cap > start + n - 1 (no wrap) or, with a window, cap >= window + n - 1  IN
 * out: (n, n_heads * head_dim)                                                    OUT
 * An f16 or q8_0 cache gives exactly the attention of the float32 cache of its decoded rows.
 * Uses the thread pool. head_dim <= MG_ATTN_MAX_HEAD_DIM. */
void mg_attention(const mg_attn_params *ap, const float *q, const void *kc, const void *vc, float *out,
                  int64_t n, int64_t start, int64_t cap);

/* One sequence of a batch for mg_attention_batch: mg_attention's arguments. */
typedef struct {
    const float *q;
    const void *kc, *vc;
    float *out;
    int64_t n, start, cap;
} mg_attn_seq;

/* mg_attention of each of n_seqs sequences (same layer, same ap, each its own cache), in one parallel
 * job; each gets the floats mg_attention alone would give it. */
void mg_attention_batch(const mg_attn_params *ap, const mg_attn_seq *seqs, int64_t n_seqs);

#define MG_ATTN_MAX_HEAD_DIM 1024

/* --- the kernel table ------------------------------------------------------------------------------ */

/* out[n, rows] = x[n, cols] @ W^T (mg_matmul's signature) */
typedef int (*mg_matmul_fn)(const float *restrict x, const void *restrict w, float *restrict out,
                            int qtype, int64_t n, int64_t rows, int64_t cols);

/* Every kernel a decoder calls, as one table. The decoder (csrc/decoder.c) is built into another
 * extension module than the kernels, so it reaches them through this table, which _core hands out
 * in a capsule: one set of kernels, one ISA choice, one thread pool for both modules. */
typedef struct {
    mg_matmul_fn matmul;     /* float32 activations */
    mg_matmul_fn matmul_q8;  /* int8 activation blocks (weights of type | MG_X8 too) */
    mg_matmul_fn matmul_q16; /* int16 activation blocks over an x8 weight, else float32 */
    int (*matmul_x8_many)(const float *restrict x, int64_t n, int64_t cols, int bits, const mg_x8_matmul *mms,
                          int n_mms); /* several x8 weights of one input, int8 or int16 activations */
    int (*matmul_screened)(const float *restrict x, const void *restrict screen, int screen_qtype,
                           const void *restrict w, int qtype, const float *restrict norms,
                           const uint32_t *const *allowed, float *restrict out, int64_t n, int64_t rows,
                           int64_t cols, int64_t top); /* mg_matmul_screened */
    int (*get_rows)(const void *restrict w, int qtype, const int64_t *restrict ids, int64_t n_ids,
                    int64_t cols, float *restrict out);
    void (*attention)(const mg_attn_params *ap, const mg_attn_seq *seqs, int64_t n_seqs); /* mg_attention_batch */
    const mg_ops *ops;       /* the elementwise slots, as installed for this CPU */
} mg_kernel_table;

extern const mg_kernel_table mg_kernels;

#endif /* MINIGPT_OPS_H */
