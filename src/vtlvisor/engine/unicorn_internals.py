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
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import unicorn
from unicorn import UcError
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

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
ENV_FPSTT = 604         # FPU state: fpstt, fpus, fpuc, fptags[8], fpregs[8] (16 bytes each) at 624, ...
ENV_FPUC = 610
ENV_FPREGS = 624
ENV_MXCSR = 816
ENV_XMM = 824           # ZMMReg xmm_regs[32], 64 bytes each (the XMM/YMM registers in their low lanes)
ZMM_SIZE = 64
#: end of the FPU/SSE block that holds the architectural x87, MXCSR and XMM0-15 (YMM) state
ENV_FP_END = ENV_XMM + 16 * ZMM_SIZE
ENV_LSTAR = 4840
ENV_TSC_AUX = ENV_LSTAR + 56
ENV_XCR0 = ENV_TSC_AUX + 8
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


def _packed(fields: list[tuple[int, str]]) -> struct.Struct:
    """A little-endian Struct reading ``(offset, format char)`` fields of CPUX86State, padding the gaps."""
    fmt, pos = "<", 0
    for off, code in fields:
        if off < pos:
            raise ValueError("fields overlap")
        fmt += (f"{off - pos}x" if off > pos else "") + code
        pos = off + struct.calcsize("<" + code)
    return struct.Struct(fmt)


#: what one VM exit needs, in one unpack: RSP, RIP, hflags, the ten segment caches
#: (selector, base, limit, flags each; ES..GS then LDTR, TR, GDTR, IDTR), CR0, CR3, CR4, error_code
_SNAPSHOT = _packed([(ENV_REGS + 4 * 8, "Q"), (ENV_EIP, "Q"), (ENV_HFLAGS, "I")]
                    + [f for i in range(10) for f in ((ENV_SEGS + i * SEG_SIZE, "I"),
                                                       (ENV_SEGS + i * SEG_SIZE + 8, "QII"))]
                    + [(ENV_CR0, "Q"), (ENV_CR3, "Q"), (ENV_CR4, "Q"), (ENV_ERROR_CODE, "I")])


class CpuSnapshot(NamedTuple):
    """The CPU state an exit handler or event delivery reads, from one ``EnvBlob.pull()``.
    Segment fields: selector, base, limit, flags (QEMU's SegmentCache; the selector is 16 bits)."""

    rsp: int
    rip: int
    hflags: int
    es_sel: int
    es_base: int
    es_limit: int
    es_flags: int
    cs_sel: int
    cs_base: int
    cs_limit: int
    cs_flags: int
    ss_sel: int
    ss_base: int
    ss_limit: int
    ss_flags: int
    ds_sel: int
    ds_base: int
    ds_limit: int
    ds_flags: int
    fs_sel: int
    fs_base: int
    fs_limit: int
    fs_flags: int
    gs_sel: int
    gs_base: int
    gs_limit: int
    gs_flags: int
    ldt_sel: int
    ldt_base: int
    ldt_limit: int
    ldt_flags: int
    tr_sel: int
    tr_base: int
    tr_limit: int
    tr_flags: int
    gdt_sel: int
    gdt_base: int
    gdt_limit: int
    gdt_flags: int
    idt_sel: int
    idt_base: int
    idt_limit: int
    idt_flags: int
    cr0: int
    cr3: int
    cr4: int
    #: SVM exit_info_1 / the pending exception's error code
    error_code: int
    #: from hflags: the CPL, and whether CS is a 64-bit code segment (long mode, CS.L)
    cpl: int
    code64: bool


_tuple_new = tuple.__new__       # CpuSnapshot._make without its Python-level frame
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_SEG_REST = struct.Struct("<QII")       # SegmentCache after the selector: base, limit, flags


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


