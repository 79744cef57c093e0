"""Software page walk of the guest's own page tables (SDM vol. 3 ch. 4), for hypervisor accesses.

The engine's MMU does the walks for guest instructions. The hypervisor needs its own walk when it
acts *for* the guest: pushing an exception frame, reading the IDT/GDT/TSS, decoding the instruction
at RIP, serving the gdb stub. It applies the same permission rules so that a delivery that would
fault on hardware faults here too (and becomes #PF/#DF in the guest, never a Python error).

This is on the exception-delivery hot path: it uses plain-int constants (IntFlag arithmetic costs
~30x more per operation) and walks each page once per event (Translator). Every guest-physical
access is bounds-checked against RAM; it goes through GuestMemory's accessors whenever instrumentation
has replaced them (see _direct_buffer).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..memory import GuestMemory
from .arch import ADDR_MASK, CR0, CR4, EFER, PFErr

P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100
NX = 1 << 63

# plain-int copies of the architectural flags used per walk (the IntFlag classes stay the names)
_CR0_PG, _CR0_WP = int(CR0.PG), int(CR0.WP)
_CR4_PAE, _CR4_PSE, _CR4_SMEP, _CR4_SMAP = int(CR4.PAE), int(CR4.PSE), int(CR4.SMEP), int(CR4.SMAP)
_EFER_LMA, _EFER_NXE = int(EFER.LMA), int(EFER.NXE)
_ERR_P, _ERR_W, _ERR_U, _ERR_RSVD, _ERR_I = int(PFErr.P), int(PFErr.W), int(PFErr.U), int(PFErr.RSVD), \
    int(PFErr.I)
_ADDR_MASK = int(ADDR_MASK)
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

#: GuestMemory's accessors as defined: reading its buffer directly is equivalent while they are in
#: place. Instrumentation replaces them to observe hypervisor accesses (the fuzz harness records
#: every access to a VTL1-only page this way); then the walker calls them instead.
_ACCESSORS = ("read", "write", "read_u32", "read_u64", "write_u64")
_STOCK = tuple(getattr(GuestMemory, n) for n in _ACCESSORS)


def _direct_buffer(mem: GuestMemory) -> memoryview | None:
    """``mem``'s buffer if its accessors are the stock ones, else None (call the accessors)."""
    d = mem.__dict__
    if type(mem) is GuestMemory and not ("read" in d or "write" in d or "read_u32" in d or "read_u64" in d
                                         or "write_u64" in d):
        if (GuestMemory.read, GuestMemory.write, GuestMemory.read_u32, GuestMemory.read_u64,
                GuestMemory.write_u64) == _STOCK:
            return mem._view
    return None


class PageFault(Exception):
    """Raised by ``walk`` and turned into a guest #PF by the caller."""

    def __init__(self, va: int, error_code: int) -> None:
        super().__init__(f"#PF at {va:#x} err={error_code:#x}")
        self.va = va
        self.error_code = error_code


class NonCanonical(Exception):
    """A non-canonical address: #GP(0) (or #SS for stack accesses) in the guest."""


class PagingMode:
    """The control state a walk depends on. Treat as immutable (compared and hashed by value);
    ``enabled`` (CR0.PG) and ``long`` (EFER.LMA) are precomputed."""

    __slots__ = ("cr0", "cr3", "cr4", "efer", "enabled", "long")

    def __init__(self, cr0: int, cr3: int, cr4: int, efer: int) -> None:
        self.cr0 = cr0 = int(cr0)
        self.cr3 = int(cr3)
        self.cr4 = int(cr4)
        self.efer = efer = int(efer)
        self.enabled = bool(cr0 & _CR0_PG)
        self.long = bool(efer & _EFER_LMA)

    def _key(self) -> tuple[int, int, int, int]:
        return (self.cr0, self.cr3, self.cr4, self.efer)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PagingMode) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"PagingMode(cr0={self.cr0:#x}, cr3={self.cr3:#x}, cr4={self.cr4:#x}, "
                f"efer={self.efer:#x})")


