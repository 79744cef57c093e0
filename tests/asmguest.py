"""A tiny long-mode guest assembled with keystone, for testing the core exit by exit.

Layout (guest-physical = guest-virtual):
  0x1000 PML4, 0x2000 PDPT, 0x3000 PD (2 MiB pages), 0x4000 PT for 4..6 MiB (demand-paging tests)
  0x5000 GDT, 0x6000 TSS, 0x7000 IDT, 0x10000 kernel data (results), 0x100000 kernel code
  0x200000-0x3FFFFF user pages (U=1): user code at 0x200000, user stack top 0x280000
  kernel stack top 0x9F000 (TSS.RSP0), IST1 stack top 0x8F000

Every exception vector goes to a generic handler that logs (vector, error code, RIP, CS, CR2) at
LOG and then, if RESUME is non-zero, returns to RESUME in ring 0 on a fresh kernel stack.
"""

from __future__ import annotations

import struct

from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from vtlvisor.hv.partition import Partition, PartitionConfig
from vtlvisor.loader.bootstate import BootMode, BootState

KCODE, UCODE, USTACK = 0x100000, 0x200000, 0x280000
KSTACK, IST1 = 0x9F000, 0x8F000
DATA = 0x10000
COUNT = DATA + 0x0        # number of logged exceptions
RESUME = DATA + 0x8
TICKS = DATA + 0x10
SCRATCH = DATA + 0x100
LOG = DATA + 0x1000       # 40-byte records
TIMER_VECTOR = 0x40
_ks = Ks(KS_ARCH_X86, KS_MODE_64)
ERR_VECTORS = {8, 10, 11, 12, 13, 14, 17, 21, 29, 30}


def asm(src: str, addr: int) -> bytes:
    lines = [ln.split(";", 1)[0].strip() for ln in src.splitlines()]
    return bytes(_ks.asm("\n".join(ln for ln in lines if ln), addr)[0])


def _handlers_src() -> str:
    out = [f"""
common:
    push rax
    push rbx
    mov rbx, {COUNT:#x}
    mov rbx, [rbx]
    imul rbx, rbx, 40
    add rbx, {LOG:#x}
    mov rax, [rsp+16]
    mov [rbx], rax
    mov rax, [rsp+24]
    mov [rbx+8], rax
    mov rax, [rsp+32]
    mov [rbx+16], rax
    mov rax, [rsp+40]
    mov [rbx+24], rax
    mov rax, cr2
    mov [rbx+32], rax
    mov rax, {COUNT:#x}
    inc qword ptr [rax]
    mov rax, {RESUME:#x}
    mov rax, [rax]
    test rax, rax
    jz noresume
    mov [rsp+32], rax
    mov qword ptr [rsp+40], 0x08
    mov qword ptr [rsp+48], 2
    mov qword ptr [rsp+56], {KSTACK - 0x800:#x}
    mov qword ptr [rsp+64], 0x10
noresume:
    pop rbx
    pop rax
    add rsp, 16
    iretq
timer:
    push rax
    mov rax, {TICKS:#x}
    inc qword ptr [rax]
    mov rax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq
"""]
    for v in range(32):
        out.append(f"h{v}:")
        if v not in ERR_VECTORS:
            out.append("push 0")
        out.append(f"push {v}")
        out.append("jmp common")
    return "\n".join(out)


def _labels(src: str, base: int, names: list[str]) -> dict[str, int]:
    res = {}
    for n in names:
        prefix = src.split(f"\n{n}:")[0]
        res[n] = base + len(asm(prefix, base))
    return res


