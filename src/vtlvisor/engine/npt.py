"""Nested page tables (AMD NPT: the long-mode 4-level format, walked by the engine as a second stage).

The tables live in the hypervisor's private region, outside guest RAM, so no guest-physical address
can reach them. Entries are written straight into that region's host buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

P, W, U, A, D, PS = 1, 2, 4, 0x20, 0x40, 0x80
NX = 1 << 63
ADDR = 0x000FFFFFFFFFF000
#: a present leaf: user bit set because nested walks are user accesses (APM 15.25.5)
LEAF_RWX = P | W | U | A | D

_Q = struct.Struct("<Q")


class NestedPageTable:
    """One NPT root. ``alloc`` hands out zeroed 4 KiB pages of the private region as (hpa, offset)."""

    def __init__(self, buf: memoryview, region_base: int, alloc: Callable[[], int]) -> None:
        self._buf = buf
        self._base = region_base
        self._alloc = alloc
        self.root = alloc()

    def _rd(self, hpa: int) -> int:
        return _Q.unpack_from(self._buf, hpa - self._base)[0]

    def _wr(self, hpa: int, v: int) -> None:
        _Q.pack_into(self._buf, hpa - self._base, v)

    def _table(self, gpa: int, level_shift: int, create: bool) -> int | None:
        """Return the table (hpa) holding the entry for ``gpa`` at the level with ``level_shift``."""
        table = self.root
        for shift in (39, 30, 21):
            if shift == level_shift:
                return table
            slot = table + ((gpa >> shift) & 0x1FF) * 8
            e = self._rd(slot)
            if not e & P:
                if not create:
                    return None
                e = self._alloc() | P | W | U | A
                self._wr(slot, e)
            elif e & PS:
                raise ValueError(f"GPA {gpa:#x} is inside a large NPT page")
            table = e & ADDR
        return table

    def map_4k_range(self, gpa: int, hpa: int, size: int, flags: int = LEAF_RWX) -> None:
        """Identity-style bulk map: writes whole page tables at once (fast for all of RAM)."""
        end = gpa + size
        while gpa < end:
            pt = self._table(gpa, 12, create=True)
            first = (gpa >> 12) & 0x1FF
            n = min(512 - first, (end - gpa) >> 12)
            entries = struct.pack(f"<{n}Q", *[(hpa + (i << 12)) | flags for i in range(n)])
            off = pt - self._base + first * 8
            self._buf[off:off + len(entries)] = entries
            gpa += n << 12
            hpa += n << 12

    def map_2m(self, gpa: int, hpa: int, flags: int = LEAF_RWX) -> None:
        pd = self._table(gpa, 21, create=True)
        self._wr(pd + ((gpa >> 21) & 0x1FF) * 8, hpa | flags | PS)

    def map_range(self, gpa: int, hpa: int, size: int, flags: int = LEAF_RWX) -> None:
        """Map with 2 MiB pages where alignment allows (used for MMIO and the unassigned hole)."""
        end = gpa + size
        while gpa < end:
            if gpa % (1 << 21) == 0 and hpa % (1 << 21) == 0 and end - gpa >= 1 << 21:
                self.map_2m(gpa, hpa, flags)
                gpa += 1 << 21
                hpa += 1 << 21
            else:
                n = min(end - gpa, (1 << 21) - gpa % (1 << 21))
                self.map_4k_range(gpa, hpa, n, flags)
                gpa += n
                hpa += n

    def leaf_slot(self, gpa: int) -> int | None:
        pt = self._table(gpa, 12, create=False)
        return None if pt is None else pt + ((gpa >> 12) & 0x1FF) * 8

    def get(self, gpa: int) -> int:
        slot = self.leaf_slot(gpa)
        return 0 if slot is None else self._rd(slot)

    def set(self, gpa: int, entry: int) -> None:
        slot = self.leaf_slot(gpa)
        if slot is None:
            raise ValueError(f"GPA {gpa:#x} has no 4 KiB NPT leaf")
        self._wr(slot, entry)
