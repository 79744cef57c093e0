"""The x86-64 CPU engine: one Unicorn instance held in emulated AMD-SVM guest mode.

Why SVM guest mode: Unicorn still carries QEMU's SVM intercept checks, and because it never performs
the #VMEXIT world switch, each intercepted event reaches ``UC_HOOK_INTR`` as ``0x100 + exit code``
with RIP at the instruction and the CPU still in guest mode: VM exits with no per-instruction cost.
Nested paging gives a real second stage. This module is the only one that imports Unicorn; the
hypervisor talks to it through plain integers and ``Segment`` tuples.

Physical address space of the engine ("host physical"):
  [0, ram)                    guest RAM (a GuestMemory buffer, mapped once)
  MMIO windows                Unicorn MMIO regions calling back into the device buses
  HYP_BASE..                  the hypervisor's private region: VMRUN stub, VMCB, host save area,
                              MSR/IO permission maps, nested page tables. No NPT entry points here.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

import unicorn
from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc, UcError
from unicorn import unicorn_const as ucc
from unicorn import x86_const as X

from ..errors import EngineMismatch
from ..memory import GuestMemory
from ..x86.arch import EFER, MSR
from ..x86.svm import IOPM_SIZE, MSRPM_RANGES, MSRPM_SIZE, SvmExit, Vmcb, intercept_bit
from . import unicorn_internals as ui
from .npt import LEAF_RWX, NestedPageTable

log = logging.getLogger(__name__)

HYP_BASE = 0x10_0000_0000      # 64 GiB: above any guest RAM we allow, inside 52-bit physical space
_VMCB, _HSAVE, _STUB, _CPUID_STUB = 0x0000, 0x1000, 0x2000, 0x2100
_MSRPM, _IOPM = 0x4000, 0x8000
_POOL = 0x10000

#: general-purpose registers by architectural number (ModRM order)
GPR = (X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX, X.UC_X86_REG_RSP,
       X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_R8, X.UC_X86_REG_R9,
       X.UC_X86_REG_R10, X.UC_X86_REG_R11, X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14,
       X.UC_X86_REG_R15)
GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
REG = {name: GPR[i] for i, name in enumerate(GPR_NAMES)}
REG.update(rip=X.UC_X86_REG_RIP, rflags=X.UC_X86_REG_RFLAGS, cr0=X.UC_X86_REG_CR0,
           cr2=X.UC_X86_REG_CR2, cr3=X.UC_X86_REG_CR3, cr4=X.UC_X86_REG_CR4,
           dr0=X.UC_X86_REG_DR0, dr1=X.UC_X86_REG_DR1, dr2=X.UC_X86_REG_DR2, dr3=X.UC_X86_REG_DR3,
           dr6=X.UC_X86_REG_DR6, dr7=X.UC_X86_REG_DR7)
#: segment register index in QEMU's segs[] (ES, CS, SS, DS, FS, GS)
SEG_INDEX = {"es": 0, "cs": 1, "ss": 2, "ds": 3, "fs": 4, "gs": 5}
#: the table registers follow the six segment caches in CPUX86State (segs[6], ldt, tr, gdt, idt)
_TABLE_INDEX = {"ldtr": 6, "tr": 7, "gdtr": 8, "idtr": 9}
_SCE = int(EFER.SCE)


@dataclass(frozen=True)
class Segment:
    """A segment register with its hidden part. ``flags`` is the descriptor's high dword bits 8-23
    (type, S, DPL, P, AVL, L, D/B, G) in place, as QEMU and the SDM lay them out."""

    selector: int
    base: int
    limit: int
    flags: int

    @property
    def dpl(self) -> int:
        return (self.flags >> 13) & 3

    @property
    def attrib(self) -> int:
        """VMCB 12-bit attribute encoding."""
        return ((self.flags >> 8) & 0xFF) | ((self.flags >> 12) & 0xF00)


CODE64 = Segment(0x08, 0, 0xFFFFFFFF, 0x00A09B00)
DATA = Segment(0x10, 0, 0xFFFFFFFF, 0x00C09300)
CODE32 = Segment(0x08, 0, 0xFFFFFFFF, 0x00C09B00)


@dataclass
class InitialState:
    """What the loader asks for at entry (segments, control registers, GPRs)."""

    rip: int
    rsp: int
    rflags: int = 0x2
    cr0: int = 0x11
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    cs: Segment = CODE32
    ds: Segment = Segment(0x10, 0, 0xFFFFFFFF, 0x00C09300)
    gdtr: tuple[int, int] = (0, 0)      # base, limit
    idtr: tuple[int, int] = (0, 0x3FF)
    gprs: dict[str, int] | None = None
    pat: int = 0x0007040600070406


class Engine:
    """One vCPU's execution engine. All methods run on the vCPU thread except ``kick()``."""

    def __init__(self, memory: GuestMemory) -> None:
        if memory.size > 0xC000_0000:
            raise ValueError("guest RAM above 3 GiB is not supported (the PCI/APIC hole)")
        self.memory = memory
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_cpu_model(X.UC_CPU_X86_EPYC)   # SMEP, SMAP, NX, 1 GiB pages and SVM
        self.layout = ui.verify(uc)
        self.uc = uc
        uc.mem_map_ptr(0, memory.size, UC_PROT_ALL, memory.host_address)
        # private region: sized for the NPT of all RAM plus room for more roots (VTLs)
        # room for ~10 nested-page-table roots (VTLs, domains), each (RAM/2 MiB) tables + the hole
        pt_pages = (memory.size >> 21) + 64
        self._hyp_size = _POOL + (pt_pages * 12 + 64) * 0x1000
        self._hyp = mmap.mmap(-1, self._hyp_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._hyp_c = (ctypes.c_char * self._hyp_size).from_buffer(self._hyp)
        self.hyp = memoryview(self._hyp)
        uc.mem_map_ptr(HYP_BASE, self._hyp_size, UC_PROT_ALL, ctypes.addressof(self._hyp_c))
        self._pool_next = HYP_BASE + _POOL
        self.env = ui.EnvBlob(uc)
        # Hot path: 64-bit register access straight through the C API (the Python binding's
        # generic reg_read costs ~2.5 us, this ~0.6 us; a CPUID exit does ten of them).
        self._h = uc._uch
        self._regbuf = ctypes.c_uint64()
        self._regref = ctypes.byref(self._regbuf)
        self._rd = ui.raw_function("uc_reg_read")      # self._h is a c_void_p, self._regref a byref
        self._wr = ui.raw_function("uc_reg_write")
        self._hooks: list[int] = []
        self._keep: list[object] = []   # keep ctypes callbacks alive
        self.cpuid_table = self._probe_cpuid()
        self.npt: NestedPageTable | None = None
        self.intercept = 0
        self.in_guest_mode = False
        self._stop_lock = threading.Lock()
        #: privilege-change traps (``set_privilege_traps``): the guest's real EFER.SCE, SYSENTER_CS and
        #: TR limit while the engine holds the forced values, else None
        self._traps: tuple[int, int, int] | None = None

    # ------------------------------------------------------------------ private region
    def alloc_page(self) -> int:
        hpa = self._pool_next
        if hpa + 0x1000 > HYP_BASE + self._hyp_size:
            raise MemoryError("hypervisor private region exhausted")
        self._pool_next += 0x1000
        off = hpa - HYP_BASE
        self.hyp[off:off + 0x1000] = bytes(0x1000)
        return hpa

    def new_npt(self) -> NestedPageTable:
        return NestedPageTable(self.hyp, HYP_BASE, self.alloc_page)

    def _hyp_write(self, off: int, data: bytes) -> None:
        self.hyp[off:off + len(data)] = data

    def _vmcb_u64(self, field: int) -> int:
        return struct.unpack_from("<Q", self.hyp, _VMCB + field)[0]

    def exit_info_2(self) -> int:
        return self._vmcb_u64(Vmcb.EXIT_INFO_2)

    # ------------------------------------------------------------------ CPUID of the engine
    def _probe_cpuid(self) -> dict[tuple[int, int], tuple[int, int, int, int]]:
        """Run CPUID natively (host mode, before VMRUN) for the leaves we may advertise, so the
        guest's CPUID describes exactly what the engine executes."""
        uc = self.uc
        self._hyp_write(_CPUID_STUB, b"\x0f\xa2\xf4")    # cpuid; hlt
        out: dict[tuple[int, int], tuple[int, int, int, int]] = {}

        def run(leaf: int, sub: int) -> tuple[int, int, int, int]:
            uc.reg_write(X.UC_X86_REG_RAX, leaf)
            uc.reg_write(X.UC_X86_REG_RCX, sub)
            uc.emu_start(HYP_BASE + _CPUID_STUB, 0, count=2)
            return tuple(uc.reg_read(r) & 0xFFFFFFFF for r in (
                X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX))

        max_basic = run(0, 0)[0]
        for leaf in range(0, min(max_basic, 0x1F) + 1):
            subs = range(0, 4) if leaf in (4, 7, 0xB, 0xD) else (0,)
            for sub in subs:
                out[(leaf, sub)] = run(leaf, sub)
        max_ext = run(0x80000000, 0)[0]
        for leaf in range(0x80000000, min(max_ext, 0x80000020) + 1):
            out[(leaf, 0)] = run(leaf, 0)
        return out

    # ------------------------------------------------------------------ entering guest mode
    def set_msr_intercept_all(self) -> None:
        """Every RDMSR/WRMSR exits: the hypervisor owns the MSR space (pins, locks, #GP on unknown)."""
        self._hyp_write(_MSRPM, b"\xff" * MSRPM_SIZE)

    def msrpm_clear(self, msr: int, read: bool = True, write: bool = True) -> None:
        """Let one MSR pass to the engine without an exit (used for hot MSRs the guest may own)."""
        for first, byte_off in MSRPM_RANGES:
            if first <= msr < first + 0x2000:
                bit = (msr - first) * 2
                off = _MSRPM + byte_off + bit // 8
                cur = self.hyp[off]
                if read:
                    cur &= ~(1 << (bit % 8))
                if write:
                    cur &= ~(2 << (bit % 8))
                self.hyp[off] = cur
                return

    def enter_guest(self, st: InitialState, npt: NestedPageTable, *, intercept: int,
                    cr_read: int, cr_write: int, exceptions: int) -> None:
        """Fill the VMCB from ``st`` and execute ``vmrun`` from a host stub, once.

        The host state must have CR4.PAE, EFER.LMA and EFER.NXE so that QEMU walks the nested tables
        in 4-level long-mode format with NX (it derives nested_pg_mode from the *host* at VMRUN)."""
        uc = self.uc
        self.npt = npt
        self.set_msr_intercept_all()
        self._hyp_write(_IOPM, b"\xff" * IOPM_SIZE)
        v = _VMCB

        def w(field: int, fmt: str, *vals: int) -> None:
            struct.pack_into(fmt, self.hyp, v + field, *vals)

        w(Vmcb.INTERCEPT_CR_READ, "<HHHHIQ", cr_read, cr_write, 0, 0, exceptions, intercept)
        w(Vmcb.IOPM_BASE_PA, "<QQ", HYP_BASE + _IOPM, HYP_BASE + _MSRPM)
        w(Vmcb.ASID, "<I", 1)
        w(Vmcb.TLB_CONTROL, "<B", 1)
        w(Vmcb.NESTED_CTL, "<Q", 1)
        w(Vmcb.NESTED_CR3, "<Q", npt.root)

        def seg(field: int, s: Segment) -> None:
            w(field, "<HHIQ", s.selector, s.attrib, s.limit, s.base)

        seg(Vmcb.SAVE_CS, st.cs)
        for f in (Vmcb.SAVE_ES, Vmcb.SAVE_SS, Vmcb.SAVE_DS, Vmcb.SAVE_FS, Vmcb.SAVE_GS):
            seg(f, st.ds)
        w(Vmcb.SAVE_GDTR, "<HHIQ", 0, 0, st.gdtr[1], st.gdtr[0])
        w(Vmcb.SAVE_IDTR, "<HHIQ", 0, 0, st.idtr[1], st.idtr[0])
        seg(Vmcb.SAVE_LDTR, Segment(0, 0, 0xFFFF, 0x8200))
        seg(Vmcb.SAVE_TR, Segment(0, 0, 0xFFFF, 0x8B00))
        # VMRUN requires EFER.SVME in the guest image; it is hidden from the guest (see MSR/CPUID).
        w(Vmcb.SAVE_EFER, "<Q", st.efer | EFER.SVME)
        w(Vmcb.SAVE_CR4, "<Q", st.cr4)
        w(Vmcb.SAVE_CR3, "<Q", st.cr3)
        w(Vmcb.SAVE_CR0, "<Q", st.cr0)
        w(Vmcb.SAVE_DR7, "<Q", 0x400)
        w(Vmcb.SAVE_DR6, "<Q", 0xFFFF0FF0)
        w(Vmcb.SAVE_RFLAGS, "<Q", st.rflags)
        w(Vmcb.SAVE_RIP, "<Q", st.rip)
        w(Vmcb.SAVE_RSP, "<Q", st.rsp)
        w(Vmcb.SAVE_RAX, "<Q", (st.gprs or {}).get("rax", 0))
        w(Vmcb.SAVE_G_PAT, "<Q", st.pat)
        self._hyp_write(_STUB, b"\x0f\x01\xd8\xf4")       # vmrun ; hlt
        uc.reg_write(X.UC_X86_REG_CR4, 1 << 5)
        uc.msr_write(MSR.IA32_EFER, EFER.LME | EFER.LMA | EFER.NXE | EFER.SVME)
        uc.msr_write(MSR.VM_HSAVE_PA, HYP_BASE + _HSAVE)
        uc.reg_write(X.UC_X86_REG_RAX, HYP_BASE + _VMCB)
        stop = uc.hook_add(ucc.UC_HOOK_CODE, lambda u, a, s, d: u.emu_stop(), None, st.rip, st.rip)
        try:
            uc.emu_start(HYP_BASE + _STUB, 0)
        finally:
            uc.hook_del(stop)
        if uc.reg_read(X.UC_X86_REG_RIP) != st.rip:
            raise EngineMismatch("VMRUN did not reach the guest entry point; refusing to run")
        self.env.pull()
        ui.verify_guest_mode(self.env, HYP_BASE + _VMCB, npt.root, intercept)
        self.intercept = intercept
        self.in_guest_mode = True
        for name, value in (st.gprs or {}).items():
            uc.reg_write(REG[name], value)

    def add_mmio(self, base: int, size: int, read: Callable[[int, int], int],
                 write: Callable[[int, int, int], None]) -> None:
        """Map an MMIO window in the engine's physical space; the NPT must map it too."""
        self.uc.mmio_map(base, size, lambda u, off, sz, d: read(base + off, sz), None,
                         lambda u, off, sz, val, d: write(base + off, sz, val), None)

    # ------------------------------------------------------------------ hooks
    def on_exit(self, cb: Callable[[int], None]) -> None:
        """``cb(intno)``: intno >= 0x100 is an SVM exit (0x100 + code); below is a raw exception."""
        self._hooks.append(ui.add_intr_hook(self.uc, cb))

    def on_invalid(self, cb: Callable[[], bool]) -> None:
        self._hooks.append(self.uc.hook_add(ucc.UC_HOOK_INSN_INVALID, lambda u, d: cb()))

    def on_io(self, read: Callable[[int, int], int], write: Callable[[int, int, int], None]) -> None:
        """Port I/O. Unicorn compiles out the SVM IOIO intercept, so IN/OUT arrive as insn hooks
        (RIP at the instruction while the hook runs)."""
        self._hooks.append(self.uc.hook_add(ucc.UC_HOOK_INSN, lambda u, port, size, d: read(port, size),
                                            None, 1, 0, X.UC_X86_INS_IN))
        self._hooks.append(self.uc.hook_add(
            ucc.UC_HOOK_INSN, lambda u, port, size, value, d: write(port, size, value),
            None, 1, 0, X.UC_X86_INS_OUT))

    def on_syscall(self, cb: Callable[[str], None]) -> None:
        """SYSCALL/SYSENTER: Unicorn runs the hooks *instead of* the transition, then adds the
        instruction length to RIP. The callback stops the engine; the transition is emulated."""
        self._hooks.append(self.uc.hook_add(ucc.UC_HOOK_INSN, lambda u, d: cb("syscall"),
                                            None, 1, 0, X.UC_X86_INS_SYSCALL))
        self._hooks.append(self.uc.hook_add(ucc.UC_HOOK_INSN, lambda u, d: cb("sysenter"),
                                            None, 1, 0, X.UC_X86_INS_SYSENTER))

    def add_code_hook(self, cb: Callable[[int], None], begin: int, end: int) -> int:
        h = self.uc.hook_add(ucc.UC_HOOK_CODE, lambda u, addr, size, d: cb(addr), None, begin, end)
        return h

    def del_hook(self, h: int) -> None:
        self.uc.hook_del(h)

    # ------------------------------------------------------------------ running
    def run(self, count: int = 0) -> str | None:
        """Run from the current RIP until stopped. Returns None, or an error string from the engine
        (which the hypervisor turns into a shutdown report; it never propagates)."""
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        try:
            self.uc.emu_start(rip, 0, count=count)
        except UcError as e:
            return str(e)
        return None

    def stop(self) -> None:
        """Thread-safe: make ``run`` return as soon as possible, at an instruction boundary with exact
        state (the next translation-block start or code hook: ``unicorn_internals.patch_exit_checks``)."""
        self.uc.emu_stop()

    # ------------------------------------------------------------------ registers
    def _get(self, reg_id: int) -> int:
        if self._rd(self._h, reg_id, self._regref):
            raise UcError(self.uc.errno() if hasattr(self.uc, "errno") else 1)
        return self._regbuf.value

    def _set(self, reg_id: int, value: int) -> None:
        self._regbuf.value = value & 0xFFFFFFFFFFFFFFFF
        if self._wr(self._h, reg_id, self._regref):
            raise UcError(1)

    def reg(self, name: str) -> int:
        return self._get(REG[name])

    def set_reg(self, name: str, value: int) -> None:
        self._set(REG[name], value)

    def gpr(self, n: int) -> int:
        return self._get(GPR[n])

    def set_gpr(self, n: int, value: int) -> None:
        self._set(GPR[n], value)

    @property
    def rip(self) -> int:
        return self._get(X.UC_X86_REG_RIP)

    @rip.setter
    def rip(self, value: int) -> None:
        self._set(X.UC_X86_REG_RIP, value)

    def segment(self, name: str) -> Segment:
        """Read a segment register or table register with its hidden part (from the env blob)."""
        self.env.pull()
        if name in SEG_INDEX:
            return Segment(*self.env.seg(SEG_INDEX[name]))
        sel, base, limit, flags = self.env.seg(_TABLE_INDEX[name])
        if name == "tr" and self._traps is not None:
            limit = self._traps[2]
        return Segment(sel, base, limit, flags)

    def set_segments(self, segs: dict[str, Segment]) -> None:
        """Load segment registers with their hidden parts; recomputes CPL/CS64 like a far transfer."""
        env = self.env
        env.pull()
        for name, s in segs.items():
            limit = s.limit
            if name == "tr" and self._traps is not None:
                self._traps = (self._traps[0], self._traps[1], limit)
                limit = 0
            env.set_seg(SEG_INDEX[name] if name in SEG_INDEX else _TABLE_INDEX[name], s.selector, s.base,
                        limit, s.flags)
        env.recompute_seg_hflags()
        env.push()

    def cpl(self) -> int:
        self.env.pull()
        return self.env.cpl()

    def cpl_cr4(self) -> tuple[int, int]:
        """CPL and CR4 from one pull (what VSM's MBEC checks at every exit)."""
        env = self.env
        env.pull()
        return env.cpl(), env.cr(4)

    def hflags(self) -> int:
        self.env.pull()
        return self.env.hflags()

    def interrupt_shadow(self) -> bool:
        return bool(self.hflags() & ui.HF_INHIBIT_IRQ_MASK)

    def clear_interrupt_shadow(self) -> None:
        env = self.env
        env.pull()
        env.set32(ui.ENV_HFLAGS, env.u32(ui.ENV_HFLAGS) & ~ui.HF_INHIBIT_IRQ_MASK)
        env.push()

    def long_mode_active(self) -> bool:
        return bool(self.hflags() & ui.HF_LMA_MASK)

    def code64(self) -> bool:
        return bool(self.hflags() & ui.HF_CS64_MASK)

    def exit_info_1(self) -> int:
        """SVM exit_info_1 / the pending exception's error code (env->error_code)."""
        self.env.pull()
        return self.env.error_code()

    def ack_exception(self) -> None:
        self.env.pull()
        self.env.ack_exception()
        self.env.push()

    # ------------------------------------------------------------------ exit fast paths
    # One pull of the CPU state per exit, one write-back: each register access through the C API
    # is a ctypes call (~0.4 us), a pull or push ~0.3 us, a field of the pulled image ~0.05 us.
    def exit_rip(self) -> int:
        """Start of an exit: pull the CPU image once and return RIP. Until the handler changes CPU
        state, ``snapshot(pull=False)`` and ``cpuid_exit(pull=False)`` can use this image."""
        return self.env.pull_rip()

    def snapshot(self, pull: bool = True) -> ui.CpuSnapshot:
        """RSP, RIP, CPL/hflags, every segment and table register, CR0/CR3/CR4 and the exit's error
        code, from one pull (``pull=False``: from the last pull; nothing may have changed since)."""
        if pull:
            self.env.pull()
        if self._traps is not None:
            return self.env.snapshot()._replace(tr_limit=self._traps[2])
        return self.env.snapshot()

    def rflags(self) -> int:
        return self._get(X.UC_X86_REG_RFLAGS)

    def paging_regs(self) -> tuple[int, int, int]:
        """CR0, CR3, CR4 (one pull)."""
        env = self.env
        env.pull()
        return env.cr(0), env.cr(3), env.cr(4)

    def cpuid_exit(self, query: Callable[[int, int, int], tuple[int, int, int, int]], length: int = 2,
                   pull: bool = True) -> None:
        """Complete a CPUID exit in one pull and one push: ``query(leaf, subleaf, cr4)`` (pure: it
        must not touch the engine) gives EAX..EDX; RIP advances by ``length``. ``pull=False``: use
        the image of ``exit_rip()`` (nothing may have changed since)."""
        env = self.env
        if pull:
            env.pull()
        a, b, c, d = query(env.gpr(0) & 0xFFFFFFFF, env.gpr(1) & 0xFFFFFFFF, env.cr(4))
        env.set_gpr(0, a)
        env.set_gpr(3, b)
        env.set_gpr(1, c)
        env.set_gpr(2, d)
        env.set_rip(env.rip() + length)
        env.push()

    def commit_transfer(self, cs: tuple[int, int, int, int], ss: tuple[int, int, int, int] | None,
                        rsp: int, rip: int, rflags: int | None, cr2: int | None = None, ack: bool = False) -> None:
        """Load CS (and SS), RSP, RIP, RFLAGS (and CR2) as a far control transfer does (CPL and
        the CS64/CS32/SS32 hflags are recomputed), in one write-back and one RFLAGS write (none
        when ``rflags`` is None: unchanged). ``ack`` also clears Unicorn's stale-exception markers
        (``ack_exception``).

        Applies to the image of the last ``snapshot()``: the CPU state must not have changed since
        (event delivery reads guest memory only between the two)."""
        self.env.push_transfer(cs, ss, rsp, rip, cr2, ack)
        if rflags is not None:
            self._set(X.UC_X86_REG_RFLAGS, rflags)

    # ------------------------------------------------------------------ MSRs
    def msr_read(self, msr: int) -> int:
        """Read an engine MSR. In guest mode QEMU's RDMSR helper would take the (intercepted)
        #VMEXIT longjmp outside the CPU loop and crash, so leave guest mode around the access."""
        with self._host_mode():
            value = self.uc.msr_read(msr)
        if self._traps is not None:
            if msr == MSR.IA32_EFER:
                value |= self._traps[0]
            elif msr == MSR.IA32_SYSENTER_CS:
                value = self._traps[1]
        return value

    def msr_write(self, msr: int, value: int) -> None:
        if self._traps is not None:
            if msr == MSR.IA32_EFER:
                self._traps = (value & _SCE, self._traps[1], self._traps[2])
                value &= ~_SCE
            elif msr == MSR.IA32_SYSENTER_CS:
                self._traps = (self._traps[0], value, self._traps[2])
                value = 0
        with self._host_mode():
            self.uc.msr_write(msr, value)

    # ------------------------------------------------------------------ FPU/SSE state as one block
    def fp_state(self) -> bytes:
        """The x87 registers and control/status/tag words, MXCSR, XMM0-15 with their upper (YMM) lanes
        and XCR0, as an opaque image (one pull). For VSM, where the TLFS shares this state."""
        env = self.env
        env.pull()
        return bytes(env.mem[ui.ENV_FPSTT:ui.ENV_FP_END]) + bytes(env.mem[ui.ENV_XCR0:ui.ENV_XCR0 + 8])

    def set_fp_state(self, image: bytes) -> None:
        """Load an image from ``fp_state`` (one pull, one write-back)."""
        env = self.env
        env.pull()
        n = ui.ENV_FP_END - ui.ENV_FPSTT
        env.mem[ui.ENV_FPSTT:ui.ENV_FP_END] = image[:n]
        env.mem[ui.ENV_XCR0:ui.ENV_XCR0 + 8] = image[n:n + 8]
        env.push()

    # ------------------------------------------------------------------ privilege-change traps
    def set_privilege_traps(self, on: bool) -> None:
        """Make the engine raise an exception where it would change CPL natively without an exit
        (used by VSM's MBEC, docs/vsm.md): with the traps on the engine holds EFER.SCE = 0 (SYSRET
        raises #UD; Unicorn's SYSCALL ignores SCE and the vCPU emulates it), SYSENTER_CS = 0
        (SYSEXIT raises #GP(0); SYSENTER is emulated) and a TR limit of 0 (a far CALL through a call
        gate to an inner privilege level raises #TS reading the new stack from the TSS). IRET has
        its own SVM intercept. ``msr_read``, ``segment`` and ``snapshot`` keep reporting the guest's
        values, ``msr_write``/``set_segments`` update them. A saved context (``uc.context_save``)
        holds the forced values: turn the traps off before saving a context that another one
        replaces."""
        if on == (self._traps is not None):
            return
        if on:
            efer = self.msr_read(MSR.IA32_EFER)
            cs = self.msr_read(MSR.IA32_SYSENTER_CS)
            env = self.env
            env.pull()
            sel, base, limit, flags = env.seg(_TABLE_INDEX["tr"])
            env.set_seg(_TABLE_INDEX["tr"], sel, base, 0, flags)
            env.push()
            self._traps = (efer & _SCE, cs, limit)
            with self._host_mode():
                self.uc.msr_write(MSR.IA32_EFER, efer & ~_SCE)
                self.uc.msr_write(MSR.IA32_SYSENTER_CS, 0)
        else:
            sce, cs, limit = self._traps
            self._traps = None
            with self._host_mode():
                self.uc.msr_write(MSR.IA32_EFER, self.uc.msr_read(MSR.IA32_EFER) | sce)
                self.uc.msr_write(MSR.IA32_SYSENTER_CS, cs)
            env = self.env
            env.pull()
            sel, base, _, flags = env.seg(_TABLE_INDEX["tr"])
            env.set_seg(_TABLE_INDEX["tr"], sel, base, limit, flags)
            env.push()

    @property
    def privilege_traps(self) -> bool:
        return self._traps is not None

    def _host_mode(self) -> _HostMode:
        return _HostMode(self)

    # ------------------------------------------------------------------ intercept control
    def set_intercept(self, code: SvmExit, enabled: bool) -> None:
        bit = intercept_bit(code)
        self.intercept = (self.intercept | bit) if enabled else (self.intercept & ~bit)
        self.env.pull()
        self.env.set64(ui.ENV_INTERCEPT, self.intercept)
        self.env.push()

    def set_intercepts(self, value: int) -> None:
        """Replace the whole general intercept vector (VTL switches carry their own)."""
        self.intercept = value
        self.env.pull()
        self.env.set64(ui.ENV_INTERCEPT, value)
        self.env.push()

    def set_nested_cr3(self, root: int) -> None:
        self.env.pull()
        self.env.set64(ui.ENV_NESTED_CR3, root)
        self.env.push()
        self.flush_tlb()

    def nested_cr3(self) -> int:
        self.env.pull()
        return self.env.u64(ui.ENV_NESTED_CR3)

    # ------------------------------------------------------------------ coherence
    def flush_tlb(self) -> None:
        self.uc.ctl(ucc.UC_CTL_TLB_FLUSH, ucc.UC_CTL_IO_WRITE)

    def flush_tb(self) -> None:
        self.uc.ctl_flush_tb()

    def close(self) -> None:
        for h in self._hooks:
            try:
                self.uc.hook_del(h)
            except UcError:
                pass
        self._hooks.clear()

    # ---- debugger support
    #: x87 physical registers R0..R7 (ST(i) is R[(TOP + i) % 8]) and the other x87/SSE registers
    _FP_PHYS = (X.UC_X86_REG_FP0, X.UC_X86_REG_FP1, X.UC_X86_REG_FP2, X.UC_X86_REG_FP3, X.UC_X86_REG_FP4,
                X.UC_X86_REG_FP5, X.UC_X86_REG_FP6, X.UC_X86_REG_FP7)
    _FPU_REG = {"fctrl": X.UC_X86_REG_FPCW, "fstat": X.UC_X86_REG_FPSW, "ftag": X.UC_X86_REG_FPTAG,
                "fiseg": X.UC_X86_REG_FCS, "fioff": X.UC_X86_REG_FIP, "foseg": X.UC_X86_REG_FDS,
                "fooff": X.UC_X86_REG_FDP, "fop": X.UC_X86_REG_FOP, "mxcsr": X.UC_X86_REG_MXCSR}

    def add_mem_hook(self, cb: Callable[[bool, int, int, int], None], begin: int, end: int, *,
                     read: bool = False, write: bool = False) -> int:
        """Data accesses by guest instructions whose guest-virtual start address lies in [begin, end]:
        ``cb(is_write, va, size, value)`` runs *before* the access. (Used for gdb watchpoints.) A stop
        from ``cb`` takes effect only at the next translation-block start or code hook (the access and
        its instruction complete; ``unicorn_internals.patch_exit_checks``): to stop right after the
        instruction, record the hit and stop from a code hook.
        Accesses the hypervisor makes through GuestMemory are not seen. Remove with ``del_hook``."""
        types = (ucc.UC_HOOK_MEM_READ if read else 0) | (ucc.UC_HOOK_MEM_WRITE if write else 0)
        if not types:
            raise ValueError("add_mem_hook needs read and/or write")
        return self.uc.hook_add(
            types, lambda u, access, addr, size, value, d: cb(access == ucc.UC_MEM_WRITE, addr, size, value),
            None, begin, end)

    def fpu_reg(self, name: str) -> int:
        """x87/SSE state for the debugger: ``st0``..``st7`` (stack order, 80-bit values as ints),
        ``fctrl fstat ftag fiseg fioff foseg fooff fop``, ``xmm0``..``xmm15`` and ``mxcsr``."""
        if name.startswith("st"):
            top = (self.uc.reg_read(X.UC_X86_REG_FPSW) >> 11) & 7
            mant, exp = self.uc.reg_read(self._FP_PHYS[(top + int(name[2:])) & 7])
            return ((exp & 0xFFFF) << 64) | (mant & 0xFFFFFFFFFFFFFFFF)
        if name.startswith("xmm"):
            return self.uc.reg_read(getattr(X, f"UC_X86_REG_XMM{int(name[3:])}"))
        return self.uc.reg_read(self._FPU_REG[name])

    def set_fpu_reg(self, name: str, value: int) -> None:
        if name.startswith("st"):
            top = (self.uc.reg_read(X.UC_X86_REG_FPSW) >> 11) & 7
            self.uc.reg_write(self._FP_PHYS[(top + int(name[2:])) & 7],
                              (value & 0xFFFFFFFFFFFFFFFF, (value >> 64) & 0xFFFF))
        elif name.startswith("xmm"):
            self.uc.reg_write(getattr(X, f"UC_X86_REG_XMM{int(name[3:])}"), value & ((1 << 128) - 1))
        else:
            self.uc.reg_write(self._FPU_REG[name], value)


class _HostMode:
    """Context manager: clear HF_GUEST_MASK for an engine-internal helper call, then restore it."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine

    def __enter__(self) -> None:
        env = self.e.env
        env.pull()
        env.set32(ui.ENV_HFLAGS, env.u32(ui.ENV_HFLAGS) & ~ui.HF_GUEST_MASK)
        env.push()

    def __exit__(self, *exc: object) -> None:
        env = self.e.env
        env.pull()
        if self.e.in_guest_mode:
            env.set32(ui.ENV_HFLAGS, env.u32(ui.ENV_HFLAGS) | ui.HF_GUEST_MASK)
        env.push()


def unicorn_version() -> str:
    return getattr(unicorn, "__version__", "?")


__all__ = ["Engine", "InitialState", "Segment", "HYP_BASE", "LEAF_RWX", "GPR_NAMES", "unicorn_version"]
