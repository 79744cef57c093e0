"""MBEC (mode-based execute control) through VTL0 + VTL1 guest code: kernel-mode and user-mode execute
protections, and the CPL tracking that picks the nested root (docs/vsm.md, "MBEC").

Layout on top of vsmguest: the page P at GPA 0x600000 is mapped twice in VTL0's page tables, at VA
0x600000 for ring 0 (supervisor) and at VA 0xE00000 for ring 3 (user), so SMEP never decides before the
nested tables do. P+0 is a ring-0 entry (writes 0x77 to MARK, returns), P+0x100 a ring-3 entry (writes
0x66 to MARK, ud2).
"""

import struct

from asmguest import COUNT, LOG, RESUME, SCRATCH, TICKS, UCODE, asm, to_user
from vsmguest import (
    ENABLE_VTL1,
    IN,
    OUT,
    SETUP_VTL0,
    SIMP1,
    VsmGuest,
    control,
    hypercall,
    names_input,
    protect_input,
    regs_input,
    vtl1_hypercall,
)

from vtlvisor.abi.hyperv import HvCallCode, HvMessageType, HvRegisterName, HvStatus

GP, UD, DE, BP = 13, 6, 0, 3
P, PU = 0x600000, 0xE00000
MARK = 0x201000                              # a user page (U=1) both rings write
R, W, KX, UX = 1, 2, 4, 8
SET1 = control(HvCallCode.HvCallSetVpRegisters, rep=1)
SMEP_ON = "mov rax, cr4\nbts rax, 20\nmov cr4, rax\n"
ST = SCRATCH + 0x400                         # hypercall status slots


def modify(n: int) -> int:
    return control(HvCallCode.HvCallModifyVtlProtectionMask, rep=n)


def resume(label: str) -> str:
    return f"lea rax, [rip + {label}]\nmov rbx, {RESUME:#x}\nmov [rbx], rax\n"


def mbec_setup(flags_by_page: list[tuple[int, list[int]]], secure_config: int = 1) -> str:
    """VTL0 asm: VTL1 enables MBEC for VTL0 (VsmVpSecureConfigVtl0) and applies the protections (IN(4..))."""
    src = vtl1_hypercall(SET1, IN(4), 0, ST) if secure_config is not None else ""
    for i, (_, gpns) in enumerate(flags_by_page):
        src += vtl1_hypercall(modify(len(gpns)), IN(5 + i), 0, ST + 8 + 8 * i)
    return src


def mbec_guest(kernel: str, user: str = "", pages: list[tuple[int, list[int]]] = (), secure_config: int | None = 1,
               mbec: bool = True) -> VsmGuest:
    g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1 + mbec_setup(list(pages), secure_config) + kernel, user=user, mbec=mbec)
    m = g.part.memory
    m.write_u64(0x3000 + 8 * 7, P | 0x87)                     # VA 0xE00000 -> P, user
    m.write(P, asm(f"mov rax, {MARK:#x}\nmov qword ptr [rax], 0x77\nret\n", P))
    m.write(P + 0x100, asm(f"mov rax, {MARK:#x}\nmov qword ptr [rax], 0x66\nud2\n", PU + 0x100))
    if secure_config is not None:
        m.write(IN(4), regs_input(1, [(HvRegisterName.HvRegisterVsmVpSecureConfigVtl0, secure_config)],
                                  use_target=False))
    for i, (flags, gpns) in enumerate(pages):
        m.write(IN(5 + i), protect_input(flags, gpns))
    return g


def msg(g: VsmGuest, off: int, fmt: str = "<Q") -> int:
    return struct.unpack(fmt, g.part.memory.read(SIMP1 + off, struct.calcsize(fmt)))[0]


def kinds(g: VsmGuest) -> list[str]:
    return [e.kind for e in g.part.vcpu.security.events]


