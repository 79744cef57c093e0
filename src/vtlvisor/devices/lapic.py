"""xAPIC local APIC for the single virtual CPU: interrupt priority, EOI, self-IPIs and the APIC timer.

The model keeps the architectural state the SDM (Vol. 3A, chapter 11 "Advanced Programmable Interrupt
Controller") defines for one CPU and nothing about how a vector reaches the CPU: the hypervisor asks
``pending_vector()`` when the guest can take an interrupt, then ``acknowledge()``s it, and drives the
timer with ``next_deadline()`` / ``poll(now)`` against its *virtual* clock. The current-count register
is computed from that clock, so timer behaviour is deterministic for a deterministic clock.

Timer state is kept as an anchor (virtual time ``t0`` and ticks already counted at ``t0``) rather than a
countdown, so deadlines never drift: expiry *k* of a periodic timer is the first nanosecond at which
``k * initial`` ticks have elapsed. A timer keeps counting while masked (SDM 11.5.4) but an expiry while
masked is lost, as on hardware; every register access first brings the timer up to date so masking or
unmasking applies exactly at the access time.

Everything reachable from the guest (MMIO at any offset and width, any value) is total: a misaligned or
non-32-bit access reads 0 and is ignored, unknown registers set the ESR "illegal register address" bit.
Vectors 0-15 are illegal and set ESR "received illegal vector" instead of being accepted.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

APIC_DEFAULT_BASE = 0xFEE00000
APIC_MMIO_SIZE = 0x1000
APIC_VERSION = 0x14                 # QEMU apic.c: s->version = 0x14 (integrated APIC)
APIC_LVT_NB = 6                     # QEMU APIC_LVT_NB: timer, thermal, perf, LINT0, LINT1, error
NS_PER_S = 1_000_000_000
MSR_IA32_APICBASE = 0x1B


class ApicReg(enum.IntEnum):
    """Register offsets (SDM Vol. 3A Table 11-1); names as Linux arch/x86/include/asm/apicdef.h."""

    ID = 0x20
    LVR = 0x30
    TASKPRI = 0x80
    ARBPRI = 0x90
    PROCPRI = 0xA0
    EOI = 0xB0
    RRR = 0xC0
    LDR = 0xD0
    DFR = 0xE0
    SPIV = 0xF0
    ISR = 0x100         # 8 x 32-bit, 16-byte stride
    TMR = 0x180
    IRR = 0x200
    ESR = 0x280
    LVTCMCI = 0x2F0
    ICR = 0x300
    ICR2 = 0x310
    LVTT = 0x320
    LVTTHMR = 0x330
    LVTPC = 0x340
    LVT0 = 0x350
    LVT1 = 0x360
    LVTERR = 0x370
    TMICT = 0x380
    TMCCT = 0x390
    TDCR = 0x3E0


class ApicEsr(enum.IntEnum):
    """Error status bits (SDM Figure 11-9; apicdef.h APIC_ESR_*)."""

    SEND_CS = 0x01
    RECV_CS = 0x02
    SEND_ACC = 0x04
    RECV_ACC = 0x08
    SENDILL = 0x20      # send illegal vector
    RECVILL = 0x40      # received illegal vector
    ILLREGA = 0x80      # illegal register address


class ApicLvt(enum.IntEnum):
    """LVT fields (SDM Figure 11-8; apicdef.h APIC_LVT_*)."""

    VECTOR = 0xFF
    DELIVERY_STATUS = 1 << 12
    MASKED = 1 << 16
    TIMER_MODE_SHIFT = 17
    TIMER_MODE_MASK = 3 << 17


class TimerMode(enum.IntEnum):
    """LVT timer mode field, bits 17-18 (SDM Figure 11-8)."""

    ONESHOT = 0
    PERIODIC = 1
    TSC_DEADLINE = 2
    RESERVED = 3


class ApicIcr(enum.IntEnum):
    """Interrupt command register fields (SDM Figure 11-12; apicdef.h APIC_DM_*/APIC_DEST_*)."""

    VECTOR = 0xFF
    DM_SHIFT = 8
    DM_MASK = 0x700
    DEST_LOGICAL = 0x800
    BUSY = 0x1000               # delivery status: always reads idle here
    SHORTHAND_SHIFT = 18
    WRITABLE = 0xCCFFF          # vector, delivery mode, dest mode, level, trigger, shorthand


class DeliveryMode(enum.IntEnum):
    """ICR/LVT delivery modes (SDM 11.6.1, Figure 11-12; apicdef.h APIC_DM_*)."""

    FIXED = 0
    LOWEST = 1
    SMI = 2
    REMRD = 3
    NMI = 4
    INIT = 5
    STARTUP = 6
    EXTINT = 7


class Shorthand(enum.IntEnum):
    """ICR destination shorthand (apicdef.h APIC_DEST_SELF/ALLINC/ALLBUT)."""

    NONE = 0
    SELF = 1
    ALL_INCLUDING_SELF = 2
    ALL_EXCLUDING_SELF = 3


class ApicSpiv(enum.IntEnum):
    """Spurious-interrupt vector register (apicdef.h APIC_SPIV_*)."""

    APIC_ENABLED = 0x100
    WRITABLE = 0x1FF            # QEMU apic.c: spurious_vec = val & 0x1ff


class ApicBaseMsr(enum.IntEnum):
    """IA32_APIC_BASE (MSR 0x1B) bits (SDM Figure 11-5; QEMU MSR_IA32_APICBASE_*)."""

    BSP = 1 << 8
    EXTD = 1 << 10              # x2APIC enable: not supported, so a reserved bit here
    ENABLE = 1 << 11
    BASE = ~0xFFF


# Writable bits of each LVT register (SDM Figure 11-8); remote-IRR and delivery status are read-only.
_LVT_WRITABLE = {
    ApicReg.LVTT: 0x700FF,
    ApicReg.LVTTHMR: 0x107FF,
    ApicReg.LVTPC: 0x107FF,
    ApicReg.LVT0: 0x1A7FF,
    ApicReg.LVT1: 0x1A7FF,
    ApicReg.LVTERR: 0x100FF,
}


def timer_divisor(tdcr: int) -> int:
    """Divide value encoded in the divide configuration register (SDM Figure 11-10).

    Bits 3,1,0: 000=2 001=4 010=8 011=16 100=32 101=64 110=128 111=1.
    """
    code = (tdcr & 0x3) | ((tdcr >> 1) & 0x4)
    return 1 << ((code + 1) & 7)


def _highest(bits: int) -> int:
    return bits.bit_length() - 1


class LocalApic:
    """The local APIC of one CPU; ``clock()`` returns virtual nanoseconds, ``bus_hz`` the timer input."""

    def __init__(self, clock: Callable[[], int], bus_hz: int = NS_PER_S, apic_id: int = 0,
                 phys_bits: int = 40) -> None:
        if bus_hz <= 0:
            raise ValueError("bus_hz must be positive")
        self._clock = clock
        self.bus_hz = bus_hz
        self.phys_bits = phys_bits
        self.apic_id = apic_id & 0xFF
        self.base_msr = APIC_DEFAULT_BASE | ApicBaseMsr.BSP | ApicBaseMsr.ENABLE
        self._reset_registers()

    # ------------------------------------------------------------------ state
    def _reset_registers(self) -> None:
        """Power-up state of the registers (SDM 11.4.7.1), keeping the APIC ID."""
        self._tpr = 0
        self.ldr = 0
        self.dfr = 0xFFFFFFFF
        self.svr = 0xFF
        self.irr = 0
        self.isr = 0
        self.tmr = 0
        self.esr = 0
        self._esr_pending = 0
        self.icr_low = 0
        self.icr_high = 0
        self.lvt = {reg: int(ApicLvt.MASKED) for reg in _LVT_WRITABLE}
        self.tdcr = 0
        self.timer_initial = 0
        self._timer_running = False
        self._t0 = 0
        self._ticks0 = 0
        self._fired = 0

    @property
    def hw_enabled(self) -> bool:
        return bool(self.base_msr & ApicBaseMsr.ENABLE)

    @property
    def sw_enabled(self) -> bool:
        return bool(self.svr & ApicSpiv.APIC_ENABLED)

    @property
    def enabled(self) -> bool:
        """Both globally (IA32_APIC_BASE.EN) and software (SVR bit 8) enabled."""
        return self.hw_enabled and self.sw_enabled

    @property
    def tpr(self) -> int:
        return self._tpr

    @tpr.setter
    def tpr(self, value: int) -> None:
        self._tpr = value & 0xFF

    @property
    def cr8(self) -> int:
        """CR8 is an alias of TPR[7:4] (SDM 11.8.6.1)."""
        return self._tpr >> 4

    @cr8.setter
    def cr8(self, value: int) -> None:
        self._tpr = (value & 0xF) << 4

    @property
    def ppr(self) -> int:
        """Processor priority (SDM 11.8.3.1): TPR if its class >= the highest in-service class."""
        isrv = _highest(self.isr) if self.isr else 0
        if (self._tpr >> 4) >= (isrv >> 4):
            return self._tpr
        return isrv & 0xF0

    # ------------------------------------------------------------------ interrupt interface
    def raise_vector(self, vector: int) -> None:
        """Accept a fixed interrupt into IRR (edge-triggered). Illegal vectors set the ESR instead."""
        if not 0 <= vector <= 0xFF:
            log.warning("LAPIC: vector %r out of range ignored", vector)
            return
        if vector < 16:
            self._error(ApicEsr.RECVILL)
            return
        if not self.enabled:
            log.debug("LAPIC disabled: vector %#x dropped", vector)
            return
        self.irr |= 1 << vector
        self.tmr &= ~(1 << vector)

    def pending_vector(self) -> int | None:
        """Highest IRR vector whose priority class exceeds PPR's, or None (always None if disabled)."""
        if not self.enabled or not self.irr:
            return None
        vector = _highest(self.irr)
        if (vector & 0xF0) > (self.ppr & 0xF0):
            return vector
        return None

    def acknowledge(self) -> int:
        """INTA: move the pending vector from IRR to ISR and return it.

        With nothing deliverable the APIC answers with the spurious vector (SVR[7:0]) and changes no
        state, as hardware does when the interrupt was withdrawn between request and acknowledge.
        """
        vector = self.pending_vector()
        if vector is None:
            return self.svr & 0xFF
        self.irr &= ~(1 << vector)
        self.isr |= 1 << vector
        return vector

    def eoi(self) -> None:
        """End of interrupt: retire the highest-priority in-service vector."""
        if self.isr:
            self.isr &= ~(1 << _highest(self.isr))

    # ------------------------------------------------------------------ timer interface
    @property
    def timer_mode(self) -> TimerMode:
        return TimerMode((self.lvt[ApicReg.LVTT] & ApicLvt.TIMER_MODE_MASK) >> ApicLvt.TIMER_MODE_SHIFT)

    def _timer_masked(self) -> bool:
        return bool(self.lvt[ApicReg.LVTT] & ApicLvt.MASKED)

    def _ticks(self, now: int) -> int:
        """Timer ticks counted in the current period, including those counted before the anchor."""
        elapsed = max(0, now - self._t0)
        return self._ticks0 + (elapsed * self.bus_hz) // (timer_divisor(self.tdcr) * NS_PER_S)

    def _time_of_tick(self, ticks: int) -> int:
        """First virtual ns at which ``ticks`` (counted like ``_ticks``) have elapsed."""
        need = max(0, ticks - self._ticks0) * timer_divisor(self.tdcr) * NS_PER_S
        return self._t0 + -(-need // self.bus_hz)

    def _periodic(self) -> bool:
        return self.timer_mode == TimerMode.PERIODIC

    def next_deadline(self) -> int | None:
        """Virtual ns of the next expiry that would raise an interrupt, or None if none will."""
        if not self._timer_running or self._timer_masked() or not self.enabled:
            return None
        if self._periodic():
            return self._time_of_tick((self._fired + 1) * self.timer_initial)
        return self._time_of_tick(self.timer_initial)

    def poll(self, now_ns: int) -> None:
        """Bring the timer to ``now_ns``: raise the LVT timer vector for an unmasked expiry."""
        if not self._timer_running:
            return
        ticks = self._ticks(now_ns)
        if self._periodic():
            expiries = ticks // self.timer_initial
            if expiries > self._fired:          # several missed periods coalesce into one IRR bit
                self._fired = expiries
                self._timer_expired()
        elif ticks >= self.timer_initial:
            self._timer_running = False
            self._timer_expired()

    def _timer_expired(self) -> None:
        if not self._timer_masked():
            self.raise_vector(self.lvt[ApicReg.LVTT] & ApicLvt.VECTOR)

    def current_count(self, now_ns: int) -> int:
        if not self._timer_running:
            return 0
        ticks = self._ticks(now_ns)
        if self._periodic():
            return self.timer_initial - ticks % self.timer_initial
        return max(0, self.timer_initial - ticks)

    def _rebase(self, now: int) -> None:
        """Re-anchor the timer at ``now`` keeping the current position (divide or mode change)."""
        if not self._timer_running:
            return
        ticks = self._ticks(now)
        self._ticks0 = ticks % self.timer_initial if self._periodic() else min(ticks, self.timer_initial)
        self._t0 = now
        self._fired = 0

    def _start_timer(self, initial: int, now: int) -> None:
        self.timer_initial = initial
        if self.timer_mode == TimerMode.TSC_DEADLINE:
            return                               # SDM: initial-count writes are ignored in this mode
        self._timer_running = initial != 0
        self._t0 = now
        self._ticks0 = 0
        self._fired = 0

    # ------------------------------------------------------------------ IA32_APIC_BASE
    def read_base_msr(self) -> int:
        return self.base_msr

    def write_base_msr(self, value: int) -> bool:
        """Write IA32_APIC_BASE; False when reserved bits are set (the caller injects #GP).

        x2APIC (EXTD) is not implemented, so its bit is reserved. BSP is read-only. Clearing EN resets
        the APIC to its power-up register state (SDM 11.4.3); relocating the base is accepted but the
        registers stay at 0xFEE00000 (logged).
        """
        allowed = ApicBaseMsr.BSP | ApicBaseMsr.ENABLE | (((1 << self.phys_bits) - 1) & ~0xFFF)
        if value & ~allowed or value < 0:
            return False
        new_base = value & ~0xFFF & ((1 << self.phys_bits) - 1)
        if new_base != APIC_DEFAULT_BASE:
            log.warning("LAPIC relocation to %#x not supported; registers stay at %#x",
                        new_base, APIC_DEFAULT_BASE)
        was_enabled = self.hw_enabled
        self.base_msr = new_base | (self.base_msr & ApicBaseMsr.BSP) | (value & ApicBaseMsr.ENABLE)
        if was_enabled and not self.hw_enabled:
            self._reset_registers()
        return True

    # ------------------------------------------------------------------ MMIO
    def mmio_read(self, offset: int, size: int) -> int:
        if size != 4 or offset & 0xF or not 0 <= offset < APIC_MMIO_SIZE:
            log.debug("LAPIC: ignored %d-byte read at offset %#x", size, offset)
            return 0
        now = self._clock()
        self.poll(now)
        return self._read_reg(offset, now) & 0xFFFFFFFF

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset & 0xF or not 0 <= offset < APIC_MMIO_SIZE:
            log.debug("LAPIC: ignored %d-byte write of %#x at offset %#x", size, value, offset)
            return
        now = self._clock()
        self.poll(now)
        self._write_reg(offset, value & 0xFFFFFFFF, now)

    def _read_reg(self, off: int, now: int) -> int:
        if ApicReg.ISR <= off < ApicReg.ISR + 0x80:
            return (self.isr >> (32 * ((off - ApicReg.ISR) >> 4))) & 0xFFFFFFFF
        if ApicReg.TMR <= off < ApicReg.TMR + 0x80:
            return (self.tmr >> (32 * ((off - ApicReg.TMR) >> 4))) & 0xFFFFFFFF
        if ApicReg.IRR <= off < ApicReg.IRR + 0x80:
            return (self.irr >> (32 * ((off - ApicReg.IRR) >> 4))) & 0xFFFFFFFF
        if off in self.lvt:
            return self.lvt[off]
        match off:
            case ApicReg.ID:
                return self.apic_id << 24
            case ApicReg.LVR:
                return APIC_VERSION | ((APIC_LVT_NB - 1) << 16)
            case ApicReg.TASKPRI:
                return self._tpr
            case ApicReg.ARBPRI:
                return 0
            case ApicReg.PROCPRI:
                return self.ppr
            case ApicReg.EOI | ApicReg.RRR:
                return 0
            case ApicReg.LDR:
                return self.ldr
            case ApicReg.DFR:
                return self.dfr
            case ApicReg.SPIV:
                return self.svr
            case ApicReg.ESR:
                return self.esr
            case ApicReg.ICR:
                return self.icr_low & ~ApicIcr.BUSY
            case ApicReg.ICR2:
                return self.icr_high
            case ApicReg.TMICT:
                return self.timer_initial
            case ApicReg.TMCCT:
                return self.current_count(now)
            case ApicReg.TDCR:
                return self.tdcr
        self._error(ApicEsr.ILLREGA)
        return 0

    def _write_reg(self, off: int, value: int, now: int) -> None:
        if off in self.lvt:
            self._write_lvt(off, value, now)
            return
        match off:
            case ApicReg.ID:
                self.apic_id = value >> 24
            case ApicReg.TASKPRI:
                self._tpr = value & 0xFF
            case ApicReg.EOI:
                self.eoi()
            case ApicReg.LDR:
                self.ldr = value & 0xFF000000
            case ApicReg.DFR:
                self.dfr = value | 0x0FFFFFFF
            case ApicReg.SPIV:
                self.svr = value & ApicSpiv.WRITABLE
                if not self.sw_enabled:          # SDM 11.4.7.2: software disable masks every LVT
                    for reg in self.lvt:
                        self.lvt[reg] |= ApicLvt.MASKED
            case ApicReg.ESR:
                self.esr = self._esr_pending     # a write latches the errors seen since the last one
                self._esr_pending = 0
            case ApicReg.ICR:
                self.icr_low = value & ApicIcr.WRITABLE
                self._send_ipi()
            case ApicReg.ICR2:
                self.icr_high = value & 0xFF000000
            case ApicReg.TMICT:
                self._start_timer(value, now)
            case ApicReg.TDCR:
                self._rebase(now)
                self.tdcr = value & 0xB
            case ApicReg.LVR | ApicReg.ARBPRI | ApicReg.PROCPRI | ApicReg.RRR | ApicReg.TMCCT:
                log.debug("LAPIC: write to read-only register %#x ignored", off)
            case _ if ApicReg.ISR <= off < ApicReg.IRR + 0x80:
                log.debug("LAPIC: write to read-only register %#x ignored", off)
            case _:
                self._error(ApicEsr.ILLREGA)

    def _write_lvt(self, reg: int, value: int, now: int) -> None:
        value &= _LVT_WRITABLE[reg]
        if not self.sw_enabled:
            value |= ApicLvt.MASKED
        if reg == ApicReg.LVTT:
            old_mode = self.timer_mode
            self._rebase(now)
            self.lvt[reg] = value
            new_mode = self.timer_mode
            if new_mode != old_mode:
                if new_mode == TimerMode.TSC_DEADLINE:
                    log.info("LAPIC: TSC-deadline timer mode is not supported; timer disarmed")
                    self._timer_running = False
                    self.timer_initial = 0
                elif new_mode == TimerMode.RESERVED:
                    log.info("LAPIC: reserved timer mode 3 written; treated as one-shot")
                elif old_mode == TimerMode.TSC_DEADLINE:
                    self._timer_running = False
            return
        self.lvt[reg] = value

    def _error(self, bits: int) -> None:
        """Record an error (visible after the next ESR write) and raise the LVT error vector."""
        self._esr_pending |= bits
        lvterr = self.lvt[ApicReg.LVTERR]
        vector = lvterr & ApicLvt.VECTOR
        if not lvterr & ApicLvt.MASKED and vector >= 16 and self.enabled:
            self.irr |= 1 << vector

    def _targets_self(self, shorthand: int, logical: bool, dest: int) -> bool:
        if shorthand in (Shorthand.SELF, Shorthand.ALL_INCLUDING_SELF):
            return True
        if shorthand == Shorthand.ALL_EXCLUDING_SELF:
            return False
        if not logical:
            return dest in (self.apic_id, 0xFF)
        logical_id = self.ldr >> 24
        if dest == 0xFF:
            return True
        if self.dfr >> 28 == 0xF:                # flat model: bitmask of CPUs
            return bool(dest & logical_id)
        # cluster model: high nibble is the cluster, low nibble a bitmask within it
        return dest >> 4 == logical_id >> 4 and bool(dest & logical_id & 0xF)

    def _send_ipi(self) -> None:
        vector = self.icr_low & ApicIcr.VECTOR
        mode = (self.icr_low & ApicIcr.DM_MASK) >> ApicIcr.DM_SHIFT
        shorthand = (self.icr_low >> ApicIcr.SHORTHAND_SHIFT) & 3
        logical = bool(self.icr_low & ApicIcr.DEST_LOGICAL)
        dest = self.icr_high >> 24
        if not self._targets_self(shorthand, logical, dest):
            log.info("LAPIC: IPI (mode %d, vector %#x) to absent CPU(s) %#x ignored", mode, vector, dest)
            return
        if mode not in (DeliveryMode.FIXED, DeliveryMode.LOWEST):
            log.info("LAPIC: IPI delivery mode %s to self ignored", DeliveryMode(mode).name)
            return
        if vector < 16:
            self._error(ApicEsr.SENDILL)
        self.raise_vector(vector)
