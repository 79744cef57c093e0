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
from typing import NamedTuple, Protocol

from .arch import CONTRIBUTORY, CR0, ERROR_CODE_VECTORS, RFLAGS, Vector
from .descriptors import (
    FLAG_DB,
    FLAG_L,
    FLAG_P,
    FLAG_S,
    TSS32_ESP0,
    TSS64_IST1,
    TSS64_RSP0,
    TYPE_CODE,
    TYPE_CONFORMING,
    TYPE_INTR_GATE,
    TYPE_INTR_GATE16,
    TYPE_TRAP_GATE,
    TYPE_TRAP_GATE16,
)
from .paging import IMPLICIT, IMPLICIT_WRITE, USER_WRITE, NonCanonical, PageFault, Translator

# plain ints on the hot path (IntEnum/IntFlag arithmetic is ~30x slower than int arithmetic)
_DF, _TS, _NP, _SS, _GP, _PF = (int(v) for v in (Vector.DF, Vector.TS, Vector.NP, Vector.SS, Vector.GP,
                                                  Vector.PF))
_CR0_PE = int(CR0.PE)
_IF = int(RFLAGS.IF)
_CLEAR_ON_DELIVERY = ~int(RFLAGS.TF | RFLAGS.NT | RFLAGS.RF | RFLAGS.VM)
_GATES64 = (TYPE_INTR_GATE, TYPE_TRAP_GATE)
_GATES32 = (TYPE_INTR_GATE, TYPE_TRAP_GATE, TYPE_INTR_GATE16, TYPE_TRAP_GATE16)
_INTR_GATES = (TYPE_INTR_GATE, TYPE_INTR_GATE16)
_M64 = 0xFFFFFFFFFFFFFFFF
_GATE64 = struct.Struct("<HHBBHII").unpack
_GATE32 = struct.Struct("<HHBBH").unpack
_DESC = struct.Struct("<II").unpack
_U64 = struct.Struct("<Q").unpack
_TSS32_STACK = struct.Struct("<IH").unpack          # from TSS+4: ESP0 (4..7), SS0 (8..9)
_FRAME64 = struct.Struct("<5Q").pack               # RIP, CS, RFLAGS, RSP, SS (lowest address first)
_FRAME64E = struct.Struct("<6Q").pack              # error code first
_FRAME32 = {n: struct.Struct(f"<{n}I").pack for n in (3, 4, 5, 6)}


class EventKind(enum.Enum):
    EXCEPTION = "exception"     # hardware exception (fault/trap/abort)
    EXTERNAL = "external"       # external interrupt (LAPIC)
    SOFTWARE = "software"       # INT n / INT3 / INTO (gate DPL checked)
    NMI = "nmi"


_EXCEPTION, _SOFTWARE = EventKind.EXCEPTION, EventKind.SOFTWARE


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


#: selector, base, limit, flags (descriptor high dword bits 8-23 in place)
SegTuple = tuple[int, int, int, int]


class CpuView(Protocol):
    """The registers delivery reads (``engine.unicorn_internals.CpuSnapshot`` has them)."""

    cpl: int
    rip: int
    rsp: int
    cs_sel: int
    ss_sel: int
    ss_base: int
    tr_base: int
    gdt_base: int
    gdt_limit: int
    ldt_base: int
    ldt_limit: int
    idt_base: int
    idt_limit: int


class EventState(NamedTuple):
    """The CPU state delivery reads, taken once per delivery attempt: nothing changes it while a
    delivery is checked (the gate, descriptors and TSS are read from guest memory, the frame is
    written last), so all guest-virtual accesses of the attempt share one Translator (one walk
    per page)."""

    cpu: CpuView
    rflags: int
    tlb: Translator        # carries the paging mode


class CpuAccess(Protocol):
    """What delivery needs from a vCPU (implemented by hv.vcpu.Vcpu)."""

    def event_state(self) -> EventState: ...

    def event_commit(self, cs: SegTuple, ss: SegTuple | None, rsp: int, rip: int, rflags: int | None,
                     cr2: int | None) -> None:
        """Load CS (and SS), RSP, RIP, RFLAGS and CR2 (each of SS, RFLAGS, CR2 unless None: unchanged);
        CPL follows CS/SS. The CPU state has not changed since ``event_state()``."""

    def set_reg(self, name: str, value: int) -> None: ...


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
    if v == _PF:
        return "pf"
    if v in CONTRIBUTORY:
        return "contributory"
    if v == _DF:
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


