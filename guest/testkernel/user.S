/*
 * Ring-3 programs.  They live in .utext, which the kernel maps a second
 * time at USER_TEXT_VA with U=1, so everything here must be position
 * independent (RIP-relative only) and must not touch kernel symbols.
 * Entry: RDI = argument, RSP = user stack.  ABI: RAX=nr, RDI/RSI args.
 */
#include "testkernel/kernel.h"

    .section .utext, "ax"

/* Exercise SYSCALL and int 0x80; exit(0) via SYSCALL, or exit(step) on error. */
    .globl user_prog_syscall
user_prog_syscall:
    mov $0x1234567887654321, %rbx   /* must survive the kernel round trips */
    mov $1, %r12d                   /* step */
    /* CPL must be 3 */
    mov %cs, %eax
    and $3, %eax
    cmp $3, %eax
    jne 9f

    inc %r12d                       /* 2: write via SYSCALL */
    lea user_msg_syscall(%rip), %rdi
    mov $(user_msg_syscall_end - user_msg_syscall), %esi
    mov $SYS_WRITE, %eax
    syscall
    cmp $(user_msg_syscall_end - user_msg_syscall), %rax
    jne 9f

    inc %r12d                       /* 3: add via SYSCALL */
    mov $40, %edi
    mov $2, %esi
    mov $SYS_ADD, %eax
    syscall
    cmp $42, %rax
    jne 9f

    inc %r12d                       /* 4: write via int 0x80 */
    lea user_msg_int80(%rip), %rdi
    mov $(user_msg_int80_end - user_msg_int80), %esi
    mov $SYS_WRITE, %eax
    int $0x80
    cmp $(user_msg_int80_end - user_msg_int80), %rax
    jne 9f

    inc %r12d                       /* 5: add via int 0x80 */
    mov $1000, %edi
    mov $337, %esi
    mov $SYS_ADD, %eax
    int $0x80
    cmp $1337, %rax
    jne 9f

    inc %r12d                       /* 6: callee state preserved */
    mov $0x1234567887654321, %rax
    cmp %rax, %rbx
    jne 9f

    inc %r12d                       /* 7: still ring 3 after SYSRET/IRET */
    mov %cs, %eax
    and $3, %eax
    cmp $3, %eax
    jne 9f
    mov %ss, %eax
    and $3, %eax
    cmp $3, %eax
    jne 9f

    xor %edi, %edi                  /* exit(0) via SYSCALL */
    mov $SYS_EXIT, %eax
    syscall
    ud2
9:  mov %r12, %rdi                  /* exit(step) via int 0x80 */
    mov $SYS_EXIT, %eax
    int $0x80
    ud2

    .globl user_prog_exit_int80
user_prog_exit_int80:
    mov $7, %edi
    mov $SYS_EXIT, %eax
    int $0x80
    ud2

/* Read the kernel address in RDI (supervisor page) -> #PF, killed. */
    .globl user_prog_read_kernel
user_prog_read_kernel:
    mov (%rdi), %rax
    mov $99, %edi
    mov $SYS_EXIT, %eax
    syscall

    .globl user_prog_ud2
user_prog_ud2:
    ud2
    mov $99, %edi
    mov $SYS_EXIT, %eax
    syscall

    .globl user_prog_hlt
user_prog_hlt:
    hlt
    mov $99, %edi
    mov $SYS_EXIT, %eax
    syscall

/* With CR4.UMIP, SGDT at CPL3 must #GP(0). */
    .globl user_prog_sgdt
user_prog_sgdt:
    sub $16, %rsp
    sgdt (%rsp)
    mov $99, %edi
    mov $SYS_EXIT, %eax
    syscall

/* KVM_HC_LOCK_CR_UPDATE(cr=0, mask=CR0.WP, flags=0) from ring 3 (must return -KVM_EPERM);
 * RDI = 0: VMMCALL, 1: VMCALL.  exit(RAX). */
    .globl user_prog_hypercall
user_prog_hypercall:
    mov $13, %eax
    xor %ebx, %ebx
    mov $0x10000, %ecx
    xor %edx, %edx
    test %rdi, %rdi
    jnz 1f
    vmmcall
    jmp 2f
1:  vmcall
2:  mov %rax, %rdi
    mov $SYS_EXIT, %eax
    syscall
    ud2

/* Target for the SMEP test (the kernel "calls" this user page). */
    .globl user_ret_stub
user_ret_stub:
    ret

    .globl user_msg_syscall
user_msg_syscall:
    .ascii "  user: hello from ring 3 via SYSCALL\n"
user_msg_syscall_end:
user_msg_int80:
    .ascii "  user: hello from ring 3 via int 0x80\n"
user_msg_int80_end:
