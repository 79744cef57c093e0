"""The x86-64 register file as gdb sees it: the target description XML and register access.

The order of ``REGS`` is the order of the ``g`` packet and of register numbers in ``p``/``P``. gdb's
amd64 support requires the ``org.gnu.gdb.i386.core`` feature with the x87 registers, so those are
served (from the engine) even though most guests never touch them. System registers live in a
feature of their own (``org.vtlvisor.x86.system``, group "system"): gdb shows them by name.

All functions here run on the vCPU thread while the guest is stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..engine.engine import Segment
from ..hv.msrs import GuestGP
from ..x86.arch import MSR

if TYPE_CHECKING:
    from ..hv.vcpu import Vcpu


class RegisterError(Exception):
    """A register write gdb asked for cannot be done (answered with an E reply)."""


@dataclass(frozen=True)
class Reg:
    name: str
    bits: int
    type: str
    feature: str
    group: str | None = None


_CORE, _SSE, _SEG, _SYS = ("org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments",
                           "org.vtlvisor.x86.system")
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEGS = ("cs", "ss", "ds", "es", "fs", "gs")
X87_CTRL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
SYSTEM = ("k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer")

REGS: tuple[Reg, ...] = (
    *(Reg(n, 64, "data_ptr" if n in ("rbp", "rsp") else "int64", _CORE) for n in GPRS),
    Reg("rip", 64, "code_ptr", _CORE),
    Reg("eflags", 32, "i386_eflags", _CORE),
    *(Reg(n, 32, "int32", _CORE) for n in SEGS),
    *(Reg(f"st{i}", 80, "i387_ext", _CORE) for i in range(8)),
    *(Reg(n, 32, "int", _CORE, "float") for n in X87_CTRL),
    *(Reg(f"xmm{i}", 128, "vec128", _SSE) for i in range(16)),
    Reg("mxcsr", 32, "i386_mxcsr", _SSE, "vector"),
    Reg("fs_base", 64, "int", _SEG),
    Reg("gs_base", 64, "int", _SEG),
    *(Reg(n, 64, "int", _SYS, "system") for n in SYSTEM),
)
INDEX = {r.name: i for i, r in enumerate(REGS)}

_EFLAGS = (("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
           ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), ("VIF", 19),
           ("VIP", 20), ("ID", 21))
_MXCSR = (("IE", 0), ("DE", 1), ("ZE", 2), ("OE", 3), ("UE", 4), ("PE", 5), ("DAZ", 6), ("IM", 7),
          ("DM", 8), ("ZM", 9), ("OM", 10), ("UM", 11), ("PM", 12), ("FZ", 15))


def _flags(ident: str, fields: tuple[tuple[str, int], ...]) -> str:
    body = "".join(f'<field name="{n}" start="{b}" end="{b}"/>' for n, b in fields)
    return f'<flags id="{ident}" size="4">{body}</flags>'


def _target_xml() -> str:
    types = {
        _CORE: _flags("i386_eflags", _EFLAGS),
        _SSE: ('<vector id="v4f" type="ieee_single" count="4"/>'
               '<vector id="v2d" type="ieee_double" count="2"/>'
               '<vector id="v16i8" type="int8" count="16"/>'
               '<vector id="v8i16" type="int16" count="8"/>'
               '<vector id="v4i32" type="int32" count="4"/>'
               '<vector id="v2i64" type="int64" count="2"/>'
               '<union id="vec128"><field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>'
               '<field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>'
               '<field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>'
               '<field name="uint128" type="uint128"/></union>' + _flags("i386_mxcsr", _MXCSR)),
    }
    parts = ['<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">',
             "<target><architecture>i386:x86-64</architecture>"]
    feature = None
    for i, r in enumerate(REGS):
        if r.feature != feature:
            if feature is not None:
                parts.append("</feature>")
            feature = r.feature
            parts.append(f'<feature name="{feature}">{types.get(feature, "")}')
        group = f' group="{r.group}"' if r.group else ""
        parts.append(f'<reg name="{r.name}" bitsize="{r.bits}" type="{r.type}" regnum="{i}"{group}/>')
    parts.append("</feature></target>")
    return "".join(parts)


TARGET_XML = _target_xml().encode()


# ---------------------------------------------------------------------------------------------- access
def read(vcpu: Vcpu, i: int) -> bytes:
    """Register ``i`` as little-endian bytes of its gdb size."""
    r = REGS[i]
    return (_read_value(vcpu, r.name) & ((1 << r.bits) - 1)).to_bytes(r.bits // 8, "little")


def read_all(vcpu: Vcpu) -> bytes:
    return b"".join(read(vcpu, i) for i in range(len(REGS)))


def size(i: int) -> int:
    return REGS[i].bits // 8


def _read_value(vcpu: Vcpu, name: str) -> int:
    e = vcpu.engine
    if name in GPRS or name == "rip" or name in ("cr0", "cr2", "cr3", "cr4"):
        return e.reg(name)
    if name == "eflags":
        return e.reg("rflags")
    if name in SEGS:
        return e.segment(name).selector
    if name in ("fs_base", "gs_base"):
        return e.segment(name[:2]).base
    if name == "k_gs_base":
        return e.msr_read(MSR.IA32_KERNEL_GS_BASE)
    if name == "cr8":
        return vcpu.lapic.cr8
    if name == "efer":
        return vcpu.msr_state.efer
    return e.fpu_reg(name)


def write(vcpu: Vcpu, i: int, data: bytes) -> None:
    """Write register ``i`` if the value changes. Control registers and EFER go through the same
    checks as a guest write (reserved bits, CR pinning...); refused writes raise RegisterError."""
    r = REGS[i]
    if len(data) != r.bits // 8:
        raise RegisterError(f"{r.name}: {len(data)} bytes, expected {r.bits // 8}")
    value = int.from_bytes(data, "little")
    name = r.name
    old = _read_value(vcpu, name) & ((1 << r.bits) - 1)
    if value == old:
        return
    e = vcpu.engine
    try:
        if name in GPRS or name == "cr2":
            e.set_reg(name, value)
        elif name == "rip":
            e.rip = value
        elif name == "eflags":
            e.set_reg("rflags", value | 2)
        elif name in SEGS:
            raise RegisterError(f"{name}: segment selectors cannot be changed from the debugger")
        elif name in ("fs_base", "gs_base"):
            seg = e.segment(name[:2])
            e.set_segments({name[:2]: Segment(seg.selector, value, seg.limit, seg.flags)})
        elif name == "k_gs_base":
            vcpu.msrs.write(vcpu, MSR.IA32_KERNEL_GS_BASE, value)
        elif name in ("cr0", "cr4"):
            vcpu.write_cr(int(name[2:]), value)
        elif name == "cr3":
            e.set_reg("cr3", value)
            e.flush_tlb()
        elif name == "cr8":
            if value >> 4:
                raise RegisterError("cr8: reserved bits")
            vcpu.lapic.cr8 = value
        elif name == "efer":
            vcpu.msrs.write(vcpu, MSR.IA32_EFER, value)
        else:
            e.set_fpu_reg(name, value)
    except GuestGP as gp:
        raise RegisterError(f"{name}: {gp}") from None
