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

/* One row of qc_mul on the one-multiply form (17 <= c <= 52), as qc_add's: the rounding term and the output
 * zero point ride in a 64-bit start, so each element is one multiply-accumulate (SMLAL), the high word and a
 * 32-bit shift. |(x - xz)(y - yz)| <= 255 * 255 < 2^16 and s1 = 32 - c <= 15 (c < 32), so the product
 * scaled by 2^s1 fits int32; no overflow: |d 2^s1| * mult < 2^62, |start| < 2^60. x is read whole, y with
 * stride sy (0: one gate value for the row, hoisted; 1: whole). */
static void qc_mul_row(const qc_mul_params *p, const int8_t *x, int32_t xz, const int8_t *y, int32_t yz,
                       int32_t sy, int8_t *out, int32_t n, int64_t start, int32_t s1, int32_t s2)
{
#define QC_MUL_HI(d) QC_ASR32((int32_t)QC_ASR64(start + (int64_t)(d) * mult, 32), s2)
    const int32_t mult = p->mult, qmin = p->qmin, qmax = p->qmax, sat8 = qmin == -128 && qmax == 127;
    const int32_t g = sy == 0 ? (y[0] - yz) * (1 << s1) : 0;
    int32_t i;
    if (sy == 0 && sat8) {
        for (i = 0; i < n; i++) out[i] = (int8_t)qc_sat8(QC_MUL_HI((x[i] - xz) * g));
    } else if (sy == 0) {
        for (i = 0; i < n; i++) out[i] = (int8_t)qc_clamp32(QC_MUL_HI((x[i] - xz) * g), qmin, qmax);
    } else if (sat8) {
        for (i = 0; i < n; i++) out[i] = (int8_t)qc_sat8(QC_MUL_HI((x[i] - xz) * (y[i] - yz) * (1 << s1)));
    } else {
        for (i = 0; i < n; i++)
            out[i] = (int8_t)qc_clamp32(QC_MUL_HI((x[i] - xz) * (y[i] - yz) * (1 << s1)), qmin, qmax);
    }
#undef QC_MUL_HI
}

/* One row with the 64-bit shift: any c in [1, 62]. */
static void qc_mul_row64(const qc_mul_params *p, const int8_t *x, int32_t xz, const int8_t *y, int32_t yz,
                         int32_t sy, int8_t *out, int32_t n)
{
    const int64_t rnd = (int64_t)1 << (p->shift - 1);
    int32_t i;
    for (i = 0; i < n; i++) {
        const int64_t v = (int64_t)((x[i] - xz) * (y[i * sy] - yz)) * p->mult + rnd;
        const int64_t r = QC_ASR64(v, p->shift) + p->out_zp;
        out[i] = (int8_t)(r < p->qmin ? p->qmin : (r > p->qmax ? p->qmax : r));
    }
}

void qc_mul(const qc_mul_params *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    /* outer x mid rows of inner elements; each row has one input read whole (mode 0) and the other
     * whole too, or at its mid index (mode 1: one value per row), or along the row (mode 2). The
     * product commutes, so the whole one is taken as x. The row constants are set once here. */
    const int32_t c = p->shift, fast = c >= 17 && c <= 52, s1 = c < 32 ? 32 - c : 0, s2 = c > 32 ? c - 32 : 0;
    const int64_t start = fast ? (((int64_t)1 << (c - 1)) + (int64_t)p->out_zp * ((int64_t)1 << c)) *
                                     ((int64_t)1 << s1) : 0;
    const int32_t a_whole = p->a_mode == 0, y_mode = a_whole ? p->b_mode : p->a_mode;
    const int32_t xz = a_whole ? p->a_zp : p->b_zp, yz = a_whole ? p->b_zp : p->a_zp, sy = y_mode == 1 ? 0 : 1;
    const int8_t *x = a_whole ? a : b, *y = a_whole ? b : a;
    int32_t o, m, k = 0;
    for (o = 0; o < p->outer; o++) {
        for (m = 0; m < p->mid; m++, k += p->inner) {
            const int8_t *py = y_mode == 0 ? y + k : (y_mode == 1 ? y + m : y);
            if (fast)
                qc_mul_row(p, x + k, xz, py, yz, sy, out + k, p->inner, start, s1, s2);
            else
                qc_mul_row64(p, x + k, xz, py, yz, sy, out + k, p->inner);
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

