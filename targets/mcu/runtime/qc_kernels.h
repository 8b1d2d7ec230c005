/*
 * qc_kernels.h - integer-only kernels for qcompiler's MCU target.
 *
 * Every kernel follows docs/INTEGER_GRAPH.md bit for bit. Conventions:
 *  - Activations are int8, NHWC. A uint8 tensor of the integer graph is held
 *    as int8 with 128 subtracted from its values, zero point and clamp bounds
 *    (qcompiler's emitter does that shift), so one set of kernels serves both.
 *  - A tensor whose values span at most 16 (4-bit activations) may be packed: two
 *    elements per byte, element i in byte i / 2, low nibble first, each nibble
 *    u = value - lo (lo: the tensor's lowest value). The emitter gives a kernel the zero
 *    points and clamp bounds of such a tensor in that u domain (x - zp is unchanged), so
 *    kernels only need to know that it is packed (the *_pk fields, 0 or 1). Conv / fully
 *    connected outputs are packed in channel pairs (an even channel count). Conv / fully
 *    connected inputs are read through an im2col that unpacks them (k8, below).
 *  - Weights live in flash: conv / fully connected 8-bit weights pre-widened to int16
 *    at compile time (2x the flash of int8, no sign extension in the inner loop),
 *    4-bit weights packed two per byte, depthwise weights int8 / packed nibbles.
 *  - Requantization: y = clamp(zp + floor((acc * b + 2^(c-1)) / 2^c), qmin, qmax)
 *    with a 64-bit intermediate (QC_ASR64: portable floor shift where >> of a
 *    negative value is not known to be arithmetic); conv / fully connected use an
 *    equivalent one-multiply form when c >= 33 (graph.fast_requant). b may be 0 (a dead
 *    channel: the output is clamp(zp), both forms give it exactly; the emitter gives such
 *    a channel c = 33, so it never keeps its layer off the one-multiply form).
 *  - No malloc, no float, no libc beyond what the compiler inlines.
 *  - With __ARM_FEATURE_DSP (Cortex-M4/M7/M33/M55): conv / fully connected run 2 x 2
 *    register tiles in hand-written Thumb-2 assembly (LDM + SMLAD, SMMUL requant),
 *    other kernels use SXTB16/SXTAB16/SSUB8/SEL; otherwise (M0, host) plain C99.
 */
#ifndef QC_KERNELS_H
#define QC_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Conv2d with groups (im2col into an int16 scratch buffer, then 2 x 2 register tiles:
 * two output channels (a row pair) x two output pixels per pass over K).
 * K is in (kh, kw, c) order, zero padded to k_pad (a multiple of 4); within each block
 * of 4 K indices the im2col buffer holds x0, x2, x1, x3 (what SXTB16 of a word of four
 * int8 yields). Each group's rows are padded to an even count and taken in pairs.
 * w is one int32 stream, per group, per row pair:
 *   bias0, bias0, bias1, bias1  (bias - in_zp * sum(w); 16x for 4-bit weights; one LDM starts 4 accumulators)
 *   k_pad / 4 weight blocks:
 *     wbits 8: int16 weights, row 0's w0, w2, w1, w3 then row 1's (4 words);
 *     wbits 4: one byte per K index, byte i = (row0[k_i] & 0xF) | (row1[k_i] << 4) (1 word);
 *   5 requantization words:
 *     rq_fast 1: b0, rnd0, b1, rnd1, s0 | s1 << 8 with y = clamp((hi32(acc * b) + rnd) >> s)
 *                (rnd folds the rounding and the output zero point; graph.fast_requant);
 *     rq_fast 0: b0, c0, b1, c1, 0 (docs/INTEGER_GRAPH.md requantization).
 * 4-bit layers accumulate 16x: the kernels use each nibble as 16 * w.
 * k8 = 1 (a packed input whose kernel rows are whole groups of 8 channels): K is taken in
 * groups of 8, each stored in the im2col buffer as x0, x4, x2, x6, x1, x5, x3, x7 (what AND
 * with 0x0F0F0F0F, a shift and UXTB16 make of one word of 8 nibbles); the emitter permutes
 * the weights to match. */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_t, pad_l;
    int32_t dil_h, dil_w;
    int32_t groups;
    int32_t k_pad;      /* K per row, padded to a multiple of 4 */
    int32_t wbits;      /* 8 or 4 */
    int32_t in_zp;      /* pads are filled with in_zp */
    int32_t out_zp, qmin, qmax;
    int32_t rq_fast;
    int32_t k_row;      /* 0, or each kernel row's kw * cg values zero padded to k_row (a multiple of 4) */
    int32_t in_pk, out_pk, k8;
    const int32_t *w;
} qc_conv_params;

/* Scratch: 2 * k_pad int16, 4-byte aligned. */
void qc_conv(const qc_conv_params *p, const int8_t *in, int8_t *out, int16_t *scratch);

/* Fully connected: rows x K input (row-major) times W^T; w is a stream like qc_conv's (groups = 1). */
typedef struct {
    int32_t rows, k, out_c, k_pad, wbits;
    int32_t in_zp, out_zp, qmin, qmax;
    int32_t rq_fast;
    int32_t in_pk, out_pk, k8;
    const int32_t *w;
} qc_fc_params;

/* Scratch: k_pad int16, 4-byte aligned. */
void qc_fc(const qc_fc_params *p, const int8_t *in, int8_t *out, int16_t *scratch);

