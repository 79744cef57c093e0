#include "lib/cpuid.h"
#include "lib/string.h"

void cpu_detect(struct cpu_features *f)
{
    memset(f, 0, sizeof(*f));
    struct cpuid_regs r = cpuid(0, 0);
    f->max_leaf = r.eax;
    memcpy(f->vendor + 0, &r.ebx, 4);
    memcpy(f->vendor + 4, &r.edx, 4);
    memcpy(f->vendor + 8, &r.ecx, 4);
    f->vendor[12] = 0;
    if (f->max_leaf >= 1) {
        r = cpuid(1, 0);
        f->apic = !!(r.edx & CPUID1_EDX_APIC);
        f->x2apic = !!(r.ecx & CPUID1_ECX_X2APIC);
        f->hypervisor = !!(r.ecx & CPUID1_ECX_HYPERVISOR);
    }
    if (f->max_leaf >= 7) {
        r = cpuid(7, 0);
        f->fsgsbase = !!(r.ebx & CPUID7_EBX_FSGSBASE);
        f->smep = !!(r.ebx & CPUID7_EBX_SMEP);
        f->smap = !!(r.ebx & CPUID7_EBX_SMAP);
        f->umip = !!(r.ecx & CPUID7_ECX_UMIP);
    }
    f->max_ext_leaf = cpuid(0x80000000u, 0).eax;
    if (f->max_ext_leaf >= 0x80000001u) {
        r = cpuid(0x80000001u, 0);
        f->nx = !!(r.edx & CPUID81_EDX_NX);
        f->syscall = !!(r.edx & CPUID81_EDX_SYSCALL);
    }
}
