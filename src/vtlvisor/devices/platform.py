"""The standard PC device set on its buses: what the hypervisor instantiates for a guest.

Port map (all as on QEMU's ``pc`` machine with ``-device isa-debug-exit,iobase=0xf4,iosize=0x04``):
PIC master 0x20-0x21, slave 0xA0-0xA1; isa-debug-exit 0xF4-0xF7; COM1 0x3F8-0x3FF; fw_cfg 0x510-0x511;
Bochs shutdown 0x8900. MMIO: local APIC at 0xFEE00000 (4 KiB). Unclaimed accesses fall to the buses'
``on_unhandled`` hook. The devices only report guest requests through the callbacks; the hypervisor
owns the policy (how to stop, what exit status).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .bus import IoBus, MmioBus, UnhandledHook
from .debug_exit import DEBUG_EXIT_IOBASE, DEBUG_EXIT_IOSIZE, DebugExit
from .fw_cfg import FW_CFG_IO_BASE, FW_CFG_IO_SIZE, FwCfg
from .lapic import APIC_DEFAULT_BASE, APIC_MMIO_SIZE, NS_PER_S, LocalApic
from .pic8259 import PIC_MASTER_BASE, PIC_SLAVE_BASE, DualPic8259
from .shutdown_port import SHUTDOWN_PORT, ShutdownPort
from .uart16550 import COM1_BASE, UART_PORT_COUNT, Output, Uart16550


@dataclass
class Platform:
    io: IoBus
    mmio: MmioBus
    uart: Uart16550
    debug_exit: DebugExit
    pic: DualPic8259
    fw_cfg: FwCfg
    shutdown: ShutdownPort
    lapic: LocalApic

    @classmethod
    def create(
        cls,
        *,
        ram_size: int,
        clock: Callable[[], int],
        serial_output: Output | None,
        on_exit: Callable[[int], None],
        on_poweroff: Callable[[], None],
        on_unhandled: UnhandledHook | None = None,
        on_serial_rx: Callable[[], None] | None = None,
        nb_cpus: int = 1,
        apic_bus_hz: int = NS_PER_S,
    ) -> Platform:
        """Build every device and register it.

        ``clock`` returns virtual nanoseconds (APIC timer); ``serial_output`` receives COM1 output a
        line at a time (a callable taking bytes, or a binary stream); ``on_exit(value)`` is the
        isa-debug-exit request (see ``debug_exit_status``); ``on_poweroff()`` the "Shutdown" string;
        ``on_serial_rx()`` is called after host input is fed to COM1 (to wake an idle vCPU).
        """
        io = IoBus(on_unhandled=on_unhandled)
        mmio = MmioBus(on_unhandled=on_unhandled)
        uart = Uart16550(serial_output, base=COM1_BASE, on_rx=on_serial_rx)
        debug_exit = DebugExit(on_exit)
        pic = DualPic8259()
        fw_cfg = FwCfg(ram_size=ram_size, nb_cpus=nb_cpus)
        shutdown = ShutdownPort(on_poweroff)
        lapic = LocalApic(clock, bus_hz=apic_bus_hz)

        io.register(PIC_MASTER_BASE, 2, pic)
        io.register(PIC_SLAVE_BASE, 2, pic)
        io.register(DEBUG_EXIT_IOBASE, DEBUG_EXIT_IOSIZE, debug_exit)
        io.register(COM1_BASE, UART_PORT_COUNT, uart)
        io.register(FW_CFG_IO_BASE, FW_CFG_IO_SIZE, fw_cfg)
        io.register(SHUTDOWN_PORT, 1, shutdown)
        mmio.register(APIC_DEFAULT_BASE, APIC_MMIO_SIZE, lapic)
        return cls(io=io, mmio=mmio, uart=uart, debug_exit=debug_exit, pic=pic, fw_cfg=fw_cfg,
                   shutdown=shutdown, lapic=lapic)
