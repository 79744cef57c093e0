"""Long-mode machine setup shared by the fuzz guest (fuzz/guest.py) and the test guest (tests/asmguest.py).

Both build the same flat 64-bit kernel: identity paging through 2 MiB pages (2..4 MiB user), the GDT
below (+ a 64-bit TSS descriptor at selector 0x30), a TSS with RSP0 and IST1, 16-byte interrupt gates,
and exception handlers that resume at a ring-0 address after logging. Callers choose the addresses.

GDT selectors: 0x08 kernel code, 0x10 kernel data, 0x18 user data (32-bit), 0x20 user data,
0x28 user code (64-bit), 0x30 TSS.
"""

from __future__ import annotations

import struct

from vtlvisor.loader.bootstate import BootMode, BootState

GDT_ENTRIES = [0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00CFFB000000FFFF, 0x00CFF3000000FFFF,
               0x00AFFB000000FFFF]
TSS_SEL = 0x30
KERNEL_CR0, KERNEL_CR4, KERNEL_EFER = 0x80050033, 0x620, 0xD01


def tss_descriptor(base: int, limit: int) -> bytes:
    """A 16-byte available 64-bit TSS descriptor."""
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = ((base >> 16) & 0xFF) | (0x89 << 8) | (limit & 0xF0000) | (base & 0xFF000000)
    return struct.pack("<IIQ", lo, hi, base >> 32)


def gate(handler: int, dpl: int = 0, ist: int = 0, sel: int = 0x08) -> bytes:
    """A 16-byte 64-bit interrupt gate."""
    return struct.pack("<HHBBHII", handler & 0xFFFF, sel, ist, 0x8E | (dpl << 5), (handler >> 16) & 0xFFFF,
                       handler >> 32, 0)


def write_gdt(m, gdt: int, tss: int, tss_limit: int = 0x67) -> int:
    """Write GDT_ENTRIES + the TSS descriptor (selector 0x30) at ``gdt``; return the GDT limit."""
    raw = b"".join(struct.pack("<Q", g) for g in GDT_ENTRIES) + tss_descriptor(tss, tss_limit)
    m.write(gdt, raw)
    return len(raw) - 1


def write_tss(m, tss: int, rsp0: int, ist1: int) -> None:
    """Write a 0x68-byte TSS with RSP0, IST1 and the I/O bitmap offset just past it (0x68)."""
    raw = bytearray(0x68)
    struct.pack_into("<Q", raw, 4, rsp0)
    struct.pack_into("<Q", raw, 0x24, ist1)
    struct.pack_into("<H", raw, 0x66, 0x68)
    m.write(tss, bytes(raw))


def identity_paging(m, pml4: int, pdpt: int, pd: int) -> None:
    """PML4[0] -> PDPT[0] -> PD: the low 1 GiB identity-mapped with 2 MiB pages, 2..4 MiB user."""
    m.write_u64(pml4, pdpt | 7)
    m.write_u64(pdpt, pd | 7)
    m.write(pd, b"".join(struct.pack("<Q", (i << 21) | 0x83 | (4 if i == 1 else 0)) for i in range(512)))


def load_idt_tr(idt: int, scratch: int, idt_limit: int = 0xFFF) -> str:
    """Kernel asm: lidt (``idt``, ``idt_limit``) through a pseudo-descriptor at ``scratch``, then ltr 0x30."""
    return f"""
        mov rax, {idt:#x}
        mov word ptr [{scratch:#x}], {idt_limit:#x}
        mov [{scratch + 2:#x}], rax
        lidt [{scratch:#x}]
        mov ax, {TSS_SEL:#x}
        ltr ax
    """


def to_user(rip: int, rsp: int, rflags: int = 0x202) -> str:
    """Kernel asm that enters ring 3 (CS 0x2b, SS 0x23) at ``rip`` with iretq."""
    return f"""
        push 0x23
        mov rax, {rsp:#x}
        push rax
        push {rflags:#x}
        push 0x2b
        mov rax, {rip:#x}
        push rax
        iretq
    """


def log_frame() -> str:
    """Handler asm, with RAX and RBX pushed over (vector, error code, iret frame): store the vector, error
    code, RIP, CS and CR2 as five qwords at [RBX] (clobbers RAX)."""
    return """
    mov rax, [rsp+16]
    mov [rbx], rax
    mov rax, [rsp+24]
    mov [rbx+8], rax
    mov rax, [rsp+32]
    mov [rbx+16], rax
    mov rax, [rsp+40]
    mov [rbx+24], rax
    mov rax, cr2
    mov [rbx+32], rax
"""


def resume_tail(resume: int, kstack: int) -> str:
    """Handler asm after logging, with RAX and RBX pushed over (vector, error code, iret frame): if the
    qword at ``resume`` is non-zero, rewrite the frame to return there in ring 0 (RFLAGS 2, a fresh stack
    at ``kstack`` - 0x800); pop, drop vector and error code, iretq."""
    return f"""
    mov rax, {resume:#x}
    mov rax, [rax]
    test rax, rax
    jz noresume
    mov [rsp+32], rax
    mov qword ptr [rsp+40], 0x08
    mov qword ptr [rsp+48], 2
    mov qword ptr [rsp+56], {kstack - 0x800:#x}
    mov qword ptr [rsp+64], 0x10
noresume:
    pop rbx
    pop rax
    add rsp, 16
    iretq
"""


def timer_handler(ticks: int) -> str:
    """Timer interrupt body (no label): count a tick at ``ticks``, EOI the LAPIC, iretq."""
    return f"""
    push rax
    mov rax, {ticks:#x}
    inc qword ptr [rax]
    mov rax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq
"""


def long_mode_boot(entry: int, rsp: int, cr3: int, gdt_base: int, gdt_limit: int) -> BootState:
    """Boot state for the flat long-mode kernel: paging, PAE, SSE (OSFXSR/OSXMMEXCPT), LME/LMA/NXE/SCE."""
    return BootState(mode=BootMode.LONG64, entry=entry, regs={"rsp": rsp}, cr0=KERNEL_CR0, cr3=cr3,
                     cr4=KERNEL_CR4, efer=KERNEL_EFER, gdt_base=gdt_base, gdt_limit=gdt_limit)
