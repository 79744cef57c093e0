"""Segment descriptors, gates and the TSS (SDM vol. 3 ch. 3, 6.10-6.14, 7.7)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: descriptor types (S=0 system descriptors)
TYPE_TSS64_AVAIL = 0x9
TYPE_TSS64_BUSY = 0xB
TYPE_INTR_GATE = 0xE
TYPE_TRAP_GATE = 0xF
TYPE_INTR_GATE16 = 0x6
TYPE_TRAP_GATE16 = 0x7
TYPE_TASK_GATE = 0x5

FLAG_S = 1 << 12
FLAG_P = 1 << 15
FLAG_L = 1 << 21
FLAG_DB = 1 << 22
FLAG_G = 1 << 23
TYPE_CODE = 1 << 11     # type bit 3 within flags (bits 8-11 = type)
TYPE_CONFORMING = 1 << 10


@dataclass(frozen=True)
class Descriptor:
    base: int
    limit: int          # expanded by G
    flags: int          # high dword bits 8-23, in place

    @property
    def present(self) -> bool:
        return bool(self.flags & FLAG_P)

    @property
    def dpl(self) -> int:
        return (self.flags >> 13) & 3

    @property
    def type(self) -> int:
        return (self.flags >> 8) & 0xF

    @property
    def system(self) -> bool:
        return not self.flags & FLAG_S

    @property
    def is_code(self) -> bool:
        return not self.system and bool(self.flags & TYPE_CODE)


def parse_descriptor(raw: bytes) -> Descriptor:
    lo, hi = struct.unpack_from("<II", raw)
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
    flags = hi & 0x00F0FF00
    if flags & FLAG_G:
        limit = (limit << 12) | 0xFFF
    return Descriptor(base, limit, flags)


@dataclass(frozen=True)
class Gate:
    offset: int
    selector: int
    ist: int
    type: int
    dpl: int
    present: bool


def parse_gate64(raw: bytes) -> Gate:
    off_lo, sel, ist, attr, off_mid, off_hi, _ = struct.unpack("<HHBBHII", raw)
    return Gate(off_lo | (off_mid << 16) | (off_hi << 32), sel, ist & 7, attr & 0xF, (attr >> 5) & 3,
                bool(attr & 0x80))


def parse_gate32(raw: bytes) -> Gate:
    off_lo, sel, _, attr, off_hi = struct.unpack("<HHBBH", raw)
    return Gate(off_lo | (off_hi << 16), sel, 0, attr & 0xF, (attr >> 5) & 3, bool(attr & 0x80))


#: 64-bit TSS: RSP0-2 at 4, IST1-7 at 0x24 (SDM figure 7-11)
TSS64_RSP0 = 4
TSS64_IST1 = 0x24
#: 32-bit TSS: ESP0 at 4, SS0 at 8 (SDM figure 7-2)
TSS32_ESP0 = 4
TSS32_SS0 = 8
