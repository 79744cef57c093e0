"""Mode-based execute control (MBEC) for VSM, on an engine that has none (docs/vsm.md, "MBEC").

TLFS 15.9 (Memory Access Protections, MBEC): with MBEC enabled for a VTL, the higher VTL's
protections carry kernel-mode execute (KX, HV_MAP_GPA_KERNEL_EXECUTABLE) and user-mode execute (UX,
HV_MAP_GPA_USER_EXECUTABLE) separately: an instruction fetch at CPL 0-2 needs KX, one at CPL 3 needs
UX. When the VTL runs with CR4.SMEP clear "all execute restrictions are governed by the KMX control"
(TLFS, MBEC interaction with SMEP). AMD nested paging has no such distinction (GMET is a different
thing), so the hypervisor emulates it:

- **Two nested roots per MBEC VTL**: the kernel root (its ordinary root, ``VtlContext.npt``) maps a page
  executable iff KX, the user root (``VtlContext.npt_user``) iff UX; readable/writable the same in
  both. The engine runs on the kernel root unless the VTL is in *split mode* (MBEC on, CR4.SMEP set,
  long mode active) at CPL 3. Legacy protected mode is not split (its hardware task switches change
  CPL with no exit at all): there KX governs both modes, as with SMEP clear.
- **Every CPL change in split mode reaches the hypervisor** before the guest fetches an instruction at
  the new CPL, and the root follows (``sync``):
  * events the hypervisor delivers (exceptions, interrupts, INT n) and SYSCALL/SYSENTER (emulated by
    the vCPU): the ``after_transfer`` hook;
  * IRET: its SVM intercept (which Unicorn honours) - emulated here;
  * SYSRET: the engine holds EFER.SCE = 0, so SYSRET raises #UD - emulated here (SYSCALL ignores SCE
    in Unicorn and is emulated by the vCPU; the guest's EFER.SCE is the shadow's);
  * SYSEXIT (compatibility mode): the engine holds SYSENTER_CS = 0, so it raises #GP(0) - emulated;
  * far CALL through a call gate to an inner level: the engine holds a TR limit of 0, so the stack
    lookup in the TSS raises #TS - emulated (a far JMP or CALL to the same level never reads the TSS);
  * VTL switches, SetVpRegisters and CR0/CR4 writes that change PG or SMEP.
  The transitions are emulated rather than single-stepped: a one-instruction engine run translates
  the *next* block under the root of the old CPL (a false nested fault), and the next normal run
  drops every translated block (Unicorn removes its counting hook with ``tb_flush``).
- **The one transition the engine cannot report** is a far RET (RETF/LRET) to an outer level (CPL 0-2
  to 3): no intercept, no fault to force. Ring-3 code then runs on the kernel root - it may fetch
  KX pages, never more - until the next exit or engine stop, where ``exit_check`` sees the CPL
  disagree with the root, switches roots, drops every translated block (those translated at CPL 3
  meanwhile were checked against KX) and records a security event. The dangerous direction (ring 0
  on the user root, i.e. running UX-only code in kernel mode) has no such gap: every way into CPL < 3
  is trapped.
- **Translated code**: QEMU keys translated blocks by CPL (``hflags``) and checks a block's pages
  against the TLB (flushed by every root switch) whenever it is looked up, so a kernel-mode fetch never
  reuses a block translated at CPL 3 and vice versa; root switches therefore flush the TLB, not the
  translated blocks (only the far-RET recovery does).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..x86 import decode as dec
from ..x86.arch import CR4, EFER, RFLAGS, Vector
from ..x86.paging import (
    FETCH as _FETCH,
)
from ..x86.paging import (
    FETCH_USER as _FETCH_USER,
)
from ..x86.paging import (
    IMPLICIT,
    IMPLICIT_WRITE,
    Access,
    NonCanonical,
    PageFault,
    PagingMode,
    Translator,
)
from ..x86.svm import SvmExit
from .msrs import GuestGP

if TYPE_CHECKING:
    from .vcpu import Vcpu
    from .vsm import Vsm

M64 = 0xFFFFFFFFFFFFFFFF
_SMEP, _LMA, _SCE = int(CR4.SMEP), int(EFER.LMA), int(EFER.SCE)
_NT, _IF, _IOPL = int(RFLAGS.NT), int(RFLAGS.IF), 0x3000
#: RFLAGS bits IRET loads at any CPL: CF PF AF ZF SF TF DF OF NT RF AC ID (SDM IRET; QEMU eflags_mask)
_IRET_MASK = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800 | 0x4000 | 0x10000 | 0x40000 | 0x200000
#: SYSRET in long mode: RFLAGS <- R11 & 3C7FD7h | 2 (AMD APM vol. 3, SYSRET)
_SYSRET_FLAGS = 0x3C7FD7
# descriptor flags as QEMU's SegmentCache keeps them (high dword bits 8-23)
_S, _P, _CODE, _CONF, _W, _L, _DB = 1 << 12, 1 << 15, 1 << 11, 1 << 10, 1 << 9, 1 << 21, 1 << 22
_CS64_USER = 0x00A0FB00            # G L P DPL3 S code R A
_CS32_USER = 0x00C0FB00            # G D P DPL3 S code R A
_SS_USER = 0x00C0F300              # G B P DPL3 S data W A
_NULL_SS_FLAGS = 0x00C09300        # QEMU's flags for a NULL SS loaded by IRET in long mode (DPL added)
_UD, _GP, _TS, _NP, _SS, _PF = (int(v) for v in (Vector.UD, Vector.GP, Vector.TS, Vector.NP, Vector.SS,
                                                 Vector.PF))


#: legacy prefixes and REX: a #UD at an instruction starting with one of these is decoded in full
_PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3, *range(0x40, 0x50)))


class _Fault(Exception):
    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None) -> None:
        super().__init__(vector)
        self.vector, self.error_code, self.cr2 = vector, error_code, cr2


class Mbec:
    """The MBEC state of the running VTL: which root the engine uses, whether the traps are armed."""

    def __init__(self, vsm: Vsm) -> None:
        self.vsm = vsm
        self.vcpu = vsm.vcpu
        self.engine = vsm.engine
        #: the running VTL is in split mode: traps armed, root chosen by CPL
        self.split = False
        #: the user-mode root is installed
        self.user_root = False
        #: statistics: root switches, transitions emulated, far RETs caught after the fact
        self.root_switches = 0
        self.emulated: dict[str, int] = {"iret": 0, "sysret": 0, "sysexit": 0, "call_gate": 0}
        self.missed = 0

    # ================================================================== root selection
    def sync(self, expected: bool = True) -> None:
        """Put the engine on the root the running VTL needs at its current CPL, arming or disarming the
        traps when split mode changes. ``expected``: the hypervisor itself just changed CPL (or the
        mode); otherwise a disagreement is a CPL change the engine made without an exit (far RET)."""
        vsm = self.vsm
        t = vsm.active
        split, cpl = False, 0
        if t.mbec and t.npt_user is not None:
            cpl, cr4 = self.engine.cpl_cr4()
            split = bool(cr4 & _SMEP) and bool(self.vcpu.msr_state.efer & _LMA)
        if split != self.split:
            self._arm(split)
        user = split and cpl == 3
        if user != self.user_root:
            if not expected:
                self.missed += 1
                self.engine.flush_tb()     # blocks translated at CPL 3 on the kernel root: drop them
                self.vcpu.security_event(
                    "mbec_missed_transition",
                    f"MBEC: CPL {cpl} on the {'kernel' if user else 'user'}-mode root (a far RET changes CPL "
                    f"without an exit) in VTL{vsm.active_vtl}: root switched, translated code dropped",
                    vtl=vsm.active_vtl, cpl=cpl)
            self.engine.set_nested_cr3(t.npt_user.root if user else t.npt.root)
            self.user_root = user
            self.root_switches += 1

    def _arm(self, on: bool) -> None:
        eng, hooks = self.engine, self.vcpu.hooks
        eng.set_privilege_traps(on)
        eng.set_intercept(SvmExit.IRET, on)
        self.split = on
        hooks.after_transfer = self._after_transfer if on else None
        hooks.exit_check = self._exit_check if on else None
        hooks.exception_filter = self._exception_filter if on else None

    def leave(self) -> None:
        """Before the running VTL's context is saved or another one made live: the engine back to the
        guest's own values (no trap state in a saved context). The caller installs a root."""
        if self.split:
            self._arm(False)
        self.user_root = False

    def enter(self) -> None:
        """After a VTL's context was made live on its kernel root."""
        self.user_root = self.engine.nested_cr3() != self.vsm.active.npt.root
        self.sync(expected=True)

    def _after_transfer(self) -> None:
        self.sync(expected=True)

    def _exit_check(self) -> None:
        self.sync(expected=False)

    # ================================================================== the trapped transitions
    def on_iret(self, vcpu: Vcpu) -> bool:
        """The IRET intercept: emulate the IRET, then follow the new CPL."""
        self._run(vcpu, self._iret, "iret", ack=False)
        return True

    def _exception_filter(self, vcpu: Vcpu, vector: int) -> bool:
        """#UD from SYSRET, #GP from SYSEXIT, #TS from a call gate: the traps' exceptions."""
        if vector == _UD:
            head = self._peek(vcpu, 3)
            if head[:2] == b"\x0f\x07":
                wide = False                                   # SYSRET (32-bit operand)
            elif len(head) == 3 and head[0] & 0xF0 == 0x40 and head[1:] == b"\x0f\x07":
                wide = bool(head[0] & 8)                       # REX.W: SYSRETQ
            elif head[:1] and head[0] in _PREFIXES:
                ins = self._insn(vcpu)                         # a prefixed SYSRET, or something else
                if ins is None or ins.mnemonic not in (dec.Mnemonic.SYSRET, dec.Mnemonic.SYSRETQ):
                    return False
                wide = ins.mnemonic == dec.Mnemonic.SYSRETQ
            else:
                return False                                   # UD2 and every other #UD
            self._run(vcpu, lambda v: self._sysret(v, wide), "sysret")
            return True
        if vector == _GP:
            if self._peek(vcpu, 2) != b"\x0f\x35":         # SYSEXIT (no REX outside 64-bit code)
                return False
            self._run(vcpu, lambda v: self._sysexit(v), "sysexit")
            return True
        if vector == _TS:
            s = self.engine.snapshot(pull=False)
            if s.cpl != 3 or s.error_code != s.tr_sel & 0xFFFC:
                return False
            ins = self._locate_far_call(vcpu, s)
            if ins is None:
                self.vcpu.security_event(
                    "mbec_call_gate", f"MBEC: #TS from a call gate in ring 3 at an imprecise RIP {s.rip:#x} "
                    "that cannot be traced to the far CALL: the exception is delivered, no privilege change",
                    vtl=self.vsm.active_vtl)
                return False
            return self._run(vcpu, lambda v: self._call_gate(v, ins), "call_gate")
        return False

    def _locate_far_call(self, vcpu: Vcpu, s):
        """The far CALL that raised the call-gate trap. QEMU 5.0 raises this #TS (``get_rsp_from_tss``)
        without restoring the instruction state, so RIP is where the translated block began (or where
        it last stored RIP). A far CALL ends a block, so it is the first far CALL in the straight-line
        code from there; any other control transfer on the way means RIP is older than that (a chained
        block) and the instruction cannot be found."""
        tlb = self._translator(vcpu, s)
        rip = s.rip
        bitness = 64 if s.code64 else 32 if s.cs_flags & _DB else 16
        for _ in range(512):
            va = rip if s.code64 else (s.cs_base + rip) & 0xFFFFFFFF
            try:
                first = min(15, 0x1000 - (va & 0xFFF))
                code = tlb.read(va, first, _FETCH_USER)
                if first < 15:
                    try:
                        code += tlb.read(va + first, 15 - first, _FETCH_USER)
                    except PageFault:
                        pass
            except (PageFault, NonCanonical):
                return None
            ins = dec.decode(code, rip, bitness)
            if ins is None:
                return None
            if ins.mnemonic == dec.Mnemonic.CALL and ins.op0_kind in (
                    dec.OpKind.FAR_BRANCH16, dec.OpKind.FAR_BRANCH32, dec.OpKind.MEMORY) and (ins.is_call_far or ins.is_call_far_indirect):
                return ins
            if ins.flow_control != dec.ix.FlowControl.NEXT:
                return None
            rip = (rip + ins.len) & M64
        return None

    def _peek(self, vcpu: Vcpu, n: int, s=None, tlb: Translator | None = None) -> bytes:
        """Up to ``n`` instruction bytes at RIP, continuing into the next page (an instruction may
        straddle it); fewer when that page or RIP's own faults."""
        if s is None:
            s = self.engine.snapshot(pull=False)
        va = s.rip if s.code64 else (s.cs_base + s.rip) & 0xFFFFFFFF
        first = min(n, 0x1000 - (va & 0xFFF))
        tlb = tlb or self._translator(vcpu, s)
        acc = _FETCH_USER if s.cpl == 3 else _FETCH
        try:
            code = tlb.read(va, first, acc)
        except (PageFault, NonCanonical):
            return b""
        if first < n:
            try:
                code += tlb.read((va + first) & (M64 if s.code64 else 0xFFFFFFFF), n - first, acc)
            except (PageFault, NonCanonical):
                pass
        return code

    @staticmethod
    def _insn(vcpu: Vcpu):
        from .vcpu import GuestFault
        try:
            return vcpu.fetch_insn()
        except GuestFault:
            return None

    def _run(self, vcpu: Vcpu, emulate, name: str, ack: bool = True) -> bool:
        """Emulate one transition: a fault becomes that exception at the instruction; success commits
        the new state and moves the engine to the root of the new CPL."""
        from .vcpu import GuestFault
        try:
            done = emulate(vcpu)
        except _Fault as f:
            if ack:
                self.engine.ack_exception()
            raise GuestFault(f.vector, f.error_code, f.cr2) from None
        if done is False:
            return False
        if ack:
            self.engine.ack_exception()
        self.emulated[name] += 1
        self.sync(expected=True)
        if vcpu.hooks.trace:
            vcpu.hooks.trace("mbec_transition", {"insn": name, "cpl": self.engine.cpl(),
                                                 "user_root": self.user_root})
        return True

    # -- helpers
    def _translator(self, vcpu: Vcpu, s) -> Translator:
        return Translator(vcpu.mem, PagingMode(s.cr0, s.cr3, s.cr4, vcpu.msr_state.efer))

    @staticmethod
    def _raw_desc(tlb: Translator, s, sel: int) -> tuple[int, int] | None:
        """(low, high) dwords of the descriptor ``sel`` selects, None beyond the table limit."""
        base, limit = (s.ldt_base, s.ldt_limit) if sel & 4 else (s.gdt_base, s.gdt_limit)
        index = sel & 0xFFF8
        if index + 7 > limit:
            return None
        try:
            return struct.unpack("<II", tlb.read(base + index, 8, IMPLICIT))
        except PageFault as pf:
            raise _Fault(_PF, pf.error_code, pf.va) from None
        except NonCanonical:
            raise _Fault(_GP, 0) from None

    @staticmethod
    def _cache(lo: int, hi: int) -> tuple[int, int, int]:
        """base, limit (expanded by G), flags of a segment descriptor."""
        limit = (lo & 0xFFFF) | (hi & 0xF0000)
        flags = hi & 0x00F0FF00
        if flags & (1 << 23):
            limit = (limit << 12) | 0xFFF
        return (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000), limit, flags

    # -- IRET (long mode: 64-bit or compatibility code, 16/32/64-bit operand size)
    def _iret(self, vcpu: Vcpu) -> None:
        eng = self.engine
        s = eng.snapshot()
        rflags = eng.rflags()
        tlb = self._translator(vcpu, s)
        head = self._peek(vcpu, 2, s, tlb)
        if head[:1] == b"\xcf":
            size = 4                                          # IRETD: 32-bit operand, the default
        elif head == b"\x48\xcf":
            size = 8                                          # IRETQ
        elif head == b"\x66\xcf":
            size = 2
        else:
            ins = vcpu.fetch_insn(s)
            size = {dec.Mnemonic.IRETQ: 8, dec.Mnemonic.IRETD: 4}.get(ins.mnemonic, 2)
        if rflags & _NT:
            raise _Fault(_GP, 0)                      # no task return in long mode
        cpl = s.cpl
        acc = Access(user=cpl == 3)
        if s.code64:
            mask, ss_base = M64, 0
        else:
            mask, ss_base = (0xFFFFFFFF if s.ss_flags & _DB else 0xFFFF), s.ss_base
        sp = s.rsp & mask

        def pop(n: int) -> list[int]:
            """``n`` stack slots, one read when they do not wrap the stack pointer."""
            nonlocal sp
            va = (ss_base + sp) & (M64 if s.code64 else 0xFFFFFFFF)
            try:
                if sp + n * size <= mask:
                    raw = tlb.read(va, n * size, acc)
                else:
                    raw = b"".join(tlb.read((ss_base + ((sp + i * size) & mask)) & M64, size, acc)
                                   for i in range(n))
            except PageFault as pf:
                raise _Fault(_PF, pf.error_code, pf.va) from None
            except NonCanonical:
                raise _Fault(_SS, 0) from None
            sp = (sp + n * size) & mask
            return [int.from_bytes(raw[i * size:(i + 1) * size], "little") for i in range(n)]

        new_rip, new_cs, new_flags = pop(3)
        new_cs &= 0xFFFF
        sel = new_cs & 0xFFFC
        if sel == 0:
            raise _Fault(_GP, 0)
        raw = self._raw_desc(tlb, s, new_cs)
        if raw is None:
            raise _Fault(_GP, sel)
        cs_base, cs_limit, cs_flags = self._cache(*raw)
        if not cs_flags & _S or not cs_flags & _CODE:
            raise _Fault(_GP, sel)
        rpl = new_cs & 3
        if rpl < cpl:
            raise _Fault(_GP, sel)
        dpl = (cs_flags >> 13) & 3
        if (cs_flags & _CONF and dpl > rpl) or (not cs_flags & _CONF and dpl != rpl):
            raise _Fault(_GP, sel)
        if not cs_flags & _P:
            raise _Fault(_NP, sel)
        to64 = bool(cs_flags & _L)
        if to64 and cs_flags & _DB:
            raise _Fault(_GP, sel)
        new_rip &= {2: 0xFFFF, 4: 0xFFFFFFFF}.get(size, M64)
        if to64 and (new_rip >> 47) not in (0, 0x1FFFF):
            raise _Fault(_GP, 0)
        cs = (new_cs, cs_base, cs_limit, cs_flags)
        ss = None
        rsp = s.rsp
        if s.code64 or rpl != cpl:
            new_rsp, new_ss = pop(2)
            new_ss &= 0xFFFF
            if new_ss & 0xFFFC == 0:
                if not to64 or rpl == 3:
                    raise _Fault(_GP, 0)
                ss = (new_ss, 0, 0xFFFFFFFF, _NULL_SS_FLAGS | (rpl << 13))
            else:
                ss_sel = new_ss & 0xFFFC
                if new_ss & 3 != rpl:
                    raise _Fault(_GP, ss_sel)
                raw = self._raw_desc(tlb, s, new_ss)
                if raw is None:
                    raise _Fault(_GP, ss_sel)
                ss_base_new, ss_limit, ss_flags = self._cache(*raw)
                if not ss_flags & _S or ss_flags & _CODE or not ss_flags & _W or (ss_flags >> 13) & 3 != rpl:
                    raise _Fault(_GP, ss_sel)
                if not ss_flags & _P:
                    raise _Fault(_SS, ss_sel)
                ss = (new_ss, ss_base_new, ss_limit, ss_flags)
            if to64:
                rsp = new_rsp
            elif ss[3] & _DB:
                rsp = new_rsp & 0xFFFFFFFF
            else:
                rsp = (s.rsp & ~0xFFFF) | (new_rsp & 0xFFFF)
        else:
            rsp = sp if mask == M64 else (s.rsp & ~mask) | sp
        fmask = _IRET_MASK
        if cpl == 0:
            fmask |= _IOPL
        if cpl <= (rflags >> 12) & 3:
            fmask |= _IF
        if size == 2:
            fmask &= 0xFFFF
        flags = (rflags & ~fmask) | (new_flags & fmask) | 2
        eng.commit_transfer(cs, ss, rsp, new_rip, flags)
        if rpl > cpl:
            # data segments the new, less privileged level may not use become NULL (QEMU validate_seg)
            from ..engine.engine import Segment
            nulls = {}
            for name, (sel_, flags_) in (("es", (s.es_sel, s.es_flags)), ("ds", (s.ds_sel, s.ds_flags)),
                                         ("fs", (s.fs_sel, s.fs_flags)), ("gs", (s.gs_sel, s.gs_flags))):
                if name in ("fs", "gs") and sel_ & 0xFFFC == 0:
                    continue
                if (not flags_ & _CODE or not flags_ & _CONF) and (flags_ >> 13) & 3 < rpl:
                    nulls[name] = Segment(0, 0, 0, 0)
            if nulls:
                eng.set_segments(nulls)

    # -- SYSRET (long mode)
    def _sysret(self, vcpu: Vcpu, wide: bool) -> None:
        eng = self.engine
        s = eng.snapshot()
        if not vcpu.msr_state.efer & _SCE:
            raise _Fault(_UD)
        if s.cpl != 0:
            raise _Fault(_GP, 0)
        sel = (vcpu.msr_state.star >> 48) & 0xFFFF
        rcx, r11 = eng.reg("rcx"), eng.reg("r11")
        if wide:
            cs, rip = (((sel + 16) & 0xFFFF) | 3, 0, 0xFFFFFFFF, _CS64_USER), rcx
        else:
            cs, rip = (sel | 3, 0, 0xFFFFFFFF, _CS32_USER), rcx & 0xFFFFFFFF
        ss = (((sel + 8) & 0xFFFF) | 3, 0, 0xFFFFFFFF, _SS_USER)
        eng.commit_transfer(cs, ss, s.rsp, rip, (r11 & _SYSRET_FLAGS) | 2)

    # -- SYSEXIT (compatibility mode; AMD makes it #UD in 64-bit code)
    def _sysexit(self, vcpu: Vcpu) -> None:
        eng = self.engine
        s = eng.snapshot()
        base = vcpu.msr_state.sysenter_cs
        if base & 0xFFFC == 0 or s.cpl != 0:
            raise _Fault(_GP, 0)
        cs = (((base + 16) & 0xFFFC) | 3, 0, 0xFFFFFFFF, _CS32_USER)
        ss = (((base + 24) & 0xFFFC) | 3, 0, 0xFFFFFFFF, _SS_USER)
        eng.commit_transfer(cs, ss, eng.reg("rcx") & 0xFFFFFFFF, eng.reg("rdx") & 0xFFFFFFFF, None)

    # -- far CALL through a 64-bit call gate to an inner privilege level
    def _call_gate(self, vcpu: Vcpu, ins) -> bool:
        """QEMU's long-mode call-gate path with the TSS stack lookup done here. ``ins`` is the far CALL
        (decoded at its own address); the instructions before it in its block have run. Caveat: if
        one of them changed the arithmetic flags, the engine may hold stale ones (QEMU's lazy flags
        were not saved with this exception); they are committed as read."""
        eng = self.engine
        s = eng.snapshot()
        if ins.op0_kind == dec.OpKind.MEMORY:
            osize = {4: 2, 6: 4, 10: 8}.get(dec.ix.MemorySizeInfo(ins.memory_size).size, 4)
            try:
                far = vcpu._read_mem_operand(ins, osize + 2)
            except GuestGP as gp:
                raise _Fault(_GP, gp.error_code) from None
            new_cs = (far >> (8 * osize)) & 0xFFFF
        else:
            new_cs = ins.far_branch_selector
        next_rip = (ins.ip + ins.len) & M64
        cpl = s.cpl
        tlb = self._translator(vcpu, s)
        sel = new_cs & 0xFFFC
        if sel == 0:
            raise _Fault(_GP, 0)
        raw = self._raw_desc(tlb, s, new_cs)
        if raw is None:
            raise _Fault(_GP, sel)
        lo, hi = raw
        if hi & _S:
            return False                      # a direct far call never reads the TSS: a real #TS
        if (hi >> 8) & 0x1F != 12:
            raise _Fault(_GP, sel)
        gdpl = (hi >> 13) & 3
        if gdpl < cpl or gdpl < (new_cs & 3):
            raise _Fault(_GP, sel)
        if not hi & _P:
            raise _Fault(_NP, sel)
        target = lo >> 16
        offset = (hi & 0xFFFF0000) | (lo & 0xFFFF)
        upper = self._raw_desc(tlb, s, new_cs + 8)
        if upper is None or (upper[1] >> 8) & 0x1F:
            raise _Fault(_GP, sel)
        offset |= upper[0] << 32
        if target & 0xFFFC == 0:
            raise _Fault(_GP, 0)
        traw = self._raw_desc(tlb, s, target)
        if traw is None:
            raise _Fault(_GP, target & 0xFFFC)
        t_base, t_limit, t_flags = self._cache(*traw)
        tdpl = (t_flags >> 13) & 3
        if not t_flags & _S or not t_flags & _CODE or tdpl > cpl or not t_flags & _L or t_flags & _DB:
            raise _Fault(_GP, target & 0xFFFC)
        if not t_flags & _P:
            raise _Fault(_NP, target & 0xFFFC)
        if t_flags & _CONF or tdpl == cpl:
            return False                      # same level: no stack switch, no TSS read
        index = 8 * tdpl + 4
        if index + 7 > s.tr_limit:            # the guest's TR limit (the engine holds 0)
            raise _Fault(_TS, s.tr_sel & 0xFFFC)
        try:
            new_rsp = int.from_bytes(tlb.read(s.tr_base + index, 8, IMPLICIT), "little")
            frame = struct.pack("<4Q", next_rip, s.cs_sel, s.rsp, s.ss_sel)   # lowest address first
            new_rsp = (new_rsp - len(frame)) & M64
            tlb.push(new_rsp, frame, 8, IMPLICIT_WRITE)
        except PageFault as pf:
            raise _Fault(_PF, pf.error_code, pf.va) from None
        except NonCanonical:
            raise _Fault(_SS, 0) from None
        eng.commit_transfer(((target & 0xFFFC) | tdpl, t_base, t_limit, t_flags), (tdpl, 0, 0, tdpl << 13),
                            new_rsp, offset, None)
        return True
