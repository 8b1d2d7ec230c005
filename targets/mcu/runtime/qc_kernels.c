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

/* Position of K index k in the DSP im2col buffer: each group of 4 is stored as
 * x0, x2, x1, x3 so that a 32-bit load yields the pair that __sxtb16 of a weight
 * word yields (bytes 0 and 2, then bytes 1 and 3). */
#define QC_COLPOS(k) (((k) & ~3) | (((k) & 1) << 1) | (((k) >> 1) & 1))
#else
#define QC_COLPOS(k) (k)
#endif

/* ---------------------------------------------------------------- dot products
 * Weight rows come in pairs, interleaved in blocks of 4 bytes (row 2p block j,
 * then row 2p+1 block j): one LDRD fetches both rows' next block. A block is 4
 * weights (8-bit) or 8 weights (4-bit: byte i = w_i | w_{i+4} << 4). k_pad is a
 * multiple of 8, so every loop below runs whole blocks. */

#if QC_USE_DSP
/* 8-bit, two rows x two columns; 8 weights of each row per iteration. */
static void qc_dot2x2_s8(const int8_t *w, const int16_t *c0, const int16_t *c1, int32_t k_pad, int32_t *acc)
{
    int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    const int8_t *wend = w + 2 * k_pad;
    int32_t wa, wb, t0, t1, x0, x1;
#define QC_STEP2X2                                   \
    "ldrd %[wa], %[wb], [%[w]], #8\n\t"              \
    "ldrd %[x0], %[x1], [%[c0]], #8\n\t"             \
    "sxtb16 %[t0], %[wa]\n\t"                        \
    "sxtb16 %[wa], %[wa], ror #8\n\t"                \
    "sxtb16 %[t1], %[wb]\n\t"                        \
    "sxtb16 %[wb], %[wb], ror #8\n\t"                \
    "smlad %[a00], %[t0], %[x0], %[a00]\n\t"         \
    "smlad %[a00], %[wa], %[x1], %[a00]\n\t"         \
    "smlad %[a10], %[t1], %[x0], %[a10]\n\t"         \
    "smlad %[a10], %[wb], %[x1], %[a10]\n\t"         \
    "ldrd %[x0], %[x1], [%[c1]], #8\n\t"             \
    "smlad %[a01], %[t0], %[x0], %[a01]\n\t"         \
    "smlad %[a01], %[wa], %[x1], %[a01]\n\t"         \
    "smlad %[a11], %[t1], %[x0], %[a11]\n\t"         \
    "smlad %[a11], %[wb], %[x1], %[a11]\n\t"
    __asm__ volatile("1:\n\t" QC_STEP2X2 QC_STEP2X2
                     "cmp %[w], %[wend]\n\t"
                     "bne 1b\n\t"
                     : [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11), [w] "+r"(w),
                       [c0] "+r"(c0), [c1] "+r"(c1), [wa] "=&r"(wa), [wb] "=&r"(wb), [t0] "=&r"(t0),
                       [t1] "=&r"(t1), [x0] "=&r"(x0), [x1] "=&r"(x1)
                     : [wend] "r"(wend)
                     : "cc", "memory");
#undef QC_STEP2X2
    acc[0] = a00; acc[1] = a01; acc[2] = a10; acc[3] = a11;
}

/* 8-bit, two rows x one column (fully connected). */
static void qc_dot2x1_s8(const int8_t *w, const int16_t *c0, int32_t k_pad, int32_t *acc)
{
    int32_t a0 = acc[0], a1 = acc[1];
    const int8_t *wend = w + 2 * k_pad;
    int32_t wa, wb, t0, x0, x1;
#define QC_STEP2X1                                   \
    "ldrd %[wa], %[wb], [%[w]], #8\n\t"              \
    "ldrd %[x0], %[x1], [%[c0]], #8\n\t"             \
    "sxtb16 %[t0], %[wa]\n\t"                        \
    "sxtb16 %[wa], %[wa], ror #8\n\t"                \
    "smlad %[a0], %[t0], %[x0], %[a0]\n\t"           \
    "smlad %[a0], %[wa], %[x1], %[a0]\n\t"           \
    "sxtb16 %[t0], %[wb]\n\t"                        \
    "sxtb16 %[wb], %[wb], ror #8\n\t"                \
    "smlad %[a1], %[t0], %[x0], %[a1]\n\t"           \
    "smlad %[a1], %[wb], %[x1], %[a1]\n\t"
    __asm__ volatile("1:\n\t" QC_STEP2X1 QC_STEP2X1
                     "cmp %[w], %[wend]\n\t"
                     "bne 1b\n\t"
                     : [a0] "+r"(a0), [a1] "+r"(a1), [w] "+r"(w), [c0] "+r"(c0), [wa] "=&r"(wa),
                       [wb] "=&r"(wb), [t0] "=&r"(t0), [x0] "=&r"(x0), [x1] "=&r"(x1)
                     : [wend] "r"(wend)
                     : "cc", "memory");
#undef QC_STEP2X1
    acc[0] = a0; acc[1] = a1;
}

/* 4-bit, two rows x two columns. Nibbles moved to the top of each byte are 16x
 * their value, so the sums are 16x too and are divided back exactly (every term
 * is a multiple of 16; the compiler checks the x16 accumulator fits int32). */
static void qc_dot2x2_s4(const int8_t *w, const int16_t *c0, const int16_t *c1, int32_t k_pad, int32_t *acc)
{
    const uint32_t m = 0xF0F0F0F0u;
    int32_t a00 = acc[0] * 16, a01 = acc[1] * 16, a10 = acc[2] * 16, a11 = acc[3] * 16;
    int32_t k;
    for (k = 0; k < k_pad; k += 8, w += 8) {
        uint32_t wa = qc_ld32(w), wb = qc_ld32(w + 4);
        uint32_t v[4];
        int32_t i;
        v[0] = (wa << 4) & m; v[1] = wa & m; v[2] = (wb << 4) & m; v[3] = wb & m;
        for (i = 0; i < 2; i++) {
            int32_t x0a = (int32_t)qc_ld32(c0 + k + 4 * i), x0b = (int32_t)qc_ld32(c0 + k + 4 * i + 2);
            int32_t x1a = (int32_t)qc_ld32(c1 + k + 4 * i), x1b = (int32_t)qc_ld32(c1 + k + 4 * i + 2);
            int32_t pa = __sxtb16((int32_t)v[i]), qa = qc_sxtb16_ror8(v[i]);
            int32_t pb = __sxtb16((int32_t)v[2 + i]), qb = qc_sxtb16_ror8(v[2 + i]);
            a00 = __smlad(qa, x0b, __smlad(pa, x0a, a00));
            a01 = __smlad(qa, x1b, __smlad(pa, x1a, a01));
            a10 = __smlad(qb, x0b, __smlad(pb, x0a, a10));
            a11 = __smlad(qb, x1b, __smlad(pb, x1a, a11));
        }
    }
    acc[0] = a00 / 16; acc[1] = a01 / 16; acc[2] = a10 / 16; acc[3] = a11 / 16;
}
#endif

/* Any weight width, two rows x two columns; c1 may equal c0. */
static void qc_dot2x2(const int8_t *w, const int16_t *c0, const int16_t *c1, int32_t k_pad, int32_t wbits,
                      int32_t *acc)
{
#if QC_USE_DSP
    if (wbits == 8) {
        if (c1 == c0) {
            int32_t a[2];
            a[0] = acc[0]; a[1] = acc[2];
            qc_dot2x1_s8(w, c0, k_pad, a);
            acc[0] = acc[1] = a[0];
            acc[2] = acc[3] = a[1];
        } else {
            qc_dot2x2_s8(w, c0, c1, k_pad, acc);
        }
    } else {
        qc_dot2x2_s4(w, c0, c1, k_pad, acc);
    }
#else
    int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    int32_t k, i;
    if (wbits == 8) {
        for (k = 0; k < k_pad; k += 4, w += 8) {
            for (i = 0; i < 4; i++) {
                int32_t x0 = c0[k + i], x1 = c1[k + i], wa = w[i], wb = w[4 + i];
                a00 += wa * x0;
                a01 += wa * x1;
                a10 += wb * x0;
                a11 += wb * x1;
            }
        }
    } else {
        for (k = 0; k < k_pad; k += 8, w += 8) {
            for (i = 0; i < 4; i++) {
                int32_t ba = (uint8_t)w[i], bb = (uint8_t)w[4 + i];
                int32_t wal = qc_sext4(ba), wah = qc_sext4(ba >> 4);
                int32_t wbl = qc_sext4(bb), wbh = qc_sext4(bb >> 4);
                int32_t x0l = c0[k + i], x0h = c0[k + i + 4], x1l = c1[k + i], x1h = c1[k + i + 4];
                a00 += wal * x0l + wah * x0h;
                a01 += wal * x1l + wah * x1h;
                a10 += wbl * x0l + wbh * x0h;
                a11 += wbl * x1l + wbh * x1h;
            }
        }
    }
    acc[0] = a00; acc[1] = a01; acc[2] = a10; acc[3] = a11;
#endif
}

/* ---------------------------------------------------------------- conv */

