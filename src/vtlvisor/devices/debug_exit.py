"""QEMU ``isa-debug-exit``: lets a test guest end the run with a status of its choosing.

Configured as QEMU's ``-device isa-debug-exit,iobase=0xf4,iosize=0x04``. Any write of value V to any of
its ports calls ``on_exit(V)``; QEMU then calls ``exit((V << 1) | 1)``, so a guest can never produce
status 0 and a plain crash is distinguishable from a guest-requested exit. ``debug_exit_status`` gives
the status the hypervisor must exit with to match QEMU (the host keeps only its low 8 bits).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .access import width_mask

log = logging.getLogger(__name__)

DEBUG_EXIT_IOBASE = 0xF4
DEBUG_EXIT_IOSIZE = 0x04


def debug_exit_status(value: int) -> int:
    """Process exit status QEMU produces for a write of ``value``: ``((value << 1) | 1) & 0xFF``.

    QEMU passes ``(value << 1) | 1`` to exit(3), and the kernel reports only the low 8 bits to the
    parent, so e.g. value 0x10 gives status 0x21 = 33 and value 0x80 gives status 1.
    """
    return ((value << 1) | 1) & 0xFF


class DebugExit:
    """The device; it only reports the request, the hypervisor decides how to stop."""

    def __init__(self, on_exit: Callable[[int], None], iobase: int = DEBUG_EXIT_IOBASE,
                 iosize: int = DEBUG_EXIT_IOSIZE) -> None:
        self.iobase = iobase
        self.iosize = iosize
        self._on_exit = on_exit

    def io_read(self, port: int, size: int) -> int:
        return width_mask(size)                  # write-only device: reads float high

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= width_mask(size)
        log.info("isa-debug-exit: guest wrote %#x to port %#x (exit status %d)", value, port,
                 debug_exit_status(value))
        self._on_exit(value)
