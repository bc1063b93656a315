/* The x8 layout: block-quantized weights repacked so that one SIMD register holds 8 rows at once,
 * and the int8-activation matmul over it (prefill and decode alike).
 *
 * Rows are taken 8 at a time (a group). For each group and each block b of 32 columns, the 8 rows'
 * blocks are stored together, scales first:
 *
 *   q4_0x8  fp16 d[8]           | qs[4][8][4]   144 bytes   x = d * (q - 8)
 *   q4_1x8  fp16 d[8], m[8]     | qs[4][8][4]   160 bytes   x = d * q + m
 *   q8_0x8  fp16 d[8]           | q[8][8][4]    272 bytes   x = d * q
 *   q5_0x8  fp16 d[8]           | qh[8][4] | qs[4][8][4]   176 bytes   x = d * (q - 16)
 *   q5_1x8  fp16 d[8], m[8]     | qh[8][4] | qs[4][8][4]   192 bytes   x = d * q + m
 *
 * qs[L][r][i] is byte 4L + i of row r's qs (so its low nibble is element 4L + i, its high nibble
 * element 16 + 4L + i); q[v][r][i] is element 4v + i of row r. The q5 types (exactly the GGUF
 * blocks' 22 and 24 bytes a row) keep the fifth bits in one 32-byte vector, rearranged at pack time
 * to match qs: bit L of qh[r][i] is the fifth bit of element 4L + i of row r, bit 4 + L that of
 * element 16 + 4L + i (the two nibbles of qs[L][r][i]). For code vector L a kernel thus takes
 * (qh << 4 - L) & 0x10 into the low nibbles and (qh >> L) & 0x10 into the high ones, one shift and
 * one mask each, without leaving the lanes. Each 32-byte vector [.][r][i] thus
 * holds 4 consecutive elements of each of the 8 rows: one "dot 4 bytes per 32-bit lane" instruction
 * (vpdpbusd, or maddubs + madd) against those 4 elements of one input, broadcast, leaves row r's
 * partial sum in lane r. A whole block is 8 such steps, after which the 8 scales, converted in one
 * instruction, apply to the 8 lanes at once. No horizontal sums anywhere; one 8-float store writes 8
 * outputs of one input.
 *
 * The K-quants take 8 rows x 256 columns (one super-block of each row) per x8 block, in vectors of the
 * same shape, the scales unpacked to bytes (q4_k: 148 bytes per row where the GGUF has 144):
 *
 *   q4_kx8  fp16 d[8], dmin[8] | uint8 sc[8][8], m[8][8] | qs[4][8][8][4]          1184 bytes
 *           sc[j][r], m[j][r]: sub-block j of row r (0..63). qs[c][v][r][i] is byte 32c + 4v + i of
 *           row r's qs: its low nibble element 4v + i of sub-block 2c, its high nibble that of 2c + 1.
 *           x = (d*sc)*q - (dmin*m)
 *   q6_kx8  fp16 d[8] | int8 sc[16][8] | ql[2][2][8][8][4] | qh[2][8][8][4]        1680 bytes
 *           ql[h][p][v][r][i] is byte 64h + 32p + 4v + i of row r's ql, qh[h][v][r][i] byte 32h + 4v + i
 *           of its qh. Element 4v + i of activation block j = 4h + k (k < 4) is then nibble k/2 of
 *           ql[h][k%2][v] | bits 2k, 2k+1 of qh[h][v] << 4; its sub-block is 2j + v/4.
 *           x = (d*sc)*(q - 32)
 *
 * Each 32-element activation block j of a super-block meets one q4_k sub-block (scale d*sc_j, bias
 * -(dmin*m_j)): the kernels then do what they do for q4_1, sub-block after sub-block. For q6_k the two
 * sub-blocks of an activation block are dotted in integers as signed codes q - 32, each dot times its
 * int8 scale; with int8 inputs the two add up exactly (|.| < 2^24) to the block's lanes, with int16
 * inputs each half is its own float step (see packed_x86.h).
 *
 * Groups follow each other: group g starts at g * nb * block_bytes (nb = cols / block, block = 32, or
 * 256 for the K-quants). Weights are
 * packed once, at model load (the backend's prepare, minigpt/kernels/_core.pyx), only where an ISA provides kernels
 * (mg_gemm_x8[qtype] != NULL) and rows is a multiple of 8; the packed copy is another layout of the
 * same numbers, bit for bit.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define X8_ROWS 8
#define TOKENS 4                /* inputs per kernel call: 8 rows x 4 inputs of accumulators */
#define MIN_WORK (1 << 16)      /* multiply-adds per thread below which waking another one does not pay */
#define SHARE_WORK (1 << 19)    /* multiply-adds a share holds at least, once every thread has one (x8_shares) */
#define STACK_BYTES (20 << 10)  /* quantized inputs up to this size live on the stack */

