"""Case generators, one per guest-facing interface, each with its architectural oracles.

A generator takes a ``random.Random`` and returns ``(ops, GuestConfig)``. Every op records what its
oracle needs (values before/after, a success marker) in its result slots (``guest.res(i, k)``); the
oracle ``check(view)`` returns None or a one-line description of the architectural violation.

Slot conventions: 0/1 values, 2 success marker (1 when the op's last instruction completed).
"""

from __future__ import annotations

import random
import struct

from vtlvisor.abi.hyperv import HvCallCode, HvRegisterName, HvStatus
from vtlvisor.abi.kvm_pv import KvmMsr
from vtlvisor.engine.engine import HYP_BASE
from vtlvisor.hv.partition import APIC_BASE
from vtlvisor.x86.arch import MSR

from .guest import (
    CANARY,
    FREE_IN,
    IN,
    MEMORY,
    OUT,
    PML4,
    PTAREA,
    RANDAREA,
    SCRATCH,
    SELF,
    URES,
    VTL1_PRIVATE,
    GuestConfig,
    Op,
    OpView,
    control,
    res,
    vtl_call,
)

GP, UD, PF, DF = 13, 6, 14, 8
M64 = (1 << 64) - 1
ET, TS, PE, PG, NW, CD, WP = 1 << 4, 1 << 3, 1, 1 << 31, 1 << 29, 1 << 30, 1 << 16
PIN_MSRS = (KvmMsr.CR0_PINNED_LOW, KvmMsr.CR0_PINNED_HIGH, KvmMsr.CR4_PINNED_LOW, KvmMsr.CR4_PINNED_HIGH)
KVM_ENOSYS, KVM_EPERM, KVM_EINVAL = (-1000) & M64, (-1) & M64, (-22) & M64
HV_STATUSES = {int(s) for s in HvStatus}


# ====================================================================== helpers
def st(slot_addr: int, reg: str = "rax") -> str:
    return f"mov rbx, {slot_addr:#x}\nmov [rbx], {reg}\n"


def mark(i: int, k: int = 2) -> str:
    return f"mov rbx, {res(i, k):#x}\nmov qword ptr [rbx], 1\n"


def save_pins(i: int, first: int, cr_pin: bool) -> str:
    """rdmsr the four pin MSRs into slots first..first+3 (only when the ABI is offered)."""
    if not cr_pin:
        return ""
    return "".join(f"mov ecx, {m:#x}\nrdmsr\nshl rdx, 32\nor rax, rdx\n" + st(res(i, first + k))
                   for k, m in enumerate(PIN_MSRS))


def movabs(reg: str, value: int) -> str:
    return f"mov {reg}, {value & M64:#x}\n"


def pick(rng: random.Random, weighted: list[tuple[float, object]]):
    total = sum(w for w, _ in weighted)
    x = rng.random() * total
    for w, v in weighted:
        x -= w
        if x <= 0:
            return v
    return weighted[-1][1]


def interesting64(rng: random.Random) -> int:
    return pick(rng, [
        (3, 0), (2, 1), (1, M64), (2, rng.getrandbits(64)), (2, rng.getrandbits(32)),
        (1, 1 << rng.randrange(64)), (1, (1 << 47) - 1), (1, 1 << 47), (1, 0xFFFF800000000000),
        (1, rng.getrandbits(12)), (1, 0x8000000000000000), (1, 0x7FFFFFFFFFFFFFFF)])


def faults_only(view: OpView, vectors: list[int]) -> str | None:
    got = view.vectors()
    return None if got == vectors else f"faults {got} (expected {vectors})"


def expect_gp0(view: OpView, what: str, user: bool = False) -> str | None:
    f = view.faults
    if len(f) != 1 or f[0][0] != GP or f[0][1] != 0 or (user and f[0][3] != 0x2B):
        return f"{what}: expected exactly #GP(0), got {[(v, e) for v, e, *_ in f]}"
    return None


def msr_undefined(n: int) -> bool:
    """MSR numbers no x86 CPU or paravirtual ABI defines: must #GP."""
    return not (n <= 0x1FFF or 0xC0000000 <= n <= 0xC001FFFF or 0x40000000 <= n <= 0x400001FF
                or 0x4B564D00 <= n <= 0x4B564DFF)


def canonical(v: int) -> bool:
    v &= M64
    return v < (1 << 47) or v >= 0xFFFF800000000000


# ====================================================================== MSRs
KNOWN_MSRS = sorted({int(m) for m in MSR} | {int(m) for m in KvmMsr} | {
    0x40000000, 0x40000001, 0x40000002, 0x40000040, 0x40000073, 0x40000080, 0x40000081, 0x40000082,
    0x40000083, 0x40000084, *range(0x40000090, 0x400000A0), *range(0x200, 0x210), 0x250, 0x258, 0x259,
    *range(0x268, 0x270), 0x2FF, 0xFE, 0x17, 0x8B, 0x179, 0x17A, 0x1A0, 0xC0010114, 0xC0010117,
    0x10, 0x1B, 0xC0000080, 0xC0000103})
CANON_RT = {MSR.IA32_LSTAR, MSR.IA32_CSTAR, MSR.IA32_KERNEL_GS_BASE, MSR.IA32_FS_BASE, MSR.IA32_GS_BASE}


def gen_msr_number(rng: random.Random) -> int:
    return pick(rng, [
        (6, rng.choice(KNOWN_MSRS)), (2, (rng.choice(KNOWN_MSRS) + rng.choice((-1, 1))) & 0xFFFFFFFF),
        (3, rng.getrandbits(32)), (1, rng.randrange(0x2000)), (1, 0xC0000000 + rng.randrange(0x2000)),
        (1, 0x40000000 + rng.randrange(0x200)), (1, 0x4B564D00 + rng.randrange(0x100)),
        (1, rng.getrandbits(64))])          # ECX's upper half must be ignored


def gen_msr_value(rng: random.Random, msr: int) -> int:
    if msr == MSR.IA32_EFER:
        return pick(rng, [(4, 0xD01 ^ (1 << rng.randrange(16))), (1, 0xD01), (1, 0x1D01), (1, rng.getrandbits(64)),
                          (1, 0x501), (1, 0xC01)])
    if msr in PIN_MSRS:
        return pick(rng, [(3, 1 << 16), (3, 1 << rng.choice((11, 16, 20, 21))), (2, rng.getrandbits(24)),
                          (1, 0), (1, rng.getrandbits(64))])
    if msr == MSR.IA32_APIC_BASE:
        return pick(rng, [(3, APIC_BASE | 0x900), (1, APIC_BASE | 0x100), (1, rng.getrandbits(64)),
                          (1, 0x1000 | 0x900)])
    return interesting64(rng)


