/* Causal grouped-query attention over the KV cache (ops.h), flash-attention style.
 *
 * Work is cut into items (query tile, kv head, part of its head group). An item's rows are the
 * (query, head) pairs of up to ATT_QTILE consecutive queries and the query heads sharing one kv head,
 * so each K/V row is loaded once per tile of queries rather than once per query. Keys go by in tiles
 * of ATT_KTILE with an online softmax per row (a running max and sum, the output rescaled when a tile
 * raises the max), so no [n, T] score matrix is ever stored; the masks (causal, sliding window) only
 * touch the tiles at the edges of each query's key range.
 *
 * Prefill has many items; decode (one query) has n_kv_heads of them, so when threads outnumber items
 * the head groups are cut in parts (K/V are then read once per part). A batch of sequences (their
 * decode steps, say) shares one parallel job: the items of all of them are dealt out together.
 * The inner loops (scores, exp, P.V) are the mg_lops slots; this file only tiles, masks and threads.
 *
 * Sliding-window layers set mg_attn_params.window, and their cache may be a ring: position t lives in
 * slot t % cap, and a key tile ends where the ring wraps (a global layer's cap exceeds every position,
 * so its tiles never do).
 *
 * An f16 or q8_0 cache is read in parts of a tile: K rows converted to float32 into a scratch,
 * scored by the same slots, then V rows into the same scratch. A score depends on its key alone, and
 * P.V adds its keys in order, so a tile converted in parts gives the same floats: this is exactly the
 * float32 attention of the decoded cache. An f16 cache skips the scratch where the CPU has the f16
 * slots (attn_scores_f16, attn_pv_f16): they convert each row as they load it, into the same floats
 * (scores of many rows go through a transposed copy of 16 keys, converted once for all the rows; a
 * prefill's values are still converted in chunks).
 * Chunks, and direct reads, keep the CPU busy while the next rows come from memory: at depth, a decode
 * step reads megabytes of K/V per layer that are in no cache, and converting a whole 16 KB tile before
 * using it left the core waiting on each tile's misses in turn (decode at 2,048 positions: +22 %).
 */
#include <math.h>
#include <string.h>

#include "ops.h"

#define ATT_QTILE 16          /* queries per item in prefill */
#define ATT_KTILE 64          /* keys per tile */
#define ATT_ROWS 64           /* (query, head) rows per item */
#define ATT_QO_FLOATS 4096    /* rows * head_dim of an item's q and o scratch (16 KB each, on the stack) */
#define ATT_KCHUNK 16         /* keys converted at a time in a decode step (q8_0, f16 without its slots) */
#define ATT_KV_FLOATS 16384   /* keys * head_dim of a converted f16 / q8_0 tile (64 KB, on the stack) */
#define ATT_MIN_WORK (1 << 15) /* multiply-adds per thread below which attention stays on one thread */

typedef char att_scratch_fits[ATT_QO_FLOATS / MG_ATTN_MAX_HEAD_DIM >= 1 ? 1 : -1];
typedef char att_kv_scratch_fits[ATT_KV_FLOATS / MG_ATTN_MAX_HEAD_DIM >= 1 ? 1 : -1];

typedef struct {
    const mg_attn_params *ap;
    const float *q;           /* see mg_attention */
    const uint8_t *kc, *vc;   /* rows of ap->kv_type, row_bytes each */
    int64_t row_bytes;
    float *out;
    int64_t n, start, cap;
    int64_t tq;    /* queries per item */
    int64_t n_qt;  /* query tiles: ceil(n / tq) */
    int64_t parts; /* parts each group of heads is cut into */
    int64_t first; /* the batch's number of this sequence's first item */
} attn_job;

#define ATT_MAX_SEQS 64 /* sequences per parallel job (their attn_jobs live on the stack) */

typedef struct {
    const attn_job *jobs; /* one per sequence */
    int64_t n_jobs, items;
} attn_batch;

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* first key position query position p sees */
static int64_t first_key(const mg_attn_params *ap, int64_t p) {
    return ap->window > 0 ? max64(0, p - ap->window + 1) : 0;
}

/* float32 rows [slot, slot + tn) of one kv head's cache c: in place for f32, else converted into buf */
static const float *kv_rows(const mg_attn_params *ap, const uint8_t *c, int64_t row_bytes, int64_t slot,
                            int64_t tn, float *buf) {
    const uint8_t *r = c + slot * row_bytes;
    switch (ap->kv_type) {
    case MG_KV_F16: mg_lops.f16_to_f32((const uint16_t *)r, buf, tn * ap->head_dim); return buf;
    case MG_KV_Q8_0: mg_lops.q8_0_to_f32(r, buf, tn, ap->head_dim); return buf;
    default: return (const float *)r;
    }
}

/* Queries i0 .. i0 + nq of heads [h0, h0 + gh), all sharing kv head j. Row qi * gh + h of the
 * scratch is query i0 + qi, head h0 + h. */