# ---------------------------------------------------------------------------------------------
# A fix to the engine's code: QEMU 5.0's nested walk (get_hphys in target/i386/excp_helper.c) is
# called with prot == NULL for the guest page-table entries of a walk, and its NX check runs
#     if (ptep & PG_NX_MASK) { if (access_type == MMU_INST_FETCH) goto fault; *prot &= ~PAGE_EXEC; }
# so a guest page-table page whose nested leaf is present and non-executable (every page table of a
# guest whose higher VTL made data NX) dereferences NULL and kills the process: a guest-triggerable
# host crash. The compiled sequence (prot in RCX, access_type in R14D), in libunicorn 2.1.4:
#     41 83 fe 02       cmp  $2,%r14d            ; MMU_INST_FETCH?
#     0f 84 <rel32>     je   do_fault_protect
#     83 21 fb          andl $~PAGE_EXEC,(%rcx)
#     83 e7 02 75 0d    and $2,%edi; jne +13     ; the RW check follows
#     41 83 fe 01       cmp  $1,%r14d            ; MMU_DATA_STORE?
#     0f 84 <rel32>     je   do_fault_protect    ; (the same target)
#     83 21 fd          andl $~PAGE_WRITE,(%rcx)
# becomes, in the first 13 bytes, `if (prot)` around the NX part:
#     e3 0b             jrcxz +11                ; prot == NULL (a page-table access, always a store)
#     41 83 fe 02       cmp  $2,%r14d
#     74 0e             je   +14                 ; -> the RW check's je do_fault_protect (ZF still set)
#     83 21 fb          andl $~PAGE_EXEC,(%rcx)
#     66 90             nop
# The RW part needs nothing: with prot == NULL the access is a store, which faults before its andl.
# The site must be found exactly once (both je to the same target) or vtlvisor refuses to run.
_HPHYS_SIG = re.compile(rb"\x41\x83\xfe\x02\x0f\x84(....)\x83\x21\xfb\x83\xe7\x02\x75\x0d\x41\x83\xfe\x01"
                        rb"\x0f\x84(....)\x83\x21\xfd", re.S)
_HPHYS_NEW = bytes.fromhex("e30b" "4183fe02" "740e" "8321fb" "6690")
_HPHYS_DONE = re.compile(re.escape(_HPHYS_NEW) + rb"\x83\xe7\x02\x75\x0d\x41\x83\xfe\x01\x0f\x84", re.S)
_hphys_patched = False


def _uc_text_segments() -> list[tuple[int, int]]:
    """The executable mappings of the loaded libunicorn."""
    path = os.path.realpath(uclib._name)
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[1].startswith("r-x") and os.path.realpath(parts[5]) == path:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi))
    return out


def patch_get_hphys() -> None:
    """Apply the get_hphys fix above once per process (~20 ms scan); EngineMismatch if the code is
    not exactly the expected one."""
    global _hphys_patched
    if _hphys_patched:
        return
    hits, done = [], []
    for lo, hi in _uc_text_segments():
        text = ctypes.string_at(lo, hi - lo)
        for m in _HPHYS_SIG.finditer(text):
            t1 = m.start() + 10 + int.from_bytes(m.group(1), "little", signed=True)
            t2 = m.start() + 28 + int.from_bytes(m.group(2), "little", signed=True)
            if t1 == t2:
                hits.append(lo + m.start())
        done += [lo + m.start() for m in _HPHYS_DONE.finditer(text)]
    if not hits and len(done) == 1:
        _hphys_patched = True
        return
    if len(hits) != 1 or done:
        raise EngineMismatch("unexpected Unicorn build (the get_hphys NX check to fix was not found exactly "
                             "once); vtlvisor refuses to run")
    _write_code(hits[0], _HPHYS_NEW, "get_hphys")
    _hphys_patched = True


