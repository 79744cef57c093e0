"""Helpers for domain tests: KVM-convention hypercalls from keystone-assembled guest code.

Boot domain handle slots (default policy): 0 self, 1 MEMORY all RAM (RWX|IMMUTABLE|DELEGATE),
2 CREATE, 3 INTERCEPT CR0, 4 INTERCEPT CR4, 5 INTERCEPT MSR (any), 6 INTERCEPT DTR, 7 PIN CR0, 8 PIN CR4,
9 INTERCEPT MEM (memory violations); the first domain it creates is handle 10 (D1H), the second 11.
A created domain's own table starts with slot 0 = itself.
"""

from asmguest import RESUME, SCRATCH, AsmGuest

from vtlvisor.abi.domains import DomainHypercall as H

D1_CODE, D1_STACK = 0x180000, 0x1F0000
D2_CODE, D2_STACK = 0x1C0000, 0x1E0000
SELF, MEM, CREATE, I_CR0, I_CR4, I_MSR, I_DTR, PIN_CR0, PIN_CR4, I_MEM = range(10)
D1H, D2H = 10, 11
M64 = (1 << 64) - 1
GP = 13                                   # the #GP vector
S = SCRATCH
R, W, X, IMM, DEL = 1, 2, 4, 8, 0x100     # CapRights bits of a MEMORY capability
PAGE_A = 0x60000


def kvm(nr: int, a0: int = 0, a1: int = 0, a2: int = 0, a3: int = 0, slot: int | None = None) -> str:
    s = (f"mov rax, {nr:#x}\nmov rbx, {a0 & M64:#x}\nmov rcx, {a1 & M64:#x}\nmov rdx, {a2 & M64:#x}\n"
         f"mov rsi, {a3 & M64:#x}\n.byte 0x0f, 0x01, 0xd9\n")
    if slot is not None:
        s += f"mov r15, {slot:#x}\nmov [r15], rax\n"
    return s


def ret(action: int = 0, ret0: int = 0, ret1: int = 0) -> str:
    return kvm(H.DOMAIN_RETURN, action, ret0, ret1)


def call(handle_reg_or_val) -> str:
    return kvm(H.DOMAIN_CALL, handle_reg_or_val)


def neg(errno: int) -> int:
    return (-errno) & M64


def resume(label: str) -> str:
    """Set the harness's #GP resume address (asmguest RESUME) to `label`."""
    return f"lea rax, [rip + {label}]\nmov r14, {RESUME:#x}\nmov [r14], rax\n"


CREATE_D1 = kvm(H.DOMAIN_CREATE, D1_CODE, D1_STACK, slot=S)          # -> handle D1H (10)


class DomGuest(AsmGuest):
    def __init__(self, kernel: str, d1: str = "", d2: str = "", **kw: object) -> None:
        super().__init__(kernel, domains=True, **kw)
        from asmguest import asm
        if d1:
            self.part.memory.write(D1_CODE, asm(d1, D1_CODE))
        if d2:
            self.part.memory.write(D2_CODE, asm(d2, D2_CODE))