def deliver(cpu: CpuAccess, ev: Event, max_nesting: int = 3, state: EventState | None = None) -> None:
    """Deliver ``ev``; on a fault during delivery escalate per the SDM, raising TripleFault last.
    ``state``: the CPU state if the caller already has it (used for the first attempt only)."""
    history = [ev.vector]
    current = ev
    for _ in range(max_nesting + 1):
        try:
            _deliver_once(cpu, current, state if state is not None else cpu.event_state())
            return
        except DeliveryFault as f:
            state = None
            if f.vector == _PF and f.cr2 is not None:
                cpu.set_reg("cr2", f.cr2)      # CR2 is written when the #PF is detected, even if it escalates
            nxt = combine(current.vector, f.vector) if current.kind is EventKind.EXCEPTION else f.vector
            history.append(f.vector)
            if nxt is None:
                raise TripleFault(history) from None
            # a fault while delivering INT n reports the INT instruction itself (RIP unchanged)
            rip = None if current.kind is EventKind.SOFTWARE else current.rip
            if nxt == _DF:
                history.append(Vector.DF)
                current = Event(Vector.DF, EventKind.EXCEPTION, 0, rip=rip)
            else:
                current = Event(f.vector, EventKind.EXCEPTION, f.error_code, cr2=f.cr2, rip=rip)
    raise TripleFault(history)


def _descriptor(raw: bytes) -> tuple[int, int, int]:
    """base, limit (expanded by G), flags: as ``descriptors.parse_descriptor`` without the object."""
    lo, hi = _DESC(raw)
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    flags = hi & 0x00F0FF00
    if flags & 0x800000:            # G
        limit = (limit << 12) | 0xFFF
    return (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000), limit, flags


