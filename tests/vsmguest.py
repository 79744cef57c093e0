"""A VTL0 + VTL1 guest pair for VSM tests, assembled with keystone on top of asmguest.AsmGuest.

Memory (guest-physical = guest-virtual, identity paging shared by both VTLs):
  0x20000 VTL0 hypercall page   0x21000 VTL1 hypercall page   0x22000 VTL1 VP assist page
  0x23000 VTL1 SynIC message page (SINT0 slot)   0x24000 VTL0 VP assist page
  0x30000.. hypercall input pages prepared by the test (IN(n) = 0x30000 + n*0x1000)
  0x40000.. hypercall output pages (OUT(n))
  0x50000 a VTL1 secret page   0x52000 VTL1 log (entry reasons...)   0x180000 VTL1 code, stack 0x1F0000

VTL1 runs a service loop: on each entry it logs the entry reason, handles the VTL0 request in RDI
(VTL call) or the intercept message, then returns with a normal (not fast) VtlReturn: RCX = 0 into the
hypercall page's return sequence, VTL0's RAX/RCX from VTL1's VP assist page (a command's result in RAX;
after an intercept, VTL0's own RAX/RCX). Command 5 makes any hypercall
for VTL0: control R12, input R13, output R14, status stored at R15 (if not 0). Command 6 logs XMM0 and DR0
as VTL1 sees them, then writes shared (XMM0, DR0, an MTRR) and private (DR7, FS.BASE) state.
"""

from __future__ import annotations

import struct

from asmguest import KSTACK, SCRATCH, TICKS, AsmGuest

from vtlvisor.abi.hyperv import HvCallCode, HvRegisterName

HC0, HC1, ASSIST1, SIMP1, ASSIST0 = 0x20000, 0x21000, 0x22000, 0x23000, 0x24000
SECRET, V1LOG, VTL1_CODE, VTL1_STACK = 0x50000, 0x52000, 0x180000, 0x1F0000
SELF = 0xFFFFFFFFFFFFFFFF
M64 = (1 << 64) - 1


def IN(n: int) -> int:  # noqa: N802
    return 0x30000 + n * 0x1000


def OUT(n: int) -> int:  # noqa: N802
    return 0x40000 + n * 0x1000


def control(code: int, rep: int = 0, start: int = 0, fast: bool = False) -> int:
    return code | (fast << 16) | (rep << 32) | (start << 48)


def wrmsr(msr: int, value: int) -> str:
    return f"mov ecx, {msr:#x}\nmov eax, {value & 0xFFFFFFFF:#x}\nmov edx, {value >> 32:#x}\nwrmsr\n"


def store_rax(slot: int) -> str:
    return f"mov rbx, {slot:#x}\nmov [rbx], rax\n"


def hypercall(ctl: int, inp: int = 0, out: int = 0, page: int = HC0, slot: int | None = None) -> str:
    s = f"mov rcx, {ctl:#x}\nmov rdx, {inp:#x}\nmov r8, {out:#x}\nmov rax, {page:#x}\ncall rax\n"
    return s + (store_rax(slot) if slot is not None else "")


def vtl_call(cmd: int) -> str:
    """VtlCall through the hypercall page: RCX = the VTL call control input (0), RDI = the command."""
    return f"mov rdi, {cmd}\nxor ecx, ecx\nmov rax, {HC0 + 0x10:#x}\ncall rax\n"


def vtl1_hypercall(ctl: int, inp: int, out: int = 0, slot: int = 0) -> str:
    """VtlCall asking VTL1 to make hypercall ``ctl`` (input ``inp``, output ``out``) and store RAX at ``slot``."""
    return f"mov r12, {ctl:#x}\nmov r13, {inp:#x}\nmov r14, {out:#x}\nmov r15, {slot:#x}\n" + vtl_call(5)


SETUP_VTL0 = wrmsr(0x40000000, 0x1) + wrmsr(0x40000001, HC0 | 1) + wrmsr(0x40000073, ASSIST0 | 1)
ENABLE_VTL1 = hypercall(HvCallCode.HvCallEnablePartitionVtl, IN(0), 0, slot=SCRATCH + 0x800) \
    + hypercall(HvCallCode.HvCallEnableVpVtl, IN(1), 0, slot=SCRATCH + 0x808)


def seg(base: int, limit: int, sel: int, attr: int) -> bytes:
    return struct.pack("<QIHH", base, limit, sel, attr)


