/* The decoder's forward pass (see decoder.h): minigpt/model/decoder.py in C over preallocated buffers.
 *
 * Each matmul goes through the kernel its weight's `bits` names (float32, int16 or int8 activations),
 * using the thread pool; attention too. The elementwise steps (norms, RoPE, gates, residual adds) are
 * the ops slots (ops.h: portable C, or AVX2 when the CPU has it), single-threaded: next to the matmuls
 * they are noise.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decoder.h"

struct mg_decoder {
    const mg_kernel_table *kern;
    mg_decoder_config cfg;
    mg_decoder_weights w;      /* w.layers points at layers below */
    mg_decoder_layer *layers;  /* (n_layers,) owned copy */
    int64_t max_batch;
    /* scratch, max_batch rows each */
    float *x;     /* (max_batch, dim) residual stream */
    float *xb;    /* (max_batch, dim) normed input of a matmul */
    float *xo;    /* (max_batch, dim) output of wo / w_down, added to x */
    float *q;     /* (max_batch, n_heads * head_dim) */
    float *qn;    /* (max_batch, n_heads * head_dim) q or k normed per head */
    float *k, *v; /* (max_batch, n_kv_heads * head_dim) */
    float *att;   /* (max_batch, n_heads * head_dim) attention output */
    float *hg;    /* (max_batch, hidden_dim) gate, then silu(gate) * up */
    float *hu;    /* (max_batch, hidden_dim) up */
    mg_attn_seq *att_seqs; /* (max_batch,) a layer's attention call, a sequence each */
};

/* --- the decoder ---------------------------------------------------------------------------------- */

mg_decoder *mg_decoder_create(const mg_kernel_table *kt, const mg_decoder_config *cfg, const mg_decoder_weights *w,
                              int64_t max_batch) {
    mg_decoder *ctx = (mg_decoder *)calloc(1, sizeof *ctx);
    if (!ctx) return NULL;
    ctx->kern = kt;
    ctx->cfg = *cfg;
    ctx->w = *w;
    ctx->max_batch = max_batch;
    ctx->layers = (mg_decoder_layer *)malloc((size_t)cfg->n_layers * sizeof(mg_decoder_layer));
    const int64_t B = max_batch, qd = cfg->n_heads * cfg->head_dim, kvd = cfg->n_kv_heads * cfg->head_dim;
    ctx->x = (float *)malloc((size_t)(B * cfg->dim) * sizeof(float));
    ctx->xb = (float *)malloc((size_t)(B * cfg->dim) * sizeof(float));
    ctx->xo = (float *)malloc((size_t)(B * cfg->dim) * sizeof(float));
    ctx->q = (float *)malloc((size_t)(B * qd) * sizeof(float));
    ctx->qn = (float *)malloc((size_t)(B * (qd > kvd ? qd : kvd)) * sizeof(float));
    ctx->k = (float *)malloc((size_t)(B * kvd) * sizeof(float));
    ctx->v = (float *)malloc((size_t)(B * kvd) * sizeof(float));
    ctx->att = (float *)malloc((size_t)(B * qd) * sizeof(float));
    ctx->hg = (float *)malloc((size_t)(B * cfg->hidden_dim) * sizeof(float));
    ctx->hu = (float *)malloc((size_t)(B * cfg->hidden_dim) * sizeof(float));
    ctx->att_seqs = (mg_attn_seq *)malloc((size_t)B * sizeof(mg_attn_seq));
    if (!ctx->layers || !ctx->x || !ctx->xb || !ctx->xo || !ctx->q || !ctx->qn || !ctx->k || !ctx->v || !ctx->att ||
        !ctx->hg || !ctx->hu || !ctx->att_seqs) {
        mg_decoder_free(ctx);
        return NULL;
    }
    memcpy(ctx->layers, w->layers, (size_t)cfg->n_layers * sizeof(mg_decoder_layer));
    ctx->w.layers = ctx->layers;
    return ctx;
}

void mg_decoder_free(mg_decoder *ctx) {
    if (!ctx) return;
    free(ctx->layers);
    free(ctx->x);
    free(ctx->xb);
    free(ctx->xo);
    free(ctx->q);
    free(ctx->qn);
    free(ctx->k);
    free(ctx->v);
    free(ctx->att);
    free(ctx->hg);
    free(ctx->hu);
    free(ctx->att_seqs);
    free(ctx);
}

/* --- forward ------------------------------------------------------------------------------------- */

/* out (n, rows) = x (n, cols) @ W^T through the kernel of W's activation bits */
static int mm(const mg_decoder *ctx, const float *x, const mg_weight *W, float *out, int64_t n, int64_t rows,
              int64_t cols) {
    const mg_matmul_fn f = W->bits == 8 ? ctx->kern->matmul_q8 : W->bits == 16 ? ctx->kern->matmul_q16 : ctx->kern->matmul;
    return f(x, W->data, out, W->qtype, n, rows, cols);
}

/* outs[k] (n, rows[k]) = x (n, cols) @ Ws[k]^T for k < count: in one job (x quantized once) where all
 * are x8-packed with the same int bits, else one matmul after another */
