"""Several CPU contexts on one vCPU: what VTLs (hv/vsm.py) and domains (hv/domains.py) share.

A context is the engine's whole saved CPU state plus the hypervisor's MSR shadow, with a nested-page-
table root and an SVM intercept vector of its own. Switching saves the running one and installs the
target; ``viewing`` makes a non-running context live briefly (register access on its behalf).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .msrs import MsrState
    from .vcpu import Vcpu


class Context(Protocol):
    ctx: object | None
    msr_state: MsrState


def save(vcpu: Vcpu, holder: Context) -> None:
    holder.ctx = vcpu.engine.uc.context_save()
    holder.msr_state = vcpu.msr_state


def install(vcpu: Vcpu, holder: Context, npt_root: int, intercepts: int) -> None:
    eng = vcpu.engine
    eng.uc.context_restore(holder.ctx)
    vcpu.msr_state = holder.msr_state
    eng.set_nested_cr3(npt_root)          # flushes the TLB: context_restore does not
    eng.set_intercepts(intercepts)
    eng.ack_exception()


@contextmanager
def viewing(vcpu: Vcpu, holder: Context, running: bool) -> Iterator[None]:
    """Make ``holder`` live for the duration, then put the running context back (unchanged)."""
    if running:
        yield
        return
    eng = vcpu.engine
    saved, saved_msrs = eng.uc.context_save(), vcpu.msr_state
    eng.uc.context_restore(holder.ctx)
    vcpu.msr_state = holder.msr_state
    try:
        yield
    finally:
        save(vcpu, holder)
        eng.uc.context_restore(saved)
        vcpu.msr_state = saved_msrs
        eng.flush_tlb()
