/* Build artefacts embedded in the signed image: the modules of the file table, the signing public key. */
    .section .rodata
    .balign 16
    .globl mod_hello_ko, mod_hello_ko_end, mod_unsigned_ko, mod_unsigned_ko_end, mod_tampered_ko
    .globl mod_tampered_ko_end, vtl0_sign_pub
mod_hello_ko:
    .incbin VBS_MOD_HELLO
mod_hello_ko_end:
    .balign 16
mod_unsigned_ko:
    .incbin VBS_MOD_UNSIGNED
mod_unsigned_ko_end:
    .balign 16
mod_tampered_ko:
    .incbin VBS_MOD_TAMPERED
mod_tampered_ko_end:
    .balign 16
vtl0_sign_pub:                      /* VTL0's own copy, for module_sig_enforce without VTL1 */
    .incbin VBS_SIGN_PUB