static void attend(const attn_job *jb, int64_t i0, int64_t nq, int64_t j, int64_t h0, int64_t gh) {
    const mg_attn_params *ap = jb->ap;
    const int64_t hd = ap->head_dim, H = ap->n_heads, R = nq * gh;
    const int64_t p0 = jb->start + i0, p1 = p0 + nq - 1; /* positions of the first and last query */
    const int64_t cap = jb->cap;
    const uint8_t *kc = jb->kc + j * cap * jb->row_bytes, *vc = jb->vc + j * cap * jb->row_bytes;
    /* f16 keys are read straight from the cache, and so are the values of a decode step (a prefill's
     * many rows would convert each value row once per 3 rows: converting it once is faster). What is
     * converted goes a whole tile at a time in prefill, where the rows are at hand and longer slot
     * calls pay off (-4 %), and ATT_KCHUNK keys at a time in a decode step, so that reading the next
     * rows from memory alternates with the work on the last ones */
    const int fused = ap->kv_type == MG_KV_F16 && hd % 8 == 0 && mg_lops.attn_scores_f16 && mg_lops.attn_pv_f16;
    const int fused_v = fused && nq == 1;
    const int64_t part = nq > 1 ? min64(ATT_KTILE, ATT_KV_FLOATS / hd) : min64(ATT_KCHUNK, ATT_KV_FLOATS / hd);
    const int64_t kn = fused ? ATT_KTILE : part, vn = fused_v ? ATT_KTILE : part;
    float qs[ATT_QO_FLOATS], o[ATT_QO_FLOATS]; /* (R, hd): scaled queries, unnormalized outputs */
    float kvt[ATT_KV_FLOATS];                  /* (kn, hd): f16 / q8_0 rows as float32 */
    float s[ATT_ROWS * ATT_KTILE];              /* (R, ATT_KTILE): scores, then probabilities */
    float m[ATT_ROWS], l[ATT_ROWS];             /* running max and sum per row */

    for (int64_t qi = 0; qi < nq; qi++) {
        const float *src = jb->q + ((i0 + qi) * H + h0) * hd; /* gh heads side by side */
        for (int64_t e = 0; e < gh * hd; e++) qs[qi * gh * hd + e] = src[e] * ap->scale;
    }
    memset(o, 0, (size_t)(R * hd) * sizeof(float));
    for (int64_t r = 0; r < R; r++) m[r] = -INFINITY, l[r] = 0.0f;

    /* Tiles start and end on multiples of ATT_KTILE positions (and where the ring wraps), whatever
     * the item: a query's tiles, hence every rounding of its softmax, do not depend on which queries
     * share its item (prefill or decode, any thread count). Keys of a tile outside a query's range
     * are masked below. */
    for (int64_t t0 = first_key(ap, p0) / ATT_KTILE * ATT_KTILE, tn; t0 <= p1; t0 += tn) {
        const int64_t slot = t0 % cap;
        tn = min64(min64(ATT_KTILE - t0 % ATT_KTILE, p1 + 1 - t0), cap - slot);
        for (int64_t u = 0; u < tn; u += kn) {
            if (fused)
                mg_lops.attn_scores_f16(qs, R, (const uint16_t *)(kc + (slot + u) * jb->row_bytes),
                                        min64(kn, tn - u), hd, s + u, ATT_KTILE);
            else
                mg_lops.attn_scores(qs, R, kv_rows(ap, kc, jb->row_bytes, slot + u, min64(kn, tn - u), kvt),
                                    min64(kn, tn - u), hd, s + u, ATT_KTILE);
        }
        /* keys [a, b) of this tile are in query p0 + qi's range; the rest get probability 0. First
         * each row's new max and the factor that rescales what it summed so far (nothing, the first
         * time): all rows' factors in one call of the probabilities' exp (not libm's) */
        float mx[ATT_ROWS], dm[ATT_ROWS], corr[ATT_ROWS];
        int64_t ra[ATT_ROWS], rb[ATT_ROWS];
        for (int64_t qi = 0; qi < nq; qi++) {
            const int64_t p = p0 + qi;
            const int64_t a = clamp64(first_key(ap, p) - t0, 0, tn), b = clamp64(p + 1 - t0, 0, tn);
            for (int64_t r = qi * gh; r < (qi + 1) * gh; r++) {
                float *sr = s + r * ATT_KTILE;
                ra[r] = a, rb[r] = b, mx[r] = m[r], dm[r] = 0.0f;
                if (a >= b) {
                    memset(sr, 0, (size_t)tn * sizeof(float));
                    continue;
                }
                for (int64_t t = 0; t < a; t++) sr[t] = 0.0f;
                for (int64_t t = b; t < tn; t++) sr[t] = 0.0f;
                mx[r] = mg_lops.max(sr + a, b - a, m[r]);
                if (mx[r] > m[r]) dm[r] = m[r] - mx[r];
            }
        }
        mg_lops.exp(dm, corr, R);
        for (int64_t r = 0; r < R; r++) {
            if (ra[r] >= rb[r]) continue;
            if (mx[r] > m[r]) {
                float *orow = o + r * hd;
                l[r] *= corr[r];
                for (int64_t d = 0; d < hd; d++) orow[d] *= corr[r];
                m[r] = mx[r];
            }
            l[r] += mg_lops.exp_sum(s + r * ATT_KTILE + ra[r], rb[r] - ra[r], m[r]);
        }
        for (int64_t u = 0; u < tn; u += vn) {
            if (fused_v)
                mg_lops.attn_pv_f16(s + u, ATT_KTILE, R, (const uint16_t *)(vc + (slot + u) * jb->row_bytes),
                                    min64(vn, tn - u), hd, o);
            else
                mg_lops.attn_pv(s + u, ATT_KTILE, R, kv_rows(ap, vc, jb->row_bytes, slot + u, min64(vn, tn - u), kvt),
                                min64(vn, tn - u), hd, o);
        }
    }
    for (int64_t qi = 0; qi < nq; qi++)
        for (int64_t h = 0; h < gh; h++) {
            const int64_t r = qi * gh + h;
            const float inv = 1.0f / l[r];
            float *dst = jb->out + ((i0 + qi) * H + h0 + h) * hd;
            for (int64_t d = 0; d < hd; d++) dst[d] = o[r * hd + d] * inv;
        }
}

