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
