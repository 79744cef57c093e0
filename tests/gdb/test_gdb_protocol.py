"""The stub over a raw socket: framing, acks, errors, breakpoints, stepping, Ctrl-C, hostile input."""

import random
import time

import pytest
from rspkit import Rsp, Vtlvisor, elf_bytes, symbols

from vtlvisor.gdbstub.packets import PacketParser, frame

RIP, RAX = 16, 0


@pytest.fixture(scope="module")
def syms():
    return symbols()


@pytest.fixture
def vm():
    v = Vtlvisor("tests=mbi", wait=True)
    yield v
    v.kill()


def connect(vm: Vtlvisor) -> Rsp:
    c = Rsp(vm.port)
    c.handshake()
    return c


def run_to(c: Rsp, addr: int) -> bytes:
    assert c.cmd(b"Z0,%x,1" % addr) == b"OK"
    reply = c.cmd(b"c")
    assert c.cmd(b"z0,%x,1" % addr) == b"OK"
    return reply


def finish_ok(vm: Vtlvisor, c: Rsp, resume: bytes = b"c") -> None:
    """Resume; the guest must run to its normal end (W01 to gdb, exit status 1, ALL PASSED)."""
    assert c.cmd(resume, timeout=60) == b"W01"
    c.close()                                  # as gdb does after W
    rc, out, err = vm.finish()
    assert rc == 1 and "ALL PASSED" in out, (rc, out, err)


def test_ack_mode_checksums_nak_and_retransmit(vm):
    c = Rsp(vm.port)
    c.send_raw(b"$g#00")                       # bad checksum
    assert c.read_byte() == b"-"
    c.send_raw(b"$?#zz")                       # non-hex checksum
    assert c.read_byte() == b"-"
    assert c.cmd(b"?").startswith(b"T05")      # stopped before the first instruction (--wait)
    c.send_raw(b"-")                           # NAK: the stub resends its last packet
    assert c.recv().startswith(b"T05")
    assert c.cmd(b"qC") == b"QC1"
    assert c.cmd(b"qAttached") == b"1"
    assert c.cmd(b"qfThreadInfo") == b"m1" and c.cmd(b"qsThreadInfo") == b"l"
    assert c.cmd(b"Hg0") == b"OK" and c.cmd(b"Hc-1") == b"OK"
    assert c.cmd(b"vCont?").startswith(b"vCont;")
    assert c.cmd(b"vMustReplyEmpty") == b"" and c.cmd(b"qNoSuchThing") == b"" and c.cmd(b"!") == b""
    c.noack()
    assert c.cmd(b"qC") == b"QC1"
    finish_ok(vm, c)


def test_errors_never_kill_the_stub(vm):
    c = connect(vm)
    for bad in (b"mzz,4", b"m100000", b"m-1,4", b"m 10,4", b"m10,ffffffffff", b"p1000", b"p-1", b"pxyz",
                b"P0=12", b"Pzz=00", b"G00", b"M100000,4:0011", b"M100000,2:zzzz", b"X100000,5:ab",
                b"Z0,zz,1", b"Z2,1000,0", b"Z0,10000000000000000,1", b"qXfer:features:read:foo.xml:0,100",
                b"qXfer:features:read:target.xml:zz", b"qRcmd,zz", b"C", b"vCont;x", b"T5"):
        r = c.cmd(bad)
        assert r.startswith(b"E"), (bad, r)
    assert c.cmd(b"Z9,1000,1") == b""          # unsupported breakpoint type: empty reply
    assert c.cmd(b"?").startswith(b"T05")
    finish_ok(vm, c)


def test_target_description_and_registers(vm, syms):
    c = connect(vm)
    xml, off = b"", 0
    while True:
        r = c.cmd(b"qXfer:features:read:target.xml:%x,200" % off)
        xml += r[1:]
        off += len(r) - 1
        if r[:1] == b"l":
            break
        assert r[:1] == b"m"
    assert b"<architecture>i386:x86-64</architecture>" in xml and b"org.gnu.gdb.i386.core" in xml
    regs = bytes.fromhex(c.cmd(b"g").decode())
    entry = int.from_bytes(regs[16 * 8:17 * 8], "little")
    assert entry == syms["_start"] == c.reg(RIP)
    assert c.reg(RAX) == 0x2BADB002                        # Multiboot magic in EAX at entry
    assert c.cmd(b"G" + regs.hex().encode()) == b"OK"      # writing back the same values is a no-op
    assert c.cmd(b"P0=%s" % (0x1122334455667788).to_bytes(8, "little").hex().encode()) == b"OK"
    assert c.reg(RAX) == 0x1122334455667788
    assert c.cmd(b"P0=%s" % (0x2BADB002).to_bytes(8, "little").hex().encode()) == b"OK"
    cs = 18
    assert c.cmd(b"P%x=%s" % (cs, (0x1234).to_bytes(4, "little").hex().encode())).startswith(b"E")
    finish_ok(vm, c)


