"""Minimal reproductions of the bugs the fuzzer found (issue 9). Each is xfail(strict) until fixed:
the fix flips the marker (and drops the key from KNOWN in test_fuzz_short.py)."""

import struct

import pytest

from fuzz.guest import CANARY, IN, OUT, SCRATCH, GuestConfig, Op, control, protect_input, res
from fuzz.runner import run_ops
from vtlvisor.abi.hyperv import HvCallCode, HvStatus
from vtlvisor.hv.stop import StopReason

GP = 13


def run(asm: str, **cfg):
    cr = run_ops([Op("t", asm=asm)], GuestConfig(**cfg))
    return cr, cr.guest


def faults(g):
    return [(v, e) for v, e, *_ in g.log()]


@pytest.mark.parametrize("bit", [24, 30, 32, 63])
def test_reserved_cr4_bit_is_gp(bit):
    cr, g = run(f"mov rax, cr4\nbts rax, {bit}\nmov cr4, rax\nmov rax, cr4\nmov rbx, {res(0):#x}\nmov [rbx], rax\n")
    assert faults(g) == [(GP, 0)] and not g.u64(res(0)) & (1 << bit)


@pytest.mark.parametrize("bit", [0, 1])
def test_cr4_vme_pvi_without_cpuid_vme_is_gp(bit):
    cr, g = run(f"mov rax, cr4\nbts rax, {bit}\nmov cr4, rax\n")
    assert g.part.cpuid.query(1, 0, 0)[3] & 2 == 0
    assert faults(g) == [(GP, 0)]


def test_cr0_et_stays_set():
    cr, g = run(f"mov rax, cr0\nbtr rax, 4\nmov cr0, rax\nmov rax, cr0\nmov rbx, {res(0):#x}\nmov [rbx], rax\n")
    assert not faults(g) and g.u64(res(0)) & 0x10


def _hv(asm: str, mem: list, vtl1: bool = False):
    cr = run_ops([Op("t", asm=asm, mem=mem)], GuestConfig(hyperv=True, vtl1=vtl1))
    return cr, cr.guest


def test_hypercall_input_header_crossing_page_end_is_a_status():
    inp = IN(3) + 0xFF8
    ctl = control(HvCallCode.HvCallSetVpRegisters, rep=1)
    cr, g = _hv(f"mov rcx, {ctl:#x}\nmov rdx, {inp:#x}\nmov r8, {OUT(3):#x}\nmov rax, 0x20000\ncall rax\n"
                f"mov rbx, {res(0):#x}\nmov [rbx], rax\n", [(IN(3), bytes(0x1000))])
    assert cr.result.reason is StopReason.DEBUG_EXIT, cr.result.detail
    assert g.u64(res(0)) & 0xFFFF in {int(s) for s in HvStatus} - {0}


def test_fast_translate_virtual_address_is_a_status():
    ctl = control(HvCallCode.HvCallTranslateVirtualAddress, fast=True)
    cr, g = _hv(f"mov rcx, {ctl:#x}\nmov rdx, -1\nxor r8, r8\nmov rax, 0x20000\ncall rax\n"
                f"mov rbx, {res(0):#x}\nmov [rbx], rax\n", [])
    assert cr.result.reason is StopReason.DEBUG_EXIT, cr.result.detail


def test_engine_error_during_native_step_is_not_internal_error():
    code = bytes.fromhex("0f0008" "0cc4" "e95c63ed3f") + b"\x0f\x0b"   # str [rax]; or al,0xc4; jmp 0x404d6765
    cr = run_ops([Op("t", asm=f"mov rax, {SCRATCH:#x}\nmov r14, 0x600400\njmp r14\n", mem=[(0x600400, code)])],
                 GuestConfig())
    assert cr.result.reason is StopReason.MACHINE_CHECK, cr.result


# ---------------------------------------------------------------- VTL1-only memory reached for VTL0
VSM_BUG = ("the hypervisor accesses guest memory for VTL0 through GuestMemory without the VTL's protections "
           "(x86/events.py delivery, x86/paging.py walks, Vcpu._read_mem_operand)")


def _vsm(asm: str, after: str = ""):
    cr = run_ops([Op("t", asm=asm, after=after)], GuestConfig(hyperv=True, vtl1=True, canary_seed=1))
    assert not [f for f in cr.failures if f.kind == "harness"], cr.failures
    return cr, cr.guest


