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
from datetime import date, datetime, timedelta, timezone
from typing import Any

from . import reach, safe, store

TOKEN_COLUMNS = store.SUMS[1:]

#: The report's queries: over rollups only (see store.py and reach.py), all in one read
#: transaction, so that every breakdown of one report sums to its totals even while collectors
#: write. Each takes the window's first day ('' for everything) and a CI parameter: rollup rows
#: with ci <> it (1 with --exclude-ci, else 2: none left out); the device counts take their scope.
_SUMMED = ", ".join(f"SUM({c})" for c in ("events", "errors", "cost_n", *store.SUMS))
QUERIES = {
    # per day, kind and run: counts and the sums of cost and tokens (summed in Python: exact; in
    # one order, so that floats add up the same however the rows were written)
    "all": "SELECT day, kind, ci, run, dim, key, cost_source, events, errors, cost_n, "
    + ", ".join(store.SUMS)
    + " FROM rollup_daily WHERE dim = 'all' AND day >= ? AND ci <> ? ORDER BY day, kind, ci, run, cost_source",
    # per dimension and key over the period
    "dims": f"SELECT '', kind, 0, run, dim, key, cost_source, {_SUMMED} FROM rollup_daily "
    "WHERE dim <> 'all' AND day >= ? AND ci <> ? GROUP BY kind, run, dim, key, cost_source "
    "ORDER BY kind, run, dim, key, cost_source",
    # per day and key, for the charts: agent runs by status and model (with cost), startups by version
    "charted": "SELECT day, kind, 0, run, dim, key, '', SUM(events), SUM(errors), 0, SUM(cost_usd) "
    "FROM rollup_daily WHERE ((run = 'agent' AND dim IN ('status', 'model')) OR (kind = 'startup' AND "
    "dim = 'version')) AND day >= ? AND ci <> ? GROUP BY day, kind, run, dim, key ORDER BY day, kind, run, dim, key",
    "durations": "SELECT run, dim, key, bucket, SUM(n), MIN(lo), MAX(hi) FROM rollup_durations "
    "WHERE day >= ? AND ci <> ? GROUP BY run, dim, key, bucket",
    # the same over every day (no --days): the histograms kept without their day
    "durations_total": "SELECT run, dim, key, bucket, SUM(n), MIN(lo), MAX(hi) FROM rollup_durations_total "
    "WHERE ci <> ? GROUP BY run, dim, key, bucket",
    # every device figure, device-free: a few rows per day whatever the number of devices
    "reach": "SELECT figure, key, day, n FROM rollup_reach WHERE scope = ? AND n <> 0",
}
QUANTILES = {"p50": 0.50, "p95": 0.95}
#: The task runs the report tells apart (store.run_of): agent runs and tracked cells.
RUNS = {"agent": "agent_runs", "cell": "tracked_cells"}
#: The adoption tables: the startup key, and the table's name.
ADOPTION = {
    "version": "versions",
    "os": "os",
    "python_version": "python_versions",
    "ipython_version": "ipython_versions",
    "frontend": "frontends",
    "container": "containers",
    "launch_source": "launch_sources",
}


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


def _percentiles(buckets: Iterable[tuple]) -> dict[str, dict[str, Any]]:
    """Per key: tasks with a duration, and p50/p95 at nearest rank from the merged histogram."""
    by_key: dict[str, list[tuple]] = {}
    for key, index, n, lo, hi in _merged((key or "(none)", *rest) for key, *rest in buckets):
        by_key.setdefault(key, []).append((index, n, lo, hi))
    out = {}
    for key in sorted(by_key):
        rows = sorted(by_key[key])
        total = sum(n for _, n, _, _ in rows)
        figures: dict[str, Any] = {"tasks": total}
        for name, q in QUANTILES.items():
            rank, seen = max(1, math.ceil(q * total)), 0
            for index, n, lo, hi in rows:
                seen += n
                if seen >= rank:
                    figures[name] = _duration(store.bucket_value(index, lo, hi))
                    break
        out[key] = figures
    return out


