"""Where the collector keeps events: one small interface, two engines, rollups kept at ingest.

`open_store` opens an SQLite file (the embedded default, WAL) for a path and PostgreSQL
(psycopg 3) for a ``postgresql://`` URL, so several collector processes on several hosts
can share one database. Both engines get the same tables and, wherever the dialects
allow, the same SQL; `_SQLite` and `_Postgres` hold the few differences.

Raw events are kept as they always were (the ``events`` table). Next to them, in the
SAME transaction as each batch of raw rows, the store keeps the rollups every report
figure is read from (so a report costs the same at ten thousand or ten million events):

- ``rollup_daily``: per day, event kind, CI flag, run (agent run or tracked cell), dimension
  (``all``, status, model, provider, version, os...) and cost source, the number of events and
  errors and the sums of cost and tokens;
- ``rollup_device_days``: which devices were active each day (startups and tasks, from CI
  and not), one row per device and day;
- ``rollup_devices``: each device's first and last event, and its latest startup (per scope);
- ``rollup_reach``: every device's part in the device figures, summed (see reach.py): daily,
  weekly and monthly active devices, new devices, cohorts and adoption without counting devices;
- ``rollup_durations``: per run, status (and model, provider), day and CI flag a log-bucket
  histogram of ``duration_ms`` (each bucket's count, smallest and largest value): mergeable
  across days, so percentiles over any window are within `ALPHA` of the true value;
  ``rollup_durations_total`` the same over all days (what a report of everything reads).

`rebuild` recomputes every rollup from the raw events: repair, and the migration of a
database written by an earlier version (which has raw events only).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Union

from . import payload, reach

#: A query inside `locked`: ``query(sql, params)`` -> its rows (none for a statement).
Query = Callable[..., list]

#: Summed per rollup row, next to the event count (tokens and requests are counts too).
SUMS = payload.AMOUNTS
#: The dimensions each event is counted by (besides ``all``), one rollup row each.
DIMS: dict[str, tuple[str, ...]] = {
    "task": ("status", "model", "provider", "trigger", "frontend", "version", "error_kind"),
    "startup": ("launch_source", "frontend", "version", "os", "python_version", "ipython_version", "container"),
}
#: The dimensions duration histograms are kept by, per kind of run (models and providers: agent runs).
DURATION_DIMS: dict[str, tuple[str, ...]] = {"agent": ("status", "model", "provider"), "cell": ("status",)}
#: Bumped when the rollups change meaning; a database without it needs `rebuild`.
SCHEMA = "4"

#: Relative accuracy of the duration histograms' buckets. The report rounds what it shows by
#: at most another 0.05 %: percentiles are within 0.6 % of the true nearest-rank value.
ALPHA = 0.005
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LN_GAMMA = math.log(GAMMA)
#: The bucket of a zero duration (log buckets cover positive values only).
ZERO_BUCKET = -(10**6)

#: CI as a rollup key: -1 not said, 0 not CI, 1 CI (``--exclude-ci`` keeps ci <> 1).
CI_SQL = "CASE WHEN ci IS NULL THEN -1 WHEN ci = 0 THEN 0 ELSE 1 END"
DAY_SQL = "substr(received_at, 1, 10)"
#: A task is a tracked cell (``trigger`` cell) or an agent run (magic, api, or none: the gem's).
RUN_SQL = "CASE WHEN kind <> 'task' THEN '' WHEN trigger = 'cell' THEN 'cell' ELSE 'agent' END"


def run_of(event: str, fields: dict[str, Any]) -> str:
    """`RUN_SQL` in Python: '' for a startup, ``cell`` for a tracked cell, else ``agent``."""
    if event != "task":
        return ""
    return "cell" if fields.get("trigger") == "cell" else "agent"


#: Indexes earlier versions kept on raw events for the report's queries: the report reads
#: rollups now, so `rebuild` drops them (each cost every insert a little).
OLD_INDEXES = (
    "events_kind_time",
    "events_time",
    "events_day_device",
    "events_task_duration",
    "events_task_model",
    "events_task_provider",
    "events_task_trigger",
    "events_startup_source",
    "events_split",
)

_SQL_TYPES = {payload.STR: "TEXT", payload.NUM: "NUMERIC", payload.BOOL: "INTEGER"}
_SUM_COLUMNS = ", ".join(f"{c} NUMERIC NOT NULL" for c in SUMS)
_ADOPTION_COLUMNS = ", ".join(f"{c} TEXT NOT NULL" for c in reach.ADOPTION)
ROLLUP_TABLES: dict[str, str] = {
    "rollup_daily": "day TEXT NOT NULL, kind TEXT NOT NULL, ci INTEGER NOT NULL, run TEXT NOT NULL, "
    "dim TEXT NOT NULL, key TEXT NOT NULL, cost_source TEXT NOT NULL, events BIGINT NOT NULL, "
    f"errors BIGINT NOT NULL, cost_n BIGINT NOT NULL, {_SUM_COLUMNS}, "
    "PRIMARY KEY (day, kind, ci, run, dim, key, cost_source)",
    # One row per device and day (a device's days are its rows), CI events apart.
    "rollup_device_days": "device_id TEXT NOT NULL, day TEXT NOT NULL, startups BIGINT NOT NULL, "
    "tasks BIGINT NOT NULL, ci_startups BIGINT NOT NULL, ci_tasks BIGINT NOT NULL, PRIMARY KEY (device_id, day)",
    # Per device and scope (reach.SCOPES): first and last event, and its latest startup's values.
    "rollup_devices": "device_id TEXT NOT NULL, scope INTEGER NOT NULL, first_seen TEXT NOT NULL, "
    f"last_seen TEXT NOT NULL, startup_at TEXT NOT NULL, {_ADOPTION_COLUMNS}, PRIMARY KEY (device_id, scope)",
    # The sums of every device's reach.contribution: device figures without counting devices.
    "rollup_reach": "scope INTEGER NOT NULL, figure TEXT NOT NULL, key TEXT NOT NULL, day TEXT NOT NULL, "
    "n BIGINT NOT NULL, PRIMARY KEY (scope, figure, key, day)",
    # Keyed run, dim, key and bucket first: the report's GROUP BY walks the key in order.
    "rollup_durations": "run TEXT NOT NULL, dim TEXT NOT NULL, key TEXT NOT NULL, bucket BIGINT NOT NULL, "
    "day TEXT NOT NULL, ci INTEGER NOT NULL, n BIGINT NOT NULL, lo DOUBLE PRECISION NOT NULL, "
    "hi DOUBLE PRECISION NOT NULL, PRIMARY KEY (run, dim, key, bucket, day, ci)",
    # The same histograms over every day: a report of everything reads a day's worth of rows.
    "rollup_durations_total": "run TEXT NOT NULL, dim TEXT NOT NULL, key TEXT NOT NULL, bucket BIGINT NOT NULL, "
    "ci INTEGER NOT NULL, n BIGINT NOT NULL, lo DOUBLE PRECISION NOT NULL, "
    "hi DOUBLE PRECISION NOT NULL, PRIMARY KEY (run, dim, key, bucket, ci)",
}
_KEYS = {
    "rollup_daily": ("day", "kind", "ci", "run", "dim", "key", "cost_source"),
    "rollup_device_days": ("device_id", "day"),
    "rollup_devices": ("device_id", "scope"),
    "rollup_reach": ("scope", "figure", "key", "day"),
    "rollup_durations": ("run", "dim", "key", "bucket", "day", "ci"),
    "rollup_durations_total": ("run", "dim", "key", "bucket", "ci"),
}


def _add(table: str, column: str) -> str:
    return f"{column} = {table}.{column} + excluded.{column}"


def _least(table: str, column: str, smaller: bool = True) -> str:
    """min/max of two values in the same SQL on both engines (SQLite's MIN(a, b) is PostgreSQL's LEAST)."""
    new, old = f"excluded.{column}", f"{table}.{column}"
    return f"{column} = CASE WHEN {new} {'<' if smaller else '>'} {old} THEN {new} ELSE {old} END"


_MERGE = {
    "rollup_daily": [_add("rollup_daily", c) for c in ("events", "errors", "cost_n", *SUMS)],
    "rollup_device_days": [_add("rollup_device_days", c) for c in ("startups", "tasks", "ci_startups", "ci_tasks")],
    # The latest startup is decided under the device's lock (reach.later): written as computed.
    "rollup_devices": [_least("rollup_devices", "first_seen"), _least("rollup_devices", "last_seen", False)]
    + [f"{c} = excluded.{c}" for c in ("startup_at", *reach.ADOPTION)],
    "rollup_reach": [_add("rollup_reach", "n")],
    **{
        table: [_add(table, "n"), _least(table, "lo"), _least(table, "hi", False)]
        for table in ("rollup_durations", "rollup_durations_total")
    },
}
_COLUMNS = {
    "rollup_daily": (*_KEYS["rollup_daily"], "events", "errors", "cost_n", *SUMS),
    "rollup_device_days": (*_KEYS["rollup_device_days"], "startups", "tasks", "ci_startups", "ci_tasks"),
    "rollup_devices": (*_KEYS["rollup_devices"], "first_seen", "last_seen", "startup_at", *reach.ADOPTION),
    "rollup_reach": (*_KEYS["rollup_reach"], "n"),
    "rollup_durations": (*_KEYS["rollup_durations"], "n", "lo", "hi"),
    "rollup_durations_total": (*_KEYS["rollup_durations_total"], "n", "lo", "hi"),
}
UPSERT = {
    table: f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
    f"ON CONFLICT ({', '.join(_KEYS[table])}) DO UPDATE SET {', '.join(_MERGE[table])}"
    for table, columns in _COLUMNS.items()
}


class StoreError(Exception):
    """An operator's problem with the database (missing, corrupt, foreign, unreachable, old).

    ``str()`` is one line the command line prints as it is.
    """


def utc_now() -> str:
    """ISO 8601 in UTC with microseconds: sorts as text, and its first 10 characters are the day."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def bucket(value: float) -> int:
    """The histogram bucket of a duration: bucket i holds (GAMMA**(i-1), GAMMA**i]."""
    return math.ceil(math.log(value) / LN_GAMMA) if value > 0 else ZERO_BUCKET


