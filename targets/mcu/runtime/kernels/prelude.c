/*
 * qc_kernels.c - integer-only kernels for qcompiler's MCU target (see qc_kernels.h).
 *
 * Two implementations of every inner loop: one with the Armv7E-M/Armv8-M DSP
 * SIMD instructions (SXTB16 + SMLAD: two 16-bit MACs per instruction) and one in
 * portable C99 (Cortex-M0, host builds). Both compute the same integers.
 */
#include "qc_kernels.h"

#include <string.h>

#include "qc_config.h"

/* A packed-tensor flag that folds to 0 where the model packs nothing (qc_config.h). */
#define QC_PK(x) (QC_PACKED && (x))

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32) && defined(__GNUC__) && !defined(QC_NO_DSP)
#define QC_USE_DSP 1
#include <arm_acle.h>
#else
#define QC_USE_DSP 0
#endif

/* ---------------------------------------------------------------- requantization */

/* Arithmetic (floor) right shift. C99 leaves >> of a negative value
 * implementation-defined; GCC and clang define it as an arithmetic shift (GCC
 * manual, "Integers implementation"), so they use >> directly. Anything else gets
 * the portable form: for v < 0, ~v = -v-1 >= 0 and floor(v / 2^s) = ~(~v >> s). */
#if defined(__GNUC__)
#define QC_ASR64(v, s) ((v) >> (s))
#define QC_ASR32(v, s) ((v) >> (s))
#else
#define QC_ASR64(v, s) ((v) >= 0 ? (v) >> (s) : ~((~(v)) >> (s)))
#define QC_ASR32(v, s) ((v) >= 0 ? (v) >> (s) : ~((~(v)) >> (s)))
#endif

/* Keeps a rarely taken path out of a hot loop's register allocation. */
#if defined(__GNUC__)
#define QC_NOINLINE __attribute__((noinline))
#else
#define QC_NOINLINE
#endif

static inline int32_t qc_clamp32(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* clamp to [-128, 127]: one SSAT where there is one */
#if QC_USE_DSP
#define qc_sat8(v) __ssat((v), 8)
#else
#define qc_sat8(v) qc_clamp32((v), -128, 127)
#endif

/* y = clamp(zp + floor((acc * b + 2^(c-1)) / 2^c), qmin, qmax): round half up.
 * For c >= 33 (the usual case) only the high word of acc * b matters:
 * floor((P + 2^(c-1)) / 2^c) = floor((hi(P) + 2^(c-33)) / 2^(c-32)), because the
 * low word adds less than one unit of 2^32; |hi(P)| < 2^30, so nothing overflows. */
static inline int32_t qc_rq(int32_t acc, int32_t mult, int32_t shift, int32_t zp, int32_t qmin, int32_t qmax)
{
    int64_t p = (int64_t)acc * (int64_t)mult;
    int64_t r;
    if (shift >= 33) {
        int32_t hi = (int32_t)QC_ASR64(p, 32) + ((int32_t)1 << (shift - 33));
        return qc_clamp32(QC_ASR32(hi, shift - 32) + zp, qmin, qmax);
    }
    r = QC_ASR64(p + ((int64_t)1 << (shift - 1)), shift) + zp;
    return r < qmin ? qmin : (r > qmax ? qmax : (int32_t)r);
}

int32_t qc_requant1(int32_t acc, int32_t mult, int32_t shift, int32_t zp, int32_t qmin, int32_t qmax)
{
    return qc_rq(acc, mult, shift, zp, qmin, qmax);
}

/* Position of K index k in the im2col buffer: each block of 4 is stored as x0, x2, x1, x3,
 * what SXTB16 of a word of 4 int8 gives (bytes 0 and 2, then bytes 1 and 3). */
#define QC_COLPOS(k) (((k) & ~3) | (((k) & 1) << 1) | (((k) >> 1) & 1))

static inline int32_t qc_sext4(int32_t v)
{
    return ((v & 0xF) ^ 8) - 8;
}

/* Element i of a tensor: a byte, or (pk) a nibble of a packed tensor (see qc_kernels.h). */
static inline int32_t qc_get(const int8_t *p, int32_t i, int32_t pk)
{
    return QC_PK(pk) ? ((int32_t)(uint8_t)p[i >> 1] >> ((i & 1) << 2)) & 0xF : p[i];
}

/* Store element i (pk: v in [0, 15], the other nibble of its byte kept). */
static inline void qc_set(int8_t *p, int32_t i, int32_t v, int32_t pk)
{
    if (QC_PK(pk)) {
        uint8_t *b = (uint8_t *)p + (i >> 1);
        *b = (i & 1) ? (uint8_t)((*b & 0x0Fu) | ((uint32_t)v << 4)) : (uint8_t)((*b & 0xF0u) | (uint32_t)v);
    } else {
        p[i] = (int8_t)v;
    }
}

/* Where K index k sits in an im2col column: blocks of 4 as x0, x2, x1, x3 (SXTB16 of a word of
 * 4 int8); k8 = 1: groups of 8 as x0, x4, x2, x6, x1, x5, x3, x7 (a word of 8 nibbles unpacked). */
static inline int32_t qc_colpos(int32_t k, int32_t k8)
{
    return k8 ? (k & ~7) | ((k & 1) << 2) | (k & 2) | ((k >> 2) & 1) : (k & ~3) | ((k & 1) << 1) | ((k >> 1) & 1);
}

#if QC_USE_DSP
static inline int32_t qc_sxtb16_ror8(uint32_t v)
{
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}

static inline uint32_t qc_ld32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Per byte (int8 lanes): the larger / smaller of a and b (SSUB8 sets GE where a >= b). */
static inline uint32_t qc_max4(uint32_t a, uint32_t b)
{
    uint32_t t;
    __asm__("ssub8 %0, %1, %2\n\tsel %0, %1, %2" : "=&r"(t) : "r"(a), "r"(b) : "cc");
    return t;
}

static inline uint32_t qc_min4(uint32_t a, uint32_t b)
{
    uint32_t t;
    __asm__("ssub8 %0, %1, %2\n\tsel %0, %2, %1" : "=&r"(t) : "r"(a), "r"(b) : "cc");
    return t;
}

#endif

