"""Helpers for the gdb stub tests: launch ``vtlvisor run --gdb``, a raw RSP client, ELF lookups."""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vtlvisor.gdbstub.packets import checksum, frame

ROOT = Path(__file__).resolve().parents[2]
KERNEL = ROOT / "guest" / "build" / "testkernel.elf"
KERNEL64 = ROOT / "guest" / "build" / "testkernel.elf64"


def need_kernel() -> None:
    if not KERNEL.exists() or not KERNEL64.exists():
        pytest.fail("guest/build/testkernel.elf{,64} missing: run `make -C guest`")


def need_gdb() -> str:
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.fail("gdb is not installed, and the gdb stub tests need the real gdb: "
                    "install it (Debian/Ubuntu: `sudo apt-get install -y gdb`)")
    return gdb


def symbols() -> dict[str, int]:
    """Symbol table of the ELF64 test kernel (via binutils' nm, which the guest build needs)."""
    need_kernel()
    nm = shutil.which("nm")
    if nm is None:
        pytest.fail("binutils `nm` missing (needed by `make -C guest` too)")
    out = subprocess.run([nm, str(KERNEL64)], capture_output=True, text=True, check=True).stdout
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
    return syms


def elf_bytes(addr: int, n: int) -> bytes:
    """The bytes the ELF64 image loads at ``addr`` (file-backed PT_LOAD contents)."""
    data = KERNEL64.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1 and vaddr <= addr and addr + n <= vaddr + filesz:
            return data[off + addr - vaddr: off + addr - vaddr + n]
    raise KeyError(hex(addr))


class Vtlvisor:
    """``vtlvisor run testkernel.elf --gdb 127.0.0.1:0 [--wait]`` in a subprocess."""

    def __init__(self, append: str = "tests=mbi", wait: bool = True, timeout: float = 90) -> None:
        need_kernel()
        args = [sys.executable, "-m", "vtlvisor", "run", str(KERNEL), "--append", append,
                "--gdb", "127.0.0.1:0", "--timeout", str(timeout)]
        if wait:
            args.append("--wait")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=env)
        line = self.proc.stderr.readline().decode()
        m = re.search(r"gdb stub listening on ([0-9.]+):(\d+)", line)
        if not m:
            self.proc.kill()
            raise AssertionError(f"no listening line from vtlvisor: {line!r} {self.proc.stderr.read()!r}")
        self.port = int(m.group(2))

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


class Rsp:
    """A minimal raw GDB remote protocol client (ack mode by default)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""
        self.ack = True
        self.console = b""      # O packet output seen so far

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("stub closed the connection")
        self.buf += chunk

    def read_byte(self, timeout: float = 30) -> bytes:
        while not self.buf:
            self._fill(timeout)
        b, self.buf = self.buf[:1], self.buf[1:]
        return b

    def recv(self, timeout: float = 30) -> bytes:
        """Next packet payload (acks skipped, checksum verified, ``+`` sent in ack mode)."""
        deadline = time.monotonic() + timeout
        while True:
            i = self.buf.find(b"$")
            if i >= 0:
                j = self.buf.find(b"#", i)
                if j >= 0 and len(self.buf) >= j + 3:
                    payload = self.buf[i + 1:j]
                    cs = int(self.buf[j + 1:j + 3], 16)
                    self.buf = self.buf[j + 3:]
                    assert cs == checksum(payload), f"bad checksum from stub: {payload!r}"
                    if self.ack:
                        self.send_raw(b"+")
                    return payload
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no packet; buffer {self.buf[:80]!r}")
            self._fill(left)

    def send(self, payload: bytes) -> None:
        self.send_raw(frame(payload))
        if self.ack:
            b = self.read_byte()
            assert b == b"+", f"expected ack, got {b!r}"

    def cmd(self, payload: bytes, timeout: float = 30) -> bytes:
        """Send a packet and return the reply (console ``O`` packets collected in .console)."""
        self.send(payload)
        while True:
            r = self.recv(timeout)
            if r.startswith(b"O") and r != b"OK":
                self.console += bytes.fromhex(r[1:].decode())
                continue
            return r

    def monitor(self, text: str) -> str:
        self.console = b""
        assert self.cmd(b"qRcmd," + text.encode().hex().encode()) == b"OK"
        return self.console.decode()

    def noack(self) -> None:
        assert self.cmd(b"QStartNoAckMode") == b"OK"
        self.ack = False

    def handshake(self) -> None:
        self.send_raw(b"+")
        assert b"qXfer:features:read+" in self.cmd(b"qSupported:swbreak+;hwbreak+")
        self.noack()
        assert self.cmd(b"?").startswith(b"T")

    def reg(self, n: int) -> int:
        return int.from_bytes(bytes.fromhex(self.cmd(b"p%x" % n).decode()), "little")

    def read(self, addr: int, n: int) -> bytes:
        r = self.cmd(b"m%x,%x" % (addr, n))
        assert not r.startswith(b"E"), r
        return bytes.fromhex(r.decode())
