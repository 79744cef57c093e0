"""Bochs/QEMU "Shutdown" port 0x8900: the ACPI-free way for a test guest to power off.

Bochs BIOS and old QEMU (``hw/i386/pc.c`` bochs_bios_write) power the machine off when the guest writes
the bytes of the string "Shutdown", one per ``outb``, to port 0x8900. Any other byte resets the match,
so stray writes never power off by accident; the mismatching byte is then tried as the start of a new
match (QEMU drops it, which only matters for input like "SShutdown"). Writes wider than a byte are not
characters and reset the match. Reads return all-ones (nothing to read).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .access import width_mask

log = logging.getLogger(__name__)

SHUTDOWN_PORT = 0x8900
SHUTDOWN_STRING = b"Shutdown"


class ShutdownPort:
    def __init__(self, on_poweroff: Callable[[], None], port: int = SHUTDOWN_PORT) -> None:
        self.port = port
        self._on_poweroff = on_poweroff
        self._matched = 0

    def io_read(self, port: int, size: int) -> int:
        return width_mask(size)

    def io_write(self, port: int, size: int, value: int) -> None:
        if size != 1:
            self._matched = 0
            return
        byte = value & 0xFF
        if byte != SHUTDOWN_STRING[self._matched]:
            self._matched = 0
            if byte != SHUTDOWN_STRING[0]:
                return
        self._matched += 1
        if self._matched == len(SHUTDOWN_STRING):
            self._matched = 0
            log.info("guest wrote \"Shutdown\" to port %#x: power-off requested", port)
            self._on_poweroff()
