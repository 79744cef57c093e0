/* SYSCALL entry, ring-3 entry, setjmp/longjmp (shared by the VTL0 kernels). */
#include "lib/desc.h"
#include "lib/regs.S.inc"

    .text
/* SYSCALL: RCX=user RIP, R11=user RFLAGS, RSP still the user stack,
 * IF/TF/DF/AC/NT cleared by SFMASK.  Build a trapframe on the kernel
 * stack (same stack as TSS.RSP0) and return with SYSRET. */
    .balign 16
    .globl syscall_entry
syscall_entry:
    mov %rsp, syscall_user_rsp(%rip)
    mov syscall_kstack_top(%rip), %rsp
    pushq $(SEL_UDATA | 3)
    pushq syscall_user_rsp(%rip)
    push %r11
    pushq $(SEL_UCODE | 3)
    push %rcx
    pushq $0
    pushq $VEC_SYSCALL_INSN
    PUSH_REGS
    mov %rsp, %rdi
    call trap_dispatch
    POP_REGS
    add $16, %rsp
    pop %rcx                        /* RIP */
    add $8, %rsp                    /* CS */
    pop %r11                        /* RFLAGS */
    pop %rsp                        /* user RSP */
    sysretq

/* enter_user(rip, rsp, arg): IRETQ to ring 3 with RDI=arg, IF=1. */
    .balign 16
    .globl enter_user
enter_user:
    pushq $(SEL_UDATA | 3)
    push %rsi
    pushq $0x202
    pushq $(SEL_UCODE | 3)
    push %rdi
    mov %rdx, %rdi
    xor %eax, %eax
    xor %ebx, %ebx
    xor %ecx, %ecx
    xor %edx, %edx
    xor %esi, %esi
    xor %ebp, %ebp
    xor %r8d, %r8d
    xor %r9d, %r9d
    xor %r10d, %r10d
    xor %r11d, %r11d
    xor %r12d, %r12d
    xor %r13d, %r13d
    xor %r14d, %r14d
    xor %r15d, %r15d
    iretq

    .balign 16
    .globl k_setjmp
k_setjmp:
    mov %rbx, 0(%rdi)
    mov %rbp, 8(%rdi)
    mov %r12, 16(%rdi)
    mov %r13, 24(%rdi)
    mov %r14, 32(%rdi)
    mov %r15, 40(%rdi)
    lea 8(%rsp), %rdx
    mov %rdx, 48(%rdi)
    mov (%rsp), %rdx
    mov %rdx, 56(%rdi)
    xor %eax, %eax
    ret

    .balign 16
    .globl k_longjmp
k_longjmp:
    mov %esi, %eax
    test %eax, %eax
    jnz 1f
    inc %eax
1:  mov 0(%rdi), %rbx
    mov 8(%rdi), %rbp
    mov 16(%rdi), %r12
    mov 24(%rdi), %r13
    mov 32(%rdi), %r14
    mov 40(%rdi), %r15
    mov 48(%rdi), %rsp
    jmp *56(%rdi)

    .bss
    .balign 8
syscall_user_rsp:
    .quad 0
