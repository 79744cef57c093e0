"""The benchmark harness runs and its guests compute the same checksum (no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_and_agrees(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "bench/run_bench.py", "--quick", "--no-qemu", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checksum" in r.stdout and out.exists()
