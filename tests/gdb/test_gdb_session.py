"""The real gdb (batch mode) against `vtlvisor run --gdb --wait` and the test kernel's symbols."""

import re
import subprocess

import pytest
from rspkit import KERNEL64, ROOT, Vtlvisor, need_gdb, symbols


def gdb_batch(port: int, *commands: str, timeout: float = 120) -> str:
    args = [need_gdb(), "-nx", "-batch", "-ex", "set pagination off", "-ex", "set confirm off",
            "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    args.append(str(KERNEL64))
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return r.stdout + r.stderr


@pytest.fixture
def vm():
    need_gdb()
    v = Vtlvisor("tests=mbi", wait=True)
    yield v
    v.kill()


def rip_values(out: str) -> list[int]:
    return [int(m, 16) for m in re.findall(r"^rip\s+(0x[0-9a-f]+)", out, re.M)]


def test_break_print_step_continue_to_exit(vm):
    syms = symbols()
    out = gdb_batch(vm.port,
                    "break mm_init", "continue",
                    "print/x boot_magic_seen", "print cmdline",
                    "info registers rip", "stepi", "info registers rip",
                    "monitor vtl", "delete", "continue")
    assert "warning: Architecture rejected" not in out and "Remote 'g' packet reply" not in out, out
    assert re.search(r"Breakpoint 1, (0x[0-9a-f]+ in )?mm_init \(", out), out
    assert "$1 = 0x2badb002" in out, out                              # written by copy_boot_info()
    assert re.search(r'\$2 = "\S*testkernel.elf tests=mbi"', out), out
    rips = rip_values(out)
    assert len(rips) == 2 and syms["mm_init"] <= rips[0] < rips[1], out
    assert "VTL0 selected" in out
    assert "[Inferior 1 (Remote target) exited with code 01]" in out, out
    rc, serial, _ = vm.finish()
    assert rc == 1 and "ALL PASSED" in serial                           # the guest's normal exit status


def test_hardware_watchpoint_and_registers(vm):
    out = gdb_batch(vm.port,
                    "break kmain64", "continue",
                    "watch current_test", "continue",
                    "print current_test",
                    "info registers cr0 cr3 cr4 efer cs fs_base",
                    "monitor protections 0x100000",
                    "delete", "continue")
    assert "Hardware watchpoint 2: current_test" in out, out
    assert re.search(r'New value = 0x[0-9a-f]+ "mbi"', out), out
    assert re.search(r'\$1 = 0x[0-9a-f]+ "mbi"', out), out
    cr0 = int(re.search(r"^cr0\s+(0x[0-9a-f]+)", out, re.M).group(1), 16)
    efer = int(re.search(r"^efer\s+(0x[0-9a-f]+)", out, re.M).group(1), 16)
    assert cr0 & (1 << 31) and cr0 & 1 and efer & (1 << 10), out      # paging, protected, LMA
    assert re.search(r"^cs\s+0x8\b", out, re.M), out
    assert "RWX" in out
    assert "exited with code 01" in out, out
    rc, _, _ = vm.finish()
    assert rc == 1


def test_gdb_kill(vm):
    out = gdb_batch(vm.port, "break mm_init", "continue", "kill")
    assert "Breakpoint 1, " in out, out
    rc, _, err = vm.finish()
    assert rc == 0 and "killed by gdb" in err, (out, err)


def test_gdb_quit_detaches_and_the_guest_finishes(vm):
    out = gdb_batch(vm.port, "break mm_init", "continue")     # batch end: gdb detaches (qAttached=1)
    assert "Breakpoint 1, " in out, out
    rc, serial, _ = vm.finish()
    assert rc == 1 and "ALL PASSED" in serial
