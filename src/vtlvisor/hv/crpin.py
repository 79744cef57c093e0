"""Paravirtualized control-register pinning: one mechanism behind the KVM MSRs, Heki's hypercall
and the host API.

A pinned-high bit must stay set and a pinned-low bit must stay clear in every CR0/CR4 value the
guest writes, whatever the path (mov to CR, LMSW, CLTS: all CR0/CR4 writes exit). Pins are add-only
for the guest; the host may also remove them. A blocked write is #GP(0) with the register unchanged
and RIP at the instruction, and it is recorded (``blocked``) and traced.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ..abi.kvm_pv import (
    CR0_PINNABLE,
    CR4_PINNABLE,
    KVM_LOCK_CR_UPDATE_ABI,
    KvmErrno,
    KvmLockCrFlags,
    KvmMsr,
)
from ..x86.arch import CR0
from .msrs import GuestGP

if TYPE_CHECKING:
    from .vcpu import Vcpu

log = logging.getLogger(__name__)


class PinError(ValueError):
    """An invalid pin request (the guest gets #GP / -KVM_EINVAL; the host gets this exception)."""


@dataclass
class BlockedWrite:
    cr: int
    old: int
    attempted: int
    rip: int
    cpl: int
    source: str = "guest"


@dataclass
class CrPins:
    cr0_low: int = 0
    cr0_high: int = 0
    cr4_low: int = 0
    cr4_high: int = 0


_MSR_FIELD = {
    KvmMsr.CR0_PINNED_LOW: ("cr0_low", 0), KvmMsr.CR0_PINNED_HIGH: ("cr0_high", 0),
    KvmMsr.CR4_PINNED_LOW: ("cr4_low", 4), KvmMsr.CR4_PINNED_HIGH: ("cr4_high", 4),
}


#: blocked-write records kept (the guest can retry forever; the count keeps growing, the list does not)
BLOCKED_RECORDS_KEPT = 256


@dataclass
class CrPinning:
    enabled: bool = True
    pins: CrPins = field(default_factory=CrPins)
    blocked: list[BlockedWrite] = field(default_factory=list)
    blocked_count: int = 0

    @staticmethod
    def allowed(cr: int) -> int:
        return CR0_PINNABLE if cr == 0 else CR4_PINNABLE

    def pinned(self, cr: int) -> tuple[int, int]:
        p = self.pins
        return (p.cr0_low, p.cr0_high) if cr == 0 else (p.cr4_low, p.cr4_high)

    # ------------------------------------------------------------------ the one validity rule
    def set_pins(self, cr: int, *, low: int | None = None, high: int | None = None,
                 host: bool = False) -> None:
        """Change the pins of CR0 or CR4. The guest may only add pins; the host may also remove them
        (the reviewers asked that host writes follow the guest's rules otherwise)."""
        if cr not in (0, 4):
            raise PinError(f"CR{cr} cannot be pinned")
        cur_low, cur_high = self.pinned(cr)
        new_low = cur_low if low is None else low
        new_high = cur_high if high is None else high
        allowed = self.allowed(cr)
        if (new_low | new_high) & ~allowed:
            raise PinError(f"CR{cr}: bits {(new_low | new_high) & ~allowed:#x} are not pinnable")
        if new_low & new_high:
            raise PinError(f"CR{cr}: bits {new_low & new_high:#x} cannot be pinned both high and low")
        if not host and (cur_low & ~new_low or cur_high & ~new_high):
            raise PinError(f"CR{cr}: the guest cannot remove pins")
        if cr == 0:
            self.pins.cr0_low, self.pins.cr0_high = new_low, new_high
        else:
            self.pins.cr4_low, self.pins.cr4_high = new_low, new_high

    def violates(self, cr: int, value: int) -> bool:
        low, high = self.pinned(cr)
        return (value & high) != high or bool(value & low)

    # ------------------------------------------------------------------ enforcement (CR write filter)
    def cr_write_filter(self, vcpu: Vcpu, cr: int, old: int, new: int) -> bool:
        if cr not in (0, 4) or not self.violates(cr, new):
            return False
        rec = BlockedWrite(cr, old, new, vcpu.engine.rip, vcpu.cpl())
        self.blocked_count += 1
        if len(self.blocked) < BLOCKED_RECORDS_KEPT:
            self.blocked.append(rec)
        log.debug("blocked CR%d write %#x -> %#x at RIP %#x (CPL %d): pinned bits", cr, old, new,
                 rec.rip, rec.cpl)
        vcpu.security_event("blocked_cr_write", f"CR{cr} write {old:#x}->{new:#x} blocked at RIP {rec.rip:#x} "
                            f"(CPL {rec.cpl}): pinned bits", cr=cr, old=old, attempted=new, cpl=rec.cpl)
        raise GuestGP(0, f"CR{cr} write would change pinned bits")

    # ------------------------------------------------------------------ MSRs (MsrProvider)
    def msr_read(self, vcpu: Vcpu, msr: int) -> int | None:
        if not self.enabled:
            return None
        if msr == KvmMsr.CR0_PIN_ALLOWED:
            return CR0_PINNABLE
        if msr == KvmMsr.CR4_PIN_ALLOWED:
            return CR4_PINNABLE
        f = _MSR_FIELD.get(msr)
        return None if f is None else getattr(self.pins, f[0])

    def msr_write(self, vcpu: Vcpu, msr: int, value: int) -> bool:
        if not self.enabled:
            return False
        if msr in (KvmMsr.CR0_PIN_ALLOWED, KvmMsr.CR4_PIN_ALLOWED):
            raise GuestGP(0, "PIN_ALLOWED MSRs are read-only")
        f = _MSR_FIELD.get(msr)
        if f is None:
            return False
        name, cr = f
        try:
            if name.endswith("low"):
                self.set_pins(cr, low=value)
            else:
                self.set_pins(cr, high=value)
        except PinError as e:
            vcpu.security_event("refused_pin_msr", f"wrmsr {msr:#x} <- {value:#x} refused with #GP: {e}",
                                msr=msr, value=value)
            raise GuestGP(0, str(e)) from None
        if vcpu.hooks.trace:
            vcpu.hooks.trace("cr_pin", {"msr": msr, "value": value})
        return True

    # ------------------------------------------------------------------ Heki KVM_HC_LOCK_CR_UPDATE
    def lock_cr_update(self, vcpu: Vcpu, cr: int, mask: int, flags: int) -> int:
        if flags & ~KvmLockCrFlags.KVM_LOCK_CR_UPDATE_VERSION:
            return -KvmErrno.KVM_EINVAL
        if flags & KvmLockCrFlags.KVM_LOCK_CR_UPDATE_VERSION:
            return KVM_LOCK_CR_UPDATE_ABI
        if cr not in (0, 4) or mask == 0:
            return -KvmErrno.KVM_EINVAL
        if mask & ~self.allowed(cr) or (cr == 0 and not mask & CR0.WP):
            return -KvmErrno.KVM_EINVAL
        if mask & ~vcpu.reg(f"cr{cr}"):
            return -KvmErrno.KVM_EINVAL       # only bits that are set can be locked
        _, high = self.pinned(cr)
        try:
            self.set_pins(cr, high=high | mask)
        except PinError:
            return -KvmErrno.KVM_EINVAL
        return 0

    # ------------------------------------------------------------------ lifecycle
    def reset(self) -> None:
        """vCPU reset/INIT/reboot: pins are cleared (the host must re-arm nothing; the guest re-pins)."""
        self.pins = CrPins()

    def save(self) -> dict[str, int]:
        return asdict(self.pins)

    def restore(self, state: dict[str, int]) -> None:
        pins = CrPins(**{k: int(state[k]) for k in ("cr0_low", "cr0_high", "cr4_low", "cr4_high")})
        for cr, low, high in ((0, pins.cr0_low, pins.cr0_high), (4, pins.cr4_low, pins.cr4_high)):
            if (low | high) & ~self.allowed(cr) or low & high:
                raise PinError(f"saved state has invalid CR{cr} pins")
        self.pins = pins
