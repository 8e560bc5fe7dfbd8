"""What the platform derives from stored events, read from the store's rollups only.

The collector keeps daily rollups in the same transaction as each raw row (see
store.py), so every figure here, ``--days`` and ``--exclude-ci`` included, is a
small aggregate over a few thousand rollup rows: the same SQL on SQLite and
PostgreSQL, and a report costs the same at ten thousand or ten million events.
Sums of cost and tokens are added up in Python (exact integers, never an overflow).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from . import safe, store

TOKEN_COLUMNS = store.SUMS[1:]

#: The report's queries: over rollups only (see store.py), so a report costs the same at ten
#: thousand or ten million events. Each takes the window's first day ('' for everything) and a
#: CI parameter: rows with ci <> it (1 with --exclude-ci, else 2: none left out), or the weight
#: of CI events (0 with --exclude-ci, else 1).
QUERIES = {
    # per day and kind: counts and the sums of cost and tokens (summed again in Python: exact)
    "sums": "SELECT day, kind, ci, events, cost_n, " + ", ".join(store.SUMS) + " FROM rollup_daily "
    "WHERE dim = 'all' AND day >= ? AND ci <> ?",
    "dims": "SELECT kind, dim, key, SUM(events) FROM rollup_daily WHERE dim <> 'all' AND day >= ? AND ci <> ? "
    "GROUP BY kind, dim, key",
    # one row per device and day; CI events weigh 0 with --exclude-ci (the second parameter), else 1
    "active": "SELECT day, COUNT(*) FROM rollup_device_days "
    "WHERE day >= ? AND startups + tasks + ? * (ci_startups + ci_tasks) > 0 GROUP BY day",
    "devices": "SELECT COUNT(*) FROM (SELECT device_id FROM rollup_device_days "
    "WHERE day >= ? AND startups + ? * ci_startups > 0 GROUP BY device_id) AS seen",
    "new_devices": "SELECT COUNT(*) FROM (SELECT device_id FROM rollup_devices WHERE ci <> ? "
    "GROUP BY device_id HAVING MIN(first_seen) >= ?) AS first",
    "durations": "SELECT status, bucket, SUM(n), MIN(lo), MAX(hi) FROM rollup_durations WHERE day >= ? AND ci <> ? "
    "GROUP BY status, bucket",
}
QUANTILES = {"p50": 0.50, "p95": 0.95}


def first_day(days: int | None, now: datetime | None = None) -> str:
    """The window's first UTC day: ``--days N`` is today and the N - 1 days before ('' is all)."""
    if days is None:
        return ""
    today = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).date()
    try:
        return (today - timedelta(days=days - 1)).isoformat()
    except OverflowError:  # more days than the calendar has: everything
        return ""


