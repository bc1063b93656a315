/* minigpt CPU kernels: quantized matmul, row gather and dequantization over ggml's block layout.
 *
 * The kernels are a leaf: pointers and sizes only. They trust every size they are given, so the caller
 * (minigpt/kernels/_core.pyx) checks dtype, contiguity, shape and bounds first.
 *
 * Layout of one stored row of k logical elements (k a multiple of MG_QK for block types):
 *   f32   k float32                f16  k fp16
 *   q8_0  per block: fp16 d, int8 q[32]                          x = d*q
 *   q4_0  per block: fp16 d, uint8 qs[16] (elem j low nibble,    x = d*(q-8)
 *                                          elem j+16 high nibble)
 *   q4_1  per block: fp16 d, fp16 m, uint8 qs[16] (same order)   x = d*q + m
 *   q5_0  per block: fp16 d, u32 qh, uint8 qs[16] (q4's order)   x = d*(q-16)
 *   q5_1  per block: fp16 d, fp16 m, u32 qh, uint8 qs[16]        x = d*q + m
 *         (q5: the low 4 bits of code j are nibbles as in q4; bit j of the little-endian qh is its bit 4)
 * and the K-quants, in super-blocks of MG_QK_K = 256 (k a multiple of 256), byte for byte ggml's:
 *   q4_k  fp16 d, fp16 dmin, uint8 scales[12], uint8 qs[128]      144 bytes
 *         8 sub-blocks of 32, each a 6-bit scale sc and min m (scales: bytes 0-3 sc 0-3 in bits 0-5,
 *         bytes 4-7 m 0-3 in bits 0-5, bytes 8-11 the low 4 bits of sc 4-7 (bits 0-3) and m 4-7
 *         (bits 4-7); bits 6-7 of bytes 0-3 / 4-7 are the high bits of sc 4-7 / m 4-7).
 *         Element 64c + 32n + l (c < 4, n < 2, l < 32) is nibble n of qs[32c + l], in sub-block 2c + n.
 *                                                                  x = (d*sc)*q - (dmin*m)
 *   q6_k  uint8 ql[128], uint8 qh[64], int8 scales[16], fp16 d    210 bytes
 *         16 sub-blocks of 16, one int8 scale each. Element 128h + 32k + l (h < 2, k < 4, l < 32):
 *         low 4 bits nibble k/2 of ql[64h + 32(k%2) + l], high 2 bits bits 2k, 2k+1 of qh[32h + l].
 *                                                                  x = (d*sc)*(q - 32)
 * fp16 fields are little-endian and unaligned; they are read byte by byte.
 *
 * Activations for the integer path (mg_matmul_q8) are quantized per row, in blocks of 32, to
 *   q8    per block: float32 d, float32 s, int32 sum, int8 q[32]   x ~ d*q,  sum = sum(q), s = d * sum
 * with d = amax/127 and q = x*(1/d) rounded to nearest even (so |q| <= 127, never -128).
 *
 * Per-type work goes through function pointers in mg_traits (and mg_gemm_kernel for the float tile
 * product, mg_quantize_row_q8 and _q16 for activations). These start as the portable C99 versions (quants.c);
 * mg_cpu_init (cpu.c) replaces slots once, at import, with an ISA-specific variant (quants_avx2.c)
 * after CPU detection, without touching the drivers in matmul.c.
 */
#ifndef MINIGPT_KERNELS_H
#define MINIGPT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#if defined(_MSC_VER) && !defined(__cplusplus)
#define restrict __restrict
#endif

/* GCC's loop vectorizer, given a block loop whose fixed-size inner loops it has fully unrolled, likes
 * to vectorize across blocks (or across the k dimension of a tile) with gathers and shuffles; SLP on
 * the unrolled body is what we want there. Functions shaped like that opt out of loop vectorization. */
#if defined(__GNUC__) && !defined(__clang__)
#define MG_SLP_ONLY __attribute__((optimize("no-tree-loop-vectorize")))
#else
#define MG_SLP_ONLY
#endif

/* Weight type codes; minigpt.quant.QTYPES holds the same (name, block, bytes, code) table and
 * _core.pyx checks the two agree at import. Refer to a type by its name, never by its number: a merge
 * may renumber them. */
enum mg_qtype {
    MG_F32 = 0, MG_F16 = 1, MG_Q8_0 = 2, MG_Q4_0 = 3, MG_Q4_1 = 4, MG_Q5_0 = 5, MG_Q5_1 = 6,
    MG_Q4_K = 7, MG_Q6_K = 8,
    MG_NQTYPES = 9
};

