"""Guests for the benchmarks, runnable both under vtlvisor and on bare Unicorn.

* ``run_vtl_image`` / ``run_bare_image``: an ELF64 image (guest/build/bench.elf). vtlvisor boots it
  through its own loader and runs ``_start``; bare Unicorn gets the same memory image (the project's
  ``load_image``: PT_LOAD segments, identity tables with 2 MiB pages, GDT, stack) but is put into long
  mode with plain ``reg_write``/``msr_write`` and runs a ``call bench_main; hlt`` stub; the checksum is
  RAX at the stub's ``hlt``.
* ``LoopGuest``: a tiny long-mode guest (keystone) that executes one instruction N times in a loop
  (CPUID, UD2, INT3). Exceptions go to a handler that counts them and returns with IRETQ. It ends with
  ``out 0xf4`` (isa-debug-exit) under vtlvisor; bare Unicorn stops at that instruction (``until``).

Layout (guest-physical = guest-virtual): 0x1000 PML4, 0x2000 PDPT, 0x3000 PD (2 MiB pages, 16 MiB),
0x5000 GDT (null, 0x08 code64, 0x10 data), 0x6000 IDTR image, 0x7000 IDT, 0x10000 counter,
stack top 0x9F000, loop code 0x100000, handlers 0x180000.
"""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass

from keystone import KS_ARCH_X86, KS_MODE_64, Ks
from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as X

from vtlvisor.hv.partition import Partition, PartitionConfig
from vtlvisor.hv.stop import StopReason
from vtlvisor.loader import load_image
from vtlvisor.loader.bootstate import LONG64_CR0, LONG64_CR4, LONG64_EFER, BootMode, BootState
from vtlvisor.memory import GuestMemory

IMAGE_RAM = 64 << 20
LOOP_RAM = 16 << 20
PML4, PDPT, PD = 0x1000, 0x2000, 0x3000
GDT, IDTR_IMAGE, IDT = 0x5000, 0x6000, 0x7000
COUNTER = 0x10000
STACK_TOP = 0x9F000
CODE, HANDLERS = 0x100000, 0x180000
STUB = 0x1000               # bare ELF run: "call bench_main; hlt" (below the kernel, in the map)
EFER_MSR = 0xC0000080
GDT_ENTRIES = (0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF)
CHECKSUM_RE = re.compile(rb"checksum=0x([0-9a-fA-F]+)")
SCALE_RE = re.compile(rb"BENCH_SCALE=(\d+)")

_ks = Ks(KS_ARCH_X86, KS_MODE_64)


def asm(src: str, addr: int) -> bytes:
    return bytes(_ks.asm(src, addr)[0])


class BenchError(RuntimeError):
    """A benchmark produced a wrong result (checksum, exit count, stop reason)."""


# ---------------------------------------------------------------------------------------------------
# bare Unicorn


