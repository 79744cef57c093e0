"""The hypervisor's software page walk (x86/paging.py): translations, permissions, Accessed/Dirty
bits, the per-event Translator (one walk per leaf) and the top-down all-or-nothing frame push."""

from __future__ import annotations

import pytest

from vtlvisor.memory import GuestMemory
from vtlvisor.x86.paging import (
    FETCH,
    IMPLICIT,
    IMPLICIT_WRITE,
    READ,
    WRITE,
    Access,
    NonCanonical,
    PageFault,
    PagingMode,
    Translator,
    read_virt,
    walk,
    write_virt,
)

P, RW, US, A, D, PS = 1, 2, 4, 0x20, 0x40, 0x80
NX = 1 << 63
CR0_PE_PG_WP = 0x80010001
LONG = dict(cr4=0x20, efer=0xD00)        # PAE; LME|LMA|NXE
PML4, PDPT, PD, PT = 0x1000, 0x2000, 0x3000, 0x4000


def long_mode_memory() -> tuple[GuestMemory, PagingMode]:
    """0-2 MiB: a 2 MiB page -> phys 0x400000 (supervisor). 2-4 MiB: a 2 MiB user page -> phys
    0x600000. 4-6 MiB: a page table: 0x400000 -> 0x800000 (user, read-only), 0x401000 -> 0x801000
    (supervisor, NX), 0x402000 not present. 1-2 GiB: a 1 GiB page -> phys 0."""
    mem = GuestMemory(16 << 20)
    mem.write_u64(PML4, PDPT | P | RW | US)
    mem.write_u64(PDPT, PD | P | RW | US)
    mem.write_u64(PDPT + 8, 0 | P | RW | PS)
    mem.write_u64(PD, 0x400000 | P | RW | PS)
    mem.write_u64(PD + 8, 0x600000 | P | RW | US | PS)
    mem.write_u64(PD + 16, PT | P | RW | US)
    mem.write_u64(PT, 0x800000 | P | US)
    mem.write_u64(PT + 8, 0x801000 | P | RW | NX)
    return mem, PagingMode(CR0_PE_PG_WP, PML4, LONG["cr4"], LONG["efer"])


def test_long_mode_translations_and_leaf_sizes():
    mem, mode = long_mode_memory()
    assert walk(mem, mode, 0x7123) == 0x407123
    assert walk(mem, mode, 0x40001234) == 0x1234                      # 1 GiB page
    assert walk(mem, mode, 0x200010) == 0x600010
    assert walk(mem, mode, 0x400abc) == 0x800abc
    with pytest.raises(PageFault) as e:
        walk(mem, mode, 0x402000)
    assert e.value.va == 0x402000 and e.value.error_code == 0
    with pytest.raises(NonCanonical):
        walk(mem, mode, 0x0000800000000000)


def test_permissions_and_error_codes():
    mem, mode = long_mode_memory()
    with pytest.raises(PageFault) as e:                # user read of a supervisor page
        walk(mem, mode, 0x1000, Access(user=True))
    assert e.value.error_code == 0x5
    with pytest.raises(PageFault) as e:                # supervisor write to read-only with CR0.WP
        walk(mem, mode, 0x400000, WRITE)
    assert e.value.error_code == 0x3
    no_wp = PagingMode(CR0_PE_PG_WP & ~0x10000, PML4, LONG["cr4"], LONG["efer"])
    assert walk(mem, no_wp, 0x400000, WRITE) == 0x800000
    with pytest.raises(PageFault) as e:                # fetch from an NX page
        walk(mem, mode, 0x401000, FETCH)
    assert e.value.error_code == 0x11
    smap = PagingMode(CR0_PE_PG_WP, PML4, LONG["cr4"] | (1 << 21), LONG["efer"])
    with pytest.raises(PageFault):                     # implicit supervisor access to a user page
        walk(mem, smap, 0x200000, IMPLICIT)
    assert walk(mem, smap, 0x200000, READ) == 0x600000     # explicit accesses: the engine's business


