"""GDB remote-serial-protocol stub: debug a guest with gdb (``vtlvisor run IMAGE --gdb PORT``).

See docs/debugging.md. Public API: ``GdbStub`` and ``parse_address``.
"""

from .server import GdbStub, parse_address

__all__ = ["GdbStub", "parse_address"]
