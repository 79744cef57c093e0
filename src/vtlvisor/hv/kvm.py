"""The KVM paravirtual interface of a partition: CPUID leaves and the hypercall dispatcher.

Hypercall convention (Documentation/virt/kvm/x86/hypercalls.rst): VMMCALL (or Intel VMCALL, which
faults with #UD on our AMD-modelled CPU and is handled the same way, as KVM does), number in RAX,
arguments in RBX, RCX, RDX, RSI, result in RAX; negative KVM_E* on error; only CPL 0 may call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..abi.domains import DomainHypercall
from ..abi.kvm_pv import (
    KVM_CPUID_FEATURES,
    KVM_CPUID_SIGNATURE,
    KVM_SIGNATURE,
    KvmErrno,
    KvmFeature,
    KvmHypercall,
)

if TYPE_CHECKING:
    from .crpin import CrPinning
    from .vcpu import Vcpu

Handler = Callable[["Vcpu", int, int, int, int], int]
MASK64 = 0xFFFFFFFFFFFFFFFF
_DOMAIN_CALLS = frozenset(DomainHypercall)
_KVM_ERRNOS = frozenset(KvmErrno)


class KvmInterface:
    def __init__(self, crpin: CrPinning, base: int = KVM_CPUID_SIGNATURE) -> None:
        self.crpin = crpin
        self.base = base          # 0x40000000, or 0x40000100 beside Hyper-V enlightenments
        self.handlers: dict[int, Handler] = {
            KvmHypercall.LOCK_CR_UPDATE: self._lock_cr_update,
        }
        self.extra_features = 0   # other KVM-PV ABIs (domains) add their feature bits here

    def cpuid(self, leaf: int, sub: int) -> tuple[int, int, int, int] | None:
        if leaf == self.base + (KVM_CPUID_SIGNATURE - KVM_CPUID_SIGNATURE):
            b, c, d = (int.from_bytes(KVM_SIGNATURE[i:i + 4], "little") for i in (0, 4, 8))
            return (self.base + (KVM_CPUID_FEATURES - KVM_CPUID_SIGNATURE), b, c, d)
        if leaf == self.base + (KVM_CPUID_FEATURES - KVM_CPUID_SIGNATURE):
            feats = self.extra_features
            if self.crpin.enabled:
                feats |= 1 << KvmFeature.CR_PIN
            return (feats, 0, 0, 0)
        return None

    def hypercall(self, vcpu: Vcpu) -> None:
        nr = vcpu.reg("rax")
        args = [vcpu.reg(r) for r in ("rbx", "rcx", "rdx", "rsi")]
        if not vcpu.engine.code64():
            nr &= 0xFFFFFFFF
            args = [a & 0xFFFFFFFF for a in args]
        cpl = vcpu.cpl()
        if cpl != 0:
            ret = -KvmErrno.KVM_EPERM
        else:
            h = self.handlers.get(nr)
            ret = -KvmErrno.KVM_ENOSYS if h is None else h(vcpu, *args)
        # refusals of the domain hypercalls are recorded by hv/domains.py, with their reasons
        if cpl != 0 or ret < 0 and nr in self.handlers and nr not in _DOMAIN_CALLS:
            err = KvmErrno(-ret).name if -ret in _KVM_ERRNOS else str(-ret)
            vcpu.security_event("refused_hypercall", f"KVM hypercall {nr} at CPL {cpl} -> -{err}",
                                nr=nr, ret=ret)
        if vcpu.hooks.trace:
            vcpu.hooks.trace("hypercall", {"abi": "kvm", "nr": nr, "ret": ret})
        vcpu.set_reg("rax", ret & MASK64)

    def _lock_cr_update(self, vcpu: Vcpu, a0: int, a1: int, a2: int, a3: int) -> int:
        return self.crpin.lock_cr_update(vcpu, a0, a1, a2)
