"""Helpers for loader tests: ELF files built with struct, Multiboot headers, gcc kernels, mbi reader.

Imported by name (pytest puts this directory on sys.path); fixtures live in conftest.py.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vtlvisor.memory import GuestMemory

MB_MAGIC = 0x1BADB002


def mb_header(flags: int = 0x3, aout: tuple[int, int, int, int, int] | None = None) -> bytes:
    """A Multiboot v1 header; ``aout`` = (header, load, load_end, bss_end, entry) when flag 16 is set."""
    head = struct.pack("<III", MB_MAGIC, flags, (-(MB_MAGIC + flags)) & 0xFFFFFFFF)
    if aout is not None:
        head += struct.pack("<IIIII", *aout)
    return head


@dataclass
class Seg:
    paddr: int
    data: bytes
    memsz: int | None = None
    flags: int = 5          # R|X
    vaddr: int | None = None
    ptype: int = 1


def _align(value: int, to: int) -> int:
    return -(-value // to) * to


def build_elf(segments: list[Seg], entry: int, *, bits: int = 32, machine: int | None = None,
              symbols: dict[str, int] | None = None, e_type: int = 2) -> bytes:
    """A minimal little-endian ELF executable with the given PT_LOAD segments (and a symtab)."""
    is64 = bits == 64
    machine = machine if machine is not None else (62 if is64 else 3)
    ehsize, phentsize, shentsize = (64, 56, 64) if is64 else (52, 32, 40)
    phoff = ehsize
    cursor = _align(phoff + phentsize * len(segments), 16)
    offsets = []
    body = bytearray()
    for seg in segments:
        offsets.append(cursor + len(body))
        body += seg.data
        body += b"\0" * (_align(len(body), 16) - len(body))
    shoff = shnum = shstrndx = 0
    tail = bytearray()
    if symbols is not None:
        strtab = bytearray(b"\0")
        sym_fmt, sym_size = ("<IBBHQQ", 24) if is64 else ("<IIIBBH", 16)
        syms = bytearray(sym_size)                       # null symbol
        for sym, value in symbols.items():
            name_off = len(strtab)
            strtab += sym.encode() + b"\0"
            info = (1 << 4) | 2                          # GLOBAL FUNC
            if is64:
                syms += struct.pack(sym_fmt, name_off, info, 0, 1, value, 0)
            else:
                syms += struct.pack(sym_fmt, name_off, value, 0, info, 0, 1)
        shstrtab = b"\0.symtab\0.strtab\0.shstrtab\0"
        base = cursor + len(body)
        sym_off = base
        str_off = sym_off + len(syms)
        shstr_off = str_off + len(strtab)
        tail = syms + strtab + shstrtab
        shoff = _align(base + len(tail), 8)
        tail += b"\0" * (shoff - base - len(tail))
        shdr_fmt = "<IIQQQQIIQQ" if is64 else "<IIIIIIIIII"
        tail += b"\0" * shentsize
        tail += struct.pack(shdr_fmt, 1, 2, 0, 0, sym_off, len(syms), 2, 1, 8, sym_size)
        tail += struct.pack(shdr_fmt, 9, 3, 0, 0, str_off, len(strtab), 0, 0, 1, 0)
        tail += struct.pack(shdr_fmt, 17, 3, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0)
        shnum, shstrndx = 4, 3
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1, 1]) + b"\0" * 9
    if is64:
        ehdr = ident + struct.pack("<HHIQQQIHHHHHH", e_type, machine, 1, entry, phoff, shoff, 0, ehsize,
                                   phentsize, len(segments), shentsize, shnum, shstrndx)
    else:
        ehdr = ident + struct.pack("<HHIIIIIHHHHHH", e_type, machine, 1, entry, phoff, shoff, 0, ehsize,
                                   phentsize, len(segments), shentsize, shnum, shstrndx)
    phdrs = bytearray()
    for seg, off in zip(segments, offsets, strict=True):
        memsz = seg.memsz if seg.memsz is not None else len(seg.data)
        vaddr = seg.vaddr if seg.vaddr is not None else seg.paddr
        if is64:
            phdrs += struct.pack("<IIQQQQQQ", seg.ptype, seg.flags, off, vaddr, seg.paddr, len(seg.data),
                                 memsz, 0x1000)
        else:
            phdrs += struct.pack("<IIIIIIII", seg.ptype, off, vaddr, seg.paddr, len(seg.data), memsz,
                                 seg.flags, 0x1000)
    head = ehdr + phdrs
    head += b"\0" * (cursor - len(head))
    return bytes(head + body + tail)


# ---------------------------------------------------------------------- reading the mbi back
@dataclass
class Mbi:
    flags: int
    mem_lower: int
    mem_upper: int
    cmdline: str
    mods: list[tuple[int, int, str, int]]
    mmap: list[tuple[int, int, int, int]]       # (size field, base, length, type)
    loader_name: str
    mods_addr: int
    mmap_addr: int


def c_string(memory: GuestMemory, addr: int, limit: int = 4096) -> str:
    raw = memory.read(addr, min(limit, memory.size - addr))
    assert b"\0" in raw, "string not NUL-terminated"
    return raw[:raw.index(b"\0")].decode()


def read_mbi(memory: GuestMemory, addr: int) -> Mbi:
    u32 = memory.read_u32
    mods_count, mods_addr = u32(addr + 20), u32(addr + 24)
    mods = []
    for i in range(mods_count):
        e = mods_addr + 16 * i
        mods.append((u32(e), u32(e + 4), c_string(memory, u32(e + 8)), u32(e + 12)))
    mmap_len, mmap_addr = u32(addr + 44), u32(addr + 48)
    mmap = []
    p = mmap_addr
    while p < mmap_addr + mmap_len:
        size = u32(p)
        mmap.append((size, memory.read_u64(p + 4), memory.read_u64(p + 12), u32(p + 20)))
        p += size + 4
    return Mbi(flags=u32(addr), mem_lower=u32(addr + 4), mem_upper=u32(addr + 8),
               cmdline=c_string(memory, u32(addr + 16)), mods=mods, mmap=mmap,
               loader_name=c_string(memory, u32(addr + 64)), mods_addr=mods_addr, mmap_addr=mmap_addr)


# ---------------------------------------------------------------------- gcc
LINKER_SCRIPT = """
ENTRY(_start)
SECTIONS {
  . = %(base)s;
  .text : { KEEP(*(.multiboot)) *(.text*) }
  .rodata : { *(.rodata*) }
  .data : { *(.data*) }
  .bss : { *(.bss*) *(COMMON) }
  /DISCARD/ : { *(.note*) *(.comment) *(.eh_frame*) }
}
"""

KERNEL_C = r"""
typedef unsigned int u32;
#ifdef WITH_MULTIBOOT
#define MB_MAGIC 0x1BADB002u
#define MB_FLAGS 0x00000003u
__attribute__((section(".multiboot"), used, aligned(4)))
static const u32 mb_header[3] = {MB_MAGIC, MB_FLAGS, (u32)-(MB_MAGIC + MB_FLAGS)};
#endif
unsigned char bss_buffer[16384];
unsigned char boot_stack[4096] __attribute__((aligned(16)));
volatile u32 data_word = 0xdeadbeef;
volatile u32 seen_magic, seen_mem_upper;