#define MG_QK 32    /* elements per block of the block types, and of a q8 / q16 activation block */
#define MG_QK_K 256 /* elements per super-block of the K-quants (q4_k, q6_k) */
#define MG_Q8_BLOCK_BYTES 44 /* sizeof(mg_block_q8) */

/* Error codes returned by the entry points (0 = success). */
#define MG_OK 0
#define MG_EQTYPE 1 /* unknown qtype code */
#define MG_ENOMEM 2 /* scratch allocation failed */
#define MG_EISA 3   /* instruction set not supported by this CPU or build */

/* one block of quantized activations (see the layout above); 44 bytes, 4-byte aligned */
typedef struct {
    float d;           /* scale */
    float s;           /* d * (float)sum: the q4 offset terms need sum x */
    int32_t sum;       /* sum(q), exact: VNNI takes its q8_0 bias off in integers */
    int8_t q[MG_QK];
} mg_block_q8;

/* int16 activations, for the matmuls whose inputs need more than 8 bits (mg_matmul_q16):
 *   q16   per block: float32 d, float32 s, int16 q[32]           x ~ d*q,  s = d * sum(q)
 * with d = amax/32767 and q = rint(x*(1/d)), and the 32 values stored in groups of 4 as
 * (x0, x2, x1, x3): the order the x8 kernels pair them with weight codes. 72 bytes. */
#define MG_Q16_BLOCK_BYTES 72

typedef struct {
    float d;
    float s;
    int16_t q[MG_QK];
} mg_block_q16;

/* --- per-type kernels (the ISA slots) --------------------------------------------------------- */

/* w: the blocks covering k elements of one row (k a multiple of the block size) -> y[k] */
typedef void (*mg_dequant_fn)(const void *restrict w, float *restrict y, int64_t k);

/* sum over j < k of W[j] * x[j], W being k elements of one stored row; accumulates in float32 */
typedef float (*mg_vec_dot_fn)(int64_t k, const void *restrict w, const float *restrict x);

/* sum over blocks of (stored block) . (activation block): k elements, k a multiple of MG_QK */
typedef float (*mg_vec_dot_q8_fn)(int64_t k, const void *restrict w, const mg_block_q8 *restrict x);

/* the same for 4 activation rows x, x + ldx, x + 2*ldx, x + 3*ldx (ldx in blocks) -> out[4];
 * each weight block is loaded and unpacked once for the four */
typedef void (*mg_vec_dot_q8_x4_fn)(int64_t k, const void *restrict w, const mg_block_q8 *restrict x,
                                    int64_t ldx, float *restrict out);

/* the same for 4 input rows x, x + ldx, x + 2*ldx, x + 3*ldx (ldx in floats) -> out[4]: each weight
 * block is unpacked once for the four, and each out[t] is the float vec_dot(k, w, x + t*ldx) returns,
 * bit for bit (a batch of sequences gives each the numbers it would get alone) */
typedef void (*mg_vec_dot_x4_fn)(int64_t k, const void *restrict w, const float *restrict x, int64_t ldx,
                                 float *restrict out);

typedef struct {
    const char *name;
    int64_t block;       /* elements per block (1 for f32, f16) */
    int64_t block_bytes; /* bytes per block */
    mg_dequant_fn dequant;
    mg_vec_dot_fn vec_dot;
    mg_vec_dot_x4_fn vec_dot_x4;       /* NULL: the driver calls vec_dot four times */
    mg_vec_dot_q8_fn vec_dot_q8;       /* NULL for f32, f16: mg_matmul_q8 takes the exact path */
    mg_vec_dot_q8_x4_fn vec_dot_q8_x4; /* NULL: the driver calls vec_dot_q8 four times */
} mg_type_traits;

extern mg_type_traits mg_traits[MG_NQTYPES];

/* x[k] -> y[k / MG_QK] blocks; every variant must give the same bytes (the NumPy twin checks them) */
typedef void (*mg_quantize_row_q8_fn)(const float *restrict x, mg_block_q8 *restrict y, int64_t k);

extern mg_quantize_row_q8_fn mg_quantize_row_q8;

/* the same to q16 blocks (mg_quantize_act16) */
typedef void (*mg_quantize_row_q16_fn)(const float *restrict x, mg_block_q16 *restrict y, int64_t k);

