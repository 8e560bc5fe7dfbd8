"""Where the collector keeps events: one small interface, opened with `open_store`.

The collector (HTTP) and the report (figures) both go through this module, so the
database's layout is known in one place. A path opens an SQLite file (the embedded
default, WAL); a ``postgresql://`` URL will open PostgreSQL.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import payload

_SQL_TYPES = {payload.STR: "TEXT", payload.NUM: "NUMERIC", payload.BOOL: "INTEGER"}

#: Indexes earlier versions kept for the report's queries over raw events.
OLD_INDEXES = (
    "events_kind_time",
    "events_time",
)

#: What the report reads, so that each of its queries walks a narrow index in order instead
#: of sorting or visiting the table (26 s -> under 2 s at a million events; see BENCHMARKS.md).
#: Each index costs every insert a little: there is one per report query, and no more.
INDEXES = {
    "events_day_device": "(substr(received_at, 1, 10), kind, device_id)",
    "events_task_duration": "(status, duration_ms) WHERE kind = 'task'",
    "events_task_model": "(model) WHERE kind = 'task'",
    "events_task_provider": "(provider) WHERE kind = 'task'",
    "events_task_trigger": "(trigger) WHERE kind = 'task'",
    "events_startup_source": "(launch_source) WHERE kind = 'startup'",
    "events_split": "(frontend, ci, kind)",
}


class StoreError(Exception):
    """An operator's problem with the database (missing, corrupt, foreign, unreachable).

    ``str()`` is one line the command line prints as it is.
    """


def utc_now() -> str:
    """ISO 8601 in UTC with microseconds: sorts as text, and its first 10 characters are the day."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def open_store(db: str | os.PathLike, *, create: bool = True) -> Store:
    """The store at `db`: a ``postgresql://`` URL or an SQLite file's path.

    With ``create=False`` (the report) nothing is created: a missing or empty
    database is a `StoreError`, as is a corrupt or foreign one in any case.
    """
    return Store(db, create=create)


class Store:
    """One SQLite file in WAL mode; one connection shared under a lock (commits are short)."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._db = _connect_sqlite(Path(self.path), create)
        try:
            self._schema(create)
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"{self.path}: not a usable SQLite database ({_one_line(exc)})") from None
        except StoreError:
            self._db.close()
            raise
        self._insert = {
            event: f"INSERT INTO events (received_at, kind, {', '.join(keys)}) VALUES (?, ?{', ?' * len(keys)})"
            for event, keys in payload.KEYS.items()
        }

    def _schema(self, create: bool) -> None:
        db = self._db
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "events" not in tables:
            if not create:
                raise StoreError(f"{self.path}: not a clacky-ipy database (no events table)")
            if tables:
                raise StoreError(f"{self.path}: a database of something else (no events table): not touching it")
        elif not {"received_at", "kind"} <= {row[1] for row in db.execute("PRAGMA table_info(events)")}:
            raise StoreError(f"{self.path}: a database of something else (its events table is not ours)")
        db.execute("PRAGMA synchronous=NORMAL")  # durable across crashes of this process
        db.execute("PRAGMA cache_size=-65536")  # 64 MiB: the indexes' pages stay in memory
        if not create:
            return
        db.execute("PRAGMA journal_mode=WAL")  # after the checks: it writes to the file
        columns = ", ".join(f"{key} {_SQL_TYPES[kind]}" for key, kind in payload.COLUMNS.items())
        with db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, received_at TEXT NOT NULL, "
                f"kind TEXT NOT NULL, {columns})"
            )
            for name in OLD_INDEXES:  # earlier layouts: they led the planner astray
                db.execute(f"DROP INDEX IF EXISTS {name}")
            for name, definition in INDEXES.items():
                db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON events {definition}")

    def add_batch(self, rows: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """Store cleaned events ``(received_at, event, fields)`` in one transaction, committed on return."""
        params = {event: [] for event in payload.KEYS}
        for received_at, event, fields in rows:
            params[event].append([received_at, event, *(fields.get(key) for key in payload.KEYS[event])])
        try:
            with self._lock, self._db:
                for event, batch in params.items():
                    if batch:
                        self._db.executemany(self._insert[event], batch)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: could not store {len(rows)} events ({_one_line(exc)})") from None

    def add(self, event: str, fields: dict[str, Any], received_at: str | None = None) -> None:
        """Store one cleaned event and commit before returning."""
        self.add_batch([(received_at or utc_now(), event, fields)])

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def rows(self) -> list[dict[str, Any]]:
        """Every stored event, oldest first, without empty columns."""
        with self._lock:
            cursor = self._db.execute("SELECT * FROM events ORDER BY id")
            names = [d[0] for d in cursor.description]
            return [{k: v for k, v in zip(names, row) if v is not None} for row in cursor]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _connect_sqlite(path: Path, create: bool) -> sqlite3.Connection:
    """A connection to the file at `path`, opened as a path (never spliced into a URI)."""
    if path.is_dir():
        raise StoreError(f"{path}: is a folder, not a database file")
    if not path.exists():
        if not create:
            raise StoreError(f"no database at {path}")
        if not path.parent.is_dir():
            raise StoreError(f"{path}: the folder {path.parent} does not exist")
    elif path.stat().st_size == 0 and not create:
        raise StoreError(f"{path}: an empty file, not a clacky-ipy database")
    try:
        return sqlite3.connect(path, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open ({_one_line(exc)})") from None
