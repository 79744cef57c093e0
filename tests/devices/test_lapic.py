import random

import pytest

from vtlvisor.devices.lapic import LocalApic, timer_divisor

SVR, TPR, PPR, EOI, ESR, ICR, ICR2 = 0xF0, 0x80, 0xA0, 0xB0, 0x280, 0x300, 0x310
LVTT, LVTERR, TMICT, TMCCT, TDCR = 0x320, 0x370, 0x380, 0x390, 0x3E0
ONESHOT, PERIODIC, MASKED = 0, 1 << 17, 1 << 16


class Clock:
    def __init__(self):
        self.now = 1000

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def apic(clock):
    a = LocalApic(clock)
    a.mmio_write(SVR, 4, 0x1FF)                    # software enable, spurious vector 0xFF
    return a


def rd(a, off):
    return a.mmio_read(off, 4)


def wr(a, off, value):
    a.mmio_write(off, 4, value)


def test_identity_and_version(clock):
    a = LocalApic(clock, apic_id=3)
    assert rd(a, 0x20) == 3 << 24
    assert rd(a, 0x30) == 0x00050014
    assert rd(a, SVR) == 0xFF                      # disabled at reset
    assert rd(a, LVTT) == MASKED
    assert rd(a, 0xE0) == 0xFFFFFFFF
    assert a.read_base_msr() == 0xFEE00900


@pytest.mark.parametrize("tdcr,divisor", [(0x0, 2), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32), (0x9, 64),
                                          (0xA, 128), (0xB, 1)])
def test_divide_encodings(tdcr, divisor):
    assert timer_divisor(tdcr) == divisor


def test_oneshot_timer_timing(apic, clock):
    wr(apic, TDCR, 0xB)                            # divide by 1: 1 tick = 1 ns at 1 GHz
    wr(apic, LVTT, ONESHOT | 0x40)
    wr(apic, TMICT, 500)
    assert apic.next_deadline() == 1500
    clock.now = 1200
    assert rd(apic, TMCCT) == 300
    apic.poll(1499)
    assert apic.pending_vector() is None
    apic.poll(1500)
    assert apic.pending_vector() == 0x40
    assert apic.next_deadline() is None            # one-shot stops
    clock.now = 5000
    assert rd(apic, TMCCT) == 0


def test_periodic_timer_with_divider(apic, clock):
    wr(apic, TDCR, 0x3)                            # divide by 16
    wr(apic, LVTT, PERIODIC | 0x41)
    wr(apic, TMICT, 100)                           # period 1600 ns
    assert apic.next_deadline() == 2600
    clock.now = 1000 + 16 * 30
    assert rd(apic, TMCCT) == 70
    apic.poll(2600)
    assert apic.acknowledge() == 0x41
    assert apic.next_deadline() == 4200            # no drift: 1000 + 2 * 1600
    wr(apic, EOI, 0)
    apic.poll(1000 + 1600 * 5 + 7)                 # several missed periods coalesce
    assert apic.acknowledge() == 0x41
    assert apic.pending_vector() is None
    assert apic.next_deadline() == 1000 + 1600 * 6


def test_timer_with_non_integral_tick_rounds_deadline_up(clock):
    a = LocalApic(clock, bus_hz=3)                 # 3 Hz bus: one tick every 333_333_333.3 ns
    a.mmio_write(SVR, 4, 0x100)
    a.mmio_write(TDCR, 4, 0xB)
    a.mmio_write(LVTT, 4, 0x30)
    a.mmio_write(TMICT, 4, 1)
    assert a.next_deadline() == 1000 + 333_333_334
    a.poll(1000 + 333_333_333)
    assert a.pending_vector() is None
    a.poll(1000 + 333_333_334)
    assert a.pending_vector() == 0x30


def test_masked_timer_counts_but_never_fires_and_unmask_is_not_spurious(apic, clock):
    wr(apic, TDCR, 0xB)
    wr(apic, LVTT, PERIODIC | MASKED | 0x50)
    wr(apic, TMICT, 100)
    assert apic.next_deadline() is None
    clock.now = 1000 + 250
    assert rd(apic, TMCCT) == 50
    apic.poll(clock.now)
    assert apic.pending_vector() is None
    wr(apic, LVTT, PERIODIC | 0x50)                # unmask at t=1250: next expiry 1300, not earlier
    assert apic.next_deadline() == 1300
    apic.poll(1299)
    assert apic.pending_vector() is None
    apic.poll(1300)
    assert apic.pending_vector() == 0x50


def test_tmict_zero_stops_timer(apic):
    wr(apic, LVTT, PERIODIC | 0x40)
    wr(apic, TMICT, 10)
    wr(apic, TMICT, 0)
    assert apic.next_deadline() is None


def test_tsc_deadline_mode_is_unsupported(apic):
    wr(apic, LVTT, (2 << 17) | 0x40)
    wr(apic, TMICT, 10)
    assert apic.next_deadline() is None and rd(apic, TMCCT) == 0