extern mg_quantize_row_q16_fn mg_quantize_row_q16;

/* Float tile product: acc[r][i] = sum over j < kc of w[r*ldw + j] * xp[j*mi + i], for r < nr, i < mi.
 * w: dequantized weight rows (nr, ldw); xp: a packed input panel (kc, mi), inputs side by side. */
typedef void (*mg_gemm_tile_fn)(int64_t kc, const float *restrict w, int64_t ldw,
                                const float *restrict xp, float *restrict acc);

typedef struct {
    int nr; /* weight rows per tile   (<= MG_GEMM_MAX_NR) */
    int mi; /* input rows per panel   (<= MG_GEMM_MAX_MI) */
    mg_gemm_tile_fn tile;
} mg_gemm_kernel;

#define MG_GEMM_MAX_NR 8
#define MG_GEMM_MAX_MI 16

extern mg_gemm_kernel mg_gemm;

/* x8 kernel (packed.c): out[t * ldo + r] = row r of one 8-row group . input t, for r < 8, t < nt (1..4);
 * w: the group's nb x8 blocks, x: the q8 blocks of each input (nb of them, 8 nb for the K-quants, whose
 * x8 blocks span 256 columns), inputs ldx blocks apart. */
typedef void (*mg_gemm_x8_fn)(int64_t nb, const uint8_t *restrict w, const mg_block_q8 *restrict x,
                              int64_t ldx, int nt, float *restrict out, int64_t ldo);

extern mg_gemm_x8_fn mg_gemm_x8[MG_NQTYPES]; /* by base qtype; NULL where no ISA provides one */

/* the same over q16 inputs */
typedef void (*mg_gemm_x8_16_fn)(int64_t nb, const uint8_t *restrict w, const mg_block_q16 *restrict x,
                                 int64_t ldx, int nt, float *restrict out, int64_t ldo);

extern mg_gemm_x8_16_fn mg_gemm_x8_16[MG_NQTYPES];

/* fp16 bits -> float32, exact for every value. Branch-free (so loops around it vectorize) and free of
 * denormal float arithmetic (so it holds under flush-to-zero): subnormals come from an int -> float. */
static inline float mg_fp16_to_fp32(uint16_t h) {
    union { uint32_t u; float f; } n, s;
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t em = h & 0x7fffu;
    /* rebias the exponent: +112 for normal numbers, +224 so that inf/nan land on exponent 255 */
    n.u = (em << 13) + ((112u + 112u * (uint32_t)(em >= 0x7c00u)) << 23);
    s.f = (float)(int32_t)em * (1.0f / 16777216.0f); /* zero and subnormals: em * 2^-24 */
    const uint32_t sub = 0u - (uint32_t)(em < 0x0400u);
    n.u = (n.u & ~sub) | (s.u & sub) | sign;
    return n.f;
}

/* f -> IEEE half, rounded to nearest even (as F16C's vcvtps2ph and NumPy's astype): subnormal halves
 * included, overflow to inf, a NaN to a quiet NaN with f's top payload bits. */
static inline uint16_t mg_fp32_to_fp16(float f) {
    union { uint32_t u; float f; } a, t;
    a.f = f;
    const uint16_t sign = (uint16_t)(a.u >> 16 & 0x8000u);
    a.u &= 0x7fffffffu;
    if (a.u >= 0x47800000u) /* |f| >= 65536, inf or NaN */
        return sign | (uint16_t)(a.u > 0x7f800000u ? 0x7e00u | (a.u >> 13 & 0x3ffu) : 0x7c00u);
    if (a.u < 0x38800000u) { /* below 2^-14: + 0.5 rounds |f| to a multiple of 2^-24, the subnormal's unit */
        t.f = a.f + 0.5f;
        return sign | (uint16_t)(t.u - 0x3f000000u);
    }
    /* rebias the exponent and round the 13 dropped bits to nearest even (a carry may reach inf) */
    a.u += ((uint32_t)(15 - 127) << 23) + 0xfffu + (a.u >> 13 & 1u);
    return sign | (uint16_t)(a.u >> 13);
}

