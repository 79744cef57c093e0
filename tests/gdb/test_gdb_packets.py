"""Framing, parsing and the target description, without a guest."""

import random
import xml.etree.ElementTree as ET

import pytest

from vtlvisor.gdbstub import parse_address
from vtlvisor.gdbstub.packets import (
    BAD,
    INTERRUPT,
    MAX_PAYLOAD,
    NAK,
    PACKET,
    PacketParser,
    checksum,
    escape_binary,
    frame,
    unescape,
)
from vtlvisor.gdbstub.regs import INDEX, REGS, TARGET_XML


def kinds(events):
    return [(e.kind, e.payload) for e in events]


def test_frame_and_checksum():
    assert frame(b"OK") == b"$OK#9a"
    assert frame(b"") == b"$#00"
    assert checksum(b"qSupported") == int(frame(b"qSupported")[-2:], 16)


def test_parser_good_bad_ack_nak_interrupt_and_split_input():
    p = PacketParser()
    stream = b"+" + frame(b"g") + b"-\x03$g#00" + frame(b"m10,4")
    events = []
    for i in range(len(stream)):          # byte by byte: packets may arrive in pieces
        events += p.feed(stream[i:i + 1])
    assert kinds(events) == [("ack", b""), (PACKET, b"g"), (NAK, b""), (INTERRUPT, b""), (BAD, b""),
                             (PACKET, b"m10,4")]


def test_parser_rejects_non_hex_checksum_and_restarts_on_dollar():
    p = PacketParser()
    assert kinds(p.feed(b"$g#zz")) == [(BAD, b"")]
    assert kinds(p.feed(b"$garbage$" + frame(b"?")[1:])) == [(PACKET, b"?")]


def test_parser_drops_oversized_packets_and_recovers():
    p = PacketParser()
    ev = p.feed(b"$" + b"A" * (MAX_PAYLOAD + 10) + b"#00" + frame(b"?"))
    assert kinds(ev) == [(BAD, b""), (PACKET, b"?")]


def test_binary_escapes_round_trip():
    data = bytes(range(256))
    esc = escape_binary(data)
    assert b"#" not in esc and b"$" not in esc and b"*" not in esc
    assert unescape(esc) == data
    p = PacketParser()
    assert kinds(p.feed(frame(b"X0,4:" + escape_binary(b"}#$*")))) == [(PACKET, b"X0,4:}#$*")]


def test_parser_survives_random_bytes():
    rnd = random.Random(1234)
    p = PacketParser(max_payload=512)
    for _ in range(200):
        p.feed(bytes(rnd.choice(b"$#}+-\x030123456789abcdefgmqZ") for _ in range(rnd.randint(0, 300))))
        p.feed(rnd.randbytes(rnd.randint(0, 300)))
    p.feed(b"#00")                    # finish whatever was open
    assert kinds(p.feed(frame(b"?"))) == [(PACKET, b"?")]


@pytest.mark.parametrize("text,expected", [
    ("1234", ("127.0.0.1", 1234)), (":1234", ("127.0.0.1", 1234)), ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("localhost:0", ("localhost", 0)), ("[::1]:99", ("::1", 99)),
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host:", "x", "1:70000", "-1"])
def test_parse_address_rejects(text):
    with pytest.raises(ValueError):
        parse_address(text)


def test_target_xml_is_well_formed_amd64():
    root = ET.fromstring(TARGET_XML.decode().split("?>", 1)[1].split(">", 1)[1])   # skip decl + DOCTYPE
    assert root.find("architecture").text == "i386:x86-64"
    names = [r.get("name") for r in root.iter("reg")]
    assert names == [r.name for r in REGS]
    for needed in ("rax", "r15", "rip", "eflags", "cs", "gs", "st0", "fop", "xmm15", "mxcsr", "fs_base",
                   "gs_base", "k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer"):
        assert needed in INDEX
    assert INDEX["rip"] == 16 and INDEX["xmm0"] == 40      # gdb's amd64 numbering
