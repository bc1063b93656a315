/* Run-time CPU detection: which instruction set the kernels use, chosen once at import.
 *
 * The x86 test asks the CPU itself (cpuid) and the OS (xgetbv: are the YMM registers saved on a
 * context switch?) rather than trusting compiler flags, so one build runs on every x86-64: AVX2 code
 * lives in quants_avx2.c behind function-level target attributes and is only called after this says
 * yes. NEON is baseline on ARM64, where MG_ISA_NEON is the best ISA: it installs the x8 kernels of
 * packed_neon.c and the KV row slots of ops_neon.c (the other slots stay portable C), with SDOT when the CPU has the dotprod extension.
 * Linux reports that in the auxiliary vector (HWCAP_ASIMDDP); elsewhere the baseline NEON kernels run.
 */
#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <cpuid.h>
#define MG_X86 1
#endif

#if defined(__aarch64__) && defined(__GNUC__)
#define MG_ARM64 1
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20) /* <asm/hwcap.h>, missing from old C libraries */
#endif
#endif
#endif

/* quants_avx2.c: put the AVX2 variants in the slots; 0 if this build has none */
int mg_install_avx2(void);
int mg_install_ops_avx2(void); /* ops_avx2.c: the same for the decoder's other steps */
int mg_install_ops_avx512(void); /* ops_avx512.c: attention's inner loops over those, on AVX-512 CPUs */
int mg_install_ops_neon(void); /* ops_neon.c: the KV cache's row slots on ARM64 */
/* packed_avx2.c: the x8 kernels, with maddubs (AVX2) or vpdpbusd (AVX512-VNNI) */
int mg_install_x8_avx2(void);
int mg_install_x8_vnni(void);
/* packed_neon.c: the x8 kernels for ARM64, with SDOT if `dotprod`; 0 if this build has none */
int mg_install_x8_neon(int dotprod);

/* sizeof(mg_block_q8) is part of the Python-visible layout */
typedef char mg_block_q8_is_40_bytes[sizeof(mg_block_q8) == MG_Q8_BLOCK_BYTES ? 1 : -1];

static int cpu_has_avx2(void) {
#ifdef MG_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!(fma && osxsave && avx && f16c)) return 0;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ __volatile__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & 6) != 6) return 0; /* the OS saves XMM and YMM state */
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 5) & 1;
#else
    return 0;
#endif
}

/* AVX512-VNNI usable on 256-bit registers: the CPU has AVX512F, VL and VNNI, and the OS saves the
 * opmask and upper ZMM state (EVEX instructions need it enabled even on YMM registers). */
static int cpu_has_avx512vnni(void) {
#ifdef MG_X86
    if (!cpu_has_avx2()) return 0;
    unsigned a, b, c, d;
    __cpuid_count(7, 0, a, b, c, d);
    const int f = (b >> 16) & 1, vl = (b >> 31) & 1, vnni = (c >> 11) & 1;
    if (!(f && vl && vnni)) return 0;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ __volatile__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    return (xcr0_lo & 0xE6) == 0xE6;
#else
    return 0;
#endif
}

static int cpu_has_neon(void) {
#ifdef MG_ARM64
    return 1;
#else
    return 0;
#endif
}

/* ARMv8.2 dot product (SDOT/UDOT) */
static int cpu_has_dotprod(void) {
#if defined(MG_ARM64) && defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
    return 0;
#endif
}

static int current = -1; /* the isa installed, -1 before mg_cpu_init */

int mg_cpu_best(void) {
    if (cpu_has_avx512vnni()) return MG_ISA_AVX512VNNI;
    if (cpu_has_avx2()) return MG_ISA_AVX2;
    if (cpu_has_neon()) return MG_ISA_NEON;
    return MG_ISA_SCALAR;
}

int mg_cpu_init(int isa) {
    if (current >= 0) return isa == current ? MG_OK : MG_EISA;
    if (isa == MG_ISA_AVX2) {
        if (!cpu_has_avx2() || !mg_install_avx2() || !mg_install_ops_avx2() || !mg_install_x8_avx2())
            return MG_EISA;
    } else if (isa == MG_ISA_AVX512VNNI) {
        if (!cpu_has_avx512vnni() || !mg_install_avx2() || !mg_install_ops_avx2() || !mg_install_ops_avx512() ||
            !mg_install_x8_vnni())
            return MG_EISA;
    } else if (isa == MG_ISA_NEON) {
        if (!cpu_has_neon() || !mg_install_x8_neon(cpu_has_dotprod()) || !mg_install_ops_neon()) return MG_EISA;
    } else if (isa != MG_ISA_SCALAR) {
        return MG_EISA;
    }
    current = isa;
    return MG_OK;
}

const char *mg_isa_name(void) {
    switch (current) {
    case MG_ISA_AVX2: return "avx2";
    case MG_ISA_AVX512VNNI: return "avx512vnni";
    case MG_ISA_NEON: return "neon";
    default: return "scalar";
    }
}
