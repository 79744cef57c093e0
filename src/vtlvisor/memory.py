"""Guest physical RAM: one host buffer, bounds-checked, shared by the engine, loaders and devices.

The engine maps this same buffer into Unicorn (``mem_map_ptr``), so a device or loader writing here is
seen by the guest without going through the CPU engine. Every access is checked against the RAM size:
a guest-supplied address can never make the hypervisor touch host memory outside the buffer.
"""

from __future__ import annotations

import ctypes
import mmap
import struct

PAGE_SIZE = 0x1000


class GuestMemoryError(Exception):
    """A guest-physical access fell (partly) outside RAM. Callers turn it into a guest-visible event."""

    def __init__(self, gpa: int, size: int) -> None:
        super().__init__(f"guest-physical access {gpa:#x}+{size:#x} outside RAM")
        self.gpa = gpa
        self.size = size


class GuestMemory:
    """Guest-physical RAM ``[0, size)``; ``size`` is a multiple of the page size."""

    def __init__(self, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"RAM size must be a positive multiple of 4 KiB, not {size:#x}")
        self.size = size
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._view = memoryview(self._map)
        # Keep a ctypes handle alive so the address stays valid while the engine uses it.
        self._cbuf = (ctypes.c_char * size).from_buffer(self._map)
        self.host_address = ctypes.addressof(self._cbuf)

    # -- bounds
    def contains(self, gpa: int, size: int = 1) -> bool:
        return 0 <= gpa and size >= 0 and gpa + size <= self.size

    def _check(self, gpa: int, size: int) -> None:
        if not self.contains(gpa, size):
            raise GuestMemoryError(gpa, size)

    # -- raw access
    def read(self, gpa: int, size: int) -> bytes:
        self._check(gpa, size)
        return bytes(self._view[gpa:gpa + size])

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self._check(gpa, len(data))
        self._view[gpa:gpa + len(data)] = data

    def fill(self, gpa: int, size: int, byte: int = 0) -> None:
        self._check(gpa, size)
        self._view[gpa:gpa + size] = bytes([byte]) * size

    # -- typed helpers (little endian, as x86)
    def read_u8(self, gpa: int) -> int:
        self._check(gpa, 1)
        return self._view[gpa]

    def read_u16(self, gpa: int) -> int:
        self._check(gpa, 2)
        return struct.unpack_from("<H", self._view, gpa)[0]

    def read_u32(self, gpa: int) -> int:
        self._check(gpa, 4)
        return struct.unpack_from("<I", self._view, gpa)[0]

    def read_u64(self, gpa: int) -> int:
        self._check(gpa, 8)
        return struct.unpack_from("<Q", self._view, gpa)[0]

    def write_u8(self, gpa: int, value: int) -> None:
        self._check(gpa, 1)
        self._view[gpa] = value & 0xFF

    def write_u16(self, gpa: int, value: int) -> None:
        self._check(gpa, 2)
        struct.pack_into("<H", self._view, gpa, value & 0xFFFF)

    def write_u32(self, gpa: int, value: int) -> None:
        self._check(gpa, 4)
        struct.pack_into("<I", self._view, gpa, value & 0xFFFFFFFF)

    def write_u64(self, gpa: int, value: int) -> None:
        self._check(gpa, 8)
        struct.pack_into("<Q", self._view, gpa, value & 0xFFFFFFFFFFFFFFFF)

    def close(self) -> None:
        del self._cbuf
        self._view.release()
        self._map.close()


class AccessDenied(Exception):
    """A hypervisor-side access on behalf of a VTL touched memory that VTL may not access."""

    def __init__(self, gpa: int, write: bool) -> None:
        super().__init__(f"{'write' if write else 'read'} of {gpa:#x} denied by the VTL's protections")
        self.gpa = gpa
        self.write = write


class ProtectedView:
    """Guest RAM as one VTL sees it: every access the hypervisor makes *for* the running VTL (exception
    frames, IDT/GDT/TSS and page-table reads, instruction fetch and operands, hypercall buffers) is
    checked against that VTL's protections, so the hypervisor never reads or writes a higher VTL's
    memory on a lower VTL's behalf. ``check(gpa, size, write)`` raises AccessDenied."""

    def __init__(self, mem: GuestMemory, check) -> None:
        self._mem = mem
        self._check = check
        self.size = mem.size

    def contains(self, gpa: int, size: int = 1) -> bool:
        return self._mem.contains(gpa, size)

    def read(self, gpa: int, size: int) -> bytes:
        self._check(gpa, size, False)
        return self._mem.read(gpa, size)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self._check(gpa, len(data), True)
        self._mem.write(gpa, data)

    def read_u8(self, gpa: int) -> int:
        self._check(gpa, 1, False)
        return self._mem.read_u8(gpa)

    def read_u16(self, gpa: int) -> int:
        self._check(gpa, 2, False)
        return self._mem.read_u16(gpa)

    def read_u32(self, gpa: int) -> int:
        self._check(gpa, 4, False)
        return self._mem.read_u32(gpa)

    def read_u64(self, gpa: int) -> int:
        self._check(gpa, 8, False)
        return self._mem.read_u64(gpa)

    def write_u32(self, gpa: int, value: int) -> None:
        self._check(gpa, 4, True)
        self._mem.write_u32(gpa, value)

    def write_u64(self, gpa: int, value: int) -> None:
        self._check(gpa, 8, True)
        self._mem.write_u64(gpa, value)