def bucket_value(index: int, lo: float, hi: float) -> float:
    """A bucket's value: the point within ALPHA of all its bucket, moved into [lo, hi] (closer still)."""
    if index == ZERO_BUCKET:
        return 0.0
    return min(max(2 * GAMMA**index / (GAMMA + 1), lo), hi)


def number(value: Any) -> Any:
    """A value read back as int or float (PostgreSQL's numeric arrives as Decimal)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


#: What is true when Ctrl-C stops a rebuild after its commit (the statistics' refresh, the count).
REBUILT = "the rollups were rebuilt"


def _after_commit(what: str, then: Any) -> Any:
    """`then()`, run once a change is committed: a Ctrl-C there says what is already true
    (``KeyboardInterrupt(what)``); before the commit, a Ctrl-C rolls the transaction back."""
    try:
        return then()
    except KeyboardInterrupt:
        raise KeyboardInterrupt(what) from None


def is_url(db: str | os.PathLike) -> bool:
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def open_store(db: str | os.PathLike, *, create: bool = True) -> Store:
    """The store at `db`: a ``postgresql://`` (or ``postgres://``) URL, else an SQLite file's path.

    With ``create=False`` (the report) nothing is created or written: a missing or empty
    database is a `StoreError`, as is a corrupt, foreign or unreachable one in any case,
    and one written by an earlier version whose rollups `rebuild` has not made yet.
    """
    return Store(db, create=create)


def _engine(db: str | os.PathLike) -> _Engine:
    return _Postgres(db) if is_url(db) else _SQLite(Path(db))


@dataclass
class Rebuilt:
    """What `rebuild` did: the raw events it read, and how long it took."""

    events: int
    seconds: float


def rebuild(db: str | os.PathLike) -> Rebuilt:
    """Recompute every rollup from the raw events, in one transaction (writers wait meanwhile)."""
    store = Store(db, create=True, migrate=True)
    try:
        return store.rebuild()
    finally:
        store.close()


class Store:
    """Raw events plus their rollups; one connection, shared under a lock (transactions are short)."""

    def __init__(self, db: str | os.PathLike, *, create: bool = True, migrate: bool = False) -> None:
        self.engine = engine = _engine(db)
        self.path = engine.name  # what the operator gave (a URL without its password)
        self._lock = threading.Lock()
        engine.connect(create and not migrate)  # a rebuild needs an existing database
        try:
            engine.prepare(create, migrate)
        except BaseException:
            engine.close()
            raise
        self._insert = {
            event: f"INSERT INTO events (received_at, kind, {', '.join(keys)}) VALUES (?, ?{', ?' * len(keys)})"
            for event, keys in payload.KEYS.items()
        }

    def add_batch(self, rows: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """Store cleaned events ``(received_at, event, fields)`` and their rollups in one
        transaction, committed when this returns; a `StoreError` if nothing was stored."""
        if not rows:
            return
        raw: dict[str, list[list[Any]]] = {event: [] for event in payload.KEYS}
        for received_at, event, fields in rows:
            values = [fields.get(key) for key in payload.KEYS[event]]
            raw[event].append([received_at, event, *(int(v) if type(v) is bool else v for v in values)])
        inserts = [(self._insert[event], params) for event, params in raw.items() if params]
        tables, devices = _rollups(rows)
        engine = self.engine

        def work(tx: _Tx) -> None:
            # Device state first (its locks before any rollup row's), then every table in one order.
            keyed = {**tables, **_device_changes(tx, devices)}
            upserts = engine.bindable({t: keyed[t] for t in ROLLUP_TABLES if t in keyed})
            tx.run_all([*inserts, *((UPSERT[table], params) for table, params in upserts if params)])

        with self._lock:
            engine.write(work, f"could not store {len(rows)} events")

    def add(self, event: str, fields: dict[str, Any], received_at: str | None = None) -> None:
        """Store one cleaned event and commit before returning."""
        self.add_batch([(received_at or utc_now(), event, fields)])

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Rows of one read-only query (``?`` placeholders), numbers as int or float."""
        with self._lock:
            return [tuple(number(v) for v in row) for row in self.engine.read(sql, params)]

    @contextmanager
    def snapshot(self) -> Iterator[Callable[[str, Sequence[Any]], list[tuple]]]:
        """Reads that all see one commit: ``with store.snapshot() as query: query(sql, params)``
        (one read transaction: SQLite's ``BEGIN``, PostgreSQL's ``REPEATABLE READ``)."""
        with self._lock, self.engine.snapshot() as read:
            if not self.engine.decimals:  # SQLite's values are int, float and str already
                yield lambda sql, params=(): read(sql, params)
                return
            yield lambda sql, params=(): [tuple(number(v) for v in row) for row in read(sql, params)]

    def count(self) -> int:
        return self.query("SELECT COUNT(*) FROM events")[0][0]

    def rows(self) -> list[dict[str, Any]]:
        """Every stored event, oldest first, without empty columns."""
        names = ["id", "received_at", "kind", *payload.COLUMNS]
        got = self.query(f"SELECT {', '.join(names)} FROM events ORDER BY id")
        return [{k: v for k, v in zip(names, row) if v is not None} for row in got]

    def rebuild(self) -> Rebuilt:
        start = time.perf_counter()
        with self._lock:
            events = self.engine.rebuild()
        return Rebuilt(events, time.perf_counter() - start)

    def close(self) -> None:
        with self._lock:
            self.engine.close()

    def probe(self) -> Probe:
        """A `Probe` of this database on a connection of its own."""
        return Probe(self.engine.sibling())


