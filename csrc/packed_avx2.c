/* x8 kernels (packed.c) for x86: the body is packed_x86.h, instantiated here once per instruction set.
 *
 *   avx2        dot4 = maddubs (unsigned x signed bytes -> int16 pairs) + madd (pairs -> int32).
 *               The q4 types sum a block's 8 maddubs in int16 (|pair| <= 2 * 15 * 127, so 8 fit), then
 *               one madd;
 *               q8_0 uses the sign trick, |w| . (x with w's sign), |pair| <= 2 * 128 * 127.
 *   avx512vnni  dot4 = vpdpbusd on 256-bit registers (AVX512-VNNI + AVX512-VL, e.g. Zen 4, Ice Lake and
 *               later Xeons): one instruction, no saturation. q8_0 weights become unsigned by
 *               flipping the sign bit (w + 128), and 128 * sum(x) comes off per block.
 *               The q16 kernels use vpdpwssd (int16 pairs) where AVX2 uses madd + add.
 * Both are installed by mg_cpu_init (cpu.c) after cpuid says the CPU has them.
 */
#include <string.h>

#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)

#include <immintrin.h>

/* --- AVX2 ------------------------------------------------------------------------------------------ */

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define NAME(f) f##_avx2
#define Q8_BIAS 0

TARGET static inline __m256i dot4(__m256i acc, __m256i u, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

TARGET static inline __m256i dot4x2(__m256i acc, __m256i u0, __m256i s0, __m256i u1, __m256i s1) {
    return _mm256_add_epi16(acc, _mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1)));
}

TARGET static inline __m256i q4_total(const __m256i *acc, int ch) {
    __m256i p = acc[0];
    for (int c = 1; c < ch; c++) p = _mm256_add_epi16(p, acc[c]);
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

TARGET static inline __m256i dot2(__m256i acc, __m256i a, __m256i b) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
}

TARGET static inline __m256i q8_unsigned(__m256i w) { return _mm256_abs_epi8(w); }
TARGET static inline __m256i q8_signed(__m256i x, __m256i w) { return _mm256_sign_epi8(x, w); }

#include "packed_x86.h"

#undef TARGET
#undef NAME
#undef Q8_BIAS

/* --- AVX512-VNNI on 256-bit registers ---------------------------------------------------------------- */

#define TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))
#define NAME(f) f##_vnni
#define Q8_BIAS 128

TARGET static inline __m256i dot4_vnni(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }

TARGET static inline __m256i dot4x2_vnni(__m256i acc, __m256i u0, __m256i s0, __m256i u1, __m256i s1) {
    return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, u0, s0), u1, s1);
}

TARGET static inline __m256i dot2_vnni(__m256i acc, __m256i a, __m256i b) { return _mm256_dpwssd_epi32(acc, a, b); }

TARGET static inline __m256i q4_total_vnni(const __m256i *acc, int ch) {
    __m256i lanes = acc[0];
    for (int c = 1; c < ch; c++) lanes = _mm256_add_epi32(lanes, acc[c]);
    return lanes;
}

TARGET static inline __m256i q8_unsigned_vnni(__m256i w) { return _mm256_xor_si256(w, _mm256_set1_epi8(-128)); }
TARGET static inline __m256i q8_signed_vnni(__m256i x, __m256i w) { (void)w; return x; }

#define dot4 dot4_vnni
#define dot4x2 dot4x2_vnni
#define dot2 dot2_vnni
#define q4_total q4_total_vnni
#define q8_unsigned q8_unsigned_vnni
#define q8_signed q8_signed_vnni
#include "packed_x86.h"
#undef dot4
#undef dot4x2
#undef dot2
#undef q4_total
#undef q8_unsigned
#undef q8_signed

int mg_install_x8_avx2(void) {
    install_x8_avx2();
    return 1;
}

int mg_install_x8_vnni(void) {
    install_x8_vnni();
    return 1;
}

#else

int mg_install_x8_avx2(void) { return 0; }
int mg_install_x8_vnni(void) { return 0; }

#endif