def op_msr(rng: random.Random, i: int, cr_pin: bool) -> Op:
    msr = gen_msr_number(rng)
    ecx = msr & 0xFFFFFFFF
    write = rng.random() < 0.5
    if rng.random() < 0.05:
        return Op("msr", user=f"{movabs('rcx', msr)}{'wrmsr' if write else 'rdmsr'}\n",
                  check=lambda v: expect_gp0(v, "rdmsr/wrmsr at CPL3", user=True), desc=f"ring3 msr {ecx:#x}")
    if not write:
        src = movabs("rcx", msr) + "rdmsr\n" + st(res(i, 0)) + st(res(i, 1), "rdx") + mark(i)

        def check(v: OpView) -> str | None:
            if msr_undefined(ecx):
                return expect_gp0(v, f"rdmsr of undefined MSR {ecx:#x}")
            if ecx == MSR.IA32_EFER and v.slots[2] and v.slots[0] & (1 << 12):
                return "rdmsr EFER shows SVME"
            return None
        return Op("msr", asm=src, check=check, desc=f"rdmsr {ecx:#x}")
    value = gen_msr_value(rng, ecx)
    src = ""
    if ecx in PIN_MSRS:
        src += save_pins(i, 4, cr_pin)
    elif ecx == MSR.IA32_EFER:
        src += "mov ecx, 0xC0000080\nrdmsr\n" + st(res(i, 4)) + "mov rax, cr0\n" + st(res(i, 5))
    src += movabs("rcx", msr) + f"mov eax, {value & 0xFFFFFFFF:#x}\nmov edx, {value >> 32:#x}\nwrmsr\n" + mark(i)
    src += movabs("rcx", msr) + "rdmsr\n" + st(res(i, 0)) + st(res(i, 1), "rdx") + mark(i, 3)

    def check(v: OpView) -> str | None:
        ok, back = v.slots[2], v.slots[0] & 0xFFFFFFFF | (v.slots[1] & 0xFFFFFFFF) << 32
        if msr_undefined(ecx):
            return expect_gp0(v, f"wrmsr of undefined MSR {ecx:#x}")
        if ecx in CANON_RT:
            if not canonical(value):
                return expect_gp0(v, f"wrmsr {ecx:#x} non-canonical {value:#x}")
            if not ok or back != value:
                return f"wrmsr {ecx:#x} {value:#x}: ok={ok} read back {back:#x} faults {v.vectors()}"
        if ecx == MSR.IA32_STAR and (not ok or back != value):
            return f"wrmsr STAR {value:#x}: ok={ok} read back {back:#x}"
        if ecx == MSR.IA32_TSC_AUX:
            if value >> 32:
                return expect_gp0(v, f"wrmsr TSC_AUX {value:#x}")
            if not ok or back != value:
                return f"wrmsr TSC_AUX {value:#x}: ok={ok} read back {back:#x}"
        if ecx == MSR.IA32_EFER:
            pre, cr0 = v.slots[4], v.slots[5]
            must_gp = value & ~0xFD01 & M64 or value & (1 << 12) or (cr0 & PG and (value ^ pre) & 0x100)
            if must_gp:
                return expect_gp0(v, f"wrmsr EFER {value:#x} (reserved/SVME/LME change with paging)")
            if ok and (back & (1 << 12) or (back ^ pre) & (1 << 10)):
                return f"wrmsr EFER {value:#x}: read back {back:#x} (SVME visible or LMA changed)"
        if ecx in PIN_MSRS and cr_pin:
            pins = v.slots[4:8]
            k = PIN_MSRS.index(ecx)
            allowed = (1 << 16) if k < 2 else (1 << 11) | (1 << 16) | (1 << 20) | (1 << 21)
            other = pins[k ^ 1]
            bad = value & ~allowed or pins[k] & ~value or value & other
            if bad:
                return expect_gp0(v, f"wrmsr pin MSR {ecx:#x} {value:#x} over pins {[hex(p) for p in pins]}")
            if not ok or back != value:
                return f"wrmsr pin MSR {ecx:#x} {value:#x}: ok={ok} back {back:#x}"
        return None
    return Op("msr", asm=src, check=check, desc=f"wrmsr {ecx:#x} {value:#x}")


def gen_msr(rng: random.Random):
    cfg = GuestConfig(hyperv=rng.random() < 0.3, cr_pin=rng.random() < 0.8)
    n = rng.randrange(4, 24)
    return [op_msr(rng, i, cfg.cr_pin) for i in range(n)], cfg


# ====================================================================== control registers
def cpuid_bit(part, leaf: int, reg: int, bit: int) -> bool:
    return bool(part.cpuid.query(leaf, 0, part.engine.reg("cr4"))[reg] >> bit & 1)


def cr4_supported(part) -> int:
    """CR4 bits whose feature the guest's CPUID advertises (SDM 2.5 / APM 3.1.3)."""
    b, c, d = 1, 2, 3                                 # CPUID output register indices (EAX = 0)
    feats = {0: (1, d, 1), 1: (1, d, 1), 2: (1, d, 4), 3: (1, d, 2), 4: (1, d, 3), 5: (1, d, 6), 6: (1, d, 7),
             7: (1, d, 13), 9: (1, d, 24), 10: (1, d, 25), 11: (7, c, 2), 12: (7, c, 16), 13: (1, c, 5),
             14: (1, c, 6), 16: (7, b, 0), 17: (1, c, 17), 18: (1, c, 26), 20: (7, b, 7), 21: (7, b, 20),
             22: (7, c, 3), 23: (7, c, 7), 24: (7, c, 31)}
    mask = 1 << 8                                     # PCE: no CPUID bit
    for bit, (leaf, reg, fb) in feats.items():
        if cpuid_bit(part, leaf, reg, fb):
            mask |= 1 << bit
    return mask


def _cr0_must_gp(pre: int, new: int, pins: list[int]) -> str | None:
    if new >> 32:
        return "upper half set"
    if new & PG and not new & PE:
        return "PG without PE"
    if new & NW and not new & CD:
        return "NW without CD"
    if not new & PG:
        return "clearing PG in 64-bit mode"
    if new & pins[0] or (new & pins[1]) != pins[1]:
        return "pinned bits"
    return None


def op_cr(rng: random.Random, i: int, cr_pin: bool) -> Op:
    kind = pick(rng, [(5, "cr0"), (6, "cr4"), (3, "cr8"), (2, "lmsw"), (1, "clts"), (1, "user"),
                      (2 if cr_pin else 0, "pin")])
    pre = save_pins(i, 4, cr_pin)
    if kind == "user":
        insn = rng.choice(["mov cr0, rax", "mov cr4, rax", "mov cr8, rax", "mov rax, cr8", "clts", "lmsw ax",
                           "mov rax, cr0", "mov cr3, rax"])
        if insn == "mov rax, cr0":
            return Op("cr", user="mov rax, cr0\n", check=lambda v: expect_gp0(v, "mov from CR0 at CPL3", True))
        return Op("cr", user=f"xor eax, eax\n{insn}\n", check=lambda v: expect_gp0(v, f"{insn} at CPL3", True),
                  desc=f"ring3 {insn}")
    if kind == "pin":
        # arm a pin the current value satisfies (CR0.WP or a set CR4 bit), through the MSR or Heki
        bit = rng.choice([(0, 1 << 16), (4, 1 << 20), (4, 1 << 11), (4, 1 << 16)])
        cr, b = bit
        src = f"mov rax, cr{cr}\n" + st(res(i, 0)) + f"mov rax, cr{cr}\nor rax, {b:#x}\nmov cr{cr}, rax\n"
        if cr_pin and rng.random() < 0.5:
            src += f"mov ecx, {PIN_MSRS[1 if cr == 0 else 3]:#x}\nrdmsr\nor eax, {b:#x}\nwrmsr\n" + mark(i)
        else:
            src += f"mov eax, 13\nmov ebx, {cr}\nmov ecx, {b:#x}\nxor edx, edx\nvmmcall\n" + st(res(i, 1)) + mark(i)
        return Op("cr", asm=src, check=lambda v: None, desc=f"pin CR{cr} {b:#x}")
    if kind in ("cr0", "cr4"):
        bits = [0, 1, 2, 3, 5, 16, 18, 29, 30, 31, 4] if kind == "cr0" else list(range(25)) + [30]
        xor = 0
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            xor |= 1 << rng.choice(bits)
        if rng.random() < 0.1:
            xor = rng.getrandbits(64) if rng.random() < 0.5 else 1 << rng.randrange(64)
        src = pre + f"mov rax, {kind}\n" + st(res(i, 0)) + movabs("rcx", xor) + f"xor rax, rcx\nmov {kind}, rax\n"
        src += mark(i) + f"mov rax, {kind}\n" + st(res(i, 1))

        def check(v: OpView) -> str | None:
            p, post, ok = v.slots[0], v.slots[1], v.slots[2]
            new = p ^ xor
            pins = v.slots[4:8] if cr_pin else [0, 0, 0, 0]
            if kind == "cr0":
                why = _cr0_must_gp(p, new, pins)
                if why is None and new & ~0xE005003F & 0xFFFFFFFF:
                    return None                          # CR0 low reserved bits: ignored or #GP
            else:
                sup = cr4_supported(v.guest.part)
                why = None
                if new >> 32:
                    why = "upper half set"
                elif new & ~sup & ~0x3FFF7FF:
                    why = f"reserved bits {new & ~sup & ~0x3FFF7FF:#x}"
                elif new & ~sup:
                    why = f"bits of features CPUID does not advertise {new & ~sup:#x}"
                elif not new & (1 << 5):
                    why = "clearing PAE in long mode"
                elif (p ^ new) & (1 << 12):
                    why = "changing LA57 in long mode"
                elif new & pins[2] or (new & pins[3]) != pins[3]:
                    why = "pinned bits"
            if why is not None:
                err = expect_gp0(v, f"{kind} {p:#x} -> {new:#x} ({why})")
                return err
            want = new | ET if kind == "cr0" else new
            if not ok or v.faults or post != want:
                return f"{kind} {p:#x} -> {new:#x}: ok={ok} faults={v.vectors()} read back {post:#x}"
            return None
        return Op("cr", asm=src, check=check, desc=f"{kind} ^= {xor:#x}")
    if kind == "cr8":
        value = pick(rng, [(4, rng.randrange(16)), (1, rng.getrandbits(64)), (1, 16 << rng.randrange(59))])
        src = "mov rax, cr8\n" + st(res(i, 0)) + movabs("rax", value) + "mov cr8, rax\n" + mark(i)
        src += "mov rax, cr8\n" + st(res(i, 1))

        def check(v: OpView) -> str | None:
            if value >> 4:
                return expect_gp0(v, f"mov cr8, {value:#x}")
            if not v.slots[2] or v.slots[1] != value:
                return f"mov cr8, {value:#x}: read back {v.slots[1]:#x} faults {v.vectors()}"
            return None
        return Op("cr", asm=src, check=check, desc=f"cr8 {value:#x}")
    if kind == "lmsw":
        value = rng.getrandbits(16)
        mem = rng.random() < 0.5
        src = "mov rax, cr0\n" + st(res(i, 0))
        src += (f"mov rbx, {SCRATCH + 0x100:#x}\nmov word ptr [rbx], {value:#x}\nlmsw [rbx]\n" if mem
                else f"mov eax, {value:#x}\nlmsw ax\n") + mark(i) + "mov rax, cr0\n" + st(res(i, 1))

        def check(v: OpView) -> str | None:
            p = v.slots[0]
            want = (p & ~0xE) | (value & 0xF) | (p & 1)
            if not v.slots[2] or v.faults or v.slots[1] != want:
                return f"lmsw {value:#x} over {p:#x}: read back {v.slots[1]:#x} faults {v.vectors()}"
            return None
        return Op("cr", asm=src, check=check, desc=f"lmsw {value:#x}")
    src = "mov rax, cr0\n" + st(res(i, 0)) + "clts\n" + mark(i) + "mov rax, cr0\n" + st(res(i, 1))

    def check(v: OpView) -> str | None:
        if not v.slots[2] or v.slots[1] != v.slots[0] & ~TS:
            return f"clts over {v.slots[0]:#x}: read back {v.slots[1]:#x} faults {v.vectors()}"
        return None
    return Op("cr", asm=src, check=check, desc="clts")


