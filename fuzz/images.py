"""Malformed guest images through ``vtlvisor.loader.load_image`` and the CLI.

A case is a generated file: random bytes, or a minimal valid ELF64 / ELF32 / Multiboot image with some
fields mutated or the file truncated. ``load_image`` must return a BootState or raise ImageError; the
CLI (in-process ``cli.main``) must then exit 2 with exactly one ``vtlvisor: error:`` line on stderr,
or run the image and exit with a documented status other than 10 (internal error).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import struct
import sys
import tempfile
import time
import traceback

from .checks import Failure

MB_MAGIC = 0x1BADB002


def elf64(entry: int = 0x100000, paddr: int = 0x100000, code: bytes = b"\xf4") -> bytearray:
    eh = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, 0x3E, 1, entry, 64, 0, 0, 64,
                     56, 1, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, paddr, paddr, len(code), len(code), 0x1000)
    return bytearray((eh + ph).ljust(0x1000, b"\0") + code)


def elf32(entry: int = 0x100000) -> bytearray:
    eh = struct.pack("<4sBBBBB7xHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 0, 2, 3, 1, entry, 52, 0, 0, 52, 32, 1,
                     40, 0, 0)
    ph = struct.pack("<IIIIIIII", 1, 0x1000, entry, entry, 1, 1, 5, 0x1000)
    return bytearray((eh + ph).ljust(0x1000, b"\0") + b"\xf4")


def multiboot(rng: random.Random) -> bytearray:
    flags = rng.choice((0, 3, 0x10003, 0x10000, 7, rng.getrandbits(32)))
    hdr = struct.pack("<III", MB_MAGIC, flags, (-(MB_MAGIC + flags)) & 0xFFFFFFFF)
    if flags & 0x10000:
        load = rng.choice((0x100000, 0, 0xFFFFF000, rng.getrandbits(32)))
        vals = (load, load, rng.choice((0, load + 0x2000, rng.getrandbits(32))),
                rng.choice((0, load + 0x3000, rng.getrandbits(32))), rng.choice((load + 0x20, rng.getrandbits(32))))
        hdr += struct.pack("<IIIII", *(v & 0xFFFFFFFF for v in vals))
    base = elf32() if rng.random() < 0.5 else bytearray(0x2000)
    off = rng.choice((0, 4, 0x40, 0x1FF0, 0x2000 - 12))
    base[off:off + len(hdr)] = hdr
    return base


def gen_image(rng: random.Random) -> bytes:
    kind = rng.choice(["random", "elf64", "elf64", "elf32", "multiboot", "multiboot", "empty"])
    if kind == "random":
        return rng.randbytes(rng.choice((1, 4, 64, 4096, 9000)))
    if kind == "empty":
        return b""
    img = {"elf64": lambda: elf64(rng.choice((0x100000, 0, 1 << 63, rng.getrandbits(64))),
                                  rng.choice((0x100000, 0, 0xFFFFF000, 7 << 20, rng.getrandbits(64)))),
           "elf32": elf32, "multiboot": lambda: multiboot(rng)}[kind]()
    for _ in range(rng.choice((0, 1, 2, 4, 8))):
        if kind == "elf64" and rng.random() < 0.7:
            field = rng.choice([(0x18, "<Q"), (0x20, "<Q"), (0x36, "<H"), (0x38, "<H"), (0x10, "<H"), (0x12, "<H"),
                                (0x40, "<I"), (0x48, "<Q"), (0x50, "<Q"), (0x58, "<Q"), (0x60, "<Q"), (0x68, "<Q"),
                                (0x04, "<B"), (0x05, "<B")])
            off, fmt = field
            bits = struct.calcsize(fmt) * 8
            struct.pack_into(fmt, img, off, rng.choice((0, (1 << bits) - 1, rng.getrandbits(bits), 1 << (bits - 1))))
        elif img:
            img[rng.randrange(len(img))] = rng.getrandbits(8)
    if rng.random() < 0.2:
        img = img[:rng.randrange(len(img) + 1)]
    return bytes(img)


def run_image_case(seed: int, cli: bool | None = None):
    from vtlvisor.errors import VtlvisorError
    from vtlvisor.loader import load_image
    from vtlvisor.memory import GuestMemory

    from .runner import CaseResult
    rng = random.Random(seed)
    cr = CaseResult("image", seed)
    t0 = time.perf_counter()
    data = gen_image(rng)
    fd, path = tempfile.mkstemp(prefix="vtlv-fuzz-", suffix=".img")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        loaded = False
        cmdline = rng.choice(("", "x" * 5000, "a b c"))
        try:
            load_image(path, GuestMemory(8 << 20), cmdline=cmdline)
            loaded = True
        except VtlvisorError as e:
            if "\n" in str(e):
                cr.failures.append(Failure("oracle", f"ImageError spans lines: {e!r}", "image-multiline"))
        except Exception as e:   # noqa: BLE001
            cr.failures.append(Failure("crash", f"load_image raised {type(e).__name__}: {e}\n"
                                       f"{traceback.format_exc()}", f"image-crash-{type(e).__name__}"))
        if cli if cli is not None else rng.random() < 0.3:
            rc, err = run_cli(path, cmdline)
            lines = err.strip().splitlines()
            if not loaded:
                if rc != 2 or len(lines) != 1 or not lines[0].startswith("vtlvisor: error:"):
                    cr.failures.append(Failure("oracle", f"CLI on a rejected image: exit {rc}, stderr {err[:300]!r}",
                                               "image-cli-reject"))
            elif rc == 10:
                cr.failures.append(Failure("internal-error", f"CLI exit 10 on a loadable image: {err[:500]}",
                                           "image-cli-internal"))
    finally:
        os.unlink(path)
    cr.wall = time.perf_counter() - t0
    return cr


def run_cli(path: str, cmdline: str = "") -> tuple[int, str]:
    from vtlvisor import cli
    err = io.StringIO()
    saved_stdin = sys.stdin
    sys.stdin = None                       # no stdin pump thread per run
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = cli.main(["run", path, "--memory", "8M", "--timeout", "0.5", "--serial", os.devnull,
                               "--append", cmdline])
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 2
            except Exception:   # noqa: BLE001
                return 10, traceback.format_exc()
    finally:
        sys.stdin = saved_stdin
    return rc, err.getvalue()
