"""ELF32/ELF64 parsing for x86 kernels: headers, PT_LOAD segments, symbol table.

The image is untrusted user input, so parsing validates every offset, size and count against the file
before using it, and any defect becomes an ``ImageError`` whose one-line message names the file. Nothing
else may escape: callers print the message and exit, never a traceback.

Loading is by physical address (``p_paddr``), as QEMU's ELF loader does for kernels. The entry point is
a virtual address; when it lies in an executable segment whose ``p_vaddr`` differs from ``p_paddr`` it is
translated to the physical address, again as QEMU's ``load_elf`` does, because the CPU starts with
paging off (Multiboot) or identity-mapped (ELF64 direct boot).
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from ..errors import ImageError
from ..memory import GuestMemory

log = logging.getLogger(__name__)

MAX_PHNUM = 512                 # more program headers than any kernel has: treat as corrupt


class ElfClass(enum.IntEnum):
    """e_ident[EI_CLASS] (System V gABI)."""

    ELFCLASS32 = 1
    ELFCLASS64 = 2


class ElfData(enum.IntEnum):
    ELFDATA2LSB = 1


class ElfType(enum.IntEnum):
    ET_EXEC = 2
    ET_DYN = 3


class ElfMachine(enum.IntEnum):
    EM_386 = 3
    EM_X86_64 = 62


class PType(enum.IntEnum):
    PT_NULL = 0
    PT_LOAD = 1


class PFlags(enum.IntFlag):
    PF_X = 1
    PF_W = 2
    PF_R = 4


class ShType(enum.IntEnum):
    SHT_SYMTAB = 2
    SHT_STRTAB = 3


class SymType(enum.IntEnum):
    STT_NOTYPE = 0
    STT_OBJECT = 1
    STT_FUNC = 2
    STT_SECTION = 3
    STT_FILE = 4


class SymBind(enum.IntEnum):
    STB_LOCAL = 0
    STB_GLOBAL = 1
    STB_WEAK = 2


ELF_MAGIC = b"\x7fELF"
EV_CURRENT = 1
SHN_UNDEF = 0

# (format, size) per class: ELF header after e_ident, program header, section header, symbol.
_EHDR = {ElfClass.ELFCLASS32: "<HHIIIIIHHHHHH", ElfClass.ELFCLASS64: "<HHIQQQIHHHHHH"}
_PHDR = {ElfClass.ELFCLASS32: "<IIIIIIII", ElfClass.ELFCLASS64: "<IIQQQQQQ"}
_SHDR = {ElfClass.ELFCLASS32: "<IIIIIIIIII", ElfClass.ELFCLASS64: "<IIQQQQIIQQ"}
_SYM = {ElfClass.ELFCLASS32: "<IIIBBH", ElfClass.ELFCLASS64: "<IBBHQQ"}


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD program header."""

    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def elf_class(data: bytes) -> int | None:
    """EI_CLASS of ``data`` if it starts with the ELF magic, else None."""
    return data[4] if is_elf(data) and len(data) > 4 else None