def initial_context(rip: int = VTL1_CODE, rsp: int = VTL1_STACK) -> bytes:
    code, data = seg(0, 0xFFFFFFFF, 0x08, 0xA09B), seg(0, 0xFFFFFFFF, 0x10, 0xC093)
    ctx = struct.pack("<QQQ", rip, rsp, 2) + code + data + data + data + data + data
    ctx += seg(0x6000, 0x67, 0x30, 0x8B) + seg(0, 0xFFFF, 0, 0x82)
    ctx += struct.pack("<6xHQ", 0xFFF, 0x7000) + struct.pack("<6xHQ", 0x3F, 0x5000)
    ctx += struct.pack("<QQQQQ", 0xD01, 0x80050033, 0x1000, 0x620, 0x0007040600070406)
    assert len(ctx) == 224
    return ctx


def regs_input(vtl: int, regs: list[tuple[int, int]], use_target: bool = True) -> bytes:
    hdr = struct.pack("<QIB3x", SELF, 0, vtl | (0x10 if use_target else 0))
    return hdr + b"".join(struct.pack("<I12x", n) + v.to_bytes(16, "little") for n, v in regs)


def names_input(vtl: int, names: list[int], use_target: bool = True) -> bytes:
    hdr = struct.pack("<QIB3x", SELF, 0, vtl | (0x10 if use_target else 0))
    return hdr + b"".join(struct.pack("<I", n) for n in names)


def protect_input(flags: int, gpns: list[int], target: int = 0, use_target: bool = True) -> bytes:
    return struct.pack("<QIB3x", SELF, flags, target | (0x10 if use_target else 0)) + \
        b"".join(struct.pack("<Q", g) for g in gpns)


PENDING_GP = 1 | (1 << 8) | (13 << 16)           # exception, deliver error code 0, vector 13

