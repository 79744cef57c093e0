"""Capability-scoped domains through real guest code: create/call/return, memory views, delegation with
attenuation, recursive revocation, forged and stale handles, intercepts, pins, and the TCB comparison."""

import pytest
from asmguest import RESUME
from domguest import (
    CREATE_D1,
    D1_CODE,
    D1_STACK,
    D1H,
    D2_CODE,
    D2_STACK,
    D2H,
    DEL,
    GP,
    I_CR4,
    IMM,
    M64,
    MEM,
    PAGE_A,
    PIN_CR4,
    SELF,
    DomGuest,
    R,
    S,
    W,
    X,
    call,
    kvm,
    neg,
    resume,
    ret,
)

from vtlvisor.abi.domains import EBADF, EINVAL, EPERM, CapRights, CapType, DomainReg
from vtlvisor.abi.domains import DomainHypercall as H
from vtlvisor.errors import ConfigError
from vtlvisor.hv.domains import Policy

PAGE_B = 0x61000


def test_feature_bit_create_call_return_private_state():
    g = DomGuest("mov eax, 0x40000001\ncpuid\n" + f"mov [{S + 0x100:#x}], eax\n" + CREATE_D1
                 + "mov r12, 0x5151\nmov rsp, 0x9e000\n" + "mov rdi, 7\nmov r8, 8\n" + call(D1H)
                 + f"mov r15, {S + 8:#x}\nmov [r15], rax\nmov [r15+8], rdx\nmov [r15+16], r12\nmov [r15+24], rsp\n",
                 d1=f"mov r13, {S + 0x200:#x}\nmov [r13], rdi\nmov [r13+8], r12\nmov [r13+24], r8\n"
                 + kvm(H.DOMAIN_SELF) + "mov [r13+16], rax\n" + ret(0, 0x4242, 0x77))
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert g.part.memory.read_u32(S + 0x100) & (1 << 24)
    assert g.u64(S) == D1H                                       # handle: slot 10, generation 0
    # the callee got the call arguments but not the caller's other registers
    assert g.u64(S + 0x200) == 7 and g.u64(S + 0x218) == 8 and g.u64(S + 0x208) != 0x5151
    assert g.u64(S + 0x210) == 1                                 # DOMAIN_SELF
    # the caller got RAX/RDX back; its own R12 and RSP are intact (domains share nothing else)
    assert g.u64(S + 8) == 0x4242 and g.u64(S + 16) == 0x77 and g.u64(S + 24) == 0x5151
    assert g.u64(S + 32) == 0x9E000


def test_memory_view_immutable_grant_and_violation_in_the_domain():
    g = DomGuest(CREATE_D1
                 + kvm(H.MEM_PROTECT, MEM | (0 << 32), D1H, PAGE_A, 1, slot=S + 8)            # D1: no access
                 + kvm(H.MEM_PROTECT, MEM | (R << 32) | (1 << 36), D1H, PAGE_B, 1, slot=S + 16)  # D1: R, one-way
                 + kvm(H.MEM_PROTECT, MEM | ((R | W) << 32), D1H, PAGE_B, 1, slot=S + 24)      # cannot undo
                 + kvm(H.MEM_PROTECT, MEM | (R << 32), D1H, PAGE_A + 4, 1, slot=S + 32)        # misaligned
                 + call(D1H)
                 + f"mov r15, {PAGE_A:#x}\nmov rax, [r15]\nmov [{S + 40:#x}], rax\n",       # D0 still reads it
                 d1=resume("a") + f"mov r15, {PAGE_A:#x}\nmov rax, [r15]\na:\n"
                 + resume("b") + f"mov r15, {PAGE_B:#x}\nmov qword ptr [r15], 1\nb:\n"
                 + f"mov r15, {PAGE_B:#x}\nmov rax, [r15]\nmov r15, {S + 0x300:#x}\nmov [r15], rax\n"
                 + f"mov r14, {RESUME:#x}\nmov qword ptr [r14], 0\n" + ret())
    g.part.memory.write_u64(PAGE_A, 0xAAAA)
    g.part.memory.write_u64(PAGE_B, 0xBBBB)
    g.run()
    assert [g.u64(S + o) for o in (8, 16, 24, 32)] == [0, 0, neg(EPERM), neg(EINVAL)]
    log = g.log()
    assert [e[0] for e in log] == [GP, GP]                      # both violations: #GP in D1
    assert g.u64(PAGE_B) == 0xBBBB and g.u64(S + 0x300) == 0xBBBB and g.u64(S + 40) == 0xAAAA


