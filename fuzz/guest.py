"""The fuzz guest: a long-mode kernel skeleton (keystone-assembled) that runs a list of generated ops.

Layout (guest-physical = guest-virtual through 2 MiB / 1 GiB identity pages):
  0x1000 PML4  0x2000 PDPT (0: PD below, 1..3: 1 GiB uncached pages = open bus + LAPIC,
               4..64: 1 GiB pages above 4 GiB up to and including HYP_BASE's 64 GiB)
  0x3000 PD (2 MiB pages; 2..4 MiB user)   0x5000 GDT   0x7000 IDT (256 gates)   0xA000 TSS (+ I/O bitmap)
  0x10000 DATA: COUNT, RESUME, CUR (op index), TICKS   0x11000 LOG (48-byte records, MAXLOG)
  0x20000 HC0 hypercall page   0x21000 HC1   0x22000 ASSIST1   0x23000 SIMP1   0x24000 ASSIST0
  0x30000 IN(n)   0x40000 OUT(n)   0x50000 CANARY (VTL1-only)   0x52000 V1LOG
  0x60000 SCRATCH (memory operands, fake tables)   0x8F000 IST1 top   0x9F000 kernel stack top
  0x100000 kernel code   0x170000 exception handlers   0x180000 VTL1 code   0x190000 VTL1 page tables
  0x194000 VTL1 GDT   0x195000 VTL1 TSS   0x1F0000 VTL1 stack top
  0x200000 user code (one 0x100-byte slot per op)   0x3F0000 user stack top   0x3F8000 user results
  0x400000 fuzzed page-table area   0x580000 RES: 128 bytes of result slots per op
  0x600000 random code / data area

Every exception vector logs (vector, error code, RIP, CS, CR2, op index) and, when RESUME is set,
returns to RESUME in ring 0 on a fresh kernel stack, so a faulting op cannot stop the ops after it.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache

import iced_x86 as ix
from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from vtlvisor.abi.hyperv import HvCallCode, HvRegisterName
from vtlvisor.hv.partition import Partition, PartitionConfig
from vtlvisor.loader.bootstate import BootState

from .machine import (
    KERNEL_CR0,
    KERNEL_CR4,
    KERNEL_EFER,
    gate,
    identity_paging,
    load_idt_tr,
    log_frame,
    long_mode_boot,
    resume_tail,
    timer_handler,
    to_user,
    write_gdt,
    write_tss,
)

MEMORY = 8 << 20
PML4, PDPT, PD = 0x1000, 0x2000, 0x3000
GDT, IDT, TSS = 0x5000, 0x7000, 0xA000
DATA = 0x10000
COUNT, RESUME, CUR, TICKS = DATA, DATA + 8, DATA + 0x10, DATA + 0x18
LOG, LOG_REC, MAXLOG = 0x11000, 48, 256
RES, RES_SLOT = 0x580000, 128
HC0, HC1, ASSIST1, SIMP1, ASSIST0 = 0x20000, 0x21000, 0x22000, 0x23000, 0x24000
CANARY, V1LOG = 0x50000, 0x52000
SCRATCH = 0x60000
IST1, KSTACK = 0x8F000, 0x9F000
KCODE, HANDLERS = 0x100000, 0x170000
VTL1_CODE, VTL1_PML4, VTL1_GDT, VTL1_TSS, VTL1_STACK = 0x180000, 0x190000, 0x194000, 0x195000, 0x1F0000
UCODE, USLOT, USTACK, URES = 0x200000, 0x100, 0x3F0000, 0x3F8000
PTAREA, RANDAREA = 0x400000, 0x600000
MAX_OPS = 512
SETUP_FAILED = 0x3F            # debug-exit value when the prologue faulted (exit status 0x7F)
TIMER_VECTOR = 0x40
ERR_VECTORS = {8, 10, 11, 12, 13, 14, 17, 21, 29, 30}
SELF = 0xFFFFFFFFFFFFFFFF

_ks = Ks(KS_ARCH_X86, KS_MODE_64)


#: input pages free for generated ops (VTL1 and the prologue use IN(0..2), IN(5), IN(8..12))
FREE_IN = (3, 4, 6, 7, 13, 14, 15)


def IN(n: int) -> int:  # noqa: N802
    return 0x30000 + n * 0x1000


def OUT(n: int) -> int:  # noqa: N802
    return 0x40000 + n * 0x1000


def res(op: int, k: int = 0) -> int:
    """Address of result slot ``k`` (8 bytes each, 16 per op) of op ``op``."""
    return RES + op * RES_SLOT + 8 * k


def asm(src: str, addr: int) -> bytes:
    """Assemble with keystone. Keystone encodes absolute ``[imm]`` operands RIP-relative and gets the
    displacement wrong for ``mov r64, [abs]`` (any register but RAX): refuse any RIP-relative
    operand whose target is neither a literal of the source nor one of its ``rip + label`` forms."""
    lines = [ln.split(";", 1)[0].strip() for ln in src.splitlines()]
    text = "\n".join(ln for ln in lines if ln)
    code = bytes(_ks.asm(text, addr)[0] or b"")
    literals = {int(x, 0) for x in re.findall(r"\b(?:0x[0-9a-fA-F]+|\d+)\b", text)}
    wanted = text.lower().count("rip")
    other = sum(1 for i in ix.Decoder(64, code, ip=addr)
                if i.is_ip_rel_memory_operand and i.ip_rel_memory_address not in literals)
    if other > wanted:
        raise ValueError(f"keystone mis-encoded an absolute memory operand in:\n{text}")
    return code


def control(code: int, rep: int = 0, start: int = 0, fast: bool = False) -> int:
    return code | (fast << 16) | (rep << 32) | (start << 48)


def wrmsr(msr: int, value: int) -> str:
    return f"mov ecx, {msr:#x}\nmov eax, {value & 0xFFFFFFFF:#x}\nmov edx, {(value >> 32) & 0xFFFFFFFF:#x}\nwrmsr\n"


def hypercall(ctl: int, inp: int = 0, out: int = 0, page: int = HC0, slot: int | None = None) -> str:
    s = f"mov rcx, {ctl:#x}\nmov rdx, {inp:#x}\nmov r8, {out:#x}\nmov rax, {page:#x}\ncall rax\n"
    return s + (f"mov rbx, {slot:#x}\nmov [rbx], rax\n" if slot is not None else "")


def vtl_call(cmd: int) -> str:
    """VtlCall through the hypercall page with command ``cmd`` (RDI) for VTL1's service loop: RCX is the
    VTL call control input (0; the page moves it to RAX, TLFS 15.7.2)."""
    return f"xor ecx, ecx\nmov rdi, {cmd}\nmov rax, {HC0 + 0x10:#x}\ncall rax\n"


def seg(base: int, limit: int, sel: int, attr: int) -> bytes:
    return struct.pack("<QIHH", base, limit, sel, attr)


def regs_input(vtl: int, regs: list[tuple[int, int]], use_target: bool = True) -> bytes:
    hdr = struct.pack("<QIB3x", SELF, 0, vtl | (0x10 if use_target else 0))
    return hdr + b"".join(struct.pack("<I12x", n) + v.to_bytes(16, "little") for n, v in regs)


def protect_input(flags: int, gpns: list[int], target: int = 0, use_target: bool = True) -> bytes:
    return struct.pack("<QIB3x", SELF, flags, target | (0x10 if use_target else 0)) + \
        b"".join(struct.pack("<Q", g) for g in gpns)


@lru_cache(maxsize=1)
def _handlers() -> tuple[bytes, dict[str, int]]:
    common = f"""
