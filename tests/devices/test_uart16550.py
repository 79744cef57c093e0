import io
import random
import threading

import pytest

from vtlvisor.devices.uart16550 import COM1_BASE, Uart16550

B = COM1_BASE
RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR = (B + i for i in (0, 1, 2, 3, 4, 5, 6, 7))


@pytest.fixture
def lines():
    return []


@pytest.fixture
def uart(lines):
    return Uart16550(lines.append)


def out(u, text):
    for ch in text.encode():
        u.io_write(RBR, 1, ch)


def test_reset_state(uart):
    assert uart.io_read(LSR, 1) == 0x60            # THRE | TEMT, no data
    assert uart.io_read(IIR, 1) == 0x01            # no interrupt
    assert uart.io_read(IER, 1) == 0
    assert uart.io_read(MCR, 1) == 0x08            # OUT2 as QEMU
    assert uart.io_read(MSR, 1) == 0xB0            # DCD | DSR | CTS
    assert not uart.irq_pending()


def test_transmit_is_line_buffered_and_kept_in_transcript(uart, lines):
    out(uart, "hello")
    assert lines == []
    out(uart, " world\nnext")
    assert lines == [b"hello world\n"]
    uart.flush()
    assert lines == [b"hello world\n", b"next"]
    assert uart.transcript == b"hello world\nnext"
    assert uart.io_read(LSR, 1) & 0x60 == 0x60     # THRE/TEMT stay set


def test_binary_stream_output():
    stream = io.BytesIO()
    u = Uart16550(stream)
    out(u, "a\n")
    assert stream.getvalue() == b"a\n"


def test_broken_output_never_raises():
    def broken(_data):
        raise BrokenPipeError(32, "Broken pipe")
    u = Uart16550(broken)
    out(u, "x\ny\n")
    assert u.transcript == b"x\ny\n"


def test_dlab_selects_divisor_latch(uart, lines):
    uart.io_write(LCR, 1, 0x83)
    uart.io_write(RBR, 1, 0x01)                    # DLL
    uart.io_write(IER, 1, 0x00)                    # DLM
    assert uart.divisor == 1
    assert uart.io_read(RBR, 1) == 0x01 and uart.io_read(IER, 1) == 0x00
    uart.io_write(LCR, 1, 0x03)
    assert uart.io_read(LCR, 1) == 0x03
    assert uart.io_read(IER, 1) == 0               # back to IER
    uart.flush()
    assert lines == [] and uart.transcript == b""  # divisor writes are not output


def test_receive_feed_sets_dr_and_rbr_pops(uart):
    uart.feed(b"ok")
    assert uart.io_read(LSR, 1) & 0x01
    assert uart.io_read(RBR, 1) == ord("o")
    assert uart.io_read(RBR, 1) == ord("k")
    assert not uart.io_read(LSR, 1) & 0x01
    assert uart.io_read(RBR, 1) == 0               # empty reads 0


def test_feed_from_another_thread(uart):
    data = bytes(range(256)) * 20
    t = threading.Thread(target=lambda: [uart.feed(data[i:i + 7]) for i in range(0, len(data), 7)])
    t.start()
    got = bytearray()
    while len(got) < len(data):
        if uart.io_read(LSR, 1) & 1:
            got.append(uart.io_read(RBR, 1))
    t.join()
    assert bytes(got) == data


def test_fifo_clear_does_not_drop_host_input(uart):
    uart.feed(b"typed early")
    uart.io_write(IIR, 1, 0xC7)                    # FCR: enable + clear both FIFOs
    assert uart.io_read(IIR, 1) & 0xC0 == 0xC0     # FIFO enabled bits
    assert bytes(uart.io_read(RBR, 1) for _ in range(11)) == b"typed early"


def test_loopback(uart, lines):
    uart.io_write(MCR, 1, 0x10 | 0x0B)             # LOOP | OUT2 | RTS | DTR
    out(uart, "Z")
    uart.flush()
    assert lines == [] and uart.transcript == b""
    assert uart.io_read(LSR, 1) & 0x01
    assert uart.io_read(RBR, 1) == ord("Z")
    msr = uart.io_read(MSR, 1)
    assert msr & 0xF0 == 0x80 | 0x20 | 0x10          # DCD<-OUT2, DSR<-DTR, CTS<-RTS, RI<-OUT1 clear
    uart.io_write(MCR, 1, 0x10 | 0x04)             # only OUT1
    msr = uart.io_read(MSR, 1)
    assert msr & 0xF0 == 0x40
    assert msr & 0x0F == 0x0B                      # DCTS | DDSR | DDCD
    assert uart.io_read(MSR, 1) & 0x0F == 0        # deltas clear on read


def test_loopback_overrun_sets_oe(uart):
    uart.io_write(MCR, 1, 0x10)
    out(uart, "ab")                                 # FIFO disabled: one-byte holding register
    lsr = uart.io_read(LSR, 1)
    assert lsr & 0x02
    assert not uart.io_read(LSR, 1) & 0x02         # OE clears on read


def test_thre_interrupt_identification(uart):
    uart.io_write(IER, 1, 0x02)
    assert uart.irq_pending()
    assert uart.io_read(IIR, 1) == 0x02
    assert not uart.irq_pending()                  # reading IIR acknowledged THRE
    out(uart, "x")
    assert uart.io_read(IIR, 1) == 0x02


def test_receive_interrupt_has_priority_over_thre(uart):
    uart.io_write(IER, 1, 0x03)
    uart.feed(b"k")
    assert uart.io_read(IIR, 1) == 0x04
    uart.io_read(RBR, 1)
    assert uart.io_read(IIR, 1) == 0x02
    uart.io_write(IER, 1, 0x00)
    assert not uart.irq_pending()


def test_scratch_and_wide_accesses(uart):
    uart.io_write(SCR, 1, 0x5A)
    assert uart.io_read(SCR, 1) == 0x5A
    uart.io_write(LCR, 2, 0x0B03)                  # LCR=0x03, MCR=0x0B
    assert uart.io_read(LCR, 2) == 0x0B03
    assert uart.io_read(SCR, 4) == 0xFFFFFF5A      # bytes past the device float high


def test_every_access_is_total(uart):
    rng = random.Random(5)
    for _ in range(5000):
        port = B + rng.randrange(-2, 10)
        size = rng.choice([1, 2, 4, 8, 0, 3])
        if rng.random() < 0.5:
            uart.io_read(port, size)
        else:
            uart.io_write(port, size, rng.randrange(1 << 64))
