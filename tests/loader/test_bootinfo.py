import pytest

from vtlvisor.errors import ImageError
from vtlvisor.loader.bootinfo import (
    InfoLayout,
    LoadedModule,
    MemoryRegion,
    MemoryType,
    kernel_cmdline,
    memory_map,
    usable_ranges,
)
from vtlvisor.loader.gdt import CODE32, CODE64, DATA32, Descriptor
from vtlvisor.loader.pagetables import build_identity_tables, identity_tables_size

A, R = MemoryType.AVAILABLE, MemoryType.RESERVED


def spans(mmap):
    return [(r.base, r.end, r.type) for r in mmap]


def test_standard_pc_map():
    assert spans(memory_map(64 << 20)) == [
        (0, 0x9FC00, A), (0x9FC00, 0xA0000, R), (0xF0000, 0x100000, R), (0x100000, 64 << 20, A)]


def test_reserved_ranges_split_available_memory_and_merge():
    ram = 32 << 20
    mmap = memory_map(ram, [(0x400000, 0x500000), (0x480000, 0x600000), (ram - 0x1000, ram)])
    assert spans(mmap) == [
        (0, 0x9FC00, A), (0x9FC00, 0xA0000, R), (0xF0000, 0x100000, R),
        (0x100000, 0x400000, A), (0x400000, 0x600000, R), (0x600000, ram - 0x1000, A),
        (ram - 0x1000, ram, R)]
    assert usable_ranges(mmap)[0] == (0, 0x9FC00)


def test_tiny_ram_has_no_high_memory():
    assert spans(memory_map(0x80000)) == [(0, 0x80000, A), (0x9FC00, 0xA0000, R), (0xF0000, 0x100000, R)]


def test_cmdline_format_is_qemus():
    assert kernel_cmdline("/boot/k", "") == "/boot/k "
    assert kernel_cmdline("k", "a b") == "k a b"


def test_layout_render_offsets():
    layout = InfoLayout.create(mmap_count=1, module_strings=["m x"], cmdline="k ", gdt=b"G" * 24)
    blob = layout.render(0x5000, 1 << 20, [MemoryRegion(0, 0x1000, A)], [LoadedModule(0x9000, 0x9003, "m x")])
    assert len(blob) == layout.size == 88 + 24 + 16 + 24 + 4 + 3 + 9
    assert blob[layout.gdt_offset:layout.gdt_offset + 24] == b"G" * 24
    assert layout.gdt_offset % 8 == 0
    with pytest.raises(ImageError):
        InfoLayout.create(mmap_count=0, module_strings=["a\0"], cmdline="")


def test_descriptors():
    assert CODE32 == 0x00CF9A000000FFFF and DATA32 == 0x00CF92000000FFFF and CODE64 == 0x00AF9A000000FFFF
    d = Descriptor.decode(CODE32)
    assert (d.base, d.limit, d.access) == (0, 0xFFFFFFFF, 0x9A)


def test_page_tables_cover_ram_above_4g_and_apic():
    ram = (5 << 30) + (1 << 21)
    size = identity_tables_size(ram, (0xFEE00000,))
    assert size == (2 + 6) * 4096          # PML4, PDPT, PDs for GiB 0-5 (APIC is in GiB 3)
    blob = build_identity_tables(0x10000, ram, (0xFEE00000,))
    pdpt = int.from_bytes(blob[0:8], "little") & ~0xFFF
    assert pdpt == 0x11000
    pd5 = int.from_bytes(blob[4096 + 8 * 5:4096 + 8 * 6], "little") & ~0xFFF
    first = int.from_bytes(blob[pd5 - 0x10000:pd5 - 0x10000 + 8], "little")
    assert first == (5 << 30) | 0x83
    second = int.from_bytes(blob[pd5 - 0x10000 + 8:pd5 - 0x10000 + 16], "little")
    assert second == 0                      # past the end of RAM
