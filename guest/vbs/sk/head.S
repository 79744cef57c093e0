/*
 * Secure kernel (VTL1) image header, entry, boot page tables, GDT/TSS and the VTL switch.
 */
#include "lib/vbs_abi.h"

#define SK_REGION 0x400000

    .section .sk_header, "a"
    .balign 8
    .globl sk_header
sk_header:                          /* struct vbs_sk_header */
    .quad VBS_SK_MAGIC
    .quad __sk_start
    .quad SK_REGION
    .quad __sk_image_size
    .quad sk_entry
    .quad __sk_stack_top
    .quad sk_boot_pml4
    .quad sk_gdt
    .quad sk_gdt_end - sk_gdt - 1
    .quad sk_tss
    .quad sk_cred_key
    .quad 32

/* struct sk_regs (sk.h): the 15 shared GPRs */
#define R_RAX 0
#define R_RBX 8
#define R_RCX 16
#define R_RDX 24
#define R_RSI 32
#define R_RDI 40
#define R_RBP 48
#define R_R8 56
#define R_R9 64
#define R_R10 72
#define R_R11 80
#define R_R12 88
#define R_R13 96
#define R_R14 104
#define R_R15 112

.macro SAVE_GPRS base
    mov %rax, R_RAX(\base)
    mov %rbx, R_RBX(\base)
    mov %rcx, R_RCX(\base)
    mov %rdx, R_RDX(\base)
    mov %rsi, R_RSI(\base)
    mov %rbp, R_RBP(\base)
    mov %r8, R_R8(\base)
    mov %r9, R_R9(\base)
    mov %r10, R_R10(\base)
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
    /* zero .bss */
    mov $__sk_bss_start, %rdi
    mov $__sk_bss_end, %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    rep stosb
    mov %rsp, %rdi
    xor %ebp, %ebp
    call sk_main
1:  cli
    hlt
    jmp 1b

/* void sk_switch(struct sk_regs *r): load all 15 GPRs from r, VtlReturn to VTL0 through the hypercall
 * page; when VTL1 is entered again (VtlCall or intercept) store VTL0's GPRs into r and return. */
    .balign 16
    .globl sk_switch
sk_switch:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
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
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

    .data
    .balign 8
    .globl sk_vtl_return_stub
sk_vtl_return_stub:
    .quad sk_hvcall_page + 0x20     /* VsmCodePageOffsets.VtlReturn (checked at init) */

/* Boot page tables (used until sk_main builds its own): identity map of 0..1 GiB, 2 MiB pages. */
    .balign 4096
    .globl sk_boot_pml4
sk_boot_pml4:
    .quad sk_boot_pdpt + 0x3
    .fill 511, 8, 0
sk_boot_pdpt:
    .quad sk_boot_pd + 0x3
    .fill 511, 8, 0
sk_boot_pd:
    .set i, 0
    .rept 512
    .quad (i << 21) | 0x83
    .set i, i + 1
    .endr

/* GDT: 0x08 code64, 0x10 data, 0x18 TSS (busy) */
    .balign 16
    .globl sk_gdt, sk_gdt_end, sk_tss
sk_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
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

/* The module/kernel signing public key (Ed25519). */
    .section .rodata
    .balign 16
    .globl sk_sign_pub
sk_sign_pub:
    .incbin VBS_SIGN_PUB
