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
