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
        self._open_exit: dict | None = None

    def __call__(self, kind: str, args: dict) -> None:
        now = self._clock() / 1000.0
        if kind == "exit_end":
            # an exit is a complete event: its duration is the (virtual) time the hypervisor spent on it
            ev, self._open_exit = self._open_exit, None
            if ev is not None:
                ev["dur"] = max(now - ev["ts"], 0.0)
            return
        if len(self._events) >= self._limit:
            self.dropped += 1
            return
        name = kind
        ev = {"name": name, "cat": kind, "ph": "i", "s": "t", "pid": 1, "tid": self.vtl, "ts": now,
              "args": {k: (hex(v) if isinstance(v, int) else v) for k, v in args.items()}}
        if kind == "exit":
            ev["name"] = exit_name(args["code"])
            ev["ph"] = "X"
            ev["dur"] = 0.0
            del ev["s"]
            self._open_exit = ev
        self._events.append(ev)

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
    time_us: Counter[str] = Counter()
    for e in events:
        time_us[e["name"]] += float(e.get("dur", 0.0))
    lines = [f"{len(events)} events", f"{'count':>10}  {'total us':>10}  {'mean us':>9}  name"]
    for name, n in by_name.most_common():
        t = time_us[name]
        lines.append(f"{n:10d}  {t:10.1f}  {t / n:9.2f}  {name}" if t else f"{n:10d}  {'':>10}  {'':>9}  {name}")
    return "\n".join(lines)


_COLORS = {"exit": "#4e79a7", "inject": "#e15759", "vtl_switch": "#f28e2b", "intercept": "#b07aa1",
           "blocked_cr_write": "#d62728", "hypercall": "#59a14f", "gpa_violation": "#9c755f",
           "io": "#bab0ac", "wrmsr": "#76b7b2", "write_cr": "#edc948"}


def render_svg(path: str | Path, out: str | Path, width: int = 1400, max_labels: int = 60) -> int:
    """Draw the trace as a timeline (one track per VTL / thread, one tick per event, coloured by
    category, labels for the rarer events) in SVG, so it can be viewed without Perfetto."""
    from html import escape
    data = json.loads(Path(path).read_text())
    events = [e for e in data.get("traceEvents", []) if e.get("ph") != "M"]
    names = {e["tid"]: e["args"]["name"] for e in data.get("traceEvents", [])
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
    tids = sorted({e.get("tid", 0) for e in events} | set(names))
    if not events:
        raise ValueError("trace has no events")
    t0 = min(e["ts"] for e in events)
    t1 = max(e["ts"] for e in events)
    span = max(t1 - t0, 1e-3)
    left, row_h, top = 110, 90, 40
    height = top + row_h * len(tids) + 70
    x = lambda ts: left + (ts - t0) / span * (width - left - 20)   # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="monospace" font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="20" font-size="14">vtlvisor trace: {len(events)} events, '
             f'{span / 1000:.3f} ms of virtual time</text>']
    counts = Counter(e["name"] for e in events)
    labelled = 0
    for row, tid in enumerate(tids):
        y = top + row * row_h
        parts.append(f'<rect x="{left}" y="{y}" width="{width - left - 20}" height="{row_h - 10}" fill="#f4f4f4"/>')
        parts.append(f'<text x="8" y="{y + row_h / 2}" font-size="13">{escape(names.get(tid, f"track {tid}"))}</text>')
        for e in events:
            if e.get("tid", 0) != tid:
                continue
            cx = x(e["ts"])
            color = _COLORS.get(e.get("cat", ""), "#666")
            parts.append(f'<line x1="{cx:.1f}" y1="{y + 4}" x2="{cx:.1f}" y2="{y + row_h - 30}" stroke="{color}"/>')
            if counts[e["name"]] <= 8 and labelled < max_labels:
                labelled += 1
                parts.append(f'<text x="{cx + 2:.1f}" y="{y + row_h - 16 - (labelled % 3) * 11}" fill="{color}">'
                             f'{escape(e["name"])}</text>')
    ly = top + row_h * len(tids) + 20
    lx = left
    for cat, color in _COLORS.items():
        parts.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{lx + 14}" y="{ly + 9}">{cat}</text>')
        lx += 20 + 8 * len(cat)
    parts.append(f'<text x="{left}" y="{ly + 32}">0 us</text><text x="{width - 120}" y="{ly + 32}">'
                 f'{span:.1f} us</text></svg>')
    Path(out).write_text("\n".join(parts))
    return len(events)
