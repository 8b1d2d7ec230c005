
/* ---------------------------------------------------------------- lookup tables */

void qc_lut(const int8_t *table, const int8_t *in, int8_t *out, int32_t n)
{
    /* QLut: one load per element; the emitter re-indexes the table by the held (int8) byte and
     * stores held outputs, so uint8 and int8 tensors take the same path. */
    int32_t i;
    for (i = 0; i < n; i++) out[i] = table[(uint8_t)in[i]];
}
