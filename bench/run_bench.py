"""vtlvisor benchmarks: every number is a ratio or a difference measured within this one run.

    .venv/bin/python bench/run_bench.py [--quick] [--json FILE] [--rounds N] [--scale N] [--no-qemu]

1. compute   guest/build/bench.elf under vtlvisor vs the same code on bare Unicorn (and QEMU TCG on
             bench-mb.elf when qemu-system-x86_64 is installed), interleaved, medians
2. exit      CPUID loop: microseconds per CPUID exit round trip (bare Unicorn: native CPUID)
3. exception UD2 / INT3 loops: microseconds per exception delivered through the IDT and IRETQ'd
4. tracing   CPUID loop with no tracer vs a no-op tracer (part.vcpu.hooks.trace)

Timings are never asserted; a wrong checksum or a guest that stops for the wrong reason exits 1.
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import unicorn  # noqa: E402
from guests import CHECKSUM_RE, SCALE_RE, BenchError, LoopGuest, run_bare_image, run_vtl_image  # noqa: E402

QEMU = "qemu-system-x86_64"
QEMU_ARGS = ["-accel", "tcg", "-serial", "stdio", "-display", "none", "-device",
             "isa-debug-exit,iobase=0xf4,iosize=0x04", "-no-reboot", "-m", "64"]
EMPTY_CMDLINE = "tests=mbi"          # testkernel.elf runs one quick check and exits: the "empty" boot
QUICK_SCALE = 4
EMPTY_KERNEL = ROOT / "guest" / "build" / "testkernel.elf"

TARGET_COMPUTE_RATIO = 1.11          # vtlvisor time / bare Unicorn time (i.e. >= 0.9x the speed)
TARGET_EXIT_US = 10.0
TARGET_EXC_US = 20.0


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# ------------------------------------------------------------------------------------------ images

def build_images(scale: int) -> Path:
    """Build the guests with BENCH_SCALE=scale into bench/build/scale<N> (guest/build is left alone)."""
    out = BENCH / "build" / f"scale{scale}"
    cmd = ["make", "-s", "-C", str(ROOT / "guest"), f"B={out}", f"BENCH_SCALE={scale}",
           str(out / "bench.elf"), str(out / "bench-mb.elf")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"building the guests failed: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return out


def run_qemu(kernel: Path, append: str | None = None) -> tuple[float, bytes]:
    cmd = [QEMU, "-kernel", str(kernel), *QEMU_ARGS] + (["-append", append] if append else [])
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, timeout=600)
    dt = time.perf_counter() - t0
    if r.returncode != 1:
        raise BenchError(f"qemu {kernel.name}: exit status {r.returncode} (expected 1)\n"
                         + (r.stdout + r.stderr).decode(errors="replace"))
    return dt, r.stdout


def qemu_version() -> str | None:
    if not shutil.which(QEMU):
        return None
    r = subprocess.run([QEMU, "--version"], capture_output=True, text=True)
    return r.stdout.splitlines()[0] if r.returncode == 0 and r.stdout else "?"


# ------------------------------------------------------------------------------------------ 1. compute

def bench_compute(images: Path, rounds: int, use_qemu: bool, log, empty_kernel: Path = EMPTY_KERNEL) -> dict:
    """The empty-boot baseline is guest/build/testkernel.elf (it does not depend on BENCH_SCALE)."""
    elf, mb, tk = images / "bench.elf", images / "bench-mb.elf", empty_kernel
    for p in (elf, tk) + ((mb,) if use_qemu else ()):
        if not p.exists():
            raise SystemExit(f"{p} is missing: run `make -C guest` first")
    s = {k: [] for k in ("vtl", "bare", "vtl_empty", "qemu", "qemu_empty")}
    checksum = scale = None
    for i in range(rounds):
        log(f"  compute round {i + 1}/{rounds}")
        order = ("vtl", "bare") if i % 2 == 0 else ("bare", "vtl")     # A B, B A, ...: no order bias
        for which in order:
            gc.collect()
            if which == "vtl":
                r = run_vtl_image(str(elf))
                m = SCALE_RE.search(r.output)
                scale = int(m.group(1)) if m else None
            else:
                r = run_bare_image(str(elf))
            if checksum is None:
                checksum = r.checksum
            if r.checksum != checksum or r.checksum < 0:
                raise BenchError(f"checksum mismatch: {which} gave {r.checksum:#x}, expected {checksum:#x}")
            s[which].append(r.seconds)
        gc.collect()
        s["vtl_empty"].append(run_vtl_image(str(tk), cmdline=EMPTY_CMDLINE).seconds)
        if use_qemu:
            dt, out = run_qemu(mb)
            m = CHECKSUM_RE.search(out)
            if not m or int(m.group(1), 16) != checksum:
                raise BenchError(f"QEMU checksum {m.group(1).decode() if m else 'missing'} != {checksum:#x}")
            s["qemu"].append(dt)
            s["qemu_empty"].append(run_qemu(tk, EMPTY_CMDLINE)[0])
    res = {"image": str(elf), "bench_scale": scale, "rounds": rounds, "checksum": f"{checksum:#018x}",
           "samples_s": {k: v for k, v in s.items() if v}}
    res["vtl_s"], res["bare_s"] = med(s["vtl"]), med(s["bare"])
    res["ratio_vtl_bare"] = res["vtl_s"] / res["bare_s"]
    res["ratio_vtl_bare_paired"] = med([a / b for a, b in zip(s["vtl"], s["bare"], strict=True)])
    res["vtl_empty_s"] = med(s["vtl_empty"])
    if use_qemu:
        res["qemu_s"], res["qemu_empty_s"] = med(s["qemu"]), med(s["qemu_empty"])
        vtl_work = res["vtl_s"] - res["vtl_empty_s"]
        qemu_work = res["qemu_s"] - res["qemu_empty_s"]
        res["ratio_vtl_qemu"] = vtl_work / qemu_work if qemu_work > 0 else None
    return res


# ------------------------------------------------------------------------------------------ 2-4. loops

def per_event_us(run_n, run_1, n: int, reps: int) -> tuple[float, list[float]]:
    """Median over reps of (T(n) - T(1)) / (n - 1): fixed costs (thread start/join, TB translation)
    cancel out."""
    vals = []
    for _ in range(reps):
        gc.collect()
        t1, tn = run_1(), run_n()
        vals.append((tn - t1) / (n - 1) * 1e6)
    return med(vals), vals


def bench_loops(n_exit: int, n_exc: int, reps: int, log) -> dict:
    res = {}
    g1 = {k: LoopGuest(k, 1) for k in ("cpuid", "ud2", "int3")}
    gn = {"cpuid": LoopGuest("cpuid", n_exit), "ud2": LoopGuest("ud2", n_exc), "int3": LoopGuest("int3", n_exc)}
    for g in g1.values():                       # warm-up (imports, first Unicorn instance)
        g.run_vtl()
    log(f"  CPUID exit loop (N={n_exit}) x{reps}")
    us, v = per_event_us(gn["cpuid"].run_vtl, g1["cpuid"].run_vtl, n_exit, reps)
    res["cpuid_vtl_us"], res["cpuid_vtl_samples"] = us, v
    us, v = per_event_us(gn["cpuid"].run_bare, g1["cpuid"].run_bare, n_exit, reps)
    res["cpuid_bare_us"], res["cpuid_bare_samples"] = us, v
    for kind in ("ud2", "int3"):
        log(f"  {kind} exception loop (N={n_exc}) x{reps}")
        us, v = per_event_us(gn[kind].run_vtl, g1[kind].run_vtl, n_exc, reps)
        res[f"{kind}_vtl_us"], res[f"{kind}_vtl_samples"] = us, v
    log(f"  tracing off/on (N={n_exit}) x{reps}")

    def noop_tracer(kind: str, data: dict) -> None:
        pass

    off, on = [], []
    for i in range(reps):               # interleaved: off, on, on, off, ...
        for traced in ((False, True) if i % 2 == 0 else (True, False)):
            gc.collect()
            t1 = g1["cpuid"].run_vtl(noop_tracer if traced else None)
            tn = gn["cpuid"].run_vtl(noop_tracer if traced else None)
            (on if traced else off).append((tn - t1) / (n_exit - 1) * 1e6)
    res["trace_off_us"], res["trace_on_us"] = med(off), med(on)
    res["trace_off_samples"], res["trace_on_samples"] = off, on
    res["trace_delta_paired_us"] = med([b - a for a, b in zip(off, on, strict=True)])
    res["n_exit"], res["n_exc"], res["reps"] = n_exit, n_exc, reps
    return res


# ------------------------------------------------------------------------------------------ report

def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def spread(xs: list[float], fmt: str) -> str:
    return f"[{format(min(xs), fmt)}..{format(max(xs), fmt)}]"


def render(meta: dict, c: dict, lp: dict) -> str:
    rows: list[tuple[str, str, str, str]] = []
    ss = c["samples_s"]
    rows.append(("1. compute: bench.elf, end to end (setup+load+run), median", "", "", ""))
    rows.append(("   vtlvisor", f"{c['vtl_s']:.3f} s", spread(ss["vtl"], ".3f"), ""))
    rows.append(("   bare Unicorn " + meta["unicorn"], f"{c['bare_s']:.3f} s", spread(ss["bare"], ".3f"), ""))
    r = c["ratio_vtl_bare"]
    rows.append(("   time ratio vtlvisor / bare (of medians)", f"{r:.3f}",
                 f"speed {1 / r:.2f}x bare; paired {c['ratio_vtl_bare_paired']:.3f}",
                 f"<= {TARGET_COMPUTE_RATIO} {verdict(r <= TARGET_COMPUTE_RATIO)}"))
    rows.append(("   vtlvisor empty boot (testkernel tests=mbi)", f"{c['vtl_empty_s']:.3f} s",
                 spread(ss["vtl_empty"], ".3f"), ""))
    if "qemu_s" in c:
        rows.append(("   QEMU TCG bench-mb.elf (process)", f"{c['qemu_s']:.3f} s", spread(ss["qemu"], ".3f"), ""))
        rows.append(("   QEMU empty boot (testkernel tests=mbi)", f"{c['qemu_empty_s']:.3f} s",
                     spread(ss["qemu_empty"], ".3f"), ""))
        q = c["ratio_vtl_qemu"]
        rows.append(("   time ratio vtlvisor / QEMU (empty boots subtracted)",
                     f"{q:.2f}" if q else "n/a", f"speed {1 / q:.2f}x QEMU" if q else "", "info"))
    else:
        rows.append(("   QEMU TCG", "qemu not installed" if not meta["qemu"] else "skipped", "", ""))
    n = lp["n_exit"]
    rows.append((f"2. exit round trip: CPUID loop, N={n}, (T(N)-T(1))/(N-1)", "", "", ""))
    rows.append(("   vtlvisor, per CPUID exit", f"{lp['cpuid_vtl_us']:.2f} us",
                 spread(lp["cpuid_vtl_samples"], ".2f"),
                 f"<= {TARGET_EXIT_US:g} {verdict(lp['cpuid_vtl_us'] <= TARGET_EXIT_US)}"))
    rows.append(("   bare Unicorn, per native CPUID (+dec/jnz)", f"{lp['cpuid_bare_us']:.3f} us",
                 spread(lp["cpuid_bare_samples"], ".3f"), "ref"))
    rows.append((f"3. exception round trip: N={lp['n_exc']}, handler + IRETQ", "", "", ""))
    rows.append(("   vtlvisor, per #UD (ud2, handler skips it)", f"{lp['ud2_vtl_us']:.2f} us",
                 spread(lp["ud2_vtl_samples"], ".2f"),
                 f"<= {TARGET_EXC_US:g} {verdict(lp['ud2_vtl_us'] <= TARGET_EXC_US)}"))
    rows.append(("   vtlvisor, per #BP (int3, SWINT intercept)", f"{lp['int3_vtl_us']:.2f} us",
                 spread(lp["int3_vtl_samples"], ".2f"), "info"))
    d = lp["trace_delta_paired_us"]
    rows.append((f"4. tracing: CPUID loop, N={n}, interleaved", "", "", ""))
    rows.append(("   hooks.trace = None", f"{lp['trace_off_us']:.2f} us", spread(lp["trace_off_samples"], ".2f"), ""))
    rows.append(("   hooks.trace = no-op callable", f"{lp['trace_on_us']:.2f} us",
                 spread(lp["trace_on_samples"], ".2f"), ""))
    rows.append(("   tracer cost per exit (median of paired on-off)", f"{d:+.2f} us",
                 f"{d / lp['trace_off_us'] * 100:+.0f}%", "info"))
    w0 = max(len(x[0]) for x in rows)
    w1 = max(len(x[1]) for x in rows)
    w2 = max(len(x[2]) for x in rows)
    head = (f"vtlvisor benchmarks  {meta['date']}  {'quick' if meta['quick'] else 'full'}  "
            f"BENCH_SCALE={c['bench_scale']}  rounds={c['rounds']}  reps={lp['reps']}\n"
            f"host: {meta['cpu']}, {meta['ncpu']} CPUs, load avg {meta['loadavg']}; python {meta['python']}, "
            f"unicorn {meta['unicorn']}, {meta['qemu'] or 'qemu not installed'}\n"
            f"checksum {c['checksum']} (vtlvisor, bare Unicorn{', QEMU' if 'qemu_s' in c else ''} agree)")
    lines = [head, "-" * (w0 + w1 + w2 + 22),
             f"{'metric':<{w0}}  {'median':>{w1}}  {'[min..max] / note':<{w2}}  target"]
    lines.append("-" * (w0 + w1 + w2 + 22))
    for a, b, s, t in rows:
        lines.append(f"{a:<{w0}}  {b:>{w1}}  {s:<{w2}}  {t}".rstrip())
    return "\n".join(lines)


def host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return re.sub(r"\s+", " ", line.split(":", 1)[1].strip())
    except OSError:
        pass
    return platform.processor() or "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"BENCH_SCALE={QUICK_SCALE} images (built into bench/build), fewer rounds (< 60 s)")
    ap.add_argument("--json", metavar="FILE", help="also write all samples and results as JSON")
    ap.add_argument("--rounds", type=int, help="compute rounds (default 5, quick 3)")
    ap.add_argument("--reps", type=int, help="repetitions of each loop benchmark (default 7, quick 5)")
    ap.add_argument("--images", metavar="DIR", type=Path,
                    help="prebuilt bench.elf, bench-mb.elf and testkernel.elf in DIR (default: guest/build)")
    ap.add_argument("--scale", type=int,
                    help="build images with this BENCH_SCALE into bench/build (default: guest/build as is)")
    ap.add_argument("--no-qemu", action="store_true", help="skip QEMU even if it is installed")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    a = ap.parse_args(argv)

    def log(msg: str) -> None:
        if a.verbose:
            print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    scale = a.scale or (QUICK_SCALE if a.quick else None)
    rounds = a.rounds or (3 if a.quick else 5)
    reps = a.reps or (5 if a.quick else 7)
    n_exit, n_exc = (3000, 1000) if a.quick else (20000, 4000)
    qv = qemu_version()
    meta = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "quick": a.quick,
            "cpu": host_cpu(), "ncpu": os.cpu_count(), "python": platform.python_version(),
            "unicorn": getattr(unicorn, "__version__", "?"), "qemu": qv,
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    images = build_images(scale) if scale else (a.images or ROOT / "guest" / "build")
    empty_kernel = a.images / "testkernel.elf" if a.images else EMPTY_KERNEL
    log(f"images: {images}")
    try:
        comp = bench_compute(images, rounds, bool(qv) and not a.no_qemu, log, empty_kernel)
        loops = bench_loops(n_exit, n_exc, reps, log)
    except BenchError as e:
        print(f"BENCHMARK ERROR: {e}", file=sys.stderr)
        return 1
    meta["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    print(render(meta, comp, loops))
    print(f"(elapsed {meta['elapsed_s']} s)")
    if a.json:
        targets = {"compute_ratio_max": TARGET_COMPUTE_RATIO, "exit_us_max": TARGET_EXIT_US,
                   "exception_us_max": TARGET_EXC_US}
        met = {"compute": comp["ratio_vtl_bare"] <= TARGET_COMPUTE_RATIO,
               "exit": loops["cpuid_vtl_us"] <= TARGET_EXIT_US,
               "exception": loops["ud2_vtl_us"] <= TARGET_EXC_US}
        Path(a.json).write_text(json.dumps({"meta": meta, "compute": comp, "loops": loops,
                                            "targets": targets, "targets_met": met}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
