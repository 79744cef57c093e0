/*
 * HyperGuard and the violation monitor as a feature domain (the domains design's counterpart of
 * guest/vbs/sk/hyperguard.c, docs/domains.md).  What this domain can do is what the kernel delegated:
 * INTERCEPT capabilities for CR0 (WP|PG|PE), CR4 (SMEP|SMAP|UMIP), the eight SYSCALL/SYSENTER/EFER MSRs,
 * the descriptor-table registers and the kernel's memory violations, and a name for the kernel with
 * REGS_READ (to learn the values it locks).  It cannot change any memory protection or register: the
 * events reach it in registers and it answers each with a decision (#GP, skip).  The log lines and the
 * GET_VIOLATION records are the VSM design's, so the kernel's checks read both the same way.
 */
#include "lib/io.h"
#include "lib/string.h"
#include "lib/x86.h"
#include "vbs/dom/dom.h"
#include "vbs/sk/sk.h"

void sk_record_violation(u32 kind, u32 access, u32 action, u64 addr, u64 rip, u64 value);

static const struct {
    u32 msr, reg;
    const char *name;
} locked_msrs[] = {
    {0xc0000082u, DOM_REG_LSTAR, "LSTAR"},         {0xc0000081u, DOM_REG_STAR, "STAR"},
    {0xc0000083u, DOM_REG_CSTAR, "CSTAR"},         {0xc0000084u, DOM_REG_SFMASK, "SFMASK"},
    {0xc0000080u, DOM_REG_EFER, "EFER"},           {0x174u, DOM_REG_SYSENTER_CS, "SYSENTER_CS"},
    {0x176u, DOM_REG_SYSENTER_EIP, "SYSENTER_EIP"}, {0x175u, DOM_REG_SYSENTER_ESP, "SYSENTER_ESP"},
};
static u64 locked_value[ARRAY_SIZE(locked_msrs)];
static u64 locked_cr0, locked_cr4, mask_cr0, mask_cr4;

static const struct dom_cap *intercept_cap(u64 kind, u64 param)
{
    for (int i = 0; i < dom_ncaps; i++)
        if (dom_caps[i].type == DOM_CAP_INTERCEPT && dom_caps[i].p0 == kind && (param == ~0ull || dom_caps[i].p1 == param))
            return &dom_caps[i];
    return NULL;
}

void dom_monitor_init(void)
{
    const struct dom_cap *c = intercept_cap(DOM_INT_MEM, ~0ull);
    if (!c || dom_kernel == ~0ull)
        return;
    long r = dom_hc(DOM_HC_INTERCEPT, c->handle, dom_kernel, 1, 0).rax;
    SK_LOG("monitor: the kernel's memory violations (accesses 0x%lx) come to this domain: %ld\n", c->p1, r);
}

static long reg(u64 which, u64 *v)
{
    struct dom_hc_ret r = dom_hc(DOM_HC_REGS_GET, dom_kernel_regs, which, 0, 0);
    *v = r.rbx;
    return r.rax;
}

long sk_lock_regs(void)
{
    if (sk_armed & VBS_F_HYPERGUARD)
        return 0;
    const struct dom_cap *cr0 = intercept_cap(DOM_INT_CR0, ~0ull), *cr4 = intercept_cap(DOM_INT_CR4, ~0ull),
                         *dtr = intercept_cap(DOM_INT_DTR, ~0ull);
    if (dom_kernel_regs == ~0ull || !cr0 || !cr4 || !dtr) {
        SK_LOG("hyperguard: missing capabilities (kernel REGS_READ %s, CR0 %s, CR4 %s, descriptor tables %s)\n",
               dom_kernel_regs == ~0ull ? "no" : "yes", cr0 ? "yes" : "no", cr4 ? "yes" : "no", dtr ? "yes" : "no");
        return -VBS_EPERM;
    }
    if (reg(DOM_REG_CR0, &locked_cr0) || reg(DOM_REG_CR4, &locked_cr4))
        return -VBS_EFAULT;
    mask_cr0 = cr0->p1;
    mask_cr4 = cr4->p1;
    const struct dom_cap *caps[2 + ARRAY_SIZE(locked_msrs) + 1] = {cr0, cr4};
    int n = 2;
    for (u64 i = 0; i < ARRAY_SIZE(locked_msrs); i++) {
        const struct dom_cap *m = intercept_cap(DOM_INT_MSR, locked_msrs[i].msr);
        if (!m) {
            SK_LOG("hyperguard: no capability to intercept %s\n", locked_msrs[i].name);
            return -VBS_EPERM;
        }
        if (reg(locked_msrs[i].reg, &locked_value[i]))
            return -VBS_EFAULT;
        caps[n++] = m;
    }
    caps[n++] = dtr;
    for (int i = 0; i < n; i++) {
        long r = dom_hc(DOM_HC_INTERCEPT, caps[i]->handle, dom_kernel, 1, 0).rax;
        if (r) {
            SK_LOG("hyperguard: INTERCEPT_SET(kind %lu, 0x%lx): %ld\n", caps[i]->p0, caps[i]->p1, r);
            return -VBS_EFAULT;
        }
    }
    sk_armed |= VBS_F_HYPERGUARD;
    SK_LOG("hyperguard: locked CR0 0x%lx (mask 0x%lx) CR4 0x%lx (mask 0x%lx), LSTAR 0x%lx STAR 0x%lx SFMASK 0x%lx "
           "EFER 0x%lx, SYSENTER_*, GDTR/IDTR/LDTR/TR (%d INTERCEPT capabilities on domain 0)\n", locked_cr0, mask_cr0,
           locked_cr4, mask_cr4, locked_value[0], locked_value[1], locked_value[3], locked_value[4], n);
    return 0;
}

