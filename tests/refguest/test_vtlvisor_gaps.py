"""Minimal reproductions of the vtlvisor gaps the reference guest works around (docs/guest.md, "vtlvisor
caveats").  Expected failures until the hypervisor is fixed; each scenario runs in a subprocess because the
first one kills the process."""

import os
import subprocess
import sys
import textwrap

from refguest import ROOT


def run(src: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(src)], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)


def test_nx_on_a_page_table_page_does_not_crash():
    """VTL1 makes VTL0's PML4 page (0x1000) R+W without execute; VTL0 only goes on running its code."""
    r = run("""
        from asmguest import SCRATCH
        from vsmguest import ENABLE_VTL1, IN, SETUP_VTL0, VsmGuest, control, protect_input, vtl_call
        from vtlvisor.abi.hyperv import HvCallCode
        g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1
                     + f"mov r13, {control(HvCallCode.HvCallModifyVtlProtectionMask, rep=1):#x}\\n" + vtl_call(3)
                     + f"mov rdi, {SCRATCH:#x}\\nmov qword ptr [rdi], 0x600d\\n")
        g.part.memory.write(IN(3), protect_input(0x3, [0x1000 >> 12]))
        r = g.run()
        print(r.exit_status, hex(g.u64(SCRATCH)))
    """)
    assert r.returncode == 0 and r.stdout.split() == ["1", "0x600d"], (r.returncode, r.stdout, r.stderr[-400:])


def test_lapic_write_with_a_pending_interrupt_and_if0_completes():
    """The LAPIC timer fires while IF=0; the next LAPIC register write (TPR) never completes: vtlvisor's
    _lapic_write stops the engine because a vector is pending, and the write is executed again, forever."""
    r = run('''
        from asmguest import SCRATCH, AsmGuest
        g = AsmGuest(f"""
            cli
            mov rdi, 0xfee00000
            mov dword ptr [rdi+0xf0], 0x1ff
            mov dword ptr [rdi+0x3e0], 0x3
            mov dword ptr [rdi+0x320], 0x40
            mov dword ptr [rdi+0x380], 100
            mov rcx, 2000000
        spin:
            dec rcx
            jnz spin
            mov dword ptr [rdi+0x80], 0
            mov rax, {SCRATCH:#x}
            mov qword ptr [rax], 0x600d
        """)
        r = g.run(timeout=5)
        print(r.reason.name, hex(g.u64(SCRATCH)), hex(g.part.engine.rip))
    ''')
    assert r.stdout.split()[:2] == ["DEBUG_EXIT", "0x600d"], (r.stdout, r.stderr[-400:])


def test_setvpregisters_on_itself_respects_secure_intercepts():
    """VTL1 intercepts CR4 writes changing SMEP; VTL0 sets CR4.SMEP with SetVpRegisters on itself."""
    r = run("""
        from asmguest import SCRATCH
        from vsmguest import ENABLE_VTL1, IN, SETUP_VTL0, VsmGuest, control, hypercall, regs_input, vtl_call
        from vtlvisor.abi.hyperv import HvCallCode, HvCrInterceptControl, HvRegisterName
        SET = control(HvCallCode.HvCallSetVpRegisters, rep=1)
        g = VsmGuest(SETUP_VTL0 + ENABLE_VTL1
                     + f"mov r12, {control(HvCallCode.HvCallSetVpRegisters, rep=2):#x}\\n" + vtl_call(2)
                     + hypercall(SET, IN(4), 0, slot=SCRATCH + 8)
                     + f"mov rax, cr4\\nmov rdi, {SCRATCH:#x}\\nmov [rdi], rax\\n")
        m = g.part.memory
        m.write(IN(2), regs_input(1, [(HvRegisterName.HvX64RegisterCrInterceptControl, HvCrInterceptControl.Cr4Write),
                                      (HvRegisterName.HvX64RegisterCrInterceptCr4Mask, 1 << 20)], use_target=False))
        m.write(IN(4), regs_input(0, [(HvRegisterName.HvX64RegisterCr4, 0x620 | (1 << 20))], use_target=False))
        g.run()
        print(hex(g.u64(SCRATCH)), hex(g.u64(SCRATCH + 8) & 0xffff))
    """)
    cr4, status = r.stdout.split()
    assert not int(cr4, 16) & (1 << 20) and status == "0x6", r.stdout   # refused: HV_STATUS_ACCESS_DENIED
