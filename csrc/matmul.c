/* Drivers: out[n, rows] = x[n, cols] @ W^T for every weight type, plus row gather and dequantize.
 *
 * Two regimes:
 *   decode  (n < mi): memory bound. Each weight row is read once and dotted, still quantized, with
 *           each input (mg_traits[].vec_dot). Also a batch of a few sequences' decode steps: below one
 *           panel the GEMM would do a whole panel's work (on AVX2, 16 q8_0 rows dotted cost about what
 *           one padded panel does; 3 rows, a fifth of it). vec_dot_x4 takes inputs four at a time,
 *           unpacking each weight block once for the four, and gives each the float it would get alone.
 *   prefill (n >= mi): compute bound. Inputs are packed into panels of mi rows laid side by
 *           side ([cols, mi]); each weight block is dequantized once into a small float buffer of nr
 *           rows x KC columns and applied to every panel by the float tile kernel (mg_gemm.tile).
 * Threads split the weight rows; each thread writes only its own columns of out.
 *
 * mg_matmul_q8 first quantizes the inputs to q8 blocks (on the caller, once per input row), then dots
 * them with the still-quantized weight rows in integers (mg_traits[].vec_dot_q8). For several inputs
 * each weight row meets a group of inputs four at a time (vec_dot_q8_x4): the row stays in L1 and each
 * weight block is unpacked once per four inputs.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define KC 256         /* columns per chunk, a multiple of MG_QK: nr rows of it (<= 8 KB) stay in L1 */
#define GROUP_N 256    /* inputs packed per pass: bounds scratch memory; KC x GROUP_N floats fit L2 */
#define ROW_ALIGN 16   /* thread row ranges start on 64-byte boundaries of an out row */
#define MIN_WORK (1 << 16) /* multiply-adds per thread below which waking another one does not pay */
#define Q8_GROUP_N 64  /* inputs per pass over a thread's weight rows: 64 rows of q8 blocks stay in L2 */
#define Q8_STACK_BLOCKS 512 /* quantized inputs up to this many blocks (22 KB) live on the stack */

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* how many threads a job of n x rows x cols multiply-adds is worth */
static int useful_threads(int64_t n, int64_t rows, int64_t cols) {
    const int64_t by_work = n * rows * cols / MIN_WORK;
    const int64_t by_rows = (rows + ROW_ALIGN - 1) / ROW_ALIGN;
    return (int)min64(min64(by_work, by_rows), MG_MAX_THREADS);
}

/* --- float tile kernel (portable; the slot an AVX2/NEON version replaces) ------------------------ */

enum { TILE_NR = 4, TILE_MI = 8 }; /* 4x8 accumulators: 8 SSE registers, 4 AVX */

MG_SLP_ONLY static void gemm_tile_c(int64_t kc, const float *restrict w, int64_t ldw,
                                    const float *restrict xp, float *restrict acc) {
    float a[TILE_NR][TILE_MI] = {{0}};
    for (int64_t j = 0; j < kc; j++) {
        const float *restrict xv = xp + j * TILE_MI;
        for (int r = 0; r < TILE_NR; r++) {
            const float wj = w[r * ldw + j];
            for (int i = 0; i < TILE_MI; i++) a[r][i] += wj * xv[i];
        }
    }
    memcpy(acc, a, sizeof a);
}

mg_gemm_kernel mg_gemm = {TILE_NR, TILE_MI, gemm_tile_c};

/* --- jobs ---------------------------------------------------------------------------------------- */

typedef struct {
    const float *x;            /* (n, cols)                                     IN  */
    const uint8_t *w;          /* (rows, rb) stored rows                        IN  */
    float *out;                /* (n, rows)                                     OUT */
    const mg_type_traits *tt;
    mg_gemm_kernel gk;
    int64_t n, rows, cols, rb; /* rb: bytes per stored row */
    const float *xp;           /* (ceil(n/mi), cols, mi) packed inputs, zero padded (prefill) IN */
} matmul_job;

/* rows [*r0, *r1) of thread ith of nth, in whole ROW_ALIGN chunks */
static void row_range(int64_t rows, int ith, int nth, int64_t *r0, int64_t *r1) {
    const int64_t chunks = (rows + ROW_ALIGN - 1) / ROW_ALIGN;
    *r0 = min64(chunks * ith / nth * ROW_ALIGN, rows);
    *r1 = min64(chunks * (ith + 1) / nth * ROW_ALIGN, rows);
}

