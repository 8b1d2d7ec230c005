/*
 * qc_kernels.c - integer-only kernels for qcompiler's MCU target (see qc_kernels.h).
 *
 * Two implementations of every inner loop: one with the Armv7E-M/Armv8-M DSP
 * SIMD instructions (SXTB16 + SMLAD: two 16-bit MACs per instruction) and one in
 * portable C99 (Cortex-M0, host builds). Both compute the same integers.
 */
#include "qc_kernels.h"

#include <string.h>

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32) && !defined(QC_NO_DSP)
#define QC_USE_DSP 1
#include <arm_acle.h>
#else
#define QC_USE_DSP 0
#endif

/* ---------------------------------------------------------------- requantization */

/* floor(v / 2^s) for 0 <= s <= 63 without relying on >> of a negative value
 * (implementation-defined in C99): for v < 0, ~v = -v-1 >= 0 and
 * floor(v / 2^s) = ~(~v >> s). gcc turns this into an arithmetic shift. */
static inline int64_t qc_floor_shr64(int64_t v, int32_t s)
{
    return v >= 0 ? (v >> s) : ~((~v) >> s);
}

static inline int32_t qc_clamp64(int64_t v, int32_t lo, int32_t hi)
{
    if (v < lo) return lo;
    if (v > hi) return hi;
    return (int32_t)v;
}

