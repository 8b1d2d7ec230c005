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

/* ---------------------------------------------------------------- conv / fully connected
 * 2 x 2 tiles: two output channels (a row pair of the weight stream, see qc_kernels.h)
 * x two im2col columns (output pixels); acc[0..3] = (row 0, col 0), (row 0, col 1),
 * (row 1, col 0), (row 1, col 1). A row pair of the stream is QC_PAIR_HEAD bias words,
 * the weight blocks, then QC_PAIR_TAIL requantization words. */
#define QC_PAIR_HEAD 4
#define QC_PAIR_TAIL 5

#if QC_USE_DSP
/* What the assembly tile kernels read. The prologue pushes words 0-7 as they are (entry turned
 * into the address where the first pass enters the unrolled K loop), so these offsets are also
 * their offsets from sp inside the loop. */
typedef struct {
    int32_t entry;          /* 0: (k_pad / 4) mod 8 */
    const int16_t *c0;      /* 4 */
    const int16_t *c1;      /* 8: may equal c0 (then o1 == o0) */
    int8_t *o0;             /* 12: advanced by 2 per pair */
    int8_t *o1;             /* 16 */
    const int32_t *w_end;   /* 20: end of the row pairs to do */
    uint32_t qmin4, qmax4;  /* 24, 28: the bounds in each byte (clamping kernels) */
    const int16_t *c0_end;  /* 32: c0 + k_pad, where the K loop stops */
} qc_tile_args;

/* For every row pair from w to a->w_end: acc = bias (LDM of 4 words); acc += W . col over K;
 * fast requantization (SMMLA: hi32(acc * b) + rnd, then an arithmetic shift per channel);
 * store four bytes. The dot product needs 14 registers (4 accumulators, 4 weight words,
 * 2 activation words, 3 pointers and the loop end), more than GCC gives an inline asm
 * statement, and LDM takes a fixed ascending register list, so these are whole functions in
 * assembly. Per block of 4 K indices: 8-bit weights (pre-widened to int16 at compile time)
 * 3 LDM + 8 SMLAD for 16 MACs; 4-bit: LDR + 2 AND + LSL + 4 SXTB16 + 2 LDM + 8 SMLAD. The K
 * loop is unrolled 4x and ends on the first column's pointer; the first pass enters it where
 * it does the (k_pad / 4) mod 4 odd blocks (LDR PC from the address computed once per call).
 * "_c" variants clamp to [qmin, qmax] with SSUB8/SEL on the packed bytes; the others only
 * saturate to [-128, 127] (SSAT). Per row pair outside the K loop: 3 instructions before it,
 * 21 (23 clamping: 28) after. */
void qc_tile_w16(const int32_t *w, qc_tile_args *a);
void qc_tile_w16_c(const int32_t *w, qc_tile_args *a);
void qc_tile_w4(const int32_t *w, qc_tile_args *a);
void qc_tile_w4_c(const int32_t *w, qc_tile_args *a);
void qc_tile_w16_p(const int32_t *w, qc_tile_args *a);
void qc_tile_w4_p(const int32_t *w, qc_tile_args *a);

#define QC_STORE_PLAIN                \
    "\tssat r4, #8, r4\n"             \
    "\tssat r5, #8, r5\n"             \
    "\tssat r6, #8, r6\n"             \
    "\tssat r7, #8, r7\n"             \
    "\tldrd r8, r9, [sp, #12]\n"      \
    "\tstrb r4, [r8], #1\n"           \
    "\tstrb r6, [r8], #1\n"           \
    "\tstrb r5, [r9], #1\n"           \
    "\tstrb r7, [r9], #1\n"           \
    "\tstrd r8, r9, [sp, #12]\n"

#define QC_STORE_CLAMP                \
    "\tssat r4, #8, r4\n"             \
    "\tssat r5, #8, r5\n"             \
    "\tssat r6, #8, r6\n"             \
    "\tssat r7, #8, r7\n"             \
    "\tbfi r4, r6, #8, #8\n"          \
    "\tbfi r5, r7, #8, #8\n"          \
    "\tpkhbt r4, r4, r5, lsl #16\n"   \
    "\tldrd r10, r11, [sp, #24]\n"    \
    "\tssub8 r12, r4, r10\n"          \
    "\tsel r4, r4, r10\n"             \
    "\tssub8 r12, r4, r11\n"          \
    "\tsel r4, r11, r4\n"             \
    "\tldrd r8, r9, [sp, #12]\n"      \
    "\tstrh r4, [r8], #2\n"           \
    "\tlsr r4, r4, #16\n"             \
    "\tstrh r4, [r9], #2\n"           \
    "\tstrd r8, r9, [sp, #12]\n"

/* Packed 4-bit output (values in the u domain, bounds exactly [0, 15]): USAT, one byte per
 * pixel holding the pair's two channels. */
#define QC_STORE_PACK                 \
    "\tusat r4, #4, r4\n"             \
    "\tusat r5, #4, r5\n"             \
    "\tusat r6, #4, r6\n"             \
    "\tusat r7, #4, r7\n"             \
    "\torr r4, r4, r6, lsl #4\n"      \
    "\torr r5, r5, r7, lsl #4\n"      \
    "\tldrd r8, r9, [sp, #12]\n"      \
    "\tstrb r4, [r8], #1\n"           \
    "\tstrb r5, [r9], #1\n"           \
    "\tstrd r8, r9, [sp, #12]\n"

/* The K loop's end test: against r3 (8-bit weights), or (4-bit: r3 holds the nibble mask) against
 * the end kept in the frame, loaded into r12, which is free between steps. */
#define QC_KEND_R3 "\tcmp r1, r3\n"
#define QC_KEND_SP "\tldr r12, [sp, #32]\n\tcmp r1, r12\n"
#define QC_KINIT_R3 "\tldr r3, [r1, #32]\n"
#define QC_KINIT_SP "\tmov r3, #0xF0F0F0F0\n"

#define QC_TILE_FUNC(name, STEP, STORE, KINIT, KEND)                     \
    "\t.pushsection .text." #name ",\"ax\",%progbits\n"                 \
    "\t.syntax unified\n"                                               \
    "\t.thumb\n"                                                        \
    "\t.p2align 2\n"                                                    \
    "\t.global " #name "\n"                                             \
    "\t.type " #name ", %function\n"                                    \
    "\t.thumb_func\n"                                                   \
    #name ":\n"                                                         \
    "\tpush {r4-r11, lr}\n"                                             \
    "\tldr r4, [r1, #32]\n"                                             \
    "\tpush {r4}\n"                                                     \
    KINIT                                                               \
    "\tldm r1, {r4-r11}\n"                                              \
    "\tadr.w r12, 20f\n"                                                \
    "\tldr r4, [r12, r4, lsl #2]\n"                                     \
    "\tpush {r4-r11}\n"                                                 \
    "0:\n"                                                              \
    "\tldm r0!, {r4-r7}\n"                                              \
    "\tldrd r1, r2, [sp, #4]\n"                                         \
    "\tldr pc, [sp]\n"                                                  \
    "10:\n" STEP                                                        \
    "11:\n" STEP                                                        \
    "12:\n" STEP                                                        \
    "13:\n" STEP                                                        \
    "14:\n" STEP                                                        \
    "15:\n" STEP                                                        \
    "16:\n" STEP                                                        \
    "17:\n" STEP                                                        \
    KEND                                                                \
    "\tbne 10b\n"                                                       \
    "\tldm r0!, {r8-r12}\n"                                             \
    "\tsmmla r4, r4, r8, r9\n"                                          \
    "\tsmmla r5, r5, r8, r9\n"                                          \
    "\tsmmla r6, r6, r10, r11\n"                                        \
    "\tsmmla r7, r7, r10, r11\n"                                        \
    "\tasr r4, r4, r12\n"                                               \
    "\tasr r5, r5, r12\n"                                               \
    "\tlsr r12, r12, #8\n"                                              \
    "\tasr r6, r6, r12\n"                                               \
    "\tasr r7, r7, r12\n"                                               \
    STORE                                                               \
    "\tldr r8, [sp, #20]\n"                                             \
    "\tcmp r0, r8\n"                                                    \
    "\tbne 0b\n"                                                        \
    "\tadd sp, sp, #36\n"                                               \
    "\tpop {r4-r11, pc}\n"                                              \
    "\t.p2align 2\n"                                                    \
    "20:\n"                                                             \
    "\t.word 10b + 1, 17b + 1, 16b + 1, 15b + 1, 14b + 1, 13b + 1, 12b + 1, 11b + 1\n" \
    "\t.size " #name ", .-" #name "\n"                                  \
    "\t.popsection\n"

/* r8, r9 = row 0 (w0, w2), (w1, w3); r10, r11 = row 1; r12, lr = a column's (x0, x2), (x1, x3) */
#define QC_STEP_W16                  \
    "\tldm r0!, {r8-r11}\n"          \
    "\tldm r1!, {r12, lr}\n"         \
    "\tsmlad r4, r8, r12, r4\n"      \
    "\tsmlad r4, r9, lr, r4\n"       \
    "\tsmlad r6, r10, r12, r6\n"     \
    "\tsmlad r6, r11, lr, r6\n"      \
    "\tldm r2!, {r12, lr}\n"         \
    "\tsmlad r5, r8, r12, r5\n"      \
    "\tsmlad r5, r9, lr, r5\n"       \
    "\tsmlad r7, r10, r12, r7\n"     \
    "\tsmlad r7, r11, lr, r7\n"

/* One word holds both rows' 4 nibbles (row 0 low, row 1 high); each nibble is moved
 * to the top of a byte (16x its value; r3 = 0xF0F0F0F0) and sign extended in pairs. */
#define QC_STEP_W4                   \
    "\tldr r8, [r0], #4\n"           \
    "\tldm r1!, {r12, lr}\n"         \
    "\tand r9, r8, r3\n"             \
    "\tand r8, r3, r8, lsl #4\n"     \
    "\tsxtb16 r10, r8\n"             \
    "\tsxtb16 r8, r8, ror #8\n"      \
    "\tsxtb16 r11, r9\n"             \
    "\tsxtb16 r9, r9, ror #8\n"      \
    "\tsmlad r4, r10, r12, r4\n"     \
    "\tsmlad r4, r8, lr, r4\n"       \
    "\tsmlad r6, r11, r12, r6\n"     \
    "\tsmlad r6, r9, lr, r6\n"       \
    "\tldm r2!, {r12, lr}\n"         \
    "\tsmlad r5, r10, r12, r5\n"     \
    "\tsmlad r5, r8, lr, r5\n"       \
    "\tsmlad r7, r11, r12, r7\n"     \
    "\tsmlad r7, r9, lr, r7\n"

/* Interleaved columns (qc_widen_pair): a block of 4 K of pixel 0 then the same block of pixel 1,
 * so one LDM fetches both: r2, r3 = pixel 0's (x0, x2), (x1, x3); r12, lr = pixel 1's. 2 LDM +
 * 8 SMLAD per 16 MACs; the K loop ends on the end kept in the frame (c0 + 2 * k_pad). */
