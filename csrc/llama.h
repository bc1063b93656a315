/* The whole forward pass in C, Llama and Gemma 3: one call per batch of tokens, no Python between
 * operations.
 *
 * Does exactly what minigpt/model/llama.py's and gemma3.py's forwards do (those files are the
 * reference): embedding lookup (scaled for Gemma), per layer RMSNorm, q/k/v matmuls (+ biases for
 * Qwen2), Gemma's q/k head norms, RoPE on adjacent pairs (x[2i], x[2i+1]) or halves (NEOX, Gemma),
 * K/V written into the cache, causal grouped-query attention (over a sliding window on local
 * layers), wo (+ Gemma's post-attention norm) + residual, SwiGLU or GELU-gated FFN (+ Gemma's
 * post-FFN norm) + residual; then the final norm and the output head.
 *
 * Every buffer is allocated once by mg_llama_create (sized for max_batch tokens); a forward call
 * allocates nothing itself (mg_matmul's prefill path, n >= 3, still mallocs its packing panel).
 * Like kernels.h, this trusts every size and pointer it is given: the caller
 * (minigpt/kernels/_forward.pxi) checks the weights against the config once, and ids, positions and
 * cache shapes on every call. A context is not reentrant: one forward at a time.
 */
#ifndef MINIGPT_LLAMA_H
#define MINIGPT_LLAMA_H

#include <stdint.h>

#include "kernels.h"

#define MG_LLAMA_MAX_GROUP 256 /* query heads per kv head (n_heads / n_kv_heads) */

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
    float embed_scale;  /* the token embedding is multiplied by it: 1, or sqrt(dim) for Gemma */
    float query_scale;  /* multiplies q . k: 1 / sqrt(head_dim) for Llama */
    int act;            /* enum mg_act: the FFN's act(gate) * up */
    int rope_neox;      /* 0: RoPE pairs (x[2i], x[2i+1]); 1: (x[i], x[i + rope_dim / 2]) */
} mg_llama_config;

enum mg_act { MG_ACT_SILU = 0, MG_ACT_GELU_TANH = 1 };

typedef struct {
    const void *data; /* stored rows (kernels.h layouts); norms are MG_F32 vectors */
    int qtype;        /* enum mg_qtype */
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
} mg_llama_layer;

typedef struct {
    mg_weight tok_embd;          /* (vocab_size, dim) */
    mg_weight output_norm;       /* (dim,) f32 */
    mg_weight output;            /* (vocab_size, dim); tok_embd's pointer when the embeddings are tied */
    const mg_llama_layer *layers; /* (n_layers,): copied by mg_llama_create */
    int64_t n_rope;              /* positions covered by the layers' RoPE tables: start + n <= n_rope */
} mg_llama_weights;

/* The KV cache, a buffer per layer. Position t of layer l lives in slot t % cap[l]: a global
 * layer has cap >= every position, a sliding-window layer may keep a ring of cap >= window + n - 1
 * slots (the keys its n queries see, their own included). */
typedef struct {
    float *const *k;    /* (n_layers,): layer l's keys (n_kv_heads, cap[l], head_dim) */
    float *const *v;    /* (n_layers,): values, the same shape */
    const int64_t *cap; /* (n_layers,) */
} mg_kv_cache;

/* out[n, rows] = x[n, cols] @ W^T (mg_matmul's signature) */
typedef int (*mg_matmul_fn)(const float *restrict x, const void *restrict w, float *restrict out,
                            int qtype, int64_t n, int64_t rows, int64_t cols);

/* Which matmul the forward uses. EXACT: mg_matmul, float32 activations (what llama.py computes).
 * FAST: mg_matmul_q8 everywhere, activations quantized to int8 blocks for the block weight types.
 * BALANCED: int8 activations except for the two matmuls most sensitive to them, w_down (its input,
 * silu(gate) * up, has outliers) and the output head, which go through mg_matmul_q16: int16
 * activations over a packed weight, float32 over a plain one. LlamaForward (_forward.pxi) packs
 * w_down but not the head: on SmolLM2 an int16 head costs 0.6 points of top-1 agreement with the f32
 * reference. Agreement: FAST 95.4 %, BALANCED 97.2 %, llama.cpp 96.4 % (docs/fidelity.md). */
enum mg_matmul_mode { MG_MATMUL_EXACT = 0, MG_MATMUL_FAST = 1, MG_MATMUL_BALANCED = 2 };

typedef struct mg_llama_ctx mg_llama_ctx;

/* A context over cfg and w (pointers borrowed: they must outlive it) with scratch for max_batch
 * tokens. NULL if out of memory. Starts in MG_MATMUL_EXACT mode. */
mg_llama_ctx *mg_llama_create(const mg_llama_config *cfg, const mg_llama_weights *w, int64_t max_batch);

void mg_llama_free(mg_llama_ctx *ctx);

/* Returns MG_OK, or MG_EQTYPE for an unknown mode. */
int mg_llama_set_matmul(mg_llama_ctx *ctx, int mode);

/* Run ids[0 .. n) at positions [start, start + n), 1 <= n <= max_batch, start + n <= n_rope.
 * kv: positions before start already filled (those each query sees); [start, start + n) are
 *     written.                                                                               IN/OUT
 * logits_out: (n, vocab_size) if all_logits else (1, vocab_size) for the last token; NULL skips
 *             the final norm and head (an earlier chunk of a long prompt).                   OUT
 * Returns MG_OK or a kernels.h error code (MG_ENOMEM from a matmul). */
int mg_llama_forward(mg_llama_ctx *ctx, const int64_t *ids, int64_t n, int64_t start, const mg_kv_cache *kv,
                     float *logits_out, int all_logits);

#endif /* MINIGPT_LLAMA_H */
