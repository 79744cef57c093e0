"""Virtual time.

The guest's clock advances with the CPU time the vCPU thread consumes (not wall time), plus the
time skipped when the guest idles in HLT. A loaded host therefore slows the guest's wall-clock
progress but not its view of time: a LAPIC timer period always covers the same amount of guest
work, and an idle guest wakes at once instead of sleeping in real time.
"""

from __future__ import annotations

import threading
import time


class VirtualClock:
    def __init__(self) -> None:
        self._clk: int | None = None
        self._start = 0
        self._skipped = 0

    def bind_current_thread(self) -> None:
        """Call on the vCPU thread before running: its CPU clock becomes the time base."""
        self._clk = time.pthread_getcpuclockid(threading.get_ident())
        self._start = time.clock_gettime_ns(self._clk)

    def now(self) -> int:
        """Virtual nanoseconds since boot. Safe to call from any thread."""
        if self._clk is None:
            return self._skipped
        return time.clock_gettime_ns(self._clk) - self._start + self._skipped

    def skip_to(self, t: int) -> None:
        """Idle: jump virtual time forward to ``t`` (never backwards)."""
        now = self.now()
        if t > now:
            self._skipped += t - now

    def tsc(self, hz: int) -> int:
        return self.now() * hz // 1_000_000_000
