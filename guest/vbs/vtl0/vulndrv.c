/*
 * THE DELIBERATELY VULNERABLE DRIVER (for the attack suite): system call SYS_VULNDRV gives ring 3
 * an arbitrary kernel read, an arbitrary kernel write and a controlled indirect call (one argument, or
 * up to six with VULNDRV_CALL6).  Compiled in always, enabled only with the bare word "vulndrv" on the
 * command line (else -ENOSYS).  No address is checked: a fault is a kernel oops that kills the calling
 * process.  The indirect call goes through kCFG like every other indirect call of the kernel.
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
    case VULNDRV_CALL6: {
        /* (docs/attacks.md) the arguments come from a user array, as a ROP chain stages them */
        u64 v[6];
        if (!user_range_ok(b, sizeof(v)))
            return -EFAULT;
        user_copy_in(v, b, sizeof(v));
        kprintf("  vulndrv: call 0x%lx(0x%lx, 0x%lx, 0x%lx, 0x%lx, 0x%lx, 0x%lx)\n", a, v[0], v[1], v[2], v[3], v[4],
                v[5]);
        if (!kcfg_valid(a)) {
            kcfg_violation(a, "vulndrv call6");
            kill_current(tf, 0, false, true);
        }
        return (long)((u64(*)(u64, u64, u64, u64, u64, u64))a)(v[0], v[1], v[2], v[3], v[4], v[5]);
    }
    default:
        return -EINVAL;
    }
}