mg_gemm_x8_fn mg_gemm_x8[MG_NQTYPES];
mg_gemm_x8_16_fn mg_gemm_x8_16[MG_NQTYPES];

/* q16 keeps each group of 4 inputs as (x0, x2, x1, x3) */
static const int Q16_ORDER[4] = {0, 2, 1, 3};

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

int64_t mg_x8_block_bytes(int qtype) {
    switch (qtype) {
    case MG_Q4_0: return 16 + 128;
    case MG_Q4_1: return 32 + 128;
    case MG_Q8_0: return 16 + 256;
    case MG_Q5_0: return 16 + 32 + 128;
    case MG_Q5_1: return 32 + 32 + 128;
    case MG_Q4_K: return 32 + 128 + 1024;
    case MG_Q6_K: return 16 + 128 + 1536;
    default: return -1;
    }
}

int mg_x8_supported(int qtype) {
    return qtype >= 0 && qtype < MG_NQTYPES && mg_gemm_x8[qtype] && mg_gemm_x8_16[qtype] &&
           mg_x8_block_bytes(qtype) > 0;
}

/* row r's u32 qh (the fifth bits, bit j for element j) -> its 4 bytes of an x8 qh vector (see above) */
static void x8_qh(const uint8_t *qh, uint8_t *out) {
    const uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
    for (int i = 0; i < 4; i++) {
        uint8_t v = 0;
        for (int l = 0; l < 4; l++) v |= (uint8_t)((h >> (4 * l + i) & 1) << l | (h >> (16 + 4 * l + i) & 1) << (4 + l));
        out[i] = v;
    }
}

/* one q4_k super-block of row r (blk: 144 bytes) into its place in the x8 block dst */
static void pack_q4_k(const uint8_t *blk, int r, uint8_t *dst) {
    uint8_t sc[8], m[8];
    mg_q4_k_scales(blk + 4, sc, m);
    memcpy(dst + 2 * r, blk, 2);           /* d */
    memcpy(dst + 16 + 2 * r, blk + 2, 2);  /* dmin */
    for (int j = 0; j < 8; j++) {
        dst[32 + 8 * j + r] = sc[j];
        dst[96 + 8 * j + r] = m[j];
    }
    for (int c = 0; c < 4; c++)
        for (int v = 0; v < 8; v++) memcpy(dst + 160 + 256 * c + 32 * v + 4 * r, blk + 16 + 32 * c + 4 * v, 4);
}

/* one q6_k super-block of row r (blk: 210 bytes) into its place in the x8 block dst */
static void pack_q6_k(const uint8_t *blk, int r, uint8_t *dst) {
    memcpy(dst + 2 * r, blk + 208, 2);     /* d */
    for (int s = 0; s < 16; s++) dst[16 + 8 * s + r] = blk[192 + s];
    for (int h = 0; h < 2; h++)
        for (int v = 0; v < 8; v++) {
            for (int p = 0; p < 2; p++)
                memcpy(dst + 144 + 512 * h + 256 * p + 32 * v + 4 * r, blk + 64 * h + 32 * p + 4 * v, 4);
            memcpy(dst + 1168 + 256 * h + 32 * v + 4 * r, blk + 128 + 32 * h + 4 * v, 4);
        }
}

