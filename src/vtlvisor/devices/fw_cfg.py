"""QEMU firmware configuration device (fw_cfg), traditional I/O-port interface only.

Guests written for QEMU probe fw_cfg to learn the RAM size and CPU count; implementing the documented
subset (QEMU docs/specs/fw_cfg.rst) lets them run unchanged. Interface:

* selector register, port 0x510, 16-bit little-endian write: selects an item and rewinds its offset;
* data register, port 0x511, 8-bit read: the next byte of the selected item; past the end, or for an
  unknown item, reads return 0. Data writes are ignored (QEMU >= 2.4 ignores them too).

FW_CFG_ID reports bit 0 only (traditional interface; no DMA), so the DMA registers at 0x514 are absent.
QEMU only accepts 16-bit selector writes and 8-bit data reads; other widths are made harmless here: a
byte write to the selector selects that byte value, and a wide data read returns consecutive bytes of the
item packed little endian (lowest-addressed byte first), as a byte-wide ISA register would.
"""

from __future__ import annotations

import enum
import logging
import struct

from .access import clamp_size

log = logging.getLogger(__name__)

FW_CFG_IO_BASE = 0x510
FW_CFG_IO_SIZE = 2


class FwCfgKey(enum.IntEnum):
    """Selector keys (QEMU include/standard-headers/linux/qemu_fw_cfg.h)."""

    SIGNATURE = 0x00
    ID = 0x01
    UUID = 0x02
    RAM_SIZE = 0x03
    NOGRAPHIC = 0x04
    NB_CPUS = 0x05
    MAX_CPUS = 0x0F
    FILE_DIR = 0x19
    FILE_FIRST = 0x20
    WRITE_CHANNEL = 0x4000
    ARCH_LOCAL = 0x8000
    INVALID = 0xFFFF


FW_CFG_VERSION = 0x01           # FW_CFG_ID bit 0: traditional interface
FW_CFG_MAX_FILE_PATH = 56       # including the terminating NUL
FW_CFG_MAX_FILES = 0x3FFF - FwCfgKey.FILE_FIRST
_ENTRY_MASK = 0x3FFF | FwCfgKey.ARCH_LOCAL      # selector bits that name the item


class FwCfg:
    """fw_cfg with the standard items plus any named files added by the host side."""

    def __init__(self, ram_size: int, nb_cpus: int = 1, max_cpus: int | None = None,
                 base: int = FW_CFG_IO_BASE) -> None:
        self.base = base
        self._items: dict[int, bytes] = {
            FwCfgKey.SIGNATURE: b"QEMU",
            FwCfgKey.ID: struct.pack("<I", FW_CFG_VERSION),
            FwCfgKey.RAM_SIZE: struct.pack("<Q", ram_size),
            FwCfgKey.NB_CPUS: struct.pack("<H", nb_cpus),
            FwCfgKey.MAX_CPUS: struct.pack("<H", nb_cpus if max_cpus is None else max_cpus),
        }
        self._files: dict[str, bytes] = {}
        self._rebuild_files()
        self.selector = 0
        self._offset = 0

    # -- host side
    def add_file(self, name: str, data: bytes) -> int:
        """Publish ``data`` as the named file; returns its selector key.

        Like QEMU, the directory is kept sorted by name and keys are FW_CFG_FILE_FIRST + index, so
        adding a file may renumber later ones: add all files before the guest starts.
        """
        encoded = name.encode()
        if not encoded or len(encoded) >= FW_CFG_MAX_FILE_PATH or b"\0" in encoded:
            raise ValueError(f"invalid fw_cfg file name {name!r}")
        if name in self._files:
            raise ValueError(f"fw_cfg file {name!r} already exists")
        if len(self._files) >= FW_CFG_MAX_FILES:
            raise ValueError("too many fw_cfg files")
        self._files[name] = bytes(data)
        self._rebuild_files()
        return self.file_key(name)

    def file_key(self, name: str) -> int:
        return FwCfgKey.FILE_FIRST + sorted(self._files, key=str.encode).index(name)

    def _rebuild_files(self) -> None:
        for key in [k for k in self._items if k >= FwCfgKey.FILE_FIRST]:
            del self._items[key]
        names = sorted(self._files, key=str.encode)
        directory = bytearray(struct.pack(">I", len(names)))
        for index, name in enumerate(names):
            key = FwCfgKey.FILE_FIRST + index
            data = self._files[name]
            directory += struct.pack(">IHH56s", len(data), key, 0, name.encode())
            self._items[key] = data
        self._items[FwCfgKey.FILE_DIR] = bytes(directory)

    def item(self, key: int) -> bytes:
        return self._items.get(key & _ENTRY_MASK, b"")

    # -- PortDevice
    def io_read(self, port: int, size: int) -> int:
        if port != self.base + 1:
            return 0                             # the selector register is write-only
        data = self.item(self.selector)
        value = 0
        for i in range(clamp_size(size)):
            if self._offset < len(data):
                value |= data[self._offset] << (8 * i)
                self._offset += 1
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == self.base:
            self.selector = value & 0xFFFF
            self._offset = 0
        else:
            log.debug("fw_cfg: data write %#x ignored (read-only interface)", value)
