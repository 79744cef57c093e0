"""Multiboot v1 boot information: memory map, command line, modules, and the info structure itself.

What the kernel receives matches QEMU's multiboot loader (hw/i386/multiboot.c) where QEMU defines it:

* command line: ``"<kernel file name> <append string>"``, formatted with "%s %s", so an empty append
  string still leaves the trailing space (``"kernel.elf "``);
* modules: each loaded at a page-aligned address, in order, after the kernel; a module's string is its
  file name, followed by a space and its arguments when it has any ("FILE ARGS", as QEMU builds it from
  ``-initrd "FILE ARGS"``); strings are stored module strings first, then the kernel command line,
  then the boot loader name;
* flags: MEMORY | CMDLINE | MODS | MEM_MAP | BOOT_LOADER_NAME (QEMU also sets BOOTDEV; we have no boot
  device to report). mods_addr is set even with no modules, as QEMU does.
* mem_lower = 640 KiB, mem_upper = (RAM - 1 MiB) / 1024.

Memory map (entries ``{u32 size = 20, u64 base, u64 length, u32 type}``, mmap_addr pointing at the
first ``size`` field): ``[0, 0x9FC00)`` available (page 0 is ordinary RAM), ``[0x9FC00, 0xA0000)``
reserved (EBDA), ``[0xF0000, 0x100000)`` reserved (BIOS), ``[0x100000, RAM)`` available, minus any
range the hypervisor or loader reserves, each of which gets its own reserved entry. ``[0xA0000,
0xF0000)`` (VGA/option ROM hole) is not described at all, as on a PC.

Placement differs from QEMU in one respect: QEMU puts the mbi and the memory map at fixed low addresses
(0x9500/0x9000) that a kernel loaded low could overlap. Here everything the kernel must preserve sits
in one *info area* (mbi, memory map, module list, optional GDT, strings, in that order) placed by the
caller: right after the kernel for Multiboot kernels (where QEMU puts its module list and strings),
inside the reserved top-of-RAM region for ELF64 direct boot. Every pointer is 32-bit, so the info area
and the modules must lie below 4 GiB.
"""

from __future__ import annotations

import enum
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ImageError
from ..memory import PAGE_SIZE, GuestMemory

log = logging.getLogger(__name__)

MBI_SIZE = 88                   # struct multiboot_info up to and including the VBE fields
MMAP_ENTRY_SIZE = 24            # u32 size + u64 base + u64 length + u32 type
MMAP_ENTRY_SIZE_FIELD = 20      # value of the size field: bytes after it
MOD_ENTRY_SIZE = 16
BOOTLOADER_NAME = "vtlvisor"
FOUR_GIB = 1 << 32

EBDA_START = 0x9FC00
LEGACY_HOLE = 0xA0000
BIOS_START = 0xF0000
HIGH_MEMORY = 0x100000
MEM_LOWER_KIB = 640
FIRMWARE_RESERVED = ((EBDA_START, LEGACY_HOLE), (BIOS_START, HIGH_MEMORY))


class MultibootInfoFlag(enum.IntFlag):
    """mbi.flags (multiboot.h MULTIBOOT_INFO_*)."""

    MEMORY = 1 << 0
    BOOTDEV = 1 << 1
    CMDLINE = 1 << 2
    MODS = 1 << 3
    AOUT_SYMS = 1 << 4
    ELF_SHDR = 1 << 5
    MEM_MAP = 1 << 6
    DRIVE_INFO = 1 << 7
    CONFIG_TABLE = 1 << 8
    BOOT_LOADER_NAME = 1 << 9
    APM_TABLE = 1 << 10
    VBE_INFO = 1 << 11
    FRAMEBUFFER_INFO = 1 << 12


MBI_FLAGS = (MultibootInfoFlag.MEMORY | MultibootInfoFlag.CMDLINE | MultibootInfoFlag.MODS
             | MultibootInfoFlag.MEM_MAP | MultibootInfoFlag.BOOT_LOADER_NAME)


class MbiOffset(enum.IntEnum):
    """Field offsets in struct multiboot_info (Multiboot spec 3.3; QEMU multiboot.c MBI_*)."""

    FLAGS = 0
    MEM_LOWER = 4
    MEM_UPPER = 8
    BOOT_DEVICE = 12
    CMDLINE = 16
    MODS_COUNT = 20
    MODS_ADDR = 24
    SYMS = 28
    MMAP_LENGTH = 44
    MMAP_ADDR = 48
    DRIVES_LENGTH = 52
    DRIVES_ADDR = 56
    CONFIG_TABLE = 60
    BOOT_LOADER_NAME = 64
    APM_TABLE = 68


