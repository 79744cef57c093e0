/* VTL0 side of the VTL-call service (lib/vbs_abi.h): void vbs_vtl_call(struct vbs_callregs *c) */

#include "lib/regs.S.inc"

/* struct vbs_callregs { u64 id, a0, a1, a2, a3, rax, r0, r1, r2, r3; } */

/* The callee's answer (RAX = status, RSI/R8/R9/R10 = r0..r3) into the struct vbs_callregs at RDI */
.macro STORE_CALLREGS_RESULT
    mov %rax, 40(%rdi)
    mov %rsi, 48(%rdi)
    mov %r8, 56(%rdi)
    mov %r9, 64(%rdi)
    mov %r10, 72(%rdi)
.endm

    .text
    .balign 16
    .globl vbs_vtl_call
vbs_vtl_call:
    PUSH_CALLEE_SAVED               /* VTL1 returns with every other GPR cleared */
    push %rdi
    mov 8(%rdi), %rsi
    mov 16(%rdi), %rdx
    mov 24(%rdi), %r8
    mov 32(%rdi), %r9
    mov 0(%rdi), %rdi
    xor %ecx, %ecx                  /* the VTL call control input (the stub moves RCX to RAX): 0 */
    call *vtl_call_stub(%rip)       /* hypercall page + VsmCodePageOffsets.VtlCall */
    pop %rdi
    STORE_CALLREGS_RESULT
    POP_CALLEE_SAVED
    ret

/* The hypercall page: filled by the hypervisor when VTL0 writes HV_X64_MSR_HYPERCALL. */
    .section .hvcall, "ax"
    .balign 4096
    .globl hvcall_page
hvcall_page:
    .skip 4096

/* Placeholders the build fills in (guest/vbs/vbstool.py kcfg / sign-kernel). */
    .section .kcfg, "a"
    .balign 4096
    .skip 16384                     /* struct vbs_kcfg */

    .section .kernsig, "a"
    .balign 4096
    .skip 4096                      /* struct vbs_kernel_sig */

/* Domains design: void dom_vtl_call(u64 handle, struct vbs_callregs *c, u64 r10) -- DOMAIN_CALL into a
 * feature domain with the VTL-call service convention (RDI id, RSI/RDX/R8/R9 a0..a3; R10 the boot-time
 * extra); it answers RAX = status, RSI/R8/R9/R10 = r0..r3 (the rest of our registers are untouched: the
 * hypervisor keeps every domain's CPU state private, so only what the callee returns comes back). */
    .text
    .balign 16
    .globl dom_vtl_call
dom_vtl_call:
    PUSH_CALLEE_SAVED
    push %rsi
    mov %rdi, %rbx                  /* a0: the DOMAIN handle */
    mov %rdx, %r10
    mov 8(%rsi), %rax               /* a0 */
    mov 16(%rsi), %rdx
    mov 24(%rsi), %r8
    mov 32(%rsi), %r9
    mov 0(%rsi), %rdi
    mov %rax, %rsi
    mov $0x10b, %eax                /* DOMAIN_CALL */
    vmmcall
    pop %rdi
    STORE_CALLREGS_RESULT
    POP_CALLEE_SAVED
    ret

/* The secure kernel image (guest/build/vbs/sk.bin) and the four feature-domain images of the domains
 * design (guest/build/vbs/dom/<role>.bin), copied to the secure region at boot; all of it is wiped then
 * (the VSM image and the credential domain's image hold the credential key). */
    .section .vtl1_image, "aw"
    .balign 4096
    .globl vtl1_image, vtl1_image_end, dom_images
vtl1_image:
    .incbin VBS_SK_BIN
    .balign 4096
dom_image_hvci:
    .incbin VBS_DOM_hvci
dom_image_hvci_end:
    .balign 4096
dom_image_kdp:
    .incbin VBS_DOM_kdp
dom_image_kdp_end:
    .balign 4096
dom_image_hyperguard:
    .incbin VBS_DOM_hyperguard
dom_image_hyperguard_end:
    .balign 4096
dom_image_cred:
    .incbin VBS_DOM_cred
dom_image_cred_end:
vtl1_image_end:
    .balign 4096

/* {start, end} of each feature-domain image, by role (dom_abi.h DOM_ROLE_*) */
    .section .rodata
    .balign 8
dom_images:
    .quad dom_image_hvci, dom_image_hvci_end
    .quad dom_image_kdp, dom_image_kdp_end
    .quad dom_image_hyperguard, dom_image_hyperguard_end
    .quad dom_image_cred, dom_image_cred_end
