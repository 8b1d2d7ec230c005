/*
 * qc_kernels.c - integer-only kernels for qcompiler's MCU target (see qc_kernels.h).
 *
 * Two implementations of every inner loop: one with the Armv7E-M/Armv8-M DSP
 * SIMD instructions (SXTB16 + SMLAD: two 16-bit MACs per instruction) and one in
 * portable C99 (Cortex-M0, host builds). Both compute the same integers.
 */
#include "qc_kernels.h"

#include <string.h>

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

static inline int32_t qc_clamp32(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

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

#endif

/* ---------------------------------------------------------------- conv / fully connected
 * The work is done in 2 x 2 tiles: two output channels (a weight row pair) x two
 * im2col columns (output pixels), acc[0..3] = (row 0, col 0), (row 0, col 1),
 * (row 1, col 0), (row 1, col 1). 4-bit layers accumulate 16x their value: the
 * weights are used as 16 * w (a nibble moved to the top of a byte) and the bias
 * is stored 16x; the fast requantization constants account for it. */

#if QC_USE_DSP
/* Arguments of the assembly tile kernels (field offsets are used by the assembly). */
typedef struct {
    const void *w;          /* 0: the first row pair */
    const int16_t *c0;      /* 4 */
    const int16_t *c1;      /* 8: may equal c0 (then o1 == o0) */
    int32_t col_bytes;      /* 12: 2 * k_pad */
    int32_t pair_bytes;     /* 16: weight bytes per row pair */
    int32_t head_bytes;     /* 20: weight bytes of the (k4 mod 4) blocks done one at a time */
    const int32_t *bias;    /* 24: advanced by the kernel */
    const int32_t *rq;      /* 28: per pair b0, rnd0, b1, rnd1, s0 | s1 << 8; advanced */
    int32_t end_all;        /* 32: scratch */
    int8_t *o0;             /* 36: advanced */
    int8_t *o1;             /* 40: advanced */
    int32_t npairs;         /* 44: counted down */
    uint32_t qmin4, qmax4;  /* 48, 52: bounds in each byte */
    int32_t clamp;          /* 56: 0 when [qmin, qmax] = [-128, 127] */
} qc_tile_args;

/* For every row pair: acc = bias; acc += W . col over K; requantize (fast form) and
 * store the four bytes. The dot product needs 14 registers (4 accumulators, 4 weight
 * words, 2 activation words, 3 pointers and the loop end), more than GCC can give an
 * inline asm statement, and LDM needs a fixed ascending register list, so these are
 * whole functions in assembly. Per block of 4 K indices, 8-bit weights (pre-widened to
 * int16 at compile time): 3 LDM + 8 SMLAD for 16 MACs; 4-bit: LDR + 2 AND + LSL +
 * 4 SXTB16 + 2 LDM + 8 SMLAD. Blocks are done one at a time until the rest is a
 * multiple of 4, then 4 per loop iteration. */
void qc_tile_w16(qc_tile_args *a);
void qc_tile_w4(qc_tile_args *a);

#define QC_TILE_FUNC(name, STEP)                                         \
    "\t.pushsection .text." #name ",\"ax\",%progbits\n"                 \
    "\t.syntax unified\n"                                               \
    "\t.thumb\n"                                                        \
    "\t.p2align 2\n"                                                    \
    "\t.global " #name "\n"                                             \
    "\t.type " #name ", %function\n"                                    \
    "\t.thumb_func\n"                                                   \
    #name ":\n"                                                         \
    "\tpush {r4-r11, lr}\n"                                             \
    "\tpush {r0}\n"                                                     \
    "\tldm r0, {r0-r2}\n"                                               \
    "0:\n"                                                              \
    "\tldr lr, [sp]\n"                                                  \
    "\tldr r3, [lr, #24]\n"                                             \
    "\tldrd r4, r6, [r3], #8\n"                                         \
    "\tstr r3, [lr, #24]\n"                                             \
    "\tmov r5, r4\n"                                                    \
    "\tmov r7, r6\n"                                                    \
    "\tldrd r3, r12, [lr, #16]\n"                                       \
    "\tadd r3, r0, r3\n"                                                \
    "\tstr r3, [lr, #32]\n"                                             \
    "\tadd r3, r0, r12\n"                                               \
    "\tcmp r0, r3\n"                                                    \
    "\tbeq 2f\n"                                                        \
    "1:\n" STEP                                                         \
    "\tcmp r0, r3\n"                                                    \
    "\tbne 1b\n"                                                        \
    "2:\n"                                                              \
    "\tldr lr, [sp]\n"                                                  \
    "\tldr r3, [lr, #32]\n"                                             \
    "\tcmp r0, r3\n"                                                    \
    "\tbeq 4f\n"                                                        \
    "3:\n" STEP STEP STEP STEP                                          \
    "\tcmp r0, r3\n"                                                    \
    "\tbne 3b\n"                                                        \
    "\tldr lr, [sp]\n"                                                  \
    "4:\n"                                                              \
    "\tldr r3, [lr, #12]\n"                                             \
    "\tsub r1, r1, r3\n"                                                \
    "\tsub r2, r2, r3\n"                                                \
    "\tldr r3, [lr, #28]\n"                                             \
    "\tldm r3!, {r8-r12}\n"                                             \
    "\tstr r3, [lr, #28]\n"                                             \
    "\tsmmul r4, r4, r8\n"                                              \
    "\tsmmul r5, r5, r8\n"                                              \
    "\tsmmul r6, r6, r10\n"                                             \
    "\tsmmul r7, r7, r10\n"                                             \
    "\tadd r4, r4, r9\n"                                                \
    "\tadd r5, r5, r9\n"                                                \
    "\tadd r6, r6, r11\n"                                               \
    "\tadd r7, r7, r11\n"                                               \
    "\tasr r4, r4, r12\n"                                               \
    "\tasr r5, r5, r12\n"                                               \
    "\tlsr r12, r12, #8\n"                                              \
    "\tasr r6, r6, r12\n"                                               \
    "\tasr r7, r7, r12\n"                                               \
    "\tssat r4, #8, r4\n"                                               \
    "\tssat r5, #8, r5\n"                                               \
    "\tssat r6, #8, r6\n"                                               \
    "\tssat r7, #8, r7\n"                                               \
    "\tldrd r8, r9, [lr, #36]\n"                                        \
    "\tldr r3, [lr, #56]\n"                                             \
    "\tcbz r3, 5f\n"                                                    \
    "\tbfi r4, r6, #8, #8\n"                                            \
    "\tbfi r5, r7, #8, #8\n"                                            \
    "\tpkhbt r4, r4, r5, lsl #16\n"                                     \
    "\tldrd r10, r11, [lr, #48]\n"                                      \
    "\tssub8 r3, r4, r10\n"                                             \
    "\tsel r4, r4, r10\n"                                               \
    "\tssub8 r3, r4, r11\n"                                             \
    "\tsel r4, r11, r4\n"                                               \
    "\tlsr r5, r4, #16\n"                                               \
    "\tstrh r4, [r8], #2\n"                                             \
    "\tstrh r5, [r9], #2\n"                                             \
    "\tb 6f\n"                                                          \
    "5:\n"                                                              \
    "\tstrb r4, [r8], #1\n"                                             \
    "\tstrb r6, [r8], #1\n"                                             \
    "\tstrb r5, [r9], #1\n"                                             \
    "\tstrb r7, [r9], #1\n"                                             \
    "6:\n"                                                              \
    "\tstrd r8, r9, [lr, #36]\n"                                        \
    "\tldr r3, [lr, #44]\n"                                             \
    "\tsubs r3, r3, #1\n"                                               \
    "\tstr r3, [lr, #44]\n"                                             \
    "\tbne 0b\n"                                                        \
    "\tstr r0, [lr]\n"                                                  \
    "\tadd sp, sp, #4\n"                                                \
    "\tpop {r4-r11, pc}\n"                                              \
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
 * to the top of a byte (16x its value) and sign extended in pairs. */
#define QC_STEP_W4                   \
    "\tldr r8, [r0], #4\n"           \
    "\tldm r1!, {r12, lr}\n"         \
    "\tand r9, r8, #0xF0F0F0F0\n"    \
    "\tlsl r8, r8, #4\n"             \
    "\tand r8, r8, #0xF0F0F0F0\n"    \
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

__asm__(QC_TILE_FUNC(qc_tile_w16, QC_STEP_W16) QC_TILE_FUNC(qc_tile_w4, QC_STEP_W4));
#endif

/* Portable 2 x 2 dot product (also the DSP build's path for an odd last channel and
 * for layers without the fast requantization). */
static void qc_dot2x2(const void *w, const int16_t *c0, const int16_t *c1, int32_t k4, int32_t wbits,
                      int32_t *acc)
{
    int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    int32_t b, i;
    if (wbits == 8) {
        const int16_t *wr = (const int16_t *)w;
        for (b = 0; b < k4; b++, wr += 8, c0 += 4, c1 += 4) {
            for (i = 0; i < 4; i++) {
                a00 += wr[i] * c0[i];
                a01 += wr[i] * c1[i];
                a10 += wr[4 + i] * c0[i];
                a11 += wr[4 + i] * c1[i];
            }
        }
    } else {
        const uint8_t *wb = (const uint8_t *)w;
        for (b = 0; b < k4; b++, wb += 4, c0 += 4, c1 += 4) {
            for (i = 0; i < 4; i++) {
                const int32_t pos = QC_COLPOS(i);
                const int32_t w0 = 16 * qc_sext4(wb[i]), w1 = 16 * qc_sext4(wb[i] >> 4);
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

/* Requantize a 2 x 2 tile (channels m, m + 1 of pixels o0, o1) and store it; o1 may be 0,
 * channel m + 1 is skipped when two_m is 0. rq_fast: mult points at the pair's 5 words. */
static void qc_store_tile(int8_t *o0, int8_t *o1, int32_t m, int32_t two_m, int32_t *acc, int32_t wbits,
                          int32_t rq_fast, const int32_t *mult, const uint8_t *shift, int32_t zp, int32_t qmin,
                          int32_t qmax)
{
    int32_t i;
    if (rq_fast) {
        const int32_t *q = mult + 5 * (m / 2);
        const int32_t s0 = q[4] & 0xFF, s1 = (q[4] >> 8) & 0xFF;
        o0[m] = (int8_t)qc_rqf(acc[0], q[0], q[1], s0, qmin, qmax);
        if (o1) o1[m] = (int8_t)qc_rqf(acc[1], q[0], q[1], s0, qmin, qmax);
        if (two_m) {
            o0[m + 1] = (int8_t)qc_rqf(acc[2], q[2], q[3], s1, qmin, qmax);
            if (o1) o1[m + 1] = (int8_t)qc_rqf(acc[3], q[2], q[3], s1, qmin, qmax);
        }
        return;
    }
    if (wbits == 4)
        for (i = 0; i < 4; i++) acc[i] = QC_ASR32(acc[i], 4); /* exact: every term is a multiple of 16 */
    o0[m] = (int8_t)qc_rq(acc[0], mult[m], shift[m], zp, qmin, qmax);
    if (o1) o1[m] = (int8_t)qc_rq(acc[1], mult[m], shift[m], zp, qmin, qmax);
    if (two_m) {
        o0[m + 1] = (int8_t)qc_rq(acc[2], mult[m + 1], shift[m + 1], zp, qmin, qmax);
        if (o1) o1[m + 1] = (int8_t)qc_rq(acc[3], mult[m + 1], shift[m + 1], zp, qmin, qmax);
    }
}

/* Channels [m0, mg) of one or two pixels: the tiles the assembly kernels do not take. */
static void qc_tiles_c(const uint8_t *w, int32_t pair_bytes, const int16_t *c0, const int16_t *c1, int32_t k4,
                       int32_t wbits, int32_t m0, int32_t mg, const int32_t *bias, int32_t rq_fast,
                       const int32_t *mult, const uint8_t *shift, int32_t zp, int32_t qmin, int32_t qmax,
                       int8_t *o0, int8_t *o1)
{
    int32_t m;
    for (m = m0; m < mg; m += 2) {
        const int32_t two_m = m + 1 < mg;
        int32_t acc[4];
        acc[0] = acc[1] = bias[m];
        acc[2] = acc[3] = two_m ? bias[m + 1] : 0;
        qc_dot2x2(w + (m / 2) * pair_bytes, c0, c1, k4, wbits, acc);
        qc_store_tile(o0, o1, m, two_m, acc, wbits, rq_fast, mult, shift, zp, qmin, qmax);
    }
}

/* One or two pixels (c1 == c0 and o1 == 0 for one) against all mg channels of a group. */
static void qc_pixels(const void *w, int32_t pair_bytes, const int16_t *c0, const int16_t *c1, int32_t k_pad,
                      int32_t wbits, int32_t mg, const int32_t *bias, int32_t rq_fast, const int32_t *mult,
                      const uint8_t *shift, int32_t zp, int32_t qmin, int32_t qmax, int8_t *o0, int8_t *o1)
{
    int32_t m0 = 0;
#if QC_USE_DSP
    if (rq_fast && mg >= 2) {
        qc_tile_args a;
        const int32_t k4 = k_pad / 4;
        a.w = w;
        a.c0 = c0;
        a.c1 = c1;
        a.col_bytes = 2 * k_pad;
        a.pair_bytes = pair_bytes;
        a.head_bytes = (k4 & 3) * (wbits == 8 ? 16 : 4);
        a.bias = bias;
        a.rq = mult;
        a.end_all = 0;
        a.o0 = o0;
        a.o1 = o1 ? o1 : o0;
        a.npairs = mg / 2;
        a.qmin4 = (uint8_t)qmin * 0x01010101u;
        a.qmax4 = (uint8_t)qmax * 0x01010101u;
        a.clamp = qmin != -128 || qmax != 127;
        if (wbits == 8)
            qc_tile_w16(&a);
        else
            qc_tile_w4(&a);
        m0 = 2 * (mg / 2);
    }
#endif
    qc_tiles_c((const uint8_t *)w, pair_bytes, c0, c1, k_pad / 4, wbits, m0, mg, bias, rq_fast, mult, shift, zp,
               qmin, qmax, o0, o1);
}

/* Copy n int8 values to positions k.. of an im2col column. */
static inline int32_t qc_col_put(int16_t *col, int32_t k, const int8_t *src, int32_t n)
{
    int32_t i = 0;
#if QC_USE_DSP
    if ((k & 3) == 0) {
        for (; i + 4 <= n; i += 4, k += 4) {
            uint32_t v = qc_ld32(src + i);
            int32_t lo = __sxtb16((int32_t)v), hi = qc_sxtb16_ror8(v);
            memcpy(col + k, &lo, 4);
            memcpy(col + k + 2, &hi, 4);
        }
    }
#endif
    for (; i < n; i++, k++) col[QC_COLPOS(k)] = src[i];
    return k;
}

static void qc_im2col(const qc_conv_params *p, const int8_t *in, int32_t oy, int32_t ox, int32_t g, int16_t *col)
{
    const int32_t cg = p->in_c / p->groups;
    const int32_t iy0 = oy * p->stride_h - p->pad_t, ix0 = ox * p->stride_w - p->pad_l;
    const int32_t kh = p->k_h, kw = p->k_w, dh = p->dil_h, dw = p->dil_w, in_w = p->in_w, in_c = p->in_c;
    int32_t k = 0, ky, kx, c;
    if (iy0 >= 0 && iy0 + (kh - 1) * dh < p->in_h && ix0 >= 0 && ix0 + (kw - 1) * dw < in_w) {
        const int8_t *base = in + (iy0 * in_w + ix0) * in_c + g * cg;
        if (dw == 1 && cg == in_c) { /* each kernel row is one run of kw * cg bytes */
            for (ky = 0; ky < kh; ky++) k = qc_col_put(col, k, base + ky * dh * in_w * in_c, kw * cg);
        } else {
            for (ky = 0; ky < kh; ky++)
                for (kx = 0; kx < kw; kx++)
                    k = qc_col_put(col, k, base + (ky * dh * in_w + kx * dw) * in_c, cg);
        }
    } else {
        const int16_t zp = (int16_t)p->in_zp;
        for (ky = 0; ky < kh; ky++) {
            const int32_t iy = iy0 + ky * dh;
            for (kx = 0; kx < kw; kx++) {
                const int32_t ix = ix0 + kx * dw;
                if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= in_w) {
                    for (c = 0; c < cg; c++, k++) col[QC_COLPOS(k)] = zp;
                } else {
                    k = qc_col_put(col, k, in + (iy * in_w + ix) * in_c + g * cg, cg);
                }
            }
        }
    }
    for (; k < p->k_pad; k++) col[QC_COLPOS(k)] = 0;
}

void qc_conv(const qc_conv_params *p, const int8_t *in, int8_t *out, int16_t *scratch)
{
    const int32_t mg = p->out_c / p->groups;
    const int32_t pairs = (mg + 1) / 2; /* rows of a group are padded to an even count */
    const int32_t npx = p->out_h * p->out_w;
    const int32_t pair_bytes = p->wbits == 8 ? 4 * p->k_pad : p->k_pad;
    int16_t *col0 = scratch, *col1 = scratch + p->k_pad;
    int32_t g, px;
    for (g = 0; g < p->groups; g++) {
        const uint8_t *wg = (const uint8_t *)p->w + g * pairs * pair_bytes;
        const int32_t *mult = p->mult + (p->rq_fast ? 5 * pairs : mg) * g;
        int32_t oy = 0, ox = 0;
        for (px = 0; px < npx; px += 2) {
            const int32_t two = px + 1 < npx;
            int8_t *o0 = out + px * p->out_c + g * mg;
            qc_im2col(p, in, oy, ox, g, col0);
            if (++ox == p->out_w) ox = 0, oy++;
            if (two) {
                qc_im2col(p, in, oy, ox, g, col1);
                if (++ox == p->out_w) ox = 0, oy++;
            }
            qc_pixels(wg, pair_bytes, col0, two ? col1 : col0, p->k_pad, p->wbits, mg, p->bias + g * mg, p->rq_fast,
                      mult, p->shift + g * mg, p->out_zp, p->qmin, p->qmax, o0, two ? o0 + p->out_c : 0);
        }
    }
}

void qc_fc(const qc_fc_params *p, const int8_t *in, int8_t *out, int16_t *scratch)
{
    const int32_t pair_bytes = p->wbits == 8 ? 4 * p->k_pad : p->k_pad;
    int32_t r, k;
    for (r = 0; r < p->rows; r++) {
        const int8_t *x = in + r * p->k;
        k = qc_col_put(scratch, 0, x, p->k);
        for (; k < p->k_pad; k++) scratch[QC_COLPOS(k)] = 0;
        qc_pixels(p->w, pair_bytes, scratch, scratch, p->k_pad, p->wbits, p->out_c, p->bias, p->rq_fast, p->mult,
                  p->shift, p->out_zp, p->qmin, p->qmax, out + r * p->out_c, 0);
    }
}

/* ---------------------------------------------------------------- depthwise */

static inline int32_t qc_dw_weight(const qc_dw_params *p, int32_t idx)
{
    if (p->wbits == 8) return p->w[idx];
    {
        int32_t b = (uint8_t)p->w[idx >> 1];
        return qc_sext4((idx & 1) ? (b >> 4) : b);
    }
}

void qc_depthwise(const qc_dw_params *p, const int8_t *in, int8_t *out)
{
    int32_t oy, ox, ky, kx, c;
    for (oy = 0; oy < p->out_h; oy++) {
        for (ox = 0; ox < p->out_w; ox++) {
            int8_t *o = out + (oy * p->out_w + ox) * p->out_c;
            c = 0;
#if QC_USE_DSP
            if (p->wbits == 8 && p->ch_mult == 1) {
                const int32_t zp2 = (int32_t)(((uint32_t)(uint16_t)p->in_zp << 16) | (uint16_t)p->in_zp);
                for (; c + 4 <= p->out_c; c += 4) {
                    int32_t a0 = p->bias[c], a1 = p->bias[c + 1], a2 = p->bias[c + 2], a3 = p->bias[c + 3];
                    for (ky = 0; ky < p->k_h; ky++) {
                        const int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
                        if (iy < 0 || iy >= p->in_h) continue;
                        for (kx = 0; kx < p->k_w; kx++) {
                            const int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
                            uint32_t xv, wv;
                            int32_t x02, x13, w02, w13;
                            if (ix < 0 || ix >= p->in_w) continue;
                            xv = qc_ld32(in + (iy * p->in_w + ix) * p->in_c + c);
                            wv = qc_ld32(p->w + (ky * p->k_w + kx) * p->out_c + c);
                            x02 = __ssub16(__sxtb16((int32_t)xv), zp2);
                            x13 = __ssub16(qc_sxtb16_ror8(xv), zp2);
                            w02 = __sxtb16((int32_t)wv);
                            w13 = qc_sxtb16_ror8(wv);
                            a0 = __smlabb(x02, w02, a0);
                            a2 = __smlatt(x02, w02, a2);
                            a1 = __smlabb(x13, w13, a1);
                            a3 = __smlatt(x13, w13, a3);
                        }
                    }
                    o[c] = (int8_t)qc_rq(a0, p->mult[c], p->shift[c], p->out_zp, p->qmin, p->qmax);
                    o[c + 1] = (int8_t)qc_rq(a1, p->mult[c + 1], p->shift[c + 1], p->out_zp, p->qmin, p->qmax);
                    o[c + 2] = (int8_t)qc_rq(a2, p->mult[c + 2], p->shift[c + 2], p->out_zp, p->qmin, p->qmax);
                    o[c + 3] = (int8_t)qc_rq(a3, p->mult[c + 3], p->shift[c + 3], p->out_zp, p->qmin, p->qmax);
                }
            }
#endif
            for (; c < p->out_c; c++) {
                const int32_t ic = c / p->ch_mult;
                int32_t acc = p->bias[c];
                for (ky = 0; ky < p->k_h; ky++) {
                    const int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
                    if (iy < 0 || iy >= p->in_h) continue;
                    for (kx = 0; kx < p->k_w; kx++) {
                        const int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
                        if (ix < 0 || ix >= p->in_w) continue;
                        acc += (in[(iy * p->in_w + ix) * p->in_c + ic] - p->in_zp) *
                               qc_dw_weight(p, (ky * p->k_w + kx) * p->out_c + c);
                    }
                }
                o[c] = (int8_t)qc_rq(acc, p->mult[c], p->shift[c], p->out_zp, p->qmin, p->qmax);
            }
        }
    }
}

/* ---------------------------------------------------------------- pools */

void qc_maxpool(const qc_pool_params *p, const int8_t *in, int8_t *out)
{
    /* Channel by channel (4 at a time with SSUB8/SEL), each output written after its
     * whole window is read: with pad_t == pad_l == 0 every later window starts at or
     * after the pixel just written, so the pool may run in place (the arena planner
     * relies on that). */
    int32_t oy, ox, ky, kx, c;
    for (oy = 0; oy < p->out_h; oy++) {
        for (ox = 0; ox < p->out_w; ox++) {
            int8_t *o = out + (oy * p->out_w + ox) * p->c;
            c = 0;
#if QC_USE_DSP
            if ((p->c & 3) == 0) {
                for (; c < p->c; c += 4) {
                    uint32_t m = 0x80808080u;
                    for (ky = 0; ky < p->k_h; ky++) {
                        const int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
                        if (iy < 0 || iy >= p->in_h) continue;
                        for (kx = 0; kx < p->k_w; kx++) {
                            const int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
                            uint32_t v, t;
                            if (ix < 0 || ix >= p->in_w) continue;
                            v = qc_ld32(in + (iy * p->in_w + ix) * p->c + c);
                            __asm__("ssub8 %0, %1, %2\n\tsel %0, %1, %2" : "=&r"(t) : "r"(v), "r"(m) : "cc");
                            m = t;
                        }
                    }
                    memcpy(o + c, &m, 4);
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
                        v = in[(iy * p->in_w + ix) * p->c + c];
                        if (v > m) m = v;
                    }
                }
                o[c] = (int8_t)m;
            }
        }
    }
}

void qc_avgpool(const qc_pool_params *p, const int8_t *in, int8_t *out)
{
    /* Same order as qc_maxpool, so it may run in place when pad_t == pad_l == 0. */
    int32_t oy, ox, ky, kx, c;
    for (oy = 0; oy < p->out_h; oy++) {
        for (ox = 0; ox < p->out_w; ox++) {
            int8_t *o = out + (oy * p->out_w + ox) * p->c;
            for (c = 0; c < p->c; c++) {
                int32_t s = 0;
                for (ky = 0; ky < p->k_h; ky++) {
                    const int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
                    if (iy < 0 || iy >= p->in_h) continue;
                    for (kx = 0; kx < p->k_w; kx++) {
                        const int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
                        if (ix < 0 || ix >= p->in_w) continue;
                        s += in[(iy * p->in_w + ix) * p->c + c] - p->in_zp;
                    }
                }
                o[c] = (int8_t)qc_rq(s, p->mult, p->shift, p->out_zp, p->qmin, p->qmax);
            }
        }
    }
}

/* ---------------------------------------------------------------- elementwise */

void qc_add(const qc_add_params *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    const int64_t rnd = (int64_t)1 << (p->shift - 1);
    int32_t i;
    for (i = 0; i < p->n; i++) {
        int64_t v = (int64_t)(a[i] - p->a_zp) * p->ma + (int64_t)(b[i] - p->b_zp) * p->mb + rnd;
        int64_t r = QC_ASR64(v, p->shift) + p->out_zp;
        out[i] = (int8_t)(r < p->qmin ? p->qmin : (r > p->qmax ? p->qmax : r));
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

void qc_concat_inner(const int8_t *src, int8_t *dst, int32_t outer, int32_t len, int32_t out_len,
                     int32_t offset)
{
    int32_t i, j;
    for (i = 0; i < outer; i++)
        for (j = 0; j < len; j++) dst[i * out_len + offset + j] = src[i * len + j];
}
