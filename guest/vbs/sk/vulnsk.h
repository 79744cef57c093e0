/*
 * The DELIBERATELY VULNERABLE secure service (docs/attacks.md): the TCB comparison's stand-in for a
 * memory-safety bug in a secure component.  Off unless the kernel booted with the word "vulnsk" (it then
 * sets VBS_F_VULNSK in the boot parameters of the one secure component that gets the bug: VTL1, or the
 * domain named by vulnsk=hvci|kdp|hyperguard|cred, default cred).  What the bug gives the attacker is
 * what code execution inside that component gives: reads and writes of its memory and hypercalls with
 * its privileges.
 */
#ifndef VBS_SK_VULNSK_H
#define VBS_SK_VULNSK_H

#define VBS_CALL_VULNSK 0x1fff3 /* a0 op, a1, a2: r0..r3 results; -ENOSYS unless enabled */
#define VBS_F_VULNSK (1u << 8)  /* boot parameters .features: this component carries the bug */

#define VULNSK_READ 1      /* a1 addr: r0 = *(u64 *)addr (-EFAULT, r1 = vector, when it faults) */
#define VULNSK_WRITE 2     /* a1 addr, a2 value */
#define VULNSK_HYPERCALL 3 /* a1 = gpa of struct vulnsk_hypercall: r0 = RAX, r1.. results */

/* A hypercall as the attacker's code would make it.  Hyper-V (VSM design): control word and the input
 * page (copied to the component's own hypercall input page); r1..r3 = the first output words.  KVM
 * (domains design): nr and a0..a3; r1 = RBX, r2 = RCX. */
struct vulnsk_hypercall {
    unsigned long long nr, a[4];
    unsigned char input[2048];
};

/* the kernel's side (guest/vbs/vtl0/vsm.c), reached from ring 3 with the vulnerable driver's controlled
 * call: long vbs_vulnsk(u64 user_request) */
struct vulnsk_request {
    unsigned long long op, a1, a2;
    long long status;
    unsigned long long r[4];
    struct vulnsk_hypercall hc; /* op VULNSK_HYPERCALL: copied to kernel memory, a1 is ignored */
};

#endif
