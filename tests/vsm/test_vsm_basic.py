"""VSM through real VTL0 and VTL1 guest code: enabling, VTL call/return, private state, shared GPRs."""

from asmguest import RESUME, SCRATCH
from vsmguest import (
    ENABLE_VTL1,
    HC0,
    IN,
    OUT,
    SETUP_VTL0,
    V1LOG,
    VsmGuest,
    control,
    hypercall,
    names_input,
    vtl_call,
)

from vtlvisor.abi.hyperv import HvCallCode, HvRegisterName, HvStatus

UD, GP = 6, 13


def test_cpuid_leaves_and_kvm_moved():
    g = VsmGuest(f"""
        mov eax, 0x40000000
        cpuid
        mov rdi, {SCRATCH:#x}
        mov [rdi], eax
        mov [rdi+4], ebx
        mov [rdi+8], ecx
        mov [rdi+12], edx
        mov eax, 0x40000003
        cpuid
        mov [rdi+16], eax
        mov [rdi+20], ebx
        mov eax, 0x40000100
        cpuid
        mov [rdi+24], ebx
    """)
    g.run()
    m = g.part.memory
    assert m.read(SCRATCH + 4, 12) == b"Microsoft Hv" and m.read_u32(SCRATCH) == 0x4000000A
    assert m.read_u32(SCRATCH + 20) & (1 << 16) and m.read_u32(SCRATCH + 20) & (1 << 17)   # AccessVsm, VpRegs
    assert m.read_u32(SCRATCH + 16) & (1 << 5)                                               # hypercall MSRs
    assert m.read(SCRATCH + 24, 4) == b"KVMK"


def test_hypercall_page_needs_guest_os_id():
    g = VsmGuest("mov ecx, 0x40000001\nmov eax, 0x20001\nxor edx, edx\nwrmsr\nrdmsr\n"
                 f"mov rdi, {SCRATCH:#x}\nmov [rdi], eax\n")
    g.run()
    assert g.u64(SCRATCH) & 1 == 0 and g.part.memory.read_u32(HC0) == 0


def test_enable_call_return_shared_and_private_state():
    g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1 + "mov r15, 0x7777\nmov rsp, 0x9e000\n" + vtl_call(1)
                 + f"mov rdi, {SCRATCH:#x}\nmov [rdi], rax\nmov [rdi+8], r15\nmov [rdi+16], rsp\n"
                 + vtl_call(1) + f"mov rdi, {SCRATCH:#x}\nmov [rdi+24], rax\n")
    trace = []
    g.part.vcpu.hooks.trace = lambda k, a: trace.append((k, a)) if k == "vtl_switch" else None
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert g.u64(SCRATCH + 0x800) == 0 and g.u64(SCRATCH + 0x808) == 0          # both enables: success
    assert g.u64(SCRATCH) == 0x2222 and g.u64(SCRATCH + 24) == 0x2222          # RAX set by VTL1 (shared)
    assert g.u64(SCRATCH + 8) == 0x7777                                        # R15 survives (shared, untouched)
    assert g.u64(SCRATCH + 16) == 0x9E000                                      # RSP is private
    # entry reason VTL_CALL: not visible on the very first entry (VTL1 enables its VP assist page then)
    assert g.v1log() == [0, 1]
    assert g.u64(V1LOG + 0x800) == 0x5EC2E7                                     # VTL1 read memory
    assert [(a["from"], a["to"]) for _, a in trace] == [(0, 1), (1, 0), (0, 1), (1, 0)]
    assert g.part.vsm.active_vtl == 0


def test_vtl_call_without_vtl1_and_vtl_return_from_vtl0_are_ud():
    def resume(label):
        return f"lea rax, [rip + {label}]\nmov rbx, {RESUME:#x}\nmov [rbx], rax\n"
    g = VsmGuest(SETUP_VTL0 + resume("a") + vtl_call(1) + "a:\n" + resume("b")
                 + f"mov rax, {HC0 + 0x20:#x}\ncall rax\nb:\n")
    g.run()
    assert [e[0] for e in g.log()] == [UD, UD]


