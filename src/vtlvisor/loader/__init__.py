"""Guest image loaders: Multiboot v1 kernels (32-bit protected-mode entry) and plain ELF64 kernels
(direct long-mode entry). ``load_image`` is the one entry point the hypervisor needs."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import ImageError
from ..memory import GuestMemory
from .bootinfo import display_name
from .bootstate import BootMode, BootState
from .elf import ElfClass, elf_class, is_elf
from .elf64 import load_elf64
from .multiboot import find_header, load_multiboot

__all__ = ["BootMode", "BootState", "load_image", "read_image"]


def read_image(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise ImageError(f"cannot read image '{display_name(path)}': {err.strerror or err}") from None


def load_image(path: str | os.PathLike[str], memory: GuestMemory, cmdline: str = "",
               modules: Sequence[tuple[str, str]] = (), *,
               reserved: Sequence[tuple[int, int]] = ()) -> BootState:
    """Load the kernel at ``path`` (and its modules) into ``memory``; return the entry state.

    A Multiboot header in the first 8 KiB selects the Multiboot loader; otherwise the file must be an
    ELF64 x86-64 executable, booted directly in long mode. ``modules`` are ``(file, args)`` pairs
    (``--module FILE[,ARGS]``). ``reserved`` lists half-open ``(start, end)`` guest-physical ranges the
    hypervisor keeps for itself: they are reported reserved and nothing is loaded there. Every problem
    with the image or a module raises ``ImageError`` with a one-line message.
    """
    name = display_name(path)
    data = read_image(path)
    header = find_header(data, name)
    if header is not None:
        return load_multiboot(data, header, name, memory, cmdline, modules, reserved)
    if is_elf(data) and elf_class(data) == ElfClass.ELFCLASS64:
        return load_elf64(data, name, memory, cmdline, modules, reserved)
    if is_elf(data):
        raise ImageError(f"{name}: ELF file is not 64-bit and has no Multiboot header")
    raise ImageError(f"{name}: not a Multiboot kernel or an ELF64 executable")
