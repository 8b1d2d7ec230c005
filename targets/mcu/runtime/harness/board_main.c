/*
 * board_main.c - runs the model under QEMU: reads inputs from qc_in.bin (host
 * file via semihosting; a whole number of QC_INPUT_SIZE records), runs qc_run on
 * each, writes the outputs to qc_out.bin, and prints the stack high-water mark
 * of qc_run (the stack below the caller is painted first and scanned after).
 */
#include <stdint.h>

#include "model.h"
#include "semihost.h"

#define QC_PAINT 0xA5C3E10Fu

extern uint32_t __stack_limit[];

static int8_t in_buf[QC_INPUT_SIZE];
static volatile uintptr_t stack_top_seen;
static int8_t out_buf[QC_OUTPUT_SIZE];

static void put_str(const char *s)
{
    qc_semihost(QC_SYS_WRITE0, s);
}

static void put_hex(uint32_t v)
{
    char b[11];
    int i;
    b[0] = '0';
    b[1] = 'x';
    for (i = 0; i < 8; i++) {
        uint32_t d = (v >> (28 - 4 * i)) & 0xFu;
        b[2 + i] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
    }
    b[10] = 0;
    put_str(b);
}

static int32_t open_file(const char *name, int32_t mode)
{
    uint32_t a[3];
    uint32_t n = 0;
    while (name[n]) n++;
    a[0] = (uint32_t)(uintptr_t)name;
    a[1] = (uint32_t)mode; /* 1 = "rb", 5 = "wb" */
    a[2] = n;
    return qc_semihost(QC_SYS_OPEN, a);
}

/* Paint from the stack limit up to just below this (leaf) function's frame.
 * Not inlined, so its frame is gone when qc_run starts; qc_run's stack use is
 * measured from there (it may be under-reported by this frame's few bytes). */
__attribute__((noinline)) static uint32_t *paint_stack(void)
{
    volatile uint32_t here = 0;
    uint32_t *p;
    stack_top_seen = (uintptr_t)&here & ~(uintptr_t)3;
    for (p = __stack_limit; p < (uint32_t *)stack_top_seen; p++) *p = QC_PAINT;
    return (uint32_t *)stack_top_seen;
}

__attribute__((noinline)) static uint32_t *lowest_touched(uint32_t *top)
{
    uint32_t *p = __stack_limit;
    while (p < top && *p == QC_PAINT) p++;
    return p;
}

int main(void)
{
    int32_t fin, fout, len, n, i, rc;
    uint32_t args[3];
    uint32_t stack_max = 0;
    fin = open_file("qc_in.bin", 1);
    fout = open_file("qc_out.bin", 5);
    if (fin < 0 || fout < 0) {
        put_str("qc: cannot open qc_in.bin / qc_out.bin\n");
        return 2;
    }
    len = qc_semihost(QC_SYS_FLEN, &fin);
    n = len / QC_INPUT_SIZE;
    for (i = 0; i < n; i++) {
        uint32_t *top, *low;
        args[0] = (uint32_t)fin;
        args[1] = (uint32_t)(uintptr_t)in_buf;
        args[2] = QC_INPUT_SIZE;
        if (qc_semihost(QC_SYS_READ, args) != 0) return 4;
        top = paint_stack();
        rc = qc_run(in_buf, out_buf);
        low = lowest_touched(top);
        if (rc != 0) return 5;
        if ((uint32_t)((uintptr_t)top - (uintptr_t)low) > stack_max)
            stack_max = (uint32_t)((uintptr_t)top - (uintptr_t)low);
        args[0] = (uint32_t)fout;
        args[1] = (uint32_t)(uintptr_t)out_buf;
        args[2] = QC_OUTPUT_SIZE;
        if (qc_semihost(QC_SYS_WRITE, args) != 0) return 6;
    }
    args[0] = (uint32_t)fin;
    qc_semihost(QC_SYS_CLOSE, args);
    args[0] = (uint32_t)fout;
    qc_semihost(QC_SYS_CLOSE, args);
    put_str("qc: runs=");
    put_hex((uint32_t)n);
    put_str(" stack=");
    put_hex(stack_max);
    put_str("\n");
    return 0;
}
