"""Running cases, minimizing failures and whole campaigns (seeded, deterministic generation)."""

from __future__ import annotations

import random
import time
import traceback
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from vtlvisor.hv.stop import RunResult

from .cases import GENERATORS
from .checks import MAX_EXIT_S, Checker, Failure
from .guest import CANARY, CUR, SETUP_FAILED, FuzzGuest, GuestConfig, Op, canary_bytes


@dataclass
class CaseResult:
    iface: str
    seed: int
    result: RunResult | None = None
    failures: list[Failure] = field(default_factory=list)
    exits: int = 0
    slowest: float = 0.0            # the slowest exit's vCPU-thread CPU time
    slowest_where: str = ""
    slowest_wall: float = 0.0       # the longest exit in wall time
    wall: float = 0.0
    run_time: float = 0.0           # inside Partition.run() only
    indices: list[int] | None = None

    @property
    def keys(self) -> set[str]:
        return {f.key for f in self.failures}


def case_seed(base: int, iface: str, n: int) -> int:
    return zlib.crc32(f"{base}:{iface}:{n}".encode())


def generate(iface: str, seed: int) -> tuple[list[Op], GuestConfig]:
    return GENERATORS[iface](random.Random(seed))


def run_ops(ops: list[Op], cfg: GuestConfig, indices: list[int] | None = None, iface: str = "", seed: int = 0,
            max_exit_s: float = MAX_EXIT_S) -> CaseResult:
    cr = CaseResult(iface, seed, indices=indices)
    t0 = time.perf_counter()
    try:
        g = FuzzGuest(ops, cfg, indices)
    except ValueError as e:             # keystone refused a generated op: a harness problem, not a finding
        cr.failures.append(Failure("harness", f"cannot build guest: {e}", "harness-build"))
        return cr
    part = g.part
    part.boot(g.boot_state())
    canary = (CANARY, canary_bytes(cfg.canary_seed)) if cfg.vtl1 else None
    chk = Checker(part, canary=canary, max_exit_s=max_exit_s).arm()
    exc = None
    t_run = time.perf_counter()
    try:
        cr.result = part.run(timeout=cfg.timeout)
    except BaseException as e:   # noqa: BLE001 - the finding
        exc = e
    cr.run_time = time.perf_counter() - t_run
    cr.failures = chk.finish(cr.result, exc)
    cr.exits = sum(part.vcpu.exit_counts.values())
    cr.slowest, cr.slowest_where, cr.slowest_wall = chk.timing.slowest, chk.timing.where, chk.timing.wall
    if exc is None and cr.result is not None and cr.result.status == (SETUP_FAILED << 1) | 1:
        cr.failures.append(Failure("harness", f"guest prologue faulted: {g.log()[:4]}", "harness-setup"))
    if exc is None:
        reached = g.u64(CUR)
        done = len(g.indices) if reached == (1 << 64) - 1 else g.indices.index(reached) if reached in g.indices else 0
        for view, op in zip(g.views()[:done], ops[:done], strict=True):
            if op.check is None:
                continue
            try:
                why = op.check(view)
            except Exception as e:   # noqa: BLE001
                why = f"oracle raised {e!r}\n{traceback.format_exc()}"
            if why:
                cr.failures.append(Failure("oracle", f"op {view.index} ({op.kind}: {op.desc}): {why}",
                                           f"oracle-{op.kind}-{_shape(why)}"))
    cr.wall = time.perf_counter() - t0
    cr.guest = g
    return cr


def _shape(why: str) -> str:
    """A failure message without its numbers: the minimizer keeps cases that fail the same way."""
    import re
    return re.sub(r"0x[0-9a-f]+|\d+", "N", why)[:80]


def run_case(iface: str, seed: int, max_exit_s: float = MAX_EXIT_S) -> CaseResult:
    if iface == "image":
        from .images import run_image_case
        return run_image_case(seed)
    ops, cfg = generate(iface, seed)
    return run_ops(ops, cfg, iface=iface, seed=seed, max_exit_s=max_exit_s)


