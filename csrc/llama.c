/* The Llama forward pass (see llama.h): minigpt/model/llama.py's forward, in C over preallocated buffers.
 *
 * Matmuls go through ctx->matmul (mg_matmul or its int8-activation twin) and use the thread pool.
 * Attention is parallel over (query, kv head) items, a group of heads cut in parts only when there are
 * fewer items than threads (decode). Each item reads its K/V rows once for all the query heads sharing
 * them, in tiles of keys, with an online softmax (a running max and sum per head,
 * rescaled when a tile raises the max) so no [n, T] score matrix is ever stored.
 * The elementwise steps (norms, RoPE, SwiGLU) are single-threaded: next to the matmuls they are noise.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

#define ATT_TILE_FLOATS 4096 /* scores of one key tile for a whole group of heads (16 KB, on the stack) */
#define ATT_MIN_WORK (1 << 15) /* multiply-adds per thread below which attention stays on one thread */
#define LANES 8

struct mg_llama_ctx {
    mg_llama_config cfg;
    mg_llama_weights w;      /* w.layers points at layers below */
    mg_llama_layer *layers;  /* (n_layers,) owned copy */
    int64_t max_batch;
    mg_matmul_fn matmul;     /* most matmuls */
    mg_matmul_fn matmul_hi;  /* w_down and the output head: see MG_MATMUL_BALANCED */
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

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* --- context ------------------------------------------------------------------------------------- */

mg_llama_ctx *mg_llama_create(const mg_llama_config *cfg, const mg_llama_weights *w, int64_t max_batch) {
    mg_llama_ctx *ctx = (mg_llama_ctx *)calloc(1, sizeof *ctx);
    if (!ctx) return NULL;
    ctx->cfg = *cfg;
    ctx->w = *w;
    ctx->max_batch = max_batch;
    ctx->matmul = ctx->matmul_hi = mg_matmul;
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

/* --- elementwise steps --------------------------------------------------------------------------- */

/* out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * g,  x, out: (n, d) */
static void rms_norm(const float *restrict x, const float *restrict g, float *restrict out, int64_t n,
                     int64_t d, float eps) {
    for (int64_t i = 0; i < n; i++) {
        const float *restrict xi = x + i * d;
        double ss = 0.0;
        for (int64_t j = 0; j < d; j++) ss += (double)xi[j] * xi[j];
        const float inv = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
        for (int64_t j = 0; j < d; j++) out[i * d + j] = xi[j] * inv * g[j];
    }
}

/* Rotate pairs (x[2p], x[2p+1]) for p < rope_dim / 2 of every head of every token, in place.
 * x: (n, heads, hd); cos, sin: (n, rope_dim / 2), the rows of positions start .. start + n. */
static void rope(float *restrict x, int64_t n, int64_t heads, int64_t hd, int64_t rope_dim,
                 const float *restrict cos_t, const float *restrict sin_t) {
    const int64_t half = rope_dim / 2;
    for (int64_t i = 0; i < n; i++)
        for (int64_t h = 0; h < heads; h++) {
            float *restrict v = x + (i * heads + h) * hd;
            const float *restrict c = cos_t + i * half, *restrict s = sin_t + i * half;
            for (int64_t p = 0; p < half; p++) {
                const float x0 = v[2 * p], x1 = v[2 * p + 1];
                v[2 * p] = x0 * c[p] - x1 * s[p];
                v[2 * p + 1] = x0 * s[p] + x1 * c[p];
            }
        }
}

/* g = silu(g) * u, elementwise over m values */
static void swiglu(float *restrict g, const float *restrict u, int64_t m) {
    for (int64_t j = 0; j < m; j++) g[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
}

static void add_into(float *restrict x, const float *restrict y, int64_t m) {
    for (int64_t j = 0; j < m; j++) x[j] += y[j];
}

/* --- attention ----------------------------------------------------------------------------------- */

typedef struct {
    const mg_llama_config *cfg;
    const float *q;    /* (n, n_heads, hd)                          IN  */
    const float *kc;   /* (n_kv_heads, n_ctx, hd): this layer's keys   IN  */
    const float *vc;   /* (n_kv_heads, n_ctx, hd): this layer's values IN  */
    float *out;        /* (n, n_heads * hd)                         OUT */
    int64_t n, start, n_ctx;
    int64_t splits;    /* parts each group of heads is cut into (when queries x kv heads < threads) */
} attn_job;

static float dot(const float *restrict a, const float *restrict b, int64_t k) {
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= k; j += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[j + l] * b[j + l];
    float s = 0.0f;
    for (int l = 0; l < LANES; l++) s += acc[l];
    for (; j < k; j++) s += a[j] * b[j];
    return s;
}

/* Query i (position start + i) of heads [h0, h0 + g) sharing kv head j, over keys 0 .. start + i. */
static void attend(const attn_job *jb, int64_t i, int64_t j, int64_t h0, int64_t g) {
    const mg_llama_config *cfg = jb->cfg;
    const int64_t hd = cfg->head_dim, T = jb->start + i + 1;
    const int64_t tile = ATT_TILE_FLOATS / (cfg->n_heads / cfg->n_kv_heads);
    const float scale = (float)(1.0 / sqrt((double)hd));
    const float *q = jb->q + (i * cfg->n_heads + h0) * hd;       /* (g, hd) */
    const float *kc = jb->kc + j * jb->n_ctx * hd, *vc = jb->vc + j * jb->n_ctx * hd;
    float *acc = jb->out + (i * cfg->n_heads + h0) * hd;         /* (g, hd) */
    float s[ATT_TILE_FLOATS];                                    /* (g, tile) */
    float m[MG_LLAMA_MAX_GROUP], l[MG_LLAMA_MAX_GROUP];          /* running max and sum per head */

    for (int64_t r = 0; r < g; r++) m[r] = -INFINITY, l[r] = 0.0f;
    memset(acc, 0, (size_t)(g * hd) * sizeof(float));
    for (int64_t t0 = 0; t0 < T; t0 += tile) {
        const int64_t tn = min64(tile, T - t0);
        for (int64_t t = 0; t < tn; t++) {
            const float *kr = kc + (t0 + t) * hd;
            for (int64_t r = 0; r < g; r++) s[r * tile + t] = dot(q + r * hd, kr, hd) * scale;
        }
        for (int64_t r = 0; r < g; r++) {
            float *sr = s + r * tile, mx = m[r];
            for (int64_t t = 0; t < tn; t++) mx = sr[t] > mx ? sr[t] : mx;
            if (mx > m[r]) { /* a new max: rescale what was summed so far (nothing, the first time) */
                const float corr = expf(m[r] - mx);
                l[r] *= corr;
                for (int64_t d = 0; d < hd; d++) acc[r * hd + d] *= corr;
                m[r] = mx;
            }
            float sum = 0.0f;
            for (int64_t t = 0; t < tn; t++) sum += (sr[t] = expf(sr[t] - mx));
            l[r] += sum;
        }
        for (int64_t t = 0; t < tn; t++) {
            const float *restrict vr = vc + (t0 + t) * hd;
            for (int64_t r = 0; r < g; r++) {
                const float p = s[r * tile + t];
                float *restrict a = acc + r * hd;
                for (int64_t d = 0; d < hd; d++) a[d] += p * vr[d];
            }
        }
    }
    for (int64_t r = 0; r < g; r++) {
        const float inv = 1.0f / l[r];
        for (int64_t d = 0; d < hd; d++) acc[r * hd + d] *= inv;
    }
}

/* items (query i, kv head j, part p), dealt round-robin: later queries see more keys */
static void attn_task(void *arg, int ith, int nth) {
    const attn_job *jb = (const attn_job *)arg;
    const int64_t n_kv = jb->cfg->n_kv_heads, g = jb->cfg->n_heads / n_kv, sp = jb->splits;
    for (int64_t it = ith; it < jb->n * n_kv * sp; it += nth) {
        const int64_t i = it / (n_kv * sp), j = it / sp % n_kv, p = it % sp;
        const int64_t r0 = g * p / sp, r1 = g * (p + 1) / sp;
        attend(jb, i, j, j * g + r0, r1 - r0);
    }
}

static void attention(attn_job *jb) {
    const mg_llama_config *cfg = jb->cfg;
    const int64_t keys = jb->n * jb->start + jb->n * (jb->n + 1) / 2;    /* summed over the queries */
    const int64_t work = keys * cfg->n_heads * cfg->head_dim * 2;
    const int64_t want = min64(work / ATT_MIN_WORK, mg_get_threads());
    int64_t items = jb->n * cfg->n_kv_heads;
    jb->splits = 1;
    if (items < want) { /* decode: too few (query, kv head) pairs; cut the groups (K/V then read more) */
        jb->splits = min64((want + items - 1) / items, cfg->n_heads / cfg->n_kv_heads);
        items *= jb->splits;
    }
    mg_parallel(attn_task, jb, (int)min64(items, want));
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

        rms_norm(ctx->x, (const float *)L->attn_norm.data, ctx->xb, n, d, cfg->norm_eps);
        if ((err = mm(ctx->xb, L->wq.data, ctx->q, L->wq.qtype, n, qd, d))) return err;
        if ((err = mm(ctx->xb, L->wk.data, ctx->k, L->wk.qtype, n, kvd, d))) return err;
        if ((err = mm(ctx->xb, L->wv.data, ctx->v, L->wv.qtype, n, kvd, d))) return err;
        rope(ctx->q, n, H, hd, cfg->rope_dim, cos_t, sin_t);
        rope(ctx->k, n, KV, hd, cfg->rope_dim, cos_t, sin_t);
        for (int64_t i = 0; i < n; i++) /* (n, KV, hd) -> cache (KV, n_ctx, hd) at start + i */
            for (int64_t j = 0; j < KV; j++) {
                const int64_t at = (j * n_ctx + start + i) * hd;
                memcpy(kc + at, ctx->k + (i * KV + j) * hd, (size_t)hd * sizeof(float));
                memcpy(vc + at, ctx->v + (i * KV + j) * hd, (size_t)hd * sizeof(float));
            }
        attn_job aj = {cfg, ctx->q, kc, vc, ctx->att, n, start, n_ctx, 1};
        attention(&aj);
        if ((err = mm(ctx->att, L->wo.data, ctx->xo, L->wo.qtype, n, d, qd))) return err;
        add_into(ctx->x, ctx->xo, n * d);

        rms_norm(ctx->x, (const float *)L->ffn_norm.data, ctx->xb, n, d, cfg->norm_eps);
        if ((err = mm(ctx->xb, L->w_gate.data, ctx->hg, L->w_gate.qtype, n, hid, d))) return err;
        if ((err = mm(ctx->xb, L->w_up.data, ctx->hu, L->w_up.qtype, n, hid, d))) return err;
        swiglu(ctx->hg, ctx->hu, n * hid);
        if ((err = mm_hi(ctx->hg, L->w_down.data, ctx->xo, L->w_down.qtype, n, d, hid))) return err;
        add_into(ctx->x, ctx->xo, n * d);
    }
    if (!logits_out) return MG_OK;
    const int64_t rows = all_logits ? n : 1;
    const float *xl = ctx->x + (n - rows) * d;
    rms_norm(xl, (const float *)w->output_norm.data, ctx->xb, rows, d, cfg->norm_eps);
    return mm_hi(ctx->xb, w->output.data, logits_out, w->output.qtype, rows, cfg->vocab_size, d);
}
