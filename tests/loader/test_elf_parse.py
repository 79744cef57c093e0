import random
import struct

import pytest
from loaderkit import Seg, build_elf, mb_header

from vtlvisor.errors import ImageError
from vtlvisor.loader import load_image
from vtlvisor.loader.elf import ElfImage


def elf32():
    return build_elf([Seg(0x100000, b"\x90" * 64, memsz=0x2000), Seg(0x103000, b"DATA", flags=6)],
                     entry=0x100010, symbols={"_start": 0x100010, "counter": 0x103000})


def test_parses_elf32_segments_entry_and_symbols():
    img = ElfImage(elf32(), "k.elf")
    assert not img.is64
    assert [(s.paddr, s.filesz, s.memsz) for s in img.segments] == [(0x100000, 64, 0x2000),
                                                                    (0x103000, 4, 4)]
    assert img.entry == 0x100010
    assert (img.low, img.high) == (0x100000, 0x103004)
    assert img.symbols() == {"_start": 0x100010, "counter": 0x103000}


def test_parses_elf64_and_translates_virtual_entry_to_physical():
    data = build_elf([Seg(0x200000, b"\xc3" * 32, vaddr=0xFFFFFFFF80000000)], entry=0xFFFFFFFF80000004,
                     bits=64, symbols={"main": 0xFFFFFFFF80000004})
    img = ElfImage(data, "k64")
    assert img.is64
    assert img.entry == 0x200004
    assert img.symbol("main") == 0xFFFFFFFF80000004


def test_stripped_image_has_no_symbols():
    assert ElfImage(build_elf([Seg(0x100000, b"x")], entry=0x100000), "k").symbols() == {}


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


MALFORMED = {
    "bad magic": lambda d: b"\x7fELG" + d[4:],
    "truncated header": lambda d: d[:30],
    "bad class": lambda d: d[:4] + b"\x03" + d[5:],
    "big endian": lambda d: d[:5] + b"\x02" + d[6:],
    "bad ident version": lambda d: d[:6] + b"\x02" + d[7:],
    "wrong machine": lambda d: _patch(d, 18, "<H", 62),
    "relocatable": lambda d: _patch(d, 16, "<H", 1),
    "no program headers": lambda d: _patch(d, 44, "<H", 0),
    "absurd phnum": lambda d: _patch(d, 44, "<H", 0xFFFF),
    "bad phentsize": lambda d: _patch(d, 42, "<H", 31),
    "phoff past eof": lambda d: _patch(d, 28, "<I", 0x7FFFFFF0),
    "segment offset past eof": lambda d: _patch(d, 52 + 4, "<I", 0x10000),
    "filesz > memsz": lambda d: _patch(d, 52 + 20, "<I", 1),
    "no PT_LOAD": lambda d: _patch(_patch(d, 52, "<I", 4), 52 + 32, "<I", 4),
    "overlapping segments": lambda d: _patch(d, 52 + 32 + 12, "<I", 0x101000),
    "wrapping segment": lambda d: _patch(d, 52 + 12, "<I", 0xFFFFF000),
    "entry outside segments": lambda d: _patch(d, 24, "<I", 0x500000),
    "bad shentsize": lambda d: _patch(d, 46, "<H", 12),
    "shoff past eof": lambda d: _patch(d, 32, "<I", 0x7FFFFFF0),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_elf32_raises_image_error_naming_the_file(case, tmp_path, memory):
    path = tmp_path / "bad.elf"
    path.write_bytes(MALFORMED[case](elf32()))
    with pytest.raises(ImageError) as info:
        img = ElfImage(path.read_bytes(), str(path))
        img.entry  # noqa: B018 - validation happens on access
        img.symbols()
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_segment_outside_ram_is_rejected(tmp_path, memory):
    path = tmp_path / "big.elf"
    path.write_bytes(build_elf([Seg(0x100000, b"\x90" * 16, memsz=64 << 20)], entry=0x100000, bits=64))
    with pytest.raises(ImageError, match="big.elf"):
        load_image(path, memory)


def _fuzz_bases():
    mb = mb_header()
    return [
        build_elf([Seg(0x100000, mb + b"\x90" * 200, memsz=0x3000)], entry=0x100010,
                  symbols={"a": 1, "_start": 0x100010}),
        build_elf([Seg(0x200000, b"\x90" * 200, memsz=0x3000), Seg(0x204000, b"d" * 40, flags=6)],
                  entry=0x200000, bits=64, symbols={"_start": 0x200000}),
        mb_header(0x10003, (0x100000, 0x100000, 0, 0x102000, 0x100020)) + b"\x90" * 300,
    ]


def test_fuzzed_images_raise_only_image_error(tmp_path, memory):
    """Truncations and byte corruption of valid images: success or ImageError, nothing else."""
    rng = random.Random(0x76746C76)
    path = tmp_path / "fuzz.elf"
    outcomes = {"ok": 0, "ImageError": 0}
    for base in _fuzz_bases():
        for _ in range(400):
            data = bytearray(base)
            mode = rng.randrange(3)
            if mode == 0:
                data = data[:rng.randrange(len(data) + 1)]
            else:
                for _ in range(rng.randrange(1, 8)):
                    pos = rng.randrange(min(len(data), 128) if mode == 1 else len(data))
                    data[pos] = rng.randrange(256)
            path.write_bytes(bytes(data))
            try:
                state = load_image(path, memory, "x", [])
                outcomes["ok"] += 1
                assert state.entry >= 0
            except ImageError as err:
                assert "\n" not in str(err)
                outcomes["ImageError"] += 1
    assert outcomes["ok"] > 0 and outcomes["ImageError"] > 0


def test_random_aout_fields_raise_only_image_error(tmp_path, memory):
    rng = random.Random(1)
    path = tmp_path / "aout.bin"
    near = [0, 0x100000, 0x100010, 0x100020, 0x100100, 0x101000, 0xFFFFFFFF, 0x0FFFFF]
    for _ in range(300):
        fields = tuple(rng.choice(near) if rng.random() < 0.7 else rng.randrange(1 << 32) for _ in range(5))
        flags = 0x10000 | rng.choice([0, 1, 2, 3, 4, 0x20000])
        path.write_bytes(mb_header(flags, fields) + bytes(rng.randrange(256) for _ in range(rng.randrange(64))))
        try:
            load_image(path, memory)
        except ImageError:
            pass