def test_breakpoints_do_not_modify_guest_memory(vm, syms):
    c = connect(vm)
    kmain = syms["kmain64"]
    original = elf_bytes(kmain, 16)
    assert c.cmd(b"Z0,%x,1" % kmain) == b"OK"
    assert c.cmd(b"Z1,%x,1" % syms["mm_init"]) == b"OK"
    assert c.read(kmain, 16) == original
    reply = c.cmd(b"c")
    assert reply.startswith(b"T05") and b"swbreak:" in reply, reply
    assert c.reg(RIP) == kmain
    assert c.read(kmain, 16) == original       # the guest's view: no int3 anywhere
    # unmapped and non-canonical guest-virtual addresses (long mode, the kernel's page tables)
    assert c.cmd(b"m%x,10" % 0x7F0000000000) == b"E0e"
    assert c.cmd(b"m%x,10" % 0x8000000000000000) == b"E0e"
    assert c.cmd(b"M%x,1:00" % 0x7F0000000000) == b"E0e"
    # continuing from a breakpoint steps over it and stops at the next one (a hardware one)
    reply = c.cmd(b"c")
    assert b"hwbreak:" in reply and c.reg(RIP) == syms["mm_init"], reply
    assert c.cmd(b"z0,%x,1" % kmain) == b"OK" and c.cmd(b"z1,%x,1" % syms["mm_init"]) == b"OK"
    finish_ok(vm, c)


def test_single_step_and_step_over_breakpoint(vm, syms):
    c = connect(vm)
    kmain = syms["kmain64"]
    assert run_to(c, kmain).startswith(b"T05")
    assert c.cmd(b"Z0,%x,1" % kmain) == b"OK"     # a breakpoint at RIP must not re-trigger the step
    rips = [c.reg(RIP)]
    for _ in range(5):
        assert c.cmd(b"s") == b"T05thread:1;"
        rips.append(c.reg(RIP))
    assert rips[0] == kmain and len(set(rips)) == 6, [hex(r) for r in rips]
    assert c.cmd(b"vCont;s:1") == b"T05thread:1;"
    assert c.cmd(b"z0,%x,1" % kmain) == b"OK"
    finish_ok(vm, c, b"vCont;c")


def test_ctrl_c_and_code_patching_invalidate_translations(vm, syms):
    """Patch `jmp $` at RIP (the engine already translated that code), continue, interrupt with
    0x03, restore the original bytes; the guest then runs normally."""
    c = connect(vm)
    kmain = syms["kmain64"]
    assert run_to(c, kmain).startswith(b"T05")
    original = c.read(kmain, 2)
    assert c.cmd(b"M%x,2:ebfe" % kmain) == b"OK"
    assert c.read(kmain, 2) == b"\xeb\xfe"
    c.send(b"c")
    time.sleep(0.5)
    c.send_raw(b"\x03")
    assert c.recv() == b"T02thread:1;"
    assert c.reg(RIP) == kmain
    assert c.cmd(b"X%x,2:" % kmain + original) == b"OK"
    assert c.read(kmain, 2) == original == elf_bytes(kmain, 2)
    finish_ok(vm, c)


def test_watchpoint_reports_after_the_write(vm, syms):
    c = connect(vm)
    var = syms["current_test"]
    assert run_to(c, syms["kmain64"]).startswith(b"T05")
    assert c.cmd(b"Z2,%x,8" % var) == b"OK"
    reply = c.cmd(b"c")
    assert reply.startswith(b"T05watch:%x;" % var), reply
    value = int.from_bytes(c.read(var, 8), "little")
    assert value != 0                                   # the write already happened
    assert c.read(value, 3) == b"mbi"                   # current_test = "mbi"
    assert c.cmd(b"z2,%x,8" % var) == b"OK"
    finish_ok(vm, c)