@dataclass(frozen=True)
class Access:
    write: bool = False
    user: bool = False          # CPL 3 access (implicit supervisor accesses pass False)
    fetch: bool = False
    implicit: bool = False      # implicit supervisor access (descriptor tables, IDT, TSS)


READ = Access()
WRITE = Access(write=True)
#: the accesses of event delivery and instruction fetch, allocated once
IMPLICIT = Access(implicit=True)
IMPLICIT_WRITE = Access(write=True, implicit=True)
#: the frame push of an event delivered to a CPL-3 handler: SDM 4.6.1 lists GDT/LDT/IDT/TSS accesses as
#: implicit supervisor accesses, not the stack, so the push is an access at the handler's CPL
USER_WRITE = Access(write=True, user=True)
FETCH = Access(fetch=True)
FETCH_USER = Access(fetch=True, user=True)


def _err(acc: Access, present: bool, rsvd: bool = False) -> int:
    e = 0
    if present:
        e |= _ERR_P
    if acc.write:
        e |= _ERR_W
    if acc.user:
        e |= _ERR_U
    if rsvd:
        e |= _ERR_RSVD
    if acc.fetch:
        e |= _ERR_I
    return e


#: a successful walk, before its permission checks: (frame base, offset mask, user_ok, write_ok, nx,
#: slots of the entries that get Accessed/Dirty bits, the values the walk read, [A/D state: 0 none
#: set yet, 1 Accessed set, 2 Accessed and Dirty set]). The GPA of ``va`` is ``base | (va & mask)``.
#: 32-bit (non-PAE) walks have no slots: they set no A/D bits here.
Leaf = tuple[int, int, bool, bool, bool, list[int], list[int], list[int]]


def _set_ad(mem: GuestMemory, buf: memoryview | None, slots: list[int], entries: list[int],
            write: bool) -> None:
    """Set Accessed on every entry of a successful walk, and Dirty on the leaf of a write.
    ``entries`` (the values the walk read) only tells which bits may be missing; an update ORs
    into the current value, which another walk's A/D update may have changed since."""
    last = len(slots) - 1
    for i, slot in enumerate(slots):
        bits = A | D if write and i == last else A
        if entries[i] & bits != bits:
            cur = _U64.unpack_from(buf, slot)[0] if buf is not None else mem.read_u64(slot)
            ne = cur | bits
            if ne != cur:
                if buf is not None:
                    _U64.pack_into(buf, slot, ne)
                else:
                    mem.write_u64(slot, ne)
            entries[i] = ne


def _read_entry(mem: GuestMemory, buf: memoryview | None, gpa: int, size: int, va: int, acc: Access) -> int:
    if gpa + size > mem.size:
        # A table outside RAM reads as all-ones on the bus: a reserved-bit violation.
        raise PageFault(va, _err(acc, True, rsvd=True))
    if buf is not None:
        return (_U64 if size == 8 else _U32).unpack_from(buf, gpa)[0]
    return mem.read_u64(gpa) if size == 8 else mem.read_u32(gpa)


#: physical-address bits above MAXPHYADDR are reserved in every paging entry; the engine's CPU model
#: (and so the guest's CPUID 0x80000008) reports 40 physical-address bits
MAXPHYADDR = 40
_PHYS_RSVD = ((1 << 52) - 1) & ~((1 << MAXPHYADDR) - 1)


