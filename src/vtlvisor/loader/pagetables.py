"""Identity page tables for ELF64 direct boot: 4-level paging, 2 MiB pages.

A long-mode kernel needs paging on at entry; an identity map of all RAM lets it run at its physical
load address and read the boot information wherever it is. The local APIC page is mapped too, with
PCD|PWT (uncached), so the kernel can program the APIC before building its own tables. Layout from
``base``: PML4, one PDPT, then one page directory per GiB that needs one. Covers up to 512 GiB.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence

from ..memory import PAGE_SIZE

LARGE_PAGE = 1 << 21
GIB = 1 << 30
MAX_IDENTITY = 512 * GIB        # one PDPT


class Pte(enum.IntFlag):
    """Paging-structure entry bits (SDM Vol. 3A 4.5, Tables 4-15..4-18)."""

    P = 1 << 0
    RW = 1 << 1
    US = 1 << 2
    PWT = 1 << 3
    PCD = 1 << 4
    A = 1 << 5
    D = 1 << 6
    PS = 1 << 7


def _gibs(ram_size: int, uncached: Sequence[int]) -> list[int]:
    covered = set(range(-(-ram_size // GIB)))
    covered.update(addr // GIB for addr in uncached)
    return sorted(covered)


def identity_tables_size(ram_size: int, uncached: Sequence[int] = ()) -> int:
    """Bytes needed by ``build_identity_tables`` for the same arguments."""
    return (2 + len(_gibs(ram_size, uncached))) * PAGE_SIZE


def build_identity_tables(base: int, ram_size: int, uncached: Sequence[int] = ()) -> bytes:
    """Page tables to be written at ``base`` (page aligned); CR3 = ``base``.

    Every 2 MiB page overlapping ``[0, ram_size)`` is mapped read/write, supervisor, write-back; the
    2 MiB page holding each address in ``uncached`` is mapped with PCD|PWT.
    """
    if base % PAGE_SIZE:
        raise ValueError(f"page tables must be page aligned, not {base:#x}")
    if ram_size > MAX_IDENTITY or any(a >= MAX_IDENTITY for a in uncached):
        raise ValueError("identity map limited to 512 GiB")
    gibs = _gibs(ram_size, uncached)
    blob = bytearray(identity_tables_size(ram_size, uncached))
    pdpt = base + PAGE_SIZE
    struct.pack_into("<Q", blob, 0, pdpt | Pte.P | Pte.RW)
    large = Pte.P | Pte.RW | Pte.PS
    uncached_pages = {a // LARGE_PAGE for a in uncached}
    ram_pages = -(-ram_size // LARGE_PAGE)
    for index, gib in enumerate(gibs):
        pd_offset = (2 + index) * PAGE_SIZE
        struct.pack_into("<Q", blob, PAGE_SIZE + 8 * gib, (base + pd_offset) | Pte.P | Pte.RW)
        for slot in range(512):
            page = gib * 512 + slot
            if page in uncached_pages:
                entry = page * LARGE_PAGE | large | Pte.PCD | Pte.PWT
            elif page < ram_pages:
                entry = page * LARGE_PAGE | large
            else:
                continue
            struct.pack_into("<Q", blob, pd_offset + 8 * slot, entry)
    return bytes(blob)