def gen_cr(rng: random.Random):
    cfg = GuestConfig(hyperv=rng.random() < 0.2, cr_pin=rng.random() < 0.8)
    n = rng.randrange(4, 24)
    return [op_cr(rng, i, cfg.cr_pin) for i in range(n)], cfg


# ====================================================================== KVM hypercalls
def op_kvm(rng: random.Random, i: int, cr_pin: bool, routed_to_kvm: bool) -> Op:
    nr = pick(rng, [(4, 13), (3, rng.randrange(16)), (2, rng.getrandbits(32)), (1, rng.getrandbits(64)),
                    (1, (13 | (1 << 32)))])
    args = [pick(rng, [(3, rng.choice((0, 4))), (2, rng.choice((1 << 16, 1 << 20, 1 << 11, 1 << 21, 1 << 16 | 1 << 20)))
                       , (2, interesting64(rng))]) for _ in range(4)]
    args[2] = pick(rng, [(5, 0), (1, 1), (1, interesting64(rng))])
    insn = rng.choice(["vmmcall", "vmmcall", "vmcall"])
    regs = "".join(movabs(r, a) for r, a in zip(("rbx", "rcx", "rdx", "rsi"), args, strict=True))
    if rng.random() < 0.1:
        slot = URES + 8 * i
        src = movabs("rax", nr) + regs + f"{insn}\nmov rbx, {slot:#x}\nmov [rbx], rax\n"

        def check_user(v: OpView) -> str | None:
            if v.vectors() != [UD]:
                return f"KVM hypercall {nr:#x} at CPL3 faulted: {v.vectors()}"
            ret = v.guest.u64(slot)
            return None if ret == KVM_EPERM else f"KVM hypercall {nr:#x} at CPL3 returned {ret:#x}, not -KVM_EPERM"
        return Op("kvm", user=src, check=check_user, desc=f"ring3 kvm nr {nr:#x} {insn}")
    src = save_pins(i, 4, cr_pin) + "mov rax, cr0\n" + st(res(i, 8)) + "mov rax, cr4\n" + st(res(i, 9))
    src += movabs("rax", nr) + regs + f"{insn}\n" + st(res(i, 0)) + mark(i) + save_pins(i, 10, cr_pin)

    def check(v: OpView) -> str | None:
        if not routed_to_kvm:
            return None
        ret, ok = v.slots[0], v.slots[2]
        if not ok or v.faults:
            return f"KVM hypercall nr {nr:#x}: faults {v.vectors()}"
        if nr != 13:
            return None if ret == KVM_ENOSYS else f"unknown KVM hypercall {nr:#x} returned {ret:#x}, not -1000"
        if ret not in (0, 1, KVM_EINVAL):
            return f"KVM_HC_LOCK_CR_UPDATE{tuple(hex(a) for a in args[:3])} returned {ret:#x}"
        if cr_pin:
            before, after = v.slots[4:8], v.slots[10:14]
            if ret != 0 and before != after:
                return f"failed KVM_HC_LOCK_CR_UPDATE changed pins {before} -> {after}"
            cr, mask = args[0], args[1]
            if ret == 0:
                k = 1 if cr == 0 else 3
                if (after[k] & mask) != mask:
                    return f"KVM_HC_LOCK_CR_UPDATE(CR{cr}, {mask:#x}) returned 0 but pins are {after}"
                cur = v.slots[8] if cr == 0 else v.slots[9]
                if mask & ~cur:
                    return f"KVM_HC_LOCK_CR_UPDATE locked bits {mask & ~cur:#x} that are clear in CR{cr}"
        return None
    return Op("kvm", asm=src, check=check, desc=f"kvm nr {nr:#x} {insn} {[hex(a) for a in args]}")


def gen_kvm(rng: random.Random):
    hyperv = rng.random() < 0.3
    cfg = GuestConfig(hyperv=hyperv, hv_setup=False, cr_pin=rng.random() < 0.8)
    n = rng.randrange(4, 24)
    return [op_kvm(rng, i, cfg.cr_pin, True) for i in range(n)], cfg


# ====================================================================== Hyper-V hypercalls
REG_NAMES = [int(n) for n in HvRegisterName]
SAFE_SET = [n for n in REG_NAMES if n not in (
    HvRegisterName.HvX64RegisterRip, HvRegisterName.HvX64RegisterRsp, HvRegisterName.HvX64RegisterCr0,
    HvRegisterName.HvX64RegisterCr3, HvRegisterName.HvX64RegisterCr4, HvRegisterName.HvX64RegisterCs,
    HvRegisterName.HvX64RegisterSs, HvRegisterName.HvX64RegisterGdtr, HvRegisterName.HvX64RegisterIdtr,
    HvRegisterName.HvX64RegisterTr, HvRegisterName.HvX64RegisterEfer, HvRegisterName.HvX64RegisterRflags,
    HvRegisterName.HvX64RegisterDs, HvRegisterName.HvX64RegisterEs, HvRegisterName.HvRegisterPendingEvent0,
    HvRegisterName.HvX64RegisterApicBase, HvRegisterName.HvX64RegisterPat,
    HvRegisterName.HvX64RegisterRax, HvRegisterName.HvX64RegisterRbx, HvRegisterName.HvX64RegisterRcx,
    HvRegisterName.HvX64RegisterRdx, HvRegisterName.HvX64RegisterR8)]


