/* Local APIC (xAPIC at 0xFEE00000): registers and accessors. */
#ifndef GUEST_LIB_LAPIC_H
#define GUEST_LIB_LAPIC_H

#include "lib/types.h"

#define LAPIC_PHYS 0xfee00000ull
#define LAPIC_ID 0x20
#define LAPIC_VER 0x30
#define LAPIC_TPR 0x80
#define LAPIC_EOI 0xb0
#define LAPIC_SVR 0xf0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_CCR 0x390
#define LAPIC_TIMER_DCR 0x3e0
#define LVT_MASKED (1u << 16)
#define LVT_PERIODIC (1u << 17)

static inline u32 lapic_rd(u32 off) { return *(volatile u32 *)(LAPIC_PHYS + off); }
static inline void lapic_wr(u32 off, u32 v) { *(volatile u32 *)(LAPIC_PHYS + off) = v; }
static inline void lapic_eoi(void) { lapic_wr(LAPIC_EOI, 0); }

#endif