def _deliver_once(cpu: CpuAccess, ev: Event, st: EventState) -> None:
    """One delivery attempt. Every guest-virtual access goes through ``st.tlb`` (one walk per page):
    IDT, GDT/LDT and TSS reads are implicit supervisor accesses, the frame push is an access at the
    new CPL (a user-mode access for a CPL-3 handler, SDM 4.6.1); a #PF there becomes DeliveryFault(#PF), a non-canonical address
    #GP(0), or #SS(0) for the frame push. Nothing changes CPU state before ``event_commit``."""
    vec = ev.vector & 0xFF
    software = ev.kind is _SOFTWARE
    ext = 0 if software else 1
    idt_err = vec * 8 + 2 + ext       # IDT bit + EXT
    tlb = st.tlb
    mode = tlb.mode
    regs = st.cpu
    if not mode.cr0 & _CR0_PE:
        raise TripleFault([vec])      # real mode delivery (IVT) is not supported: report it
    long_mode = mode.long
    non_canonical = _GP
    try:
        # -- the gate
        gate_size = 16 if long_mode else 8
        if vec * gate_size + gate_size - 1 > regs.idt_limit:
            raise DeliveryFault(_GP, idt_err)
        raw = tlb.read(regs.idt_base + vec * gate_size, gate_size, IMPLICIT)
        if long_mode:
            off_lo, selector, ist, attr, off_mid, off_hi, _ = _GATE64(raw)
            offset = off_lo | (off_mid << 16) | (off_hi << 32)
            ist &= 7
            gate_type = attr & 0xF
            if gate_type not in _GATES64:
                raise DeliveryFault(_GP, idt_err)
        else:
            off_lo, selector, _, attr, off_hi = _GATE32(raw)
            offset = off_lo | (off_hi << 16)
            ist = 0
            gate_type = attr & 0xF
            if gate_type not in _GATES32:
                raise DeliveryFault(_GP, idt_err)     # task gates are not supported
        cpl = regs.cpl
        if software and (attr >> 5) & 3 < cpl:
            raise DeliveryFault(_GP, idt_err)
        if not attr & 0x80:
            raise DeliveryFault(_NP, idt_err)
        # -- the code segment
        sel_err = (selector & 0xFFFC) | ext
        if selector & 0xFFFC == 0:
            raise DeliveryFault(_GP, ext)
        table, table_limit = (regs.ldt_base, regs.ldt_limit) if selector & 4 else (regs.gdt_base, regs.gdt_limit)
        index = selector & 0xFFF8
        if index + 7 > table_limit:
            raise DeliveryFault(_GP, sel_err)
        cs_base, cs_limit, cs_flags = _descriptor(tlb.read(table + index, 8, IMPLICIT))
        if not cs_flags & FLAG_S or not cs_flags & TYPE_CODE:
            raise DeliveryFault(_GP, sel_err)
        if not cs_flags & FLAG_P:
            raise DeliveryFault(_NP, sel_err)
        cs_dpl = (cs_flags >> 13) & 3
        if cs_dpl > cpl:
            raise DeliveryFault(_GP, sel_err)
        if long_mode and (not cs_flags & FLAG_L or cs_flags & FLAG_DB):
            raise DeliveryFault(_GP, sel_err)
        new_cpl = cpl if cs_flags & TYPE_CONFORMING else cs_dpl
        # -- the stack and the frame
        rip = ev.rip if ev.rip is not None else regs.rip
        rflags = st.rflags
        rsp = regs.rsp
        cs_sel = regs.cs_sel
        ss_sel = regs.ss_sel
        has_err = ev.kind is _EXCEPTION and vec in ERROR_CODE_VECTORS
        err = (ev.error_code or 0) & 0xFFFFFFFF
        new_ss: SegTuple | None = None
        if long_mode:
            if ist:
                new_rsp = _U64(tlb.read(regs.tr_base + TSS64_IST1 + 8 * (ist - 1), 8, IMPLICIT))[0]
            elif new_cpl != cpl:
                new_rsp = _U64(tlb.read(regs.tr_base + TSS64_RSP0 + 8 * new_cpl, 8, IMPLICIT))[0]
            else:
                new_rsp = rsp
            new_rsp &= ~0xF
            if has_err:
                data = _FRAME64E(err, rip & _M64, cs_sel, rflags & _M64, rsp & _M64, ss_sel)
            else:
                data = _FRAME64(rip & _M64, cs_sel, rflags & _M64, rsp & _M64, ss_sel)
            new_rsp = (new_rsp - len(data)) & _M64
            non_canonical = _SS
            tlb.push(new_rsp, data, 8, USER_WRITE if new_cpl == 3 else IMPLICIT_WRITE)
            if new_cpl != cpl:
                new_ss = (new_cpl, 0, 0, new_cpl << 13)    # NULL SS with RPL = new CPL
        else:
            if new_cpl != cpl:
                esp0, ss0 = _TSS32_STACK(tlb.read(regs.tr_base + TSS32_ESP0, 6, IMPLICIT))
                if ss0 & 0xFFFC == 0 or (ss0 & 0xFFF8) + 7 > regs.gdt_limit:
                    raise DeliveryFault(_TS, ss0 & 0xFFFC)
                ss_base, ss_limit, ss_flags = _descriptor(tlb.read(regs.gdt_base + (ss0 & 0xFFF8), 8, IMPLICIT))
                if not ss_flags & FLAG_P:
                    raise DeliveryFault(_SS, ss0 & 0xFFFC)
                new_rsp, stack_base = esp0, ss_base
                frame = [rip, cs_sel, rflags, rsp, ss_sel]
                new_ss = (ss0, ss_base, ss_limit, ss_flags)
            else:
                new_rsp, stack_base = rsp & 0xFFFFFFFF, regs.ss_base
                frame = [rip, cs_sel, rflags]
            if has_err:
                frame.insert(0, err)
            data = _FRAME32[len(frame)](*(v & 0xFFFFFFFF for v in frame))
            new_rsp = (new_rsp - len(data)) & 0xFFFFFFFF
            non_canonical = _SS
            tlb.push((stack_base + new_rsp) & 0xFFFFFFFF, data, 4, USER_WRITE if new_cpl == 3 else IMPLICIT_WRITE)
    except PageFault as pf:
        raise DeliveryFault(_PF, pf.error_code, pf.va) from None
    except NonCanonical:
        raise DeliveryFault(non_canonical, 0) from None
    # commit: nothing above changed CPU state
    nf = rflags & _CLEAR_ON_DELIVERY
    if gate_type in _INTR_GATES:
        nf &= ~_IF
    cpu.event_commit(((selector & 0xFFFC) | new_cpl, cs_base, cs_limit, cs_flags), new_ss, new_rsp, offset,
                     nf if nf != rflags else None, ev.cr2)
