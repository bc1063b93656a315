/* x8 kernels against a float64 reference, in C alone (no Python), so it can be cross-built for aarch64
 * and run under qemu: tests/test_neon.py builds and runs it, once per CPU model.
 *
 *   x8_check [isa]      isa: best (default), scalar, avx2, avx512vnni, neon
 *
 * For q8_0, q4_0, q4_1, q5_0, q5_1, q4_k and q6_k weights with odd shapes, extreme codes and scales and
 * outlier inputs it packs the weight (mg_pack_x8) and checks
 *   mg_matmul_q8_x8 (packed) and mg_matmul_q8 (per-row path)   against  dequant(W) . dequant(q8(x))
 *   mg_matmul_q16 (packed)                                      against  dequant(W) . dequant(q16(x))
 * in float64, each error relative to the sum of |w| |x| over the dot product (w's bound counting the
 * code offsets the kernels take out in float: 8 for q4_0, 16 for q5_0, 128 for q8_0, |m| for q4_1, q5_1,
 * |dmin m| for q4_k).
 * Prints one line per failure and a summary; exits 1 on any failure, 2 if the isa cannot be installed.
 *
 * Build (any target): cc -O2 -Icsrc tests/c/x8_check.c csrc/[a-z]*.c -lm -pthread
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#define DOTPROD_BIT (1 << 20) /* HWCAP_ASIMDDP */
#endif

#define TOL 1e-5

static const int Q16_ORDER[4] = {0, 2, 1, 3};

/* --- random numbers and fp16 ----------------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

static double uniform(void) { return rnd() / 4294967296.0; } /* [0, 1) */

static double normal(void) { return uniform() + uniform() + uniform() + uniform() - 2.0; }

/* f -> fp16 bits, for |f| in fp16's normal range (truncating the mantissa: exact values suffice here) */
static uint16_t to_fp16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000u, e = (u >> 23) & 0xFF;
    return (uint16_t)(sign | ((e - 112) << 10) | ((u >> 13) & 0x3FF));
}

static float random_scale(void) { /* +-2^-12 .. +-2^-4, random mantissa */
    const float m = (float)(1.0 + uniform()), s = ldexpf(m, -12 + (int)(rnd() % 9));
    return rnd() & 1 ? -s : s;
}

/* --- weights ------------------------------------------------------------------------------------------ */

/* one K-quant super-block at blk and the bounds of its 256 elements: random fields, or in mode 1 every
 * code and scale at its maximum, in mode 2 every code at its minimum (q6_k: 0, i.e. -32, with scales -128) */
static void make_k_block(int qtype, int mode, uint8_t *blk, double *bound) {
    const uint16_t dh = to_fp16(random_scale()), dminh = to_fp16(random_scale());
    const float d = mg_fp16_to_fp32(dh), dmin = mg_fp16_to_fp32(dminh);
    if (qtype == MG_Q4_K) {
        memcpy(blk, &dh, 2);
        memcpy(blk + 2, &dminh, 2);
        for (int j = 4; j < 144; j++) blk[j] = mode == 1 ? 0xFF : mode == 2 && j >= 16 ? 0 : (uint8_t)rnd();
        uint8_t sc[8], m[8];
        mg_q4_k_scales(blk + 4, sc, m);
        for (int i = 0; i < 256; i++) {
            const int c = i / 64, n = i % 64 / 32, l = i % 32, q = (blk[16 + 32 * c + l] >> (4 * n)) & 15;
            bound[i] = fabs((double)d * sc[i / 32]) * q + fabs((double)dmin * m[i / 32]);
        }
    } else {
        memcpy(blk + 208, &dh, 2);
        for (int j = 0; j < 192; j++) blk[j] = mode == 1 ? 0xFF : mode == 2 ? 0 : (uint8_t)rnd();
        for (int j = 192; j < 208; j++) blk[j] = mode == 1 ? 0x7F : mode == 2 ? 0x80 : (uint8_t)rnd();
        for (int i = 0; i < 256; i++)
            bound[i] = fabs((double)d * (int8_t)blk[192 + i / 16]) * abs(mg_q6_k_code(blk, blk + 128, i) - 32);
    }
}

