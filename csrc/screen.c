/* The output head, screened: float32 logits where a sampler can look, at about the price of int8 ones.
 *
 * A decode step's head is vocab x dim multiply-adds per input, the biggest matmul of a small model;
 * at float32 activations (what precision 'balanced' keeps for it) it takes four times the instructions
 * of int8 ones, which is what it costs once a step carries several inputs. A sampler that keeps the
 * `top` best tokens (top-k; greedy: 1) needs the exact logits of those alone, so:
 *
 *   1. approx = x8 @ W^T, each input x rounded to q8 blocks xq first (mg_matmul_q8): fast.
 *   2. exact - approx = w . (x - xq) up to float32 rounding, so |exact - approx| <= |w| e with
 *      e = |x - xq| + (cols + 128) 2^-21 |x| (Cauchy-Schwarz; the second term bounds the roundings of
 *      both sums, at most about (cols + cols/32) 2^-24 |w| (|x| + |xq|) with |xq| <= 1.03 |x|, and of
 *      the bounds' own float32 arithmetic). |w|: each row's norm, rounded up (mg_row_norms).
 *   3. t = the top-th largest lower bound approx - |w| e: at least `top` exact logits are >= t.
 *   4. A row whose upper bound approx + |w| e is below t is none of the top; every other row (tens to
 *      hundreds of the 50k-262k on the real models) is computed again at float32, exactly as
 *      mg_matmul computes it (vec_dot), and replaces its approximation.
 *
 * The rows left approximate are below every one of the top `top`, which are exact: top-k, min-p,
 * top-p within the k and greedy choices see what the full float32 head would give them. Under a
 * grammar's mask (`allowed`) the top are the best rows it allows, and only those are computed again.
 */
#include <math.h>
#include <stdlib.h>

#include "kernels.h"

typedef struct {
    const float *x;       /* (n, cols) inputs                                    IN */
    const uint32_t *const *allowed; /* (n,) each input's bitmask of rows, or NULL  IN */
    const uint8_t *w;     /* (rows, rb) the head as stored, for float32 rows     IN */
    const float *norms;   /* (rows,) |w_r|, rounded up                           IN */
    float *out;           /* (n, rows) int8 logits in, screened logits out  IN/OUT */
    const mg_type_traits *tt;
    int64_t n, rows, cols, rb, top;
} screen_job;

enum {
    CHUNK = 64,     /* rows a scan tests in one vectorized sweep before it looks at them one by one */
    BATCH = 256,    /* rows to compute again, gathered before they are computed */
    AHEAD = 4,      /* how many rows of a batch ahead of its computing the lines of a row are asked for */
};

/* restore the min-heap property of h[0 .. k) below position i */
static void sift_down(float *h, int64_t k, int64_t i) {
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= k) return;
        if (c + 1 < k && h[c + 1] < h[c]) c++;
        if (h[i] <= h[c]) return;
        const float t = h[i];
        h[i] = h[c];
        h[c] = t;
        i = c;
    }
}

/* e of step 2 for one input, rounded up to a float: |x - xq| + (cols + 128) 2^-21 |x|, of which
 * 64 2^-21 |x| covers the float32 arithmetic of the bounds themselves (|approx| <= 1.1 |w| |x|) */
static float error_bound(const float *x, int64_t cols) {
    const int64_t nb = cols / MG_QK;
    mg_block_q8 xq[64];   /* a chunk of the row's blocks at a time */
    double dx2 = 0, x2 = 0;
    for (int64_t b0 = 0; b0 < nb; b0 += 64) {
        const int64_t m = nb - b0 < 64 ? nb - b0 : 64;
        mg_quantize_row_q8(x + b0 * MG_QK, xq, m * MG_QK);
        for (int64_t b = 0; b < m; b++)
            for (int j = 0; j < MG_QK; j++) {
                const double v = x[(b0 + b) * MG_QK + j], dv = v - (double)xq[b].d * xq[b].q[j];
                dx2 += dv * dv;
                x2 += v * v;
            }
    }
    const double e = sqrt(dx2) + (double)(cols + 128) * ldexp(sqrt(x2), -21);
    const float f = (float)e;
    return (double)f < e ? nextafterf(f, INFINITY) : f;
}

/* whether row r is one of those a bitmask allows (bit r % 32 of word r / 32; NULL: every row) */
static inline int allows(const uint32_t *allowed, int64_t r) {
    return !allowed || (allowed[r >> 5] >> (r & 31)) & 1;
}

/* asks for the lines of [p, p + bytes) */
static inline void prefetch(const uint8_t *p, int64_t bytes) {
#if defined(__GNUC__)
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o);
#else
    (void)p, (void)bytes;
#endif
}

/* step 4 for the m rows of `batch` (ascending): each computed again at float32. They lie scattered over
 * the head, and one after another each would wait for memory: a row's lines are asked for AHEAD rows
 * before its turn. */
static void recompute(const screen_job *jb, const float *x, const int64_t *batch, int m, float *restrict out) {
    for (int i = 0; i < m && i < AHEAD; i++) prefetch(jb->w + batch[i] * jb->rb, jb->rb);
    for (int i = 0; i < m; i++) {
        if (i + AHEAD < m) prefetch(jb->w + batch[i + AHEAD] * jb->rb, jb->rb);
        out[batch[i]] = jb->tt->vec_dot(jb->cols, jb->w + batch[i] * jb->rb, x);
    }
}

