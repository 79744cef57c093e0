import struct

import pytest

from vtlvisor.devices.fw_cfg import FwCfg, FwCfgKey


def select(dev, key):
    dev.io_write(0x510, 2, key)


def read(dev, n):
    return bytes(dev.io_read(0x511, 1) for _ in range(n))


def test_signature_id_ram_and_cpus():
    dev = FwCfg(ram_size=256 << 20, nb_cpus=1)
    select(dev, FwCfgKey.SIGNATURE)
    assert read(dev, 4) == b"QEMU"
    select(dev, FwCfgKey.ID)
    assert struct.unpack("<I", read(dev, 4))[0] == 1
    select(dev, FwCfgKey.RAM_SIZE)
    assert struct.unpack("<Q", read(dev, 8))[0] == 256 << 20
    select(dev, FwCfgKey.NB_CPUS)
    assert struct.unpack("<H", read(dev, 2))[0] == 1
    select(dev, FwCfgKey.MAX_CPUS)
    assert struct.unpack("<H", read(dev, 2))[0] == 1


def test_reads_past_end_and_unknown_keys_return_zero():
    dev = FwCfg(ram_size=1 << 20)
    select(dev, FwCfgKey.SIGNATURE)
    assert read(dev, 6) == b"QEMU\0\0"
    select(dev, 0x1234)
    assert read(dev, 3) == b"\0\0\0"


def test_selecting_rewinds():
    dev = FwCfg(ram_size=1 << 20)
    select(dev, 0)
    read(dev, 2)
    select(dev, 0)
    assert read(dev, 4) == b"QEMU"


def test_file_directory():
    dev = FwCfg(ram_size=1 << 20)
    select(dev, FwCfgKey.FILE_DIR)
    assert read(dev, 4) == b"\0\0\0\0"
    dev.add_file("opt/zeta", b"Z" * 3)
    key = dev.add_file("etc/alpha", b"hello")
    assert key == 0x20                             # sorted by name: etc/alpha first
    select(dev, FwCfgKey.FILE_DIR)
    count = struct.unpack(">I", read(dev, 4))[0]
    entries = [struct.unpack(">IHH56s", read(dev, 64)) for _ in range(count)]
    assert [(size, sel, res, name.rstrip(b"\0")) for size, sel, res, name in entries] == [
        (5, 0x20, 0, b"etc/alpha"), (3, 0x21, 0, b"opt/zeta")]
    select(dev, 0x21)
    assert read(dev, 4) == b"ZZZ\0"
    with pytest.raises(ValueError):
        dev.add_file("x" * 56, b"")


def test_other_widths_and_writes_are_harmless():
    dev = FwCfg(ram_size=1 << 20)
    select(dev, 0)
    assert dev.io_read(0x511, 2) == int.from_bytes(b"QE", "little")
    assert dev.io_read(0x510, 2) == 0
    dev.io_write(0x511, 1, 0xAA)
    dev.io_write(0x510, 1, 0)
    assert read(dev, 4) == b"QEMU"
