"""Software page walk of the guest's own page tables (SDM vol. 3 ch. 4), for hypervisor accesses.

The engine's MMU does the walks for guest instructions. The hypervisor needs its own walk when it
acts *for* the guest: pushing an exception frame, reading the IDT/GDT/TSS, decoding the instruction
at RIP, serving the gdb stub. It applies the same permission rules so that a delivery that would
fault on hardware faults here too (and becomes #PF/#DF in the guest, never a Python error).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..memory import GuestMemory
from .arch import ADDR_MASK, CR0, CR4, EFER, PFErr, canonical

P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100
NX = 1 << 63


class PageFault(Exception):
    """Raised by ``walk`` and turned into a guest #PF by the caller."""

    def __init__(self, va: int, error_code: int) -> None:
        super().__init__(f"#PF at {va:#x} err={error_code:#x}")
        self.va = va
        self.error_code = error_code


class NonCanonical(Exception):
    """A non-canonical address: #GP(0) (or #SS for stack accesses) in the guest."""


@dataclass(frozen=True)
class PagingMode:
    cr0: int
    cr3: int
    cr4: int
    efer: int

    @property
    def enabled(self) -> bool:
        return bool(self.cr0 & CR0.PG)

    @property
    def long(self) -> bool:
        return bool(self.efer & EFER.LMA)


@dataclass(frozen=True)
class Access:
    write: bool = False
    user: bool = False          # CPL 3 access (implicit supervisor accesses pass False)
    fetch: bool = False
    implicit: bool = False      # implicit supervisor access (descriptor tables, TSS, delivery stack)


READ = Access()
WRITE = Access(write=True)


def walk(mem: GuestMemory, mode: PagingMode, va: int, acc: Access = READ,
         set_ad: bool = True) -> int:
    """Translate ``va`` to a guest-physical address or raise PageFault / NonCanonical."""
    if not mode.enabled:
        return va & (0xFFFFFFFFFFFFFFFF if mode.long else 0xFFFFFFFF)
    if mode.long:
        if not canonical(va):
            raise NonCanonical(hex(va))
        return _walk_long(mem, mode, va, acc, set_ad)
    va &= 0xFFFFFFFF
    if mode.cr4 & CR4.PAE:
        return _walk_pae(mem, mode, va, acc, set_ad)
    return _walk_32(mem, mode, va, acc, set_ad)


def _err(acc: Access, present: bool, rsvd: bool = False) -> int:
    e = 0
    if present:
        e |= PFErr.P
    if acc.write:
        e |= PFErr.W
    if acc.user:
        e |= PFErr.U
    if rsvd:
        e |= PFErr.RSVD
    if acc.fetch:
        e |= PFErr.I
    return e


def _read_entry(mem: GuestMemory, gpa: int, size: int, va: int, acc: Access) -> int:
    if not mem.contains(gpa, size):
        # A table outside RAM reads as all-ones on the bus: a reserved-bit violation.
        raise PageFault(va, _err(acc, True, rsvd=True))
    return mem.read_u64(gpa) if size == 8 else mem.read_u32(gpa)


def _check_leaf(mode: PagingMode, va: int, acc: Access, user_ok: bool, write_ok: bool,
                nx: bool) -> None:
    if acc.user and not user_ok:
        raise PageFault(va, _err(acc, True))
    if acc.write and not write_ok and (acc.user or mode.cr0 & CR0.WP):
        raise PageFault(va, _err(acc, True))
    if acc.fetch and nx and mode.efer & EFER.NXE:
        raise PageFault(va, _err(acc, True))
    if acc.fetch and not acc.user and user_ok and mode.cr4 & CR4.SMEP:
        raise PageFault(va, _err(acc, True))
    # SMAP: supervisor data access to a user page (implicit accesses always checked; AC not modelled
    # for implicit accesses, explicit ones are done by the engine itself)
    if not acc.user and not acc.fetch and user_ok and mode.cr4 & CR4.SMAP and acc.implicit:
        raise PageFault(va, _err(acc, True))


def _walk_long(mem: GuestMemory, mode: PagingMode, va: int, acc: Access, set_ad: bool) -> int:
    table = mode.cr3 & ADDR_MASK
    user_ok = write_ok = True
    nx = False
    rsvd_nx = 0 if mode.efer & EFER.NXE else NX
    slots: list[int] = []
    for level, shift in enumerate((39, 30, 21, 12)):
        slot = table + ((va >> shift) & 0x1FF) * 8
        e = _read_entry(mem, slot, 8, va, acc)
        if not e & P:
            raise PageFault(va, _err(acc, False))
        if e & rsvd_nx or (level == 0 and e & PS):
            raise PageFault(va, _err(acc, True, rsvd=True))
        user_ok &= bool(e & US)
        write_ok &= bool(e & RW)
        nx |= bool(e & NX)
        slots.append(slot)
        if level in (1, 2) and e & PS:
            size = 1 << shift
            base = e & ADDR_MASK & ~(size - 1)
            if (e & ADDR_MASK) & (size - 1) & ~0x1000:   # PAT bit is bit 12; the rest reserved
                raise PageFault(va, _err(acc, True, rsvd=True))
            _check_leaf(mode, va, acc, user_ok, write_ok, nx)
            if set_ad:
                _set_ad(mem, slots, acc.write)
            return base | (va & (size - 1))
        table = e & ADDR_MASK
    _check_leaf(mode, va, acc, user_ok, write_ok, nx)
    if set_ad:
        _set_ad(mem, slots, acc.write)
    return table | (va & 0xFFF)