def _canary_failures(cr):
    assert cr.result.reason is not StopReason.INTERNAL_ERROR, cr.result
    return [str(f) for f in cr.failures if f.kind == "canary"]


def test_exception_frame_push_cannot_write_vtl1_page():
    cr, g = _vsm(f"mov r15, rsp\nmov rsp, {CANARY + 0x40:#x}\nint3\n", after="mov rsp, r15\n")
    assert not _canary_failures(cr)


def test_idt_in_vtl1_page_is_not_read_for_vtl0():
    cr, g = _vsm(f"mov rbx, {SCRATCH + 0x300:#x}\nmov word ptr [rbx], 0xfff\nmov rax, {CANARY:#x}\n"
                 "mov [rbx+2], rax\nlidt [rbx]\nud2\n")
    assert not _canary_failures(cr)


def test_lmsw_operand_in_vtl1_page_is_not_read_for_vtl0():
    cr, g = _vsm(f"mov rbx, {CANARY:#x}\nlmsw [rbx]\n")
    assert not _canary_failures(cr)


def test_page_walk_through_vtl1_page_for_delivery():
    cr, g = _vsm(f"mov rax, cr3\nmov r15, rax\nmov rax, {CANARY:#x}\nmov cr3, rax\n", after="mov rax, r15\nmov cr3, rax\n")
    assert not _canary_failures(cr)


def test_vsm_harness_sees_a_clean_vtl1_setup():
    """The harness itself: VTL1 comes up, protects the canary, and a VTL0 read of it is refused."""
    cr, g = _vsm(f"mov rbx, {CANARY:#x}\nmov rax, [rbx]\nmov rbx, {res(0):#x}\nmov [rbx], rax\n")
    assert cr.result.reason is StopReason.DEBUG_EXIT, cr.result
    assert [v for v, *_ in g.log()] == [GP]                 # VTL1 injected #GP for the GPA intercept
    assert not cr.failures, cr.failures
    assert g.part.vsm.vtls[0].protections[CANARY >> 12] == 0


def test_walker_checks_reserved_physical_address_bits():
    from vtlvisor.memory import GuestMemory
    from vtlvisor.x86.paging import Access, PageFault, PagingMode, walk
    va = 1 << 39                                                     # PML4 slot 1
    leaf = 0x403000 | 7 | (1 << 45) | (1 << 63)                       # NX leaf with a reserved address bit
    mem_writes = [(0x1008, struct.pack("<Q", 0x400000 | 7)), (0x400000, struct.pack("<Q", 0x401000 | 7)),
                  (0x401000, struct.pack("<Q", 0x402000 | 7)), (0x402000, struct.pack("<Q", leaf))]
    # the engine (the CPU) says: #PF(P | RSVD | I)
    cr = run_ops([Op("t", asm=f"mov rbx, {va:#x}\ncall rbx\n")], GuestConfig(mem=mem_writes))
    (vec, err, _, _, cr2, _), = cr.guest.log()
    assert (vec, err, cr2) == (14, 0x19, va)
    assert cr.guest.part.cpuid.query(0x80000008, 0, 0)[0] & 0xFF == 40
    mem = GuestMemory(8 << 20)
    for a, d in mem_writes:
        mem.write(a, d)
    mode = PagingMode(0x80050033, 0x1000, 0x620, 0xD01 | (1 << 10))
    with pytest.raises(PageFault) as e:
        walk(mem, mode, va, Access(fetch=True), set_ad=False)
    assert e.value.error_code == 0x19


SEGV_REPRO = """
import sys
from fuzz.guest import IN, GuestConfig, Op, control, protect_input
from fuzz.runner import run_ops
from vtlvisor.abi.hyperv import HvCallCode
# VTL1 (command 2 of its service loop) makes VTL0's page directory (gpn 3) read-only, then returns
ctl = control(HvCallCode.HvCallModifyVtlProtectionMask, 1)
op = Op("t", asm=f"mov r12, {ctl:#x}\\nxor ecx, ecx\\nmov rdi, 2\\nmov rax, 0x20010\\ncall rax\\n",
        mem=[(IN(2), protect_input(0x1, [3]))])
cr = run_ops([op], GuestConfig(vtl1=True, timeout=5))
print("RESULT", cr.result.reason.value)
"""


def test_read_only_guest_page_table_page_does_not_crash_the_process():
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-c", SEGV_REPRO], cwd=root, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr[-800:]}"
    assert "RESULT" in p.stdout


