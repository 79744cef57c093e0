"""The CPUID the guest sees: the engine's real answers, filtered to what the engine executes.

Starting from the engine's own CPUID (probed at start-up) keeps the guest honest: it never sees a
feature the emulated CPU would not execute. On top: SVM is hidden (we own it), x2APIC/TSC-deadline/
PCID/MONITOR are hidden (not emulated), UMIP is advertised (the hypervisor emulates it through the
descriptor-table read exits), OSXSAVE/OSPKE track CR4, the hypervisor bit is set, and the
hypervisor leaves 0x40000000+ are answered by the enlightenment ABIs (KVM / Hyper-V).
"""

from __future__ import annotations

from collections.abc import Callable

from .arch import CR4

Regs = tuple[int, int, int, int]

# leaf 1
L1_ECX_MONITOR = 1 << 3
L1_ECX_VMX = 1 << 5
L1_ECX_PCID = 1 << 17
L1_ECX_X2APIC = 1 << 21
L1_ECX_TSC_DEADLINE = 1 << 24
L1_ECX_OSXSAVE = 1 << 27
L1_ECX_HYPERVISOR = 1 << 31
L1_EDX_APIC = 1 << 9
# leaf 7 subleaf 0
L7_EBX_INVPCID = 1 << 10
L7_ECX_UMIP = 1 << 2
L7_ECX_PKU = 1 << 3
L7_ECX_OSPKE = 1 << 4
# 0x80000001
E1_ECX_SVM = 1 << 2
# 0x8000000A: SVM features leaf

HypervisorLeaves = Callable[[int, int], Regs | None]


class CpuidModel:
    def __init__(self, engine_table: dict[tuple[int, int], Regs], apic_id: int = 0) -> None:
        self.table = dict(engine_table)
        self.apic_id = apic_id
        self.hypervisor_leaves: list[HypervisorLeaves] = []

    def query(self, leaf: int, sub: int, cr4: int) -> Regs:
        leaf &= 0xFFFFFFFF
        sub &= 0xFFFFFFFF
        if 0x40000000 <= leaf <= 0x4FFFFFFF:
            for h in self.hypervisor_leaves:
                r = h(leaf, sub)
                if r is not None:
                    return r
            return (0, 0, 0, 0)
        max_basic = self.table[(0, 0)][0]
        max_ext = self.table.get((0x80000000, 0), (0x80000000, 0, 0, 0))[0]
        if leaf < 0x80000000 and leaf > max_basic:
            leaf, sub = max_basic, sub     # Intel: out-of-range basic leaves return the highest leaf
        if leaf >= 0x80000000 and leaf > max_ext:
            return (0, 0, 0, 0)
        a, b, c, d = self.table.get((leaf, sub), self.table.get((leaf, 0), (0, 0, 0, 0)))
        if leaf == 1:
            c &= ~(L1_ECX_MONITOR | L1_ECX_VMX | L1_ECX_PCID | L1_ECX_X2APIC | L1_ECX_TSC_DEADLINE
                   | L1_ECX_OSXSAVE)
            c |= L1_ECX_HYPERVISOR
            if cr4 & CR4.OSXSAVE:
                c |= L1_ECX_OSXSAVE
            d |= L1_EDX_APIC
            b = (b & 0x00FFFFFF) | (self.apic_id << 24)
        elif leaf == 7 and sub == 0:
            b &= ~L7_EBX_INVPCID
            c |= L7_ECX_UMIP
            c &= ~L7_ECX_OSPKE
            if c & L7_ECX_PKU and cr4 & CR4.PKE:
                c |= L7_ECX_OSPKE
        elif leaf == 0x80000001:
            c &= ~E1_ECX_SVM
        elif leaf == 0x8000000A:
            a = b = c = d = 0
        return (a & 0xFFFFFFFF, b & 0xFFFFFFFF, c & 0xFFFFFFFF, d & 0xFFFFFFFF)
