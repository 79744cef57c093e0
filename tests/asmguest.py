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

import sys
from pathlib import Path

from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from vtlvisor.hv.partition import Partition, PartitionConfig

# the machine setup is shared with the fuzz harness, a package at the repository root (fuzz/)
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from fuzz import machine  # noqa: E402

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
""" + machine.log_frame() + f"""
    mov rax, {COUNT:#x}
    inc qword ptr [rax]
""" + machine.resume_tail(RESUME, KSTACK) + "timer:" + machine.timer_handler(TICKS)]
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
        machine.identity_paging(m, 0x1000, 0x2000, 0x3000)
        m.write_u64(0x3000 + 8 * 2, 0x4000 | 3)       # 4..6 MiB through a PT, all not present
        m.write_u64(0x2000 + 8 * 3, 0x8000 | 3)       # 3..4 GiB: the LAPIC page, uncached
        m.write_u64(0x8000 + 8 * 0x1F7, 0xFEE00000 | 0x83 | 0x18)
        # GDT (+ TSS descriptor at 0x30) and TSS, no I/O bitmap
        self.gdt_limit = machine.write_gdt(m, 0x5000, 0x6000)
        machine.write_tss(m, 0x6000, KSTACK, IST1)
        # handlers + IDT
        hsrc = _handlers_src()
        hbase = KCODE + 0x8000
        m.write(hbase, asm(hsrc, hbase))
        labels = _labels(hsrc, hbase, [f"h{v}" for v in range(32)] + ["timer"])
        for v in range(32):
            self.set_gate(v, labels[f"h{v}"], ist=1 if v == 8 else 0)
        self.set_gate(TIMER_VECTOR, labels["timer"])
        self.labels = labels
        pre = machine.load_idt_tr(0x7000, SCRATCH, idt_limit)
        m.write(KCODE, asm(pre + kernel + "\nmov dx, 0xf4\nmov eax, 0\nout dx, eax\n", KCODE))
        if user:
            m.write(UCODE, asm(user, UCODE))

    def set_gate(self, vec: int, handler: int, dpl: int = 0, ist: int = 0) -> None:
        self.part.memory.write(0x7000 + 16 * vec, machine.gate(handler, dpl=dpl, ist=ist))

    def run(self, timeout: float = 20):
        bs = machine.long_mode_boot(KCODE, KSTACK - 0x800, 0x1000, 0x5000, self.gdt_limit)
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
    return machine.to_user(rip, rsp, rflags)
