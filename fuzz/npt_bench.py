"""How long building a nested-page-table root takes (issue 9, resource limits).

A VTL's or domain's root is built inside one exit (``HvCallEnablePartitionVtl``, domain creation), so
its cost is an exit's latency and must stay well under the fuzzer's 100 ms per-exit bound at the
largest RAM (3 GiB)::

    .venv/bin/python -m fuzz.npt_bench [--sizes 64,1024,3072] [--repeat 5]

Prints, per RAM size, the minimum and median of ``Partition.build_npt()`` (fresh tables from the
private pool, 4 KiB RAM leaves, the LAPIC and open-bus hole) and of ``map_4k_range`` over all of RAM
into an existing root (what a default-protection change does).
"""

from __future__ import annotations

import argparse
import statistics
import time

from . import _SRC  # noqa: F401  (the work tree's src/ first on sys.path)


def measure(mib: int, repeat: int = 5) -> dict[str, list[float]]:
    """Seconds per ``build_npt()`` and per full-RAM ``map_4k_range`` rewrite, ``repeat`` times each."""
    from vtlvisor.hv.partition import Partition, PartitionConfig
    part = Partition(PartitionConfig(memory=mib << 20))
    out: dict[str, list[float]] = {"build_npt": [], "remap_ram": []}
    roots = []
    for _ in range(repeat):                       # the private pool has room for ~10 roots
        t = time.perf_counter()
        roots.append(part.build_npt())
        out["build_npt"].append(time.perf_counter() - t)
    for _ in range(repeat):
        t = time.perf_counter()
        roots[0].map_4k_range(0, 0, part.memory.size)
        out["remap_ram"].append(time.perf_counter() - t)
    return out


def report(sizes: list[int], repeat: int = 5) -> str:
    lines = [f"{'RAM':>8}  {'build_npt min / median':>24}  {'remap RAM min / median':>24}"]
    for mib in sizes:
        r = measure(mib, repeat)
        cols = [f"{min(v) * 1e3:8.2f} / {statistics.median(v) * 1e3:8.2f} ms" for v in r.values()]
        lines.append(f"{mib:>5} MiB  {cols[0]:>24}  {cols[1]:>24}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz.npt_bench")
    p.add_argument("--sizes", default="64,1024,3072", help="RAM sizes in MiB")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args(argv)
    print(report([int(s) for s in a.sizes.split(",")], a.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
