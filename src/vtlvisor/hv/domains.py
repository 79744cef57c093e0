"""Capability-scoped security domains (docs/domains.md): the KVM-native alternative to VSM.

A domain is a context on the vCPU (its own engine CPU state, MSR shadow and nested-page-table root,
like a VTL) but with no hierarchy: what a domain may do to others is exactly the set of capabilities
in its table. Capabilities are unforgeable (a guest holds only ``slot | generation << 16`` handles
into its own table; a stale or foreign handle is -EBADF), may be delegated only if held with the
DELEGATE right and only attenuated (rights subset, memory range narrowed), and revocation deletes
every capability derived from one, recursively. Only the hypervisor is trusted with everything.
"""

from __future__ import annotations

import copy
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..abi.domains import (
    CALL_ARGS,
    EBADF,
    EBUSY,
    EINVAL,
    ENOMEM,
    EPERM,
    KVM_FEATURE_VTLVISOR_DOMAINS,
    MAX_CAPS_PER_DOMAIN,
    MAX_DOMAINS,
    RETURN_REGS,
    WRITABLE_REGS,
    CapRights,
    CapType,
    DeleteFlags,
    DomainEntry,
    DomainEvent,
    DomainHypercall,
    DomainReg,
    InterceptAction,
    InterceptKind,
    MemAccess,
)
from ..abi.kvm_pv import CR0_PINNABLE, CR4_PINNABLE
from ..errors import ConfigError
from ..x86.arch import MSR, Vector, canonical
from ..x86.events import Event, EventKind
from ..x86.paging import MAXPHYADDR
from ..x86.svm import SvmExit, intercept_bit
from . import contexts
from .crpin import PinError
from .msrs import GuestGP, InterceptPending, MsrState

if TYPE_CHECKING:
    from ..engine.npt import NestedPageTable
    from .partition import Partition
    from .vcpu import Vcpu

log = logging.getLogger(__name__)
MASK64 = (1 << 64) - 1
ALL_RWX = CapRights.R | CapRights.W | CapRights.X
_REG_NAMES = {DomainReg.RIP: "rip", DomainReg.RSP: "rsp", DomainReg.RFLAGS: "rflags", DomainReg.RAX: "rax",
              DomainReg.CR0: "cr0", DomainReg.CR3: "cr3", DomainReg.CR4: "cr4"}
#: read-only named registers: MSRs (read without intercepts) and descriptor-table bases
_REG_MSRS = {DomainReg.EFER: MSR.IA32_EFER, DomainReg.STAR: MSR.IA32_STAR, DomainReg.LSTAR: MSR.IA32_LSTAR,
             DomainReg.CSTAR: MSR.IA32_CSTAR, DomainReg.SFMASK: MSR.IA32_FMASK,
             DomainReg.SYSENTER_CS: MSR.IA32_SYSENTER_CS, DomainReg.SYSENTER_ESP: MSR.IA32_SYSENTER_ESP,
             DomainReg.SYSENTER_EIP: MSR.IA32_SYSENTER_EIP}
_REG_TABLES = {DomainReg.GDTR_BASE: "gdtr", DomainReg.IDTR_BASE: "idtr"}
#: descriptor-table write exits -> (table index, bit in a DTR intercept's param1, name)
_DT_WRITES = {SvmExit.GDTR_WRITE: (0, "GDTR"), SvmExit.IDTR_WRITE: (1, "IDTR"), SvmExit.LDTR_WRITE: (2, "LDTR"),
              SvmExit.TR_WRITE: (3, "TR")}
_ERRNO = {EPERM: "EPERM", EBADF: "EBADF", EBUSY: "EBUSY", ENOMEM: "ENOMEM", EINVAL: "EINVAL"}
#: a domain's own name: it may hand it out (attenuated), and let others read its registers
SELF_RIGHTS = int(CapRights.DELEGATE | CapRights.REGS_READ)


@dataclass
class Cap:
    id: int
    type: CapType
    rights: int
    target: int = -1          # DOMAIN: the domain it names
    param0: int = 0
    param1: int = 0
    owner: int = 0
    parent: int | None = None
    children: list[int] = field(default_factory=list)
    slot: int = 0


@dataclass
class Domain:
    id: int
    ctx: object | None = None
    msr_state: MsrState = field(default_factory=MsrState)
    npt: NestedPageTable | None = None
    #: gpn -> (perms, immutable) set by memory-capability holders
    protections: dict[int, tuple[int, bool]] = field(default_factory=dict)
    slots: list[int | None] = field(default_factory=list)       # slot -> cap id
    gens: list[int] = field(default_factory=list)
    #: intercepts of this domain's events: (kind, param1) -> handler domain id
    intercepted_by: dict[tuple[int, int], int] = field(default_factory=dict)
    #: EVENT_INJECT events waiting for this domain to run
    pending: list[Event] = field(default_factory=list)
    #: gpn -> domain that set its protection last (named in violation evidence)
    grantors: dict[int, int] = field(default_factory=dict)