static void matvec_task(void *arg, int ith, int nth) {
    const matmul_job *jb = (const matmul_job *)arg;
    const mg_vec_dot_fn dot = jb->tt->vec_dot;
    const mg_vec_dot_x4_fn dot4 = jb->tt->vec_dot_x4;
    const int64_t n = jb->n, rows = jb->rows, cols = jb->cols;
    int64_t r0, r1;
    row_range(rows, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = jb->w + r * jb->rb;
        int64_t i = 0;
        if (dot4) {
            for (; i + 4 <= n; i += 4) {
                float o[4];
                dot4(cols, wr, jb->x + i * cols, cols, o);
                for (int t = 0; t < 4; t++) jb->out[(i + t) * rows + r] = o[t];
            }
            if (n - i == 3 && n >= 4) {   /* the last 4 again, one of them twice: cheaper than 3 dots, the same bits */
                float o[4];
                dot4(cols, wr, jb->x + (n - 4) * cols, cols, o);
                for (int t = 1; t < 4; t++) jb->out[(n - 4 + t) * rows + r] = o[t];
                i = n;
            }
        }
        for (; i < n; i++) jb->out[i * rows + r] = dot(cols, wr, jb->x + i * cols);
    }
}

static void gemm_task(void *arg, int ith, int nth) {
    const matmul_job *jb = (const matmul_job *)arg;
    const mg_type_traits *tt = jb->tt;
    const int nr = jb->gk.nr, mi = jb->gk.mi;
    const int64_t n = jb->n, rows = jb->rows, cols = jb->cols;
    const int64_t n_panels = (n + mi - 1) / mi;
    float wbuf[MG_GEMM_MAX_NR * KC];               /* (nr, KC) dequantized weight rows */
    float acc[MG_GEMM_MAX_NR * MG_GEMM_MAX_MI];    /* (nr, mi) */
    int64_t r0, r1;
    row_range(rows, ith, nth, &r0, &r1);

    for (int64_t k0 = 0; k0 < cols; k0 += KC) {
        const int64_t kc = min64(KC, cols - k0);
        const int64_t woff = k0 / tt->block * tt->block_bytes;
        for (int64_t r = r0; r < r1; r += nr) {
            const int nrr = (int)min64(nr, r1 - r);
            for (int t = 0; t < nrr; t++) tt->dequant(jb->w + (r + t) * jb->rb + woff, wbuf + t * KC, kc);
            for (int t = nrr; t < nr; t++) memset(wbuf + t * KC, 0, (size_t)kc * sizeof(float));
            for (int64_t p = 0; p < n_panels; p++) {
                jb->gk.tile(kc, wbuf, KC, jb->xp + (p * cols + k0) * mi, acc);
                const int64_t i0 = p * mi;
                const int mii = (int)min64(mi, n - i0);
                for (int i = 0; i < mii; i++) {
                    float *o = jb->out + (i0 + i) * rows + r;
                    if (k0 == 0)
                        for (int t = 0; t < nrr; t++) o[t] = acc[t * mi + i];
                    else
                        for (int t = 0; t < nrr; t++) o[t] += acc[t * mi + i];
                }
            }
        }
    }
}

typedef struct {
    const mg_block_q8 *xq;     /* (n, nb) quantized inputs                      IN  */
    const uint8_t *w;          /* (rows, rb) stored rows                        IN  */
    float *out;                /* (n, rows)                                     OUT */
    const mg_type_traits *tt;
    int64_t n, rows, cols, rb, nb; /* nb: blocks per input row */
} matmul_q8_job;

static void matmul_q8_task(void *arg, int ith, int nth) {
    const matmul_q8_job *jb = (const matmul_q8_job *)arg;
    const mg_vec_dot_q8_fn dot = jb->tt->vec_dot_q8;
    const mg_vec_dot_q8_x4_fn dot4 = jb->tt->vec_dot_q8_x4;
    const int64_t n = jb->n, rows = jb->rows, cols = jb->cols, nb = jb->nb;
    int64_t r0, r1;
    row_range(rows, ith, nth, &r0, &r1);
    for (int64_t g = 0; g < n; g += Q8_GROUP_N) {
        const int64_t g1 = min64(g + Q8_GROUP_N, n);
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *wr = jb->w + r * jb->rb;
            int64_t i = g;
            if (dot4)
                for (; i + 4 <= g1; i += 4) {
                    float o[4];
                    dot4(cols, wr, jb->xq + i * nb, nb, o);
                    for (int t = 0; t < 4; t++) jb->out[(i + t) * rows + r] = o[t];
                }
            for (; i < g1; i++) jb->out[i * rows + r] = dot(cols, wr, jb->xq + i * nb);
        }
    }
}

/* xp[p][j][i] = x[p*mi + i][j], zero for inputs past n */
static void pack_inputs(const float *restrict x, int64_t n, int64_t cols, int mi, float *restrict xp) {
    const int64_t n_panels = (n + mi - 1) / mi;
    for (int64_t p = 0; p < n_panels; p++) {
        float *restrict panel = xp + p * cols * mi;
        for (int i = 0; i < mi; i++) {
            const int64_t row = p * mi + i;
            if (row < n)
                for (int64_t j = 0; j < cols; j++) panel[j * mi + i] = x[row * cols + j];
            else
                for (int64_t j = 0; j < cols; j++) panel[j * mi + i] = 0.0f;
        }
    }
}

