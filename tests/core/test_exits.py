"""The core's exits and event delivery, driven by real guest machine code."""

import pytest
from asmguest import COUNT, KCODE, RESUME, SCRATCH, TICKS, UCODE, USTACK, AsmGuest, to_user

from vtlvisor.hv.stop import StopReason

GP, UD, PF, DF = 13, 6, 14, 8


def resume(label: str) -> str:
    return f"lea rax, [rip + {label}]\nmov [{RESUME:#x}], rax\n"


def test_debug_exit_status_and_serial():
    g = AsmGuest("mov dx, 0x3f8\nmov al, 0x41\nout dx, al\nmov dx, 0xf4\nmov eax, 5\nout dx, eax\nhlt")
    r = g.run()
    assert r.reason is StopReason.DEBUG_EXIT and r.exit_status == (5 << 1) | 1
    assert g.part.serial_output == b"A"


def test_cpuid_hides_svm_and_sets_hypervisor_bit():
    g = AsmGuest(f"""
        mov eax, 0x80000001
        cpuid
        mov [{SCRATCH:#x}], ecx
        mov eax, 1
        cpuid
        mov [{SCRATCH + 8:#x}], ecx
        mov eax, 7
        xor ecx, ecx
        cpuid
        mov [{SCRATCH + 16:#x}], ecx
    """)
    g.run()
    assert not g.u64(SCRATCH) & (1 << 2)           # SVM hidden
    assert g.u64(SCRATCH + 8) & (1 << 31)          # hypervisor present
    assert not g.u64(SCRATCH + 8) & (1 << 21)      # no x2APIC
    assert g.u64(SCRATCH + 16) & (1 << 2)          # UMIP advertised


def test_unknown_msr_gets_gp_and_known_msr_roundtrips():
    g = AsmGuest(resume("after") + f"""
        mov ecx, 0x12345678
        rdmsr
    after:
        mov qword ptr [{RESUME:#x}], 0
        mov ecx, 0xC0000082
        mov eax, 0x11223344
        mov edx, 0xffff8000
        wrmsr
        xor eax, eax
        xor edx, edx
        rdmsr
        mov [{SCRATCH:#x}], eax
        mov [{SCRATCH + 4:#x}], edx
    """)
    g.run()
    log = g.log()
    assert [e[0] for e in log] == [GP] and log[0][1] == 0
    assert g.u64(SCRATCH) == 0xFFFF800011223344


def test_efer_svme_is_hidden_and_reserved_cr4_bits_fault():
    g = AsmGuest(resume("a1") + f"""
        mov ecx, 0xC0000080
        rdmsr
        mov [{SCRATCH:#x}], eax
        or eax, 0x1000
        wrmsr
    a1:
    """ + resume("a2") + f"""
        mov rax, cr4
        or rax, 0x2000          ; VMXE: unsupported
        mov cr4, rax
    a2:
        mov qword ptr [{RESUME:#x}], 0
        mov rax, cr4
        or rax, 0x100000        ; SMEP: supported
        mov cr4, rax
        mov rax, cr4
        mov [{SCRATCH + 8:#x}], rax
    """)
    g.run()
    assert not g.u64(SCRATCH) & 0x1000
    assert [e[0] for e in g.log()] == [GP, GP]
    assert g.u64(SCRATCH + 8) & 0x100000 and not g.u64(SCRATCH + 8) & 0x2000


def test_page_fault_delivers_cr2_and_error_code():
    g = AsmGuest(resume("after") + """
        mov rax, 0x400010
        mov qword ptr [rax], 7
    after:
    """)
    g.run()
    (vec, err, rip, cs, cr2), = g.log()
    assert vec == PF and cr2 == 0x400010 and err == 0x2 and cs == 0x08
    assert g.part.memory.read_u64(0x400010) == 0


def test_demand_paging_retry():
    # handler maps the page and retries: use a dedicated #PF handler
    g = AsmGuest(f"""
        mov rax, 0x401000
        mov qword ptr [rax], 0x1234
        mov rbx, [rax]
        mov [{SCRATCH:#x}], rbx
    """)
    pf = KCODE + 0x6000
    from asmguest import asm
    g.part.memory.write(pf, asm("""
        push rax
        push rbx
        mov rax, cr2
        shr rax, 12
        and rax, 0x1ff
        mov rbx, 0x600000
        or rbx, 0x3
        mov [0x4000 + rax*8], rbx
        invlpg [0x401000]
        pop rbx
        pop rax
        add rsp, 8
        iretq
    """, pf))
    g.set_gate(14, pf)
    g.run()
    assert g.u64(SCRATCH) == 0x1234 and g.part.memory.read_u64(0x600000) == 0x1234