class MemoryType(enum.IntEnum):
    """Memory map entry types (multiboot.h MULTIBOOT_MEMORY_*)."""

    AVAILABLE = 1
    RESERVED = 2


@dataclass(frozen=True)
class MemoryRegion:
    base: int
    length: int
    type: MemoryType

    @property
    def end(self) -> int:
        return self.base + self.length


def page_align(value: int) -> int:
    return -(-value // PAGE_SIZE) * PAGE_SIZE


def _merge(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted((max(0, s), e) for s, e in ranges if e > max(0, s)):
        if merged and start < merged[-1][1]:           # overlapping; adjacent ones stay apart
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _subtract(start: int, end: int, holes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    pieces = []
    for hole_start, hole_end in holes:
        if hole_end <= start or hole_start >= end:
            continue
        if hole_start > start:
            pieces.append((start, hole_start))
        start = max(start, hole_end)
    if start < end:
        pieces.append((start, end))
    return pieces


def memory_map(ram_size: int, reserved: Sequence[tuple[int, int]] = ()) -> list[MemoryRegion]:
    """The guest's memory map (see module docstring); ``reserved`` holds half-open ranges."""
    holes = _merge([*FIRMWARE_RESERVED, *reserved])
    available: list[tuple[int, int]] = []
    for start, end in ((0, min(EBDA_START, ram_size)), (HIGH_MEMORY, ram_size)):
        if start < end:
            available += _subtract(start, end, holes)
    regions = [MemoryRegion(s, e - s, MemoryType.AVAILABLE) for s, e in available]
    regions += [MemoryRegion(s, e - s, MemoryType.RESERVED) for s, e in holes]
    return sorted(regions, key=lambda r: r.base)


def usable_ranges(mmap: Sequence[MemoryRegion]) -> list[tuple[int, int]]:
    return [(r.base, r.end) for r in mmap if r.type == MemoryType.AVAILABLE]


def check_usable(start: int, end: int, usable: Sequence[tuple[int, int]], what: str) -> None:
    """ImageError unless ``[start, end)`` lies inside one available range and below 4 GiB."""
    if end > FOUR_GIB or not any(lo <= start and end <= hi for lo, hi in usable):
        raise ImageError(f"{what} at [{start:#x}, {end:#x}) does not fit in usable guest RAM below 4 GiB")


def kernel_cmdline(kernel_name: str, append: str) -> str:
    """QEMU: snprintf("%s %s", kernel_filename, kernel_cmdline) - the space is always there."""
    return f"{kernel_name} {append}"


def _c_string(text: str, what: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ImageError(f"{what} contains a NUL byte")
    return raw + b"\0"


# ---------------------------------------------------------------------- modules
@dataclass(frozen=True)
class ModuleImage:
    """A ``--module FILE[,ARGS]`` read from the host."""

    path: str
    args: str
    data: bytes

    @property
    def string(self) -> str:
        return f"{self.path} {self.args}" if self.args else self.path


@dataclass(frozen=True)
class LoadedModule:
    start: int
    end: int
    string: str


def read_modules(modules: Sequence[tuple[str, str]]) -> list[ModuleImage]:
    images = []
    for path, args in modules:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise ImageError(f"cannot read module '{path}': {err.strerror or err}") from None
        images.append(ModuleImage(path, args, data))
    return images


def modules_end(start: int, modules: Sequence[ModuleImage]) -> int:
    """End of the last module when loaded from ``start`` (each page aligned)."""
    addr = page_align(start)
    for mod in modules:
        addr = page_align(addr + len(mod.data))
    return addr


def load_modules(memory: GuestMemory, start: int, modules: Sequence[ModuleImage],
                 usable: Sequence[tuple[int, int]]) -> list[LoadedModule]:
    """Copy the modules into RAM, each page aligned, from ``start`` upward."""
    loaded = []
    addr = page_align(start)
    for mod in modules:
        end = addr + len(mod.data)
        check_usable(addr, max(end, addr + 1), usable, f"module '{mod.path}'")
        memory.write(addr, mod.data)
        loaded.append(LoadedModule(addr, end, mod.string))
        addr = page_align(end)
    return loaded


# ---------------------------------------------------------------------- the info area
@dataclass(frozen=True)
class InfoLayout:
    """Offsets inside the info area; independent of where it and the modules end up."""

    mmap_count: int
    module_strings: tuple[bytes, ...]
    cmdline: bytes
    loader_name: bytes
    gdt: bytes

    @classmethod
    def create(cls, *, mmap_count: int, module_strings: Sequence[str], cmdline: str,
               gdt: bytes = b"", loader_name: str = BOOTLOADER_NAME) -> InfoLayout:
        return cls(mmap_count, tuple(_c_string(s, "module string") for s in module_strings),
                   _c_string(cmdline, "command line"), _c_string(loader_name, "boot loader name"), gdt)

    @property
    def mmap_offset(self) -> int:
        return MBI_SIZE

    @property
    def mods_offset(self) -> int:
        return self.mmap_offset + MMAP_ENTRY_SIZE * self.mmap_count

    @property
    def gdt_offset(self) -> int:
        return self.mods_offset + MOD_ENTRY_SIZE * len(self.module_strings)   # 8-byte aligned

    @property
    def strings_offset(self) -> int:
        return self.gdt_offset + len(self.gdt)

    @property
    def size(self) -> int:
        return (self.strings_offset + sum(map(len, self.module_strings)) + len(self.cmdline)
                + len(self.loader_name))

    def render(self, base: int, ram_size: int, mmap: Sequence[MemoryRegion],
               modules: Sequence[LoadedModule]) -> bytes:
        """The info area's bytes for an area placed at ``base``."""
        if len(mmap) != self.mmap_count or len(modules) != len(self.module_strings):
            raise ValueError("layout does not match the memory map or modules")
        blob = bytearray(self.size)
        for i, region in enumerate(mmap):
            struct.pack_into("<IQQI", blob, self.mmap_offset + i * MMAP_ENTRY_SIZE,
                             MMAP_ENTRY_SIZE_FIELD, region.base, region.length, region.type)
        blob[self.gdt_offset:self.gdt_offset + len(self.gdt)] = self.gdt
        cursor = self.strings_offset
        string_addrs = []
        for raw in (*self.module_strings, self.cmdline, self.loader_name):
            blob[cursor:cursor + len(raw)] = raw
            string_addrs.append(base + cursor)
            cursor += len(raw)
        for i, mod in enumerate(modules):
            struct.pack_into("<IIII", blob, self.mods_offset + i * MOD_ENTRY_SIZE,
                             mod.start, mod.end, string_addrs[i], 0)
        cmdline_addr, loader_addr = string_addrs[-2], string_addrs[-1]
        mem_lower = min(MEM_LOWER_KIB, ram_size // 1024)
        mem_upper = min(max(0, ram_size - HIGH_MEMORY) // 1024, 0xFFFFFFFF)
        fields = {
            MbiOffset.FLAGS: int(MBI_FLAGS),
            MbiOffset.MEM_LOWER: mem_lower,
            MbiOffset.MEM_UPPER: mem_upper,
            MbiOffset.CMDLINE: cmdline_addr,
            MbiOffset.MODS_COUNT: len(modules),
            MbiOffset.MODS_ADDR: base + self.mods_offset,
            MbiOffset.MMAP_LENGTH: MMAP_ENTRY_SIZE * len(mmap),
            MbiOffset.MMAP_ADDR: base + self.mmap_offset,
            MbiOffset.BOOT_LOADER_NAME: loader_addr,
        }
        for offset, value in fields.items():
            struct.pack_into("<I", blob, offset, value)
        return bytes(blob)


@dataclass(frozen=True)
class InfoArea:
    """Where the info area was written; ``mbi`` is what EBX/RSI point to."""

    base: int
    end: int
    gdt: int

    @property
    def mbi(self) -> int:
        return self.base


def write_info_area(memory: GuestMemory, base: int, layout: InfoLayout, ram_size: int,
                    mmap: Sequence[MemoryRegion], modules: Sequence[LoadedModule]) -> InfoArea:
    if base % 8:
        raise ValueError("info area must be 8-byte aligned")
    memory.write(base, layout.render(base, ram_size, mmap, modules))
    return InfoArea(base=base, end=base + layout.size, gdt=base + layout.gdt_offset)


def display_name(path: str | os.PathLike[str]) -> str:
    """The kernel's name as the user gave it (QEMU puts kernel_filename verbatim in the cmdline)."""
    return os.fspath(path)
