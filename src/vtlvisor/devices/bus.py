"""Port-I/O and MMIO buses: route a guest access to the device that claims the address.

An access nobody claims is not an error for the hypervisor: reads return all-ones (as an empty ISA bus
does), writes are dropped, and both are reported to ``on_unhandled`` so the trace shows them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class PortDevice(Protocol):
    def io_read(self, port: int, size: int) -> int: ...
    def io_write(self, port: int, size: int, value: int) -> None: ...


class MmioDevice(Protocol):
    def mmio_read(self, offset: int, size: int) -> int: ...
    def mmio_write(self, offset: int, size: int, value: int) -> None: ...


UnhandledHook = Callable[[str, int, int, int | None], None]   # (kind "io"/"mmio", addr, size, value|None)


def _ones(size: int) -> int:
    return (1 << (8 * size)) - 1


@dataclass
class IoBus:
    on_unhandled: UnhandledHook | None = None
    _ports: dict[int, PortDevice] = field(default_factory=dict)

    def register(self, first: int, count: int, dev: PortDevice) -> None:
        for p in range(first, first + count):
            if p in self._ports:
                raise ValueError(f"port {p:#x} already claimed")
            self._ports[p] = dev

    def read(self, port: int, size: int) -> int:
        dev = self._ports.get(port)
        if dev is None:
            if self.on_unhandled:
                self.on_unhandled("io", port, size, None)
            return _ones(size)
        return dev.io_read(port, size) & _ones(size)

    def write(self, port: int, size: int, value: int) -> None:
        dev = self._ports.get(port)
        if dev is None:
            if self.on_unhandled:
                self.on_unhandled("io", port, size, value)
            return
        dev.io_write(port, size, value & _ones(size))


@dataclass
class MmioBus:
    on_unhandled: UnhandledHook | None = None
    _regions: list[tuple[int, int, MmioDevice]] = field(default_factory=list)

    def register(self, base: int, size: int, dev: MmioDevice) -> None:
        for b, s, _ in self._regions:
            if base < b + s and b < base + size:
                raise ValueError(f"MMIO {base:#x}+{size:#x} overlaps {b:#x}+{s:#x}")
        self._regions.append((base, size, dev))

    def find(self, addr: int) -> tuple[int, MmioDevice] | None:
        for b, s, dev in self._regions:
            if b <= addr < b + s:
                return b, dev
        return None

    def regions(self) -> list[tuple[int, int]]:
        return [(b, s) for b, s, _ in self._regions]

    def read(self, addr: int, size: int) -> int:
        hit = self.find(addr)
        if hit is None:
            if self.on_unhandled:
                self.on_unhandled("mmio", addr, size, None)
            return _ones(size)
        base, dev = hit
        return dev.mmio_read(addr - base, size) & _ones(size)

    def write(self, addr: int, size: int, value: int) -> None:
        hit = self.find(addr)
        if hit is None:
            if self.on_unhandled:
                self.on_unhandled("mmio", addr, size, value)
            return
        base, dev = hit
        dev.mmio_write(addr - base, size, value & _ones(size))
