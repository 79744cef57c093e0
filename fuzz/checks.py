"""Invariants checked around every fuzz case (issue 9).

``Checker(part).arm()`` after ``boot`` and before ``run``; ``finish(result)`` returns the list of
``Failure``s. What is checked:

- the run returned a RunResult (no exception escaped ``Partition.run``) and not INTERNAL_ERROR;
- the engine's private region (``engine.hyp``) was not changed by the guest: VMCB, host save area,
  VMRUN/CPUID stubs, MSR and I/O permission maps byte for byte, except the VMCB fields QEMU's intercept
  path writes at every exit (EXIT_INFO_1 at 0x78 and EXIT_INFO_2 at 0x80: the exit code itself goes to
  ``exception_index``, never to the VMCB, because Unicorn performs no #VMEXIT world switch); the nested
  page tables page for page, except the accessed/dirty bits (5, 6) QEMU's nested walk sets in every
  entry it uses, and except the RAM leaves, which are checked against the model instead (every RAM leaf
  of every VTL's root equals ``npt_entry(protection)`` for that page, identity-mapped); the part of the
  pool never handed out stays zero;
- CR pins only grow (every ``set_pins`` transition is checked, and the final pins contain the first);
- VSM: the running VTL is always enabled (checked after every exit); no protection is changed while
  VTL0 runs or on a VTL >= the running one; a switch into a higher VTL resumes it exactly where it left
  (VTL0 cannot choose VTL1's entry point); the canary page (VTL1-only) is unchanged, the hypervisor
  never read or wrote it on behalf of VTL0 (GuestMemory is instrumented), and none of its qwords
  appears in memory VTL0 can read or in VTL0's registers;
- time: every exit handler, outer step, port and MMIO access is timed; the slowest must stay under
  ``max_exit_s`` of the vCPU thread's CPU time (the hypervisor's own work: the 2 shared cores of a
  busy machine stall a process for ~100 ms at times) and under ``WALL_FACTOR * max_exit_s`` of wall
  time (an exit that blocks instead of working).
"""

from __future__ import annotations

import struct
import time
import traceback
from dataclasses import dataclass, field

from vtlvisor.engine.engine import _HSAVE, _IOPM, _MSRPM, _POOL, _STUB, _VMCB, HYP_BASE
from vtlvisor.engine.npt import LEAF_RWX
from vtlvisor.hv.stop import RunResult, StopReason
from vtlvisor.x86.svm import IOPM_SIZE, MSRPM_SIZE, Vmcb

AD_MASK_BYTE = 0x9F                     # clears bits 5 and 6 of the low byte of each entry
VMCB_VOLATILE = ((Vmcb.EXIT_INFO_1, 8), (Vmcb.EXIT_INFO_2, 8))
MAX_EXIT_S = 0.100
WALL_FACTOR = 10


@dataclass
class Failure:
    kind: str                       # crash / internal-error / hyp-region / crpin / vsm / canary / slow-exit / oracle
    detail: str
    key: str = ""                   # stable signature used by the minimizer

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def _mask_ad(b: bytes) -> bytes:
    a = bytearray(b)
    a[0::8] = bytes(x & AD_MASK_BYTE for x in a[0::8])
    return bytes(a)


@dataclass
class Timing:
    slowest: float = 0.0            # vCPU thread CPU time
    where: str = ""
    wall: float = 0.0
    wall_where: str = ""
    count: int = 0

    def add(self, cpu: float, wall: float, where: str) -> None:
        self.count += 1
        if cpu > self.slowest:
            self.slowest, self.where = cpu, where
        if wall > self.wall:
            self.wall, self.wall_where = wall, where


