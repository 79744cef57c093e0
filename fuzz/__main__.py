"""``python -m fuzz``: a bounded, seeded campaign over every guest-facing interface.

  python -m fuzz [--seconds 180] [--cases N] [--seed 1] [--only msr,cr,...] [--minimize]
  python -m fuzz --repro IFACE:SEED[:OP,OP...]     re-run one case (ops: a minimized subset) verbosely

Prints cases per interface, exits per second, the slowest single exit, crashes and invariant breaks
(each with a reproducer ``IFACE:SEED``). Exit status 1 when anything was found.
"""

from __future__ import annotations

import argparse
import sys

from . import runner
from .cases import GENERATORS

IFACES = [*GENERATORS, "image"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz")
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--cases", type=int, default=None, help="cases per interface")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--only", default=",".join(IFACES))
    p.add_argument("--minimize", action="store_true", help="delta-debug each new failure to its ops")
    p.add_argument("--max-exit-ms", type=float, default=100.0)
    p.add_argument("--repro")
    a = p.parse_args(argv)
    if a.repro:
        return repro(a.repro)
    ifaces = [i for i in a.only.split(",") if i]
    bad = [i for i in ifaces if i not in IFACES]
    if bad:
        p.error(f"unknown interfaces {bad}; known: {IFACES}")
    if a.seconds is None and a.cases is None:
        a.seconds = 180.0
    c = runner.campaign(ifaces, seconds=a.seconds, cases=a.cases, seed=a.seed,
                        minimize_failures=a.minimize, max_exit_s=a.max_exit_ms / 1e3,
                        log=lambda s: print(s, flush=True))
    print(c.report())
    return 1 if c.crashes() or c.breaks() else 0


def repro(spec: str) -> int:
    parts = spec.split(":")
    iface, seed = parts[0], int(parts[1])
    if iface == "image":
        cr = runner.run_case(iface, seed)
    else:
        ops, cfg = runner.generate(iface, seed)
        idx = [int(x) for x in parts[2].split(",")] if len(parts) > 2 and parts[2] else list(range(len(ops)))
        ops = [ops[i] for i in idx]
        print(runner.describe(iface, seed, idx, ops, cfg))
        cr = runner.run_ops(ops, cfg, indices=idx, iface=iface, seed=seed)
        g = cr.guest
        print("--- kernel source ---")
        print(g.source)
        print("--- result:", cr.result)
        print("--- exception log (vector, error, rip, cs, cr2, op):")
        for rec in g.log():
            print("   ", tuple(hex(x) for x in rec))
    for f in cr.failures:
        print(f"FAIL {f.kind} [{f.key}]: {f}")
    return 1 if cr.failures else 0


if __name__ == "__main__":
    sys.exit(main())
