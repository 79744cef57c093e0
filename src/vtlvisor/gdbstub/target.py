"""The debugger's view of one vCPU: breakpoints, watchpoints and guest-virtual memory.

Breakpoints never touch guest memory: each is an engine code hook restricted to its address whose
callback pauses the vCPU *before* the instruction runs (the engine stops exactly there). Watchpoints
are memory hooks restricted to the watched range; because stopping inside a memory hook would make
the engine restart the access, a hit is only recorded there, and a code hook on every instruction
(installed only while watchpoints exist) pauses at the next instruction boundary, i.e. after the
access completed, as on hardware.

Everything here runs on the vCPU thread (the engine is not thread-safe). Hook callbacks never raise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..x86.paging import Access, NonCanonical, PageFault, walk

if TYPE_CHECKING:
    from ..hv.vcpu import Vcpu

log = logging.getLogger(__name__)

SW, HW = "swbreak", "hwbreak"
WATCH_KIND = {2: "watch", 3: "rwatch", 4: "awatch"}
MAX_BREAKPOINTS = 4096
MAX_WATCHPOINTS = 64
MAX_WATCH_LEN = 0x10000
MAX_ACCESS = 8            # the engine splits wider accesses into 8-byte pieces
ADDR_LIMIT = 1 << 64


class TargetError(Exception):
    """A request the target cannot serve (answered with an E reply)."""

    def __init__(self, errno: int, why: str) -> None:
        super().__init__(why)
        self.errno = errno


@dataclass
class Watchpoint:
    kind: int           # 2 write, 3 read, 4 access
    addr: int
    length: int
    hook: int


class DebugTarget:
    def __init__(self, vcpu: Vcpu) -> None:
        self.vcpu = vcpu
        self.engine = vcpu.engine
        self.breakpoints: dict[tuple[str, int], int] = {}      # (SW/HW, addr) -> hook
        self.watchpoints: dict[tuple[int, int, int], Watchpoint] = {}
        self._step_hook: int | None = None
        #: a breakpoint at this address is ignored until the current resume reports a stop
        self.skip_addr: int | None = None
        #: what caused the last pause: (SW|HW, addr) or ("watch"|"rwatch"|"awatch", data address)
        self.hit: tuple[str, int] | None = None
        self._watch_hit: tuple[str, int] | None = None

    # ------------------------------------------------------------------ breakpoints
    def has_breakpoint(self, addr: int) -> bool:
        return (SW, addr) in self.breakpoints or (HW, addr) in self.breakpoints

    def insert_breakpoint(self, kind: str, addr: int) -> None:
        if not 0 <= addr < ADDR_LIMIT:
            raise TargetError(22, "address out of range")
        if (kind, addr) in self.breakpoints:
            return
        if len(self.breakpoints) >= MAX_BREAKPOINTS:
            raise TargetError(28, "too many breakpoints")
        self.breakpoints[(kind, addr)] = self.engine.add_code_hook(
            lambda a, k=kind: self._on_breakpoint(k, a), addr, addr)
        self.engine.flush_tb()

    def remove_breakpoint(self, kind: str, addr: int) -> None:
        h = self.breakpoints.pop((kind, addr), None)
        if h is not None:
            self.engine.del_hook(h)
            self.engine.flush_tb()

    def _on_breakpoint(self, kind: str, addr: int) -> None:
        try:
            if addr == self.skip_addr or self.hit is not None:
                return
            self.hit = (kind, addr)
            self.vcpu.request_pause("breakpoint")
        except Exception:   # noqa: BLE001 - never raise into the engine
            log.exception("breakpoint hook")

    # ------------------------------------------------------------------ watchpoints
    def insert_watchpoint(self, kind: int, addr: int, length: int) -> None:
        if kind not in WATCH_KIND or not 0 < length <= MAX_WATCH_LEN or not 0 <= addr < ADDR_LIMIT \
                or addr + length > ADDR_LIMIT:
            raise TargetError(22, "bad watchpoint")
        key = (kind, addr, length)
        if key in self.watchpoints:
            return
        if len(self.watchpoints) >= MAX_WATCHPOINTS:
            raise TargetError(28, "too many watchpoints")
        begin = max(0, addr - (MAX_ACCESS - 1))     # hooks match on the access's start address
        h = self.engine.add_mem_hook(lambda w, va, sz, val, k=key: self._on_access(k, w, va, sz),
                                     begin, addr + length - 1, read=kind in (3, 4), write=kind in (2, 4))
        self.watchpoints[key] = Watchpoint(kind, addr, length, h)
        if self._step_hook is None:
            self._step_hook = self.engine.add_code_hook(self._on_insn, 1, 0)   # begin > end: everywhere
        self.engine.flush_tb()

    def remove_watchpoint(self, kind: int, addr: int, length: int) -> None:
        w = self.watchpoints.pop((kind, addr, length), None)
        if w is None:
            return
        self.engine.del_hook(w.hook)
        if not self.watchpoints and self._step_hook is not None:
            self.engine.del_hook(self._step_hook)
            self._step_hook = None
        self.engine.flush_tb()

    def _on_access(self, key: tuple[int, int, int], is_write: bool, va: int, size: int) -> None:
        try:
            w = self.watchpoints.get(key)
            if w is None or self._watch_hit is not None:
                return
            if va + size <= w.addr or va >= w.addr + w.length:
                return
            if w.kind == 2 and not is_write or w.kind == 3 and is_write:
                return
            self._watch_hit = (WATCH_KIND[w.kind], max(va, w.addr))
        except Exception:   # noqa: BLE001
            log.exception("watchpoint hook")

    def _on_insn(self, addr: int) -> None:
        try:
            if self._watch_hit is not None and self.hit is None:
                self.hit = self._watch_hit
                self.vcpu.request_pause("watch")
        except Exception:   # noqa: BLE001
            log.exception("watch step hook")

    # ------------------------------------------------------------------ stop / resume bookkeeping
    def take_hit(self) -> tuple[str, int] | None:
        """At a stop: what caused it (a watchpoint hit during a single step counts too)."""
        hit = self.hit or self._watch_hit
        self.hit = self._watch_hit = None
        self.skip_addr = None
        return hit

    def prepare_resume(self) -> bool:
        """Before resuming: a breakpoint at RIP must not fire again before the instruction runs.
        Returns True when the caller must single-step first (to step over it)."""
        self.hit = self._watch_hit = None
        rip = self.engine.rip
        if self.has_breakpoint(rip):
            self.skip_addr = rip
            return True
        self.skip_addr = None
        return False

    def clear_all(self) -> None:
        for kind, addr in list(self.breakpoints):
            self.remove_breakpoint(kind, addr)
        for key in list(self.watchpoints):
            self.remove_watchpoint(*key)
        self.hit = self._watch_hit = None
        self.skip_addr = None

    # ------------------------------------------------------------------ memory
    def _translate(self, va: int) -> int:
        """Guest-virtual to guest-physical for the debugger: no permission checks, no A/D updates."""
        vcpu = self.vcpu
        try:
            gpa = walk(getattr(vcpu, 'ram', vcpu.mem), vcpu.paging_mode(), va, Access(), set_ad=False)
        except (PageFault, NonCanonical):
            raise TargetError(14, f"{va:#x} is not mapped") from None
        return gpa

    def read_memory(self, va: int, length: int) -> bytes:
        """Read up to ``length`` bytes; stops at the first unmapped page (a short read). Raises
        TargetError(14) when not even the first byte is readable."""
        if not 0 <= va < ADDR_LIMIT or length < 0:
            raise TargetError(14, "bad address")
        out = bytearray()
        mem = getattr(self.vcpu, 'ram', self.vcpu.mem)
        while len(out) < length:
            cur = (va + len(out)) % ADDR_LIMIT
            n = min(length - len(out), 0x1000 - (cur & 0xFFF))
            try:
                gpa = self._translate(cur)
            except TargetError:
                break
            if not mem.contains(gpa, n):     # MMIO / open bus: not read from the debugger
                break
            out += mem.read(gpa, n)
        if length and not out:
            raise TargetError(14, f"cannot read {va:#x}")
        return bytes(out)

    def write_memory(self, va: int, data: bytes) -> None:
        """All pages are translated before any byte is written (all or nothing). Invalidates
        translated code, so patched instructions take effect."""
        if not 0 <= va < ADDR_LIMIT or va + len(data) > ADDR_LIMIT:
            raise TargetError(14, "bad address")
        mem = getattr(self.vcpu, 'ram', self.vcpu.mem)
        targets = []
        off = 0
        while off < len(data):
            cur = va + off
            n = min(len(data) - off, 0x1000 - (cur & 0xFFF))
            gpa = self._translate(cur)
            if not mem.contains(gpa, n):
                raise TargetError(14, f"{cur:#x} is not RAM")
            targets.append((gpa, data[off:off + n]))
            off += n
        for gpa, chunk in targets:
            mem.write(gpa, chunk)
        if data:
            self.engine.flush_tb()
            self.engine.flush_tlb()
