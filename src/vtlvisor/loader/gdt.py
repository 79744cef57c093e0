"""Segment descriptors for the boot GDTs (SDM Vol. 3A 3.4.5 "Segment Descriptors").

Both boot modes use the selectors QEMU's multiboot option ROM uses: 0x08 code, 0x10 data. Access bytes
are 0x9A (present, DPL 0, code, execute/read) and 0x92 (present, DPL 0, data, read/write) as there; the
accessed bit is left clear.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

ACCESS_CODE = 0x9A          # P | S | type 1010 (execute/read)
ACCESS_DATA = 0x92          # P | S | type 0010 (read/write)
FLAG_G = 0x8                # 4 KiB granularity
FLAG_DB = 0x4               # 32-bit default operand size
FLAG_L = 0x2                # 64-bit code segment


def descriptor(base: int, limit: int, access: int, flags: int) -> int:
    """Encode an 8-byte code/data segment descriptor (limit in units given by G)."""
    return ((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | ((access & 0xFF) << 40)
            | (((limit >> 16) & 0xF) << 48) | ((flags & 0xF) << 52) | (((base >> 24) & 0xFF) << 56))


@dataclass(frozen=True)
class Descriptor:
    """Decoded form, for whoever loads hidden segment state from the GDT."""

    base: int
    limit: int          # in bytes, granularity applied
    access: int
    flags: int

    @classmethod
    def decode(cls, raw: int) -> Descriptor:
        limit = (raw & 0xFFFF) | (((raw >> 48) & 0xF) << 16)
        flags = (raw >> 52) & 0xF
        if flags & FLAG_G:
            limit = (limit << 12) | 0xFFF
        base = ((raw >> 16) & 0xFFFFFF) | (((raw >> 56) & 0xFF) << 24)
        return cls(base=base, limit=limit, access=(raw >> 40) & 0xFF, flags=flags)


NULL_DESCRIPTOR = 0
CODE32 = descriptor(0, 0xFFFFF, ACCESS_CODE, FLAG_G | FLAG_DB)     # 0x00CF9A000000FFFF
DATA32 = descriptor(0, 0xFFFFF, ACCESS_DATA, FLAG_G | FLAG_DB)     # 0x00CF92000000FFFF
CODE64 = descriptor(0, 0xFFFFF, ACCESS_CODE, FLAG_G | FLAG_L)      # 0x00AF9A000000FFFF

GDT32 = (NULL_DESCRIPTOR, CODE32, DATA32)
GDT64 = (NULL_DESCRIPTOR, CODE64, DATA32)


def gdt_bytes(entries: Sequence[int]) -> bytes:
    return b"".join(struct.pack("<Q", e) for e in entries)


def gdt_limit(entries: Sequence[int]) -> int:
    return 8 * len(entries) - 1
