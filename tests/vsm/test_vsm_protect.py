"""Per-VTL memory protections, secure intercepts, NPIEP and isolation invariants, through guest code."""

import json
import struct

from asmguest import RESUME, SCRATCH, UCODE, AsmGuest, to_user
from vsmguest import (
    ENABLE_VTL1,
    HC0,
    IN,
    OUT,
    SECRET,
    SETUP_VTL0,
    SIMP1,
    V1LOG,
    VsmGuest,
    control,
    hypercall,
    names_input,
    protect_input,
    regs_input,
    vtl_call,
    wrmsr,
)

from vtlvisor.abi.hyperv import HvCallCode, HvCrInterceptControl, HvMessageType, HvRegisterName, HvStatus

GP, UD = 13, 6
SMEP, UMIP = 1 << 20, 1 << 11
MODIFY = control(HvCallCode.HvCallModifyVtlProtectionMask, rep=1)


def resume(label: str) -> str:
    return f"lea rax, [rip + {label}]\nmov rbx, {RESUME:#x}\nmov [rbx], rax\n"


def no_resume() -> str:
    return f"mov rbx, {RESUME:#x}\nmov qword ptr [rbx], 0\n"


def vtl1_runs(slot_cmd: int, ctl: int) -> str:
    """VtlCall asking VTL1 to run the hypercall prepared at IN(2) (cmd 2) or IN(3) (cmd 3)."""
    reg = "r12" if slot_cmd == 2 else "r13"
    return f"mov {reg}, {ctl:#x}\n" + vtl_call(slot_cmd)


def msg(g: VsmGuest, off: int, fmt: str = "<Q") -> int:
    return struct.unpack(fmt, g.part.memory.read(SIMP1 + off, struct.calcsize(fmt)))[0]


def test_vtl1_only_page_read_write_and_hypercall_buffer_denied_to_vtl0():
    g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1 + vtl1_runs(2, MODIFY)
                 + resume("a") + f"mov rbx, {SECRET:#x}\nmov rax, [rbx]\na:\n"
                 + resume("b") + f"mov rbx, {SECRET:#x}\nmov qword ptr [rbx], 0x41\nb:\n" + no_resume()
                 + hypercall(HvCallCode.HvCallEnablePartitionVtl, SECRET, 0, slot=SCRATCH)
                 + vtl_call(1))
    g.part.memory.write(IN(2), protect_input(0, [SECRET >> 12]))
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert g.u64(V1LOG + 0x808) == 1 << 32                            # success, 1 rep completed
    log = g.log()
    assert [e[0] for e in log] == [GP, GP] and log[0][3] == 0x08      # VTL1 injected #GP into VTL0 twice
    assert msg(g, 0, "<I") == HvMessageType.HvMessageTypeGpaIntercept
    assert msg(g, 16 + 56) == SECRET                                   # GPA of the (last) violation
    assert msg(g, 16 + 5, "<B") == 1                                   # ... a write
    assert g.u64(SECRET) == 0x5EC2E7                                   # memory unchanged
    assert g.u64(V1LOG + 0x800) == 0x5EC2E7                            # VTL1 itself still reads it
    assert g.u64(SCRATCH) & 0xFFFF == HvStatus.HV_STATUS_ACCESS_DENIED
    assert 3 in g.v1log()                                              # entry reason INTERCEPT


