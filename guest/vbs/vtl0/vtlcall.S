/* VTL0 side of the VTL-call service (lib/vbs_abi.h): void vbs_vtl_call(struct vbs_callregs *c) */

/* struct vbs_callregs { u64 id, a0, a1, a2, a3, rax, r0, r1, r2, r3; } */
    .text
    .balign 16
    .globl vbs_vtl_call
vbs_vtl_call:
    push %rbx                       /* VTL1 returns with every other GPR cleared */
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    push %rdi
    mov 8(%rdi), %rsi
    mov 16(%rdi), %rdx
    mov 24(%rdi), %r8
    mov 32(%rdi), %r9
    mov 0(%rdi), %rdi
    call *vtl_call_stub(%rip)       /* hypercall page + VsmCodePageOffsets.VtlCall */
    pop %rdi
    mov %rax, 40(%rdi)
    mov %rsi, 48(%rdi)
    mov %r8, 56(%rdi)
    mov %r9, 64(%rdi)
    mov %r10, 72(%rdi)
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
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

/* The secure kernel image (guest/build/vbs/sk.bin), copied to the VTL1 region at boot, then wiped. */
    .section .vtl1_image, "aw"
    .balign 4096
    .globl vtl1_image, vtl1_image_end
vtl1_image:
    .incbin VBS_SK_BIN
vtl1_image_end:
    .balign 4096