@dataclass
class Checker:
    part: object
    canary: tuple[int, bytes] | None = None           # (gpa, content) of the VTL1-only page
    max_exit_s: float = MAX_EXIT_S
    failures: list[Failure] = field(default_factory=list)
    timing: Timing = field(default_factory=Timing)

    # ------------------------------------------------------------------ arming
    def arm(self) -> Checker:
        p = self.part
        eng = p.engine
        self._fixed = self._fixed_regions()
        self._pool_end = eng._pool_next - HYP_BASE
        self._pool = _mask_ad(bytes(eng.hyp[_POOL:self._pool_end]))
        self._pins0 = self._pins()
        self._wrap_pins()
        self._wrap_timing()
        if p.vsm is not None:
            self._wrap_vsm()
        if self.canary is not None:
            self._wrap_memory()
        return self

    def _fixed_regions(self) -> dict[str, bytes]:
        hyp = self.part.engine.hyp
        vmcb = bytearray(hyp[_VMCB:_VMCB + 0x1000])
        for off, n in VMCB_VOLATILE:
            vmcb[off:off + n] = bytes(n)
        return {"vmcb": bytes(vmcb), "hsave": bytes(hyp[_HSAVE:_HSAVE + 0x1000]),
                "stubs": bytes(hyp[_STUB:_STUB + 0x200]), "msrpm": bytes(hyp[_MSRPM:_MSRPM + MSRPM_SIZE]),
                "iopm": bytes(hyp[_IOPM:_IOPM + IOPM_SIZE])}

    def _pins(self) -> tuple[int, int, int, int]:
        s = self.part.crpin.pins
        return (s.cr0_low, s.cr0_high, s.cr4_low, s.cr4_high)

    def fail(self, kind: str, detail: str, key: str = "") -> None:
        if len(self.failures) < 50:
            self.failures.append(Failure(kind, detail, key or kind))

    def _wrap_pins(self) -> None:
        crpin = self.part.crpin
        orig = crpin.set_pins

        def set_pins(cr, *, low=None, high=None, host=False):
            before = crpin.pinned(cr)
            orig(cr, low=low, high=high, host=host)
            after = crpin.pinned(cr)
            if not host and (before[0] & ~after[0] or before[1] & ~after[1]):
                self.fail("crpin", f"guest removed CR{cr} pins {before} -> {after}", "crpin-removed")
        crpin.set_pins = set_pins

    def _timed(self, fn, where):
        timing = self.timing

        def wrapper(*a, **k):
            t, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                timing.add(time.thread_time() - c, time.perf_counter() - t, where)
        return wrapper

    def _wrap_timing(self) -> None:
        p = self.part
        vcpu = p.vcpu
        vsm = p.vsm

        def after_exit(fn, code):
            def h(c):
                fn(c)
                if vsm is not None and not vsm.vtls[vsm.active_vtl].enabled:
                    self.fail("vsm", f"running VTL{vsm.active_vtl} is not enabled (after exit {c:#x})",
                              "vsm-active-disabled")
            return self._timed(h, f"exit {code:#x}")
        vcpu._handlers = {c: after_exit(fn, c) for c, fn in vcpu._handlers.items()}
        orig_outer = vcpu.request_outer
        vcpu.request_outer = lambda fn: orig_outer(self._timed(fn, "outer step"))
        io = p.platform.io
        io.read = self._timed(io.read, "port read")
        io.write = self._timed(io.write, "port write")
        mmio = p.platform.mmio
        mmio.read = self._timed(mmio.read, "lapic read")
        mmio.write = self._timed(mmio.write, "lapic write")
        p._on_unhandled = self._timed(p._on_unhandled, "open bus")

    def _wrap_vsm(self) -> None:
        vsm = self.part.vsm
        eng = self.part.engine
        orig_set, orig_default, orig_switch = vsm.set_protection, vsm.apply_default_mask, vsm.switch_to
        left_at: dict[int, int] = {}

        def who(target: int, what: str) -> None:
            a = vsm.active_vtl
            if a == 0 or target >= a:
                self.fail("vsm", f"VTL{a} changed {what} of VTL{target}", "vsm-protection-by-lower")

        def set_protection(vtl, gpn, flags):
            who(vtl, f"the protection of page {gpn:#x}")
            return orig_set(vtl, gpn, flags)

        def apply_default_mask(vtl, mask):
            who(vtl, "the default protection")
            return orig_default(vtl, mask)

        def switch_to(target, reason, message=None, fast_return=True):
            src = vsm.active_vtl
            left_at[src] = eng.rip
            orig_switch(target, reason, message, fast_return)
            if target > src and target in left_at and eng.rip != left_at[target]:
                self.fail("vsm", f"VTL{target} entered at {eng.rip:#x}, it left at {left_at[target]:#x}",
                          "vsm-entry-point")
            if not vsm.vtls[vsm.active_vtl].enabled:
                self.fail("vsm", f"switched to disabled VTL{vsm.active_vtl}", "vsm-active-disabled")
        vsm.set_protection, vsm.apply_default_mask, vsm.switch_to = set_protection, apply_default_mask, switch_to

    def _wrap_memory(self) -> None:
        """Record every hypervisor access (GuestMemory) to the canary page made while VTL0 runs."""
        mem = self.part.memory
        vsm = self.part.vsm
        lo = self.canary[0]
        hi = lo + 0x1000
        self.canary_hits: list[str] = []

        def guard(name, fn, sized):
            def w(gpa, *a):
                n = (a[0] if name in ("read", "fill") else len(a[0])) if not sized else sized
                if gpa < hi and gpa + n > lo and (vsm is None or vsm.active_vtl == 0) and len(self.canary_hits) < 10:
                    stack = traceback.extract_stack(limit=12)[:-1]
                    # the instruction bytes of a GPA intercept go to VTL1's own message page: not a leak
                    if not any(f.name == "_insn_bytes" for f in stack):
                        where = " <- ".join(f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})"
                                            for f in reversed(stack[-6:]) if "fuzz/" not in f.filename)
                        self.canary_hits.append(f"{name}({gpa:#x}, {n}) while VTL0 runs: {where}")
                return fn(gpa, *a)
            return w
        for name, sized in (("read", 0), ("write", 0), ("fill", 0), ("read_u8", 1), ("read_u16", 2),
                            ("read_u32", 4), ("read_u64", 8), ("write_u8", 1), ("write_u16", 2),
                            ("write_u32", 4), ("write_u64", 8)):
            setattr(mem, name, guard(name, getattr(mem, name), sized))

    # ------------------------------------------------------------------ after the run
    def finish(self, result: RunResult | None, exc: BaseException | None = None) -> list[Failure]:
        if exc is not None:
            tb = "".join(traceback.format_exception(exc))
            self.fail("crash", f"{type(exc).__name__} escaped Partition.run(): {exc}\n{tb}",
                      f"crash-{type(exc).__name__}")
        elif not isinstance(result, RunResult):
            self.fail("crash", f"run() returned {result!r}", "crash-no-result")
        elif result.reason is StopReason.INTERNAL_ERROR:
            first = result.detail.splitlines()[0] if result.detail else ""
            self.fail("internal-error", result.detail, f"internal-{first[:60]}")
        self._check_hyp()
        self._check_pins()
        if self.part.vsm is not None:
            self._check_vsm()
        if self.canary is not None:
            self._check_canary()
        tm = self.timing
        if tm.slowest > self.max_exit_s:
            self.fail("slow-exit", f"slowest exit {tm.slowest * 1e3:.1f} ms CPU ({tm.where})", f"slow-{tm.where}")
        elif tm.wall > WALL_FACTOR * self.max_exit_s:
            self.fail("slow-exit", f"slowest exit {tm.wall * 1e3:.1f} ms wall, not CPU ({tm.wall_where})",
                      f"slow-wall-{tm.wall_where}")
        return self.failures

    def _check_hyp(self) -> None:
        now = self._fixed_regions()
        for name, before in self._fixed.items():
            if now[name] != before:
                diff = [i for i in range(len(before)) if now[name][i] != before[i]]
                self.fail("hyp-region", f"{name} changed at offsets {[hex(d) for d in diff[:8]]}",
                          f"hyp-{name}")
        eng = self.part.engine
        hyp = eng.hyp
        end = eng._pool_next - HYP_BASE
        leaves = self._check_npt_leaves()
        after = bytearray(hyp[_POOL:self._pool_end])
        for off in leaves:                      # RAM leaves were checked against the model
            rel = off - _POOL
            if 0 <= rel < len(after):
                after[rel:rel + 8] = self._pool[rel:rel + 8]
        after = _mask_ad(bytes(after))
        if after != self._pool:
            diff = [i for i in range(0, len(after), 8) if after[i:i + 8] != self._pool[i:i + 8]]
            self.fail("hyp-region", f"NPT pages changed (non-RAM entries) at pool offsets "
                      f"{[hex(d) for d in diff[:8]]}", "hyp-npt")
        if any(hyp[end:len(hyp)]):
            self.fail("hyp-region", "unallocated part of the private region is not zero", "hyp-pool")

    def _npt_roots(self) -> list[tuple[int, object, dict, int, bool]]:
        """(vtl, root, protections, default mask, user-mode root) for every NPT root (MBEC gives a VTL
        a second, user-mode root)."""
        p = self.part
        if p.vsm is None:
            return [(0, p.npt, {}, 0xF, False)]
        roots = getattr(p.vsm, "_roots", lambda t: [(t.npt, False)])
        return [(t.vtl, npt, t.protections, t.default_mask, user)
                for t in p.vsm.vtls if t.npt is not None for npt, user in roots(t)]

    def _check_npt_leaves(self) -> set[int]:
        from vtlvisor.hv.vsm import npt_entry
        p = self.part
        hyp = p.engine.hyp
        slots: set[int] = set()
        bad = []
        for vtl, npt, prots, default, user in self._npt_roots():
            def entry(gpa: int, flags: int, user: bool = user) -> int:
                return (npt_entry(gpa, flags, user) if user else npt_entry(gpa, flags)) & ~0x60
            for gpn in range(p.memory.size >> 12):
                slot = npt.leaf_slot(gpn << 12)
                if slot is None:
                    bad.append((vtl, gpn, "no leaf"))
                    continue
                off = slot - HYP_BASE
                slots.add(off)
                have = struct.unpack_from("<Q", hyp, off)[0] & ~0x60
                if p.vsm is None:
                    want = ((gpn << 12) | LEAF_RWX) & ~0x60
                else:
                    want = entry(gpn << 12, prots.get(gpn, default))
                if have != want:
                    bad.append((vtl, gpn, f"{have:#x} != {want:#x}" + (" (user root)" if user else "")))
        if bad:
            self.fail("hyp-region", f"NPT RAM leaves differ from the protection model: {bad[:4]}", "hyp-npt-leaf")
        return slots

    def _check_pins(self) -> None:
        now = self._pins()
        if any(b & ~a for b, a in zip(self._pins0, now, strict=True)):
            self.fail("crpin", f"pins removed: {self._pins0} -> {now}", "crpin-removed")

    def _check_vsm(self) -> None:
        vsm = self.part.vsm
        if not vsm.vtls[vsm.active_vtl].enabled:
            self.fail("vsm", f"run ended in disabled VTL{vsm.active_vtl}", "vsm-active-disabled")
        if 0 not in vsm.partition_enabled or not vsm.vtls[0].enabled:
            self.fail("vsm", "VTL0 is no longer enabled", "vsm-vtl0")

    def _check_canary(self) -> None:
        gpa, content = self.canary
        p = self.part
        vsm = p.vsm
        mem = p.memory
        raw = bytes(mem._view[gpa:gpa + 0x1000])
        if raw != content:
            diff = [i for i in range(0x1000) if raw[i] != content[i]]
            self.fail("canary", f"VTL1-only canary page modified at offsets {[hex(d) for d in diff[:8]]}",
                      "canary-modified")
        if getattr(self, "canary_hits", None):
            hit = self.canary_hits[0]
            path = hit.split(": ", 1)[1] if ": " in hit else hit
            self.fail("canary", "hypervisor accessed the VTL1-only canary page for VTL0: " + hit,
                      "canary-hyp-" + ("write" if hit.startswith("write") else "read") + "-"
                      + path.split(" <- ")[0].split(" (")[0] + "-" + path.split(" <- ")[-1].split(" (")[0])
        if vsm is None or vsm.vtls[0].protections.get(gpa >> 12, vsm.vtls[0].default_mask) & 1:
            return          # not protected (setup failed or VTL1 lifted it): nothing to scan for
        qwords = set(struct.unpack("<512Q", content)) - {0, (1 << 64) - 1}
        view = bytearray(mem._view)
        prots = vsm.vtls[0].protections
        for gpn, flags in prots.items():
            if not flags & 1:
                view[gpn << 12:(gpn + 1) << 12] = bytes(0x1000)      # VTL0 cannot read these pages
        found = qwords.intersection(memoryview(bytes(view)).cast("Q"))
        if found:
            where = [hex(i * 8) for i, q in enumerate(memoryview(bytes(view)).cast("Q")) if q in found][:4]
            self.fail("canary", f"canary qwords found in VTL0-readable memory at {where}", "canary-leak-mem")
        if vsm.active_vtl == 0:
            regs = {r: p.engine.reg(r) for r in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8",
                                                 "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "cr2")}
            leaked = [r for r, v in regs.items() if v in qwords]
            if leaked:
                self.fail("canary", f"canary qword in VTL0 registers {leaked}", "canary-leak-reg")