@dataclass
class PendingIntercept:
    source: int
    handler: int
    rip: int
    length: int
    kind: DomainEvent
    cr: int = -1
    value: int = 0
    msr: int = 0
    exit_code: int = 0        # DTR_WRITE: the SVM exit, to complete the instruction natively
    access: int = 0           # MEM_VIOLATION: MemAccess
    text: str = ""            # what happened, for the evidence of the decision


@dataclass
class Policy:
    """The host's limits on what the boot domain starts with (and so what can ever be delegated)."""

    memory: list[tuple[int, int, int]] = field(default_factory=list)     # (start, end, rights)
    create: bool = True
    intercepts: list[tuple[int, int]] = field(default_factory=list)     # (kind, param1)
    pins: list[tuple[int, int]] = field(default_factory=list)           # (cr, bits)

    @classmethod
    def default(cls, ram: int) -> Policy:
        return cls(memory=[(0, ram, int(ALL_RWX | CapRights.IMMUTABLE | CapRights.DELEGATE))],
                   intercepts=[(InterceptKind.CR0, MASK64), (InterceptKind.CR4, MASK64),
                               (InterceptKind.MSR, 0xFFFFFFFF), (InterceptKind.DTR, 0xF), (InterceptKind.MEM, 0x7)],
                   pins=[(0, CR0_PINNABLE), (4, CR4_PINNABLE)])

    @classmethod
    def load(cls, path: str, ram: int) -> Policy:
        """Parse a TOML policy; every mistake is a one-line ConfigError naming the file and key."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read policy '{path}': {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"policy '{path}': {e}") from None
        init = data.get("initial")
        if not isinstance(init, dict) or set(data) - {"initial"}:
            raise ConfigError(f"policy '{path}': expected exactly one [initial] table")
        unknown = set(init) - {"memory", "create", "intercepts", "pins"}
        if unknown:
            raise ConfigError(f"policy '{path}': unknown key(s) in [initial]: {', '.join(sorted(unknown))}")
        pol = cls(create=init.get("create", False))
        if not isinstance(pol.create, bool):
            raise ConfigError(f"policy '{path}': initial.create must be true or false")
        for i, m in enumerate(init.get("memory", [])):
            where = f"policy '{path}': initial.memory[{i}]"
            if not isinstance(m, dict) or set(m) - {"start", "end", "rights"}:
                raise ConfigError(f"{where}: expected {{start, end, rights}}")
            start, end = m.get("start", 0), m.get("end", ram)
            if end == "all":
                end = ram
            if not (isinstance(start, int) and isinstance(end, int)) or start % 4096 or end % 4096 \
                    or not 0 <= start < end <= ram:
                raise ConfigError(f"{where}: start/end must be page-aligned and inside RAM (0..{ram:#x})")
            rights = 0
            for ch in str(m.get("rights", "")):
                bit = {"R": CapRights.R, "W": CapRights.W, "X": CapRights.X, "I": CapRights.IMMUTABLE,
                       "D": CapRights.DELEGATE}.get(ch)
                if bit is None:
                    raise ConfigError(f"{where}: rights letters are R W X I(mmutable) D(elegate), not {ch!r}")
                rights |= bit
            pol.memory.append((start, end, int(rights)))
        kinds = {"cr0": InterceptKind.CR0, "cr4": InterceptKind.CR4, "msr": InterceptKind.MSR,
                 "dtr": InterceptKind.DTR, "mem": InterceptKind.MEM}
        for i, it in enumerate(init.get("intercepts", [])):
            where = f"policy '{path}': initial.intercepts[{i}]"
            if not isinstance(it, dict) or it.get("kind") not in kinds:
                raise ConfigError(f"{where}: kind must be one of {', '.join(kinds)}")
            if set(it) - {"kind", "mask", "msr", "tables", "access"}:
                raise ConfigError(f"{where}: keys are kind and one of mask, msr, tables, access")
            param = it.get("mask", it.get("msr", it.get("tables", it.get("access", MASK64))))
            if not isinstance(param, int) or param < 0:
                raise ConfigError(f"{where}: mask/msr/tables must be a non-negative integer")
            pol.intercepts.append((kinds[it["kind"]], param))
        for i, p in enumerate(init.get("pins", [])):
            where = f"policy '{path}': initial.pins[{i}]"
            if not isinstance(p, dict) or p.get("cr") not in (0, 4) or not isinstance(p.get("bits"), int):
                raise ConfigError(f"{where}: expected {{cr = 0|4, bits = integer}}")
            allowed = CR0_PINNABLE if p["cr"] == 0 else CR4_PINNABLE
            if p["bits"] & ~allowed:
                raise ConfigError(f"{where}: bits {p['bits'] & ~allowed:#x} are not pinnable in CR{p['cr']}")
            pol.pins.append((p["cr"], p["bits"]))
        return pol


class HcError(Exception):
    def __init__(self, errno: int, why: str = "") -> None:
        super().__init__(errno)
        self.errno = errno
        self.why = why


class Domains:
    def __init__(self, partition: Partition, policy: Policy | None = None) -> None:
        self.p = partition
        self.vcpu = partition.vcpu
        self.engine = partition.engine
        self.caps: dict[int, Cap] = {}
        self._next_cap = 1
        d0 = Domain(0, npt=partition.npt)
        self.domains: dict[int, Domain] = {0: d0}
        self.current = 0
        self.call_stack: list[tuple[int, PendingIntercept | None]] = []
        self.pending: PendingIntercept | None = None
        pol = policy or Policy.default(partition.memory.size)
        self._new_cap(0, CapType.DOMAIN, SELF_RIGHTS, target=0)   # names itself; may hand the name out
        for start, end, rights in pol.memory:
            self._new_cap(0, CapType.MEMORY, rights, param0=start, param1=end)
        if pol.create:
            self._new_cap(0, CapType.CREATE, int(CapRights.DELEGATE))
        for kind, param in pol.intercepts:
            if kind != InterceptKind.MEM:
                self._new_cap(0, CapType.INTERCEPT, int(CapRights.DELEGATE), param0=kind, param1=param)
        for cr, bits in pol.pins:
            self._new_cap(0, CapType.PIN, int(CapRights.DELEGATE), param0=cr, param1=bits)
        for kind, param in pol.intercepts:      # memory-violation intercepts last (slot 9 by default)
            if kind == InterceptKind.MEM:
                self._new_cap(0, CapType.INTERCEPT, int(CapRights.DELEGATE), param0=kind, param1=param)
        kvm = partition.kvm
        kvm.extra_features |= 1 << KVM_FEATURE_VTLVISOR_DOMAINS
        for nr, fn in ((DomainHypercall.DOMAIN_CREATE, self.hc_create),
                       (DomainHypercall.CAP_DELEGATE, self.hc_delegate),
                       (DomainHypercall.CAP_REVOKE, self.hc_revoke),
                       (DomainHypercall.CAP_DELETE, self.hc_delete),
                       (DomainHypercall.CAP_QUERY, self.hc_query),
                       (DomainHypercall.MEM_PROTECT, self.hc_mem_protect),
                       (DomainHypercall.INTERCEPT_SET, self.hc_intercept_set),
                       (DomainHypercall.REGS_GET, self.hc_regs_get),
                       (DomainHypercall.REGS_SET, self.hc_regs_set),
                       (DomainHypercall.EVENT_INJECT, self.hc_inject),
                       (DomainHypercall.CR_PIN, self.hc_pin),
                       (DomainHypercall.DOMAIN_CALL, self.hc_call),
                       (DomainHypercall.DOMAIN_RETURN, self.hc_return),
                       (DomainHypercall.DOMAIN_SELF, lambda v, *a: self.current)):
            kvm.handlers[nr] = self._wrap(fn)
        self.vcpu.hooks.cr_write_filters.insert(0, self.cr_write_filter)
        self.vcpu.msrs.write_filters.insert(0, self.msr_write_filter)
        self.vcpu.hooks.intercept_filters.append(self.intercept_filter)
        if partition.vsm is None:
            # external interrupts belong to the boot domain (the feature domains have no handlers for them)
            self.vcpu.hooks.interrupts_allowed = lambda: self.current == 0

    # ================================================================== capabilities
    def _new_cap(self, owner: int, type_: CapType, rights: int, *, target: int = -1, param0: int = 0,
                 param1: int = 0, parent: int | None = None) -> int:
        d = self.domains[owner]
        slot = next((i for i, c in enumerate(d.slots) if c is None), None)
        if slot is None:
            if len(d.slots) >= MAX_CAPS_PER_DOMAIN:
                raise HcError(ENOMEM)
            d.slots.append(None)
            d.gens.append(0)
            slot = len(d.slots) - 1
        cap = Cap(self._next_cap, type_, rights, target, param0, param1, owner, parent, slot=slot)
        self._next_cap += 1
        self.caps[cap.id] = cap
        d.slots[slot] = cap.id
        if parent is not None:
            self.caps[parent].children.append(cap.id)
        return slot | (d.gens[slot] << 16)

    def lookup(self, handle: int, type_: CapType | None = None, need: int = 0) -> Cap:
        """Resolve a handle in the *current* domain's table; forged or stale -> EBADF."""
        d = self.domains[self.current]
        slot, gen = handle & 0xFFFF, (handle >> 16) & 0xFFFF
        if handle >> 32 or slot >= len(d.slots) or d.slots[slot] is None or d.gens[slot] != gen:
            raise HcError(EBADF, f"handle {handle:#x} names no capability in domain {self.current}'s table")
        cap = self.caps[d.slots[slot]]
        if type_ is not None and cap.type != type_:
            raise HcError(EBADF, f"handle {handle:#x} is a {cap.type.name} capability, not {type_.name}")
        if need & ~cap.rights:
            raise HcError(EPERM, f"{cap.type.name} capability {handle:#x} lacks "
                                 f"{CapRights(need & ~cap.rights)!r}")
        return cap

    def _destroy(self, cap_id: int) -> None:
        """Delete a capability and everything derived from it. Iterative: a guest can build a derivation
        chain thousands deep (16 domains x 256 slots), deeper than Python's recursion limit."""
        root = self.caps[cap_id]
        if root.parent is not None and root.parent in self.caps:
            self.caps[root.parent].children.remove(cap_id)
        dead: list[Cap] = []
        todo = [cap_id]
        while todo:
            cap = self.caps.pop(todo.pop(), None)
            if cap is None:
                continue
            dead.append(cap)
            todo.extend(cap.children)
            d = self.domains.get(cap.owner)
            if d is not None and d.slots[cap.slot] == cap.id:
                d.slots[cap.slot] = None
                d.gens[cap.slot] = (d.gens[cap.slot] + 1) & 0xFFFF      # the old handle is now stale
        for cap in dead:
            if cap.type != CapType.INTERCEPT:
                continue
            key = (cap.param0, cap.param1)
            if not any((c.param0, c.param1) == key for c in self.holds(cap.owner, CapType.INTERCEPT)):
                for dom in self.domains.values():
                    if dom.intercepted_by.get(key) == cap.owner:
                        del dom.intercepted_by[key]

    def holds(self, domain: int, type_: CapType) -> list[Cap]:
        d = self.domains.get(domain)
        if d is None:
            return []
        return [self.caps[c] for c in d.slots if c is not None and c in self.caps and self.caps[c].type == type_]

    # ================================================================== hypercall plumbing
    def _wrap(self, fn):
        name = fn.__name__.removeprefix("hc_").upper() if hasattr(fn, "__name__") else "?"
        name = {"CREATE": "DOMAIN_CREATE", "DELEGATE": "CAP_DELEGATE", "REVOKE": "CAP_REVOKE", "DELETE": "CAP_DELETE",
                "QUERY": "CAP_QUERY", "INJECT": "EVENT_INJECT", "PIN": "CR_PIN", "CALL": "DOMAIN_CALL",
                "RETURN": "DOMAIN_RETURN", "<LAMBDA>": "DOMAIN_SELF"}.get(name, name)

        def handler(vcpu: Vcpu, a0: int, a1: int, a2: int, a3: int) -> int:
            try:
                ret = fn(vcpu, a0, a1, a2, a3)
            except HcError as e:
                # the hypervisor's own account of a refusal (hv/evidence.py): who asked, what, and why
                vcpu.security_event("refused_domain_call",
                                    f"domain {self.current}: {name}({a0:#x}, {a1:#x}, {a2:#x}, {a3:#x}) -> "
                                    f"-{_ERRNO.get(e.errno, e.errno)}" + (f" ({e.why})" if e.why else ""),
                                    domain=self.current, call=name, errno=e.errno)
                return -e.errno
            if vcpu.hooks.trace:
                vcpu.hooks.trace("domain_hypercall", {"nr": fn.__name__, "domain": self.current})
            return ret
        return handler

    def _domain_cap(self, handle: int, need: int = 0) -> Cap:
        cap = self.lookup(handle, CapType.DOMAIN, need)
        if cap.target not in self.domains:
            raise HcError(EBADF, f"domain {cap.target} no longer exists")
        return cap

    # ================================================================== hypercalls
    def hc_create(self, vcpu: Vcpu, rip: int, rsp: int, a2: int, a3: int) -> int:
        if not self.holds(self.current, CapType.CREATE):
            raise HcError(EPERM, "no CREATE capability")
        if len(self.domains) >= MAX_DOMAINS or not canonical(rip) or not canonical(rsp):
            raise HcError(EINVAL if len(self.domains) < MAX_DOMAINS else ENOMEM)
        try:
            npt = self.p.build_npt()
        except MemoryError:
            raise HcError(ENOMEM) from None
        new_id = max(self.domains) + 1
        dom = Domain(new_id, npt=npt, msr_state=copy.deepcopy(vcpu.msr_state))   # no shared MTRR dict
        # start as a copy of the creator's CPU state (same page tables, modes) at the given entry
        eng = self.engine
        saved = eng.uc.context_save()
        eng.rip = rip
        eng.set_reg("rsp", rsp)
        dom.ctx = eng.uc.context_save()
        eng.uc.context_restore(saved)
        self.domains[new_id] = dom
        self._new_cap(new_id, CapType.DOMAIN, SELF_RIGHTS, target=new_id)
        if vcpu.hooks.trace:
            vcpu.hooks.trace("domain_create", {"id": new_id, "rip": rip})
        return self._new_cap(self.current, CapType.DOMAIN,
                             int(CapRights.CALL | CapRights.REGS_READ | CapRights.REGS_WRITE | CapRights.INJECT
                                 | CapRights.DELEGATE), target=new_id)

    def hc_delegate(self, vcpu: Vcpu, handle: int, recipient: int, rights: int, narrow_gpa: int) -> int:
        cap = self.lookup(handle, need=CapRights.DELEGATE)
        to = self._domain_cap(recipient).target
        if rights & ~cap.rights:
            raise HcError(EPERM, f"rights {rights:#x} exceed the capability's {cap.rights:#x}")   # attenuation only
        p0, p1 = cap.param0, cap.param1
        if narrow_gpa:
            if cap.type not in (CapType.MEMORY, CapType.INTERCEPT) or narrow_gpa % 8 \
                    or not self.p.memory.contains(narrow_gpa, 16):
                raise HcError(EINVAL)
            n0, n1 = self.p.memory.read_u64(narrow_gpa), self.p.memory.read_u64(narrow_gpa + 8)
            if cap.type == CapType.MEMORY:
                if n0 % 4096 or n1 % 4096 or not p0 <= n0 < n1 <= p1:
                    raise HcError(EINVAL, "the narrowed range must be page-aligned and inside the capability's")
                p0, p1 = n0, n1
            else:
                # an intercept narrows to a subset: CR/descriptor-table/access bits, or one MSR of "any"
                ok = (n0 == p1 or p1 == 0xFFFFFFFF) if p0 == InterceptKind.MSR else (n0 and not n0 & ~p1)
                if not ok:
                    raise HcError(EINVAL, f"intercept parameter {n0:#x} is not a subset of {p1:#x}")
                p1 = n0
        return self._new_cap(to, cap.type, rights, target=cap.target, param0=p0, param1=p1, parent=cap.id)

    def hc_revoke(self, vcpu: Vcpu, handle: int, *_: int) -> int:
        cap = self.lookup(handle)
        for child in list(cap.children):
            if child in self.caps:
                self._destroy(child)
        return 0

    def hc_delete(self, vcpu: Vcpu, handle: int, flags: int, *_: int) -> int:
        if flags & ~int(DeleteFlags.KEEP_DERIVED):
            raise HcError(EINVAL)
        cap = self.lookup(handle)
        if flags & DeleteFlags.KEEP_DERIVED:
            # the derived capabilities survive: re-attached to this one's parent (roots if it had none)
            parent = self.caps.get(cap.parent) if cap.parent is not None else None
            for child in cap.children:
                if child in self.caps:
                    self.caps[child].parent = cap.parent
                    if parent is not None:
                        parent.children.append(child)
            cap.children = []
        self._destroy(cap.id)
        return 0

    def hc_query(self, vcpu: Vcpu, handle: int, *_: int) -> int:
        cap = self.lookup(handle)
        vcpu.set_reg("rbx", cap.param0)
        vcpu.set_reg("rcx", cap.param1)
        return int(cap.type) | (cap.rights << 8) | ((cap.target & 0xFFFF) << 32)

    def hc_mem_protect(self, vcpu: Vcpu, a0: int, target_handle: int, gpa: int, pages: int) -> int:
        handle, perms, immutable = a0 & 0xFFFFFFFF, (a0 >> 32) & 7, bool(a0 >> 36 & 1)
        if a0 >> 37:
            raise HcError(EINVAL)
        cap = self.lookup(handle, CapType.MEMORY)
        target = self.domains[self._domain_cap(target_handle).target]
        if perms & ~cap.rights or (immutable and not cap.rights & CapRights.IMMUTABLE):
            raise HcError(EPERM, f"permissions {perms:#x}{' immutable' if immutable else ''} exceed the MEMORY "
                                 f"capability's rights {cap.rights:#x}")
        if gpa % 4096 or pages == 0 or pages > (1 << 20):
            raise HcError(EINVAL)
        end = gpa + pages * 4096
        if not cap.param0 <= gpa < end <= cap.param1:
            # outside the range this capability covers
            raise HcError(EPERM, f"{gpa:#x}-{end - 1:#x} is outside the capability's range "
                                 f"{cap.param0:#x}-{cap.param1 - 1:#x}")
        if perms and not perms & CapRights.R:
            raise HcError(EINVAL)                        # W or X needs R
        gpns = range(gpa >> 12, end >> 12)
        prot = target.protections
        fixed = next((g for g in gpns if prot.get(g, (0, False))[1]), None)
        if fixed is not None:
            # a one-way grant cannot be changed
            raise HcError(EPERM, f"page {fixed << 12:#x} of domain {target.id} has an immutable grant")
        entry = _npt_entry(0, perms)
        npt = target.npt
        for g in gpns:
            prot[g] = (perms, immutable)
            target.grantors[g] = self.current
            npt.set(g << 12, (g << 12) | entry if entry else 0)
        self.engine.flush_tlb()
        self.engine.flush_tb()
        return 0

    def hc_intercept_set(self, vcpu: Vcpu, handle: int, source_handle: int, on: int, a3: int) -> int:
        cap = self.lookup(handle, CapType.INTERCEPT)
        source = self.domains[self._domain_cap(source_handle).target]
        if source.id == self.current:
            raise HcError(EINVAL, "a domain cannot intercept itself")
        key = (cap.param0, cap.param1)
        if on:
            holder = source.intercepted_by.get(key)
            if holder is not None and holder != self.current:
                # someone else already holds this intercept
                raise HcError(EPERM, f"domain {holder} already intercepts this in domain {source.id}")
            source.intercepted_by[key] = self.current
        elif source.intercepted_by.get(key) == self.current:
            del source.intercepted_by[key]
        return 0

    def hc_regs_get(self, vcpu: Vcpu, handle: int, reg: int, a2: int, a3: int) -> int:
        cap = self._domain_cap(handle, CapRights.REGS_READ)
        if reg not in _REG_NAMES and reg not in _REG_MSRS and reg not in _REG_TABLES:
            raise HcError(EINVAL)
        with self.viewing(cap.target):
            if reg in _REG_NAMES:
                value = vcpu.reg(_REG_NAMES[DomainReg(reg)])
            elif reg in _REG_TABLES:
                value = vcpu.segment(_REG_TABLES[DomainReg(reg)]).base
            else:
                vcpu._vsm_bypass = True
                try:
                    value = vcpu.msrs.read(vcpu, _REG_MSRS[DomainReg(reg)])
                finally:
                    vcpu._vsm_bypass = False
        vcpu.set_reg("rbx", value)
        return 0

    def hc_regs_set(self, vcpu: Vcpu, handle: int, reg: int, value: int, a3: int) -> int:
        cap = self._domain_cap(handle, CapRights.REGS_WRITE)
        if reg not in WRITABLE_REGS:
            raise HcError(EINVAL, f"register {reg} cannot be written")
        if cap.target == self.current:
            # a domain changes its own registers with instructions, which are subject to intercepts
            # (VSM's SetVpRegisters on one's own VTL skips them: docs/guest.md, vtlvisor caveat 4)
            raise HcError(EINVAL, "REGS_SET on the calling domain itself")
        name = _REG_NAMES[DomainReg(reg)]
        with self.viewing(cap.target):
            if name in ("cr0", "cr4"):
                vcpu._vsm_bypass = True
                try:
                    vcpu.write_cr(int(name[2]), value)
                except GuestGP:
                    raise HcError(EINVAL) from None
                finally:
                    vcpu._vsm_bypass = False
            elif name == "rip" and not canonical(value):
                raise HcError(EINVAL)
            elif name == "cr3" and value >> MAXPHYADDR:
                # reserved bits: MOV CR3 would #GP (the victim's next page walk would machine-check)
                raise HcError(EINVAL, f"CR3 {value:#x} sets bits above MAXPHYADDR")
            else:
                vcpu.set_reg(name, value | (2 if name == "rflags" else 0))
        return 0

    def hc_inject(self, vcpu: Vcpu, handle: int, vector: int, error_code: int, a3: int) -> int:
        cap = self._domain_cap(handle, CapRights.INJECT)
        if vector > 31 or vector in (2, 15) or vector >= 22 and vector not in (29, 30):
            raise HcError(EINVAL)
        ev = Event(vector, EventKind.EXCEPTION, None if error_code == MASK64 else error_code & 0xFFFFFFFF)
        if cap.target == self.current:
            vcpu.queue_event(ev)
        else:
            self.domains[cap.target].pending.append(ev)
        return 0

    def hc_pin(self, vcpu: Vcpu, handle: int, cr: int, bits: int, a3: int) -> int:
        cap = self.lookup(handle, CapType.PIN)
        if cr != cap.param0 or bits & ~cap.param1:
            raise HcError(EPERM, f"CR{cr} bits {bits:#x} are not pinnable with this capability")
        if bits & ~vcpu.reg(f"cr{cr}"):
            raise HcError(EINVAL)                        # only bits that are set can be pinned high
        low, high = self.p.crpin.pinned(cr)
        try:
            self.p.crpin.set_pins(cr, high=high | bits)
        except PinError:
            raise HcError(EINVAL) from None
        return 0

    def hc_call(self, vcpu: Vcpu, handle: int, *_: int) -> int:
        cap = self._domain_cap(handle, CapRights.CALL)
        if cap.target == self.current or len(self.call_stack) >= MAX_DOMAINS:
            raise HcError(EINVAL)
        if any(c == cap.target for c, _ in self.call_stack):
            raise HcError(EBUSY, f"domain {cap.target} is waiting for a call to return")   # no re-entry
        target = cap.target
        vcpu.request_outer(lambda: self._enter(target, CALL_ARGS, None))
        return 0

    def hc_return(self, vcpu: Vcpu, action: int, ret0: int, ret1: int, a3: int) -> int:
        """Return to the caller: after a DOMAIN_CALL its RAX/RDX become ``ret0``/``ret1``; after an
        intercept, ``action`` says what happens to the intercepted instruction."""
        if not self.call_stack:
            raise HcError(EINVAL)
        caller, intercept = self.call_stack[-1]
        if intercept is not None and action not in (0, 1, 2):
            raise HcError(EINVAL)
        back = {} if intercept is not None else {r: vcpu.reg(r) for r in RETURN_REGS}
        vcpu.request_outer(lambda: self._leave(action, ret0, ret1, back))
        return 0

    # ================================================================== switching
    def _swap(self, target: int, copy: tuple[str, ...]) -> None:
        eng = self.engine
        vals = [eng.reg(r) for r in copy]
        contexts.save(self.vcpu, self.domains[self.current])
        t = self.domains[target]
        contexts.install(self.vcpu, t, t.npt.root, self._intercepts_for(t))
        for r, v in zip(copy, vals, strict=True):
            eng.set_reg(r, v)
        prev, self.current = self.current, target
        if self.vcpu.hooks.trace:
            self.vcpu.hooks.trace("domain_switch", {"from": prev, "to": target})
        while t.pending:
            self.vcpu.queue_event(t.pending.pop(0))

    def _enter(self, target: int, copy: tuple[str, ...], intercept: PendingIntercept | None) -> None:
        self.call_stack.append((self.current, intercept))
        self._swap(target, copy)
        self.engine.set_reg("rax", int(DomainEntry.CALL if intercept is None else DomainEntry.INTERCEPT))

    def _leave(self, action: int, ret0: int = 0, ret1: int = 0, back: dict[str, int] | None = None) -> None:
        caller, intercept = self.call_stack.pop()
        handler = self.current
        self._swap(caller, ())
        if intercept is None:
            self.engine.set_reg("rax", ret0)
            self.engine.set_reg("rdx", ret1)
            for r, val in (back or {}).items():
                self.engine.set_reg(r, val)
            return
        v = self.vcpu
        if intercept.kind == DomainEvent.MEM_VIOLATION and (action == InterceptAction.COMPLETE or (
                action == InterceptAction.SKIP and intercept.access == MemAccess.EXECUTE)):
            action = InterceptAction.INJECT_GP             # an access outside the view cannot be granted
        if action == InterceptAction.SKIP:
            length = intercept.length
            if intercept.kind == DomainEvent.MEM_VIOLATION:
                try:
                    length = v.fetch_insn().len
                except Exception:   # noqa: BLE001 - cannot decode: fall back to the #GP
                    action, length = InterceptAction.INJECT_GP, 0
            if action == InterceptAction.SKIP:
                self.engine.rip = (intercept.rip + length) & MASK64
                v.security_event("skip", f"domain {handler} skipped domain {caller}'s {intercept.text}",
                                 domain=caller, by=handler)
                return
        if action == InterceptAction.INJECT_GP:
            v.queue_event(Event(Vector.GP, EventKind.EXCEPTION, 0))
            v.security_event("inject", f"domain {handler} refused domain {caller}'s {intercept.text}: #GP(0) "
                             f"injected at RIP {intercept.rip:#x}", domain=caller, by=handler)
            return
        if intercept.kind == DomainEvent.DTR_WRITE:
            self._complete_natively(intercept.exit_code)
            return
        v._vsm_bypass = True
        try:
            if intercept.kind == DomainEvent.CR_WRITE:
                v.write_cr(intercept.cr, intercept.value)
            elif intercept.kind == DomainEvent.MSR_WRITE:
                v.msrs.write(v, intercept.msr, intercept.value)
            self.engine.rip = (intercept.rip + intercept.length) & MASK64
        except GuestGP:
            v.queue_event(Event(Vector.GP, EventKind.EXCEPTION, 0))
        finally:
            v._vsm_bypass = False

    def _complete_natively(self, code: int) -> None:
        """Let an intercepted descriptor-table load complete: run it once with its exit disabled."""
        eng = self.engine
        eng.set_intercept(code, False)
        try:
            err = eng.run(count=1)
            if err:
                self.vcpu._engine_error(err)
        finally:
            eng.set_intercept(code, True)

    def _intercepts_for(self, dom: Domain) -> int:
        """SVM intercepts while ``dom`` runs: the core set, plus descriptor-table writes when someone
        intercepts them (they are enabled in the engine only then)."""
        value = self.p.base_intercept
        if any(k == InterceptKind.DTR for k, _ in dom.intercepted_by):
            for code in _DT_WRITES:
                value |= intercept_bit(code)
        return value

    def viewing(self, domain: int):
        return contexts.viewing(self.vcpu, self.domains[domain], domain == self.current)

    # ================================================================== intercepts and violations
    def _handler(self, kind: InterceptKind, match) -> int | None:
        """The domain that intercepts ``kind`` events of the running domain (``match(param1)``), or None."""
        for (k, param), handler in self.domains[self.current].intercepted_by.items():
            if k == kind and match(param):
                return handler
        return None

    def _available(self, handler: int) -> bool:
        """A handler can take an event unless it is the running domain or waiting on the call stack."""
        return handler in self.domains and handler != self.current and all(c != handler for c, _ in self.call_stack)

    def _intercept(self, pi: PendingIntercept, regs: dict[str, int] | None = None) -> None:
        if not self._available(pi.handler):
            # fail closed: nobody can decide, so the event is refused
            self.vcpu.security_event("inject", f"domain {pi.source}'s {pi.text}: handler domain {pi.handler} "
                                     "cannot run now -> #GP(0)", domain=pi.source)
            raise GuestGP(0, "domain intercept handler unavailable")
        regs = regs or {"rdi": int(pi.kind), "rsi": pi.value if pi.kind != DomainEvent.MSR_WRITE else pi.msr,
                        "rdx": pi.source, "r8": pi.rip, "r9": pi.value}

        def go() -> None:
            self._enter(pi.handler, (), pi)
            for r, val in regs.items():
                self.engine.set_reg(r, val)
        self.vcpu.security_event("intercept", f"domain {pi.source}: {pi.text} at RIP {pi.rip:#x} -> "
                                 f"domain {pi.handler}", domain=pi.source, to=pi.handler, event=pi.kind.name)
        if self.vcpu.hooks.trace:
            self.vcpu.hooks.trace("domain_intercept", {"kind": pi.kind.name, "from": pi.source, "to": pi.handler})
        self.vcpu.request_outer(go)
        raise InterceptPending()

    def cr_write_filter(self, vcpu: Vcpu, cr: int, old: int, new: int) -> bool:
        if vcpu._vsm_bypass:
            return False
        kind = InterceptKind.CR0 if cr == 0 else InterceptKind.CR4 if cr == 4 else None
        handler = self._handler(kind, lambda mask: (old ^ new) & mask)
        if handler is not None:
            rip = vcpu.engine.rip
            self._intercept(PendingIntercept(self.current, handler, rip, vcpu.fetch_insn().len,
                                             DomainEvent.CR_WRITE, cr=cr, value=new,
                                             text=f"CR{cr} write {old:#x}->{new:#x}"),
                            {"rdi": int(DomainEvent.CR_WRITE), "rsi": new, "rdx": self.current, "r8": rip,
                             "r9": new, "r10": cr})
        return False

    def msr_write_filter(self, vcpu: Vcpu, msr: int, value: int) -> bool:
        if vcpu._vsm_bypass:
            return False
        handler = self._handler(InterceptKind.MSR, lambda which: which in (msr, 0xFFFFFFFF))
        if handler is not None:
            self._intercept(PendingIntercept(self.current, handler, vcpu.engine.rip, 2, DomainEvent.MSR_WRITE,
                                             value=value, msr=msr, text=f"wrmsr {msr:#x} <- {value:#x}"))
        return False

    def intercept_filter(self, vcpu: Vcpu, code: int) -> bool:
        if code in _DT_WRITES:
            table, name = _DT_WRITES[code]
            handler = self._handler(InterceptKind.DTR, lambda tables: tables >> table & 1)
            if handler is None:
                return False
            base, limit = self._dt_operand(vcpu, code)
            what = f"{name} write (base {base:#x})" if table < 2 else f"{name} write (selector {base:#x})"
            self._intercept(PendingIntercept(self.current, handler, vcpu.engine.rip, 0, DomainEvent.DTR_WRITE,
                                             value=base, exit_code=code, text=what),
                            {"rdi": int(DomainEvent.DTR_WRITE), "rsi": table, "rdx": self.current,
                             "r8": vcpu.engine.rip, "r9": base, "r10": limit})
        if code == SvmExit.NPF:
            gpa = self.engine.exit_info_2()
            if not self.p.memory.contains(gpa, 1):
                return False                                  # not RAM: the core reports it
            info = self.engine.exit_info_1()
            access = MemAccess.EXECUTE if info & 0x10 else MemAccess.WRITE if info & 0x2 else MemAccess.READ
            rip = self.engine.rip
            dom = self.domains[self.current]
            grantor = dom.grantors.get(gpa >> 12)
            what = (f"{access.name.lower()} of GPA {gpa:#x} outside its view"
                    + (f" (protected by domain {grantor})" if grantor is not None else ""))
            if vcpu.hooks.trace:
                vcpu.hooks.trace("domain_violation", {"domain": self.current, "gpa": gpa, "access": access.name})
            handler = self._handler(InterceptKind.MEM, lambda mask: mask >> access & 1)
            if handler is not None and self._available(handler):
                self._intercept(PendingIntercept(self.current, handler, rip, 0, DomainEvent.MEM_VIOLATION,
                                                 value=gpa, access=access, text=what),
                                {"rdi": int(DomainEvent.MEM_VIOLATION), "rsi": gpa, "rdx": self.current,
                                 "r8": rip, "r9": int(access), "r10": MASK64 if grantor is None else grantor})
            vcpu.security_event("gpa_violation", f"domain {self.current}: {what} at RIP {rip:#x} -> #GP(0)",
                                domain=self.current, gpa=gpa)
            raise GuestGP(0, f"domain {self.current}: access to {gpa:#x} outside its view")
        return False

    @staticmethod
    def _dt_operand(vcpu: Vcpu, code: int) -> tuple[int, int]:
        """(base, limit) LGDT/LIDT is about to load, or (selector, 0) for LLDT/LTR."""
        from ..x86 import decode as dec
        ins = vcpu.fetch_insn()
        if code in (SvmExit.GDTR_WRITE, SvmExit.IDTR_WRITE):
            size = 10 if vcpu.engine.code64() else 6
            raw = vcpu._read_mem_operand(ins, size).to_bytes(size, "little")
            return int.from_bytes(raw[2:], "little"), int.from_bytes(raw[:2], "little")
        if ins.op0_kind == dec.OpKind.REGISTER:
            g = dec.gpr_index(ins.op0_register)
            return ((vcpu.engine.gpr(g[0]) & 0xFFFF) if g else 0), 0
        return vcpu._read_mem_operand(ins, 2), 0


def _npt_entry(gpa: int, perms: int) -> int:
    from ..engine.npt import LEAF_RWX, NX
    if not perms & CapRights.R:
        return 0
    e = (gpa & ~0xFFF) | (LEAF_RWX & ~2)
    if perms & CapRights.W:
        e |= 2
    if not perms & CapRights.X:
        e |= NX
    return e
