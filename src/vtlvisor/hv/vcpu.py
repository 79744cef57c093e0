"""A virtual CPU: the run loop and the VM-exit dispatch table.

Shape (after KVM's svm.c): one loop, one table of small handlers indexed by SVM exit code, each
named after its event. Handlers run inside the engine's interrupt hook, so most exits are handled
without leaving ``emu_start``; a handler that needs the outer loop (SYSCALL emulation, a native
single step, a stop request) records it and stops the engine.

Guest-caused errors never raise out of here: a handler raises ``GuestGP``/``GuestFault`` and the
dispatcher turns it into the architectural exception; anything unexpected becomes an orderly
shutdown with a report.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..engine.engine import Engine, Segment
from ..engine.unicorn_internals import EXCP_VMEXIT, CpuSnapshot
from ..memory import AccessDenied, GuestMemory
from ..x86 import decode as dec
from ..x86.arch import CR0, CR4, EFER, ERROR_CODE_VECTORS, MASK64, RFLAGS, Vector
from ..x86.cpuid import CpuidModel
from ..x86.events import DeliveryFault, Event, EventKind, EventState, SegTuple, TripleFault, deliver
from ..x86.paging import (
    FETCH,
    FETCH_USER,
    IMPLICIT,
    Access,
    NonCanonical,
    PageFault,
    PagingMode,
    Translator,
    read_virt,
)
from ..x86.svm import SvmExit
from .clock import VirtualClock
from .evidence import SecurityLog
from .msrs import GuestGP, InterceptPending, MsrState, MsrTable
from .stop import RunResult, StopReason

if TYPE_CHECKING:
    from ..devices.bus import IoBus

log = logging.getLogger(__name__)

TSC_HZ = 1_000_000_000          # virtual TSC: 1 GHz, i.e. 1 tick per virtual ns
IRQ_POLL_NS = 50_000            # how often to retry an interrupt blocked by IF=0 / the shadow

CR0_FIXED_WRITABLE = CR0.PE | CR0.MP | CR0.EM | CR0.TS | CR0.ET | CR0.NE | CR0.WP | CR0.AM | CR0.NW \
    | CR0.CD | CR0.PG
CR4_SUPPORTED = CR4.VME | CR4.PVI | CR4.TSD | CR4.DE | CR4.PSE | CR4.PAE | CR4.MCE | CR4.PGE | CR4.PCE \
    | CR4.OSFXSR | CR4.OSXMMEXCPT | CR4.UMIP | CR4.FSGSBASE | CR4.OSXSAVE | CR4.SMEP | CR4.SMAP

# Plain-int copies for the exit paths: IntFlag arithmetic (``x & CR0.PG``) runs in Python and costs
# ~0.7-1.3 us per operation, int arithmetic ~0.03 us. The IntFlag classes remain the names.
_CR0_PE, _CR4_TSD, _CR4_UMIP = int(CR0.PE), int(CR4.TSD), int(CR4.UMIP)
_EFER_LMA, _EFER_SCE = int(EFER.LMA), int(EFER.SCE)
_RFLAGS_IF, _RFLAGS_OF = int(RFLAGS.IF), int(RFLAGS.OF)
_EXCP_BASE = int(SvmExit.EXCP_BASE)
_UD, _PF, _GP, _BP = int(Vector.UD), int(Vector.PF), int(Vector.GP), int(Vector.BP)
_EXCEPTION = EventKind.EXCEPTION
_tuple_new = tuple.__new__      # NamedTuple construction without its Python-level __new__
#: Intel VMCALL (0F 01 C1); UD2 (0F 0B)
_VMCALL = b"\x0f\x01\xc1"
_UD2 = b"\x0f\x0b"
#: page offset up to which the 15-byte instruction window at RIP lies in one page
_ONE_PAGE_WINDOW = 0x1000 - 15


class GuestFault(Exception):
    """Raised by emulation code: inject ``vector`` (with error code / CR2) at the instruction."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None) -> None:
        super().__init__(f"vector {vector}")
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2


#: ``Vcpu.last_exits`` entries: (exit sequence number, exit code, RIP, detail). A sequence number rather
#: than a timestamp: reading the virtual clock is a system call (~1 us) on every exit.
ExitRecord = tuple[int, int, int, str]


CrWriteFilter = Callable[["Vcpu", int, int, int], bool]   # (vcpu, cr, old, new) -> handled


@dataclass
class VcpuHooks:
    """Extension points for ABIs layered on the core (CR pinning, VSM, domains, tracing)."""

    cr_write_filters: list[CrWriteFilter] = field(default_factory=list)
    hypercall: Callable[[Vcpu], None] | None = None
    #: (vcpu, exit code) -> handled; consulted for descriptor-table writes and other opt-in intercepts
    intercept_filters: list[Callable[[Vcpu, int], bool]] = field(default_factory=list)
    trace: Callable[[str, dict], None] | None = None
    #: external interrupts are delivered only while this says so (VSM: only while VTL0 runs)
    interrupts_allowed: Callable[[], bool] | None = None
    #: a hypervisor-side access for the running VTL hit memory it may not touch (VSM: GPA intercept)
    access_denied: Callable[[Vcpu, AccessDenied], None] | None = None
    #: the hypervisor just loaded CS/SS (event delivery, SYSCALL/SYSENTER emulation): called before the
    #: guest runs on (VSM's MBEC picks the nested root for the new CPL)
    after_transfer: Callable[[], None] | None = None
    #: called at every exit and every engine stop, before the handler (MBEC: CPL changes the engine
    #: made without an exit)
    exit_check: Callable[[], None] | None = None
    #: (vcpu, vector) -> handled; consulted for every intercepted exception before it is delivered
    exception_filter: Callable[[Vcpu, int], bool] | None = None


