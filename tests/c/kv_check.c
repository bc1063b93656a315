/* The KV cache's row slots (ops.h: f32_to_f16, f16_to_f32, f32_to_q8_0, q8_0_to_f32) of one ISA in C
 * alone, so that tests/test_neon.py can run them under qemu as an ARM64 CPU (ops_neon.c) as well as
 * natively (ops_avx2.c, ops.c). The references are the scalar conversions of kernels.h and the q8_0
 * rule written out here, so the vector slots (F16C, NEON fcvtn) check the portable f16 rounding too:
 *   f32 -> f16   every 2^32 bit pattern at a stride, and every one near the subnormal, normal and
 *                overflow edges, both signs (NaNs: the same bits, both quiet)
 *   f16 -> f32   all 65536 halves (a NaN half to any NaN: hardware quiets signalling ones)
 *   q8_0         rows of odd scales, zero and subnormal blocks: d = amax / 127 (0 below FLT_MIN),
 *                q = rintf(x / d); decoded (float)q * d
 *
 *   kv_check [isa]      isa: best (default), scalar, avx2, avx512vnni, neon
 * Prints one line per failure kind and a summary; exits 1 on any failure, 2 if the isa cannot be installed.
 *
 * Build (any target): cc -O2 -Icsrc tests/c/kv_check.c csrc/[a-z]*.c -lm -pthread
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

#define CHUNK 4096

static int failures = 0;

static void fail(const char *what, uint32_t in, uint32_t got, uint32_t want) {
    if (failures++ < 20) printf("FAIL %s: input 0x%08x gives 0x%08x, expected 0x%08x\n", what, in, got, want);
}

/* f32 -> f16 of the CHUNK patterns bits[0 ..] through the slot, against mg_fp32_to_fp16 */
static void check_f16_chunk(const uint32_t *bits, int64_t n) {
    float x[CHUNK];
    uint16_t y[CHUNK];
    memcpy(x, bits, (size_t)n * sizeof(float));
    mg_lops.f32_to_f16(x, y, n);
    for (int64_t j = 0; j < n; j++) {
        const uint16_t want = mg_fp32_to_fp16(x[j]);
        if (y[j] != want) fail("f32_to_f16", bits[j], y[j], want);
    }
}

static void check_f16_range(uint64_t lo, uint64_t hi, uint64_t step) {
    uint32_t bits[CHUNK];
    int64_t n = 0;
    for (uint64_t b = lo; b < hi; b += step) {
        bits[n++] = (uint32_t)b;
        bits[n++] = (uint32_t)b | 0x80000000u;
        if (n + 2 > CHUNK) check_f16_chunk(bits, n), n = 0;
    }
    check_f16_chunk(bits, n);
}

static void check_f16(void) {
    check_f16_range(0, 0x80000000u, 251);             /* a stride over everything (251: odd, prime) */
    check_f16_range(0x33000000u, 0x33800100u, 7);     /* half the least subnormal half, 2^-25, and around */
    check_f16_range(0x387fc000u, 0x38804000u, 1);     /* the least normal half, 2^-14 */
    check_f16_range(0x477fc000u, 0x47802000u, 1);     /* 65504 (max), 65520 (rounds to inf), 65536 */
    check_f16_range(0x7f800000u, 0x7f800400u, 1);     /* inf, signalling NaNs */
    check_f16_range(0x7fc00000u, 0x7fc00400u, 1);     /* quiet NaNs */
    uint16_t h[CHUNK];
    float y[CHUNK];
    for (uint32_t b = 0; b < 65536; b += CHUNK) {
        for (int j = 0; j < CHUNK; j++) h[j] = (uint16_t)(b + j);
        mg_lops.f16_to_f32(h, y, CHUNK - 1); /* an odd count: the tail too */
        for (int j = 0; j < CHUNK - 1; j++) {
            const float want = mg_fp16_to_fp32(h[j]);
            uint32_t g, w;
            memcpy(&g, &y[j], 4), memcpy(&w, &want, 4);
            if (g != w && !(isnan(want) && isnan(y[j]))) fail("f16_to_f32", h[j], g, w); /* NaNs: any NaN */
        }
    }
}

static void check_q8_0(int64_t hd) {
    enum { ROWS = 9 };
    float x[ROWS * MG_ATTN_MAX_HEAD_DIM], back[ROWS * MG_ATTN_MAX_HEAD_DIM];
    uint8_t rows[ROWS * (MG_ATTN_MAX_HEAD_DIM + MG_ATTN_MAX_HEAD_DIM / 8)];
    uint32_t s = 12345;
    for (int64_t j = 0; j < ROWS * hd; j++) { /* scales from 2^-20 to 2^20 by row, some exact halves */
        s = s * 1664525u + 1013904223u;
        const float u = (float)(int32_t)(s >> 8) / 8388608.0f - 1.0f;
        x[j] = j / hd == 5 ? (float)(j % 64) / 2.0f : ldexpf(u, (int)(j / hd) * 5 - 20);
    }
    memset(x + 2 * hd, 0, 32 * sizeof(float));                        /* a zero block */
    for (int j = 0; j < 32; j++) x[3 * hd + j] = 1e-40f * (float)(j - 16); /* subnormals: d < FLT_MIN, zeros */
    mg_lops.f32_to_q8_0(x, rows, ROWS, hd);
    mg_lops.q8_0_to_f32(rows, back, ROWS, hd);
    const int64_t rb = hd + hd / 8;
    for (int64_t i = 0; i < ROWS; i++)
        for (int64_t k = 0; k < hd / MG_QK; k++) {
            const float *xb = x + i * hd + k * MG_QK;
            float amax = 0.0f, d, dq;
            for (int j = 0; j < MG_QK; j++) amax = fmaxf(amax, fabsf(xb[j]));
            d = amax / 127.0f >= FLT_MIN ? amax / 127.0f : 0.0f;
            memcpy(&dq, rows + i * rb + hd + 4 * k, 4);
            uint32_t g, w;
            memcpy(&g, &dq, 4), memcpy(&w, &d, 4);
            if (g != w) fail("f32_to_q8_0 d", (uint32_t)(i * hd + k), g, w);
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            for (int j = 0; j < MG_QK; j++) {
                const int8_t q = (int8_t)rows[i * rb + k * MG_QK + j], want = (int8_t)(int)rintf(xb[j] * id);
                if (q != want) fail("f32_to_q8_0 q", (uint32_t)(i * hd + k * MG_QK + j), (uint8_t)q, (uint8_t)want);
                const float v = back[i * hd + k * MG_QK + j], vw = (float)want * d;
                memcpy(&g, &v, 4), memcpy(&w, &vw, 4);
                if (g != w) fail("q8_0_to_f32", (uint32_t)(i * hd + k * MG_QK + j), g, w);
            }
        }
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
    printf("isa: %s\n", mg_isa_name());
    check_f16();
    for (int64_t hd = 32; hd <= MG_ATTN_MAX_HEAD_DIM; hd *= 2) check_q8_0(hd);
    check_q8_0(96);
    printf(failures ? "%d failures\n" : "PASS\n", failures);
    return failures != 0;
}
