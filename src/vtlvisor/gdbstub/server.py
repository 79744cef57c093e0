"""The GDB remote-serial-protocol stub.

Threads:
  * the socket thread accepts one client at a time, frames packets, answers ``+``/``-``, turns a
    Ctrl-C byte into ``vcpu.request_pause("interrupt")`` and queues complete packets;
  * the vCPU thread, inside ``on_stop(vcpu, reason)`` (called by the run loop while the guest is
    paused), takes packets from the queue and serves them, since registers and memory may only be
    touched there. It returns when gdb continues, steps, detaches or kills.

Usage (the CLI does this for ``vtlvisor run IMAGE --gdb PORT [--wait]``)::

    stub = GdbStub(partition, "127.0.0.1", 1234)     # binds now: stub.address is known
    stub.start(wait=True)                            # with wait: blocks until gdb resumes
    result = partition.run()
    stub.finish(result)                              # tells gdb the guest exited, closes

Nothing gdb sends can raise out of the stub or stop the hypervisor, except ``k`` (kill).
"""

from __future__ import annotations

import binascii
import logging
import queue
import re
import select
import socket
import threading
import time
from typing import TYPE_CHECKING

from ..hv.stop import RunResult, StopReason
from . import regs
from .packets import BAD, INTERRUPT, NAK, PACKET, PacketParser, escape_binary, frame
from .target import HW, SW, DebugTarget, TargetError

if TYPE_CHECKING:
    from ..hv.partition import Partition

log = logging.getLogger(__name__)

PACKET_SIZE = 0x4000
MAX_MEM_XFER = 0x10000            # largest m/M/X length we serve
PAUSE_RETRY_S = 0.05              # a pause request can race with the run loop: repeat it until stopped
SEND_TIMEOUT_S = 5.0
THREAD_ID = 1
_RESUME = object()                # _dispatch result: return from on_stop and let the guest run

