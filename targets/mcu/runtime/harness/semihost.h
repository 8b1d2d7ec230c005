/* semihost.h - the few semihosting calls the QEMU harness needs. */
#ifndef QC_SEMIHOST_H
#define QC_SEMIHOST_H
#include <stdint.h>

int32_t qc_semihost(int32_t op, const void *arg);
void qc_exit(int32_t code);

#define QC_SYS_OPEN 0x01
#define QC_SYS_CLOSE 0x02
#define QC_SYS_WRITE0 0x04
#define QC_SYS_WRITE 0x05
#define QC_SYS_READ 0x06
#define QC_SYS_FLEN 0x0C
#endif
