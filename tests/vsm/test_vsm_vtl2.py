"""Three VTLs: VTL0 -> VTL1 -> VTL2 calls and returns, each to the next enabled level."""

import struct

from asmguest import SCRATCH, asm
from vsmguest import (
    ENABLE_VTL1,
    IN,
    SELF,
    SETUP_VTL0,
    V1LOG,
    VsmGuest,
    control,
    hypercall,
    initial_context,
    vtl_call,
    wrmsr,
)

from vtlvisor.abi.hyperv import HvCallCode, HvStatus

VTL2_CODE, VTL2_STACK, HC2, ASSIST2 = 0x1A0000, 0x1E8000, 0x25000, 0x26000


def test_vtl2_is_entered_from_vtl1_only_and_returns_through_the_levels():
    g = VsmGuest(SETUP_VTL0
                 + hypercall(HvCallCode.HvCallEnablePartitionVtl, IN(6), 0, slot=SCRATCH + 0x810)   # VTL2
                 + ENABLE_VTL1
                 + f"mov r12, {control(HvCallCode.HvCallEnableVpVtl):#x}\n" + vtl_call(2)        # VTL1 enables VP VTL2
                 + vtl_call(4)                                                                    # VTL1 calls VTL2
                 + f"mov rdi, {SCRATCH:#x}\nmov [rdi], rax\n")
    m = g.part.memory
    m.write(IN(6), struct.pack("<QBBHI", SELF, 2, 0, 0, 0))
    m.write(IN(2), struct.pack("<QIB3x", SELF, 0, 2) + initial_context(VTL2_CODE, VTL2_STACK))
    m.write(VTL2_CODE, asm(wrmsr(0x40000000, 0x8100000000000003) + wrmsr(0x40000001, HC2 | 1)
                           + wrmsr(0x40000073, ASSIST2 | 1) + f"""
    v2:
        mov rbx, {SCRATCH + 0x900:#x}
        inc qword ptr [rbx]
        mov rbx, {ASSIST2 + 0x10:#x}
        mov qword ptr [rbx], 0x3333         ; VtlReturnX64Rax: VTL1's RAX after this (normal) return
        xor ecx, ecx
        mov r11, {HC2 + 0x20:#x}
        call r11
        jmp v2
    """, VTL2_CODE))
    trace = []
    g.part.vcpu.hooks.trace = lambda k, a: trace.append((a["from"], a["to"])) if k == "vtl_switch" else None
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert g.u64(SCRATCH + 0x810) == HvStatus.HV_STATUS_SUCCESS
    assert g.u64(V1LOG + 0x808) & 0xFFFF == HvStatus.HV_STATUS_SUCCESS     # VTL1's EnableVpVtl(2)
    assert g.u64(SCRATCH + 0x900) == 1                                       # VTL2 ran once
    assert g.u64(V1LOG + 0x830) == 0x3333                                    # VTL1 got VTL2's RAX
    assert trace == [(0, 1), (1, 0), (0, 1), (1, 2), (2, 1), (1, 0)]
    assert g.part.vsm.active_vtl == 0 and [g.part.vsm.vtls[i].enabled for i in range(3)] == [True] * 3
