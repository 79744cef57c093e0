"""The C test kernel (guest/testkernel) boots via Multiboot under vtlvisor and passes every check."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNEL = ROOT / "guest" / "build" / "testkernel.elf"
CHECKS = ["mbi", "pf-demand", "exceptions", "protection", "ist-df", "user-syscall", "user-fault", "umip",
          "smep", "smap", "timer", "double-fault"]


def run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vtlvisor", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def boot():
    if not KERNEL.exists():
        pytest.fail("guest/build/testkernel.elf missing: run `make -C guest`")
    return run("run", str(KERNEL), "--timeout", "100", "--append", "hello=world")


def test_all_checks_pass_and_exit_status(boot):
    out = boot.stdout
    for name in CHECKS:
        assert f"PASS {name}" in out, f"{name} did not pass:\n{out}"
    assert "FAIL" not in out and "ALL PASSED" in out
    assert boot.returncode == 1, boot.stderr       # debug-exit value 0 -> (0 << 1) | 1


def test_multiboot_command_line_is_passed_like_qemu(boot):
    assert 'cmdline="' in boot.stdout and "testkernel.elf hello=world" in boot.stdout


def test_test_selection_and_failure_status():
    r = run("run", str(KERNEL), "--timeout", "60", "--append", "tests=timer,bogus")
    assert "PASS timer" in r.stdout and "FAIL cmdline" in r.stdout
    assert r.returncode == (1 << 1) | 1            # one failure -> debug-exit value 1


def test_serial_to_file(tmp_path):
    out = tmp_path / "serial.txt"
    r = run("run", str(KERNEL), "--timeout", "60", "--serial", str(out), "--append", "tests=mbi")
    assert r.returncode == 1 and "PASS mbi" in out.read_text() and "PASS mbi" not in r.stdout