static const char *access_name(u64 a) { return a == 0 ? "read" : a == 1 ? "write" : "execute"; }

/* the same labels as VTL1's: the secure region by slot, VTL0 memory by the layout LOAD_KDATA gave us; a
 * KDP page is known by who protected it (R10: the domain that set the protection; domain n+1 is role n) */
static const char *label(u64 gpa, u64 grantor)
{
    static char buf[96];
    if (gpa >= DOM_REGION_BASE && gpa < DOM_REGION_BASE + DOM_REGION_SIZE) {
        u64 role = (gpa - DOM_REGION_BASE) / DOM_SLOT_SIZE;
        u64 key = DOM_SLOT_BASE(DOM_ROLE_CRED) + ((u64)sk_cred_key - SK_BASE);
        ksnprintf(buf, sizeof(buf), "secure memory, the %s domain%s", dom_role_names[role],
                  gpa >= key && gpa < key + 4096 ? ": the credential key" : "");
        return buf;
    }
    const char *l = sk_label(gpa); /* the module records and KDP's ranges live in those domains, not here */
    if (grantor == DOM_ROLE_KDP + 1 && !strcmp(l, "VTL0 memory (HVCI: not executable)"))
        return "registered data (KDP)";
    if (grantor == DOM_ROLE_HVCI + 1 && !strcmp(l, "module area (not validated)"))
        return "validated module (HVCI)";
    return l;
}

static u32 dtr_reg(u64 table)
{
    static const u32 names[4] = {HvX64RegisterGdtr, HvX64RegisterIdtr, HvX64RegisterLdtr, HvX64RegisterTr};
    return names[table & 3];
}

void sk_intercept(struct sk_regs *r)
{
    u64 ev = r->rdi, rip = r->r8;
    dom_action = DOM_ACT_GP;
    switch (ev) {
    case DOM_EV_MEM: {
        u64 gpa = r->rsi, access = r->r9;
        sk_record_violation(VBS_V_GPA, (u32)access, VBS_ACT_GP, gpa, rip, 0);
        SK_LOG("violation: VTL0 %s of gpa 0x%lx at rip 0x%lx (%s) -> #GP\n", access_name(access), gpa, rip,
               label(gpa, r->r10));
        return;
    }
    case DOM_EV_MSR: {
        u64 msr = r->rsi, value = r->r9;
        for (u64 i = 0; i < ARRAY_SIZE(locked_msrs); i++) {
            if (locked_msrs[i].msr != msr)
                continue;
            if (value == locked_value[i]) {
                sk_record_violation(VBS_V_MSR, HV_INTERCEPT_ACCESS_WRITE, VBS_ACT_SKIP, msr, rip, value);
                SK_LOG("hyperguard: wrmsr %s 0x%lx at rip 0x%lx rewrites the locked value: skipped\n",
                       locked_msrs[i].name, value, rip);
                dom_action = DOM_ACT_SKIP;
                return;
            }
            sk_record_violation(VBS_V_MSR, HV_INTERCEPT_ACCESS_WRITE, VBS_ACT_GP, msr, rip, value);
            SK_LOG("violation: VTL0 wrmsr %s 0x%lx (locked 0x%lx) at rip 0x%lx -> #GP\n", locked_msrs[i].name, value,
                   locked_value[i], rip);
            return;
        }
        sk_record_violation(VBS_V_MSR, HV_INTERCEPT_ACCESS_WRITE, VBS_ACT_GP, msr, rip, value);
        SK_LOG("violation: VTL0 MSR 0x%lx write at rip 0x%lx -> #GP\n", msr, rip);
        return;
    }
    case DOM_EV_CR: {
        u64 value = r->rsi, cr = r->r10;
        u32 name = cr == 0 ? HvX64RegisterCr0 : HvX64RegisterCr4;
        u64 locked = cr == 0 ? locked_cr0 : locked_cr4, mask = cr == 0 ? mask_cr0 : mask_cr4;
        sk_record_violation(VBS_V_REG, HV_INTERCEPT_ACCESS_WRITE, VBS_ACT_GP, name, rip, value);
        SK_LOG("violation: VTL0 mov to CR%lu 0x%lx changes locked bits 0x%lx at rip 0x%lx -> #GP\n", cr, value,
               (value ^ locked) & mask, rip);
        return;
    }
    case DOM_EV_DTR: {
        static const char *const n[4] = {"GDTR", "IDTR", "LDTR", "TR"};
        u64 table = r->rsi & 3, value = r->r9;
        sk_record_violation(VBS_V_REG, HV_INTERCEPT_ACCESS_WRITE, VBS_ACT_GP, dtr_reg(table), rip, value);
        SK_LOG("violation: VTL0 write of %s (base 0x%lx) at rip 0x%lx -> #GP\n", n[table], value, rip);
        return;
    }
    default:
        SK_LOG("unexpected event %lu at rip 0x%lx -> #GP\n", ev, rip);
    }
}
