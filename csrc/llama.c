/* The Llama forward pass (see llama.h): minigpt/model/llama.py's forward, in C over preallocated buffers.
 *
 * Matmuls go through ctx->matmul (mg_matmul or its int8-activation twin) and use the thread pool;
 * attention (attention.c) too. The elementwise steps (norms, RoPE, SwiGLU, residual adds) are the
 * mg_lops slots (llama_ops.h: portable C, or AVX2 when the CPU has it), single-threaded: next to the
 * matmuls they are noise.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"
#include "llama_ops.h"

struct mg_llama_ctx {
    mg_llama_config cfg;
    mg_llama_weights w;      /* w.layers points at layers below */
    mg_llama_layer *layers;  /* (n_layers,) owned copy */
    int64_t max_batch;
    mg_matmul_fn matmul;     /* most matmuls */
    mg_matmul_fn matmul_hi;  /* w_down and the output head: see MG_MATMUL_BALANCED */
    mg_attn_params attn;     /* every layer's: full causal, scale 1 / sqrt(head_dim) */
    /* scratch, max_batch rows each */
    float *x;     /* (max_batch, dim) residual stream */
    float *xb;    /* (max_batch, dim) normed input of a matmul */
    float *xo;    /* (max_batch, dim) output of wo / w_down, added to x */
    float *q;     /* (max_batch, n_heads * head_dim) */
    float *k, *v; /* (max_batch, n_kv_heads * head_dim) */
    float *att;   /* (max_batch, n_heads * head_dim) attention output */
    float *hg;    /* (max_batch, hidden_dim) gate, then silu(gate) * up */
    float *hu;    /* (max_batch, hidden_dim) up */
};

/* --- context ------------------------------------------------------------------------------------- */

mg_llama_ctx *mg_llama_create(const mg_llama_config *cfg, const mg_llama_weights *w, int64_t max_batch) {
    mg_llama_ctx *ctx = (mg_llama_ctx *)calloc(1, sizeof *ctx);
    if (!ctx) return NULL;
    ctx->cfg = *cfg;
    ctx->w = *w;
    ctx->max_batch = max_batch;
    ctx->matmul = ctx->matmul_hi = mg_matmul;
    ctx->attn = (mg_attn_params){cfg->n_heads, cfg->n_kv_heads, cfg->head_dim,
                                 (float)(1.0 / sqrt((double)cfg->head_dim)), 0};
    ctx->layers = (mg_llama_layer *)malloc((size_t)cfg->n_layers * sizeof(mg_llama_layer));
    const int64_t B = max_batch, qd = cfg->n_heads * cfg->head_dim, kvd = cfg->n_kv_heads * cfg->head_dim;
    ctx->x = (float *)malloc((size_t)(B * cfg->dim) * sizeof(float));
    ctx->xb = (float *)malloc((size_t)(B * cfg->dim) * sizeof(float));
    ctx->xo = (float *)malloc((size_t)(B * cfg->dim) * sizeof(float));
    ctx->q = (float *)malloc((size_t)(B * qd) * sizeof(float));
    ctx->k = (float *)malloc((size_t)(B * kvd) * sizeof(float));
    ctx->v = (float *)malloc((size_t)(B * kvd) * sizeof(float));
    ctx->att = (float *)malloc((size_t)(B * qd) * sizeof(float));
    ctx->hg = (float *)malloc((size_t)(B * cfg->hidden_dim) * sizeof(float));
    ctx->hu = (float *)malloc((size_t)(B * cfg->hidden_dim) * sizeof(float));
    if (!ctx->layers || !ctx->x || !ctx->xb || !ctx->xo || !ctx->q || !ctx->k || !ctx->v || !ctx->att ||
        !ctx->hg || !ctx->hu) {
        mg_llama_free(ctx);
        return NULL;
    }
    memcpy(ctx->layers, w->layers, (size_t)cfg->n_layers * sizeof(mg_llama_layer));
    ctx->w.layers = ctx->layers;
    return ctx;
}

void mg_llama_free(mg_llama_ctx *ctx) {
    if (!ctx) return;
    free(ctx->layers);
    free(ctx->x);
    free(ctx->xb);
    free(ctx->xo);
    free(ctx->q);
    free(ctx->k);
    free(ctx->v);
    free(ctx->att);
    free(ctx->hg);
    free(ctx->hu);
    free(ctx);
}

