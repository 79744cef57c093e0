"""CR pinning ABI rules, each driven by real guest code (keystone-assembled ring-0/ring-3 snippets)."""

import pytest
from asmguest import RESUME, SCRATCH, UCODE, AsmGuest, to_user

from vtlvisor.abi.kvm_pv import KvmMsr
from vtlvisor.hv.crpin import PinError

GP = 13
WP, SMEP, SMAP, UMIP, FSGSBASE, PAE = 1 << 16, 1 << 20, 1 << 21, 1 << 11, 1 << 16, 1 << 5
M64 = (1 << 64) - 1


def resume(label: str) -> str:
    return f"lea rax, [rip + {label}]\nmov [{RESUME:#x}], rax\n"


def wrmsr(msr: int, value: int) -> str:
    return f"mov ecx, {msr:#x}\nmov eax, {value & 0xFFFFFFFF:#x}\nmov edx, {value >> 32:#x}\nwrmsr\n"


def rdmsr_to(msr: int, slot: int) -> str:
    return f"mov ecx, {msr:#x}\nrdmsr\nmov [{slot:#x}], eax\nmov [{slot + 4:#x}], edx\n"


def hypercall(nr: int, cr: int, mask: int, flags: int, slot: int) -> str:
    return (f"mov rax, {nr}\nmov rbx, {cr}\nmov rcx, {mask:#x}\nmov rdx, {flags}\n"
            f".byte 0x0f, 0x01, 0xd9\nmov [{slot:#x}], rax\n")


SET_SMEP_SMAP_UMIP = f"mov rax, cr4\nor rax, {SMEP | UMIP:#x}\nmov cr4, rax\n"


def test_cpuid_signature_and_feature_bit():
    g = AsmGuest(f"""
        mov eax, 0x40000000
        cpuid
        mov [{SCRATCH:#x}], eax
        mov [{SCRATCH + 4:#x}], ebx
        mov [{SCRATCH + 8:#x}], ecx
        mov [{SCRATCH + 12:#x}], edx
        mov eax, 0x40000001
        cpuid
        mov [{SCRATCH + 16:#x}], eax
    """)
    g.run()
    m = g.part.memory
    assert m.read(SCRATCH + 4, 12) == b"KVMKVMKVM\0\0\0" and m.read_u32(SCRATCH) == 0x40000001
    assert m.read_u32(SCRATCH + 16) & (1 << 15)


def test_feature_off_hides_bit_and_msrs_gp():
    g = AsmGuest("mov eax, 0x40000001\ncpuid\n" + f"mov [{SCRATCH:#x}], eax\n" + resume("a")
                 + rdmsr_to(KvmMsr.CR4_PIN_ALLOWED, SCRATCH + 8) + "a:\n", cr_pin=False)
    g.run()
    assert not g.part.memory.read_u32(SCRATCH) & (1 << 15)
    assert [e[0] for e in g.log()] == [GP]


def test_allowed_msrs_values_and_read_only():
    g = AsmGuest(rdmsr_to(KvmMsr.CR0_PIN_ALLOWED, SCRATCH) + rdmsr_to(KvmMsr.CR4_PIN_ALLOWED, SCRATCH + 8)
                 + resume("a") + wrmsr(KvmMsr.CR4_PIN_ALLOWED, 0) + "a:\n"
                 + rdmsr_to(KvmMsr.CR4_PIN_ALLOWED, SCRATCH + 16))
    g.run()
    assert g.u64(SCRATCH) == WP
    assert g.u64(SCRATCH + 8) == SMEP | SMAP | UMIP | FSGSBASE == g.u64(SCRATCH + 16)
    assert [e[0] for e in g.log()] == [GP]