def test_blocked_cr_write_records_are_bounded():
    src = """
        mov ecx, 0x4b564d0b
        mov eax, 0x10000
        xor edx, edx
        wrmsr
        mov r12, 0
        lea rax, [rip + again]
        mov [0x10008], rax
    again:
        inc r12
        cmp r12, 12000
        jae done
        mov rax, cr0
        btr rax, 16
        mov cr0, rax
    done:
    """
    cr = run_ops([Op("t", asm=src)], GuestConfig(timeout=60))
    assert cr.result.reason is StopReason.DEBUG_EXIT
    assert len(cr.guest.part.crpin.blocked) <= 10000


# ---------------------------------------------------------------- guest page tables in protected pages
NX_PT_REPRO = """
import sys
from fuzz.guest import IN, PML4, SCRATCH, GuestConfig, Op, control, protect_input
from fuzz.runner import run_ops
from vtlvisor.abi.hyperv import HvCallCode
flags = int(sys.argv[1])
X = SCRATCH + 0x1000        # an ordinary data page when VTL1 protects it (not a page-table page then)
ctl = control(HvCallCode.HvCallModifyVtlProtectionMask, 1)
asm = (f"mov rax, 0x3007\\nmov rbx, {X:#x}\\nmov [rbx], rax\\n"                        # X[0] -> the real PD
       f"mov r12, {ctl:#x}\\nxor ecx, ecx\\nmov rdi, 2\\nmov rax, 0x20010\\ncall rax\\n"                # VTL1: X = flags, no X
       f"mov rax, {X | 7:#x}\\nmov rbx, {PML4 + 8:#x}\\nmov [rbx], rax\\n"               # later: PML4[1] -> X
       f"mov rbx, {1 << 39:#x}\\nmov rax, [rbx]\\n")                                       # the engine walks X
cr = run_ops([Op("t", asm=asm, mem=[(IN(2), protect_input(flags, [X >> 12]))])],
             GuestConfig(hyperv=True, vtl1=True, canary_seed=1, timeout=5))
print("RESULT", cr.result.reason.value, [f.key for f in cr.failures])
"""


# Fixed by the get_hphys patch in engine/unicorn_internals.py (applied at start-up, verified byte for byte):
# a guest page-table access through an NX nested leaf is an ordinary nested page fault now.
@pytest.mark.parametrize("flags", [1, 3], ids=["read-only", "read-write"])
def test_page_table_linked_later_into_non_executable_page_does_not_crash_the_process(flags):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-c", NX_PT_REPRO, str(flags)], cwd=root, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr[-800:]}"
    assert "RESULT debug-exit []" in p.stdout, p.stdout


# Fixed by removing Vsm.page_table_pages (the exemption it computed is not needed since the get_hphys patch)
def test_protection_hypercall_over_aliased_vtl0_page_tables_is_fast():
    from fuzz.guest import PML4, PTAREA, V1LOG
    k, t1, t2, t3 = 64, PTAREA, PTAREA + 0x1000, PTAREA + 0x2000
    asm = (f"mov rbx, {PML4 + 8:#x}\nmov rax, {t1 | 3:#x}\nmov rcx, {k}\nalias_loop:\nmov [rbx], rax\n"
           f"add rbx, 8\nloop alias_loop\nmov rax, cr3\nmov cr3, rax\n"
           f"mov r12, {control(HvCallCode.HvCallModifyVtlProtectionMask, 1):#x}\nxor ecx, ecx\nmov rdi, 2\nmov rax, 0x20010\n"
           f"call rax\nmov rbx, {V1LOG + 0x808:#x}\nmov rax, [rbx]\nmov rbx, {res(0):#x}\nmov [rbx], rax\n")
    mem = [(t1, struct.pack("<Q", t2 | 3) * k), (t2, struct.pack("<Q", t3 | 3) * k),
           (IN(2), protect_input(3, [(SCRATCH >> 12) + 1]))]
    cr = run_ops([Op("t", asm=asm, mem=mem)], GuestConfig(hyperv=True, vtl1=True, canary_seed=1))
    assert cr.result.reason is StopReason.DEBUG_EXIT, cr.result
    assert cr.guest.u64(res(0)) & 0xFFFF == HvStatus.HV_STATUS_SUCCESS      # VTL1's hypercall status
    assert not [f for f in cr.failures if f.kind == "slow-exit"], cr.failures
    assert cr.slowest < 0.1, f"{cr.slowest * 1e3:.0f} ms in {cr.slowest_where}"