class AsmGuest:
    def __init__(self, kernel: str, user: str = "", memory: int = 16 << 20, idt_limit: int = 0xFFF,
                 **cfg: object) -> None:
        self.out: list[bytes] = []
        self.part = Partition(PartitionConfig(memory=memory, serial=self.out.append, **cfg))
        m = self.part.memory
        # paging
        m.write_u64(0x1000, 0x2000 | 7)
        m.write_u64(0x2000, 0x3000 | 7)
        for i in range(512):
            ubit = 4 if 1 <= i < 2 else 0
            m.write_u64(0x3000 + 8 * i, (i << 21) | 0x83 | ubit)
        m.write_u64(0x3000 + 8 * 2, 0x4000 | 3)       # 4..6 MiB through a PT, all not present
        m.write_u64(0x2000 + 8 * 3, 0x8000 | 3)       # 3..4 GiB: the LAPIC page, uncached
        m.write_u64(0x8000 + 8 * 0x1F7, 0xFEE00000 | 0x83 | 0x18)
        # GDT
        gdt = [0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00CFFB000000FFFF, 0x00CFF3000000FFFF,
               0x00AFFB000000FFFF]
        tss_lo = (0x67 & 0xFFFF) | ((0x6000 & 0xFFFF) << 16)
        tss_hi = ((0x6000 >> 16) & 0xFF) | (0x89 << 8) | (0x6000 & 0xFF000000)
        raw = b"".join(struct.pack("<Q", g) for g in gdt) + struct.pack("<IIQ", tss_lo, tss_hi, 0)
        m.write(0x5000, raw)
        self.gdt_limit = len(raw) - 1
        tss = bytearray(0x68)
        struct.pack_into("<Q", tss, 4, KSTACK)
        struct.pack_into("<Q", tss, 0x24, IST1)
        struct.pack_into("<H", tss, 0x66, 0x68)       # no I/O bitmap
        m.write(0x6000, bytes(tss))
        # handlers + IDT
        hsrc = _handlers_src()
        hbase = KCODE + 0x8000
        m.write(hbase, asm(hsrc, hbase))
        labels = _labels(hsrc, hbase, [f"h{v}" for v in range(32)] + ["timer"])
        for v in range(32):
            self.set_gate(v, labels[f"h{v}"], ist=1 if v == 8 else 0)
        self.set_gate(TIMER_VECTOR, labels["timer"])
        self.labels = labels
        pre = f"""
            mov rax, 0x7000
            mov word ptr [{SCRATCH:#x}], {idt_limit:#x}
            mov [{SCRATCH + 2:#x}], rax
            lidt [{SCRATCH:#x}]
            mov ax, 0x30
            ltr ax
        """
        m.write(KCODE, asm(pre + kernel + "\nmov dx, 0xf4\nmov eax, 0\nout dx, eax\n", KCODE))
        if user:
            m.write(UCODE, asm(user, UCODE))

    def set_gate(self, vec: int, handler: int, dpl: int = 0, ist: int = 0) -> None:
        self.part.memory.write(0x7000 + 16 * vec, struct.pack(
            "<HHBBHII", handler & 0xFFFF, 0x08, ist, 0x8E | (dpl << 5), (handler >> 16) & 0xFFFF,
            handler >> 32, 0))

    def run(self, timeout: float = 20):
        bs = BootState(mode=BootMode.LONG64, entry=KCODE, regs={"rsp": KSTACK - 0x800}, cr0=0x80050033,
                       cr3=0x1000, cr4=0x20 | 0x600, efer=0xD01, gdt_base=0x5000, gdt_limit=self.gdt_limit)
        self.part.boot(bs)
        self.result = self.part.run(timeout=timeout)
        return self.result

    def u64(self, addr: int) -> int:
        return self.part.memory.read_u64(addr)

    def log(self) -> list[tuple[int, int, int, int, int]]:
        n = self.u64(COUNT)
        return [tuple(self.u64(LOG + 40 * i + 8 * k) for k in range(5)) for i in range(min(n, 64))]


def to_user(rip: int = UCODE, rsp: int = USTACK, rflags: int = 0x202) -> str:
    """Kernel asm that enters ring 3 at ``rip`` with iretq."""
    return f"""
        push 0x23
        mov rax, {rsp:#x}
        push rax
        push {rflags:#x}
        push 0x2b
        mov rax, {rip:#x}
        push rax
        iretq
    """