#: VTL1 service loop. Commands (RDI on VtlCall): 1 marker+return value, 2 run the hypercall prepared at
#: IN(2) (ctl in R12), 3 likewise IN(3)/R13, 4 VtlCall into VTL2, 5 any hypercall (R12-R15), 6 the shared/
#: private state probe, 7 a fast VtlReturn, 8 the
#: TPR/interrupt probe (reads CR8, spins with IF=1 logging VTL0's TICKS before and after, sets CR8 to 9). Intercepts: GpaIntercept / MsrIntercept -> inject #GP into VTL0 (IN(9) prepared);
#: RegisterIntercept -> skip the instruction (RIP + length).
VTL1_SRC = wrmsr(0x40000000, 0x8100000000000002) + wrmsr(0x40000001, HC1 | 1) + wrmsr(0x40000073, ASSIST1 | 1) + wrmsr(0x40000083, SIMP1 | 1) + f"""
vloop:
    mov rbx, {V1LOG + 0x900:#x}
    mov [rbx], rax
    mov [rbx + 8], rcx
    mov rbx, {ASSIST1 + 8:#x}
    mov eax, [rbx]
    mov rbx, {V1LOG:#x}
    mov rcx, [rbx]
    inc qword ptr [rbx]
    mov [rbx + rcx*8 + 8], rax
    cmp eax, 3
    je intercept
    cmp rdi, 1
    jne c2
    mov rbx, {SECRET:#x}
    mov rax, [rbx]
    mov rbx, {V1LOG + 0x800:#x}
    mov [rbx], rax
    mov rax, 0x2222
    jmp vret
c2:
    cmp rdi, 2
    jne c3
    mov rcx, r12
    mov rdx, {IN(2):#x}
    mov r8, {OUT(2):#x}
    mov rax, {HC1:#x}
    call rax
    mov rbx, {V1LOG + 0x808:#x}
    mov [rbx], rax
    jmp vret
c3:
    cmp rdi, 5
    jne c4
    mov rcx, r12
    mov rdx, r13
    mov r8, r14
    mov rax, {HC1:#x}
    call rax
    test r15, r15
    jz vret
    mov [r15], rax
    jmp vret
c4:
    cmp rdi, 6
    jne c5
    mov rbx, {V1LOG + 0x840:#x}
    movq rax, xmm0
    mov [rbx], rax
    mov rax, dr0
    mov [rbx + 8], rax
    mov ecx, 0x40000000
    rdmsr
    mov [rbx + 16], eax
    mov [rbx + 20], edx
    mov rax, 0x2222000022220000
    movq xmm0, rax
    mov rax, 0xD0D0
    mov dr0, rax
    mov rax, 0x700
    mov dr7, rax
{wrmsr(0x200, 0x6)}{wrmsr(0xC0000100, 0xBBBB000)}    jmp vret
c5:
    cmp rdi, 8
    jne c7
    mov rbx, {V1LOG + 0x860:#x}
    mov rax, cr8
    mov [rbx], rax
    mov rax, {TICKS:#x}
    mov rax, [rax]
    mov [rbx + 8], rax
    sti
    mov rcx, 30000000
spin8:
    dec rcx
    jnz spin8
    cli
    mov rax, {TICKS:#x}
    mov rax, [rax]
    mov [rbx + 16], rax
    mov rax, 9
    mov cr8, rax
    jmp vret
c7:
    cmp rdi, 7
    jne c6
    mov rax, 0x7777
    mov ecx, 1
    mov r11, {HC1 + 0x20:#x}
    call r11
    jmp vloop
c6:
    cmp rdi, 4
    jne c3b
    xor ecx, ecx
    mov r11, {HC1 + 0x10:#x}
    call r11
    mov rbx, {V1LOG + 0x830:#x}
    mov [rbx], rax
    jmp vret
c3b:
    cmp rdi, 3
    jne vret
    mov rcx, r13
    mov rdx, {IN(3):#x}
    mov r8, {OUT(3):#x}
    mov rax, {HC1:#x}
    call rax
    mov rbx, {V1LOG + 0x810:#x}
    mov [rbx], rax
    jmp vret
intercept:
    mov rbx, {SIMP1:#x}
    mov eax, [rbx]
    mov rbx, {V1LOG + 0x818:#x}
    mov [rbx], rax
    cmp eax, 0x80010006
    je skip
    mov rcx, {control(HvCallCode.HvCallSetVpRegisters, 1):#x}
    mov rdx, {IN(9):#x}
    xor r8, r8
    mov rax, {HC1:#x}
    call rax
    mov rbx, {V1LOG + 0x820:#x}
    mov [rbx], rax
    jmp ivret
skip:
    mov rbx, {SIMP1 + 16 + 24:#x}
    mov rax, [rbx]
    mov rbx, {SIMP1 + 16 + 4:#x}
    movzx rcx, byte ptr [rbx]
    and rcx, 0xf
    add rax, rcx
    mov rbx, {IN(8) + 32:#x}
    mov [rbx], rax
    mov rcx, {control(HvCallCode.HvCallSetVpRegisters, 1):#x}
    mov rdx, {IN(8):#x}
    xor r8, r8
    mov rax, {HC1:#x}
    call rax
    mov rbx, {V1LOG + 0x828:#x}
    mov [rbx], rax
ivret:
    mov rbx, {V1LOG + 0x900:#x}
    mov rax, [rbx]
    mov rcx, [rbx + 8]
vret:
    mov rbx, {ASSIST1 + 0x10:#x}
    mov [rbx], rax
    mov [rbx + 8], rcx
    xor ecx, ecx
    mov r11, {HC1 + 0x20:#x}
    call r11
    jmp vloop
"""


class VsmGuest(AsmGuest):
    def __init__(self, kernel: str, user: str = "", mbec: bool = False, **kw: object) -> None:
        super().__init__(kernel, user, hyperv=True, **kw)
        from asmguest import asm
        m = self.part.memory
        m.write(VTL1_CODE, asm(VTL1_SRC, VTL1_CODE))
        m.write(IN(0), struct.pack("<QBBHI", SELF, 1, int(mbec), 0, 0))    # EnablePartitionVtl(1[, MBEC])
        m.write(IN(1), struct.pack("<QIB3x", SELF, 0, 1) + initial_context())
        m.write(IN(9), regs_input(0, [(HvRegisterName.HvRegisterPendingEvent0, PENDING_GP)]))
        m.write(IN(8), regs_input(0, [(HvRegisterName.HvX64RegisterRip, 0)]))
        m.write_u64(SECRET, 0x5EC2E7)

    def v1log(self) -> list[int]:
        n = self.u64(V1LOG)
        return [self.u64(V1LOG + 8 + 8 * i) for i in range(min(n, 64))]


__all__ = ["VsmGuest", "KSTACK"]
