/* KVM paravirtual interface: CPUID base discovery, feature bits, hypercalls. */
#ifndef GUEST_LIB_KVM_PARA_H
#define GUEST_LIB_KVM_PARA_H

#include "lib/types.h"

#define KVM_CPUID_SIGNATURE 0x40000000u /* searched in steps of 0x100 up to 0x4000ff00 */
#define KVM_CPUID_FEATURES 0x00000001u  /* offset from the base */
#define KVM_FEATURE_CR_PIN 15            /* bit in KVM_CPUID_FEATURES.EAX (June 2020 RFC) */

/* Heki: pin CR bits high through a hypercall. RBX = cr (0/4), RCX = mask, RDX = flags. */
#define KVM_HC_LOCK_CR_UPDATE 13
#define KVM_LOCK_CR_UPDATE_VERSION (1ull << 0) /* flags: return the ABI version, do nothing else */

/* Hypercall results (negated in RAX). */
#define KVM_EPERM 1
#define KVM_EINVAL 22
#define KVM_ENOSYS 1000

/* Base of the "KVMKVMKVM\0\0\0" leaves (as Linux's hypervisor_cpuid_base), or 0. *max_leaf gets EAX. */
u32 kvm_cpuid_base(u32 *max_leaf);
/* KVM_CPUID_FEATURES.EAX at base, or 0 when the base does not have that leaf. */
u32 kvm_para_features(u32 base, u32 max_leaf);

/* Hypercall with RAX = nr, RBX/RCX/RDX = p1/p2/p3; VMMCALL on AMD/Hygon, VMCALL otherwise. */
long kvm_hypercall3(unsigned int nr, u64 p1, u64 p2, u64 p3);
bool kvm_hypercall_uses_vmcall(void);

#endif