def test_ux_only_page_runs_in_ring3_and_is_a_gpa_intercept_in_ring0():
    g = mbec_guest(SMEP_ON + resume("a") + f"mov rax, {P:#x}\ncall rax\na:\n"
                   + resume("b") + to_user(rip=PU + 0x100) + "b:\n",
                   pages=[(R | W | UX, [P >> 12])])
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert [g.u64(ST + 8 * i) & 0xFFFF for i in range(2)] == [0, 0]
    log = g.log()
    assert [(e[0], e[3]) for e in log] == [(GP, 0x08), (UD, 0x2B)]          # ring 0 refused, ring 3 ran
    assert log[0][2] == P and log[1][2] == PU + 0x100 + len(asm(f"mov rax, {MARK:#x}\nmov qword ptr [rax], 0x66", 0))
    assert g.u64(MARK) == 0x66
    assert msg(g, 0, "<I") == HvMessageType.HvMessageTypeGpaIntercept
    assert msg(g, 16 + 5, "<B") == 2                                         # execute
    assert msg(g, 16 + 6, "<H") & 3 == 0                                     # at CPL 0
    assert msg(g, 16 + 56) == P
    assert "mbec_execute" in kinds(g)
    assert g.part.vsm.mbec.missed == 0


def test_kx_only_page_runs_in_ring0_and_is_a_gpa_intercept_in_ring3():
    g = mbec_guest(SMEP_ON + f"mov rax, {P:#x}\ncall rax\n" + resume("b") + to_user(rip=PU + 0x100) + "b:\n",
                   pages=[(R | W | KX, [P >> 12])])
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert [(e[0], e[2], e[3]) for e in g.log()] == [(GP, PU + 0x100, 0x2B)]   # ring 3 refused at its fetch
    assert g.u64(MARK) == 0x77                                                  # only ring 0 ran P
    assert msg(g, 16 + 5, "<B") == 2 and msg(g, 16 + 6, "<H") & 3 == 3          # execute, CPL 3
    assert msg(g, 16 + 56) == P + 0x100


def test_without_smep_kx_governs_both_modes():
    # TLFS (MBEC and SMEP): with SMEP available but clear, only KMX=1 code executes, in either mode
    g = mbec_guest(resume("b") + to_user(rip=PU + 0x100) + "b:\n", pages=[(R | W | UX, [P >> 12])])
    g.run()
    assert [(e[0], e[3]) for e in g.log()] == [(GP, 0x2B)] and g.u64(MARK) == 0
    assert not g.part.vsm.mbec.split and g.part.vsm.mbec.emulated["iret"] == 0


def test_mbec_needs_the_partition_flag_and_the_secure_config_bit():
    # no EnableMbec: MbecEnabled cannot be set and UX-only protections are invalid
    g = mbec_guest("", pages=[(R | UX, [P >> 12])], mbec=False)
    g.run()
    assert g.u64(ST) & 0xFFFF == HvStatus.HV_STATUS_INVALID_REGISTER_VALUE
    assert g.u64(ST + 8) & 0xFFFF == HvStatus.HV_STATUS_INVALID_PARAMETER
    # EnableMbec but MbecEnabled never set: UX-only is accepted, and KX governs (ring 3 refused)
    g = mbec_guest(SMEP_ON + resume("b") + to_user(rip=PU + 0x100) + "b:\n", pages=[(R | W | UX, [P >> 12])],
                   secure_config=None)
    g.run()
    assert g.u64(ST + 8) & 0xFFFF == 0
    assert [(e[0], e[3]) for e in g.log()] == [(GP, 0x2B)] and g.u64(MARK) == 0
    assert not g.part.vsm.vtls[0].mbec