def _merged(rows: Iterable[tuple]) -> list[tuple]:
    """Histogram rows (key, bucket, n, lo, hi) with equal key and bucket merged."""
    got: dict[tuple, list] = {}
    for key, index, n, lo, hi in rows:
        seen = got.get((key, index))
        if seen is None:
            got[(key, index)] = [n, lo, hi]
        else:
            seen[0], seen[1], seen[2] = seen[0] + n, min(seen[1], lo), max(seen[2], hi)
    return [(key, index, *values) for (key, index), values in got.items()]


def _duration(value: float) -> int | float:
    """Whole milliseconds from a second (0.05 % at most), four significant digits below.

    With the histogram's `store.ALPHA` (0.5 %) a percentile is within 0.6 % of the true one.
    """
    if value >= 1000 or float(value).is_integer():
        return round(value)
    return float(f"{value:.4g}")


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _money(value: Any) -> float:
    return round(float(value), 6)


class _Sums:
    """Counts and sums of a group of rollup rows (exact: Python integers)."""

    __slots__ = ("cost_n", "errors", "events", "sources", "sums")

    def __init__(self) -> None:
        self.events = self.errors = self.cost_n = 0
        self.sums = dict.fromkeys(store.SUMS, 0)
        self.sources: dict[str, int] = {}

    def add(self, source: str, events: int, errors: int, cost_n: int, sums: Iterable[Any]) -> None:
        self.events += events
        self.errors += errors
        self.cost_n += cost_n
        for column, value in zip(store.SUMS, sums):
            self.sums[column] += value
        self.sources[source] = self.sources.get(source, 0) + events

    def merge(self, other: _Sums) -> None:
        for source, n in other.sources.items():
            self.add(source, n, 0, 0, [0] * len(store.SUMS))
        self.events += other.events - sum(other.sources.values())
        self.errors += other.errors
        self.cost_n += other.cost_n
        for column, value in other.sums.items():
            self.sums[column] += value


