"""`vtlvisor run --gdb/--wait` option handling."""

import socket
import subprocess
import sys

import pytest
from rspkit import KERNEL, ROOT, need_kernel


def vtl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vtlvisor", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args,msg", [
    (["--wait"], "--wait needs --gdb"),
    (["--gdb", "nope"], "invalid gdb address"),
    (["--gdb", "1:99999"], "invalid gdb address"),
])
def test_bad_options_are_usage_errors(args, msg):
    need_kernel()
    r = vtl("run", str(KERNEL), *args)
    assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_port_in_use_is_a_one_line_error():
    need_kernel()
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
        r = vtl("run", str(KERNEL), "--gdb", str(port))
    assert r.returncode == 2 and "cannot listen for gdb on 127.0.0.1" in r.stderr, r.stderr


def test_gdb_without_a_client_does_not_disturb_the_run():
    need_kernel()
    r = vtl("run", str(KERNEL), "--gdb", "0", "--append", "tests=mbi", "--timeout", "60")
    assert r.returncode == 1 and "ALL PASSED" in r.stdout
    assert "gdb stub listening on 127.0.0.1:" in r.stderr