/* items (sequence, query tile, kv head, part), dealt round-robin: later query tiles see more keys */
static void attn_task(void *arg, int ith, int nth) {
    const attn_batch *bt = (const attn_batch *)arg;
    const int64_t kv = bt->jobs[0].ap->n_kv_heads, g = bt->jobs[0].ap->n_heads / kv, sp = bt->jobs[0].parts;
    int64_t s = 0;
    for (int64_t it = ith; it < bt->items; it += nth) {
        while (s + 1 < bt->n_jobs && it >= bt->jobs[s + 1].first) s++;
        const attn_job *jb = &bt->jobs[s];
        const int64_t k = it - jb->first, qt = k / (kv * sp), j = k / sp % kv, p = k % sp;
        const int64_t i0 = qt * jb->tq, r0 = g * p / sp, r1 = g * (p + 1) / sp;
        attend(jb, i0, min64(jb->tq, jb->n - i0), j, j * g + r0, r1 - r0);
    }
}

/* keys seen by the n queries at positions [start, start + n), summed over the queries */
static int64_t keys_seen(const mg_attn_params *ap, int64_t n, int64_t start) {
    int64_t keys = 0;
    for (int64_t p = start; p < start + n; p++) keys += p + 1 - first_key(ap, p);
    return keys;
}

/* the items of jobs[0 .. ns) with each head group cut in `parts`: numbers them, returns how many */
static int64_t number_items(attn_job *jobs, int64_t ns, int64_t parts) {
    int64_t items = 0;
    for (int64_t s = 0; s < ns; s++) {
        jobs[s].parts = parts;
        jobs[s].first = items;
        items += jobs[s].n_qt * jobs[s].ap->n_kv_heads * parts;
    }
    return items;
}

/* up to ATT_MAX_SEQS sequences in one parallel job */
static void attention_some(const mg_attn_params *ap, const mg_attn_seq *seqs, int64_t ns) {
    const int64_t hd = ap->head_dim, g = ap->n_heads / ap->n_kv_heads;
    const int64_t rows = min64(ATT_ROWS, ATT_QO_FLOATS / hd); /* per item */
    const int64_t parts = (g + rows - 1) / rows, gh = (g + parts - 1) / parts; /* heads per part, at most */
    attn_job jobs[ATT_MAX_SEQS];
    int64_t keys = 0;
    for (int64_t s = 0; s < ns; s++) {
        const mg_attn_seq *sq = &seqs[s];
        const int64_t tq = clamp64(rows / gh, 1, min64(ATT_QTILE, sq->n));
        jobs[s] = (attn_job){ap, sq->q, (const uint8_t *)sq->kc, (const uint8_t *)sq->vc,
                             mg_kv_row_bytes(ap->kv_type, hd), sq->out, sq->n, sq->start, sq->cap,
                             tq, (sq->n + tq - 1) / tq, parts, 0};
        keys += keys_seen(ap, sq->n, sq->start);
    }
    const int64_t want = clamp64(keys * ap->n_heads * hd * 2 / ATT_MIN_WORK, 1, mg_get_threads());
    int64_t items = number_items(jobs, ns, parts);
    if (items < want) /* decode: too few items; cut the groups finer (K/V then read more) */
        items = number_items(jobs, ns, min64(g, parts * ((want + items - 1) / items)));
    attn_batch bt = {jobs, ns, items};
    mg_parallel(attn_task, &bt, (int)min64(items, want));
}

void mg_attention_batch(const mg_attn_params *ap, const mg_attn_seq *seqs, int64_t n_seqs) {
    for (int64_t s = 0; s < n_seqs; s += ATT_MAX_SEQS) attention_some(ap, seqs + s, min64(ATT_MAX_SEQS, n_seqs - s));
}

void mg_attention(const mg_attn_params *ap, const float *q, const void *kc, const void *vc, float *out,
                  int64_t n, int64_t start, int64_t cap) {
    const mg_attn_seq seq = {q, kc, vc, out, n, start, cap};
    mg_attention_batch(ap, &seq, 1);
}