def test_pin_rules_disallowed_unpin_and_conflict():
    g = AsmGuest(SET_SMEP_SMAP_UMIP
                 + resume("a") + wrmsr(KvmMsr.CR4_PINNED_HIGH, PAE) + "a:\n"             # not pinnable
                 + wrmsr(KvmMsr.CR4_PINNED_HIGH, SMEP | UMIP)                            # ok
                 + resume("b") + wrmsr(KvmMsr.CR4_PINNED_HIGH, SMEP) + "b:\n"           # unpin UMIP
                 + wrmsr(KvmMsr.CR4_PINNED_LOW, FSGSBASE)                                # pin low ok
                 + resume("c") + wrmsr(KvmMsr.CR4_PINNED_HIGH, SMEP | UMIP | FSGSBASE) + "c:\n"  # conflict
                 + resume("d") + wrmsr(KvmMsr.CR4_PINNED_LOW, 0) + "d:\n"               # unpin low
                 + rdmsr_to(KvmMsr.CR4_PINNED_HIGH, SCRATCH) + rdmsr_to(KvmMsr.CR4_PINNED_LOW, SCRATCH + 8))
    g.run()
    assert [e[0] for e in g.log()] == [GP, GP, GP, GP]
    assert g.u64(SCRATCH) == SMEP | UMIP and g.u64(SCRATCH + 8) == FSGSBASE
    assert g.part.crpin.pins.cr4_high == SMEP | UMIP


def test_pinned_cr4_write_is_gp_register_unchanged_rip_at_mov():
    g = AsmGuest(SET_SMEP_SMAP_UMIP + wrmsr(KvmMsr.CR4_PINNED_HIGH, SMEP) + wrmsr(KvmMsr.CR4_PINNED_LOW, FSGSBASE)
                 + f"mov rax, cr4\nmov [{SCRATCH:#x}], rax\n"
                 + resume("a") + "mov rdi, cr4\nbtr rdi, 20\ngadget:\nmov cr4, rdi\na:\n"
                 + resume("b") + "mov rdi, cr4\nbts rdi, 16\nmov cr4, rdi\nb:\n"
                 + "mov qword ptr [0x10008], 0\n"
                 + f"mov rdi, cr4\nbtr rdi, 11\nmov cr4, rdi\nmov rax, cr4\nmov [{SCRATCH + 8:#x}], rax\n")
    g.run()
    log = g.log()
    assert [e[0] for e in log] == [GP, GP] and log[0][1] == 0
    blocked = g.part.crpin.blocked
    assert [b.cr for b in blocked] == [4, 4]
    assert log[0][2] == blocked[0].rip               # RIP pushed = the mov to CR4 itself
    assert blocked[0].old == g.u64(SCRATCH) and blocked[0].attempted == g.u64(SCRATCH) & ~SMEP
    # unpinned bit (UMIP) can still be cleared; SMEP still set
    assert g.u64(SCRATCH + 8) & SMEP and not g.u64(SCRATCH + 8) & UMIP


def test_pinned_cr0_wp_blocks_mov_but_lmsw_and_clts_work():
    g = AsmGuest(wrmsr(KvmMsr.CR0_PINNED_HIGH, WP)
                 + resume("a") + "mov rax, cr0\nbtr rax, 16\nmov cr0, rax\na:\n"
                 + "mov qword ptr [0x10008], 0\n"
                 + "mov rax, cr0\nor rax, 8\nmov cr0, rax\nclts\n"          # set TS, then CLTS
                 + f"mov rax, cr0\nmov [{SCRATCH:#x}], rax\n"
                 + "smsw ax\nor ax, 8\nlmsw ax\n"                           # LMSW sets TS
                 + f"mov rax, cr0\nmov [{SCRATCH + 8:#x}], rax\n")
    g.run()
    assert [e[0] for e in g.log()] == [GP]
    assert g.u64(SCRATCH) & WP and not g.u64(SCRATCH) & 8
    assert g.u64(SCRATCH + 8) & 8 and g.u64(SCRATCH + 8) & WP


