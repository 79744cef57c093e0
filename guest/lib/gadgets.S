/*
 * Kernel-text gadgets for the attack programs (what a ROP chain would reuse), shared by the test
 * kernel and the VBS kernel.  The first instruction of each is at the symbol: a #GP on a CR write
 * has RIP = symbol.  They are not valid kCFG call targets.
 */
/* ---- Gadgets in kernel text (what a ROP chain would reuse). The first
 * instruction of each is at the symbol: a #GP on a CR write has RIP = symbol. */
    .text
    .balign 16
    .globl gadget_write_cr4
gadget_write_cr4:           /* as LKDTM UNSET_SMEP uses native_write_cr4() */
    mov %rdi, %cr4
    ret

    .balign 16
    .globl gadget_write_cr0
gadget_write_cr0:
    mov %rdi, %cr0
    ret

    .balign 16
    .globl gadget_write_mem
gadget_write_mem:           /* *(u64 *)rdi = rsi */
    mov %rsi, (%rdi)
    ret


/* ---- Attack families 1-5 (docs/attacks.md): MSR and descriptor-table gadgets. ----
 * The vulnerable driver's controlled call passes one argument (RDI), so gadgets that need more
 * take a pointer to their operands (staged by the attacker in memory the kernel can read, e.g. the
 * physmap alias of a user page: ret2dir). */
    .balign 16
    .globl gadget_wrmsr
gadget_wrmsr:               /* wrmsr(ecx = *(u32 *)rdi, edx:eax = *(u64 *)(rdi + 8)): a staged "pop rcx; pop rax; pop rdx; wrmsr" */
    mov (%rdi), %ecx
    mov 8(%rdi), %eax
    mov 12(%rdi), %edx
    wrmsr
    ret

    .balign 16
    .globl gadget_rdmsr
gadget_rdmsr:               /* return rdmsr(edi) (as native_read_msr) */
    mov %edi, %ecx
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    ret

    .balign 16
    .globl gadget_lidt
gadget_lidt:                /* lidt (%rdi): load the IDTR from a 10-byte pseudo-descriptor */
    lidt (%rdi)
    ret

    .balign 16
    .globl gadget_lgdt
gadget_lgdt:                /* lgdt (%rdi): load the GDTR from a 10-byte pseudo-descriptor */
    lgdt (%rdi)
    ret

    .balign 16
    .globl gadget_iretq
gadget_iretq:               /* a bare iretq (every kernel's interrupt return): an IDT gate aimed here returns at once */
    iretq

/* ---- Attack families 6-9 (docs/attacks.md): a kCFG non-target. ---- */
    .balign 16
    .globl gadget_read_mem
gadget_read_mem:            /* return *(u64 *)rdi: the "mov (%rdi),%rax; ret" tail of every getter; not a kCFG target */
    mov (%rdi), %rax
    ret

/* ---- Attack families 10-11 (docs/attacks.md) ---- */
    .balign 16
    .globl gadget_pop_rdi_rsi_rdx
gadget_pop_rdi_rsi_rdx:     /* the argument-loading step of a ROP chain (three "pop reg; ret" in one) */
    pop %rdi
    pop %rsi
    pop %rdx
    ret

    .balign 16
    .globl text_victim
text_victim:                /* a kernel function whose text the undo attacks patch: returns 0 */
    xor %eax, %eax
    ret
    .skip 14, 0xcc

    .balign 16
    .globl gadget_read_cr0
gadget_read_cr0:            /* return CR0 (as native_read_cr0): the value to clear WP in */
    mov %cr0, %rax
    ret
