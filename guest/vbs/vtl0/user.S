/*
 * Ring-3 programs (in .utext, mapped again at USER_TEXT_VA with U=1: position independent only).
 * Entry: RDI = argument, RSP = user stack.  System calls: RAX = nr, RDI/RSI/RDX = arguments.
 */
#include "vbs/vtl0/kernel.h"

    .section .utext, "ax"

/* uprog_script(struct uscript *s): run s->op[0..n) as system calls, storing each result and
 * s->done; then exit(0).  The kernel's checks (and the attack suite) write the script. */
    .globl uprog_script
uprog_script:
    mov %rdi, %rbx
    xor %r12d, %r12d
1:  cmp (%rbx), %r12
    jae 2f
    imul $40, %r12, %r13
    lea 16(%rbx,%r13), %r13
    mov 0(%r13), %rax
    mov 8(%r13), %rdi
    mov 16(%r13), %rsi
    mov 24(%r13), %rdx
    syscall
    mov %rax, 32(%r13)
    inc %r12
    mov %r12, 8(%rbx)
    jmp 1b
2:  xor %edi, %edi
    mov $SYS_EXIT, %eax
    syscall
    ud2

/* Read the kernel address in RDI (a supervisor page) -> #PF, killed. */
    .globl uprog_read_kernel
uprog_read_kernel:
    mov (%rdi), %rax
    mov $99, %edi
    mov $SYS_EXIT, %eax
    syscall

    .globl uprog_ud2
uprog_ud2:
    ud2

/* SGDT at CPL 3 -> #GP with UMIP (and NPIEP). */
    .globl uprog_sgdt
uprog_sgdt:
    sub $16, %rsp
    sgdt (%rsp)
    mov $99, %edi
    mov $SYS_EXIT, %eax
    syscall