class Probe:
    """Readiness: a trivial query on a connection of its own, never the writer's (nor its lock)."""

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self._connected = False

    def check(self) -> None:
        """Return once the database answered; `StoreError` (one line) when it cannot."""
        try:
            if not self._connected:
                self.engine.connect(False)
                self._connected = True
            self.engine.read("SELECT COUNT(*) FROM meta", ())
        except Exception as exc:
            self.close()
            raise exc if isinstance(exc, StoreError) else StoreError(_one_line(exc)) from None

    def close(self) -> None:
        if self._connected:
            self._connected = False
            try:
                self.engine.close()
            except Exception:
                pass


@dataclass
class _Devices:
    """What a batch says about its devices: days active (scopes bitmask), first and last
    event, and latest startup, per device (and scope)."""

    days: dict[str, dict[str, int]]
    seen: dict[tuple[str, int], list[str]]
    latest: dict[tuple[str, int], reach.Latest]


def _rollups(rows: Iterable[tuple[str, str, dict[str, Any]]]) -> tuple[dict[str, dict[tuple, list[Any]]], _Devices]:
    """The batch's contribution to each rollup table keyed by its values alone, merged per key
    (one upsert per key), and what it says about devices (`_device_changes` needs the stored state)."""
    daily: dict[tuple, list[Any]] = {}
    device_days: dict[tuple, list[Any]] = {}
    durations: dict[tuple, list[Any]] = {}
    devices = _Devices({}, {}, {})
    for received_at, event, fields in rows:
        day = received_at[:10]
        ci = fields.get("ci")
        ci = -1 if ci is None else int(bool(ci))
        run = run_of(event, fields)
        cost = fields.get("cost_usd")
        sums = [
            1,
            1 if fields.get("status") == "error" else 0,
            0 if cost is None else 1,
            *(fields.get(column) or 0 for column in SUMS),
        ]
        source = fields.get("cost_source") or "" if event == "task" else ""
        for dim in ("all", *DIMS[event]):
            key = (day, event, ci, run, dim, fields.get(dim) or "" if dim != "all" else "", source)
            got = daily.get(key)
            if got is None:
                daily[key] = list(sums)
            else:
                for i, value in enumerate(sums):
                    got[i] += value
        device = fields.get("device_id")
        if device:
            active = device_days.setdefault((device, day), [0, 0, 0, 0])
            active[2 * (ci == 1) + (event == "task")] += 1
            mask = reach.scopes_of(ci)
            days = devices.days.setdefault(device, {})
            days[day] = days.get(day, 0) | mask
            for scope in reach.SCOPES:
                if mask & (1 << scope):
                    seen = devices.seen.get((device, scope))
                    if seen is None:
                        devices.seen[(device, scope)] = [received_at, received_at]
                    else:
                        seen[0], seen[1] = min(seen[0], received_at), max(seen[1], received_at)
                    if event == "startup":
                        latest = reach.latest_of(received_at, fields)
                        devices.latest[(device, scope)] = reach.later(devices.latest.get((device, scope)), latest)
        duration = fields.get("duration_ms")
        if event == "task" and duration is not None:
            for dim in DURATION_DIMS[run]:
                key = (run, dim, fields.get(dim) or "", bucket(duration), day, ci)
                got = durations.get(key)
                if got is None:
                    durations[key] = [1, duration, duration]
                else:
                    got[0], got[1], got[2] = got[0] + 1, min(got[1], duration), max(got[2], duration)
    total: dict[tuple, list[Any]] = {}
    for (run, dim, key, index, _, ci), (n, lo, hi) in durations.items():
        got = total.get((run, dim, key, index, ci))
        if got is None:
            total[(run, dim, key, index, ci)] = [n, lo, hi]
        else:
            got[0], got[1], got[2] = got[0] + n, min(got[1], lo), max(got[2], hi)
    tables = {
        "rollup_daily": daily,
        "rollup_device_days": device_days,
        "rollup_durations": durations,
        "rollup_durations_total": total,
    }
    return tables, devices


def _mask(events: int, ci_events: int) -> int:
    """A stored device day's scopes (`reach.scopes_of`): any event counts in scope 0, a non-CI one in both."""
    return (1 if events + ci_events else 0) | (2 if events else 0)


