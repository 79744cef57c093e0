"""Bad user input: one clear line on stderr, exit status 2, never a traceback."""

import subprocess
import sys

import pytest


def vtl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vtlvisor", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [
    ["run", "/nonexistent/image.elf"],
    ["run", "/dev/null"],
    ["run", __file__],
    ["run", "x", "--memory", "lots"],
    ["run", "x", "--timeout", "-1"],
    ["run", "x", "--memory", "1G5"],
    ["frobnicate"],
])
def test_bad_input_is_one_line_and_status_2(args):
    r = vtl(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vtlvisor: error:"), r.stderr
    assert "Traceback" not in r.stderr


def test_memory_out_of_range_is_a_user_error(tmp_path):
    image = tmp_path / "k.elf"
    image.write_bytes(b"\x7fELF")                       # the size check must fire before the image is read
    r = vtl("run", str(image), "--memory", "1K")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "memory size must be" in r.stderr and r.stderr.count("\n") == 1


def test_engine_refuses_unknown_unicorn_build(monkeypatch):
    import unicorn

    from vtlvisor.engine import unicorn_internals
    from vtlvisor.errors import EngineMismatch
    monkeypatch.setattr(unicorn, "__version__", "9.9.9")
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    with pytest.raises(EngineMismatch, match="unicorn==2.1.4"):
        unicorn_internals.verify(uc)