#define QC_STEP_W16I                 \
    "\tldm r0!, {r8-r11}\n"          \
    "\tldm r1!, {r2, r3, r12, lr}\n" \
    "\tsmlad r4, r8, r2, r4\n"       \
    "\tsmlad r4, r9, r3, r4\n"       \
    "\tsmlad r6, r10, r2, r6\n"      \
    "\tsmlad r6, r11, r3, r6\n"      \
    "\tsmlad r5, r8, r12, r5\n"      \
    "\tsmlad r5, r9, lr, r5\n"       \
    "\tsmlad r7, r10, r12, r7\n"     \
    "\tsmlad r7, r11, lr, r7\n"

void qc_tile_w16i(const int32_t *w, qc_tile_args *a);
void qc_tile_w16i_c(const int32_t *w, qc_tile_args *a);
void qc_tile_w16i_p(const int32_t *w, qc_tile_args *a);

__asm__(QC_TILE_FUNC(qc_tile_w16i, QC_STEP_W16I, QC_STORE_PLAIN, "", QC_KEND_SP)
        QC_TILE_FUNC(qc_tile_w16i_c, QC_STEP_W16I, QC_STORE_CLAMP, "", QC_KEND_SP)
        QC_TILE_FUNC(qc_tile_w16i_p, QC_STEP_W16I, QC_STORE_PACK, "", QC_KEND_SP));

__asm__(QC_TILE_FUNC(qc_tile_w16, QC_STEP_W16, QC_STORE_PLAIN, QC_KINIT_R3, QC_KEND_R3)
        QC_TILE_FUNC(qc_tile_w16_c, QC_STEP_W16, QC_STORE_CLAMP, QC_KINIT_R3, QC_KEND_R3)
        QC_TILE_FUNC(qc_tile_w4, QC_STEP_W4, QC_STORE_PLAIN, QC_KINIT_SP, QC_KEND_SP)
        QC_TILE_FUNC(qc_tile_w4_c, QC_STEP_W4, QC_STORE_CLAMP, QC_KINIT_SP, QC_KEND_SP)
        QC_TILE_FUNC(qc_tile_w16_p, QC_STEP_W16, QC_STORE_PACK, QC_KINIT_R3, QC_KEND_R3)
        QC_TILE_FUNC(qc_tile_w4_p, QC_STEP_W4, QC_STORE_PACK, QC_KINIT_SP, QC_KEND_SP));

/* int16_t *qc_widen_rows(int16_t *dst, const int8_t *src, int32_t n, int32_t rows, int32_t stride):
 * rows runs of n int8 (n a multiple of 4; the runs stride bytes apart) into dst as int16, each
 * block of 4 stored x0, x2, x1, x3 (SXTB16); returns the end of what was written. dst is word
 * aligned. 16 bytes per pass: LDM (or 4 LDR when src is not word aligned), 8 SXTB16, STM;
 * runs of exactly 4 bytes (a one-channel input layer) take a 7-instruction loop. */
int16_t *qc_widen_rows(int16_t *dst, const int8_t *src, int32_t n, int32_t rows, int32_t stride);

#define QC_SXTB16_8                  \
    "\tsxtb16 r4, r5\n"              \
    "\tsxtb16 r5, r5, ror #8\n"      \
    "\tsxtb16 r6, r7\n"              \
    "\tsxtb16 r7, r7, ror #8\n"      \
    "\tsxtb16 r8, r9\n"              \
    "\tsxtb16 r9, r9, ror #8\n"      \
    "\tsxtb16 r10, r11\n"            \
    "\tsxtb16 r11, r11, ror #8\n"

__asm__("\t.pushsection .text.qc_widen_rows,\"ax\",%progbits\n"
        "\t.syntax unified\n"
        "\t.thumb\n"
        "\t.p2align 2\n"
        "\t.global qc_widen_rows\n"
        "\t.type qc_widen_rows, %function\n"
        "\t.thumb_func\n"
        "qc_widen_rows:\n"
        "\tpush {r4-r11, lr}\n"
        "\tldr r12, [sp, #36]\n"
        "\tcmp r2, #4\n"
        "\tbeq 8f\n"
        "\tsub r12, r12, r2\n"
        "1:\n"
        "\tmov lr, r2\n"
        "\ttst r1, #3\n"
        "\tbne 6f\n"
        "\tsubs lr, lr, #16\n"
        "\tblt 3f\n"
        "2:\n"
        "\tldm r1!, {r5, r7, r9, r11}\n"
        QC_SXTB16_8
        "\tstm r0!, {r4-r11}\n"
        "\tsubs lr, lr, #16\n"
        "\tbge 2b\n"
        "3:\n"
        "\tadds lr, lr, #16\n"
        "\tbeq 5f\n"
        "4:\n"
        "\tldr r5, [r1], #4\n"
        "\tsxtb16 r4, r5\n"
        "\tsxtb16 r5, r5, ror #8\n"
        "\tstrd r4, r5, [r0], #8\n"
        "\tsubs lr, lr, #4\n"
        "\tbne 4b\n"
        "5:\n"
        "\tadd r1, r1, r12\n"
        "\tsubs r3, r3, #1\n"
        "\tbne 1b\n"
        "\tpop {r4-r11, pc}\n"
        "6:\n"
        "\tsubs lr, lr, #16\n"
        "\tblt 3b\n"
        "7:\n"
        "\tldr r5, [r1], #4\n"
        "\tldr r7, [r1], #4\n"
        "\tldr r9, [r1], #4\n"
        "\tldr r11, [r1], #4\n"
        QC_SXTB16_8
        "\tstm r0!, {r4-r11}\n"
        "\tsubs lr, lr, #16\n"
        "\tbge 7b\n"
        "\tb 3b\n"
        "8:\n"
        "\tldr r5, [r1]\n"
        "\tadd r1, r1, r12\n"
        "\tsxtb16 r4, r5\n"
        "\tsxtb16 r5, r5, ror #8\n"
        "\tstrd r4, r5, [r0], #8\n"
        "\tsubs r3, r3, #1\n"
        "\tbne 8b\n"
        "\tpop {r4-r11, pc}\n"
        "\t.size qc_widen_rows, .-qc_widen_rows\n"
        "\t.popsection\n");

/* int16_t *qc_widen_rows_pk(int16_t *dst, const int8_t *src, int32_t n, int32_t rows, int32_t stride):
 * the same for packed 4-bit values: rows runs of n nibbles (n a multiple of 8, each run starting
 * at a byte), each group of 8 stored x0, x4, x2, x6, x1, x5, x3, x7 (qc_colpos with k8): per word
 * LDR, AND, AND of the word shifted by 4, 4 UXTB16, STM. */
int16_t *qc_widen_rows_pk(int16_t *dst, const int8_t *src, int32_t n, int32_t rows, int32_t stride);

__asm__("\t.pushsection .text.qc_widen_rows_pk,\"ax\",%progbits\n"
        "\t.syntax unified\n"
        "\t.thumb\n"
        "\t.p2align 2\n"
        "\t.global qc_widen_rows_pk\n"
        "\t.type qc_widen_rows_pk, %function\n"
        "\t.thumb_func\n"
        "qc_widen_rows_pk:\n"
        "\tpush {r4-r11, lr}\n"
        "\tldr r12, [sp, #36]\n"
        "\tsub r12, r12, r2, lsr #1\n"
        "\tmov r11, #0x0F0F0F0F\n"
        "1:\n"
        "\tmov lr, r2\n"
        "2:\n"
        "\tldr r5, [r1], #4\n"
        "\tand r4, r5, r11\n"
        "\tand r6, r11, r5, lsr #4\n"
        "\tuxtb16 r7, r4\n"
        "\tuxtb16 r8, r4, ror #8\n"
        "\tuxtb16 r9, r6\n"
        "\tuxtb16 r10, r6, ror #8\n"
        "\tstm r0!, {r7-r10}\n"
        "\tsubs lr, lr, #8\n"
        "\tbne 2b\n"
        "\tadd r1, r1, r12\n"
        "\tsubs r3, r3, #1\n"
        "\tbne 1b\n"
        "\tpop {r4-r11, pc}\n"
        "\t.size qc_widen_rows_pk, .-qc_widen_rows_pk\n"
        "\t.popsection\n");
#else
/* Portable: the same layouts (each block of 4 as x0, x2, x1, x3; packed: groups of 8 as
 * x0, x4, x2, x6, x1, x5, x3, x7). */
static int16_t *qc_widen_rows_pk(int16_t *dst, const int8_t *src, int32_t n, int32_t rows, int32_t stride)
{
    int32_t r, j;
    for (r = 0; r < rows; r++, src += stride) {
        for (j = 0; j < n; j++) dst[qc_colpos(j, 1)] = (int16_t)qc_get(src, j, 1);
        dst += n;
    }
    return dst;
}

static int16_t *qc_widen_rows(int16_t *dst, const int8_t *src, int32_t n, int32_t rows, int32_t stride)
{
    int32_t r, j;
    for (r = 0; r < rows; r++, src += stride) {
        for (j = 0; j < n; j += 4, dst += 4) {
            dst[0] = src[j];
            dst[1] = src[j + 2];
            dst[2] = src[j + 1];
            dst[3] = src[j + 3];
        }
    }
    return dst;
}
#endif

static inline int32_t qc_sext16(uint32_t v)
{
    return (int32_t)((v & 0xFFFFu) ^ 0x8000u) - 0x8000;
}

/* Portable 2 x 2 dot product over k4 blocks (blk: the pair's first block); a column's blocks
 * are cs values apart (4; 8 in the interleaved layout of qc_widen_pair). */
static void qc_dot2x2(const int32_t *blk, const int16_t *c0, const int16_t *c1, int32_t cs, int32_t k4,
                      int32_t wbits, int32_t *acc)
{
    int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    int32_t b, i;
    for (b = 0; b < k4; b++, c0 += cs, c1 += cs) {
        if (wbits == 8) {
            const int32_t *q = blk + 4 * b;
            for (i = 0; i < 2; i++) { /* word i of a row: stored positions 2i (low half), 2i + 1 */
                const int32_t r0a = QC_ASR32((int32_t)((uint32_t)q[i] << 16), 16), r0b = QC_ASR32(q[i], 16);
                const int32_t r1a = QC_ASR32((int32_t)((uint32_t)q[2 + i] << 16), 16), r1b = QC_ASR32(q[2 + i], 16);
                const int32_t x0a = c0[2 * i], x0b = c0[2 * i + 1], x1a = c1[2 * i], x1b = c1[2 * i + 1];
                a00 += r0a * x0a + r0b * x0b;
                a01 += r0a * x1a + r0b * x1b;
                a10 += r1a * x0a + r1b * x0b;
                a11 += r1a * x1a + r1b * x1b;
            }
        } else {
            const uint32_t q = (uint32_t)blk[b];
            for (i = 0; i < 4; i++) { /* byte i holds K index i of both rows */
                const int32_t by = (int32_t)((q >> (8 * i)) & 0xFFu), pos = QC_COLPOS(i);
                const int32_t w0 = 16 * qc_sext4(by), w1 = 16 * qc_sext4(by >> 4);
                a00 += w0 * c0[pos];
                a01 += w0 * c1[pos];
                a10 += w1 * c0[pos];
                a11 += w1 * c1[pos];
            }
        }
    }
    acc[0] = a00; acc[1] = a01; acc[2] = a10; acc[3] = a11;
}

