/* The 256 interrupt/exception stubs and the common path to trap_dispatch(struct trapframe *). */
#include "lib/desc.h"
#include "lib/regs.S.inc"

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
