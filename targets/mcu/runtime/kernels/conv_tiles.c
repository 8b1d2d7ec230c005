/* ---------------------------------------------------------------- conv / fully connected
 * 2 x 2 tiles: two output channels (a row pair of the weight stream, see qc_kernels.h)
 * x two im2col columns (output pixels); acc[0..3] = (row 0, col 0), (row 0, col 1),
 * (row 1, col 0), (row 1, col 1). A row pair of the stream is QC_PAIR_HEAD bias words,
 * the weight blocks, then QC_PAIR_TAIL requantization words. */
#define QC_PAIR_HEAD 4
#define QC_PAIR_TAIL 5

#if QC_USE_DSP
/* What the assembly tile kernels read. The prologue pushes words 0-7 as they are (entry turned
 * into the address where the first pass enters the unrolled K loop), so these offsets are also
 * their offsets from sp inside the loop. */
typedef struct {
    int32_t entry;          /* 0: (k_pad / 4) mod 8 */
    const int16_t *c0;      /* 4 */
    const int16_t *c1;      /* 8: may equal c0 (then o1 == o0) */
    int8_t *o0;             /* 12: advanced by 2 per pair */
    int8_t *o1;             /* 16 */
    const int32_t *w_end;   /* 20: end of the row pairs to do */
    uint32_t qmin4, qmax4;  /* 24, 28: the bounds in each byte (clamping kernels) */
    const int16_t *c0_end;  /* 32: c0 + k_pad, where the K loop stops */
} qc_tile_args;

/* For every row pair from w to a->w_end: acc = bias (LDM of 4 words); acc += W . col over K;
 * fast requantization (SMMLA: hi32(acc * b) + rnd, then an arithmetic shift per channel);
 * store four bytes. The dot product needs 14 registers (4 accumulators, 4 weight words,
 * 2 activation words, 3 pointers and the loop end), more than GCC gives an inline asm
 * statement, and LDM takes a fixed ascending register list, so these are whole functions in
 * assembly. Per block of 4 K indices: 8-bit weights (pre-widened to int16 at compile time)
 * 3 LDM + 8 SMLAD for 16 MACs; 4-bit: LDR + 2 AND + LSL + 4 SXTB16 + 2 LDM + 8 SMLAD. The K
 * loop is unrolled 4x and ends on the first column's pointer; the first pass enters it where
 * it does the (k_pad / 4) mod 4 odd blocks (LDR PC from the address computed once per call).
 * "_c" variants clamp to [qmin, qmax] with SSUB8/SEL on the packed bytes; the others only
 * saturate to [-128, 127] (SSAT). Per row pair outside the K loop: 3 instructions before it,
 * 21 (23 clamping: 28) after. */
void qc_tile_w16(const int32_t *w, qc_tile_args *a);
void qc_tile_w16_c(const int32_t *w, qc_tile_args *a);
void qc_tile_w4(const int32_t *w, qc_tile_args *a);
void qc_tile_w4_c(const int32_t *w, qc_tile_args *a);
void qc_tile_w16_p(const int32_t *w, qc_tile_args *a);
void qc_tile_w4_p(const int32_t *w, qc_tile_args *a);

#define QC_STORE_PLAIN                \
    "\tssat r4, #8, r4\n"             \
    "\tssat r5, #8, r5\n"             \
    "\tssat r6, #8, r6\n"             \
    "\tssat r7, #8, r7\n"             \
    "\tldrd r8, r9, [sp, #12]\n"      \
    "\tstrb r4, [r8], #1\n"           \
    "\tstrb r6, [r8], #1\n"           \
    "\tstrb r5, [r9], #1\n"           \
    "\tstrb r7, [r9], #1\n"           \
    "\tstrd r8, r9, [sp, #12]\n"

#define QC_STORE_CLAMP                \
    "\tssat r4, #8, r4\n"             \
    "\tssat r5, #8, r5\n"             \
    "\tssat r6, #8, r6\n"             \
    "\tssat r7, #8, r7\n"             \
    "\tbfi r4, r6, #8, #8\n"          \
    "\tbfi r5, r7, #8, #8\n"          \
    "\tpkhbt r4, r4, r5, lsl #16\n"   \
    "\tldrd r10, r11, [sp, #24]\n"    \
    "\tssub8 r12, r4, r10\n"          \
    "\tsel r4, r4, r10\n"             \
    "\tssub8 r12, r4, r11\n"          \
    "\tsel r4, r11, r4\n"             \
    "\tldrd r8, r9, [sp, #12]\n"      \
    "\tstrh r4, [r8], #2\n"           \
    "\tlsr r4, r4, #16\n"             \
    "\tstrh r4, [r9], #2\n"           \
    "\tstrd r8, r9, [sp, #12]\n"

/* Packed 4-bit output (values in the u domain, bounds exactly [0, 15]): USAT, one byte per
 * pixel holding the pair's two channels. */
#define QC_STORE_PACK                 \
    "\tusat r4, #4, r4\n"             \
    "\tusat r5, #4, r5\n"             \
    "\tusat r6, #4, r6\n"             \
    "\tusat r7, #4, r7\n"             \
    "\torr r4, r4, r6, lsl #4\n"      \
    "\torr r5, r5, r7, lsl #4\n"      \
    "\tldrd r8, r9, [sp, #12]\n"      \
    "\tstrb r4, [r8], #1\n"           \
    "\tstrb r5, [r9], #1\n"           \
    "\tstrd r8, r9, [sp, #12]\n"

/* The K loop's end test: against r3 (8-bit weights), or (4-bit: r3 holds the nibble mask) against
 * the end kept in the frame, loaded into r12, which is free between steps. */
#define QC_KEND_R3 "\tcmp r1, r3\n"
#define QC_KEND_SP "\tldr r12, [sp, #32]\n\tcmp r1, r12\n"
#define QC_KINIT_R3 "\tldr r3, [r1, #32]\n"
#define QC_KINIT_SP "\tmov r3, #0xF0F0F0F0\n"

#define QC_TILE_FUNC(name, STEP, STORE, KINIT, KEND)                     \
    "\t.pushsection .text." #name ",\"ax\",%progbits\n"                 \
    "\t.syntax unified\n"                                               \
    "\t.thumb\n"                                                        \
    "\t.p2align 2\n"                                                    \
    "\t.global " #name "\n"                                             \
    "\t.type " #name ", %function\n"                                    \
    "\t.thumb_func\n"                                                   \
    #name ":\n"                                                         \
    "\tpush {r4-r11, lr}\n"                                             \
    "\tldr r4, [r1, #32]\n"                                             \
    "\tpush {r4}\n"                                                     \
    KINIT                                                               \
    "\tldm r1, {r4-r11}\n"                                              \
    "\tadr.w r12, 20f\n"                                                \
    "\tldr r4, [r12, r4, lsl #2]\n"                                     \
    "\tpush {r4-r11}\n"                                                 \
    "0:\n"                                                              \
    "\tldm r0!, {r4-r7}\n"                                              \
    "\tldrd r1, r2, [sp, #4]\n"                                         \
    "\tldr pc, [sp]\n"                                                  \
    "10:\n" STEP                                                        \
    "11:\n" STEP                                                        \
    "12:\n" STEP                                                        \
    "13:\n" STEP                                                        \
    "14:\n" STEP                                                        \
    "15:\n" STEP                                                        \
    "16:\n" STEP                                                        \
    "17:\n" STEP                                                        \
    KEND                                                                \
    "\tbne 10b\n"                                                       \
    "\tldm r0!, {r8-r12}\n"                                             \
    "\tsmmla r4, r4, r8, r9\n"                                          \
    "\tsmmla r5, r5, r8, r9\n"                                          \
    "\tsmmla r6, r6, r10, r11\n"                                        \
    "\tsmmla r7, r7, r10, r11\n"                                        \
    "\tasr r4, r4, r12\n"                                               \
    "\tasr r5, r5, r12\n"                                               \
    "\tlsr r12, r12, #8\n"                                              \
    "\tasr r6, r6, r12\n"                                               \
    "\tasr r7, r7, r12\n"                                               \
    STORE                                                               \
    "\tldr r8, [sp, #20]\n"                                             \
    "\tcmp r0, r8\n"                                                    \
    "\tbne 0b\n"                                                        \
    "\tadd sp, sp, #36\n"                                               \
    "\tpop {r4-r11, pc}\n"                                              \
    "\t.p2align 2\n"                                                    \
    "20:\n"                                                             \
    "\t.word 10b + 1, 17b + 1, 16b + 1, 15b + 1, 14b + 1, 13b + 1, 12b + 1, 11b + 1\n" \
    "\t.size " #name ", .-" #name "\n"                                  \
    "\t.popsection\n"

