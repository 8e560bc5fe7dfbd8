"""The collector's store and report as they were before rollups (git 951d7d2), for migration tests.

A database written by that version has raw events only (and seven indexes for the old
report's queries); `clacky-ipy rebuild` must turn it into one the new report reads with
the same figures. `OldStore` writes such a database exactly as that version did, and
`old_build` is that version's report, to compare figures with.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from clacky_ipy import payload

_SQL_TYPES = {payload.STR: "TEXT", payload.NUM: "NUMERIC", payload.BOOL: "INTEGER"}
INDEXES = {
    "events_day_device": "(substr(received_at, 1, 10), kind, device_id)",
    "events_task_duration": "(status, duration_ms) WHERE kind = 'task'",
    "events_task_model": "(model) WHERE kind = 'task'",
    "events_task_provider": "(provider) WHERE kind = 'task'",
    "events_task_trigger": "(trigger) WHERE kind = 'task'",
    "events_startup_source": "(launch_source) WHERE kind = 'startup'",
    "events_split": "(frontend, ci, kind)",
}


class OldStore:
    """One SQLite file in WAL mode, raw events and the old report's indexes."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path))
        self._db.execute("PRAGMA journal_mode=WAL")
        columns = ", ".join(f"{key} {_SQL_TYPES[kind]}" for key, kind in payload.COLUMNS.items())
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, received_at TEXT NOT NULL, "
                f"kind TEXT NOT NULL, {columns})"
            )
            for name, definition in INDEXES.items():
                self._db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON events {definition}")
        self._insert = {
            event: f"INSERT INTO events (received_at, kind, {', '.join(keys)}) VALUES (?, ?{', ?' * len(keys)})"
            for event, keys in payload.KEYS.items()
        }

    def add(self, event: str, fields: dict[str, Any], received_at: str) -> None:
        row = [received_at, event, *(fields.get(key) for key in payload.KEYS[event])]
        with self._db:
            self._db.execute(self._insert[event], row)

    def close(self) -> None:
        self._db.close()


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


def old_build(db: str | Path, days: int | None = None, exclude_ci: bool = False, now: datetime | None = None) -> dict:
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