def test_accessed_and_dirty_bits():
    mem, mode = long_mode_memory()
    walk(mem, mode, 0x400000, Access(user=True))
    assert mem.read_u64(PT) & (A | D) == A and mem.read_u64(PD + 16) & A and mem.read_u64(PML4) & A
    walk(mem, mode, 0x200000, Access(write=True))
    assert mem.read_u64(PD + 8) & (A | D) == A | D
    walk(mem, mode, 0x7000, READ, set_ad=False)
    assert not mem.read_u64(PD) & A


def test_translator_walks_each_leaf_once_and_checks_every_access():
    mem, mode = long_mode_memory()
    t = Translator(mem, mode)
    assert t.translate(0x200000, Access(user=True)) == 0x600000      # caches the 2 MiB user leaf
    # 0x7000 | 0x3FFFFF == 0x200000 | 0x1FFFFF: the lookup must not take the cached user leaf
    assert t.translate(0x7000, IMPLICIT) == 0x407000
    assert t.translate(0x3FF000, READ) == 0x7FF000
    with pytest.raises(PageFault):
        t.translate(0x1000, Access(user=True))       # cached supervisor leaf, checked again
    mem.write_u64(PD + 8, 0)                           # a later change is not seen: one event only
    assert t.translate(0x200004, READ) == 0x600004
    assert walk(mem, mode, 0x1000) == 0x401000
    with pytest.raises(PageFault):
        walk(mem, mode, 0x200000)


def test_translator_dirty_bit_on_a_cached_leaf():
    mem, mode = long_mode_memory()
    t = Translator(mem, mode)
    t.read(0x400100, 8, Access(user=True))
    assert mem.read_u64(PT) & (A | D) == A
    no_wp = Translator(mem, PagingMode(0x80000001, PML4, LONG["cr4"], LONG["efer"]))
    no_wp.read(0x400000, 1)
    no_wp.write(0x400000, b"x")                        # same leaf, now written: D is set
    assert mem.read_u64(PT) & (A | D) == A | D and mem.read(0x800000, 1) == b"x"


def test_push_is_top_down_and_all_or_nothing():
    mem, mode = long_mode_memory()
    mem.write_u64(PT + 16, 0)                          # 0x402000 not present
    mem.write_u64(PT + 24, 0x803000 | P | RW)          # 0x403000 present, writable
    t = Translator(mem, mode)
    frame = bytes(range(48))
    with pytest.raises(PageFault) as e:                # straddles 0x402000 (absent) / 0x403000
        t.push(0x403000 - 24, frame, 8, IMPLICIT_WRITE)
    assert e.value.va == 0x403000 - 8 and e.value.error_code == 0x2     # highest slot that faults
    assert mem.read(0x803000, 24) == bytes(24) and not mem.read_u64(PT + 24) & A
    mem.write_u64(PT + 24, 0)                          # both absent: the upper page faults first
    with pytest.raises(PageFault) as e:
        Translator(mem, mode).push(0x403000 - 24, frame, 8, IMPLICIT_WRITE)
    assert e.value.va == 0x403000 + 16
    mem.write_u64(PT + 16, 0x802000 | P | RW)
    mem.write_u64(PT + 24, 0x803000 | P | RW)
    Translator(mem, mode).push(0x403000 - 24, frame, 8, IMPLICIT_WRITE)
    assert mem.read(0x802000 + 0x1000 - 24, 24) + mem.read(0x803000, 24) == frame
    assert mem.read_u64(PT + 16) & (A | D) == A | D and mem.read_u64(PT + 24) & (A | D) == A | D


def test_leaf_outside_ram_is_a_reserved_bit_fault():
    mem, mode = long_mode_memory()
    mem.write_u64(PT + 16, 0x7000000 | P | RW)         # 112 MiB: beyond the 16 MiB of RAM
    with pytest.raises(PageFault) as e:
        read_virt(mem, mode, 0x402010, 4)
    assert e.value.error_code == 0x9
    with pytest.raises(PageFault):
        write_virt(mem, mode, 0x402000, b"\0")


