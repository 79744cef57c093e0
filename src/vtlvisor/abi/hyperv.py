"""Hyper-V guest ABI (TLFS) subset used by VSM: CPUID leaves, synthetic MSRs, hypercall codes and
control word, status codes, register names, VSM registers and intercept messages.

Sources: Microsoft Hypervisor Top-Level Functional Specification (TLFS) v6, chapters 3 (CPUID),
  4 (hypercall interface), 11 (SynIC), 15 (Virtual Secure Mode); microsoft/openvmm
  vm/hv1/hvdef/src/lib.rs (the same ABI as typed Rust definitions); the MsvmPkg HvGuest*.h headers
  (as republished in ProjectMile/Mile.HyperV Mile.HyperV.Guest.Interface.h); Linux
  include/hyperv/hvgdk_mini.h. Names follow the TLFS / hvdef spelling.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag

# ---------------------------------------------------------------- CPUID (TLFS 2.4)
HV_CPUID_VENDOR_AND_MAX_FUNCTIONS = 0x40000000
HV_CPUID_INTERFACE = 0x40000001
HV_CPUID_VERSION = 0x40000002
HV_CPUID_FEATURES = 0x40000003
HV_CPUID_ENLIGHTENMENT_INFO = 0x40000004
HV_CPUID_IMPLEMENTATION_LIMITS = 0x40000005
HV_CPUID_HARDWARE_FEATURES = 0x40000006
HV_CPUID_MAX_LEAF = 0x4000000A
HV_VENDOR_SIGNATURE = b"Microsoft Hv"
HV_INTERFACE_SIGNATURE = 0x31237648          # "Hv#1"
#: KVM moves its leaves here when Hyper-V enlightenments are exposed (as KVM does)
KVM_CPUID_BASE_WITH_HYPERV = 0x40000100


class HvPartitionPrivilege(IntFlag):
    """HV_PARTITION_PRIVILEGE_MASK, low dword in CPUID 0x40000003.EAX, high dword in EBX."""

    AccessVpRunTimeReg = 1 << 0
    AccessPartitionReferenceCounter = 1 << 1
    AccessSynicRegs = 1 << 2
    AccessSyntheticTimerRegs = 1 << 3
    AccessIntrCtrlRegs = 1 << 4
    AccessHypercallMsrs = 1 << 5
    AccessVpIndex = 1 << 6
    AccessVsm = 1 << 48
    AccessVpRegisters = 1 << 49


# ---------------------------------------------------------------- synthetic MSRs (TLFS 2.5)
class HvMsr(IntEnum):
    HV_X64_MSR_GUEST_OS_ID = 0x40000000
    HV_X64_MSR_HYPERCALL = 0x40000001
    HV_X64_MSR_VP_INDEX = 0x40000002
    HV_X64_MSR_NPIEP_CONFIG = 0x40000040
    HV_X64_MSR_VP_ASSIST_PAGE = 0x40000073
    HV_X64_MSR_SCONTROL = 0x40000080
    HV_X64_MSR_SVERSION = 0x40000081
    HV_X64_MSR_SIEFP = 0x40000082
    HV_X64_MSR_SIMP = 0x40000083
    HV_X64_MSR_EOM = 0x40000084
    HV_X64_MSR_SINT0 = 0x40000090
    HV_X64_MSR_SINT15 = 0x4000009F


HV_X64_MSR_HYPERCALL_ENABLE = 1 << 0
HV_X64_MSR_HYPERCALL_LOCKED = 1 << 1
HV_SYNIC_SINT_MASKED = 1 << 16
HV_SYNIC_VERSION = 1


class HvNpiepConfig(IntFlag):
    """HV_X64_MSR_NPIEP_CONFIG: prevent CPL>0 execution of descriptor-table reads."""

    PreventSgdt = 1 << 0
    PreventSidt = 1 << 1
    PreventSldt = 1 << 2
    PreventStr = 1 << 3


# ---------------------------------------------------------------- hypercalls (TLFS 3)
class HvCallCode(IntEnum):
    HvCallModifyVtlProtectionMask = 0x000C
    HvCallEnablePartitionVtl = 0x000D
    HvCallEnableVpVtl = 0x000F
    HvCallVtlCall = 0x0011
    HvCallVtlReturn = 0x0012
    HvCallGetVpRegisters = 0x0050
    HvCallSetVpRegisters = 0x0051
    HvCallTranslateVirtualAddress = 0x0052


#: hypercalls that take a rep count (all others must have rep count 0)
REP_HYPERCALLS = frozenset({HvCallCode.HvCallModifyVtlProtectionMask, HvCallCode.HvCallGetVpRegisters,
                            HvCallCode.HvCallSetVpRegisters})

CONTROL_CODE_MASK = 0xFFFF
CONTROL_FAST = 1 << 16
CONTROL_VARHEAD_SHIFT = 17
CONTROL_VARHEAD_MASK = 0x3FF << 17
CONTROL_NESTED = 1 << 31
CONTROL_REP_COUNT_SHIFT = 32
CONTROL_REP_START_SHIFT = 48
CONTROL_REP_MASK = 0xFFF
#: reserved bits of the hypercall input value: 27-30, 44-47, 60-63
CONTROL_RESERVED = (0xF << 27) | (0xF << 44) | (0xF << 60)
HV_PARTITION_ID_SELF = 0xFFFFFFFFFFFFFFFF
HV_ANY_VP = 0xFFFFFFFF
HV_VP_INDEX_SELF = 0xFFFFFFFE


class HvStatus(IntEnum):
    HV_STATUS_SUCCESS = 0x0000
    HV_STATUS_INVALID_HYPERCALL_CODE = 0x0002
    HV_STATUS_INVALID_HYPERCALL_INPUT = 0x0003
    HV_STATUS_INVALID_ALIGNMENT = 0x0004
    HV_STATUS_INVALID_PARAMETER = 0x0005
    HV_STATUS_ACCESS_DENIED = 0x0006
    HV_STATUS_INVALID_PARTITION_STATE = 0x0007
    HV_STATUS_OPERATION_DENIED = 0x0008
    HV_STATUS_INVALID_PARTITION_ID = 0x000D
    HV_STATUS_INVALID_VP_INDEX = 0x000E
    HV_STATUS_INVALID_VP_STATE = 0x0015
    HV_STATUS_FEATURE_UNAVAILABLE = 0x001E
    HV_STATUS_INVALID_REGISTER_VALUE = 0x0050
    HV_STATUS_INVALID_VTL_STATE = 0x0051
    HV_STATUS_VTL_ALREADY_ENABLED = 0x0086
    HV_STATUS_UNKNOWN_REGISTER_NAME = 0x0087


class HvTranslateGvaResult(IntEnum):
    """HV_TRANSLATE_GVA_RESULT_CODE."""

    Success = 0
    PageNotPresent = 1
    PrivilegeViolation = 2
    InvalidPageTableFlags = 3
    GpaUnmapped = 4
    GpaNoReadAccess = 5
    GpaNoWriteAccess = 6
    GpaIllegalOverlayAccess = 7
    Intercept = 8


class HvTranslateGvaFlags(IntFlag):
    ValidateRead = 1 << 0
    ValidateWrite = 1 << 1
    ValidateExecute = 1 << 2
    PrivilegeExempt = 1 << 3
    SetPageTableBits = 1 << 4
    TlbFlushInhibit = 1 << 5
    SupervisorAccess = 1 << 6
    UserAccess = 1 << 7


# ---------------------------------------------------------------- memory protections (TLFS 15.9)
class HvMapGpaFlags(IntFlag):
    HV_MAP_GPA_READABLE = 0x1
    HV_MAP_GPA_WRITABLE = 0x2
    HV_MAP_GPA_KERNEL_EXECUTABLE = 0x4
    HV_MAP_GPA_USER_EXECUTABLE = 0x8


HV_MAP_GPA_PERMISSIONS_MASK = 0xF


class HvInputVtl(IntFlag):
    """HV_INPUT_VTL: bits 0-3 target VTL, bit 4 use_target_vtl."""

    UseTargetVtl = 1 << 4


# ---------------------------------------------------------------- registers (TLFS 15, hvdef)
class HvRegisterName(IntEnum):
    HvRegisterPendingEvent0 = 0x00010004
    HvX64RegisterRax = 0x00020000
    HvX64RegisterRcx = 0x00020001
    HvX64RegisterRdx = 0x00020002
    HvX64RegisterRbx = 0x00020003
    HvX64RegisterRsp = 0x00020004
    HvX64RegisterRbp = 0x00020005
    HvX64RegisterRsi = 0x00020006
    HvX64RegisterRdi = 0x00020007
    HvX64RegisterR8 = 0x00020008
    HvX64RegisterR9 = 0x00020009
    HvX64RegisterR10 = 0x0002000A
    HvX64RegisterR11 = 0x0002000B
    HvX64RegisterR12 = 0x0002000C
    HvX64RegisterR13 = 0x0002000D
    HvX64RegisterR14 = 0x0002000E
    HvX64RegisterR15 = 0x0002000F
    HvX64RegisterRip = 0x00020010
    HvX64RegisterRflags = 0x00020011
    HvX64RegisterCr0 = 0x00040000
    HvX64RegisterCr2 = 0x00040001
    HvX64RegisterCr3 = 0x00040002
    HvX64RegisterCr4 = 0x00040003
    HvX64RegisterCr8 = 0x00040004
    HvX64RegisterDr7 = 0x00050005
    HvX64RegisterEs = 0x00060000
    HvX64RegisterCs = 0x00060001
    HvX64RegisterSs = 0x00060002
    HvX64RegisterDs = 0x00060003
    HvX64RegisterFs = 0x00060004
    HvX64RegisterGs = 0x00060005
    HvX64RegisterLdtr = 0x00060006
    HvX64RegisterTr = 0x00060007
    HvX64RegisterIdtr = 0x00070000
    HvX64RegisterGdtr = 0x00070001
    HvX64RegisterEfer = 0x00080001
    HvX64RegisterKernelGsBase = 0x00080002
    HvX64RegisterApicBase = 0x00080003
    HvX64RegisterPat = 0x00080004
    HvX64RegisterSysenterCs = 0x00080005
    HvX64RegisterSysenterEip = 0x00080006
    HvX64RegisterSysenterEsp = 0x00080007
    HvX64RegisterStar = 0x00080008
    HvX64RegisterLstar = 0x00080009
    HvX64RegisterCstar = 0x0008000A
    HvX64RegisterSfmask = 0x0008000B
    HvRegisterVpAssistPage = 0x00090013
    HvRegisterVsmCodePageOffsets = 0x000D0002
    HvRegisterVsmVpStatus = 0x000D0003
    HvRegisterVsmPartitionStatus = 0x000D0004
    HvRegisterVsmCapabilities = 0x000D0006
    HvRegisterVsmPartitionConfig = 0x000D0007
    HvRegisterVsmVpSecureConfigVtl0 = 0x000D0010
    HvRegisterVsmVpSecureConfigVtl1 = 0x000D0011
    HvX64RegisterCrInterceptControl = 0x000E0000
    HvX64RegisterCrInterceptCr0Mask = 0x000E0001
    HvX64RegisterCrInterceptCr4Mask = 0x000E0002
    HvX64RegisterCrInterceptIa32MiscEnableMask = 0x000E0003


class HvCrInterceptControl(IntFlag):
    """HvX64RegisterCrInterceptControl bits (TLFS 15.11.3)."""

    Cr0Write = 1 << 0
    Cr4Write = 1 << 1
    XCr0Write = 1 << 2
    IA32MiscEnableRead = 1 << 3
    IA32MiscEnableWrite = 1 << 4
    MsrLstarRead = 1 << 5
    MsrLstarWrite = 1 << 6
    MsrStarRead = 1 << 7
    MsrStarWrite = 1 << 8
    MsrCstarRead = 1 << 9
    MsrCstarWrite = 1 << 10
    ApicBaseMsrRead = 1 << 11
    ApicBaseMsrWrite = 1 << 12
    MsrEferRead = 1 << 13
    MsrEferWrite = 1 << 14
    GdtrWrite = 1 << 15
    IdtrWrite = 1 << 16
    LdtrWrite = 1 << 17
    TrWrite = 1 << 18
    MsrSysenterCsWrite = 1 << 19
    MsrSysenterEipWrite = 1 << 20
    MsrSysenterEspWrite = 1 << 21
    MsrSfmaskWrite = 1 << 22
    MsrTscAuxWrite = 1 << 23
    MsrSgxLaunchControlWrite = 1 << 24


class HvVsmPartitionConfig(IntFlag):
    """HvRegisterVsmPartitionConfig (TLFS 15.5.1)."""

    EnableVtlProtection = 1 << 0
    DefaultVtlProtectionMask = 0xF << 1
    ZeroMemoryOnReset = 1 << 5
    DenyLowerVtlStartup = 1 << 6
    InterceptAcceptance = 1 << 7
    InterceptEnableVtlProtection = 1 << 8
    InterceptVpStartup = 1 << 9
    InterceptCpuid = 1 << 10
    InterceptUnrecoverableException = 1 << 11


class HvEnablePartitionVtlFlags(IntFlag):
    """HvCallEnablePartitionVtl flags byte (hvdef EnablePartitionVtlFlags)."""

    EnableMbec = 1 << 0
    EnableSupervisorShadowStack = 1 << 1
    EnableHardwareHvpt = 1 << 2


class HvVsmVpSecureVtlConfig(IntFlag):
    """HvRegisterVsmVpSecureConfigVtl<n> (TLFS 15.5.2 "Configuring Lower VTLs"): a higher VTL's own
    instance for the lower VTL n. MBEC needs this bit and the EnableMbec flag of HvCallEnablePartitionVtl
    for the higher VTL (TLFS 15.9, "MBEC configuration")."""

    MbecEnabled = 1 << 0
    TlbLocked = 1 << 1
    SupervisorShadowStackEnabled = 1 << 2
    HardwareHvptEnabled = 1 << 3


#: HvRegisterVsmCapabilities (hvdef HvRegisterVsmCapabilities; Linux hvgdk_mini.h
#: hv_register_vsm_capabilities): bit 0 Dr6Shared, bits 1-16 MbecVtlMask, bit 17 DenyLowerVtlStartup.
#: The TLFS page lists the same fields from bit 63 downwards; hvdef and Linux (the code that runs
#: against Hyper-V) put them at the low end, and so do we.
VSM_CAP_DR6_SHARED = 1 << 0
VSM_CAP_MBEC_VTL_MASK_SHIFT = 1
#: HvRegisterVsmPartitionStatus: enabled set 0-15, maximum VTL 16-19, MbecEnabledVtlSet 20-35
VSM_PARTITION_STATUS_MAX_VTL_SHIFT = 16
VSM_PARTITION_STATUS_MBEC_SHIFT = 20
#: HvRegisterVsmVpStatus: active VTL 0-3, ActiveMbecEnabled 4, enabled VTL set 16-31
VSM_VP_STATUS_ACTIVE_MBEC = 1 << 4
VSM_VP_STATUS_ENABLED_SHIFT = 16


class HvVtlEntryReason(IntEnum):
    HvVtlEntryReserved = 0
    HvVtlEntryVtlCall = 1
    HvVtlEntryInterrupt = 2
    HvVtlEntryIntercept = 3


#: VTL return control input (TLFS 15.8.1 "VTL Return": bits 63:1 RsvdZ, bit 0 fast return - registers are not
#: restored from HV_VP_VTL_CONTROL). Callers of the hypercall page pass it in RCX; the page's sequence
#: moves it to RAX, where the hypervisor reads it (OpenVMM vm/hv1/hv1_emulator/src/hv.rs hypercall_page,
#: vm/hv1/hv1_hypercall/src/x86.rs vtl_input = RAX for 64-bit callers, imp.rs HvVtlReturn: "input must be
#: 0 or 1"); Linux arch/x86/hyperv/mshv_vtl_asm.S clears ECX (a normal return) before calling it after
#: filling vtl_ret_x64rax/rcx. The VTL call control input is all reserved (must be 0).
HV_VTL_RETURN_INPUT_FAST = 1 << 0

#: VP assist page layout (hvdef HvVpAssistPage): HvVpVtlControl at 0x08
VP_ASSIST_VTL_CONTROL = 0x08
VP_ASSIST_ENTRY_REASON = 0x08
VP_ASSIST_RETURN_RAX = 0x10
VP_ASSIST_RETURN_RCX = 0x18


# ---------------------------------------------------------------- SynIC messages (TLFS 11.10)
class HvMessageType(IntEnum):
    HvMessageTypeNone = 0x00000000
    HvMessageTypeUnmappedGpa = 0x80000000
    HvMessageTypeGpaIntercept = 0x80000001
    HvMessageTypeX64MsrIntercept = 0x80010001
    HvMessageTypeRegisterIntercept = 0x80010006


HV_MESSAGE_SIZE = 256
HV_MESSAGE_PAYLOAD_SIZE = 240
HV_MESSAGE_FLAG_PENDING = 1 << 0


class HvInterceptAccessType(IntEnum):
    HV_INTERCEPT_ACCESS_READ = 0
    HV_INTERCEPT_ACCESS_WRITE = 1
    HV_INTERCEPT_ACCESS_EXECUTE = 2


def hv_message(msg_type: int, payload: bytes) -> bytes:
    """HV_MESSAGE: {u32 MessageType; u8 PayloadSize; u8 MessageFlags; u16 Reserved; u64 Sender} + 240."""
    if len(payload) > HV_MESSAGE_PAYLOAD_SIZE:
        raise ValueError("message payload too large")
    return struct.pack("<IBBHQ", msg_type, len(payload), 0, 0, 0) + payload.ljust(HV_MESSAGE_PAYLOAD_SIZE, b"\0")


def segment_register(base: int, limit: int, selector: int, attributes: int) -> bytes:
    """HV_X64_SEGMENT_REGISTER {u64 Base; u32 Limit; u16 Selector; u16 Attributes}."""
    return struct.pack("<QIHH", base, limit, selector, attributes)


def intercept_header(vp_index: int, insn_len: int, cr8: int, access: int, exec_state: int,
                     cs: bytes, rip: int, rflags: int) -> bytes:
    """HV_X64_INTERCEPT_MESSAGE_HEADER (40 bytes)."""
    return struct.pack("<IBBH", vp_index, (insn_len & 0xF) | ((cr8 & 0xF) << 4), access, exec_state) + cs \
        + struct.pack("<QQ", rip, rflags)


def exec_state(cpl: int, cr0_pe: bool, cr0_am: bool, efer_lma: bool, vtl: int) -> int:
    """HV_X64_VP_EXECUTION_STATE: Cpl 0-1, Cr0Pe 2, Cr0Am 3, EferLma 4, DebugActive 5,
    InterruptionPending 6, Vtl 7-10, EnclaveMode 11, InterruptShadow 12."""
    return (cpl & 3) | (cr0_pe << 2) | (cr0_am << 3) | (efer_lma << 4) | ((vtl & 0xF) << 7)


def attributes_from_flags(flags: int) -> int:
    """QEMU/descriptor flags (high dword bits 8-23) -> HV segment attributes (16 bits)."""
    return ((flags >> 8) & 0xFF) | ((flags >> 8) & 0xF000)


def flags_from_attributes(attr: int) -> int:
    return ((attr & 0xFF) << 8) | ((attr & 0xF000) << 8)