def _walk_long(mem: GuestMemory, buf: memoryview | None, mode: PagingMode, va: int, acc: Access) -> Leaf:
    unpack, limit = _U64.unpack_from, mem.size - 8
    table = mode.cr3 & _ADDR_MASK
    both = -1           # AND of the entries: U/S and R/W must be set at every level
    either = 0          # OR of the entries: XD at any level
    rsvd_nx = (0 if mode.efer & _EFER_NXE else NX) | _PHYS_RSVD
    slots: list[int] = []
    entries: list[int] = []
    level = 0
    for shift in (39, 30, 21, 12):
        slot = table + ((va >> shift) & 0x1FF) * 8
        if slot > limit:
            raise PageFault(va, _err(acc, True, rsvd=True))
        e = unpack(buf, slot)[0] if buf is not None else mem.read_u64(slot)
        if not e & P:
            raise PageFault(va, _err(acc, False))
        if e & rsvd_nx or (level == 0 and e & PS):
            raise PageFault(va, _err(acc, True, rsvd=True))
        both &= e
        either |= e
        slots.append(slot)
        entries.append(e)
        if e & PS and (level == 1 or level == 2):   # a 1 GiB or 2 MiB leaf (a PTE's bit 7 is PAT)
            mask = (1 << shift) - 1
            if (e & _ADDR_MASK) & mask & ~0x1000:   # PAT bit is bit 12; the rest reserved
                raise PageFault(va, _err(acc, True, rsvd=True))
            return (e & _ADDR_MASK & ~mask, mask, bool(both & US), bool(both & RW), bool(either & NX), slots,
                    entries, [0])
        table = e & _ADDR_MASK
        level += 1
    return table, 0xFFF, bool(both & US), bool(both & RW), bool(either & NX), slots, entries, [0]


def _walk_pae(mem: GuestMemory, buf: memoryview | None, mode: PagingMode, va: int, acc: Access) -> Leaf:
    pdpte = _read_entry(mem, buf, (mode.cr3 & 0xFFFFFFE0) + ((va >> 30) & 3) * 8, 8, va, acc)
    if not pdpte & P:
        raise PageFault(va, _err(acc, False))
    table = pdpte & _ADDR_MASK
    user_ok = write_ok = True
    nx = False
    nxe = mode.efer & _EFER_NXE
    slots: list[int] = []
    entries: list[int] = []
    for level, shift in enumerate((21, 12)):
        slot = table + ((va >> shift) & 0x1FF) * 8
        e = _read_entry(mem, buf, slot, 8, va, acc)
        if not e & P:
            raise PageFault(va, _err(acc, False))
        if e & NX and not nxe:
            raise PageFault(va, _err(acc, True, rsvd=True))
        if not e & US:
            user_ok = False
        if not e & RW:
            write_ok = False
        if e & NX:
            nx = True
        slots.append(slot)
        entries.append(e)
        if level == 0 and e & PS:
            return e & _ADDR_MASK & ~0x1FFFFF, 0x1FFFFF, user_ok, write_ok, nx, slots, entries, [0]
        table = e & _ADDR_MASK
    return table, 0xFFF, user_ok, write_ok, nx, slots, entries, [0]


def _walk_32(mem: GuestMemory, buf: memoryview | None, mode: PagingMode, va: int, acc: Access) -> Leaf:
    pde_slot = (mode.cr3 & 0xFFFFF000) + (va >> 22) * 4
    pde = _read_entry(mem, buf, pde_slot, 4, va, acc)
    if not pde & P:
        raise PageFault(va, _err(acc, False))
    if pde & PS and mode.cr4 & _CR4_PSE:
        return pde & 0xFFC00000, 0x3FFFFF, bool(pde & US), bool(pde & RW), False, [], [], [0]
    pte_slot = (pde & 0xFFFFF000) + ((va >> 12) & 0x3FF) * 4
    pte = _read_entry(mem, buf, pte_slot, 4, va, acc)
    if not pte & P:
        raise PageFault(va, _err(acc, False))
    return pte & 0xFFFFF000, 0xFFF, bool(pde & pte & US), bool(pde & pte & RW), False, [], [], [0]


