"""The CPU state a loader hands to the hypervisor: where and how the first guest instruction runs.

Two entry modes exist.

``PROTECTED32`` - Multiboot v1 (Multiboot Specification 0.6.96, section 3.2 "Machine state"), with the
values QEMU's multiboot option ROM (pc-bios/optionrom/multiboot.S) leaves where the spec is loose:

* EAX = 0x2BADB002, EBX = physical address of the Multiboot information structure;
  ECX = EDX = ESI = EDI = 0; ESP = 0 (the spec leaves it undefined: the kernel must set up a stack).
* CR0 = 0x00000011 (PE | ET): protected mode, paging off. CR3 = CR4 = EFER = 0.
* EFLAGS = 0x00000002 (only the reserved bit 1: IF = 0, VM = 0).
* GDT of three descriptors (limit 0x17): 0x08 = 32-bit code, base 0, limit 4 GiB, DPL 0, execute/read
  (0x00CF9A000000FFFF); 0x10 = 32-bit data, base 0, limit 4 GiB, DPL 0, read/write
  (0x00CF92000000FFFF). CS = 0x08; DS = ES = FS = GS = SS = 0x10. The spec says GDTR may be invalid
  and the kernel must load its own; ours is valid at entry but lives in ordinary RAM.
* IDTR undefined (base 0, limit 0 here); A20 is always enabled.

``LONG64`` - direct boot of a plain ELF64 kernel: CR0 = 0x80000033 (PG | NE | ET | MP | PE),
CR4 = 0x00000620 (PAE | OSFXSR | OSXMMEXCPT, so compiler-generated SSE code runs), EFER = 0x500
(LME | LMA), CR3 = identity page tables; CS = 0x08 (64-bit code), data segments 0x10; RFLAGS = 0x2;
RDI = 0x76746C76 ("vtlv"), RSI = Multiboot info address, RAX = 0x2BADB002 and RBX = info address too
(so Multiboot-aware code finds its structure), RSP = top of a 64 KiB stack (16-byte aligned).

Ranges in ``reserved`` are half-open ``(start, end)`` guest-physical intervals the hypervisor must not
hand out or let the guest's memory map call available; they are already reported as reserved in the
Multiboot memory map.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002     # Multiboot spec 3.2: EAX at entry
VTLVISOR_BOOT_MAGIC = 0x76746C76            # "vtlv": RDI at ELF64 direct-boot entry

GDT_CODE_SELECTOR = 0x08
GDT_DATA_SELECTOR = 0x10

# Control-register bits used here (SDM Vol. 3A 2.5 / 2.2.1); the full set lives in vtlvisor.x86.
CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
RFLAGS_RESERVED1 = 1 << 1

PROTECTED32_CR0 = CR0_PE | CR0_ET
LONG64_CR0 = CR0_PG | CR0_NE | CR0_ET | CR0_MP | CR0_PE
LONG64_CR4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
LONG64_EFER = EFER_LME | EFER_LMA

REGISTER_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp")


class BootMode(enum.Enum):
    PROTECTED32 = "protected32"
    LONG64 = "long64"


def initial_regs(**values: int) -> dict[str, int]:
    """All general registers the loaders set, zero unless given."""
    unknown = set(values) - set(REGISTER_NAMES)
    if unknown:
        raise ValueError(f"unknown registers {sorted(unknown)}")
    return {name: values.get(name, 0) for name in REGISTER_NAMES}


@dataclass
class BootState:
    mode: BootMode
    entry: int
    regs: dict[str, int]
    cr0: int
    cr3: int
    cr4: int
    efer: int
    gdt_base: int
    gdt_limit: int
    code_selector: int = GDT_CODE_SELECTOR
    data_selector: int = GDT_DATA_SELECTOR
    rflags: int = RFLAGS_RESERVED1
    reserved: list[tuple[int, int]] = field(default_factory=list)
    symbols: dict[str, int] | None = None
    mbi_addr: int = 0                       # Multiboot information structure (also in regs)