static inline uint16_t mg_rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* q4_k's 12 scale bytes -> the 8 six-bit scales sc[j] and mins m[j] of its sub-blocks (layout above) */
static inline void mg_q4_k_scales(const uint8_t *restrict s, uint8_t *restrict sc, uint8_t *restrict m) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        m[j] = s[4 + j] & 63;
        sc[4 + j] = (uint8_t)((s[8 + j] & 0x0F) | ((s[j] >> 6) << 4));
        m[4 + j] = (uint8_t)((s[8 + j] >> 4) | ((s[4 + j] >> 6) << 4));
    }
}

/* q6_k: the 6-bit code (0..63) of element i < 256 of a super-block with low bits ql, high bits qh */
static inline int mg_q6_k_code(const uint8_t *restrict ql, const uint8_t *restrict qh, int i) {
    const int h = i / 128, k = i % 128 / 32, l = i % 32;
    return ((ql[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0x0F) | (((qh[32 * h + l] >> (2 * k)) & 3) << 4);
}

/* --- entry points ----------------------------------------------------------------------------- */

/* out[n, rows] = x[n, cols] @ W^T, W stored as `qtype` rows of cols elements. Uses the thread pool. */
int mg_matmul(const float *restrict x, const void *restrict w, float *restrict out, int qtype,
              int64_t n, int64_t rows, int64_t cols);

/* Like mg_matmul, but each input row is first quantized to q8 blocks (mg_quantize_act) and the
 * block types (q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q6_k) are dotted in integers: out = dequant(q8(x)) @ W^T
 * up to float32 rounding of the per-block scale products. f32 and f16 weights take mg_matmul's exact
 * path. cols must be a multiple of the type's block (as its storage implies). */
int mg_matmul_q8(const float *restrict x, const void *restrict w, float *restrict out, int qtype,
                 int64_t n, int64_t rows, int64_t cols);

/* out[n * cols / MG_QK] = q8 blocks of x[n, cols], row by row; cols a multiple of MG_QK.
 * Non-finite x give unspecified (but in-bounds) blocks. */
void mg_quantize_act(const float *restrict x, int64_t n, int64_t cols, mg_block_q8 *restrict out);

/* out[i, :] = W[ids[i], :] for i < n_ids; every id must already be in [0, rows). Single-threaded. */
int mg_get_rows(const void *restrict w, int qtype, const int64_t *restrict ids, int64_t n_ids,
                int64_t cols, float *restrict out);

/* out[rows, cols] = W. Single-threaded. */
int mg_dequantize(const void *restrict w, int qtype, int64_t rows, int64_t cols, float *restrict out);

/* bytes of one stored row of cols elements, or -1 for an unknown qtype */
int64_t mg_row_bytes(int qtype, int64_t cols);

/* --- the screened head (screen.c) ------------------------------------------------------------- */

#define MG_SCREEN_MAX_TOP 1024 /* a larger top takes mg_matmul's path */

/* out[n, rows] = x[n, cols] @ W^T as mg_matmul computes it, for every row that can be among the `top`
 * largest of its input; the others get an int8 estimate (screen: W in the form mg_matmul_q8 takes as
 * screen_qtype), below all of those. norms[rows]: mg_row_norms of W. allowed: NULL, or per input a
 * bitmask of ceil(rows / 32) words (bit r % 32 of word r / 32) or NULL: the top are then the largest
 * of the rows it allows, the others left as estimates. Uses the thread pool. top outside
 * 1 .. min(rows - 1, MG_SCREEN_MAX_TOP): mg_matmul. */
int mg_matmul_screened(const float *restrict x, const void *restrict screen, int screen_qtype,
                       const void *restrict w, int qtype, const float *restrict norms,
                       const uint32_t *const *allowed, float *restrict out, int64_t n, int64_t rows, int64_t cols,
                       int64_t top);

/* out[rows] = the L2 norm of each row of W, rounded up to float32. Uses the thread pool. */
int mg_row_norms(const void *restrict w, int qtype, int64_t rows, int64_t cols, float *restrict out);

/* --- the x8 layout (packed.c) --------------------------------------------------------------------- */

/* A packed weight's qtype code is its base type's | MG_X8; only mg_matmul_q8 takes one. */
#define MG_X8 16

/* 1 if `qtype` (a base type) can be packed and multiplied on this CPU: the block types and the
 * K-quants (q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q6_k) once an ISA with x8 kernels is installed. */
int mg_x8_supported(int qtype);

/* bytes of one x8 block (8 rows x mg_traits[qtype].block columns: 32, or 256 for the K-quants), or -1
 * for a type without an x8 layout */
int64_t mg_x8_block_bytes(int qtype);

/* out = W (rows, cols) in the x8 layout: rows / 8 * cols / block * mg_x8_block_bytes(qtype) bytes.
 * rows must be a multiple of 8 and cols of the block (unchecked). MG_EQTYPE if qtype has no x8 layout. */
int mg_pack_x8(const void *restrict w, int qtype, int64_t rows, int64_t cols, void *restrict out);

/* mg_matmul_q8 over a packed weight (qtype: the base type); MG_EQTYPE if !mg_x8_supported(qtype). */
int mg_matmul_q8_x8(const float *restrict x, const void *restrict w, float *restrict out, int qtype,
                    int64_t n, int64_t rows, int64_t cols);

/* One matmul of an mg_matmul_x8_many call: out (n, rows) = x @ W^T, W packed (qtype: its base type). */
typedef struct {
    const void *w;
    int qtype;
    int64_t rows;
    float *out;
} mg_x8_matmul;

#define MG_X8_MAX_MATMULS 4

/* The matmuls mms[0 .. n_mms) of one input x[n, cols] (n_mms <= MG_X8_MAX_MATMULS), each as
 * mg_matmul_q8_x8 (bits 8) or mg_matmul_q16 (bits 16) would compute it: x is quantized once, and one
 * parallel job deals out the row groups of all of them (a layer's q, k and v projections, its gate and
 * up). MG_EQTYPE for other bits or a type without x8 kernels. */
int mg_matmul_x8_many(const float *restrict x, int64_t n, int64_t cols, int bits, const mg_x8_matmul *mms,
                      int n_mms);

/* out[n * cols / MG_QK] = q16 blocks of x[n, cols]; cols a multiple of MG_QK */
void mg_quantize_act16(const float *restrict x, int64_t n, int64_t cols, mg_block_q16 *restrict out);

/* out[n, rows] = x[n, cols] @ W^T with x quantized to q16 blocks: for a packed weight (qtype | MG_X8);
 * any other weight takes mg_matmul's float32 path, which q16 approximates to ~1e-5 of each block's
 * largest input. */
int mg_matmul_q16(const float *restrict x, const void *restrict w, float *restrict out, int qtype,
                  int64_t n, int64_t rows, int64_t cols);

/* --- CPU detection (cpu.c) ---------------------------------------------------------------------- */

/* AVX512VNNI: the AVX2 kernels, with x8 kernels using vpdpbusd on 256-bit registers */
enum mg_isa { MG_ISA_SCALAR = 0, MG_ISA_AVX2 = 1, MG_ISA_NEON = 2, MG_ISA_AVX512VNNI = 3 };

/* the best instruction set this CPU and build support */
int mg_cpu_best(void);

/* Fill the ISA slots for `isa` (once, before any kernel runs; later calls change nothing and return
 * MG_OK only for the isa already in use). MG_EISA if the CPU or build lacks it. */
int mg_cpu_init(int isa);

/* 'scalar', 'avx2', 'avx512vnni' or 'neon': the slots in use */
const char *mg_isa_name(void);

/* --- thread pool (threadpool.c) --------------------------------------------------------------- */

#define MG_MAX_THREADS 256

/* share s of n of a parallel job; must not fail and must not block on other shares. It may run on
 * any thread, so it must not assume that share s runs on a particular one. */
typedef void (*mg_task_fn)(void *arg, int s, int n);

/* Run fn(arg, s, n_shares) exactly once for every share s < n_shares and return when all have
 * finished. The caller and up to mg_get_threads() - 1 workers claim shares as they come, so a thread
 * that is slow to wake (or descheduled) does not hold the job up: pass more shares than threads for
 * load balancing. n_shares <= 1 runs fn(arg, 0, 1) on the caller without waking anyone. Calls from
 * several threads are serialized. */
void mg_parallel(mg_task_fn fn, void *arg, int n_shares);

/* Threads used by mg_parallel, caller included (1..MG_MAX_THREADS). Returns 0, or an errno value if
 * workers could not be started (then fewer run; mg_get_threads tells how many). Idle workers poll
 * briefly (yielding their core) after each job before they sleep, so n should not exceed the cores. */
int mg_set_threads(int n);
int mg_get_threads(void);

/* Stop and join the workers (at interpreter exit). mg_parallel afterwards runs single-threaded until
 * mg_set_threads is called again. */
void mg_shutdown(void);

#endif /* MINIGPT_KERNELS_H */