def test_ring3_syscall_sysret_and_int80_and_gate_dpl():
    from asmguest import asm
    g = AsmGuest("""
        mov ecx, 0xC0000081
        xor eax, eax
        mov edx, 0x001b0008     ; SYSCALL CS=0x08; SYSRET base 0x18: CS=0x28|3, SS=0x20|3
        wrmsr
        mov ecx, 0xC0000082
        lea rax, [rip + sysh]
        mov rdx, rax
        shr rdx, 32
        wrmsr
        mov ecx, 0xC0000084
        mov eax, 0x200
        xor edx, edx
        wrmsr
    """ + resume("back") + to_user() + f"""
    sysh:
        mov [{SCRATCH:#x}], rax      ; syscall number
        mov [{SCRATCH + 8:#x}], rcx  ; return RIP
        mov rax, cs
        mov [{SCRATCH + 16:#x}], rax
        mov rax, 99
        .byte 0x48, 0x0f, 0x07      ; sysretq
    back:
    """, user=f"""
        mov rax, 42
        syscall
        mov [{SCRATCH + 24 - 0x0:#x}], rax
        int 0x80
        int 0x81
    """)
    # SCRATCH+24 is a kernel page: the user write faults, which is fine: we read rax via the log
    h80 = KCODE + 0x6000
    g.part.memory.write(h80, asm(f"mov qword ptr [{SCRATCH + 32:#x}], 1\niretq", h80))
    g.set_gate(0x80, h80, dpl=3)
    g.set_gate(0x81, h80, dpl=0)
    g.run()
    assert g.u64(SCRATCH) == 42 and g.u64(SCRATCH + 16) == 0x08
    syscall_ret = g.u64(SCRATCH + 8)
    assert UCODE < syscall_ret < UCODE + 0x20
    log = g.log()
    # user write to a supervisor page -> #PF (U|W|P), then after resume nothing else
    assert log[0][0] == PF and log[0][1] == 0x7 and log[0][3] == 0x2b


def test_int_through_dpl0_gate_from_ring3_is_gp():
    from asmguest import asm
    g = AsmGuest(resume("back") + to_user() + "back:\n", user="int 0x81\n")
    h = KCODE + 0x6000
    g.part.memory.write(h, asm("iretq", h))
    g.set_gate(0x81, h, dpl=0)
    g.run()
    (vec, err, rip, cs, _), = g.log()
    assert vec == GP and err == 0x81 * 8 + 2 and rip == UCODE and cs == 0x2b


def test_user_fault_switches_to_rsp0_stack():
    g = AsmGuest(resume("back") + to_user() + "back:\n", user="ud2\n")
    g.run()
    (vec, err, rip, cs, _), = g.log()
    assert vec == UD and rip == UCODE and cs == 0x2b


def test_umip_blocks_ring3_sgdt_but_ring0_sgdt_works():
    g = AsmGuest(f"""
        sgdt [{SCRATCH:#x}]
        mov rax, cr4
        or rax, 0x800
        mov cr4, rax
    """ + resume("back") + to_user() + "back:\n", user=f"sgdt [{UCODE + 0x1000:#x}]\n")
    g.run()
    assert g.part.memory.read_u16(SCRATCH) == g.gdt_limit
    assert g.part.memory.read_u64(SCRATCH + 2) == 0x5000
    (vec, err, rip, cs, _), = g.log()
    assert vec == GP and err == 0 and rip == UCODE


def test_svm_instructions_are_ud():
    g = AsmGuest(resume("a") + ".byte 0x0f, 0x01, 0xd8\na:\n" + resume("b") + ".byte 0x0f, 0x01, 0xdc\nb:\n"
                 + resume("c") + ".byte 0x0f, 0x01, 0xda\nc:\n")      # vmrun, stgi, vmload
    g.run()
    assert [e[0] for e in g.log()] == [UD, UD, UD]


def test_vmmcall_and_intel_vmcall_reach_the_kvm_hypercall_abi():
    g = AsmGuest(f"""
        mov rax, 0xdead
        .byte 0x0f, 0x01, 0xd9          ; vmmcall
        mov [{SCRATCH:#x}], rax
        mov rax, 0xdead
        .byte 0x0f, 0x01, 0xc1          ; vmcall (Intel): #UD on AMD, handled as a hypercall
        mov [{SCRATCH + 8:#x}], rax
    """)
    g.run()
    assert g.u64(SCRATCH) == (-1000) & 0xFFFFFFFFFFFFFFFF
    assert g.u64(SCRATCH + 8) == (-1000) & 0xFFFFFFFFFFFFFFFF
    assert g.log() == []