/* Entry: the Multiboot info pointer is in EBX (32-bit) or RSI (64-bit direct boot). */
__asm__(".globl _start\n_start:\n"
#ifdef __x86_64__
        "mov %rsi, %rdi\n mov %eax, seen_magic(%rip)\n call kmain\n"
#else
        "mov $(boot_stack + 4096), %esp\n mov %eax, seen_magic\n push %ebx\n call kmain\n"
#endif
        "1: hlt\n jmp 1b\n");

void kmain(const u32 *mbi) {
    bss_buffer[0] = (unsigned char)data_word;
    seen_mem_upper = mbi[2];
}
"""


def gcc_kernel(tmp: Path, *, bits: int, multiboot: bool, base: int = 0x100000) -> Path | None:
    """Compile KERNEL_C; None when gcc (or its -m32 support) is unavailable."""
    if shutil.which("gcc") is None:
        return None
    src = tmp / "kernel.c"
    src.write_text(KERNEL_C)
    script = tmp / "kernel.ld"
    script.write_text(LINKER_SCRIPT % {"base": hex(base)})
    out = tmp / f"kernel{bits}{'-mb' if multiboot else ''}.elf"
    cmd = ["gcc", f"-m{bits}", "-O1", "-ffreestanding", "-fno-pic", "-fno-pie", "-no-pie", "-nostdlib",
           "-static", "-fno-asynchronous-unwind-tables", "-fno-stack-protector",
           f"-Wl,-T,{script}", "-Wl,--build-id=none", "-Wl,-z,max-page-size=0x1000",
           *(["-DWITH_MULTIBOOT"] if multiboot else []), "-o", str(out), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return None
    return out
