import sys
from pathlib import Path

# the harness package lives at the repository root (fuzz/)
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.append(ROOT)
