/*
 * startup.c - the smallest bare-metal start for the QEMU test boards: a vector
 * table, a reset handler that sets up .data/.bss, semihosting calls (BKPT 0xAB)
 * for file I/O and exit, and a fault handler that exits instead of hanging.
 * No newlib: the image holds only this, the model and the kernels.
 */
#include <stddef.h>
#include <stdint.h>

#include "semihost.h"

extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[], __stack_top[];
int main(void);

void qc_reset_handler(void);
void qc_fault_handler(void);

__attribute__((section(".vectors"), used)) static void (*const qc_vectors[16])(void) = {
    (void (*)(void))(uintptr_t)__stack_top, /* initial SP */
    qc_reset_handler,
    qc_fault_handler, /* NMI */
    qc_fault_handler, /* HardFault */
    qc_fault_handler, /* MemManage */
    qc_fault_handler, /* BusFault */
    qc_fault_handler, /* UsageFault */
    qc_fault_handler, /* SecureFault */
    0, 0, 0,
    qc_fault_handler, /* SVC */
    qc_fault_handler, /* DebugMon */
    0,
    qc_fault_handler, /* PendSV */
    qc_fault_handler, /* SysTick */
};

int32_t qc_semihost(int32_t op, const void *arg)
{
    register int32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void qc_exit(int32_t code)
{
    /* SYS_EXIT_EXTENDED: QEMU passes the code on as its own exit status. */
    uint32_t block[2];
    block[0] = 0x20026u; /* ADP_Stopped_ApplicationExit */
    block[1] = (uint32_t)code;
    qc_semihost(0x20, block);
    for (;;) {
    }
}

/* gcc may turn the harness's string loops into strlen calls; there is no libc. */
size_t strlen(const char *s);
__attribute__((optimize("no-tree-loop-distribute-patterns"))) size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

void qc_fault_handler(void)
{
    qc_semihost(0x04, "qc: fault\n");
    qc_exit(3);
}

void qc_reset_handler(void)
{
    /* volatile: keeps GCC from turning the loops into memcpy/memset calls, which live in
     * qc_libc.o inside the range whose instructions are counted as the model's */
    uint32_t *s = __data_load;
    volatile uint32_t *d = __data_start;
    while (d < __data_end) *d++ = *s++;
    for (d = __bss_start; d < __bss_end; d++) *d = 0;
    qc_exit(main());
}