class Vcpu:
    def __init__(self, engine: Engine, memory: GuestMemory, io: IoBus, lapic, cpuid: CpuidModel,
                 clock: VirtualClock, msrs: MsrTable, vp_index: int = 0) -> None:
        self.engine = engine
        self.mem = memory
        #: all of RAM, for the host's own tools (debugger); ``mem`` may be a VTL's ProtectedView
        self.ram = memory
        self.io = io
        self.lapic = lapic
        self.cpuid = cpuid
        self.clock = clock
        self.msrs = msrs
        self.vp_index = vp_index
        self.msr_state = MsrState()
        self.hooks = VcpuHooks()
        #: what the hypervisor refused or redirected for this vCPU (evidence for users and the attack suite)
        self.security = SecurityLog()
        self.result: RunResult | None = None
        self.exit_counts: dict[int, int] = {}
        self.last_exits: deque[ExitRecord] = deque(maxlen=32)
        self.exit_seq = 0
        self._pending_outer: Callable[[], None] | None = None
        self._io_fault_pending = False
        self._vsm_bypass = False       # set while a higher VTL / the host writes registers (no intercepts)
        #: debugger (gdb stub): ``on_stop(vcpu, reason)`` blocks while the guest is stopped
        self.debugger = None
        self._pause_reason: str | None = None
        #: when set, the next engine run executes exactly one instruction (debugger single-step)
        self.single_step = False
        self._pending_events: deque[Event] = deque()
        self._last_mode: PagingMode | None = None
        self._kicked = threading.Event()
        self._running = False
        self._wall_deadline: float | None = None
        #: virtual time of the last guest entry (``_before_entry``): the blocked-interrupt retry counts from it
        self._entry_ns = 0
        self._handlers: dict[int, Callable[[int], None]] = self._build_table()
        engine.on_exit(self._on_intr)
        engine.on_io(self._on_io_in, self._on_io_out)
        engine.on_syscall(self._on_syscall_insn)
        engine.on_invalid(self._on_invalid)

    # ================================================================== dispatch table
    def _build_table(self) -> dict[int, Callable[[int], None]]:
        t: dict[int, Callable[[int], None]] = {
            SvmExit.WRITE_CR0: self._exit_write_cr,
            SvmExit.WRITE_CR4: self._exit_write_cr,
            SvmExit.WRITE_CR8: self._exit_write_cr8,
            SvmExit.READ_CR8: self._exit_read_cr8,
            SvmExit.IDTR_READ: self._exit_dt_read,
            SvmExit.GDTR_READ: self._exit_dt_read,
            SvmExit.LDTR_READ: self._exit_dt_read,
            SvmExit.TR_READ: self._exit_dt_read,
            SvmExit.IDTR_WRITE: self._exit_filtered,
            SvmExit.GDTR_WRITE: self._exit_filtered,
            SvmExit.LDTR_WRITE: self._exit_filtered,
            SvmExit.TR_WRITE: self._exit_filtered,
            SvmExit.RDTSC: self._exit_rdtsc,
            SvmExit.RDTSCP: self._exit_rdtsc,
            SvmExit.CPUID: self._exit_cpuid,
            SvmExit.SWINT: self._exit_swint,
            SvmExit.ICEBP: self._exit_icebp,
            SvmExit.HLT: self._exit_hlt,
            SvmExit.MSR: self._exit_msr,
            SvmExit.SHUTDOWN: self._exit_shutdown,
            SvmExit.VMMCALL: self._exit_vmmcall,
            SvmExit.NPF: self._exit_npf,
            SvmExit.IRET: self._exit_filtered,
            SvmExit.MONITOR: self._exit_ud,
            SvmExit.MWAIT: self._exit_ud,
        }
        for code in (SvmExit.VMRUN, SvmExit.VMLOAD, SvmExit.VMSAVE, SvmExit.STGI, SvmExit.CLGI,
                     SvmExit.INVLPGA, SvmExit.SKINIT):
            t[code] = self._exit_ud
        for v in range(32):
            t[SvmExit.EXCP_BASE + v] = self._exit_exception
        return t

    def _on_intr(self, intno: int) -> None:
        """UC_HOOK_INTR: every exit and raw exception lands here. Never raises."""
        if self._io_fault_pending:
            self.engine.stop()
            return
        try:
            code = intno - EXCP_VMEXIT if intno >= EXCP_VMEXIT else _EXCP_BASE + intno
            counts = self.exit_counts
            counts[code] = counts.get(code, 0) + 1
            # the exit's one pull: fast-path handlers (CPUID, exceptions, INT n) read this image
            rip = self.engine.exit_rip()
            if self.hooks.exit_check is not None:
                self.hooks.exit_check()
            self.exit_seq += 1
            self.last_exits.append((self.exit_seq, code, rip, ""))
            if self.hooks.trace:
                self.hooks.trace("exit", {"code": code, "rip": rip})
                self.engine.exit_rip()      # a tracer may have touched the CPU: take a fresh image
            handler = self._handlers.get(code)
            if handler is None:
                self._shutdown(StopReason.INTERNAL_ERROR, f"unhandled exit {code:#x} at {rip:#x}")
                return
            try:
                handler(code)
            except GuestGP as gp:
                log.debug("inject #GP(%#x): %s", gp.error_code, gp)
                self.inject(Event(_GP, _EXCEPTION, gp.error_code))
            except GuestFault as f:
                self.inject(Event(f.vector, _EXCEPTION, f.error_code, cr2=f.cr2))
            except InterceptPending:
                pass            # a higher VTL takes the event; the instruction is not completed
            except AccessDenied as denied:
                self._access_denied(denied)
            if self.hooks.trace:
                self.hooks.trace("exit_end", {"code": code})
        except TripleFault as tf:
            self._shutdown(StopReason.TRIPLE_FAULT, str(tf))
        except Exception as e:   # noqa: BLE001 - the guest must never crash the hypervisor
            self._shutdown(StopReason.INTERNAL_ERROR, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")

    # ================================================================== helpers for handlers
    def reg(self, name: str) -> int:
        return self.engine.reg(name)

    def set_reg(self, name: str, value: int) -> None:
        self.engine.set_reg(name, value)

    def segment(self, name: str) -> Segment:
        return self.engine.segment(name)

    def load_segments(self, segs: dict[str, tuple[int, int, int, int]]) -> None:
        self.engine.set_segments({k: Segment(*v) for k, v in segs.items()})

    def security_event(self, kind: str, text: str, vtl: int | None = None, **args) -> None:
        """Record a protection decision (and trace it when tracing): see hv/evidence.py."""
        self.security.record(kind, text, self.engine.rip, vtl, self.hooks.trace, **args)

    def cpl(self) -> int:
        return self.engine.cpl()

    def long_mode(self) -> bool:
        return bool(self.msr_state.efer & _EFER_LMA)

    def paging_mode(self) -> PagingMode:
        cr0, cr3, cr4 = self.engine.paging_regs()
        return PagingMode(cr0, cr3, cr4, self.msr_state.efer)

    def _mode_of(self, s: CpuSnapshot) -> PagingMode:
        """The paging mode of a snapshot (the last one is reused while CR0/CR3/CR4/EFER match)."""
        m = self._last_mode
        efer = self.msr_state.efer
        if m is None or m.cr3 != s.cr3 or m.cr0 != s.cr0 or m.cr4 != s.cr4 or m.efer != efer:
            m = self._last_mode = PagingMode(s.cr0, s.cr3, s.cr4, efer)
        return m

    def tsc(self) -> int:
        return self.clock.tsc(TSC_HZ)

    def bitness(self) -> int:
        if self.engine.code64():
            return 64
        return 32 if self.segment("cs").flags & (1 << 22) else 16

    def fetch_insn(self, snap: CpuSnapshot | None = None) -> dec.ix.Instruction:
        """Decode the instruction at RIP (through the guest's page tables, as a fetch at CPL).
        ``snap``: the exit's CPU snapshot if the caller has one (saves a pull)."""
        s = snap if snap is not None else self.engine.snapshot()
        rip = s.rip
        code64 = s.code64
        cs_base = 0 if code64 else s.cs_base
        mode = self._mode_of(s)
        acc = FETCH_USER if s.cpl == 3 else FETCH
        code = b""
        try:
            # read up to 15 bytes without crossing into an unmapped page needlessly
            first = min(15, 0x1000 - ((cs_base + rip) & 0xFFF))
            code = read_virt(self.mem, mode, cs_base + rip, first, acc)
            if first < 15:
                try:
                    code += read_virt(self.mem, mode, cs_base + rip + first, 15 - first, acc)
                except PageFault:
                    pass
        except PageFault as pf:
            raise GuestFault(_PF, pf.error_code, pf.va) from None
        except NonCanonical:
            raise GuestFault(_GP, 0) from None
        ins = dec.decode(code, rip, 64 if code64 else 32 if s.cs_flags & (1 << 22) else 16)
        if ins is None:
            raise GuestFault(_UD)
        return ins

    def _peek_insn(self, s: CpuSnapshot, tlb: Translator, n: int) -> bytes | None:
        """The first ``n`` bytes at RIP when the 15-byte window ``fetch_insn`` reads lies in one page
        (same walk, same Accessed bits, same faults); None otherwise or on a fault."""
        va = s.rip if s.code64 else s.cs_base + s.rip
        if va & 0xFFF > _ONE_PAGE_WINDOW:
            return None
        try:
            return tlb.read(va, n, FETCH_USER if s.cpl == 3 else FETCH)
        except (PageFault, NonCanonical):
            return None

    def skip(self, ins_len: int) -> None:
        self.engine.rip = (self.engine.rip + ins_len) & MASK64

    def _access_denied(self, denied: AccessDenied) -> None:
        """Hand a protected-memory access made on the running VTL's behalf to the higher VTL (as the
        nested page fault it would be on hardware). The instruction or event is not completed."""
        if self.hooks.access_denied is None:
            self._shutdown(StopReason.MACHINE_CHECK, str(denied))
            return
        try:
            self.hooks.access_denied(self, denied)
        except InterceptPending:
            pass

    def inject(self, ev: Event, state: EventState | None = None) -> None:
        """Deliver an event now (from inside a handler) through the guest IDT. ``state``: this
        exit's ``_event_state`` if the caller took one and nothing changed since."""
        try:
            deliver(self, ev, state=state)
        except TripleFault:
            self.engine.ack_exception()
            raise
        except AccessDenied as denied:
            self.engine.ack_exception()
            self._access_denied(denied)
            return
        if self.hooks.trace:
            self.hooks.trace("inject", {"vector": ev.vector, "kind": ev.kind.value,
                                        "error_code": ev.error_code})

    # -- events.CpuAccess: one snapshot in, one write-back out
    def _event_state(self, s: CpuSnapshot, tlb: Translator | None = None) -> EventState:
        return _tuple_new(EventState, (s, self.engine.rflags(),
                                       tlb if tlb is not None else Translator(self.mem, self._mode_of(s))))

    def event_state(self) -> EventState:
        return self._event_state(self.engine.snapshot())

    def event_commit(self, cs: SegTuple, ss: SegTuple | None, rsp: int, rip: int, rflags: int | None,
                     cr2: int | None) -> None:
        # also clears Unicorn's stale-exception markers, as every injection must
        self.engine.commit_transfer(cs, ss, rsp, rip, rflags, cr2, ack=True)
        if self.hooks.after_transfer is not None:
            self.hooks.after_transfer()

    def queue_event(self, ev: Event) -> None:
        """Deliver before the next guest instruction (from outside the engine)."""
        self._pending_events.append(ev)

    def request_outer(self, fn: Callable[[], None]) -> None:
        self._pending_outer = fn
        self.engine.stop()

    # ================================================================== exit handlers
    def _exit_exception(self, code: int) -> None:
        vec = code - _EXCP_BASE
        if self.hooks.exception_filter is not None and self.hooks.exception_filter(self, vec):
            return
        s = self.engine.snapshot(pull=False)
        tlb = Translator(self.mem, self._mode_of(s))
        if vec == _UD and self._maybe_emulate_ud(s, tlb):
            return
        ev = Event(vec, _EXCEPTION)
        if vec in ERROR_CODE_VECTORS:
            ev.error_code = s.error_code
        if vec == _PF:
            ev.cr2 = self.engine.exit_info_2()
        self.inject(ev, self._event_state(s, tlb))

    def _maybe_emulate_ud(self, s: CpuSnapshot, tlb: Translator) -> bool:
        """Intel's VMCALL on our AMD-modelled CPU raises #UD; treat it as a hypercall, as KVM does.
        A byte compare decides the common cases (VMCALL, UD2); anything else is decoded."""
        head = self._peek_insn(s, tlb, 3)
        if head == _VMCALL:
            self._hypercall(3)
            return True
        if head is not None and head[:2] == _UD2:
            return False
        try:
            ins = self.fetch_insn(s)
        except GuestFault:
            return False
        if ins.mnemonic == dec.Mnemonic.VMCALL:
            self._hypercall(ins.len)
            return True
        return False

    def _exit_ud(self, code: int) -> None:
        raise GuestFault(Vector.UD)

    def _exit_cpuid(self, code: int) -> None:
        # the exit's pulled image in, one push out: EAX/ECX in, EAX..EDX out, RIP += 2 (CR4 for
        # OSXSAVE/OSPKE comes from the same image)
        self.engine.cpuid_exit(self.cpuid.query, pull=False)

    def _exit_rdtsc(self, code: int) -> None:
        if self.reg("cr4") & _CR4_TSD and self.cpl() > 0:
            raise GuestGP(0, "rdtsc with CR4.TSD at CPL>0")
        tsc = (self.tsc() + self.msr_state.tsc_offset) & MASK64
        self.set_reg("rax", tsc & 0xFFFFFFFF)
        self.set_reg("rdx", tsc >> 32)
        if code == SvmExit.RDTSCP:
            self.set_reg("rcx", self.engine.msr_read(0xC0000103) & 0xFFFFFFFF)
            self.skip(3)
        else:
            self.skip(2)

    def _exit_msr(self, code: int) -> None:
        write = self.engine.exit_info_1() & 1
        if self.cpl() != 0:
            raise GuestGP(0, "rdmsr/wrmsr at CPL>0")
        msr = self.reg("rcx") & 0xFFFFFFFF
        if write:
            value = (self.reg("rax") & 0xFFFFFFFF) | ((self.reg("rdx") & 0xFFFFFFFF) << 32)
            self.msrs.write(self, msr, value)
            if self.hooks.trace:
                self.hooks.trace("wrmsr", {"msr": msr, "value": value})
        else:
            value = self.msrs.read(self, msr)
            self.set_reg("rax", value & 0xFFFFFFFF)
            self.set_reg("rdx", value >> 32)
        self.skip(2)

    # -- control registers
    def _exit_write_cr(self, code: int) -> None:
        cr = code - SvmExit.WRITE_CR0
        ins = self.fetch_insn()
        old = self.reg("cr0") if cr == 0 else self.reg("cr4")
        m = ins.mnemonic
        if m == dec.Mnemonic.MOV:
            g = dec.gpr_index(ins.op1_register)
            if g is None:
                raise GuestFault(Vector.UD)
            new = self.engine.gpr(g[0])
            if not self.engine.code64():
                new &= 0xFFFFFFFF
        elif m == dec.Mnemonic.LMSW:
            if ins.op0_kind == dec.OpKind.REGISTER:
                g = dec.gpr_index(ins.op0_register)
                src = self.engine.gpr(g[0]) if g else 0
            else:
                src = self._read_mem_operand(ins, 2)
            # LMSW loads PE, MP, EM, TS; it can set PE but never clear it
            new = (old & ~0xE) | (src & 0xE) | (old & 1) | (src & 1)
        elif m == dec.Mnemonic.CLTS:
            new = old & ~CR0.TS
        else:
            raise GuestFault(Vector.UD)
        if self.cpl() != 0:
            raise GuestGP(0, "CR write at CPL>0")
        self.write_cr(cr, new)
        self.skip(ins.len)

    def write_cr(self, cr: int, new: int) -> None:
        """Architectural checks the engine skips, then the filters (pinning, VSM), then commit."""
        new &= MASK64
        old = self.reg(f"cr{cr}")
        efer = self.msr_state.efer
        if cr == 0:
            if new >> 32 or new & ~int(CR0_FIXED_WRITABLE) & 0xFFFFFFFF:
                raise GuestGP(0, f"CR0 reserved bits {new:#x}")
            new |= int(CR0.ET)                                  # hardwired to 1 (SDM 2.5, APM 3.1.1)
            if new & CR0.PG and not new & CR0.PE:
                raise GuestGP(0, "CR0.PG without PE")
            if new & CR0.NW and not new & CR0.CD:
                raise GuestGP(0, "CR0.NW without CD")
            if new & CR0.PG and not old & CR0.PG and efer & EFER.LME and not self.reg("cr4") & CR4.PAE:
                raise GuestGP(0, "long mode needs CR4.PAE")
            if not new & CR0.PG and old & CR0.PG and self.engine.code64():
                raise GuestGP(0, "clearing CR0.PG in 64-bit mode")
            if not new & CR0.WP and self.reg("cr4") & CR4.CET:
                raise GuestGP(0, "CR0.WP clear with CET")
        else:
            supported = int(CR4_SUPPORTED)
            if not self.cpuid.query(1, 0, 0)[3] & (1 << 1):      # CPUID.1:EDX.VME gates VME and PVI
                supported &= ~int(CR4.VME | CR4.PVI)
            if new & ~supported & MASK64:                       # plain ints: an IntFlag ~ is 24 bits wide
                raise GuestGP(0, f"CR4 reserved/unsupported bits {new & ~supported & MASK64:#x}")
            if efer & EFER.LMA and not new & CR4.PAE:
                raise GuestGP(0, "clearing CR4.PAE in long mode")
            smep_smap = self.cpuid.query(7, 0, 0)[1]
            if new & CR4.SMEP and not smep_smap & (1 << 7):
                raise GuestGP(0, "SMEP not supported")
            if new & CR4.SMAP and not smep_smap & (1 << 20):
                raise GuestGP(0, "SMAP not supported")
        for f in self.hooks.cr_write_filters:
            if f(self, cr, old, new):
                return
        self.engine.set_reg(f"cr{cr}", new)
        if cr == 0:
            # the engine sets/clears EFER.LMA itself on a paging transition with LME
            lma = self.engine.long_mode_active()
            self.msr_state.efer = (int(self.msr_state.efer) & ~_EFER_LMA) | (_EFER_LMA if lma else 0)
        if self.hooks.trace:
            self.hooks.trace("write_cr", {"cr": cr, "old": old, "new": new})

    def _exit_write_cr8(self, code: int) -> None:
        ins = self.fetch_insn()
        if self.cpl() != 0:
            raise GuestGP(0, "CR8 write at CPL>0")
        g = dec.gpr_index(ins.op1_register)
        if g is None:
            raise GuestFault(Vector.UD)
        value = self.engine.gpr(g[0])
        if value >> 4:
            raise GuestGP(0, "CR8 reserved bits")
        self.lapic.tpr = (value & 0xF) << 4
        self.skip(ins.len)

    def _exit_read_cr8(self, code: int) -> None:
        ins = self.fetch_insn()
        if self.cpl() != 0:
            raise GuestGP(0, "CR8 read at CPL>0")
        g = dec.gpr_index(ins.op0_register)
        if g is None:
            raise GuestFault(Vector.UD)
        self.engine.set_gpr(g[0], (self.lapic.tpr >> 4) & 0xF)
        self.skip(ins.len)

    # -- descriptor tables (UMIP, NPIEP, HyperGuard)
    def _exit_dt_read(self, code: int) -> None:
        if self.reg("cr4") & _CR4_UMIP and self.cpl() > 0:
            # the engine has no UMIP: this check is the whole protection, so it is evidence too
            self.security_event("umip", f"UMIP: {SvmExit(code).name.removesuffix('_READ')} read at CPL {self.cpl()} "
                                f"RIP {self.engine.rip:#x} -> #GP(0)")
            raise GuestGP(0, "UMIP: SGDT/SIDT/SLDT/STR at CPL>0")
        self._exit_filtered(code)

    def _exit_filtered(self, code: int) -> None:
        """An intercept that exists for the ABIs' filters (descriptor-table writes for HyperGuard and
        domains, IRET for VSM's MBEC): a filter handles it, else the instruction runs natively."""
        for f in self.hooks.intercept_filters:
            if f(self, code):
                return
        self.step_without_intercept(code)

    def step_without_intercept(self, code: int) -> None:
        """Execute the intercepted instruction natively once, with its intercept disabled: the
        engine then does all addressing, faults and side effects exactly as the CPU would."""
        def outer() -> None:
            eng = self.engine
            eng.set_intercept(code, False)
            try:
                err = eng.run(count=1)
                if err:
                    self._engine_error(err)     # e.g. the step ran into the open bus: a machine check
            finally:
                eng.set_intercept(code, True)
        self.request_outer(outer)

    # -- software interrupts and HLT
    def _exit_swint(self, code: int) -> None:
        s = self.engine.snapshot(pull=False)
        tlb = Translator(self.mem, self._mode_of(s))
        head = self._peek_insn(s, tlb, 2)
        if head is not None and head[0] == 0xCC:            # INT3
            vec, length = _BP, 1
        elif head is not None and head[0] == 0xCD:          # INT imm8
            vec, length = head[1], 2
        else:                                               # prefixed, INTO, near a page end
            ins = self.fetch_insn(s)
            m = ins.mnemonic
            length = ins.len
            if m == dec.Mnemonic.INT:
                vec = ins.immediate8
            elif m == dec.Mnemonic.INT3:
                vec = _BP
            elif m == dec.Mnemonic.INTO:
                if not self.reg("rflags") & _RFLAGS_OF:
                    self.skip(ins.len)
                    return
                vec = Vector.OF
            else:
                raise GuestFault(Vector.UD)
        self.inject(Event(vec, EventKind.SOFTWARE, rip=(s.rip + length) & MASK64), self._event_state(s, tlb))

    def _exit_icebp(self, code: int) -> None:
        self.inject(Event(Vector.DB, EventKind.EXCEPTION, rip=(self.engine.rip + 1) & MASK64))

    def _exit_hlt(self, code: int) -> None:
        if self.cpl() != 0:
            raise GuestGP(0, "HLT at CPL>0")
        self.skip(1)
        if not self.reg("rflags") & _RFLAGS_IF:
            self._shutdown(StopReason.HALTED, "HLT with interrupts disabled: the vCPU can never wake")
            return
        if self._deliver_interrupt():
            return
        deadline = self.lapic.next_deadline()
        if deadline is None:
            self._shutdown(StopReason.HALTED, "HLT with no interrupt source armed: the vCPU can never wake")
            return
        self.clock.skip_to(deadline)
        self.lapic.poll(self.clock.now())
        self.engine.clear_interrupt_shadow()
        if not self._deliver_interrupt():
            # spurious wake-up (e.g. masked vector): the guest re-executes after HLT
            pass

    def _exit_vmmcall(self, code: int) -> None:
        self._hypercall(3)

    def _hypercall(self, ins_len: int) -> None:
        if self.hooks.hypercall is None:
            raise GuestFault(Vector.UD)
        rip = self.engine.rip
        self.skip(ins_len)
        try:
            self.hooks.hypercall(self)
        except (GuestFault, GuestGP):
            self.engine.rip = rip      # a faulting hypercall instruction does not advance RIP
            raise

    def _exit_shutdown(self, code: int) -> None:
        self._shutdown(StopReason.TRIPLE_FAULT, "shutdown intercept (engine-detected triple fault)")

    def _exit_npf(self, code: int) -> None:
        gpa = self.engine.exit_info_2()
        for f in self.hooks.intercept_filters:
            if f(self, code):
                return
        self._shutdown(StopReason.MACHINE_CHECK,
                       f"access to non-existent guest-physical address {gpa:#x} at RIP {self.engine.rip:#x}")

    def _read_mem_operand(self, ins: dec.ix.Instruction, size: int) -> int:
        va = self._effective_address(ins)
        try:
            raw = read_virt(self.mem, self.paging_mode(), va, size, Access(user=self.cpl() == 3))
        except PageFault as pf:
            raise GuestFault(Vector.PF, pf.error_code, pf.va) from None
        except NonCanonical:
            raise GuestGP(0) from None
        return int.from_bytes(raw, "little")

    def _effective_address(self, ins: dec.ix.Instruction) -> int:
        ea = ins.memory_displacement
        if ins.memory_base != dec.Register.NONE:
            if ins.memory_base == dec.Register.RIP:
                ea = ins.memory_displacement
            else:
                g = dec.gpr_index(ins.memory_base)
                ea += self.engine.gpr(g[0]) if g else 0
        if ins.memory_index != dec.Register.NONE:
            g = dec.gpr_index(ins.memory_index)
            ea += (self.engine.gpr(g[0]) if g else 0) * ins.memory_index_scale
        seg = ins.memory_segment
        if seg == dec.Register.FS:
            ea += self.segment("fs").base
        elif seg == dec.Register.GS:
            ea += self.segment("gs").base
        return ea & (MASK64 if self.engine.code64() else 0xFFFFFFFF)

    # ================================================================== port I/O
    def _io_allowed(self, port: int, size: int) -> bool:
        """CPL > IOPL consults the TSS I/O permission bitmap (SDM 19.5). Unicorn skips this check."""
        s = self.engine.snapshot()
        if s.cpl <= (self.engine.rflags() >> 12) & 3 or not s.cr0 & _CR0_PE:
            return True
        mode = self._mode_of(s)
        try:
            if s.tr_limit < 0x67:
                return False
            base = struct.unpack("<H", read_virt(self.mem, mode, s.tr_base + 0x66, 2, IMPLICIT))[0]
            off = base + port // 8
            if off + 1 > s.tr_limit:
                return False
            bits = struct.unpack("<H", read_virt(self.mem, mode, s.tr_base + off, 2, IMPLICIT))[0]
        except (PageFault, NonCanonical):
            return False
        return not (bits >> (port & 7)) & ((1 << size) - 1)

    def _io_fault(self) -> None:
        """#GP for a port access the guest may not make. Unicorn cannot abort the IN/OUT from its
        hook and keeps running the rest of the translation block before it stops, so snapshot the
        CPU state at the instruction, ignore every event until the engine stops, restore the
        snapshot and deliver #GP with RIP at the IN/OUT. Registers are exact; memory writes by the
        remaining straight-line instructions of the block (at the same CPL) are not undone."""
        snap = self.engine.uc.context_save()
        self._io_fault_pending = True

        def outer() -> None:
            self._io_fault_pending = False
            self.engine.uc.context_restore(snap)
            self.engine.flush_tlb()
            self.inject(Event(Vector.GP, EventKind.EXCEPTION, 0))
        self.request_outer(outer)

    def _on_io_in(self, port: int, size: int) -> int:
        try:
            if self._io_fault_pending:
                return self.reg("rax") & ((1 << (8 * size)) - 1)
            if not self._io_allowed(port, size):
                self._io_fault()
                return self.reg("rax") & ((1 << (8 * size)) - 1)    # register unchanged
            v = self.io.read(port, size)
            if self.hooks.trace:
                self.hooks.trace("io", {"port": port, "size": size, "dir": "in", "value": v})
            return v
        except Exception as e:   # noqa: BLE001
            self._shutdown(StopReason.INTERNAL_ERROR, f"port read {port:#x}: {e!r}")
            return (1 << (8 * size)) - 1

    def _on_io_out(self, port: int, size: int, value: int) -> None:
        try:
            if self._io_fault_pending:
                return
            if not self._io_allowed(port, size):
                self._io_fault()
                return
            if self.hooks.trace:
                self.hooks.trace("io", {"port": port, "size": size, "dir": "out", "value": value})
            self.io.write(port, size, value)
        except Exception as e:   # noqa: BLE001
            self._shutdown(StopReason.INTERNAL_ERROR, f"port write {port:#x}: {e!r}")

    # ================================================================== SYSCALL / SYSENTER
    def _on_syscall_insn(self, kind: str) -> None:
        insn_rip = self.engine.rip
        self.request_outer(lambda: self._emulate_sys_entry(kind, insn_rip))

    def _emulate_sys_entry(self, kind: str, insn_rip: int) -> None:
        """Unicorn skips the transition (its hook replaces it) and has advanced RIP past the
        instruction; do what the SDM says SYSCALL/SYSENTER do."""
        next_rip = self.engine.rip
        s = self.msr_state
        try:
            if kind == "syscall":
                if not s.efer & EFER.SCE:
                    raise GuestFault(Vector.UD)
                self._syscall(next_rip)
            else:
                self._sysenter(next_rip)
            if self.hooks.after_transfer is not None:
                self.hooks.after_transfer()
        except GuestFault as f:
            self.engine.rip = insn_rip
            self.inject(Event(f.vector, EventKind.EXCEPTION, f.error_code))
        except GuestGP as gp:
            self.engine.rip = insn_rip
            self.inject(Event(Vector.GP, EventKind.EXCEPTION, gp.error_code))

    def _syscall(self, next_rip: int) -> None:
        s = self.msr_state
        sel = (s.star >> 32) & 0xFFFF
        rflags = self.reg("rflags")
        cs = ((sel & 0xFFFC), 0, 0xFFFFFFFF, 0x00A09B00 if self.long_mode() else 0x00C09B00)
        ss = (((sel + 8) & 0xFFFC), 0, 0xFFFFFFFF, 0x00C09300)
        if self.long_mode():
            self.set_reg("rcx", next_rip)
            self.set_reg("r11", rflags & ~RFLAGS.RF)
            target = s.lstar if self.engine.code64() else s.cstar
            new_flags = rflags & ~s.fmask & ~RFLAGS.RF
        else:
            self.set_reg("rcx", next_rip & 0xFFFFFFFF)
            target = s.star & 0xFFFFFFFF
            new_flags = rflags & ~(RFLAGS.IF | RFLAGS.VM | RFLAGS.RF)
        self.load_segments({"cs": cs, "ss": ss})
        self.set_reg("rflags", new_flags | RFLAGS.FIXED1)
        self.engine.rip = target

    def _sysenter(self, next_rip: int) -> None:
        s = self.msr_state
        if not self.reg("cr0") & CR0.PE or s.sysenter_cs & 0xFFFC == 0:
            raise GuestGP(0, "SYSENTER with SYSENTER_CS = 0")
        sel = s.sysenter_cs & 0xFFFC
        lm = self.long_mode()
        self.load_segments({
            "cs": (sel, 0, 0xFFFFFFFF, 0x00A09B00 if lm else 0x00C09B00),
            "ss": (sel + 8, 0, 0xFFFFFFFF, 0x00C09300),
        })
        self.set_reg("rflags", (self.reg("rflags") & ~(RFLAGS.IF | RFLAGS.VM | RFLAGS.RF)) | 2)
        self.set_reg("rsp", s.sysenter_esp if lm else s.sysenter_esp & 0xFFFFFFFF)
        self.engine.rip = s.sysenter_eip if lm else s.sysenter_eip & 0xFFFFFFFF

    def _on_invalid(self) -> bool:
        try:
            self.inject(Event(Vector.UD, EventKind.EXCEPTION))
        except TripleFault as tf:
            self._shutdown(StopReason.TRIPLE_FAULT, str(tf))
        except Exception as e:   # noqa: BLE001
            self._shutdown(StopReason.INTERNAL_ERROR, repr(e))
        return True

    # ================================================================== interrupts
    def _deliver_interrupt(self) -> bool:
        """Inject the LAPIC's highest pending vector if the guest can take it now."""
        vec = self.lapic.pending_vector()
        if vec is None:
            return False
        if self.hooks.interrupts_allowed is not None and not self.hooks.interrupts_allowed():
            return False
        if not self.reg("rflags") & _RFLAGS_IF or self.engine.interrupt_shadow():
            return False
        vec = self.lapic.acknowledge()
        self.inject(Event(vec, EventKind.EXTERNAL))
        return True

    def _before_entry(self) -> None:
        while self._pending_events and self.result is None:
            ev = self._pending_events.popleft()
            try:
                self.inject(ev)
            except TripleFault as tf:
                self._shutdown(StopReason.TRIPLE_FAULT, str(tf))
                return
        now = self.clock.now()
        self._entry_ns = now
        self.lapic.poll(now)
        try:
            self._deliver_interrupt()
        except TripleFault as tf:
            self._shutdown(StopReason.TRIPLE_FAULT, str(tf))

    # ================================================================== run loop
    def _shutdown(self, reason: StopReason, detail: str, status: int | None = None) -> None:
        if self.result is None:
            self.result = RunResult(reason, detail, status)
        self.engine.stop()

    def request_stop(self, reason: StopReason, detail: str = "", status: int | None = None) -> None:
        """Thread-safe: end the run (debug-exit, power-off, host request, timeout)."""
        if self.result is None:
            self.result = RunResult(reason, detail, status)
        self.engine.stop()

    def request_pause(self, reason: str = "pause") -> None:
        """Thread-safe: stop the guest at the next instruction boundary and hand control to the
        debugger (``debugger.on_stop``) from the vCPU thread. The guest resumes when it returns."""
        self._pause_reason = reason
        self.engine.stop()

    def _next_kick_ns(self) -> int | None:
        t = self.lapic.next_deadline()
        if self.lapic.pending_vector() is not None:
            # retry 50 us after the last entry (not after "now": a deadline recomputed from the
            # current time on every kicker pass would never be reached)
            poll = self._entry_ns + IRQ_POLL_NS
            t = poll if t is None else min(t, poll)
        return t

    def _kicker(self) -> None:
        """Stops the engine when virtual time reaches the next timer deadline or the wall timeout."""
        while self._running:
            now = self.clock.now()
            t = self._next_kick_ns()
            if self._wall_deadline is not None and time.monotonic() >= self._wall_deadline:
                self.request_stop(StopReason.TIMEOUT, "wall-clock timeout")
                return
            if t is not None and now >= t:
                self.engine.stop()
                self._kicked.wait(0.002)
                self._kicked.clear()
                continue
            wait = 0.005 if t is None else max(min((t - now) / 1e9, 0.005), 0.00002)
            time.sleep(wait)

    def run(self, timeout: float | None = None) -> RunResult:
        self.clock.bind_current_thread()
        self._running = True
        self._wall_deadline = None if timeout is None else time.monotonic() + timeout
        kicker = threading.Thread(target=self._kicker, name="vtlvisor-kicker", daemon=True)
        kicker.start()
        try:
            while self.result is None:
                self._before_entry()
                if self.result is not None:
                    break
                if self._pending_outer is not None:          # set while handling the last one
                    self._run_outer()
                    continue
                if self.single_step:
                    self.single_step = False
                    err = self.engine.run(count=1)
                    if self._pause_reason is None:
                        self._pause_reason = "step"
                else:
                    err = self.engine.run()
                self._kicked.set()
                if self.hooks.exit_check is not None and self.result is None:
                    self.hooks.exit_check()
                if err and self.result is None:
                    self._engine_error(err)
                self._run_outer()
                if self._pause_reason is not None and self.result is None:
                    reason, self._pause_reason = self._pause_reason, None
                    if self.debugger is not None:
                        self.debugger.on_stop(self, reason)
        finally:
            self._running = False
            kicker.join(timeout=1)
        return self.result

    def _run_outer(self) -> None:
        outer, self._pending_outer = self._pending_outer, None
        if outer is None or self.result is not None:
            return
        try:
            outer()
        except TripleFault as tf:
            self._shutdown(StopReason.TRIPLE_FAULT, str(tf))
        except InterceptPending:
            pass
        except AccessDenied as denied:
            self._access_denied(denied)
        except Exception as e:   # noqa: BLE001
            self._shutdown(StopReason.INTERNAL_ERROR, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")

    def _engine_error(self, err: str) -> None:
        """The engine refused to go on. An instruction fetch from MMIO / the open bus (a wild jump
        outside RAM) is the guest's doing: report it like a machine check, not as our bug."""
        rip = self.engine.rip
        if "FETCH" in err or "UNMAPPED" in err:
            self._shutdown(StopReason.MACHINE_CHECK, f"{err} at RIP {rip:#x} (execution outside RAM)")
        else:
            self._shutdown(StopReason.INTERNAL_ERROR, f"engine error: {err} at RIP {rip:#x}")

    # ================================================================== reporting
    def state_dump(self) -> str:
        e = self.engine
        lines = []
        try:
            regs = " ".join(f"{n}={e.reg(n):#x}" for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi",
                                                             "rbp", "rsp"))
            lines.append(regs)
            lines.append(" ".join(f"{n}={e.reg(n):#x}" for n in ("r8", "r9", "r10", "r11", "r12", "r13",
                                                                 "r14", "r15")))
            lines.append(f"rip={e.rip:#x} rflags={e.reg('rflags'):#x} cpl={e.cpl()} efer={self.msr_state.efer:#x}")
            lines.append(f"cr0={e.reg('cr0'):#x} cr2={e.reg('cr2'):#x} cr3={e.reg('cr3'):#x} cr4={e.reg('cr4'):#x}")
            for s in ("cs", "ss", "ds", "tr", "gdtr", "idtr"):
                sg = e.segment(s)
                lines.append(f"{s}: sel={sg.selector:#x} base={sg.base:#x} limit={sg.limit:#x} flags={sg.flags:#x}")
        except Exception as ex:   # noqa: BLE001
            lines.append(f"(state unavailable: {ex!r})")
        lines.append("last exits (oldest first):")
        for seq, code, rip, detail in self.last_exits:
            lines.append(f"  #{seq} {exit_name(code)} rip={rip:#x} {detail}")
        return "\n".join(lines)


def exit_name(code: int) -> str:
    if SvmExit.EXCP_BASE <= code < SvmExit.EXCP_BASE + 32:
        v = code - SvmExit.EXCP_BASE
        try:
            return f"EXCP_{Vector(v).name}"
        except ValueError:
            return f"EXCP_{v}"
    try:
        return SvmExit(code).name
    except ValueError:
        return f"EXIT_{code:#x}"


__all__ = ["Vcpu", "GuestFault", "GuestGP", "DeliveryFault", "exit_name"]