def _unpack(fmt: str, data: bytes, offset: int, name: str, what: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(data):
        raise ImageError(f"{name}: truncated ELF file ({what} at offset {offset:#x} past end of file)")
    return struct.unpack_from(fmt, data, offset)


class ElfImage:
    """A validated ELF executable for x86 or x86-64, little endian."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.name = name
        self._parse_header()
        self.segments = self._parse_segments()

    # ------------------------------------------------------------------ header
    def _parse_header(self) -> None:
        data, name = self.data, self.name
        if len(data) < 16 or not is_elf(data):
            raise ImageError(f"{name}: not an ELF file (bad magic)")
        if data[4] not in (ElfClass.ELFCLASS32, ElfClass.ELFCLASS64):
            raise ImageError(f"{name}: unsupported ELF class {data[4]}")
        self.elf_class = ElfClass(data[4])
        if data[5] != ElfData.ELFDATA2LSB:
            raise ImageError(f"{name}: not a little-endian ELF file")
        if data[6] != EV_CURRENT:
            raise ImageError(f"{name}: unsupported ELF version {data[6]}")
        (e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, _flags, e_ehsize, e_phentsize,
         e_phnum, e_shentsize, e_shnum, e_shstrndx) = _unpack(_EHDR[self.elf_class], data, 16, name,
                                                              "ELF header")
        expected_machine = (ElfMachine.EM_386 if self.elf_class == ElfClass.ELFCLASS32
                            else ElfMachine.EM_X86_64)
        if e_machine != expected_machine:
            bits = 32 if self.elf_class == ElfClass.ELFCLASS32 else 64
            raise ImageError(f"{name}: ELF{bits} file for machine {e_machine}, "
                             f"expected {expected_machine.name} ({int(expected_machine)})")
        if e_type not in (ElfType.ET_EXEC, ElfType.ET_DYN):
            raise ImageError(f"{name}: ELF type {e_type} is not an executable")
        if e_version != EV_CURRENT:
            raise ImageError(f"{name}: unsupported ELF version {e_version}")
        if e_ehsize < 16 + struct.calcsize(_EHDR[self.elf_class]):
            raise ImageError(f"{name}: ELF header size {e_ehsize} too small")
        self.machine = ElfMachine(e_machine)
        self.e_type = e_type
        self.e_entry = e_entry
        self.e_phoff = e_phoff
        self.e_phentsize = e_phentsize
        self.e_phnum = e_phnum
        self.e_shoff = e_shoff
        self.e_shentsize = e_shentsize
        self.e_shnum = e_shnum
        self.e_shstrndx = e_shstrndx

    @property
    def is64(self) -> bool:
        return self.elf_class == ElfClass.ELFCLASS64

    @property
    def addr_limit(self) -> int:
        return 1 << (64 if self.is64 else 32)

    # ------------------------------------------------------------------ program headers
    def _parse_segments(self) -> list[Segment]:
        name, fmt = self.name, _PHDR[self.elf_class]
        if self.e_phnum == 0:
            raise ImageError(f"{name}: ELF file has no program headers")
        if self.e_phnum > MAX_PHNUM:
            raise ImageError(f"{name}: absurd program header count {self.e_phnum}")
        if self.e_phentsize != struct.calcsize(fmt):
            raise ImageError(f"{name}: program header entry size {self.e_phentsize}, "
                             f"expected {struct.calcsize(fmt)}")
        if self.e_phoff + self.e_phnum * self.e_phentsize > len(self.data):
            raise ImageError(f"{name}: program header table (offset {self.e_phoff:#x}, "
                             f"{self.e_phnum} entries) extends past end of file")
        segments = []
        for i in range(self.e_phnum):
            fields = _unpack(fmt, self.data, self.e_phoff + i * self.e_phentsize, name, "program header")
            if self.is64:
                p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _align = fields
            else:
                p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, _align = fields
            if p_type != PType.PT_LOAD:
                continue
            seg = Segment(p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags)
            self._check_segment(i, seg)
            if seg.memsz:
                segments.append(seg)
        if not segments:
            raise ImageError(f"{name}: ELF file has no loadable (PT_LOAD) segments")
        ordered = sorted(segments, key=lambda s: s.paddr)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if b.paddr < a.end:
                raise ImageError(f"{name}: PT_LOAD segments overlap at physical "
                                 f"[{a.paddr:#x}, {a.end:#x}) and [{b.paddr:#x}, {b.end:#x})")
        return segments

    def _check_segment(self, index: int, seg: Segment) -> None:
        name = self.name
        if seg.filesz > seg.memsz:
            raise ImageError(f"{name}: segment {index} has p_filesz {seg.filesz:#x} > "
                             f"p_memsz {seg.memsz:#x}")
        if seg.offset + seg.filesz > len(self.data):
            raise ImageError(f"{name}: segment {index} data (offset {seg.offset:#x}, size "
                             f"{seg.filesz:#x}) extends past end of file ({len(self.data):#x} bytes)")
        if seg.paddr + seg.memsz > self.addr_limit or seg.vaddr + seg.memsz > self.addr_limit:
            raise ImageError(f"{name}: segment {index} wraps around the address space")

    # ------------------------------------------------------------------ addresses
    @property
    def low(self) -> int:
        """Lowest physical address loaded."""
        return min(s.paddr for s in self.segments)

    @property
    def high(self) -> int:
        """End (exclusive) of the highest physical address loaded, bss included."""
        return max(s.end for s in self.segments)

    @property
    def entry(self) -> int:
        """Physical entry point (see module docstring); ImageError if no segment contains it."""
        for seg in self.segments:
            if seg.vaddr <= self.e_entry < seg.vaddr + seg.memsz and seg.flags & PFlags.PF_X:
                return self.e_entry - seg.vaddr + seg.paddr
        for seg in self.segments:
            if seg.paddr <= self.e_entry < seg.end:
                return self.e_entry
        raise ImageError(f"{self.name}: entry point {self.e_entry:#x} is not inside any loadable segment")

    # ------------------------------------------------------------------ loading
    def check_placement(self, usable: Sequence[tuple[int, int]]) -> None:
        """ImageError unless every segment lies inside one of the ``usable`` half-open ranges."""
        for seg in self.segments:
            if not any(lo <= seg.paddr and seg.end <= hi for lo, hi in usable):
                raise ImageError(f"{self.name}: segment at physical [{seg.paddr:#x}, {seg.end:#x}) "
                                 f"is outside usable guest RAM")

    def load(self, memory: GuestMemory) -> None:
        """Copy the segments into guest RAM and zero their bss. Call ``check_placement`` first."""
        for seg in self.segments:
            if not memory.contains(seg.paddr, seg.memsz):
                raise ImageError(f"{self.name}: segment at physical [{seg.paddr:#x}, {seg.end:#x}) "
                                 f"is outside guest RAM ({memory.size:#x} bytes)")
        for seg in self.segments:
            memory.write(seg.paddr, self.data[seg.offset:seg.offset + seg.filesz])
            if seg.memsz > seg.filesz:
                memory.fill(seg.paddr + seg.filesz, seg.memsz - seg.filesz, 0)
            if seg.vaddr != seg.paddr:
                log.debug("%s: segment vaddr %#x loaded at paddr %#x", self.name, seg.vaddr, seg.paddr)

    # ------------------------------------------------------------------ symbols
    @cached_property
    def _symbol_table(self) -> dict[str, int]:
        return self._parse_symbols()

    def symbols(self) -> dict[str, int]:
        """Named symbols of the SHT_SYMTAB section (name -> st_value); {} when stripped."""
        return dict(self._symbol_table)

    def _section_headers(self) -> list[tuple[int, ...]]:
        name, fmt = self.name, _SHDR[self.elf_class]
        if self.e_shoff == 0 or self.e_shnum == 0:
            return []
        if self.e_shentsize != struct.calcsize(fmt):
            raise ImageError(f"{name}: section header entry size {self.e_shentsize}, "
                             f"expected {struct.calcsize(fmt)}")
        if self.e_shoff + self.e_shnum * self.e_shentsize > len(self.data):
            raise ImageError(f"{name}: section header table (offset {self.e_shoff:#x}, "
                             f"{self.e_shnum} entries) extends past end of file")
        return [_unpack(fmt, self.data, self.e_shoff + i * self.e_shentsize, name, "section header")
                for i in range(self.e_shnum)]

    def _parse_symbols(self) -> dict[str, int]:
        name = self.name
        sections = self._section_headers()
        sym_fmt = _SYM[self.elf_class]
        sym_size = struct.calcsize(sym_fmt)
        result: dict[str, int] = {}
        for sh in sections:
            _sh_name, sh_type, _f, _a, sh_offset, sh_size, sh_link, _info, _al, sh_entsize = sh
            if sh_type != ShType.SHT_SYMTAB:
                continue
            if sh_entsize != sym_size:
                raise ImageError(f"{name}: symbol table entry size {sh_entsize}, expected {sym_size}")
            if sh_offset + sh_size > len(self.data):
                raise ImageError(f"{name}: symbol table extends past end of file")
            if sh_link >= len(sections) or sections[sh_link][1] != ShType.SHT_STRTAB:
                raise ImageError(f"{name}: symbol table links to invalid string table {sh_link}")
            str_off, str_size = sections[sh_link][4], sections[sh_link][5]
            if str_off + str_size > len(self.data):
                raise ImageError(f"{name}: string table extends past end of file")
            strtab = self.data[str_off:str_off + str_size]
            for i in range(sh_size // sym_size):
                fields = struct.unpack_from(sym_fmt, self.data, sh_offset + i * sym_size)
                if self.is64:
                    st_name, st_info, _other, st_shndx, st_value, _size = fields
                else:
                    st_name, st_value, _size, st_info, _other, st_shndx = fields
                if st_name == 0 or st_shndx == SHN_UNDEF:
                    continue
                if st_info & 0xF in (SymType.STT_SECTION, SymType.STT_FILE):
                    continue
                if st_name >= len(strtab):
                    raise ImageError(f"{name}: symbol {i} name offset {st_name:#x} outside string table")
                end = strtab.find(b"\0", st_name)
                raw = strtab[st_name:end if end >= 0 else len(strtab)]
                symbol = raw.decode("utf-8", "replace")
                if st_info >> 4 in (SymBind.STB_GLOBAL, SymBind.STB_WEAK):
                    result[symbol] = st_value            # a global wins over same-named locals
                else:
                    result.setdefault(symbol, st_value)
        return result

    def symbol(self, symbol: str) -> int | None:
        return self._symbol_table.get(symbol)
