"""Helpers for the VBS reference guest (guest/build/vbs.elf): boot it, parse its machine-readable lines.

Lines (docs/guest.md): ``vbs: <feature> armed|off|FAILED``, ``CHECK <name> PASS|FAIL|SKIP <detail>``,
``sk: violation: VTL0 <access> of gpa 0x<gpa> at rip 0x<rip> (<what>) -> #GP`` (VTL1's intercept log; in the
domains design ``dom-hyperguard: violation: ...``), ``CRED challenge=<hex> hmac=<hex> by=vtl0|vtl1|domain``,
``RESULT passed=n failed=n skipped=n``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
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
#: the checks that report "unprotected" when a feature is switched off (both designs)
UNPROTECTED = {"hvci": ["hvci-exec-data", "hvci-write-text"],
               "kdp": ["kdp-write", "kdp-syscall-table", "kdp-cred", "kdp-module-dir"],
               "kcfg": ["kcfg-invalid"],
               "hyperguard": ["cr4-smep", "cr0-wp", "msr-lstar", "lidt"],
               "credguard": []}


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


def cred_hmac(b: Boot, by: str) -> bytes:
    """The boot's CRED line was answered `by` (vtl0, vtl1, domain) with the right HMAC under the build's
    credential key; returns the key."""
    m = re.search(r"^CRED challenge=([0-9a-f]+) hmac=([0-9a-f]{64}) by=(\w+)$", b.out, re.M)
    assert m and m.group(3) == by, b.out
    key = (KEYS / "cred.key").read_bytes()
    assert hmac.new(key, bytes.fromhex(m.group(1)), hashlib.sha256).hexdigest() == m.group(2)
    return key


def tampered_kernel(tmp_path: Path) -> Path:
    """A copy of the kernel image with one byte of kcfg_demo_unlisted's text flipped (signature now BAD)."""
    sys.path.insert(0, str(ROOT / "guest" / "vbs"))
    import vbstool
    target = vbstool.Elf(IMAGE.with_suffix(".elf64")).symbols()["kcfg_demo_unlisted"]
    data = bytearray(IMAGE.read_bytes())                 # ELF32: find the file offset of the target
    phoff, phentsize, phnum = struct.unpack_from("<I", data, 28)[0], *struct.unpack_from("<HH", data, 42)
    for i in range(phnum):
        ptype, off, _vaddr, paddr, filesz = struct.unpack_from("<IIIII", data, phoff + i * phentsize)
        if ptype == 1 and paddr <= target < paddr + filesz:
            data[off + target - paddr] ^= 0x01
            break
    else:
        raise AssertionError("target not in a PT_LOAD segment")
    bad = tmp_path / "vbs-tampered.elf"
    bad.write_bytes(bytes(data))
    return bad