def test_protection_without_vtl1_is_still_enforced_by_re_fault_and_lower_vtl_cannot_protect():
    g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1
                 + hypercall(MODIFY, IN(4), 0, slot=SCRATCH)                          # VTL0 on itself
                 + hypercall(control(HvCallCode.HvCallGetVpRegisters, rep=1), IN(5), OUT(5), slot=SCRATCH + 8)
                 + hypercall(control(HvCallCode.HvCallSetVpRegisters, rep=1), IN(6), 0, slot=SCRATCH + 16)
                 + hypercall(control(HvCallCode.HvCallSetVpRegisters, rep=1), IN(7), 0, slot=SCRATCH + 24)
                 + vtl1_runs(3, MODIFY))
    m = g.part.memory
    m.write(IN(4), protect_input(0, [SECRET >> 12], target=0))
    m.write(IN(5), names_input(1, [HvRegisterName.HvX64RegisterRip]))
    m.write(IN(6), regs_input(0, [(HvRegisterName.HvX64RegisterCrInterceptControl, 0)], use_target=False))
    m.write(IN(7), regs_input(1, [(HvRegisterName.HvX64RegisterRip, 0x1234)]))
    m.write(IN(3), protect_input(0x5, [SECRET >> 12]))                                # R|KX without UX
    g.run()
    assert [g.u64(SCRATCH + 8 * i) & 0xFFFF for i in range(4)] == [HvStatus.HV_STATUS_ACCESS_DENIED] * 4
    assert g.u64(V1LOG + 0x810) & 0xFFFF == HvStatus.HV_STATUS_INVALID_PARAMETER   # no MBEC: KX needs UX
    assert m.read_u64(OUT(5)) == 0                                                  # nothing leaked


def test_secure_intercepts_cr4_msr_gdtr():
    setup = regs_input(1, [(HvRegisterName.HvX64RegisterCrInterceptControl,
                            HvCrInterceptControl.Cr4Write | HvCrInterceptControl.MsrLstarWrite
                            | HvCrInterceptControl.GdtrWrite),
                           (HvRegisterName.HvX64RegisterCrInterceptCr4Mask, SMEP)], use_target=False)
    g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1 + vtl1_runs(2, control(HvCallCode.HvCallSetVpRegisters, rep=2))
                 + f"mov rax, cr4\nmov rdi, {SCRATCH:#x}\nmov [rdi], rax\n"
                 + "mov rax, cr4\nbts rax, 20\nmov cr4, rax\n"                 # intercepted -> skipped
                 + f"mov rax, cr4\nmov rdi, {SCRATCH:#x}\nmov [rdi+8], rax\n"
                 + f"mov rdi, {SIMP1:#x}\nmov rax, [rdi+16+40]\nmov rdi, {SCRATCH:#x}\nmov [rdi+0x40], rax\n"
                 + f"mov rdi, {SIMP1:#x}\nmov rax, [rdi+16+48]\nmov rdi, {SCRATCH:#x}\nmov [rdi+0x48], rax\n"
                 + resume("a") + wrmsr(0xC0000082, 0xFFFF800000001000) + "a:\n" + no_resume()
                 + f"mov rdi, {SIMP1:#x}\nmov eax, [rdi]\nmov rdi, {SCRATCH:#x}\nmov [rdi+0x50], rax\n"
                 + "mov ecx, 0xC0000082\nrdmsr\n" + f"mov rdi, {SCRATCH:#x}\nmov [rdi+16], eax\n"
                 + f"mov rdi, {SCRATCH + 0x100:#x}\nmov word ptr [rdi], 0x7\nmov qword ptr [rdi+2], 0x1234000\n"
                 + "lgdt [rdi]\n"                                                   # intercepted -> skipped
                 + f"mov rdi, {SCRATCH:#x}\nsgdt [rdi+0x20]\n"
                 + "mov rax, cr4\nbts rax, 11\nmov cr4, rax\nmov rax, cr4\n"        # UMIP: not in the mask
                 + f"mov rdi, {SCRATCH:#x}\nmov [rdi+0x30], rax\n")
    g.part.memory.write(IN(2), setup)
    g.part.memory.write(IN(3), b"")
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert g.u64(V1LOG + 0x808) == 2 << 32
    cr4_before = g.u64(SCRATCH)
    assert g.u64(SCRATCH + 8) == cr4_before and not cr4_before & SMEP                # CR4 unchanged
    reg_msg = g.u64(SCRATCH + 0x40)
    assert (reg_msg >> 32) == HvRegisterName.HvX64RegisterCr4                         # register name
    assert g.u64(SCRATCH + 0x48) == cr4_before | SMEP                                 # attempted value
    assert g.u64(SCRATCH + 0x50) == HvMessageType.HvMessageTypeX64MsrIntercept
    assert [e[0] for e in g.log()] == [GP]                                            # VTL1 injected #GP
    assert g.part.memory.read_u32(SCRATCH + 16) == 0                                  # LSTAR unchanged
    assert g.part.memory.read_u64(SCRATCH + 0x22) == 0x5000                           # GDTR unchanged
    assert g.u64(SCRATCH + 0x30) & UMIP                                               # unmasked bit works
    assert msg(g, 16 + 44, "<I") == HvRegisterName.HvX64RegisterGdtr
    assert msg(g, 16 + 48 + 8) == 0x1234000                                           # the base LGDT tried