#: Bound parameters per ``IN (...)`` list (SQLite's default limit is 32,766 in all).
_CHUNK = 500


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _device_changes(tx: _Tx, batch: _Devices) -> dict[str, dict[tuple, list[Any]]]:
    """The batch's ``rollup_reach`` and ``rollup_devices`` rows, from the stored state of its
    devices (locked first, so that concurrent writers never count a device from the same state)."""
    devices = sorted(batch.days.keys() | {device for device, _ in batch.seen})
    if not devices:
        return {}
    tx.lock_devices(devices)
    adoption = ", ".join(reach.ADOPTION)
    stored: dict[tuple[str, int], reach.Latest | None] = {}
    firsts: dict[tuple[str, int], str] = {}
    known: dict[tuple[str, str], int] = {}
    days = sorted({day for got in batch.days.values() for day in got})
    for chunk in _chunks(devices):
        marks = ", ".join("?" * len(chunk))
        for device, scope, first, startup_at, *values in tx.read(
            f"SELECT device_id, scope, first_seen, startup_at, {adoption} FROM rollup_devices "
            f"WHERE device_id IN ({marks})",
            chunk,
        ):
            stored[(device, scope)] = (startup_at, tuple(values)) if startup_at else None
            firsts[(device, scope)] = first[:10]
        for day_chunk in _chunks(days):
            for device, day, events, ci_events in tx.read(
                "SELECT device_id, day, startups + tasks, ci_startups + ci_tasks FROM rollup_device_days "
                f"WHERE device_id IN ({marks}) AND day IN ({', '.join('?' * len(day_chunk))})",
                [*chunk, *day_chunk],
            ):
                known[(device, day)] = _mask(events, ci_events)
    latest: dict[tuple[str, int], reach.Latest | None] = {}
    changed = []
    for device in devices:
        moved = False
        for scope in reach.SCOPES:
            old = stored.get((device, scope))
            new = latest[(device, scope)] = reach.later(old, batch.latest.get((device, scope)))
            moved = moved or (new != old and (old is None or new[0][:10] != old[0][:10] or new[1] != old[1]))
        new_days = any(mask & ~known.get((device, day), 0) for day, mask in batch.days.get(device, {}).items())
        if moved or new_days:
            changed.append(device)
    full: dict[str, dict[str, int]] = {device: {} for device in changed}
    for chunk in _chunks(changed):
        for device, day, events, ci_events in tx.read(
            "SELECT device_id, day, startups + tasks, ci_startups + ci_tasks FROM rollup_device_days "
            f"WHERE device_id IN ({', '.join('?' * len(chunk))})",
            chunk,
        ):
            full[device][day] = _mask(events, ci_events)
    counts: Counter = Counter()
    for device in changed:
        old_days = full[device]
        new_days = dict(old_days)
        for day, mask in batch.days.get(device, {}).items():
            new_days[day] = new_days.get(day, 0) | mask
        old_latest = {scope: stored.get((device, scope)) for scope in reach.SCOPES}
        new_latest = {scope: latest[(device, scope)] for scope in reach.SCOPES}
        old_first = {s: firsts[(device, s)] for s in reach.SCOPES if (device, s) in firsts}
        new_first = dict(old_first)
        for scope in reach.SCOPES:
            seen = batch.seen.get((device, scope))
            if seen is not None:
                new_first[scope] = min(new_first.get(scope, seen[0][:10]), seen[0][:10])
        counts.update(reach.change((old_days, old_latest, old_first), (new_days, new_latest, new_first)))
    rows = {}
    for (device, scope), (first, last) in batch.seen.items():
        startup_at, values = latest[(device, scope)] or ("", ("",) * len(reach.ADOPTION))
        rows[(device, scope)] = [first, last, startup_at, *values]
    return {"rollup_reach": {key: [n] for key, n in counts.items() if n}, "rollup_devices": rows}


def _shares(device: str, days: dict[str, int], latest: dict, seen: dict[tuple[str, int], list[str]]) -> Counter:
    """A device's share from what a rebuild read (`_rebuild_devices`)."""
    first = {s: seen[(device, s)][0][:10] for s in reach.SCOPES if (device, s) in seen}
    return reach.device_counts(days, {s: latest.get((device, s)) for s in reach.SCOPES}, first)


def _rebuild_devices(tx: _Tx) -> None:
    """``rollup_devices`` and ``rollup_reach`` from the rebuilt device days and the raw startups."""
    seen: dict[tuple[str, int], list[str]] = {}
    for device, ci, first, last in tx.read(
        f"SELECT device_id, {CI_SQL}, MIN(received_at), MAX(received_at) FROM events "
        f"WHERE device_id IS NOT NULL AND device_id <> '' GROUP BY device_id, {CI_SQL}"
    ):
        mask = reach.scopes_of(ci)
        for scope in reach.SCOPES:
            if mask & (1 << scope):
                got = seen.setdefault((device, scope), [first, last])
                got[0], got[1] = min(got[0], first), max(got[1], last)
    latest: dict[tuple[str, int], reach.Latest | None] = {}
    adoption = ", ".join(reach.ADOPTION)
    for device, ci, received_at, *values in tx.read(  # each device's latest startups (ties decided in Python)
        f"SELECT device_id, ci, received_at, {adoption} FROM (SELECT device_id, {CI_SQL} AS ci, received_at, "
        f"{adoption}, RANK() OVER (PARTITION BY device_id, {CI_SQL} ORDER BY received_at DESC) AS r FROM events "
        "WHERE kind = 'startup' AND device_id IS NOT NULL AND device_id <> '') AS ranked WHERE r = 1"
    ):
        mask = reach.scopes_of(ci)
        startup = reach.latest_of(received_at, dict(zip(reach.ADOPTION, values)))
        for scope in reach.SCOPES:
            if mask & (1 << scope):
                latest[(device, scope)] = reach.later(latest.get((device, scope)), startup)
    rows = []
    for (device, scope), (first, last) in sorted(seen.items()):
        startup_at, values = latest.get((device, scope)) or ("", ("",) * len(reach.ADOPTION))
        rows.append([device, scope, first, last, startup_at, *values])
    if rows:
        tx.run(UPSERT["rollup_devices"], rows)
    counts: Counter = Counter()
    device, days = None, {}
    for got, day, events, ci_events in tx.stream(
        "SELECT device_id, day, startups + tasks, ci_startups + ci_tasks FROM rollup_device_days ORDER BY device_id"
    ):
        if got != device:
            if device is not None:
                counts.update(_shares(device, days, latest, seen))
            device, days = got, {}
        days[day] = _mask(events, ci_events)
    if device is not None:
        counts.update(_shares(device, days, latest, seen))
    reach_rows = [[*key, n] for key, n in sorted(counts.items()) if n]
    if reach_rows:
        tx.run(UPSERT["rollup_reach"], reach_rows)


def device_shares(read: Callable[[str, Sequence[Any]], list[tuple]], devices: Sequence[str]) -> list[list[Any]]:
    """The ``rollup_reach`` rows that take `devices`' shares out of every device figure (their
    stored days and latest startups, negated): what forgetting them leaves, as if never seen."""
    days: dict[str, dict[str, int]] = {device: {} for device in devices}
    latest: dict[str, dict[int, reach.Latest | None]] = {device: {} for device in devices}
    firsts: dict[str, dict[int, str]] = {device: {} for device in devices}
    adoption = ", ".join(reach.ADOPTION)
    for chunk in _chunks(sorted(days)):
        marks = ", ".join("?" * len(chunk))
        for device, day, events, ci_events in read(
            "SELECT device_id, day, startups + tasks, ci_startups + ci_tasks FROM rollup_device_days "
            f"WHERE device_id IN ({marks})",
            chunk,
        ):
            days[device][day] = _mask(events, ci_events)
        for device, scope, first, startup_at, *values in read(
            f"SELECT device_id, scope, first_seen, startup_at, {adoption} FROM rollup_devices "
            f"WHERE device_id IN ({marks})",
            chunk,
        ):
            latest[device][scope] = (startup_at, tuple(values)) if startup_at else None
            firsts[device][scope] = first[:10]
    counts: Counter = Counter()
    for device in days:
        counts.subtract(reach.device_counts(days[device], latest[device], firsts[device]))
    return [[*key, n] for key, n in sorted(counts.items()) if n]


