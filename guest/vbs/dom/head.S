/*
 * A feature domain's image header, entry, boot page tables, GDT and the domain switch (the domains
 * design's counterpart of guest/vbs/sk/head.S; docs/domains.md).  The boot domain (the VTL0 kernel)
 * creates the domain with DOMAIN_CREATE(entry, stack top) and sets its CR3 to sk_boot_pml4 with
 * REGS_SET before the first DOMAIN_CALL, so not one instruction runs on the kernel's page tables.
 */
#include "lib/vbs_abi.h"
#include "vbs/dom/dom_abi.h"
#include "vbs/sk/skhead.S.inc"

/* no TSS: a domain never changes privilege level; role.S: the key (credential domain) or a zero page */
    SK_HEADER DOM_SLOT_SIZE, 0, sk_cred_key, dom_key_len

/* The call's arguments (RDI from \src_rdi, RSI, RDX, R8, R9, R10) into the struct sk_regs at \base */
.macro STORE_CALL_ARGS base, src_rdi
    mov \src_rdi, R_RDI(\base)
    SK_STORE_ARGS \base
.endm

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
    STORE_CALL_ARGS %rsp, %r11
    SK_ZERO_BSS
    mov R_R10(%rsp), %rax           /* the first call's R10: how many capabilities we were given */
    mov %rax, dom_entry_r10(%rip)
    SK_CALL_MAIN

/* u64 dom_switch(struct sk_regs *r, u64 action): DOMAIN_RETURN to whoever entered us -- after a call RAX =
 * r->rax (the status) and RSI, R8, R9, R10 = r->rsi, r8, r9, r10 (the outputs) go back; after an intercept
 * `action` is the decision.  When we are entered again, store RDI, RSI, RDX, R8, R9, R10 (the caller's
 * arguments or the event) into r and return RAX: the entry reason (DOM_ENTRY_*).  Every other register is
 * this domain's own: the hypervisor keeps a domain's whole CPU state private. */
    .balign 16
    .globl dom_switch
dom_switch:
    PUSH_CALLEE_SAVED
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
    STORE_CALL_ARGS %r11, %rdi
    movq $0, R_RAX(%r11)
    movq $0, R_RBX(%r11)
    movq $0, R_RCX(%r11)
    pop %rdi
    POP_CALLEE_SAVED
    ret

    .data
    .balign 16
sk_gdt_ptr:
    .word sk_gdt_end - sk_gdt - 1
    .quad sk_gdt

    SK_BOOT_PAGE_TABLES

/* GDT: 0x08 code64, 0x10 data */
    SK_GDT_SEGMENTS
sk_gdt_end:

    SK_SIGN_PUB