/* steps 2 to 4 for one input x and its row of out, among the rows `allowed` (a grammar's mask: the top
 * are the best it allows; where it allows `top` rows or fewer, they are all computed again) */
static void screen_row(const screen_job *jb, const float *x, const uint32_t *allowed, float *restrict out) {
    const int64_t rows = jb->rows, k = jb->top;
    const float *restrict norms = jb->norms;
    const float e = error_bound(x, jb->cols);
    float heap[MG_SCREEN_MAX_TOP] = {-INFINITY};   /* the k largest lower bounds so far; heap[0] the least */
    int64_t filled = 0, r0 = 0;
    for (; r0 < rows && filled < k; r0++)
        if (allows(allowed, r0)) heap[filled++] = out[r0] - norms[r0] * e;
    float t = -INFINITY;
    if (filled == k) {
        for (int64_t r = k / 2 - 1; r >= 0; r--) sift_down(heap, k, r);
        for (; r0 < rows; r0 += CHUNK) {
            const int64_t r1 = r0 + CHUNK < rows ? r0 + CHUNK : rows;
            const float least = heap[0];
            int above = 0;   /* any row of the chunk, allowed or not: the vector sweep ignores the mask */
            for (int64_t r = r0; r < r1; r++) above |= out[r] - norms[r] * e > least;
            if (!above) continue;
            for (int64_t r = r0; r < r1; r++) {
                const float lo = out[r] - norms[r] * e;
                if (lo > heap[0] && allows(allowed, r)) {
                    heap[0] = lo;
                    sift_down(heap, k, 0);
                }
            }
        }
        t = heap[0];
    }
    int64_t batch[BATCH];
    int m = 0;
    for (r0 = 0; r0 < rows; r0 += CHUNK) {
        const int64_t r1 = r0 + CHUNK < rows ? r0 + CHUNK : rows;
        int reach = 0;
        for (int64_t r = r0; r < r1; r++) reach |= out[r] + norms[r] * e >= t;
        if (!reach) continue;
        for (int64_t r = r0; r < r1; r++)
            if (out[r] + norms[r] * e >= t && allows(allowed, r)) {
                batch[m++] = r;
                if (m == BATCH) {
                    recompute(jb, x, batch, m, out);
                    m = 0;
                }
            }
    }
    recompute(jb, x, batch, m, out);
}

static void screen_task(void *arg, int s, int n_shares) {
    const screen_job *jb = (const screen_job *)arg;
    for (int64_t i = s; i < jb->n; i += n_shares)
        screen_row(jb, jb->x + i * jb->cols, jb->allowed ? jb->allowed[i] : NULL, jb->out + i * jb->rows);
}

int mg_matmul_screened(const float *restrict x, const void *restrict screen, int screen_qtype,
                       const void *restrict w, int qtype, const float *restrict norms,
                       const uint32_t *const *allowed, float *restrict out, int64_t n, int64_t rows, int64_t cols,
                       int64_t top) {
    if (qtype < 0 || qtype >= MG_NQTYPES) return MG_EQTYPE;
    if (top < 1 || top > MG_SCREEN_MAX_TOP || top >= rows || cols % MG_QK)
        return mg_matmul(x, w, out, qtype, n, rows, cols);
    int err = mg_matmul_q8(x, screen, out, screen_qtype, n, rows, cols);
    if (err) return err;
    screen_job jb = {x, allowed, (const uint8_t *)w, norms, out, &mg_traits[qtype], n, rows, cols,
                     mg_row_bytes(qtype, cols), top};
    mg_parallel(screen_task, &jb, (int)(n < MG_MAX_THREADS ? n : MG_MAX_THREADS));
    return MG_OK;
}

typedef struct {
    const uint8_t *w;
    float *out;
    int qtype;
    int64_t rows, cols, rb;
    int err;
} norms_job;

static void norms_task(void *arg, int s, int n_shares) {
    norms_job *jb = (norms_job *)arg;
    float *row = (float *)malloc((size_t)jb->cols * sizeof(float));
    if (!row) {
        jb->err = MG_ENOMEM;   /* any share's failure is the call's: a plain store, read after the join */
        return;
    }
    for (int64_t r = jb->rows * s / n_shares; r < jb->rows * (s + 1) / n_shares; r++) {
        mg_traits[jb->qtype].dequant(jb->w + r * jb->rb, row, jb->cols);
        double sum = 0;
        for (int64_t j = 0; j < jb->cols; j++) sum += (double)row[j] * row[j];
        const double norm = sqrt(sum);
        const float f = (float)norm;
        jb->out[r] = (double)f < norm ? nextafterf(f, INFINITY) : f;
    }
    free(row);
}

int mg_row_norms(const void *restrict w, int qtype, int64_t rows, int64_t cols, float *restrict out) {
    if (qtype < 0 || qtype >= MG_NQTYPES) return MG_EQTYPE;
    norms_job jb = {(const uint8_t *)w, out, qtype, rows, cols, mg_row_bytes(qtype, cols), MG_OK};
    mg_parallel(norms_task, &jb, rows < 4096 ? 1 : mg_get_threads());
    return jb.err;
}