static int mm_many(const mg_decoder *ctx, const float *x, const mg_weight *const *Ws, float *const *outs,
                   const int64_t *rows, int count, int64_t n, int64_t cols) {
    int same = Ws[0]->bits != 32;
    for (int k = 0; k < count; k++) same = same && (Ws[k]->qtype & MG_X8) && Ws[k]->bits == Ws[0]->bits;
    if (same) {
        mg_x8_matmul mms[MG_X8_MAX_MATMULS];
        for (int k = 0; k < count; k++)
            mms[k] = (mg_x8_matmul){Ws[k]->data, Ws[k]->qtype & ~MG_X8, rows[k], outs[k]};
        return ctx->kern->matmul_x8_many(x, n, cols, Ws[0]->bits, mms, count);
    }
    for (int k = 0, err; k < count; k++)
        if ((err = mm(ctx, x, Ws[k], outs[k], n, rows[k], cols))) return err;
    return MG_OK;
}

/* x (n, width) += bias (width,) on every row */
static void add_bias(const mg_ops *ops, float *x, const mg_weight *bias, int64_t n, int64_t width) {
    for (int64_t i = 0; i < n; i++) ops->add(x + i * width, (const float *)bias->data, width);
}

/* one position's head_dim values x into its cache row (mg_kv_type `type`) */
static void store_row(const mg_ops *ops, int type, const float *x, uint8_t *row, int64_t hd) {
    switch (type) {
    case MG_KV_F16: ops->f32_to_f16(x, (uint16_t *)row, hd); break;
    case MG_KV_Q8_0: ops->f32_to_q8_0(x, row, 1, hd); break;
    default: memcpy(row, x, (size_t)hd * sizeof(float));
    }
}

/* RMSNorm of each of the rows (n, width) of x in place, through the scratch tmp */
static void norm_rows(const mg_ops *ops, float *x, const mg_weight *g, float *tmp, int64_t rows, int64_t width,
                      float eps) {
    ops->rms_norm(x, (const float *)g->data, tmp, rows, width, eps);
    memcpy(x, tmp, (size_t)(rows * width) * sizeof(float));
}

/* The steps of a layer whose rows see only their own sequence, but attention: RoPE at its positions
 * and its K/V into its cache. Its rows of the batch start at `row`. -> its part of the attention call */
static mg_attn_seq rope_and_store(const mg_decoder *ctx, const mg_decoder_layer *L, int64_t li, const mg_seq *seq,
                                  int64_t row) {
    const mg_decoder_config *cfg = &ctx->cfg;
    const mg_ops *ops = ctx->kern->ops;
    const int64_t hd = cfg->head_dim, H = cfg->n_heads, KV = cfg->n_kv_heads, half = cfg->rope_dim / 2;
    const int64_t n = seq->n, start = seq->start, cap = seq->kv->cap[li], rb = mg_kv_row_bytes(seq->kv->type, hd);
    float *q = ctx->q + row * H * hd, *k = ctx->k + row * KV * hd, *v = ctx->v + row * KV * hd;
    uint8_t *kc = (uint8_t *)seq->kv->k[li], *vc = (uint8_t *)seq->kv->v[li];
    const float *cos_t = L->rope_cos + start * half, *sin_t = L->rope_sin + start * half;
    void (*const rope)(float *, int64_t, int64_t, int64_t, int64_t, const float *, const float *) =
        cfg->rope_neox ? ops->rope_neox : ops->rope;

    rope(q, n, H, hd, cfg->rope_dim, cos_t, sin_t);
    rope(k, n, KV, hd, cfg->rope_dim, cos_t, sin_t);
    for (int64_t i = 0; i < n; i++) /* (n, KV, hd) -> cache (KV, cap, row) at slot (start + i) % cap */
        for (int64_t j = 0; j < KV; j++) {
            const int64_t at = (j * cap + (start + i) % cap) * rb;
            store_row(ops, seq->kv->type, k + (i * KV + j) * hd, kc + at, hd);
            store_row(ops, seq->kv->type, v + (i * KV + j) * hd, vc + at, hd);
        }
    return (mg_attn_seq){q, kc, vc, ctx->att + row * H * hd, n, start, cap};
}

/* Layer li's attention for every sequence: one call for each run of sequences whose caches store the
 * same row type (in practice, the whole batch) */
static void attend(const mg_decoder *ctx, const mg_decoder_layer *L, int64_t li, const mg_seq *seqs, int64_t n_seqs) {
    const mg_decoder_config *cfg = &ctx->cfg;
    for (int64_t s = 0, row = 0; s < n_seqs; row += seqs[s++].n)
        ctx->att_seqs[s] = rope_and_store(ctx, L, li, &seqs[s], row);
    for (int64_t s0 = 0, s1; s0 < n_seqs; s0 = s1) {
        const int type = seqs[s0].kv->type;
        for (s1 = s0 + 1; s1 < n_seqs && seqs[s1].kv->type == type; s1++) {}
        const mg_attn_params ap = {cfg->n_heads, cfg->n_kv_heads, cfg->head_dim, cfg->query_scale, L->window, type};
        ctx->kern->attention(&ap, ctx->att_seqs + s0, s1 - s0);
    }
}

