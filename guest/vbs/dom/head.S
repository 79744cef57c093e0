/*
 * A feature domain's image header, entry, boot page tables, GDT and the domain switch (the domains
 * design's counterpart of guest/vbs/sk/head.S; docs/domains.md).  The boot domain (the VTL0 kernel)
 * creates the domain with DOMAIN_CREATE(entry, stack top) and sets its CR3 to sk_boot_pml4 with
 * REGS_SET before the first DOMAIN_CALL, so not one instruction runs on the kernel's page tables.
 */
#include "lib/vbs_abi.h"
#include "vbs/dom/dom_abi.h"

    .section .sk_header, "a"
    .balign 8
    .globl sk_header
sk_header:                          /* struct vbs_sk_header */
    .quad VBS_SK_MAGIC
    .quad __sk_start
    .quad DOM_SLOT_SIZE
    .quad __sk_image_size
    .quad sk_entry
    .quad __sk_stack_top
    .quad sk_boot_pml4
    .quad sk_gdt
    .quad sk_gdt_end - sk_gdt - 1
    .quad 0                         /* no TSS: a domain never changes privilege level */
    .quad sk_cred_key               /* role.S: the key (credential domain) or a zero page */
    .quad dom_key_len

/* struct sk_regs (sk.h) */
#define R_RAX 0
#define R_RBX 8
#define R_RCX 16
#define R_RDX 24
#define R_RSI 32
#define R_RDI 40
#define R_R8 56
#define R_R9 64
#define R_R10 72

    .text
/* First entry (the boot domain's first DOMAIN_CALL): RDI, RSI, RDX, R8, R9, R10 are the call's arguments;
 * CR3 is already ours; GDTR, IDTR, CS/SS... are still the boot domain's copies until we load our own. */
    .balign 16
    .globl sk_entry
sk_entry:
    cli
    cld
    lgdt sk_gdt_ptr
    pushq $0x08
    lea 1f(%rip), %rax
    push %rax
    lretq
1:  mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    lldt %ax
    sub $128, %rsp                  /* struct sk_regs: the call's registers, nothing else */
    mov %rdi, %r11
    mov %rsp, %rdi
    mov $16, %ecx
    xor %eax, %eax
    rep stosq
    mov %r11, R_RDI(%rsp)
    mov %rsi, R_RSI(%rsp)
    mov %rdx, R_RDX(%rsp)
    mov %r8, R_R8(%rsp)
    mov %r9, R_R9(%rsp)
    mov %r10, R_R10(%rsp)
    mov $__sk_bss_start, %rdi
    mov $__sk_bss_end, %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    rep stosb
    mov R_R10(%rsp), %rax           /* the first call's R10: how many capabilities we were given */
    mov %rax, dom_entry_r10(%rip)
    mov %rsp, %rdi
    xor %ebp, %ebp
    call sk_main
2:  cli
    hlt
    jmp 2b

/* u64 dom_switch(struct sk_regs *r, u64 action): DOMAIN_RETURN to whoever entered us -- after a call RAX =
 * r->rax (the status) and RSI, R8, R9, R10 = r->rsi, r8, r9, r10 (the outputs) go back; after an intercept
 * `action` is the decision.  When we are entered again, store RDI, RSI, RDX, R8, R9, R10 (the caller's
 * arguments or the event) into r and return RAX: the entry reason (DOM_ENTRY_*).  Every other register is
 * this domain's own: the hypervisor keeps a domain's whole CPU state private. */
    .balign 16
    .globl dom_switch
dom_switch:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    push %rdi
    mov %rsi, %rbx
    mov R_RAX(%rdi), %rcx
    xor %edx, %edx
    mov R_RSI(%rdi), %rsi
    mov R_R8(%rdi), %r8
    mov R_R9(%rdi), %r9
    mov R_R10(%rdi), %r10
    xor %edi, %edi
    xor %r11d, %r11d
    mov $DOM_HC_RETURN, %eax
    vmmcall
    /* entered again */
    mov (%rsp), %r11
    mov %rdi, R_RDI(%r11)
    mov %rsi, R_RSI(%r11)
    mov %rdx, R_RDX(%r11)
    mov %r8, R_R8(%r11)
    mov %r9, R_R9(%r11)
    mov %r10, R_R10(%r11)
    movq $0, R_RAX(%r11)
    movq $0, R_RBX(%r11)
    movq $0, R_RCX(%r11)
    pop %rdi
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

    .data
    .balign 16
sk_gdt_ptr:
    .word sk_gdt_end - sk_gdt - 1
    .quad sk_gdt

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

/* GDT: 0x08 code64, 0x10 data */
    .balign 16
    .globl sk_gdt, sk_gdt_end
sk_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
sk_gdt_end:

/* The module/kernel signing public key (Ed25519). */
    .section .rodata
    .balign 16
    .globl sk_sign_pub
sk_sign_pub:
    .incbin VBS_SIGN_PUB
