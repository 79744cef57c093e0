/* Entry of the attack programs: RDI = "name args..." in user data (written by the kernel's launcher). */
    .section .text.start, "ax"
    .globl _start
_start:
    and $-16, %rsp
    call umain
    ud2