int mg_decoder_forward_multi(mg_decoder *ctx, const int64_t *ids, int64_t n, const mg_seq *seqs, int64_t n_seqs,
                             float *logits_out, int64_t top, const uint32_t *const *allowed) {
    const mg_decoder_config *cfg = &ctx->cfg;
    const mg_decoder_weights *w = &ctx->w;
    const mg_ops *ops = ctx->kern->ops;
    const int64_t d = cfg->dim, hd = cfg->head_dim, H = cfg->n_heads, KV = cfg->n_kv_heads;
    const int64_t qd = H * hd, kvd = KV * hd, hid = cfg->hidden_dim;
    void (*const act)(float *, const float *, int64_t) = cfg->act == MG_ACT_GELU_TANH ? ops->geglu : ops->swiglu;
    int err;

    err = ctx->kern->get_rows(w->tok_embd.data, w->tok_embd.qtype, ids, n, d, ctx->x);
    if (err) return err;
    if (cfg->embed_scale != 1.0f)
        for (int64_t j = 0; j < n * d; j++) ctx->x[j] *= cfg->embed_scale;
    for (int64_t li = 0; li < cfg->n_layers; li++) {
        const mg_decoder_layer *L = &w->layers[li];

        ops->rms_norm(ctx->x, (const float *)L->attn_norm.data, ctx->xb, n, d, cfg->norm_eps);
        const mg_weight *qkv[3] = {&L->wq, &L->wk, &L->wv};
        float *const qkv_out[3] = {ctx->q, ctx->k, ctx->v};
        const int64_t qkv_rows[3] = {qd, kvd, kvd};
        if ((err = mm_many(ctx, ctx->xb, qkv, qkv_out, qkv_rows, 3, n, d))) return err;
        if (L->bq.data) {
            add_bias(ops, ctx->q, &L->bq, n, qd);
            add_bias(ops, ctx->k, &L->bk, n, kvd);
            add_bias(ops, ctx->v, &L->bv, n, kvd);
        }
        if (L->q_norm.data) {
            norm_rows(ops, ctx->q, &L->q_norm, ctx->qn, n * H, hd, cfg->norm_eps);
            norm_rows(ops, ctx->k, &L->k_norm, ctx->qn, n * KV, hd, cfg->norm_eps);
        }
        attend(ctx, L, li, seqs, n_seqs);
        if ((err = mm(ctx, ctx->att, &L->wo, ctx->xo, n, d, qd))) return err;
        if (L->post_attn_norm.data) norm_rows(ops, ctx->xo, &L->post_attn_norm, ctx->xb, n, d, cfg->norm_eps);
        ops->add(ctx->x, ctx->xo, n * d);

        ops->rms_norm(ctx->x, (const float *)L->ffn_norm.data, ctx->xb, n, d, cfg->norm_eps);
        const mg_weight *gate_up[2] = {&L->w_gate, &L->w_up};
        float *const gate_up_out[2] = {ctx->hg, ctx->hu};
        const int64_t gate_up_rows[2] = {hid, hid};
        if ((err = mm_many(ctx, ctx->xb, gate_up, gate_up_out, gate_up_rows, 2, n, d))) return err;
        act(ctx->hg, ctx->hu, n * hid);
        if ((err = mm(ctx, ctx->hg, &L->w_down, ctx->xo, n, d, hid))) return err;
        if (L->post_ffn_norm.data) norm_rows(ops, ctx->xo, &L->post_ffn_norm, ctx->xb, n, d, cfg->norm_eps);
        ops->add(ctx->x, ctx->xo, n * d);
    }
    if (!logits_out) return MG_OK;
    const float *g = (const float *)w->output_norm.data;
    int64_t rows = 0;   /* each sequence's last rows, side by side: the head is read once for all of them */
    for (int64_t s = 0, end = 0; s < n_seqs; s++) {
        end += seqs[s].n;
        ops->rms_norm(ctx->x + (end - seqs[s].n_logits) * d, g, ctx->xb + rows * d, seqs[s].n_logits, d,
                      cfg->norm_eps);
        rows += seqs[s].n_logits;
    }
    if (top > 0 && w->screen.data && w->output.bits == 32)
        return ctx->kern->matmul_screened(ctx->xb, w->screen.data, w->screen.qtype, w->output.data, w->output.qtype,
                                          w->output_norms, allowed, logits_out, rows, cfg->vocab_size, d, top);
    return mm(ctx, ctx->xb, &w->output, logits_out, rows, cfg->vocab_size, d);
}

int mg_decoder_forward(mg_decoder *ctx, const int64_t *ids, int64_t n, int64_t start, const mg_kv_cache *kv,
                       float *logits_out, int all_logits, int64_t top, const uint32_t *const *allowed) {
    const mg_seq seq = {n, start, kv, all_logits ? n : 1};
    return mg_decoder_forward_multi(ctx, ids, n, &seq, 1, logits_out, top, allowed);
}