def hv_input(rng: random.Random, code: int, reps: int, safe_gpns: tuple[int, int]) -> bytes:
    """A plausible input page for ``code`` (then mutated), or random bytes."""
    if rng.random() < 0.15:
        return rng.randbytes(rng.choice((16, 64, 4096)))
    pid = SELF if rng.random() < 0.9 else interesting64(rng)
    vtl = pick(rng, [(3, 0x10), (2, 0x11), (2, 0), (1, rng.getrandbits(8)), (1, 0x12), (1, 0x1F)])
    if code == HvCallCode.HvCallModifyVtlProtectionMask:
        flags = pick(rng, [(3, rng.randrange(16)), (1, 0), (1, rng.getrandbits(32))])
        lo, hi = safe_gpns
        gpns = [pick(rng, [(6, rng.randrange(lo, hi)), (1, CANARY >> 12), (1, MEMORY >> 12), (0.5, rng.choice((1, 2, 3))),
                           (1, rng.getrandbits(64)), (1, rng.choice(VTL1_PRIVATE))]) for _ in range(min(reps, 500))]
        data = struct.pack("<QIB3x", pid, flags, vtl) + b"".join(struct.pack("<Q", g) for g in gpns)
    elif code == HvCallCode.HvCallGetVpRegisters:
        names = [rng.choice(REG_NAMES) if rng.random() < 0.85 else rng.getrandbits(32) for _ in range(min(reps, 1000))]
        data = struct.pack("<QIB3x", pid, rng.choice((0, 0xFFFFFFFE, 1)), vtl) + b"".join(struct.pack("<I", n) for n in names)
    elif code == HvCallCode.HvCallSetVpRegisters:
        regs = b""
        for _ in range(min(reps, 120)):
            name = rng.choice(SAFE_SET) if rng.random() < 0.9 else rng.choice(REG_NAMES + [rng.getrandbits(32)])
            regs += struct.pack("<I12x", name) + (interesting64(rng) | interesting64(rng) << 64).to_bytes(16, "little")
        data = struct.pack("<QIB3x", pid, rng.choice((0, 0xFFFFFFFE, 1)), vtl) + regs
    elif code == HvCallCode.HvCallEnablePartitionVtl:
        data = struct.pack("<QBBHI", pid, rng.choice((1, 1, 2, 0, 3, 15, 255)), rng.choice((0, 0, 1, 2)), 0, 0)
    elif code == HvCallCode.HvCallEnableVpVtl:
        ctx = bytearray(rng.randbytes(224))
        struct.pack_into("<Q", ctx, 0, rng.choice((0x180000, 0x600000, interesting64(rng))))
        data = struct.pack("<QIB3x", pid, rng.choice((0, 0xFFFFFFFE)), rng.choice((1, 2, 0, 3))) + bytes(ctx)
    elif code == HvCallCode.HvCallTranslateVirtualAddress:
        data = struct.pack("<QIIQQ", pid, rng.choice((0, 0xFFFFFFFE)), 0,
                           rng.getrandbits(8) | (rng.choice((0, 0x10, 0x11, 0xFF)) << 56),
                           pick(rng, [(3, rng.randrange(0x800)), (1, rng.getrandbits(52)), (1, 0xFEE00)]))
    else:
        data = rng.randbytes(64)
    if rng.random() < 0.2 and data:
        a = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            a[rng.randrange(len(a))] = rng.getrandbits(8)
        data = bytes(a)
    return data


def gen_control(rng: random.Random, codes: list[int]) -> tuple[int, int]:
    code = pick(rng, [(8, rng.choice(codes)), (2, rng.getrandbits(16)), (1, rng.choice((0x11, 0x12))),
                      (1, rng.randrange(0x100))])
    rep = pick(rng, [(4, 1), (2, rng.randrange(1, 16)), (1, 0), (1, 4095), (1, rng.randrange(4096))])
    start = pick(rng, [(6, 0), (1, rng.randrange(4096)), (1, max(rep - 1, 0))])
    ctl = code | (rng.random() < 0.3) << 16 | rep << 32 | start << 48
    if rng.random() < 0.1:
        ctl |= 1 << rng.choice((17, 20, 26, 27, 28, 29, 30, 31, 44, 46, 60, 63))
    if rng.random() < 0.05:
        ctl = rng.getrandbits(64)
    return ctl, ctl & 0xFFFF


def op_hv(rng: random.Random, i: int, codes: list[int], vtl1: bool, in_page: int) -> Op:
    ctl, code = gen_control(rng, codes)
    reps = (ctl >> 32) & 0xFFF
    data = hv_input(rng, code, reps, (0x400, 0x580))
    inp = pick(rng, [(8, in_page), (1, in_page + 8 * rng.randrange(1, 500)), (1, in_page + rng.randrange(1, 8)),
                     (1, CANARY), (1, MEMORY - 8), (1, interesting64(rng)), (1, (MEMORY - 0x1000) + 0xFF8)])
    out = pick(rng, [(8, OUT(i % 16)), (1, OUT(i % 16) + 0xFF8), (1, CANARY), (1, rng.choice(VTL1_PRIVATE) << 12),
                     (1, OUT(i % 16) + 4), (1, MEMORY), (1, interesting64(rng))])
    fast = bool(ctl & (1 << 16))
    if fast:
        inp, out = struct.unpack_from("<QQ", data.ljust(16, b"\0")) if rng.random() < 0.7 else (inp, out)
    via = rng.choice(["page", "page", "vmmcall", "vmcall"])
    call = "mov rax, 0x20000\ncall rax\n" if via == "page" else f"{via}\n"
    if rng.random() < 0.05:
        return Op("hv", user=f"{movabs('rcx', ctl)}{movabs('rdx', inp)}{movabs('r8', out)}vmmcall\n",
                  check=lambda v: faults_only(v, [UD]), desc=f"ring3 hv {ctl:#x}")
    src = movabs("rcx", ctl) + movabs("rdx", inp) + movabs("r8", out) + call
    src += st(res(i, 0)) + st(res(i, 1), "rdx") + st(res(i, 3), "r8") + mark(i)
    handlers = set(codes)

    def check(v: OpView) -> str | None:
        if code in (0x11, 0x12):
            extra = ctl & ~0x1FFFF & M64
            if extra or (code == 0x12 and v.guest.part.vsm.active_vtl == 0 and not vtl1) or (code == 0x11 and not vtl1):
                return None if v.vectors() == [UD] else f"VTL call/return {ctl:#x}: faults {v.vectors()}, not [#UD]"
            return None
        if v.faults or not v.slots[2]:
            return f"Hyper-V hypercall {ctl:#x}: faults {v.vectors()}"
        rax = v.slots[0]
        if rax == KVM_ENOSYS:
            return None           # the hypercall page was disabled (GUEST_OS_ID cleared): KVM answered
        status, reps_done = rax & 0xFFFF, (rax >> 32) & 0xFFF
        if status not in HV_STATUSES:
            return f"hypercall {ctl:#x}: status {status:#x} is not a TLFS status"
        if rax & ~(0xFFFF | 0xFFF << 32) & M64:
            return f"hypercall {ctl:#x}: reserved result bits set in {rax:#x}"
        if code not in handlers and status != HvStatus.HV_STATUS_INVALID_HYPERCALL_CODE:
            return f"unknown hypercall code {code:#x}: status {status:#x}, not 2"
        if reps_done > reps:
            return f"hypercall {ctl:#x}: {reps_done} reps completed of {reps}"
        return None
    mem = [] if fast else [(in_page, data[:0x1000])]
    return Op("hv", asm=src, check=check, desc=f"hv ctl={ctl:#x} in={inp:#x} out={out:#x} {via}", mem=mem)


def hv_codes() -> list[int]:
    return [int(c) for c in HvCallCode if c not in (HvCallCode.HvCallVtlCall, HvCallCode.HvCallVtlReturn)]


def op_vtl1_hypercall(rng: random.Random, i: int, codes: list[int]) -> Op:
    """Ask VTL1 (cmd 2) to run a random hypercall with a random IN(2): VTL1's view of the ABI (not VTL
    call/return: a #UD in VTL1, which has no IDT, is a triple fault that would end the case)."""
    ctl, code = gen_control(rng, codes)
    while code in (0x11, 0x12):
        ctl, code = gen_control(rng, codes)
    data = hv_input(rng, code, (ctl >> 32) & 0xFFF, (0x400, 0x580))
    src = movabs("r12", ctl) + vtl_call(2) + mark(i)
    return Op("vtl", asm=src, check=lambda v: None, desc=f"VTL1 runs hypercall {ctl:#x}", mem=[(IN(2), data[:0x1000])])