def test_partition_config_is_write_once_and_vtl_cannot_be_replayed():
    cfg = 1 | (0xF << 1)
    g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1
                 + vtl1_runs(2, control(HvCallCode.HvCallSetVpRegisters, rep=1))
                 + vtl1_runs(3, control(HvCallCode.HvCallSetVpRegisters, rep=1))
                 + hypercall(control(HvCallCode.HvCallSetVpRegisters, rep=1), IN(4), 0, slot=SCRATCH)
                 + hypercall(HvCallCode.HvCallEnablePartitionVtl, IN(0), 0, slot=SCRATCH + 8)
                 + hypercall(HvCallCode.HvCallEnableVpVtl, IN(1), 0, slot=SCRATCH + 16))
    m = g.part.memory
    m.write(IN(2), regs_input(1, [(HvRegisterName.HvRegisterVsmPartitionConfig, cfg)], use_target=False))
    m.write(IN(3), regs_input(1, [(HvRegisterName.HvRegisterVsmPartitionConfig, 0)], use_target=False))
    m.write(IN(4), regs_input(0, [(HvRegisterName.HvRegisterVsmPartitionConfig, 0)], use_target=False))
    g.run()
    assert g.u64(V1LOG + 0x808) == 1 << 32
    assert g.u64(V1LOG + 0x810) & 0xFFFF == HvStatus.HV_STATUS_ACCESS_DENIED
    assert g.u64(SCRATCH) & 0xFFFF == HvStatus.HV_STATUS_ACCESS_DENIED
    assert g.u64(SCRATCH + 8) & 0xFFFF == HvStatus.HV_STATUS_VTL_ALREADY_ENABLED
    assert g.u64(SCRATCH + 16) & 0xFFFF == HvStatus.HV_STATUS_VTL_ALREADY_ENABLED
    assert g.part.vsm.vtls[1].partition_config == cfg


def test_vtl_call_from_ring3_is_ud():
    g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1 + resume("b") + to_user() + "b:\n",
                 user=f"mov rcx, 0x11\n.byte 0x0f, 0x01, 0xd9\nmov rax, {HC0:#x}\n")
    g.run()
    (vec, _, rip, cs, _), = g.log()
    assert vec == UD and cs == 0x2b and rip == UCODE + 7


def test_npiep_blocks_ring3_sgdt_only_when_configured():
    for npiep, expect in ((1, [GP]), (0, [UD])):
        g = AsmGuest(wrmsr(0x40000040, npiep) + resume("b") + to_user() + "b:\n",
                     user=f"sgdt [{UCODE + 0x1000:#x}]\nud2\n", hyperv=True)
        g.run()
        assert [e[0] for e in g.log()] == expect


def test_vtl_transitions_trace_file(tmp_path):
    from vtlvisor.trace import ChromeTracer
    g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1 + vtl_call(1) + vtl_call(1))
    tracer = ChromeTracer(g.part.clock.now)
    g.part.vcpu.hooks.trace = tracer
    g.run()
    out = tmp_path / "t.json"
    tracer.write(out)
    ev = json.loads(out.read_text())["traceEvents"]
    sw = [e for e in ev if e["name"] == "vtl_switch"]
    assert [(e["args"]["from"], e["args"]["to"]) for e in sw] == [("0x0", "0x1"), ("0x1", "0x0")] * 2
    assert {e["tid"] for e in ev if e.get("ph") in ("i", "X")} == {0, 1}                 # one track per VTL
    assert any(e.get("tid") == 1 and e["name"] == "MSR" for e in ev)                   # VTL1's own exits


