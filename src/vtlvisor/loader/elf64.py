"""Direct boot of a plain ELF64 x86-64 kernel straight into long mode.

There is no firmware or trampoline to switch modes, so the loader builds what a long-mode kernel needs
at its first instruction and reports it in the ``BootState`` (values in ``bootstate``). All of it lives
in one *boot region* at the top of RAM below 4 GiB (below any range the hypervisor already reserves
there), reported as reserved in the memory map so the kernel will not reuse it by accident:

    region start -> 64 KiB stack (grows down towards free RAM, away from the tables)
                    PML4, PDPT, page directories (identity map, ``pagetables``)
                    info area: Multiboot v1 info, memory map, module list, GDT, strings (``bootinfo``)

Modules go page-aligned after the kernel image, as for Multiboot kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..errors import ImageError
from ..memory import PAGE_SIZE, GuestMemory
from . import bootinfo, gdt, pagetables
from .bootstate import (
    LONG64_CR0,
    LONG64_CR4,
    LONG64_EFER,
    MULTIBOOT_BOOTLOADER_MAGIC,
    VTLVISOR_BOOT_MAGIC,
    BootMode,
    BootState,
    initial_regs,
)
from .elf import ElfClass, ElfImage

log = logging.getLogger(__name__)

STACK_SIZE = 64 * 1024
LAPIC_PAGE = 0xFEE00000


def place_region(ram_size: int, reserved: Sequence[tuple[int, int]], size: int) -> tuple[int, int] | None:
    """The highest page-aligned ``size``-byte range of available RAM above 1 MiB and below 4 GiB."""
    mmap = bootinfo.memory_map(ram_size, reserved)
    for lo, hi in reversed(bootinfo.usable_ranges(mmap)):
        hi = min(hi, bootinfo.FOUR_GIB) // PAGE_SIZE * PAGE_SIZE
        lo = max(bootinfo.page_align(lo), bootinfo.HIGH_MEMORY)
        if hi - lo >= size:
            return hi - size, hi
    return None


def load_elf64(data: bytes, name: str, memory: GuestMemory, cmdline: str = "",
               modules: Sequence[tuple[str, str]] = (),
               reserved: Sequence[tuple[int, int]] = ()) -> BootState:
    image = ElfImage(data, name)
    if image.elf_class != ElfClass.ELFCLASS64:
        raise ImageError(f"{name}: not an ELF64 image and no Multiboot header found")
    entry = image.entry
    symbols = image.symbols()
    if any(seg.vaddr != seg.paddr for seg in image.segments):
        log.warning("%s: segments linked at virtual addresses other than their physical ones; only an "
                    "identity map is provided, so the kernel must run position-independently until it "
                    "builds its own page tables", name)
    ram = memory.size
    if ram > pagetables.MAX_IDENTITY:
        raise ImageError(f"{name}: RAM size {ram:#x} exceeds the 512 GiB the boot page tables cover")
    mods = bootinfo.read_modules(modules)

    # Size the region with an upper bound on memory-map entries: one more reserved range adds at most
    # one reserved entry and splits one available entry in two.
    cmd = bootinfo.kernel_cmdline(name, cmdline)
    bound = len(bootinfo.memory_map(ram, reserved)) + 2
    draft = bootinfo.InfoLayout.create(mmap_count=bound, module_strings=[m.string for m in mods],
                                       cmdline=cmd, gdt=gdt.gdt_bytes(gdt.GDT64))
    tables_size = pagetables.identity_tables_size(ram, (LAPIC_PAGE,))
    region_size = STACK_SIZE + tables_size + bootinfo.page_align(draft.size)
    region = place_region(ram, reserved, region_size)
    if region is None:
        raise ImageError(f"{name}: guest RAM ({ram:#x} bytes) too small for the boot region "
                         f"({region_size:#x} bytes)")
    start, top = region
    if image.low < top and start < image.high:
        raise ImageError(f"{name}: guest RAM ({ram:#x} bytes) too small: the kernel "
                         f"[{image.low:#x}, {image.high:#x}) overlaps the boot region [{start:#x}, {top:#x})")

    mmap = bootinfo.memory_map(ram, [*reserved, region])
    usable = bootinfo.usable_ranges(mmap)
    image.check_placement(usable)
    mods_end = bootinfo.modules_end(image.high, mods)
    if mods:
        bootinfo.check_usable(bootinfo.page_align(image.high), mods_end, usable, f"{name}: modules")

    tables_base = start + STACK_SIZE
    info_base = tables_base + tables_size
    layout = bootinfo.InfoLayout.create(mmap_count=len(mmap), module_strings=[m.string for m in mods],
                                        cmdline=cmd, gdt=gdt.gdt_bytes(gdt.GDT64))

    image.load(memory)
    loaded = bootinfo.load_modules(memory, image.high, mods, usable)
    memory.fill(start, region_size, 0)
    memory.write(tables_base, pagetables.build_identity_tables(tables_base, ram, (LAPIC_PAGE,)))
    area = bootinfo.write_info_area(memory, info_base, layout, ram, mmap, loaded)
    stack_top = start + STACK_SIZE
    log.info("%s: ELF64 kernel at [%#x, %#x), entry %#x; boot region [%#x, %#x); info at %#x", name,
             image.low, image.high, entry, start, top, area.mbi)

    return BootState(
        mode=BootMode.LONG64,
        entry=entry,
        regs=initial_regs(rax=MULTIBOOT_BOOTLOADER_MAGIC, rbx=area.mbi, rdi=VTLVISOR_BOOT_MAGIC,
                          rsi=area.mbi, rsp=stack_top),
        cr0=LONG64_CR0,
        cr3=tables_base,
        cr4=LONG64_CR4,
        efer=LONG64_EFER,
        gdt_base=area.gdt,
        gdt_limit=gdt.gdt_limit(gdt.GDT64),
        reserved=[region],
        symbols=symbols,
        mbi_addr=area.mbi,
    )