def test_read_across_pages_and_paging_off():
    mem, mode = long_mode_memory()
    mem.write_u64(PT + 16, 0x7000 | P | US)
    mem.write_u64(PT + 24, 0x9000 | P | US)
    mem.write(0x7ffe, b"ab")
    mem.write(0x9000, b"zz")
    assert read_virt(mem, mode, 0x402ffe, 4, Access(user=True)) == b"abzz"
    assert mem.read_u64(PT + 16) & A and mem.read_u64(PT + 24) & A
    off = PagingMode(1, 0, 0, 0)
    assert walk(mem, off, 0x1_2345_6789) == 0x2345_6789               # 32-bit wrap with paging off
    assert read_virt(mem, off, 0x7ffe, 2) == b"ab"


def test_32bit_and_pae_walks():
    mem = GuestMemory(16 << 20)
    mem.write_u32(0x1000, 0x2000 | P | RW)              # 32-bit: PDE -> PT, 4 KiB supervisor pages
    mem.write_u32(0x2000 + 4 * 5, 0x9000 | P | RW)
    mem.write_u32(0x1000 + 4, 0x400000 | P | US | PS)   # 4-8 MiB: a 4 MiB user page (needs PSE)
    m32 = PagingMode(CR0_PE_PG_WP, 0x1000, 1 << 4, 0)
    assert walk(mem, m32, 0x5123) == 0x9123
    assert walk(mem, m32, 0x412345, Access(user=True)) == 0x412345
    with pytest.raises(PageFault):
        walk(mem, m32, 0x412345, Access(user=True, write=True))
    with pytest.raises(PageFault):                      # without CR4.PSE the PDE points at a table
        walk(mem, PagingMode(CR0_PE_PG_WP, 0x1000, 0, 0), 0x412345, Access(user=True))
    assert not mem.read_u32(0x1000) & A                 # 32-bit walks do not set A/D here
    mem.write_u64(0x3000, 0x4000 | P)                   # PAE: PDPTE 0 -> PD; 2 MiB page at 2 MiB
    mem.write_u64(0x4000 + 8, 0x600000 | P | RW | US | PS)
    mem.write_u64(0x4000, 0x5000 | P | RW)
    mem.write_u64(0x5000 + 8 * 3, 0xA000 | P | RW)
    pae = PagingMode(CR0_PE_PG_WP, 0x3000, 1 << 5, 0)
    t = Translator(mem, pae)
    assert t.translate(0x3456, WRITE) == 0xA456
    assert t.translate(0x212345, Access(user=True)) == 0x612345
    assert mem.read_u64(0x5000 + 8 * 3) & (A | D) == A | D and mem.read_u64(0x4000 + 8) & (A | D) == A
    mem.write_u64(0x5000 + 8 * 4, 0xB000 | P | NX)      # XD without EFER.NXE: reserved
    with pytest.raises(PageFault) as e:
        walk(mem, pae, 0x4000)
    assert e.value.error_code == 0x9


def test_instrumented_memory_sees_every_access_and_gets_the_same_results():
    """Replacing GuestMemory's accessors on the instance (as the fuzz harness does to watch the
    hypervisor's accesses) makes the walker call them for every table entry, read and write."""
    def spy(seen: list[tuple[str, int]], name: str, fn):
        def w(gpa, *a):
            seen.append((name, gpa))
            return fn(gpa, *a)
        return w

    results = []
    for instrumented in (False, True):
        mem, mode = long_mode_memory()
        seen: list[tuple[str, int]] = []
        if instrumented:
            for name in ("read", "write", "read_u32", "read_u64", "write_u64"):
                setattr(mem, name, spy(seen, name, getattr(mem, name)))
        t = Translator(mem, mode)
        out = (t.read(0x400010, 4, Access(user=True)), t.translate(0x200000, WRITE))
        t.push(0x7000 - 16, bytes(range(16)), 8, IMPLICIT_WRITE)
        results.append((out, mem.read(0x406ff0, 16), [mem.read_u64(a) for a in (PML4, PDPT, PD, PD + 8, PT)]))
        if instrumented:
            assert ("read_u64", PT) in seen and ("read_u64", PD + 16) in seen       # the walk
            assert ("write_u64", PT) in seen                                         # Accessed bit
            assert ("read", 0x800010) in seen and ("write", 0x406ff0) in seen        # data
    assert results[0] == results[1]
