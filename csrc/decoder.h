/* A whole decoder forward pass in C: one call per batch of tokens, no Python between operations.
 *
 * It computes what minigpt/model/decoder.py computes (that file is the reference, step for step):
 * embedding lookup (optionally scaled), then per layer RMSNorm, q/k/v matmuls (+ optional biases),
 * optional RMSNorm of every q and k head, RoPE on adjacent pairs (x[2i], x[2i+1]) or halves (NEOX),
 * K/V written into the cache, causal grouped-query attention (over a sliding window on local
 * layers), wo (+ optional post-attention norm) + residual, a gated FFN, SiLU or GELU-tanh
 * (+ optional post-FFN norm) + residual; then the final norm and the output head. Which of the
 * optional steps run, and what each matmul rounds its activations to, the caller decides
 * (minigpt/engine/_cdecoder.pyx from the architecture's feature row and the precision table).
 *
 * The kernels come from the table it is given (ops.h: mg_kernel_table), because they live in another
 * extension module. Every buffer is allocated once by mg_decoder_create (sized for max_batch tokens);
 * a forward call allocates nothing itself (mg_matmul's prefill path, a panel of inputs or more, mallocs its
 * packing panels). Like kernels.h, this trusts every size and pointer it is given: the caller checks the
 * weights against the config once, the cache once when it is bound, and ids and positions on every
 * call. A decoder is not reentrant: one forward at a time.
 *
 * Several independent sequences (a server's conversations) can share one forward: their rows are
 * stacked for the matmuls, which dominate decode by reading every weight once per call, however many
 * rows it carries (mg_decoder_forward_multi).
 */
#ifndef MINIGPT_DECODER_H
#define MINIGPT_DECODER_H

#include <stdint.h>

#include "ops.h"

#define MG_DECODER_MAX_GROUP 256 /* query heads per kv head (n_heads / n_kv_heads) */

typedef struct {
    int64_t dim;        /* residual stream width */
    int64_t n_layers;
    int64_t n_heads;
    int64_t n_kv_heads; /* divides n_heads */
    int64_t head_dim;
    int64_t hidden_dim; /* FFN inner width */
    int64_t vocab_size;
    int64_t rope_dim;   /* rotated dims per head: even, <= head_dim */
    float norm_eps;
    float embed_scale;  /* the token embedding is multiplied by it (1: not at all) */
    float query_scale;  /* multiplies q . k: usually 1 / sqrt(head_dim) */
    int act;            /* enum mg_act: the FFN's act(gate) * up */
    int rope_neox;      /* 0: RoPE pairs (x[2i], x[2i+1]); 1: (x[i], x[i + rope_dim / 2]) */
} mg_decoder_config;

enum mg_act { MG_ACT_SILU = 0, MG_ACT_GELU_TANH = 1 };

typedef struct {
    const void *data; /* stored rows (kernels.h layouts); norms are MG_F32 vectors */
    int qtype;        /* enum mg_qtype, | MG_X8 for a weight in the x8 layout */
    int bits;         /* a matrix's activations: 32 (float32: matmul), 16 (matmul_q16) or 8 (matmul_q8) */
} mg_weight;

typedef struct {
    mg_weight attn_norm; /* (dim,) f32 */
    mg_weight wq;        /* (n_heads * head_dim, dim) */
    mg_weight wk, wv;    /* (n_kv_heads * head_dim, dim) */
    mg_weight wo;        /* (dim, n_heads * head_dim) */
    mg_weight ffn_norm;  /* (dim,) f32 */
    mg_weight w_gate;    /* (hidden_dim, dim) */
    mg_weight w_up;      /* (hidden_dim, dim) */
    mg_weight w_down;    /* (dim, hidden_dim) */
    /* optional (data NULL: absent), f32 vectors */
    mg_weight bq, bk, bv;       /* (n_heads * head_dim,), (n_kv_heads * head_dim,) x 2: q/k/v biases */
    mg_weight q_norm, k_norm;   /* (head_dim,): RMSNorm of every query / key head, before RoPE */
    mg_weight post_attn_norm;   /* (dim,): RMSNorm of the attention output, before its residual add */
    mg_weight post_ffn_norm;    /* (dim,): the same for the FFN output */
    int64_t window;             /* 0: attends to every earlier position; else to the last `window` */
    const float *rope_cos;      /* (n_rope, rope_dim / 2): angle of pair i at position p */
    const float *rope_sin;      /* (n_rope, rope_dim / 2) */
} mg_decoder_layer;

