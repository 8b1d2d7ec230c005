/*
 * qc_config.h - which kernel variants qc_kernels.c compiles. qcompiler writes one per
 * model next to qc_kernels.c (only what that model uses, so the rest costs no flash);
 * this default turns everything on.
 *  QC_PACKED: kernels read and write 4-bit tensors packed two per byte.
 *  QC_TILES:  conv / fully connected tile kernels (Armv7E-M DSP builds), a mask of
 *             1 w16, 2 w16 clamping, 4 w16 packed output, 8 w4, 16 w4 clamping,
 *             32 w4 packed output, 64/128/256 the w16 ones on interleaved columns (convs
 *             on unpacked inputs); a layer whose variant is off runs the portable C.
 *  QC_DW:     depthwise 4-channel paths (DSP builds): 1 8-bit weights on unpacked
 *             tensors, 2 packed tensors or 4-bit weights.
 */
#ifndef QC_CONFIG_H
#define QC_CONFIG_H
#define QC_PACKED 1
#define QC_TILES 0x1FF
#define QC_DW 3
#endif /* QC_CONFIG_H */
