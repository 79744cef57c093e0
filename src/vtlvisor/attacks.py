"""The attack matrix: each attack is booted once without its protection and once with it.

A row passes only when the attack *succeeds* without the protection (it proves the attack is real)
and is *blocked* with it, and the blocked run carries evidence from the hypervisor (a blocked CR
write at the faulting RIP, a GPA intercept, an injected #GP...). Attacks are guest programs that
print one line ``ATTACK <name>: SUCCEEDED ...`` or ``ATTACK <name>: BLOCKED ...`` themselves.
"""

from __future__ import annotations

import json
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUEST = ROOT / "guest" / "build"


@dataclass(frozen=True)
class Attack:
    name: str
    protection: str
    models: str
    image: str
    without: dict            # PartitionConfig overrides + "append"
    with_: dict
    #: the name the guest prints in its ATTACK line (rows may boot the same program differently)
    program: str = ""
    #: a regular expression one line of the blocked run's evidence must match (the right mechanism stopped it)
    expect: str = ""
    #: the same for the guest's own output after the attack started, for protections that are guest code
    #: with no hypervisor decision at the moment of the block (kCFG's check runs in VTL0)
    expect_guest: str = ""

    @property
    def guest_name(self) -> str:
        return self.program or self.name


@dataclass
class RunOutcome:
    outcome: str             # SUCCEEDED / BLOCKED / ERROR
    line: str
    evidence: list[str] = field(default_factory=list)
    exit_status: int = 0
    trace: str | None = None
    #: the guest's serial output from the attack's start (bounded)
    guest: list[str] = field(default_factory=list)
    #: the lines of ``guest`` that match the row's ``expect_guest`` (guest-side evidence)
    guest_evidence: list[str] = field(default_factory=list)


@dataclass
class Row:
    attack: str
    protection: str
    without: RunOutcome
    with_: RunOutcome
    expect: str = ""
    expect_guest: str = ""

    def problems(self) -> list[str]:
        """Why the row does not prove its protection (empty: it does). The attack must succeed without the
        protection and be blocked with it; the expected evidence must be in the blocked run and not in the
        unblocked one (else it names something other than the protection under test)."""
        w, b = self.without, self.with_
        out = []
        if w.outcome != "SUCCEEDED":
            out.append(f"without: {w.outcome} {w.line}")
        if b.outcome != "BLOCKED":
            out.append(f"with: {b.outcome} {b.line}")
        if self.expect:
            if not any(re.search(self.expect, e) for e in b.evidence):
                out.append(f"with: no evidence matches {self.expect!r}: {b.evidence}")
            if any(re.search(self.expect, e) for e in w.evidence):
                out.append(f"without: evidence matches {self.expect!r} too: {w.evidence}")
        if self.expect_guest:
            if not b.guest_evidence:
                out.append(f"with: no guest line matches {self.expect_guest!r}")
            if w.guest_evidence:
                out.append(f"without: guest lines match {self.expect_guest!r} too: {w.guest_evidence}")
        if not (b.evidence or b.guest_evidence):
            out.append("with: blocked without evidence")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()


#: the CR-pinning evidence (hv/crpin.py) of the test kernel's rows
_CR4_BLOCKED = r"^CR4 write 0x[0-9a-f]+->0x[0-9a-f]+ blocked at RIP "


def catalogue() -> list[Attack]:
    tk = str(GUEST / "testkernel.elf")
    rows = [
        Attack("smep", "CR pinning (CR4.SMEP)", "LKDTM UNSET_SMEP: mov %rdi,%cr4 gadget, then a user page run in ring 0",
               tk, {"append": "attack=smep crpin=off"}, {"append": "attack=smep"}, expect=_CR4_BLOCKED),
        Attack("wp", "CR pinning (CR0.WP)", "clear CR0.WP, then write read-only kernel text",
               tk, {"append": "attack=wp crpin=off"}, {"append": "attack=wp"},
               expect=r"^CR0 write 0x[0-9a-f]+->0x[0-9a-f]+ blocked at RIP "),
        Attack("smep-host", "CR pinning offered by the host", "as smep; the host hides the feature (--no-cr-pin)",
               tk, {"append": "attack=smep", "cr_pin": False}, {"append": "attack=smep"}, program="smep",
               expect=_CR4_BLOCKED),
    ]
    extra = GUEST / "attacks.json"           # further attacks contributed by the reference guest build
    if extra.exists():
        for a in json.loads(extra.read_text()):
            rows.append(Attack(a["name"], a["protection"], a.get("models", ""), str(GUEST / a["image"]),
                               a["without"], a["with"], a.get("program", ""), a.get("expect", ""),
                               a.get("expect_guest", "")))
    return rows


_LINE = re.compile(r"^ATTACK (\S+): (SUCCEEDED|BLOCKED)(.*)$", re.M)
GUEST_LINES_KEPT = 200
#: the line a guest prints when its attack program starts (test kernel and VBS kernel)
_START = re.compile(rb"^\s*attack: ", re.M)