typedef struct {
    mg_weight tok_embd;          /* (vocab_size, dim) */
    mg_weight output_norm;       /* (dim,) f32 */
    mg_weight output;            /* (vocab_size, dim); tok_embd's pointer when the embeddings are tied */
    /* optional (data NULL: absent): the head's int8 screen (kernels.h: mg_matmul_screened), which a
     * forward with top > 0 takes for the float32 head */
    mg_weight screen;            /* (vocab_size, dim), bits 8 */
    const float *output_norms;   /* (vocab_size,) mg_row_norms of output */
    const mg_decoder_layer *layers; /* (n_layers,): copied by mg_decoder_create */
    int64_t n_rope;              /* positions covered by the layers' RoPE tables: start + n <= n_rope */
} mg_decoder_weights;

/* The KV cache, a buffer per layer. Position t of layer l lives in slot t % cap[l]: a global
 * layer has cap >= every position, a sliding-window layer may keep a ring of cap >= window + n - 1
 * slots (the keys its n queries see, their own included). Each slot is a row of head_dim values
 * stored as `type` says (ops.h: float32, IEEE half or q8_0; mg_kv_row_bytes(type, head_dim) bytes). */
typedef struct {
    void *const *k;     /* (n_layers,): layer l's keys (n_kv_heads, cap[l], row) */
    void *const *v;     /* (n_layers,): values, the same shape */
    const int64_t *cap; /* (n_layers,) */
    int type;           /* enum mg_kv_type, of every buffer */
} mg_kv_cache;

typedef struct mg_decoder mg_decoder;

/* A decoder over kt, cfg and w (pointers borrowed: they must outlive it; the layer table is copied)
 * with scratch for max_batch tokens. NULL if out of memory. */
mg_decoder *mg_decoder_create(const mg_kernel_table *kt, const mg_decoder_config *cfg, const mg_decoder_weights *w,
                              int64_t max_batch);

void mg_decoder_free(mg_decoder *dec);

/* One sequence of a batch: n rows of it, the tokens at positions [start, start + n) of its cache. */
typedef struct {
    int64_t n, start;
    const mg_kv_cache *kv; /* positions before start filled; [start, start + n) are written      IN/OUT */
    int64_t n_logits;      /* 1..n: its last rows whose logits are wanted (a decode step: 1; a draft's
                              check: the draft's rows and the one before it) */
} mg_seq;

/* Run the n = sum of seqs[s].n tokens ids[0 .. n) of n_seqs sequences as one batch, 1 <= n <= max_batch.
 * The matmuls take every row at once (each weight is read once for all sequences); RoPE, the K/V
 * writes and attention take each sequence's rows at its own positions, in its own cache. Sequence s
 * owns the seqs[s].n >= 1 rows after those of the sequences before it; start + n <= n_rope; no two
 * share a cache.
 * logits_out: (sum of seqs[s].n_logits, vocab_size), each sequence's last n_logits rows in turn;
 *             NULL skips the final norm and head.                                            OUT
 * top: 0, every logit exact; else the head may be screened (with a screen, a float32 head and
 *      1 <= top <= MG_SCREEN_MAX_TOP): exact where a row can be among the top `top` of its own, below
 *      them elsewhere; allowed: NULL, or per row of logits_out a bitmask of tokens or NULL, whose best
 *      are the top (mg_matmul_screened).
 * Returns MG_OK or a kernels.h error code (MG_ENOMEM from a matmul). */
int mg_decoder_forward_multi(mg_decoder *dec, const int64_t *ids, int64_t n, const mg_seq *seqs, int64_t n_seqs,
                             float *logits_out, int64_t top, const uint32_t *const *allowed);

/* The batch of one sequence: ids[0 .. n) at positions [start, start + n), its logits (n, vocab_size)
 * if all_logits else (1, vocab_size) of the last token; top as there. */
int mg_decoder_forward(mg_decoder *dec, const int64_t *ids, int64_t n, int64_t start, const mg_kv_cache *kv,
                       float *logits_out, int all_logits, int64_t top, const uint32_t *const *allowed);

#endif /* MINIGPT_DECODER_H */
