"""Cascaded 8259A PICs (master 0x20/0x21, slave 0xA0/0xA1), modelled after QEMU ``hw/intc/i8259.c``.

Guests initialise and mask the legacy PICs even when they use the local APIC (Linux, most hobby
kernels), so the ICW1-ICW4 / OCW1-OCW3 programming model must behave. No IRQ line is wired to these
chips yet; ``raise_irq``/``pending_vector``/``acknowledge`` implement the priority logic for the day
one is, and let the tests check it. Level-triggered mode (ICW1.LTIM) and MCS-80 mode are accepted
but behave as edge/8086 mode (logged).
"""

from __future__ import annotations

import enum
import logging

from .access import split_read, split_write

log = logging.getLogger(__name__)

PIC_MASTER_BASE = 0x20
PIC_SLAVE_BASE = 0xA0
PIC_CASCADE_IRQ = 2             # the slave's INT output is wired to master IR2 on the PC


class Icw1(enum.IntEnum):
    """ICW1 bits (Intel 8259A datasheet; QEMU i8259.c)."""

    IC4 = 0x01          # ICW4 needed
    SNGL = 0x02         # single (no cascade): no ICW3
    ADI = 0x04
    LTIM = 0x08         # level-triggered mode
    INIT = 0x10         # marks a command-port write as ICW1


class Icw4(enum.IntEnum):
    """ICW4 bits (8259A datasheet)."""

    UPM = 0x01          # 8086 mode
    AEOI = 0x02
    SFNM = 0x10         # special fully nested mode


class Ocw3(enum.IntEnum):
    """OCW3 bits (8259A datasheet)."""

    RIS = 0x01          # read ISR (else IRR) when RR is set
    RR = 0x02
    POLL = 0x04
    SELECT = 0x08       # with bit 4 clear, marks a command-port write as OCW3
    SMM = 0x20          # special mask mode value
    ESMM = 0x40         # enable writing SMM


