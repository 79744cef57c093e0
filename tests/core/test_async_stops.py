"""Asynchronous engine stops (the kicker thread, here every 50 us because a timer interrupt is pending
while IF=0) must never re-execute or lose a port access: the UART output stays exact."""

from asmguest import AsmGuest

from vtlvisor.hv.stop import StopReason


def test_kicker_stops_do_not_duplicate_or_drop_port_output():
    g = AsmGuest("""
        cli
        mov rdi, 0xfee00000
        mov dword ptr [rdi+0xf0], 0x1ff
        mov dword ptr [rdi+0x3e0], 0xb
        mov dword ptr [rdi+0x320], 0x40
        mov dword ptr [rdi+0x380], 100          ; fires at once and stays pending (IF=0)
        mov rcx, 20000
        mov dx, 0x3f8
    lp:
        mov al, 0x61
        out dx, al
        mov al, 0x62
        out dx, al
        dec rcx
        jnz lp
    """)
    r = g.run(timeout=60)
    assert r.reason is StopReason.DEBUG_EXIT
    assert g.part.platform.lapic.pending_vector() == 0x40        # the interrupt really was pending
    assert g.part.serial_output == b"ab" * 20000


# Unicorn 2.1.4 (unicorn issue #1355, "emu_stop is still not thread-safe") ends emulation after any guest memory
# access once an emu_stop from another thread is pending, rewinding RIP to the accessing instruction: a memory
# read-modify-write instruction cut after its store ran again on resume (`inc qword ptr [mem]` in a loop gained one
# increment per kick, in plain Unicorn too). Fixed by the verified patch_exit_checks in engine/unicorn_internals.py:
# asynchronous stops take effect only at instruction boundaries (TB starts, code hooks).
RMW_LOOP = """
    mov rbx, 0xfee00000
    mov dword ptr [rbx+0xf0], 0x1ff
    mov dword ptr [rbx+0x3e0], 0xb
    mov dword ptr [rbx+0x320], 0x20040
    mov dword ptr [rbx+0x380], 2000
    sti
    mov rax, {counter:#x}
    mov rcx, {n}
lp:
    inc qword ptr [rax]
    dec rcx
    jnz lp
    cli
    mov dword ptr [rbx+0x320], 0x10040
"""


def test_timer_kicks_never_repeat_a_read_modify_write_instruction():
    from asmguest import SCRATCH, TICKS
    counter, n = SCRATCH + 0x80, 200_000
    extra = []
    for _ in range(3):
        g = AsmGuest(RMW_LOOP.format(counter=counter, n=n))
        r = g.run(timeout=60)
        assert r.reason is StopReason.DEBUG_EXIT and g.u64(TICKS) > 0
        extra.append(g.u64(counter) - n)
    assert extra == [0, 0, 0], extra


def test_engine_patches_make_plain_unicorn_stops_exact():
    """The start-up patches (idempotent) fix the engine itself: a thread calling emu_stop every 200 us
    against a plain Unicorn `inc [mem]` loop never repeats the increment."""
    import threading
    import time

    from keystone import KS_ARCH_X86, KS_MODE_64, Ks
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
    from unicorn.x86_const import UC_X86_REG_RCX, UC_X86_REG_RIP

    from vtlvisor.engine import unicorn_internals as ui
    ui.patch_exit_checks()
    ui.patch_insn_hook_loops()
    ui.patch_exit_checks()              # idempotent
    n = 3_000_000
    code = bytes(Ks(KS_ARCH_X86, KS_MODE_64).asm(
        f"mov rax, 0x2000; mov rcx, {n}; l: inc qword ptr [rax]; dec rcx; jnz l; hlt", 0x1000)[0])
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, code)
    end = 0x1000 + len(code) - 1
    done = threading.Event()

    def kicker():
        while not done.is_set():
            time.sleep(0.0002)
            uc.emu_stop()

    t = threading.Thread(target=kicker, daemon=True)
    t.start()
    rip, stops, bad = 0x1000, 0, 0
    try:
        while rip < end:
            uc.emu_start(rip, end)
            stops += 1
            rip = uc.reg_read(UC_X86_REG_RIP)
            if 0x100e <= rip < end:            # in the loop (a stop before `mov rcx` sees rcx = 0)
                count = int.from_bytes(uc.mem_read(0x2000, 8), "little")
                bad += count + uc.reg_read(UC_X86_REG_RCX) - n not in (0, 1)
    finally:
        done.set()
        t.join()
    assert int.from_bytes(uc.mem_read(0x2000, 8), "little") == n and bad == 0, (stops, bad)
