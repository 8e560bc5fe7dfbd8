"""Retention and erasure: `prune` old raw events, `forget` devices, both while collectors write.

Both work in short transactions (a few thousand rows each) between which collectors go on
storing, on SQLite and PostgreSQL alike. `forget` leaves the rollups as if the forgotten
devices had never sent anything: a rollup keyed by device loses that device's rows, and the
device's share of the device figures (``rollup_reach``) goes with them; one keyed by day has the
days the devices were active computed again from the remaining raw events by the same SQL as
``clacky-ipy rebuild``; the all-days histograms are summed again from the per-day ones; any other
is computed again whole. Events stored meanwhile are merged in as ingest merges them. `prune`
leaves the device rollups (and shares) those of the events it keeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from . import payload
from .reach import ADOPTION
from .store import (
    _COLUMNS,
    _KEYS,
    DAY_SQL,
    ROLLUP_TABLES,
    UPSERT,
    Query,
    Store,
    StoreError,
    _rollups,
    device_shares,
    number,
)

log = logging.getLogger("clacky_ipy.collector")

#: Rows read per page, and rollup rows deleted per transaction.
BATCH = 2000
#: Raw events deleted per transaction: scattered over a large table, each costs a page write,
#: so a transaction of these holds collectors for some tens of milliseconds at most.
DELETE_BATCH = 500


@dataclass
class Pruned:
    """What `prune` removed: raw events, per-device rollup rows, and the first day kept."""

    events: int
    device_rows: int
    kept_from: str
    seconds: float
    longest_lock: float = 0.0


@dataclass
class Forgotten:
    """What `forget` removed and recomputed."""

    devices: int
    events: int
    device_rows: int
    days: int
    seconds: float
    longest_lock: float = 0.0


#: Rollups `forget` and `prune` correct from other rollups rather than from raw events: the
#: devices' shares of the device figures (summed over devices, so not day-local although keyed by
#: day), and the duration histograms over every day (the sums of the per-day ones).
DERIVED = ("rollup_reach", "rollup_durations_total")

#: ``rollup_durations_total`` made again from ``rollup_durations`` (the same histograms, per day).
TOTALS = [
    ("DELETE FROM rollup_durations_total", []),
    (
        "INSERT INTO rollup_durations_total (run, dim, key, bucket, ci, n, lo, hi) SELECT run, dim, key, bucket, ci, "
        "SUM(n), MIN(lo), MAX(hi) FROM rollup_durations GROUP BY run, dim, key, bucket, ci",
        [],
    ),
]


def scope(table: str) -> str:
    """How `forget` corrects a rollup: ``device`` (its rows name one device each: they go),
    ``day`` (each row sums one day: those days are computed again), else ``all``."""
    keys = _KEYS[table]
    return "device" if "device_id" in keys else "day" if "day" in keys else "all"


def cutoff(days: int, now: datetime | None = None) -> str:
    """The first UTC day `prune` keeps: today and the `days` whole days before it stay."""
    today = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).date()
    return (today - timedelta(days=days)).isoformat()


#: The longest transaction of the last `prune` or `forget` in this process (collectors waited for it).
longest = [0.0]


def _locked(store: Store, work: Any) -> Any:
    """`work` in a transaction that holds collectors off, timed; then, on SQLite, the WAL moved into
    the database by this process (a passive checkpoint), so a collector's next commit does not."""
    start = time.perf_counter()
    try:
        return store.engine.locked(work)
    finally:
        longest[0] = max(longest[0], time.perf_counter() - start)
        store.engine.checkpoint()


def _in(values: Sequence[Any]) -> str:
    return "(" + ", ".join("?" * len(values)) + ")"