class Translator:
    """Guest-virtual accesses under one paging state, for the accesses of one event (the IDT gate,
    a descriptor, the TSS, the stack frame, the bytes at RIP).

    Each leaf is walked once: a later access in the same page (or large page) reuses the walk, then
    applies its own permission checks and Accessed/Dirty updates. That is exactly what fresh walks
    would do as long as nothing but those A/D updates changes the page tables in between, so a
    Translator must not outlive the event it serves (a guest instruction, or a hypervisor write to
    the tables, ends its validity)."""

    __slots__ = ("mem", "mode", "_leaves", "_buf")

    def __init__(self, mem: GuestMemory, mode: PagingMode) -> None:
        self.mem = mem
        self.mode = mode
        self._leaves: dict[int, Leaf] = {}     # keyed by va | offset mask (unique per leaf)
        self._buf = _direct_buffer(mem)

    def lookup(self, va: int, acc: Access) -> tuple[int, Leaf | None]:
        """GPA of ``va`` after the permission checks, and the leaf (None with paging off); no A/D
        update. Raises PageFault / NonCanonical."""
        mode = self.mode
        if not mode.enabled:
            return va & (0xFFFFFFFFFFFFFFFF if mode.long else 0xFFFFFFFF), None
        if mode.long:
            top = va >> 47
            if top != 0 and top != 0x1FFFF:
                raise NonCanonical(hex(va))
        else:
            va &= 0xFFFFFFFF
        # a leaf is stored under ``va | its offset mask``; that key can equal the key of a larger
        # leaf's region, so a hit counts only with the mask it was looked up with
        get = self._leaves.get
        leaf = get(va | 0xFFF)
        if leaf is None or leaf[1] != 0xFFF:
            leaf = get(va | 0x1FFFFF)
            if leaf is None or leaf[1] != 0x1FFFFF:
                leaf = get(va | 0x3FFFFFFF)
                if leaf is None or leaf[1] != 0x3FFFFFFF:
                    leaf = get(va | 0x3FFFFF)
                    if leaf is not None and leaf[1] != 0x3FFFFF:
                        leaf = None
        if leaf is None:
            if mode.long:
                leaf = _walk_long(self.mem, self._buf, mode, va, acc)
            elif mode.cr4 & _CR4_PAE:
                leaf = _walk_pae(self.mem, self._buf, mode, va, acc)
            else:
                leaf = _walk_32(self.mem, self._buf, mode, va, acc)
            self._leaves[va | leaf[1]] = leaf
        # the leaf's permission checks (every violation has the same error code: P set)
        user_ok = leaf[2]
        if acc.user:
            if not user_ok or (acc.write and not leaf[3]) or (acc.fetch and leaf[4] and mode.efer & _EFER_NXE):
                raise PageFault(va, _err(acc, True))
        elif acc.write and not leaf[3] and mode.cr0 & _CR0_WP:
            raise PageFault(va, _err(acc, True))
        elif acc.fetch:
            if (leaf[4] and mode.efer & _EFER_NXE) or (user_ok and mode.cr4 & _CR4_SMEP):
                raise PageFault(va, _err(acc, True))
        elif user_ok and acc.implicit and mode.cr4 & _CR4_SMAP:
            # SMAP: supervisor data access to a user page (implicit accesses always checked; AC not
            # modelled for implicit accesses, explicit ones are done by the engine itself)
            raise PageFault(va, _err(acc, True))
        return leaf[0] | (va & leaf[1]), leaf

    def _accessed(self, leaf: Leaf | None, write: bool) -> None:
        """The A/D updates of an access through ``leaf`` (once per leaf and kind)."""
        if leaf is not None:
            need = 2 if write else 1
            state = leaf[7]
            if state[0] < need:
                if leaf[5]:
                    _set_ad(self.mem, self._buf, leaf[5], leaf[6], write)
                state[0] = need

    def translate(self, va: int, acc: Access = READ, set_ad: bool = True) -> int:
        """``walk``: the GPA of ``va``, with the Accessed (and for writes Dirty) bits set."""
        gpa, leaf = self.lookup(va, acc)
        if set_ad:
            self._accessed(leaf, acc.write)
        return gpa

    def read(self, va: int, size: int, acc: Access = READ) -> bytes:
        """``read_virt``: ``size`` bytes at ``va``, page by page."""
        mem = self.mem
        if size <= 0x1000 - (va & 0xFFF):           # the common case: one page
            gpa, leaf = self.lookup(va, acc)
            if leaf is not None and leaf[7][0] < 1 + acc.write:
                self._accessed(leaf, acc.write)
            if gpa + size > mem.size:
                raise PageFault(va, _err(acc, True, rsvd=True))
            buf = self._buf
            return bytes(buf[gpa:gpa + size]) if buf is not None else mem.read(gpa, size)
        out = bytearray()
        while size > 0:
            n = min(size, 0x1000 - (va & 0xFFF))
            gpa = self.translate(va, acc)
            if not mem.contains(gpa, n):
                raise PageFault(va, _err(acc, True, rsvd=True))
            out += mem.read(gpa, n)
            va += n
            size -= n
        return bytes(out)

    def write(self, va: int, data: bytes, acc: Access = WRITE) -> None:
        """``write_virt``: every page is translated before any byte is written."""
        mem = self.mem
        targets = []
        off = 0
        while off < len(data):
            n = min(len(data) - off, 0x1000 - ((va + off) & 0xFFF))
            gpa = self.translate(va + off, acc)
            if not mem.contains(gpa, n):
                raise PageFault(va + off, _err(acc, True, rsvd=True))
            targets.append((gpa, data[off:off + n]))
            off += n
        for gpa, chunk in targets:
            mem.write(gpa, chunk)

    def push(self, va: int, data: bytes, slot: int, acc: Access = IMPLICIT_WRITE) -> None:
        """Write an exception frame of ``slot``-byte entries at ``va`` as the processor pushes it.

        The processor pushes from the top down, so a fault reports the highest slot that cannot
        be written (what a #DF handler sees in CR2); nothing is written unless every page can be.
        First the pages slots start in are checked top down, without A/D updates; then, low to
        high, every page the frame touches gets its A/D bits and the RAM check, as ``write_virt``
        does; then the bytes are written."""
        mem = self.mem
        n = len(data)
        end = va + n
        if (va & 0xFFF) + n <= 0x1000:      # the common case, one page: the same steps, shorter
            gpa, leaf = self.lookup(end - slot, acc)
            if leaf is not None and leaf[7][0] < 1 + acc.write:
                self._accessed(leaf, acc.write)
            gpa -= n - slot
            if gpa + n > mem.size:
                raise PageFault(va, _err(acc, True, rsvd=True))
            buf = self._buf
            if buf is not None:
                buf[gpa:gpa + n] = data
            else:
                mem.write(gpa, data)
            return
        checked: dict[int, tuple[int, int, Leaf | None]] = {}      # page -> (va, gpa, leaf)
        off = n - slot
        while off >= 0:
            a = va + off
            page = a & ~0xFFF
            checked[page] = (a, *self.lookup(a, acc))
            if page <= va:
                break
            off = ((page - va - 1) // slot) * slot      # the highest slot starting below this page
        chunks: list[tuple[int, int, int]] = []
        lo = va
        while lo < end:
            page = lo & ~0xFFF
            hi = min(page + 0x1000, end)
            c = checked.get(page)
            a, gpa, leaf = c if c is not None else (lo, *self.lookup(lo, acc))
            self._accessed(leaf, acc.write)
            gpa += lo - a
            if gpa + (hi - lo) > mem.size:
                raise PageFault(lo, _err(acc, True, rsvd=True))
            chunks.append((gpa, lo - va, hi - lo))
            lo = hi
        for gpa, o, k in chunks:
            mem.write(gpa, data[o:o + k])


def walk(mem: GuestMemory, mode: PagingMode, va: int, acc: Access = READ,
         set_ad: bool = True) -> int:
    """Translate ``va`` to a guest-physical address or raise PageFault / NonCanonical."""
    return Translator(mem, mode).translate(va, acc, set_ad)


def read_virt(mem: GuestMemory, mode: PagingMode, va: int, size: int, acc: Access = READ) -> bytes:
    """Read ``size`` bytes at a guest-virtual address, page by page."""
    return Translator(mem, mode).read(va, size, acc)


def write_virt(mem: GuestMemory, mode: PagingMode, va: int, data: bytes,
               acc: Access = WRITE) -> None:
    """Write at a guest-virtual address. All pages are translated before any byte is written, so a
    fault leaves memory unchanged (as a faulting push does)."""
    Translator(mem, mode).write(va, data, acc)
