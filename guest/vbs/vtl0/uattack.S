/* The attack programs (guest/vbs/user, linked at USER_TEXT_VA): first in .utext, so that they are
 * mapped for ring 3 exactly where they were linked. */
    .section .uattack, "ax"
    .balign 4096
    .globl uattack_start
uattack_start:
    .incbin VBS_USER_BIN
    .balign 4096