def test_vsm_registers_report_mbec():
    names = [HvRegisterName.HvRegisterVsmCapabilities, HvRegisterName.HvRegisterVsmPartitionStatus,
             HvRegisterName.HvRegisterVsmVpStatus]
    get = control(HvCallCode.HvCallGetVpRegisters, rep=3)
    g = mbec_guest(hypercall(get, IN(6), OUT(6), slot=ST + 0x40)
                   + hypercall(control(HvCallCode.HvCallGetVpRegisters, rep=1), IN(7), OUT(7), slot=ST + 0x48)
                   + vtl1_hypercall(control(HvCallCode.HvCallGetVpRegisters, rep=1), IN(8), OUT(8), ST + 0x50))
    m = g.part.memory
    m.write(IN(6), names_input(0, names, use_target=False))
    m.write(IN(7), names_input(0, [HvRegisterName.HvRegisterVsmVpSecureConfigVtl0], use_target=False))
    m.write(IN(8), names_input(1, [HvRegisterName.HvRegisterVsmVpSecureConfigVtl0], use_target=False))
    g.run()
    caps, pstatus, vpstatus = (m.read_u64(OUT(6) + 16 * i) for i in range(3))
    assert (caps >> 1) & 0xFFFF == 0b11                       # MbecVtlMask: VTL0 and VTL1
    assert (pstatus >> 20) & 0xFFFF == 0b11                   # MbecEnabledVtlSet (VTL1 enabled with MBEC)
    assert vpstatus & (1 << 4) and vpstatus & 0xF == 0        # ActiveMbecEnabled in VTL0
    assert g.u64(ST + 0x48) & 0xFFFF == HvStatus.HV_STATUS_ACCESS_DENIED   # VTL0 owns no instance
    assert g.u64(ST + 0x50) & 0xFFFF == 0 and m.read_u64(OUT(8)) == 1     # VTL1's instance for VTL0


# ---------------------------------------------------------------------------------------------- transitions
KPAGES = list(range(0x100, 0x10A))            # the kernel's code and exception handlers: KX only
USER_LOOP = """
    mov r12, 20
again:
    syscall
    int 0x80
    int3
    xor edx, edx
    xor eax, eax
    xor ecx, ecx
    div ecx
    mov rcx, 20000
spin:
    dec rcx
    jnz spin
    dec r12
    jnz again
    ud2
"""
CNT_SYS, CNT_INT, CNT_BP, CNT_DE = (SCRATCH + 0x200 + 8 * i for i in range(4))


def gate_asm(vec: int, label: str, dpl: int = 0) -> str:
    """Kernel asm writing the IDT gate ``vec`` -> ``label`` (the IDT is at 0x7000)."""
    return f"""
        lea rax, [rip + {label}]
        mov rdi, {0x7000 + 16 * vec:#x}
        mov word ptr [rdi], ax
        mov word ptr [rdi+2], 0x08
        mov word ptr [rdi+4], {(0x8E | (dpl << 5)) << 8:#x}
        shr rax, 16
        mov word ptr [rdi+6], ax
        shr rax, 16
        mov dword ptr [rdi+8], eax
        mov dword ptr [rdi+12], 0
    """


# STAR (kernel CS 0x08, user base 0x18) and LSTAR -> the label sys_entry
SYSCALL_MSRS = """
        mov ecx, 0xC0000081
        xor eax, eax
        mov edx, 0x180008
        wrmsr
        mov ecx, 0xC0000082
        lea rax, [rip + sys_entry]
        xor edx, edx
        wrmsr
"""


def transitions_kernel(handlers: str) -> str:
    """Kernel asm: STAR/LSTAR, gates for INT 0x80 / #BP (DPL 3) and #DE, the LAPIC timer, then ring 3."""
    return SMEP_ON + gate_asm(0x80, "h_int80", 3) + gate_asm(BP, "h_bp", 3) + gate_asm(DE, "h_de") + SYSCALL_MSRS + """
        mov rbx, 0xfee00000
        mov dword ptr [rbx+0xf0], 0x1ff
        mov dword ptr [rbx+0x3e0], 0xb
        mov dword ptr [rbx+0x320], 0x20040
        mov dword ptr [rbx+0x380], 200000
    """ + resume("done") + to_user() + handlers + """
    done:
        mov rbx, 0xfee00000
        mov dword ptr [rbx+0x320], 0x10040
    """


HANDLERS = f"""
        jmp over
    sys_entry:
        mov rax, {CNT_SYS:#x}
        inc qword ptr [rax]
        .byte 0x48, 0x0f, 0x07
    h_int80:
        push rax
        mov rax, {CNT_INT:#x}
        inc qword ptr [rax]
        pop rax
        iretq
    h_bp:
        push rax
        mov rax, {CNT_BP:#x}
        inc qword ptr [rax]
        pop rax
        iretq
    h_de:
        add qword ptr [rsp], 2
        push rax
        mov rax, {CNT_DE:#x}
        inc qword ptr [rax]
        pop rax
        iretq
    over:
"""


