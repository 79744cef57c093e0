/*
 * Paravirtualized CR pinning at boot (KVM RFC, June 2020: KVM_FEATURE_CR_PIN = CPUID
 * 0x40000001 EAX bit 15, MSRs 0x4b564d08..0x4b564d0d): pin CR0.WP and the enabled ones of
 * CR4.SMEP/SMAP/UMIP high, print the crpin: line.  Shared by the test kernel and the VBS kernel.
 */
#include "lib/crpin.h"
#include "lib/fixup.h"
#include "lib/kvm_para.h"
#include "lib/msr.h"
#include "lib/string.h"
#include "lib/x86.h"



enum crpin_state crpin_state;
char crpin_reason[96] = "not probed";
u64 boot_cr0_pins, boot_cr4_pins;

const char *crpin_msr_name(u32 msr)
{
    switch (msr) {
    case MSR_KVM_CR0_PIN_ALLOWED:
        return "CR0_PIN_ALLOWED";
    case MSR_KVM_CR4_PIN_ALLOWED:
        return "CR4_PIN_ALLOWED";
    case MSR_KVM_CR0_PINNED_LOW:
        return "CR0_PINNED_LOW";
    case MSR_KVM_CR0_PINNED_HIGH:
        return "CR0_PINNED_HIGH";
    case MSR_KVM_CR4_PINNED_LOW:
        return "CR4_PINNED_LOW";
    case MSR_KVM_CR4_PINNED_HIGH:
        return "CR4_PINNED_HIGH";
    }
    return "?";
}

int crpin_boot(bool off)
{
    if (off) {
        crpin_state = CRPIN_OFF;
        ksnprintf(crpin_reason, sizeof(crpin_reason), "crpin=off on the command line");
        kprintf("crpin: off\n");
        return 0;
    }
    u32 max_leaf = 0, base = kvm_cpuid_base(&max_leaf);
    u32 features = kvm_para_features(base, max_leaf);
    if (!base) {
        ksnprintf(crpin_reason, sizeof(crpin_reason), "no KVM CPUID signature at 0x40000000..0x4000ff00");
    } else if (!(features & (1u << KVM_FEATURE_CR_PIN))) {
        ksnprintf(crpin_reason, sizeof(crpin_reason), "KVM_FEATURE_CR_PIN clear (CPUID 0x%x EAX=0x%x)",
                  base + KVM_CPUID_FEATURES, features);
    } else {
        crpin_state = CRPIN_ON;
        ksnprintf(crpin_reason, sizeof(crpin_reason), "available");
    }
    if (crpin_state != CRPIN_ON) {
        kprintf("crpin: unavailable\n");
        return 0;
    }

    static const u32 msrs[] = {MSR_KVM_CR0_PIN_ALLOWED, MSR_KVM_CR4_PIN_ALLOWED, MSR_KVM_CR0_PINNED_HIGH,
                               MSR_KVM_CR4_PINNED_HIGH};
    u64 v[4];
    for (int i = 0; i < 4; i++) {
        int vec = rdmsr_safe(msrs[i], &v[i], NULL);
        if (vec) {
            kprintf("crpin: FAILED rdmsr %s (0x%x) took vector %d\n", crpin_msr_name(msrs[i]), msrs[i], vec);
            return 1;
        }
    }
    u64 cr0_pins = read_cr0() & CR0_WP & v[0], cr4_pins = read_cr4() & CR4_BOOT_PINS & v[1];
    int vec = wrmsr_safe(MSR_KVM_CR0_PINNED_HIGH, v[2] | cr0_pins, NULL);
    if (!vec)
        vec = wrmsr_safe(MSR_KVM_CR4_PINNED_HIGH, v[3] | cr4_pins, NULL);
    if (vec) {
        kprintf("crpin: FAILED wrmsr to a PINNED_HIGH MSR took vector %d\n", vec);
        return 1;
    }
    u64 cr0_high, cr4_high;
    if (rdmsr_safe(MSR_KVM_CR0_PINNED_HIGH, &cr0_high, NULL) || rdmsr_safe(MSR_KVM_CR4_PINNED_HIGH, &cr4_high, NULL)) {
        kprintf("crpin: FAILED reading back the PINNED_HIGH MSRs\n");
        return 1;
    }
    boot_cr0_pins = cr0_pins;
    boot_cr4_pins = cr4_pins;
    kprintf("crpin: pinned CR0=0x%lx CR4=0x%lx\n", cr0_high, cr4_high);
    if ((cr0_high & cr0_pins) != cr0_pins || (cr4_high & cr4_pins) != cr4_pins) {
        kprintf("crpin: FAILED the MSRs do not hold the pins written (CR0 0x%lx, CR4 0x%lx)\n", cr0_pins, cr4_pins);
        return 1;
    }
    return 0;
}

