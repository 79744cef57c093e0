/*
 * HyperGuard: lock VTL0's CR0/CR4 bits, the SYSCALL/SYSENTER MSRs, EFER and the descriptor-table
 * registers with secure intercepts, and handle every intercept VTL0 raises (memory violations too):
 * log, record, inject #GP (or skip an idempotent MSR rewrite), return to VTL0 with its registers.
 */
#include "lib/string.h"
#include "lib/x86.h"
#include "vbs/sk/sk.h"

void sk_record_violation(u32 kind, u32 access, u32 action, u64 addr, u64 rip, u64 value);
extern u8 sk_simp_page[];

#define CR0_LOCK (CR0_WP | CR0_PG | CR0_PE)
#define CR4_LOCK (CR4_SMEP | CR4_SMAP | CR4_UMIP)

static const struct {
    u32 msr, reg;
    u64 bit;
    const char *name;
} locked_msrs[] = {
    {0xc0000082u, HvX64RegisterLstar, HV_CRI_MSR_LSTAR_WRITE, "LSTAR"},
    {0xc0000081u, HvX64RegisterStar, HV_CRI_MSR_STAR_WRITE, "STAR"},
    {0xc0000083u, HvX64RegisterCstar, HV_CRI_MSR_CSTAR_WRITE, "CSTAR"},
    {0xc0000084u, HvX64RegisterSfmask, HV_CRI_MSR_SFMASK_WRITE, "SFMASK"},
    {0xc0000080u, HvX64RegisterEfer, HV_CRI_MSR_EFER_WRITE, "EFER"},
    {0x174u, HvX64RegisterSysenterCs, HV_CRI_MSR_SYSENTER_CS_WRITE, "SYSENTER_CS"},
    {0x176u, HvX64RegisterSysenterEip, HV_CRI_MSR_SYSENTER_EIP_WRITE, "SYSENTER_EIP"},
    {0x175u, HvX64RegisterSysenterEsp, HV_CRI_MSR_SYSENTER_ESP_WRITE, "SYSENTER_ESP"},
};
static u64 locked_value[ARRAY_SIZE(locked_msrs)];
static u64 locked_cr0, locked_cr4;

long sk_lock_regs(void)
{
    if (sk_armed & VBS_F_HYPERGUARD)
        return 0;
    u64 hi;
    if (hv_get_reg(HV_INPUT_VTL(0), HvX64RegisterCr0, &locked_cr0, &hi) ||
        hv_get_reg(HV_INPUT_VTL(0), HvX64RegisterCr4, &locked_cr4, &hi))
        return -VBS_EFAULT;
    u64 ctl = HV_CRI_CR0_WRITE | HV_CRI_CR4_WRITE | HV_CRI_GDTR_WRITE | HV_CRI_IDTR_WRITE | HV_CRI_LDTR_WRITE |
              HV_CRI_TR_WRITE;
    for (u64 i = 0; i < ARRAY_SIZE(locked_msrs); i++) {
        if (hv_get_reg(HV_INPUT_VTL(0), locked_msrs[i].reg, &locked_value[i], &hi))
            return -VBS_EFAULT;
        ctl |= locked_msrs[i].bit;
    }
    if (hv_set_reg(HV_INPUT_VTL_SELF, HvX64RegisterCrInterceptCr0Mask, CR0_LOCK, 0) ||
        hv_set_reg(HV_INPUT_VTL_SELF, HvX64RegisterCrInterceptCr4Mask, CR4_LOCK, 0) ||
        hv_set_reg(HV_INPUT_VTL_SELF, HvX64RegisterCrInterceptControl, ctl, 0))
        return -VBS_EFAULT;
    sk_armed |= VBS_F_HYPERGUARD;
    SK_LOG("hyperguard: locked CR0 0x%lx (mask 0x%llx) CR4 0x%lx (mask 0x%llx), LSTAR 0x%lx STAR 0x%lx SFMASK 0x%lx "
           "EFER 0x%lx, SYSENTER_*, GDTR/IDTR/LDTR/TR (CrInterceptControl 0x%lx)\n", locked_cr0, CR0_LOCK, locked_cr4,
           CR4_LOCK, locked_value[0], locked_value[1], locked_value[3], locked_value[4], ctl);
    return 0;
}

static const char *access_name(u32 a)
{
    return a == HV_INTERCEPT_ACCESS_READ ? "read" : a == HV_INTERCEPT_ACCESS_WRITE ? "write" : "execute";
}

