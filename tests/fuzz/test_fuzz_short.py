"""A short, seeded, deterministic fuzz campaign over every interface (issue 9): a few seconds each.

Failures whose key is listed in KNOWN are bugs with an xfail(strict) regression test in
test_regressions.py; anything else fails here with its reproducer (``python -m fuzz --repro I:S``).
"""

import pytest

from fuzz.runner import campaign

#: failure-key prefix -> the regression test that pins it down
KNOWN: dict[str, str] = {}

CASES = {"msr": 30, "cr": 30, "kvm": 30, "hyperv": 30, "io": 30, "mmio": 30, "paging": 25, "randcode": 20,
         "vsm": 20, "image": 80}


@pytest.mark.parametrize("iface", sorted(CASES))
def test_short_campaign(iface):
    # the per-exit bound (100 ms) is vCPU-thread CPU time: other suites on both cores do not trip it
    c = campaign([iface], cases=CASES[iface], seed=20240609, log=lambda s: None)
    assert c.cases[iface] == CASES[iface]
    unexpected = [f"{i}:{s} [{f.key}] {str(f)[:400]}" for i, s, f in c.failures.values()
                  if not any(f.key.startswith(k) for k in KNOWN)]
    assert not unexpected, "\n".join(unexpected) + "\n" + c.report()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cli_rejects_malformed_image_with_one_line_and_exit_2(tmp_path, seed):
    """The real command line (a subprocess) on images load_image rejects."""
    import os
    import random
    import subprocess
    import sys

    import vtlvisor
    from fuzz.images import gen_image
    from vtlvisor.errors import ImageError
    from vtlvisor.loader import load_image
    from vtlvisor.memory import GuestMemory
    rng = random.Random(seed)
    for _ in range(50):
        data = gen_image(rng)
        path = tmp_path / "bad.img"
        path.write_bytes(data)
        try:
            load_image(str(path), GuestMemory(8 << 20))
        except ImageError:
            break
    else:
        pytest.skip("no rejected image generated")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(vtlvisor.__file__)))
    p = subprocess.run([sys.executable, "-m", "vtlvisor", "run", str(path), "--timeout", "5"], env=env,
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vtlvisor: error:"), p.stderr


def test_known_failures_are_pinned_by_strict_xfail_regressions():
    """Every KNOWN key names a regression test that exists and is xfail(strict=True): a fix makes it
    XPASS (a failure) until the marker and the KNOWN entry go."""
    import ast
    from pathlib import Path
    tree = ast.parse((Path(__file__).parent / "test_regressions.py").read_text())
    strict_xfail = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)
                    for d in f.decorator_list if "xfail" in ast.unparse(d) and "strict=True" in ast.unparse(d)}
    assert set(KNOWN.values()) <= strict_xfail, set(KNOWN.values()) - strict_xfail