def op_vtl_call(rng: random.Random, i: int) -> Op:
    """VTL0's VtlCall (through the hypercall page or a direct VMMCALL) with commands for VTL1, a control
    word that may have reserved bits, a VTL call control input (RCX into the page, RAX for a direct call:
    all bits reserved) that may be non-zero, or VtlReturn from VTL0."""
    cmd = rng.choice((0, 1, 1, 2, 3, 4, rng.getrandbits(64)))
    pre = ""
    if cmd == 3:            # VTL1 returns directly with a random control word (RCX) and return input (RAX)
        ret_ctl = pick(rng, [(6, 0x12), (1, 0x10012), (1, 0x12 | 1 << rng.randrange(17, 64))])
        pre = movabs("r13", ret_ctl) + movabs("r14", rng.choice((0, 1, rng.getrandbits(64))))
    ctl = pick(rng, [(6, 0x11), (1, 0x11 | 1 << rng.randrange(16, 64)), (2, 0x12)])
    vin = pick(rng, [(8, 0), (1, 1 << rng.randrange(64))])
    via = rng.choice(["page", "direct"])
    pre += "xor esi, esi\n"
    if via == "page" and ctl == 0x11:
        src = f"{pre}{movabs('rdi', cmd)}{movabs('rcx', vin)}mov rax, 0x20010\ncall rax\n"
    else:
        src = f"{pre}{movabs('rdi', cmd)}{movabs('rcx', ctl)}{movabs('rax', vin)}vmmcall\n"
    src += st(res(i, 0), "rsi") + mark(i)

    def check(v: OpView) -> str | None:
        must_ud = ctl & ~0xFFFF or (ctl & 0xFFFF) == 0x12 or vin
        if must_ud:
            return None if v.vectors() == [UD] else \
                f"VTL call/return {ctl:#x} input {vin:#x} from VTL0: {v.vectors()}, not [#UD]"
        if cmd == 3:
            return None
        if cmd == 1 and v.slots[0] != 0x2222 and not v.faults:
            return f"VTL call cmd 1 returned {v.slots[0]:#x} in RSI"
        return None
    return Op("vtl", asm=src, check=check, desc=f"vtl call ctl={ctl:#x} input={vin:#x} cmd={cmd:#x} via {via}")


def gen_hv(rng: random.Random):
    vtl1 = rng.random() < 0.5
    inter = []
    if vtl1 and rng.random() < 0.5:
        inter = [(HvRegisterName.HvX64RegisterCrInterceptControl, rng.getrandbits(25)),
                 (HvRegisterName.HvX64RegisterCrInterceptCr4Mask, rng.getrandbits(24)),
                 (HvRegisterName.HvX64RegisterCrInterceptCr0Mask, rng.getrandbits(32))]
    cfg = GuestConfig(hyperv=True, vtl1=vtl1, vtl1_intercepts=inter, cr_pin=rng.random() < 0.5,
                      canary_seed=rng.getrandbits(32))
    codes = hv_codes()
    ops = []
    for i in range(rng.randrange(4, 20)):
        r = rng.random()
        if vtl1 and r < 0.15:
            ops.append(op_vtl_call(rng, i))
        elif vtl1 and r < 0.25:
            ops.append(op_vtl1_hypercall(rng, i, codes))
        elif r < 0.3:
            ops.append(op_msr(rng, i, cfg.cr_pin))
        else:
            ops.append(op_hv(rng, i, codes, vtl1, IN(FREE_IN[i % len(FREE_IN)])))
    if inter and inter[0][1]:
        for op in ops:
            if op.kind in ("msr", "cr"):
                op.check = None   # VTL1 intercepts them and injects #GP by its own policy
    return ops, cfg


# ====================================================================== port I/O
CLAIMED = [(0x20, 2), (0xA0, 2), (0xF4, 4), (0x3F8, 8), (0x510, 2), (0x8900, 1)]


def near_claimed(port: int) -> bool:
    return any(b - 4 < port < b + n + 4 for b, n in CLAIMED)


def io_insn(rng: random.Random, port: int, size: int, write: bool, value: int, buf: int = SCRATCH + 0x200) -> str:
    reg = {1: "al", 2: "ax", 4: "eax"}[size]
    set_val = f"mov eax, {value & 0xFFFFFFFF:#x}\n" if write else "mov eax, 0x5a5a5a5a\n"
    if port < 256 and rng.random() < 0.4:
        return set_val + (f"out {port:#x}, {reg}\n" if write else f"in {reg}, {port:#x}\n")
    if rng.random() < 0.15:
        s = {1: "b", 2: "w", 4: "d"}[size]
        return (f"mov dx, {port:#x}\nmov rsi, {buf:#x}\nmov rdi, {buf + 0x200:#x}\n"
                f"mov ecx, {rng.randrange(0, 5)}\ncld\n" + (f"rep outs{s}\n" if write else f"rep ins{s}\n"))
    return set_val + f"mov dx, {port:#x}\n" + (f"out dx, {reg}\n" if write else f"in {reg}, dx\n")


def gen_port(rng: random.Random) -> int:
    p = pick(rng, [(5, rng.choice([b + rng.randrange(n) for b, n in CLAIMED])), (3, rng.getrandbits(16)),
                   (1, rng.randrange(0x100)), (1, 0xCF8 + rng.randrange(8)), (1, 0x70 + rng.randrange(2))])
    return p