int mg_pack_x8(const void *restrict w, int qtype, int64_t rows, int64_t cols, void *restrict out) {
    const int64_t gb = mg_x8_block_bytes(qtype);
    if (gb < 0) return MG_EQTYPE;
    const int64_t nb = cols / mg_traits[qtype].block, bb = mg_traits[qtype].block_bytes, rb = nb * bb;
    const int has_m = qtype == MG_Q4_1 || qtype == MG_Q5_1, q5 = qtype == MG_Q5_0 || qtype == MG_Q5_1;
    const int hdr = has_m ? 32 : 16;                          /* scale bytes before the codes */
    const int qh_off = has_m ? 4 : 2;                         /* where q5's qh is in a stored block */
    const int code_off = qh_off + 4 * q5;                     /* where the codes start in a stored block */
    const int vecs = qtype == MG_Q8_0 ? 8 : 4;                /* 32-byte vectors of codes per block */
    const uint8_t *src = (const uint8_t *)w;
    uint8_t *dst = (uint8_t *)out;
    for (int64_t g = 0; g < rows / X8_ROWS; g++)
        for (int64_t b = 0; b < nb; b++, dst += gb)
            for (int r = 0; r < X8_ROWS; r++) {
                const uint8_t *blk = src + (g * X8_ROWS + r) * rb + b * bb;
                if (qtype == MG_Q4_K) {
                    pack_q4_k(blk, r, dst);
                    continue;
                }
                if (qtype == MG_Q6_K) {
                    pack_q6_k(blk, r, dst);
                    continue;
                }
                memcpy(dst + 2 * r, blk, 2);                           /* d */
                if (has_m) memcpy(dst + 16 + 2 * r, blk + 2, 2);       /* m */
                if (q5) x8_qh(blk + qh_off, dst + hdr + 4 * r);
                uint8_t *codes = dst + hdr + 32 * q5;
                for (int v = 0; v < vecs; v++) memcpy(codes + 32 * v + 4 * r, blk + code_off + 4 * v, 4);
            }
    return MG_OK;
}

/* --- the matmuls ---------------------------------------------------------------------------------- */

/* As the q8 quantizer (quants.c): rintf halves to even, a block with d below FLT_MIN is zeros. */
static void quantize_row_q16_c(const float *restrict x, mg_block_q16 *restrict out, int64_t k) {
    const int64_t nb = k / MG_QK;
    for (int64_t b = 0; b < nb; b++, x += MG_QK) {
        float amax = 0.0f;
        for (int j = 0; j < MG_QK; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        const float d = amax / 32767.0f >= FLT_MIN ? amax / 32767.0f : 0.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < MG_QK; j++) {
            const int q = (int)rintf(x[j] * id);
            out[b].q[j / 4 * 4 + Q16_ORDER[j % 4]] = (int16_t)q;
            sum += q;
        }
        out[b].d = d;
        out[b].s = d * (float)sum;
    }
}

mg_quantize_row_q16_fn mg_quantize_row_q16 = quantize_row_q16_c;

void mg_quantize_act16(const float *restrict x, int64_t n, int64_t cols, mg_block_q16 *restrict out) {
    const int64_t nb = cols / MG_QK;
    for (int64_t i = 0; i < n; i++) mg_quantize_row_q16(x + i * cols, out + i * nb, cols);
}

/* one weight of an x8 job, with its kernel */
typedef struct {
    const uint8_t *w;       /* (rows / 8, nb, gb) x8 groups                 IN  */
    float *out;             /* (n, rows)                                    OUT */
    mg_gemm_x8_fn k8;       /* one of these two */
    mg_gemm_x8_16_fn k16;
    int64_t rows, nb, gb;   /* nb: x8 blocks per group row, gb bytes each */
    int64_t first;          /* the job's number of this weight's first group */
} x8_part;

typedef struct {
    const uint8_t *xq;      /* (n, nxb) quantized inputs, xb bytes per block IN */
    const x8_part *parts;   /* the weights, one after another               */
    int n_parts;
    int64_t n, nxb, xb, groups; /* nxb: input blocks per input; groups: of all the parts */
} x8_job;

/* Thread ith of nth takes a contiguous range of the groups of all the weights; for each group (its
 * weights stay in L1), the inputs go by in fours. */
