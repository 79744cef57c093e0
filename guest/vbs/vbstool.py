#!/usr/bin/env python3
"""Build-time tool for the VBS guest pair (guest/vbs), standard library only.

  keygen DIR                   sign.seed (Ed25519 seed), sign.pub (public key), cred.key (VTL1 secret)
                               -- created once; kept across rebuilds
  sign-module DIR IN.o OUT.ko  append the module signature trailer (lib/vbs_abi.h)
  tamper IN.ko OUT.ko          flip one byte of the signed module's .text (the signature stays)
  kcfg ELF                     fill the .kcfg section (struct vbs_kcfg) from the .kcfg_targets pointers
  sign-kernel DIR ELF          fill .kernsig: Ed25519 over le64(start) || le64(end) || image[start, end)
  verify-kernel DIR ELF        check it (used by the tests)

Ed25519 is RFC 8032 section 5.1 written out with Python integers (no third-party code).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from pathlib import Path

# ---------------------------------------------------------------- Ed25519 (RFC 8032)
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _recover_x(y: int, sign: int) -> int | None:
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


_GY = 4 * pow(5, P - 2, P) % P
G = (_recover_x(_GY, 0), _GY, 1, _recover_x(_GY, 0) * _GY % P)


def _add(p, q):
    a = (p[1] - p[0]) * (q[1] - q[0]) % P
    b = (p[1] + p[0]) * (q[1] + q[0]) % P
    c = 2 * p[3] * q[3] * D % P
    d = 2 * p[2] * q[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s: int, p):
    q = (0, 1, 1, 0)
    while s:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _compress(p) -> bytes:
    zi = pow(p[2], P - 2, P)
    x, y = p[0] * zi % P, p[1] * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _h(*parts: bytes) -> int:
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little")


def _expand(seed: bytes) -> tuple[int, bytes]:
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:]


def ed25519_public(seed: bytes) -> bytes:
    return _compress(_mul(_expand(seed)[0], G))


def ed25519_sign(seed: bytes, msg: bytes) -> bytes:
    a, prefix = _expand(seed)
    pub = _compress(_mul(a, G))
    r = _h(prefix, msg) % L
    rb = _compress(_mul(r, G))
    k = _h(rb, pub, msg) % L
    return rb + ((r + k * a) % L).to_bytes(32, "little")


def ed25519_verify(pub: bytes, msg: bytes, sig: bytes) -> bool:
    y = int.from_bytes(pub, "little")
    x = _recover_x(y & ((1 << 255) - 1), y >> 255)
    s = int.from_bytes(sig[32:], "little")
    if x is None or s >= L:
        return False
    a = (x, y & ((1 << 255) - 1), 1, x * (y & ((1 << 255) - 1)) % P)
    k = _h(sig[:32], pub, msg) % L
    neg_a = (P - a[0], a[1], 1, P - a[3])
    return _compress(_add(_mul(s, G), _mul(k, neg_a))) == sig[:32]


def _selftest() -> None:
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    sig = bytes.fromhex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701"
                        "cf9b46bd25bf5f0595bbe24655141438e7a100b")
    assert ed25519_public(seed).hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert ed25519_sign(seed, b"") == sig and ed25519_verify(ed25519_public(seed), b"", sig)


# ---------------------------------------------------------------- ELF64
class Elf:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = bytearray(path.read_bytes())
        d = self.data
        if d[:4] != b"\x7fELF" or d[4] != 2:
            raise SystemExit(f"{path}: not an ELF64 file")
        (self.type, _, _, _, self.phoff, self.shoff, _, _, self.phentsize, self.phnum, self.shentsize,
         self.shnum, self.shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", d, 16)
        self.sections = []
        for i in range(self.shnum):
            f = struct.unpack_from("<IIQQQQIIQQ", d, self.shoff + i * self.shentsize)
            self.sections.append({"name_off": f[0], "type": f[1], "flags": f[2], "addr": f[3], "offset": f[4],
                                  "size": f[5], "link": f[6], "info": f[7], "entsize": f[9]})
        strtab = self.sections[self.shstrndx]
        for s in self.sections:
            s["name"] = self._str(strtab, s["name_off"])
        self.segments = []
        for i in range(self.phnum):
            f = struct.unpack_from("<IIQQQQQQ", d, self.phoff + i * self.phentsize)
            if f[0] == 1:                                       # PT_LOAD
                self.segments.append({"offset": f[2], "paddr": f[4], "filesz": f[5], "memsz": f[6]})

    def _str(self, sec, off: int) -> str:
        start = sec["offset"] + off
        return self.data[start:self.data.index(0, start)].decode()

    def section(self, name: str) -> dict:
        for s in self.sections:
            if s["name"] == name:
                return s
        raise SystemExit(f"{self.path}: no section {name}")

    def symbols(self) -> dict[str, int]:
        out = {}
        for s in self.sections:
            if s["type"] != 2:
                continue
            strtab = self.sections[s["link"]]
            for i in range(s["size"] // 24):
                name_off, _info, _other, _shndx, value, _size = struct.unpack_from("<IBBHQQ", self.data,
                                                                                  s["offset"] + 24 * i)
                if name_off:
                    out[self._str(strtab, name_off)] = value
        return out

    def memory(self, start: int, end: int) -> bytes:
        """What the loader puts at [start, end): PT_LOAD file bytes, zero-filled tails and gaps."""
        buf = bytearray(end - start)
        for seg in self.segments:
            lo, hi = seg["paddr"], seg["paddr"] + seg["filesz"]
            a, b = max(lo, start), min(hi, end)
            if a < b:
                buf[a - start:b - start] = self.data[seg["offset"] + a - lo:seg["offset"] + b - lo]
        return bytes(buf)

    def patch_section(self, name: str, content: bytes) -> None:
        s = self.section(name)
        if len(content) != s["size"]:
            raise SystemExit(f"{self.path}: {name} is {s['size']} bytes, new content {len(content)}")
        self.data[s["offset"]:s["offset"] + s["size"]] = content

    def save(self) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_bytes(self.data)
        os.replace(tmp, self.path)


# ---------------------------------------------------------------- commands
MODSIG_MAGIC = b"~Module signature appended~\n"
KSIG_MAGIC = b"vbs-kernel-sig\0\0"
KCFG_SPAN = 0x100000


def keygen(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    seed = d / "sign.seed"
    if not seed.exists():
        seed.write_bytes(os.urandom(32))
    pub = ed25519_public(seed.read_bytes())
    if not (d / "sign.pub").exists() or (d / "sign.pub").read_bytes() != pub:
        (d / "sign.pub").write_bytes(pub)
    if not (d / "cred.key").exists():
        (d / "cred.key").write_bytes(os.urandom(32))


def sign_module(d: Path, src: Path, dst: Path) -> None:
    elf = src.read_bytes()
    sig = ed25519_sign((d / "sign.seed").read_bytes(), elf)
    dst.write_bytes(elf + sig + struct.pack("<II", 1, len(elf)) + MODSIG_MAGIC)


def tamper(src: Path, dst: Path) -> None:
    data = bytearray(src.read_bytes())
    tmp = dst.with_suffix(".tmp.o")
    tmp.write_bytes(data)
    text = Elf(tmp).section(".text")
    tmp.unlink()
    data[text["offset"] + text["size"] // 2] ^= 0x01        # inside the signed ELF bytes
    dst.write_bytes(data)


def kcfg(path: Path) -> None:
    elf = Elf(path)
    syms = elf.symbols()
    base = syms["__kernel_start"]
    tsec = elf.section(".kcfg_targets")
    raw = elf.memory(tsec["addr"], tsec["addr"] + tsec["size"])
    kernel = bytearray(KCFG_SPAN // 16 // 8)
    targets = [struct.unpack_from("<Q", raw, i)[0] for i in range(0, len(raw), 8)]
    for t in targets:
        if t % 16 or not base <= t < base + KCFG_SPAN or t >= syms["__text_end"]:
            raise SystemExit(f"kcfg: target {t:#x} is not a 16-byte aligned kernel text address")
        i = (t - base) // 16
        kernel[i // 8] |= 1 << (i % 8)
    elf.patch_section(".kcfg", bytes(kernel) + bytes(len(kernel)))
    elf.save()
    print(f"kcfg: {len(targets)} valid call targets in {path.name}")


def _kernel_range(elf: Elf) -> tuple[int, int]:
    syms = elf.symbols()
    return syms["__kernel_start"], syms["__signed_end"]


def sign_kernel(d: Path, path: Path) -> None:
    elf = Elf(path)
    start, end = _kernel_range(elf)
    msg = struct.pack("<QQ", start, end) + elf.memory(start, end)
    sig = ed25519_sign((d / "sign.seed").read_bytes(), msg)
    sec = elf.section(".kernsig")
    blob = (sig + struct.pack("<QQ", start, end) + KSIG_MAGIC).ljust(sec["size"], b"\0")
    elf.patch_section(".kernsig", blob)
    elf.save()
    print(f"sign-kernel: signed [{start:#x}, {end:#x}) of {path.name}")


def verify_kernel(d: Path, path: Path) -> None:
    elf = Elf(path)
    start, end = _kernel_range(elf)
    sec = elf.section(".kernsig")
    blob = elf.memory(sec["addr"], sec["addr"] + 96)
    msg = struct.pack("<QQ", start, end) + elf.memory(start, end)
    ok = ed25519_verify((d / "sign.pub").read_bytes(), msg, blob[:64])
    print("ok" if ok else "BAD")
    raise SystemExit(0 if ok else 1)


ATTACK_ROW_KEYS = {"name", "program", "protection", "models", "image", "without", "with", "expect",
                   "expect_guest"}


def attacks_json(out: Path, *sources: Path) -> None:
    """Concatenate the attack rows of guest/vbs/user/attacks/*.json into build/attacks.json (the
    extension point `vtlvisor attacks` reads), checking each row's shape and that names are unique."""
    rows, seen = [], set()
    for src in sources:
        for row in json.loads(src.read_text()):
            if set(row) - ATTACK_ROW_KEYS or not {"name", "protection", "image", "without", "with"} <= set(row):
                raise SystemExit(f"{src}: bad attack row keys {sorted(row)}")
            if row["name"] in seen:
                raise SystemExit(f"{src}: duplicate attack name {row['name']}")
            seen.add(row["name"])
            rows.append(row)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"attacks-json: {len(rows)} rows from {len(sources)} files")


def main(argv: list[str]) -> None:
    _selftest()
    cmd, args = argv[1], [Path(a) for a in argv[2:]]
    {"keygen": keygen, "sign-module": sign_module, "tamper": tamper, "kcfg": kcfg, "sign-kernel": sign_kernel,
     "verify-kernel": verify_kernel, "attacks-json": attacks_json}[cmd](*args)


if __name__ == "__main__":
    main(sys.argv)
