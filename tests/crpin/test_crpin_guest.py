"""CR pinning through the C test kernel: the ABI checks, and both attacks run both ways with evidence."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNEL = str(ROOT / "guest" / "build" / "testkernel.elf")


def run(*extra: str, append: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vtlvisor", "run", KERNEL, "--timeout", "60", "--append", append,
                           *extra], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_boot_pins_and_every_abi_check_passes():
    r = run(append="tests=crpin")
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"crpin: pinned CR0=0x10000 CR4=0x[0-9a-f]+", r.stdout)
    checks = re.findall(r"^PASS (crpin-[a-z0-9-]+)", r.stdout, re.M)
    assert len(checks) == 18 and "FAIL" not in r.stdout and "SKIP" not in r.stdout


def test_feature_hidden_by_host_makes_checks_skip():
    r = run("--no-cr-pin", append="tests=crpin")
    assert "crpin: unavailable" in r.stdout and r.stdout.count("SKIP crpin-") == 18


@pytest.mark.parametrize("attack,cr", [("smep", 4), ("wp", 0)])
def test_attack_blocked_with_pinning(attack, cr):
    r = run(append=f"attack={attack}")
    m = re.search(rf"ATTACK {attack}: BLOCKED vector=13 rip=(0x[0-9a-f]+) cr{cr}=(0x[0-9a-f]+)", r.stdout)
    assert m, r.stdout
    # evidence from the hypervisor: the blocked write at the same RIP, register unchanged
    blocked = re.search(rf"blocked CR{cr} write (0x[0-9a-f]+) -> (0x[0-9a-f]+) at RIP (0x[0-9a-f]+)", r.stderr)
    assert blocked and int(blocked.group(3), 16) == int(m.group(1), 16)
    assert int(blocked.group(1), 16) == int(m.group(2), 16)            # CR unchanged after the attempt
    bit = (1 << 20) if cr == 4 else (1 << 16)
    assert int(blocked.group(1), 16) & bit and not int(blocked.group(2), 16) & bit
    if attack == "wp":
        assert "text=0xddc0ffee0ddf00d" in r.stdout                      # kernel text unchanged


@pytest.mark.parametrize("attack", ["smep", "wp"])
@pytest.mark.parametrize("how", [("--append-off",), ("--no-cr-pin",)])
def test_attack_succeeds_without_pinning(attack, how):
    extra = [] if how[0] == "--append-off" else ["--no-cr-pin"]
    append = f"attack={attack}" + (" crpin=off" if how[0] == "--append-off" else "")
    r = run(*extra, append=append)
    assert f"ATTACK {attack}: SUCCEEDED" in r.stdout, r.stdout
    assert "blocked CR" not in r.stderr
    if attack == "smep":
        assert "payload-ran" in r.stdout
    else:
        assert re.search(r"text-changed old=0xddc0ffee0ddf00d new=0x[0-9a-f]+", r.stdout)
