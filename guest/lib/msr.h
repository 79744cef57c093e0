/* Model-specific registers. */
#ifndef GUEST_LIB_MSR_H
#define GUEST_LIB_MSR_H

#include "lib/types.h"

#define MSR_APIC_BASE 0x0000001bu
#define MSR_EFER 0xc0000080u
#define MSR_STAR 0xc0000081u
#define MSR_LSTAR 0xc0000082u
#define MSR_CSTAR 0xc0000083u
#define MSR_SFMASK 0xc0000084u
#define MSR_FS_BASE 0xc0000100u
#define MSR_GS_BASE 0xc0000101u
#define MSR_KERNEL_GS_BASE 0xc0000102u

/* KVM paravirtual CR pinning (June 2020 RFC; CPUID 0x40000001 EAX bit 15). */
#define MSR_KVM_CR0_PIN_ALLOWED 0x4b564d08u /* read-only */
#define MSR_KVM_CR4_PIN_ALLOWED 0x4b564d09u /* read-only */
#define MSR_KVM_CR0_PINNED_LOW 0x4b564d0au
#define MSR_KVM_CR0_PINNED_HIGH 0x4b564d0bu
#define MSR_KVM_CR4_PINNED_LOW 0x4b564d0cu
#define MSR_KVM_CR4_PINNED_HIGH 0x4b564d0du

#define EFER_SCE (1ull << 0)
#define EFER_LME (1ull << 8)
#define EFER_LMA (1ull << 10)
#define EFER_NXE (1ull << 11)

static inline u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}

static inline void wrmsr(u32 msr, u64 v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}

#endif