def test_modify_protection_reports_reps_completed_from_rep_start():
    # input at the end of its page: the header and two elements, then the page ends. With rep start 2
    # the first element processed is already missing: 2 reps count as completed (those before the start),
    # as for the other rep hypercalls, not 0
    inp = IN(4) + 0x1000 - 32
    g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1
                 + f"mov r12, {control(HvCallCode.HvCallModifyVtlProtectionMask, rep=4, start=2):#x}\n"
                 + f"mov r13, {inp:#x}\nxor r14, r14\nmov r15, {SCRATCH:#x}\n" + vtl_call(5))
    g.part.memory.write(inp, protect_input(0, [SECRET >> 12] * 2))
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert g.u64(SCRATCH) & 0xFFFF == HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT
    assert (g.u64(SCRATCH) >> 32) & 0xFFF == 2
    assert g.part.vsm.vtls[0].protections == {}                      # nothing was applied


def test_translate_virtual_address_walks_with_the_target_vtls_protections():
    """HvCallTranslateVirtualAddress with SetPageTableBits sets A/D bits as the target VTL's own walk
    would: through its protections. VTL1 makes VTL0's page directory read-only for VTL0; translating a
    never-touched 2 MiB page then reports GpaNoWriteAccess and leaves its accessed bit clear, while the
    same translation without SetPageTableBits succeeds (the walk only reads). The page table is
    asmguest's PT for 4-6 MiB, which VTL0 itself never walks."""
    from vtlvisor.abi.hyperv import HV_VP_INDEX_SELF, HvTranslateGvaFlags, HvTranslateGvaResult
    pt, gva = 0x4000, 0x400000                          # asmguest's PT for 4..6 MiB (PD entry 2)
    translate = control(HvCallCode.HvCallTranslateVirtualAddress)
    read = int(HvTranslateGvaFlags.ValidateRead)
    g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1 + vtl1_runs(2, MODIFY)
                 + hypercall(translate, IN(3), OUT(3), slot=SCRATCH)
                 + hypercall(translate, IN(4), OUT(4), slot=SCRATCH + 8))
    g.part.memory.write_u64(pt, 0x700000 | 0x3)                      # present, writable, accessed bit clear
    g.part.memory.write(IN(2), protect_input(0x1 | 0x4 | 0x8, [pt >> 12]))     # R + KX + UX, no W
    g.part.memory.write(IN(3), struct.pack("<QIIQQ", 0xFFFFFFFFFFFFFFFF, HV_VP_INDEX_SELF, 0,
                                           read | HvTranslateGvaFlags.SetPageTableBits, gva >> 12))
    g.part.memory.write(IN(4), struct.pack("<QIIQQ", 0xFFFFFFFFFFFFFFFF, HV_VP_INDEX_SELF, 0, read, gva >> 12))
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert g.u64(V1LOG + 0x808) == 1 << 32                            # the protection was applied
    assert g.u64(SCRATCH) & 0xFFFF == g.u64(SCRATCH + 8) & 0xFFFF == HvStatus.HV_STATUS_SUCCESS
    with_bits = struct.unpack_from("<IIQ", g.part.memory.read(OUT(3), 16))
    plain = struct.unpack_from("<IIQ", g.part.memory.read(OUT(4), 16))
    assert with_bits[0] == HvTranslateGvaResult.GpaNoWriteAccess
    assert not g.part.memory.read_u64(pt) & 0x20                          # accessed bit still clear
    assert plain[0] == HvTranslateGvaResult.Success and plain[2] == 0x700