def test_delegation_attenuation_forged_stale_and_revocation():
    g = DomGuest(CREATE_D1
                 + f"mov qword ptr [{0x70000:#x}], {PAGE_A:#x}\nmov qword ptr [{0x70008:#x}], {PAGE_A + 0x1000:#x}\n"
                 + kvm(H.CAP_DELEGATE, MEM, D1H, R | W, 0x70000, slot=S)            # narrowed mem cap -> D1
                 + kvm(H.CAP_DELEGATE, SELF, D1H, 0, 0, slot=S + 8)                 # D1 may name D0
                 + kvm(H.CAP_DELEGATE, MEM, D1H, R | W | X | IMM | DEL | 0x1000, 0, slot=S + 16)   # amplify: no
                 + kvm(H.CAP_QUERY, 0x1234, slot=S + 24)                          # forged handle
                 + call(D1H)
                 + resume("a") + f"mov r15, {PAGE_A:#x}\nmov qword ptr [r15], 5\na:\n"   # D1 made it R-only
                 + f"mov r14, {RESUME:#x}\nmov qword ptr [r14], 0\n"
                 + kvm(H.CAP_REVOKE, MEM, slot=S + 32)                            # recursive: D1's copy dies
                 + call(D1H),
                 d1=kvm(H.CAP_QUERY, 1, slot=S + 0x400)
                 + f"mov r15, {S + 0x408:#x}\nmov [r15], rbx\nmov [r15+8], rcx\n"
                 + kvm(H.MEM_PROTECT, 1 | (R << 32), 2, PAGE_A, 1, slot=S + 0x418)          # ok: D0 page R-only
                 + kvm(H.MEM_PROTECT, 1 | (R << 32), 2, PAGE_A + 0x1000, 1, slot=S + 0x420)  # outside range
                 + kvm(H.MEM_PROTECT, 1 | ((R | W | X) << 32), 2, PAGE_A, 1, slot=S + 0x428)  # X not granted
                 + kvm(H.MEM_PROTECT, 1 | (R << 32) | (1 << 36), 2, PAGE_A, 1, slot=S + 0x430)  # no IMMUTABLE
                 + kvm(H.CAP_DELEGATE, 1, 2, R, 0, slot=S + 0x438)                          # no DELEGATE
                 + ret()
                 + kvm(H.CAP_QUERY, 1, slot=S + 0x440)                                      # after revoke
                 + ret())
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert g.u64(S) == 1 and g.u64(S + 8) == 2                       # handles in D1's table
    assert g.u64(S + 16) == neg(EPERM) and g.u64(S + 24) == neg(EBADF)
    q = g.u64(S + 0x400)
    assert q & 0xFF == CapType.MEMORY and (q >> 8) & 0xFFFFFF == R | W
    assert (g.u64(S + 0x408), g.u64(S + 0x410)) == (PAGE_A, PAGE_A + 0x1000)
    assert g.u64(S + 0x418) == 0
    assert [g.u64(S + o) for o in (0x420, 0x428, 0x430, 0x438)] == [neg(EPERM)] * 4
    assert [e[0] for e in g.log()] == [GP] and g.u64(PAGE_A) == 0   # D0's write was blocked by D1's grant
    assert g.u64(S + 32) == 0 and g.u64(S + 0x440) == neg(EBADF)    # revoked -> stale handle


def test_recursive_revocation_through_three_domains():
    g = DomGuest(CREATE_D1 + kvm(H.DOMAIN_CREATE, D2_CODE, D2_STACK, slot=S + 8))     # handles D1H, D2H
    g.run()
    dm = g.part.domains
    dm.current = 0
    h1 = dm.hc_delegate(g.part.vcpu, MEM, D1H, R | W | DEL, 0)                # D0 -> D1
    dm.hc_delegate(g.part.vcpu, D2H, D1H, 0, 0)                                # D1 may name D2
    dm.current = 1
    h2 = dm.hc_delegate(g.part.vcpu, h1, 2, R | DEL, 0)                     # D1 -> D2, attenuated
    dm.current = 2
    h3 = dm.hc_delegate(g.part.vcpu, h2, 0, R, 0)                           # D2 -> D2's own table
    assert dm.lookup(h3).rights == R
    dm.current = 0
    dm.hc_revoke(g.part.vcpu, MEM)
    for dom, h in ((1, h1), (2, h2), (2, h3)):
        dm.current = dom
        with pytest.raises(Exception) as e:
            dm.lookup(h)
        assert e.value.errno == EBADF
    dm.current = 0
    assert dm.lookup(MEM).type == CapType.MEMORY                            # revoke keeps the root cap