SIGINT, SIGTRAP = 2, 5


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` -> (host, port); host defaults to the loopback address."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = ""
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid gdb address {text!r} (expected [HOST:]PORT)")
    return host, int(port)


def _hex(data: bytes) -> bytes:
    return binascii.hexlify(data)


_HEXNUM = re.compile(rb"[0-9a-fA-F]{1,32}")


def _int(text: bytes) -> int:
    """Parse a hex number from a packet field; ValueError on anything else (signs, spaces, 0x...)."""
    if not _HEXNUM.fullmatch(text):
        raise ValueError(f"bad number {text[:40]!r}")
    return int(text, 16)


class GdbStub:
    def __init__(self, partition: Partition, host: str = "127.0.0.1", port: int = 1234) -> None:
        self.partition = partition
        self.vcpu = partition.vcpu
        self.target = DebugTarget(self.vcpu)
        self._lsock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host
                                           else socket.AF_INET)
        self._lsock.settimeout(0.2)
        self.address: tuple[str, int] = self._lsock.getsockname()[:2]
        self._inbox: queue.Queue[tuple[str, int, bytes]] = queue.Queue(maxsize=1024)
        self._lock = threading.RLock()          # connection state and sending
        self._conn: socket.socket | None = None
        self._gen = 0                           # connection generation
        self._served_gen = 0                    # last generation the vCPU side has seen
        self._noack = False
        self._last_sent: bytes | None = None
        self._stopped = False                   # the vCPU is inside on_stop
        self._pause_wanted: str | None = None   # reason of a pause the socket thread asked for
        self._pause_asked_at = 0.0
        self._awaiting_stop = False             # gdb resumed the guest and waits for a stop reply
        self._last_stop = b"S05"
        self._hold = False                      # stay stopped even with no client (--wait)
        self._resume_after_step = False         # stepping over a breakpoint for a continue
        self._closed = False
        self._finish_deadline: float | None = None
        self._thread: threading.Thread | None = None

    # ================================================================== lifecycle
    def start(self, wait: bool = False) -> None:
        """Attach to the vCPU and start serving. With ``wait``, block (on the calling thread, which
        must be the one that will run the vCPU) until gdb connects and resumes the guest."""
        self.vcpu.debugger = self
        self._thread = threading.Thread(target=self._serve, name="vtlvisor-gdbstub", daemon=True)
        self._thread.start()
        if wait:
            self._hold = True
            self.on_stop(self.vcpu, "attach")

    def finish(self, result: RunResult | None = None) -> None:
        """The run is over: report the exit to gdb (``W``) and close everything."""
        if self.vcpu.debugger is self:
            self.vcpu.debugger = None
        with self._lock:
            conn = self._conn
            self._finish_deadline = time.monotonic() + 2.0
            if conn is not None and result is not None and not (
                    result.reason is StopReason.HOST_REQUEST and result.detail == "killed by gdb"):
                text = f"vtlvisor: guest stopped: {result.reason.value}: {result.detail}\n".encode()
                self._send(b"O" + _hex(text))
                self._send(b"W%02x" % (result.exit_status & 0xFF))
            if conn is not None:
                try:
                    conn.shutdown(socket.SHUT_WR)    # gdb closes its end after W: wait for that
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=3)
        self._closed = True
        self._close_conn()
        try:
            self._lsock.close()
        except OSError:
            pass

    close = finish

    # ================================================================== socket thread
    def _serve(self) -> None:
        while not self._closed and self._finish_deadline is None:
            try:
                conn, _peer = self._lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                self._session(conn)
            except Exception:   # noqa: BLE001 - a client must never take the stub down
                log.exception("gdb session")
            finally:
                self._close_conn(conn)

    def _session(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(SEND_TIMEOUT_S)
        parser = PacketParser()
        with self._lock:
            self._conn = conn
            self._gen += 1
            gen = self._gen
            self._noack = False
            self._last_sent = None
            self._awaiting_stop = False         # a new client asks with '?'; nothing unsolicited
            # like QEMU: a connecting debugger stops the guest
            if not self._stopped:
                self._want_pause("attach")
        while not self._closed:
            if self._finish_deadline is not None and time.monotonic() > self._finish_deadline:
                return
            self._retry_pause()
            try:
                ready, _, _ = select.select([conn], [], [], PAUSE_RETRY_S)
                if not ready:
                    continue
                data = conn.recv(65536)
            except (OSError, ValueError):
                return
            if not data:
                return
            for ev in parser.feed(data):
                if ev.kind == PACKET:
                    if not self._noack:
                        self._send_raw(b"+")
                    try:
                        self._inbox.put_nowait(("packet", gen, ev.payload))
                    except queue.Full:
                        log.warning("gdb stub: request queue full, packet dropped")
                elif ev.kind == BAD:
                    if not self._noack:
                        self._send_raw(b"-")
                elif ev.kind == NAK:
                    with self._lock:
                        if not self._noack and self._last_sent is not None:
                            self._send_raw(self._last_sent)
                elif ev.kind == INTERRUPT:
                    with self._lock:
                        if not self._stopped:
                            self._want_pause("interrupt")
                # ACK: nothing to do (we never wait for acks)

    def _want_pause(self, reason: str) -> None:
        """Called with the lock held: ask the vCPU to pause (repeated by _retry_pause)."""
        self._pause_wanted = reason
        self._pause_asked_at = time.monotonic()
        self.vcpu.request_pause(reason)

    def _retry_pause(self) -> None:
        with self._lock:
            if self._pause_wanted is not None and not self._stopped and self.vcpu.result is None \
                    and time.monotonic() - self._pause_asked_at >= PAUSE_RETRY_S:
                self._want_pause(self._pause_wanted)

    # ------------------------------------------------------------------ sending
    def _send_raw(self, data: bytes) -> None:
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            try:
                conn.sendall(data)
            except OSError:
                log.info("gdb stub: client write failed; closing the connection")
                self._drop(conn)

    def _send(self, payload: bytes) -> None:
        data = frame(payload)
        with self._lock:
            self._last_sent = data
            self._send_raw(data)

    def _drop(self, conn: socket.socket) -> None:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _close_conn(self, conn: socket.socket | None = None) -> None:
        with self._lock:
            c = self._conn if conn is None else conn
            if c is None:
                return
            if self._conn is c:
                self._conn = None
        try:
            c.close()
        except OSError:
            pass

    # ================================================================== vCPU thread
    def on_stop(self, vcpu, reason: str) -> None:
        """Called by the run loop (vCPU thread) with the guest paused; returns to resume it."""
        hit = self.target.take_hit()
        with self._lock:
            interrupted = self._pause_wanted == "interrupt"
            if self._resume_after_step and not interrupted and hit is None and reason == "step":
                self._resume_after_step = False     # stepped over a breakpoint: go on
                return
            self._resume_after_step = False
            self._stopped = True
            self._pause_wanted = None
            gen, conn = self._gen, self._conn
        try:
            if gen != self._served_gen or conn is None:
                # a new client, or the old one went away: drop what the last session left behind
                self.target.clear_all()
                self._served_gen = gen
            if conn is None and not self._hold:
                return
            reply = self._stop_reply(reason, hit, interrupted)
            with self._lock:
                self._last_stop = reply
                if self._awaiting_stop and self._conn is conn:
                    self._send(reply)
                self._awaiting_stop = False
            self._serve_stopped()
        finally:
            with self._lock:
                self._stopped = False

    def _stop_reply(self, reason: str, hit: tuple[str, int] | None, interrupted: bool) -> bytes:
        thread = b"thread:%x;" % THREAD_ID
        if hit is not None:
            kind, addr = hit
            if kind in (SW, HW):
                return b"T%02x%s:;%s" % (SIGTRAP, kind.encode(), thread)
            return b"T%02x%s:%x;%s" % (SIGTRAP, kind.encode(), addr, thread)
        if reason == "interrupt" or interrupted:
            return b"T%02x%s" % (SIGINT, thread)
        return b"T%02x%s" % (SIGTRAP, thread)

    def _serve_stopped(self) -> None:
        while True:
            try:
                kind, gen, payload = self._inbox.get(timeout=0.2)
            except queue.Empty:
                if self._conn is None:                # the client went away while we were stopped
                    self.target.clear_all()
                    if not self._hold:
                        return
                continue
            with self._lock:
                if gen != self._gen:
                    continue                          # left over from an earlier connection
                if gen != self._served_gen:
                    self._served_gen = gen
                    new_session = True
                else:
                    new_session = False
            if new_session:
                self.target.clear_all()
            if self._dispatch(payload) is _RESUME:
                return

    # ------------------------------------------------------------------ packet dispatch
    def _dispatch(self, pkt: bytes) -> object:
        """Serve one packet. Never raises: errors become ``E`` replies, unknown packets ``""``."""
        try:
            return self._handle(pkt)
        except TargetError as e:
            self._send(b"E%02x" % (e.errno & 0xFF))
        except (ValueError, IndexError, KeyError, binascii.Error, OverflowError, regs.RegisterError) as e:
            log.debug("gdb packet %r: %s", pkt[:64], e)
            self._send(b"E01")
        except Exception:   # noqa: BLE001 - never let a packet take the hypervisor down
            log.exception("gdb packet %r", pkt[:64])
            self._send(b"E01")
        return None

    def _handle(self, pkt: bytes) -> object:
        if not pkt:
            self._send(b"")
            return None
        c, rest = pkt[:1], pkt[1:]
        vcpu, tgt = self.vcpu, self.target
        if c == b"?":
            self._send(self._last_stop)
        elif c == b"g":
            self._send(_hex(regs.read_all(vcpu)))
        elif c == b"G":
            data = binascii.unhexlify(rest)
            offsets = []
            off = 0
            for i in range(len(regs.REGS)):
                offsets.append(off)
                off += regs.size(i)
            if len(data) != off:
                raise ValueError("G: wrong length")
            for i, o in enumerate(offsets):
                regs.write(vcpu, i, data[o:o + regs.size(i)])
            self._send(b"OK")
        elif c == b"p":
            n = _int(rest)
            if n >= len(regs.REGS):
                raise TargetError(0, "no such register")
            self._send(_hex(regs.read(vcpu, n)))
        elif c == b"P":
            num, _, val = rest.partition(b"=")
            n = _int(num)
            if n >= len(regs.REGS):
                raise TargetError(0, "no such register")
            regs.write(vcpu, n, binascii.unhexlify(val))
            self._send(b"OK")
        elif c == b"m":
            addr, length = self._addr_len(rest)
            self._send(_hex(tgt.read_memory(addr, length)))
        elif c == b"M":
            head, _, data = rest.partition(b":")
            addr, length = self._addr_len(head)
            raw = binascii.unhexlify(data)
            if len(raw) != length:
                raise ValueError("M: length mismatch")
            tgt.write_memory(addr, raw)
            self._send(b"OK")
        elif c == b"X":
            head, sep, data = rest.partition(b":")
            if not sep:
                raise ValueError("X: no data")
            addr, length = self._addr_len(head)
            if len(data) != length:
                raise ValueError("X: length mismatch")
            tgt.write_memory(addr, data)
            self._send(b"OK")
        elif c in (b"Z", b"z"):
            self._breakpoint(c == b"Z", rest)
        elif c in (b"c", b"s"):
            if rest:
                vcpu.engine.rip = _int(rest)
            return self._resume(step=c == b"s")
        elif c in (b"C", b"S"):
            _sig, _, addr = rest.partition(b";")
            _int(_sig)
            if addr:
                vcpu.engine.rip = _int(addr)
            return self._resume(step=c == b"S")
        elif c == b"H":
            self._send(b"OK")
        elif c == b"T":
            self._send(b"OK" if rest in (b"1", b"01", b"-1", b"0") else b"E01")
        elif c == b"D":
            tgt.clear_all()
            self._send(b"OK")
            self._hold = False
            return _RESUME
        elif c == b"k":
            return self._kill()
        elif c == b"q":
            self._query(pkt)
        elif c == b"Q":
            if pkt == b"QStartNoAckMode":
                self._send(b"OK")
                with self._lock:
                    self._noack = True
            else:
                self._send(b"")
        elif c == b"v":
            return self._v_packet(pkt)
        else:
            self._send(b"")
        return None

    @staticmethod
    def _addr_len(text: bytes) -> tuple[int, int]:
        a, sep, n = text.partition(b",")
        if not sep:
            raise ValueError("expected ADDR,LENGTH")
        addr, length = _int(a), _int(n)
        if length > MAX_MEM_XFER:
            raise TargetError(22, "length too large")
        if addr >= 1 << 64:
            raise TargetError(14, "address out of range")
        return addr, length

    def _breakpoint(self, insert: bool, rest: bytes) -> None:
        fields = rest.split(b";", 1)[0].split(b",")
        if len(fields) != 3:
            raise ValueError("Z: expected TYPE,ADDR,KIND")
        kind, addr, size = _int(fields[0]), _int(fields[1]), _int(fields[2])
        tgt = self.target
        if kind in (0, 1):
            k = SW if kind == 0 else HW
            (tgt.insert_breakpoint if insert else tgt.remove_breakpoint)(k, addr)
        elif kind in (2, 3, 4):
            if insert:
                tgt.insert_watchpoint(kind, addr, size)
            else:
                tgt.remove_watchpoint(kind, addr, size)
        else:
            self._send(b"")          # unsupported type: empty reply, as the protocol asks
            return
        self._send(b"OK")

    def _resume(self, step: bool) -> object:
        over_bp = self.target.prepare_resume()
        if step or over_bp:
            self.vcpu.single_step = True
        self._resume_after_step = over_bp and not step
        self._hold = False
        with self._lock:
            self._awaiting_stop = True
        return _RESUME

    def _kill(self) -> object:
        self.target.clear_all()
        self._hold = False
        self.vcpu.request_stop(StopReason.HOST_REQUEST, "killed by gdb")
        with self._lock:
            conn = self._conn
        if conn is not None:
            self._drop(conn)
        return _RESUME

    def _v_packet(self, pkt: bytes) -> object:
        if pkt == b"vCont?":
            self._send(b"vCont;c;C;s;S")
        elif pkt.startswith(b"vCont;"):
            actions = pkt[6:].split(b";")
            for act in actions:
                what, _, thread = act.partition(b":")
                if thread and thread not in (b"-1", b"1", b"01", b"0", b"p1.1", b"p1.-1"):
                    continue
                if what[:1] in (b"s", b"S"):
                    return self._resume(step=True)
                if what[:1] in (b"c", b"C"):
                    return self._resume(step=False)
                raise ValueError(f"vCont action {what!r}")
            raise ValueError("vCont: no action for our thread")
        elif pkt.startswith(b"vKill"):
            self._send(b"OK")
            return self._kill()
        else:
            self._send(b"")      # vMustReplyEmpty and everything we do not support
        return None

    def _query(self, pkt: bytes) -> None:
        if pkt.startswith(b"qSupported"):
            self._send(b"PacketSize=%x;qXfer:features:read+;swbreak+;hwbreak+;QStartNoAckMode+"
                       % PACKET_SIZE)
        elif pkt == b"qAttached" or pkt.startswith(b"qAttached:"):
            self._send(b"1")
        elif pkt == b"qC":
            self._send(b"QC%x" % THREAD_ID)
        elif pkt == b"qfThreadInfo":
            self._send(b"m%x" % THREAD_ID)
        elif pkt == b"qsThreadInfo":
            self._send(b"l")
        elif pkt.startswith(b"qThreadExtraInfo,"):
            self._send(_hex(b"vCPU 0, VTL0"))
        elif pkt.startswith(b"qXfer:features:read:"):
            self._send(self._xfer_features(pkt[len(b"qXfer:features:read:"):]))
        elif pkt == b"qSymbol::":
            self._send(b"OK")
        elif pkt.startswith(b"qRcmd,"):
            cmd = binascii.unhexlify(pkt[6:]).decode("utf-8", "replace")
            out = self.monitor(cmd)
            if out:
                if not out.endswith("\n"):
                    out += "\n"
                data = out.encode()
                for i in range(0, len(data), 2048):
                    self._send(b"O" + _hex(data[i:i + 2048]))
            self._send(b"OK")
        else:
            self._send(b"")

    @staticmethod
    def _xfer_features(args: bytes) -> bytes:
        annex, _, span = args.partition(b":")
        if annex != b"target.xml":
            raise TargetError(0, "no such annex")
        off, length = GdbStub._addr_len(span)
        chunk = regs.TARGET_XML[off:off + length]
        more = off + length < len(regs.TARGET_XML)
        return (b"m" if more else b"l") + escape_binary(chunk)

    # ------------------------------------------------------------------ monitor commands
    def monitor(self, line: str) -> str:
        """``monitor ...`` commands (also usable from Python on the vCPU thread while stopped)."""
        words = line.split()
        if not words or words[0] == "help":
            return ("monitor commands:\n"
                    "  vtl [N]            show / select the VTL the debugger works in (VTL0 only)\n"
                    "  pins               CR0/CR4 pinning state\n"
                    "  protections GPA    nested page table permissions of a guest-physical address\n"
                    "  regs               full hypervisor register/exit dump\n")
        cmd, args = words[0], words[1:]
        if cmd == "vtl":
            if args:
                try:
                    n = int(args[0], 0)
                except ValueError:
                    return f"invalid VTL '{args[0]}'"
                if n != 0:
                    return f"VTL{n} is not available: only VTL0 can be debugged; VTL0 selected"
            return "VTL0 selected"
        if cmd == "pins":
            return self._monitor_pins()
        if cmd == "protections":
            if len(args) != 1:
                return "usage: monitor protections GPA"
            try:
                gpa = int(args[0], 0)
            except ValueError:
                return f"invalid address '{args[0]}'"
            return self._monitor_protections(gpa)
        if cmd == "regs":
            return self.vcpu.state_dump()
        return f"unknown monitor command '{cmd}'; try 'monitor help'"

    def _monitor_pins(self) -> str:
        crpin = getattr(self.partition, "crpin", None)
        if crpin is None or not getattr(crpin, "enabled", True):
            return "CR pinning not enabled"
        lines = ["CR pinning enabled"]
        pins = getattr(crpin, "pins", None)
        if pins is not None:
            for cr in (0, 4):
                low, high = getattr(pins, f"cr{cr}_low", 0), getattr(pins, f"cr{cr}_high", 0)
                lines.append(f"  CR{cr}: pinned high (must stay set) {high:#x}, "
                             f"pinned low (must stay clear) {low:#x}")
        blocked = list(getattr(crpin, "blocked", []) or [])
        lines.append(f"  blocked writes: {len(blocked)}")
        for b in blocked[-5:]:
            lines.append(f"    CR{b.cr} {b.old:#x} -> {b.attempted:#x} at RIP {b.rip:#x} (CPL {b.cpl})")
        return "\n".join(lines)

    def _monitor_protections(self, gpa: int) -> str:
        npt = getattr(self.partition, "npt", None)
        if npt is None:
            return "no nested page table"
        if not 0 <= gpa < 1 << 52:
            return f"GPA {gpa:#x}: outside the guest-physical address space"
        try:
            entry = npt.get(gpa)
        except ValueError:
            return (f"GPA {gpa:#x}: mapped by a 2 MiB NPT page (MMIO or the unassigned hole), "
                    "not by a per-page RAM entry")
        if not entry & 1:
            return f"GPA {gpa:#x}: not mapped (NPT entry {entry:#x}): no access"
        perms = "R" + ("W" if entry & 2 else "-") + ("-" if entry >> 63 & 1 else "X")
        hpa = entry & 0x000FFFFFFFFFF000
        return f"GPA {gpa:#x}: NPT entry {entry:#x} -> HPA {hpa | (gpa & 0xFFF):#x}: {perms}"