int mg_llama_set_matmul(mg_llama_ctx *ctx, int mode) {
    switch (mode) {
    case MG_MATMUL_EXACT: ctx->matmul = ctx->matmul_hi = mg_matmul; return MG_OK;
    case MG_MATMUL_FAST: ctx->matmul = ctx->matmul_hi = mg_matmul_q8; return MG_OK;
    case MG_MATMUL_BALANCED: ctx->matmul = mg_matmul_q8; ctx->matmul_hi = mg_matmul_q16; return MG_OK;
    default: return MG_EQTYPE;
    }
}

/* --- forward ------------------------------------------------------------------------------------- */

int mg_llama_forward(mg_llama_ctx *ctx, const int64_t *ids, int64_t n, int64_t start,
                     float *k_cache, float *v_cache, int64_t n_ctx, float *logits_out, int all_logits) {
    const mg_llama_config *cfg = &ctx->cfg;
    const mg_llama_weights *w = &ctx->w;
    const mg_matmul_fn mm = ctx->matmul, mm_hi = ctx->matmul_hi;
    const int64_t d = cfg->dim, hd = cfg->head_dim, H = cfg->n_heads, KV = cfg->n_kv_heads;
    const int64_t qd = H * hd, kvd = KV * hd, hid = cfg->hidden_dim, half = cfg->rope_dim / 2;
    const float *cos_t = w->rope_cos + start * half, *sin_t = w->rope_sin + start * half;
    int err;

    err = mg_get_rows(w->tok_embd.data, w->tok_embd.qtype, ids, n, d, ctx->x);
    if (err) return err;
    for (int64_t li = 0; li < cfg->n_layers; li++) {
        const mg_llama_layer *L = &w->layers[li];
        float *kc = k_cache + li * KV * n_ctx * hd, *vc = v_cache + li * KV * n_ctx * hd;

        mg_lops.rms_norm(ctx->x, (const float *)L->attn_norm.data, ctx->xb, n, d, cfg->norm_eps);
        if ((err = mm(ctx->xb, L->wq.data, ctx->q, L->wq.qtype, n, qd, d))) return err;
        if ((err = mm(ctx->xb, L->wk.data, ctx->k, L->wk.qtype, n, kvd, d))) return err;
        if ((err = mm(ctx->xb, L->wv.data, ctx->v, L->wv.qtype, n, kvd, d))) return err;
        mg_lops.rope(ctx->q, n, H, hd, cfg->rope_dim, cos_t, sin_t);
        mg_lops.rope(ctx->k, n, KV, hd, cfg->rope_dim, cos_t, sin_t);
        for (int64_t i = 0; i < n; i++) /* (n, KV, hd) -> cache (KV, n_ctx, hd) at start + i */
            for (int64_t j = 0; j < KV; j++) {
                const int64_t at = (j * n_ctx + start + i) * hd;
                memcpy(kc + at, ctx->k + (i * KV + j) * hd, (size_t)hd * sizeof(float));
                memcpy(vc + at, ctx->v + (i * KV + j) * hd, (size_t)hd * sizeof(float));
            }
        mg_attention(&ctx->attn, ctx->q, kc, vc, ctx->att, n, start, n_ctx);
        if ((err = mm(ctx->att, L->wo.data, ctx->xo, L->wo.qtype, n, d, qd))) return err;
        mg_lops.add(ctx->x, ctx->xo, n * d);

        mg_lops.rms_norm(ctx->x, (const float *)L->ffn_norm.data, ctx->xb, n, d, cfg->norm_eps);
        if ((err = mm(ctx->xb, L->w_gate.data, ctx->hg, L->w_gate.qtype, n, hid, d))) return err;
        if ((err = mm(ctx->xb, L->w_up.data, ctx->hu, L->w_up.qtype, n, hid, d))) return err;
        mg_lops.swiglu(ctx->hg, ctx->hu, n * hid);
        if ((err = mm_hi(ctx->hg, L->w_down.data, ctx->xo, L->w_down.qtype, n, d, hid))) return err;
        mg_lops.add(ctx->x, ctx->xo, n * d);
    }
    if (!logits_out) return MG_OK;
    const int64_t rows = all_logits ? n : 1;
    const float *xl = ctx->x + (n - rows) * d;
    mg_lops.rms_norm(xl, (const float *)w->output_norm.data, ctx->xb, rows, d, cfg->norm_eps);
    return mm_hi(ctx->xb, w->output.data, logits_out, w->output.qtype, rows, cfg->vocab_size, d);
}
