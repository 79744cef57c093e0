/* Exception/interrupt stubs, SYSCALL entry, ring-3 entry, setjmp/longjmp. */
#include "testkernel/kernel.h"

.macro PUSH_REGS
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
.endm

.macro POP_REGS
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
.endm

    .text
/* 256 stubs of exactly 16 bytes: push a dummy error code when the CPU
 * does not push one, push the vector, go to the common path. */
    .balign 16
    .globl isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp isr_common
    .set vec, vec + 1
    .endr

isr_common:
    PUSH_REGS
    cld
    mov %rsp, %rdi
    call trap_dispatch
    POP_REGS
    add $16, %rsp                   /* vector + error code */
    iretq

/* SYSCALL: RCX=user RIP, R11=user RFLAGS, RSP still the user stack,
 * IF/TF/DF/AC/NT cleared by SFMASK.  Build a trapframe on the kernel
 * stack (same stack as TSS.RSP0) and return with SYSRET. */
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
