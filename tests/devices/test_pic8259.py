import random

from vtlvisor.devices.pic8259 import DualPic8259


def init_linux_style(pic, master_base=0x20, slave_base=0x28):
    """The sequence Linux's init_8259A uses (ICW1 edge/cascade/ICW4, vectors, cascade on IR2, 8086)."""
    pic.io_write(0x21, 1, 0xFF)
    pic.io_write(0xA1, 1, 0xFF)
    pic.io_write(0x20, 1, 0x11)
    pic.io_write(0x21, 1, master_base)
    pic.io_write(0x21, 1, 0x04)
    pic.io_write(0x21, 1, 0x01)
    pic.io_write(0xA0, 1, 0x11)
    pic.io_write(0xA1, 1, slave_base)
    pic.io_write(0xA1, 1, 0x02)
    pic.io_write(0xA1, 1, 0x01)


def test_init_sequence_and_masks():
    pic = DualPic8259()
    init_linux_style(pic)
    assert pic.master.initialised and pic.slave.initialised
    assert (pic.master.irq_base, pic.slave.irq_base) == (0x20, 0x28)
    assert pic.io_read(0x21, 1) == 0                # ICW1 clears IMR
    pic.io_write(0x21, 1, 0xFB)
    pic.io_write(0xA1, 1, 0xFF)
    assert pic.io_read(0x21, 1) == 0xFB and pic.io_read(0xA1, 1) == 0xFF


def test_single_mode_without_icw4_skips_icw3_and_icw4():
    pic = DualPic8259()
    pic.io_write(0x20, 1, 0x12)                    # SNGL, no IC4
    pic.io_write(0x21, 1, 0x40)
    assert pic.master.initialised
    pic.io_write(0x21, 1, 0x5A)
    assert pic.io_read(0x21, 1) == 0x5A


def test_irr_isr_reads_and_eoi():
    pic = DualPic8259()
    init_linux_style(pic)
    pic.raise_irq(1)
    pic.raise_irq(4)
    pic.io_write(0x20, 1, 0x0A)                    # OCW3: read IRR
    assert pic.io_read(0x20, 1) == 0x12
    assert pic.pending_vector() == 0x21
    assert pic.acknowledge() == 0x21
    pic.io_write(0x20, 1, 0x0B)                    # OCW3: read ISR
    assert pic.io_read(0x20, 1) == 0x02
    assert pic.pending_vector() is None            # IRQ4 is lower priority than in-service IRQ1
    pic.io_write(0x20, 1, 0x20)                    # non-specific EOI
    assert pic.io_read(0x20, 1) == 0
    assert pic.acknowledge() == 0x24


def test_masked_and_cascaded_irqs():
    pic = DualPic8259()
    init_linux_style(pic)
    pic.io_write(0x21, 1, 0x01)                    # mask IRQ0
    pic.raise_irq(0)
    assert pic.pending_vector() is None
    pic.raise_irq(12)
    assert pic.pending_vector() == 0x2C
    assert pic.acknowledge() == 0x2C
    pic.io_write(0xA0, 1, 0x20)
    pic.io_write(0x20, 1, 0x62)                    # specific EOI for IR2
    assert pic.master.isr == 0 and pic.slave.isr == 0


def test_poll_command():
    pic = DualPic8259()
    init_linux_style(pic)
    pic.raise_irq(3)
    pic.io_write(0x20, 1, 0x0C)                    # OCW3 poll
    assert pic.io_read(0x20, 1) == 0x83
    pic.io_write(0x20, 1, 0x0C)
    assert pic.io_read(0x20, 1) == 0


def test_wide_access_splits_into_bytes():
    pic = DualPic8259()
    init_linux_style(pic)
    pic.io_write(0x20, 2, 0xF00A)                  # OCW3 to 0x20, IMR 0xF0 to 0x21
    assert pic.io_read(0x21, 1) == 0xF0


def test_every_access_is_total():
    pic = DualPic8259()
    rng = random.Random(3)
    for _ in range(5000):
        port = rng.choice([0x20, 0x21, 0xA0, 0xA1, 0x22])
        size = rng.choice([1, 2, 4, 8])
        if rng.random() < 0.5:
            pic.io_read(port, size)
        else:
            pic.io_write(port, size, rng.randrange(1 << (8 * size)))
        if rng.random() < 0.1:
            pic.raise_irq(rng.randrange(-2, 18))
        pic.pending_vector()
        pic.acknowledge()
