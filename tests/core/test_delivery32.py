"""Event delivery in 32-bit protected mode (the C test kernel runs in long mode only).

A tiny PROTECTED32 guest (keystone, 32-bit code): a flat GDT with ring-0 and ring-3 segments and a
32-bit TSS (ESP0/SS0), a 32-bit IDT. The kernel enters ring 3 with IRETD; the user executes UD2 (a
trap gate, #UD), INT 0x80 (a DPL-3 interrupt gate) and INT 0x81 (a DPL-0 gate: #GP(0x81*8+2)). Each
handler records the frame it was given, its ESP/SS and EFLAGS at entry. Run with paging off and
with each 32-bit paging form (4 KiB tables, 4 MiB PSE pages, PAE with 2 MiB pages), so delivery
goes through every software page walker.
"""

from __future__ import annotations

import struct

import pytest
from keystone import KS_ARCH_X86, KS_MODE_32, Ks

from vtlvisor.hv.partition import Partition, PartitionConfig
from vtlvisor.hv.stop import StopReason
from vtlvisor.loader.bootstate import BootMode, BootState

GDT, TSS, IDT = 0x5000, 0x6000, 0x7000
PT_BASE = 0x1000                  # page directory / PDPT at 0x1000, tables from 0x2000
LOG = 0x10000                     # per handler: 16 dwords
KCODE, HANDLERS, UCODE = 0x100000, 0x108000, 0x200000
KSTACK, USTACK = 0x9F000, 0x280000
KCS, KDS, UCS, UDS, TSS_SEL = 0x08, 0x10, 0x1B, 0x23, 0x28
UD, GP = 6, 13
SLOT = {UD: 0, 0x80: 1, GP: 2}

_ks = Ks(KS_ARCH_X86, KS_MODE_32)


def asm(src: str, addr: int) -> bytes:
    lines = [ln.split(";", 1)[0].strip() for ln in src.splitlines()]
    code = "\n".join(ln for ln in lines if ln)
    return bytes(_ks.asm(code, addr)[0]) if code else b""


def _handler(vec: int, err: bool, tail: str) -> str:
    """Record [entry ESP, SS, EFLAGS in the handler, frame dwords 0..5] at LOG + 64*slot."""
    base = LOG + 64 * SLOT[vec]
    return f"""
h{vec}:
    mov [{base:#x}], esp
    mov [{base + 4:#x}], ss
    push eax
    pushfd
    pop eax
    mov [{base + 8:#x}], eax
    mov eax, [esp + 4]
    mov [{base + 12:#x}], eax
    mov eax, [esp + 8]
    mov [{base + 16:#x}], eax
    mov eax, [esp + 12]
    mov [{base + 20:#x}], eax
    mov eax, [esp + 16]
    mov [{base + 24:#x}], eax
    mov eax, [esp + 20]
    mov [{base + 28:#x}], eax
    mov eax, [esp + {24 if err else 20}]
    mov [{base + 32:#x}], eax
    pop eax
{tail}
"""


HANDLERS_SRC = (
    _handler(UD, False, "add dword ptr [esp], 2\niretd")              # skip the UD2
    + _handler(0x80, False, "iretd")
    + _handler(GP, True, "mov dx, 0xf4\nmov eax, 0\nout dx, eax\nhlt")  # end of the test, in ring 0
)


def _labels(src: str, base: int, names: list[str]) -> dict[str, int]:
    return {n: base + len(asm(src.split(f"\n{n}:")[0], base)) for n in names}


def _page_tables(mem, paging: str) -> tuple[int, int]:
    """Identity-map the first 4 MiB, user-accessible. Returns (CR3, CR4 bits)."""
    if paging == "pse":
        mem.write_u32(PT_BASE, 0x87)                                  # 4 MiB page, U/W/P
        return PT_BASE, 1 << 4
    if paging == "4k":
        mem.write_u32(PT_BASE, 0x2000 | 7)
        for i in range(1024):
            mem.write_u32(0x2000 + 4 * i, (i << 12) | 7)
        return PT_BASE, 0
    if paging == "pae":
        mem.write_u64(PT_BASE, 0x2000 | 1)                            # PDPTE 0
        for i in range(2):
            mem.write_u64(0x2000 + 8 * i, (i << 21) | 0x87)           # 2 MiB pages, U/W/P
        return PT_BASE, 1 << 5
    raise ValueError(paging)


