/*
 * ELF64 entry for bench.elf (vtlvisor direct-boot contract): long mode,
 * CPL0, identity-mapped RAM, loader-provided stack, IF=0, CS=0x08 DS=0x10,
 * RDI=0x76746c76 ("vtlv"), RSI=boot info (not used by the benchmark).
 */
    .text
    .globl _start
    .type _start, @function
_start:
    cld
    mov %rdi, %r12
    mov %rsi, %r13
    lea __bss_start(%rip), %rdi     /* do not rely on the loader zeroing .bss */
    lea __bss_end(%rip), %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    rep stosb
    and $-16, %rsp
    xor %ebp, %ebp
    lea entry_name(%rip), %rdi
    mov %r12, %rsi
    mov %r13, %rdx
    call bench_begin
    call bench_main                 /* checksum in RAX */
    mov %rax, %rdi
    call bench_finish               /* prints, exits via isa-debug-exit (0) */
1:  cli
    hlt
    jmp 1b
    .size _start, . - _start

    .section .rodata
entry_name:
    .asciz "elf64"