/* y = clamp(zp + floor((acc * b + 2^(c-1)) / 2^c), qmin, qmax): round half up. */
static inline int32_t qc_rq(int32_t acc, int32_t mult, int32_t shift, int32_t zp, int32_t qmin, int32_t qmax)
{
    int64_t p = (int64_t)acc * (int64_t)mult + ((int64_t)1 << (shift - 1));
    return qc_clamp64(qc_floor_shr64(p, shift) + zp, qmin, qmax);
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
static inline uint32_t qc_ror8(uint32_t v)
{
    return (v >> 8) | (v << 24);
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

/* ---------------------------------------------------------------- dot products */

/* acc[r*2 + j] += dot(weight row r, column j) for 2 rows x 2 columns. */
static void qc_dot2x2(const int8_t *w0, const int8_t *w1, const int16_t *c0, const int16_t *c1,
                      int32_t k_pad, int32_t wbits, int32_t *acc)
{
    int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    int32_t k;
#if QC_USE_DSP
    if (wbits == 8) {
        for (k = 0; k < k_pad; k += 4) {
            uint32_t wa = qc_ld32(w0 + k), wb = qc_ld32(w1 + k);
            int32_t x0a = (int32_t)qc_ld32(c0 + k), x0b = (int32_t)qc_ld32(c0 + k + 2);
            int32_t x1a = (int32_t)qc_ld32(c1 + k), x1b = (int32_t)qc_ld32(c1 + k + 2);
            int32_t wa02 = __sxtb16((int32_t)wa), wa13 = __sxtb16((int32_t)qc_ror8(wa));
            int32_t wb02 = __sxtb16((int32_t)wb), wb13 = __sxtb16((int32_t)qc_ror8(wb));
            a00 = __smlad(wa02, x0a, a00);
            a00 = __smlad(wa13, x0b, a00);
            a01 = __smlad(wa02, x1a, a01);
            a01 = __smlad(wa13, x1b, a01);
            a10 = __smlad(wb02, x0a, a10);
            a10 = __smlad(wb13, x0b, a10);
            a11 = __smlad(wb02, x1a, a11);
            a11 = __smlad(wb13, x1b, a11);
        }
    } else {
        /* 4-bit: nibbles moved to the top of each byte are 16x their value; the
         * sums are 16x too and divided back exactly (every term is a multiple of 16). */
        const uint32_t m = 0xF0F0F0F0u;
        a00 *= 16; a01 *= 16; a10 *= 16; a11 *= 16;
        for (k = 0; k < k_pad; k += 8) {
            uint32_t wa = qc_ld32(w0 + k / 2), wb = qc_ld32(w1 + k / 2);
            uint32_t wal = (wa << 4) & m, wah = wa & m, wbl = (wb << 4) & m, wbh = wb & m;
            int32_t x0a = (int32_t)qc_ld32(c0 + k), x0b = (int32_t)qc_ld32(c0 + k + 2);
            int32_t x0c = (int32_t)qc_ld32(c0 + k + 4), x0d = (int32_t)qc_ld32(c0 + k + 6);
            int32_t x1a = (int32_t)qc_ld32(c1 + k), x1b = (int32_t)qc_ld32(c1 + k + 2);
            int32_t x1c = (int32_t)qc_ld32(c1 + k + 4), x1d = (int32_t)qc_ld32(c1 + k + 6);
            int32_t p;
            p = __sxtb16((int32_t)wal); a00 = __smlad(p, x0a, a00); a01 = __smlad(p, x1a, a01);
            p = __sxtb16((int32_t)qc_ror8(wal)); a00 = __smlad(p, x0b, a00); a01 = __smlad(p, x1b, a01);
            p = __sxtb16((int32_t)wah); a00 = __smlad(p, x0c, a00); a01 = __smlad(p, x1c, a01);
            p = __sxtb16((int32_t)qc_ror8(wah)); a00 = __smlad(p, x0d, a00); a01 = __smlad(p, x1d, a01);
            p = __sxtb16((int32_t)wbl); a10 = __smlad(p, x0a, a10); a11 = __smlad(p, x1a, a11);
            p = __sxtb16((int32_t)qc_ror8(wbl)); a10 = __smlad(p, x0b, a10); a11 = __smlad(p, x1b, a11);
            p = __sxtb16((int32_t)wbh); a10 = __smlad(p, x0c, a10); a11 = __smlad(p, x1c, a11);
            p = __sxtb16((int32_t)qc_ror8(wbh)); a10 = __smlad(p, x0d, a10); a11 = __smlad(p, x1d, a11);
        }
        a00 /= 16; a01 /= 16; a10 /= 16; a11 /= 16;
    }
#else
    if (wbits == 8) {
        for (k = 0; k < k_pad; k++) {
            int32_t x0 = c0[k], x1 = c1[k], wa = w0[k], wb = w1[k];
            a00 += wa * x0;
            a01 += wa * x1;
            a10 += wb * x0;
            a11 += wb * x1;
        }
    } else {
        for (k = 0; k < k_pad; k += 8) {
            int32_t i;
            for (i = 0; i < 4; i++) {
                int32_t ba = (uint8_t)w0[k / 2 + i], bb = (uint8_t)w1[k / 2 + i];
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
#endif
    acc[0] = a00; acc[1] = a01; acc[2] = a10; acc[3] = a11;
}

/* acc[r] += dot(weight row r, column) for 4 rows: the fully connected case,
 * where each weight is used once and the column is shared by the rows. */
static void qc_dot4x1(const int8_t *w, int32_t row_bytes, const int16_t *c, int32_t k_pad, int32_t wbits,
                      int32_t *acc)
{
    const int8_t *w0 = w, *w1 = w + row_bytes, *w2 = w + 2 * row_bytes, *w3 = w + 3 * row_bytes;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    int32_t k;
#if QC_USE_DSP
    if (wbits == 8) {
        for (k = 0; k < k_pad; k += 4) {
            int32_t xa = (int32_t)qc_ld32(c + k), xb = (int32_t)qc_ld32(c + k + 2);
            uint32_t v;
            v = qc_ld32(w0 + k);
            a0 = __smlad(__sxtb16((int32_t)v), xa, a0);
            a0 = __smlad(__sxtb16((int32_t)qc_ror8(v)), xb, a0);
            v = qc_ld32(w1 + k);
            a1 = __smlad(__sxtb16((int32_t)v), xa, a1);
            a1 = __smlad(__sxtb16((int32_t)qc_ror8(v)), xb, a1);
            v = qc_ld32(w2 + k);
            a2 = __smlad(__sxtb16((int32_t)v), xa, a2);
            a2 = __smlad(__sxtb16((int32_t)qc_ror8(v)), xb, a2);
            v = qc_ld32(w3 + k);
            a3 = __smlad(__sxtb16((int32_t)v), xa, a3);
            a3 = __smlad(__sxtb16((int32_t)qc_ror8(v)), xb, a3);
        }
    } else {
        const uint32_t m = 0xF0F0F0F0u;
        const int8_t *rows[4];
        int32_t r, accs[4];
        rows[0] = w0; rows[1] = w1; rows[2] = w2; rows[3] = w3;
        accs[0] = a0 * 16; accs[1] = a1 * 16; accs[2] = a2 * 16; accs[3] = a3 * 16;
        for (r = 0; r < 4; r++) {
            int32_t s = accs[r];
            const int8_t *wr = rows[r];
            for (k = 0; k < k_pad; k += 8) {
                uint32_t v = qc_ld32(wr + k / 2);
                uint32_t lo = (v << 4) & m, hi = v & m;
                s = __smlad(__sxtb16((int32_t)lo), (int32_t)qc_ld32(c + k), s);
                s = __smlad(__sxtb16((int32_t)qc_ror8(lo)), (int32_t)qc_ld32(c + k + 2), s);
                s = __smlad(__sxtb16((int32_t)hi), (int32_t)qc_ld32(c + k + 4), s);
                s = __smlad(__sxtb16((int32_t)qc_ror8(hi)), (int32_t)qc_ld32(c + k + 6), s);
            }
            accs[r] = s / 16;
        }
        a0 = accs[0]; a1 = accs[1]; a2 = accs[2]; a3 = accs[3];
    }
#else
    if (wbits == 8) {
        for (k = 0; k < k_pad; k++) {
            int32_t x = c[k];
            a0 += w0[k] * x;
            a1 += w1[k] * x;
            a2 += w2[k] * x;
            a3 += w3[k] * x;
        }
    } else {
        for (k = 0; k < k_pad; k += 8) {
            int32_t i;
            for (i = 0; i < 4; i++) {
                int32_t xl = c[k + i], xh = c[k + i + 4];
                int32_t b0 = (uint8_t)w0[k / 2 + i], b1 = (uint8_t)w1[k / 2 + i];
                int32_t b2 = (uint8_t)w2[k / 2 + i], b3 = (uint8_t)w3[k / 2 + i];
                a0 += qc_sext4(b0) * xl + qc_sext4(b0 >> 4) * xh;
                a1 += qc_sext4(b1) * xl + qc_sext4(b1 >> 4) * xh;
                a2 += qc_sext4(b2) * xl + qc_sext4(b2 >> 4) * xh;
                a3 += qc_sext4(b3) * xl + qc_sext4(b3 >> 4) * xh;
            }
        }
    }
#endif
    acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3;
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
        for (kx = 0; kx < p->k_w; kx++) {
            const int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                for (c = 0; c < cg; c++, k++) col[QC_COLPOS(k)] = zp;
            } else {
                const int8_t *src = in + (iy * p->in_w + ix) * p->in_c + g * cg;
                c = 0;
#if QC_USE_DSP
                if ((k & 3) == 0) {
                    for (; c + 4 <= cg; c += 4, k += 4) {
                        uint32_t v = qc_ld32(src + c);
                        int32_t lo = __sxtb16((int32_t)v), hi = __sxtb16((int32_t)qc_ror8(v));
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

void qc_conv(const qc_conv_params *p, const int8_t *in, int8_t *out, int16_t *scratch)
{
    const int32_t mg = p->out_c / p->groups;
    const int32_t npx = p->out_h * p->out_w;
    const int32_t row_bytes = p->wbits == 8 ? p->k_pad : p->k_pad / 2;
    int16_t *col0 = scratch, *col1 = scratch + p->k_pad;
    int32_t g, px, m;
    for (g = 0; g < p->groups; g++) {
        for (px = 0; px < npx; px += 2) {
            const int32_t two = px + 1 < npx;
            int8_t *o0 = out + px * p->out_c + g * mg;
            int8_t *o1 = o0 + p->out_c;
            qc_im2col(p, in, px, g, col0);
            if (two) qc_im2col(p, in, px + 1, g, col1);
            for (m = 0; m < mg; m += 2) {
                const int32_t mm = g * mg + m;
                const int32_t two_m = m + 1 < mg;
                const int8_t *w0 = p->w + mm * row_bytes;
                const int8_t *w1 = two_m ? w0 + row_bytes : w0;
                int32_t acc[4];
                acc[0] = acc[1] = p->bias[mm];
                acc[2] = acc[3] = two_m ? p->bias[mm + 1] : p->bias[mm];
                qc_dot2x2(w0, w1, col0, two ? col1 : col0, p->k_pad, p->wbits, acc);
                o0[m] = (int8_t)qc_rq(acc[0], p->mult[mm], p->shift[mm], p->out_zp, p->qmin, p->qmax);
                if (two) o1[m] = (int8_t)qc_rq(acc[1], p->mult[mm], p->shift[mm], p->out_zp, p->qmin, p->qmax);
                if (two_m) {
                    o0[m + 1] = (int8_t)qc_rq(acc[2], p->mult[mm + 1], p->shift[mm + 1], p->out_zp, p->qmin,
                                              p->qmax);
                    if (two)
                        o1[m + 1] = (int8_t)qc_rq(acc[3], p->mult[mm + 1], p->shift[mm + 1], p->out_zp,
                                                  p->qmin, p->qmax);
                }
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
            int32_t lo = __sxtb16((int32_t)v), hi = __sxtb16((int32_t)qc_ror8(v));
            memcpy(scratch + k, &lo, 4);
            memcpy(scratch + k + 2, &hi, 4);
        }
#endif
        for (; k < p->k; k++) scratch[QC_COLPOS(k)] = x[k];
        for (; k < p->k_pad; k++) scratch[QC_COLPOS(k)] = 0;
        for (m = 0; m < p->out_c; m += 4) {
            int32_t acc[4], i, n = p->out_c - m < 4 ? p->out_c - m : 4;
            const int8_t *w = p->w + m * row_bytes;
            for (i = 0; i < 4; i++) acc[i] = p->bias[m + (i < n ? i : 0)];
            if (n == 4) {
                qc_dot4x1(w, row_bytes, scratch, p->k_pad, p->wbits, acc);
            } else {
                /* tail: rows past the end repeat the first row of this block */
                int32_t a2[4];
                const int8_t *w1 = n > 1 ? w + row_bytes : w;
                const int8_t *w2 = n > 2 ? w + 2 * row_bytes : w;
                a2[0] = acc[0]; a2[1] = acc[0]; a2[2] = acc[1]; a2[3] = acc[1];
                qc_dot2x2(w, w1, scratch, scratch, p->k_pad, p->wbits, a2);
                acc[0] = a2[0];
                acc[1] = a2[2];
                if (n > 2) {
                    a2[0] = a2[1] = a2[2] = a2[3] = acc[2];
                    qc_dot2x2(w2, w2, scratch, scratch, p->k_pad, p->wbits, a2);
                    acc[2] = a2[0];
                }
            }
            for (i = 0; i < n; i++)
                o[m + i] = (int8_t)qc_rq(acc[i], p->mult[m + i], p->shift[m + i], p->out_zp, p->qmin, p->qmax);
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
                            x13 = __ssub16(__sxtb16((int32_t)qc_ror8(xv)), zp2);
                            w02 = __sxtb16((int32_t)wv);
                            w13 = __sxtb16((int32_t)qc_ror8(wv));
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
    /* Channel by channel, each output written after its whole window is read: with
     * pad_t == pad_l == 0 every later window starts at or after the pixel just
     * written, so the pool may run in place (the arena planner relies on that). */
    int32_t oy, ox, ky, kx, c;
    for (oy = 0; oy < p->out_h; oy++) {
        for (ox = 0; ox < p->out_w; ox++) {
            int8_t *o = out + (oy * p->out_w + ox) * p->c;
            for (c = 0; c < p->c; c++) {
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
        out[i] = (int8_t)qc_clamp64(qc_floor_shr64(v, p->shift) + p->out_zp, p->qmin, p->qmax);
    }
}

void qc_requant(const qc_requant_params *p, const int8_t *in, int8_t *out)
{
    int32_t i;
    for (i = 0; i < p->n; i++)
        out[i] = (int8_t)qc_rq(in[i] - p->in_zp, p->mult, p->shift, p->out_zp, p->qmin, p->qmax);
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
