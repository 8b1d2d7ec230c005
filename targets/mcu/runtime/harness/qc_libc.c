/*
 * qc_libc.c - memcpy/memset for the bare-metal images (no newlib). The compiler
 * may emit calls to these for struct copies; they are linked next to the model
 * code so that instruction counts over the model's address range include them.
 */
#include <stddef.h>

/* Without this, gcc recognises the loops below as memcpy/memset and calls them: recursion. */
#define QC_NO_LIBCALL __attribute__((optimize("no-tree-loop-distribute-patterns")))

void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);

QC_NO_LIBCALL void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    while (n--) *d++ = *s++;
    return dst;
}

QC_NO_LIBCALL void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = (unsigned char *)dst;
    while (n--) *d++ = (unsigned char)c;
    return dst;
}
