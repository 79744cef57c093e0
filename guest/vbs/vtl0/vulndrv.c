/*
 * THE DELIBERATELY VULNERABLE DRIVER (for the attack suite): system call SYS_VULNDRV gives ring 3
 * an arbitrary kernel read, an arbitrary kernel write and a controlled indirect call.  Compiled in
 * always, enabled only with the bare word "vulndrv" on the command line (else -ENOSYS).  No address
 * is checked: a fault is a kernel oops that kills the calling process.  The indirect call goes
 * through kCFG like every other indirect call of the kernel.
 */
#include "lib/string.h"
#include "vbs/vtl0/kernel.h"

long sys_vulndrv(struct trapframe *tf)
{
    if (!vbs.vulndrv)
        return -ENOSYS;
    u64 op = tf->rdi, a = tf->rsi, b = tf->rdx;
    switch (op) {
    case VULNDRV_READ: {
        u64 v = *(volatile u64 *)a;
        kprintf("  vulndrv: read  [0x%lx] -> 0x%lx\n", a, v);
        return (long)v;
    }
    case VULNDRV_WRITE:
        kprintf("  vulndrv: write [0x%lx] <- 0x%lx\n", a, b);
        *(volatile u64 *)a = b;
        return 0;
    case VULNDRV_CALL:
        kprintf("  vulndrv: call 0x%lx(0x%lx)\n", a, b);
        if (!kcfg_valid(a)) {
            kcfg_violation(a, "vulndrv call");
            kill_current(tf, 0, false, true);
        }
        return (long)((u64(*)(u64))a)(b); /* kCFG-checked above: the process dies on an invalid target */
    default:
        return -EINVAL;
    }
}
