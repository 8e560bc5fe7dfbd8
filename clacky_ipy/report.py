"""What the platform derives from stored events, as plain SQL over the collector's table.

Every figure is one aggregate query (GROUP BY, COUNT DISTINCT, window functions
for percentiles), so the work happens in SQLite, not in Python loops.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

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
        since = (now or datetime.now(timezone.utc)) - timedelta(days=days)
        clauses.append("received_at >= ?")
        params.append(since.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    if exclude_ci:
        clauses.append("COALESCE(ci, 0) = 0")
    return " AND ".join(clauses), params


def build(db: str | Path, days: int | None = None, exclude_ci: bool = False, now: datetime | None = None) -> dict:
    """The report as a dict of sections (see README, "The report")."""
    if not Path(db).exists():
        raise FileNotFoundError(f"no database at {db}")
    where, params = _where(days, exclude_ci, now)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:

        def rows(sql: str) -> list[tuple]:
            return con.execute(sql.format(where=where), params).fetchall()

        def grouped(column: str, kind: str = "task") -> dict[str, int]:
            sql = (
                f"SELECT COALESCE(CAST({column} AS TEXT), '(none)') AS k, COUNT(*) FROM events "
                f"WHERE kind = '{kind}' AND {{where}} GROUP BY k ORDER BY COUNT(*) DESC, k"
            )
            return dict(rows(sql))

        totals = rows(
            "SELECT COUNT(DISTINCT CASE WHEN kind = 'startup' THEN device_id END), "
            "SUM(kind = 'startup'), SUM(kind = 'task'), SUM(cost_usd), AVG(cost_usd), "
            + ", ".join(f"SUM({c})" for c in TOKEN_COLUMNS)
            + " FROM events WHERE {where}"
        )[0]
        daily = rows(
            "SELECT substr(received_at, 1, 10) AS day, COUNT(DISTINCT device_id), SUM(kind = 'task') "
            "FROM events WHERE {where} GROUP BY day ORDER BY day"
        )
        durations = rows(
            "SELECT status, COUNT(*), MIN(CASE WHEN rn >= 0.50 * n THEN duration_ms END), "
            "MIN(CASE WHEN rn >= 0.95 * n THEN duration_ms END) FROM ("
            " SELECT status, duration_ms,"
            "  ROW_NUMBER() OVER (PARTITION BY status ORDER BY duration_ms) AS rn,"
            "  COUNT(*) OVER (PARTITION BY status) AS n"
            " FROM events WHERE kind = 'task' AND duration_ms IS NOT NULL AND {where}"
            ") GROUP BY status ORDER BY status"
        )
        ci = rows(
            "SELECT CASE WHEN ci = 1 THEN 'true' WHEN ci = 0 THEN 'false' ELSE '(none)' END AS k, "
            "SUM(kind = 'startup'), SUM(kind = 'task') FROM events WHERE {where} GROUP BY k ORDER BY k"
        )
        frontend = rows(
            "SELECT COALESCE(frontend, '(none)') AS k, SUM(kind = 'startup'), SUM(kind = 'task') "
            "FROM events WHERE {where} GROUP BY k ORDER BY COUNT(*) DESC, k"
        )
        return {
            "filters": {"days": days, "exclude_ci": exclude_ci},
            "unique_devices": totals[0] or 0,
            "startups": totals[1] or 0,
            "tasks": totals[2] or 0,
            "daily": [{"day": d, "active_devices": a, "tasks": t or 0} for d, a, t in daily],
            "tasks_by_status": grouped("status"),
            "tasks_by_model": grouped("model"),
            "tasks_by_provider": grouped("provider"),
            "tasks_by_trigger": grouped("trigger"),
            "duration_ms": {s: {"tasks": n, "p50": p50, "p95": p95} for s, n, p50, p95 in durations},
            "cost_usd": {
                "total": round(totals[3] or 0.0, 6),
                "mean": None if totals[4] is None else round(totals[4], 6),
            },
            "tokens": {c: int(v or 0) for c, v in zip(TOKEN_COLUMNS, totals[5:])},
            "by_frontend": {k: {"startups": s or 0, "tasks": t or 0} for k, s, t in frontend},
            "by_launch_source": grouped("launch_source", "startup"),
            "by_ci": {k: {"startups": s or 0, "tasks": t or 0} for k, s, t in ci},
        }
    finally:
        con.close()


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


def render(report: dict, fmt: str = "table") -> str:
    """The report as ``table`` (for people), ``json`` or ``csv`` (for tools)."""
    if fmt == "json":
        return json.dumps(report, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["section", "key", "metric", "value"])
        writer.writerows(_flat(report))
        return buffer.getvalue()
    lines, section = [], None
    for name, key, metric, value in _flat(report):
        if name != section:
            lines.append(f"\n{name}")
            section = name
        label = f"{key}  {metric}" if key else metric
        lines.append(f"  {label:<44} {'-' if value is None else value}")
    title = "clacky-ipy report" + (f" (last {report['filters']['days']} days)" if report["filters"]["days"] else "")
    title += " (CI excluded)" if report["filters"]["exclude_ci"] else ""
    return title + "\n" + "\n".join(lines).lstrip("\n") + "\n"


def plot(report: dict, path: str | Path) -> None:
    """Daily active devices and tasks per day, as a PNG (needs the ``plot`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [row["day"] for row in report["daily"]]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.plot(days, [row["active_devices"] for row in report["daily"]], marker="o", label="daily active devices")
    ax.plot(days, [row["tasks"] for row in report["daily"]], marker="s", label="tasks per day")
    ax.set_xlabel("day (UTC)")
    ax.set_ylabel("count")
    ax.set_title("clacky-ipy telemetry")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
