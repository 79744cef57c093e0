"""Why a run ended, and the process exit status for each reason.

Statuses are even so they never collide with isa-debug-exit's ``(value << 1) | 1``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StopReason(enum.Enum):
    DEBUG_EXIT = "debug-exit"
    POWER_OFF = "power-off"
    HALTED = "halted"
    TRIPLE_FAULT = "triple-fault"
    MACHINE_CHECK = "machine-check"
    TIMEOUT = "timeout"
    INTERNAL_ERROR = "internal-error"
    HOST_REQUEST = "host-request"


#: documented process exit statuses (docs/architecture.md)
EXIT_STATUS = {
    StopReason.POWER_OFF: 0,
    StopReason.HALTED: 4,
    StopReason.TRIPLE_FAULT: 6,
    StopReason.MACHINE_CHECK: 6,
    StopReason.TIMEOUT: 8,
    StopReason.INTERNAL_ERROR: 10,
    StopReason.HOST_REQUEST: 0,
}


@dataclass
class RunResult:
    reason: StopReason
    detail: str = ""
    status: int | None = None      # for DEBUG_EXIT: (value << 1) | 1

    @property
    def exit_status(self) -> int:
        if self.status is not None:
            return self.status
        return EXIT_STATUS.get(self.reason, 10)
