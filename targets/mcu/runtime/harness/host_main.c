/*
 * host_main.c - the model on the development machine, for quick checks:
 * reads whole QC_INPUT_SIZE records from stdin (or argv[1]) and writes one
 * QC_OUTPUT_SIZE record per input to stdout (or argv[2]).
 */
#include <stdio.h>

#include "model.h"

int main(int argc, char **argv)
{
    static int8_t in[QC_INPUT_SIZE], out[QC_OUTPUT_SIZE];
    FILE *fi = argc > 1 ? fopen(argv[1], "rb") : stdin;
    FILE *fo = argc > 2 ? fopen(argv[2], "wb") : stdout;
    int n = 0;
    if (!fi || !fo) {
        fprintf(stderr, "qc_host: cannot open files\n");
        return 2;
    }
    while (fread(in, 1, sizeof in, fi) == sizeof in) {
        if (qc_run(in, out) != 0) return 5;
        if (fwrite(out, 1, sizeof out, fo) != sizeof out) return 6;
        n++;
    }
    fprintf(stderr, "qc_host: runs=%d\n", n);
    return 0;
}
