"""Everything vtlvisor knows about Unicorn's *internals*, in one place, verified at start-up.

Unicorn 2.1.4 embeds QEMU 5.0's x86 target. Some state we need has no Unicorn API: the CPL and the
hidden segment caches (``hflags``, ``segs[]``), the pending exception's error code, the
``old_exception`` marker Unicorn never clears (Unicorn issue 1883), and QEMU's SVM fields
(``vm_vmcb``, ``intercept*``, ``nested_cr3``). We reach them through the ``uc_context`` blob that
``context_update``/``context_restore`` copy: the blob is a ``CPUX86State`` image after a small header.

The offsets below were measured on unicorn==2.1.4 (see ../shared/research/unicorn-findings.md).
``verify()`` re-measures the ones that can be measured with marker values and refuses to run
(``EngineMismatch``) on any other build, instead of silently corrupting guest state.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

import unicorn
from unicorn import x86_const as X

from ..errors import EngineMismatch

EXPECTED_UNICORN_VERSION = "2.1.4"

# -- CPUX86State layout (QEMU 5.0 as built into unicorn 2.1.4, TARGET_X86_64)
ENV_REGS = 0            # target_ulong regs[16]
ENV_EIP = 128
ENV_EFLAGS = 136        # only the non-arithmetic bits; CF/ZF/... live in cc_src/cc_op
ENV_HFLAGS = 176
ENV_HFLAGS2 = 180
ENV_SEGS = 184          # SegmentCache segs[6] (ES, CS, SS, DS, FS, GS), 24 bytes each
SEG_SIZE = 24           # {u32 selector; u32 pad; u64 base; u32 limit; u32 flags}
ENV_LDT = ENV_SEGS + 6 * SEG_SIZE
ENV_TR = ENV_SEGS + 7 * SEG_SIZE
ENV_GDT = ENV_SEGS + 8 * SEG_SIZE
ENV_IDT = ENV_SEGS + 9 * SEG_SIZE
ENV_CR0 = 424           # target_ulong cr[5]
ENV_CR2 = ENV_CR0 + 16
ENV_CR3 = ENV_CR0 + 24
ENV_CR4 = ENV_CR0 + 32
ENV_ERROR_CODE = 5384   # int error_code (also SVM exit_info_1)
ENV_EXCEPTION_IS_INT = 5388
ENV_EXCEPTION_NEXT_EIP = 5392
ENV_DR0 = 5400          # target_ulong dr[8]
ENV_OLD_EXCEPTION = 5496
ENV_VM_VMCB = 5504
ENV_TSC_OFFSET = 5512
ENV_INTERCEPT = 5520            # u64
ENV_INTERCEPT_CR_READ = 5528    # u16
ENV_INTERCEPT_CR_WRITE = 5530   # u16
ENV_INTERCEPT_DR_READ = 5532
ENV_INTERCEPT_DR_WRITE = 5534
ENV_INTERCEPT_EXCEPTIONS = 5536  # u32
ENV_NESTED_CR3 = 5544
CONTEXT_HEADER = 40             # bytes before CPUX86State inside a uc_context blob

# -- QEMU hflags bits (target/i386/cpu.h)
HF_CPL_MASK = 3
HF_INHIBIT_IRQ_MASK = 1 << 3
HF_CS32_MASK = 1 << 4
HF_SS32_MASK = 1 << 5
HF_ADDSEG_MASK = 1 << 6
HF_LMA_MASK = 1 << 14
HF_CS64_MASK = 1 << 15
HF_GUEST_MASK = 1 << 21
HF2_NPT_MASK = 1 << 6

# -- QEMU SegmentCache.flags = descriptor high dword bits 8..23 (type, S, DPL, P, AVL, L, D/B, G)
DESC_B_MASK = 1 << 22
DESC_L_MASK = 1 << 21

#: QEMU raises an SVM #VMEXIT by setting exception_index = EXCP_VMEXIT + exit code; Unicorn hands
#: that to UC_HOOK_INTR as ``intno`` without performing the world switch.
EXCP_VMEXIT = 0x100


@dataclass(frozen=True)
class Layout:
    """Offsets measured at start-up (they must equal the constants above)."""

    header: int
    error_code: int


def _find(raw: bytes, marker: int) -> int:
    needle = struct.pack("<Q", marker)
    first = raw.find(needle)
    if first < 0 or raw.find(needle, first + 1) >= 0:
        return -1
    return first


def verify(uc: unicorn.Uc) -> Layout:
    """Check the Unicorn build and the CPUX86State layout with marker values; raise EngineMismatch.

    Must be called on a fresh instance before the guest runs (it scribbles on registers and
    restores them).
    """
    version = getattr(unicorn, "__version__", "?")
    if version != EXPECTED_UNICORN_VERSION:
        raise EngineMismatch(
            f"unicorn {version} is installed but vtlvisor knows the internals of unicorn "
            f"{EXPECTED_UNICORN_VERSION} only; install unicorn=={EXPECTED_UNICORN_VERSION}")
    saved = {r: uc.reg_read(r) for r in (X.UC_X86_REG_RAX, X.UC_X86_REG_DR0, X.UC_X86_REG_RIP,
                                         X.UC_X86_REG_CR3, X.UC_X86_REG_R15)}
    uc.reg_write(X.UC_X86_REG_RAX, 0x1122334455667788)
    uc.reg_write(X.UC_X86_REG_R15, 0x0F0E0D0C0B0A0908)
    uc.reg_write(X.UC_X86_REG_DR0, 0x8877665544332211)
    uc.reg_write(X.UC_X86_REG_RIP, 0x0000123456789AB0)
    uc.reg_write(X.UC_X86_REG_CR3, 0x0000000ABCDEF000)
    raw = bytes(uc.context_save())
    header = _find(raw, 0x1122334455667788)
    problems = []
    if header != CONTEXT_HEADER:
        problems.append(f"CPUX86State at {header}, expected {CONTEXT_HEADER}")
    else:
        checks = {
            "regs[15]": (ENV_REGS + 15 * 8, 0x0F0E0D0C0B0A0908),
            "eip": (ENV_EIP, 0x0000123456789AB0),
            "cr[3]": (ENV_CR3, 0x0000000ABCDEF000),
            "dr[0]": (ENV_DR0, 0x8877665544332211),
        }
        for name, (off, val) in checks.items():
            got = struct.unpack_from("<Q", raw, header + off)[0]
            if got != val:
                problems.append(f"{name} not at offset {off}")
    for r, v in saved.items():
        uc.reg_write(r, v)
    if problems:
        raise EngineMismatch("unexpected Unicorn build (CPU state layout differs: "
                             + "; ".join(problems) + "); vtlvisor refuses to run")
    return Layout(header=header, error_code=ENV_ERROR_CODE)


def verify_guest_mode(env: EnvBlob, vmcb: int, nested_cr3: int, intercept: int) -> None:
    """After VMRUN: the SVM fields must hold what we put in the VMCB."""
    problems = []
    if not env.u32(ENV_HFLAGS) & HF_GUEST_MASK:
        problems.append("CPU did not enter SVM guest mode")
    if env.u64(ENV_VM_VMCB) != vmcb:
        problems.append("vm_vmcb offset")
    if env.u64(ENV_NESTED_CR3) != nested_cr3:
        problems.append("nested_cr3 offset")
    if env.u64(ENV_INTERCEPT) != intercept:
        problems.append("intercept offset")
    if problems:
        raise EngineMismatch("unexpected Unicorn build (SVM state: " + "; ".join(problems)
                             + "); vtlvisor refuses to run")


class EnvBlob:
    """One reusable uc_context used as a window onto CPUX86State (a "VMCS" we can read and patch).

    ``pull()`` copies the live CPU state in (context_update, ~0.4 us), ``push()`` writes it back
    (context_restore, ~0.4 us). Between the two, fields are read and written in place with ctypes.
    Do not use it for RFLAGS' arithmetic bits (they live in cc_src); write RFLAGS with reg_write
    after ``push()``.
    """

    def __init__(self, uc: unicorn.Uc) -> None:
        self.uc = uc
        self.ctx = uc.context_save()
        self.base = self.ctx.context.value + CONTEXT_HEADER

    def pull(self) -> None:
        self.uc.context_update(self.ctx)

    def push(self) -> None:
        self.uc.context_restore(self.ctx)

    def u16(self, off: int) -> int:
        return ctypes.c_uint16.from_address(self.base + off).value

    def u32(self, off: int) -> int:
        return ctypes.c_uint32.from_address(self.base + off).value

    def i32(self, off: int) -> int:
        return ctypes.c_int32.from_address(self.base + off).value

    def u64(self, off: int) -> int:
        return ctypes.c_uint64.from_address(self.base + off).value

    def set16(self, off: int, v: int) -> None:
        ctypes.c_uint16.from_address(self.base + off).value = v & 0xFFFF

    def set32(self, off: int, v: int) -> None:
        ctypes.c_uint32.from_address(self.base + off).value = v & 0xFFFFFFFF

    def set64(self, off: int, v: int) -> None:
        ctypes.c_uint64.from_address(self.base + off).value = v & 0xFFFFFFFFFFFFFFFF

    # -- segment caches
    def seg(self, index: int) -> tuple[int, int, int, int]:
        o = ENV_SEGS + index * SEG_SIZE
        return self.u32(o) & 0xFFFF, self.u64(o + 8), self.u32(o + 16), self.u32(o + 20)

    def set_seg(self, index: int, selector: int, base: int, limit: int, flags: int) -> None:
        o = ENV_SEGS + index * SEG_SIZE
        self.set32(o, selector)
        self.set64(o + 8, base)
        self.set32(o + 16, limit)
        self.set32(o + 20, flags)

    def recompute_seg_hflags(self) -> None:
        """Recompute the hflags QEMU derives from CS/SS (cpu_x86_load_seg_cache semantics):
        CPL = SS.DPL, CS32/CS64/SS32, ADDSEG."""
        hflags = self.u32(ENV_HFLAGS)
        cs_flags = self.u32(ENV_SEGS + 1 * SEG_SIZE + 20)
        ss_flags = self.u32(ENV_SEGS + 2 * SEG_SIZE + 20)
        hflags &= ~(HF_CS32_MASK | HF_CS64_MASK | HF_SS32_MASK | HF_ADDSEG_MASK | HF_CPL_MASK)
        if hflags & HF_LMA_MASK and cs_flags & DESC_L_MASK:
            hflags |= HF_CS32_MASK | HF_SS32_MASK | HF_CS64_MASK
        else:
            if cs_flags & DESC_B_MASK:
                hflags |= HF_CS32_MASK
            if ss_flags & DESC_B_MASK:
                hflags |= HF_SS32_MASK
            bases = self.u64(ENV_SEGS + 3 * SEG_SIZE + 8) | self.u64(ENV_SEGS + 8) \
                | self.u64(ENV_SEGS + 2 * SEG_SIZE + 8)
            if not hflags & HF_CS32_MASK or bases:
                hflags |= HF_ADDSEG_MASK
        hflags |= (ss_flags >> 13) & 3
        self.set32(ENV_HFLAGS, hflags)

    def ack_exception(self) -> None:
        """Clear the markers Unicorn leaves after an exception (issue 1883): without this the 2nd
        #PF turns into #DF and a stale exception_is_int corrupts the next exit's RIP."""
        self.set32(ENV_OLD_EXCEPTION, 0xFFFFFFFF)
        self.set32(ENV_EXCEPTION_IS_INT, 0)
