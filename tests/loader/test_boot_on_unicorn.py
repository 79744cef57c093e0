"""The BootState really boots: run the gcc test kernels for a few instructions on Unicorn.

The kernels read the Multiboot info through the register the BootState names (EBX / RSI) and store
mem_upper and EAX in globals, which checks the GDT, segment, control-register and page-table values.
"""

import pytest
from loaderkit import gcc_kernel

from vtlvisor.loader import BootMode, load_image
from vtlvisor.memory import GuestMemory

unicorn = pytest.importorskip("unicorn")
x86 = pytest.importorskip("unicorn.x86_const")

MSR_EFER = 0xC0000080


def run(state, memory):
    mode = unicorn.UC_MODE_64 if state.mode is BootMode.LONG64 else unicorn.UC_MODE_32
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, mode)
    uc.mem_map_ptr(0, memory.size, unicorn.UC_PROT_ALL, memory.host_address)
    uc.reg_write(x86.UC_X86_REG_GDTR, (0, state.gdt_base, state.gdt_limit, 0))
    if state.mode is BootMode.LONG64:
        uc.reg_write(x86.UC_X86_REG_CR3, state.cr3)
        uc.reg_write(x86.UC_X86_REG_CR4, state.cr4)
        uc.msr_write(MSR_EFER, state.efer)
        uc.reg_write(x86.UC_X86_REG_CR0, state.cr0)
        prefix = "R"
    else:
        uc.reg_write(x86.UC_X86_REG_CR0, state.cr0)
        for seg in ("DS", "ES", "SS"):
            uc.reg_write(getattr(x86, f"UC_X86_REG_{seg}"), state.data_selector)
        prefix = "E"
    for name, value in state.regs.items():
        uc.reg_write(getattr(x86, f"UC_X86_REG_{prefix}{name[1:].upper()}"), value)
    uc.emu_start(state.entry, 0, count=50)


@pytest.mark.parametrize("bits,multiboot,base", [(32, True, 0x100000), (64, False, 0x200000)])
def test_kernel_reads_its_boot_info(tmp_path, bits, multiboot, base):
    path = gcc_kernel(tmp_path, bits=bits, multiboot=multiboot, base=base)
    if path is None:
        pytest.skip("gcc cannot build the test kernel here")
    memory = GuestMemory(16 << 20)
    try:
        state = load_image(path, memory, "x")
        run(state, memory)
        sym = state.symbols
        assert memory.read_u8(sym["bss_buffer"]) == 0xEF
        assert memory.read_u32(sym["seen_mem_upper"]) == 15 * 1024
        assert memory.read_u32(sym["seen_magic"]) == 0x2BADB002
    finally:
        memory.close()
