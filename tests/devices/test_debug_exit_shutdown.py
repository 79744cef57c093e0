from vtlvisor.devices.debug_exit import DebugExit, debug_exit_status
from vtlvisor.devices.shutdown_port import ShutdownPort


def test_debug_exit_status_matches_qemu():
    assert debug_exit_status(0) == 1
    assert debug_exit_status(0x10) == 33
    assert debug_exit_status(0x31) == 0x63
    assert debug_exit_status(0x80) == 1                # exit() keeps the low 8 bits


def test_debug_exit_device():
    seen = []
    dev = DebugExit(seen.append)
    dev.io_write(0xF4, 1, 0x10)
    dev.io_write(0xF4, 4, 0x12345678)
    dev.io_write(0xF6, 2, 0xFFFF)
    assert seen == [0x10, 0x12345678, 0xFFFF]
    assert dev.io_read(0xF4, 1) == 0xFF and dev.io_read(0xF4, 4) == 0xFFFFFFFF


def feed(dev, text):
    for ch in text.encode():
        dev.io_write(0x8900, 1, ch)


def test_shutdown_string_powers_off():
    calls = []
    dev = ShutdownPort(lambda: calls.append(1))
    feed(dev, "Shutdow")
    assert calls == []
    feed(dev, "n")
    assert calls == [1]
    feed(dev, "Shutdown")
    assert calls == [1, 1]


def test_anything_else_resets_the_matcher():
    calls = []
    dev = ShutdownPort(lambda: calls.append(1))
    feed(dev, "ShutXdown")
    feed(dev, "shutdown")
    assert calls == []
    feed(dev, "Shu")
    dev.io_write(0x8900, 2, ord("t"))
    feed(dev, "down")
    assert calls == []
    feed(dev, "SShutdown")                            # a mismatching 'S' starts a new match
    assert calls == [1]
    assert dev.io_read(0x8900, 1) == 0xFF