static const char *reg_name(u32 r)
{
    switch (r) {
    case HvX64RegisterCr0:
        return "CR0";
    case HvX64RegisterCr4:
        return "CR4";
    case HvX64RegisterGdtr:
        return "GDTR";
    case HvX64RegisterIdtr:
        return "IDTR";
    case HvX64RegisterLdtr:
        return "LDTR";
    case HvX64RegisterTr:
        return "TR";
    }
    return "?";
}

static void inject_gp(void)
{
    int st = hv_set_reg(HV_INPUT_VTL(0), HvRegisterPendingEvent0, HV_PENDING_EXCEPTION(13, 0), 0);
    if (st)
        SK_LOG("PendingEvent0 failed: status 0x%x\n", st);
}

static void skip_insn(const struct hv_intercept_header *h)
{
    hv_set_reg(HV_INPUT_VTL(0), HvX64RegisterRip, h->rip + (h->insn_len_cr8 & 0xf), 0);
}

void sk_intercept(struct sk_regs *r)
{
    (void)r; /* VTL0's registers go back unchanged */
    volatile struct hv_message *m = (volatile struct hv_message *)sk_simp_page;
    struct hv_message msg;
    memcpy(&msg, (const void *)m, sizeof(msg));
    m->type = HvMessageTypeNone;
    u64 rip = msg.hdr.rip;
    u32 access = msg.hdr.access_type;
    switch (msg.type) {
    case HvMessageTypeGpaIntercept: {
        u64 gpa = msg.gpa.gpa;
        sk_record_violation(VBS_V_GPA, access, VBS_ACT_GP, gpa, rip, 0);
        SK_LOG("violation: VTL0 %s of gpa 0x%lx at rip 0x%lx (%s) -> #GP\n", access_name(access), gpa, rip,
               sk_label(gpa));
        inject_gp();
        return;
    }
    case HvMessageTypeX64MsrIntercept: {
        u64 value = (msg.msr.rdx << 32) | (msg.msr.rax & 0xffffffffu);
        for (u64 i = 0; i < ARRAY_SIZE(locked_msrs); i++) {
            if (locked_msrs[i].msr != msg.msr.msr)
                continue;
            if (value == locked_value[i]) {
                sk_record_violation(VBS_V_MSR, access, VBS_ACT_SKIP, msg.msr.msr, rip, value);
                SK_LOG("hyperguard: wrmsr %s 0x%lx at rip 0x%lx rewrites the locked value: skipped\n",
                       locked_msrs[i].name, value, rip);
                skip_insn(&msg.hdr);
                return;
            }
            sk_record_violation(VBS_V_MSR, access, VBS_ACT_GP, msg.msr.msr, rip, value);
            SK_LOG("violation: VTL0 wrmsr %s 0x%lx (locked 0x%lx) at rip 0x%lx -> #GP\n", locked_msrs[i].name, value,
                   locked_value[i], rip);
            inject_gp();
            return;
        }
        sk_record_violation(VBS_V_MSR, access, VBS_ACT_GP, msg.msr.msr, rip, value);
        SK_LOG("violation: VTL0 MSR 0x%x access at rip 0x%lx -> #GP\n", msg.msr.msr, rip);
        inject_gp();
        return;
    }
    case HvMessageTypeRegisterIntercept: {
        u32 name = msg.reg.reg_name;
        u64 value = msg.reg.value_lo;
        if (name == HvX64RegisterIdtr || name == HvX64RegisterGdtr)
            value = msg.reg.value_hi; /* the base (the limit is in bits 48-63 of the low half) */
        sk_record_violation(VBS_V_REG, access, VBS_ACT_GP, name, rip, value);
        if (name == HvX64RegisterCr0 || name == HvX64RegisterCr4) {
            u64 locked = name == HvX64RegisterCr0 ? locked_cr0 : locked_cr4;
            u64 mask = name == HvX64RegisterCr0 ? CR0_LOCK : CR4_LOCK;
            SK_LOG("violation: VTL0 mov to %s 0x%lx changes locked bits 0x%lx at rip 0x%lx -> #GP\n", reg_name(name),
                   value, (value ^ locked) & mask, rip);
        } else {
            SK_LOG("violation: VTL0 write of %s (base 0x%lx) at rip 0x%lx -> #GP\n", reg_name(name), value, rip);
        }
        inject_gp();
        return;
    }
    default:
        SK_LOG("unexpected intercept message type 0x%x at rip 0x%lx -> #GP\n", msg.type, rip);
        inject_gp();
    }
}
