/* CPUID helpers. */
#ifndef GUEST_LIB_CPUID_H
#define GUEST_LIB_CPUID_H

#include "lib/types.h"

struct cpuid_regs {
    u32 eax, ebx, ecx, edx;
};

static inline struct cpuid_regs cpuid(u32 leaf, u32 subleaf)
{
    struct cpuid_regs r;
    __asm__ volatile("cpuid" : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx) : "a"(leaf), "c"(subleaf));
    return r;
}

/* Feature bits this code cares about. */
#define CPUID1_EDX_APIC (1u << 9)
#define CPUID1_ECX_X2APIC (1u << 21)
#define CPUID1_ECX_HYPERVISOR (1u << 31)
#define CPUID7_EBX_FSGSBASE (1u << 0)
#define CPUID7_EBX_SMEP (1u << 7)
#define CPUID7_EBX_SMAP (1u << 20)
#define CPUID7_ECX_UMIP (1u << 2)
#define CPUID81_EDX_SYSCALL (1u << 11)
#define CPUID81_EDX_NX (1u << 20)
#define CPUID81_EDX_LM (1u << 29)

struct cpu_features {
    char vendor[13];
    u32 max_leaf, max_ext_leaf;
    bool apic, x2apic, nx, smep, smap, umip, syscall, fsgsbase, hypervisor;
};

void cpu_detect(struct cpu_features *f);

#endif
