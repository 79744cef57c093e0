"""Loaders on real kernels compiled at test time (skipped when gcc cannot build them)."""

import logging

import pytest
from loaderkit import gcc_kernel, read_mbi

from vtlvisor.loader import BootMode, load_image


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gcc")
    built = {
        "mb32": gcc_kernel(tmp, bits=32, multiboot=True),
        "elf64": gcc_kernel(tmp, bits=64, multiboot=False, base=0x200000),
        "mb64": gcc_kernel(tmp, bits=64, multiboot=True),
    }
    return built


def need(kernels, key):
    if kernels[key] is None:
        pytest.skip(f"gcc cannot build the {key} test kernel here")
    return kernels[key]


def test_gcc_multiboot_kernel(kernels, memory):
    path = need(kernels, "mb32")
    memory.fill(0x100000, 0x10000, 0xCC)
    state = load_image(path, memory, "quiet")
    assert state.mode is BootMode.PROTECTED32
    sym = state.symbols
    assert state.entry == sym["_start"]
    assert memory.read(sym["bss_buffer"], 16384) == bytes(16384)           # bss zeroed
    assert memory.read_u32(sym["data_word"]) == 0xDEADBEEF
    assert memory.read_u32(0x100000) == 0x1BADB002                          # header loaded first
    mbi = read_mbi(memory, state.regs["rbx"])
    assert mbi.cmdline == f"{path} quiet"
    assert state.mbi_addr >= sym["bss_buffer"] + 16384


def test_gcc_elf64_direct_boot(kernels, memory):
    path = need(kernels, "elf64")
    state = load_image(path, memory)
    assert state.mode is BootMode.LONG64
    assert state.entry == state.symbols["_start"]
    assert memory.read_u32(state.symbols["data_word"]) == 0xDEADBEEF


def test_gcc_elf64_with_multiboot_header(kernels, memory, caplog):
    path = need(kernels, "mb64")
    with caplog.at_level(logging.WARNING):
        state = load_image(path, memory)
    assert state.mode is BootMode.PROTECTED32
    assert "ELF64 Multiboot kernel" in caplog.text
