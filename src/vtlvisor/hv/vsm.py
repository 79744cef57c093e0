"""Virtual Secure Mode: Virtual Trust Levels with private CPU state, per-VTL memory protections,
secure intercepts, VTL call/return and the VSM hypercalls, with the Hyper-V TLFS ABI (chapter 15).

How a VTL maps onto the engine (docs/vsm.md):
- Private state: the engine's whole CPU state (a Unicorn context: RIP, RSP, RFLAGS, CRs, EFER,
  segments, descriptor tables, SYSCALL/SYSENTER MSRs, PAT, DR6/DR7...) plus the hypervisor's per-VTL
  shadows (MSR state, synthetic MSRs incl. GUEST_OS_ID, SynIC, VP assist page, NPIEP, the TPR). A switch
  saves the running VTL's context, restores the target's and copies the shared state across (TLFS
  15.11.2: RAX..R15 but RSP, CR2, DR0-DR3, x87/SSE/AVX and XCR0, MTRRs and MISC_ENABLE).
- Protections: one nested page table root per VTL. The root of VTL n carries the access mask the
  higher VTL set for each page (R -> present, W -> writable, KX -> executable); a violation is a
  nested page fault that becomes a GpaIntercept message to the higher VTL. With MBEC a second,
  user-mode root (executable = UX) is used at CPL 3 (hv/mbec.py).
- Intercepts: CR0/CR4 writes, MSR accesses and descriptor-table writes of a lower VTL that the
  higher VTL asked for (CrInterceptControl) are turned into intercept messages in the higher VTL's
  SynIC message page (SINT0 slot), with entry reason INTERCEPT in its VP assist page, and a switch.
  The intercepted instruction is not completed: the higher VTL skips it (sets RIP), emulates it
  (SetVpRegisters) or injects an exception (PendingEvent0), then returns with VtlReturn.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..abi.hyperv import (
    HV_MESSAGE_SIZE,
    HV_PARTITION_ID_SELF,
    HV_VP_INDEX_SELF,
    HV_VTL_RETURN_INPUT_FAST,
    VP_ASSIST_ENTRY_REASON,
    VP_ASSIST_RETURN_RAX,
    VSM_CAP_MBEC_VTL_MASK_SHIFT,
    VSM_PARTITION_STATUS_MAX_VTL_SHIFT,
    VSM_PARTITION_STATUS_MBEC_SHIFT,
    VSM_VP_STATUS_ACTIVE_MBEC,
    VSM_VP_STATUS_ENABLED_SHIFT,
    HvCallCode,
    HvCrInterceptControl,
    HvEnablePartitionVtlFlags,
    HvInputVtl,
    HvInterceptAccessType,
    HvMapGpaFlags,
    HvMessageType,
    HvNpiepConfig,
    HvRegisterName,
    HvStatus,
    HvTranslateGvaFlags,
    HvTranslateGvaResult,
    HvVsmPartitionConfig,
    HvVsmVpSecureVtlConfig,
    HvVtlEntryReason,
    attributes_from_flags,
    exec_state,
    flags_from_attributes,
    hv_message,
    intercept_header,
    segment_register,
)
from ..engine.engine import Segment
from ..engine.npt import LEAF_RWX, NX, NestedPageTable
from ..memory import AccessDenied, ProtectedView
from ..x86.arch import CR0, CR4, EFER, MSR, Vector, canonical
from ..x86.events import Event, EventKind
from ..x86.paging import Access, NonCanonical, PageFault, walk
from ..x86.svm import SvmExit, intercept_bit
from . import contexts
from .hyperv import VTL_CALL_OFFSET, VTL_RETURN_OFFSET, HvVtlMsrs, HypercallError, HypercallInput, HyperV
from .mbec import Mbec
from .msrs import GuestGP, InterceptPending, MsrState
from .stop import StopReason

if TYPE_CHECKING:
    from .partition import Partition
    from .vcpu import Vcpu

log = logging.getLogger(__name__)

MAX_VTLS = 16            # the data model (TLFS: up to 16 VTLs)
MAX_ENABLED_VTL = 2      # what this hypervisor lets a guest enable
MASK64 = (1 << 64) - 1
ALL_ACCESS = 0xF
#: registers shared by all VTLs (TLFS 15.11.2 "Shared State"); the x87/SSE/AVX state and XCR0 travel as
#: one engine image (``Engine.fp_state``)
SHARED_REGS = ("rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
               "r14", "r15", "cr2", "dr0", "dr1", "dr2", "dr3")
_SEG_REGS = {
    HvRegisterName.HvX64RegisterEs: "es", HvRegisterName.HvX64RegisterCs: "cs",
    HvRegisterName.HvX64RegisterSs: "ss", HvRegisterName.HvX64RegisterDs: "ds",
    HvRegisterName.HvX64RegisterFs: "fs", HvRegisterName.HvX64RegisterGs: "gs",
    HvRegisterName.HvX64RegisterLdtr: "ldtr", HvRegisterName.HvX64RegisterTr: "tr",
}
_GPR_REGS = {HvRegisterName.HvX64RegisterRax + i: n for i, n in enumerate(
    ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
     "r15"))}
_GPR_REGS.update({HvRegisterName.HvX64RegisterRip: "rip", HvRegisterName.HvX64RegisterRflags: "rflags",
                  HvRegisterName.HvX64RegisterCr2: "cr2", HvRegisterName.HvX64RegisterCr3: "cr3",
                  HvRegisterName.HvX64RegisterDr7: "dr7"})
_MSR_REGS = {
    HvRegisterName.HvX64RegisterEfer: MSR.IA32_EFER, HvRegisterName.HvX64RegisterKernelGsBase: MSR.IA32_KERNEL_GS_BASE,
    HvRegisterName.HvX64RegisterApicBase: MSR.IA32_APIC_BASE, HvRegisterName.HvX64RegisterPat: MSR.IA32_PAT,
    HvRegisterName.HvX64RegisterSysenterCs: MSR.IA32_SYSENTER_CS,
    HvRegisterName.HvX64RegisterSysenterEip: MSR.IA32_SYSENTER_EIP,
    HvRegisterName.HvX64RegisterSysenterEsp: MSR.IA32_SYSENTER_ESP, HvRegisterName.HvX64RegisterStar: MSR.IA32_STAR,
    HvRegisterName.HvX64RegisterLstar: MSR.IA32_LSTAR, HvRegisterName.HvX64RegisterCstar: MSR.IA32_CSTAR,
    HvRegisterName.HvX64RegisterSfmask: MSR.IA32_FMASK,
}
#: MSR write -> the CrInterceptControl bit that intercepts it (TLFS 15.11.3)
MSR_WRITE_INTERCEPT = {
    MSR.IA32_MISC_ENABLE: HvCrInterceptControl.IA32MiscEnableWrite,
    MSR.IA32_LSTAR: HvCrInterceptControl.MsrLstarWrite, MSR.IA32_STAR: HvCrInterceptControl.MsrStarWrite,
    MSR.IA32_CSTAR: HvCrInterceptControl.MsrCstarWrite, MSR.IA32_APIC_BASE: HvCrInterceptControl.ApicBaseMsrWrite,
    MSR.IA32_EFER: HvCrInterceptControl.MsrEferWrite,
    MSR.IA32_SYSENTER_CS: HvCrInterceptControl.MsrSysenterCsWrite,
    MSR.IA32_SYSENTER_EIP: HvCrInterceptControl.MsrSysenterEipWrite,
    MSR.IA32_SYSENTER_ESP: HvCrInterceptControl.MsrSysenterEspWrite,
    MSR.IA32_FMASK: HvCrInterceptControl.MsrSfmaskWrite, MSR.IA32_TSC_AUX: HvCrInterceptControl.MsrTscAuxWrite,
}
MSR_READ_INTERCEPT = {
    MSR.IA32_MISC_ENABLE: HvCrInterceptControl.IA32MiscEnableRead,
    MSR.IA32_LSTAR: HvCrInterceptControl.MsrLstarRead, MSR.IA32_STAR: HvCrInterceptControl.MsrStarRead,
    MSR.IA32_CSTAR: HvCrInterceptControl.MsrCstarRead, MSR.IA32_APIC_BASE: HvCrInterceptControl.ApicBaseMsrRead,
    MSR.IA32_EFER: HvCrInterceptControl.MsrEferRead,
}
#: descriptor-table write exits -> (intercept bit, register name)
DT_WRITE_INTERCEPT = {
    SvmExit.GDTR_WRITE: (HvCrInterceptControl.GdtrWrite, HvRegisterName.HvX64RegisterGdtr),
    SvmExit.IDTR_WRITE: (HvCrInterceptControl.IdtrWrite, HvRegisterName.HvX64RegisterIdtr),
    SvmExit.LDTR_WRITE: (HvCrInterceptControl.LdtrWrite, HvRegisterName.HvX64RegisterLdtr),
    SvmExit.TR_WRITE: (HvCrInterceptControl.TrWrite, HvRegisterName.HvX64RegisterTr),
}
#: the same table keyed by register name, and as (control bit, SVM intercept bit) pairs
_DT_WRITE_BY_NAME = {name: bit for bit, name in DT_WRITE_INTERCEPT.values()}
_DT_WRITE_EXIT_BITS = tuple((int(bit), intercept_bit(code)) for code, (bit, _) in DT_WRITE_INTERCEPT.items())
_DT_WRITE_BITS = sum(bit for bit, _ in _DT_WRITE_EXIT_BITS)
_IRET_INTERCEPT = intercept_bit(SvmExit.IRET)
NPIEP_BIT = {SvmExit.GDTR_READ: HvNpiepConfig.PreventSgdt, SvmExit.IDTR_READ: HvNpiepConfig.PreventSidt,
             SvmExit.LDTR_READ: HvNpiepConfig.PreventSldt, SvmExit.TR_READ: HvNpiepConfig.PreventStr}


@dataclass
class VtlContext:
    vtl: int
    enabled: bool = False
    ctx: object | None = None              # the engine context while this VTL is not running
    msr_state: MsrState = field(default_factory=MsrState)
    hv_msrs: HvVtlMsrs = field(default_factory=HvVtlMsrs)
    npt: NestedPageTable | None = None
    #: MBEC: the user-mode root (executable = UX); ``npt`` is then the kernel-mode root (executable = KX)
    npt_user: NestedPageTable | None = None
    #: protections this VTL's root carries, set by higher VTLs: gpn -> HvMapGpaFlags (absent = default)
    protections: dict[int, int] = field(default_factory=dict)
    default_mask: int = ALL_ACCESS
    #: what this VTL, as the higher VTL, intercepts in lower VTLs
    cr_intercept_control: int = 0
    cr0_mask: int = 0
    cr4_mask: int = 0
    misc_enable_mask: int = 0
    partition_config: int = 0
    #: HvRegisterPendingEvent0 to inject when this VTL next runs
    pending_event: int = 0
    #: the local APIC's TPR (CR8 << 4) of this VTL while it is not running: TLFS 15.11.1 lists the local
    #: APIC registers, CR8/TPR included, as private (the rest of the one LAPIC is VTL0's, see docs/vsm.md)
    tpr: int = 0
    #: MBEC governs this VTL's execute protections (a higher VTL with the partition flag set
    #: MbecEnabled in its HvRegisterVsmVpSecureConfigVtl<n> for it)
    mbec: bool = False
    #: HvCallEnablePartitionVtl enabled this VTL with EnableMbec: it may use MBEC on lower VTLs
    partition_mbec: bool = False
    #: this VTL's HvRegisterVsmVpSecureConfigVtl<n> instances, one per lower VTL n
    secure_config: dict[int, int] = field(default_factory=dict)


def map_flags_valid(flags: int, mbec: bool) -> bool:
    """TLFS/OpenHCL rules: write or execute needs read; without MBEC kernel and user execute go together.
    With MBEC every combination is accepted; the TLFS leaves KX without UX undefined (OpenHCL refuses
    it): here it means what it says, kernel-mode execute only."""
    if flags & ~ALL_ACCESS:
        return False
    if flags and not flags & HvMapGpaFlags.HV_MAP_GPA_READABLE:
        return False
    kx = bool(flags & HvMapGpaFlags.HV_MAP_GPA_KERNEL_EXECUTABLE)
    ux = bool(flags & HvMapGpaFlags.HV_MAP_GPA_USER_EXECUTABLE)
    return mbec or kx == ux


_KX, _UX = int(HvMapGpaFlags.HV_MAP_GPA_KERNEL_EXECUTABLE), int(HvMapGpaFlags.HV_MAP_GPA_USER_EXECUTABLE)
_SMEP, _PG = int(CR4.SMEP), int(CR0.PG)


def npt_entry(gpa: int, flags: int, user: bool = False) -> int:
    """The NPT leaf for a page with protection ``flags``: in the kernel-mode root (and without MBEC,
    where the TLFS says KX governs both modes) executable iff KX, in the user-mode root iff UX."""
    if not flags & HvMapGpaFlags.HV_MAP_GPA_READABLE:
        return 0
    e = (gpa & ~0xFFF) | (LEAF_RWX & ~2)            # present, user, accessed, dirty
    if flags & HvMapGpaFlags.HV_MAP_GPA_WRITABLE:
        e |= 2
    if not flags & (_UX if user else _KX):
        e |= NX
    return e


class Vsm:
    def __init__(self, partition: Partition) -> None:
        self.p = partition
        self.vcpu = partition.vcpu
        self.engine = partition.engine
        self.vtls = [VtlContext(i) for i in range(MAX_VTLS)]
        self.vtls[0].enabled = True
        self.vtls[0].npt = partition.npt
        self.active_vtl = 0
        self.partition_enabled: set[int] = {0}
        self.hv = HyperV(self)
        self.switches = 0
        self.hv.handlers.update({
            HvCallCode.HvCallEnablePartitionVtl: self._hc_enable_partition_vtl,
            HvCallCode.HvCallEnableVpVtl: self._hc_enable_vp_vtl,
            HvCallCode.HvCallModifyVtlProtectionMask: self._hc_modify_vtl_protection_mask,
            HvCallCode.HvCallGetVpRegisters: self._hc_get_vp_registers,
            HvCallCode.HvCallSetVpRegisters: self._hc_set_vp_registers,
            HvCallCode.HvCallTranslateVirtualAddress: self._hc_translate_virtual_address,
        })
        vc = self.vcpu
        vc.hooks.cr_write_filters.insert(0, self.cr_write_filter)
        vc.hooks.intercept_filters.append(self.intercept_filter)
        vc.msrs.write_filters.insert(0, self.msr_write_filter)
        vc.msrs.read_filters.insert(0, self.msr_read_filter)
        vc.hooks.interrupts_allowed = lambda: self.active_vtl == 0
        vc.msrs.providers.insert(0, self.hv)
        # the hypervisor's own accesses for the running VTL obey that VTL's protections
        vc.mem = ProtectedView(partition.memory, self._check_access)
        vc.hooks.access_denied = self._hypervisor_access_denied
        self.mbec = Mbec(self)

    # ================================================================== state
    @property
    def active(self) -> VtlContext:
        return self.vtls[self.active_vtl]

    def highest_enabled_above(self, vtl: int) -> int | None:
        for v in range(vtl + 1, MAX_VTLS):
            if self.vtls[v].enabled:
                return v
        return None

    def can_access(self, vtl: int, gpa: int, write: bool) -> bool:
        """Does VTL ``vtl`` have read (or write) access to the page holding ``gpa``?"""
        ctx = self.vtls[vtl]
        flags = ctx.protections.get(gpa >> 12, ctx.default_mask)
        need = HvMapGpaFlags.HV_MAP_GPA_WRITABLE if write else HvMapGpaFlags.HV_MAP_GPA_READABLE
        return bool(flags & need)

    def protection(self, vtl: int, gpa: int) -> int:
        ctx = self.vtls[vtl]
        return ctx.protections.get(gpa >> 12, ctx.default_mask)

    # ================================================================== switching
    def _capture_shared(self) -> tuple[list[int], bytes]:
        """The state the TLFS shares between VTLs (15.11.2): the GPRs but RSP, CR2, DR0-DR3 (DR4/DR5
        alias DR6/DR7), x87, MXCSR, XMM/YMM and XCR0. DR6 is private here (VsmCapabilities.Dr6Shared
        = 0); the shared MSRs (MTRRs, MISC_ENABLE) live in the MSR shadow (``_share_msrs``)."""
        return [self.engine.reg(r) for r in SHARED_REGS], self.engine.fp_state()

    def _apply_shared(self, shared: tuple[list[int], bytes]) -> None:
        vals, fp = shared
        for r, v in zip(SHARED_REGS, vals, strict=True):
            self.engine.set_reg(r, v)
        self.engine.set_fp_state(fp)

    @staticmethod
    def _share_msrs(src: MsrState, dst: MsrState) -> None:
        """MTRRs and the other architectural MSRs the hypervisor shadows but the TLFS does not list as
        private (IA32_MISC_ENABLE) are one copy for all VTLs."""
        dst.mtrr = src.mtrr
        dst.mtrr_def_type = src.mtrr_def_type
        dst.misc_enable = src.misc_enable

    def _install(self, target: int) -> None:
        """Make VTL ``target``'s saved context live (engine + hypervisor shadows)."""
        t = self.vtls[target]
        contexts.install(self.vcpu, t, t.npt.root, self._intercepts_for(target))

    def _intercepts_for(self, vtl: int) -> int:
        """SVM intercepts while ``vtl`` runs: the core set plus the descriptor-table writes the
        higher VTL asked for."""
        value = self.p.base_intercept
        if vtl == self.active_vtl and self.mbec.split:
            value |= _IRET_INTERCEPT
        higher = self.highest_enabled_above(vtl)
        if higher is not None:
            ctl = self.vtls[higher].cr_intercept_control
            if ctl & _DT_WRITE_BITS:
                for bit, exit_bit in _DT_WRITE_EXIT_BITS:
                    if ctl & bit:
                        value |= exit_bit
        return value

    def switch_to(self, target: int, reason: HvVtlEntryReason | None, message: bytes | None = None,
                  fast_return: bool = True) -> None:
        """Switch the vCPU to VTL ``target`` (must run with the engine stopped)."""
        src = self.active_vtl
        self.mbec.leave()
        shared = self._capture_shared()
        cur = self.vtls[src]
        contexts.save(self.vcpu, cur)
        cur.tpr = self.vcpu.lapic.tpr
        self.active_vtl = target
        self._install(target)
        self._apply_shared(shared)
        tgt = self.vtls[target]
        self._share_msrs(cur.msr_state, tgt.msr_state)
        self.vcpu.lapic.tpr = tgt.tpr
        if reason is not None:
            self._write_assist(tgt, VP_ASSIST_ENTRY_REASON, struct.pack("<I", reason))
        if message is not None:
            self._post_message(tgt, message)
        if target < src and not fast_return:
            # non-fast VtlReturn: RAX/RCX come from the returning VTL's VP assist page
            raw = self._read_assist(cur, VP_ASSIST_RETURN_RAX, 16)
            if raw is not None:
                rax, rcx = struct.unpack("<QQ", raw)
                self.engine.set_reg("rax", rax)
                self.engine.set_reg("rcx", rcx)
        self.switches += 1
        self.mbec.enter()
        if self.vcpu.hooks.trace:
            self.vcpu.hooks.trace("vtl_switch", {"from": src, "to": target,
                                                 "reason": reason.name if reason is not None else "return",
                                                 "rip": self.engine.rip})
            tr = self.vcpu.hooks.trace
            if hasattr(tr, "vtl"):
                tr.vtl = target
        if tgt.pending_event & 1:
            self._queue_pending_event(tgt)

    def _queue_pending_event(self, t: VtlContext) -> None:
        ev = t.pending_event
        t.pending_event = 0
        vector = (ev >> 16) & 0xFFFF
        err = (ev >> 32) & 0xFFFFFFFF if ev & (1 << 8) else None
        cr2 = (ev >> 64) & MASK64 if vector == Vector.PF else None
        name = Vector(vector).name if vector in Vector._value2member_map_ else str(vector)
        self.vcpu.security_event("inject", f"higher VTL injected #{name}{'' if err is None else f'({err:#x})'}"
                                 f" into VTL{t.vtl} at RIP {self.engine.rip:#x} (HvRegisterPendingEvent0)",
                                 vtl=t.vtl, vector=vector)
        self.vcpu.queue_event(Event(vector, EventKind.EXCEPTION, err, cr2=cr2))

    def _assist_gpa(self, t: VtlContext) -> int | None:
        v = t.hv_msrs.vp_assist_page
        if not v & 1:
            return None
        return v & ~0xFFF & MASK64

    def _write_assist(self, t: VtlContext, off: int, data: bytes) -> None:
        gpa = self._assist_gpa(t)
        if gpa is not None and self.p.memory.contains(gpa + off, len(data)):
            self.p.memory.write(gpa + off, data)

    def _read_assist(self, t: VtlContext, off: int, n: int) -> bytes | None:
        gpa = self._assist_gpa(t)
        if gpa is None or not self.p.memory.contains(gpa + off, n):
            return None
        return self.p.memory.read(gpa + off, n)

    def _post_message(self, t: VtlContext, message: bytes) -> None:
        """Intercept messages go to the SINT0 slot of the target VTL's SynIC message page."""
        simp = t.hv_msrs.synic.simp
        if not simp & 1:
            return
        gpa = simp & ~0xFFF & MASK64
        if self.p.memory.contains(gpa, HV_MESSAGE_SIZE):
            self.p.memory.write(gpa, message)

    @contextmanager
    def viewing(self, vtl: int) -> Iterator[None]:
        """Make a non-running VTL's state live in the engine for register access, then put the running
        VTL back. Shared registers are the same in both, so they are not touched. MBEC's traps are
        taken off the running VTL meanwhile (the engine then reports the viewed VTL's own values)."""
        if vtl == self.active_vtl:
            yield
            return
        self.mbec.leave()
        try:
            with contexts.viewing(self.vcpu, self.vtls[vtl], False):
                yield
        finally:
            self.mbec.enter()

    # ================================================================== VtlCall / VtlReturn
    def vtl_call_or_return(self, vcpu: Vcpu, control: int) -> None:
        """HvCallVtlCall / HvCallVtlReturn: RCX holds only the call code, RAX the VTL call/return
        control input (the hypercall page moved it there from the caller's RCX): 0 for a call, for a
        return bit 0 = fast return (registers not restored from the VP assist page), other bits RsvdZ.
        Anything else is #UD (TLFS 15.7.2 / 15.8.1; OpenVMM hv1_hypercall VtlCall/VtlReturn)."""
        from .vcpu import GuestFault
        code = control & 0xFFFF
        if control & ~0xFFFF & MASK64:
            raise GuestFault(Vector.UD)             # only the code may be set
        vtl_input = vcpu.reg("rax")
        if code == HvCallCode.HvCallVtlCall:
            if vtl_input:
                raise GuestFault(Vector.UD)         # every bit of the VTL call control input is reserved
            target = self.highest_enabled_above(self.active_vtl)
            if target is None or not self.vtls[target].enabled:
                vcpu.security_event("refused_vtl_call", f"VtlCall from VTL{self.active_vtl} with no higher VTL "
                                    "-> #UD", vtl=self.active_vtl)
                raise GuestFault(Vector.UD)
            if vcpu.hooks.trace:
                vcpu.hooks.trace("hypercall", {"abi": "hyperv", "code": code, "vtl": self.active_vtl})
            vcpu.request_outer(lambda: self.switch_to(target, HvVtlEntryReason.HvVtlEntryVtlCall))
        else:
            if self.active_vtl == 0:
                raise GuestFault(Vector.UD)
            if vtl_input & ~HV_VTL_RETURN_INPUT_FAST & MASK64:
                raise GuestFault(Vector.UD)
            lower = max(v for v in range(self.active_vtl) if self.vtls[v].enabled)
            fast = bool(vtl_input & HV_VTL_RETURN_INPUT_FAST)
            if vcpu.hooks.trace:
                vcpu.hooks.trace("hypercall", {"abi": "hyperv", "code": code, "vtl": self.active_vtl})
            vcpu.request_outer(lambda: self.switch_to(lower, None, fast_return=fast))

    # ================================================================== intercepts
    def _higher_for(self, bit: int) -> int | None:
        higher = self.highest_enabled_above(self.active_vtl)
        if higher is None or not self.vtls[higher].cr_intercept_control & bit:
            return None
        return higher

    def _header(self, access: int, insn_len: int) -> bytes:
        v = self.vcpu
        cs = v.segment("cs")
        cr0 = v.reg("cr0")
        es = exec_state(v.cpl(), bool(cr0 & CR0.PE), bool(cr0 & CR0.AM), bool(v.msr_state.efer & EFER.LMA),
                        self.active_vtl)
        return intercept_header(v.vp_index, insn_len, (v.lapic.tpr >> 4) & 0xF, access, es,
                                segment_register(cs.base, cs.limit, cs.selector, attributes_from_flags(cs.flags)),
                                v.engine.rip, v.reg("rflags"))

    def _deliver_intercept(self, higher: int, msg_type: int, payload: bytes, what: str = "") -> None:
        msg = hv_message(msg_type, payload)
        kind = HvMessageType(msg_type).name.removeprefix("HvMessageType")
        self.vcpu.security_event("intercept", f"{kind} {what} at RIP {self.engine.rip:#x} (VTL{self.active_vtl}, "
                                 f"CPL {self.vcpu.cpl()}) -> VTL{higher}", vtl=self.active_vtl,
                                 type=HvMessageType(msg_type).name, to_vtl=higher)
        self.vcpu.request_outer(lambda: self.switch_to(higher, HvVtlEntryReason.HvVtlEntryIntercept, msg))
        raise InterceptPending()

    def _insn_len(self) -> int:
        try:
            return self.vcpu.fetch_insn().len
        except Exception:   # noqa: BLE001 - length is advisory in the message
            return 0

    def cr_write_filter(self, vcpu: Vcpu, cr: int, old: int, new: int) -> bool:
        if self.active.mbec and (old ^ new) & (_SMEP if cr == 4 else _PG):
            # MBEC's split mode follows CR4.SMEP and long mode (CR0.PG): re-evaluate once the write
            # is done, before the next instruction (an intercept below replaces this with a switch,
            # which re-evaluates too)
            vcpu.request_outer(self.mbec.sync)
        if vcpu._vsm_bypass:
            return False
        bit = HvCrInterceptControl.Cr0Write if cr == 0 else HvCrInterceptControl.Cr4Write
        higher = self._higher_for(bit)
        if higher is None:
            return False
        mask = self.vtls[higher].cr0_mask if cr == 0 else self.vtls[higher].cr4_mask
        if not (old ^ new) & mask:
            return False
        name = HvRegisterName.HvX64RegisterCr0 if cr == 0 else HvRegisterName.HvX64RegisterCr4
        payload = self._header(HvInterceptAccessType.HV_INTERCEPT_ACCESS_WRITE, self._insn_len()) \
            + struct.pack("<BBHI", 0, 0, 0, name) + new.to_bytes(16, "little")
        self._deliver_intercept(higher, HvMessageType.HvMessageTypeRegisterIntercept, payload,
                                f"CR{cr} write {old:#x}->{new:#x}")
        return True

    def _msr_intercept(self, vcpu: Vcpu, msr: int, write: bool, value: int) -> None:
        table = MSR_WRITE_INTERCEPT if write else MSR_READ_INTERCEPT
        bit = table.get(msr)
        if bit is None:
            return
        higher = self._higher_for(bit)
        if higher is None:
            return
        access = HvInterceptAccessType.HV_INTERCEPT_ACCESS_WRITE if write else HvInterceptAccessType.HV_INTERCEPT_ACCESS_READ
        payload = self._header(access, 2) + struct.pack("<IIQQ", msr, 0, (value >> 32) if write else 0,
                                                        (value & 0xFFFFFFFF) if write else 0)
        self._deliver_intercept(higher, HvMessageType.HvMessageTypeX64MsrIntercept, payload,
                                f"{'wrmsr' if write else 'rdmsr'} {msr:#x}" + (f" <- {value:#x}" if write else ""))

    def msr_write_filter(self, vcpu: Vcpu, msr: int, value: int) -> bool:
        if vcpu._vsm_bypass:
            return False
        self._msr_intercept(vcpu, msr, True, value)
        return False

    def msr_read_filter(self, vcpu: Vcpu, msr: int) -> None:
        if vcpu._vsm_bypass:
            return
        self._msr_intercept(vcpu, msr, False, 0)

    def intercept_filter(self, vcpu: Vcpu, code: int) -> bool:
        """Descriptor-table reads (NPIEP), writes (HyperGuard), nested page faults (protections) and
        IRET (MBEC's CPL tracking)."""
        if code == SvmExit.IRET:
            return self.mbec.on_iret(vcpu)
        if code in NPIEP_BIT:
            if self.active.hv_msrs.npiep_config & NPIEP_BIT[code] and vcpu.cpl() > 0:
                vcpu.security_event("npiep", f"NPIEP: {SvmExit(code).name.removesuffix('_READ')} read at CPL "
                                    f"{vcpu.cpl()} RIP {vcpu.engine.rip:#x} -> #GP(0)", vtl=self.active_vtl)
                raise GuestGP(0, "NPIEP: descriptor-table read at CPL>0")
            return False
        if code in DT_WRITE_INTERCEPT:
            bit, name = DT_WRITE_INTERCEPT[code]
            higher = self._higher_for(bit)
            if higher is None:
                return False
            value = self._dt_operand(vcpu, code)
            payload = self._header(HvInterceptAccessType.HV_INTERCEPT_ACCESS_WRITE, self._insn_len()) \
                + struct.pack("<BBHI", 0, 0, 0, name) + value.to_bytes(16, "little")
            self._deliver_intercept(higher, HvMessageType.HvMessageTypeRegisterIntercept, payload,
                                    f"{HvRegisterName(name).name.removeprefix('HvX64Register')} write {value:#x}")
        if code == SvmExit.NPF:
            return self._npf(vcpu)
        return False

    def _dt_operand(self, vcpu: Vcpu, code: int) -> int:
        """The value LGDT/LIDT/LLDT/LTR is about to load, in HV register format."""
        ins = vcpu.fetch_insn()
        from ..x86 import decode as dec
        if code in (SvmExit.GDTR_WRITE, SvmExit.IDTR_WRITE):
            size = 10 if vcpu.engine.code64() else 6
            raw = vcpu._read_mem_operand(ins, size).to_bytes(size, "little")
            limit = int.from_bytes(raw[:2], "little")
            base = int.from_bytes(raw[2:], "little")
            return (limit << 48) | (base << 64)
        if ins.op0_kind == dec.OpKind.REGISTER:
            g = dec.gpr_index(ins.op0_register)
            return (vcpu.engine.gpr(g[0]) & 0xFFFF) if g else 0
        return vcpu._read_mem_operand(ins, 2)

    def _npf(self, vcpu: Vcpu) -> bool:
        gpa = self.engine.exit_info_2()
        info = self.engine.exit_info_1()
        if not self.p.memory.contains(gpa, 1):
            return False                                  # not RAM: the core reports it
        higher = self.highest_enabled_above(self.active_vtl)
        if info & 0x10:
            access = HvInterceptAccessType.HV_INTERCEPT_ACCESS_EXECUTE
        elif info & 0x2:
            access = HvInterceptAccessType.HV_INTERCEPT_ACCESS_WRITE
        else:
            access = HvInterceptAccessType.HV_INTERCEPT_ACCESS_READ
        if vcpu.hooks.trace:
            vcpu.hooks.trace("gpa_violation", {"gpa": gpa, "access": access.name, "vtl": self.active_vtl})
        if higher is None:
            # a protection with nobody above to handle it cannot happen; report like hardware would
            return False
        if access == HvInterceptAccessType.HV_INTERCEPT_ACCESS_EXECUTE and self.active.mbec:
            cpl = vcpu.cpl()
            user = self.mbec.split and cpl == 3
            flags = self.protection(self.active_vtl, gpa)
            if self.mbec.user_root == user and flags & (_UX if user else _KX):
                # the fetch faulted on the other mode's root before this exit's check moved the
                # engine to the right one (a far RET to ring 3 has no exit): retry it
                return True
            if self.mbec.split:
                vcpu.security_event(
                    "mbec_execute", f"MBEC: {'user' if cpl == 3 else 'kernel'}-mode fetch at CPL {cpl} from GPA "
                    f"{gpa:#x} (protection {flags:#x}, no {'UX' if cpl == 3 else 'KX'}) in VTL{self.active_vtl} "
                    f"-> GpaIntercept to VTL{higher}", vtl=self.active_vtl, gpa=gpa, cpl=cpl)
        code = self._insn_bytes(vcpu)
        payload = self._header(access, 0) + struct.pack("<IBBBBQQ", 0, len(code), 0, 0, 0, 0, gpa) \
            + code.ljust(16, b"\0")
        self._deliver_intercept(higher, HvMessageType.HvMessageTypeGpaIntercept, payload,
                                f"{access.name.removeprefix('HV_INTERCEPT_ACCESS_').lower()} of GPA {gpa:#x}")
        return True

    def _insn_bytes(self, vcpu: Vcpu) -> bytes:
        from ..x86.paging import read_virt
        try:
            rip = self.engine.rip
            n = min(16, 0x1000 - (rip & 0xFFF))
            return read_virt(self.p.memory, vcpu.paging_mode(), rip, n, Access(fetch=True))
        except (PageFault, NonCanonical):
            return b""

    def _check_access(self, gpa: int, size: int, write: bool) -> None:
        self._check_vtl_access(self.active_vtl, gpa, size, write)

    def _check_vtl_access(self, vtl: int, gpa: int, size: int, write: bool) -> None:
        t = self.vtls[vtl]
        prot, default = t.protections, int(t.default_mask)
        if not prot and default == ALL_ACCESS:
            return
        need = 2 if write else 1                     # HV_MAP_GPA_WRITABLE / READABLE (plain ints: hot path)
        first = gpa >> 12
        last = (gpa + max(size, 1) - 1) >> 12
        if first == last:
            if not prot.get(first, default) & need:
                raise AccessDenied(gpa, write)
            return
        for gpn in range(first, last + 1):
            if not prot.get(gpn, default) & need:
                raise AccessDenied(max(gpa, gpn << 12), write)

    def _hypervisor_access_denied(self, vcpu: Vcpu, denied: AccessDenied) -> None:
        """An access the hypervisor made for the running VTL (delivery, a page walk, an operand)
        violates its protections: the higher VTL gets the GpaIntercept the hardware access would
        have caused; the instruction or event is not completed."""
        higher = self.highest_enabled_above(self.active_vtl)
        if vcpu.hooks.trace:
            vcpu.hooks.trace("gpa_violation", {"gpa": denied.gpa, "access": "write" if denied.write else "read",
                                               "vtl": self.active_vtl, "by": "hypervisor"})
        if higher is None:
            vcpu._shutdown(StopReason.MACHINE_CHECK, str(denied))
            return
        access = (HvInterceptAccessType.HV_INTERCEPT_ACCESS_WRITE if denied.write
                  else HvInterceptAccessType.HV_INTERCEPT_ACCESS_READ)
        payload = self._header(access, 0) + struct.pack("<IBBBBQQ", 0, 0, 0, 0, 0, 0, denied.gpa) + bytes(16)
        self._deliver_intercept(higher, HvMessageType.HvMessageTypeGpaIntercept, payload,
                                f"{'write' if denied.write else 'read'} of GPA {denied.gpa:#x} by the hypervisor "
                                "for the VTL")

    # ================================================================== protections
    def _ensure_npt(self, vtl: int) -> NestedPageTable:
        t = self.vtls[vtl]
        if t.npt is None:
            t.npt = self.p.build_npt()
        return t.npt

    @staticmethod
    def _roots(t: VtlContext) -> list[tuple[NestedPageTable, bool]]:
        """The roots of a VTL with their kind (False: kernel-mode / only root, True: user-mode)."""
        roots = [(t.npt, False)]
        if t.npt_user is not None:
            roots.append((t.npt_user, True))
        return roots

    def set_protection(self, vtl: int, gpn: int, flags: int) -> None:
        t = self.vtls[vtl]
        t.protections[gpn] = flags
        for npt, user in self._roots(t):
            npt.set(gpn << 12, npt_entry(gpn << 12, flags, user))

    def apply_default_mask(self, vtl: int, mask: int) -> None:
        t = self.vtls[vtl]
        t.default_mask = mask
        for npt, user in self._roots(t):
            self._fill_root(vtl, npt, user)

    def _fill_root(self, vtl: int, npt: NestedPageTable, user: bool) -> None:
        """Write every RAM leaf of one of VTL ``vtl``'s roots from its default mask and protections."""
        t = self.vtls[vtl]
        mask = t.default_mask
        ram = self.p.memory.size
        leaf = npt_entry(0, mask, user)
        if mask & HvMapGpaFlags.HV_MAP_GPA_READABLE:
            npt.map_4k_range(0, 0, ram, leaf & (0xFFF | NX))
        else:
            for gpa in range(0, ram, 0x1000):
                npt.set(gpa, 0)
        for gpn, f in t.protections.items():
            npt.set(gpn << 12, npt_entry(gpn << 12, f, user))

    def refresh_mbec(self, vtl: int) -> None:
        """Recompute whether MBEC governs VTL ``vtl`` (a higher VTL enabled for MBEC on the partition
        set MbecEnabled in its VsmVpSecureConfig instance for it); build its user-mode root on first
        use. Takes effect when the VTL next runs (it is not the running one: only a higher VTL
        configures it)."""
        t = self.vtls[vtl]
        on = any(h.partition_mbec and h.secure_config.get(vtl, 0) & HvVsmVpSecureVtlConfig.MbecEnabled
                 for h in self.vtls[vtl + 1:])
        if on and t.npt_user is None:
            self._ensure_npt(vtl)
            t.npt_user = self.p.build_npt()
            if t.protections or t.default_mask != ALL_ACCESS:
                self._fill_root(vtl, t.npt_user, True)
            self.flush_after_protection_change()
        t.mbec = on

    def flush_after_protection_change(self) -> None:
        self.engine.flush_tlb()
        self.engine.flush_tb()

    # ================================================================== hypercalls
    @staticmethod
    def _check_partition(pid: int) -> None:
        if pid != HV_PARTITION_ID_SELF:
            raise HypercallError(HvStatus.HV_STATUS_INVALID_PARTITION_ID)

    def _target_vtl(self, input_vtl: int) -> int:
        if input_vtl & ~0x1F:
            raise HypercallError(HvStatus.HV_STATUS_INVALID_PARAMETER)
        if input_vtl & HvInputVtl.UseTargetVtl:
            target = input_vtl & 0xF
            if target > self.active_vtl:
                raise HypercallError(HvStatus.HV_STATUS_ACCESS_DENIED)
            if not self.vtls[target].enabled:
                raise HypercallError(HvStatus.HV_STATUS_INVALID_VTL_STATE)
            return target
        return self.active_vtl

    def _hc_enable_partition_vtl(self, vcpu: Vcpu, call: HypercallInput) -> tuple[int, int, bytes]:
        pid, vtl, flags, r16, r32 = struct.unpack_from("<QBBHI", call.data)
        self._check_partition(pid)
        if flags & ~int(HvEnablePartitionVtlFlags.EnableMbec) or r16 or r32:
            return HvStatus.HV_STATUS_INVALID_PARAMETER, 0, b""     # no shadow stacks, no HVPT
        if vtl <= self.active_vtl or vtl > MAX_ENABLED_VTL:
            return HvStatus.HV_STATUS_INVALID_PARAMETER, 0, b""
        if vtl in self.partition_enabled:
            return HvStatus.HV_STATUS_VTL_ALREADY_ENABLED, 0, b""
        self.partition_enabled.add(vtl)
        self.vtls[vtl].partition_mbec = bool(flags & HvEnablePartitionVtlFlags.EnableMbec)
        self._ensure_npt(vtl)
        if vcpu.hooks.trace:
            vcpu.hooks.trace("enable_partition_vtl", {"vtl": vtl, "mbec": bool(flags & 1)})
        return HvStatus.HV_STATUS_SUCCESS, 0, b""

    def _hc_enable_vp_vtl(self, vcpu: Vcpu, call: HypercallInput) -> tuple[int, int, bytes]:
        if len(call.data) < 16 + 224:
            return HvStatus.HV_STATUS_INVALID_PARAMETER, 0, b""
        pid, vp, vtl = struct.unpack_from("<QIB", call.data)
        self._check_partition(pid)
        if vp not in (0, HV_VP_INDEX_SELF):
            return HvStatus.HV_STATUS_INVALID_VP_INDEX, 0, b""
        if vtl not in self.partition_enabled or vtl == 0:
            return HvStatus.HV_STATUS_INVALID_PARAMETER, 0, b""
        if vtl <= self.active_vtl:
            return HvStatus.HV_STATUS_ACCESS_DENIED, 0, b""
        if self.vtls[vtl].enabled:
            return HvStatus.HV_STATUS_VTL_ALREADY_ENABLED, 0, b""
        ctx = call.data[16:16 + 224]
        rip, rsp, rflags = struct.unpack_from("<QQQ", ctx, 0)
        segs = {}
        for i, name in enumerate(("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldtr")):
            base, limit, sel, attr = struct.unpack_from("<QIHH", ctx, 24 + 16 * i)
            segs[name] = Segment(sel, base, limit, flags_from_attributes(attr))
        idtr_limit, idtr_base = struct.unpack_from("<6xHQ", ctx, 152)
        gdtr_limit, gdtr_base = struct.unpack_from("<6xHQ", ctx, 168)
        efer, cr0, cr3, cr4, pat = struct.unpack_from("<QQQQQ", ctx, 184)
        if not canonical(rip) or not canonical(rsp) or efer & ~0xD01 or cr0 >> 32 or cr4 >> 32:
            return HvStatus.HV_STATUS_INVALID_PARAMETER, 0, b""
        if cr0 & CR0.PG and not cr0 & CR0.PE:
            return HvStatus.HV_STATUS_INVALID_PARAMETER, 0, b""
        vcpu.request_outer(lambda: self._create_vp_vtl(vtl, rip, rsp, rflags, segs, (idtr_base, idtr_limit),
                                                       (gdtr_base, gdtr_limit), efer, cr0, cr3, cr4, pat))
        # mark enabled now: the outer step runs before the guest executes another instruction
        self.vtls[vtl].enabled = True
        return HvStatus.HV_STATUS_SUCCESS, 0, b""

    def _create_vp_vtl(self, vtl: int, rip: int, rsp: int, rflags: int, segs: dict[str, Segment],
                       idtr: tuple[int, int], gdtr: tuple[int, int], efer: int, cr0: int, cr3: int, cr4: int,
                       pat: int) -> None:
        """Build VTL ``vtl``'s initial context from InitialVpContextX64 on the engine, then put the
        running VTL back."""
        eng = self.engine
        self.mbec.leave()
        running = eng.uc.context_save()
        running_msrs = self.vcpu.msr_state
        t = self.vtls[vtl]
        t.msr_state = MsrState(efer=efer | (EFER.LMA if (efer & EFER.LME and cr0 & CR0.PG) else 0))
        self._share_msrs(running_msrs, t.msr_state)
        self.vcpu.msr_state = t.msr_state
        eng.msr_write(MSR.IA32_EFER, t.msr_state.efer | EFER.SVME)
        eng.set_reg("cr4", cr4)
        eng.set_reg("cr3", cr3)
        eng.set_reg("cr0", cr0)
        segs = dict(segs)
        segs["idtr"] = Segment(0, idtr[0], idtr[1], 0)
        segs["gdtr"] = Segment(0, gdtr[0], gdtr[1], 0)
        eng.set_segments(segs)
        eng.msr_write(MSR.IA32_PAT, pat)
        eng.set_reg("rsp", rsp)
        eng.set_reg("rflags", rflags | 2)
        eng.rip = rip
        t.ctx = eng.uc.context_save()
        eng.uc.context_restore(running)
        self.vcpu.msr_state = running_msrs
        eng.flush_tlb()
        self.mbec.enter()
        if self.vcpu.hooks.trace:
            self.vcpu.hooks.trace("enable_vp_vtl", {"vtl": vtl, "rip": rip})

    def _hc_modify_vtl_protection_mask(self, vcpu: Vcpu, call: HypercallInput) -> tuple[int, int, bytes]:
        pid, flags, input_vtl = struct.unpack_from("<QIB", call.data)
        self._check_partition(pid)
        if input_vtl & HvInputVtl.UseTargetVtl:
            target = input_vtl & 0xF
        else:
            target = self.active_vtl - 1
        if input_vtl & ~0x1F or target < 0 or target >= self.active_vtl:
            return HvStatus.HV_STATUS_ACCESS_DENIED, 0, b""
        if not self.vtls[target].enabled:
            return HvStatus.HV_STATUS_INVALID_VTL_STATE, 0, b""
        if not map_flags_valid(flags, self.active.partition_mbec):
            return HvStatus.HV_STATUS_INVALID_PARAMETER, 0, b""
        elems = call.data[16:]
        done = call.rep_start
        for i in range(call.rep_start, call.rep_count):
            if 8 * (i + 1) > len(elems):
                raise HypercallError(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, done)
            gpn = struct.unpack_from("<Q", elems, 8 * i)[0]
            if gpn >= self.p.memory.size >> 12:
                self.flush_after_protection_change()
                raise HypercallError(HvStatus.HV_STATUS_INVALID_PARAMETER, i)
            self.set_protection(target, gpn, flags)
            done = i + 1
        self.flush_after_protection_change()
        if vcpu.hooks.trace:
            vcpu.hooks.trace("modify_vtl_protection", {"target_vtl": target, "flags": flags,
                                                       "count": call.rep_count - call.rep_start})
        return HvStatus.HV_STATUS_SUCCESS, done, b""

    def _hc_get_vp_registers(self, vcpu: Vcpu, call: HypercallInput) -> tuple[int, int, bytes]:
        pid, vp, input_vtl = struct.unpack_from("<QIB", call.data)
        self._check_partition(pid)
        if vp not in (0, HV_VP_INDEX_SELF):
            return HvStatus.HV_STATUS_INVALID_VP_INDEX, 0, b""
        target = self._target_vtl(input_vtl)
        out = bytearray()
        done = call.rep_start
        with self.viewing(target):
            for i in range(call.rep_start, call.rep_count):
                off = 16 + 4 * i
                if off + 4 > len(call.data):
                    raise HypercallError(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, done)
                name = struct.unpack_from("<I", call.data, off)[0]
                try:
                    value = self.get_register(target, name)
                except HypercallError as e:
                    e.reps_done = done
                    if call.fast:
                        raise
                    return e.status, done, bytes(out)
                out += value.to_bytes(16, "little")
                done = i + 1
        return HvStatus.HV_STATUS_SUCCESS, done, bytes(out)

    def _hc_set_vp_registers(self, vcpu: Vcpu, call: HypercallInput) -> tuple[int, int, bytes]:
        pid, vp, input_vtl = struct.unpack_from("<QIB", call.data)
        self._check_partition(pid)
        if vp not in (0, HV_VP_INDEX_SELF):
            return HvStatus.HV_STATUS_INVALID_VP_INDEX, 0, b""
        target = self._target_vtl(input_vtl)
        done = call.rep_start
        with self.viewing(target):
            for i in range(call.rep_start, call.rep_count):
                off = 16 + 32 * i
                if off + 32 > len(call.data):
                    raise HypercallError(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, done)
                name = struct.unpack_from("<I", call.data, off)[0]
                value = int.from_bytes(call.data[off + 16:off + 32], "little")
                try:
                    self.set_register(target, name, value)
                except HypercallError as e:
                    e.reps_done = done
                    raise
                done = i + 1
        return HvStatus.HV_STATUS_SUCCESS, done, b""

    def _hc_translate_virtual_address(self, vcpu: Vcpu, call: HypercallInput) -> tuple[int, int, bytes]:
        pid, vp, _, control, gva_page = struct.unpack_from("<QIIQQ", call.data)
        self._check_partition(pid)
        if vp not in (0, HV_VP_INDEX_SELF):
            return HvStatus.HV_STATUS_INVALID_VP_INDEX, 0, b""
        target = self._target_vtl((control >> 56) & 0xFF)
        flags = control & 0xFF
        acc = Access(write=bool(flags & HvTranslateGvaFlags.ValidateWrite),
                     user=bool(flags & HvTranslateGvaFlags.UserAccess),
                     fetch=bool(flags & HvTranslateGvaFlags.ValidateExecute))
        result, gpa = HvTranslateGvaResult.Success, 0
        # the walk reads (and with SetPageTableBits writes) the target VTL's page tables as that VTL
        # would: through its protections, so it cannot set A/D bits in tables a higher VTL made read-only
        tables = ProtectedView(self.p.memory, lambda a, n, w: self._check_vtl_access(target, a, n, w))
        with self.viewing(target):
            try:
                gpa = walk(tables, vcpu.paging_mode(), gva_page << 12, acc,
                           set_ad=bool(flags & HvTranslateGvaFlags.SetPageTableBits))
            except AccessDenied as denied:
                result = (HvTranslateGvaResult.GpaNoWriteAccess if denied.write
                          else HvTranslateGvaResult.GpaNoReadAccess)
            except PageFault as pf:
                result = (HvTranslateGvaResult.PageNotPresent if not pf.error_code & 1
                          else HvTranslateGvaResult.InvalidPageTableFlags if pf.error_code & 8
                          else HvTranslateGvaResult.PrivilegeViolation)
            except NonCanonical:
                result = HvTranslateGvaResult.InvalidPageTableFlags
        if result == HvTranslateGvaResult.Success:
            if not self.p.memory.contains(gpa, 1):
                result = HvTranslateGvaResult.GpaUnmapped
            elif not self.can_access(target, gpa, False):
                result = HvTranslateGvaResult.GpaNoReadAccess
            elif acc.write and not self.can_access(target, gpa, True):
                result = HvTranslateGvaResult.GpaNoWriteAccess
        return HvStatus.HV_STATUS_SUCCESS, 0, struct.pack("<IIQ", result, 0, gpa >> 12)

    # ================================================================== registers
    def get_register(self, vtl: int, name: int) -> int:
        """Read a register of VTL ``vtl`` (its state must be live: use ``viewing``)."""
        v, t = self.vcpu, self.vtls[vtl]
        if name in _GPR_REGS:
            return v.reg(_GPR_REGS[name])
        if name == HvRegisterName.HvX64RegisterCr0:
            return v.reg("cr0")
        if name == HvRegisterName.HvX64RegisterCr4:
            return v.reg("cr4")
        if name == HvRegisterName.HvX64RegisterCr8:
            return ((v.lapic.tpr if vtl == self.active_vtl else t.tpr) >> 4) & 0xF
        if name in _SEG_REGS:
            s = v.segment(_SEG_REGS[name])
            return int.from_bytes(segment_register(s.base, s.limit, s.selector, attributes_from_flags(s.flags)),
                                  "little")
        if name in (HvRegisterName.HvX64RegisterIdtr, HvRegisterName.HvX64RegisterGdtr):
            s = v.segment("idtr" if name == HvRegisterName.HvX64RegisterIdtr else "gdtr")
            return ((s.limit & 0xFFFF) << 48) | (s.base << 64)
        if name in _MSR_REGS:
            v._vsm_bypass = True
            try:
                return v.msrs.read(v, _MSR_REGS[name])
            finally:
                v._vsm_bypass = False
        if name == HvRegisterName.HvRegisterPendingEvent0:
            return t.pending_event
        if name == HvRegisterName.HvRegisterVpAssistPage:
            return t.hv_msrs.vp_assist_page
        if name == HvRegisterName.HvRegisterVsmCodePageOffsets:
            return VTL_CALL_OFFSET | (VTL_RETURN_OFFSET << 12)
        if name == HvRegisterName.HvRegisterVsmVpStatus:
            enabled = sum(1 << i for i in range(MAX_VTLS) if self.vtls[i].enabled)
            return self.active_vtl | (VSM_VP_STATUS_ACTIVE_MBEC if self.active.mbec else 0) \
                | (enabled << VSM_VP_STATUS_ENABLED_SHIFT)
        if name == HvRegisterName.HvRegisterVsmPartitionStatus:
            enabled = sum(1 << i for i in self.partition_enabled)
            # MbecEnabledVtlSet: a VTL enabled with EnableMbec and the VTLs below it (as OpenHCL reports
            # VTL0 and VTL1 for a VTL1 enabled with MBEC)
            mbec = 0
            for v in self.partition_enabled:
                if self.vtls[v].partition_mbec:
                    mbec |= (2 << v) - 1
            return enabled | (MAX_ENABLED_VTL << VSM_PARTITION_STATUS_MAX_VTL_SHIFT) \
                | (mbec << VSM_PARTITION_STATUS_MBEC_SHIFT)
        if name == HvRegisterName.HvRegisterVsmCapabilities:
            # Dr6Shared = 0 (DR6 is private); MbecVtlMask: MBEC can be enabled for every VTL below the
            # highest one a guest may enable
            return ((1 << MAX_ENABLED_VTL) - 1) << VSM_CAP_MBEC_VTL_MASK_SHIFT
        if self._secure_config_target(vtl, name) is not None:
            return t.secure_config.get(name - HvRegisterName.HvRegisterVsmVpSecureConfigVtl0, 0)
        if name == HvRegisterName.HvRegisterVsmPartitionConfig:
            self._vsm_control_owner(vtl)
            return t.partition_config
        if name == HvRegisterName.HvX64RegisterCrInterceptControl:
            self._vsm_control_owner(vtl)
            return t.cr_intercept_control
        if name == HvRegisterName.HvX64RegisterCrInterceptCr0Mask:
            self._vsm_control_owner(vtl)
            return t.cr0_mask
        if name == HvRegisterName.HvX64RegisterCrInterceptCr4Mask:
            self._vsm_control_owner(vtl)
            return t.cr4_mask
        if name == HvRegisterName.HvX64RegisterCrInterceptIa32MiscEnableMask:
            self._vsm_control_owner(vtl)
            return t.misc_enable_mask
        raise HypercallError(HvStatus.HV_STATUS_UNKNOWN_REGISTER_NAME)

    def _secure_config_target(self, vtl: int, name: int) -> int | None:
        """For HvRegisterVsmVpSecureConfigVtl<n>: n, after the access check (VTL ``vtl`` owns one
        instance per lower VTL and only it may access them; TLFS 15.5.2). None for other names."""
        n = name - HvRegisterName.HvRegisterVsmVpSecureConfigVtl0
        if not 0 <= n < MAX_VTLS:
            return None
        if vtl != self.active_vtl or n >= vtl:
            raise HypercallError(HvStatus.HV_STATUS_ACCESS_DENIED)
        return n

    def _vsm_control_owner(self, vtl: int) -> None:
        """VSM control registers of VTL n configure what n does to lower VTLs: VTL0 has none, and only
        the owning VTL may access them."""
        if vtl == 0 or vtl != self.active_vtl:
            raise HypercallError(HvStatus.HV_STATUS_ACCESS_DENIED)

    def _guarded_by_higher(self, vtl: int, name: int, value: int) -> bool:
        """Would the higher VTL intercept this change if ``vtl`` made it with an instruction? A VTL
        must not get around its higher VTL's secure intercepts by SetVpRegisters on itself."""
        higher = self.highest_enabled_above(vtl)
        if higher is None:
            return False
        h = self.vtls[higher]
        ctl = h.cr_intercept_control
        v = self.vcpu
        if name == HvRegisterName.HvX64RegisterCr0:
            return bool(ctl & HvCrInterceptControl.Cr0Write and (v.reg("cr0") ^ value) & h.cr0_mask)
        if name == HvRegisterName.HvX64RegisterCr4:
            return bool(ctl & HvCrInterceptControl.Cr4Write and (v.reg("cr4") ^ value) & h.cr4_mask)
        if name in _MSR_REGS:
            bit = MSR_WRITE_INTERCEPT.get(_MSR_REGS[name])
            return bool(bit is not None and ctl & bit)
        return bool(ctl & _DT_WRITE_BY_NAME.get(name, 0))

    def set_register(self, vtl: int, name: int, value: int) -> None:
        v, t = self.vcpu, self.vtls[vtl]
        lo = value & MASK64
        if vtl == self.active_vtl and self._guarded_by_higher(vtl, name, lo):
            raise HypercallError(HvStatus.HV_STATUS_ACCESS_DENIED)
        if name in _GPR_REGS:
            reg = _GPR_REGS[name]
            if reg == "rip" and not canonical(lo):
                raise HypercallError(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE)
            if reg == "rflags" and lo >> 22:
                raise HypercallError(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE)
            v.set_reg(reg, lo | (2 if reg == "rflags" else 0))
            return
        if name in (HvRegisterName.HvX64RegisterCr0, HvRegisterName.HvX64RegisterCr4):
            v._vsm_bypass = True
            try:
                v.write_cr(0 if name == HvRegisterName.HvX64RegisterCr0 else 4, lo)
            except GuestGP as e:
                raise HypercallError(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE) from e
            finally:
                v._vsm_bypass = False
            return
        if name == HvRegisterName.HvX64RegisterCr8:
            if lo >> 4:
                raise HypercallError(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE)
            if vtl == self.active_vtl:
                v.lapic.tpr = lo << 4
            else:
                t.tpr = lo << 4
            return
        if name in _SEG_REGS:
            base, limit, sel, attr = struct.unpack("<QIHH", value.to_bytes(16, "little"))
            v.engine.set_segments({_SEG_REGS[name]: Segment(sel, base, limit, flags_from_attributes(attr))})
            if vtl == self.active_vtl:
                self.mbec.sync()              # SS (and so CPL) may have changed
            return
        if name in (HvRegisterName.HvX64RegisterIdtr, HvRegisterName.HvX64RegisterGdtr):
            v.engine.set_segments({"idtr" if name == HvRegisterName.HvX64RegisterIdtr else "gdtr":
                                   Segment(0, value >> 64, (value >> 48) & 0xFFFF, 0)})
            return
        if name in _MSR_REGS:
            v._vsm_bypass = True
            try:
                v.msrs.write(v, _MSR_REGS[name], lo)
            except GuestGP as e:
                raise HypercallError(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE) from e
            finally:
                v._vsm_bypass = False
            return
        if name == HvRegisterName.HvRegisterPendingEvent0:
            if value & 1 and ((value >> 1) & 7) != 0:
                raise HypercallError(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE)   # only exceptions
            if value & 1 and ((value >> 16) & 0xFFFF) > 31:
                raise HypercallError(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE)
            t.pending_event = value
            if vtl == self.active_vtl and value & 1:
                self._queue_pending_event(t)
            return
        if name == HvRegisterName.HvRegisterVpAssistPage:
            t.hv_msrs.vp_assist_page = lo
            return
        if name == HvRegisterName.HvRegisterVsmPartitionConfig:
            self._vsm_control_owner(vtl)
            self._write_partition_config(vtl, lo)
            return
        if name == HvRegisterName.HvX64RegisterCrInterceptControl:
            self._vsm_control_owner(vtl)
            if lo >> 25:
                raise HypercallError(HvStatus.HV_STATUS_INVALID_PARAMETER)
            t.cr_intercept_control = lo
            self.engine.set_intercepts(self._intercepts_for(self.active_vtl))
            return
        if name == HvRegisterName.HvX64RegisterCrInterceptCr0Mask:
            self._vsm_control_owner(vtl)
            t.cr0_mask = lo
            return
        if name == HvRegisterName.HvX64RegisterCrInterceptCr4Mask:
            self._vsm_control_owner(vtl)
            t.cr4_mask = lo
            return
        if name == HvRegisterName.HvX64RegisterCrInterceptIa32MiscEnableMask:
            self._vsm_control_owner(vtl)
            t.misc_enable_mask = lo
            return
        lower = self._secure_config_target(vtl, name)
        if lower is not None:
            if lo & ~int(HvVsmVpSecureVtlConfig.MbecEnabled | HvVsmVpSecureVtlConfig.TlbLocked):
                raise HypercallError(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE)   # no SSS / HVPT
            if lo & HvVsmVpSecureVtlConfig.MbecEnabled and not t.partition_mbec:
                # MBEC needs both levels: EnablePartitionVtl(EnableMbec) for this VTL, then this bit
                raise HypercallError(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE)
            t.secure_config[lower] = lo
            self.refresh_mbec(lower)
            if self.vcpu.hooks.trace:
                self.vcpu.hooks.trace("vsm_secure_config", {"vtl": vtl, "lower": lower, "value": lo})
            return
        if name in (HvRegisterName.HvRegisterVsmCodePageOffsets, HvRegisterName.HvRegisterVsmVpStatus,
                    HvRegisterName.HvRegisterVsmPartitionStatus, HvRegisterName.HvRegisterVsmCapabilities):
            raise HypercallError(HvStatus.HV_STATUS_ACCESS_DENIED)
        raise HypercallError(HvStatus.HV_STATUS_UNKNOWN_REGISTER_NAME)

    def _write_partition_config(self, vtl: int, value: int) -> None:
        t = self.vtls[vtl]
        known = int(HvVsmPartitionConfig.EnableVtlProtection | HvVsmPartitionConfig.DefaultVtlProtectionMask)
        if value & ~known & 0xFFF:
            raise HypercallError(HvStatus.HV_STATUS_INVALID_PARAMETER)
        if value >> 12:
            raise HypercallError(HvStatus.HV_STATUS_INVALID_PARAMETER)
        old = t.partition_config
        if old & HvVsmPartitionConfig.EnableVtlProtection and value != old:
            # enable_vtl_protection and the default mask are write-once: no replay can undo them
            raise HypercallError(HvStatus.HV_STATUS_ACCESS_DENIED)
        mask = (value >> 1) & 0xF
        if value & HvVsmPartitionConfig.EnableVtlProtection:
            if not mask & HvMapGpaFlags.HV_MAP_GPA_READABLE:
                raise HypercallError(HvStatus.HV_STATUS_INVALID_PARAMETER)  # TLFS: default must include read
            if not map_flags_valid(mask, t.partition_mbec):
                raise HypercallError(HvStatus.HV_STATUS_INVALID_PARAMETER)
            for lower in range(vtl):
                if self.vtls[lower].enabled:
                    self.apply_default_mask(lower, mask)
            self.flush_after_protection_change()
        t.partition_config = value