/* w: rows stored as qtype; bound[r * cols + j] = |d| (|code| + offset) + |m| of element j of row r.
 * Rows 1, 2 (mod 5) have every code at its maximum, its minimum. */
static void make_weight(int qtype, int64_t rows, int64_t cols, uint8_t *w, double *bound) {
    if (qtype == MG_Q4_K || qtype == MG_Q6_K) {
        const int64_t nb = cols / MG_QK_K, bb = mg_traits[qtype].block_bytes;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t b = 0; b < nb; b++)
                make_k_block(qtype, (int)(r % 5), w + (r * nb + b) * bb, bound + r * cols + b * MG_QK_K);
        return;
    }
    const int64_t nb = cols / MG_QK, bb = mg_traits[qtype].block_bytes;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *blk = w + (r * nb + b) * bb;
            const float d = (float)mg_fp16_to_fp32(to_fp16(random_scale()));
            const uint16_t dh = to_fp16(d);
            memcpy(blk, &dh, 2);
            float m = 0.0f;
            const int has_m = qtype == MG_Q4_1 || qtype == MG_Q5_1, q5 = qtype == MG_Q5_0 || qtype == MG_Q5_1;
            if (has_m) {
                const uint16_t mh = to_fp16(random_scale() * 8.0f);
                memcpy(blk + 2, &mh, 2);
                m = mg_fp16_to_fp32(mh);
            }
            /* q5: the 4 bytes of qh (the fifth bits, bit j for element j), then the nibbles */
            uint8_t *codes = blk + (has_m ? 4 : 2);
            const int ncodes = qtype == MG_Q8_0 ? 32 : 16 + 4 * q5, mode = (int)(r % 5);
            for (int j = 0; j < ncodes; j++) {
                const uint8_t hi = qtype == MG_Q8_0 ? 0x7F : 0xFF, lo = qtype == MG_Q8_0 ? 0x80 : 0x00;
                codes[j] = mode == 1 ? hi : mode == 2 ? lo : (uint8_t)rnd();
            }
            const uint8_t *qs = codes + 4 * q5;
            const uint32_t qh = q5 ? (uint32_t)codes[0] | (uint32_t)codes[1] << 8 | (uint32_t)codes[2] << 16 |
                                         (uint32_t)codes[3] << 24 : 0;
            for (int j = 0; j < MG_QK; j++) {
                double code;
                if (qtype == MG_Q8_0) code = fabs((double)(int8_t)codes[j]) + 128;
                else code = (j < 16 ? qs[j] & 15 : qs[j - 16] >> 4) + 16 * (qh >> j & 1) +
                            (qtype == MG_Q4_0 ? 8 : qtype == MG_Q5_0 ? 16 : 0);
                bound[r * cols + b * MG_QK + j] = fabs(d) * code + fabs(m);
            }
        }
}

/* x[n, cols]: normal values; row 1 (mod 4) has outliers, row 2 every value equal (codes at +-127),
 * row 3 a zero first block */
static void make_inputs(int64_t n, int64_t cols, float *x) {
    for (int64_t i = 0; i < n; i++) {
        float *xi = x + i * cols;
        const float c = (float)(0.5 + uniform());
        for (int64_t j = 0; j < cols; j++) {
            xi[j] = (float)normal();
            if (i % 4 == 1 && rnd() % 16 == 0) xi[j] *= 1000.0f;
            if (i % 4 == 2) xi[j] = (j / MG_QK) % 2 ? -c : c;
            if (i % 4 == 3 && j < MG_QK) xi[j] = 0.0f;
        }
    }
}