def test_syscall_sysret_int_iret_exceptions_and_interrupts_switch_roots():
    # kernel code KX only, user code UX only: a fetch on the wrong root would be a GpaIntercept (#GP)
    g = mbec_guest(transitions_kernel(HANDLERS), user=USER_LOOP,
                   pages=[(R | KX, KPAGES), (R | W | UX, [UCODE >> 12])])
    r = g.run(timeout=60)
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert [g.u64(ST + 8 * i) & 0xFFFF for i in range(3)] == [0, 0, 0]
    counts = [g.u64(c) for c in (CNT_SYS, CNT_INT, CNT_BP, CNT_DE)]
    # Exact: timer kicks stop the engine only at instruction boundaries (Unicorn issue #1355 is patched, see
    # tests/core/test_async_stops.py). A missed root switch would be a GpaIntercept and fail the checks above.
    assert counts == [20, 20, 20, 20], counts
    assert g.u64(TICKS) > 0                                            # timer interrupts hit ring 3 too
    assert [(e[0], e[3]) for e in g.log()] == [(UD, 0x2B)]             # only the final ud2: no #GP
    mb = g.part.vsm.mbec
    assert mb.missed == 0 and "mbec_execute" not in kinds(g)
    assert mb.emulated["sysret"] == 20 and mb.emulated["iret"] >= 60 + g.u64(TICKS)
    assert mb.root_switches >= 2 * 80


def test_call_gate_into_ring0_is_trapped_and_emulated():
    gate_code = f"""
        jmp over
    gate:
        mov rax, {SCRATCH + 0x300:#x}
        inc qword ptr [rax]
        mov [rax + 8], rsp
        pop rax
        pop rbx
        pop rcx
        pop rdx
        push rdx
        push rcx
        push 0x202
        push rbx
        push rax
        iretq
    over:
    """
    user = f"""
        mov rax, {UCODE + 0x800:#x}
        mov dword ptr [rax], 0
        mov word ptr [rax+4], 0x43
        .byte 0xff, 0x18
        mov rbx, 0x1234
        ud2
    """
    call_gate = """
        lea rax, [rip + gate]
        mov rdi, 0x5040
        mov word ptr [rdi], ax
        mov word ptr [rdi+2], 0x08
        mov word ptr [rdi+4], 0xEC00
        shr rax, 16
        mov word ptr [rdi+6], ax
        shr rax, 16
        mov dword ptr [rdi+8], eax
        mov dword ptr [rdi+12], 0
        mov word ptr [rdi-0x40+0x800], 0x4f
        mov qword ptr [rdi-0x40+0x802], 0x5000
        lgdt [rdi-0x40+0x800]
    """
    g = mbec_guest(SMEP_ON + call_gate + resume("done") + to_user() + gate_code + "done:\n", user=user,
                   pages=[(R | KX, KPAGES), (R | W | UX, [UCODE >> 12])])
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert g.u64(SCRATCH + 0x300) == 1
    assert g.u64(SCRATCH + 0x308) == 0x9F000 - 32                     # TSS.RSP0 minus the 4-slot frame
    ud2_at = UCODE + len(asm(user.split("ud2")[0], UCODE))
    assert [(e[0], e[2], e[3]) for e in g.log()] == [(UD, ud2_at, 0x2B)]        # back in ring 3 after the call
    assert g.part.vsm.mbec.emulated["call_gate"] == 1 and g.part.vsm.mbec.missed == 0


