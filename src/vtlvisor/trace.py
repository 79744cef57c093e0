"""Chrome Trace Event JSON (opens in Perfetto / chrome://tracing): one track per VTL.

Events are buffered and written at the end of a run; timestamps are virtual microseconds. When no
``--trace`` is given no tracer is installed at all, so tracing off costs one ``None`` check per exit.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .hv.vcpu import exit_name


class ChromeTracer:
    def __init__(self, clock: Callable[[], int], limit: int = 2_000_000) -> None:
        self._clock = clock
        self._events: list[dict] = []
        self._limit = limit
        self.dropped = 0
        self.vtl = 0

    def __call__(self, kind: str, args: dict) -> None:
        if len(self._events) >= self._limit:
            self.dropped += 1
            return
        name = kind
        if kind == "exit":
            name = exit_name(args["code"])
        self._events.append({"name": name, "cat": kind, "ph": "i", "s": "t", "pid": 1, "tid": self.vtl,
                             "ts": self._clock() / 1000.0,
                             "args": {k: (hex(v) if isinstance(v, int) else v) for k, v in args.items()}})

    def write(self, path: str | Path) -> None:
        meta = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "vtlvisor vCPU0"}}]
        for vtl in sorted({e["tid"] for e in self._events} | {0}):
            meta.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": vtl, "args": {"name": f"VTL{vtl}"}})
        Path(path).write_text(json.dumps({"traceEvents": meta + self._events,
                                          "otherData": {"dropped": self.dropped}}))


def summarize(path: str | Path) -> str:
    """Counts per event name and per category from a trace file (``vtlvisor trace summary``)."""
    data = json.loads(Path(path).read_text())
    events = [e for e in data.get("traceEvents", []) if e.get("ph") != "M"]
    by_name = Counter(e["name"] for e in events)
    lines = [f"{len(events)} events"]
    for name, n in by_name.most_common():
        lines.append(f"{n:10d}  {name}")
    return "\n".join(lines)
