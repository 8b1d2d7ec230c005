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

