"""``clacky-ipy`` / ``python -m clacky_ipy``: telemetry, collect, report, demo."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, NoReturn

from . import safe


def _fail(command: str, message: str) -> int:
    """An operator's mistake: one line on stderr and exit code 2, never a traceback."""
    print(f"clacky-ipy {command}: {safe.printable(message)}", file=sys.stderr)
    return 2


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _hash_password(args: argparse.Namespace) -> int:
    """``collect --hash-password [USER]``: a credentials file's line from a password read from stdin."""
    import getpass

    from .guard import hash_password

    tty = sys.stdin.isatty()
    password = getpass.getpass("password: ") if tty else sys.stdin.readline().rstrip("\r\n")
    if not password:
        return _fail("collect", "--hash-password: an empty password")
    user = args.hash_password
    print(f"{user}:{hash_password(password)}" if user else hash_password(password), flush=True)
    return 0


def _collect(args: argparse.Namespace) -> int:
    from . import collector, collector_log
    from .guard import Guard, GuardError
    from .metrics import multiprocess_problem, networks
    from .store import StoreError

    if args.hash_password is not None:
        return _hash_password(args)
    problem = multiprocess_problem()
    if problem:
        return _fail("collect", problem)
    try:
        guard = Guard.from_options(args.credentials, args.rate_limit, args.burst, args.peer_rate_limit)
        metrics_from = [str(n) for n in networks(args.metrics_from)] if args.metrics_from else None
    except GuardError as exc:
        return _fail("collect", str(exc))
    except ValueError as exc:
        return _fail("collect", f"--metrics-from: {exc}")
    # Until the server takes SIGTERM over (and after it gives it back), it stops us as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server = collector.Collector(
            args.db,
            host=args.host,
            port=args.port,
            verbose=args.verbose,
            max_connections=args.max_connections,
            read_timeout=args.read_timeout,
            guard=guard,
            metrics_from=metrics_from,
            retain_days=args.retain_days,
        )
    except ImportError:
        return _fail("collect", "the collector needs uvicorn: pip install 'clacky-ipy[collector]'")
    except StoreError as exc:
        return _fail("collect", str(exc))
    except OSError as exc:  # nothing was created: the port is bound before the database is opened
        return _fail("collect", f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        return 0
    if not collector.is_loopback(args.host) and guard.credentials is None:
        print(
            f"clacky-ipy collect: warning: listening on {args.host} exposes an unauthenticated endpoint "
            "to every network it can be reached from; anyone there can store events (see --credentials)",
            file=sys.stderr,
            flush=True,
        )
    log = collector_log.configure(args.verbose)  # from here on nothing waits for a stream's reader
    print(f"clacky-ipy collector on {server.url}, storing in {server.store.path} (Ctrl-C to stop)", flush=True)
    try:
        server.serve()  # SIGINT and SIGTERM: stop accepting, answer what was read, commit, close
    except KeyboardInterrupt:  # a signal before the server took them over
        pass
    finally:
        server.stop()
        log.close("collector stopped")
    return 0


#: What ``--plot`` writes, by the file's suffix: formats matplotlib draws by itself (no LaTeX, no
#: codec of Pillow's that may be missing), so a plot never fails after the report is printed.
PLOT_FORMATS = ("png", "svg", "pdf")


def _plot_target(path: str, formats: Sequence[str] = PLOT_FORMATS, flag: str = "--plot") -> tuple[str, str | None]:
    """The file ``--plot path`` (or ``--html``) writes (the first format's suffix added to a name
    without one, as matplotlib would), and why it cannot be written, or None: checked before the
    report is printed."""
    if path.endswith(("/", os.sep)) or os.path.basename(path) in ("", ".", ".."):
        return path, f"{flag} {path}: names a folder, not a file"
    try:  # a name too long, a loop of links, a file where a folder should be: one line, no traceback
        if Path(path).is_dir():
            return path, f"{flag} {path}: is a folder, not a file"
        suffix = os.path.splitext(path)[1]
        if not suffix:
            path += "." + formats[0]
        elif suffix[1:].lower() not in formats:
            names = [f".{f}" for f in formats]
            named = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
            verb = "draw" if flag == "--plot" else "write"
            return path, f"{flag} {path}: cannot {verb} {suffix} files; name a {named} file"
        target = Path(path)
        folder = target.parent
        if target.is_dir():
            return path, f"{flag} {path}: is a folder, not a file"
        if not folder.is_dir():
            if folder.exists() or folder.is_symlink():
                return path, f"{flag} {path}: {folder} is not a folder"
            return path, f"{flag} {path}: the folder {folder} does not exist"
        if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
            return path, f"{flag} {path}: cannot write in {folder}"
    except OSError as exc:
        return path, f"{flag} {path}: {exc.strerror or exc}"
    return path, None


def _report(args: argparse.Namespace) -> int:
    from . import report
    from .store import StoreError

    plot_path: str | None = None
    targets = [(flag, path) for flag, path in (("--plot", args.plot), ("--html", args.html)) if path]
    for flag, path in targets:
        target, problem = _plot_target(path, ("html",) if flag == "--html" else PLOT_FORMATS, flag)
        if problem:
            return _fail("report", problem)
        if flag == "--plot":
            plot_path = target
        else:
            args.html = target
    if targets:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return _fail("report", f"{targets[0][0]} needs matplotlib: pip install 'clacky-ipy[plot]'")
    try:
        data = report.build(args.db, days=args.days, exclude_ci=args.exclude_ci)
    except StoreError as exc:
        return _fail("report", str(exc))
    try:
        if args.csv_table:
            sys.stdout.write(report.csv_table(data, args.csv_table))
        else:
            sys.stdout.write(report.render(data, args.format))
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        sys.stdout = None  # type: ignore[assignment]  # no second error at exit
        return 0
    if plot_path:
        from . import plot

        try:
            plot.png(data, plot_path)
        except OSError as exc:
            return _fail("report", f"--plot {plot_path}: {exc.strerror or exc}")
        print(f"plot written to {plot_path}", file=sys.stderr)
    if args.html:
        from .report_html import page

        try:
            Path(args.html).write_text(page(data), encoding="utf-8")
        except OSError as exc:
            return _fail("report", f"--html {args.html}: {exc.strerror or exc}")
        print(f"page written to {args.html}", file=sys.stderr)
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    from .store import StoreError, rebuild

    try:
        done = rebuild(args.db)
    except StoreError as exc:
        return _fail("rebuild", str(exc))
    print(f"rebuilt the rollups of {done.events:,} events in {done.seconds:.1f} s", flush=True)
    return 0


def _retention(command: str, run: Callable[[], Any], describe: Callable[[Any], str]) -> int:
    """`prune` and `forget`: run, then one line of what was done (or of why not, exit code 2)."""
    from .store import StoreError

    try:
        done = run()
    except StoreError as exc:
        return _fail(command, str(exc))
    print(describe(done), flush=True)
    return 0


def _prune(args: argparse.Namespace) -> int:
    from .retention import prune

    return _retention(
        "prune",
        lambda: prune(args.db, args.older_than),
        lambda done: (
            f"pruned {done.events:,} raw events received before {done.kept_from} and "
            f"{done.device_rows:,} per-device rollup rows in {done.seconds:.1f} s "
            f"(longest transaction {done.longest_lock * 1000:.0f} ms)"
        ),
    )


def _forget(args: argparse.Namespace) -> int:
    from .retention import forget

    return _retention(
        "forget",
        lambda: forget(args.db, args.device_id),
        lambda done: (
            f"forgot {done.devices} device(s): {done.events:,} raw events and {done.device_rows:,} "
            f"per-device rollup rows removed, {done.days:,} days of aggregates recomputed, in {done.seconds:.1f} s "
            f"(longest transaction {done.longest_lock * 1000:.0f} ms)"
        ),
    )


def _demo(args: argparse.Namespace) -> int:
    from .demo import main

    return main(args.notebook, keep=args.keep)


def _telemetry(args: argparse.Namespace) -> int:
    """The same saved switch as ``%clacky_telemetry on|off``, from a shell; `status` without a session."""
    from .config import saved_choice_path
    from .status import SESSION_CONFIG_NOTE, machine_status, save_choice, status_text

    if args.action == "reset-id":
        from .client import Client

        try:
            print(Client().reset_device_id())  # a client of its own: it sends nothing
        except OSError as exc:
            print(f"clacky-ipy telemetry: the device id was not changed: {exc.strerror or exc}", file=sys.stderr)
            return 1
        return 0
    if args.action in ("on", "off"):
        error, reason = save_choice(args.action == "off")
        if error:
            print(f"clacky-ipy telemetry: {error}", file=sys.stderr)
            return 1
        path = saved_choice_path()
        if args.action == "off":
            print(f"Telemetry is off: saved in {path}; every later IPython, Jupyter or Python session honours it.")
        else:
            print(f"Saved choice: on ({path} removed).")
            print(f"Telemetry stays off: {reason}." if reason else "Telemetry is on.")
        return 0
    print(status_text(machine_status(wait=5.0)))  # a one-shot command can wait for the device id
    print(SESSION_CONFIG_NOTE)
    return 0


#: ``report --csv-table`` names (report.tables; listed here so --help needs no import of the report).
CSV_TABLES = (
    "daily", "models", "providers", "statuses", "triggers", "errors", "versions", "os", "python_versions",
    "ipython_versions", "frontends", "containers", "launch_sources", "ci", "cohorts", "daily_models",
    "daily_versions", "totals",
)  # fmt: skip

#: The longest --days: a century (a billion days is past the calendar's end).
MAX_DAYS = 36_500


def _bounded(kind: Callable[[str], Any], low: float, high: float, what: str = "a number") -> Callable[[str], Any]:
    """An argparse type: a `kind` number from `low` to `high`, or a one-line refusal."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} is not {what} from {low} to {high}")
        return value

    return convert


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (and exit code 2), like every other operator error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    from .client import __version__
    from .guard import MIN_BURST, PEER_FACTOR

    p = _Parser(prog="clacky-ipy", description="OpenClacky telemetry for IPython: tools.")
    p.add_argument("--version", action="version", version=f"clacky-ipy {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("telemetry", help="show telemetry's state, or turn it on or off for later sessions")
    t.add_argument(
        "action", nargs="?", choices=("status", "on", "off", "reset-id"), default="status",
        help="status (default): on or off and why, the saved choice's file, endpoint, device id; "
        "on/off: the saved choice, the same as %%clacky_telemetry on/off; "
        "reset-id: a fresh random device id in the Clacky home's brand.yml",
    )  # fmt: skip
    t.set_defaults(func=_telemetry)

    c = sub.add_parser("collect", help="run the reference collector (SQLite or PostgreSQL)")
    c.add_argument(
        "--db", default="clacky-events.db", help="SQLite file or postgresql:// URL (default: clacky-events.db)"
    )
    c.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    c.add_argument(
        "--port", type=_bounded(int, 0, 65535, "a port"), default=8765, help="port (default: 8765; 0 picks a free one)"
    )
    c.add_argument("--verbose", action="store_true", help="log each request (never the peer's address)")
    c.add_argument(
        "--max-connections",
        type=_bounded(int, 1, 65536),
        default=1024,
        help="open connections at most; the longest idle one makes room for a new one (default: 1024)",
    )
    c.add_argument(
        "--read-timeout",
        type=_bounded(float, 0.1, 3600),
        default=10.0,
        help="seconds a connection has to send each whole request (default: 10)",
    )
    c.add_argument(
        "--credentials",
        metavar="FILE",
        help="every POST needs HTTP basic auth matching a user:hash line of FILE (see --hash-password)",
    )
    c.add_argument(
        "--hash-password",
        nargs="?",
        const="",
        metavar="USER",
        help="print a credentials file's line (USER:hash) for a password read from stdin, then exit",
    )
    c.add_argument(
        "--rate-limit",
        metavar="N/s",
        help="events each device id may send (e.g. 5/s, 100/min); over it: 429 with Retry-After (default: none)",
    )
    c.add_argument(
        "--burst",
        type=_bounded(float, 1, 1e6),
        help=f"events a device may send at once before --rate-limit applies (default: {MIN_BURST} "
        "or ten seconds' worth)",
    )
    c.add_argument(
        "--peer-rate-limit",
        metavar="N/s",
        help=f"events each peer address may send (default: {PEER_FACTOR} x --rate-limit)",
    )
    c.add_argument(
        "--metrics-from",
        action="append",
        metavar="NETWORK",
        help="networks (CIDR, comma-separated or repeated) that may GET /metrics (default: loopback only)",
    )
    c.add_argument(
        "--retain-days",
        type=_bounded(int, 1, MAX_DAYS, "a positive number of days"),
        metavar="N",
        help="delete raw events older than N whole days, hourly (as `clacky-ipy prune`; default: keep all)",
    )
    c.set_defaults(func=_collect)

    r = sub.add_parser("report", help="what the platform derives from a collector's database")
    r.add_argument("--db", required=True, help="the collector's database: an SQLite file or a postgresql:// URL")
    r.add_argument(
        "--days",
        type=_bounded(int, 1, MAX_DAYS, "a positive number of days"),
        help="only the last N days (default: everything)",
    )
    r.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="table (default), json, or csv: one figure per row (section, key, metric, value)",
    )
    r.add_argument(
        "--csv-table",
        metavar="NAME",
        choices=CSV_TABLES,
        help="print one table as CSV, one row per day or key with a header: " + ", ".join(CSV_TABLES),
    )
    r.add_argument("--exclude-ci", action="store_true", help="leave out events sent from CI")
    r.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw the report's charts into one .png, .svg or .pdf file (.png if no suffix)",
    )
    r.add_argument(
        "--html",
        metavar="FILE.html",
        help="also write the report as one self-contained HTML page with its charts (needs the plot extra)",
    )
    r.set_defaults(func=_report, interrupted=UNCHANGED)

    b = sub.add_parser("rebuild", help="recompute the report's rollups from the raw events (repair, upgrade)")
    b.add_argument("--db", required=True, help="the collector's SQLite file or postgresql:// URL")
    b.set_defaults(func=_rebuild, interrupted=UNCHANGED)

    pr = sub.add_parser("prune", help="delete raw events older than N whole days (rollups without a device stay)")
    pr.add_argument("--db", required=True, help="the collector's SQLite file or postgresql:// URL")
    pr.add_argument(
        "--older-than",
        required=True,
        type=_bounded(int, 1, MAX_DAYS, "a positive number of days"),
        metavar="N",
        help="today and the N days before it stay",
    )
    pr.set_defaults(func=_prune, interrupted="what was deleted so far is gone, the rest kept; run it again to finish")

    f = sub.add_parser("forget", help="erase devices: their raw events and every rollup figure derived from them")
    f.add_argument("--db", required=True, help="the collector's SQLite file or postgresql:// URL")
    f.add_argument("device_id", nargs="+", metavar="DEVICE_ID", help="the device ids to forget")
    f.set_defaults(func=_forget, interrupted="the devices are partly forgotten; run the same forget again to finish")

    d = sub.add_parser("demo", help="collector + quickstart notebook in a real kernel + report, offline")
    d.add_argument(
        "--notebook", help="a notebook's path, or a bundled one's name (quickstart, configuration); default: quickstart"
    )
    d.add_argument("--keep", metavar="PATH", help="keep the collector's SQLite database in PATH (a new file)")
    d.set_defaults(func=_demo)
    return p


#: Ctrl-C's exit code, as a shell reports a command stopped by SIGINT.
INTERRUPTED = 130
#: What is true when Ctrl-C stops a command whose change is one transaction (rolled back unless it
#: committed): its ``interrupted`` default. The store may say more (``KeyboardInterrupt("the
#: rollups were rebuilt")``, after the commit); a command with neither says "interrupted" only.
UNCHANGED = "the database is unchanged"


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:  # `clacky-ipy` alone: what it can do
        p.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:  # Ctrl-C: one line saying what is true, never a traceback
        what = str(exc) or getattr(args, "interrupted", "")
        print(f"clacky-ipy {args.command}: interrupted{'; ' + what if what else ''}", file=sys.stderr, flush=True)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