def test_cr0_wp_pinned_low_must_hold():
    g = AsmGuest("mov rax, cr0\nbtr rax, 16\nmov cr0, rax\n" + wrmsr(KvmMsr.CR0_PINNED_LOW, WP)
                 + resume("a") + "mov rax, cr0\nbts rax, 16\nmov cr0, rax\na:\n"
                 + f"mov rax, cr0\nmov [{SCRATCH:#x}], rax\n")
    g.run()
    assert [e[0] for e in g.log()] == [GP] and not g.u64(SCRATCH) & WP


def test_heki_lock_cr_update_hypercall():
    S = SCRATCH
    g = AsmGuest(SET_SMEP_SMAP_UMIP
                 + hypercall(13, 0, 0, 1, S)                  # version -> 1
                 + hypercall(13, 0, 1, 0, S + 8)              # CR0 mask without WP -> -EINVAL
                 + hypercall(13, 4, PAE, 0, S + 16)           # not pinnable -> -EINVAL
                 + hypercall(13, 4, SMAP, 0, S + 24)          # SMAP currently clear -> -EINVAL
                 + hypercall(13, 3, WP, 0, S + 32)            # bad CR -> -EINVAL
                 + hypercall(13, 4, SMEP | UMIP, 0, S + 40)   # ok -> 0
                 + hypercall(13, 0, WP, 0, S + 48)            # ok -> 0
                 + hypercall(99, 0, 0, 0, S + 56)             # unknown -> -KVM_ENOSYS
                 + rdmsr_to(KvmMsr.CR4_PINNED_HIGH, S + 64)
                 + resume("a") + "mov rax, cr4\nbtr rax, 11\nmov cr4, rax\na:\n"
                 + resume("b") + to_user() + "b:\n",
                 user="mov rax, 13\nmov rbx, 0\nmov rdx, 1\n.byte 0x0f, 0x01, 0xd9\nmov r15, rax\nud2\n")
    g.run()
    u = g.u64
    assert u(S) == 1
    assert [u(S + o) for o in (8, 16, 24, 32)] == [(-22) & M64] * 4
    assert u(S + 40) == 0 and u(S + 48) == 0 and u(S + 56) == (-1000) & M64
    assert u(S + 64) == SMEP | UMIP and g.part.crpin.pins.cr0_high == WP
    log = g.log()
    assert log[0][0] == GP                              # clearing a Heki-locked bit
    assert log[1][0] == 6 and log[1][3] == 0x2b         # the user program reached ud2 ...
    assert g.part.engine.reg("r15") == (-1) & M64       # ... after its hypercall got -KVM_EPERM


def test_host_api_rules_reset_and_saved_state():
    g = AsmGuest("")
    cp = g.part.crpin
    cp.set_pins(4, high=SMEP, host=True)
    cp.set_pins(4, high=0, host=True)          # the host may unpin
    with pytest.raises(PinError):
        cp.set_pins(4, high=PAE, host=True)      # but follows the validity rules
    with pytest.raises(PinError):
        cp.set_pins(4, high=SMEP, low=SMEP, host=True)
    with pytest.raises(PinError):
        cp.set_pins(0, low=WP)
        cp.set_pins(0, low=0)                    # guest-style request: cannot remove
    cp.set_pins(4, high=SMEP | UMIP, host=True)
    saved = g.part.save_state()
    g.part.reset_vcpu_state()
    assert cp.pins.cr4_high == 0 and cp.pins.cr0_low == 0
    g.part.restore_state(saved)
    assert cp.pins.cr4_high == SMEP | UMIP and cp.pins.cr0_low == WP
    with pytest.raises(PinError):
        g.part.restore_state({"crpin": {"cr0_low": WP, "cr0_high": WP, "cr4_low": 0, "cr4_high": 0}})


def test_user_cannot_touch_pin_msrs():
    g = AsmGuest(resume("b") + to_user() + "b:\n", user=wrmsr(KvmMsr.CR4_PINNED_HIGH, 0))
    g.run()
    (vec, err, rip, cs, _), = g.log()
    assert vec == GP and cs == 0x2b and UCODE <= rip < UCODE + 0x20
