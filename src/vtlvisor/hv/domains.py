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
    EBADF,
    EINVAL,
    ENOMEM,
    EPERM,
    KVM_FEATURE_VTLVISOR_DOMAINS,
    MAX_CAPS_PER_DOMAIN,
    MAX_DOMAINS,
    CapRights,
    CapType,
    DomainEvent,
    DomainHypercall,
    DomainReg,
    InterceptAction,
    InterceptKind,
)
from ..abi.kvm_pv import CR0_PINNABLE, CR4_PINNABLE
from ..errors import ConfigError
from ..x86.arch import Vector, canonical
from ..x86.events import Event, EventKind
from ..x86.svm import SvmExit
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
#: registers a DOMAIN_CALL passes to the callee (the hypercall's own RAX/RBX/RCX/RDX/RSI are not)
CALL_ARGS = ("rdi", "r8", "r9", "r10")


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
    alive: bool = True


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
                               (InterceptKind.MSR, 0xFFFFFFFF), (InterceptKind.DTR, 0xF)],
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
                 "dtr": InterceptKind.DTR}
        for i, it in enumerate(init.get("intercepts", [])):
            where = f"policy '{path}': initial.intercepts[{i}]"
            if not isinstance(it, dict) or it.get("kind") not in kinds:
                raise ConfigError(f"{where}: kind must be one of {', '.join(kinds)}")
            param = it.get("mask", it.get("msr", it.get("tables", MASK64)))
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
    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


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
        self._new_cap(0, CapType.DOMAIN, int(CapRights.DELEGATE), target=0)   # names itself; may hand the name out
        for start, end, rights in pol.memory:
            self._new_cap(0, CapType.MEMORY, rights, param0=start, param1=end)
        if pol.create:
            self._new_cap(0, CapType.CREATE, int(CapRights.DELEGATE))
        for kind, param in pol.intercepts:
            self._new_cap(0, CapType.INTERCEPT, int(CapRights.DELEGATE), param0=kind, param1=param)
        for cr, bits in pol.pins:
            self._new_cap(0, CapType.PIN, int(CapRights.DELEGATE), param0=cr, param1=bits)
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
            raise HcError(EBADF)
        cap = self.caps[d.slots[slot]]
        if type_ is not None and cap.type != type_:
            raise HcError(EBADF)
        if need & ~cap.rights:
            raise HcError(EPERM)
        return cap

    def _destroy(self, cap_id: int) -> None:
        cap = self.caps.pop(cap_id)
        for child in list(cap.children):
            if child in self.caps:
                self._destroy(child)
        cap.alive = False
        d = self.domains.get(cap.owner)
        if d is not None and d.slots[cap.slot] == cap_id:
            d.slots[cap.slot] = None
            d.gens[cap.slot] = (d.gens[cap.slot] + 1) & 0xFFFF      # the old handle is now stale
        if cap.parent is not None and cap.parent in self.caps:
            self.caps[cap.parent].children.remove(cap_id)
        if cap.type == CapType.INTERCEPT:
            for dom in self.domains.values():
                for k, h in list(dom.intercepted_by.items()):
                    if h == cap.owner and k[0] == cap.param0:
                        del dom.intercepted_by[k]

    def holds(self, domain: int, type_: CapType) -> list[Cap]:
        return [self.caps[c] for c in self.domains[domain].slots if c is not None and self.caps[c].type == type_]

    # ================================================================== hypercall plumbing
    def _wrap(self, fn):
        def handler(vcpu: Vcpu, a0: int, a1: int, a2: int, a3: int) -> int:
            try:
                ret = fn(vcpu, a0, a1, a2, a3)
            except HcError as e:
                return -e.errno
            if vcpu.hooks.trace:
                vcpu.hooks.trace("domain_hypercall", {"nr": fn.__name__, "domain": self.current})
            return ret
        return handler

    def _domain_cap(self, handle: int, need: int = 0) -> Cap:
        cap = self.lookup(handle, CapType.DOMAIN, need)
        if cap.target not in self.domains:
            raise HcError(EBADF)
        return cap

    # ================================================================== hypercalls
    def hc_create(self, vcpu: Vcpu, rip: int, rsp: int, a2: int, a3: int) -> int:
        if not self.holds(self.current, CapType.CREATE):
            raise HcError(EPERM)
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
        self._new_cap(new_id, CapType.DOMAIN, int(CapRights.DELEGATE), target=new_id)
        if vcpu.hooks.trace:
            vcpu.hooks.trace("domain_create", {"id": new_id, "rip": rip})
        return self._new_cap(self.current, CapType.DOMAIN,
                             int(CapRights.CALL | CapRights.REGS_READ | CapRights.REGS_WRITE | CapRights.INJECT
                                 | CapRights.DELEGATE), target=new_id)

    def hc_delegate(self, vcpu: Vcpu, handle: int, recipient: int, rights: int, narrow_gpa: int) -> int:
        cap = self.lookup(handle, need=CapRights.DELEGATE)
        to = self._domain_cap(recipient).target
        if rights & ~cap.rights:
            raise HcError(EPERM)                       # attenuation only
        p0, p1 = cap.param0, cap.param1
        if narrow_gpa:
            if cap.type != CapType.MEMORY or narrow_gpa % 8 or not self.p.memory.contains(narrow_gpa, 16):
                raise HcError(EINVAL)
            n0, n1 = self.p.memory.read_u64(narrow_gpa), self.p.memory.read_u64(narrow_gpa + 8)
            if n0 % 4096 or n1 % 4096 or not p0 <= n0 < n1 <= p1:
                raise HcError(EINVAL)
            p0, p1 = n0, n1
        return self._new_cap(to, cap.type, rights, target=cap.target, param0=p0, param1=p1, parent=cap.id)

    def hc_revoke(self, vcpu: Vcpu, handle: int, *_: int) -> int:
        cap = self.lookup(handle)
        for child in list(cap.children):
            if child in self.caps:
                self._destroy(child)
        return 0

    def hc_delete(self, vcpu: Vcpu, handle: int, *_: int) -> int:
        cap = self.lookup(handle)
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
            raise HcError(EPERM)
        if gpa % 4096 or pages == 0 or pages > (1 << 20):
            raise HcError(EINVAL)
        end = gpa + pages * 4096
        if not cap.param0 <= gpa < end <= cap.param1:
            raise HcError(EPERM)                         # outside the range this capability covers
        if perms and not perms & CapRights.R:
            raise HcError(EINVAL)                        # W or X needs R
        gpns = range(gpa >> 12, end >> 12)
        if any(target.protections.get(g, (0, False))[1] for g in gpns):
            raise HcError(EPERM)                         # a one-way grant cannot be changed
        for g in gpns:
            target.protections[g] = (perms, immutable)
            target.npt.set(g << 12, _npt_entry(g << 12, perms))
        self.engine.flush_tlb()
        self.engine.flush_tb()
        return 0

    def hc_intercept_set(self, vcpu: Vcpu, handle: int, source_handle: int, on: int, a3: int) -> int:
        cap = self.lookup(handle, CapType.INTERCEPT)
        source = self.domains[self._domain_cap(source_handle).target]
        if source.id == self.current:
            raise HcError(EINVAL)
        key = (cap.param0, cap.param1)
        if on:
            holder = source.intercepted_by.get(key)
            if holder is not None and holder != self.current:
                raise HcError(EPERM)                     # someone else already holds this intercept
            source.intercepted_by[key] = self.current
        elif source.intercepted_by.get(key) == self.current:
            del source.intercepted_by[key]
        return 0

    def hc_regs_get(self, vcpu: Vcpu, handle: int, reg: int, a2: int, a3: int) -> int:
        cap = self._domain_cap(handle, CapRights.REGS_READ)
        if reg not in _REG_NAMES:
            raise HcError(EINVAL)
        with self.viewing(cap.target):
            value = vcpu.reg(_REG_NAMES[DomainReg(reg)])
        vcpu.set_reg("rbx", value)
        return 0

    def hc_regs_set(self, vcpu: Vcpu, handle: int, reg: int, value: int, a3: int) -> int:
        cap = self._domain_cap(handle, CapRights.REGS_WRITE)
        if reg not in _REG_NAMES:
            raise HcError(EINVAL)
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
            raise HcError(EPERM)
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
        vcpu.request_outer(lambda: self._leave(action, ret0, ret1))
        return 0

    # ================================================================== switching
    def _swap(self, target: int, copy: tuple[str, ...]) -> None:
        eng = self.engine
        vals = [eng.reg(r) for r in copy]
        contexts.save(self.vcpu, self.domains[self.current])
        t = self.domains[target]
        contexts.install(self.vcpu, t, t.npt.root, self.p.base_intercept)
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

    def _leave(self, action: int, ret0: int = 0, ret1: int = 0) -> None:
        caller, intercept = self.call_stack.pop()
        self._swap(caller, ())
        if intercept is None:
            self.engine.set_reg("rax", ret0)
            self.engine.set_reg("rdx", ret1)
            return
        v = self.vcpu
        if action == InterceptAction.SKIP:
            self.engine.rip = (intercept.rip + intercept.length) & MASK64
        elif action == InterceptAction.INJECT_GP:
            v.queue_event(Event(Vector.GP, EventKind.EXCEPTION, 0))
        else:
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

    def viewing(self, domain: int):
        return contexts.viewing(self.vcpu, self.domains[domain], domain == self.current)

    # ================================================================== intercepts and violations
    def _intercept(self, pi: PendingIntercept) -> None:
        regs = {"rdi": int(pi.kind), "rsi": pi.value if pi.kind != DomainEvent.MSR_WRITE else pi.msr,
                "rdx": pi.source, "r8": pi.rip, "r9": pi.value}

        def go() -> None:
            self._enter(pi.handler, (), pi)
            for r, val in regs.items():
                self.engine.set_reg(r, val)
        if self.vcpu.hooks.trace:
            self.vcpu.hooks.trace("domain_intercept", {"kind": pi.kind.name, "from": pi.source, "to": pi.handler})
        self.vcpu.request_outer(go)
        raise InterceptPending()

    def cr_write_filter(self, vcpu: Vcpu, cr: int, old: int, new: int) -> bool:
        if vcpu._vsm_bypass:
            return False
        kind = InterceptKind.CR0 if cr == 0 else InterceptKind.CR4 if cr == 4 else None
        for (k, mask), handler in self.domains[self.current].intercepted_by.items():
            if k == kind and (old ^ new) & mask:
                self._intercept(PendingIntercept(self.current, handler, vcpu.engine.rip, vcpu.fetch_insn().len,
                                                 DomainEvent.CR_WRITE, cr=cr, value=new))
        return False

    def msr_write_filter(self, vcpu: Vcpu, msr: int, value: int) -> bool:
        if vcpu._vsm_bypass:
            return False
        for (k, which), handler in self.domains[self.current].intercepted_by.items():
            if k == InterceptKind.MSR and which in (msr, 0xFFFFFFFF):
                self._intercept(PendingIntercept(self.current, handler, vcpu.engine.rip, 2,
                                                 DomainEvent.MSR_WRITE, value=value, msr=msr))
        return False

    def intercept_filter(self, vcpu: Vcpu, code: int) -> bool:
        if code == SvmExit.NPF:
            gpa = self.engine.exit_info_2()
            if self.p.memory.contains(gpa, 1):
                if vcpu.hooks.trace:
                    vcpu.hooks.trace("domain_violation", {"domain": self.current, "gpa": gpa})
                raise GuestGP(0, f"domain {self.current}: access to {gpa:#x} outside its view")
        return False


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