def build(paging: str) -> Partition:
    part = Partition(PartitionConfig(memory=16 << 20, serial=lambda b: None))
    m = part.memory
    gdt = [0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF, 0x00CFFB000000FFFF, 0x00CFF3000000FFFF,
           (0x67 | ((TSS & 0xFFFFFF) << 16) | (0x89 << 40) | ((TSS >> 24) << 56))]
    m.write(GDT, b"".join(struct.pack("<Q", d) for d in gdt))
    tss = bytearray(0x68)
    struct.pack_into("<IH", tss, 4, KSTACK, KDS)                      # ESP0, SS0
    struct.pack_into("<H", tss, 0x66, 0x68)
    m.write(TSS, bytes(tss))
    m.write(HANDLERS, asm(HANDLERS_SRC, HANDLERS))
    labels = _labels(HANDLERS_SRC, HANDLERS, [f"h{v}" for v in SLOT])
    for vec, attr in ((UD, 0x8F), (0x80, 0xEE), (0x81, 0x8E), (GP, 0x8E)):   # trap, DPL3 intr, DPL0, intr
        h = labels[f"h{vec if vec != 0x81 else 0x80}"]
        m.write(IDT + 8 * vec, struct.pack("<HHBBH", h & 0xFFFF, KCS, 0, attr, h >> 16))
    enable = ""
    if paging != "off":
        cr3, cr4 = _page_tables(m, paging)
        enable = f"""
            mov eax, cr4
            or eax, {cr4:#x}
            mov cr4, eax
            mov eax, {cr3:#x}
            mov cr3, eax
            mov eax, cr0
            or eax, 0x80000000
            mov cr0, eax
        """
    m.write(KCODE, asm(f"""
        mov word ptr [0x4000], 0x7ff
        mov dword ptr [0x4002], {IDT:#x}
        lidt [0x4000]
        mov ax, {TSS_SEL:#x}
        ltr ax
        {enable}
        push {UDS:#x}
        push {USTACK:#x}
        push 0x202
        push {UCS:#x}
        push {UCODE:#x}
        iretd
    """, KCODE))
    m.write(UCODE, asm("ud2\nint 0x80\nint 0x81\nspin:\njmp spin\n", UCODE))
    part.boot(BootState(mode=BootMode.PROTECTED32, entry=KCODE, regs={"rsp": KSTACK}, cr0=0x11, cr3=0,
                        cr4=0, efer=0, gdt_base=GDT, gdt_limit=len(gdt) * 8 - 1))
    return part


def record(part: Partition, vec: int) -> dict[str, int]:
    v = [part.memory.read_u32(LOG + 64 * SLOT[vec] + 4 * i) for i in range(9)]
    return {"esp": v[0], "ss": v[1] & 0xFFFF, "eflags": v[2], "frame": v[3:9]}


@pytest.mark.parametrize("paging", ["off", "4k", "pse", "pae"])
def test_protected32_ud_and_int_through_32bit_idt_with_privilege_change(paging):
    part = build(paging)
    r = part.run(timeout=20)
    assert r.reason is StopReason.DEBUG_EXIT, (r, part.vcpu.state_dump())

    # #UD from ring 3 through a 32-bit trap gate: stack switch to TSS.SS0:ESP0, 5-dword frame
    ud = record(part, UD)
    assert ud["ss"] == KDS and ud["esp"] == KSTACK - 20
    assert ud["frame"][:5] == [UCODE, UCS, 0x202, USTACK, UDS]
    assert ud["eflags"] & 0x200                      # trap gate: IF stays set

    # INT 0x80 through a DPL-3 interrupt gate: the saved EIP is the next instruction, IF cleared
    i80 = record(part, 0x80)
    assert i80["ss"] == KDS and i80["esp"] == KSTACK - 20
    assert i80["frame"][:5] == [UCODE + 4, UCS, 0x202, USTACK, UDS]
    assert not i80["eflags"] & 0x200

    # INT 0x81 through a DPL-0 gate from ring 3: #GP(0x81*8+2) at the INT, with an error code
    gp = record(part, GP)
    assert gp["ss"] == KDS and gp["esp"] == KSTACK - 24
    assert gp["frame"] == [0x81 * 8 + 2, UCODE + 4, UCS, 0x202, USTACK, UDS]
    assert part.vcpu.exit_counts.get(0x40 + UD) == 1 and part.vcpu.exit_counts.get(0x75) == 2   # SWINT


def test_protected32_same_privilege_int_pushes_three_dwords():
    part = build("off")
    # the kernel raises INT 0x80 itself (CPL 0: no stack switch), then ends through INT 0x81, here
    # pointed at the handler that writes isa-debug-exit
    code = f"""
        mov word ptr [0x4000], 0x7ff
        mov dword ptr [0x4002], {IDT:#x}
        lidt [0x4000]
        int 0x80
    """
    after_int = KCODE + len(asm(code, KCODE))
    part.memory.write(KCODE, asm(code + "int 0x81\n", KCODE))
    end = _labels(HANDLERS_SRC, HANDLERS, ["h13"])["h13"]
    part.memory.write(IDT + 8 * 0x81, struct.pack("<HHBBH", end & 0xFFFF, KCS, 0, 0x8E, end >> 16))
    r = part.run(timeout=20)
    assert r.reason is StopReason.DEBUG_EXIT, (r, part.vcpu.state_dump())
    i80 = record(part, 0x80)
    assert i80["ss"] == KDS and i80["esp"] == KSTACK - 12       # EIP, CS, EFLAGS on the same stack
    assert i80["frame"][:3] == [after_int, KCS, 0x2]