/* Fast requantization: hi = floor(acc * b / 2^32), y = clamp(floor((hi + rnd) / 2^s)). */
static inline int32_t qc_rqf(int32_t acc, int32_t mult, int32_t rnd, int32_t s, int32_t qmin, int32_t qmax)
{
    const int32_t hi = (int32_t)QC_ASR64((int64_t)acc * mult, 32);
    return qc_clamp32(QC_ASR32(hi + rnd, s), qmin, qmax);
}

/* Row pairs [w, w_end) of the stream against one or two pixels, in C (o1 == 0 and c1 == c0
 * for one pixel; cs: see qc_dot2x2). Stores channel m + 1 of a pair only when m + 1 < mg; pk: the pair as one
 * byte of a packed output (mg is even there), o0 / o1 pointing at the byte of channel 0. */
static void qc_pairs_c(const int32_t *w, const int32_t *w_end, int32_t m, int32_t mg, const int16_t *c0,
                       const int16_t *c1, int32_t cs, int32_t k4, int32_t wbits, int32_t rq_fast, int32_t zp,
                       int32_t qmin, int32_t qmax, int32_t pk, int8_t *o0, int8_t *o1)
{
    const int32_t blk_words = wbits == 8 ? 4 * k4 : k4;
    for (; w < w_end; w += QC_PAIR_HEAD + blk_words + QC_PAIR_TAIL, m += 2) {
        const int32_t *q = w + QC_PAIR_HEAD + blk_words;
        int32_t acc[4], i;
        acc[0] = acc[1] = w[0];
        acc[2] = acc[3] = w[2];
        qc_dot2x2(w + QC_PAIR_HEAD, c0, c1, cs, k4, wbits, acc);
        if (rq_fast) {
            for (i = 0; i < 4; i++)
                acc[i] = qc_rqf(acc[i], q[i & 2], q[(i & 2) + 1], (q[4] >> (4 * (i & 2))) & 0xFF, qmin, qmax);
        } else {
            for (i = 0; i < 4; i++) {
                if (wbits == 4) acc[i] = QC_ASR32(acc[i], 4); /* exact: every term is a multiple of 16 */
                acc[i] = qc_rq(acc[i], q[i & 2], q[(i & 2) + 1], zp, qmin, qmax);
            }
        }
        if (QC_PK(pk)) {
            o0[m >> 1] = (int8_t)(acc[0] | (acc[2] << 4));
            if (o1) o1[m >> 1] = (int8_t)(acc[1] | (acc[3] << 4));
            continue;
        }
        o0[m] = (int8_t)acc[0];
        if (o1) o1[m] = (int8_t)acc[1];
        if (m + 1 < mg) {
            o0[m + 1] = (int8_t)acc[2];
            if (o1) o1[m + 1] = (int8_t)acc[3];
        }
    }
}

#if QC_USE_DSP
#define QC_TILE(f, bit) ((QC_TILES & (bit)) ? f : 0)
#endif

/* One layer's (or group's) channels for pixel pairs: the per-call state of the tile kernels. */
typedef struct {
    const int32_t *w, *w_end;
    int32_t mg, k4, k_pad, wbits, rq_fast, zp, qmin, qmax, pk;
#if QC_USE_DSP
    qc_tile_args a;
    void (*tile)(const int32_t *, qc_tile_args *);
    void (*tile_i)(const int32_t *, qc_tile_args *); /* the same on interleaved columns, or 0 */
#endif
} qc_mm;

static void qc_mm_init(qc_mm *t, const int32_t *w, int32_t mg, int32_t k_pad, int32_t wbits, int32_t rq_fast,
                       int32_t zp, int32_t qmin, int32_t qmax, int32_t pk)
{
    const int32_t blk_words = wbits == 8 ? k_pad : k_pad / 4;
    t->w = w;
    t->w_end = w + ((mg + 1) / 2) * (QC_PAIR_HEAD + blk_words + QC_PAIR_TAIL);
    t->mg = mg;
    t->k4 = k_pad / 4;
    t->k_pad = k_pad;
    t->wbits = wbits;
    t->rq_fast = rq_fast;
    t->zp = zp;
    t->qmin = qmin;
    t->qmax = qmax;
    t->pk = pk;
#if QC_USE_DSP
    {
        const int32_t clamp = qmin != -128 || qmax != 127;
        t->a.w_end = w + (mg / 2) * (QC_PAIR_HEAD + blk_words + QC_PAIR_TAIL);
        t->a.entry = t->k4 & 7;
        t->a.qmin4 = (uint8_t)qmin * 0x01010101u;
        t->a.qmax4 = (uint8_t)qmax * 0x01010101u;
        /* variants qc_config.h leaves out are 0: those layers run the portable C */
        if (QC_PK(pk)) /* USAT #4 is the clamp only for bounds [0, 15]; others take the C path */
            t->tile = qmin != 0 || qmax != 15 ? 0 : wbits == 8 ? QC_TILE(qc_tile_w16_p, 4) : QC_TILE(qc_tile_w4_p, 32);
        else if (wbits == 8)
            t->tile = clamp ? QC_TILE(qc_tile_w16_c, 2) : QC_TILE(qc_tile_w16, 1);
        else
            t->tile = clamp ? QC_TILE(qc_tile_w4_c, 16) : QC_TILE(qc_tile_w4, 8);
        if (QC_PK(pk))
            t->tile_i = wbits != 8 || qmin != 0 || qmax != 15 ? 0 : QC_TILE(qc_tile_w16i_p, 256);
        else
            t->tile_i = wbits != 8 ? 0 : clamp ? QC_TILE(qc_tile_w16i_c, 128) : QC_TILE(qc_tile_w16i, 64);
        if (!rq_fast || mg < 2) t->tile = t->tile_i = 0;
    }
#else
    (void)blk_words;
#endif
}

/* All mg channels of one or two pixels (c1 == c0 and o1 == 0 for one); o0 / o1 point at the
 * first channel's byte (packed outputs: the byte holding it). */
static inline void qc_mm_run(qc_mm *t, const int16_t *c0, const int16_t *c1, int8_t *o0, int8_t *o1)
{
    const int32_t *w = t->w;
    int32_t m = 0;
#if QC_USE_DSP
    if (t->tile) {
        t->a.c0 = c0;
        t->a.c1 = c1;
        t->a.c0_end = c0 + t->k_pad;
        t->a.o0 = o0;
        t->a.o1 = o1 ? o1 : o0;
        t->tile(w, &t->a);
        if (!(t->mg & 1)) return;
        w = t->a.w_end;
        m = t->mg - 1;
    }
#endif
    qc_pairs_c(w, t->w_end, m, t->mg, c0, c1, 4, t->k4, t->wbits, t->rq_fast, t->zp, t->qmin, t->qmax, t->pk, o0,
               o1);
}

#if QC_USE_DSP
/* All mg channels of two pixels whose columns qc_widen_pair interleaved at ci (t->tile_i set). */
static void qc_mm_run_i(qc_mm *t, const int16_t *ci, int8_t *o0, int8_t *o1)
{
    t->a.c0 = ci;
    t->a.c0_end = ci + 2 * t->k_pad;
    t->a.o0 = o0;
    t->a.o1 = o1;
    t->tile_i(t->w, &t->a);
    if (t->mg & 1)
        qc_pairs_c(t->a.w_end, t->w_end, t->mg - 1, t->mg, ci, ci + 4, 8, t->k4, t->wbits, t->rq_fast, t->zp,
                   t->qmin, t->qmax, t->pk, o0, o1);
}

#endif

/* Byte copy and fill, a word at a time (unaligned word access is fine on Armv7-M and up;
 * memcpy of 4 bytes compiles to one LDR/STR there and to byte moves where it must). */
static inline int8_t *qc_put(int8_t *dst, const int8_t *src, int32_t n)
{
    for (; n >= 4; n -= 4, src += 4, dst += 4) memcpy(dst, src, 4);
    for (; n > 0; n--) *dst++ = *src++;
    return dst;
}

static inline int8_t *qc_fill(int8_t *dst, uint32_t v4, int32_t n)
{
    for (; n >= 4; n -= 4, dst += 4) memcpy(dst, &v4, 4);
    for (; n > 0; n--) *dst++ = (int8_t)v4;
    return dst;
}

static inline int16_t *qc_fill16(int16_t *col, int32_t v, int32_t n)
{
    const uint32_t v2 = (uint32_t)(uint16_t)v * 0x00010001u;
    for (; n >= 8; n -= 8, col += 8) {
        memcpy(col, &v2, 4);
        memcpy(col + 2, &v2, 4);
        memcpy(col + 4, &v2, 4);
        memcpy(col + 6, &v2, 4);
    }
    for (; n >= 2; n -= 2, col += 2) memcpy(col, &v2, 4);
    if (n) *col++ = (int16_t)v;
    return col;
}

#if QC_USE_DSP
/* Two pixels' windows (rows runs of n int8 values each, stride bytes apart; n a multiple of 4),
 * then tail zeros, widened into one interleaved column: block j of pixel 0 (x0, x2, x1, x3)
 * followed by block j of pixel 1. Per 8 values of each pixel: 4 LDR (the runs need not be word
 * aligned), 8 SXTB16, one STM; a lone block of 4: 2 LDR, 4 SXTB16, STM. */
void qc_widen_pair_rows(int16_t *d, const int8_t *s0, const int8_t *s1, int32_t n, int32_t rows,
                        int32_t stride);