common:
    push rax
    push rbx
    mov rax, {COUNT:#x}
    mov rbx, [rax]
    inc qword ptr [rax]
    cmp rbx, {MAXLOG}
    jae skiplog
    imul rbx, rbx, {LOG_REC}
    add rbx, {LOG:#x}
""" + log_frame() + f"""
    mov rax, {CUR:#x}
    mov rax, [rax]
    mov [rbx+40], rax
skiplog:
""" + resume_tail(RESUME, KSTACK)
    timer_at, stubs_at = HANDLERS + 0x400, HANDLERS + 0x800
    code = bytearray(asm(common, HANDLERS).ljust(0x400, b"\xcc"))
    code += asm(timer_handler(TICKS), timer_at).ljust(0x400, b"\xcc")
    labels = {"timer": timer_at}
    for v in range(256):
        at = stubs_at + 16 * v
        stub = ("" if v in ERR_VECTORS else "push 0\n") + f"push {v}\njmp {HANDLERS:#x}\n"
        code += asm(stub, at).ljust(16, b"\xcc")
        labels[f"h{v}"] = at
    return bytes(code), labels


def _hc1(rcx: int | str, inp: int, slot: int, out: int = 0) -> str:
    """VTL1 asm: a hypercall through VTL1's page with control ``rcx`` (a value or a register) and input
    ``inp`` (output ``out``), storing its status at ``slot``."""
    ctl = rcx if isinstance(rcx, str) else f"{rcx:#x}"
    r8 = f"mov r8, {out:#x}" if out else "xor r8, r8"
    return f"mov rcx, {ctl}\nmov rdx, {inp:#x}\n{r8}\nmov rax, {HC1:#x}\ncall rax\nmov [{slot:#x}], rax"


#: VTL1's service loop. Commands (RDI on VtlCall): 0 setup (protections from IN(10)/IN(11) with the
#: control words in V1LOG+0x900.., intercept controls from IN(12)), 1 read the canary (returns 0x2222 in
#: RSI), 2 run the hypercall prepared at IN(2) (control in R12), 3 a direct VtlReturn with control R13
#: and return input R14, else return. Intercepts: GPA/MSR -> inject #GP into VTL0 (IN(9)); register
#: intercepts -> skip the instruction (IN(8) + RIP). It returns with a fast VtlReturn (RCX = 1 into the
#: hypercall page, which moves it to RAX; RDX = 1 as well for the earlier ABI that read the fast bit there),
#: so VTL0 sees the shared registers as VTL1 left them.
def vtl1_src() -> str:
    # GUEST_OS_ID is private per VTL (TLFS 15.11.1): VTL1 sets its own before its hypercall page
    return wrmsr(0x40000000, 0x1) + wrmsr(0x40000001, HC1 | 1) + wrmsr(0x40000073, ASSIST1 | 1) + wrmsr(0x40000083, SIMP1 | 1) + f"""
vloop:
    mov rbx, {ASSIST1 + 8:#x}
    mov eax, [rbx]
    mov rbx, {V1LOG:#x}
    mov rcx, [rbx]
    and rcx, 0xff
    inc qword ptr [rbx]
    mov [rbx + rcx*8 + 8], rax
    cmp eax, 3
    je intercept
    cmp rdi, 0
    jne c1
    mov rbx, {V1LOG + 0x900:#x}
{_hc1("[rbx]", IN(10), V1LOG + 0x910)}
    mov rbx, {V1LOG + 0x908:#x}
{_hc1("[rbx]", IN(11), V1LOG + 0x918)}
{_hc1(control(HvCallCode.HvCallSetVpRegisters, 3), IN(12), V1LOG + 0x920)}
    jmp vret
c1:
    cmp rdi, 1
    jne c2
    mov rbx, {CANARY:#x}
    mov rax, [rbx]
    mov [{V1LOG + 0x800:#x}], rax
    mov rax, 0x2222
    mov rsi, 0x2222
    jmp vret
c2:
    cmp rdi, 3
    je c3
    cmp rdi, 2
    jne vret
{_hc1('r12', IN(2), V1LOG + 0x808, OUT(2))}
    jmp vret
c3:
    mov rcx, r13
    mov rax, r14
    mov rdx, r14
    vmmcall
    jmp vloop
intercept:
    mov rbx, {SIMP1:#x}
    mov eax, [rbx]
    mov [{V1LOG + 0x818:#x}], rax
    inc qword ptr [{V1LOG + 0x830:#x}]
    cmp eax, 0x80010006
    je skip
{_hc1(control(HvCallCode.HvCallSetVpRegisters, 1), IN(9), V1LOG + 0x820)}
    jmp vret
skip:
    mov rbx, {SIMP1 + 16 + 24:#x}
    mov rax, [rbx]
    mov rbx, {SIMP1 + 16 + 4:#x}
    movzx rcx, byte ptr [rbx]
    and rcx, 0xf
    jnz haslen
    mov rcx, 1
haslen:
    add rax, rcx
    mov rbx, {IN(8) + 32:#x}
    mov [rbx], rax
{_hc1(control(HvCallCode.HvCallSetVpRegisters, 1), IN(8), V1LOG + 0x828)}
vret:
    mov rcx, 1
    mov rdx, 1
    mov r11, {HC1 + 0x20:#x}
    call r11
    jmp vloop
"""


@lru_cache(maxsize=1)
def _vtl1_code() -> bytes:
    return asm(vtl1_src(), VTL1_CODE)


def vtl1_initial_context() -> bytes:
    code, data = seg(0, 0xFFFFFFFF, 0x08, 0xA09B), seg(0, 0xFFFFFFFF, 0x10, 0xC093)
    ctx = struct.pack("<QQQ", VTL1_CODE, VTL1_STACK, 2) + code + data + data + data + data + data
    ctx += seg(VTL1_TSS, 0x67, 0x30, 0x8B) + seg(0, 0xFFFF, 0, 0x82)
    ctx += struct.pack("<6xHQ", 0, 0) + struct.pack("<6xHQ", 0x3F, VTL1_GDT)      # IDT limit 0
    ctx += struct.pack("<QQQQQ", KERNEL_EFER, KERNEL_CR0, VTL1_PML4, KERNEL_CR4, 0x0007040600070406)
    assert len(ctx) == 224
    return ctx


#: pages VTL1 makes inaccessible to VTL0 at setup (besides the canary): its code, tables, stack, pages
VTL1_PRIVATE = sorted({HC1 >> 12, ASSIST1 >> 12, SIMP1 >> 12, V1LOG >> 12, IN(8) >> 12, IN(9) >> 12,
                       IN(10) >> 12, IN(11) >> 12, IN(12) >> 12}
                      | set(range(VTL1_CODE >> 12, (VTL1_STACK >> 12) + 1)))
SETUP_HV = wrmsr(0x40000000, 0x1) + wrmsr(0x40000001, HC0 | 1) + wrmsr(0x40000073, ASSIST0 | 1)
ENABLE_VTL1 = hypercall(HvCallCode.HvCallEnablePartitionVtl, IN(0), 0, slot=V1LOG + 0xA00) \
    + hypercall(HvCallCode.HvCallEnableVpVtl, IN(1), 0, slot=V1LOG + 0xA08)


@dataclass
class Op:
    """One generated operation: kernel asm (``asm``), optionally ring-3 asm (``user``: run at the op's
    user slot, ending with ud2 which returns to ring 0), and an oracle ``check(view) -> str | None``."""

    kind: str
    asm: str = ""
    user: str | None = None
    user_rflags: int = 0x202
    user_bytes: bytes | None = None  # raw ring-3 code (ud2 appended), instead of ``user``
    after: str = ""                  # kernel asm run after the op (also after a fault resumed it)
    check: object = None            # Callable[[OpView], str | None]
    desc: str = ""
    mem: list[tuple[int, bytes]] = field(default_factory=list)   # host writes before the run


@dataclass
class GuestConfig:
    hyperv: bool = False
    cr_pin: bool = True
    vtl1: bool = False              # enable VTL1 and protect the canary + VTL1 pages (implies hyperv)
    vtl1_intercepts: list[tuple[int, int]] = field(default_factory=list)   # (register, value) for IN(12)
    memory: int = MEMORY
    mem: list[tuple[int, bytes]] = field(default_factory=list)
    timeout: float = 2.0
    canary_seed: int = 0
    hv_setup: bool = True           # with hyperv: set GUEST_OS_ID, the hypercall page and VP assist page
    io_bitmap: bytes | None = None  # TSS I/O permission bitmap (8 KiB + 0xFF), else no bitmap


@dataclass
class OpView:
    """What an oracle sees after the run: its faults (log records), result slots and the partition."""

    index: int
    faults: list[tuple[int, int, int, int, int]]
    slots: list[int]
    guest: FuzzGuest

    def vectors(self) -> list[int]:
        return [f[0] for f in self.faults]


class FuzzGuest:
    def __init__(self, ops: list[Op], cfg: GuestConfig | None = None, indices: list[int] | None = None) -> None:
        """``indices``: the ops' original positions (a minimized case keeps its slots and addresses)."""
        self.cfg = cfg = cfg or GuestConfig()
        if len(ops) > MAX_OPS:
            raise ValueError("too many ops")
        self.ops = ops
        self.indices = list(range(len(ops))) if indices is None else list(indices)
        self.out: list[bytes] = []
        hyperv = cfg.hyperv or cfg.vtl1
        self.part = Partition(PartitionConfig(memory=cfg.memory, serial=self.out.append, hyperv=hyperv,
                                              cr_pin=cfg.cr_pin))
        m = self.part.memory
        self._paging(m)
        # GDT (+ TSS descriptor at 0x30) and TSS with IST1 and RSP0, no I/O bitmap (limit 0x67)
        tss_limit = 0x67 if cfg.io_bitmap is None else 0x67 + len(cfg.io_bitmap)
        self.gdt_limit = write_gdt(m, GDT, TSS, tss_limit)
        write_tss(m, TSS, KSTACK, IST1)
        if cfg.io_bitmap is not None:
            m.write(TSS + 0x68, cfg.io_bitmap)
        code, labels = _handlers()
        m.write(HANDLERS, code)
        self.labels = labels
        for v in range(256):
            m.write(IDT + 16 * v, gate(labels[f"h{v}"], ist=1 if v == 8 else 0))
        m.write(IDT + 16 * TIMER_VECTOR, gate(labels["timer"]))
        if cfg.vtl1:
            self._vtl1(m)
        for addr, data in cfg.mem:
            m.write(addr, data)
        src = [f"""
            lea rax, [rip + setup_fail]
            mov [{RESUME:#x}], rax
            mov qword ptr [{CUR:#x}], -2
        """ + load_idt_tr(IDT, SCRATCH)]
        if hyperv and (cfg.hv_setup or cfg.vtl1):
            src.append(SETUP_HV)
        if cfg.vtl1:
            src.append(ENABLE_VTL1 + vtl_call(0))
        for i, op in zip(self.indices, ops, strict=True):
            src.append(f"op{i}:\nmov qword ptr [{CUR:#x}], {i}\nlea rax, [rip + end{i}]\nmov [{RESUME:#x}], rax\n")
            src.append(op.asm)          # for a ring-3 op: the kernel part that runs before the iretq
            if op.user is not None or op.user_bytes is not None:
                ucode = op.user_bytes + b"\x0f\x0b" if op.user_bytes is not None else \
                    asm(op.user + "\nud2\n", UCODE + USLOT * i)
                if len(ucode) > USLOT:
                    raise ValueError("user code too long")
                m.write(UCODE + USLOT * i, ucode)
                src.append(to_user(UCODE + USLOT * i, USTACK, op.user_rflags))
            src.append(f"\nend{i}:\n{op.after}\n")
            for addr, data in op.mem:
                m.write(addr, data)
        src.append(f"mov qword ptr [{RESUME:#x}], 0\nmov qword ptr [{CUR:#x}], -1\n"
                   "mov dx, 0xf4\nmov eax, 0\nout dx, eax\nhlt\n"
                   f"setup_fail:\nmov dx, 0xf4\nmov eax, {SETUP_FAILED:#x}\nout dx, eax\nhlt\n")
        self.source = "\n".join(src)
        kcode = asm(self.source, KCODE)
        if len(kcode) > HANDLERS - KCODE:
            raise ValueError("kernel program too large")
        m.write(KCODE, kcode)

    @staticmethod
    def _paging(m) -> None:
        identity_paging(m, PML4, PDPT, PD)
        for i in range(1, 65):              # 1 GiB pages: 1..4 GiB uncached (MMIO), above RAM up to 64 GiB
            m.write_u64(PDPT + 8 * i, (i << 30) | 0x83 | 0x18)

    def _vtl1(self, m) -> None:
        cfg = self.cfg
        m.write(VTL1_CODE, _vtl1_code())
        # VTL1's own page tables (supervisor only) and GDT/TSS
        m.write_u64(VTL1_PML4, (VTL1_PML4 + 0x1000) | 3)
        m.write_u64(VTL1_PML4 + 0x1000, (VTL1_PML4 + 0x2000) | 3)
        m.write(VTL1_PML4 + 0x2000, b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(512)))
        write_gdt(m, VTL1_GDT, VTL1_TSS)
        m.write(IN(0), struct.pack("<QBBHI", SELF, 1, 0, 0, 0))
        m.write(IN(1), struct.pack("<QIB3x", SELF, 0, 1) + vtl1_initial_context())
        m.write(IN(9), regs_input(0, [(HvRegisterName.HvRegisterPendingEvent0, 1 | (1 << 8) | (13 << 16))]))
        m.write(IN(8), regs_input(0, [(HvRegisterName.HvX64RegisterRip, 0)]))
        # setup: the canary page and VTL1's private pages become no-access for VTL0
        canary_gpns = [CANARY >> 12]
        m.write(IN(10), protect_input(0, canary_gpns))
        m.write(IN(11), protect_input(0, VTL1_PRIVATE))
        m.write_u64(V1LOG + 0x900, control(HvCallCode.HvCallModifyVtlProtectionMask, len(canary_gpns)))
        m.write_u64(V1LOG + 0x908, control(HvCallCode.HvCallModifyVtlProtectionMask, len(VTL1_PRIVATE)))
        regs = list(cfg.vtl1_intercepts) + [(HvRegisterName.HvRegisterVpAssistPage, ASSIST1 | 1)] * 3
        m.write(IN(12), regs_input(1, regs[:3], use_target=False))
        m.write(CANARY, canary_bytes(cfg.canary_seed))

    def boot_state(self) -> BootState:
        return long_mode_boot(KCODE, KSTACK - 0x800, PML4, GDT, self.gdt_limit)

    def u64(self, addr: int) -> int:
        return self.part.memory.read_u64(addr)

    def log(self) -> list[tuple[int, int, int, int, int, int]]:
        n = min(self.u64(COUNT), MAXLOG)
        return [struct.unpack_from("<6Q", self.part.memory.read(LOG + LOG_REC * i, LOG_REC)) for i in range(n)]

    def views(self) -> list[OpView]:
        per: dict[int, list] = {}
        for rec in self.log():
            per.setdefault(rec[5], []).append(rec[:5])
        return [OpView(i, per.get(i, []), [self.u64(res(i, k)) for k in range(16)], self) for i in self.indices]


def canary_bytes(seed: int) -> bytes:
    import random
    r = random.Random(0xC4A7 ^ seed)
    return bytes(r.getrandbits(8) for _ in range(0x1000))