/* r8, r9 = row 0 (w0, w2), (w1, w3); r10, r11 = row 1; r12, lr = a column's (x0, x2), (x1, x3) */
#define QC_STEP_W16                  \
    "\tldm r0!, {r8-r11}\n"          \
    "\tldm r1!, {r12, lr}\n"         \
    "\tsmlad r4, r8, r12, r4\n"      \
    "\tsmlad r4, r9, lr, r4\n"       \
    "\tsmlad r6, r10, r12, r6\n"     \
    "\tsmlad r6, r11, lr, r6\n"      \
    "\tldm r2!, {r12, lr}\n"         \
    "\tsmlad r5, r8, r12, r5\n"      \
    "\tsmlad r5, r9, lr, r5\n"       \
    "\tsmlad r7, r10, r12, r7\n"     \
    "\tsmlad r7, r11, lr, r7\n"

/* One word holds both rows' 4 nibbles (row 0 low, row 1 high); each nibble is moved
 * to the top of a byte (16x its value; r3 = 0xF0F0F0F0) and sign extended in pairs. */
#define QC_STEP_W4                   \
    "\tldr r8, [r0], #4\n"           \
    "\tldm r1!, {r12, lr}\n"         \
    "\tand r9, r8, r3\n"             \
    "\tand r8, r3, r8, lsl #4\n"     \
    "\tsxtb16 r10, r8\n"             \
    "\tsxtb16 r8, r8, ror #8\n"      \
    "\tsxtb16 r11, r9\n"             \
    "\tsxtb16 r9, r9, ror #8\n"      \
    "\tsmlad r4, r10, r12, r4\n"     \
    "\tsmlad r4, r8, lr, r4\n"       \
    "\tsmlad r6, r11, r12, r6\n"     \
    "\tsmlad r6, r9, lr, r6\n"       \
    "\tldm r2!, {r12, lr}\n"         \
    "\tsmlad r5, r10, r12, r5\n"     \
    "\tsmlad r5, r8, lr, r5\n"       \
    "\tsmlad r7, r11, r12, r7\n"     \
    "\tsmlad r7, r9, lr, r7\n"

/* Interleaved columns (qc_widen_pair): a block of 4 K of pixel 0 then the same block of pixel 1,
 * so one LDM fetches both: r2, r3 = pixel 0's (x0, x2), (x1, x3); r12, lr = pixel 1's. 2 LDM +
 * 8 SMLAD per 16 MACs; the K loop ends on the end kept in the frame (c0 + 2 * k_pad). */
#define QC_STEP_W16I                 \
    "\tldm r0!, {r8-r11}\n"          \
    "\tldm r1!, {r2, r3, r12, lr}\n" \
    "\tsmlad r4, r8, r2, r4\n"       \
    "\tsmlad r4, r9, r3, r4\n"       \
    "\tsmlad r6, r10, r2, r6\n"      \
    "\tsmlad r6, r11, r3, r6\n"      \
    "\tsmlad r5, r8, r12, r5\n"      \
    "\tsmlad r5, r9, lr, r5\n"       \
    "\tsmlad r7, r10, r12, r7\n"     \
    "\tsmlad r7, r11, lr, r7\n"

void qc_tile_w16i(const int32_t *w, qc_tile_args *a);
void qc_tile_w16i_c(const int32_t *w, qc_tile_args *a);
void qc_tile_w16i_p(const int32_t *w, qc_tile_args *a);