def test_intercept_capability_cr4_inject_and_complete():
    smep = 1 << 20
    g = DomGuest(CREATE_D1
                 + kvm(H.CAP_DELEGATE, I_CR4, D1H, 0, 0, slot=S) + kvm(H.CAP_DELEGATE, SELF, D1H, 0, 0, slot=S + 8)
                 + "mov rdi, 0\n" + call(D1H)                                      # D1 arms the intercept
                 + f"mov rax, cr4\nmov [{S + 16:#x}], rax\n"
                 + resume("a") + "mov rax, cr4\nbts rax, 20\nmov cr4, rax\na:\n"  # D1 says: inject #GP
                 + f"mov r14, {RESUME:#x}\nmov qword ptr [r14], 0\n"
                 + f"mov rax, cr4\nmov [{S + 24:#x}], rax\n"
                 + "mov rax, cr4\nbts rax, 11\nmov cr4, rax\n"                 # UMIP: D1 lets it complete
                 + f"mov rax, cr4\nmov [{S + 32:#x}], rax\n",
                 d1=kvm(H.INTERCEPT_SET, 1, 2, 1, slot=S + 0x500) + ret()
                 + "event:\n"
                 + f"mov r15, {S + 0x508:#x}\nmov [r15], rdi\nmov [r15+8], rsi\nmov [r15+16], rdx\n"
                 + "bt rsi, 20\njnc allow\n" + ret(1) + "jmp event\nallow:\n" + ret(2) + "jmp event\n")
    r = g.run()
    assert r.exit_status == 1, g.part.vcpu.state_dump()
    assert g.u64(S + 0x500) == 0
    assert [e[0] for e in g.log()] == [GP]
    assert g.u64(S + 24) == g.u64(S + 16) and not g.u64(S + 24) & smep      # CR4 unchanged
    assert g.u64(S + 32) & (1 << 11)                                        # completed by D1's decision
    # the last event D1 saw: CR_WRITE of UMIP from domain 0
    assert g.u64(S + 0x508) == 1 and g.u64(S + 0x510) & (1 << 11) and g.u64(S + 0x518) == 0


def test_pin_capability_and_creation_needs_create():
    g = DomGuest("mov rax, cr4\nbts rax, 20\nmov cr4, rax\n"
                 + kvm(H.CR_PIN, PIN_CR4, 4, 1 << 20, slot=S) + kvm(H.CR_PIN, PIN_CR4, 4, 1 << 5, slot=S + 8)
                 + kvm(H.DOMAIN_CREATE, D1_CODE, D1_STACK, slot=S + 24) + call(D1H),
                 d1=kvm(H.DOMAIN_CREATE, D2_CODE, D2_STACK, slot=S + 16) + ret())
    g.run()
    assert g.u64(S) == 0 and g.u64(S + 8) == neg(EPERM)
    assert g.part.crpin.pins.cr4_high == 1 << 20
    assert g.u64(S + 16) == neg(EPERM)                                      # D1 holds no CREATE


def test_tcb_comparison_compromised_vtl1_vs_compromised_domain():
    """VSM: code running in VTL1 can rewrite every VTL0 protection and register. Domains: code running
    in a credential domain holding only its service capability can do neither."""
    from vsmguest import ENABLE_VTL1, IN, SETUP_VTL0, VsmGuest, control, protect_input, regs_input, vtl_call

    from vtlvisor.abi.hyperv import HvCallCode, HvRegisterName
    v = VsmGuest(SETUP_VTL0 + ENABLE_VTL1 + "mov r12, " + hex(control(HvCallCode.HvCallModifyVtlProtectionMask, 1))
                 + "\n" + vtl_call(2) + "mov r13, " + hex(control(HvCallCode.HvCallSetVpRegisters, 1)) + "\n"
                 + vtl_call(3))
    v.part.memory.write(IN(2), protect_input(0xF, [0x100]))                 # VTL1 makes VTL0 text writable
    v.part.memory.write(IN(3), regs_input(0, [(HvRegisterName.HvX64RegisterCr4, 0x620)]))
    v.run()
    from vsmguest import V1LOG
    assert v.u64(V1LOG + 0x808) & 0xFFFF == 0 and v.u64(V1LOG + 0x810) & 0xFFFF == 0   # both succeed

    d = DomGuest(CREATE_D1 + call(D1H),
                 d1=kvm(H.MEM_PROTECT, 1 | (7 << 32), 0, 0x100000, 1, slot=S)      # no memory capability
                 + kvm(H.REGS_SET, 1, 6, 0x620, slot=S + 8)                          # no register capability
                 + kvm(H.CR_PIN, 3, 4, 0, slot=S + 16)
                 + kvm(H.DOMAIN_CREATE, D2_CODE, D2_STACK, slot=S + 24) + ret())
    d.run()
    assert [d.u64(S + o) for o in (0, 8, 16)] == [neg(EBADF)] * 3 and d.u64(S + 24) == neg(EPERM)