# -- transactions ------------------------------------------------------------------------------
class _Tx:
    """One open write transaction: statements, reads, and the devices' locks."""

    def run(self, sql: str, params: Sequence[Sequence[Any]] = ()) -> None:
        """`sql` once with no parameters, once with the one row given, or for each row."""
        if not params:
            self.bare(sql)
        elif len(params) == 1:
            self.execute(sql, params[0])
        else:
            self.executemany(sql, params)

    def run_all(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Statements whose results nothing reads: `run` each (PostgreSQL sends them at once)."""
        for sql, params in statements:
            self.run(sql, params)

    def bare(self, sql: str) -> None:
        self.execute(sql, ())

    def execute(self, sql: str, row: Sequence[Any]) -> None:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        raise NotImplementedError

    def stream(self, sql: str) -> Iterator[tuple]:
        """A large read's rows, a few at a time (a rebuild's millions of device days)."""
        yield from self.read(sql)

    def lock_devices(self, devices: list[str]) -> None:
        """Hold each device until commit (sorted: writers lock in one order, never a deadlock)."""


#: What a transaction runs: statements with their parameter rows, or a function of the open `_Tx`.
Work = Union[list[tuple[str, list]], Callable[[_Tx], None]]


def _run_work(tx: _Tx, work: Work) -> None:
    if callable(work):
        work(tx)
    else:
        for sql, params in work:
            tx.run(sql, params)


# -- engines -----------------------------------------------------------------------------------
class _Engine:
    """What differs between SQLite and PostgreSQL: connecting, DDL details, errors, transactions."""

    name: str
    id_column: str
    table_suffix = ""
    #: The aggregate a rebuild sums raw values with (SQLite's SUM raises on int64 overflow).
    sum_function = "SUM"
    #: Whether numbers come back as Decimal (PostgreSQL's numeric), to be read with `number`.
    decimals = False
    #: `bucket` in SQL, for `rebuild`: the same C log() and double arithmetic, so the same bucket.
    bucket_sql = (
        f"CASE WHEN duration_ms > 0 THEN CAST(ceil(ln(CAST(duration_ms AS DOUBLE PRECISION)) / "
        f"CAST({LN_GAMMA!r} AS DOUBLE PRECISION)) AS BIGINT) ELSE {ZERO_BUCKET} END"
    )

    def connect(self, create: bool) -> None:
        raise NotImplementedError

    def tables(self) -> set[str]:
        raise NotImplementedError

    def columns(self, table: str) -> set[str]:
        raise NotImplementedError

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def transaction(self, work: Work, lock: bool = False) -> None:
        """Run `work` (statements, or a function of a `_Tx`) in one transaction, committed at the end."""
        raise NotImplementedError

    def snapshot(self) -> AbstractContextManager[Callable[[str, Sequence[Any]], list[tuple]]]:
        """A read-only transaction whose reads all see one commit (the report's one snapshot)."""
        raise NotImplementedError

    def read(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def error(self, doing: str, exc: BaseException) -> StoreError:
        return StoreError(f"{self.name}: {doing} ({_one_line(exc)})")

    def bindable(self, rollups: dict[str, dict[tuple, list[Any]]]) -> list[tuple[str, list[list[Any]]]]:
        """Each table's parameter rows, keys sorted (concurrent writers lock rows in one order)."""
        return [(table, [[*key, *values] for key, values in sorted(got.items())]) for table, got in rollups.items()]

    def write(self, work: Work, doing: str) -> None:
        raise NotImplementedError

    def locked(self, work: Callable[[Query], Any]) -> Any:
        """`work(query)` in one write transaction during which no collector writes (they wait)."""
        raise NotImplementedError

    def scratch(self, statements: list[tuple[str, list]]) -> None:
        """Statements that read events and write temporary tables only: collectors go on writing."""
        raise NotImplementedError

    def sibling(self) -> _Engine:
        """A new, unconnected engine for the same database."""
        raise NotImplementedError

    def checkpoint(self) -> None:
        """After a large write: move it out of the write-ahead log without blocking writers."""

    # -- schema --------------------------------------------------------------------------------
    def prepare(self, create: bool, migrate: bool) -> None:
        """Check the database is ours (and current), and with `create` make what is missing."""
        tables = self.tables()
        if "events" not in tables:
            if not create and self.foreign(tables):
                raise StoreError(f"{self.name}: not a clacky-ipy database (no events table)")
            if not create:  # a fresh database: the collector creates its tables at its first start
                raise StoreError(f"{self.name}: nothing collected yet (no collector has written to this database)")
            if self.foreign(tables):
                raise StoreError(f"{self.name}: a database of something else (no events table): not touching it")
        elif not {"received_at", "kind"} <= self.columns("events"):
            raise StoreError(f"{self.name}: a database of something else (its events table is not ours)")
        current = "meta" in tables and self.read("SELECT value FROM meta WHERE key = 'schema'", ()) == [(SCHEMA,)]
        if current and not create:
            return
        old = not current and "events" in tables and not migrate
        if old and (not create or self.read("SELECT 1 FROM events LIMIT 1", ())):
            raise StoreError(
                f"{self.name} was written by an earlier clacky-ipy and has no rollups yet: "
                f"run `clacky-ipy rebuild --db {self.name}` once, then try again"
            )
        if create:
            if old:  # an earlier version's empty database: its rollup tables may have other columns
                self.transaction([(f"DROP TABLE IF EXISTS {t}", []) for t in ROLLUP_TABLES], lock=True)
            self.create_schema(mark_current="events" not in tables or not migrate)

    def foreign(self, tables: set[str]) -> bool:
        return bool(tables)

    def schema_statements(self, mark_current: bool) -> list[tuple[str, list]]:
        columns = ", ".join(f"{key} {_SQL_TYPES[kind]}" for key, kind in payload.COLUMNS.items())
        out: list[tuple[str, list]] = [
            (
                f"CREATE TABLE IF NOT EXISTS events ({self.id_column}, received_at TEXT NOT NULL, "
                f"kind TEXT NOT NULL, {columns})",
                [],
            ),
            ("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)", []),
        ]
        out += [(f"CREATE TABLE IF NOT EXISTS {t} ({d}){self.table_suffix}", []) for t, d in ROLLUP_TABLES.items()]
        out += [(f"DROP INDEX IF EXISTS {name}", []) for name in OLD_INDEXES]
        if mark_current:
            out.append(
                (
                    "INSERT INTO meta (key, value) VALUES ('schema', ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                    [[SCHEMA, SCHEMA]],
                )
            )
        return out

    def create_schema(self, mark_current: bool) -> None:
        statements = self.schema_statements(mark_current)
        try:
            self.transaction(statements, lock=True)
        except StoreError:
            raise
        except Exception as exc:
            raise self.error("could not create the tables", exc) from None
        missing = [key for key in payload.COLUMNS if key not in self.columns("events")]
        if missing:  # a vocabulary that grew since the table was made
            self.transaction(
                [(f"ALTER TABLE events ADD COLUMN {k} {_SQL_TYPES[payload.COLUMNS[k]]}", []) for k in missing]
            )

    def rebuild_statements(self) -> list[tuple[str, list]]:
        """The rollup tables made anew, and filled with what SQL makes from the raw events."""
        out: list[tuple[str, list]] = [(f"DROP TABLE IF EXISTS {table}", []) for table in ROLLUP_TABLES]
        out += [(f"CREATE TABLE {t} ({d}){self.table_suffix}", []) for t, d in ROLLUP_TABLES.items()]
        out += self.rollup_statements()
        out += [(f"DROP INDEX IF EXISTS {name}", []) for name in OLD_INDEXES]
        return out

    def rollup_statements(self, where: str = "1 = 1", prefix: str = "") -> list[tuple[str, list]]:
        """The rows of the rollups keyed by day (``rollup_daily``, ``rollup_device_days``,
        ``rollup_durations``) from the raw events matching `where`, inserted into the existing
        tables named `prefix` + the rollup's name: passes group the raw rows, the rest group those.
        The rollups of devices' state and shares (`_rebuild_devices`) need every event of a device."""
        total = self.sum_function
        ci = CI_SQL
        dims = sorted({d for names in DIMS.values() for d in names})
        sums = ", ".join(f"COALESCE({total}({c}), 0) AS {c}" for c in SUMS)
        temporary = ("rebuild_groups", "rebuild_devices", "rebuild_durations")
        out: list[tuple[str, list]] = [(f"DROP TABLE IF EXISTS {t}", []) for t in temporary]
        source = "CASE WHEN kind = 'task' THEN COALESCE(cost_source, '') ELSE '' END"
        grouped = f"{DAY_SQL}, kind, {ci}, {RUN_SQL}, {source}, " + ", ".join(f"COALESCE({d}, '')" for d in dims)
        out.append(
            (
                f"CREATE TEMPORARY TABLE rebuild_groups AS SELECT {DAY_SQL} AS day, kind, {ci} AS ci, "
                f"{RUN_SQL} AS run, {source} AS cost_source, "
                + ", ".join(f"COALESCE({d}, '') AS {d}" for d in dims)
                + ", COUNT(*) AS events, SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS errors, "
                f"COUNT(cost_usd) AS cost_n, {sums} FROM events WHERE {where} GROUP BY {grouped}",
                [],
            )
        )
        regroup = ", ".join(f"SUM({c})" for c in ("events", "errors", "cost_n", *SUMS))
        columns = ", ".join(_COLUMNS["rollup_daily"])
        out.append(
            (
                f"INSERT INTO {prefix}rollup_daily ({columns}) SELECT day, kind, ci, run, 'all', '', cost_source, "
                f"{regroup} "
                "FROM rebuild_groups GROUP BY day, kind, ci, run, cost_source",
                [],
            )
        )
        for event, names in DIMS.items():
            for dim in names:
                out.append(
                    (
                        f"INSERT INTO {prefix}rollup_daily ({columns}) SELECT day, kind, ci, run, '{dim}', {dim}, "
                        "cost_source, "
                        f"{regroup} FROM rebuild_groups WHERE kind = '{event}' "
                        f"GROUP BY day, kind, ci, run, {dim}, cost_source",
                        [],
                    )
                )
        out.append(
            (
                f"CREATE TEMPORARY TABLE rebuild_devices AS SELECT {DAY_SQL} AS day, device_id, {ci} AS ci, "
                "SUM(CASE WHEN kind = 'startup' THEN 1 ELSE 0 END) AS startups, "
                "SUM(CASE WHEN kind = 'task' THEN 1 ELSE 0 END) AS tasks, "
                "MIN(received_at) AS first_seen, MAX(received_at) AS last_seen "
                f"FROM events WHERE device_id IS NOT NULL AND device_id <> '' AND {where} "
                f"GROUP BY {DAY_SQL}, device_id, {ci}",
                [],
            )
        )
        out.append(
            (
                f"INSERT INTO {prefix}rollup_device_days (device_id, day, startups, tasks, ci_startups, ci_tasks) "
                "SELECT device_id, day, SUM(CASE WHEN ci = 1 THEN 0 ELSE startups END), "
                "SUM(CASE WHEN ci = 1 THEN 0 ELSE tasks END), SUM(CASE WHEN ci = 1 THEN startups ELSE 0 END), "
                "SUM(CASE WHEN ci = 1 THEN tasks ELSE 0 END) FROM rebuild_devices GROUP BY device_id, day",
                [],
            )
        )
        keys = ("status", "model", "provider")
        out.append(
            (
                f"CREATE TEMPORARY TABLE rebuild_durations AS SELECT {RUN_SQL} AS run, "
                + ", ".join(f"COALESCE({k}, '') AS {k}" for k in keys)
                + f", {self.bucket_sql} AS bucket, {DAY_SQL} AS day, {ci} AS ci, COUNT(*) AS n, "
                "MIN(CAST(duration_ms AS DOUBLE PRECISION)) AS lo, MAX(CAST(duration_ms AS DOUBLE PRECISION)) AS hi "
                f"FROM events WHERE kind = 'task' AND duration_ms IS NOT NULL AND {where} "
                f"GROUP BY {RUN_SQL}, "
                + ", ".join(f"COALESCE({k}, '')" for k in keys)
                + f", {self.bucket_sql}, {DAY_SQL}, {ci}",
                [],
            )
        )
        for run, names in DURATION_DIMS.items():
            for dim in names:
                out.append(
                    (
                        f"INSERT INTO {prefix}rollup_durations (run, dim, key, bucket, day, ci, n, lo, hi) "
                        f"SELECT run, '{dim}', {dim}, bucket, day, ci, SUM(n), MIN(lo), MAX(hi) "
                        f"FROM rebuild_durations WHERE run = '{run}' GROUP BY run, {dim}, bucket, day, ci",
                        [],
                    )
                )
                out.append(
                    (
                        f"INSERT INTO {prefix}rollup_durations_total (run, dim, key, bucket, ci, n, lo, hi) "
                        f"SELECT run, '{dim}', {dim}, bucket, ci, SUM(n), MIN(lo), MAX(hi) "
                        f"FROM rebuild_durations WHERE run = '{run}' GROUP BY run, {dim}, bucket, ci",
                        [],
                    )
                )
        out += [(f"DROP TABLE {t}", []) for t in temporary]
        return out

    def rebuild_work(self, tx: _Tx) -> None:
        """Every rollup from the raw events: `rebuild_statements`, then each device's state and share."""
        _run_work(tx, self.rebuild_statements())
        _rebuild_devices(tx)
        tx.run(
            "INSERT INTO meta (key, value) VALUES ('schema', ?) ON CONFLICT (key) DO UPDATE SET value = ?",
            [[SCHEMA, SCHEMA]],
        )

    def rebuild(self) -> int:
        self.transaction(self.rebuild_work, lock=True)
        return _after_commit(REBUILT, self.after_rebuild)

    def after_rebuild(self) -> int:
        """The planner's statistics refreshed; the number of raw events."""
        self.analyze()
        return self.read("SELECT COUNT(*) FROM events", ())[0][0]

    def analyze(self) -> None:
        pass


class _SQLite(_Engine):
    """One file in WAL mode, opened as a path (never spliced into a URI)."""

    id_column = "id INTEGER PRIMARY KEY"
    table_suffix = " WITHOUT ROWID"

    def __init__(self, path: Path) -> None:
        self.file = path
        self.name = str(path)
        self.db: sqlite3.Connection | None = None

    def connect(self, create: bool) -> None:
        try:  # a name too long, a loop of links, a file for a folder, no permission: one line
            self._check(create)
            self.db = sqlite3.connect(self.file, check_same_thread=False, isolation_level=None, timeout=30)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte or a lone surrogate in the path
            raise StoreError(f"{self.file}: {getattr(exc, 'strerror', None) or _one_line(exc)}") from None
        except sqlite3.Error as exc:
            raise self.error("cannot open", exc) from None
        try:
            try:  # SQLite's math functions (3.35+, when compiled in); else `bucket` itself, slower
                self.db.execute("SELECT ceil(ln(2.0))")
            except sqlite3.OperationalError:
                self.db.create_function("clacky_bucket", 1, _sql_bucket, deterministic=True)
                self.bucket_sql = "clacky_bucket(duration_ms)"
            self.db.execute("PRAGMA synchronous=NORMAL")  # durable across crashes of this process
            self.db.execute("PRAGMA cache_size=-65536")  # 64 MiB
        except sqlite3.Error as exc:
            raise self.error("cannot open", exc) from None

    def _check(self, create: bool) -> None:
        """Refuse, before SQLite creates anything, a path that is no database file (`StoreError`)."""
        path = self.file
        if path.is_dir():
            raise StoreError(f"{path}: is a folder, not a database file")
        if not path.exists():
            if path.is_symlink():  # a dangling link, or a loop of them (ELOOP): SQLite could not follow it
                path.stat()
            if not create:
                raise StoreError(f"no database at {path}")
            if not path.parent.is_dir():
                try:  # any other OSError says why (a loop of links, no permission, a name too long)
                    path.parent.stat()
                except FileNotFoundError:
                    raise StoreError(f"{path}: the folder {path.parent} does not exist") from None
                raise StoreError(f"{path}: {path.parent} is not a folder")
        elif path.stat().st_size == 0 and not create:
            raise StoreError(f"{path}: an empty file, not a clacky-ipy database")

    def error(self, doing: str, exc: BaseException) -> StoreError:
        if isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted":  # see `_interruptible`
            return KeyboardInterrupt()  # type: ignore[return-value]
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
            return StoreError(f"{self.name}: not a usable SQLite database ({_one_line(exc)})")
        return super().error(doing, exc)

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        """On the main thread, Ctrl-C stops a long statement (a rebuild's, a report's) at once
        rather than when SQLite finishes it: the progress handler is Python code, so the signal's
        handler runs in it, and its KeyboardInterrupt aborts the statement ("interrupted", which
        `error` turns back into a KeyboardInterrupt). Never on the collector's writer thread,
        where signals are not handled and each call would take the GIL."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        assert self.db is not None
        self.db.set_progress_handler(_signals_in, 10_000)
        try:
            yield
        finally:
            self.db.set_progress_handler(None, 0)

    def read(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        assert self.db is not None
        try:
            with self._interruptible():
                return self.db.execute(sql, list(params)).fetchall()
        except sqlite3.Error as exc:
            raise self.error("could not read", exc) from None

    def tables(self) -> set[str]:
        return {row[0] for row in self.read("SELECT name FROM sqlite_master WHERE type = 'table'", ())}

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self.read(f"PRAGMA table_info({table})", ())}

    def create_schema(self, mark_current: bool) -> None:
        try:
            self.db.execute("PRAGMA journal_mode=WAL")  # after the checks: it writes to the file
        except sqlite3.Error as exc:
            raise self.error("could not switch to WAL", exc) from None
        super().create_schema(mark_current)

    def transaction(self, work: Work, lock: bool = False) -> None:
        db = self.db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")  # the write lock first: no deadlock between readers turned writers
        try:
            with self._interruptible():
                _run_work(_SQLiteTx(self), work)  # one writer at a time holds the file: no device lock needed
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # some errors (a full disk) have rolled it back already
                db.execute("ROLLBACK")
            raise

    @contextmanager
    def snapshot(self) -> Iterator[Callable[[str, Sequence[Any]], list[tuple]]]:
        db = self.db
        assert db is not None
        try:
            db.execute("BEGIN")  # WAL: the first read fixes the snapshot every later read of it sees
        except sqlite3.Error as exc:
            raise self.error("could not read", exc) from None
        try:
            yield self.read
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")

    def _run(self, sql: str) -> None:
        try:
            self.db.execute(sql)
        except sqlite3.OperationalError as exc:
            if "integer overflow" not in str(exc) or "SUM(" not in sql:
                raise
            self.db.execute(sql.replace("SUM(", "TOTAL("))  # sums beyond int64: as floats, never an error

    def write(self, work: Work, doing: str) -> None:
        try:
            self.transaction(work)
        except sqlite3.Error as exc:
            raise self.error(doing, exc) from None

    def locked(self, work: Callable[[Query], Any]) -> Any:
        db = self.db
        assert db is not None

        def query(sql: str, params: Sequence[Any] = ()) -> list:
            return db.execute(sql, list(params)).fetchall()

        db.execute("BEGIN IMMEDIATE")  # SQLite's one write lock: collectors wait for the COMMIT
        try:
            out = work(query)
            db.execute("COMMIT")
            return out
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def scratch(self, statements: list[tuple[str, list]]) -> None:
        for sql, params in statements:  # no BEGIN IMMEDIATE: only the temporary database is written
            if params:
                self.db.executemany(sql, params)
            else:
                self._run(sql)

    def sibling(self) -> _Engine:
        return _SQLite(self.file)

    def checkpoint(self) -> None:
        try:  # PASSIVE: never waits for, nor blocks, a writer; else the next commit would do it
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass

    def rebuild(self) -> int:
        try:
            return super().rebuild()
        except sqlite3.Error as exc:
            raise self.error("could not rebuild the rollups", exc) from None

    def bindable(self, rollups: dict[str, dict[tuple, list[Any]]]) -> list[tuple[str, list[list[Any]]]]:
        """As the base, with batch sums beyond int64 as floats (SQLite's integers are 64-bit)."""
        out = super().bindable(rollups)
        for _, params in out:
            for row in params:
                for i, value in enumerate(row):
                    if type(value) is int and not payload.INT64_MIN <= value <= payload.INT64_MAX:
                        row[i] = float(value)
        return out

    def analyze(self) -> None:
        try:
            with self._interruptible():
                self.db.execute("ANALYZE")
        except sqlite3.Error as exc:
            raise self.error("could not analyze", exc) from None

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def _signals_in() -> None:
    """SQLite's progress handler: calling Python lets a pending signal's handler run."""


def _sql_bucket(value: Any) -> int | None:
    return None if value is None else bucket(value)


class _SQLiteTx(_Tx):
    def __init__(self, engine: _SQLite) -> None:
        self.engine, self.db = engine, engine.db

    def bare(self, sql: str) -> None:
        self.engine._run(sql)

    def execute(self, sql: str, row: Sequence[Any]) -> None:
        self.db.execute(sql, row)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.db.executemany(sql, rows)

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.db.execute(sql, list(params)).fetchall()

    def stream(self, sql: str) -> Iterator[tuple]:
        yield from self.db.execute(sql)


class _PostgresTx(_Tx):
    #: The first key of the devices' advisory locks (two-key locks never meet the one-key LOCK_KEY).
    DEVICE_LOCKS = 0x636C6163

    def __init__(self, engine: _Postgres, cursor: Any) -> None:
        self.engine, self.cursor = engine, cursor

    def bare(self, sql: str) -> None:
        self.cursor.execute(self.engine._sql(sql))

    def execute(self, sql: str, row: Sequence[Any]) -> None:
        self.cursor.execute(self.engine._sql(sql), row)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.cursor.executemany(self.engine._sql(sql), rows)

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        self.cursor.execute(self.engine._sql(sql), list(params))
        return self.cursor.fetchall()

    def stream(self, sql: str) -> Iterator[tuple]:
        with self.engine.db.cursor(name="clacky_stream") as cursor:  # server-side: a few rows at a time
            cursor.itersize = 20_000
            cursor.execute(self.engine._sql(sql))
            yield from cursor

    def run_all(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        with self.engine.db.pipeline():  # one round trip for all of them, not one each
            super().run_all(statements)

    def lock_devices(self, devices: list[str]) -> None:
        keys = sorted({_lock_key(device) for device in devices})
        self.cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, k) FROM unnest(%s::int[]) WITH ORDINALITY AS t(k, i) ORDER BY i",
            [self.DEVICE_LOCKS, keys],
        )


def _lock_key(device: str) -> int:
    """A device's advisory lock: a 32-bit hash (two devices sharing one just wait for each other)."""
    digest = hashlib.blake2b(device.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


class _Postgres(_Engine):
    """A PostgreSQL database (psycopg 3) shared by any number of collector processes."""

    id_column = "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    decimals = True
    #: The schema's and rebuild's transaction-scoped lock: concurrent starts create tables once.
    LOCK_KEY = 0x636C61636B79  # "clacky"

    def __init__(self, url: str | os.PathLike) -> None:
        self.url = os.fspath(url)
        self.db: Any = None
        self.name = _redact(self.url)

    def connect(self, create: bool) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError("PostgreSQL needs psycopg 3: pip install 'clacky-ipy[postgres]'") from None
        self.psycopg = psycopg
        try:
            params = psycopg.conninfo.conninfo_to_dict(self.url)
        except psycopg.Error as exc:
            raise StoreError(f"{self.name}: not a valid PostgreSQL URL ({_one_line(exc)})") from None
        params.setdefault("connect_timeout", 10)
        params.setdefault("application_name", "clacky-ipy")
        try:
            self.db = psycopg.connect(**params, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"cannot reach PostgreSQL at {self.name} ({_one_line(exc)})") from None

    def _reconnect(self) -> None:
        if self.db is None or self.db.closed or self.db.broken:
            if self.db is not None:
                self.db.close()
            self.connect(True)

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def read(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        self._reconnect()
        try:
            with self.db.cursor() as cursor:
                cursor.execute(self._sql(sql), list(params))
                return cursor.fetchall()
        except self.psycopg.Error as exc:
            raise self.error("could not read", exc) from None

    def tables(self) -> set[str]:
        sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        return {row[0] for row in self.read(sql, ())}

    def columns(self, table: str) -> set[str]:
        sql = (
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?"
        )
        return {row[0] for row in self.read(sql, [table])}

    def foreign(self, tables: set[str]) -> bool:
        return False  # a PostgreSQL database is made for us by its operator; other tables may share it

    def transaction(self, work: Work, lock: bool = False) -> None:
        with self.db.transaction(), self.db.cursor() as cursor:
            if lock:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [self.LOCK_KEY])
            _run_work(_PostgresTx(self, cursor), work)

    @contextmanager
    def snapshot(self) -> Iterator[Callable[[str, Sequence[Any]], list[tuple]]]:
        self._reconnect()
        try:
            with self.db.transaction(), self.db.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

                def read(sql: str, params: Sequence[Any] = ()) -> list[tuple]:
                    cursor.execute(self._sql(sql), list(params))
                    return cursor.fetchall()

                yield read
        except self.psycopg.Error as exc:
            raise self.error("could not read", exc) from None

    def write(self, work: Work, doing: str) -> None:
        errors = self.psycopg.errors
        for attempt in range(5):
            self._reconnect()
            try:
                self.transaction(work)
                return
            except (errors.DeadlockDetected, errors.SerializationFailure) as exc:
                if attempt == 4:  # rolled back: safe to try again, nothing was stored
                    raise self.error(doing, exc) from None
                time.sleep(0.01 * (attempt + 1))
            except self.psycopg.Error as exc:
                raise self.error(doing, exc) from None

    def locked(self, work: Callable[[Query], Any]) -> Any:
        self._reconnect()
        with self.db.transaction(), self.db.cursor() as cursor:
            # Inserts take ROW EXCLUSIVE on events first, so none is half done while this is held.
            cursor.execute("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")

            def query(sql: str, params: Sequence[Any] = ()) -> list:
                cursor.execute(self._sql(sql), list(params))
                return cursor.fetchall() if cursor.description else []

            return work(query)

    def scratch(self, statements: list[tuple[str, list]]) -> None:
        self._reconnect()
        self.transaction(statements)

    def sibling(self) -> _Engine:
        return _Postgres(self.url)

    def rebuild(self) -> int:
        # Collectors' inserts wait (they take the same table lock) rather than slip between statements.
        def work(tx: _Tx) -> None:
            tx.run("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
            self.rebuild_work(tx)

        try:
            self.transaction(work, lock=True)
            return _after_commit(REBUILT, self.after_rebuild)
        except self.psycopg.Error as exc:
            raise self.error("could not rebuild the rollups", exc) from None

    def analyze(self) -> None:
        for table in ROLLUP_TABLES:
            self.db.execute(f"VACUUM ANALYZE {table}")

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return url.split("@", 1)[-1]