/* xd[n, cols] = the quantized inputs, dequantized (q16 blocks keep (x0, x2, x1, x3)) */
static void dequant_inputs(const void *xq, int bits, int64_t n, int64_t cols, double *xd) {
    for (int64_t b = 0; b < n * cols / MG_QK; b++)
        for (int j = 0; j < MG_QK; j++) {
            if (bits == 8) {
                const mg_block_q8 *blk = (const mg_block_q8 *)xq + b;
                xd[b * MG_QK + j] = (double)blk->d * blk->q[j];
            } else {
                const mg_block_q16 *blk = (const mg_block_q16 *)xq + b;
                xd[b * MG_QK + j] = (double)blk->d * blk->q[j / 4 * 4 + Q16_ORDER[j % 4]];
            }
        }
}

/* --- checks ---------------------------------------------------------------------------------------- */

static int failures = 0, checks = 0;
static double worst[3]; /* worst relative error of: x8 q8, per-row q8, x8 q16 */

/* out against ref; err / (bound sum) <= TOL */
static void compare(const char *what, int slot, const char *qname, int64_t n, int64_t rows, int64_t cols,
                    const float *out, const double *ref, const double *scale) {
    int reported = 0;
    for (int64_t k = 0; k < n * rows; k++) {
        const double err = fabs(out[k] - ref[k]) / (scale[k] + 1e-30);
        if (err > worst[slot]) worst[slot] = err;
        checks++;
        if (!(err <= TOL)) { /* NaN fails too */
            failures++;
            if (reported++ < 3)
                printf("FAIL %s %s rows=%lld cols=%lld n=%lld: out[%lld, %lld] = %.9g, want %.9g (rel err %.3g)\n",
                       what, qname, (long long)rows, (long long)cols, (long long)n, (long long)(k / rows),
                       (long long)(k % rows), out[k], ref[k], err);
        }
    }
}

/* ref[i, r] = W[r] . xd[i], scale[i, r] = bound[r] . |xd[i]| */
static void reference(const float *wd, const double *bound, const double *xd, int64_t n, int64_t rows,
                      int64_t cols, double *ref, double *scale) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t r = 0; r < rows; r++) {
            double s = 0.0, a = 0.0;
            for (int64_t j = 0; j < cols; j++) {
                s += (double)wd[r * cols + j] * xd[i * cols + j];
                a += bound[r * cols + j] * fabs(xd[i * cols + j]);
            }
            ref[i * rows + r] = s;
            scale[i * rows + r] = a;
        }
}

static void check_case(int qtype, const char *qname, int64_t rows, int64_t cols, int64_t n) {
    const int64_t nb = cols / MG_QK, wbytes = rows * mg_row_bytes(qtype, cols);
    const int64_t pbytes = rows / 8 * (cols / mg_traits[qtype].block) * mg_x8_block_bytes(qtype);
    uint8_t *w = malloc((size_t)wbytes), *p = malloc((size_t)pbytes);
    double *bound = malloc(sizeof(double) * (size_t)(rows * cols));
    float *wd = malloc(sizeof(float) * (size_t)(rows * cols)), *x = malloc(sizeof(float) * (size_t)(n * cols));
    float *out = malloc(sizeof(float) * (size_t)(n * rows));
    double *xd = malloc(sizeof(double) * (size_t)(n * cols));
    double *ref = malloc(sizeof(double) * (size_t)(n * rows)), *scale = malloc(sizeof(double) * (size_t)(n * rows));
    void *xq = malloc((size_t)(n * nb * MG_Q16_BLOCK_BYTES));
    if (!w || !p || !bound || !wd || !x || !out || !xd || !ref || !scale || !xq) {
        printf("FAIL out of memory\n");
        exit(1);
    }
    make_weight(qtype, rows, cols, w, bound);
    make_inputs(n, cols, x);
    mg_dequantize(w, qtype, rows, cols, wd);
    if (mg_pack_x8(w, qtype, rows, cols, p) != MG_OK) {
        printf("FAIL mg_pack_x8 %s\n", qname);
        exit(1);
    }

    mg_quantize_act(x, n, cols, (mg_block_q8 *)xq);
    dequant_inputs(xq, 8, n, cols, xd);
    reference(wd, bound, xd, n, rows, cols, ref, scale);
    memset(out, 0xFF, sizeof(float) * (size_t)(n * rows)); /* NaN: every output must be written */
    if (mg_matmul_q8_x8(x, p, out, qtype, n, rows, cols) != MG_OK) failures++;
    compare("matmul_q8_x8", 0, qname, n, rows, cols, out, ref, scale);
    memset(out, 0xFF, sizeof(float) * (size_t)(n * rows));
    if (mg_matmul_q8(x, w, out, qtype, n, rows, cols) != MG_OK) failures++;
    compare("matmul_q8 (per row)", 1, qname, n, rows, cols, out, ref, scale);

    mg_quantize_act16(x, n, cols, (mg_block_q16 *)xq);
    dequant_inputs(xq, 16, n, cols, xd);
    reference(wd, bound, xd, n, rows, cols, ref, scale);
    memset(out, 0xFF, sizeof(float) * (size_t)(n * rows));
    if (mg_matmul_q16(x, p, out, qtype | MG_X8, n, rows, cols) != MG_OK) failures++;
    compare("matmul_q16_x8", 2, qname, n, rows, cols, out, ref, scale);

    free(w); free(p); free(bound); free(wd); free(x); free(out); free(xd); free(ref); free(scale); free(xq);
}