def _walk_pae(mem: GuestMemory, mode: PagingMode, va: int, acc: Access, set_ad: bool) -> int:
    pdpte = _read_entry(mem, (mode.cr3 & 0xFFFFFFE0) + ((va >> 30) & 3) * 8, 8, va, acc)
    if not pdpte & P:
        raise PageFault(va, _err(acc, False))
    table = pdpte & ADDR_MASK
    user_ok = write_ok = True
    nx = False
    slots: list[int] = []
    for level, shift in enumerate((21, 12)):
        slot = table + ((va >> shift) & 0x1FF) * 8
        e = _read_entry(mem, slot, 8, va, acc)
        if not e & P:
            raise PageFault(va, _err(acc, False))
        if e & NX and not mode.efer & EFER.NXE:
            raise PageFault(va, _err(acc, True, rsvd=True))
        user_ok &= bool(e & US)
        write_ok &= bool(e & RW)
        nx |= bool(e & NX)
        slots.append(slot)
        if level == 0 and e & PS:
            _check_leaf(mode, va, acc, user_ok, write_ok, nx)
            if set_ad:
                _set_ad(mem, slots, acc.write)
            return (e & ADDR_MASK & ~0x1FFFFF) | (va & 0x1FFFFF)
        table = e & ADDR_MASK
    _check_leaf(mode, va, acc, user_ok, write_ok, nx)
    if set_ad:
        _set_ad(mem, slots, acc.write)
    return table | (va & 0xFFF)


def _walk_32(mem: GuestMemory, mode: PagingMode, va: int, acc: Access, set_ad: bool) -> int:
    pde_slot = (mode.cr3 & 0xFFFFF000) + (va >> 22) * 4
    pde = _read_entry(mem, pde_slot, 4, va, acc)
    if not pde & P:
        raise PageFault(va, _err(acc, False))
    if pde & PS and mode.cr4 & CR4.PSE:
        _check_leaf(mode, va, acc, bool(pde & US), bool(pde & RW), False)
        return (pde & 0xFFC00000) | (va & 0x3FFFFF)
    pte_slot = (pde & 0xFFFFF000) + ((va >> 12) & 0x3FF) * 4
    pte = _read_entry(mem, pte_slot, 4, va, acc)
    if not pte & P:
        raise PageFault(va, _err(acc, False))
    _check_leaf(mode, va, acc, bool(pde & pte & US), bool(pde & pte & RW), False)
    return (pte & 0xFFFFF000) | (va & 0xFFF)


def _set_ad(mem: GuestMemory, slots: list[int], write: bool) -> None:
    for i, slot in enumerate(slots):
        e = mem.read_u64(slot)
        ne = e | A
        if write and i == len(slots) - 1:
            ne |= D
        if ne != e:
            mem.write_u64(slot, ne)


def read_virt(mem: GuestMemory, mode: PagingMode, va: int, size: int, acc: Access = READ) -> bytes:
    """Read ``size`` bytes at a guest-virtual address, page by page."""
    out = bytearray()
    while size > 0:
        n = min(size, 0x1000 - (va & 0xFFF))
        gpa = walk(mem, mode, va, acc)
        if not mem.contains(gpa, n):
            raise PageFault(va, _err(acc, True, rsvd=True))
        out += mem.read(gpa, n)
        va += n
        size -= n
    return bytes(out)


def write_virt(mem: GuestMemory, mode: PagingMode, va: int, data: bytes,
               acc: Access = WRITE) -> None:
    """Write at a guest-virtual address. All pages are translated before any byte is written, so a
    fault leaves memory unchanged (as a faulting push does)."""
    targets = []
    off = 0
    while off < len(data):
        n = min(len(data) - off, 0x1000 - ((va + off) & 0xFFF))
        gpa = walk(mem, mode, va + off, acc)
        if not mem.contains(gpa, n):
            raise PageFault(va + off, _err(acc, True, rsvd=True))
        targets.append((gpa, data[off:off + n]))
        off += n
    for gpa, chunk in targets:
        mem.write(gpa, chunk)