def bare_uc(mem: GuestMemory) -> Uc:
    """A plain Unicorn x86-64 instance with ``mem`` as RAM at 0 (same CPU model as vtlvisor's engine)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(X.UC_CPU_X86_EPYC)
    uc.mem_map_ptr(0, mem.size, UC_PROT_ALL, mem.host_address)
    return uc


def bare_long_mode(uc: Uc, cr3: int, gdt_base: int, gdt_limit: int, rsp: int) -> None:
    """Paging on (CR3 = identity tables), EFER.LME/LMA, CS=0x08 (64-bit), data segments 0x10."""
    uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt_base, gdt_limit, 0))
    uc.reg_write(X.UC_X86_REG_CR3, cr3)
    uc.reg_write(X.UC_X86_REG_CR4, LONG64_CR4)
    uc.msr_write(EFER_MSR, LONG64_EFER)
    uc.reg_write(X.UC_X86_REG_CR0, LONG64_CR0)
    uc.reg_write(X.UC_X86_REG_CS, 0x08)
    for r in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_SS, X.UC_X86_REG_FS, X.UC_X86_REG_GS):
        uc.reg_write(r, 0x10)
    uc.reg_write(X.UC_X86_REG_RSP, rsp)
    uc.reg_write(X.UC_X86_REG_RFLAGS, 0x2)


# ---------------------------------------------------------------------------------------------------
# ELF64 compute benchmark


@dataclass
class ImageRun:
    seconds: float          # end to end: engine setup + load + run to completion
    checksum: int
    output: bytes = b""


def run_vtl_image(path: str, cmdline: str = "", timeout: float = 600) -> ImageRun:
    out: list[bytes] = []
    t0 = time.perf_counter()
    part = Partition(PartitionConfig(memory=IMAGE_RAM, serial=out.append))
    res = part.boot_image(path, cmdline=cmdline).run(timeout=timeout)
    dt = time.perf_counter() - t0
    text = b"".join(out)
    if res.reason is not StopReason.DEBUG_EXIT or res.status != 1:
        raise BenchError(f"vtlvisor {path}: {res.reason.value} {res.detail!r} status={res.status}\n"
                         + text.decode(errors="replace"))
    m = CHECKSUM_RE.search(text)
    return ImageRun(dt, int(m.group(1), 16) if m else -1, text)


def run_bare_image(path: str) -> ImageRun:
    t0 = time.perf_counter()
    mem = GuestMemory(IMAGE_RAM)
    bs = load_image(path, mem)
    if bs.mode is not BootMode.LONG64 or not bs.symbols or "bench_main" not in bs.symbols:
        raise BenchError(f"{path}: not an ELF64 image exporting bench_main")
    stub = asm(f"mov rax, {bs.symbols['bench_main']:#x}; call rax; hlt", STUB)
    mem.write(STUB, stub)
    uc = bare_uc(mem)
    bare_long_mode(uc, bs.cr3, bs.gdt_base, bs.gdt_limit, bs.regs["rsp"])
    end = STUB + len(stub) - 1
    uc.emu_start(STUB, end)
    dt = time.perf_counter() - t0
    if uc.reg_read(X.UC_X86_REG_RIP) != end:
        raise BenchError(f"bare Unicorn stopped at {uc.reg_read(X.UC_X86_REG_RIP):#x}, not {end:#x}")
    return ImageRun(dt, uc.reg_read(X.UC_X86_REG_RAX))


# ---------------------------------------------------------------------------------------------------
# loop guests

LOOP_INSN = {"cpuid": "xor eax, eax; xor ecx, ecx; cpuid", "ud2": "ud2", "int3": "int3"}
_HANDLERS = {
    6: f"inc qword ptr [{COUNTER:#x}]; add qword ptr [rsp], 2; iretq",    # #UD: fault, skip the ud2
    3: f"inc qword ptr [{COUNTER:#x}]; iretq",                            # #BP: trap, RIP is past it
}


class LoopGuest:
    """``kind`` executed ``n`` times: ``mov r8, n; 1: <insn>; dec r8; jnz 1b``, then debug-exit."""

    def __init__(self, kind: str, n: int) -> None:
        self.kind, self.n = kind, n
        body = f"lidt [{IDTR_IMAGE:#x}]; mov r8, {n}; top: {LOOP_INSN[kind]}; dec r8; jnz top"
        self.code = asm(body, CODE)
        self.exit_at = CODE + len(self.code)
        self.code += asm("mov dx, 0xf4; xor eax, eax; out dx, eax; cli; hlt", self.exit_at)

    def write(self, mem: GuestMemory) -> None:
        mem.write_u64(PML4, PDPT | 3)
        mem.write_u64(PDPT, PD | 3)
        for i in range(mem.size >> 21):
            mem.write_u64(PD + 8 * i, (i << 21) | 0x83)
        mem.write(GDT, b"".join(struct.pack("<Q", g) for g in GDT_ENTRIES))
        mem.write(IDTR_IMAGE, struct.pack("<HQ", 256 * 16 - 1, IDT))
        for i, (vec, src) in enumerate(sorted(_HANDLERS.items())):
            h = HANDLERS + 0x100 * i
            mem.write(h, asm(src, h))
            mem.write(IDT + 16 * vec, struct.pack("<HHBBHII", h & 0xFFFF, 0x08, 0, 0x8E, (h >> 16) & 0xFFFF,
                                                  h >> 32, 0))
        mem.write_u64(COUNTER, 0)
        mem.write(CODE, self.code)

    def boot_state(self) -> BootState:
        return BootState(mode=BootMode.LONG64, entry=CODE, regs={"rsp": STACK_TOP}, cr0=LONG64_CR0,
                         cr3=PML4, cr4=LONG64_CR4, efer=LONG64_EFER, gdt_base=GDT,
                         gdt_limit=8 * len(GDT_ENTRIES) - 1)

    def vtl_partition(self, trace=None) -> Partition:
        part = Partition(PartitionConfig(memory=LOOP_RAM, serial=lambda b: None))
        self.write(part.memory)
        part.boot(self.boot_state())
        part.vcpu.hooks.trace = trace
        return part

    def run_vtl(self, trace=None) -> float:
        """Seconds spent in ``Partition.run()`` (construction and boot excluded)."""
        part = self.vtl_partition(trace)
        t0 = time.perf_counter()
        res = part.run(timeout=120)
        dt = time.perf_counter() - t0
        if res.reason is not StopReason.DEBUG_EXIT or res.status != 1:
            raise BenchError(f"loop guest {self.kind}: {res.reason.value} {res.detail!r}")
        if self.kind == "cpuid":
            got = sum(c for code, c in part.vcpu.exit_counts.items() if code == 0x72)    # SVM CPUID
        else:
            got = part.memory.read_u64(COUNTER)
        if got != self.n:
            raise BenchError(f"loop guest {self.kind}: {got} events, expected {self.n}")
        return dt

    def run_bare(self) -> float:
        """Seconds spent in ``emu_start`` on bare Unicorn (CPUID only: Unicorn does not deliver
        exceptions through the IDT by itself)."""
        if self.kind != "cpuid":
            raise ValueError("bare Unicorn runs only the CPUID loop")
        mem = GuestMemory(LOOP_RAM)
        self.write(mem)
        uc = bare_uc(mem)
        bare_long_mode(uc, PML4, GDT, 8 * len(GDT_ENTRIES) - 1, STACK_TOP)
        t0 = time.perf_counter()
        uc.emu_start(CODE, self.exit_at)
        dt = time.perf_counter() - t0
        if uc.reg_read(X.UC_X86_REG_RIP) != self.exit_at or uc.reg_read(X.UC_X86_REG_R8) != 0:
            raise BenchError("bare CPUID loop did not complete")
        return dt
