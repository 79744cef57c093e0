"""Nested page tables (AMD NPT: the long-mode 4-level format, walked by the engine as a second stage).

The tables live in the hypervisor's private region, outside guest RAM, so no guest-physical address
can reach them. Entries are written straight into that region's host buffer.

Building a root for all of RAM must be fast (a VTL or domain root is built inside one exit): the
leaves of a linear range are produced column by column (one byte lane of every entry at a time,
from periodic byte patterns, with C-level tiling, ``bytes.translate`` and strided slice assignment)
instead of one Python integer per entry: 3 GiB of 4 KiB leaves take a few milliseconds.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable

P, W, U, A, D, PS = 1, 2, 4, 0x20, 0x40, 0x80
NX = 1 << 63
ADDR = 0x000FFFFFFFFFF000
#: a present leaf: user bit set because nested walks are user accesses (APM 15.25.5)
LEAF_RWX = P | W | U | A | D

_Q = struct.Struct("<Q")
_LARGE = 1 << 21


@functools.cache
def _period(shift: int) -> bytes:
    """One period of the byte sequence ``(i >> shift) & 0xFF``: 256 runs of ``1 << shift``."""
    return b"".join(bytes((v,)) * (1 << shift) for v in range(256))


@functools.cache
def _lane_table(up: int, amask: int, const: int) -> bytes:
    """``bytes.translate`` table placing counter bits (shifted up by ``up``) into a byte lane's
    ``amask`` bits, the lane's other bits from ``const``."""
    return bytes(((v << up) & amask) | const for v in range(256))