/* --- entry points -------------------------------------------------------------------------------- */

int mg_matmul(const float *restrict x, const void *restrict w, float *restrict out, int qtype,
              int64_t n, int64_t rows, int64_t cols) {
    if (qtype < 0 || qtype >= MG_NQTYPES) return MG_EQTYPE;
    if (n <= 0 || rows <= 0) return MG_OK;
    if (cols <= 0) {
        memset(out, 0, (size_t)(n * rows) * sizeof(float));
        return MG_OK;
    }
    matmul_job jb = {x, (const uint8_t *)w, out, &mg_traits[qtype], mg_gemm, n, rows, cols,
                     mg_row_bytes(qtype, cols), NULL};
    const int mi = jb.gk.mi;
    if (n < mi) {
        mg_parallel(matvec_task, &jb, useful_threads(n, rows, cols));
        return MG_OK;
    }
    /* out is written per input row, so a group of inputs is just a smaller matmul */
    const int64_t group = min64(n, GROUP_N);
    float *xp = (float *)malloc((size_t)((group + mi - 1) / mi * mi * cols) * sizeof(float));
    if (!xp) return MG_ENOMEM;
    for (int64_t g = 0; g < n; g += GROUP_N) {
        matmul_job gj = jb;
        gj.x = x + g * cols;
        gj.out = out + g * rows;
        gj.n = min64(GROUP_N, n - g);
        pack_inputs(gj.x, gj.n, cols, mi, xp);
        gj.xp = xp;
        mg_parallel(gemm_task, &gj, useful_threads(gj.n, rows, cols));
    }
    free(xp);
    return MG_OK;
}

void mg_quantize_act(const float *restrict x, int64_t n, int64_t cols, mg_block_q8 *restrict out) {
    const int64_t nb = cols / MG_QK;
    for (int64_t i = 0; i < n; i++) mg_quantize_row_q8(x + i * cols, out + i * nb, cols);
}

int mg_matmul_q8(const float *restrict x, const void *restrict w, float *restrict out, int qtype,
                 int64_t n, int64_t rows, int64_t cols) {
    if (qtype & MG_X8) return mg_matmul_q8_x8(x, w, out, qtype & ~MG_X8, n, rows, cols);
    if (qtype < 0 || qtype >= MG_NQTYPES) return MG_EQTYPE;
    const mg_type_traits *tt = &mg_traits[qtype];
    if (!tt->vec_dot_q8) return mg_matmul(x, w, out, qtype, n, rows, cols);
    if (n <= 0 || rows <= 0) return MG_OK;
    if (cols <= 0) {
        memset(out, 0, (size_t)(n * rows) * sizeof(float));
        return MG_OK;
    }
    const int64_t nb = cols / MG_QK;
    mg_block_q8 stack_xq[Q8_STACK_BLOCKS];
    mg_block_q8 *xq = stack_xq;
    if (n * nb > Q8_STACK_BLOCKS) {
        xq = (mg_block_q8 *)malloc((size_t)(n * nb) * sizeof(mg_block_q8));
        if (!xq) return MG_ENOMEM;
    }
    mg_quantize_act(x, n, cols, xq);
    matmul_q8_job jb = {xq, (const uint8_t *)w, out, tt, n, rows, cols, mg_row_bytes(qtype, cols), nb};
    mg_parallel(matmul_q8_task, &jb, useful_threads(n, rows, cols));
    if (xq != stack_xq) free(xq);
    return MG_OK;
}

int mg_get_rows(const void *restrict w, int qtype, const int64_t *restrict ids, int64_t n_ids,
                int64_t cols, float *restrict out) {
    if (qtype < 0 || qtype >= MG_NQTYPES) return MG_EQTYPE;
    const int64_t rb = mg_row_bytes(qtype, cols);
    for (int64_t i = 0; i < n_ids; i++)
        mg_traits[qtype].dequant((const uint8_t *)w + ids[i] * rb, out + i * cols, cols);
    return MG_OK;
}

int mg_dequantize(const void *restrict w, int qtype, int64_t rows, int64_t cols, float *restrict out) {
    if (qtype < 0 || qtype >= MG_NQTYPES) return MG_EQTYPE;
    const int64_t rb = mg_row_bytes(qtype, cols);
    for (int64_t r = 0; r < rows; r++)
        mg_traits[qtype].dequant((const uint8_t *)w + r * rb, out + r * cols, cols);
    return MG_OK;
}