static void x8_task(void *arg, int ith, int nth) {
    const x8_job *jb = (const x8_job *)arg;
    const int64_t g0 = jb->groups * ith / nth, g1 = jb->groups * (ith + 1) / nth;
    int p = 0;
    for (int64_t g = g0; g < g1; g++) {
        while (g >= jb->parts[p].first + jb->parts[p].rows / X8_ROWS) p++;
        const x8_part *pt = &jb->parts[p];
        const int64_t lg = g - pt->first;
        const uint8_t *wg = pt->w + lg * pt->nb * pt->gb;
        for (int64_t i = 0; i < jb->n; i += TOKENS) {
            const void *x = jb->xq + i * jb->nxb * jb->xb;
            const int nt = (int)min64(TOKENS, jb->n - i);
            float *out = pt->out + i * pt->rows + lg * X8_ROWS;
            if (pt->k8)
                pt->k8(pt->nb, wg, (const mg_block_q8 *)x, jb->nxb, nt, out, pt->rows);
            else
                pt->k16(pt->nb, wg, (const mg_block_q16 *)x, jb->nxb, nt, out, pt->rows);
        }
    }
}

/* How many shares a job of `work` multiply-adds over `groups` x8 groups is cut into: one per thread
 * that pays for its waking (MIN_WORK each), and beyond that shares of SHARE_WORK at least. A share is
 * a contiguous run of groups, which its thread streams from memory; small ones interleave the threads'
 * runs a few KB apart, so that each thread's stream keeps jumping (the hardware prefetcher starts over,
 * and the kernels' prefetches ask for lines the other thread reads), and each costs a claim on the
 * pool's shared counter. Against shares of 2^16 (SmolLM2, 2 threads): 4 sequences +33 %, one +8 %
 * (docs/performance.md, "Several streams: longer shares and prefetching"). */
static int x8_shares(int64_t work, int64_t groups) {
    const int64_t shares = max64(min64(work / MIN_WORK, mg_get_threads()), work / SHARE_WORK);
    return (int)min64(min64(shares, groups), MG_MAX_THREADS);
}

int mg_matmul_x8_many(const float *restrict x, int64_t n, int64_t cols, int bits, const mg_x8_matmul *mms,
                      int n_mms) {
    x8_part parts[MG_X8_MAX_MATMULS];
    int64_t groups = 0, rows = 0;
    if ((bits != 8 && bits != 16) || n_mms < 1 || n_mms > MG_X8_MAX_MATMULS) return MG_EQTYPE;
    for (int k = 0; k < n_mms; k++) {
        const int qtype = mms[k].qtype;
        if (!mg_x8_supported(qtype)) return MG_EQTYPE;
        parts[k] = (x8_part){(const uint8_t *)mms[k].w, mms[k].out, bits == 8 ? mg_gemm_x8[qtype] : NULL,
                             bits == 8 ? NULL : mg_gemm_x8_16[qtype], mms[k].rows, cols / mg_traits[qtype].block,
                             mg_x8_block_bytes(qtype), groups};
        groups += mms[k].rows / X8_ROWS;
        rows += mms[k].rows;
    }
    if (n <= 0 || groups == 0) return MG_OK;
    const int64_t nxb = cols / MG_QK, xb = bits == 8 ? MG_Q8_BLOCK_BYTES : MG_Q16_BLOCK_BYTES;
    _Alignas(64) uint8_t stack_xq[STACK_BYTES];
    uint8_t *xq = stack_xq;
    if (n * nxb * xb > STACK_BYTES) {
        xq = (uint8_t *)malloc((size_t)(n * nxb * xb));
        if (!xq) return MG_ENOMEM;
    }
    if (bits == 8)
        mg_quantize_act(x, n, cols, (mg_block_q8 *)xq);
    else
        mg_quantize_act16(x, n, cols, (mg_block_q16 *)xq);
    x8_job jb = {xq, parts, n_mms, n, nxb, xb, groups};
    mg_parallel(x8_task, &jb, x8_shares(n * rows * cols, groups));
    if (xq != stack_xq) free(xq);
    return MG_OK;
}

int mg_matmul_q8_x8(const float *restrict x, const void *restrict w, float *restrict out, int qtype,
                    int64_t n, int64_t rows, int64_t cols) {
    const mg_x8_matmul mm = {w, qtype, rows, out};
    return mg_matmul_x8_many(x, n, cols, 8, &mm, 1);
}

int mg_matmul_q16(const float *restrict x, const void *restrict w, float *restrict out, int qtype,
                  int64_t n, int64_t rows, int64_t cols) {
    if (qtype & MG_X8) {
        const mg_x8_matmul mm = {w, qtype & ~MG_X8, rows, out};
        return mg_matmul_x8_many(x, n, cols, 16, &mm, 1);
    }
    return mg_matmul(x, w, out, qtype, n, rows, cols);
}