__asm__("\t.pushsection .text.qc_widen_pair_rows,\"ax\",%progbits\n"
        "\t.syntax unified\n"
        "\t.thumb\n"
        "\t.p2align 2\n"
        "\t.global qc_widen_pair_rows\n"
        "\t.type qc_widen_pair_rows, %function\n"
        "\t.thumb_func\n"
        "qc_widen_pair_rows:\n"
        "\tpush {r4-r11, lr}\n"
        "\tldr r12, [sp, #40]\n"
        "\tsub r12, r12, r3\n"          /* stride - n: from a run's end to the next */
        "1:\n"
        "\tsubs lr, r3, #8\n"
        "\tblt 3f\n"
        "2:\n"
        "\tldr r5, [r1], #4\n"
        "\tldr r7, [r2], #4\n"
        "\tldr r9, [r1], #4\n"
        "\tldr r11, [r2], #4\n"
        QC_SXTB16_8
        "\tstm r0!, {r4-r11}\n"
        "\tsubs lr, lr, #8\n"
        "\tbge 2b\n"
        "3:\n"
        "\ttst lr, #4\n"
        "\tbeq 4f\n"
        "\tldr r5, [r1], #4\n"
        "\tldr r7, [r2], #4\n"
        "\tsxtb16 r4, r5\n"
        "\tsxtb16 r5, r5, ror #8\n"
        "\tsxtb16 r6, r7\n"
        "\tsxtb16 r7, r7, ror #8\n"
        "\tstm r0!, {r4-r7}\n"
        "4:\n"
        "\tadd r1, r1, r12\n"
        "\tadd r2, r2, r12\n"
        "\tldr r4, [sp, #36]\n"
        "\tsubs r4, r4, #1\n"
        "\tstr r4, [sp, #36]\n"
        "\tbne 1b\n"
        "\tpop {r4-r11, pc}\n"
        "\t.size qc_widen_pair_rows, .-qc_widen_pair_rows\n"
        "\t.popsection\n");

static void qc_widen_pair(int16_t *d, const int8_t *s0, const int8_t *s1, int32_t n, int32_t rows, int32_t stride,
                          int32_t tail)
{
    qc_widen_pair_rows(d, s0, s1, n, rows, stride);
    if (tail) qc_fill16(d + 2 * n * rows, 0, 2 * tail);
}
#endif

/* The int8 values of a column in K order, staged in the upper half of the column's buffer
 * (2 * k_pad bytes), widened in place from the front: block j (4 bytes at k_pad + 4j) is
 * read before its 8 bytes at 8j are written, and 8j + 8 <= k_pad + 4j + 4 for every block,
 * so nothing is overwritten before it is read. */
static void qc_widen_staged(int16_t *col, int32_t k_pad)
{
    int32_t j;
    for (j = 0; j < k_pad; j += 4) {
#if QC_USE_DSP
        int32_t w[2];
        const uint32_t v = qc_ld32((const int8_t *)col + k_pad + j);
        w[0] = __sxtb16((int32_t)v);
        w[1] = qc_sxtb16_ror8(v);
        memcpy(col + j, w, 8);
#else
        int8_t b[4];
        memcpy(b, (const int8_t *)col + k_pad + j, 4);
        col[j] = b[0];
        col[j + 1] = b[2];
        col[j + 2] = b[1];
        col[j + 3] = b[3];
#endif
    }
}

/* One window (output pixel oy, ox; group g) into the column: the general path, for windows
 * that touch the padding (pads hold in_zp) and for layouts the driver cannot widen row by row. */
static QC_NOINLINE void qc_im2col(const qc_conv_params *p, const int8_t *in, int32_t oy, int32_t ox, int32_t g,
                                  int16_t *col)
{
    const int32_t cg = p->in_c / p->groups;
    const int32_t iy0 = oy * p->stride_h - p->pad_t, ix0 = ox * p->stride_w - p->pad_l;
    const int32_t kh = p->k_h, kw = p->k_w, dh = p->dil_h, dw = p->dil_w, in_w = p->in_w, in_c = p->in_c;
    const int32_t row = in_w * in_c;
    int32_t ky, kx;
    if (p->k_row) { /* kernel rows padded to k_row values: positions past kw * cg have zero weights */
        const int32_t lr = p->k_row;
        int16_t *c = col;
        for (ky = 0; ky < kh; ky++, c += lr) {
            const int32_t iy = iy0 + ky * dh;
            const int8_t *src;
            int32_t j = 0, ch;
            if (iy < 0 || iy >= p->in_h) {
                qc_fill16(c, p->in_zp, lr);
                continue;
            }
            if (iy * row + ix0 * in_c >= 0 && iy * row + ix0 * in_c + lr <= p->in_h * row) {
                /* the row's run lies in the tensor: widen it, then put the pad value where the
                 * window leaves the row (those bytes belong to the neighbouring rows) */
                qc_widen_rows(c, in + iy * row + ix0 * in_c, lr, 1, 0);
                for (kx = 0; kx < kw; kx++) {
                    const int32_t ix = ix0 + kx * dw;
                    if (ix < 0 || ix >= in_w)
                        for (ch = 0, j = kx * cg; ch < cg; ch++, j++) c[QC_COLPOS(j)] = (int16_t)p->in_zp;
                }
                continue;
            }
            src = in + iy * row;
            for (kx = 0; kx < kw; kx++) { /* j = kx * cg + ch, stored at its place in the 4-block */
                const int32_t ix = ix0 + kx * dw;
                if (ix >= 0 && ix < in_w)
                    for (ch = 0; ch < cg; ch++, j++) c[QC_COLPOS(j)] = src[ix * in_c + ch];
                else
                    for (ch = 0; ch < cg; ch++, j++) c[QC_COLPOS(j)] = (int16_t)p->in_zp;
            }
            for (; j < lr; j++) c[QC_COLPOS(j)] = 0;
        }
        qc_fill16(c, 0, p->k_pad - (int32_t)(c - col));
        return;
    }
    if ((cg & 3) == 0) { /* every run starts at a block boundary: widen straight into the column */
        int16_t *c = col;
        for (ky = 0; ky < kh; ky++) {
            const int32_t iy = iy0 + ky * dh;
            if (iy < 0 || iy >= p->in_h) {
                c = qc_fill16(c, p->in_zp, kw * cg);
                continue;
            }
            for (kx = 0; kx < kw;) {
                const int32_t ix = ix0 + kx * dw;
                if (ix < 0 || ix >= in_w) {
                    c = qc_fill16(c, p->in_zp, cg);
                    kx++;
                } else if (dw == 1 && cg == in_c) { /* the in-range part of the row is one run */
                    const int32_t n = (in_w - ix < kw - kx ? in_w - ix : kw - kx);
                    c = qc_widen_rows(c, in + iy * row + ix * in_c, n * cg, 1, 0);
                    kx += n;
                } else {
                    c = qc_widen_rows(c, in + iy * row + ix * in_c + g * cg, cg, 1, 0);
                    kx++;
                }
            }
        }
        qc_fill16(c, 0, p->k_pad - (int32_t)(c - col));
        return;
    }
    {
        const uint32_t zp4 = (uint8_t)p->in_zp * 0x01010101u;
        int8_t *st = (int8_t *)col + p->k_pad, *d = st;
        for (ky = 0; ky < kh; ky++) {
            const int32_t iy = iy0 + ky * dh;
            for (kx = 0; kx < kw; kx++) {
                const int32_t ix = ix0 + kx * dw;
                if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= in_w)
                    d = qc_fill(d, zp4, cg);
                else
                    d = qc_put(d, in + iy * row + ix * in_c + g * cg, cg);
            }
        }
        qc_fill(d, 0, p->k_pad - (int32_t)(d - st));
        qc_widen_staged(col, p->k_pad);
    }
}

/* n packed values from element e on (n a multiple of 4) into the column, each block of 4 as
 * x0, x2, x1, x3 (the k8 = 0 layout, for kernel rows of k_row values): a block's nibbles lie in
 * two or three bytes. */
static int16_t *qc_unpack_run(int16_t *c, const int8_t *in, int32_t e, int32_t n)
{
    for (; n > 0; n -= 4, e += 4, c += 4) {
        const uint8_t *b = (const uint8_t *)in + (e >> 1);
        uint32_t v = (uint32_t)b[0] | ((uint32_t)b[1] << 8);
        if (e & 1) v = (v >> 4) | ((uint32_t)(b[2] & 0x0F) << 12);
        c[0] = (int16_t)(v & 0xF);
        c[1] = (int16_t)((v >> 8) & 0xF);
        c[2] = (int16_t)((v >> 4) & 0xF);
        c[3] = (int16_t)(v >> 12);
    }
    return c;
}

/* One window of a packed input (pads hold in_zp) in the column layout (qc_colpos with k8):
 * runs of whole 8-groups are unpacked a word at a time, k_row runs a block at a time, anything
 * else element by element. */
static QC_NOINLINE void qc_im2col_pk(const qc_conv_params *p, const int8_t *in, int32_t oy, int32_t ox, int32_t g,
                                     int16_t *col)
{
    const int32_t cg = p->in_c / p->groups;
    const int32_t iy0 = oy * p->stride_h - p->pad_t, ix0 = ox * p->stride_w - p->pad_l;
    const int32_t kc = p->k_w * cg, lr = p->k_row ? p->k_row : kc, row = p->in_w * p->in_c;
    const int32_t aligned = (lr & 3) == 0; /* each kernel row starts a block of the column */
    int32_t ky, kx, j;
    for (ky = 0; ky < p->k_h; ky++) {
        const int32_t iy = iy0 + ky * p->dil_h, inrow = iy >= 0 && iy < p->in_h;
        int16_t *c = col + ky * lr;
        if (!inrow && aligned) {
            qc_fill16(c, p->in_zp, lr);
            continue;
        }
        if (p->k8) {
            for (kx = 0; kx < p->k_w; kx++) {
                const int32_t ix = ix0 + kx * p->dil_w;
                if (ix < 0 || ix >= p->in_w)
                    c = qc_fill16(c, p->in_zp, cg);
                else
                    c = qc_widen_rows_pk(c, in + ((iy * row + ix * p->in_c + g * cg) >> 1), cg, 1, 0);
            }
            continue;
        }
        if (p->k_row && inrow && ix0 >= 0 && ix0 + (p->k_w - 1) * p->dil_w < p->in_w &&
            iy * row + ix0 * p->in_c + lr <= p->in_h * row) {
            qc_unpack_run(c, in, iy * row + ix0 * p->in_c, lr);
            continue;
        }
        for (j = 0; j < lr; j++) {
            const int32_t kxj = j / cg, ix = ix0 + kxj * p->dil_w;
            const int32_t v = j >= kc ? 0 : inrow && ix >= 0 && ix < p->in_w
                                  ? qc_get(in, iy * row + ix * p->in_c + g * cg + j - kxj * cg, 1) : p->in_zp;
            col[qc_colpos(ky * lr + j, 0)] = (int16_t)v;
        }
    }
    qc_fill16(col + p->k_h * lr, 0, p->k_pad - p->k_h * lr);
}

/* Where a window lies wholly inside the input, its column is kh runs of `run` values, `rstride`
 * apart (one per kernel row), widened by one call; the driver walks the output row by row, knows
 * from the row and ox whether a window is inside, and calls qc_im2col / qc_im2col_pk only for
 * windows that touch the padding (and for layouts without whole rows: grouped, dilated along W,
 * channel counts that are not a multiple of 4 without k_row). */
