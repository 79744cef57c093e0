"""x86-64 architectural constants (Intel SDM vol. 3 / AMD APM vol. 2), named as the manuals name them."""

from enum import IntEnum, IntFlag


class CR0(IntFlag):
    PE = 1 << 0
    MP = 1 << 1
    EM = 1 << 2
    TS = 1 << 3
    ET = 1 << 4
    NE = 1 << 5
    WP = 1 << 16
    AM = 1 << 18
    NW = 1 << 29
    CD = 1 << 30
    PG = 1 << 31


CR0_RESERVED = ~(sum(CR0)) & 0xFFFFFFFFFFFFFFFF


class CR4(IntFlag):
    VME = 1 << 0
    PVI = 1 << 1
    TSD = 1 << 2
    DE = 1 << 3
    PSE = 1 << 4
    PAE = 1 << 5
    MCE = 1 << 6
    PGE = 1 << 7
    PCE = 1 << 8
    OSFXSR = 1 << 9
    OSXMMEXCPT = 1 << 10
    UMIP = 1 << 11
    LA57 = 1 << 12
    VMXE = 1 << 13
    SMXE = 1 << 14
    FSGSBASE = 1 << 16
    PCIDE = 1 << 17
    OSXSAVE = 1 << 18
    SMEP = 1 << 20
    SMAP = 1 << 21
    PKE = 1 << 22
    CET = 1 << 23


class EFER(IntFlag):
    SCE = 1 << 0
    LME = 1 << 8
    LMA = 1 << 10
    NXE = 1 << 11
    SVME = 1 << 12
    LMSLE = 1 << 13
    FFXSR = 1 << 14
    TCE = 1 << 15


class RFLAGS(IntFlag):
    CF = 1 << 0
    FIXED1 = 1 << 1
    PF = 1 << 2
    AF = 1 << 4
    ZF = 1 << 6
    SF = 1 << 7
    TF = 1 << 8
    IF = 1 << 9
    DF = 1 << 10
    OF = 1 << 11
    IOPL = 3 << 12
    NT = 1 << 14
    RF = 1 << 16
    VM = 1 << 17
    AC = 1 << 18
    VIF = 1 << 19
    VIP = 1 << 20
    ID = 1 << 21


class Vector(IntEnum):
    """Exception vectors (SDM vol. 3, table 6-1)."""

    DE = 0
    DB = 1
    NMI = 2
    BP = 3
    OF = 4
    BR = 5
    UD = 6
    NM = 7
    DF = 8
    TS = 10
    NP = 11
    SS = 12
    GP = 13
    PF = 14
    MF = 16
    AC = 17
    MC = 18
    XM = 19
    VE = 20
    CP = 21


#: vectors that push an error code (SDM 6.13)
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
#: "contributory" exceptions for #DF escalation (SDM table 6-4)
CONTRIBUTORY = frozenset({0, 10, 11, 12, 13})
#: faults whose saved RIP is the faulting instruction; traps report the next one
TRAP_VECTORS = frozenset({1, 3, 4})


class PFErr(IntFlag):
    """#PF error code bits (SDM 4.7)."""

    P = 1 << 0
    W = 1 << 1
    U = 1 << 2
    RSVD = 1 << 3
    I = 1 << 4  # noqa: E741 (the SDM's name)
    PK = 1 << 5


class MSR(IntEnum):
    """Architectural MSR numbers (SDM vol. 4; AMD APM vol. 2 appendix A)."""

    IA32_TSC = 0x10
    IA32_APIC_BASE = 0x1B
    IA32_FEATURE_CONTROL = 0x3A
    IA32_TSC_ADJUST = 0x3B
    IA32_SPEC_CTRL = 0x48
    IA32_BIOS_SIGN_ID = 0x8B
    IA32_MTRRCAP = 0xFE
    IA32_SYSENTER_CS = 0x174
    IA32_SYSENTER_ESP = 0x175
    IA32_SYSENTER_EIP = 0x176
    IA32_MCG_CAP = 0x179
    IA32_MCG_STATUS = 0x17A
    IA32_MISC_ENABLE = 0x1A0
    IA32_PAT = 0x277
    IA32_MTRR_DEF_TYPE = 0x2FF
    IA32_EFER = 0xC0000080
    IA32_STAR = 0xC0000081
    IA32_LSTAR = 0xC0000082
    IA32_CSTAR = 0xC0000083
    IA32_FMASK = 0xC0000084
    IA32_FS_BASE = 0xC0000100
    IA32_GS_BASE = 0xC0000101
    IA32_KERNEL_GS_BASE = 0xC0000102
    IA32_TSC_AUX = 0xC0000103
    VM_CR = 0xC0010114
    VM_HSAVE_PA = 0xC0010117


PAGE_SIZE = 0x1000
ADDR_MASK = 0x000FFFFFFFFFF000
MASK64 = 0xFFFFFFFFFFFFFFFF


def canonical(va: int) -> bool:
    """48-bit canonical form (4-level paging)."""
    top = va >> 47
    return top == 0 or top == 0x1FFFF


def sign_extend48(va: int) -> int:
    va &= (1 << 48) - 1
    return va | (0xFFFF << 48) if va & (1 << 47) else va
