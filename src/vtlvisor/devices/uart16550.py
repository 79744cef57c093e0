"""16550A UART (COM1-compatible): the guest's console.

The model follows QEMU's ``hw/char/serial.c`` closely enough that guest drivers written against QEMU
work unchanged, but transmission is instantaneous: a byte written to THR is handed to the host output at
once, so THRE and TEMT always read as set and a THR-empty interrupt becomes pending right after each
write (as QEMU reports it once its transmit timer fires).

Receive has two stages. Bytes from the host (``feed``, called by a stdin reader thread) wait in a host
queue, which models data still "on the wire" behind hardware flow control; the device FIFO (16 bytes,
or a single holding register with the FIFO disabled) holds only loopback data. RBR reads drain the FIFO
first, then the host queue, and LSR.DR is set while either holds a byte. Keeping host input out of the
FIFO means a guest's ``FCR`` "clear receive FIFO" at driver initialisation cannot discard console input
typed before the guest started, which real flow-controlled hardware would not lose either.

A copy of everything transmitted (``transcript``, bounded) is kept so tests can inspect the output.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
from collections.abc import Callable
from typing import BinaryIO

from .access import split_read, split_write

log = logging.getLogger(__name__)

COM1_BASE = 0x3F8
UART_PORT_COUNT = 8
TRANSCRIPT_LIMIT = 1 << 20          # bytes of output kept for ``transcript``
HOST_QUEUE_LIMIT = 1 << 20          # bytes of host input buffered before new input is dropped
FIFO_SIZE = 16                      # 16550A receive FIFO depth
LINE_FLUSH_LIMIT = 4096             # emit a partial line once this much is buffered


class UartReg(enum.IntEnum):
    """Register offsets from the base port (Linux include/uapi/linux/serial_reg.h; QEMU serial.c)."""

    RX = 0          # read, DLAB=0: receive buffer (RBR)
    TX = 0          # write, DLAB=0: transmit holding (THR); an alias of RX
    DLL = 0         # DLAB=1: divisor latch low
    IER = 1         # DLAB=0: interrupt enable
    DLM = 1         # DLAB=1: divisor latch high
    IIR = 2         # read: interrupt identification
    FCR = 2         # write: FIFO control
    LCR = 3
    MCR = 4
    LSR = 5
    MSR = 6
    SCR = 7


class UartIer(enum.IntEnum):
    """IER bits (serial_reg.h UART_IER_*)."""

    RDI = 0x01      # receive data available
    THRI = 0x02     # transmit holding register empty
    RLSI = 0x04     # receiver line status
    MSI = 0x08      # modem status


class UartIir(enum.IntEnum):
    """IIR values (serial_reg.h UART_IIR_*)."""

    NO_INT = 0x01
    ID = 0x0E       # mask of the interrupt identification bits
    MSI = 0x00
    THRI = 0x02
    RDI = 0x04
    RLSI = 0x06
    CTI = 0x0C      # character timeout (FIFO mode, data below the trigger level)
    FIFO_ENABLED = 0xC0


class UartFcr(enum.IntEnum):
    """FCR bits (serial_reg.h UART_FCR_*)."""

    FE = 0x01       # FIFO enable
    RFR = 0x02      # clear receive FIFO
    XFR = 0x04      # clear transmit FIFO
    DMS = 0x08      # DMA mode select
    ITL_MASK = 0xC0  # receive trigger level


FCR_TRIGGER_LEVELS = {0x00: 1, 0x40: 4, 0x80: 8, 0xC0: 14}


class UartLcr(enum.IntEnum):
    """LCR bits (serial_reg.h UART_LCR_*)."""

    DLAB = 0x80


class UartMcr(enum.IntEnum):
    """MCR bits (serial_reg.h UART_MCR_*)."""

    DTR = 0x01
    RTS = 0x02
    OUT1 = 0x04
    OUT2 = 0x08
    LOOP = 0x10


class UartLsr(enum.IntEnum):
    """LSR bits (serial_reg.h UART_LSR_*)."""

    DR = 0x01
    OE = 0x02
    PE = 0x04
    FE = 0x08
    BI = 0x10
    THRE = 0x20
    TEMT = 0x40
    INT_ANY = 0x1E  # any of BI|FE|PE|OE (QEMU UART_LSR_INT_ANY)


class UartMsr(enum.IntEnum):
    """MSR bits (serial_reg.h UART_MSR_*)."""

    DCTS = 0x01
    DDSR = 0x02
    TERI = 0x04
    DDCD = 0x08
    ANY_DELTA = 0x0F
    CTS = 0x10
    DSR = 0x20
    RI = 0x40
    DCD = 0x80


Output = Callable[[bytes], object] | BinaryIO


class Uart16550:
    """A 16550A at ``base`` (8 ports). ``output`` receives transmitted bytes, a line at a time."""

    def __init__(self, output: Output | None = None, base: int = COM1_BASE,
                 on_rx: Callable[[], None] | None = None) -> None:
        self.base = base
        self._output = output
        self._on_rx = on_rx
        self._lock = threading.Lock()           # guards _host_rx (fed from another thread)
        self._host_rx: collections.deque[int] = collections.deque()
        self._fifo: collections.deque[int] = collections.deque()
        self._pending_out = bytearray()
        self._transcript = bytearray()
        self._output_broken = False
        self.reset()

    # -- state
    def reset(self) -> None:
        """Power-on state as QEMU's serial_reset (MCR=OUT2, MSR=DCD|DSR|CTS, divisor 12)."""
        self.ier = 0
        self.lcr = 0
        self.mcr = int(UartMcr.OUT2)
        self.lsr = UartLsr.TEMT | UartLsr.THRE
        self.line_status = UartMsr.DCD | UartMsr.DSR | UartMsr.CTS   # modem inputs when not in loopback
        self._msr_delta = 0
        self.scr = 0
        self.fcr = 0
        self.divisor = 0x0C
        self._thr_ipending = False
        self._fifo.clear()

    @property
    def transcript(self) -> bytes:
        """Everything transmitted so far (the last ``TRANSCRIPT_LIMIT`` bytes)."""
        return bytes(self._transcript[-TRANSCRIPT_LIMIT:])

    # -- host side
    def feed(self, data: bytes) -> None:
        """Queue host input for the guest. Thread-safe; input beyond the queue limit is dropped."""
        with self._lock:
            room = HOST_QUEUE_LIMIT - len(self._host_rx)
            if len(data) > room:
                log.warning("serial input queue full: dropping %d bytes", len(data) - max(room, 0))
                data = data[:max(room, 0)]
            self._host_rx.extend(data)
        if data and self._on_rx is not None:
            self._on_rx()

    def flush(self) -> None:
        """Hand any partial output line to the host output now."""
        if self._pending_out:
            chunk = bytes(self._pending_out)
            self._pending_out.clear()
            self._emit(chunk)

    def irq_pending(self) -> bool:
        """True when the UART asserts its interrupt line (IIR reports an interrupt)."""
        return self._iir_id() != UartIir.NO_INT

    # -- PortDevice
    def io_read(self, port: int, size: int) -> int:
        return split_read(self._read_byte, port, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        split_write(self._write_byte, port, size, value)

    # -- byte registers
    def _read_byte(self, port: int) -> int:
        off = port - self.base
        dlab = bool(self.lcr & UartLcr.DLAB)
        if off == UartReg.RX:
            return self.divisor & 0xFF if dlab else self._pop_rx()
        if off == UartReg.IER:
            return (self.divisor >> 8) & 0xFF if dlab else self.ier
        if off == UartReg.IIR:
            iid = self._iir_id()
            if iid == UartIir.THRI:
                self._thr_ipending = False      # reading IIR acknowledges THRE (16550 datasheet)
            return iid | (UartIir.FIFO_ENABLED if self.fcr & UartFcr.FE else 0)
        if off == UartReg.LCR:
            return self.lcr
        if off == UartReg.MCR:
            return self.mcr
        if off == UartReg.LSR:
            value = self.lsr | (UartLsr.DR if self._rx_count() else 0)
            self.lsr &= ~(UartLsr.BI | UartLsr.OE)      # error bits clear on read
            return value
        if off == UartReg.MSR:
            return self._read_msr()
        if off == UartReg.SCR:
            return self.scr
        return 0xFF

    def _write_byte(self, port: int, value: int) -> None:
        off = port - self.base
        dlab = bool(self.lcr & UartLcr.DLAB)
        if off == UartReg.TX:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self._transmit(value)
        elif off == UartReg.IER:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
            else:
                newly_thri = (value & ~self.ier) & UartIer.THRI
                self.ier = value & 0x0F
                if newly_thri:
                    self._thr_ipending = True   # THR is always empty: enabling THRI raises it
                elif not self.ier & UartIer.THRI:
                    self._thr_ipending = False
        elif off == UartReg.FCR:
            self._write_fcr(value)
        elif off == UartReg.LCR:
            self.lcr = value
        elif off == UartReg.MCR:
            self._write_mcr(value & 0x1F)
        elif off == UartReg.LSR:
            pass                                 # LSR is read-only on a 16550A (QEMU ignores it)
        elif off == UartReg.MSR:
            pass                                 # read-only
        elif off == UartReg.SCR:
            self.scr = value

    def _write_fcr(self, value: int) -> None:
        if (value ^ self.fcr) & UartFcr.FE:
            self._fifo.clear()                   # toggling FIFO enable resets both FIFOs
        if value & UartFcr.RFR:
            self._fifo.clear()
        self.fcr = value & (UartFcr.FE | UartFcr.DMS | UartFcr.ITL_MASK)

    def _write_mcr(self, value: int) -> None:
        old_status = self._modem_status()
        self.mcr = value
        self._msr_delta |= self._deltas(old_status, self._modem_status())

    def _modem_status(self) -> int:
        """MSR status bits: the modem inputs, or the MCR outputs wired back in loopback."""
        if self.mcr & UartMcr.LOOP:
            return self._loop_status(self.mcr)
        return self.line_status

    @staticmethod
    def _loop_status(mcr: int) -> int:
        """MSR status bits in loopback (QEMU): OUT2->DCD, OUT1->RI, DTR->DSR, RTS->CTS."""
        status = 0
        if mcr & UartMcr.OUT2:
            status |= UartMsr.DCD
        if mcr & UartMcr.OUT1:
            status |= UartMsr.RI
        if mcr & UartMcr.DTR:
            status |= UartMsr.DSR
        if mcr & UartMcr.RTS:
            status |= UartMsr.CTS
        return status

    @staticmethod
    def _deltas(old: int, new: int) -> int:
        delta = 0
        if (old ^ new) & UartMsr.CTS:
            delta |= UartMsr.DCTS
        if (old ^ new) & UartMsr.DSR:
            delta |= UartMsr.DDSR
        if (old ^ new) & UartMsr.DCD:
            delta |= UartMsr.DDCD
        if old & UartMsr.RI and not new & UartMsr.RI:
            delta |= UartMsr.TERI               # trailing edge of RI
        return delta

    def _read_msr(self) -> int:
        value = self._modem_status() | self._msr_delta
        self._msr_delta = 0                      # deltas clear on read
        return value

    # -- data path
    def _transmit(self, byte: int) -> None:
        if self.mcr & UartMcr.LOOP:
            capacity = FIFO_SIZE if self.fcr & UartFcr.FE else 1
            if len(self._fifo) >= capacity:
                self.lsr |= UartLsr.OE
            else:
                self._fifo.append(byte)
        else:
            self._transcript.append(byte)
            if len(self._transcript) > 2 * TRANSCRIPT_LIMIT:
                del self._transcript[:-TRANSCRIPT_LIMIT]
            self._pending_out.append(byte)
            if byte == 0x0A or len(self._pending_out) >= LINE_FLUSH_LIMIT:
                self.flush()
        self._thr_ipending = True                # transmission is instantaneous

    def _emit(self, chunk: bytes) -> None:
        out = self._output
        if out is None or self._output_broken:
            return
        try:
            write = getattr(out, "write", None)
            if write is not None:
                write(chunk)
                out.flush()
            else:
                out(chunk)                       # type: ignore[operator]
        except (OSError, ValueError) as err:     # closed pipe/file: keep running, stop writing
            self._output_broken = True
            log.warning("serial output failed, further output kept only in the transcript: %s", err)

    def _rx_count(self) -> int:
        with self._lock:
            return len(self._fifo) + len(self._host_rx)

    def _pop_rx(self) -> int:
        if self._fifo:
            return self._fifo.popleft()
        with self._lock:
            if self._host_rx:
                return self._host_rx.popleft()
        return 0

    def _iir_id(self) -> int:
        """Highest-priority pending interrupt, in the order of QEMU's serial_update_irq."""
        count = self._rx_count()
        if self.ier & UartIer.RLSI and self.lsr & UartLsr.INT_ANY:
            return UartIir.RLSI
        if self.ier & UartIer.RDI and count:
            if self.fcr & UartFcr.FE and count < FCR_TRIGGER_LEVELS[self.fcr & UartFcr.ITL_MASK]:
                return UartIir.CTI               # below trigger level: report as character timeout
            return UartIir.RDI
        if self.ier & UartIer.THRI and self._thr_ipending:
            return UartIir.THRI
        if self.ier & UartIer.MSI and self._msr_delta:
            return UartIir.MSI
        return UartIir.NO_INT
