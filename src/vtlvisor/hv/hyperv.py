"""Hyper-V enlightenments of a partition: CPUID leaves, synthetic MSRs (per VTL where the TLFS makes
them private), the hypercall page and the hypercall dispatcher (control word, rep and fast
conventions, input/output pages, status codes). The VSM hypercalls themselves live in hv/vsm.py.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..abi.hyperv import (
    CONTROL_FAST,
    CONTROL_NESTED,
    CONTROL_REP_COUNT_SHIFT,
    CONTROL_REP_MASK,
    CONTROL_REP_START_SHIFT,
    CONTROL_RESERVED,
    CONTROL_VARHEAD_MASK,
    HV_CPUID_MAX_LEAF,
    HV_INTERFACE_SIGNATURE,
    HV_SYNIC_SINT_MASKED,
    HV_SYNIC_VERSION,
    HV_VENDOR_SIGNATURE,
    HV_X64_MSR_HYPERCALL_ENABLE,
    HV_X64_MSR_HYPERCALL_LOCKED,
    REP_HYPERCALLS,
    HvCallCode,
    HvMsr,
    HvPartitionPrivilege,
    HvStatus,
)
from ..x86.arch import Vector
from .msrs import GuestGP

if TYPE_CHECKING:
    from .vcpu import Vcpu
    from .vsm import Vsm

log = logging.getLogger(__name__)

#: hypercall page layout (ours; reported to the guest through HvRegisterVsmCodePageOffsets). The VTL call
#: and return sequences take the VTL call/return *control input* in RCX (TLFS 15.7 / 15.8 register
#: tables: x64 RCX = control input, RAX reserved; return input bit 0 = fast return) and hand it to the
#: hypervisor in RAX with the call code in RCX, as Hyper-V's and OpenVMM's pages do (openvmm
#: vm/hv1/hv1_emulator/src/hv.rs ``hypercall_page``: ``mov rax, rcx; mov ecx, 0x11|0x12; vmmcall; ret``;
#: vm/hv1/hv1_hypercall/src/x86.rs ``vtl_input`` reads RAX). Linux passes the return kind in RCX:
#: arch/x86/hyperv/mshv_vtl_asm.S ``xor %ecx, %ecx`` before calling the page (a normal return).
HYPERCALL_STUB = bytes.fromhex("0f01d9c3")                       # vmmcall; ret
VTL_CALL_OFFSET = 0x10
VTL_RETURN_OFFSET = 0x20
VTL_CALL_STUB = bytes.fromhex("4889c8b911000000") + HYPERCALL_STUB    # mov rax, rcx; mov ecx, HvCallVtlCall
VTL_RETURN_STUB = bytes.fromhex("4889c8b912000000") + HYPERCALL_STUB  # mov rax, rcx; mov ecx, HvCallVtlReturn
PAGE = 0x1000
MASK64 = 0xFFFFFFFFFFFFFFFF


@dataclass
class SynicState:
    scontrol: int = 0
    siefp: int = 0
    simp: int = 0
    sint: list[int] = field(default_factory=lambda: [HV_SYNIC_SINT_MASKED] * 16)


@dataclass
class HvVtlMsrs:
    """Synthetic MSRs private to one VTL (TLFS 15.11.1 lists GUEST_OS_ID, HYPERCALL, the VP assist page,
    NPIEP_CONFIG and the SynIC MSRs among the private MSRs)."""

    guest_os_id: int = 0
    hypercall: int = 0
    vp_assist_page: int = 0
    npiep_config: int = 0
    synic: SynicState = field(default_factory=SynicState)


class HypercallError(Exception):
    def __init__(self, status: int, reps_done: int = 0) -> None:
        super().__init__(f"hypercall status {status:#x}")
        self.status = status
        self.reps_done = reps_done


@dataclass
class HypercallInput:
    code: int
    fast: bool
    rep_count: int
    rep_start: int
    data: bytes            # header + rep elements (fast: the 16 register bytes)
    output_gpa: int
    control: int


#: handler(vcpu, call) -> (status, reps_done, output bytes)
Handler = Callable[["Vcpu", HypercallInput], tuple[int, int, bytes]]


class HyperV:
    def __init__(self, vsm: Vsm) -> None:
        self.vsm = vsm
        self.handlers: dict[int, Handler] = {}

    # ------------------------------------------------------------------ CPUID
    def cpuid(self, leaf: int, sub: int) -> tuple[int, int, int, int] | None:
        if leaf == 0x40000000:
            b, c, d = (int.from_bytes(HV_VENDOR_SIGNATURE[i:i + 4], "little") for i in (0, 4, 8))
            return (HV_CPUID_MAX_LEAF, b, c, d)
        if leaf == 0x40000001:
            return (HV_INTERFACE_SIGNATURE, 0, 0, 0)
        if leaf == 0x40000002:
            return (0x1, 0x000A0000, 0, 0)                  # build 1, version 10.0
        if leaf == 0x40000003:
            priv = (HvPartitionPrivilege.AccessSynicRegs | HvPartitionPrivilege.AccessHypercallMsrs
                    | HvPartitionPrivilege.AccessVpIndex | HvPartitionPrivilege.AccessVsm
                    | HvPartitionPrivilege.AccessVpRegisters)
            return (priv & 0xFFFFFFFF, priv >> 32, 0, 0)
        if leaf == 0x40000005:
            return (1, 1, 0, 0)                              # max VPs, max LPs
        if 0x40000004 <= leaf <= HV_CPUID_MAX_LEAF:
            return (0, 0, 0, 0)
        return None

    # ------------------------------------------------------------------ synthetic MSRs (MsrProvider)
    def msr_read(self, vcpu: Vcpu, msr: int) -> int | None:
        m = self.vsm.active.hv_msrs
        if msr == HvMsr.HV_X64_MSR_GUEST_OS_ID:
            return m.guest_os_id
        if msr == HvMsr.HV_X64_MSR_HYPERCALL:
            return m.hypercall
        if msr == HvMsr.HV_X64_MSR_VP_INDEX:
            return vcpu.vp_index
        if msr == HvMsr.HV_X64_MSR_VP_ASSIST_PAGE:
            return m.vp_assist_page
        if msr == HvMsr.HV_X64_MSR_NPIEP_CONFIG:
            return m.npiep_config
        s = m.synic
        if msr == HvMsr.HV_X64_MSR_SCONTROL:
            return s.scontrol
        if msr == HvMsr.HV_X64_MSR_SVERSION:
            return HV_SYNIC_VERSION
        if msr == HvMsr.HV_X64_MSR_SIEFP:
            return s.siefp
        if msr == HvMsr.HV_X64_MSR_SIMP:
            return s.simp
        if msr == HvMsr.HV_X64_MSR_EOM:
            return 0
        if HvMsr.HV_X64_MSR_SINT0 <= msr <= HvMsr.HV_X64_MSR_SINT15:
            return s.sint[msr - HvMsr.HV_X64_MSR_SINT0]
        return None

    def msr_write(self, vcpu: Vcpu, msr: int, value: int) -> bool:
        m = self.vsm.active.hv_msrs
        if msr == HvMsr.HV_X64_MSR_GUEST_OS_ID:
            m.guest_os_id = value
            if value == 0:
                m.hypercall &= ~HV_X64_MSR_HYPERCALL_ENABLE
            return True
        if msr == HvMsr.HV_X64_MSR_HYPERCALL:
            self._write_hypercall_msr(vcpu, value)
            return True
        if msr == HvMsr.HV_X64_MSR_VP_INDEX or msr == HvMsr.HV_X64_MSR_SVERSION:
            raise GuestGP(0, "read-only synthetic MSR")
        if msr == HvMsr.HV_X64_MSR_VP_ASSIST_PAGE:
            if value & 0xFFE:
                raise GuestGP(0, "VP assist page: reserved bits")
            m.vp_assist_page = value
            return True
        if msr == HvMsr.HV_X64_MSR_NPIEP_CONFIG:
            if value & ~0xF:
                raise GuestGP(0, "NPIEP_CONFIG: reserved bits")
            m.npiep_config = value
            return True
        s = m.synic
        if msr == HvMsr.HV_X64_MSR_SCONTROL:
            s.scontrol = value & 1
            return True
        if msr in (HvMsr.HV_X64_MSR_SIEFP, HvMsr.HV_X64_MSR_SIMP):
            if value & 0xFFE:
                raise GuestGP(0, "SynIC page MSR: reserved bits")
            if msr == HvMsr.HV_X64_MSR_SIMP:
                s.simp = value
            else:
                s.siefp = value
            return True
        if msr == HvMsr.HV_X64_MSR_EOM:
            return True
        if HvMsr.HV_X64_MSR_SINT0 <= msr <= HvMsr.HV_X64_MSR_SINT15:
            vec = value & 0xFF
            if value & ~0x700FF & MASK64 or (vec < 16 and not value & HV_SYNIC_SINT_MASKED):
                raise GuestGP(0, "SINT: reserved bits or vector < 16")
            s.sint[msr - HvMsr.HV_X64_MSR_SINT0] = value
            return True
        return False

    def _write_hypercall_msr(self, vcpu: Vcpu, value: int) -> None:
        m = self.vsm.active.hv_msrs
        if m.hypercall & HV_X64_MSR_HYPERCALL_LOCKED:
            if value != m.hypercall:
                raise GuestGP(0, "hypercall MSR is locked")
            return
        if value & 0xFFC:
            raise GuestGP(0, "hypercall MSR: reserved bits")
        if value & HV_X64_MSR_HYPERCALL_ENABLE:
            if m.guest_os_id == 0:
                value &= ~HV_X64_MSR_HYPERCALL_ENABLE    # TLFS: no hypercall page before GUEST_OS_ID
            else:
                gpa = value & ~0xFFF & MASK64
                if not vcpu.mem.contains(gpa, PAGE) or not self.vsm.can_access(self.vsm.active_vtl, gpa, True):
                    raise GuestGP(0, "hypercall page outside writable RAM")
                page = bytearray(PAGE)
                page[0:len(HYPERCALL_STUB)] = HYPERCALL_STUB
                page[VTL_CALL_OFFSET:VTL_CALL_OFFSET + len(VTL_CALL_STUB)] = VTL_CALL_STUB
                page[VTL_RETURN_OFFSET:VTL_RETURN_OFFSET + len(VTL_RETURN_STUB)] = VTL_RETURN_STUB
                vcpu.mem.write(gpa, bytes(page))
                vcpu.engine.flush_tb()
        m.hypercall = value

    @property
    def enabled_for_active_vtl(self) -> bool:
        return bool(self.vsm.active.hv_msrs.hypercall & HV_X64_MSR_HYPERCALL_ENABLE)

    # ------------------------------------------------------------------ hypercall dispatch
    def hypercall(self, vcpu: Vcpu) -> None:
        """The TLFS x64 convention: RCX control, RDX input (GPA or fast value), R8 output (GPA or
        fast value); RAX result {status 0-15, reps completed 32-43}."""
        from .vcpu import GuestFault
        if vcpu.cpl() != 0 or not vcpu.engine.code64():
            vcpu.security_event("refused_hypercall", f"Hyper-V hypercall (RCX {vcpu.reg('rcx'):#x}) at CPL "
                                f"{vcpu.cpl()} -> #UD", vtl=self.vsm.active_vtl)
            raise GuestFault(Vector.UD)
        control = vcpu.reg("rcx")
        code = control & 0xFFFF
        if code in (HvCallCode.HvCallVtlCall, HvCallCode.HvCallVtlReturn):
            self.vsm.vtl_call_or_return(vcpu, control)
            return
        status, reps = self._dispatch(vcpu, control)
        if status != HvStatus.HV_STATUS_SUCCESS:
            name = HvCallCode(code).name if code in HvCallCode._value2member_map_ else f"hypercall {code:#x}"
            vcpu.security_event("refused_hypercall", f"{name} from VTL{self.vsm.active_vtl} -> "
                                f"{HvStatus(status).name if status in HvStatus._value2member_map_ else hex(status)}", vtl=self.vsm.active_vtl, code=code, status=status)
        if vcpu.hooks.trace:
            vcpu.hooks.trace("hypercall", {"abi": "hyperv", "code": code, "status": status, "reps": reps,
                                           "vtl": self.vsm.active_vtl})
        vcpu.set_reg("rax", (status & 0xFFFF) | ((reps & CONTROL_REP_MASK) << 32))

    def _dispatch(self, vcpu: Vcpu, control: int) -> tuple[int, int]:
        code = control & 0xFFFF
        handler = self.handlers.get(code)
        if handler is None:
            return HvStatus.HV_STATUS_INVALID_HYPERCALL_CODE, 0
        fast = bool(control & CONTROL_FAST)
        rep_count = (control >> CONTROL_REP_COUNT_SHIFT) & CONTROL_REP_MASK
        rep_start = (control >> CONTROL_REP_START_SHIFT) & CONTROL_REP_MASK
        if control & (CONTROL_RESERVED | CONTROL_NESTED | CONTROL_VARHEAD_MASK):
            return HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, 0
        is_rep = code in REP_HYPERCALLS
        if (not is_rep and (rep_count or rep_start)) or (is_rep and (rep_count == 0 or rep_start >= rep_count)):
            return HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, 0
        in_val, out_val = vcpu.reg("rdx"), vcpu.reg("r8")
        if fast:
            data = struct.pack("<QQ", in_val, out_val)
            out_gpa = -1
        else:
            if in_val % 8 or out_val % 8:
                return HvStatus.HV_STATUS_INVALID_ALIGNMENT, 0
            if not vcpu.mem.contains(in_val, PAGE - (in_val % PAGE)):
                return HvStatus.HV_STATUS_INVALID_PARAMETER, 0
            if not self.vsm.can_access(self.vsm.active_vtl, in_val, False):
                return HvStatus.HV_STATUS_ACCESS_DENIED, 0
            data = vcpu.mem.read(in_val, PAGE - (in_val % PAGE))     # input may not cross a page
            out_gpa = out_val
        call = HypercallInput(code, fast, rep_count, rep_start, data, out_gpa, control)
        try:
            status, reps, out = handler(vcpu, call)
        except HypercallError as e:
            return e.status, e.reps_done
        except struct.error:
            # the fixed header does not fit in what the caller supplied (a fast call's 16 bytes, or
            # an input block running into the end of its page)
            return HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, 0
        if out:
            if fast:
                if len(out) > 16:
                    return HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, 0
                out = out.ljust(16, b"\0")
                vcpu.set_reg("rdx", struct.unpack_from("<Q", out, 0)[0])
                vcpu.set_reg("r8", struct.unpack_from("<Q", out, 8)[0])
            else:
                if not vcpu.mem.contains(out_gpa, len(out)) or (out_gpa % PAGE) + len(out) > PAGE:
                    return HvStatus.HV_STATUS_INVALID_PARAMETER, 0
                if not self.vsm.can_access(self.vsm.active_vtl, out_gpa, True):
                    return HvStatus.HV_STATUS_ACCESS_DENIED, 0
                vcpu.mem.write(out_gpa, out)
        return status, reps
