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

