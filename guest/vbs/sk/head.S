/*
 * Secure kernel (VTL1) image header, entry, boot page tables, GDT/TSS and the VTL switch.
 */
#include "lib/vbs_abi.h"
#include "vbs/sk/skhead.S.inc"

#define SK_REGION 0x400000

    SK_HEADER SK_REGION, sk_tss, sk_cred_key, 32

/* every GPR but RDI (and RSP) into the struct sk_regs at \base */
.macro SAVE_GPRS base
    mov %rax, R_RAX(\base)
    mov %rbx, R_RBX(\base)
    mov %rcx, R_RCX(\base)
    mov %rbp, R_RBP(\base)
    SK_STORE_ARGS \base
    mov %r11, R_R11(\base)
    mov %r12, R_R12(\base)
    mov %r13, R_R13(\base)
    mov %r14, R_R14(\base)
    mov %r15, R_R15(\base)
.endm

    .text
/* First entry (EnableVpVtl context; reached by VTL0's first VtlCall): every GPR but RSP is VTL0's. */
    .balign 16
    .globl sk_entry
sk_entry:
    cld
    sub $128, %rsp                  /* struct sk_regs on the (non-bss) stack */
    SAVE_GPRS %rsp
    mov %rdi, R_RDI(%rsp)
    SK_ZERO_BSS
    SK_CALL_MAIN

/* void sk_switch(struct sk_regs *r): load all 15 GPRs from r, VtlReturn to VTL0 through the hypercall
 * page; when VTL1 is entered again (VtlCall or intercept) store VTL0's GPRs into r and return. */
    .balign 16
    .globl sk_switch
sk_switch:
    PUSH_CALLEE_SAVED
    push %rdi
    mov R_RAX(%rdi), %rax
    mov R_RBX(%rdi), %rbx
    mov R_RCX(%rdi), %rcx
    mov R_RDX(%rdi), %rdx
    mov R_RSI(%rdi), %rsi
    mov R_RBP(%rdi), %rbp
    mov R_R8(%rdi), %r8
    mov R_R9(%rdi), %r9
    mov R_R10(%rdi), %r10
    mov R_R11(%rdi), %r11
    mov R_R12(%rdi), %r12
    mov R_R13(%rdi), %r13
    mov R_R14(%rdi), %r14
    mov R_R15(%rdi), %r15
    mov R_RDI(%rdi), %rdi
    call *sk_vtl_return_stub(%rip)
    /* entered again: GPRs are VTL0's */
    push %rdi
    mov 8(%rsp), %rdi
    SAVE_GPRS %rdi
    popq R_RDI(%rdi)
    pop %rdi
    POP_CALLEE_SAVED
    ret

    .data
    .balign 8
    .globl sk_vtl_return_stub
sk_vtl_return_stub:
    .quad sk_hvcall_page + 0x20     /* VsmCodePageOffsets.VtlReturn (checked at init) */

    SK_BOOT_PAGE_TABLES

/* GDT: 0x08 code64, 0x10 data, 0x18 TSS (busy) */
    SK_GDT_SEGMENTS
    .globl sk_tss
sk_gdt_tss:
    .quad 0                         /* unused: TR (base sk_tss) comes from the initial VP context */
    .quad 0
sk_gdt_end:
    .balign 16
sk_tss:
    .fill 104, 1, 0

/* The credential key: generated at build time (guest/build/vbs/keys/cred.key), VTL1 memory only. */
    .section .secret, "aw"
    .balign 4096
    .globl sk_cred_key
sk_cred_key:
    .incbin VBS_CRED_KEY
    .balign 4096

    SK_SIGN_PUB
