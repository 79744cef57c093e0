"""`vtlvisor attacks`: every row both ways, with evidence, as the demo prints it."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_matrix_rows_both_ways_with_evidence(tmp_path):
    out = tmp_path / "m.json"
    # the command's plumbing (table, JSON, traces, progress) on two rows; tests/attacks runs every row
    r = subprocess.run([sys.executable, "-m", "vtlvisor", "attacks", "--only", "smep,cr4-smep", "--json", str(out),
                        "--trace-dir", str(tmp_path / "traces")], capture_output=True, text=True, timeout=600,
                       cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(out.read_text())
    assert {row["attack"] for row in rows} == {"smep", "cr4-smep"}
    for row in rows:
        assert row["ok"] and row["without"]["outcome"] == "SUCCEEDED" and row["with"]["outcome"] == "BLOCKED"
        assert row["with"]["evidence"] and not any("blocked" in e for e in row["without"]["evidence"])
        assert Path(row["with"]["trace"]).exists()
    assert "attacks succeed without their protection and are blocked with it" in r.stdout
    assert "smep" in r.stderr                          # progress lines


def test_unknown_attack_is_a_user_error():
    r = subprocess.run([sys.executable, "-m", "vtlvisor", "attacks", "--only", "nope"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown attack" in r.stderr