def test_ring3_port_io_is_gp_with_iopl0():
    g = AsmGuest(resume("back") + to_user() + "back:\n", user="mov dx, 0xf4\nmov eax, 0x7f\nout dx, eax\n")
    r = g.run()
    assert r.exit_status == 1          # the kernel's own exit(0), not the user's 0x7f
    (vec, err, rip, cs, _), = g.log()
    assert vec == GP and cs == 0x2b and rip == UCODE + 9


def test_unhandled_port_reads_all_ones():
    g = AsmGuest(f"mov dx, 0x1234\nin al, dx\nmov [{SCRATCH:#x}], al\n")
    g.run()
    assert g.part.memory.read_u8(SCRATCH) == 0xFF
    assert ("io", 0x1234, 1, None) in g.part.unhandled


def test_lapic_timer_interrupts_wake_hlt():
    g = AsmGuest(f"""
        mov rbx, 0xfee00000
        mov dword ptr [rbx+0xf0], 0x1ff       ; SVR: enable, spurious 0xff
        mov dword ptr [rbx+0x3e0], 0xb        ; divide by 1
        mov dword ptr [rbx+0x320], 0x20040    ; periodic, vector 0x40
        mov dword ptr [rbx+0x380], 100000     ; 100 us at 1 GHz
        mov rcx, {TICKS:#x}
        sti
    wait:
        hlt
        cmp qword ptr [rcx], 5
        jb wait
        cli
        mov dword ptr [rbx+0x320], 0x10040    ; mask
    """)
    r = g.run()
    assert r.exit_status == 1 and g.u64(TICKS) >= 5 and g.u64(COUNT) == 0


def test_hlt_with_interrupts_off_is_reported():
    g = AsmGuest("cli\nhlt\n")
    r = g.run()
    assert r.reason is StopReason.HALTED and r.exit_status == 4


def test_triple_fault_is_an_orderly_shutdown():
    g = AsmGuest("ud2\n", idt_limit=0)
    r = g.run()
    assert r.reason is StopReason.TRIPLE_FAULT and r.exit_status == 6
    assert "#6" in r.detail and "#8" in r.detail


@pytest.mark.parametrize("insn", ["jmp qword ptr [0x7ffffffff000]", "mov rax, 0x12345678\njmp rax",
                                  "mov rsp, 0\npush rax"])
def test_wild_guest_never_raises(insn):
    g = AsmGuest(insn + "\n", idt_limit=0)
    r = g.run()
    assert r.reason in (StopReason.TRIPLE_FAULT, StopReason.MACHINE_CHECK)


def test_int_to_a_ring3_handler_pushes_its_frame_as_a_user_access_under_smap():
    """A DPL-3 gate to a CPL-3 code segment: the frame push goes to the user stack at CPL 3, a
    user-mode access (SDM 4.6.1 lists only GDT/LDT/IDT/TSS as implicit supervisor accesses), so SMAP
    does not apply and the handler runs; the handler's own fault then reaches the kernel."""
    import struct
    handler = UCODE + 0x100
    g = AsmGuest("""
        mov rax, cr4
        or rax, 0x300000
        mov cr4, rax
    """ + resume("back") + to_user() + "back:\n",
                 user="int 0x82\n")
    from asmguest import asm
    g.part.memory.write(handler, asm(f"mov rax, {USTACK - 0x800:#x}\nmov qword ptr [rax], 0x5a5a\nud2\n", handler))
    g.part.memory.write(0x7000 + 16 * 0x82, struct.pack("<HHBBHII", handler & 0xFFFF, 0x2B, 0, 0xEE,
                                                         (handler >> 16) & 0xFFFF, handler >> 32, 0))
    g.run()
    (vec, err, rip, cs, _), = g.log()
    assert (vec, rip, cs) == (UD, handler + 14, 0x2B), g.log()
    assert g.u64(USTACK - 0x800) == 0x5A5A
    # the frame the CPU pushed on the user stack: RIP after INT, CS, RFLAGS, RSP, SS
    frame = [g.u64(USTACK - 40 + 8 * i) for i in range(5)]
    assert frame[0] == UCODE + 2 and frame[1] == 0x2B and frame[3] == USTACK and frame[4] == 0x23