class Pic8259Chip:
    """One 8259A. ``io_read``/``io_write`` take the register index 0 (command) or 1 (data)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.imr = 0
        self.irr = 0
        self.isr = 0
        self.init_state = 0
        self.icw3 = 0
        self.reset()

    def reset(self) -> None:
        """State after ICW1 (QEMU pic_init_reset): everything cleared, IMR unmasked."""
        self.irr = 0
        self.isr = 0
        self.imr = 0
        self.priority_add = 0
        self.irq_base = 0
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.init_state = 0
        self.auto_eoi = False
        self.rotate_on_auto_eoi = False
        self.special_fully_nested = False
        self.init4 = False
        self.single_mode = False

    # -- priority logic (QEMU get_priority / pic_get_irq)
    def _priority(self, mask: int) -> int:
        """Rank (0 = highest) of the highest-priority set bit of ``mask``, 8 if none."""
        if not mask & 0xFF:
            return 8
        rank = 0
        while not mask & (1 << ((rank + self.priority_add) & 7)):
            rank += 1
        return rank

    def highest_irq(self, is_master: bool) -> int | None:
        """The IR line the chip would signal to the CPU, or None."""
        rank = self._priority(self.irr & ~self.imr)
        if rank == 8:
            return None
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr
        if self.special_fully_nested and is_master:
            in_service &= ~(1 << PIC_CASCADE_IRQ)
        if rank < self._priority(in_service):
            return (rank + self.priority_add) & 7
        return None

    def intack(self, irq: int) -> None:
        """Acknowledge ``irq``: into ISR (unless auto-EOI), out of IRR (edge-triggered)."""
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= 1 << irq
        self.irr &= ~(1 << irq)

    # -- registers
    def read(self, reg: int, is_master: bool) -> int:
        if self.poll:
            self.poll = False
            irq = self.highest_irq(is_master)
            if irq is None:
                return 0
            self.intack(irq)
            return 0x80 | irq
        if reg == 0:
            return self.isr if self.read_isr else self.irr
        return self.imr

    def write(self, reg: int, value: int) -> None:
        if reg == 0:
            self._write_command(value)
        else:
            self._write_data(value)

    def _write_command(self, value: int) -> None:
        if value & Icw1.INIT:
            self.reset()
            self.init_state = 1
            self.init4 = bool(value & Icw1.IC4)
            self.single_mode = bool(value & Icw1.SNGL)
            if value & Icw1.LTIM:
                log.info("PIC %s: level-triggered mode requested; modelled as edge-triggered", self.name)
        elif value & Ocw3.SELECT:
            if value & Ocw3.POLL:
                self.poll = True
            if value & Ocw3.RR:
                self.read_isr = bool(value & Ocw3.RIS)
            if value & Ocw3.ESMM:
                self.special_mask = bool(value & Ocw3.SMM)
        else:
            self._write_ocw2(value)

    def _write_ocw2(self, value: int) -> None:
        command = value >> 5
        if command in (0, 4):                    # clear / set rotate in automatic EOI mode
            self.rotate_on_auto_eoi = command == 4
        elif command in (1, 5):                  # non-specific EOI (5: and rotate)
            rank = self._priority(self.isr)
            if rank != 8:
                irq = (rank + self.priority_add) & 7
                self.isr &= ~(1 << irq)
                if command == 5:
                    self.priority_add = (irq + 1) & 7
        elif command == 3:                       # specific EOI
            self.isr &= ~(1 << (value & 7))
        elif command == 6:                       # set priority
            self.priority_add = (value + 1) & 7
        elif command == 7:                       # rotate on specific EOI
            irq = value & 7
            self.isr &= ~(1 << irq)
            self.priority_add = (irq + 1) & 7
        # command 2 is a no-op

    def _write_data(self, value: int) -> None:
        if self.init_state == 0:
            self.imr = value                     # OCW1
        elif self.init_state == 1:               # ICW2: vector base
            self.irq_base = value & 0xF8
            self.init_state = (3 if self.init4 else 0) if self.single_mode else 2
        elif self.init_state == 2:               # ICW3: cascade wiring
            self.icw3 = value
            self.init_state = 3 if self.init4 else 0
        else:                                    # ICW4
            if not value & Icw4.UPM:
                log.info("PIC %s: MCS-80/85 mode requested; modelled as 8086 mode", self.name)
            self.special_fully_nested = bool(value & Icw4.SFNM)
            self.auto_eoi = bool(value & Icw4.AEOI)
            self.init_state = 0

    @property
    def initialised(self) -> bool:
        return self.init_state == 0


class DualPic8259:
    """The PC pair; one PortDevice for ports 0x20/0x21 and 0xA0/0xA1."""

    def __init__(self, master_base: int = PIC_MASTER_BASE, slave_base: int = PIC_SLAVE_BASE) -> None:
        self.master_base = master_base
        self.slave_base = slave_base
        self.master = Pic8259Chip("master")
        self.slave = Pic8259Chip("slave")

    def _chip(self, port: int) -> tuple[Pic8259Chip, int, bool] | None:
        if port in (self.master_base, self.master_base + 1):
            return self.master, port - self.master_base, True
        if port in (self.slave_base, self.slave_base + 1):
            return self.slave, port - self.slave_base, False
        return None

    # -- PortDevice
    def io_read(self, port: int, size: int) -> int:
        return split_read(self._read_byte, port, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        split_write(self._write_byte, port, size, value)

    def _read_byte(self, port: int) -> int:
        hit = self._chip(port)
        if hit is None:
            return 0xFF
        chip, reg, is_master = hit
        return chip.read(reg, is_master)

    def _write_byte(self, port: int, value: int) -> None:
        hit = self._chip(port)
        if hit is not None:
            chip, reg, _ = hit
            chip.write(reg, value)

    # -- interrupt logic (unused until IRQ lines are wired)
    def raise_irq(self, irq: int) -> None:
        """Edge on ISA IRQ ``irq`` (0-15)."""
        if 0 <= irq < 8:
            self.master.irr |= 1 << irq
        elif 8 <= irq < 16:
            self.slave.irr |= 1 << (irq - 8)
            self.master.irr |= 1 << PIC_CASCADE_IRQ

    def _slave_line_update(self) -> None:
        """Master IR2 follows whether the slave has an interrupt to signal."""
        if self.slave.highest_irq(False) is not None:
            self.master.irr |= 1 << PIC_CASCADE_IRQ
        else:
            self.master.irr &= ~(1 << PIC_CASCADE_IRQ)

    def pending_vector(self) -> int | None:
        """Vector the PICs would deliver on INTA now, or None when INTR is not asserted."""
        self._slave_line_update()
        irq = self.master.highest_irq(True)
        if irq is None:
            return None
        if irq == PIC_CASCADE_IRQ:
            slave_irq = self.slave.highest_irq(False)
            if slave_irq is None:
                return None
            return self.slave.irq_base + slave_irq
        return self.master.irq_base + irq

    def acknowledge(self) -> int | None:
        """INTA cycle (QEMU pic_read_irq): returns the vector, a spurious IRQ7/IRQ15 vector, or None."""
        self._slave_line_update()
        irq = self.master.highest_irq(True)
        if irq is None:
            return None
        self.master.intack(irq)
        if irq != PIC_CASCADE_IRQ:
            return self.master.irq_base + irq
        slave_irq = self.slave.highest_irq(False)
        if slave_irq is None:
            return self.slave.irq_base + 7       # spurious IRQ15
        self.slave.intack(slave_irq)
        self._slave_line_update()
        return self.slave.irq_base + slave_irq
