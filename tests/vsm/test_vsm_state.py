"""What VTLs share and what is private to each (TLFS 15.11 "Virtual Processor State Isolation")."""

from asmguest import SCRATCH
from vsmguest import ENABLE_VTL1, SETUP_VTL0, V1LOG, VsmGuest, vtl_call, wrmsr


def test_fp_sse_and_debug_address_registers_are_shared_private_registers_are_not():
    g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1
                 + "mov rax, 0x1111000011110000\nmovq xmm0, rax\n"
                 + "mov rax, 0xA0A0\nmov dr0, rax\n"
                 + wrmsr(0xC0000100, 0xAAAA000) + wrmsr(0x200, 0x0)
                 + "fld1\n"                                  # x87: ST0 = 1.0 (shared: VTL1 does not touch it)
                 + vtl_call(6)
                 + f"mov rdi, {SCRATCH:#x}\n"
                 + "movq rax, xmm0\nmov [rdi], rax\n"
                 + "mov rax, dr0\nmov [rdi+8], rax\n"
                 + "mov rax, dr7\nmov [rdi+16], rax\n"
                 + "mov ecx, 0xC0000100\nrdmsr\nmov [rdi+24], eax\n"
                 + "mov ecx, 0x200\nrdmsr\nmov [rdi+32], eax\n"
                 + "fstp qword ptr [rdi+40]\n"
                 + "mov ecx, 0x40000000\nrdmsr\nmov [rdi+48], eax\nmov [rdi+52], edx\n")
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert g.u64(V1LOG + 0x840) == 0x1111000011110000        # VTL1 saw VTL0's XMM0 ...
    assert g.u64(V1LOG + 0x848) == 0xA0A0                    # ... and DR0
    assert g.u64(SCRATCH) == 0x2222000022220000              # VTL0 sees VTL1's XMM0 (shared)
    assert g.u64(SCRATCH + 8) == 0xD0D0                      # DR0 (shared)
    assert g.u64(SCRATCH + 32) == 0x6                        # an MTRR (shared MSR)
    assert g.u64(SCRATCH + 16) & 0xFFFF == 0x400             # DR7 is private: VTL1's 0x700 stayed there
    assert g.u64(SCRATCH + 24) & 0xFFFFFFFF == 0xAAAA000     # FS.BASE is private
    assert g.u64(SCRATCH + 40) == 0x3FF0000000000000         # ST0 survived the round trip (1.0)
    assert g.u64(SCRATCH + 48) == 0x1 and g.u64(V1LOG + 0x850) == 0x8100000000000002   # GUEST_OS_ID: private


def test_tpr_is_private_and_vtl0_interrupts_wait_while_vtl1_runs():
    """TLFS 15.11.1: the local APIC registers, CR8/TPR included, are private; an interrupt for VTL0 is
    not delivered while VTL1 runs (15.12), even with VTL1's IF set, and arrives once VTL0 runs again."""
    from asmguest import TICKS
    g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1 + """
        mov rax, 2
        mov cr8, rax
        mov rbx, 0xfee00000
        mov dword ptr [rbx+0xf0], 0x1ff
        mov dword ptr [rbx+0x3e0], 0xb
        mov dword ptr [rbx+0x320], 0x20040
        mov dword ptr [rbx+0x380], 50000
        sti
    """ + vtl_call(8) + f"""
        mov rdi, {SCRATCH:#x}
        mov rax, cr8
        mov [rdi], rax
        mov rax, {TICKS:#x}
        mov rcx, [rax]
        mov [rdi+8], rcx
    wait:
        hlt
        cmp [rax], rcx
        je wait
        cli
        mov rbx, 0xfee00000
        mov dword ptr [rbx+0x320], 0x10040
    """)
    r = g.run(timeout=60)
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert g.u64(V1LOG + 0x860) == 0                     # VTL1's own TPR, not VTL0's 2
    assert g.u64(V1LOG + 0x868) == g.u64(V1LOG + 0x870)  # no VTL0 tick while VTL1 ran with IF=1
    assert g.u64(SCRATCH) == 2                           # VTL0's TPR after the return (VTL1 set 9)
    assert g.u64(TICKS) > g.u64(SCRATCH + 8)             # the timer reaches VTL0 (TPR 2 < class 4)