def op_io(rng: random.Random, i: int, bitmap: bytes | None) -> Op:
    port = gen_port(rng)
    size = rng.choice((1, 2, 4))
    write = rng.random() < 0.5
    if write and (0xF4 <= port + size - 1 and port <= 0xF7) and rng.random() < 0.97:
        port = 0x80                          # isa-debug-exit ends the run: rarely
    value = rng.getrandbits(32)
    user = rng.random() < 0.25
    ins = io_insn(rng, port, size, write, value, URES + 0x1000 if user else SCRATCH + 0x200)
    if user:
        iopl = rng.choice((0, 0, 3))

        def check_user(v: OpView) -> str | None:
            if "rep" in ins and "ecx, 0\n" in ins:
                return None
            allowed = iopl == 3
            if not allowed and bitmap is not None:
                bits = int.from_bytes(bitmap[port // 8:port // 8 + 2].ljust(2, b"\xff"), "little")
                allowed = not (bits >> (port & 7)) & ((1 << size) - 1) and (port + size - 1) // 8 < len(bitmap) - 1
            if allowed:
                return None if v.vectors() == [UD] else f"ring3 allowed {'out' if write else 'in'} {port:#x}: {v.vectors()}"
            return expect_gp0(v, f"ring3 {'out' if write else 'in'} {port:#x}/{size} (IOPL {iopl})", user=True)
        return Op("io", user=ins, user_rflags=0x202 | iopl << 12, check=check_user,
                  desc=f"ring3 iopl{iopl} {'out' if write else 'in'} {port:#x}/{size}")
    src = ins + st(res(i, 0)) + mark(i)

    def check(v: OpView) -> str | None:
        if v.faults or not v.slots[2]:
            return f"{'out' if write else 'in'} {port:#x}/{size} at CPL0 faulted: {v.vectors()}"
        if not write and "rep" not in ins and not near_claimed(port):
            want = (0x5a5a5a5a & ~((1 << 8 * size) - 1)) | ((1 << 8 * size) - 1)
            got = v.slots[0] & 0xFFFFFFFF
            if got != want:
                return f"in {port:#x}/{size} from an unclaimed port read {got:#x}, not all-ones ({want:#x})"
        return None
    return Op("io", asm=src, check=check, desc=f"{'out' if write else 'in'} {port:#x}/{size}")


def gen_io(rng: random.Random):
    bitmap = None
    if rng.random() < 0.3:
        bitmap = bytes(rng.choice((0, 0xFF, rng.getrandbits(8))) for _ in range(0x2000)) + b"\xff"
    cfg = GuestConfig(io_bitmap=bitmap)
    return [op_io(rng, i, bitmap) for i in range(rng.randrange(4, 24))], cfg


# ====================================================================== MMIO
def gen_mmio_addr(rng: random.Random) -> tuple[int, str]:
    return pick(rng, [
        (4, (APIC_BASE + rng.randrange(0, 0x1000, rng.choice((1, 4, 16))), "lapic")),
        (3, (rng.randrange(MEMORY, APIC_BASE, 8), "hole")),
        (2, (rng.randrange(APIC_BASE + 0x1000, 1 << 32, 8), "hole")),
        (1, (MEMORY - rng.choice((1, 2, 4)), "straddle")),
        (0.3, (rng.randrange(1 << 32, 64 << 30, 8), "above4g")),
        (0.3, (HYP_BASE + rng.choice((0, 0x78, 0x4000, 0x10000)), "above4g")),
    ])


def op_mmio(rng: random.Random, i: int) -> Op:
    addr, where = gen_mmio_addr(rng)
    size = rng.choice((1, 2, 4, 8))
    reg = {1: "al", 2: "ax", 4: "eax", 8: "rax"}[size]
    ptr = {1: "byte", 2: "word", 4: "dword", 8: "qword"}[size]
    kind = pick(rng, [(5, "read"), (4, "write"), (1, "rmw"), (1, "exec"), (1, "movs")])
    if where == "lapic" and kind in ("write", "rmw") and (addr & 0xFF0) in (0x300, 0x310) and rng.random() < 0.9:
        addr = APIC_BASE + 0x80                 # ICR writes (INIT/SIPI/self-IPI): mostly avoid
    src = movabs("rbx", addr) + "mov rax, 0x5a5a5a5a5a5a5a5a\n"
    if kind == "read":
        src += f"mov {reg}, {ptr} ptr [rbx]\n"
    elif kind == "write":
        src += movabs("rax", rng.getrandbits(64)) + f"mov {ptr} ptr [rbx], {reg}\n"
    elif kind == "rmw":
        src += rng.choice([f"lock xadd {ptr} ptr [rbx], {reg}\n", f"inc {ptr} ptr [rbx]\n",
                           f"xchg {ptr} ptr [rbx], {reg}\n", "push qword ptr [rbx]\npop rax\n"])
    elif kind == "movs":
        src += f"mov rsi, rbx\nmov rdi, {SCRATCH + 0x800:#x}\nmov ecx, 4\ncld\nrep movsb\nmov rax, [rdi - 4]\n"
    else:
        src += "call rbx\n"
    src += st(res(i, 0)) + mark(i)
    if where == "lapic" and rng.random() < 0.3:
        src += "mov rax, cr8\n" + st(res(i, 1)) + "mov rbx, 0xfee00080\nmov eax, [rbx]\n" + st(res(i, 3))

    def check(v: OpView) -> str | None:
        if where == "hole" and kind == "read":
            if v.faults or not v.slots[2]:
                return f"read of open bus {addr:#x}: faults {v.vectors()}"
            want = (0x5a5a5a5a5a5a5a5a & ~((1 << 8 * size) - 1) | ((1 << 8 * size) - 1)) if size < 4 else \
                ((1 << 8 * size) - 1)
            if v.slots[0] != want:
                return f"read of open bus {addr:#x}/{size} gave {v.slots[0]:#x}, not all-ones"
        return None
    return Op("mmio", asm=src, check=check, desc=f"{kind} {addr:#x}/{size} ({where})")


def gen_mmio(rng: random.Random):
    return [op_mmio(rng, i) for i in range(rng.randrange(4, 20))], GuestConfig(hyperv=rng.random() < 0.2)


# ====================================================================== page tables
PT_BASE_SLOT = 1                        # PML4 slots 1..255 point into the fuzzed area


def gen_tables(rng: random.Random, nslots: int) -> tuple[list[tuple[int, bytes]], list[int]]:
    """Malformed 4-level hierarchies under PML4[1..nslots]: loops, reserved bits, huge pages at odd
    levels and misaligned, tables outside RAM, NX/U/W mixes. Returns memory writes and the PML4 slots."""
    pages = [PTAREA + 0x1000 * k for k in range(48)]
    writes = []
    maxphys = 40
    for p in pages:
        ents = []
        for _ in range(512):
            e = pick(rng, [
                (6, 0),
                (6, rng.choice(pages) | 0x7),
                (2, rng.choice(pages) | rng.getrandbits(3) | 1),
                (2, rng.choice((PML4, p)) | 0x5),                              # loops (read-only)
                (3, rng.choice((RANDAREA, RANDAREA + 0x1000 * rng.randrange(1, 512))) | 0x87),  # huge, odd level
                (1, (rng.randrange(RANDAREA >> 12, MEMORY >> 12) << 12) | 0x87),  # misaligned huge page
                (1, 0x85 | 1 << 63),                                            # 1 GiB page at 0 (read-only, NX)
                (1, rng.choice((0x80000000, APIC_BASE, 1 << 32, HYP_BASE, MEMORY)) | 0x7),   # outside RAM
                (1, rng.choice(pages) | 0x7 | 1 << rng.randrange(maxphys, 52)),            # reserved address bit
                (1, rng.choice(pages) | 0x7 | 1 << 63),                                    # NX
                (1, rng.getrandbits(64) & ~2 | 1),
                (1, (CANARY | 0x5)),
            ])
            ents.append(e)
        # make most entries of a page share a few values so a random VA hits something interesting
        writes.append((p, struct.pack("<512Q", *ents)))
    slots = list(range(PT_BASE_SLOT, PT_BASE_SLOT + nslots))
    for s in slots:
        writes.append((PML4 + 8 * s, struct.pack("<Q", rng.choice(pages) | pick(rng, [(5, 7), (1, 3), (1, 5), (1, 0x87)]))))
    return writes, slots


def tables_in_ram(mem, va: int) -> bool:
    """Every paging-structure entry the 4-level walk of ``va`` reads lies in RAM."""
    table = PML4
    for shift in (39, 30, 21, 12):
        slot = table + ((va >> shift) & 0x1FF) * 8
        if not mem.contains(slot, 8):
            return False
        e = mem.read_u64(slot)
        if not e & 1 or (shift in (30, 21) and e & 0x80) or shift == 12:
            return True
        table = e & 0x000FFFFFFFFFF000
    return True


def va_in(rng: random.Random, slot: int) -> int:
    return (slot << 39) | rng.getrandbits(39) & ~7


def op_paging(rng: random.Random, i: int, slots: list[int]) -> Op:
    va = va_in(rng, rng.choice(slots))
    kind = pick(rng, [(5, "read"), (3, "write"), (2, "exec"), (1, "user"), (1, "stack"), (1, "toggle"),
                      (1, "invlpg")])
    rec = "mov rax, cr0\n" + st(res(i, 4)) + "mov rax, cr4\n" + st(res(i, 5)) + \
        "mov ecx, 0xC0000080\nrdmsr\n" + st(res(i, 6))
    if kind == "toggle":
        which = rng.choice(["cr0_wp", "cr4_smep", "cr4_smap", "efer_nxe"])
        src = {"cr0_wp": "mov rax, cr0\nxor rax, 0x10000\nmov cr0, rax\n",
               "cr4_smep": "mov rax, cr4\nxor rax, 0x100000\nmov cr4, rax\n",
               "cr4_smap": "mov rax, cr4\nxor rax, 0x200000\nmov cr4, rax\n",
               "efer_nxe": "mov ecx, 0xC0000080\nrdmsr\nxor eax, 0x800\nwrmsr\n"}[which]
        return Op("paging", asm=src + mark(i), check=lambda v: None, desc=f"toggle {which}")
    if kind == "invlpg":
        return Op("paging", asm=movabs("rax", va) + "invlpg [rax]\nmov rax, cr3\nmov cr3, rax\n" + mark(i),
                  check=lambda v: None, desc=f"invlpg {va:#x}")
    if kind == "stack":
        # delivery through the guest's malformed tables: the hypervisor's walker pushes the frame
        src = rec + f"mov r15, rsp\n{movabs('rsp', va)}int3\nmov rsp, r15\n" + mark(i)
        return Op("paging", asm=src, check=lambda v: None, desc=f"int3 with RSP={va:#x}")
    if kind == "user":
        return Op("paging", user=f"{movabs('rbx', va)}mov rax, [rbx]\n", check=None, desc=f"user read {va:#x}")
    access = {"read": "mov rax, [rbx]\n", "write": "mov qword ptr [rbx], rbx\n", "exec": "call rbx\n"}[kind]
    src = rec + movabs("rbx", va) + access + st(res(i, 0)) + mark(i)

    def check(v: OpView) -> str | None:
        from vtlvisor.x86.paging import Access, NonCanonical, PageFault, PagingMode, walk
        g = v.guest
        mem = g.part.memory
        mode = PagingMode(v.slots[4], PML4, v.slots[5], v.slots[6] | (1 << 10))
        acc = Access(write=kind == "write", fetch=kind == "exec", implicit=kind != "exec")
        if not tables_in_ram(mem, va):
            return None                   # a table in MMIO/open bus: what it reads as is device-defined
        try:
            gpa = walk(mem, mode, va, acc, set_ad=False)
            want = None
        except PageFault as pf:
            want, gpa = pf.error_code, None
        except NonCanonical:
            return None
        got = [f for f in v.faults if f[0] == PF]
        if kind == "exec":
            got = got[:1]
            if got and got[0][4] != va:
                return None               # fault further along the executed bytes: not comparable
        if want is None:
            if gpa is not None and not mem.contains(gpa, 8):
                return None               # MMIO / outside RAM: other cases cover it
            if got and kind != "exec":
                return (f"{kind} {va:#x}: the engine raised #PF({got[0][1]:#x}) but the hypervisor's walker "
                        f"translates it to {gpa:#x}")
            return None
        if not got:
            return f"{kind} {va:#x}: the hypervisor's walker says #PF({want:#x}), the engine did not fault ({v.vectors()})"
        err = got[0][1]
        ign = 0x10 if not (mode.efer & 0x800 or mode.cr4 & (1 << 20)) else 0
        if (err | ign) != (want | ign) or got[0][4] != va:
            return f"{kind} {va:#x}: engine #PF({err:#x}, cr2={got[0][4]:#x}) vs walker #PF({want:#x})"
        return None
    return Op("paging", asm=src, check=check, desc=f"{kind} {va:#x}")


def gen_paging(rng: random.Random):
    writes, slots = gen_tables(rng, rng.randrange(1, 8))
    cfg = GuestConfig(mem=writes, hyperv=rng.random() < 0.2)
    return [op_paging(rng, i, slots) for i in range(rng.randrange(4, 24))], cfg


# ====================================================================== random instruction streams
INTERESTING_INSNS = [
    "0f22c0", "0f22e0", "440f22c0", "0f20c0", "0f20e0", "440f20c0", "0f01f0", "0f06", "0f30", "0f32", "0fa2",
    "0f01d9", "0f01c1", "0f01d8", "0f01da", "0f01db", "0f01dc", "0f01dd", "0f01de", "0f01df", "0f01c8",
    "0f01c9", "0f05", "0f07", "0f34", "0f35", "48cf", "cf", "f4", "fb", "fa", "cc", "cd80", "cd03", "ce",
    "f1", "0f0b", "0f0000", "0f0008", "0f0100", "0f0108", "0f0110", "0f0118", "0f01f8", "0f31", "0f01f9",
    "e4f4", "e6f4", "ec", "ee", "ed", "ef", "6c", "6e", "f3a4", "0f09", "0f08", "0fae38", "0f0d08",
    "0f01d0", "0f01d1", "9c", "9d", "cb", "48cb", "ca0800", "0f00d8", "0f0018", "0f01e0", "0f01e8",
]


def gen_code(rng: random.Random, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        if rng.random() < 0.5:
            out += bytes.fromhex(rng.choice(INTERESTING_INSNS))
        else:
            out += rng.randbytes(rng.randrange(1, 8))
    return bytes(out[:n])


def op_randcode(rng: random.Random, i: int, user: bool) -> Op:
    code = gen_code(rng, rng.randrange(4, 48))
    regs = "".join(movabs(r, pick(rng, [(4, RANDAREA + rng.randrange(0x100000)), (2, SCRATCH + rng.randrange(0x10000)),
                                        (1, APIC_BASE), (1, interesting64(rng)), (1, CANARY), (1, HYP_BASE)]))
                   for r in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13"))
    if user:
        return Op("randcode", user_bytes=code, check=None, desc=f"ring3 bytes {code.hex()}")
    at = RANDAREA + 0x100 * i
    src = regs + f"mov r14, {at:#x}\njmp r14\n"
    return Op("randcode", asm=src, check=None, desc=f"bytes {code.hex()}",
              mem=[(at, code + b"\x0f\x0b" * 8)])


def gen_randcode(rng: random.Random):
    mem = []
    style = pick(rng, [(6, "sane"), (1, "idt"), (1, "gdt"), (1, "tss"), (1, "gates")])
    if style == "idt":
        mem.append((0x7000, rng.randbytes(0x1000)))
    elif style == "gdt":
        mem.append((0x5008, rng.randbytes(0x28)))
    elif style == "tss":
        mem.append((0xA000, rng.randbytes(0x68)))
    elif style == "gates":
        for _ in range(8):
            mem.append((0x7000 + 16 * rng.randrange(256), rng.randbytes(16)))
    cfg = GuestConfig(mem=mem, hyperv=rng.random() < 0.3, timeout=1.0)
    ops = [op_randcode(rng, i, rng.random() < 0.25) for i in range(rng.randrange(2, 16))]
    return ops, cfg


# ====================================================================== VSM attacks (canary)
def vtl1_protect(flags: int, gpn: int) -> str:
    """VTL0 asks VTL1 (command 2) to set VTL0's protection of ``gpn``: the input is written into IN(2)
    at run time (other ops patch IN(2) before the run)."""
    words = struct.unpack("<3Q", struct.pack("<QIB3xQ", SELF, flags, 0x10, gpn))
    src = "".join(movabs("rax", w) + f"mov rbx, {IN(2) + 8 * k:#x}\nmov [rbx], rax\n" for k, w in enumerate(words))
    return src + movabs("r12", control(HvCallCode.HvCallModifyVtlProtectionMask, 1)) + vtl_call(2)


def op_pt_protected(rng: random.Random, i: int) -> Op:
    """VTL1 protects an ordinary VTL0 page (not a page table at that moment); VTL0 then makes it a page
    table and uses it: the engine's own walk goes through the protected page (a nested fault on a
    guest page-table access, or an NX nested leaf on one)."""
    x = SCRATCH + rng.randrange(4, 12) * 0x1000
    flags = rng.choice([0, 1, 1, 3, 3, 0xD, 0xF])
    k, j = rng.randrange(1, 8), rng.randrange(512)
    va = (k << 39) | (j << 30) | rng.randrange(0, 1 << 30, 8)
    src = f"mov rbx, {x + 8 * j:#x}\nmov qword ptr [rbx], {0x3000 | rng.choice((3, 7, 0x27, 0x67)):#x}\n"
    src += vtl1_protect(flags, x >> 12)
    src += f"mov rbx, {PML4 + 8 * k:#x}\nmov qword ptr [rbx], {x | 7:#x}\nmov rax, cr3\nmov cr3, rax\n"
    src += movabs("rbx", va) + rng.choice(["mov rax, [rbx]\n", "mov qword ptr [rbx], 1\n", "lmsw [rbx]\n"])
    after = f"mov rbx, {PML4 + 8 * k:#x}\nmov qword ptr [rbx], 0\nmov rax, cr3\nmov cr3, rax\n"
    return Op("vsm", asm=src + mark(i), after=after, check=None,
              desc=f"attack: page table in a page VTL1 protected {flags:#x} (PML4[{k}] -> {x:#x})")


def op_pt_alias(rng: random.Random, i: int) -> Op:
    """VTL0 page tables whose entries alias (PML4[1..k] -> T1, T1[0..k) -> T2, T2[0..k) -> T3) while
    VTL1 changes a protection: the hypervisor's look at VTL0's hierarchy must stay bounded."""
    k = rng.randrange(2, 97)
    t1, t2, t3 = PTAREA, PTAREA + 0x1000, PTAREA + 0x2000
    src = (f"mov rbx, {PML4 + 8:#x}\nmov rax, {t1 | 3:#x}\nmov rcx, {k}\nalias{i}:\nmov [rbx], rax\n"
           f"add rbx, 8\nloop alias{i}\nmov rax, cr3\nmov cr3, rax\n")
    src += vtl1_protect(rng.choice([1, 3, 0xF]), rng.randrange(SCRATCH >> 12, (SCRATCH >> 12) + 16))
    after = (f"mov rbx, {PML4 + 8:#x}\nxor eax, eax\nmov rcx, {k}\nunalias{i}:\nmov [rbx], rax\n"
             f"add rbx, 8\nloop unalias{i}\nmov rax, cr3\nmov cr3, rax\n")
    mem = [(t1, struct.pack("<Q", t2 | 3) * k), (t2, struct.pack("<Q", t3 | 3) * k)]
    return Op("vsm", asm=src + mark(i), after=after, check=None, mem=mem,
              desc=f"attack: {k}-way aliased page tables during a protection change")


def op_attack(rng: random.Random, i: int) -> Op:
    """VTL0 tries to make the hypervisor touch the VTL1-only canary page for it."""
    r = rng.random()
    if r < 0.06:
        return op_pt_protected(rng, i)
    if r < 0.10:
        return op_pt_alias(rng, i)
    off = rng.randrange(0, 0x1000, 8)
    c = CANARY + off
    kind = rng.choice(["read", "write", "exec", "stack", "idt", "gdt_lgdt", "tss_rsp0", "cr3", "lmsw",
                       "hc_in", "hc_out", "msr_hcpage", "msr_assist", "msr_simp", "pt_leaf", "idt_split"])
    src = ""
    if kind == "read":
        src = f"mov rbx, {c:#x}\nmov rax, [rbx]\n" + st(res(i, 0))
    elif kind == "write":
        src = f"mov rbx, {c:#x}\nmov qword ptr [rbx], 0x41\n"
    elif kind == "exec":
        src = f"mov rbx, {c:#x}\ncall rbx\n"
    elif kind == "stack":
        src = f"mov r15, rsp\nmov rsp, {c + 0x40:#x}\nint3\nmov rsp, r15\n"
    elif kind == "idt":
        # the ud2 is delivered through an IDT in the canary: usually a triple fault (a defined result)
        src = (f"mov rbx, {SCRATCH + 0x300:#x}\nmov word ptr [rbx], 0xfff\nmov rax, {c & ~0xFFF:#x}\n"
               f"mov [rbx+2], rax\nlidt [rbx]\nud2\n")
    elif kind == "gdt_lgdt":
        src = f"mov rbx, {c:#x}\nlgdt [rbx]\n"
    elif kind == "tss_rsp0":
        # a ring-3 fault switches to TSS.RSP0 = the canary: the hypervisor pushes the frame there
        return Op("vsm", asm=f"mov rbx, {0xA004:#x}\nmov rax, {c + 0x100:#x}\nmov [rbx], rax\n", user="ud2\n",
                  after=f"mov rbx, {0xA004:#x}\nmov rax, {0x9F000:#x}\nmov [rbx], rax\n", check=None,
                  desc=f"attack TSS.RSP0 {c:#x}")
    elif kind == "idt_split":
        # IDTR base so that gates 0..13 are in the canary and gate 14 (#PF) is a valid one after it
        base = CANARY + 0x1000 - 16 * 14
        src = (f"mov rbx, {SCRATCH + 0x300:#x}\nmov word ptr [rbx], 0xfff\nmov rax, {base:#x}\n"
               f"mov [rbx+2], rax\nmov rax, {0x7000 + 16 * 14:#x}\nmov rcx, [rax]\nmov rdx, [rax+8]\n"
               f"mov rax, {CANARY + 0x1000:#x}\nmov [rax], rcx\nmov [rax+8], rdx\nlidt [rbx]\nud2\n")
        return Op("vsm", asm=src, check=None, after=f"mov rbx, {SCRATCH + 0x300:#x}\nmov rax, 0x7000\n"
                  "mov [rbx+2], rax\nlidt [rbx]\n", desc="attack IDT gates in the canary")
    elif kind == "cr3":
        src = f"mov rax, cr3\nmov r15, rax\nmov rax, {CANARY:#x}\nmov cr3, rax\nmov rax, r15\nmov cr3, rax\n"
    elif kind == "lmsw":
        src = f"mov rbx, {c:#x}\nlmsw [rbx]\nmov rax, cr0\n" + st(res(i, 0))
    elif kind == "hc_in":
        src = (f"mov rcx, {control(rng.choice(hv_codes()), rng.choice((0, 1, 2))):#x}\nmov rdx, {c & ~7:#x}\n"
               f"mov r8, {OUT(0):#x}\nmov rax, 0x20000\ncall rax\n" + st(res(i, 0)))
    elif kind == "hc_out":
        src = (f"mov rcx, {control(HvCallCode.HvCallGetVpRegisters, 2):#x}\nmov rdx, {IN(5):#x}\n"
               f"mov r8, {c & ~7:#x}\nmov rax, 0x20000\ncall rax\n" + st(res(i, 0)))
    elif kind == "msr_hcpage":
        src = f"mov ecx, 0x40000001\nmov eax, {CANARY | 1:#x}\nxor edx, edx\nwrmsr\n"
        src += f"mov ecx, 0x40000001\nmov eax, {0x20000 | 1:#x}\nxor edx, edx\nwrmsr\n"
    elif kind == "msr_assist":
        src = f"mov ecx, 0x40000073\nmov eax, {CANARY | 1:#x}\nxor edx, edx\nwrmsr\n" + vtl_call(1)
        src += f"mov ecx, 0x40000073\nmov eax, {0x24000 | 1:#x}\nxor edx, edx\nwrmsr\n"
    elif kind == "msr_simp":
        src = f"mov ecx, 0x40000083\nmov eax, {CANARY | 1:#x}\nxor edx, edx\nwrmsr\n" + vtl_call(1)
    elif kind == "pt_leaf":
        # VTL0's own page tables alias the canary (PML4[3] -> PDPT -> PD -> PT -> canary): the engine's
        # access must still be refused, and so must the hypervisor's walker (LMSW operand through it)
        va = 3 << 39
        pt = [(PML4 + 8 * 3, SCRATCH + 0x1000), (SCRATCH + 0x1000, SCRATCH + 0x2000),
              (SCRATCH + 0x2000, SCRATCH + 0x3000), (SCRATCH + 0x3000, CANARY)]
        src = "".join(f"mov rbx, {a:#x}\nmov qword ptr [rbx], {t | 7:#x}\n" for a, t in pt)
        src += f"mov rax, cr3\nmov cr3, rax\nmov rbx, {va | off:#x}\n"
        src += rng.choice(["mov rax, [rbx]\n" + st(res(i, 0)), "lmsw [rbx]\n", "mov qword ptr [rbx], 1\n"])
    src += mark(i)
    mem = [(IN(5), struct.pack("<QIB3xII", SELF, 0, 0x10, HvRegisterName.HvX64RegisterRip,
                               HvRegisterName.HvX64RegisterRsp))]
    return Op("vsm", asm=src, check=None, desc=f"attack {kind} {c:#x}", mem=mem)


def gen_vsm(rng: random.Random):
    inter = [(HvRegisterName.HvX64RegisterCrInterceptControl, rng.getrandbits(25) if rng.random() < 0.5 else 0),
             (HvRegisterName.HvX64RegisterCrInterceptCr4Mask, rng.getrandbits(24)),
             (HvRegisterName.HvX64RegisterCrInterceptCr0Mask, rng.getrandbits(32))]
    cfg = GuestConfig(hyperv=True, vtl1=True, vtl1_intercepts=inter, canary_seed=rng.getrandbits(32),
                      cr_pin=rng.random() < 0.5)
    ops = []
    codes = hv_codes()
    for i in range(rng.randrange(3, 14)):
        r = rng.random()
        if r < 0.45:
            ops.append(op_attack(rng, i))
        elif r < 0.55:
            ops.append(op_vtl_call(rng, i))
        elif r < 0.65:
            ops.append(op_cr(rng, i, cfg.cr_pin))
        elif r < 0.75:
            ops.append(op_msr(rng, i, cfg.cr_pin))
        elif r < 0.85:
            ops.append(op_randcode(rng, i, False))
        else:
            ops.append(op_hv(rng, i, codes, True, IN(FREE_IN[i % len(FREE_IN)])))
    for op in ops:
        op.check = None       # attacks corrupt VTL0's own state: here only the invariants are checked
    return ops, cfg


GENERATORS = {
    "msr": gen_msr, "cr": gen_cr, "kvm": gen_kvm, "hyperv": gen_hv, "io": gen_io, "mmio": gen_mmio,
    "paging": gen_paging, "randcode": gen_randcode, "vsm": gen_vsm,
}
