"""``clacky-ipy`` / ``python -m clacky_ipy``: telemetry, collect, report, demo."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence


def _collect(args: argparse.Namespace) -> int:
    from .collector import Collector
    from .store import StoreError

    try:
        collector = Collector(args.db, host=args.host, port=args.port, verbose=args.verbose)
    except StoreError as exc:
        print(f"clacky-ipy collect: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"clacky-ipy collect: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"clacky-ipy collector on {collector.url}, storing in {args.db} (Ctrl-C to stop)", flush=True)
    try:
        collector.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        collector.stop()
        print("collector stopped", flush=True)
    return 0


def _report(args: argparse.Namespace) -> int:
    from . import report

    try:
        data = report.build(args.db, days=args.days, exclude_ci=args.exclude_ci)
    except FileNotFoundError as exc:
        print(f"clacky-ipy report: {exc}", file=sys.stderr)
        return 2
    print(report.render(data, args.format), end="")
    if args.plot:
        try:
            report.plot(data, args.plot)
        except ImportError:
            print("clacky-ipy report: --plot needs matplotlib: pip install 'clacky-ipy[plot]'", file=sys.stderr)
            return 2
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main

    return main(args.notebook, keep=args.keep)


def _telemetry(args: argparse.Namespace) -> int:
    """The same saved switch as ``%clacky_telemetry on|off``, from a shell; `status` without a session."""
    from .client import Client
    from .config import ClackyTelemetry, saved_choice_path
    from .status import status_text

    client = Client()  # this process's own: it sends nothing (no startup, no worker)
    client.attach(ClackyTelemetry())
    if args.action in ("on", "off"):
        error = client.set_user_off(args.action == "off")
        if error:
            print(f"clacky-ipy telemetry: {error}", file=sys.stderr)
            return 1
        path = saved_choice_path()
        if args.action == "off":
            print(f"Telemetry is off: saved in {path}; every later IPython, Jupyter or Python session honours it.")
        else:
            reason = client.off_reason()
            print(f"Saved choice: on ({path} removed).")
            print(f"Telemetry stays off: {reason}." if reason else "Telemetry is on.")
        return 0
    print(status_text(client.switches()))
    print("A session's configuration (c.ClackyTelemetry.enabled = False, %config) can also turn it off there.")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive number of days")
    return value


def parser() -> argparse.ArgumentParser:
    from .client import __version__

    p = argparse.ArgumentParser(prog="clacky-ipy", description="OpenClacky telemetry for IPython: tools.")
    p.add_argument("--version", action="version", version=f"clacky-ipy {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("telemetry", help="show telemetry's state, or turn it on or off for later sessions")
    t.add_argument(
        "action", nargs="?", choices=("status", "on", "off"), default="status",
        help="status (default): on or off and why, the saved choice's file, endpoint, device id; "
        "on/off: the saved choice, the same as %%clacky_telemetry on/off",
    )  # fmt: skip
    t.set_defaults(func=_telemetry)

    c = sub.add_parser("collect", help="run the reference collector (SQLite)")
    c.add_argument("--db", default="clacky-events.db", help="SQLite file (default: clacky-events.db)")
    c.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    c.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    c.add_argument("--verbose", action="store_true", help="log each request (never the peer's address)")
    c.set_defaults(func=_collect)

    r = sub.add_parser("report", help="what the platform derives from a collector's database")
    r.add_argument("--db", required=True, help="the collector's SQLite file")
    r.add_argument("--days", type=_positive_int, help="only the last N days (default: everything)")
    r.add_argument("--format", choices=("table", "json", "csv"), default="table")
    r.add_argument("--exclude-ci", action="store_true", help="leave out events sent from CI")
    r.add_argument("--plot", metavar="FILE.png", help="also draw daily active devices and tasks per day")
    r.set_defaults(func=_report)

    d = sub.add_parser("demo", help="collector + quickstart notebook in a real kernel + report, offline")
    d.add_argument(
        "--notebook", help="a notebook's path, or a bundled one's name (quickstart, configuration); default: quickstart"
    )
    d.add_argument("--keep", metavar="PATH", help="keep the collector's SQLite database in PATH (a new file)")
    d.set_defaults(func=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:  # `clacky-ipy` alone: what it can do
        p.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
