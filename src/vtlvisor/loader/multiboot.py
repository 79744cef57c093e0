"""Multiboot v1 kernels (Multiboot Specification 0.6.96): find the header, load, describe the machine.

The header is searched for in the first 8192 bytes at 4-byte alignment (spec 3.1.1); it is valid when
magic + flags + checksum == 0 (mod 2^32). Header flags (spec 3.1.2):

* bit 0 (align modules on 4 KiB) and bit 1 (memory information) are always satisfied;
* bit 2 (video mode) is ignored with a log line, as QEMU does ("multiboot knows VBE. we don't.");
* any other bit in 0-15 is a requirement we do not know, and the spec says the loader must then refuse
  the kernel: ``ImageError``; bits 17-31 are optional and ignored;
* bit 16 (the "a.out kludge") makes the header's address fields authoritative: the file from
  ``load_addr``'s file offset is loaded up to ``load_end_addr`` (0 = end of file), bss zeroed to
  ``bss_end_addr`` (0 = none), entry at ``entry_addr``. The fields are validated as QEMU does.

Without bit 16 the file must be ELF: an ELF32 i386 image is loaded by physical address, bss zeroed. An
ELF64 image is accepted too (QEMU refuses it) and its PT_LOAD segments loaded the same way, with a
warning: its entry point is still entered in 32-bit protected mode, so it must be 32-bit code.

After the kernel: the info area (``bootinfo``) at the next page boundary, then the modules. The CPU state
is documented in ``bootstate``.
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ImageError
from ..memory import GuestMemory
from . import bootinfo, gdt
from .bootstate import (
    MULTIBOOT_BOOTLOADER_MAGIC,
    PROTECTED32_CR0,
    BootMode,
    BootState,
    initial_regs,
)
from .elf import ElfClass, ElfImage, elf_class, is_elf

log = logging.getLogger(__name__)

MULTIBOOT_HEADER_MAGIC = 0x1BADB002
MULTIBOOT_SEARCH = 8192
MULTIBOOT_HEADER_ALIGN = 4
MULTIBOOT_HEADER_MIN = 12       # magic, flags, checksum
MULTIBOOT_HEADER_AOUT = 32      # ... + header/load/load_end/bss_end/entry addresses


class MultibootHeaderFlag(enum.IntFlag):
    """Header flags (multiboot.h MULTIBOOT_PAGE_ALIGN etc.)."""

    PAGE_ALIGN = 1 << 0
    MEMORY_INFO = 1 << 1
    VIDEO_MODE = 1 << 2
    AOUT_KLUDGE = 1 << 16


REQUIRED_MASK = 0xFFFF
SUPPORTED_REQUIRED = MultibootHeaderFlag.PAGE_ALIGN | MultibootHeaderFlag.MEMORY_INFO | \
    MultibootHeaderFlag.VIDEO_MODE


@dataclass(frozen=True)
class MultibootHeader:
    offset: int
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


def find_header(data: bytes, name: str) -> MultibootHeader | None:
    """The first valid Multiboot header in the first 8 KiB, or None; ImageError if it is truncated."""
    limit = min(len(data), MULTIBOOT_SEARCH) - MULTIBOOT_HEADER_MIN
    for off in range(0, limit + 1, MULTIBOOT_HEADER_ALIGN):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic != MULTIBOOT_HEADER_MAGIC or (magic + flags + checksum) & 0xFFFFFFFF:
            continue
        if not flags & MultibootHeaderFlag.AOUT_KLUDGE:
            return MultibootHeader(off, flags)
        if off + MULTIBOOT_HEADER_AOUT > len(data):
            raise ImageError(f"{name}: Multiboot header at offset {off:#x} is truncated")
        return MultibootHeader(off, flags, *struct.unpack_from("<IIIII", data, off + 12))
    return None


def check_flags(header: MultibootHeader, name: str) -> None:
    unknown = header.flags & REQUIRED_MASK & ~SUPPORTED_REQUIRED
    if unknown:
        raise ImageError(f"{name}: kernel requires unsupported Multiboot features "
                         f"(header flags {header.flags:#x}, unknown bits {unknown:#x})")
    if header.flags & MultibootHeaderFlag.VIDEO_MODE:
        log.info("%s: Multiboot video mode request ignored (no video device)", name)


@dataclass(frozen=True)
class KernelPlacement:
    """Where a kernel goes: bytes per physical address, and the zero-filled tails."""

    chunks: tuple[tuple[int, bytes, int], ...]      # (paddr, file bytes, memsz)
    entry: int

    @property
    def low(self) -> int:
        return min(p for p, _, _ in self.chunks)

    @property
    def high(self) -> int:
        return max(p + m for p, _, m in self.chunks)


def _aout_placement(data: bytes, header: MultibootHeader, name: str) -> KernelPlacement:
    h = header
    if h.header_addr < h.load_addr:
        raise ImageError(f"{name}: Multiboot header_addr {h.header_addr:#x} is below load_addr {h.load_addr:#x}")
    text_offset = h.offset - (h.header_addr - h.load_addr)
    if text_offset < 0:
        raise ImageError(f"{name}: Multiboot load_addr {h.load_addr:#x} lies before the start of the file")
    if h.load_end_addr:
        if h.load_end_addr < h.load_addr:
            raise ImageError(f"{name}: Multiboot load_end_addr {h.load_end_addr:#x} is below "
                             f"load_addr {h.load_addr:#x}")
        load_size = h.load_end_addr - h.load_addr
    else:
        load_size = len(data) - text_offset
    if text_offset + load_size > len(data):
        raise ImageError(f"{name}: file too short for Multiboot load_end_addr {h.load_end_addr:#x} "
                         f"({len(data)} bytes)")
    if h.bss_end_addr:
        if h.bss_end_addr < h.load_addr + load_size:
            raise ImageError(f"{name}: Multiboot bss_end_addr {h.bss_end_addr:#x} is below the end of the "
                             f"loaded image {h.load_addr + load_size:#x}")
        mem_size = h.bss_end_addr - h.load_addr
    else:
        mem_size = load_size
    if mem_size == 0:
        raise ImageError(f"{name}: Multiboot image is empty")
    if not h.load_addr <= h.entry_addr < h.load_addr + mem_size:
        raise ImageError(f"{name}: Multiboot entry_addr {h.entry_addr:#x} is outside the loaded image "
                         f"[{h.load_addr:#x}, {h.load_addr + mem_size:#x})")
    return KernelPlacement(((h.load_addr, data[text_offset:text_offset + load_size], mem_size),),
                           h.entry_addr)


def _elf_placement(image: ElfImage) -> KernelPlacement:
    chunks = tuple((s.paddr, image.data[s.offset:s.offset + s.filesz], s.memsz) for s in image.segments)
    return KernelPlacement(chunks, image.entry)


def _symbols_if_elf(data: bytes, name: str) -> dict[str, int] | None:
    """Symbols of an a.out-kludge kernel that happens to be ELF; None if it is not (a valid) one."""
    if not is_elf(data):
        return None
    try:
        return ElfImage(data, name).symbols()
    except ImageError as err:
        log.debug("%s: no symbols: %s", name, err)
        return None


def load_multiboot(data: bytes, header: MultibootHeader, name: str, memory: GuestMemory,
                   cmdline: str = "", modules: Sequence[tuple[str, str]] = (),
                   reserved: Sequence[tuple[int, int]] = ()) -> BootState:
    """Load a Multiboot kernel whose header ``find_header`` found; build its info; entry state."""
    check_flags(header, name)
    symbols: dict[str, int] | None
    if header.flags & MultibootHeaderFlag.AOUT_KLUDGE:
        placement = _aout_placement(data, header, name)
        symbols = _symbols_if_elf(data, name)
    else:
        if not is_elf(data):
            raise ImageError(f"{name}: Multiboot header without address fields (flag 16) and not an ELF file")
        image = ElfImage(data, name)
        if elf_class(data) == ElfClass.ELFCLASS64:
            log.warning("%s: ELF64 Multiboot kernel: loading PT_LOAD segments by physical address and "
                        "entering %#x in 32-bit protected mode", name, image.entry)
        placement = _elf_placement(image)
        symbols = image.symbols()
    if placement.entry >= bootinfo.FOUR_GIB:
        raise ImageError(f"{name}: entry point {placement.entry:#x} is not reachable in 32-bit mode")

    mmap = bootinfo.memory_map(memory.size, reserved)
    usable = bootinfo.usable_ranges(mmap)
    for paddr, _, memsz in placement.chunks:
        bootinfo.check_usable(paddr, paddr + memsz, usable, f"{name}: kernel segment")

    mods = bootinfo.read_modules(modules)
    layout = bootinfo.InfoLayout.create(
        mmap_count=len(mmap), module_strings=[m.string for m in mods],
        cmdline=bootinfo.kernel_cmdline(name, cmdline), gdt=gdt.gdt_bytes(gdt.GDT32))
    info_base = bootinfo.page_align(placement.high)
    info_end = info_base + layout.size
    bootinfo.check_usable(info_base, info_end, usable, f"{name}: Multiboot information")

    for paddr, chunk, memsz in placement.chunks:
        memory.write(paddr, chunk)
        memory.fill(paddr + len(chunk), memsz - len(chunk), 0)
    loaded = bootinfo.load_modules(memory, info_end, mods, usable)
    area = bootinfo.write_info_area(memory, info_base, layout, memory.size, mmap, loaded)
    log.info("%s: Multiboot kernel at [%#x, %#x), entry %#x, info at %#x, %d module(s)", name,
             placement.low, placement.high, placement.entry, area.mbi, len(loaded))

    return BootState(
        mode=BootMode.PROTECTED32,
        entry=placement.entry,
        regs=initial_regs(rax=MULTIBOOT_BOOTLOADER_MAGIC, rbx=area.mbi),
        cr0=PROTECTED32_CR0,
        cr3=0,
        cr4=0,
        efer=0,
        gdt_base=area.gdt,
        gdt_limit=gdt.gdt_limit(gdt.GDT32),
        reserved=[],
        symbols=symbols,
        mbi_addr=area.mbi,
    )
