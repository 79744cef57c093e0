"""Security events: what the hypervisor refused or redirected, kept as evidence.

A user proving that a protection stopped an attack needs the hypervisor's own account, not only
the guest's: "CR4 write blocked at RIP x", "GpaIntercept for GPA y sent to VTL1", "VTL1 injected
#GP into VTL0", "HvCallModifyVtlProtectionMask from VTL0 -> HV_STATUS_ACCESS_DENIED". Every such
decision is recorded here (bounded: a guest can retry forever, the count grows, the list does not)
and, when a tracer is installed, traced as an instant event of the same kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: records kept per vCPU; later events only bump ``count``
EVENTS_KEPT = 256


@dataclass(frozen=True)
class SecurityEvent:
    seq: int
    kind: str           # blocked_cr_write, intercept, gpa_violation, inject, refused_hypercall, ...
    text: str           # one line a human reads in the attack matrix
    rip: int
    vtl: int | None


@dataclass
class SecurityLog:
    events: list[SecurityEvent] = field(default_factory=list)
    count: int = 0

    def record(self, kind: str, text: str, rip: int, vtl: int | None,
               trace: Callable[[str, dict], None] | None = None, **args) -> None:
        self.count += 1
        if len(self.events) < EVENTS_KEPT:
            self.events.append(SecurityEvent(self.count, kind, text, rip, vtl))
        if trace:
            trace(kind, {"text": text, "rip": rip, "vtl": vtl, **args})

    def lines(self) -> list[str]:
        return [e.text for e in self.events]
