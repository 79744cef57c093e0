/*
 * vtlvisor's capability-scoped security domains, seen from the guest (docs/domains.md; the hypervisor side
 * is src/vtlvisor/abi/domains.py and src/vtlvisor/hv/domains.py).  KVM conventions: VMMCALL, number in
 * RAX, arguments in RBX, RCX, RDX, RSI, result in RAX (negative errno).  Plus the layout the VBS guest
 * uses for its feature domains.
 */
#ifndef VBS_DOM_ABI_H
#define VBS_DOM_ABI_H

/* CPUID 0x40000001 (or 0x40000101 beside Hyper-V) EAX bit */
#define KVM_FEATURE_VTLVISOR_DOMAINS 24

#define DOM_HC_CREATE 0x100      /* a0 entry RIP, a1 RSP -> DOMAIN handle (CALL|REGS_*|INJECT|DELEGATE) */
#define DOM_HC_DELEGATE 0x101    /* a0 handle, a1 recipient DOMAIN handle, a2 rights, a3 narrow gpa | 0 */
#define DOM_HC_REVOKE 0x102      /* a0 handle */
#define DOM_HC_DELETE 0x103      /* a0 handle, a1 DOM_DELETE_* */
#define DOM_HC_QUERY 0x104       /* a0 handle -> RAX type | rights << 8 | target << 32, RBX param0, RCX param1 */
#define DOM_HC_MEM_PROTECT 0x105 /* a0 MEMORY handle | perms << 32 | immutable << 36, a1 DOMAIN handle, a2 gpa, a3 pages */
#define DOM_HC_INTERCEPT 0x106   /* a0 INTERCEPT handle, a1 source DOMAIN handle, a2 on/off */
#define DOM_HC_REGS_GET 0x107    /* a0 DOMAIN handle (REGS_READ), a1 DOM_REG_* -> RBX */
#define DOM_HC_REGS_SET 0x108    /* a0 DOMAIN handle (REGS_WRITE), a1 DOM_REG_*, a2 value */
#define DOM_HC_INJECT 0x109
#define DOM_HC_CR_PIN 0x10a
#define DOM_HC_CALL 0x10b        /* a0 DOMAIN handle (CALL); RDI, RSI, RDX, R8, R9, R10 go to the callee */
#define DOM_HC_RETURN 0x10c      /* call: a1/a2 -> caller's RAX/RDX, RSI, R8, R9, R10 go back; intercept: a0 action */
#define DOM_HC_SELF 0x10d        /* -> this domain's id */

#define DOM_DELETE_KEEP_DERIVED 1

#define DOM_CAP_MEMORY 1
#define DOM_CAP_DOMAIN 2
#define DOM_CAP_INTERCEPT 3
#define DOM_CAP_PIN 4
#define DOM_CAP_CREATE 5

#define DOM_R 0x1
#define DOM_W 0x2
#define DOM_X 0x4
#define DOM_IMMUTABLE 0x8
#define DOM_CALL 0x10
#define DOM_REGS_READ 0x20
#define DOM_REGS_WRITE 0x40
#define DOM_INJECT 0x80
#define DOM_DELEGATE 0x100

#define DOM_INT_CR0 1
#define DOM_INT_CR4 2
#define DOM_INT_MSR 3 /* param1: the MSR, 0xffffffff = any */
#define DOM_INT_DTR 4 /* param1 bits: 0 GDTR, 1 IDTR, 2 LDTR, 3 TR */
#define DOM_INT_MEM 5 /* param1 bits: 0 read, 1 write, 2 execute */

#define DOM_REG_RIP 0
#define DOM_REG_RSP 1
#define DOM_REG_RFLAGS 2
#define DOM_REG_RAX 3
#define DOM_REG_CR0 4
#define DOM_REG_CR3 5
#define DOM_REG_CR4 6
#define DOM_REG_EFER 7 /* 7..16: read-only */
#define DOM_REG_STAR 8
#define DOM_REG_LSTAR 9
#define DOM_REG_CSTAR 10
#define DOM_REG_SFMASK 11
#define DOM_REG_SYSENTER_CS 12
#define DOM_REG_SYSENTER_ESP 13
#define DOM_REG_SYSENTER_EIP 14
#define DOM_REG_GDTR_BASE 15
#define DOM_REG_IDTR_BASE 16

/* entry into a domain: RAX = DOM_ENTRY_*; an intercept: RDI = DOM_EV_*, RSI detail, RDX source, R8 RIP, R9 value */
#define DOM_ENTRY_CALL 0
#define DOM_ENTRY_INTERCEPT 1
#define DOM_EV_CR 1  /* RSI = R9 = the new value, R10 = the CR */
#define DOM_EV_MSR 2 /* RSI = the MSR, R9 = the value */
#define DOM_EV_DTR 3 /* RSI = table (0 GDTR, 1 IDTR, 2 LDTR, 3 TR), R9 = base or selector, R10 = limit */
#define DOM_EV_MEM 4 /* RSI = the GPA, R9 = access (0 read, 1 write, 2 execute), R10 = the grantor domain */
#define DOM_ACT_SKIP 0
#define DOM_ACT_GP 1
#define DOM_ACT_COMPLETE 2

#define DOM_EPERM 1
#define DOM_EBADF 9
#define DOM_EBUSY 16
#define DOM_EINVAL 22

/* ---- the VBS guest's layout: the secure region (VTL1's in the VSM design) holds one slot per feature
 * domain; each image is linked at its slot (guest/vbs/dom/dom.ld) */
#define DOM_REGION_BASE 0x1000000ull
#define DOM_REGION_SIZE 0x400000ull
#define DOM_SLOT_SIZE 0x100000ull
#define DOM_ROLE_HVCI 0       /* HVCI and kCFG: kernel and module signatures, W^X of the kernel, the kCFG bitmap */
#define DOM_ROLE_KDP 1        /* KDP: makes kernel data read-only, forever (its memory capability: R + immutable) */
#define DOM_ROLE_HYPERGUARD 2 /* HyperGuard: register locks; receives the kernel's violations (the monitor) */
#define DOM_ROLE_CRED 3       /* credential isolation: the key; no capabilities at all */
#define DOM_NROLES 4
#define DOM_SLOT_BASE(role) (DOM_REGION_BASE + (u64)(role) * DOM_SLOT_SIZE)
/* the kernel's vbs_design (in /proc/kallsyms): which design the secure side runs on */
#define VBS_DESIGN_NONE 0
#define VBS_DESIGN_VSM 1
#define VBS_DESIGN_DOMAINS 2

#ifndef __ASSEMBLER__
#include "lib/types.h"

struct dom_hc_ret {
    long rax;
    u64 rbx, rcx;
};

static inline struct dom_hc_ret dom_hc(u64 nr, u64 a0, u64 a1, u64 a2, u64 a3)
{
    struct dom_hc_ret r;
    register u64 rsi __asm__("rsi") = a3;
    __asm__ volatile("vmmcall" : "=a"(r.rax), "=b"(r.rbx), "=c"(r.rcx), "+d"(a2), "+r"(rsi)
                     : "0"(nr), "1"(a0), "2"(a1)
                     : "memory");
    return r;
}

static const char *const dom_role_names[DOM_NROLES] = {"hvci", "kdp", "hyperguard", "cred"};
#endif

#endif