static int isa_code(const char *name) {
    static const char *names[] = {"scalar", "avx2", "neon", "avx512vnni"};
    if (!strcmp(name, "best")) return mg_cpu_best();
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) return i;
    return -1;
}

int main(int argc, char **argv) {
    const char *want = argc > 1 ? argv[1] : "best";
    const int isa = isa_code(want);
    if (isa < 0 || mg_cpu_init(isa) != MG_OK) {
        printf("cannot install isa %s\n", want);
        return 2;
    }
    const char *dotprod = "n/a";
#ifdef DOTPROD_BIT
    dotprod = getauxval(AT_HWCAP) & DOTPROD_BIT ? "yes" : "no";
#endif
    printf("isa: %s, dotprod: %s\n", mg_isa_name(), dotprod);

    static const struct { int qtype; const char *name; } types[] = {
        {MG_Q4_0, "q4_0"}, {MG_Q4_1, "q4_1"}, {MG_Q5_0, "q5_0"}, {MG_Q5_1, "q5_1"}, {MG_Q8_0, "q8_0"},
        {MG_Q4_K, "q4_k"}, {MG_Q6_K, "q6_k"}};
    static const int64_t shapes[][2] = {{8, 32}, {16, 96}, {40, 288}, {24, 544}}; /* rows, cols */
    static const int64_t k_shapes[][2] = {{8, 256}, {16, 512}, {40, 768}, {24, 1280}};
    for (int k = 0; k < (int)(sizeof types / sizeof types[0]); k++) {
        if (!mg_x8_supported(types[k].qtype)) {
            printf("FAIL no x8 kernels for %s on %s\n", types[k].name, mg_isa_name());
            failures++;
            continue;
        }
        const int is_k = mg_traits[types[k].qtype].block == MG_QK_K;
        for (int s = 0; s < 4; s++)
            for (int64_t n = 1; n <= 9; n++)
                check_case(types[k].qtype, types[k].name, is_k ? k_shapes[s][0] : shapes[s][0],
                           is_k ? k_shapes[s][1] : shapes[s][1], n);
        mg_set_threads(2); /* one case big enough for several shares */
        check_case(types[k].qtype, types[k].name, 64, 1024, 9);
        mg_set_threads(1);
    }
    mg_shutdown();
    printf("worst relative error: x8 q8 %.3g, per-row q8 %.3g, x8 q16 %.3g (tolerance %g)\n", worst[0],
           worst[1], worst[2], TOL);
    printf("%s: %d of %d outputs out of tolerance\n", failures ? "FAIL" : "PASS", failures, checks);
    return failures ? 1 : 0;
}