def test_monitor_commands(vm):
    c = connect(vm)
    assert c.monitor("vtl") == "VTL0 selected\n"
    assert "only VTL0" in c.monitor("vtl 1")
    assert "pinning" in c.monitor("pins")
    assert "RWX" in c.monitor("protections 0x100000")
    assert "not mapped" in c.monitor("protections 0x7ff000000") or "outside" in c.monitor(
        "protections 0x7ff000000")
    assert "rip=" in c.monitor("regs") and "last exits" in c.monitor("regs")
    assert "unknown monitor command" in c.monitor("frobnicate")
    assert "protections" in c.monitor("help")
    finish_ok(vm, c)


def test_random_bytes_and_junk_packets_do_not_disturb_the_guest(vm):
    c = Rsp(vm.port)
    rnd = random.Random(0x67DB)
    junk = b""
    while len(junk) < 64 * 1024:                 # raw noise that never frames a valid packet
        chunk = rnd.randbytes(4096)
        if not any(e.kind == "packet" for e in PacketParser().feed(junk + chunk)):
            junk += chunk
    c.send_raw(junk)
    c.send_raw(b"$" + b"A" * 100_000 + b"#00")  # oversized
    # well-framed packets with random contents (nothing that resumes, kills or writes state)
    for _ in range(300):
        first = rnd.choice(b"?gpmqQHTzFfjJyY")
        body = bytes([first]) + bytes(rnd.choice(b"0123456789abcdef,:;=-xyzXSF")
                                      for _ in range(rnd.randint(0, 40)))
        if body.startswith(b"QStartNoAckMode"):
            continue
        c.send_raw(frame(body))
    # the stub still answers, in order, and the guest was not disturbed
    c.buf = b""
    c.send_raw(b"+")
    time.sleep(0.5)
    c.sock.settimeout(2)
    try:
        while c.sock.recv(1 << 20):
            pass
    except TimeoutError:
        pass
    c.buf = b""
    assert c.cmd(b"qC") == b"QC1"
    assert c.cmd(b"?").startswith(b"T05")
    finish_ok(vm, c)


def test_kill_ends_the_run(vm):
    c = connect(vm)
    c.send(b"k")
    rc, out, err = vm.finish()
    assert rc == 0 and "killed by gdb" in err, (rc, err)


def test_detach_and_disconnect_let_the_guest_finish(syms):
    vm = Vtlvisor("tests=mbi", wait=True)
    try:
        c = connect(vm)
        assert run_to(c, syms["kmain64"]).startswith(b"T05")
        assert c.cmd(b"Z0,%x,1" % syms["mm_init"]) == b"OK"
        assert c.cmd(b"D") == b"OK"               # removes breakpoints, resumes
        c.close()
        rc, out, _ = vm.finish()
        assert rc == 1 and "ALL PASSED" in out
    finally:
        vm.kill()
    vm = Vtlvisor("tests=mbi", wait=True)
    try:
        c = connect(vm)
        assert run_to(c, syms["kmain64"]).startswith(b"T05")
        assert c.cmd(b"Z0,%x,1" % syms["mm_init"]) == b"OK"
        c.close()                                  # vanish while stopped, breakpoint inserted
        rc, out, _ = vm.finish()
        assert rc == 1 and "ALL PASSED" in out
    finally:
        vm.kill()


def test_connecting_to_a_running_guest_stops_it(syms):
    """Client 1 parks the guest in `jmp $` and leaves it running; client 2 connects, which pauses the
    guest (as QEMU does), restores the code and lets it finish."""
    vm = Vtlvisor("tests=mbi", wait=True)
    try:
        kmain = syms["kmain64"]
        c = connect(vm)
        assert run_to(c, kmain).startswith(b"T05")
        original = c.read(kmain, 2)
        assert c.cmd(b"M%x,2:ebfe" % kmain) == b"OK"
        c.send(b"c")
        time.sleep(0.2)
        c.close()                                    # guest keeps running (spinning)
        time.sleep(0.2)
        assert vm.proc.poll() is None
        c2 = Rsp(vm.port)
        c2.handshake()                               # '?' is answered once the guest paused
        assert c2.reg(RIP) == kmain
        assert c2.cmd(b"M%x,2:%s" % (kmain, original.hex().encode())) == b"OK"
        finish_ok(vm, c2)
    finally:
        vm.kill()
