static inline int32_t qc_sext16(uint32_t v)
{
    return (int32_t)((v & 0xFFFFu) ^ 0x8000u) - 0x8000;
}

/* Portable 2 x 2 dot product over k4 blocks (blk: the pair's first block); a column's blocks
 * are cs values apart (4; 8 in the interleaved layout of qc_widen_pair). */
static void qc_dot2x2(const int32_t *blk, const int16_t *c0, const int16_t *c1, int32_t cs, int32_t k4,
                      int32_t wbits, int32_t *acc)
{
    int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    int32_t b, i;
    for (b = 0; b < k4; b++, c0 += cs, c1 += cs) {
        if (wbits == 8) {
            const int32_t *q = blk + 4 * b;
            for (i = 0; i < 2; i++) { /* word i of a row: stored positions 2i (low half), 2i + 1 */
                const int32_t r0a = QC_ASR32((int32_t)((uint32_t)q[i] << 16), 16), r0b = QC_ASR32(q[i], 16);
                const int32_t r1a = QC_ASR32((int32_t)((uint32_t)q[2 + i] << 16), 16), r1b = QC_ASR32(q[2 + i], 16);
                const int32_t x0a = c0[2 * i], x0b = c0[2 * i + 1], x1a = c1[2 * i], x1b = c1[2 * i + 1];
                a00 += r0a * x0a + r0b * x0b;
                a01 += r0a * x1a + r0b * x1b;
                a10 += r1a * x0a + r1b * x0b;
                a11 += r1a * x1a + r1b * x1b;
            }
        } else {
            const uint32_t q = (uint32_t)blk[b];
            for (i = 0; i < 4; i++) { /* byte i holds K index i of both rows */
                const int32_t by = (int32_t)((q >> (8 * i)) & 0xFFu), pos = QC_COLPOS(i);
                const int32_t w0 = 16 * qc_sext4(by), w1 = 16 * qc_sext4(by >> 4);
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

/* Row pairs [w, w_end) of the stream against one or two pixels, in C (o1 == 0 and c1 == c0
 * for one pixel; cs: see qc_dot2x2). Stores channel m + 1 of a pair only when m + 1 < mg; pk: the pair as one
 * byte of a packed output (mg is even there), o0 / o1 pointing at the byte of channel 0. */
static void qc_pairs_c(const int32_t *w, const int32_t *w_end, int32_t m, int32_t mg, const int16_t *c0,
                       const int16_t *c1, int32_t cs, int32_t k4, int32_t wbits, int32_t rq_fast, int32_t zp,
                       int32_t qmin, int32_t qmax, int32_t pk, int8_t *o0, int8_t *o1)
{
    const int32_t blk_words = wbits == 8 ? 4 * k4 : k4;
    for (; w < w_end; w += QC_PAIR_HEAD + blk_words + QC_PAIR_TAIL, m += 2) {
        const int32_t *q = w + QC_PAIR_HEAD + blk_words;
        int32_t acc[4], i;
        acc[0] = acc[1] = w[0];
        acc[2] = acc[3] = w[2];
        qc_dot2x2(w + QC_PAIR_HEAD, c0, c1, cs, k4, wbits, acc);
        if (rq_fast) {
            for (i = 0; i < 4; i++)
                acc[i] = qc_rqf(acc[i], q[i & 2], q[(i & 2) + 1], (q[4] >> (4 * (i & 2))) & 0xFF, qmin, qmax);
        } else {
            for (i = 0; i < 4; i++) {
                if (wbits == 4) acc[i] = QC_ASR32(acc[i], 4); /* exact: every term is a multiple of 16 */
                acc[i] = qc_rq(acc[i], q[i & 2], q[(i & 2) + 1], zp, qmin, qmax);
            }
        }
        if (QC_PK(pk)) {
            o0[m >> 1] = (int8_t)(acc[0] | (acc[2] << 4));
            if (o1) o1[m >> 1] = (int8_t)(acc[1] | (acc[3] << 4));
            continue;
        }
        o0[m] = (int8_t)acc[0];
        if (o1) o1[m] = (int8_t)acc[1];
        if (m + 1 < mg) {
            o0[m + 1] = (int8_t)acc[2];
            if (o1) o1[m + 1] = (int8_t)acc[3];
        }
    }
}

#if QC_USE_DSP
#define QC_TILE(f, bit) ((QC_TILES & (bit)) ? f : 0)
#endif

/* One layer's (or group's) channels for pixel pairs: the per-call state of the tile kernels. */
typedef struct {
    const int32_t *w, *w_end;
    int32_t mg, k4, k_pad, wbits, rq_fast, zp, qmin, qmax, pk;
#if QC_USE_DSP
    qc_tile_args a;
    void (*tile)(const int32_t *, qc_tile_args *);
    void (*tile_i)(const int32_t *, qc_tile_args *); /* the same on interleaved columns, or 0 */
#endif
} qc_mm;

static void qc_mm_init(qc_mm *t, const int32_t *w, int32_t mg, int32_t k_pad, int32_t wbits, int32_t rq_fast,
                       int32_t zp, int32_t qmin, int32_t qmax, int32_t pk)
{
    const int32_t blk_words = wbits == 8 ? k_pad : k_pad / 4;
    t->w = w;
    t->w_end = w + ((mg + 1) / 2) * (QC_PAIR_HEAD + blk_words + QC_PAIR_TAIL);
    t->mg = mg;
    t->k4 = k_pad / 4;
    t->k_pad = k_pad;
    t->wbits = wbits;
    t->rq_fast = rq_fast;
    t->zp = zp;
    t->qmin = qmin;
    t->qmax = qmax;
    t->pk = pk;
#if QC_USE_DSP
    {
        const int32_t clamp = qmin != -128 || qmax != 127;
        t->a.w_end = w + (mg / 2) * (QC_PAIR_HEAD + blk_words + QC_PAIR_TAIL);
        t->a.entry = t->k4 & 7;
        t->a.qmin4 = (uint8_t)qmin * 0x01010101u;
        t->a.qmax4 = (uint8_t)qmax * 0x01010101u;
        /* variants qc_config.h leaves out are 0: those layers run the portable C */
        if (QC_PK(pk)) /* USAT #4 is the clamp only for bounds [0, 15]; others take the C path */
            t->tile = qmin != 0 || qmax != 15 ? 0 : wbits == 8 ? QC_TILE(qc_tile_w16_p, 4) : QC_TILE(qc_tile_w4_p, 32);
        else if (wbits == 8)
            t->tile = clamp ? QC_TILE(qc_tile_w16_c, 2) : QC_TILE(qc_tile_w16, 1);
        else
            t->tile = clamp ? QC_TILE(qc_tile_w4_c, 16) : QC_TILE(qc_tile_w4, 8);
        if (QC_PK(pk))
            t->tile_i = wbits != 8 || qmin != 0 || qmax != 15 ? 0 : QC_TILE(qc_tile_w16i_p, 256);
        else
            t->tile_i = wbits != 8 ? 0 : clamp ? QC_TILE(qc_tile_w16i_c, 128) : QC_TILE(qc_tile_w16i, 64);
        if (!rq_fast || mg < 2) t->tile = t->tile_i = 0;
    }
#else
    (void)blk_words;
#endif
}

/* All mg channels of one or two pixels (c1 == c0 and o1 == 0 for one); o0 / o1 point at the
 * first channel's byte (packed outputs: the byte holding it). */
static inline void qc_mm_run(qc_mm *t, const int16_t *c0, const int16_t *c1, int8_t *o0, int8_t *o1)
{
    const int32_t *w = t->w;
    int32_t m = 0;
#if QC_USE_DSP
    if (t->tile) {
        t->a.c0 = c0;
        t->a.c1 = c1;
        t->a.c0_end = c0 + t->k_pad;
        t->a.o0 = o0;
        t->a.o1 = o1 ? o1 : o0;
        t->tile(w, &t->a);
        if (!(t->mg & 1)) return;
        w = t->a.w_end;
        m = t->mg - 1;
    }
#endif
    qc_pairs_c(w, t->w_end, m, t->mg, c0, c1, 4, t->k4, t->wbits, t->rq_fast, t->zp, t->qmin, t->qmax, t->pk, o0,
               o1);
}

#if QC_USE_DSP
/* All mg channels of two pixels whose columns qc_widen_pair interleaved at ci (t->tile_i set). */
static void qc_mm_run_i(qc_mm *t, const int16_t *ci, int8_t *o0, int8_t *o1)
{
    t->a.c0 = ci;
    t->a.c0_end = ci + 2 * t->k_pad;
    t->a.o0 = o0;
    t->a.o1 = o1;
    t->tile_i(t->w, &t->a);
    if (t->mg & 1)
        qc_pairs_c(t->a.w_end, t->w_end, t->mg - 1, t->mg, ci, ci + 4, 8, t->k4, t->wbits, t->rq_fast, t->zp,
                   t->qmin, t->qmax, t->pk, o0, o1);
}

#endif

