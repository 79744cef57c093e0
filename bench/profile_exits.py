"""Where the time of one VM exit goes (CPUID exit, #UD and #BP delivery). Diagnostic, not a benchmark.

    .venv/bin/python bench/profile_exits.py [--n N] [--reps R] [--cprofile]

Part 1, ablation (no instrumentation, so the numbers are real): the CPUID / UD2 loops with pieces of
the exit path swapped out, us per exit as (T(N)-T(1))/(N-1), median of R interleaved repetitions:
  raw ctypes hook     UC_HOOK_INTR replaced by a hook doing RIP += 2 through uclib.uc_reg_read/write
                      (the floor: Unicorn's exception exit + one ctypes callback + 2 register calls)
  Uc API hook         same, through Uc.reg_read/Uc.reg_write (the Python binding's generic path)
  dispatch only       vtlvisor's _on_intr with the CPUID table entry doing only engine.rip += 2
  full                vtlvisor as is
  inject only (#UD)   table entry for #UD calls vcpu.inject(#UD) directly (no fetch/decode of RIP)
Part 2, breakdown: the same loops with timing wrappers around the functions of the exit path
(inclusive us per call, calls per exit). Wrappers add ~0.3 us per wrapped call, so nested totals are
inflated; use part 1 for absolute numbers and part 2 for the split.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import gc
import pstats
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from guests import LoopGuest  # noqa: E402
from unicorn import unicorn_const as ucc  # noqa: E402
from unicorn import x86_const as X  # noqa: E402
from unicorn.unicorn_py3.unicorn import uclib  # noqa: E402

import vtlvisor.hv.vcpu as vcpu_mod  # noqa: E402
import vtlvisor.x86.decode as dec_mod  # noqa: E402
import vtlvisor.x86.events as ev_mod  # noqa: E402
import vtlvisor.x86.paging as pg_mod  # noqa: E402
from vtlvisor.x86.events import Event, EventKind  # noqa: E402

CPUID_EXIT = 0x172            # EXCP_VMEXIT + SVM CPUID
EXCP_UD_CODE = 0x40 + 6       # SvmExit.EXCP_BASE + #UD


# ----------------------------------------------------------------------------------- ablation variants

def v_full(part) -> None:
    pass


def v_dispatch_only(part) -> None:
    eng = part.engine

    def h(code: int) -> None:
        eng.rip = eng.rip + 2
    part.vcpu._handlers[CPUID_EXIT - 0x100] = h


def _replace_intr_hook(part, fast) -> None:
    eng, vcpu = part.engine, part.vcpu
    eng.uc.hook_del(eng._hooks[0])             # the Vcpu's UC_HOOK_INTR (registered first)

    def cb(uc, intno, data):
        if intno == CPUID_EXIT:
            fast()
        else:
            vcpu._on_intr(intno)
    eng.uc.hook_add(ucc.UC_HOOK_INTR, cb)


def v_uc_api(part) -> None:
    uc = part.engine.uc
    rip = X.UC_X86_REG_RIP
    _replace_intr_hook(part, lambda: uc.reg_write(rip, uc.reg_read(rip) + 2))


def v_raw(part) -> None:
    h = part.engine.uc._uch
    buf = ctypes.c_uint64()
    pb = ctypes.byref(buf)
    rd, wr, rip = uclib.uc_reg_read, uclib.uc_reg_write, X.UC_X86_REG_RIP

    def fast() -> None:
        rd(h, rip, pb)
        buf.value += 2
        wr(h, rip, pb)
    _replace_intr_hook(part, fast)


def v_inject_only(part) -> None:
    vcpu = part.vcpu
    part.vcpu._handlers[EXCP_UD_CODE] = lambda code: vcpu.inject(Event(6, EventKind.EXCEPTION))


def timed_run(kind: str, n: int, variant) -> float:
    part = LoopGuest(kind, n).vtl_partition()
    variant(part)
    t0 = time.perf_counter()
    res = part.run(timeout=300)
    dt = time.perf_counter() - t0
    if res.reason.value != "debug-exit":
        raise RuntimeError(f"{kind}/{variant.__name__}: {res.reason.value} {res.detail}")
    return dt


def ablation(n: int, reps: int) -> list[tuple[str, float]]:
    variants = [("cpuid", "raw ctypes hook, RIP+=2", v_raw), ("cpuid", "Uc API hook, RIP+=2", v_uc_api),
                ("cpuid", "dispatch only (_on_intr + RIP+=2)", v_dispatch_only), ("cpuid", "full CPUID exit", v_full),
                ("ud2", "#UD inject only (no fetch/decode)", v_inject_only), ("ud2", "full #UD", v_full),
                ("int3", "full #BP (int3)", v_full)]
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(reps):
        for kind, name, var in variants:          # interleaved: every variant once per repetition
            nn = n if kind == "cpuid" else max(n // 5, 100)
            gc.collect()
            t1, tn = timed_run(kind, 1, var), timed_run(kind, nn, var)
            samples[name].append((tn - t1) / (nn - 1) * 1e6)
    return [(name, statistics.median(samples[name])) for _, name, _ in variants]


# ----------------------------------------------------------------------------------- breakdown

class Wrappers:
    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.c: dict[str, int] = defaultdict(int)
        self.undo: list = []

    def wrap(self, obj, attr: str, name: str | None = None) -> None:
        name = name or attr
        orig = getattr(obj, attr)
        t, c, pc = self.t, self.c, time.perf_counter

        def w(*a, **k):
            t0 = pc()
            try:
                return orig(*a, **k)
            finally:
                t[name] += pc() - t0
                c[name] += 1
        setattr(obj, attr, w)
        self.undo.append((obj, attr, orig))

    def restore(self) -> None:
        for obj, attr, orig in reversed(self.undo):
            setattr(obj, attr, orig)
        self.undo.clear()


def instrument(part, w: Wrappers) -> None:
    vc, eng = part.vcpu, part.engine
    # the whole hook: re-register UC_HOOK_INTR around the same _on_intr
    eng.uc.hook_del(eng._hooks[0])
    on_intr = vc._on_intr
    t, c, pc = w.t, w.c, time.perf_counter

    def cb(u, intno, data):
        t0 = pc()
        on_intr(intno)
        t["Vcpu._on_intr (whole Python hook)"] += pc() - t0
        c["Vcpu._on_intr (whole Python hook)"] += 1
    eng.uc.hook_add(ucc.UC_HOOK_INTR, cb)
    for code, h in list(vc._handlers.items()):
        if code in (CPUID_EXIT - 0x100, EXCP_UD_CODE, 0x75):
            vc._handlers[code] = _timed(h, w, f"handler {h.__name__}")
    for a in ("fetch_insn", "inject", "paging_mode", "segment", "reg", "set_reg", "cpl", "skip",
              "_maybe_emulate_ud", "_peek_insn", "_mode_of", "_event_state", "event_commit"):
        w.wrap(vc, a, f"Vcpu.{a}")
    for a in ("exit_rip", "snapshot", "rflags", "cpuid_exit", "commit_transfer", "ack_exception", "exit_info_1",
              "code64", "set_segments"):
        w.wrap(eng, a, f"Engine.{a}")
    w.wrap(part.cpuid, "query", "CpuidModel.query")
    w.wrap(part.clock, "now", "VirtualClock.now")
    w.wrap(vcpu_mod, "deliver", "events.deliver")
    w.wrap(vcpu_mod, "read_virt", "paging.read_virt (fetch_insn)")
    w.wrap(dec_mod, "decode", "decode.decode (iced)")
    w.wrap(ev_mod, "_deliver_once", "events._deliver_once")
    for a in ("lookup", "read", "push"):
        w.wrap(pg_mod.Translator, a, f"paging.Translator.{a}")
    w.wrap(pg_mod, "_walk_long", "paging._walk_long")
    w.wrap(pg_mod, "_set_ad", "paging._set_ad")


def _timed(fn, w: Wrappers, name: str):
    t, c, pc = w.t, w.c, time.perf_counter

    def h(code):
        t0 = pc()
        try:
            return fn(code)
        finally:
            t[name] += pc() - t0
            c[name] += 1
    return h


def wrapper_overhead_us() -> float:
    """Cost a timing wrapper adds to one call (wrapped no-op minus bare no-op)."""
    class Obj:
        def f(self) -> None:
            pass
    o, w = Obj(), Wrappers()
    bare = o.f
    n = 100000
    t0 = time.perf_counter()
    for _ in range(n):
        bare()
    t1 = time.perf_counter()
    w.wrap(o, "f")
    f = o.f
    for _ in range(n):
        f()
    t2 = time.perf_counter()
    return ((t2 - t1) - (t1 - t0)) / n * 1e6


def breakdown(kind: str, n: int) -> tuple[float, list[tuple[str, float, float]]]:
    w = Wrappers()
    part = LoopGuest(kind, n).vtl_partition()
    instrument(part, w)
    t0 = time.perf_counter()
    part.run(timeout=300)
    total = time.perf_counter() - t0
    w.restore()
    rows = [(name, w.c[name] / n, w.t[name] / w.c[name] * 1e6) for name in w.t if w.c[name]]
    rows.sort(key=lambda r: -r[1] * r[2])
    return total / n * 1e6, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="CPUID exits per run (exception loops use N/5)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cprofile", action="store_true", help="also print cProfile's top 25 for each loop")
    a = ap.parse_args()
    for g in (LoopGuest("cpuid", 1), LoopGuest("ud2", 1)):
        g.run_vtl()
    print(f"Part 1: ablation, us per exit (median of {a.reps}, N={a.n} CPUID / {max(a.n // 5, 100)} exceptions)")
    for name, us in ablation(a.n, a.reps):
        print(f"  {name:<40} {us:8.2f}")
    print(f"\n(a timing wrapper adds {wrapper_overhead_us():.2f} us per wrapped call in part 2)")
    for kind, n in (("cpuid", a.n), ("ud2", max(a.n // 5, 100)), ("int3", max(a.n // 5, 100))):
        per, rows = breakdown(kind, n)
        print(f"\nPart 2: {kind} loop with timing wrappers: {per:.1f} us per exit (instrumented)")
        print(f"  {'function (inclusive)':<42} {'calls/exit':>10} {'us/call':>8} {'us/exit':>8}")
        for name, cpe, us in rows:
            if cpe * us >= 0.5:
                print(f"  {name:<42} {cpe:10.2f} {us:8.2f} {cpe * us:8.1f}")
    if a.cprofile:
        for kind in ("cpuid", "ud2"):
            part = LoopGuest(kind, a.n if kind == "cpuid" else a.n // 5).vtl_partition()
            pr = cProfile.Profile()
            pr.enable()
            part.run(timeout=300)
            pr.disable()
            print(f"\ncProfile, {kind} loop:")
            pstats.Stats(pr).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
