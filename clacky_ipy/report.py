"""What the platform derives from stored events, as plain SQL over the collector's table.

Every figure is one aggregate query (GROUP BY, COUNT DISTINCT, an index walk to
the nearest rank for percentiles) over an index the collector keeps, so the work
happens in SQLite, not in Python loops, and stays fast at a million events.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from . import safe

TOKEN_COLUMNS = (
    "prompt_tokens",
    "completion_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "cache_total_requests",
    "cache_hit_requests",
)


def _where(days: int | None, exclude_ci: bool, now: datetime | None) -> tuple[str, list[Any]]:
    clauses, params = ["1=1"], []
    if days is not None:
        since = ((now or datetime.now(timezone.utc)) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        clauses.append("substr(received_at, 1, 10) >= ? AND received_at >= ?")  # the day: an index finds it
        params += [since[:10], since]
    if exclude_ci:
        clauses.append("COALESCE(ci, 0) = 0")
    return " AND ".join(clauses), params


#: The report's queries, each one aggregate over an index the collector keeps (see
#: collector.INDEXES), so that none of them sorts or visits a million rows of the table.
QUERIES = {
    "totals": "SELECT SUM(kind = 'startup'), SUM(kind = 'task'), SUM(cost_usd), AVG(cost_usd), "
    + ", ".join(f"SUM({c})" for c in TOKEN_COLUMNS)
    + " FROM events WHERE {where}",
    "devices": "SELECT COUNT(DISTINCT device_id) FROM events WHERE kind = 'startup' AND {where}",
    "daily": "SELECT substr(received_at, 1, 10) AS day, COUNT(DISTINCT device_id), SUM(kind = 'task') "
    "FROM events WHERE {where} GROUP BY day ORDER BY day",
    "status": "SELECT status, COUNT(*), COUNT(duration_ms) FROM events WHERE kind = 'task' AND {where} GROUP BY status",
    "model": "SELECT model, COUNT(*) FROM events WHERE kind = 'task' AND {where} GROUP BY model",
    "provider": "SELECT provider, COUNT(*) FROM events WHERE kind = 'task' AND {where} GROUP BY provider",
    "trigger": "SELECT trigger, COUNT(*) FROM events WHERE kind = 'task' AND {where} GROUP BY trigger",
    "launch_source": "SELECT launch_source, COUNT(*) FROM events WHERE kind = 'startup' AND {where} "
    "GROUP BY launch_source",
    "split": "SELECT frontend, ci, SUM(kind = 'startup'), SUM(kind = 'task') FROM events WHERE {where} "
    "GROUP BY frontend, ci",
}
#: The duration at nearest rank `offset` (0-based) among one status's tasks, walking the index.
PERCENTILE = (
    "SELECT duration_ms FROM events WHERE kind = 'task' AND status IS ? AND duration_ms IS NOT NULL "
    "AND {where} ORDER BY duration_ms LIMIT 1 OFFSET ?"
)


def _counts(rows: list[tuple]) -> dict[str, int]:
    """{key: count}, biggest first; a missing key shows as ``(none)``."""
    out = [("(none)" if k is None else str(k), n) for k, n in rows]
    return dict(sorted(out, key=lambda kv: (-kv[1], kv[0])))


def _ci_key(ci: Any) -> str:
    return "(none)" if ci is None else ("true" if ci else "false")


def build(db: str | Path, days: int | None = None, exclude_ci: bool = False, now: datetime | None = None) -> dict:
    """The report as a dict of sections (see README, "The report").

    The queries are independent and SQLite releases the GIL while it works, so
    they run on two connections at once: on two cores that halves the wall time.
    """
    if not Path(db).exists():
        raise FileNotFoundError(f"no database at {db}")
    where, params = _where(days, exclude_ci, now)
    local = threading.local()
    connections: list[sqlite3.Connection] = []  # one per pool thread

    def rows(sql: str, args: list[Any]) -> list[tuple]:
        con = getattr(local, "con", None)
        if con is None:
            con = local.con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
            connections.append(con)
        return con.execute(sql.format(where=where), args).fetchall()

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {name: pool.submit(rows, sql, params) for name, sql in QUERIES.items()}
            got = {name: future.result() for name, future in futures.items()}
            statuses = got["status"]
            ranks = {
                (status, q): pool.submit(rows, PERCENTILE, [status, *params, math.ceil(q * n) - 1])
                for status, _, n in statuses
                if n
                for q in (0.50, 0.95)
            }
            percentiles = {key: (future.result() or [(None,)])[0][0] for key, future in ranks.items()}
    finally:
        for con in connections:
            con.close()
    totals = got["totals"][0]
    split: dict[str, dict[str, dict[str, int]]] = {"by_frontend": {}, "by_ci": {}}
    for frontend, ci, startups, tasks in got["split"]:
        for section, key in (("by_frontend", "(none)" if frontend is None else frontend), ("by_ci", _ci_key(ci))):
            figures = split[section].setdefault(key, {"startups": 0, "tasks": 0})
            figures["startups"] += startups or 0
            figures["tasks"] += tasks or 0
    return {
        "filters": {"days": days, "exclude_ci": exclude_ci},
        "unique_devices": got["devices"][0][0] or 0,
        "startups": totals[0] or 0,
        "tasks": totals[1] or 0,
        "daily": [{"day": d, "active_devices": a, "tasks": t or 0} for d, a, t in got["daily"]],
        "tasks_by_status": _counts([(status, n) for status, n, _ in statuses]),
        "tasks_by_model": _counts(got["model"]),
        "tasks_by_provider": _counts(got["provider"]),
        "tasks_by_trigger": _counts(got["trigger"]),
        "duration_ms": {
            "(none)" if status is None else status: {
                "tasks": n,
                "p50": percentiles[(status, 0.50)],
                "p95": percentiles[(status, 0.95)],
            }
            for status, _, n in sorted(statuses, key=lambda r: "" if r[0] is None else r[0])
            if n
        },
        "cost_usd": {
            "total": round(totals[2] or 0.0, 6),
            "mean": None if totals[3] is None else round(totals[3], 6),
        },
        "tokens": {c: int(v or 0) for c, v in zip(TOKEN_COLUMNS, totals[4:])},
        "by_frontend": dict(sorted(split["by_frontend"].items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))),
        "by_launch_source": _counts(got["launch_source"]),
        "by_ci": dict(sorted(split["by_ci"].items())),
    }


def _flat(report: dict) -> list[tuple[str, str, str, Any]]:
    """(section, key, metric, value) rows: the CSV shape, and the table's source."""
    out: list[tuple[str, str, str, Any]] = []
    for name in ("unique_devices", "startups", "tasks"):
        out.append(("totals", "", name, report[name]))
    for row in report["daily"]:
        out += [
            ("daily", row["day"], "active_devices", row["active_devices"]),
            ("daily", row["day"], "tasks", row["tasks"]),
        ]
    for section in ("tasks_by_status", "tasks_by_model", "tasks_by_provider", "tasks_by_trigger", "by_launch_source"):
        out += [
            (section, key, "tasks" if section != "by_launch_source" else "startups", n)
            for key, n in report[section].items()
        ]
    for status, figures in report["duration_ms"].items():
        out += [("duration_ms", status, metric, value) for metric, value in figures.items()]
    out += [("cost_usd", "", metric, value) for metric, value in report["cost_usd"].items()]
    out += [("tokens", "", metric, value) for metric, value in report["tokens"].items()]
    for section in ("by_frontend", "by_ci"):
        for key, figures in report[section].items():
            out += [(section, key, metric, value) for metric, value in figures.items()]
    return out