__asm__(QC_TILE_FUNC(qc_tile_w16i, QC_STEP_W16I, QC_STORE_PLAIN, "", QC_KEND_SP)
        QC_TILE_FUNC(qc_tile_w16i_c, QC_STEP_W16I, QC_STORE_CLAMP, "", QC_KEND_SP)
        QC_TILE_FUNC(qc_tile_w16i_p, QC_STEP_W16I, QC_STORE_PACK, "", QC_KEND_SP));

__asm__(QC_TILE_FUNC(qc_tile_w16, QC_STEP_W16, QC_STORE_PLAIN, QC_KINIT_R3, QC_KEND_R3)
        QC_TILE_FUNC(qc_tile_w16_c, QC_STEP_W16, QC_STORE_CLAMP, QC_KINIT_R3, QC_KEND_R3)
        QC_TILE_FUNC(qc_tile_w4, QC_STEP_W4, QC_STORE_PLAIN, QC_KINIT_SP, QC_KEND_SP)
        QC_TILE_FUNC(qc_tile_w4_c, QC_STEP_W4, QC_STORE_CLAMP, QC_KINIT_SP, QC_KEND_SP)
        QC_TILE_FUNC(qc_tile_w16_p, QC_STEP_W16, QC_STORE_PACK, QC_KINIT_R3, QC_KEND_R3)
        QC_TILE_FUNC(qc_tile_w4_p, QC_STEP_W4, QC_STORE_PACK, QC_KINIT_SP, QC_KEND_SP));

/* int16_t *qc_widen_rows(int16_t *dst, const int8_t *src, int32_t n, int32_t rows, int32_t stride):
 * rows runs of n int8 (n a multiple of 4; the runs stride bytes apart) into dst as int16, each
 * block of 4 stored x0, x2, x1, x3 (SXTB16); returns the end of what was written. dst is word
 * aligned. 16 bytes per pass: LDM (or 4 LDR when src is not word aligned), 8 SXTB16, STM;
 * runs of exactly 4 bytes (a one-channel input layer) take a 7-instruction loop. */
int16_t *qc_widen_rows(int16_t *dst, const int8_t *src, int32_t n, int32_t rows, int32_t stride);

#define QC_SXTB16_8                  \
    "\tsxtb16 r4, r5\n"              \
    "\tsxtb16 r5, r5, ror #8\n"      \
    "\tsxtb16 r6, r7\n"              \
    "\tsxtb16 r7, r7, ror #8\n"      \
    "\tsxtb16 r8, r9\n"              \
    "\tsxtb16 r9, r9, ror #8\n"      \
    "\tsxtb16 r10, r11\n"            \
    "\tsxtb16 r11, r11, ror #8\n"

__asm__("\t.pushsection .text.qc_widen_rows,\"ax\",%progbits\n"
        "\t.syntax unified\n"
        "\t.thumb\n"
        "\t.p2align 2\n"
        "\t.global qc_widen_rows\n"
        "\t.type qc_widen_rows, %function\n"
        "\t.thumb_func\n"
        "qc_widen_rows:\n"
        "\tpush {r4-r11, lr}\n"
        "\tldr r12, [sp, #36]\n"
        "\tcmp r2, #4\n"
        "\tbeq 8f\n"
        "\tsub r12, r12, r2\n"
        "1:\n"
        "\tmov lr, r2\n"
        "\ttst r1, #3\n"
        "\tbne 6f\n"
        "\tsubs lr, lr, #16\n"
        "\tblt 3f\n"
        "2:\n"
        "\tldm r1!, {r5, r7, r9, r11}\n"
        QC_SXTB16_8
        "\tstm r0!, {r4-r11}\n"
        "\tsubs lr, lr, #16\n"
        "\tbge 2b\n"
        "3:\n"
        "\tadds lr, lr, #16\n"
        "\tbeq 5f\n"
        "4:\n"
        "\tldr r5, [r1], #4\n"
        "\tsxtb16 r4, r5\n"
        "\tsxtb16 r5, r5, ror #8\n"
        "\tstrd r4, r5, [r0], #8\n"
        "\tsubs lr, lr, #4\n"
        "\tbne 4b\n"
        "5:\n"
        "\tadd r1, r1, r12\n"
        "\tsubs r3, r3, #1\n"
        "\tbne 1b\n"
        "\tpop {r4-r11, pc}\n"
        "6:\n"
        "\tsubs lr, lr, #16\n"
        "\tblt 3b\n"
        "7:\n"
        "\tldr r5, [r1], #4\n"
        "\tldr r7, [r1], #4\n"
        "\tldr r9, [r1], #4\n"
        "\tldr r11, [r1], #4\n"
        QC_SXTB16_8
        "\tstm r0!, {r4-r11}\n"
        "\tsubs lr, lr, #16\n"
        "\tbge 7b\n"
        "\tb 3b\n"
        "8:\n"
        "\tldr r5, [r1]\n"
        "\tadd r1, r1, r12\n"
        "\tsxtb16 r4, r5\n"
        "\tsxtb16 r5, r5, ror #8\n"
        "\tstrd r4, r5, [r0], #8\n"
        "\tsubs r3, r3, #1\n"
        "\tbne 8b\n"
        "\tpop {r4-r11, pc}\n"
        "\t.size qc_widen_rows, .-qc_widen_rows\n"
        "\t.popsection\n");

