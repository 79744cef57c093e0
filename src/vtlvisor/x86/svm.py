"""AMD SVM architecture: exit codes and VMCB layout (AMD APM vol. 2, appendix B and C).

Used by the engine to enter emulated guest mode and by the exit dispatcher to name events.
"""

from enum import IntEnum


class SvmExit(IntEnum):
    """#VMEXIT codes (APM vol. 2, appendix C)."""

    READ_CR0 = 0x000
    READ_CR3 = 0x003
    READ_CR4 = 0x004
    READ_CR8 = 0x008
    WRITE_CR0 = 0x010
    WRITE_CR3 = 0x013
    WRITE_CR4 = 0x014
    WRITE_CR8 = 0x018
    EXCP_BASE = 0x040        # + vector
    INTR = 0x060
    NMI = 0x061
    SMI = 0x062
    INIT = 0x063
    VINTR = 0x064
    CR0_SEL_WRITE = 0x065
    IDTR_READ = 0x066
    GDTR_READ = 0x067
    LDTR_READ = 0x068
    TR_READ = 0x069
    IDTR_WRITE = 0x06A
    GDTR_WRITE = 0x06B
    LDTR_WRITE = 0x06C
    TR_WRITE = 0x06D
    RDTSC = 0x06E
    RDPMC = 0x06F
    PUSHF = 0x070
    POPF = 0x071
    CPUID = 0x072
    RSM = 0x073
    IRET = 0x074
    SWINT = 0x075
    INVD = 0x076
    PAUSE = 0x077
    HLT = 0x078
    INVLPG = 0x079
    INVLPGA = 0x07A
    IOIO = 0x07B
    MSR = 0x07C
    TASK_SWITCH = 0x07D
    FERR_FREEZE = 0x07E
    SHUTDOWN = 0x07F
    VMRUN = 0x080
    VMMCALL = 0x081
    VMLOAD = 0x082
    VMSAVE = 0x083
    STGI = 0x084
    CLGI = 0x085
    SKINIT = 0x086
    RDTSCP = 0x087
    ICEBP = 0x088
    WBINVD = 0x089
    MONITOR = 0x08A
    MWAIT = 0x08B
    MWAIT_COND = 0x08C
    XSETBV = 0x08D
    NPF = 0x400


def intercept_bit(code: SvmExit) -> int:
    """Bit in the VMCB 64-bit general intercept vector (offsets 0x0C/0x10) for an exit code >= INTR."""
    return 1 << (code - SvmExit.INTR)


class Vmcb(IntEnum):
    """VMCB field offsets (APM vol. 2, table B-1 control area, table B-2 state save area at 0x400)."""

    INTERCEPT_CR_READ = 0x000
    INTERCEPT_CR_WRITE = 0x002
    INTERCEPT_DR_READ = 0x004
    INTERCEPT_DR_WRITE = 0x006
    INTERCEPT_EXCEPTIONS = 0x008
    INTERCEPT = 0x00C          # 64 bits: general 1 (0x0C) + general 2 (0x10) as QEMU reads them
    IOPM_BASE_PA = 0x040
    MSRPM_BASE_PA = 0x048
    TSC_OFFSET = 0x050
    ASID = 0x058
    TLB_CONTROL = 0x05C
    INT_CTL = 0x060
    INT_VECTOR = 0x064
    INT_STATE = 0x068
    EXIT_CODE = 0x070
    EXIT_INFO_1 = 0x078
    EXIT_INFO_2 = 0x080
    EXIT_INT_INFO = 0x088
    NESTED_CTL = 0x090
    EVENT_INJ = 0x0A8
    NESTED_CR3 = 0x0B0
    # state save area
    SAVE_ES = 0x400
    SAVE_CS = 0x410
    SAVE_SS = 0x420
    SAVE_DS = 0x430
    SAVE_FS = 0x440
    SAVE_GS = 0x450
    SAVE_GDTR = 0x460
    SAVE_LDTR = 0x470
    SAVE_IDTR = 0x480
    SAVE_TR = 0x490
    SAVE_CPL = 0x4CB
    SAVE_EFER = 0x4D0
    SAVE_CR4 = 0x548
    SAVE_CR3 = 0x550
    SAVE_CR0 = 0x558
    SAVE_DR7 = 0x560
    SAVE_DR6 = 0x568
    SAVE_RFLAGS = 0x570
    SAVE_RIP = 0x578
    SAVE_RSP = 0x5D8
    SAVE_RAX = 0x5F8
    SAVE_STAR = 0x600
    SAVE_LSTAR = 0x608
    SAVE_CSTAR = 0x610
    SAVE_SFMASK = 0x618
    SAVE_KERNEL_GS_BASE = 0x620
    SAVE_SYSENTER_CS = 0x628
    SAVE_SYSENTER_ESP = 0x630
    SAVE_SYSENTER_EIP = 0x638
    SAVE_CR2 = 0x640
    SAVE_G_PAT = 0x668


#: MSR permission map geometry (APM 15.11): 2 bits per MSR, three 8 KiB-MSR ranges.
MSRPM_RANGES = ((0x00000000, 0x0000), (0xC0000000, 0x0800), (0xC0010000, 0x1000))
MSRPM_SIZE = 0x2000
IOPM_SIZE = 0x3000