static void qc_conv_group(const qc_conv_params *p, const int8_t *in, int8_t *out, int16_t *scratch, int32_t g,
                          qc_mm *t)
{
    const int32_t cg = p->in_c / p->groups, row = p->in_w * p->in_c, in_c = p->in_c;
    const int32_t out_w = p->out_w, out_c = p->out_c, stride_w = p->stride_w, pad_l = p->pad_l, kh = p->k_h;
    const int32_t in_pk = QC_PK(p->in_pk);
    const int32_t fast = in_pk ? (p->k8 && p->dil_w == 1 && cg == in_c) || p->k_row != 0
                               : p->k_row != 0 || ((cg & 3) == 0 && p->dil_w == 1 && cg == in_c);
    const int32_t osh = QC_PK(p->out_pk); /* element offsets to byte offsets */
    const int32_t run = p->k_row ? p->k_row : p->k_w * cg, rstride = p->dil_h * row;
    const int32_t tail = p->k_pad - kh * run;
    const int32_t iy_max = p->in_h - 1 - (kh - 1) * p->dil_h;
    /* windows inside along W: ox in [ox_lo, ox_hi] */
    const int32_t ox_lo = (pad_l + stride_w - 1) / stride_w, wx = p->in_w - 1 - (p->k_w - 1) * p->dil_w + pad_l;
    const int32_t ox_hi = wx < 0 ? -1 : wx / stride_w;
    /* k_row runs may read past the window's last row: only where that stays inside the tensor */
    const int32_t last = p->in_h * row - run - (kh - 1) * rstride;
    int16_t *col[2];
    int32_t oe = g * (out_c / p->groups); /* the pixel's first channel, as an element offset */
    int32_t oy, ox, j = 0;
#if QC_USE_DSP
    /* a pair's first pixel inside the input waits here (its window's start) until the second
     * is known: if that one is inside too, both are widened into one interleaved column */
    const int32_t pair = !in_pk && t->tile_i != 0;
    const int8_t *pend = 0;
#endif
    col[0] = scratch;
    col[1] = scratch + p->k_pad;
    for (oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_t;
        int32_t hi = fast && iy0 >= 0 && iy0 <= iy_max ? ox_hi : -1;
        int32_t base = iy0 * row + (ox_lo * stride_w - pad_l) * in_c; /* the window of ox = ox_lo */
        if (p->k_row && hi >= ox_lo && base + (hi - ox_lo) * stride_w * in_c > last)
            hi = base > last ? -1 : ox_lo + (last - base) / (stride_w * in_c);
        for (ox = 0; ox < out_w; ox++) {
            int16_t *c = col[j];
            if (ox >= ox_lo && ox <= hi) {
#if QC_USE_DSP
                if (pair && !j) {
                    pend = in + base;
                    base += stride_w * in_c;
                    j = 1;
                    continue;
                }
                if (pair && pend) {
                    qc_widen_pair(scratch, pend, in + base, run, kh, rstride, tail);
                    pend = 0;
                    base += stride_w * in_c;
                    qc_mm_run_i(t, scratch, out + (oe >> osh), out + ((oe + out_c) >> osh));
                    oe += 2 * out_c;
                    j = 0;
                    continue;
                }
#endif
                if (!in_pk) {
                    c = qc_widen_rows(c, in + base, run, kh, rstride);
                } else if (p->k8) {
                    c = qc_widen_rows_pk(c, in + (base >> 1), run, kh, rstride >> 1);
                } else {
                    int32_t ky;
                    for (ky = 0; ky < kh; ky++) c = qc_unpack_run(c, in, base + ky * rstride, run);
                }
                if (tail) qc_fill16(c, 0, tail);
                base += stride_w * in_c;
            } else if (in_pk) {
                qc_im2col_pk(p, in, oy, ox, g, c);
            } else {
                qc_im2col(p, in, oy, ox, g, c);
            }
#if QC_USE_DSP
            if (pend) { /* the second pixel is not inside: widen the first one on its own */
                int16_t *c0 = qc_widen_rows(col[0], pend, run, kh, rstride);
                if (tail) qc_fill16(c0, 0, tail);
                pend = 0;
            }
#endif
            if (j) {
                qc_mm_run(t, col[0], col[1], out + (oe >> osh), out + ((oe + out_c) >> osh));
                oe += 2 * out_c;
            }
            j ^= 1;
        }
    }
#if QC_USE_DSP
    if (pend) {
        int16_t *c0 = qc_widen_rows(col[0], pend, run, kh, rstride);
        if (tail) qc_fill16(c0, 0, tail);
    }
#endif
    if (j) qc_mm_run(t, col[0], col[0], out + (oe >> osh), 0);
}

void qc_conv(const qc_conv_params *p, const int8_t *in, int8_t *out, int16_t *scratch)
{
    const int32_t mg = p->out_c / p->groups;
    const int32_t pair_words = QC_PAIR_HEAD + (p->wbits == 8 ? p->k_pad : p->k_pad / 4) + QC_PAIR_TAIL;
    int32_t g;
    qc_mm t;
    for (g = 0; g < p->groups; g++) {
        qc_mm_init(&t, p->w + g * ((mg + 1) / 2) * pair_words, mg, p->k_pad, p->wbits, p->rq_fast, p->out_zp,
                   p->qmin, p->qmax, p->out_pk);
        qc_conv_group(p, in, out, scratch, g, &t);
    }
}

void qc_fc(const qc_fc_params *p, const int8_t *in, int8_t *out, int16_t *scratch)
{
    int32_t r;
    qc_mm t;
    qc_mm_init(&t, p->w, p->out_c, p->k_pad, p->wbits, p->rq_fast, p->out_zp, p->qmin, p->qmax, p->out_pk);
    for (r = 0; r < p->rows; r++) {
        if (QC_PK(p->in_pk) && p->k8) {
            qc_widen_rows_pk(scratch, in + ((r * p->k) >> 1), p->k, 1, 0);
        } else if (QC_PK(p->in_pk)) {
            int32_t j;
            for (j = 0; j < p->k_pad; j++) scratch[qc_colpos(j, 0)] = (int16_t)(j < p->k ? qc_get(in, r * p->k + j, 1) : 0);
        } else if ((p->k & 3) == 0) {
            qc_widen_rows(scratch, in + r * p->k, p->k, 1, 0);
        } else {
            int8_t *st = (int8_t *)scratch + p->k_pad;
            qc_fill(qc_put(st, in + r * p->k, p->k), 0, p->k_pad - p->k);
            qc_widen_staged(scratch, p->k_pad);
        }
        qc_mm_run(&t, scratch, scratch, out + ((r * p->out_c) >> QC_PK(p->out_pk)), 0);
    }
}

/* ---------------------------------------------------------------- depthwise */

/* Weight of output channel c at tap t (= ky * k_w + kx), grouped by 4 channels (out_c rounded
 * up to a multiple of 4), per group all taps: 8-bit weights as int16, per tap c0, c2, c1, c3
 * (the words (w0, w2), (w1, w3) pair with SXTB16 of 4 activations); 4-bit ones as int8, per tap
 * c0 .. c3 (one word, SXTB16 twice). */
static inline int32_t qc_dw_weight(const qc_dw_params *p, int32_t t, int32_t c)
{
    const int32_t i = ((c >> 2) * p->k_h * p->k_w + t) * 4;
    return p->wbits == 8 ? ((const int16_t *)p->w)[i + QC_COLPOS(c & 3)] : ((const int8_t *)p->w)[i + (c & 3)];
}

static inline int32_t qc_dw_rq(const qc_dw_params *p, int32_t acc, int32_t c)
{
    if (p->rq_fast) return qc_rqf(acc, p->mult[c], p->rnd[c], p->shift[c], p->qmin, p->qmax);
    return qc_rq(acc, p->mult[c], p->shift[c], p->out_zp, p->qmin, p->qmax);
}

#if QC_USE_DSP
/* One tap for 4 channels: a word of activations, SXTB16 twice, the group's next 2 weight words. */
#define QC_DW_TAP(xv)                                                 \
    do {                                                              \
        const uint32_t v_ = (xv);                                     \
        const int32_t x02_ = __sxtb16((int32_t)v_), x13_ = qc_sxtb16_ror8(v_); \
        a0 = __smlabb(x02_, wq[0], a0);                               \
        a2 = __smlatt(x02_, wq[0], a2);                               \
        a1 = __smlabb(x13_, wq[1], a1);                               \
        a3 = __smlatt(x13_, wq[1], a3);                               \
        wq += 2;                                                      \
    } while (0)

