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