def run_case_isolated(iface: str, seed: int, max_exit_s: float = MAX_EXIT_S) -> CaseResult:
    """``run_case`` in a forked child, so a guest that crashes the engine (a segfault inside Unicorn)
    is a finding, not the end of the campaign."""
    t0 = time.perf_counter()
    cr = _isolated(lambda: run_case(iface, seed, max_exit_s))
    cr.iface, cr.seed = iface, seed
    if not cr.wall:
        cr.wall = time.perf_counter() - t0
    return cr


def minimize(iface: str, seed: int, key: str, max_runs: int = 200) -> tuple[list[int], list[Op], GuestConfig]:
    """Delta-debug the op list of a failing case down to the ops needed to keep failure ``key``."""
    ops, cfg = generate(iface, seed)
    keep = list(range(len(ops)))
    runs = 0

    def fails(idx: list[int]) -> bool:
        nonlocal runs
        runs += 1
        r = _isolated(lambda: run_ops([ops[i] for i in idx], cfg, indices=idx))
        return key in r.keys
    n = 2
    while len(keep) >= 2 and runs < max_runs:
        chunk = max(1, len(keep) // n)
        reduced = False
        for s in range(0, len(keep), chunk):
            cand = keep[:s] + keep[s + chunk:]
            if cand and fails(cand):
                keep, n, reduced = cand, max(n - 1, 2), True
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(len(keep), n * 2)
    return keep, [ops[i] for i in keep], cfg


def _isolated(fn) -> CaseResult:
    """Run ``fn() -> CaseResult`` in a forked child (see run_case_isolated)."""
    import os
    import pickle
    import signal
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            import faulthandler
            faulthandler.disable()                 # a crash is a finding the parent reports, not a dump
            signal.alarm(120)                      # a wedged engine ends the child, not the campaign
            cr = fn()
            cr.guest = None
            with os.fdopen(wfd, "wb") as f:
                f.write(pickle.dumps(cr))
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if data:
        return pickle.loads(data)
    cr = CaseResult("", 0)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        cr.failures.append(Failure("crash", f"the hypervisor process died: {name}", f"crash-signal-{name}"))
    else:
        cr.failures.append(Failure("crash", "the case raised in the harness (no result)", "crash-no-result"))
    return cr


def describe(iface: str, seed: int, keep: list[int], ops: list[Op], cfg: GuestConfig) -> str:
    lines = [f"interface {iface} seed {seed} ops {keep}  (python -m fuzz --repro {iface}:{seed}:"
             f"{','.join(map(str, keep))})", f"config: {cfg_summary(cfg)}"]
    for i, op in zip(keep, ops, strict=True):
        lines.append(f"  op {i}: {op.kind}: {op.desc}")
    return "\n".join(lines)


def cfg_summary(cfg: GuestConfig) -> str:
    return (f"hyperv={cfg.hyperv} vtl1={cfg.vtl1} cr_pin={cfg.cr_pin} hv_setup={cfg.hv_setup} "
            f"io_bitmap={'yes' if cfg.io_bitmap else 'no'} mem_patches={len(cfg.mem)}")


@dataclass
class Campaign:
    seed: int = 1
    cases: Counter = field(default_factory=Counter)
    exits: Counter = field(default_factory=Counter)
    wall: Counter = field(default_factory=Counter)
    run_time: Counter = field(default_factory=Counter)
    stops: dict = field(default_factory=lambda: defaultdict(Counter))
    failures: dict = field(default_factory=dict)          # key -> (iface, seed, Failure)
    slowest: tuple[float, str, str] = (0.0, "", "")
    slowest_wall: tuple[float, str] = (0.0, "")

    def record(self, cr: CaseResult) -> None:
        self.cases[cr.iface] += 1
        self.exits[cr.iface] += cr.exits
        self.wall[cr.iface] += cr.wall
        self.run_time[cr.iface] += cr.run_time
        if cr.result is not None:
            self.stops[cr.iface][cr.result.reason.value] += 1
        if cr.slowest > self.slowest[0]:
            self.slowest = (cr.slowest, cr.slowest_where, f"{cr.iface}:{cr.seed}")
        if cr.slowest_wall > self.slowest_wall[0]:
            self.slowest_wall = (cr.slowest_wall, f"{cr.iface}:{cr.seed}")
        for f in cr.failures:
            self.failures.setdefault(f.key, (cr.iface, cr.seed, f))

    def crashes(self) -> list:
        return [v for v in self.failures.values() if v[2].kind in ("crash", "internal-error")]

    def breaks(self) -> list:
        return [v for v in self.failures.values() if v[2].kind not in ("crash", "internal-error", "harness")]

    def harness(self) -> list:
        return [v for v in self.failures.values() if v[2].kind == "harness"]

    def report(self) -> str:
        out = [f"campaign seed {self.seed}"]
        out.append("exits/s: over the whole case (build, boot, run, checks) / inside Partition.run() only")
        out.append(f"{'interface':<10} {'cases':>6} {'exits':>9} {'exits/s':>15}  stop reasons")
        for iface in sorted(self.cases):
            w, r = self.wall[iface] or 1e-9, self.run_time[iface] or 1e-9
            stops = ", ".join(f"{k} {v}" for k, v in sorted(self.stops[iface].items()))
            rate = f"{self.exits[iface] / w:.0f} / {self.exits[iface] / r:.0f}"
            out.append(f"{iface:<10} {self.cases[iface]:>6} {self.exits[iface]:>9} {rate:>15}  {stops}")
        tw, tr = sum(self.wall.values()) or 1e-9, sum(self.run_time.values()) or 1e-9
        ex = sum(self.exits.values())
        out.append(f"{'total':<10} {sum(self.cases.values()):>6} {ex:>9} {f'{ex / tw:.0f} / {ex / tr:.0f}':>15}")
        out.append(f"slowest single exit: {self.slowest[0] * 1e3:.2f} ms CPU ({self.slowest[1]}, case {self.slowest[2]}); "
                   f"longest in wall time {self.slowest_wall[0] * 1e3:.2f} ms (case {self.slowest_wall[1]})")
        out.append(f"crashes {len(self.crashes())}")
        for iface, seed, f in self.crashes():
            out.append(f"  [{f.key}] {iface}:{seed}: {str(f).splitlines()[0][:200]}")
        out.append(f"invariant breaks {len(self.breaks())}")
        for iface, seed, f in self.breaks():
            out.append(f"  [{f.key}] {iface}:{seed}: {str(f).splitlines()[0][:200]}")
        if self.harness():
            out.append(f"harness problems (not hypervisor findings) {len(self.harness())}")
            for iface, seed, f in self.harness():
                out.append(f"  [{f.key}] {iface}:{seed}: {str(f).splitlines()[0][:200]}")
        return "\n".join(out)


def campaign(ifaces: list[str], seconds: float | None = None, cases: int | None = None, seed: int = 1,
             log=print, minimize_failures: bool = False, max_exit_s: float = MAX_EXIT_S,
             isolate: bool = True) -> Campaign:
    """Round-robin over ``ifaces`` until ``seconds`` pass or each interface ran ``cases`` cases."""
    c = Campaign(seed=seed)
    end = None if seconds is None else time.monotonic() + seconds
    n = 0
    while True:
        for iface in ifaces:
            if end is not None and time.monotonic() >= end:
                return c
            s = case_seed(seed, iface, n)
            cr = run_case_isolated(iface, s, max_exit_s) if isolate else run_case(iface, s, max_exit_s=max_exit_s)
            new = [f for f in cr.failures if f.key not in c.failures]
            c.record(cr)
            for f in new:
                log(f"NEW {f.kind} [{f.key}] in {iface}:{s}: {str(f)[:2000]}")
                if minimize_failures and iface != "image":
                    keep, ops, cfg = minimize(iface, s, f.key)
                    log(describe(iface, s, keep, ops, cfg))
        n += 1
        if cases is not None and n >= cases:
            return c