def _chunks(values: Sequence[Any], size: int = 500) -> list[Sequence[Any]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def _delete_ids(store: Store, ids: Sequence[int]) -> None:
    """Delete these raw events, `DELETE_BATCH` a transaction."""
    for chunk in _chunks(ids, DELETE_BATCH):
        _locked(store, lambda query, chunk=chunk: query(f"DELETE FROM events WHERE id IN {_in(chunk)}", chunk))


def _delete_rows(store: Store, table: str, where: str, params: Sequence[Any]) -> int:
    """Delete `table`'s rows matching `where`, a batch of keys per transaction; how many went."""
    keys = _KEYS[table]
    match = " AND ".join(f"{k} = ?" for k in keys)
    removed = 0
    while True:
        got = store.engine.read(f"SELECT {', '.join(keys)} FROM {table} WHERE {where} LIMIT {BATCH // 2}", list(params))
        if not got:
            return removed

        def work(query: Query, got: list = got) -> None:
            for row in got:
                query(f"DELETE FROM {table} WHERE {match}", list(row))

        _locked(store, work)
        removed += len(got)


def _reshare(query: Query, devices: Sequence[str], change: Callable[[], Any]) -> Any:
    """`change()` made to the devices' stored days and startups, with ``rollup_reach`` moved by
    their shares' change (after minus before); rows left at 0 go, as a rebuild keeps none."""
    delta: Counter = Counter()
    for *key, n in device_shares(query, devices):  # each device's share, negated
        delta[tuple(key)] += n
    out = change()
    for *key, n in device_shares(query, devices):
        delta[tuple(key)] -= n
    for key, n in sorted(delta.items()):
        if n:
            query(UPSERT["rollup_reach"], [*key, n])
    query("DELETE FROM rollup_reach WHERE n = 0")
    return out


@contextmanager
def _opened(db: Any, doing: str) -> Iterator[Store]:
    """The store at `db`, closed after; any database error as one `StoreError` line."""
    store = Store(db, create=False)
    try:
        yield store
    except StoreError:
        raise
    except Exception as exc:
        raise store.engine.error(doing, exc) from None
    finally:
        store.close()


def prune(db: Any, days: int, now: datetime | None = None) -> Pruned:
    """Delete raw events received before today's date minus `days`, and the rollup rows that
    name a device for those days (a device not seen since loses its first/last-seen row), each
    device's share of the device figures moved to what the kept events make it; rollups without
    a device id stay, so the report's totals keep the whole history."""
    start = time.perf_counter()
    first = cutoff(days, now)
    longest[0] = 0.0
    with _opened(db, "could not prune") as store:
        events = last = 0
        while True:  # read a page by id (no lock), then delete its old rows in one short transaction
            got = store.engine.read(
                f"SELECT id, received_at FROM events WHERE id > ? ORDER BY id LIMIT {BATCH * 5}", [last]
            )
            if not got:
                break
            last = got[-1][0]
            old = [row[0] for row in got if row[1] < first]
            if old:
                _delete_ids(store, old)
                events += len(old)
        device_rows = 0
        while True:  # the devices with days before the cutoff, a batch per transaction
            got = store.engine.read(
                f"SELECT DISTINCT device_id FROM rollup_device_days WHERE day < ? LIMIT {BATCH // 10}", [first]
            )
            if not got:
                break
            devices = sorted(row[0] for row in got)
            device_rows += _locked(store, lambda query, devices=devices: _reshare(
                query, devices, lambda: _prune_devices(query, devices, first)
            ))  # fmt: skip
        device_rows += _delete_rows(store, "rollup_devices", "last_seen < ?", [first])  # none but a repair's
        return Pruned(events, device_rows, first, time.perf_counter() - start, longest[0])


def _prune_devices(query: Query, devices: Sequence[str], first: str) -> int:
    """The devices' stored state as the events from `first` on leave it (as ``rebuild`` would
    make it of them): their earlier days go, a device seen only before goes, the first day is
    the first kept, and a latest startup before `first` is none. How many rows went."""
    marks, params = _in(devices), [first, *devices]
    removed = query(f"SELECT COUNT(*) FROM rollup_device_days WHERE day < ? AND device_id IN {marks}", params)[0][0]
    removed += query(f"SELECT COUNT(*) FROM rollup_devices WHERE last_seen < ? AND device_id IN {marks}", params)[0][0]
    query(f"DELETE FROM rollup_device_days WHERE day < ? AND device_id IN {marks}", params)
    query(f"DELETE FROM rollup_devices WHERE last_seen < ? AND device_id IN {marks}", params)
    # A scope's days: any event's in scope 0, a non-CI event's in scope 1 (see store._mask).
    query(
        "UPDATE rollup_devices SET first_seen = (SELECT MIN(d.day) FROM rollup_device_days d "
        "WHERE d.device_id = rollup_devices.device_id AND (rollup_devices.scope = 0 OR d.startups + d.tasks > 0)) "
        f"WHERE first_seen < ? AND device_id IN {marks}",
        params,
    )
    cleared = ", ".join(f"{c} = ''" for c in ("startup_at", *ADOPTION))
    query(
        f"UPDATE rollup_devices SET {cleared} WHERE startup_at <> '' AND startup_at < ? AND device_id IN {marks}",
        params,
    )
    return int(removed)


def _fence(store: Store) -> int:
    """The highest event id such that every event up to it is committed and every later one is not yet."""
    got = _locked(store, lambda query: query("SELECT MAX(id) FROM events"))
    return int(got[0][0] or 0)


def _fields(row: Sequence[Any]) -> tuple[str, str, dict[str, Any]]:
    received_at, kind, *values = row
    return received_at, kind, {k: number(v) for k, v in zip(payload.COLUMNS, values) if v is not None}


#: Rounds `forget` makes at most while the devices go on sending during it.
ROUNDS = 10


def forget(db: Any, devices: Sequence[str]) -> Forgotten:
    """Remove every raw event of `devices` and correct every rollup: afterwards the rollups are
    those of a database that never had these events (see the module's docstring)."""
    start = time.perf_counter()
    devices = sorted(set(devices))
    longest[0] = 0.0
    with _opened(db, "could not forget") as store:
        events = days = device_rows = 0
        for _ in range(ROUNDS):  # another round only for what the devices sent during this one
            removed, recomputed, rows, again = _forget_round(store, devices)
            events, days, device_rows = events + removed, days + recomputed, device_rows + rows
            if not again:
                break
        return Forgotten(len(devices), events, device_rows, days, time.perf_counter() - start, longest[0])


def _forget_round(store: Store, devices: list[str]) -> tuple[int, int, int, bool]:
    """One pass of `forget`: (events removed, days recomputed, device rows removed, another round due)."""
    engine = store.engine
    tables = {name: scope(name) for name in ROLLUP_TABLES if name not in DERIVED}
    fence = _fence(store)
    mine = f"device_id IN {_in(devices)}"
    ids, days, last = [], set(), 0
    while True:  # the devices' events up to the fence, page by page by id (reads: no lock)
        got = engine.read(
            f"SELECT id, {DAY_SQL} FROM events WHERE id > ? AND id <= ? AND {mine} ORDER BY id LIMIT {BATCH * 5}",
            [last, fence, *devices],
        )
        if not got:
            break
        last = got[-1][0]
        ids += [row[0] for row in got]
        days.update(row[1] for row in got)
    days_list = sorted(days)
    kept = f"id <= {int(fence)} AND (device_id IS NULL OR device_id NOT IN (SELECT device_id FROM forget_devices))"
    setup = [("DROP TABLE IF EXISTS forget_devices", []), ("DROP TABLE IF EXISTS forget_days", [])]
    setup += [("CREATE TEMPORARY TABLE forget_devices (device_id TEXT)", [])]
    setup += [("CREATE TEMPORARY TABLE forget_days (day TEXT)", [])]
    setup += [("INSERT INTO forget_devices (device_id) VALUES (?)", [[d] for d in devices])] if devices else []
    setup += [("INSERT INTO forget_days (day) VALUES (?)", [[d] for d in days_list])] if days_list else []
    engine.scratch(setup)
    recomputed = {"day": "forget_day_", "all": "forget_all_"}
    for kind, prefix in recomputed.items():
        if kind not in tables.values() or (kind == "day" and not days_list):
            continue
        where = kept + (f" AND {DAY_SQL} IN (SELECT day FROM forget_days)" if kind == "day" else "")
        statements = [(f"DROP TABLE IF EXISTS {prefix}{t}", []) for t in ROLLUP_TABLES]
        statements += [(f"CREATE TEMPORARY TABLE {prefix}{t} ({d})", []) for t, d in ROLLUP_TABLES.items()]
        if kind == "day":
            statements += [
                (f"CREATE INDEX {prefix}{t}_day ON {prefix}{t} (day)", [])
                for t in ROLLUP_TABLES
                if tables.get(t) == "day"
            ]
        engine.scratch(statements + engine.rollup_statements(where, prefix))

    def replace(query: Query, kind: str, day: str | None) -> None:
        """The recomputed rows in place of the old, plus what was stored since the fence."""
        prefix = recomputed[kind]
        on_day = "" if day is None else f" AND {DAY_SQL} = ?"
        rows = query(
            f"SELECT received_at, kind, {', '.join(payload.COLUMNS)} FROM events WHERE id > ?{on_day} "
            "AND (device_id IS NULL OR device_id NOT IN (SELECT device_id FROM forget_devices))",
            [fence] if day is None else [fence, day],
        )
        later, _ = _rollups([_fields(row) for row in rows])
        query(f"DELETE FROM events WHERE id > ? AND {mine}{on_day}", [fence, *devices, *([] if day is None else [day])])
        for table in [t for t, k in tables.items() if k == kind]:
            columns = ", ".join(_COLUMNS[table])
            where, params = ("", []) if day is None else (" WHERE day = ?", [day])
            query(f"DELETE FROM {table}{where}", params)
            query(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {prefix}{table}{where}", params)
            for key, values in sorted(later.get(table, {}).items()):
                if day is None or key[_KEYS[table].index("day")] == day:
                    query(UPSERT[table], [*key, *values])

    for day in days_list if "day" in tables.values() else []:
        _locked(store, lambda query, day=day: replace(query, "day", day))
    # The raw events only once the rollups no longer count them: a forget cut short leaves events
    # a second one finds again. The fence's own row stays until the end: SQLite gives a new row
    # the highest id + 1, so while it is there every event stored meanwhile has an id above it.
    _delete_ids(store, [i for i in ids if i != fence])

    def finish(query: Query) -> tuple[int, bool]:
        """Last: the devices' rows, unless they sent events (on other days) meanwhile: then another round."""
        if "all" in tables.values():
            replace(query, "all", None)
        # Those up to the fence are gone by now: only what came after needs a look (an id range).
        if query(f"SELECT 1 FROM events WHERE id > ? AND {mine} LIMIT 1", [fence, *devices]):
            return 0, True
        query(f"DELETE FROM events WHERE id = ? AND {mine}", [fence, *devices])

        def remove() -> int:
            removed = 0
            for table, got in device_keys.items():
                match = " AND ".join(f"{k} = ?" for k in _KEYS[table])
                for key in got:
                    query(f"DELETE FROM {table} WHERE {match}", list(key))
                removed += len(got)
            return removed

        # The devices' shares leave the device figures with their rows (nothing else holds them).
        removed = _reshare(query, devices, remove)
        for sql, params in TOTALS:  # the per-day histograms are right by now
            query(sql, params)
        return removed, False

    # The devices' rows, found by a read (no lock): no event of theirs came after the fence, or
    # `finish` goes round again, so no row of theirs can appear before it runs.
    device_keys = {
        table: engine.read(f"SELECT {', '.join(_KEYS[table])} FROM {table} WHERE {mine}", devices)
        for table, kind in tables.items()
        if kind == "device"
    }
    device_rows, again = _locked(store, finish) if devices else (0, False)
    cleanup = [(f"DROP TABLE IF EXISTS {p}{t}", []) for p in recomputed.values() for t in ROLLUP_TABLES]
    engine.scratch([*cleanup, ("DROP TABLE forget_devices", []), ("DROP TABLE forget_days", [])])
    return len(ids), len(days_list), device_rows, again


#: Seconds between two prunes of ``collect --retain-days``.
PRUNE_EVERY = 3600.0


class Retention:
    """``collect --retain-days N``: a thread that prunes at start and then hourly, on its own connection."""

    def __init__(self, db: Any, days: int, every: float = PRUNE_EVERY) -> None:
        self.db, self.days, self.every = db, days, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: Pruned | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="clacky-collector-retention", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.last = prune(self.db, self.days)
            except StoreError as exc:  # a lost database: the writer says so too; try again later
                log.error("retention: %s", exc)
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
