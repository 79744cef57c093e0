"""MSR emulation: every RDMSR/WRMSR exits (the MSR permission map is all ones).

MSRs fall in three groups: (1) engine-backed ones the emulated CPU uses natively (EFER, STAR,
FS/GS bases, SYSENTER, PAT...), written through to the engine after the architectural checks QEMU 5
skips; (2) virtual ones the hypervisor answers itself (TSC from virtual time, APIC base, MTRRs);
(3) ranges owned by a paravirtual ABI (KVM 0x4b564dxx, Hyper-V 0x400000xx) through providers.
Anything else is #GP(0), as on hardware, instead of Unicorn's silent ignore.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..x86.arch import EFER, MSR, canonical

if TYPE_CHECKING:
    from .vcpu import Vcpu


class GuestGP(Exception):
    """Raised by emulation code: inject #GP(error_code) at the current instruction."""

    def __init__(self, error_code: int = 0, why: str = "") -> None:
        super().__init__(why or f"#GP({error_code})")
        self.error_code = error_code


class InterceptPending(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by an intercept filter: the event went to a higher VTL; do not complete the instruction."""


class MsrProvider(Protocol):
    """A paravirtual ABI's MSRs. Return None from read / False from write when not ours."""

    def msr_read(self, vcpu: Vcpu, msr: int) -> int | None: ...
    def msr_write(self, vcpu: Vcpu, msr: int, value: int) -> bool: ...


ENGINE_BACKED = {
    MSR.IA32_STAR, MSR.IA32_LSTAR, MSR.IA32_CSTAR, MSR.IA32_FMASK, MSR.IA32_FS_BASE,
    MSR.IA32_GS_BASE, MSR.IA32_KERNEL_GS_BASE, MSR.IA32_SYSENTER_CS, MSR.IA32_SYSENTER_ESP,
    MSR.IA32_SYSENTER_EIP, MSR.IA32_PAT, MSR.IA32_TSC_AUX,
}
CANONICAL_MSRS = {MSR.IA32_LSTAR, MSR.IA32_CSTAR, MSR.IA32_FS_BASE, MSR.IA32_GS_BASE,
                  MSR.IA32_KERNEL_GS_BASE, MSR.IA32_SYSENTER_ESP, MSR.IA32_SYSENTER_EIP}
EFER_ALLOWED = EFER.SCE | EFER.LME | EFER.LMA | EFER.NXE
MTRR_VAR = range(0x200, 0x210)
MTRR_FIXED = {0x250, 0x258, 0x259} | set(range(0x268, 0x270))
#: MTRRcap: 8 variable ranges, fixed ranges supported, write-combining (SDM 11.11.1)
MTRRCAP_VALUE = 0x508
#: IA32_MISC_ENABLE: fast strings (bit 0) as QEMU reports
MISC_ENABLE_DEFAULT = 0x1


def _valid_pat(v: int) -> bool:
    return all(((v >> (8 * i)) & 0xFF) in (0, 1, 4, 5, 6, 7) for i in range(8))


@dataclass
class MsrState:
    """Per-vCPU shadow of the MSRs the hypervisor itself needs (SYSCALL emulation) or owns."""

    efer: int = 0
    star: int = 0
    lstar: int = 0
    cstar: int = 0
    fmask: int = 0
    sysenter_cs: int = 0
    sysenter_esp: int = 0
    sysenter_eip: int = 0
    misc_enable: int = MISC_ENABLE_DEFAULT
    mtrr_def_type: int = 0
    mtrr: dict[int, int] = field(default_factory=dict)
    tsc_offset: int = 0


WriteFilter = Callable[["Vcpu", int, int], bool]


class MsrTable:
    def __init__(self) -> None:
        self.providers: list[MsrProvider] = []
        #: called before a write takes effect; returning True means "handled" (blocked/forwarded)
        self.write_filters: list[WriteFilter] = []
        #: called before a read (may raise GuestGP / InterceptPending)
        self.read_filters: list[Callable[[Vcpu, int], None]] = []

    def read(self, vcpu: Vcpu, msr: int) -> int:
        for f in self.read_filters:
            f(vcpu, msr)
        s = vcpu.msr_state
        for p in self.providers:
            v = p.msr_read(vcpu, msr)
            if v is not None:
                return v
        if msr == MSR.IA32_EFER:
            return s.efer
        if msr in (MSR.IA32_STAR, MSR.IA32_LSTAR, MSR.IA32_CSTAR, MSR.IA32_FMASK):
            return {MSR.IA32_STAR: s.star, MSR.IA32_LSTAR: s.lstar, MSR.IA32_CSTAR: s.cstar,
                    MSR.IA32_FMASK: s.fmask}[msr]
        if msr in ENGINE_BACKED:
            return vcpu.engine.msr_read(msr)
        if msr == MSR.IA32_TSC:
            return (vcpu.tsc() + s.tsc_offset) & 0xFFFFFFFFFFFFFFFF
        if msr == MSR.IA32_APIC_BASE:
            return vcpu.lapic.read_base_msr()
        if msr == MSR.IA32_MISC_ENABLE:
            return s.misc_enable
        if msr == MSR.IA32_MTRRCAP:
            return MTRRCAP_VALUE
        if msr == MSR.IA32_MTRR_DEF_TYPE:
            return s.mtrr_def_type
        if msr in MTRR_VAR or msr in MTRR_FIXED:
            return s.mtrr.get(msr, 0)
        if msr in (MSR.IA32_MCG_CAP, MSR.IA32_MCG_STATUS, MSR.IA32_BIOS_SIGN_ID, 0x17):
            return 0
        raise GuestGP(0, f"rdmsr {msr:#x}: no such MSR")

    def write(self, vcpu: Vcpu, msr: int, value: int) -> None:
        value &= 0xFFFFFFFFFFFFFFFF
        for f in self.write_filters:
            if f(vcpu, msr, value):
                return
        for p in self.providers:
            if p.msr_write(vcpu, msr, value):
                return
        s = vcpu.msr_state
        if msr == MSR.IA32_EFER:
            self._write_efer(vcpu, value)
            return
        if msr in CANONICAL_MSRS and not canonical(value):
            raise GuestGP(0, f"wrmsr {msr:#x}: non-canonical {value:#x}")
        if msr == MSR.IA32_PAT and not _valid_pat(value):
            raise GuestGP(0, "wrmsr PAT: invalid memory type")
        if msr == MSR.IA32_TSC_AUX and value >> 32:
            raise GuestGP(0, "wrmsr TSC_AUX: reserved bits")
        if msr in ENGINE_BACKED:
            if msr == MSR.IA32_STAR:
                s.star = value
            elif msr == MSR.IA32_LSTAR:
                s.lstar = value
            elif msr == MSR.IA32_CSTAR:
                s.cstar = value
            elif msr == MSR.IA32_FMASK:
                s.fmask = value & 0xFFFFFFFF
                value &= 0xFFFFFFFF
            elif msr == MSR.IA32_SYSENTER_CS:
                s.sysenter_cs = value & 0xFFFF
            elif msr == MSR.IA32_SYSENTER_ESP:
                s.sysenter_esp = value
            elif msr == MSR.IA32_SYSENTER_EIP:
                s.sysenter_eip = value
            vcpu.engine.msr_write(msr, value)
            return
        if msr == MSR.IA32_TSC:
            s.tsc_offset = (value - vcpu.tsc()) & 0xFFFFFFFFFFFFFFFF
            return
        if msr == MSR.IA32_APIC_BASE:
            if not vcpu.lapic.write_base_msr(value):
                raise GuestGP(0, f"wrmsr APIC_BASE: invalid {value:#x}")
            return
        if msr == MSR.IA32_MISC_ENABLE:
            s.misc_enable = value
            return
        if msr == MSR.IA32_MTRR_DEF_TYPE:
            if value & ~0xCFF:
                raise GuestGP(0, "wrmsr MTRR_DEF_TYPE: reserved bits")
            s.mtrr_def_type = value
            return
        if msr in MTRR_VAR or msr in MTRR_FIXED:
            s.mtrr[msr] = value
            return
        if msr == MSR.IA32_MCG_STATUS and value == 0:
            return
        raise GuestGP(0, f"wrmsr {msr:#x}: no such MSR")

    def _write_efer(self, vcpu: Vcpu, value: int) -> None:
        s = vcpu.msr_state
        if value & ~EFER_ALLOWED & 0xFFFFFFFFFFFFFFFF:
            raise GuestGP(0, f"wrmsr EFER: reserved/hidden bits {value:#x}")   # incl. SVME: SVM is ours
        paging = vcpu.reg("cr0") & (1 << 31)
        if paging and (value ^ s.efer) & EFER.LME:
            raise GuestGP(0, "wrmsr EFER: LME changed while paging is on")
        value = (value & ~EFER.LMA) | (s.efer & EFER.LMA)      # LMA is read-only
        s.efer = value
        vcpu.engine.msr_write(MSR.IA32_EFER, value | EFER.SVME)