def run_one(attack: Attack, with_protection: bool, trace_dir: str | None = None) -> RunOutcome:
    from .hv.partition import Partition, PartitionConfig
    from .hv.stop import StopReason
    from .trace import ChromeTracer
    spec = dict(attack.with_ if with_protection else attack.without)
    append = spec.pop("append", "")
    out = bytearray()
    mark: list[int] = []      # security-event count and output offset when the attack program started

    def serial(data: bytes) -> None:
        out.extend(data)
        # called per byte: search only the line the new data is on, not all the output so far
        if not mark and (m := _START.search(out, out.rfind(b"\n", 0, len(out) - len(data)) + 1)):
            mark.extend((part.vcpu.security.count, m.start()))
    try:
        part = Partition(PartitionConfig(memory=spec.pop("memory", 64 << 20), serial=serial, **spec))
        tracer = ChromeTracer(part.clock.now) if trace_dir else None
        if tracer:
            part.vcpu.hooks.trace = tracer
        part.boot_image(attack.image, cmdline=append)
        result = part.run(timeout=60)
    except Exception as e:   # noqa: BLE001 - a broken run is an ERROR row, not a crash of the matrix
        return RunOutcome("ERROR", f"{type(e).__name__}: {e}")
    text = out.decode(errors="replace")
    m = next((m for m in _LINE.finditer(text) if m.group(1) == attack.guest_name), None)
    # the hypervisor's own account of what it refused or redirected (hv/evidence.py)
    start, offset = mark if mark else (0, 0)
    evidence = [e.text for e in part.vcpu.security.events if e.seq > start]
    guest = out[offset:].decode(errors="replace").splitlines()[:GUEST_LINES_KEPT]
    guest_ev = [g for g in guest if attack.expect_guest and re.search(attack.expect_guest, g)]
    trace_file = None
    if tracer and trace_dir:
        trace_file = str(Path(trace_dir) / f"{attack.name}-{'with' if with_protection else 'without'}.json")
        tracer.write(trace_file)
    if m is None or result.reason == StopReason.INTERNAL_ERROR:
        # a verdict followed by a hypervisor bug proves nothing either
        why = "no ATTACK line" if m is None else f"{m.group(0).strip()}, then"
        return RunOutcome("ERROR", f"{why} (stop: {result.reason.value} {result.detail[:80]})",
                          evidence, result.exit_status, trace_file, guest, guest_ev)
    return RunOutcome(m.group(2), m.group(0).strip(), evidence, result.exit_status, trace_file, guest, guest_ev)


def _job(args: tuple[Attack, bool, str | None]) -> RunOutcome:
    return run_one(*args)


def run_matrix(only: str | None = None, trace_dir: str | None = None, jobs: int = 2,
               progress=None) -> list[Row]:
    known = catalogue()
    names = None if only is None else [n for n in only.split(",") if n]
    unknown = [n for n in names or [] if n not in {a.name for a in known}]
    if names is not None and (unknown or not names):
        from .errors import ConfigError
        raise ConfigError(f"unknown attack '{','.join(unknown) or only}' (known: {', '.join(a.name for a in known)})")
    attacks = [a for a in known if names is None or a.name in names]
    work = [(a, w, trace_dir) for a in attacks for w in (False, True)]
    results: dict[tuple[str, bool], RunOutcome] = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for (a, w, _), res in zip(work, pool.map(_job, work), strict=True):
            results[(a.name, w)] = res
            if progress:
                progress(f"{a.name:<14} {'with' if w else 'without':<8} {res.outcome}")
    return [Row(a.name, a.protection, results[(a.name, False)], results[(a.name, True)], a.expect, a.expect_guest)
            for a in attacks]


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def format_table(rows: list[Row]) -> str:
    """One line per attack (outcome both ways), then what blocked it (the hypervisor's evidence line the
    row expects, else the first one, else the guest's) and the guest's own verdict line."""
    wa = max([len("attack")] + [len(r.attack) for r in rows])
    head = f"{'attack':<{wa}}  {'protection':<44}  {'without':<9}  {'with':<9}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        ev = r.with_.evidence
        hit = [e for e in ev if r.expect and re.search(r.expect, e)]
        shown = (hit or ev or [f"(guest) {g.strip()}" for g in r.with_.guest_evidence] or ["-"])[0]
        lines.append(f"{r.attack:<{wa}}  {_clip(r.protection, 44):<44}  {r.without.outcome:<9}  "
                     f"{r.with_.outcome:<9}  {'yes' if r.ok else 'NO'}")
        lines.append(f"{'':<{wa}}  blocked by: {_clip(shown, 150)}")
        lines.append(f"{'':<{wa}}  guest:      {_clip(r.with_.line, 150)}")
    passed = sum(r.ok for r in rows)
    lines.append(f"{passed} of {len(rows)} attacks succeed without their protection and are blocked with it")
    return "\n".join(lines)


def to_json(rows: list[Row]) -> str:
    return json.dumps([{"attack": r.attack, "protection": r.protection, "ok": r.ok,
                        "without": asdict(r.without), "with": asdict(r.with_)} for r in rows], indent=2)


def main_attacks(only: str | None, json_file: str | None, trace_dir: str | None) -> int:
    rows = run_matrix(only, trace_dir, progress=lambda s: print(f"  {s}", file=sys.stderr, flush=True))
    print(format_table(rows))
    if json_file:
        Path(json_file).write_text(to_json(rows))
    return 0 if all(r.ok for r in rows) else 1
