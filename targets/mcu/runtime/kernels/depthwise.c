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