def _counter_lane(start: int, n: int, shift: int) -> bytes:
    """``bytes(((start + i) >> shift) & 0xFF for i in range(n))``, built from runs or by tiling."""
    run = 1 << shift
    if shift <= 8:                                  # short runs: tile one (cached) period
        period = _period(shift)
        first = start & (len(period) - 1)
        return (period * -(-(first + n) // len(period)))[first:first + n]
    out = []
    left, value = n, start >> shift
    first = min(left, run - (start & (run - 1)))
    while left:
        out.append(bytes((value & 0xFF,)) * first)
        left -= first
        value += 1
        first = min(left, run)
    return b"".join(out)


def _lanes(out: bytearray, pfn: int, count: int, const: int, vary: int, lanes: range, have: int) -> None:
    """Fill byte ``lanes`` of the entries in ``out``: the PFN bits in ``vary`` count up from
    ``pfn``, the other bits of each lane are those of ``const``. Lanes without changing bits are
    left alone where ``out`` already holds them (``have``: the constant lanes it starts with)."""
    for k in lanes:
        amask = (vary >> (8 * k)) & 0xFF                   # changing address bits in byte lane k
        c = (const >> (8 * k)) & 0xFF & ~amask
        bit = 8 * k - 12                                   # PFN bit landing in bit 0 of the lane
        if amask:
            lane = _counter_lane(pfn, count, max(bit, 0))
            out[k::8] = lane.translate(_lane_table(max(-bit, 0), amask, c))
        elif c != (have >> (8 * k)) & 0xFF:
            out[k::8] = bytes((c,)) * count


@functools.cache
def _period_leaves(low: int) -> bytes:
    """Entries ``(i << 12) | low`` for i < 4096: one period of byte lanes 0-2 (PFN bits 0-11)."""
    out = bytearray(_Q.pack(low)) * 4096
    _lanes(out, 0, 4096, low, 0xFFF000, range(1, 3), low)
    return bytes(out)


def linear_leaves(hpa: int, count: int, low: int) -> bytearray:
    """The ``count`` little-endian entries ``(hpa + i * 4 KiB) | low``.

    ``low`` holds the non-address bits (flags, NX); ``hpa`` is 4 KiB-aligned and the range stays
    below 2**52. Equivalent to ``struct.pack(f"<{count}Q", *[(hpa + (i << 12)) | low ...])``, but
    built a byte lane at a time: lanes 0-2 (the low 12 PFN bits) by tiling one cached period of
    4096 entries, each higher lane whose address bits change by a counter pattern, and the bits no
    entry changes as constants."""
    if hpa & 0xFFF or low & ADDR or count < 0 or hpa + (count << 12) > 1 << 52:
        raise ValueError(f"bad linear leaf range {hpa:#x}+{count} pages, low bits {low:#x}")
    if count <= 64:
        return bytearray(struct.pack(f"<{count}Q", *[(hpa + (i << 12)) | low for i in range(count)]))
    pfn = hpa >> 12
    top = 12 + (pfn ^ (pfn + count - 1)).bit_length()     # address bits 12..top-1 change
    vary = (1 << top) - (1 << 12)
    const = low | (hpa & ~vary)
    if top <= 24:
        out = bytearray(_Q.pack(const)) * count
        _lanes(out, pfn, count, const, vary, range(1, (top + 7) // 8), const)
        return out
    first = pfn & 0xFFF
    out = bytearray(_period_leaves(low)) * (-(-(first + count) // 4096))
    del out[(first + count) * 8:]
    del out[:first * 8]
    _lanes(out, pfn, count, const, vary & ~0xFFFFFF, range(3, 7), low)
    return out


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
        """Linear bulk map with 4 KiB leaves (``hpa + offset | flags``), fast for all of RAM: per
        1 GiB, the missing page tables are allocated, the leaves generated at once (``linear_leaves``)
        and copied with one slice assignment per run of adjacent tables."""
        if (gpa | hpa | size) & 0xFFF:
            raise ValueError(f"unaligned NPT range {gpa:#x} -> {hpa:#x} size {size:#x}")
        buf, base = self._buf, self._base
        end = gpa + size
        while gpa < end:
            span_end = min(end, (gpa | ((1 << 30) - 1)) + 1)
            pd = self._table(gpa, 21, create=True)
            runs: list[list[int]] = []                      # [buffer offset, bytes] of leaf slots
            g = gpa
            while g < span_end:
                slot = pd + ((g >> 21) & 0x1FF) * 8
                e = self._rd(slot)
                if not e & P:
                    e = self._alloc() | P | W | U | A
                    self._wr(slot, e)
                elif e & PS:
                    raise ValueError(f"GPA {g:#x} is inside a large NPT page")
                first = (g >> 12) & 0x1FF
                n = min(512 - first, (span_end - g) >> 12)
                off = (e & ADDR) - base + first * 8
                if runs and runs[-1][0] + runs[-1][1] == off:
                    runs[-1][1] += n * 8
                else:
                    runs.append([off, n * 8])
                g += n << 12
            leaves = memoryview(linear_leaves(hpa, (span_end - gpa) >> 12, flags))
            done = 0
            for off, nbytes in runs:
                buf[off:off + nbytes] = leaves[done:done + nbytes]
                done += nbytes
            hpa += span_end - gpa
            gpa = span_end

    def map_2m(self, gpa: int, hpa: int, flags: int = LEAF_RWX) -> None:
        pd = self._table(gpa, 21, create=True)
        self._wr(pd + ((gpa >> 21) & 0x1FF) * 8, hpa | flags | PS)

    def map_range(self, gpa: int, hpa: int, size: int, flags: int = LEAF_RWX) -> None:
        """Map with 2 MiB pages where alignment allows (used for MMIO and the unassigned hole), a
        page directory's run of them with one slice assignment; 4 KiB leaves elsewhere."""
        end = gpa + size
        while gpa < end:
            if gpa % _LARGE == 0 and hpa % _LARGE == 0 and end - gpa >= _LARGE:
                run_end = min(end & ~(_LARGE - 1), (gpa | ((1 << 30) - 1)) + 1)
                n = (run_end - gpa) >> 21
                off = self._table(gpa, 21, create=True) - self._base + ((gpa >> 21) & 0x1FF) * 8
                self._buf[off:off + n * 8] = struct.pack(f"<{n}Q", *[(hpa + (i << 21)) | flags | PS
                                                                      for i in range(n)])
                hpa += run_end - gpa
                gpa = run_end
            else:
                n = min(end - gpa, _LARGE - gpa % _LARGE)
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
