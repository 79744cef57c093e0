import logging
import struct

import pytest
from loaderkit import Seg, build_elf, c_string, mb_header, read_mbi

from vtlvisor.errors import ImageError
from vtlvisor.loader import BootMode, load_image
from vtlvisor.loader.multiboot import find_header

RAM = 16 << 20
KERNEL = 0x100000


def mb_elf32(flags=0x3, memsz=0x3000, extra=b""):
    code = mb_header(flags) + b"\x90" * 20 + extra
    return build_elf([Seg(KERNEL, code, memsz=memsz)], entry=KERNEL + 12,
                     symbols={"_start": KERNEL + 12})


@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "kernel.elf"
    path.write_bytes(mb_elf32())
    return path


def test_protected_mode_entry_state_matches_multiboot_spec(kernel, memory):
    state = load_image(kernel, memory, "console=ttyS0")
    assert state.mode is BootMode.PROTECTED32
    assert state.entry == KERNEL + 12
    assert state.regs == {"rax": 0x2BADB002, "rbx": state.mbi_addr, "rcx": 0, "rdx": 0, "rsi": 0,
                          "rdi": 0, "rsp": 0}
    assert (state.cr0, state.cr3, state.cr4, state.efer, state.rflags) == (0x11, 0, 0, 0, 0x2)
    assert (state.code_selector, state.data_selector, state.gdt_limit) == (0x08, 0x10, 0x17)
    gdt = [memory.read_u64(state.gdt_base + 8 * i) for i in range(3)]
    assert gdt == [0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF]
    assert state.reserved == []
    assert state.symbols == {"_start": KERNEL + 12}


def test_mbi_fields(kernel, memory):
    state = load_image(kernel, memory, "console=ttyS0 quiet")
    assert state.mbi_addr == KERNEL + 0x3000            # next page after the kernel's bss
    mbi = read_mbi(memory, state.mbi_addr)
    assert mbi.flags == 0x1 | 0x4 | 0x8 | 0x40 | 0x200
    assert mbi.mem_lower == 640
    assert mbi.mem_upper == (RAM - (1 << 20)) // 1024
    assert mbi.cmdline == f"{kernel} console=ttyS0 quiet"
    assert mbi.loader_name == "vtlvisor"
    assert mbi.mods == []
    assert mbi.mods_addr != 0
    assert mbi.mmap == [
        (20, 0, 0x9FC00, 1),
        (20, 0x9FC00, 0x400, 2),
        (20, 0xF0000, 0x10000, 2),
        (20, 0x100000, RAM - 0x100000, 1),
    ]


def test_empty_append_keeps_qemu_trailing_space(kernel, memory):
    state = load_image(kernel, memory)
    assert read_mbi(memory, state.mbi_addr).cmdline == f"{kernel} "


def test_modules_are_page_aligned_after_the_info_with_qemu_strings(kernel, memory, tmp_path):
    m1 = tmp_path / "initrd.bin"
    m1.write_bytes(b"A" * 5000)
    m2 = tmp_path / "blob"
    m2.write_bytes(b"BB")
    state = load_image(kernel, memory, "", [(str(m1), "root=/dev/ram0 x=1"), (str(m2), "")])
    mbi = read_mbi(memory, state.mbi_addr)
    (s1, e1, str1, r1), (s2, e2, str2, r2) = mbi.mods
    assert str1 == f"{m1} root=/dev/ram0 x=1" and str2 == str(m2)
    assert s1 % 4096 == 0 and s2 % 4096 == 0
    assert s1 > state.mbi_addr and s2 >= e1
    assert (e1 - s1, e2 - s2) == (5000, 2)
    assert (r1, r2) == (0, 0)
    assert memory.read(s1, 5000) == b"A" * 5000 and memory.read(s2, 2) == b"BB"
    assert mbi.mods_addr < s1                              # module list lives in the info area


def test_bss_is_zeroed(tmp_path, memory):
    path = tmp_path / "k"
    path.write_bytes(mb_elf32(memsz=0x5000))
    memory.fill(KERNEL, 0x6000, 0xCC)
    load_image(path, memory)
    assert memory.read(KERNEL, 12) == mb_header()
    assert memory.read(KERNEL + 32, 0x5000 - 32) == bytes(0x5000 - 32)


def test_aout_kludge_flat_binary(tmp_path, memory):
    load, hdr_off = 0x200000, 0x40
    image = bytearray(b"\xeb\xfe" + b"\0" * (hdr_off - 2))
    header = mb_header(0x10002, (load + hdr_off, load, 0, load + 0x3000, load + 0x80))
    image += header + b"\xf4" * 200
    path = tmp_path / "flat.bin"
    path.write_bytes(bytes(image))
    memory.fill(load, 0x4000, 0xCC)
    state = load_image(path, memory)
    assert state.entry == load + 0x80
    assert memory.read(load, len(image)) == bytes(image)
    assert memory.read(load + len(image), 0x3000 - len(image)) == bytes(0x3000 - len(image))
    assert state.mbi_addr == load + 0x3000
    assert state.symbols is None


