#include "lib/kvm_para.h"
#include "lib/cpuid.h"
#include "lib/string.h"

u32 kvm_cpuid_base(u32 *max_leaf)
{
    for (u32 base = KVM_CPUID_SIGNATURE; base < KVM_CPUID_SIGNATURE + 0x10000u; base += 0x100) {
        struct cpuid_regs r = cpuid(base, 0);
        char sig[12];
        memcpy(sig + 0, &r.ebx, 4);
        memcpy(sig + 4, &r.ecx, 4);
        memcpy(sig + 8, &r.edx, 4);
        if (!memcmp(sig, "KVMKVMKVM\0\0\0", 12)) {
            if (max_leaf)
                *max_leaf = r.eax;
            return base;
        }
    }
    return 0;
}

u32 kvm_para_features(u32 base, u32 max_leaf)
{
    if (!base || max_leaf < base + KVM_CPUID_FEATURES)
        return 0;
    return cpuid(base + KVM_CPUID_FEATURES, 0).eax;
}

static int hc_insn; /* 0 = not yet known, 1 = vmmcall, 2 = vmcall */

bool kvm_hypercall_uses_vmcall(void)
{
    if (!hc_insn) {
        struct cpuid_regs r = cpuid(0, 0);
        char v[12];
        memcpy(v + 0, &r.ebx, 4);
        memcpy(v + 4, &r.edx, 4);
        memcpy(v + 8, &r.ecx, 4);
        hc_insn = !memcmp(v, "AuthenticAMD", 12) || !memcmp(v, "HygonGenuine", 12) ? 1 : 2;
    }
    return hc_insn == 2;
}

long kvm_hypercall3(unsigned int nr, u64 p1, u64 p2, u64 p3)
{
    long ret;
    if (kvm_hypercall_uses_vmcall())
        __asm__ volatile("vmcall" : "=a"(ret) : "a"((u64)nr), "b"(p1), "c"(p2), "d"(p3) : "memory");
    else
        __asm__ volatile("vmmcall" : "=a"(ret) : "a"((u64)nr), "b"(p1), "c"(p2), "d"(p3) : "memory");
    return ret;
}
