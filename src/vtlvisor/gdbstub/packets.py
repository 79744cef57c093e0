"""GDB remote serial protocol framing: ``$payload#cs``, acks, Ctrl-C, binary escapes.

Pure functions and an incremental parser; no sockets here. Nothing in this module raises on input
from the wire: anything malformed becomes a ``BAD`` event (answered with ``-``) or is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the largest payload we accept before the '#'; longer packets are dropped (and NAKed)
MAX_PAYLOAD = 0x10000

PACKET, ACK, NAK, INTERRUPT, BAD = "packet", "ack", "nak", "interrupt", "bad"
_HEX = b"0123456789abcdefABCDEF"


@dataclass(frozen=True)
class Event:
    kind: str
    payload: bytes = b""


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def frame(payload: bytes) -> bytes:
    """``$payload#xx``. The payload must already be escaped where it holds binary data."""
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


def escape_binary(data: bytes) -> bytes:
    """Escape ``# $ } *`` (``*`` would read as run-length encoding) as ``}`` + (byte ^ 0x20)."""
    out = bytearray()
    for b in data:
        if b in (0x23, 0x24, 0x7D, 0x2A):
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    if b"}" not in data:
        return data
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                break
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


class PacketParser:
    """Feed raw bytes, get events. Checksums are verified on the escaped bytes as sent."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()
        self._state = 0          # 0 idle, 1 payload, 2/3 checksum digits, 4-6 skipping an oversized one
        self._cs = bytearray()

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for b in data:
            st = self._state
            if st == 0:
                if b == 0x24:                      # '$'
                    self._buf.clear()
                    self._state = 1
                elif b == 0x2B:                    # '+'
                    events.append(Event(ACK))
                elif b == 0x2D:                    # '-'
                    events.append(Event(NAK))
                elif b == 0x03:
                    events.append(Event(INTERRUPT))
                # anything else between packets is noise: ignored
            elif st == 1:
                if b == 0x23:                      # '#'
                    self._cs.clear()
                    self._state = 2
                elif b == 0x24:                    # a new '$' restarts the packet
                    self._buf.clear()
                elif len(self._buf) >= self.max_payload:
                    self._buf.clear()
                    self._state = 4
                    events.append(Event(BAD))
                else:
                    self._buf.append(b)
            elif st in (2, 3):
                self._cs.append(b)
                if st == 2:
                    self._state = 3
                    continue
                self._state = 0
                raw = bytes(self._buf)
                self._buf.clear()
                if all(c in _HEX for c in self._cs) and int(self._cs, 16) == checksum(raw):
                    events.append(Event(PACKET, unescape(raw)))
                else:
                    events.append(Event(BAD))
            elif st == 4:                          # oversized: skip to the end of the packet
                if b == 0x23:
                    self._state = 5
                elif b == 0x24:
                    self._buf.clear()
                    self._state = 1
            else:                                  # 5, 6: the oversized packet's checksum digits
                self._state = 6 if st == 5 else 0
        return events