def test_status_codes_for_malformed_hypercalls():
    g = VsmGuest(SETUP_VTL0
                 + hypercall(0x7FF, IN(0), 0, slot=SCRATCH)                                    # unknown code
                 + hypercall(HvCallCode.HvCallEnablePartitionVtl, IN(0) + 4, 0, slot=SCRATCH + 8)  # misaligned
                 + hypercall(HvCallCode.HvCallEnablePartitionVtl, 0x7FFFF000, 0, slot=SCRATCH + 16)  # outside RAM
                 + hypercall(control(HvCallCode.HvCallGetVpRegisters), IN(4), OUT(4), slot=SCRATCH + 24)  # rep 0
                 + hypercall(control(HvCallCode.HvCallEnablePartitionVtl, rep=1), IN(0), 0, slot=SCRATCH + 32)
                 + hypercall(HvCallCode.HvCallEnablePartitionVtl | (1 << 28), IN(0), 0, slot=SCRATCH + 40)
                 + hypercall(control(HvCallCode.HvCallGetVpRegisters, rep=2, start=2), IN(4), OUT(4),
                             slot=SCRATCH + 48)
                 + hypercall(HvCallCode.HvCallEnablePartitionVtl, IN(5), 0, slot=SCRATCH + 56)      # bad partition
                 + ENABLE_VTL1
                 + hypercall(HvCallCode.HvCallEnablePartitionVtl, IN(0), 0, slot=SCRATCH + 64)      # replay
                 + hypercall(control(HvCallCode.HvCallGetVpRegisters, rep=2), IN(6), OUT(6), slot=SCRATCH + 72))
    m = g.part.memory
    m.write(IN(4), names_input(0, [HvRegisterName.HvX64RegisterRip]))
    m.write(IN(5), bytes.fromhex("0100000000000000") + bytes([1]) + bytes(7))
    m.write(IN(6), names_input(0, [HvRegisterName.HvRegisterVsmVpStatus, 0x12345678], use_target=False))
    g.run()
    st = [g.u64(SCRATCH + 8 * i) & 0xFFFF for i in range(10)]
    assert st == [HvStatus.HV_STATUS_INVALID_HYPERCALL_CODE, HvStatus.HV_STATUS_INVALID_ALIGNMENT,
                  HvStatus.HV_STATUS_INVALID_PARAMETER, HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT,
                  HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT,
                  HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, HvStatus.HV_STATUS_INVALID_PARTITION_ID,
                  HvStatus.HV_STATUS_VTL_ALREADY_ENABLED, HvStatus.HV_STATUS_UNKNOWN_REGISTER_NAME]
    # the rep hypercall reports how many elements completed before the bad name; the first was written
    assert (g.u64(SCRATCH + 72) >> 32) & 0xFFF == 1
    vp_status = m.read_u64(OUT(6))
    assert vp_status & 0xF == 0 and (vp_status >> 16) & 0xFFFF == 0b11


def test_vtl_return_fast_flag_is_rcx_bit0_and_vtl_call_input_must_be_zero():
    """TLFS 15.8.1: the VTL return control input (RCX into the hypercall page, RAX at VMMCALL) bit 0 is
    the fast return; a normal return restores RAX/RCX from the VP assist page, a fast one does not.
    The VTL call control input is reserved: non-zero is #UD."""
    def resume(label):
        return f"lea rax, [rip + {label}]\nmov rbx, {RESUME:#x}\nmov [rbx], rax\n"
    g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1
                 + vtl_call(1) + f"mov rdi, {SCRATCH:#x}\nmov [rdi], rax\nmov [rdi+8], rcx\n"    # normal return
                 + vtl_call(7) + f"mov rdi, {SCRATCH:#x}\nmov [rdi+16], rax\nmov [rdi+24], rcx\n"  # fast return
                 + resume("a") + f"mov rdi, 1\nmov ecx, 1\nmov rax, {HC0 + 0x10:#x}\ncall rax\na:\n")
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert g.u64(SCRATCH) == 0x2222                       # RAX from VTL1's VP assist page
    assert g.u64(SCRATCH + 16) == 1 and g.u64(SCRATCH + 24) == 0x12   # fast: the page's RAX/RCX stay
    assert [e[0] for e in g.log()] == [UD]                # VtlCall with a non-zero control input
    assert g.v1log() == [0, 1]                            # two VTL1 entries: the #UD call never entered
