"""Hostile-guest fuzzing harness for vtlvisor (issue 9).

Guests are generated machine code (keystone) run through the public Python API; every case ends in
invariant checks (``fuzz.checks``). ``python -m fuzz`` runs a campaign; tests/fuzz runs a short one.
"""

import os
import sys
from pathlib import Path

# Fuzz the work tree's source (or $VTLVISOR_SRC), whatever the environment's install points at.
_SRC = os.environ.get("VTLVISOR_SRC") or str(Path(__file__).resolve().parent.parent / "src")
if "vtlvisor" not in sys.modules and sys.path[:1] != [_SRC]:
    sys.path.insert(0, _SRC)