/* Depthwise conv (group == in_c, out_c = in_c * ch_mult).
 * Weights in groups of 4 channels (out_c rounded up to a multiple of 4), per group every tap
 * (ky, kx): 8-bit as int16, per tap c0, c2, c1, c3; 4-bit as int8, per tap c0 .. c3.
 * Bias has in_zp folded in (bias - in_zp * sum(w));
 * pads read as in_zp. Requantization: rq_fast 1: y = clamp((hi32(acc * mult) + rnd) >> shift)
 * (graph.fast_requant); 0: docs/INTEGER_GRAPH.md with shift = c, rnd unused. */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c, ch_mult;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_t, pad_l;
    int32_t dil_h, dil_w;
    int32_t wbits;
    int32_t in_zp, out_zp, qmin, qmax;
    int32_t in_pk, out_pk;
    int32_t rq_fast;
    const void *w;
    const int32_t *bias;
    const int32_t *mult;
    const int32_t *rnd;
    const uint8_t *shift;
} qc_dw_params;

void qc_depthwise(const qc_dw_params *p, const int8_t *in, int8_t *out);

/* Pools over NHWC. Max pool skips pads and adds out_zp (in - out: the packed domains'
 * offset, 0 unless exactly one side is packed) to the maximum; average pool sums
 * (x - in_zp) over the in-bounds part of the window and requantizes with one (mult, shift). */
typedef struct {
    int32_t in_h, in_w, c;
    int32_t out_h, out_w;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_t, pad_l;
    int32_t dil_h, dil_w;
    int32_t in_zp, out_zp, qmin, qmax;
    int32_t mult, shift;
    int32_t in_pk, out_pk;
} qc_pool_params;

void qc_maxpool(const qc_pool_params *p, const int8_t *in, int8_t *out);
void qc_avgpool(const qc_pool_params *p, const int8_t *in, int8_t *out);

/* y = clamp(out_zp + floor(((a - a_zp) * ma + (b - b_zp) * mb + 2^(shift-1)) / 2^shift)). */
typedef struct {
    int32_t n;
    int32_t a_zp, b_zp;
    int32_t ma, mb; /* in [0, 2^31) */
    int32_t shift;
    int32_t out_zp, qmin, qmax;
    int32_t a_pk, b_pk, out_pk;
} qc_add_params;

void qc_add(const qc_add_params *p, const int8_t *a, const int8_t *b, int8_t *out);

/* y = clamp(out_zp + floor(((a - a_zp) * (b - b_zp) * mult + 2^(shift-1)) / 2^shift)): QMul, the
 * product of two 8-bit tensors broadcast as ONNX Mul. The output is outer x mid rows of inner
 * elements; each input is read whole (mode 0), at the row's mid index (1) or at the inner index (2),
 * and at least one of them whole. Safe in place over an input of mode 0. */
typedef struct {
    int32_t outer, mid, inner;
    int32_t a_mode, b_mode;
    int32_t a_zp, b_zp;
    int32_t mult, shift; /* mult in [0, 2^31), shift in [1, 62] */
    int32_t out_zp, qmin, qmax;
} qc_mul_params;

void qc_mul(const qc_mul_params *p, const int8_t *a, const int8_t *b, int8_t *out);

/* y = requant(x - in_zp, mult, shift, out_zp): QRequant. Safe in place. */
typedef struct {
    int32_t n;
    int32_t in_zp, out_zp, qmin, qmax;
    int32_t mult, shift;
} qc_requant_params;

void qc_requant(const qc_requant_params *p, const int8_t *in, int8_t *out);

/* y = clamp(x, lo, hi): a standalone Clip/Relu on an integer tensor (e.g. the
 * 4-bit input clamp). Safe in place. */
void qc_clip(const int8_t *in, int8_t *out, int32_t n, int32_t lo, int32_t hi);

/* y = table[(uint8_t)x]: QLut, any function of one 8-bit tensor (HardSigmoid, HardSwish,
 * Sigmoid, Tanh, ...) as a 256-entry table indexed by the held byte. Safe in place. */
void qc_lut(const int8_t *table, const int8_t *in, int8_t *out, int32_t n);

/* Plain copies used at the graph boundary and for layout changes.
 * xor_mask 0x80 converts between uint8 bytes and the int8 internal form. */
void qc_copy(const int8_t *src, int8_t *dst, int32_t n, uint8_t xor_mask);
/* [d0][d1][d2] -> [d0][d2][d1] per batch (NCHW <-> NHWC with d1 = C, d2 = H*W or back). */
void qc_transpose3(const int8_t *src, int8_t *dst, int32_t d0, int32_t d1, int32_t d2, uint8_t xor_mask);
/* The general copy at the graph boundary: element j of the [d0][d1][d2] source goes to
 * [d0][d2][d1] (transpose) or to j (transpose 0); v = source value (packed: nibble + in_lo),
 * v ^= xor_in (as a byte), v = clamp(v, lo, hi), stored as v ^ xor_out or, packed, as the
 * nibble v - out_lo. The input copy (with the 4-bit input clamp) and the output copy of a
 * packed tensor. */
typedef struct {
    int32_t d0, d1, d2, transpose;
    int32_t xor_in, xor_out, lo, hi;
    int32_t in_pk, in_lo, out_pk, out_lo;
} qc_move_params;

void qc_move(const qc_move_params *p, const int8_t *src, int8_t *dst);

/* Concat along the innermost axis of [outer][len_i] blocks: copy one input's slice. */
void qc_concat_inner(const int8_t *src, int8_t *dst, int32_t outer, int32_t len, int32_t out_len,
                     int32_t offset);

/* Requantize one int32 accumulator (exposed for tests and generated code). */
int32_t qc_requant1(int32_t acc, int32_t mult, int32_t shift, int32_t zp, int32_t qmin, int32_t qmax);

#ifdef __cplusplus
}
#endif
#endif /* QC_KERNELS_H */
