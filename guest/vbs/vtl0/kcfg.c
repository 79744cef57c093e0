/*
 * kCFG: every deliberate indirect call of the kernel (system-call dispatch, module init and hooks,
 * the check table, the vulnerable driver's call) first asks kcfg_valid().  The bitmap (struct vbs_kcfg
 * in .kcfg) is built at link time from the KCFG_TARGET() list; VTL1 makes it read-only for VTL0 and
 * adds the targets of the modules it validated.
 */
#include "lib/string.h"
#include "vbs/vtl0/kernel.h"

u64 kcfg_blocked;

bool kcfg_valid(u64 t)
{
    if (!vbs.kcfg)
        return true;
    if (t & 15)
        return false;
    const struct vbs_kcfg *k = (const void *)__kcfg_start;
    u64 ks = (u64)__kernel_start;
    if (t >= ks && t < ks + KCFG_SPAN && t < (u64)__ktext_end) {
        u64 i = (t - ks) / 16;
        return (k->kernel[i / 8] >> (i % 8)) & 1;
    }
    if (t >= MODULE_BASE && t < MODULE_BASE + MODULE_SIZE) {
        u64 i = (t - MODULE_BASE) / 16;
        return (k->module[i / 8] >> (i % 8)) & 1;
    }
    return false;
}

void kcfg_violation(u64 target, const char *site)
{
    kcfg_blocked++;
    kprintf("  kcfg: blocked indirect call to 0x%lx from %s: not a valid call target\n", target, site);
}

void kcfg_set_module_target(u64 va)
{
    if (!vbs.kcfg || (vbs.armed & VBS_F_KCFG) || va < MODULE_BASE || va >= MODULE_BASE + MODULE_SIZE || (va & 15))
        return;
    struct vbs_kcfg *k = (void *)physmap((u64)__kcfg_start); /* our own mapping is read-only */
    u64 i = (va - MODULE_BASE) / 16;
    k->module[i / 8] |= (u8)(1u << (i % 8));
}

u64 kcfg_icall(u64 target, u64 arg, const char *site, bool *blocked)
{
    if (!kcfg_valid(target)) {
        kcfg_violation(target, site);
        *blocked = true;
        return 0;
    }
    *blocked = false;
    return ((u64(*)(u64))target)(arg);
}
