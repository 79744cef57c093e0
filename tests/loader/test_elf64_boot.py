import pytest
from loaderkit import Seg, build_elf, read_mbi

from vtlvisor.errors import ImageError
from vtlvisor.loader import BootMode, load_image
from vtlvisor.loader.elf64 import STACK_SIZE
from vtlvisor.memory import GuestMemory

RAM = 16 << 20
KBASE = 0x200000


def walk(memory, cr3, va):
    """4-level walk; returns (physical address, leaf entry) or None when not present."""
    table = cr3 & ~0xFFF
    for level, shift in enumerate((39, 30, 21, 12)):
        entry = memory.read_u64(table + 8 * ((va >> shift) & 0x1FF))
        if not entry & 1:
            return None
        if level in (1, 2) and entry & 0x80:
            size = 1 << shift
            return (entry & ~(size - 1) & 0x000FFFFFFFFFF000) | (va & (size - 1)), entry
        table = entry & 0x000FFFFFFFFFF000
    return table | (va & 0xFFF), entry


@pytest.fixture
def kernel64(tmp_path):
    path = tmp_path / "k64.elf"
    path.write_bytes(build_elf([Seg(KBASE, b"\x90" * 64, memsz=0x5000),
                                Seg(KBASE + 0x6000, b"data", flags=6)],
                               entry=KBASE + 8, bits=64, symbols={"_start": KBASE + 8}))
    return path


def test_long_mode_state(kernel64, memory):
    state = load_image(kernel64, memory, "hello")
    assert state.mode is BootMode.LONG64
    assert state.entry == KBASE + 8
    assert state.cr0 == 0x80000033 and state.cr4 == 0x620 and state.efer == 0x500
    assert state.regs["rdi"] == 0x76746C76
    assert state.regs["rsi"] == state.mbi_addr == state.regs["rbx"]
    assert state.regs["rax"] == 0x2BADB002
    assert (state.code_selector, state.data_selector, state.gdt_limit) == (0x08, 0x10, 0x17)
    gdt = [memory.read_u64(state.gdt_base + 8 * i) for i in range(3)]
    assert gdt == [0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF]
    assert state.symbols == {"_start": KBASE + 8}


def test_boot_region_is_reserved_at_top_and_holds_stack_tables_and_info(kernel64, memory):
    state = load_image(kernel64, memory)
    [(start, end)] = state.reserved
    assert end == RAM and start % 4096 == 0
    rsp = state.regs["rsp"]
    assert rsp % 16 == 0 and rsp == start + STACK_SIZE
    for addr in (state.cr3, state.gdt_base, state.mbi_addr):
        assert start <= addr < end
    mbi = read_mbi(memory, state.mbi_addr)
    assert mbi.mmap == [
        (20, 0, 0x9FC00, 1),
        (20, 0x9FC00, 0x400, 2),
        (20, 0xF0000, 0x10000, 2),
        (20, 0x100000, start - 0x100000, 1),
        (20, start, end - start, 2),
    ]
    assert mbi.mem_upper == (RAM - (1 << 20)) // 1024


def test_identity_page_tables(kernel64, memory):
    state = load_image(kernel64, memory)
    for va in (0, 0x1234, KBASE + 8, 0x9FC00, RAM - 1, state.mbi_addr):
        pa, entry = walk(memory, state.cr3, va)
        assert pa == va
        assert entry & 0x2 and not entry & 0x18                       # writable, cached
    pa, entry = walk(memory, state.cr3, 0xFEE00000)
    assert pa == 0xFEE00000 and entry & 0x18 == 0x18                  # PCD|PWT
    assert walk(memory, state.cr3, 0x40000000) is None                # beyond RAM, not the APIC
    assert walk(memory, state.cr3, 1 << 39) is None


def test_segments_and_bss_loaded(kernel64, memory):
    memory.fill(KBASE, 0x8000, 0xCC)
    load_image(kernel64, memory)
    assert memory.read(KBASE, 64) == b"\x90" * 64
    assert memory.read(KBASE + 64, 0x5000 - 64) == bytes(0x5000 - 64)
    assert memory.read(KBASE + 0x6000, 4) == b"data"


def test_modules_follow_the_kernel(kernel64, memory, tmp_path):
    mod = tmp_path / "m"
    mod.write_bytes(b"module!")
    state = load_image(kernel64, memory, "c", [(str(mod), "arg")])
    mbi = read_mbi(memory, state.mbi_addr)
    assert mbi.cmdline == f"{kernel64} c"
    [(mstart, mend, mstring, _)] = mbi.mods
    assert mstart == KBASE + 0x7000 and mend == mstart + 7 and mstring == f"{mod} arg"
    assert memory.read(mstart, 7) == b"module!"


def test_region_goes_below_hypervisor_reserved_top(kernel64, memory):
    hv = (RAM - 0x100000, RAM)
    state = load_image(kernel64, memory, reserved=[hv])
    [(start, end)] = state.reserved
    assert end == RAM - 0x100000
    mmap = read_mbi(memory, state.mbi_addr).mmap
    assert mmap[-2:] == [(20, start, end - start, 2), (20, hv[0], 0x100000, 2)]


def test_ram_too_small(tmp_path):
    path = tmp_path / "fat"
    path.write_bytes(build_elf([Seg(0x100000, b"\x90", memsz=0xF0000)], entry=0x100000, bits=64))
    small = GuestMemory(0x200000)
    try:
        with pytest.raises(ImageError, match="too small"):
            load_image(path, small)
    finally:
        small.close()


def test_elf64_for_wrong_machine(tmp_path, memory):
    path = tmp_path / "arm"
    path.write_bytes(build_elf([Seg(KBASE, b"\x90")], entry=KBASE, bits=64, machine=183))
    with pytest.raises(ImageError, match="machine 183"):
        load_image(path, memory)


def test_garbage_file(tmp_path, memory):
    path = tmp_path / "junk"
    path.write_bytes(b"MZ" + b"\0" * 100)
    with pytest.raises(ImageError, match="not a Multiboot kernel or an ELF64"):
        load_image(path, memory)
