"""Helpers for the VBS reference guest (guest/build/vbs.elf): boot it, parse its machine-readable lines.

Lines (docs/guest.md): ``vbs: <feature> armed|off|FAILED``, ``CHECK <name> PASS|FAIL|SKIP <detail>``,
``sk: violation: VTL0 <access> of gpa 0x<gpa> at rip 0x<rip> (<what>) -> #GP`` (VTL1's intercept log; in the
domains design ``dom-hyperguard: violation: ...``), ``CRED challenge=<hex> hmac=<hex> by=vtl0|vtl1|domain``,
``RESULT passed=n failed=n skipped=n``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "guest" / "build" / "vbs.elf"
KEYS = ROOT / "guest" / "build" / "vbs" / "keys"
FEATURES = ("hvci", "kdp", "kcfg", "hyperguard", "credguard")
#: the CHECK lines of a default boot (both designs)
ALL_CHECKS = ["vsm", "domains", "user-syscall", "creds", "timer", "kdp-read", "kdp-write", "kdp-own-pt", "kdp-syscall-table",
              "kdp-cred", "kdp-module-dir", "module-signed", "module-unsigned", "module-tampered", "kcfg-valid",
              "kcfg-invalid", "kcfg-bitmap", "hvci-exec-data", "hvci-write-text", "cr4-smep", "cr4-smap", "cr0-wp",
              "msr-lstar", "lidt", "npiep", "vtl1-read", "cred-hmac", "vulndrv"]


@dataclass
class Boot:
    returncode: int
    out: str
    err: str
    seconds: float
    features: dict[str, str] = field(default_factory=dict)
    checks: dict[str, tuple[str, str]] = field(default_factory=dict)
    violations: list[dict] = field(default_factory=list)

    def check(self, name: str) -> tuple[str, str]:
        assert name in self.checks, f"no CHECK {name} line:\n{self.out}"
        return self.checks[name]

    def passed(self, name: str) -> str:
        status, detail = self.check(name)
        assert status == "PASS", f"CHECK {name} {status} {detail}\n{self.out}"
        return detail


def boot(append: str = "", hyperv: bool = True, image: Path = IMAGE, timeout: int = 60, domains: bool = False,
         extra: tuple[str, ...] = ()) -> Boot:
    if not image.exists():
        raise AssertionError(f"{image} missing: run `make -C guest`")
    cmd = [sys.executable, "-m", "vtlvisor", "run", str(image), "--timeout", str(timeout), "--append", append, *extra]
    if hyperv:
        cmd.append("--hyperv")
    if domains:
        cmd.append("--domains")
    # test this repository's hypervisor, whatever the environment's editable install points at
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60, cwd=ROOT, env=env,
                       errors="replace")
    b = Boot(r.returncode, r.stdout, r.stderr, time.monotonic() - t0)
    for m in re.finditer(r"^vbs: (\w+) (\S+)", r.stdout, re.M):
        b.features[m.group(1)] = m.group(2)
    for m in re.finditer(r"^CHECK (\S+) (PASS|FAIL|SKIP) ?(.*)$", r.stdout, re.M):
        b.checks[m.group(1)] = (m.group(2), m.group(3))
    # VTL1 ("sk:") or, in the domains design, the HyperGuard domain that monitors the kernel ("dom-hyperguard:")
    for m in re.finditer(r"^(?:sk|dom-hyperguard): violation: VTL0 (read|write|execute) of gpa (0x[0-9a-f]+) at rip "
                         r"(0x[0-9a-f]+) \(([^)]*\)?)\) -> #GP", r.stdout, re.M):
        b.violations.append({"access": m.group(1), "gpa": int(m.group(2), 16), "rip": int(m.group(3), 16),
                             "what": m.group(4)})
    return b


def detail_hex(detail: str, key: str) -> int:
    m = re.search(rf"{key}=(0x[0-9a-f]+)", detail)
    assert m, f"no {key}= in {detail!r}"
    return int(m.group(1), 16)
