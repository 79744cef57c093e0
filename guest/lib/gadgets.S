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