static inline int32_t qc_smmla(int32_t a, int32_t b, int32_t c)
{
    int32_t r;
    __asm__("smmla %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

/* Requantize and store 4 channels (c .. c + 3) of a depthwise output pixel. The fast form:
 * SSAT((hi32(acc * b) + rnd) >> s) per channel, one word store, and other bounds than
 * [-128, 127] (a fused ReLU / ReLU6) applied to the 4 bytes at once with SSUB8/SEL. */
static QC_NOINLINE void qc_dw4_store(const qc_dw_params *p, int32_t c, int32_t a0, int32_t a1, int32_t a2, int32_t a3,
                                int8_t *o)
{
    if (p->rq_fast) {
        const int32_t *b = p->mult + c, *r = p->rnd + c;
        const uint32_t sh = qc_ld32(p->shift + c);
        uint32_t y = (uint32_t)(uint8_t)__ssat(qc_smmla(a0, b[0], r[0]) >> (sh & 0xFF), 8) |
                     (uint32_t)(uint8_t)__ssat(qc_smmla(a1, b[1], r[1]) >> ((sh >> 8) & 0xFF), 8) << 8 |
                     (uint32_t)(uint8_t)__ssat(qc_smmla(a2, b[2], r[2]) >> ((sh >> 16) & 0xFF), 8) << 16 |
                     (uint32_t)__ssat(qc_smmla(a3, b[3], r[3]) >> (sh >> 24), 8) << 24;
        if (p->qmin != -128 || p->qmax != 127) {
            y = qc_max4(y, (uint8_t)p->qmin * 0x01010101u);
            y = qc_min4(y, (uint8_t)p->qmax * 0x01010101u);
        }
        memcpy(o, &y, 4);
    } else {
        o[0] = (int8_t)qc_dw_rq(p, a0, c);
        o[1] = (int8_t)qc_dw_rq(p, a1, c + 1);
        o[2] = (int8_t)qc_dw_rq(p, a2, c + 2);
        o[3] = (int8_t)qc_dw_rq(p, a3, c + 3);
    }
}

/* Channels c .. c + 3 of one output pixel whose window (corner x, at channel c) lies inside the
 * input: no bounds checks; 3-wide kernels unrolled. */
static QC_NOINLINE void qc_dw4_inside(const qc_dw_params *p, const int8_t *x, int32_t c, int8_t *o)
{
    const int32_t *wq = (const int32_t *)p->w + (c >> 1) * p->k_h * p->k_w;
    const int32_t kh = p->k_h, kw = p->k_w, xrow = p->dil_h * p->in_w * p->in_c, xcol = p->dil_w * p->in_c;
    int32_t a0 = p->bias[c], a1 = p->bias[c + 1], a2 = p->bias[c + 2], a3 = p->bias[c + 3], ky, kx;
    if (kw == 3) {
        const int32_t xcol2 = 2 * xcol;
        for (ky = 0; ky < kh; ky++, x += xrow) {
            QC_DW_TAP(qc_ld32(x));
            QC_DW_TAP(qc_ld32(x + xcol));
            QC_DW_TAP(qc_ld32(x + xcol2));
        }
    } else {
        for (ky = 0; ky < kh; ky++, x += xrow)
            for (kx = 0; kx < kw; kx++) QC_DW_TAP(qc_ld32(x + kx * xcol));
    }
    qc_dw4_store(p, c, a0, a1, a2, a3, o);
}

/* 4 channels of one output pixel, any window, for the layers the paths above do not take: packed
 * 4-bit activations (a halfword of 4 nibbles per tap, unpacked into the same lanes) and 4-bit
 * weights (int8, one word per tap); a packed output gets 2 bytes. */
static QC_NOINLINE void qc_dw4_gen(const qc_dw_params *p, const int8_t *in, int32_t iy0, int32_t ix0, int32_t c,
                                   int8_t *out, int32_t ob)
{
    const int32_t ntaps = p->k_h * p->k_w, xpk = QC_PK(p->in_pk), w8 = p->wbits == 8;
    const int32_t *wq = (const int32_t *)p->w + (c >> (w8 ? 1 : 2)) * ntaps;
    const int32_t zp2 = (int32_t)((uint32_t)(uint16_t)p->in_zp * 0x00010001u);
    int32_t a0 = p->bias[c], a1 = p->bias[c + 1], a2 = p->bias[c + 2], a3 = p->bias[c + 3], ky, kx;
    for (ky = 0; ky < p->k_h; ky++) {
        const int32_t iy = iy0 + ky * p->dil_h, row_ok = iy >= 0 && iy < p->in_h;
        for (kx = 0; kx < p->k_w; kx++) {
            const int32_t ix = ix0 + kx * p->dil_w;
            int32_t x02 = zp2, x13 = zp2, w02, w13;
            if (row_ok && ix >= 0 && ix < p->in_w) {
                const int32_t e = (iy * p->in_w + ix) * p->in_c + c;
                if (xpk) {
                    const uint8_t *b = (const uint8_t *)in + (e >> 1);
                    const uint32_t h = (uint32_t)b[0] | ((uint32_t)b[1] << 8);
                    x02 = (int32_t)((h & 0xFu) | ((h & 0xF00u) << 8));
                    x13 = (int32_t)(((h >> 4) & 0xFu) | ((h & 0xF000u) << 4));
                } else {
                    const uint32_t v = qc_ld32(in + e);
                    x02 = __sxtb16((int32_t)v);
                    x13 = qc_sxtb16_ror8(v);
                }
            }
            if (w8) {
                w02 = wq[0];
                w13 = wq[1];
                wq += 2;
            } else {
                w02 = __sxtb16(wq[0]);
                w13 = qc_sxtb16_ror8((uint32_t)wq[0]);
                wq += 1;
            }
            a0 = __smlabb(x02, w02, a0);
            a2 = __smlatt(x02, w02, a2);
            a1 = __smlabb(x13, w13, a1);
            a3 = __smlatt(x13, w13, a3);
        }
    }
    if (QC_PK(p->out_pk)) {
        uint8_t *o = (uint8_t *)out + ((ob + c) >> 1);
        o[0] = (uint8_t)(qc_dw_rq(p, a0, c) | (qc_dw_rq(p, a1, c + 1) << 4));
        o[1] = (uint8_t)(qc_dw_rq(p, a2, c + 2) | (qc_dw_rq(p, a3, c + 3) << 4));
    } else {
        qc_dw4_store(p, c, a0, a1, a2, a3, out + ob + c);
    }
}

#define QC_DW_MAXTAPS 25

/* void qc_dw9_groups(const int8_t *const *tp, const int32_t *w, const qc_dw9_args *a): qc_dw_pixel
 * for a 3x3 kernel in assembly: every 4-channel group of one output pixel, the taps read through
 * tp[0..8] at the group's offset (r2), the weights streamed with LDM (two taps per LDM), bias,
 * multipliers and roundings by LDM at the group's offset, shifts as one word (ASR by a register
 * uses its low byte). Per group: 9 x (2 LDR, 2 SXTB16, 4 SMLAxy) + 5 LDM of weights, then 39. */
typedef struct {
    const int32_t *bias, *mult, *rnd; /* 0, 4, 8 */
    const uint8_t *shift;             /* 12 */
    int8_t *out;                      /* 16: the pixel's channel 0 */
    int32_t n;                        /* 20: channels done, a multiple of 4 (> 0) */
    uint32_t lo4, hi4;                /* 24, 28: the bounds in each byte */
} qc_dw9_args;

void qc_dw9_groups(const int8_t *const *tp, const int32_t *w, const qc_dw9_args *a);

#define QC_DW9_TAP(off, wa, wb)                        \
    "\tldr r3, [r0, #" #off "]\n"                      \
    "\tldr r8, [r3, r2]\n"                             \
    "\tsxtb16 r9, r8, ror #8\n"                        \
    "\tsxtb16 r8, r8\n"                                \
    "\tsmlabb r4, r8, " wa ", r4\n"                    \
    "\tsmlatt r6, r8, " wa ", r6\n"                    \
    "\tsmlabb r5, r9, " wb ", r5\n"                    \
    "\tsmlatt r7, r9, " wb ", r7\n"
#define QC_DW9_TAP2(off0, off1)                        \
    "\tldm r1!, {r10, r11, r12, lr}\n"                 \
    QC_DW9_TAP(off0, "r10", "r11") QC_DW9_TAP(off1, "r12", "lr")

__asm__("\t.pushsection .text.qc_dw9_groups,\"ax\",%progbits\n"
        "\t.syntax unified\n"
        "\t.thumb\n"
        "\t.p2align 2\n"
        "\t.global qc_dw9_groups\n"
        "\t.type qc_dw9_groups, %function\n"
        "\t.thumb_func\n"
        "qc_dw9_groups:\n"
        "\tpush {r4-r11, lr}\n"
        "\tldm r2, {r4-r11}\n"
        "\tpush {r4-r11}\n"
        "\tmovs r2, #0\n"
        "1:\n"
        "\tldr r3, [sp]\n"
        "\tadd r3, r3, r2, lsl #2\n"
        "\tldm r3, {r4-r7}\n"
        QC_DW9_TAP2(0, 4)
        QC_DW9_TAP2(8, 12)
        QC_DW9_TAP2(16, 20)
        QC_DW9_TAP2(24, 28)
        "\tldm r1!, {r10, r11}\n"
        QC_DW9_TAP(32, "r10", "r11")
        "\tldr r3, [sp, #4]\n"
        "\tadd r3, r3, r2, lsl #2\n"
        "\tldm r3, {r8-r11}\n"
        "\tsmmul r4, r4, r8\n"
        "\tsmmul r5, r5, r9\n"
        "\tsmmul r6, r6, r10\n"
        "\tsmmul r7, r7, r11\n"
        "\tldr r3, [sp, #8]\n"
        "\tadd r3, r3, r2, lsl #2\n"
        "\tldm r3, {r8-r11}\n"
        "\tadd r4, r4, r8\n"
        "\tadd r5, r5, r9\n"
        "\tadd r6, r6, r10\n"
        "\tadd r7, r7, r11\n"
        "\tldr r3, [sp, #12]\n"
        "\tldr r3, [r3, r2]\n"
        "\tasr r4, r4, r3\n"
        "\tlsr r3, r3, #8\n"
        "\tasr r5, r5, r3\n"
        "\tlsr r3, r3, #8\n"
        "\tasr r6, r6, r3\n"
        "\tlsr r3, r3, #8\n"
        "\tasr r7, r7, r3\n"
        "\tssat r4, #8, r4\n"
        "\tssat r5, #8, r5\n"
        "\tssat r6, #8, r6\n"
        "\tssat r7, #8, r7\n"
        "\tbfi r4, r5, #8, #8\n"
        "\tbfi r6, r7, #8, #8\n"
        "\tpkhbt r4, r4, r6, lsl #16\n"
        "\tldrd r8, r9, [sp, #24]\n"
        "\tssub8 r12, r4, r8\n"
        "\tsel r4, r4, r8\n"
        "\tssub8 r12, r4, r9\n"
        "\tsel r4, r9, r4\n"
        "\tldr r3, [sp, #16]\n"
        "\tstr r4, [r3, r2]\n"
        "\tadds r2, r2, #4\n"
        "\tldr r3, [sp, #20]\n"
        "\tcmp r2, r3\n"
        "\tbne 1b\n"
        "\tadd sp, sp, #32\n"
        "\tpop {r4-r11, pc}\n"
        "\t.size qc_dw9_groups, .-qc_dw9_groups\n"
        "\t.popsection\n");

/* Every 4-channel group of one output pixel (8-bit weights, fast requantization), its kernel's
 * taps read through tp[t]: the tap's input pixel at channel 0, or, for a tap in the padding, a
 * pixel's worth of in_zp bytes. Per tap and group: LDR, 2 SXTB16, the weights (LDRD), 4 SMLAxy;
 * per group: the requantization, SSAT, clamp of the 4 bytes at once (SSUB8/SEL) and one store. */
static QC_NOINLINE void qc_dw_pixel(const qc_dw_params *p, const int8_t *const *tp, int32_t nt, int8_t *o)
{
    const int32_t oc4 = p->out_c & ~3;
    const int32_t *wq = (const int32_t *)p->w, *bias = p->bias, *mult = p->mult, *rnd = p->rnd;
    const uint8_t *shift = p->shift;
    const uint32_t lo4 = (uint8_t)p->qmin * 0x01010101u, hi4 = (uint8_t)p->qmax * 0x01010101u;
    int32_t c, t;
    for (c = 0; c < oc4; c += 4) {
        int32_t a0 = bias[c], a1 = bias[c + 1], a2 = bias[c + 2], a3 = bias[c + 3];
        uint32_t sh, y;
        if (nt == 9) {
            QC_DW_TAP(qc_ld32(tp[0] + c));
            QC_DW_TAP(qc_ld32(tp[1] + c));
            QC_DW_TAP(qc_ld32(tp[2] + c));
            QC_DW_TAP(qc_ld32(tp[3] + c));
            QC_DW_TAP(qc_ld32(tp[4] + c));
            QC_DW_TAP(qc_ld32(tp[5] + c));
            QC_DW_TAP(qc_ld32(tp[6] + c));
            QC_DW_TAP(qc_ld32(tp[7] + c));
            QC_DW_TAP(qc_ld32(tp[8] + c));
        } else {
            for (t = 0; t < nt; t++) QC_DW_TAP(qc_ld32(tp[t] + c));
        }
        sh = qc_ld32(shift + c);
        y = (uint32_t)(uint8_t)__ssat(qc_smmla(a0, mult[c], rnd[c]) >> (sh & 0xFF), 8) |
            (uint32_t)(uint8_t)__ssat(qc_smmla(a1, mult[c + 1], rnd[c + 1]) >> ((sh >> 8) & 0xFF), 8) << 8 |
            (uint32_t)(uint8_t)__ssat(qc_smmla(a2, mult[c + 2], rnd[c + 2]) >> ((sh >> 16) & 0xFF), 8) << 16 |
            (uint32_t)__ssat(qc_smmla(a3, mult[c + 3], rnd[c + 3]) >> (sh >> 24), 8) << 24;
        y = qc_min4(qc_max4(y, lo4), hi4);
        memcpy(o + c, &y, 4);
    }
}

/* The same for a window that touches the padding (pads read as zp4, the zero point in 4 bytes). */
static QC_NOINLINE void qc_dw4_border(const qc_dw_params *p, const int8_t *in, int32_t iy0, int32_t ix0, int32_t c,
                                      int8_t *o)
{
    const int32_t *wq = (const int32_t *)p->w + (c >> 1) * p->k_h * p->k_w;
    const uint32_t zp4 = (uint8_t)p->in_zp * 0x01010101u;
    int32_t a0 = p->bias[c], a1 = p->bias[c + 1], a2 = p->bias[c + 2], a3 = p->bias[c + 3], ky, kx;
    for (ky = 0; ky < p->k_h; ky++) {
        const int32_t iy = iy0 + ky * p->dil_h;
        for (kx = 0; kx < p->k_w; kx++) {
            const int32_t ix = ix0 + kx * p->dil_w;
            QC_DW_TAP(iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w
                          ? qc_ld32(in + (iy * p->in_w + ix) * p->in_c + c) : zp4);
        }
    }
    qc_dw4_store(p, c, a0, a1, a2, a3, o);
}
#endif

/* The bias has the input zero point folded in (bias - zp * sum of the channel's weights), so
 * pads read as zp and the taps multiply raw values. With the DSP extension, 8-bit weights and
 * ch_mult 1, channels go 4 at a time: per tap one word of activations, 2 SXTB16, 2 weight words,
 * 4 SMLAxy (a depthwise conv has no pairs of products to sum, so no SMLAD). With the fast
 * requantization a pixel's groups run in one call (qc_dw9_groups for 3x3, qc_dw_pixel otherwise)
 * through one pointer per tap, so no tap is bounds-checked: a tap in the padding points at the
 * output pixel itself, filled with in_zp beforehand (the output never aliases the input). */
void qc_depthwise(const qc_dw_params *p, const int8_t *in, int8_t *out)
{
    const int32_t oc = p->out_c, kh = p->k_h, kw = p->k_w, in_w = p->in_w, in_c = p->in_c;
    int32_t oy, ox, ky, kx, c;
#if QC_USE_DSP
    /* the paths qc_config.h leaves out (QC_DW) run the portable C */
    const int32_t simd = (QC_DW & 1) && p->wbits == 8 && p->ch_mult == 1 && !p->in_pk && !p->out_pk && oc >= 4;
    /* packed tensors (4 channels = whole bytes: an even channel count), 4-bit weights */
    const int32_t gen = (QC_DW & 2) && !simd && p->ch_mult == 1 && oc >= 4 &&
                        (!(p->in_pk || p->out_pk) || !(oc & 1));
    /* one pixel's groups at a time through tap pointers (fast requantization) */
    const int32_t px = simd && p->rq_fast && kh * kw <= QC_DW_MAXTAPS;
    const int32_t xrow = p->dil_h * in_w * in_c, xcol = p->dil_w * in_c; /* tap steps */
    qc_dw9_args a9;
    a9.bias = p->bias;
    a9.mult = p->mult;
    a9.rnd = p->rnd;
    a9.shift = p->shift;
    a9.out = out;
    a9.n = oc & ~3;
    a9.lo4 = (uint8_t)p->qmin * 0x01010101u;
    a9.hi4 = (uint8_t)p->qmax * 0x01010101u;
#endif
    for (oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_t;
        for (ox = 0; ox < p->out_w; ox++) {
            const int32_t ix0 = ox * p->stride_w - p->pad_l, ob = (oy * p->out_w + ox) * oc;
            c = 0;
#if QC_USE_DSP
            if (px) {
                /* tap pointers; taps in the padding read this output pixel, filled with in_zp
                 * first (a group's bytes are overwritten only after its taps are read) */
                const int8_t *tp[QC_DW_MAXTAPS];
                const int32_t inside = iy0 >= 0 && iy0 + (kh - 1) * p->dil_h < p->in_h && ix0 >= 0 &&
                                       ix0 + (kw - 1) * p->dil_w < in_w;
                int32_t t = 0;
                if (inside && kh == 3 && kw == 3) {
                    const int8_t *x = in + (iy0 * in_w + ix0) * in_c;
                    tp[0] = x;
                    tp[1] = x + xcol;
                    tp[2] = x + 2 * xcol;
                    tp[3] = x + xrow;
                    tp[4] = tp[3] + xcol;
                    tp[5] = tp[3] + 2 * xcol;
                    tp[6] = x + 2 * xrow;
                    tp[7] = tp[6] + xcol;
                    tp[8] = tp[6] + 2 * xcol;
                    t = 9;
                } else if (inside) {
                    const int8_t *x = in + (iy0 * in_w + ix0) * in_c;
                    for (ky = 0; ky < kh; ky++, x += xrow)
                        for (kx = 0; kx < kw; kx++, t++) tp[t] = x + kx * xcol;
                } else {
                    qc_fill(out + ob, (uint8_t)p->in_zp * 0x01010101u, oc & ~3);
                }
                for (ky = 0; ky < kh && !inside; ky++) { /* unsigned compares: one test per bound pair */
                    const int32_t iy = iy0 + ky * p->dil_h, rok = (uint32_t)iy < (uint32_t)p->in_h;
                    const int8_t *r = in + (iy * in_w + ix0) * in_c;
                    for (kx = 0; kx < kw; kx++, t++) {
                        const int32_t ix = ix0 + kx * p->dil_w;
                        tp[t] = rok && (uint32_t)ix < (uint32_t)in_w ? r + kx * xcol : out + ob;
                    }
                }
                if (t == 9) {
                    a9.out = out + ob;
                    qc_dw9_groups(tp, (const int32_t *)p->w, &a9);
                } else {
                    qc_dw_pixel(p, tp, t, out + ob);
                }
                c = oc & ~3;
            }
            if (gen)
                for (; c + 4 <= oc; c += 4) qc_dw4_gen(p, in, iy0, ix0, c, out, ob);
            if (simd) {
                const int32_t inside = iy0 >= 0 && iy0 + (kh - 1) * p->dil_h < p->in_h && ix0 >= 0 &&
                                       ix0 + (kw - 1) * p->dil_w < in_w;
                const int8_t *xw = inside ? in + (iy0 * in_w + ix0) * in_c : in;
                for (; c + 4 <= oc; c += 4) {
                    if (inside)
                        qc_dw4_inside(p, xw + c, c, out + ob + c);
                    else
                        qc_dw4_border(p, in, iy0, ix0, c, out + ob + c);
                }
            }
#endif
            for (; c < oc; c++) {
                const int32_t ic = c / p->ch_mult;
                int32_t acc = p->bias[c];
                for (ky = 0; ky < kh; ky++) {
                    const int32_t iy = iy0 + ky * p->dil_h;
                    for (kx = 0; kx < kw; kx++) {
                        const int32_t ix = ix0 + kx * p->dil_w;
                        const int32_t x = iy >= 0 && iy < p->in_h && ix >= 0 && ix < in_w
                                              ? qc_get(in, (iy * in_w + ix) * in_c + ic, p->in_pk) : p->in_zp;
                        acc += x * qc_dw_weight(p, ky * kw + kx, c);
                    }
                }
                qc_set(out, ob + c, qc_dw_rq(p, acc, c), p->out_pk);
            }
        }
    }
}

/* ---------------------------------------------------------------- pools */

#if QC_USE_DSP
/* The taps of a pool window that lie inside the input: ky in [*y0, *y1), kx in [*x0, *x1). */
static void qc_window(const qc_pool_params *p, int32_t iy0, int32_t ix0, int32_t *y0, int32_t *y1, int32_t *x0,
                      int32_t *x1)
{
    int32_t a = 0, b = p->k_h;
    while (a < b && iy0 + a * p->dil_h < 0) a++;
    while (b > a && iy0 + (b - 1) * p->dil_h >= p->in_h) b--;
    *y0 = a;
    *y1 = b;
    a = 0;
    b = p->k_w;
    while (a < b && ix0 + a * p->dil_w < 0) a++;
    while (b > a && ix0 + (b - 1) * p->dil_w >= p->in_w) b--;
    *x0 = a;
    *x1 = b;
}
#endif


void qc_maxpool(const qc_pool_params *p, const int8_t *in, int8_t *out)
{
#if QC_USE_DSP
    /* 2x2 windows, stride 2, no padding (the common case): 4 words in, 3 SIMD maxima, 1 out
     * per 4 channels. Each output is written after its window is read (in place is fine). */
    if (p->k_h == 2 && p->k_w == 2 && p->stride_h == 2 && p->stride_w == 2 && p->pad_t == 0 && p->pad_l == 0 &&
        p->dil_h == 1 && p->dil_w == 1 && (p->c & 3) == 0 && 2 * p->out_h <= p->in_h && 2 * p->out_w <= p->in_w &&
        !p->in_pk && !p->out_pk) {
        const int32_t c = p->c, row = p->in_w * c;
        int32_t oy, ox, j;
        int8_t *o = out;
        for (oy = 0; oy < p->out_h; oy++) {
            const int8_t *r0 = in + 2 * oy * row;
            for (ox = 0; ox < p->out_w; ox++, r0 += 2 * c) {
                for (j = 0; j < c; j += 4, o += 4) {
                    const uint32_t m = qc_max4(qc_max4(qc_ld32(r0 + j), qc_ld32(r0 + c + j)),
                                               qc_max4(qc_ld32(r0 + row + j), qc_ld32(r0 + row + c + j)));
                    memcpy(o, &m, 4);
                }
            }
        }
        return;
    }
#endif
    {
    /* Channel by channel (4 at a time with SSUB8/SEL), each output written after its
     * whole window is read: with pad_t == pad_l == 0 every later window starts at or
     * after the pixel just written, so the pool may run in place (the arena planner
     * relies on that). */
    int32_t oy, ox, ky, kx, c;
    for (oy = 0; oy < p->out_h; oy++) {
        for (ox = 0; ox < p->out_w; ox++) {
            const int32_t ob = (oy * p->out_w + ox) * p->c;
            c = 0;
#if QC_USE_DSP
            if ((p->c & 3) == 0 && !p->in_pk && !p->out_pk) { /* the window's inside part, no checks */
                const int32_t iy0 = oy * p->stride_h - p->pad_t, ix0 = ox * p->stride_w - p->pad_l;
                const int32_t ys = p->dil_h * p->in_w * p->c, xs = p->dil_w * p->c;
                int32_t y0, y1, x0, x1;
                const int8_t *base;
                qc_window(p, iy0, ix0, &y0, &y1, &x0, &x1);
                base = in + ((iy0 + y0 * p->dil_h) * p->in_w + ix0 + x0 * p->dil_w) * p->c;
                for (; c < p->c; c += 4) {
                    uint32_t m = 0x80808080u;
                    const int8_t *r = base + c;
                    for (ky = y0; ky < y1; ky++, r += ys) {
                        const int8_t *q = r;
                        for (kx = x0; kx < x1; kx++, q += xs) m = qc_max4(m, qc_ld32(q));
                    }
                    memcpy(out + ob + c, &m, 4);
                }
            }
#endif
            for (; c < p->c; c++) {
                int32_t m = -128;
                for (ky = 0; ky < p->k_h; ky++) {
                    const int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
                    if (iy < 0 || iy >= p->in_h) continue;
                    for (kx = 0; kx < p->k_w; kx++) {
                        const int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
                        int32_t v;
                        if (ix < 0 || ix >= p->in_w) continue;
                        v = qc_get(in, (iy * p->in_w + ix) * p->c + c, p->in_pk);
                        if (v > m) m = v;
                    }
                }
                qc_set(out, ob + c, m + p->out_zp, p->out_pk);
            }
        }
    }
}
}

#if QC_USE_DSP
/* Requantize 4 window sums given as 16-bit lanes (e: channels 0, 2; od: 1, 3) less nz each. */
static QC_NOINLINE void qc_avg4(const qc_pool_params *p, int32_t e, int32_t od, int32_t nz, int8_t *o)
{
    o[0] = (int8_t)qc_rq(qc_sext16((uint32_t)e) - nz, p->mult, p->shift, p->out_zp, p->qmin, p->qmax);
    o[1] = (int8_t)qc_rq(qc_sext16((uint32_t)od) - nz, p->mult, p->shift, p->out_zp, p->qmin, p->qmax);
    o[2] = (int8_t)qc_rq(qc_sext16((uint32_t)e >> 16) - nz, p->mult, p->shift, p->out_zp, p->qmin, p->qmax);
    o[3] = (int8_t)qc_rq(qc_sext16((uint32_t)od >> 16) - nz, p->mult, p->shift, p->out_zp, p->qmin, p->qmax);
}
#endif

void qc_avgpool(const qc_pool_params *p, const int8_t *in, int8_t *out)
{
    {
    /* Same order as qc_maxpool, so it may run in place when pad_t == pad_l == 0. */
    int32_t oy, ox, ky, kx, c;
    for (oy = 0; oy < p->out_h; oy++) {
        for (ox = 0; ox < p->out_w; ox++) {
            const int32_t ob = (oy * p->out_w + ox) * p->c;
            c = 0;
#if QC_USE_DSP
            /* 4 channels at a time over the window's inside part: SXTAB16 sums in 16-bit lanes
             * (at most 255 taps), the zero point taken off once per tap counted */
            if ((p->c & 3) == 0 && !p->in_pk && !p->out_pk && p->k_h * p->k_w <= 255) {
                const int32_t iy0 = oy * p->stride_h - p->pad_t, ix0 = ox * p->stride_w - p->pad_l;
                const int32_t ys = p->dil_h * p->in_w * p->c, xs = p->dil_w * p->c;
                int32_t y0, y1, x0, x1, nz;
                const int8_t *base;
                qc_window(p, iy0, ix0, &y0, &y1, &x0, &x1);
                nz = (y1 - y0) * (x1 - x0) * p->in_zp;
                base = in + ((iy0 + y0 * p->dil_h) * p->in_w + ix0 + x0 * p->dil_w) * p->c;
                for (; c < p->c; c += 4) {
                    int32_t e = 0, od = 0; /* lanes: channels c, c + 2 and c + 1, c + 3 */
                    const int8_t *r = base + c;
                    for (ky = y0; ky < y1; ky++, r += ys) {
                        const int8_t *q = r;
                        for (kx = x0; kx < x1; kx++, q += xs) {
                            const uint32_t v = qc_ld32(q);
                            e = __sxtab16(e, (int32_t)v);
                            od = __sxtab16(od, (int32_t)((v >> 8) | (v << 24)));
                        }
                    }
                    qc_avg4(p, e, od, nz, out + ob + c);
                }
            }
#endif
            for (; c < p->c; c++) {
                int32_t s = 0;
                for (ky = 0; ky < p->k_h; ky++) {
                    const int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
                    if (iy < 0 || iy >= p->in_h) continue;
                    for (kx = 0; kx < p->k_w; kx++) {
                        const int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
                        if (ix < 0 || ix >= p->in_w) continue;
                        s += qc_get(in, (iy * p->in_w + ix) * p->c + c, p->in_pk) - p->in_zp;
                    }
                }
                qc_set(out, ob + c, qc_rq(s, p->mult, p->shift, p->out_zp, p->qmin, p->qmax), p->out_pk);
            }
        }
    }
}
}

/* ---------------------------------------------------------------- elementwise */

void qc_add(const qc_add_params *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    /* The rounding term and all three zero points fold into one 64-bit start value S, so
     * y = floor((S + a * ma + b * mb) / 2^c). For 12 <= c <= 52 that is the high word of
     * (S + (a << s1) * ma + (b << s1) * mb) * 2^(32 - c - s1)... taken as: with s1 = 32 - c
     * (c < 32), the sum scaled by 2^s1 has y as its high word (a << s1 fits 16 bits); with
     * c >= 32 the high word shifted by s2 = c - 32. So each element is two multiply-accumulates
     * into a 64-bit start (SMLAL) and no 64-bit shift. No overflow: |a << s1| * ma < 2^58, |S| << s1
     * < 2^60. */
    if (p->shift >= 12 && p->shift <= 52) {
        const int32_t c = p->shift, s1 = c < 32 ? 32 - c : 0, s2 = c > 32 ? c - 32 : 0;
        const int64_t start = (((int64_t)1 << (c - 1)) - (int64_t)p->a_zp * p->ma - (int64_t)p->b_zp * p->mb +
                               (int64_t)p->out_zp * ((int64_t)1 << c)) * ((int64_t)1 << s1);
        const int32_t ma = p->ma, mb = p->mb, qmin = p->qmin, qmax = p->qmax, n = p->n;
        int32_t i;
        if (QC_PK(p->a_pk || p->b_pk || p->out_pk)) {
            for (i = 0; i < n; i++) {
                const int64_t v = start + (int64_t)(qc_get(a, i, p->a_pk) << s1) * ma +
                                  (int64_t)(qc_get(b, i, p->b_pk) << s1) * mb;
                qc_set(out, i, qc_clamp32(QC_ASR32((int32_t)QC_ASR64(v, 32), s2), qmin, qmax), p->out_pk);
            }
            return;
        }
        if (qmin == -128 && qmax == 127) {
            for (i = 0; i < n; i++) {
                const int64_t v = start + (int64_t)(a[i] * (1 << s1)) * ma + (int64_t)(b[i] * (1 << s1)) * mb;
                out[i] = (int8_t)qc_sat8(QC_ASR32((int32_t)QC_ASR64(v, 32), s2));
            }
        } else {
            for (i = 0; i < n; i++) {
                const int64_t v = start + (int64_t)(a[i] * (1 << s1)) * ma + (int64_t)(b[i] * (1 << s1)) * mb;
                out[i] = (int8_t)qc_clamp32(QC_ASR32((int32_t)QC_ASR64(v, 32), s2), qmin, qmax);
            }
        }
        return;
    }
    {
        const int64_t rnd = (int64_t)1 << (p->shift - 1);
        int32_t i;
        for (i = 0; i < p->n; i++) {
            const int64_t v = (int64_t)(qc_get(a, i, p->a_pk) - p->a_zp) * p->ma +
                              (int64_t)(qc_get(b, i, p->b_pk) - p->b_zp) * p->mb + rnd;
            const int64_t r = QC_ASR64(v, p->shift) + p->out_zp;
            qc_set(out, i, (int32_t)(r < p->qmin ? p->qmin : (r > p->qmax ? p->qmax : r)), p->out_pk);
        }
    }
}

void qc_requant(const qc_requant_params *p, const int8_t *in, int8_t *out)
{
    int32_t i;
    for (i = 0; i < p->n; i++)
        out[i] = (int8_t)qc_rq(in[i] - p->in_zp, p->mult, p->shift, p->out_zp, p->qmin, p->qmax);
}

void qc_clip(const int8_t *in, int8_t *out, int32_t n, int32_t lo, int32_t hi)
{
    int32_t i;
    for (i = 0; i < n; i++) out[i] = (int8_t)qc_clamp32(in[i], lo, hi);
}

/* ---------------------------------------------------------------- data movement */

void qc_copy(const int8_t *src, int8_t *dst, int32_t n, uint8_t xor_mask)
{
    int32_t i;
    for (i = 0; i < n; i++) dst[i] = (int8_t)((uint8_t)src[i] ^ xor_mask);
}

void qc_transpose3(const int8_t *src, int8_t *dst, int32_t d0, int32_t d1, int32_t d2, uint8_t xor_mask)
{
    int32_t a, b, c;
    for (a = 0; a < d0; a++) {
        const int8_t *s = src + a * d1 * d2;
        int8_t *d = dst + a * d1 * d2;
        for (b = 0; b < d1; b++)
            for (c = 0; c < d2; c++) d[c * d1 + b] = (int8_t)((uint8_t)s[b * d2 + c] ^ xor_mask);
    }
}

void qc_move(const qc_move_params *p, const int8_t *src, int8_t *dst)
{
    /* i = (a, b, c) in [d0][d1][d2] goes to (a, c, b) when transposing, else to i */
    const int32_t d1 = p->d1, d2 = p->d2, sb = p->transpose ? 1 : d2, sc = p->transpose ? d1 : 1;
    int32_t a, b, c, i = 0;
    for (a = 0; a < p->d0; a++) {
        for (b = 0; b < d1; b++) {
            int32_t j = a * d1 * d2 + b * sb;
            for (c = 0; c < d2; c++, i++, j += sc) {
                int32_t v = QC_PK(p->in_pk) ? qc_get(src, i, 1) + p->in_lo : src[i];
                v = qc_clamp32((int8_t)((uint8_t)v ^ (uint8_t)p->xor_in), p->lo, p->hi);
                qc_set(dst, j, QC_PK(p->out_pk) ? v - p->out_lo : (int8_t)((uint8_t)v ^ (uint8_t)p->xor_out),
                       p->out_pk);
            }
        }
    }
}

void qc_concat_inner(const int8_t *src, int8_t *dst, int32_t outer, int32_t len, int32_t out_len,
                     int32_t offset)
{
    int32_t i, j;
    for (i = 0; i < outer; i++)
        for (j = 0; j < len; j++) dst[i * out_len + offset + j] = src[i * len + j];
}