def test_far_ret_to_ring3_is_caught_at_its_first_fetch_or_next_exit():
    lret = """
        push 0x23
        mov rax, 0x280000
        push rax
        push 0x2b
        mov rax, {rip:#x}
        push rax
        .byte 0x48, 0xcb
    """
    # onto a UX-only page: the fetch faults on the kernel root, the exit's check moves to the user root
    # and the fetch is retried (no intercept); ring-3 code never ran on the kernel root
    g = mbec_guest(SMEP_ON + resume("b") + lret.format(rip=PU + 0x100) + "b:\n", pages=[(R | W | UX, [P >> 12])])
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert g.u64(MARK) == 0x66 and [(e[0], e[3]) for e in g.log()] == [(UD, 0x2B)]
    assert g.part.vsm.mbec.missed == 1 and "mbec_missed_transition" in kinds(g)
    assert "mbec_execute" not in kinds(g)
    # onto a page both modes may execute: it runs on the kernel root until the next exit (its ud2),
    # where the check catches the CPL change and drops the code translated meanwhile
    g = mbec_guest(SMEP_ON + resume("b") + lret.format(rip=UCODE) + "b:\n",
                   user=f"mov rax, {MARK:#x}\nmov qword ptr [rax], 0x55\nud2\n")
    r = g.run()
    assert r.exit_status == 1 and g.u64(MARK) == 0x55
    assert g.part.vsm.mbec.missed == 1 and "mbec_missed_transition" in kinds(g)


def test_without_mbec_nothing_is_trapped():
    g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1 + SMEP_ON + resume("b") + to_user() + "b:\n", user="ud2\n")
    g.run()
    mb = g.part.vsm.mbec
    assert not mb.split and sum(mb.emulated.values()) == 0 and mb.root_switches == 0
    assert not g.part.engine.privilege_traps
    assert g.u64(COUNT) == 1 and g.part.memory.read_u64(LOG) == UD


def test_sysexit_from_compatibility_mode_is_trapped_and_emulated():
    # a 32-bit ring-0 code segment at 0x40; compatibility-mode kernel code runs SYSEXIT (SYSENTER_CS =
    # 0x08: CS 0x1b, SS 0x23) into 32-bit user code on a UX-only page
    compat = bytes.fromhex("b9") + (0x280000).to_bytes(4, "little") + bytes.fromhex("ba") \
        + UCODE.to_bytes(4, "little") + bytes.fromhex("0f35")
    kernel = SMEP_ON + """
        mov ecx, 0x174
        mov eax, 0x08
        xor edx, edx
        wrmsr
        mov rdi, 0x5040
        mov dword ptr [rdi], 0x0000ffff
        mov dword ptr [rdi+4], 0x00cf9b00
        mov word ptr [rdi-0x40+0x800], 0x47
        mov qword ptr [rdi-0x40+0x802], 0x5000
        lgdt [rdi-0x40+0x800]
    """ + resume("done") + f"""
        mov rax, {SCRATCH + 0x600:#x}
        lea rbx, [rip + compat]
        mov dword ptr [rax], ebx
        mov word ptr [rax+4], 0x40
        .byte 0xff, 0x28
    compat:
        .byte {", ".join(f"{b:#x}" for b in compat)}
    done:
    """
    g = mbec_guest(kernel, user="ud2\n", pages=[(R | W | UX, [UCODE >> 12])])
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert [(e[0], e[2], e[3]) for e in g.log()] == [(UD, UCODE, 0x1B)]   # ring 3, 32-bit code, UX-only page
    assert g.part.vsm.mbec.emulated["sysexit"] == 1 and g.part.vsm.mbec.missed == 0


def test_sysret_straddling_a_page_boundary_is_still_emulated():
    # SYSRET (32-bit operand: CS 0x1b, compatibility mode) whose 0f 07 straddles P+0x1000: the
    # trap's #UD must be recognised from both pages, not delivered to the guest as a #UD
    kernel = SMEP_ON + SYSCALL_MSRS + resume("done") + to_user() + f"""
        jmp done
    sys_entry:
        mov rax, {P + 0xFFF:#x}
        jmp rax
    done:
    """
    g = mbec_guest(kernel, user="syscall\nud2\n")
    g.part.memory.write(P + 0xFFF, b"\x0f\x07")
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert [(e[0], e[2], e[3]) for e in g.log()] == [(UD, UCODE + 2, 0x1B)]   # ring 3 after the SYSRET
    assert g.part.vsm.mbec.emulated["sysret"] == 1