def _model_rows(name: str, groups: dict[str, _Sums], durations: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The per model (or provider) table of agent runs, most runs first."""
    merged: dict[str, _Sums] = {}
    for key, got in groups.items():  # a key literally named (none) is counted with the unset ones
        merged.setdefault(key or "(none)", _Sums()).merge(got)
    out = []
    for key, got in sorted(merged.items(), key=lambda kv: (-kv[1].events, kv[0])):
        sums, timing = got.sums, durations.get(key, {})
        sources = {k or "(none)": n for k, n in sorted(got.sources.items(), key=lambda kv: (-kv[1], kv[0]))}
        out.append(
            {
                name: key or "(none)",
                "agent_runs": got.events,
                "errors": got.errors,
                "error_share": _share(got.errors, got.events),
                "p50_ms": timing.get("p50"),
                "p95_ms": timing.get("p95"),
                **{column: int(sums[column]) for column in TOKEN_COLUMNS},
                "cache_hit_share": _share(sums["cache_hit_requests"], sums["cache_total_requests"]),
                "cost_usd": _money(sums["cost_usd"]),
                "cost_per_run": _money(sums["cost_usd"] / got.cost_n) if got.cost_n else None,
                "cost_source": next(iter(sources)) if sources else "(none)",
                "cost_sources": sources,
            }
        )
    return out


def build(
    db: str | os.PathLike, days: int | None = None, exclude_ci: bool = False, now: datetime | None = None
) -> dict:
    """The report as a dict of sections (see README, "The report"), read from rollups only,
    in one read transaction (one snapshot: every breakdown sums to its total).

    `db` is an SQLite path or a ``postgresql://`` URL; a database that is missing, not
    ours or not yet rebuilt raises `store.StoreError` (one line for the operator).
    """
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    since = first_day(days, now)
    window = [since, 1 if exclude_ci else 2]  # rollup rows with ci <> this: 1 (CI) left out, or none
    db_store = store.open_store(db, create=False)
    try:
        with db_store.snapshot() as query:
            params = {"reach": [1 if exclude_ci else 0], "durations_total": window[1:]}
            durations = "durations" if since else "durations_total"
            got = {
                name: _read(query, sql, params.get(name, window))
                for name, sql in QUERIES.items()
                if name not in ("durations", "durations_total") or name == durations
            }
            got["durations"] = got.pop(durations)
    finally:
        db_store.close()
    return _figures(got, days, exclude_ci, since, now)


def _read(query: Any, sql: str, params: list[Any]) -> list[tuple]:
    """A query's rows; sums beyond SQLite's 64-bit integers as floats (its SUM refuses them)."""
    try:
        return query(sql, params)
    except store.StoreError as exc:
        if "integer overflow" not in str(exc):
            raise
        return query(sql.replace("SUM(", "TOTAL("), params)


def _figures(got: dict[str, list[tuple]], days: int | None, exclude_ci: bool, since: str, now: datetime) -> dict:
    kinds = {"startup": 0, "task": 0}
    totals, by_run = _Sums(), {run: _Sums() for run in RUNS}
    per_day: dict[str, dict[str, Any]] = {}
    by_ci: dict[str, dict[str, int]] = {}
    dims: dict[tuple[str, str, str], dict[str, _Sums]] = {}  # (kind, run, dim) -> key -> sums
    day_dims: dict[tuple[str, str], dict[tuple[str, str], _Sums]] = {}  # (run, dim) -> (day, key) -> sums
    for day, kind, ci, run, _, _, source, events, errors, cost_n, *sums in got["all"]:
        kinds[kind] = kinds.get(kind, 0) + events
        figures = per_day.setdefault(day, {"startups": 0, "tasks": 0, "agent_runs": 0, "tracked_cells": 0, "cost": 0})
        figures[kind + "s"] = figures.get(kind + "s", 0) + events
        if run in RUNS:
            figures[RUNS[run]] += events
            by_run[run].add(source, events, errors, cost_n, sums)
        figures["cost"] += sums[0]
        if kind == "task":
            totals.add(source, events, errors, cost_n, sums)
        split = by_ci.setdefault(_CI_KEYS[ci], {"startups": 0, "tasks": 0})
        split[kind + "s"] = split.get(kind + "s", 0) + events
    for _, kind, _, run, dim, key, source, events, errors, cost_n, *sums in got["dims"]:
        dims.setdefault((kind, run, dim), {}).setdefault(key, _Sums()).add(source, events, errors, cost_n, sums)
    for day, _, _, run, dim, key, _, events, errors, _, cost in got["charted"]:
        day_dims.setdefault((run, dim), {}).setdefault((day, key), _Sums()).add("", events, errors, 0, [cost])

    def counted(kind: str, dim: str, runs: Iterable[str] = ("agent", "cell")) -> dict[str, int]:
        pairs = []
        for run in runs if kind == "task" else ("",):
            pairs += [(key, got.events) for key, got in dims.get((kind, run, dim), {}).items()]
        return _counts(pairs)

    histograms: dict[tuple[str, str], list[tuple]] = {}
    for run, dim, key, index, n, lo, hi in got["durations"]:
        histograms.setdefault((run, dim), []).append((key, index, n, lo, hi))
    reach_rows: dict[str, list[tuple[str, str, int]]] = {}
    for figure, key, day, n in got["reach"]:
        reach_rows.setdefault(figure, []).append((key, day, n))

    def in_window(figure: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, day, n in reach_rows.get(figure, []):
            if day >= since:
                out[key] = out.get(key, 0) + n
        return out

    active = {
        w: _Running((day, n) for key, day, n in reach_rows.get("active", []) if key == str(w)) for w in reach.WINDOWS
    }
    first = {day: n for _, day, n in reach_rows.get("first", [])}
    event_days = sorted(per_day)
    daily = []
    if event_days:
        start = max(since, event_days[0]) if since else event_days[0]
        statuses: dict[str, dict[str, int]] = {}
        for (d, key), got_sums in day_dims.get(("agent", "status"), {}).items():
            statuses.setdefault(d, {})[key or "(none)"] = statuses.get(d, {}).get(key or "(none)", 0) + got_sums.events
        for ordinal in range(date.fromisoformat(start).toordinal(), date.fromisoformat(event_days[-1]).toordinal() + 1):
            day = reach.iso(ordinal)
            figures = per_day.get(day, {})
            dau, new = active[1].at(day), first.get(day, 0)
            by_status = statuses.get(day, {})
            daily.append(
                {
                    "day": day,
                    "active_devices": dau,
                    "weekly_active_devices": active[7].at(day),
                    "monthly_active_devices": active[30].at(day),
                    "new_devices": new,
                    "returning_devices": dau - new,
                    "startups": figures.get("startups", 0),
                    "tasks": figures.get("tasks", 0),
                    "agent_runs": figures.get("agent_runs", 0),
                    "tracked_cells": figures.get("tracked_cells", 0),
                    "agent_runs_by_status": dict(sorted(by_status.items(), key=lambda kv: (-kv[1], kv[0]))),
                    "cost_usd": _money(figures.get("cost", 0)),
                }
            )
    last_day = daily[-1] if daily else {}
    by_frontend: dict[str, dict[str, int]] = {}
    for kind in ("startup", "task"):
        for key, n in counted(kind, "frontend").items():
            by_frontend.setdefault(key, {"startups": 0, "tasks": 0})[kind + "s"] += n
    status_hist = _merged(row for run in RUNS for row in histograms.get((run, "status"), []))
    devices_by = {dim: in_window(dim) for dim in ADOPTION}
    adoption = {
        dim: [
            {dim: key, "startups": n, "devices": devices_by[dim].get("" if key == "(none)" else key, 0)}
            for key, n in counted("startup", dim).items()
        ]
        for dim in ADOPTION
    }
    for dim in ADOPTION:  # a device whose latest startup is in the period but not counted by startups there: none
        adoption[dim].sort(key=lambda row: (-row["devices"], -row["startups"], row[dim]))
    errors = {}
    for run, name in RUNS.items():
        for key, s in dims.get(("task", run, "error_kind"), {}).items():
            if key:
                errors.setdefault(key, {"error_kind": key, "agent_runs": 0, "tracked_cells": 0})[name] += s.events
    cost = totals.sums["cost_usd"]
    return {
        "filters": {"days": days, "exclude_ci": exclude_ci, "since": since or None},
        "unique_devices": sum(in_window("startup").values()),
        "active_devices": sum(in_window("last").values()),
        "new_devices": sum(in_window("first").values()),
        "startups": kinds["startup"],
        "tasks": kinds["task"],
        "agent_runs": by_run["agent"].events,
        "tracked_cells": by_run["cell"].events,
        "latest_day": {
            key: last_day.get(key)
            for key in ("day", "active_devices", "weekly_active_devices", "monthly_active_devices")
        },
        "daily": daily,
        "tasks_by_status": counted("task", "status"),
        "agent_runs_by_status": counted("task", "status", ("agent",)),
        "tracked_cells_by_status": counted("task", "status", ("cell",)),
        "tasks_by_model": counted("task", "model"),
        "tasks_by_provider": counted("task", "provider"),
        "tasks_by_trigger": counted("task", "trigger"),
        "duration_ms": _percentiles(status_hist),
        "duration_ms_by_run": {name: _percentiles(histograms.get((run, "status"), [])) for run, name in RUNS.items()},
        "models": _model_rows(
            "model", dims.get(("task", "agent", "model"), {}), _percentiles(histograms.get(("agent", "model"), []))
        ),
        "providers": _model_rows(
            "provider",
            dims.get(("task", "agent", "provider"), {}),
            _percentiles(histograms.get(("agent", "provider"), [])),
        ),
        "cost_usd": {
            "total": _money(cost),
            "mean": _money(cost / totals.cost_n) if totals.cost_n else None,
            "agent_runs": _money(by_run["agent"].sums["cost_usd"]),
        },
        "tokens": {c: int(totals.sums[c]) for c in TOKEN_COLUMNS},
        "by_frontend": dict(sorted(by_frontend.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))),
        "by_launch_source": counted("startup", "launch_source"),
        "by_ci": dict(sorted(by_ci.items())),
        "adoption": adoption,
        "error_kinds": sorted(errors.values(), key=lambda r: (-r["agent_runs"] - r["tracked_cells"], r["error_kind"])),
        "cohorts": _cohorts(reach_rows.get("cohort", []), since, now),
        "daily_models": _daily_keys(day_dims.get(("agent", "model"), {}), "model", "agent_runs", since),
        "daily_versions": _daily_keys(day_dims.get(("", "version"), {}), "version", "startups", since),
    }


class _Running:
    """A running sum of daily changes, read at increasing days (one pass over the changes)."""

    def __init__(self, changes: Iterable[tuple[str, int]]) -> None:
        self.changes, self.i, self.total = sorted(changes), 0, 0

    def at(self, day: str) -> int:
        while self.i < len(self.changes) and self.changes[self.i][0] <= day:
            self.total += self.changes[self.i][1]
            self.i += 1
        return self.total


def _cohorts(rows: list[tuple[str, str, int]], since: str, now: datetime) -> list[dict[str, Any]]:
    """Weekly cohorts: devices first seen in week W (its Monday), and the share seen in W+1..W+8
    (None for a week that has not begun yet)."""
    weeks: dict[str, dict[int, int]] = {}
    for key, week, n in rows:
        weeks.setdefault(week, {})[int(key)] = weeks.get(week, {}).get(int(key), 0) + n
    today = now.date().toordinal()
    start = reach.iso(reach.monday(date.fromisoformat(since).toordinal())) if since else ""
    out = []
    for week in sorted(weeks):
        if week < start or not weeks[week].get(0):
            continue
        size, monday = weeks[week][0], date.fromisoformat(week).toordinal()
        retained = [
            weeks[week].get(k, 0) if monday + 7 * k <= today else None for k in range(1, reach.COHORT_WEEKS + 1)
        ]
        out.append(
            {
                "week": week,
                "devices": size,
                "retained": retained,
                "share": [None if n is None else _share(n, size) for n in retained],
            }
        )
    return out


def _daily_keys(groups: dict[tuple[str, str], Any], name: str, count: str, since: str) -> list[dict[str, Any]]:
    """One row per day and key (a chart's series, a spreadsheet's pivot)."""
    out = []
    for (day, key), got in sorted(groups.items()):
        if day >= since:
            row = {"day": day, name: key or "(none)", count: got.events}
            if name == "model":
                row["cost_usd"] = _money(got.sums["cost_usd"])
            out.append(row)
    return out


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
    "active_devices": "active_devices (any event in the period)",
    "new_devices": "new_devices (first seen in the period)",
    "agent_runs": "agent_runs (trigger magic, api or none)",
    "tracked_cells": "tracked_cells (trigger cell)",
}
_TOKEN_HEADS = tuple(TOKEN_COLUMNS)


def tables(report: dict) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """Every table of the report, {name: (header, rows)}: one row per day or key. The text
    report, ``--csv-table NAME`` and the HTML page all show these (one definition)."""
    totals = [
        [name, report[name]]
        for name in (
            "agent_runs",
            "tracked_cells",
            "active_devices",
            "unique_devices",
            "new_devices",
            "startups",
            "tasks",
        )
    ]
    latest = report["latest_day"]
    if latest.get("day"):
        totals += [
            [f"{key} on {latest['day']}", latest[key]]
            for key in ("active_devices", "weekly_active_devices", "monthly_active_devices")
        ]
    totals += [
        ["cost_usd", report["cost_usd"]["total"]],
        ["cost_usd per run with a cost", report["cost_usd"]["mean"]],
    ]
    totals += [[name, value] for name, value in report["tokens"].items()]
    statuses = sorted(
        {s for row in report["daily"] for s in row["agent_runs_by_status"]},
        key=lambda s: (-report["agent_runs_by_status"].get(s, 0), s),
    )
    day_keys = (
        "active_devices", "weekly_active_devices", "monthly_active_devices", "new_devices", "returning_devices",
        "startups", "agent_runs", "tracked_cells",
    )  # fmt: skip
    daily = (
        ["day", *day_keys, *(f"agent_runs_{s}" for s in statuses), "cost_usd"],
        [
            [row["day"], *(row[k] for k in day_keys), *(row["agent_runs_by_status"].get(s, 0) for s in statuses),
             row["cost_usd"]]
            for row in report["daily"]
        ],
    )  # fmt: skip
    model_heads = ["agent_runs", "errors", "error_share", "p50_ms", "p95_ms", *_TOKEN_HEADS, "cache_hit_share",
                   "cost_usd", "cost_per_run", "cost_source"]  # fmt: skip
    by_run = report["duration_ms_by_run"]
    status_keys = sorted(
        set(report["agent_runs_by_status"]) | set(report["tracked_cells_by_status"]),
        key=lambda s: (-report["tasks_by_status"].get(s, 0), s),
    )
    out: dict[str, tuple[list[str], list[list[Any]]]] = {
        "totals": (["figure", "value"], totals),
        "daily": daily,
        "models": (["model", *model_heads], [[r["model"], *(r[h] for h in model_heads)] for r in report["models"]]),
        "providers": (
            ["provider", *model_heads],
            [[r["provider"], *(r[h] for h in model_heads)] for r in report["providers"]],
        ),
        "statuses": (
            ["status", "agent_runs", "agent_p50_ms", "agent_p95_ms", "tracked_cells", "cell_p50_ms", "cell_p95_ms"],
            [
                [
                    s,
                    report["agent_runs_by_status"].get(s, 0),
                    by_run["agent_runs"].get(s, {}).get("p50"),
                    by_run["agent_runs"].get(s, {}).get("p95"),
                    report["tracked_cells_by_status"].get(s, 0),
                    by_run["tracked_cells"].get(s, {}).get("p50"),
                    by_run["tracked_cells"].get(s, {}).get("p95"),
                ]
                for s in status_keys
            ],
        ),
        "triggers": (["trigger", "tasks"], [[k, n] for k, n in report["tasks_by_trigger"].items()]),
        "errors": (
            ["error_kind", "agent_runs", "tracked_cells"],
            [[r["error_kind"], r["agent_runs"], r["tracked_cells"]] for r in report["error_kinds"]],
        ),
    }
    for dim, name in ADOPTION.items():
        out[name] = (
            [dim, "startups", "devices"],
            [[r[dim], r["startups"], r["devices"]] for r in report["adoption"][dim]],
        )
    out["ci"] = (["ci", "startups", "tasks"], [[k, v["startups"], v["tasks"]] for k, v in report["by_ci"].items()])
    weeks = range(1, reach.COHORT_WEEKS + 1)
    out["cohorts"] = (
        ["week", "devices", *(f"w{k}" for k in weeks), *(f"w{k}_devices" for k in weeks)],
        [[c["week"], c["devices"], *c["share"], *c["retained"]] for c in report["cohorts"]],
    )
    out["daily_models"] = (
        ["day", "model", "agent_runs", "cost_usd"],
        [[r["day"], r["model"], r["agent_runs"], r["cost_usd"]] for r in report["daily_models"]],
    )
    out["daily_versions"] = (
        ["day", "version", "startups"],
        [[r["day"], r["version"], r["startups"]] for r in report["daily_versions"]],
    )
    return out


#: What the text report leaves out (the CSV tables and the page have them): the long day-by-key lists.
_TEXT_SKIPS = ("daily_models", "daily_versions")


def csv_table(report: dict, name: str) -> str:
    """One table as CSV: a header, then one row per day or key (spreadsheets, ``pandas.read_csv``).

    Received text is quoted and made safe as in `render`; numbers are bare; an empty cell is a
    figure that does not exist (a share of nothing, a week not begun)."""
    header, rows = tables(report)[name]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows([safe.csv_cell(cell) for cell in row] for row in rows)
    return buffer.getvalue()


def text_cell(value: Any) -> str:
    """A figure as people read it: thousands separators, '-' for none, received text escaped."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.6f}".rstrip("0").rstrip(".") if abs(value) < 1e15 else f"{value:.6g}"
    return safe.printable(str(value))


def render(report: dict, fmt: str = "table") -> str:
    """The report as ``table`` (for people), ``json`` or ``csv`` (for tools; `csv_table` for one table).

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
    lines = []
    for name, (header, rows) in tables(report).items():
        if name in _TEXT_SKIPS or not rows:
            continue
        if name == "totals":
            rows = [[TOTAL_LABELS.get(figure, figure), value] for figure, value in rows]
            header = ["", ""]
        header = [safe.printable(h) for h in header]  # a day's columns are named by received statuses
        cells = [[text_cell(c) for c in row] for row in rows]
        widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
        lines.append(f"\n{name}")
        if name != "totals":
            lines.append(
                "  " + "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))
            )
        for row in cells:
            lines.append(
                "  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            )
    title = "clacky-ipy report" + (f" (last {report['filters']['days']} days)" if report["filters"]["days"] else "")
    title += " (CI excluded)" if report["filters"]["exclude_ci"] else ""
    return title + "\n" + "\n".join(lines).lstrip("\n") + "\n"
