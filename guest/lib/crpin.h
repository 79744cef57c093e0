/* Paravirtualized CR pinning at boot (lib/crpin.c). */
#ifndef GUEST_LIB_CRPIN_H
#define GUEST_LIB_CRPIN_H

#include "lib/types.h"

#define CR4_BOOT_PINS (1ull << 20 | 1ull << 21 | 1ull << 11) /* SMEP | SMAP | UMIP */

enum crpin_state { CRPIN_UNAVAILABLE, CRPIN_OFF, CRPIN_ON };
extern enum crpin_state crpin_state;
extern char crpin_reason[96];
extern u64 boot_cr0_pins, boot_cr4_pins; /* what crpin_boot pinned high */

/* Pins at boot, prints exactly one crpin: line; returns the number of failures. */
int crpin_boot(bool off);
const char *crpin_msr_name(u32 msr);

#endif