def _write_code(addr: int, new: bytes, what: str) -> None:
    """Overwrite ``len(new)`` bytes of libunicorn's code at ``addr`` (made writable for the write)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = addr & ~0xFFF
    size = ((addr + len(new) + 0xFFF) & ~0xFFF) - page
    if libc.mprotect(page, size, 7):           # PROT_READ | PROT_WRITE | PROT_EXEC while patching
        raise EngineMismatch(f"cannot patch Unicorn's {what}: mprotect errno {ctypes.get_errno()}")
    ctypes.memmove(addr, new, len(new))
    if libc.mprotect(page, size, 5):           # back to PROT_READ | PROT_EXEC
        raise EngineMismatch(f"cannot restore Unicorn's code protection: mprotect errno {ctypes.get_errno()}")


# ---------------------------------------------------------------------------------------------
# A fix to the engine's code: precise asynchronous stops (Unicorn issue #1355).
#
# uc_emu_stop() (from any thread) sets uc->stop_request and calls cpu_exit(), which makes
# cpu->icount_decr negative. Translated code tests that in HELPER(check_exit_request)
# (accel/tcg/tcg-runtime.c), which calls cpu_loop_exit_restore(cpu, GETPC()): the guest state is
# restored to the start of the guest instruction whose code made the call. Unicorn emits that call
# (1) at every TB start (gen_tb_start, exact: nothing of the TB has run), (2) after a UC_HOOK_CODE
# callback, before the instruction's own code (exact), and (3) after *every guest memory access*
# (tcg-op.c: tcg_gen_qemu_{ld,st}_{i32,i64} end with check_exit_request()). (3) is the bug: when the
# request arrives while an instruction is between its store and its end (`inc [m]`: load, add,
# store, flags), the exit keeps the store and rewinds RIP to the instruction, so resuming runs it
# again (measured under gdb: the exit comes from the call right after the inlined store fast path).
# Every asynchronous kick is cut the same way, whatever raises it (cpu_exit or cpu_interrupt both
# set icount_decr), so an INTR-intercept kick would not help by itself.
#
# Unicorn needs (3) for nothing we use: an invalid or protected access leaves through its own
# cpu_loop_exit_restore inside the load/store helper (before the store), and VM exits, #PF and NPF
# are raised as exceptions at the instruction. We drop (3): the four generators end with a tail call
#     48 89 ef       mov  %rbp,%rdi           ; tcg_ctx
#     5d             pop  %rbp
#     e9 <rel32>     jmp  check_exit_request_x86_64@plt
# whose jmp becomes `ret; nopl 0(%rax)` (c3 0f 1f 40 00). Stops then take effect at the next TB
# start (at most one TB later, before any of it runs) or at the next code hook, exactly at an
# instruction boundary. A memory hook or MMIO callback that stops the engine now stops it after the
# instruction instead of restarting it. Each generator must match byte for byte (displacements
# aside), all four must tail-call the same PLT stub, and that stub must belong to
# check_exit_request_x86_64, or vtlvisor refuses to run.
_EXIT_CHECK_FUNCS = {
    "tcg_gen_qemu_ld_i32_x86_64": "4489c0554889fd83e00383f802744183f8030f84....89cf85c075064183e0f789cf"
                                  "41c1e004488d4c1500488d543500be850000004109f84889efe8....4889ef5d",
    "tcg_gen_qemu_st_i32_x86_64": "554889fd4489c74489c083e70383ff02744683ff030f84....4189c885ff750683e0f7"
                                  "4189c8c1e004488d4c1500488d5435004889ef83e0b0be860000004109c0e8....4889ef5d",
    "tcg_gen_qemu_ld_i64_x86_64": "4489c0554989c94889fd83e0f741f6c003488d0c17440f44c0488d1437be87000000"
                                  "41c1e0044509c8e8....4889ef5d",
    "tcg_gen_qemu_st_i64_x86_64": "4489c0554989c94889fd83e0f741f6c003488d0c17440f44c0488d1437be88000000"
                                  "41c1e0044183e0b04509c8e8....4889ef5d",
}
_TAIL_JMP = 0xE9
_TAIL_RET = bytes.fromhex("c30f1f4000")      # ret; nopl 0x0(%rax)
_exit_checks_patched = False


def _hex_pattern(hexstr: str) -> re.Pattern[bytes]:
    """A byte regex from hex digits where "...." stands for one 4-byte displacement."""
    parts = hexstr.split("....")
    return re.compile(b"(....)".join(re.escape(bytes.fromhex(p)) for p in parts), re.S)


def _symbol(name: str) -> int:
    try:
        return ctypes.cast(getattr(uclib, name), ctypes.c_void_p).value or 0
    except AttributeError:
        return 0


def patch_exit_checks() -> None:
    """Apply the precise-stop fix above once per process; EngineMismatch if the code is not exactly
    the expected one."""
    global _exit_checks_patched
    if _exit_checks_patched:
        return
    target = _symbol("check_exit_request_x86_64")
    if not target:
        raise EngineMismatch("unexpected Unicorn build (no check_exit_request_x86_64); vtlvisor refuses to run")
    sites, stubs, done = [], set(), 0
    for name, hexstr in _EXIT_CHECK_FUNCS.items():
        fn = _symbol(name)
        pat = _hex_pattern(hexstr)
        size = len(hexstr.replace("....", "")) // 2 + 4 * hexstr.count("....") + 5
        code = ctypes.string_at(fn, size) if fn else b""
        m = pat.match(code)
        if m is None:
            raise EngineMismatch(f"unexpected Unicorn build ({name} is not the expected code); "
                                 "vtlvisor refuses to run")
        site = fn + m.end()
        tail = code[m.end():m.end() + 5]
        if tail == _TAIL_RET:
            done += 1
            continue
        if tail[0] != _TAIL_JMP:
            raise EngineMismatch(f"unexpected Unicorn build ({name} does not end in a tail call); "
                                 "vtlvisor refuses to run")
        stubs.add(site + 5 + int.from_bytes(tail[1:], "little", signed=True))
        sites.append(site)
    if done == len(_EXIT_CHECK_FUNCS):
        _exit_checks_patched = True
        return
    if done or len(stubs) != 1:
        raise EngineMismatch("unexpected Unicorn build (the memory-access exit checks to remove are not one "
                             "call site each); vtlvisor refuses to run")
    (stub,) = stubs
    if stub != target:
        # a lazy-binding PLT stub: jmp *GOT(%rip); push $index; jmp PLT0, with the GOT slot holding
        # the resolved function or, before the first call, the stub's own push
        head = ctypes.string_at(stub, 16)
        got = stub + 6 + int.from_bytes(head[2:6], "little", signed=True) if head[:2] == b"\xff\x25" else 0
        slot = ctypes.c_uint64.from_address(got).value if got else 0
        if head[6:7] != b"\x68" or head[11:12] != b"\xe9" or slot not in (target, stub + 6):
            raise EngineMismatch("unexpected Unicorn build (the memory-access exit check does not call "
                                 "check_exit_request_x86_64); vtlvisor refuses to run")
    for site in sites:
        _write_code(site, _TAIL_RET, "memory-access exit checks")
    _exit_checks_patched = True


# ---------------------------------------------------------------------------------------------
# The same issue, second face: helper_syscall / helper_sysenter (target/i386/seg_helper.c) walk every
# UC_HOOK_INSN hook and, after each one, *matching or not*, `if (uc->stop_request) break;`. With a stop
# already pending (a kick that has not reached the next TB start yet) the walk ends at the first hook in
# the list, our IN hook, so the SYSCALL/SYSENTER hook never runs, yet RIP advances past the instruction:
# the guest loses a system call. The compiled loop (insn id 0x2bb SYSCALL / 0x2bc SYSENTER):
#     +0x40  80 bf 6d 05 00 00 00   cmpb $0,0x56d(%rdi)        ; uc->stop_request, after a non-matching hook
#     +0x47  75 77                  jne  done                   ; <- becomes 66 90 (nop)
#     +0x49  48 8b 6d 00 ...        next hook ...
#     +0x78  81 7b 04 <id> 75 bf    cmpl $id,0x4(%rbx); jne +0x40
# The break after a *matching* hook (our callback has run) stays.
_INSN_LOOP_FUNCS = {"helper_syscall_x86_64": 0x2BB, "helper_sysenter_x86_64": 0x2BC}
_INSN_LOOP_SIG = ("80bf6d05000000{jcc}488b6d004885ed746e488b5d084885db746580 7b140075e8488b4318488b53204839c8"
                  "77054839d176054839d076d1817b04{id}75bf").replace(" ", "")
_insn_loops_patched = False


def patch_insn_hook_loops() -> None:
    """Apply the SYSCALL/SYSENTER hook-walk fix above once per process; EngineMismatch if the code is not
    exactly the expected one."""
    global _insn_loops_patched
    if _insn_loops_patched:
        return
    todo, done = [], 0
    for name, insn in _INSN_LOOP_FUNCS.items():
        fn = _symbol(name)
        idhex = insn.to_bytes(4, "little").hex()
        code = ctypes.string_at(fn + 0x40, 0x41) if fn else b""
        if code == bytes.fromhex(_INSN_LOOP_SIG.format(jcc="7577", id=idhex)):
            todo.append(fn + 0x47)
        elif code == bytes.fromhex(_INSN_LOOP_SIG.format(jcc="6690", id=idhex)):
            done += 1
        else:
            raise EngineMismatch(f"unexpected Unicorn build ({name} is not the expected code); "
                                 "vtlvisor refuses to run")
    if done and todo:
        raise EngineMismatch("unexpected Unicorn build (SYSCALL/SYSENTER hook walks half patched); "
                             "vtlvisor refuses to run")
    for site in todo:
        _write_code(site, b"\x66\x90", "SYSCALL/SYSENTER hook walk")
    _insn_loops_patched = True


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
    patch_get_hphys()
    patch_exit_checks()
    patch_insn_hook_loops()
    saved = {r: uc.reg_read(r) for r in (X.UC_X86_REG_RAX, X.UC_X86_REG_DR0, X.UC_X86_REG_RIP,
                                         X.UC_X86_REG_CR3, X.UC_X86_REG_R15, X.UC_X86_REG_FS_BASE,
                                         X.UC_X86_REG_GS_BASE, X.UC_X86_REG_XMM0, X.UC_X86_REG_XMM15,
                                         X.UC_X86_REG_FPCW)}
    saved_fp0 = uc.reg_read(X.UC_X86_REG_FP0)
    saved_tsc_aux = uc.msr_read(0xC0000103)
    uc.reg_write(X.UC_X86_REG_XMM0, 0x1111222233334444_5555666677778888)
    uc.reg_write(X.UC_X86_REG_XMM15, 0x99990000AAAABBBB_CCCCDDDDEEEEFFF0)
    uc.reg_write(X.UC_X86_REG_FP0, (0x0123456789ABCDEF, 0x4321))
    uc.reg_write(X.UC_X86_REG_FPCW, 0x0A5B)
    uc.msr_write(0xC0000103, 0x7A5C0DE)
    uc.reg_write(X.UC_X86_REG_FS_BASE, 0x0000776655443320)
    uc.reg_write(X.UC_X86_REG_GS_BASE, 0x0000112233445560)
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
            "segs[FS].base": (ENV_SEGS + 4 * SEG_SIZE + 8, 0x0000776655443320),
            "segs[GS].base": (ENV_SEGS + 5 * SEG_SIZE + 8, 0x0000112233445560),
            "xmm_regs[0]": (ENV_XMM, 0x5555666677778888),
            "xmm_regs[15]": (ENV_XMM + 15 * ZMM_SIZE + 8, 0x99990000AAAABBBB),
            "fpregs[0]": (ENV_FPREGS, 0x0123456789ABCDEF),
            "tsc_aux": (ENV_TSC_AUX, 0x7A5C0DE),
        }
        for name, (off, val) in checks.items():
            got = struct.unpack_from("<Q", raw, header + off)[0]
            if got != val:
                problems.append(f"{name} not at offset {off}")
        if struct.unpack_from("<H", raw, header + ENV_FPUC)[0] != 0x0A5B:
            problems.append(f"fpuc not at offset {ENV_FPUC}")
    for r, v in saved.items():
        uc.reg_write(r, v)
    uc.reg_write(X.UC_X86_REG_FP0, saved_fp0)
    uc.msr_write(0xC0000103, saved_tsc_aux)
    if problems:
        raise EngineMismatch("unexpected Unicorn build (CPU state layout differs: "
                             + "; ".join(problems) + "); vtlvisor refuses to run")
    return Layout(header=header, error_code=ENV_ERROR_CODE)


_HOOK_INTR_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)

#: libunicorn again, for the per-exit calls: without the binding's ``argtypes`` (every argument is
#: already a ctypes object - the engine handle, a context, a byref - or a small int, a register id,
#: so the per-argument ``from_param`` conversions only cost time: ~0.2 us of a ~0.45 us register
#: read), and as a PyDLL: these calls return in well under a microsecond and never run Python
#: (no hook fires), so they keep the GIL instead of releasing and re-taking it.
_raw_lib = ctypes.PyDLL(uclib._name, handle=uclib._handle)


def raw_function(name: str) -> ctypes._CFuncPtr:
    """``uc_reg_read``, ``uc_reg_write``, ``uc_context_save``, ``uc_context_restore`` (int result)
    for callers that pass only ctypes objects and small ints."""
    if name not in ("uc_reg_read", "uc_reg_write", "uc_context_save", "uc_context_restore"):
        raise ValueError(name)
    fn = getattr(_raw_lib, name)
    fn.restype = ctypes.c_int
    return fn


def add_intr_hook(uc: unicorn.Uc, cb: Callable[[int], None]) -> int:
    """``uc.hook_add(UC_HOOK_INTR, ...)`` with ``cb(intno)`` called straight from the ctypes
    trampoline: the binding's generic path runs three more Python frames per exit (its exception
    guard, the per-type adapter, our adapter). An exception escaping ``cb`` is handled as the
    binding does: recorded on the Uc (``emu_start`` re-raises it) and the engine stopped. The
    handle works with ``uc.hook_del``."""
    def trampoline(_uc: int, intno: int, _data: int) -> None:
        try:
            cb(intno)
        except BaseException as e:      # noqa: BLE001 - same contract as unicorn's uccallback
            if uc._hook_exception is None:
                uc._hook_exception = e
            uc.emu_stop()

    fptr = _HOOK_INTR_CFUNC(trampoline)
    handle = ctypes.c_ulong()
    err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), unicorn.UC_HOOK_INTR, fptr, None, 1, 0)
    if err:
        raise UcError(err)
    uc._callbacks[handle.value] = fptr      # keeps the trampoline alive; hook_del removes it
    return handle.value


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

    ``pull()`` copies the live CPU state in (context_update, ~0.3 us), ``push()`` writes it back
    (context_restore, ~0.3 us): a memcpy of the whole CPUX86State either way, so a push must follow
    a pull with no other change to the live state in between (it would be overwritten). Between
    the two, fields are read and written in place. Do not use it for RFLAGS' arithmetic bits (they
    live in cc_src); write RFLAGS with reg_write after ``push()``.
    """

    def __init__(self, uc: unicorn.Uc) -> None:
        self.uc = uc
        self.ctx = uc.context_save()
        self.base = self.ctx.context.value + CONTEXT_HEADER
        #: the CPUX86State image as bytes (valid while ``ctx`` lives)
        self.mem = memoryview((ctypes.c_char * (self.ctx.size - CONTEXT_HEADER)).from_address(self.base)).cast("B")
        self._h = uc._uch                   # a c_void_p, as the raw functions need
        self._c = self.ctx.context          # a c_void_p
        self._save = raw_function("uc_context_save")
        self._restore = raw_function("uc_context_restore")

    def pull(self) -> None:
        err = self._save(self._h, self._c)
        if err:
            raise UcError(err)

    def push(self) -> None:
        err = self._restore(self._h, self._c)
        if err:
            raise UcError(err)

    def pull_rip(self) -> int:
        """``pull()`` and return RIP (the first thing every exit does, in one call)."""
        err = self._save(self._h, self._c)
        if err:
            raise UcError(err)
        return _U64.unpack_from(self.mem, ENV_EIP)[0]

    def u16(self, off: int) -> int:
        return _U16.unpack_from(self.mem, off)[0]

    def u32(self, off: int) -> int:
        return _U32.unpack_from(self.mem, off)[0]

    def i32(self, off: int) -> int:
        return _I32.unpack_from(self.mem, off)[0]

    def u64(self, off: int) -> int:
        return _U64.unpack_from(self.mem, off)[0]

    def set16(self, off: int, v: int) -> None:
        _U16.pack_into(self.mem, off, v & 0xFFFF)

    def set32(self, off: int, v: int) -> None:
        _U32.pack_into(self.mem, off, v & 0xFFFFFFFF)

    def set64(self, off: int, v: int) -> None:
        _U64.pack_into(self.mem, off, v & 0xFFFFFFFFFFFFFFFF)

    # -- typed accessors
    def snapshot(self) -> CpuSnapshot:
        """RSP, RIP, hflags, all segment caches and table registers, CR0/CR3/CR4 (one unpack)."""
        v = _SNAPSHOT.unpack_from(self.mem, 0)
        hflags = v[2]
        return _tuple_new(CpuSnapshot, v + (hflags & HF_CPL_MASK, hflags & HF_CS64_MASK != 0))

    def gpr(self, n: int) -> int:
        return _U64.unpack_from(self.mem, ENV_REGS + 8 * n)[0]

    def set_gpr(self, n: int, v: int) -> None:
        _U64.pack_into(self.mem, ENV_REGS + 8 * n, v & 0xFFFFFFFFFFFFFFFF)

    def rip(self) -> int:
        return _U64.unpack_from(self.mem, ENV_EIP)[0]

    def set_rip(self, v: int) -> None:
        """env->eip. From a UC_HOOK_INTR callback this is where execution resumes (Unicorn's
        uc_reg_write(RIP) additionally requests a translation-loop restart, which an exit
        handler does not need)."""
        _U64.pack_into(self.mem, ENV_EIP, v & 0xFFFFFFFFFFFFFFFF)

    def hflags(self) -> int:
        return _U32.unpack_from(self.mem, ENV_HFLAGS)[0]

    def cpl(self) -> int:
        return _U32.unpack_from(self.mem, ENV_HFLAGS)[0] & HF_CPL_MASK

    def cr(self, n: int) -> int:
        return _U64.unpack_from(self.mem, ENV_CR0 + 8 * n)[0]

    def error_code(self) -> int:
        """SVM exit_info_1 / the pending exception's error code."""
        return _U32.unpack_from(self.mem, ENV_ERROR_CODE)[0]

    # -- segment caches
    def seg(self, index: int) -> tuple[int, int, int, int]:
        o = ENV_SEGS + index * SEG_SIZE
        return (_U32.unpack_from(self.mem, o)[0] & 0xFFFF,) + _SEG_REST.unpack_from(self.mem, o + 8)

    def set_seg(self, index: int, selector: int, base: int, limit: int, flags: int) -> None:
        o = ENV_SEGS + index * SEG_SIZE
        _U32.pack_into(self.mem, o, selector & 0xFFFFFFFF)
        _SEG_REST.pack_into(self.mem, o + 8, base & 0xFFFFFFFFFFFFFFFF, limit & 0xFFFFFFFF, flags & 0xFFFFFFFF)

    def recompute_seg_hflags(self) -> None:
        """Recompute the hflags QEMU derives from CS/SS (cpu_x86_load_seg_cache semantics):
        CPL = SS.DPL, CS32/CS64/SS32, ADDSEG."""
        m = self.mem
        hflags = _U32.unpack_from(m, ENV_HFLAGS)[0]
        cs_flags = _U32.unpack_from(m, ENV_SEGS + 1 * SEG_SIZE + 20)[0]
        ss_flags = _U32.unpack_from(m, ENV_SEGS + 2 * SEG_SIZE + 20)[0]
        hflags &= ~(HF_CS32_MASK | HF_CS64_MASK | HF_SS32_MASK | HF_ADDSEG_MASK | HF_CPL_MASK)
        if hflags & HF_LMA_MASK and cs_flags & DESC_L_MASK:
            hflags |= HF_CS32_MASK | HF_SS32_MASK | HF_CS64_MASK
        else:
            if cs_flags & DESC_B_MASK:
                hflags |= HF_CS32_MASK
            if ss_flags & DESC_B_MASK:
                hflags |= HF_SS32_MASK
            bases = _U64.unpack_from(m, ENV_SEGS + 3 * SEG_SIZE + 8)[0] | _U64.unpack_from(m, ENV_SEGS + 8)[0] \
                | _U64.unpack_from(m, ENV_SEGS + 2 * SEG_SIZE + 8)[0]
            if not hflags & HF_CS32_MASK or bases:
                hflags |= HF_ADDSEG_MASK
        hflags |= (ss_flags >> 13) & 3
        _U32.pack_into(m, ENV_HFLAGS, hflags)

    def push_transfer(self, cs: tuple[int, int, int, int], ss: tuple[int, int, int, int] | None,
                      rsp: int, rip: int, cr2: int | None, ack: bool) -> None:
        """A far control transfer applied to the image, then ``push()``: CS (and SS), hflags
        recomputed from them, RSP, RIP, CR2 (unless None), the exception markers cleared if
        ``ack``. RFLAGS is the caller's (after the push)."""
        m = self.mem
        if ack:
            _U32.pack_into(m, ENV_OLD_EXCEPTION, 0xFFFFFFFF)
            _U32.pack_into(m, ENV_EXCEPTION_IS_INT, 0)
        if cr2 is not None:         # plain storage for QEMU (no side effects, unlike CR0/CR3/CR4)
            _U64.pack_into(m, ENV_CR2, cr2 & 0xFFFFFFFFFFFFFFFF)
        self.set_seg(1, *cs)
        if ss is not None:
            self.set_seg(2, *ss)
        self.recompute_seg_hflags()
        _U64.pack_into(m, ENV_REGS + 4 * 8, rsp & 0xFFFFFFFFFFFFFFFF)
        _U64.pack_into(m, ENV_EIP, rip & 0xFFFFFFFFFFFFFFFF)
        err = self._restore(self._h, self._c)
        if err:
            raise UcError(err)

    def ack_exception(self) -> None:
        """Clear the markers Unicorn leaves after an exception (issue 1883): without this the 2nd
        #PF turns into #DF and a stale exception_is_int corrupts the next exit's RIP."""
        self.set32(ENV_OLD_EXCEPTION, 0xFFFFFFFF)
        self.set32(ENV_EXCEPTION_IS_INT, 0)