/* int16_t *qc_widen_rows_pk(int16_t *dst, const int8_t *src, int32_t n, int32_t rows, int32_t stride):
 * the same for packed 4-bit values: rows runs of n nibbles (n a multiple of 8, each run starting
 * at a byte), each group of 8 stored x0, x4, x2, x6, x1, x5, x3, x7 (qc_colpos with k8): per word
 * LDR, AND, AND of the word shifted by 4, 4 UXTB16, STM. */
int16_t *qc_widen_rows_pk(int16_t *dst, const int8_t *src, int32_t n, int32_t rows, int32_t stride);

__asm__("\t.pushsection .text.qc_widen_rows_pk,\"ax\",%progbits\n"
        "\t.syntax unified\n"
        "\t.thumb\n"
        "\t.p2align 2\n"
        "\t.global qc_widen_rows_pk\n"
        "\t.type qc_widen_rows_pk, %function\n"
        "\t.thumb_func\n"
        "qc_widen_rows_pk:\n"
        "\tpush {r4-r11, lr}\n"
        "\tldr r12, [sp, #36]\n"
        "\tsub r12, r12, r2, lsr #1\n"
        "\tmov r11, #0x0F0F0F0F\n"
        "1:\n"
        "\tmov lr, r2\n"
        "2:\n"
        "\tldr r5, [r1], #4\n"
        "\tand r4, r5, r11\n"
        "\tand r6, r11, r5, lsr #4\n"
        "\tuxtb16 r7, r4\n"
        "\tuxtb16 r8, r4, ror #8\n"
        "\tuxtb16 r9, r6\n"
        "\tuxtb16 r10, r6, ror #8\n"
        "\tstm r0!, {r7-r10}\n"
        "\tsubs lr, lr, #8\n"
        "\tbne 2b\n"
        "\tadd r1, r1, r12\n"
        "\tsubs r3, r3, #1\n"
        "\tbne 1b\n"
        "\tpop {r4-r11, pc}\n"
        "\t.size qc_widen_rows_pk, .-qc_widen_rows_pk\n"
        "\t.popsection\n");
#else
/* Portable: the same layouts (each block of 4 as x0, x2, x1, x3; packed: groups of 8 as
 * x0, x4, x2, x6, x1, x5, x3, x7). */
static int16_t *qc_widen_rows_pk(int16_t *dst, const int8_t *src, int32_t n, int32_t rows, int32_t stride)
{
    int32_t r, j;
    for (r = 0; r < rows; r++, src += stride) {
        for (j = 0; j < n; j++) dst[qc_colpos(j, 1)] = (int16_t)qc_get(src, j, 1);
        dst += n;
    }
    return dst;
}

static int16_t *qc_widen_rows(int16_t *dst, const int8_t *src, int32_t n, int32_t rows, int32_t stride)
{
    int32_t r, j;
    for (r = 0; r < rows; r++, src += stride) {
        for (j = 0; j < n; j += 4, dst += 4) {
            dst[0] = src[j];
            dst[1] = src[j + 2];
            dst[2] = src[j + 1];
            dst[3] = src[j + 3];
        }
    }
    return dst;
}
#endif