def _counts(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    """{key: count}, biggest first; a missing key ('' in rollups) shows as ``(none)``."""
    merged: dict[str, int] = {}
    for key, n in pairs:
        key = key or "(none)"
        merged[key] = merged.get(key, 0) + n
    return dict(sorted(merged.items(), key=lambda kv: (-kv[1], kv[0])))


_CI_KEYS = {-1: "(none)", 0: "false", 1: "true"}


def _percentiles(buckets: list[tuple]) -> dict[str, dict[str, Any]]:
    """Per status: tasks with a duration, and p50/p95 at nearest rank from the merged histogram."""
    by_status: dict[str, list[tuple]] = {}
    for status, index, n, lo, hi in buckets:
        by_status.setdefault(status, []).append((index, n, lo, hi))
    out = {}
    for status in sorted(by_status):
        rows = sorted(by_status[status])
        total = sum(n for _, n, _, _ in rows)
        figures: dict[str, Any] = {"tasks": total}
        for name, q in QUANTILES.items():
            rank, seen = max(1, math.ceil(q * total)), 0
            for index, n, lo, hi in rows:
                seen += n
                if seen >= rank:
                    figures[name] = _duration(store.bucket_value(index, lo, hi))
                    break
        out[status or "(none)"] = figures
    return out


def _duration(value: float) -> int | float:
    """Whole milliseconds from a second (0.05 % at most), four significant digits below.

    With the histogram's `store.ALPHA` (0.5 %) a percentile is within 0.6 % of the true one.
    """
    if value >= 1000 or float(value).is_integer():
        return round(value)
    return float(f"{value:.4g}")


def build(
    db: str | os.PathLike, days: int | None = None, exclude_ci: bool = False, now: datetime | None = None
) -> dict:
    """The report as a dict of sections (see README, "The report"), read from rollups only.

    `db` is an SQLite path or a ``postgresql://`` URL; a database that is missing, not
    ours or not yet rebuilt raises `store.StoreError` (one line for the operator).
    """
    since = first_day(days, now)
    window = [since, 1 if exclude_ci else 2]  # rollup rows with ci <> this: 1 (CI) left out, or none
    ci_weight = 0 if exclude_ci else 1
    db_store = store.open_store(db, create=False)
    try:
        params = {"new_devices": [window[1], since], "active": [since, ci_weight], "devices": [since, ci_weight]}
        got = {name: db_store.query(sql, params.get(name, window)) for name, sql in QUERIES.items()}
    finally:
        db_store.close()

    kinds = {"startup": 0, "task": 0}
    cost_n, totals = 0, dict.fromkeys(store.SUMS, 0)
    daily_tasks: dict[str, int] = {}
    by_ci: dict[str, dict[str, int]] = {}
    for day, kind, ci, events, cost_count, *sums in got["sums"]:
        kinds[kind] = kinds.get(kind, 0) + events
        cost_n += cost_count
        for column, value in zip(store.SUMS, sums):
            totals[column] += value
        daily_tasks[day] = daily_tasks.get(day, 0) + (events if kind == "task" else 0)
        figures = by_ci.setdefault(_CI_KEYS[ci], {"startups": 0, "tasks": 0})
        figures[kind + "s"] += events
    active = dict(got["active"])
    dims: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for kind, dim, key, n in got["dims"]:
        dims.setdefault((kind, dim), []).append((key, n))
    by_frontend: dict[str, dict[str, int]] = {}
    for kind in ("startup", "task"):
        for key, n in _counts(dims.get((kind, "frontend"), [])).items():
            by_frontend.setdefault(key, {"startups": 0, "tasks": 0})[kind + "s"] += n
    cost = totals["cost_usd"]
    return {
        "filters": {"days": days, "exclude_ci": exclude_ci, "since": since or None},
        "unique_devices": got["devices"][0][0] or 0,
        "new_devices": got["new_devices"][0][0] or 0,
        "startups": kinds["startup"],
        "tasks": kinds["task"],
        "daily": [
            {"day": day, "active_devices": active.get(day, 0), "tasks": daily_tasks.get(day, 0)}
            for day in sorted(set(daily_tasks) | set(active))
        ],
        "tasks_by_status": _counts(dims.get(("task", "status"), [])),
        "tasks_by_model": _counts(dims.get(("task", "model"), [])),
        "tasks_by_provider": _counts(dims.get(("task", "provider"), [])),
        "tasks_by_trigger": _counts(dims.get(("task", "trigger"), [])),
        "duration_ms": _percentiles(got["durations"]),
        "cost_usd": {
            "total": round(float(cost), 6),
            "mean": round(float(cost) / cost_n, 6) if cost_n else None,
        },
        "tokens": {c: int(totals[c]) for c in TOKEN_COLUMNS},
        "by_frontend": dict(sorted(by_frontend.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))),
        "by_launch_source": _counts(dims.get(("startup", "launch_source"), [])),
        "by_ci": dict(sorted(by_ci.items())),
    }


def _flat(report: dict) -> list[tuple[str, str, str, Any]]:
    """(section, key, metric, value) rows: the CSV shape, and the table's source."""
    out: list[tuple[str, str, str, Any]] = []
    for name in ("unique_devices", "new_devices", "startups", "tasks"):
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


#: The table's words for the device figures, which count different things (a device that sent
#: only tasks in the period is active and may be new, but has no startup there); the JSON and
#: CSV keys stay as they are (public).
TOTAL_LABELS = {
    "unique_devices": "unique_devices (with a startup)",
    "new_devices": "new_devices (first seen in the period)",
}
SECTION_TITLES = {"daily": "daily (active_devices: devices with a startup or a task that day)"}


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
            lines.append(f"\n{SECTION_TITLES.get(name, name)}")
            section = name
        metric = TOTAL_LABELS.get(metric, metric) if name == "totals" else metric
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
    panels = (
        ("active_devices", "devices active that day\n(startup or task)", "tab:blue"),
        ("tasks", "tasks per day", "tab:orange"),
    )
    for ax, (key, label, color) in zip(axes, panels):
        values = [row[key] or 0 for row in daily]
        ax.bar(days, values, width=0.8, color=color, align="center")
        ax.set_ylabel(label)
        ax.set_ylim(0, max(1, max(values)) * 1.1)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    first, last = min(days), max(days)
    filters = report["filters"]
    if filters.get("days") and filters.get("since"):  # the whole window asked for, not only its busy days
        start = datetime.strptime(filters["since"], "%Y-%m-%d") + timedelta(hours=12)
        first, last = min(first, start), max(last, start + timedelta(days=filters["days"] - 1))
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
    axes[0].set_title(
        f"{title}: {report['tasks']} tasks, {report['unique_devices']} devices with a startup "
        f"({report['new_devices']} first seen)"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
