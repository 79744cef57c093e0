"""Access-width helpers shared by the device models.

Guests may use any access width on any port; an ISA device with byte-wide registers sees a wide access
as consecutive byte accesses (QEMU models this with ``.impl.max_access_size = 1``). These helpers do
that split so each device only has to implement byte semantics, and they clamp absurd sizes so no
caller-provided width can make a device loop or raise.
"""

from __future__ import annotations

from collections.abc import Callable

MAX_ACCESS_SIZE = 8


def clamp_size(size: int) -> int:
    """Width in bytes actually honoured: 0..8 (anything else is clamped, never an error)."""
    return max(0, min(size, MAX_ACCESS_SIZE))


def width_mask(size: int) -> int:
    """All-ones value of an access of ``size`` bytes (what an empty bus returns)."""
    return (1 << (8 * clamp_size(size))) - 1


def split_read(read_byte: Callable[[int], int], port: int, size: int) -> int:
    """Read ``size`` consecutive byte ports starting at ``port``, little endian (lowest port first)."""
    value = 0
    for i in range(clamp_size(size)):
        value |= (read_byte(port + i) & 0xFF) << (8 * i)
    return value


def split_write(write_byte: Callable[[int, int], None], port: int, size: int, value: int) -> None:
    """Write ``value`` as ``size`` consecutive byte writes starting at ``port``, lowest byte first."""
    for i in range(clamp_size(size)):
        write_byte(port + i, (value >> (8 * i)) & 0xFF)