def test_tpr_and_ppr_mask_lower_classes(apic):
    apic.raise_vector(0x45)
    wr(apic, TPR, 0x50)
    assert apic.pending_vector() is None            # class 4 <= TPR class 5
    apic.raise_vector(0x61)
    assert apic.pending_vector() == 0x61
    assert apic.acknowledge() == 0x61
    assert rd(apic, PPR) == 0x60                   # ISR class above TPR
    apic.tpr = 0x70
    assert rd(apic, PPR) == 0x70 and apic.cr8 == 7
    apic.cr8 = 0
    assert rd(apic, TPR) == 0
    assert apic.pending_vector() is None            # 0x45 blocked by in-service 0x61
    wr(apic, EOI, 0)
    assert apic.pending_vector() == 0x45


def test_priority_order_and_nested_eoi(apic):
    for v in (0x30, 0xA0, 0x81):
        apic.raise_vector(v)
    assert apic.acknowledge() == 0xA0
    assert apic.pending_vector() is None           # 0x81 is class 8 < in-service class 0xA
    wr(apic, EOI, 0)
    assert apic.acknowledge() == 0x81
    assert rd(apic, 0x100 + 0x10 * (0x81 // 32)) == 1 << (0x81 % 32)   # ISR bank
    assert rd(apic, 0x200 + 0x10 * (0x30 // 32)) == 1 << (0x30 % 32)   # IRR bank
    wr(apic, EOI, 0)
    assert apic.acknowledge() == 0x30


def test_acknowledge_without_pending_returns_spurious(apic):
    assert apic.acknowledge() == 0xFF


def test_software_disabled_apic_accepts_nothing(clock):
    a = LocalApic(clock)
    a.raise_vector(0x40)
    assert a.pending_vector() is None
    a.mmio_write(LVTT, 4, 0x40)                    # mask stays set while disabled
    assert a.mmio_read(LVTT, 4) & MASKED


def test_illegal_vector_sets_esr(apic):
    apic.raise_vector(7)
    assert apic.pending_vector() is None
    assert rd(apic, ESR) == 0                      # visible after the next ESR write
    wr(apic, ESR, 0)
    assert rd(apic, ESR) == 0x40
    wr(apic, ESR, 0)
    assert rd(apic, ESR) == 0


def test_error_lvt_raises_vector(apic):
    wr(apic, LVTERR, 0xE0)
    apic.raise_vector(3)
    assert apic.pending_vector() == 0xE0


def test_self_ipi(apic):
    wr(apic, ICR, (1 << 18) | 0x55)                # shorthand self
    assert apic.acknowledge() == 0x55
    wr(apic, EOI, 0)
    wr(apic, ICR2, 0 << 24)
    wr(apic, ICR, 0x66)                            # physical destination = own id 0
    assert apic.acknowledge() == 0x66
    wr(apic, EOI, 0)
    assert not rd(apic, ICR) & (1 << 12)           # delivery status idle
    wr(apic, ICR2, 5 << 24)
    wr(apic, ICR, 0x77)                            # another CPU: ignored
    wr(apic, ICR, (3 << 18) | 0x78)                # all excluding self
    wr(apic, ICR, (1 << 18) | (5 << 8))            # INIT to self: ignored
    wr(apic, ICR, (6 << 8) | (1 << 18) | 0x10)     # SIPI: ignored
    assert apic.pending_vector() is None


def test_odd_accesses_do_not_raise(apic):
    assert apic.mmio_read(0x21, 4) == 0
    assert apic.mmio_read(0x20, 2) == 0
    assert apic.mmio_read(0x20, 8) == 0
    apic.mmio_write(0x80, 1, 0xFF)
    assert rd(apic, TPR) == 0
    assert rd(apic, 0x40) == 0                     # reserved register
    wr(apic, ESR, 0)
    assert rd(apic, ESR) & 0x80                    # illegal register address


def test_base_msr(apic):
    assert apic.write_base_msr(0xFEE00900 | (1 << 10)) is False      # x2APIC not supported
    assert apic.write_base_msr(0xFEE00900 | 0x1) is False
    assert apic.write_base_msr(1 << 45) is False                     # beyond MAXPHYADDR
    apic.raise_vector(0x40)
    assert apic.write_base_msr(0xFEE00000) is True                   # global disable (BSP read-only)
    assert apic.read_base_msr() == 0xFEE00100
    assert apic.pending_vector() is None and rd(apic, SVR) == 0xFF   # reset to power-up state
    assert apic.write_base_msr(0xFEE00800) is True
    assert apic.read_base_msr() == 0xFEE00900


def test_every_access_is_total(apic, clock):
    rng = random.Random(9)
    for _ in range(20000):
        off = rng.choice([rng.randrange(0x1000), rng.randrange(0x40) * 0x10])
        size = rng.choice([1, 2, 4, 8])
        clock.now += rng.randrange(100)
        if rng.random() < 0.5:
            apic.mmio_read(off, size)
        else:
            apic.mmio_write(off, size, rng.randrange(1 << (8 * size)))
        apic.poll(clock.now)
        apic.next_deadline()
        if apic.pending_vector() is not None:
            apic.acknowledge()
