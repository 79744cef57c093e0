"""A partition: guest RAM, the engine, the platform devices, one vCPU, and the boot.

This is the object the CLI and the Python API drive (``Partition(config).boot_image(path).run()``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from ..abi.hyperv import KVM_CPUID_BASE_WITH_HYPERV
from ..devices.debug_exit import debug_exit_status
from ..devices.platform import Platform
from ..engine.engine import Engine, InitialState, Segment
from ..errors import ConfigError
from ..loader.bootstate import BootMode, BootState
from ..memory import GuestMemory
from ..x86.arch import CR0
from ..x86.cpuid import CpuidModel
from ..x86.svm import SvmExit, intercept_bit
from .clock import VirtualClock
from .crpin import CrPinning
from .domains import Domains, Policy
from .kvm import KvmInterface
from .msrs import MsrTable
from .stop import RunResult, StopReason
from .vcpu import Vcpu
from .vsm import Vsm

log = logging.getLogger(__name__)

APIC_BASE = 0xFEE00000
MIN_RAM = 2 << 20
MAX_RAM = 3 << 30

#: exits the core always takes (see docs/architecture.md for why each one)
CORE_INTERCEPTS = (
    SvmExit.IDTR_READ, SvmExit.GDTR_READ, SvmExit.LDTR_READ, SvmExit.TR_READ,   # UMIP / NPIEP
    SvmExit.RDTSC, SvmExit.RDTSCP,                                               # virtual time
    SvmExit.CPUID, SvmExit.SWINT, SvmExit.ICEBP, SvmExit.HLT, SvmExit.MSR, SvmExit.SHUTDOWN,
    SvmExit.VMRUN, SvmExit.VMMCALL, SvmExit.VMLOAD, SvmExit.VMSAVE, SvmExit.STGI, SvmExit.CLGI,
    SvmExit.SKINIT, SvmExit.INVLPGA, SvmExit.MONITOR, SvmExit.MWAIT,
)
CR_READ_INTERCEPTS = 1 << 8                       # CR8 <-> LAPIC TPR
CR_WRITE_INTERCEPTS = (1 << 0) | (1 << 4) | (1 << 8)
EXCEPTION_INTERCEPTS = 0xFFFFFFFF                 # the engine delivers nothing itself


@dataclass
class PartitionConfig:
    memory: int = 128 << 20
    serial: BinaryIO | Callable[[bytes], None] | None = None
    trace: Callable[[str, dict], None] | None = None
    extra_intercepts: list[SvmExit] = field(default_factory=list)
    #: paravirtualized CR pinning (KVM_FEATURE_CR_PIN, the pin MSRs, Heki's hypercall)
    cr_pin: bool = True
    #: Hyper-V enlightenments with Virtual Secure Mode (KVM leaves move to 0x40000100)
    hyperv: bool = False
    #: capability-scoped domains (KVM-style PV ABI); a TOML policy path limits the boot domain's caps
    domains: bool = False
    domain_policy: str | None = None


class Partition:
    def __init__(self, config: PartitionConfig | None = None) -> None:
        self.config = cfg = config or PartitionConfig()
        if cfg.memory % 0x1000 or not MIN_RAM <= cfg.memory <= MAX_RAM:
            raise ConfigError(f"memory size must be a multiple of 4 KiB between 2 MiB and 3 GiB, "
                              f"not {cfg.memory}")
        self.memory = GuestMemory(cfg.memory)
        self.clock = VirtualClock()
        self.unhandled: list[tuple[str, int, int, int | None]] = []
        self.platform = Platform.create(
            ram_size=cfg.memory, clock=self._device_clock, serial_output=cfg.serial,
            on_exit=self._on_debug_exit, on_poweroff=self._on_poweroff, on_unhandled=self._on_unhandled)
        self.engine = Engine(self.memory)
        self._map_physical()
        self.cpuid = CpuidModel(self.engine.cpuid_table)
        self.msrs = MsrTable()
        self.vcpu = Vcpu(self.engine, self.memory, self.platform.io, self.platform.lapic, self.cpuid,
                         self.clock, self.msrs)
        self.vcpu.hooks.trace = cfg.trace
        self.crpin = CrPinning(enabled=cfg.cr_pin)
        self.kvm = KvmInterface(self.crpin, base=KVM_CPUID_BASE_WITH_HYPERV if cfg.hyperv else 0x40000000)
        self.msrs.providers.append(self.crpin)
        self.vcpu.hooks.cr_write_filters.append(self.crpin.cr_write_filter)
        self.vsm: Vsm | None = None
        if cfg.hyperv:
            self.vsm = Vsm(self)
            self.cpuid.hypervisor_leaves.append(self.vsm.hv.cpuid)
        self.cpuid.hypervisor_leaves.append(self.kvm.cpuid)
        self.vcpu.hooks.hypercall = self._hypercall
        self.domains: Domains | None = None
        if cfg.domains or cfg.domain_policy:
            policy = Policy.load(cfg.domain_policy, cfg.memory) if cfg.domain_policy else None
            self.domains = Domains(self, policy)
        self.boot_state: BootState | None = None
        self.base_intercept = 0

    # ------------------------------------------------------------------ physical address space
    def _map_physical(self) -> None:
        """RAM identity-mapped with 4 KiB NPT leaves (so protections can be per page); the LAPIC
        and the unassigned hole below 4 GiB go to MMIO regions (open bus: reads all-ones, traced)."""
        eng = self.engine
        eng.add_mmio(APIC_BASE, 0x1000, self._lapic_read, self._lapic_write)
        for start, end in self._hole_ranges():
            eng.add_mmio(start, end - start, self._open_bus_read, self._open_bus_write)
        self.npt = self.build_npt()

    def _hole_ranges(self) -> list[tuple[int, int]]:
        ram = self.memory.size
        return [(s, e) for s, e in ((ram, APIC_BASE), (APIC_BASE + 0x1000, 1 << 32)) if e > s]

    def build_npt(self):
        """A nested page table root with full access to RAM, the LAPIC and the open-bus hole (each
        VTL gets its own root; protections then edit its RAM leaves)."""
        npt = self.engine.new_npt()
        npt.map_4k_range(0, 0, self.memory.size)
        npt.map_range(APIC_BASE, APIC_BASE, 0x1000)
        for start, end in self._hole_ranges():
            npt.map_range(start, start, end - start)
        return npt

    def _hypercall(self, vcpu: Vcpu) -> None:
        """VMMCALL goes to Hyper-V once the running VTL enabled its hypercall page, else to KVM
        (as KVM does with kvm_hv_hypercall_enabled)."""
        if self.vsm is not None and self.vsm.hv.enabled_for_active_vtl:
            self.vsm.hv.hypercall(vcpu)
        else:
            self.kvm.hypercall(vcpu)

    def _device_clock(self) -> int:
        """Time as the LAPIC sees it: never past a timer deadline the vCPU has not processed yet,
        so a guest polling the current-count register cannot see the count reach 0 before the
        interrupt it implies (the run loop moves the deadline when it polls the timer)."""
        now = self.clock.now()
        d = self.platform.lapic.next_deadline() if hasattr(self, "platform") else None
        return now if d is None else min(now, d - 1)

    # The LAPIC callbacks never stop the engine themselves: a stop requested inside an MMIO callback
    # makes Unicorn re-execute the access when it resumes (a guest writing TPR with a vector pending
    # and IF=0 would loop forever). The kicker thread stops the engine for due timers and pending
    # vectors instead (hv/vcpu.py), at most IRQ_POLL_NS later.
    def _lapic_read(self, addr: int, size: int) -> int:
        return self.platform.mmio.read(addr, size)

    def _lapic_write(self, addr: int, size: int, value: int) -> None:
        self.platform.mmio.write(addr, size, value)

    def _open_bus_read(self, addr: int, size: int) -> int:
        self._on_unhandled("mmio", addr, size, None)
        return (1 << (8 * size)) - 1

    def _open_bus_write(self, addr: int, size: int, value: int) -> None:
        self._on_unhandled("mmio", addr, size, value)

    # ------------------------------------------------------------------ device callbacks
    def _on_debug_exit(self, value: int) -> None:
        self.vcpu.request_stop(StopReason.DEBUG_EXIT, f"isa-debug-exit value {value:#x}",
                               status=debug_exit_status(value))

    def _on_poweroff(self) -> None:
        self.vcpu.request_stop(StopReason.POWER_OFF, "guest wrote 'Shutdown' to port 0x8900")

    def _on_unhandled(self, kind: str, addr: int, size: int, value: int | None) -> None:
        if len(self.unhandled) < 10000:
            self.unhandled.append((kind, addr, size, value))
        log.debug("unhandled %s %#x size %d value %s", kind, addr, size, value)
        if self.config.trace:
            self.config.trace("unhandled", {"kind": kind, "addr": addr, "size": size, "value": value})

    # ------------------------------------------------------------------ boot
    def boot_image(self, path: str, cmdline: str = "", modules: list[tuple[str, str]] | None = None
                   ) -> Partition:
        from ..loader import load_image
        bs = load_image(path, self.memory, cmdline=cmdline, modules=modules or [])
        return self.boot(bs)

    def boot(self, bs: BootState) -> Partition:
        self.boot_state = bs
        regs = dict(bs.regs)
        if bs.mode is BootMode.PROTECTED32:
            cs = Segment(bs.code_selector, 0, 0xFFFFFFFF, 0x00C09B00)
        else:
            cs = Segment(bs.code_selector, 0, 0xFFFFFFFF, 0x00A09B00)
        ds = Segment(bs.data_selector, 0, 0xFFFFFFFF, 0x00C09300)
        st = InitialState(rip=bs.entry, rsp=regs.get("rsp", 0), rflags=bs.rflags, cr0=bs.cr0 | CR0.ET,
                          cr3=bs.cr3, cr4=bs.cr4, efer=bs.efer, cs=cs, ds=ds,
                          gdtr=(bs.gdt_base, bs.gdt_limit), gprs=regs)
        intercept = 0
        for code in (*CORE_INTERCEPTS, *self.config.extra_intercepts):
            intercept |= intercept_bit(code)
        self.base_intercept = intercept
        self.engine.enter_guest(st, self.npt, intercept=intercept, cr_read=CR_READ_INTERCEPTS,
                                cr_write=CR_WRITE_INTERCEPTS, exceptions=EXCEPTION_INTERCEPTS)
        self.vcpu.msr_state.efer = bs.efer
        return self

    def reset_vcpu_state(self) -> None:
        """What a vCPU reset/INIT/reboot must clear beyond the CPU registers: the CR pins (the
        series requires host userspace to clear them; INIT does not reset MSRs on hardware)."""
        self.crpin.reset()

    def save_state(self) -> dict:
        """Hypervisor-owned state that a snapshot must carry (CPU/RAM are the engine's)."""
        return {"crpin": self.crpin.save()}

    def restore_state(self, state: dict) -> None:
        self.crpin.restore(state["crpin"])

    def run(self, timeout: float | None = None) -> RunResult:
        if self.boot_state is None:
            raise ConfigError("nothing booted: call boot() or boot_image() first")
        return self.vcpu.run(timeout=timeout)

    @property
    def serial_output(self) -> bytes:
        return bytes(self.platform.uart.transcript)
