"""Command line: ``vtlvisor run IMAGE ...`` and ``vtlvisor trace summary FILE``.

User errors (missing file, malformed image, bad option) print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import threading

from .errors import VtlvisorError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:   # one line, status 2, no usage dump
        sys.stderr.write(f"vtlvisor: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (examples: 128M, 1G, 65536)")
    n = int(m.group(1))
    unit = m.group(2).upper()
    if not unit and not m.group(3):
        unit = "M" if n < 65536 else ""   # QEMU's -m takes MiB by default
    return n << {"": 0, "K": 10, "M": 20, "G": 30}[unit]


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return v


def _module(text: str) -> tuple[str, str]:
    path, _, args = text.partition(",")
    if not path:
        raise argparse.ArgumentTypeError("--module needs FILE[,ARGS]")
    return path, args


def _gdb_address(text: str) -> tuple[str, int]:
    from .gdbstub import parse_address
    try:
        return parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vtlvisor", description="A hypervisor for virtualization-based security research.")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="boot a Multiboot or ELF64 image")
    r.add_argument("image")
    r.add_argument("--memory", "-m", type=parse_size, default=128 << 20, metavar="SIZE")
    r.add_argument("--serial", metavar="FILE", help="write COM1 output to FILE instead of stdout")
    r.add_argument("--append", default="", metavar="CMDLINE", help="kernel command line")
    r.add_argument("--module", action="append", type=_module, default=[], metavar="FILE[,ARGS]")
    r.add_argument("--trace", metavar="FILE", help="write a Chrome/Perfetto trace JSON")
    r.add_argument("--timeout", type=_positive_float, metavar="SECONDS")
    r.add_argument("--report", metavar="FILE", help="write the stop report to FILE as well")
    r.add_argument("--gdb", type=_gdb_address, metavar="[HOST:]PORT",
                   help="serve the GDB remote protocol (host defaults to 127.0.0.1; port 0 picks one)")
    r.add_argument("--wait", action="store_true",
                   help="with --gdb: stop before the first instruction until gdb continues")
    r.add_argument("--cr-pin", dest="cr_pin", action="store_true", default=True,
                   help="offer paravirtualized CR pinning to the guest (default)")
    r.add_argument("--hyperv", action="store_true",
                   help="expose Hyper-V enlightenments and Virtual Secure Mode (VTLs) to the guest")
    r.add_argument("--domains", action="store_true",
                   help="offer capability-scoped security domains (KVM-style PV ABI, docs/domains.md)")
    r.add_argument("--domain-policy", metavar="TOML",
                   help="limit the boot domain's initial capabilities (implies --domains)")
    r.add_argument("--no-cr-pin", dest="cr_pin", action="store_false",
                   help="hide CR pinning (KVM_FEATURE_CR_PIN clear, pin MSRs #GP)")
    a = sub.add_parser("attacks", help="run the attack matrix (each attack without and with its protection)")
    a.add_argument("--only", metavar="NAME[,NAME...]", help="run only these attacks")
    a.add_argument("--json", metavar="FILE")
    a.add_argument("--trace-dir", metavar="DIR", help="write one trace per run into DIR")
    t = sub.add_parser("trace", help="inspect trace files")
    tsub = t.add_subparsers(dest="trace_command", required=True, parser_class=_Parser)
    s = tsub.add_parser("summary")
    s.add_argument("file")
    rd = tsub.add_parser("render", help="draw the timeline as SVG")
    rd.add_argument("file")
    rd.add_argument("out")
    return p


def _stdin_pump(uart) -> None:
    try:
        stream = sys.stdin.buffer
    except AttributeError:
        return
    while True:
        try:
            data = stream.read1(256)
        except (OSError, ValueError):
            return
        if not data:
            return
        uart.feed(data)


def _gdb_stub(args: argparse.Namespace, part):
    from .gdbstub import GdbStub
    host, port = args.gdb
    try:
        stub = GdbStub(part, host, port)
    except OSError as e:
        raise VtlvisorError(f"cannot listen for gdb on {host}:{port}: {e.strerror or e}") from None
    h, p = stub.address
    sys.stderr.write(f"vtlvisor: gdb stub listening on {h}:{p}"
                     f"{' (waiting for gdb to continue)' if args.wait else ''}\n")
    sys.stderr.flush()
    return stub


def cmd_run(args: argparse.Namespace) -> int:
    from .hv.partition import Partition, PartitionConfig
    from .hv.stop import StopReason
    from .trace import ChromeTracer

    serial_file = None
    if args.serial:
        try:
            serial_file = open(args.serial, "wb")   # noqa: SIM115
        except OSError as e:
            raise VtlvisorError(f"cannot open serial output '{args.serial}': {e.strerror}") from None

    def to_stdout(b: bytes) -> None:
        sys.stdout.buffer.write(b)
        sys.stdout.buffer.flush()

    tracer = None
    cfg = PartitionConfig(memory=args.memory, serial=serial_file or to_stdout, cr_pin=args.cr_pin,
                          hyperv=args.hyperv, domains=args.domains, domain_policy=args.domain_policy)
    part = Partition(cfg)
    if args.trace:
        tracer = ChromeTracer(part.clock.now)
        part.vcpu.hooks.trace = tracer
        part.config.trace = tracer
    part.boot_image(args.image, cmdline=args.append, modules=args.module)
    stub = _gdb_stub(args, part) if args.gdb else None
    if sys.stdin is not None and not sys.stdin.closed:
        threading.Thread(target=_stdin_pump, args=(part.platform.uart,), daemon=True).start()
    if stub is not None:
        stub.start(wait=args.wait)      # with --wait: blocks until gdb resumes the guest
    result = part.run(timeout=args.timeout)
    if stub is not None:
        stub.finish(result)
    part.platform.uart.flush()
    if serial_file:
        serial_file.close()
    if tracer and args.trace:
        tracer.write(args.trace)
    if part.crpin.blocked:
        for b in part.crpin.blocked:
            sys.stderr.write(f"vtlvisor: blocked CR{b.cr} write {b.old:#x} -> {b.attempted:#x} "
                             f"at RIP {b.rip:#x} (CPL {b.cpl}): pinned bits\n")
    if result.reason is not StopReason.DEBUG_EXIT:
        report = f"vtlvisor: guest stopped: {result.reason.value}: {result.detail}\n"
        if result.reason not in (StopReason.POWER_OFF, StopReason.HOST_REQUEST):
            report += part.vcpu.state_dump() + "\n"
        sys.stderr.write(report)
        if args.report:
            with open(args.report, "w") as f:
                f.write(report)
    return result.exit_status


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            if args.wait and not args.gdb:
                parser.error("--wait needs --gdb")
            return cmd_run(args)
        if args.command == "attacks":
            from .attacks import main_attacks
            if args.trace_dir:
                import os
                os.makedirs(args.trace_dir, exist_ok=True)
            return main_attacks(args.only, args.json, args.trace_dir)
        if args.command == "trace":
            from .trace import render_svg, summarize
            try:
                if args.trace_command == "render":
                    n = render_svg(args.file, args.out)
                    print(f"{n} events drawn to {args.out}")
                else:
                    print(summarize(args.file))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise VtlvisorError(f"cannot read trace '{args.file}': {e}") from None
            return 0
    except VtlvisorError as e:
        sys.stderr.write(f"vtlvisor: error: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
