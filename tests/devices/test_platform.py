import struct

from vtlvisor.devices.debug_exit import debug_exit_status
from vtlvisor.devices.platform import Platform


def make(**kw):
    events = {"exit": [], "off": [], "unhandled": [], "out": []}
    plat = Platform.create(ram_size=64 << 20, clock=lambda: 0, serial_output=events["out"].append,
                           on_exit=events["exit"].append, on_poweroff=lambda: events["off"].append(True),
                           on_unhandled=lambda *a: events["unhandled"].append(a), **kw)
    return plat, events


def test_devices_answer_on_their_addresses():
    plat, ev = make()
    io, mmio = plat.io, plat.mmio
    assert io.read(0x3FD, 1) == 0x60
    for ch in b"hi\n":
        io.write(0x3F8, 1, ch)
    assert ev["out"] == [b"hi\n"]
    io.write(0x510, 2, 0x0003)
    assert struct.unpack("<Q", bytes(io.read(0x511, 1) for _ in range(8)))[0] == 64 << 20
    assert mmio.read(0xFEE00030, 4) == 0x00050014
    io.write(0x21, 1, 0xFF)
    assert io.read(0x21, 1) == 0xFF
    io.write(0xF4, 1, 0x10)
    assert [debug_exit_status(v) for v in ev["exit"]] == [33]
    for ch in b"Shutdown":
        io.write(0x8900, 1, ch)
    assert ev["off"] == [True]
    assert ev["unhandled"] == []
    assert io.read(0x80, 1) == 0xFF and ev["unhandled"] == [("io", 0x80, 1, None)]
