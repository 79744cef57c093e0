"""KVM paravirtual ABI subset: CPUID leaves, the CR-pinning MSRs, the hypercall convention, Heki.

Sources:
- KVM CPUID leaves and hypercall convention: Linux Documentation/virt/kvm/x86/cpuid.rst and
  hypercalls.rst; include/uapi/linux/kvm_para.h (KVM_E* error numbers).
- Paravirtualized CR pinning, last posted version ("[PATCH 0/4] Paravirtualized Control Register
  pinning", John Andersen, 2020-06-17, Message-ID 20200617190757.27081-3-john.s.andersen@intel.com):
  KVM_FEATURE_CR_PIN = 15 and MSRs 0x4b564d08-0x4b564d0d. The December 2019 RFC used feature bit 14
  and MSRs 0x4b564d06-0x4b564d09 (CR0_PINNED/CR4_PINNED, pin-to-1 only); see docs/cr-pinning.md.
- Heki ("Hypervisor Enforced Kernel Integrity", Mickael Salaun, v2, Message-ID
  20231113022326.24388-3-mic@digikod.net): KVM_HC_LOCK_CR_UPDATE = 13, KVM_LOCK_CR_UPDATE_VERSION.
"""

from enum import IntEnum, IntFlag

from ..x86.arch import CR0, CR4

KVM_CPUID_SIGNATURE = 0x40000000
KVM_CPUID_FEATURES = 0x40000001
KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"


class KvmFeature(IntEnum):
    """Bit numbers in CPUID KVM_CPUID_FEATURES.EAX."""

    CR_PIN = 15


class KvmMsr(IntEnum):
    CR0_PIN_ALLOWED = 0x4B564D08
    CR4_PIN_ALLOWED = 0x4B564D09
    CR0_PINNED_LOW = 0x4B564D0A
    CR0_PINNED_HIGH = 0x4B564D0B
    CR4_PINNED_LOW = 0x4B564D0C
    CR4_PINNED_HIGH = 0x4B564D0D


class KvmHypercall(IntEnum):
    """Hypercall numbers (RAX). 13 is Heki's KVM_HC_LOCK_CR_UPDATE."""

    LOCK_CR_UPDATE = 13


class KvmLockCrFlags(IntFlag):
    KVM_LOCK_CR_UPDATE_VERSION = 1 << 0


#: the ABI version KVM_HC_LOCK_CR_UPDATE reports when asked with KVM_LOCK_CR_UPDATE_VERSION
KVM_LOCK_CR_UPDATE_ABI = 1


class KvmErrno(IntEnum):
    """include/uapi/linux/kvm_para.h; returned negated in RAX."""

    KVM_EPERM = 1
    KVM_E2BIG = 7
    KVM_EFAULT = 14
    KVM_EINVAL = 22
    KVM_EOPNOTSUPP = 95
    KVM_ENOSYS = 1000


#: pinnable bits: the series' documentation names CR0.WP and CR4.SMEP/SMAP/UMIP; its kvm-unit-tests
#: (cr_pin_high.c) also expect FSGSBASE in CR4_PIN_ALLOWED.
CR0_PINNABLE = int(CR0.WP)
CR4_PINNABLE = int(CR4.SMEP | CR4.SMAP | CR4.UMIP | CR4.FSGSBASE)
