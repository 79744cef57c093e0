"""Decoding the instruction at RIP after an exit (the engine gives no decode assist)."""

from __future__ import annotations

import iced_x86 as ix

Mnemonic = ix.Mnemonic
Register = ix.Register
OpKind = ix.OpKind

_RAX = ix.Register.RAX
_R15 = ix.Register.R15


def decode(code: bytes, rip: int, bitness: int = 64) -> ix.Instruction | None:
    """Decode one instruction; None when the bytes are not a valid instruction."""
    ins = ix.Decoder(bitness, code, ip=rip).decode()
    if ins.code == ix.Code.INVALID:
        return None
    return ins


def gpr_index(reg: int) -> tuple[int, int] | None:
    """(architectural GPR number, operand size in bytes) of an iced register, None if not a GPR."""
    info = ix.RegisterInfo(reg)
    full = info.full_register
    if _RAX <= full <= _R15:
        return full - _RAX, info.size
    return None


def control_register_number(reg: int) -> int | None:
    if ix.Register.CR0 <= reg <= ix.Register.CR15:
        return reg - ix.Register.CR0
    return None
