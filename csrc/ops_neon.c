/* aarch64 NEON variants of the KV cache's row slots (ops.h), installed by mg_cpu_init (cpu.c) with the
 * NEON x8 kernels; the decoder's other slots stay the portable ones (ops.c) on ARM64.
 *
 * fcvtn / fcvtl convert 4 floats to halves and back in one instruction, rounding to nearest even (the
 * FPCR default) and keeping a NaN's top payload bits, quieted: the bits mg_fp32_to_fp16 gives, so the
 * scalar tails agree with the vectors. q8_0 rows widen int8 -> int32 -> float (exact), then one multiply
 * by the block's d, as ops.c does.
 */
#include <string.h>

#include "ops.h"

#if defined(__aarch64__) && defined(__GNUC__)

#include <arm_neon.h>

static void f32_to_f16_neon(const float *restrict x, uint16_t *restrict y, int64_t n) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) vst1_u16(y + j, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + j))));
    for (; j < n; j++) y[j] = mg_fp32_to_fp16(x[j]);
}

static void f16_to_f32_neon(const uint16_t *restrict x, float *restrict y, int64_t n) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) vst1q_f32(y + j, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + j))));
    for (; j < n; j++) y[j] = mg_fp16_to_fp32(x[j]);
}

static void q8_0_to_f32_neon(const uint8_t *restrict x, float *restrict y, int64_t rows, int64_t hd) {
    for (int64_t i = 0; i < rows; i++, x += hd + hd / 8, y += hd)
        for (int64_t k = 0; k < hd / MG_QK; k++) {
            float d;
            memcpy(&d, x + hd + 4 * k, sizeof d);
            for (int u = 0; u < MG_QK; u += 8) {
                const int16x8_t q = vmovl_s8(vld1_s8((const int8_t *)x + k * MG_QK + u));
                vst1q_f32(y + k * MG_QK + u, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(q))), d));
                vst1q_f32(y + k * MG_QK + u + 4, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(q))), d));
            }
        }
}

int mg_install_ops_neon(void) {
    mg_lops.f32_to_f16 = f32_to_f16_neon;
    mg_lops.f16_to_f32 = f16_to_f32_neon;
    mg_lops.q8_0_to_f32 = q8_0_to_f32_neon; /* f32_to_q8_0 is ops.c's over the activations' quantizer */
    return 1;
}

#else

int mg_install_ops_neon(void) { return 0; }

#endif
