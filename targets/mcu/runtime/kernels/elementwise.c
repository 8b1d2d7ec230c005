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