def test_policy_file_limits_the_boot_domain(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text('[initial]\ncreate = false\nmemory = [{start = 0, end = 0x100000, rights = "R"}]\n'
                 'pins = [{cr = 4, bits = 0x100000}]\n')
    g = DomGuest(kvm(H.DOMAIN_CREATE, D1_CODE, D1_STACK, slot=S) + kvm(H.CAP_QUERY, 1, slot=S + 8),
                 domain_policy=str(p))
    g.run()
    assert g.u64(S) == neg(EPERM)
    assert g.u64(S + 8) & 0xFF == CapType.MEMORY and (g.u64(S + 8) >> 8) & 0xFFFFFF == CapRights.R
    for bad, msg in (('[initial]\nmemory = [{start = 1, end = 2}]\n', "page-aligned"),
                     ('[initial]\nfrobs = 1\n', "unknown key"),
                     ('[initial]\npins = [{cr = 4, bits = 0x20}]\n', "not pinnable"),
                     ('nonsense = [', "policy"),
                     ('[initial]\nintercepts = [{kind = "cr9"}]\n', "kind must be")):
        p.write_text(bad)
        with pytest.raises(ConfigError, match=msg):
            Policy.load(str(p), 16 << 20)


def _chain(first: str, links: int, tail_to: int, label: str) -> str:
    """Delegate the capability `first` to oneself `links` times (each copy derived from the last), then
    the last copy to the domain named by handle `tail_to`."""
    def deleg(recipient: str) -> str:
        return (f"mov rax, {H.CAP_DELEGATE:#x}\nmov rbx, r12\nmov rcx, {recipient}\nmov edx, {R | DEL}\n"
                "xor esi, esi\n.byte 0x0f, 0x01, 0xd9\n")
    return (f"mov r12, {first}\nmov r13, {links}\n{label}:\n" + deleg("0") + "mov r12, rax\ndec r13\n"
            f"jnz {label}\n" + deleg(str(tail_to)))


def test_revoking_a_derivation_chain_deeper_than_pythons_recursion_limit():
    """Five domains pass a MEMORY capability along a chain of ~1240 derivations; revoking the root is an
    ordinary hypercall (it once recursed once per link: RecursionError, an internal error of the run)."""
    # D1-D4 run the same code: slot 1 names the next domain (D4's names D0), slot 2 is the chain so far
    g = DomGuest("".join(kvm(H.DOMAIN_CREATE, D1_CODE, D1_STACK) for _ in range(4))      # handles 10-13
                 + kvm(H.CAP_DELEGATE, 11, 10, 0) + kvm(H.CAP_DELEGATE, 12, 11, 0)
                 + kvm(H.CAP_DELEGATE, 13, 12, 0) + kvm(H.CAP_DELEGATE, SELF, 13, 0)
                 + _chain(str(MEM), 240, 10, "d0") + "".join(call(h) for h in (10, 11, 12, 13))
                 + kvm(H.CAP_QUERY, 254, slot=S)              # the chain's end, back in D0's table (slot 254)
                 + kvm(H.CAP_REVOKE, MEM, slot=S + 8),
                 d1=_chain("2", 250, 1, "dk") + ret())
    r = g.run(timeout=60)
    assert r.exit_status == 1, (r, g.part.vcpu.state_dump())
    dm = g.part.domains
    assert g.u64(S) & 0xFF == CapType.MEMORY and g.u64(S + 8) == 0
    # only the roots survive: the policy's 10, D0's 4 domain handles, D1-D4's own names and next-domain names
    assert len(dm.caps) == 10 + 4 + 4 + 4 and dm.lookup(MEM).children == []


def test_regs_set_refuses_a_cr3_with_reserved_bits():
    """REGS_SET CR3 refuses what MOV CR3 refuses: bits above MAXPHYADDR (it once stored them, and the callee's
    first page walk machine-checked the whole partition)."""
    g = DomGuest(CREATE_D1 + kvm(H.REGS_SET, D1H, DomainReg.CR3, M64 & ~0xFFF, slot=S)
                 + kvm(H.REGS_SET, D1H, DomainReg.CR3, 1 << 40, slot=S + 8) + call(D1H),
                 d1=f"mov qword ptr [{S + 16:#x}], 1\n" + ret())
    r = g.run()
    assert r.exit_status == 1, (r, g.part.vcpu.state_dump())
    assert [g.u64(S + o) for o in (0, 8, 16)] == [neg(EINVAL), neg(EINVAL), 1]
    assert any("REGS_SET" in line and "MAXPHYADDR" in line for line in g.part.vcpu.security.lines())