@pytest.mark.parametrize("aout,match", [
    ((0x100000, 0x100040, 0, 0, 0x100040), "header_addr"),           # header below load
    ((0x100040, 0x100000, 0, 0, 0x100010), "before the start"),      # load_addr before file start
    ((0x100000, 0x100000, 0x0FF000, 0, 0x100010), "load_end_addr"),
    ((0x100000, 0x100000, 0x200000, 0, 0x100010), "too short"),
    ((0x100000, 0x100000, 0, 0x100004, 0x100010), "bss_end_addr"),
    ((0x100000, 0x100000, 0, 0, 0x900000), "entry_addr"),
])
def test_aout_kludge_inconsistent_fields(tmp_path, memory, aout, match):
    path = tmp_path / "bad.bin"
    path.write_bytes(mb_header(0x10000, aout) + b"\x90" * 64)
    with pytest.raises(ImageError, match=match):
        load_image(path, memory)


def test_truncated_aout_header(tmp_path, memory):
    path = tmp_path / "short.bin"
    path.write_bytes(mb_header(0x10000) + b"\0" * 8)
    with pytest.raises(ImageError, match="truncated"):
        load_image(path, memory)


def test_unknown_required_flag_is_refused(tmp_path, memory):
    path = tmp_path / "k"
    path.write_bytes(mb_elf32(flags=0x3 | 0x8))
    with pytest.raises(ImageError, match="unsupported Multiboot features"):
        load_image(path, memory)


def test_video_mode_request_is_ignored_and_optional_bits_accepted(tmp_path, memory, caplog):
    path = tmp_path / "k"
    path.write_bytes(mb_elf32(flags=0x3 | 0x4 | 0x20000))
    with caplog.at_level(logging.INFO):
        state = load_image(path, memory)
    assert state.mode is BootMode.PROTECTED32
    assert "video mode" in caplog.text


def test_header_search_rules():
    good = mb_header()
    assert find_header(b"\0" * 8 + good, "x").offset == 8
    assert find_header(b"\0" * 6 + good, "x") is None                  # not 4-byte aligned
    assert find_header(b"\0" * 8192 + good, "x") is None               # beyond the first 8 KiB
    bad = good[:8] + struct.pack("<I", (struct.unpack_from("<I", good, 8)[0] + 1) & 0xFFFFFFFF)
    assert find_header(bad, "x") is None                               # checksum


def test_elf32_without_header_is_refused(tmp_path, memory):
    path = tmp_path / "plain32"
    path.write_bytes(build_elf([Seg(KERNEL, b"\x90" * 16)], entry=KERNEL))
    with pytest.raises(ImageError, match="no Multiboot header"):
        load_image(path, memory)


def test_elf64_with_multiboot_header_loads_with_warning(tmp_path, memory, caplog):
    path = tmp_path / "k64mb"
    path.write_bytes(build_elf([Seg(KERNEL, mb_header() + b"\x90" * 16, memsz=0x1000)], entry=KERNEL + 12,
                               bits=64))
    with caplog.at_level(logging.WARNING):
        state = load_image(path, memory)
    assert state.mode is BootMode.PROTECTED32 and state.entry == KERNEL + 12
    assert "ELF64 Multiboot kernel" in caplog.text


@pytest.mark.parametrize("paddr", [0xA0000, 0xF8000, 0x9FF00, RAM - 0x10])
def test_kernel_outside_usable_ram_is_refused(tmp_path, memory, paddr):
    path = tmp_path / "k"
    path.write_bytes(build_elf([Seg(paddr, mb_header() + b"\x90" * 100)], entry=paddr + 12))
    with pytest.raises(ImageError, match="usable guest RAM"):
        load_image(path, memory)


def test_hypervisor_reserved_ranges_are_in_the_map_and_not_loaded_over(kernel, tmp_path, memory):
    top = (RAM - 0x10000, RAM)
    state = load_image(kernel, memory, reserved=[top])
    mbi = read_mbi(memory, state.mbi_addr)
    assert mbi.mmap[-2:] == [(20, 0x100000, RAM - 0x10000 - 0x100000, 1), (20, RAM - 0x10000, 0x10000, 2)]
    with pytest.raises(ImageError):
        load_image(kernel, memory, reserved=[(KERNEL + 0x1000, KERNEL + 0x2000)])


def test_low_kernel_in_conventional_memory(tmp_path, memory):
    path = tmp_path / "low"
    path.write_bytes(build_elf([Seg(0x10000, mb_header() + b"\x90" * 16, memsz=0x800)], entry=0x10000 + 12))
    state = load_image(path, memory)
    assert state.mbi_addr == 0x11000


def test_missing_files(tmp_path, memory, kernel):
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "nope", memory)
    assert str(info.value) == f"cannot read image '{tmp_path / 'nope'}': No such file or directory"
    with pytest.raises(ImageError, match="cannot read module '.*gone': No such file or directory"):
        load_image(kernel, memory, "", [(str(tmp_path / "gone"), "")])


def test_modules_that_do_not_fit_are_refused(kernel, tmp_path):
    from vtlvisor.memory import GuestMemory
    small = GuestMemory(2 << 20)
    big = tmp_path / "big"
    big.write_bytes(b"\0" * (1 << 20))
    try:
        with pytest.raises(ImageError, match="module"):
            load_image(kernel, small, "", [(str(big), "")])
    finally:
        small.close()


def test_nul_in_cmdline_is_refused(kernel, memory):
    with pytest.raises(ImageError, match="NUL"):
        load_image(kernel, memory, "a\0b")


def test_strings_are_nul_terminated_in_guest_memory(kernel, memory):
    state = load_image(kernel, memory, "x")
    cmdline_addr = memory.read_u32(state.mbi_addr + 16)
    assert c_string(memory, cmdline_addr) == f"{kernel} x"