def _finite(value: Any) -> Any:
    """`value` with every infinite or NaN float as None: JSON has neither, and a tool reading
    the report must never be handed ``Infinity``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def render(report: dict, fmt: str = "table") -> str:
    """The report as ``table`` (for people), ``json`` or ``csv`` (for tools).

    Keys (models, providers, statuses...) are whatever clients sent, so each format is made
    safe for where it goes: JSON is always valid JSON, CSV cells never start a spreadsheet
    formula, and the table shows control characters as escapes (see `safe`).
    """
    if fmt == "json":
        return json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        # Text quoted (numbers not): a carriage return inside a received name stays in its cell.
        writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(["section", "key", "metric", "value"])
        writer.writerows([safe.csv_cell(cell) for cell in row] for row in _flat(report))
        return buffer.getvalue()
    lines, section = [], None
    for name, key, metric, value in _flat(report):
        if name != section:
            lines.append(f"\n{name}")
            section = name
        label = safe.printable(f"{key}  {metric}" if key else metric)
        lines.append(f"  {label:<44} {'-' if value is None else safe.printable(str(value))}")
    title = "clacky-ipy report" + (f" (last {report['filters']['days']} days)" if report["filters"]["days"] else "")
    title += " (CI excluded)" if report["filters"]["exclude_ci"] else ""
    return title + "\n" + "\n".join(lines).lstrip("\n") + "\n"


def plot(report: dict, path: str | Path) -> None:
    """Daily active devices and tasks per day as a PNG (needs the ``plot`` extra).

    Two panels, each with its own scale (tens of devices next to thousands of tasks would
    flatten the devices to zero), over a real date axis: a day without events is an empty
    slot, never two neighbouring points. Bars stay readable from one day to a year, and an
    empty report says so in words instead of drawing an empty frame.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    title = "clacky-ipy telemetry" + (f", last {report['filters']['days']} days" if report["filters"]["days"] else "")
    title += " (CI excluded)" if report["filters"]["exclude_ci"] else ""
    daily = report["daily"]
    if not daily:
        fig = plt.figure(figsize=(9, 3), dpi=100)
        fig.text(0.5, 0.6, title, ha="center", va="center", fontsize=13, weight="bold")
        fig.text(0.5, 0.4, "No events to plot: nothing was received in this period.", ha="center", va="center")
        fig.savefig(path)
        plt.close(fig)
        return
    # Each bar fills its own day (centred at noon), so a day's tick sits under its bar.
    days = [datetime.strptime(row["day"], "%Y-%m-%d") + timedelta(hours=12) for row in daily]
    fig, axes = plt.subplots(2, 1, sharex=True, figsize=(10, 6), dpi=100)
    panels = (("active_devices", "daily active devices", "tab:blue"), ("tasks", "tasks per day", "tab:orange"))
    for ax, (key, label, color) in zip(axes, panels):
        values = [row[key] or 0 for row in daily]
        ax.bar(days, values, width=0.8, color=color, align="center")
        ax.set_ylabel(label)
        ax.set_ylim(0, max(1, max(values)) * 1.1)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    first, last = min(days), max(days)
    span = (last - first).days + 1
    axis = axes[-1].xaxis
    if span <= 31:  # a tick under every bar (every few on a month), named by its date
        step = math.ceil(span / 10)
        axes[-1].set_xticks([first + timedelta(days=i) for i in range(0, span, step)])
        axis.set_major_formatter(mdates.DateFormatter("%b %d\n%Y" if span <= 2 else "%b %d"))
    else:  # months (and years), as a calendar shows them
        locator = mdates.AutoDateLocator(minticks=4, maxticks=12)
        axis.set_major_locator(locator)
        axis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    margin = timedelta(days=max(1, span // 60))
    axes[-1].set_xlim(first - timedelta(hours=12) - margin, last + timedelta(hours=12) + margin)
    axes[-1].set_xlabel("day (UTC)")
    axes[0].set_title(f"{title}: {report['unique_devices']} devices, {report['tasks']} tasks")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
