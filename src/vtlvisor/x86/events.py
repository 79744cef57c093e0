"""Exception and interrupt delivery through the guest IDT (SDM vol. 3 ch. 6; APM vol. 2 ch. 8).

The engine delivers nothing itself: every exception arrives as a VM exit and every interrupt is
injected by the hypervisor, so this module does what the processor would: read the gate, check it,
pick the stack (same privilege, TSS.RSPn on a privilege change, IST), push the frame, load CS/SS and
CPL, clear IF/TF/NT/RF as the gate type says. A fault while doing so escalates exactly as the SDM's
table 6-5 says (#DF), and a fault while delivering #DF is a triple fault (shutdown).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Protocol

from ..memory import GuestMemory
from .arch import CONTRIBUTORY, CR0, ERROR_CODE_VECTORS, RFLAGS, Vector
from .descriptors import (
    FLAG_DB,
    FLAG_L,
    TSS32_ESP0,
    TSS32_SS0,
    TSS64_IST1,
    TSS64_RSP0,
    TYPE_CONFORMING,
    TYPE_INTR_GATE,
    TYPE_INTR_GATE16,
    TYPE_TRAP_GATE,
    Descriptor,
    parse_descriptor,
    parse_gate32,
    parse_gate64,
)
from .paging import Access, NonCanonical, PageFault, PagingMode, read_virt, walk, write_virt


class EventKind(enum.Enum):
    EXCEPTION = "exception"     # hardware exception (fault/trap/abort)
    EXTERNAL = "external"       # external interrupt (LAPIC)
    SOFTWARE = "software"       # INT n / INT3 / INTO (gate DPL checked)
    NMI = "nmi"


@dataclass
class Event:
    vector: int
    kind: EventKind
    error_code: int | None = None
    cr2: int | None = None
    #: RIP to push (faults: the instruction; traps/INT n: the next one)
    rip: int | None = None


class SegmentLike(Protocol):
    selector: int
    base: int
    limit: int
    flags: int


class CpuAccess(Protocol):
    """What delivery needs from a vCPU (implemented by hv.vcpu.Vcpu)."""

    mem: GuestMemory

    def reg(self, name: str) -> int: ...
    def set_reg(self, name: str, value: int) -> None: ...
    def segment(self, name: str) -> SegmentLike: ...
    def load_segments(self, segs: dict[str, tuple[int, int, int, int]]) -> None: ...
    def cpl(self) -> int: ...
    def paging_mode(self) -> PagingMode: ...
    def long_mode(self) -> bool: ...


class DeliveryFault(Exception):
    """A fault raised while delivering an event: becomes the next event (or #DF/triple fault)."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None) -> None:
        super().__init__(f"vector {vector} err={error_code}")
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2


class TripleFault(Exception):
    def __init__(self, history: list[int]) -> None:
        super().__init__("triple fault: " + " -> ".join(f"#{v}" for v in history))
        self.history = history


def _class(v: int) -> str:
    if v == Vector.PF:
        return "pf"
    if v in CONTRIBUTORY:
        return "contributory"
    if v == Vector.DF:
        return "df"
    return "benign"


def combine(first: int, second: int) -> int | None:
    """SDM table 6-5: what to deliver when ``second`` happens while delivering ``first``.
    Returns the vector to deliver, Vector.DF, or None for a triple fault."""
    a, b = _class(first), _class(second)
    if a == "df":
        return None if b in ("contributory", "pf") else second
    if (a == "contributory" and b == "contributory") or (a == "pf" and b in ("contributory", "pf")):
        return Vector.DF
    return second


def deliver(cpu: CpuAccess, ev: Event, max_nesting: int = 3) -> None:
    """Deliver ``ev``; on a fault during delivery escalate per the SDM, raising TripleFault last."""
    history = [ev.vector]
    current = ev
    for _ in range(max_nesting + 1):
        try:
            _deliver_once(cpu, current)
            return
        except DeliveryFault as f:
            if f.vector == Vector.PF and f.cr2 is not None:
                cpu.set_reg("cr2", f.cr2)      # CR2 is written when the #PF is detected, even if it escalates
            nxt = combine(current.vector, f.vector) if current.kind is EventKind.EXCEPTION else f.vector
            history.append(f.vector)
            if nxt is None:
                raise TripleFault(history) from None
            # a fault while delivering INT n reports the INT instruction itself (RIP unchanged)
            rip = None if current.kind is EventKind.SOFTWARE else current.rip
            if nxt == Vector.DF:
                history.append(Vector.DF)
                current = Event(Vector.DF, EventKind.EXCEPTION, 0, rip=rip)
            else:
                current = Event(f.vector, EventKind.EXCEPTION, f.error_code, cr2=f.cr2, rip=rip)
    raise TripleFault(history)


def _sys_read(cpu: CpuAccess, mode: PagingMode, va: int, size: int) -> bytes:
    try:
        return read_virt(cpu.mem, mode, va, size, Access(implicit=True))
    except PageFault as pf:
        raise DeliveryFault(Vector.PF, pf.error_code, pf.va) from None
    except NonCanonical:
        raise DeliveryFault(Vector.GP, 0) from None


def _load_code_descriptor(cpu: CpuAccess, mode: PagingMode, selector: int, ext: int) -> Descriptor:
    if selector & 0xFFFC == 0:
        raise DeliveryFault(Vector.GP, ext)
    table = cpu.segment("ldtr") if selector & 4 else cpu.segment("gdtr")
    index = selector & 0xFFF8
    if index + 7 > table.limit:
        raise DeliveryFault(Vector.GP, (selector & 0xFFFC) | ext)
    raw = _sys_read(cpu, mode, table.base + index, 8)
    d = parse_descriptor(raw)
    if not d.is_code:
        raise DeliveryFault(Vector.GP, (selector & 0xFFFC) | ext)
    if not d.present:
        raise DeliveryFault(Vector.NP, (selector & 0xFFFC) | ext)
    return d


def _deliver_once(cpu: CpuAccess, ev: Event) -> None:
    vec = ev.vector & 0xFF
    ext = 0 if ev.kind is EventKind.SOFTWARE else 1
    idt_err = vec * 8 + 2 + ext       # IDT bit + EXT
    mode = cpu.paging_mode()
    if not mode.cr0 & CR0.PE:
        raise TripleFault([vec])      # real mode delivery (IVT) is not supported: report it
    long_mode = cpu.long_mode()
    idtr = cpu.segment("idtr")
    gate_size = 16 if long_mode else 8
    if vec * gate_size + gate_size - 1 > idtr.limit:
        raise DeliveryFault(Vector.GP, idt_err)
    raw = _sys_read(cpu, mode, idtr.base + vec * gate_size, gate_size)
    gate = parse_gate64(raw) if long_mode else parse_gate32(raw)
    cpl = cpu.cpl()
    if long_mode:
        if gate.type not in (TYPE_INTR_GATE, TYPE_TRAP_GATE):
            raise DeliveryFault(Vector.GP, idt_err)
    elif gate.type not in (TYPE_INTR_GATE, TYPE_TRAP_GATE, TYPE_INTR_GATE16, 0x7):
        raise DeliveryFault(Vector.GP, idt_err)     # task gates are not supported
    if ev.kind is EventKind.SOFTWARE and gate.dpl < cpl:
        raise DeliveryFault(Vector.GP, idt_err)
    if not gate.present:
        raise DeliveryFault(Vector.NP, idt_err)
    cs_desc = _load_code_descriptor(cpu, mode, gate.selector, ext)
    if cs_desc.dpl > cpl:
        raise DeliveryFault(Vector.GP, (gate.selector & 0xFFFC) | ext)
    if long_mode and (not cs_desc.flags & FLAG_L or cs_desc.flags & FLAG_DB):
        raise DeliveryFault(Vector.GP, (gate.selector & 0xFFFC) | ext)
    new_cpl = cpl if cs_desc.flags & TYPE_CONFORMING else cs_desc.dpl
    rip = ev.rip if ev.rip is not None else cpu.reg("rip")
    rflags = cpu.reg("rflags")
    rsp = cpu.reg("rsp")
    cs = cpu.segment("cs")
    ss = cpu.segment("ss")
    has_err = ev.kind is EventKind.EXCEPTION and vec in ERROR_CODE_VECTORS
    err = (ev.error_code or 0) & 0xFFFFFFFF
    tr = cpu.segment("tr")
    segs: dict[str, tuple[int, int, int, int]] = {}
    if long_mode:
        if gate.ist:
            new_rsp = struct.unpack("<Q", _sys_read(cpu, mode, tr.base + TSS64_IST1 + 8 * (gate.ist - 1), 8))[0]
        elif new_cpl != cpl:
            new_rsp = struct.unpack("<Q", _sys_read(cpu, mode, tr.base + TSS64_RSP0 + 8 * new_cpl, 8))[0]
        else:
            new_rsp = rsp
        new_rsp &= ~0xF
        frame = [ss.selector, rsp, rflags, cs.selector, rip] + ([err] if has_err else [])
        data = b"".join(struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF) for v in reversed(frame))
        new_rsp = (new_rsp - len(data)) & 0xFFFFFFFFFFFFFFFF
        _push(cpu, mode, new_rsp, data, Vector.SS if new_cpl == cpl else Vector.SS)
        if new_cpl != cpl:
            segs["ss"] = (new_cpl, 0, 0, new_cpl << 13)    # NULL SS with RPL = new CPL
        segs["cs"] = ((gate.selector & 0xFFFC) | new_cpl, cs_desc.base, cs_desc.limit, cs_desc.flags)
    else:
        if new_cpl != cpl:
            esp0, ss0 = struct.unpack("<IH", _sys_read(cpu, mode, tr.base + TSS32_ESP0, 6))
            ss0 = struct.unpack("<H", _sys_read(cpu, mode, tr.base + TSS32_SS0, 2))[0]
            ss_table = cpu.segment("gdtr")
            if ss0 & 0xFFFC == 0 or (ss0 & 0xFFF8) + 7 > ss_table.limit:
                raise DeliveryFault(Vector.TS, ss0 & 0xFFFC)
            ss_desc = parse_descriptor(_sys_read(cpu, mode, ss_table.base + (ss0 & 0xFFF8), 8))
            if not ss_desc.present:
                raise DeliveryFault(Vector.SS, ss0 & 0xFFFC)
            new_rsp, stack_base = esp0, ss_desc.base
            frame = [ss.selector, rsp & 0xFFFFFFFF, rflags, cs.selector, rip] + ([err] if has_err else [])
            segs["ss"] = (ss0, ss_desc.base, ss_desc.limit, ss_desc.flags)
        else:
            new_rsp, stack_base = rsp & 0xFFFFFFFF, ss.base
            frame = [rflags, cs.selector, rip] + ([err] if has_err else [])
        data = b"".join(struct.pack("<I", v & 0xFFFFFFFF) for v in reversed(frame))
        new_rsp = (new_rsp - len(data)) & 0xFFFFFFFF
        _push(cpu, mode, (stack_base + new_rsp) & 0xFFFFFFFF, data, Vector.SS)
        segs["cs"] = ((gate.selector & 0xFFFC) | new_cpl, cs_desc.base, cs_desc.limit, cs_desc.flags)
    # commit: nothing above changed CPU state
    if ev.cr2 is not None:
        cpu.set_reg("cr2", ev.cr2)
    cpu.load_segments(segs)
    cpu.set_reg("rsp", new_rsp)
    cpu.set_reg("rip", gate.offset)
    nf = rflags & ~(RFLAGS.TF | RFLAGS.NT | RFLAGS.RF | RFLAGS.VM)
    if gate.type in (TYPE_INTR_GATE, TYPE_INTR_GATE16):
        nf &= ~RFLAGS.IF
    cpu.set_reg("rflags", nf)


def _push(cpu: CpuAccess, mode: PagingMode, va: int, data: bytes, stack_vector: int) -> None:
    """Push a frame. The processor pushes from the top down, so a fault reports the highest slot
    that cannot be written (what a #DF handler sees in CR2); nothing is written unless all can be."""
    slot = 8 if mode.long else 4
    acc = Access(write=True, implicit=True)
    seen: set[int] = set()
    try:
        for off in range(len(data) - slot, -1, -slot):
            page = (va + off) & ~0xFFF
            if page not in seen:
                walk(cpu.mem, mode, va + off, acc, set_ad=False)
                seen.add(page)
    except PageFault as pf:
        raise DeliveryFault(Vector.PF, pf.error_code, pf.va) from None
    except NonCanonical:
        raise DeliveryFault(stack_vector, 0) from None
    try:
        write_virt(cpu.mem, mode, va, data, Access(write=True, implicit=True))
    except PageFault as pf:
        raise DeliveryFault(Vector.PF, pf.error_code, pf.va) from None
    except NonCanonical:
        raise DeliveryFault(stack_vector, 0) from None
