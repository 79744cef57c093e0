"""--trace writes Chrome Trace Event JSON; `trace summary` and `trace render` read it."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNEL = str(ROOT / "guest" / "build" / "testkernel.elf")


def vtl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vtlvisor", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_trace_file_summary_and_render(tmp_path):
    t = tmp_path / "run.json"
    r = vtl("run", KERNEL, "--timeout", "60", "--append", "attack=smep", "--trace", str(t))
    assert r.returncode == 1, r.stderr
    data = json.loads(t.read_text())
    ev = [e for e in data["traceEvents"] if e["ph"] in ("i", "X")]
    names = {e["name"] for e in ev}
    assert {"MSR", "CPUID", "WRITE_CR4", "blocked_cr_write", "inject"} <= names
    assert all(isinstance(e["ts"], float) for e in ev) and ev == sorted(ev, key=lambda e: e["ts"])
    exits = [e for e in ev if e["ph"] == "X"]
    assert exits and all(e["dur"] >= 0 for e in exits) and any(e["dur"] > 0 for e in exits)
    s = vtl("trace", "summary", str(t))
    assert s.returncode == 0 and f"{len(ev)} events" in s.stdout and "blocked_cr_write" in s.stdout
    cpuid = next(line for line in s.stdout.splitlines() if line.endswith(" CPUID"))
    assert float(cpuid.split()[1]) > 0                        # time per exit reason
    svg = tmp_path / "run.svg"
    d = vtl("trace", "render", str(t), str(svg))
    assert d.returncode == 0 and svg.read_text().startswith("<svg") and "VTL0" in svg.read_text()


def test_bad_trace_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for args in (("trace", "summary", str(bad)), ("trace", "render", str(bad), str(tmp_path / "o.svg")),
                 ("trace", "summary", str(tmp_path / "missing.json"))):
        r = vtl(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