static void qc_im2col(const qc_conv_params *p, const int8_t *in, int32_t pix, int32_t g, int16_t *col)
{
    const int32_t cg = p->in_c / p->groups;
    const int32_t oy = pix / p->out_w, ox = pix - oy * p->out_w;
    const int16_t zp = (int16_t)p->in_zp;
    int32_t k = 0, ky, kx, c;
    for (ky = 0; ky < p->k_h; ky++) {
        const int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
        const int32_t row_ok = iy >= 0 && iy < p->in_h;
        for (kx = 0; kx < p->k_w; kx++) {
            const int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
            if (!row_ok || ix < 0 || ix >= p->in_w) {
                for (c = 0; c < cg; c++, k++) col[QC_COLPOS(k)] = zp;
            } else {
                const int8_t *src = in + (iy * p->in_w + ix) * p->in_c + g * cg;
                c = 0;
#if QC_USE_DSP
                if ((k & 3) == 0) {
                    for (; c + 4 <= cg; c += 4, k += 4) {
                        uint32_t v = qc_ld32(src + c);
                        int32_t lo = __sxtb16((int32_t)v), hi = qc_sxtb16_ror8(v);
                        memcpy(col + k, &lo, 4);
                        memcpy(col + k + 2, &hi, 4);
                    }
                }
#endif
                for (; c < cg; c++, k++) col[QC_COLPOS(k)] = src[c];
            }
        }
    }
    for (; k < p->k_pad; k++) col[QC_COLPOS(k)] = 0;
}

static inline void qc_store_pair(int8_t *o0, int8_t *o1, int32_t m, int32_t two_m, const int32_t *acc,
                                 const int32_t *mult, const uint8_t *shift, int32_t zp, int32_t qmin,
                                 int32_t qmax)
{
    o0[m] = (int8_t)qc_rq(acc[0], mult[m], shift[m], zp, qmin, qmax);
    if (o1) o1[m] = (int8_t)qc_rq(acc[1], mult[m], shift[m], zp, qmin, qmax);
    if (two_m) {
        o0[m + 1] = (int8_t)qc_rq(acc[2], mult[m + 1], shift[m + 1], zp, qmin, qmax);
        if (o1) o1[m + 1] = (int8_t)qc_rq(acc[3], mult[m + 1], shift[m + 1], zp, qmin, qmax);
    }
}

void qc_conv(const qc_conv_params *p, const int8_t *in, int8_t *out, int16_t *scratch)
{
    const int32_t mg = p->out_c / p->groups;
    const int32_t pairs = (mg + 1) / 2; /* rows of a group are padded to an even count */
    const int32_t npx = p->out_h * p->out_w;
    const int32_t row_bytes = p->wbits == 8 ? p->k_pad : p->k_pad / 2;
    const int32_t zp = p->out_zp, qmin = p->qmin, qmax = p->qmax;
    int16_t *col0 = scratch, *col1 = scratch + p->k_pad;
    int32_t g, px, m;
    for (g = 0; g < p->groups; g++) {
        const int8_t *wg = p->w + g * pairs * 2 * row_bytes;
        const int32_t *bias = p->bias + g * mg, *mult = p->mult + g * mg;
        const uint8_t *shift = p->shift + g * mg;
        for (px = 0; px < npx; px += 2) {
            const int32_t two = px + 1 < npx;
            int8_t *o0 = out + px * p->out_c + g * mg;
            int8_t *o1 = two ? o0 + p->out_c : 0;
            qc_im2col(p, in, px, g, col0);
            if (two) qc_im2col(p, in, px + 1, g, col1);
            for (m = 0; m < mg; m += 2) {
                const int32_t two_m = m + 1 < mg;
                int32_t acc[4];
                acc[0] = acc[1] = bias[m];
                acc[2] = acc[3] = two_m ? bias[m + 1] : 0;
                qc_dot2x2(wg + m * row_bytes, col0, two ? col1 : col0, p->k_pad, p->wbits, acc);
                qc_store_pair(o0, o1, m, two_m, acc, mult, shift, zp, qmin, qmax);
            }
        }
    }
}

/* ---------------------------------------------------------------- fully connected */

void qc_fc(const qc_fc_params *p, const int8_t *in, int8_t *out, int16_t *scratch)
{
    const int32_t row_bytes = p->wbits == 8 ? p->k_pad : p->k_pad / 2;
    int32_t r, k, m;
    for (r = 0; r < p->rows; r++) {
        const int8_t *x = in + r * p->k;
        int8_t *o = out + r * p->out_c;
        k = 0;
#if QC_USE_DSP
        for (; k + 4 <= p->k; k += 4) {
            uint32_t v = qc_ld32(x + k);
            int32_t lo = __sxtb16((int32_t)v), hi = qc_sxtb16_ror8(v);
            memcpy(scratch + k, &lo, 4);
            memcpy(scratch + k + 2, &hi, 4);
        }
#endif
        for (; k < p->k; k++) scratch[QC_COLPOS(k)] = x[k];
        for (; k < p->k_pad; k++) scratch[QC_COLPOS(k)] = 0;
        for (m = 0; m < p->out_c; m += 2) {
            const int32_t two_m = m + 1 < p->out_c;
            int32_t acc[4];
            acc[0] = acc[1] = p->bias[m];
            acc[2] = acc[3] = two_m ? p->bias[m + 1] : 0;
            qc_dot2x2(p->w + m * row_bytes, scratch, scratch, p->k_pad, p->wbits, acc);
            qc_store_pair(o, 0, m, two_m, acc, p->mult, p->shift, p->out_zp, p->qmin, p->qmax);
        }
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
