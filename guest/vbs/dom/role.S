/*
 * What makes one link of the feature-domain image a particular feature domain (guest/Makefile builds this
 * file once per role, -DDOM_ROLE=n): its role number and its .secret page -- the credential key for the
 * credential domain, zeros for every other one (no other domain ever holds the key, not even a copy).
 */
#include "vbs/dom/dom_abi.h"

#if DOM_ROLE == DOM_ROLE_HVCI
#define ROLE_NAME "hvci"
#elif DOM_ROLE == DOM_ROLE_KDP
#define ROLE_NAME "kdp"
#elif DOM_ROLE == DOM_ROLE_HYPERGUARD
#define ROLE_NAME "hyperguard"
#else
#define ROLE_NAME "cred"
#endif

    .section .rodata
    .balign 4
    .globl dom_role
dom_role:
    .long DOM_ROLE
role_name:
    .asciz "the " ROLE_NAME " domain"
role_prefix:
    .asciz "dom-" ROLE_NAME

    .data
    .balign 8
    .globl sk_name, sk_log_prefix           /* sk.h: what the secure kernel calls itself in its log */
sk_name:
    .quad role_name
sk_log_prefix:
    .quad role_prefix

    .section .secret, "aw"
    .balign 4096
    .globl sk_cred_key
sk_cred_key:
#if DOM_ROLE == DOM_ROLE_CRED
    .incbin VBS_CRED_KEY
    .globl dom_key_len
    .set dom_key_len, 32
#else
    .fill 32, 1, 0
    .globl dom_key_len
    .set dom_key_len, 0
#endif
    .balign 4096
