"""The reference collector: the two telemetry endpoints, stored in SQLite.

A brand (or a curious user) can run its own: ``clacky-ipy collect --db events.db``.
It answers 201 only once the row is committed, stamps the time itself (UTC, server
clock), never stores the peer's address, and drops keys outside the vocabulary
(the same `payload.clean` the client uses). Bad input gets a 4xx and is not stored.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import payload

MAX_BODY = 16 * 1024
_SQL_TYPES = {payload.STR: "TEXT", payload.NUM: "NUMERIC", payload.BOOL: "INTEGER"}
_ROUTES = {path: event for event, path in payload.PATHS.items()}

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


def utc_now() -> str:
    """ISO 8601 in UTC with microseconds: sorts as text, and its first 10 characters are the day."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    """One SQLite file in WAL mode; one connection shared under a lock (commits are short)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across crashes of this process
        self._db.execute("PRAGMA cache_size=-65536")  # 64 MiB: the indexes' pages stay in memory
        columns = ", ".join(f"{key} {_SQL_TYPES[kind]}" for key, kind in payload.COLUMNS.items())
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, received_at TEXT NOT NULL, "
                f"kind TEXT NOT NULL, {columns})"
            )
            for name in ("events_kind_time", "events_time"):  # earlier layouts: they led the planner astray
                self._db.execute(f"DROP INDEX IF EXISTS {name}")
            for name, definition in INDEXES.items():
                self._db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON events {definition}")
        self._insert = {
            event: f"INSERT INTO events (received_at, kind, {', '.join(keys)}) VALUES (?, ?{', ?' * len(keys)})"
            for event, keys in payload.KEYS.items()
        }

    def add(self, event: str, fields: dict[str, Any], received_at: str | None = None) -> None:
        """Store one cleaned event and commit before returning."""
        row = [received_at or utc_now(), event, *(fields.get(key) for key in payload.KEYS[event])]
        with self._lock, self._db:
            self._db.execute(self._insert[event], row)

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


class Handler(BaseHTTPRequestHandler):
    """POST the two paths; everything else is a clear 4xx."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the client's session expects
    # Headers and body leave in two writes: with Nagle on, the body waits for the client's
    # delayed ACK (40 ms per request on Linux, seen in the drain benchmark).
    disable_nagle_algorithm = True
    server_version = "clacky-ipy-collector"
    timeout = 30  # an idle or slow client cannot hold a thread for ever
    store: Store  # set on the subclass made by Collector
    verbose = False

    def do_POST(self) -> None:
        event = _ROUTES.get(self.path.split("?", 1)[0])
        if event is None:
            return self._answer(404, "not found: POST /api/v1/telemetry/startup or /task")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return self._answer(411, "a Content-Length is required", close=True)
        if int(length) > MAX_BODY:
            return self._answer(413, f"body larger than {MAX_BODY} bytes", close=True)
        try:
            body = json.loads(self.rfile.read(int(length)))
        except (ValueError, UnicodeDecodeError):
            return self._answer(400, "body is not JSON")
        if not isinstance(body, dict):
            return self._answer(400, "body is not a JSON object")
        try:
            self.store.add(event, payload.clean(event, body))
        except sqlite3.Error:
            return self._answer(503, "could not store the event")
        self._answer(201, "stored")

    def _not_allowed(self) -> None:
        if self.path.split("?", 1)[0] in _ROUTES:
            return self._answer(405, "only POST is allowed here", headers={"Allow": "POST"})
        return self._answer(404, "not found")

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def do_HEAD(self) -> None:
        self._answer(405 if self.path in _ROUTES else 404, "", headers={"Allow": "POST"})

    def _answer(self, status: int, message: str, close: bool = False, headers: dict | None = None) -> None:
        body = b"" if self.command == "HEAD" else json.dumps({"status": status, "message": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:  # the unread body would otherwise be taken for the next request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        if self.verbose:  # method, path and status only: never the peer's address
            print(f"{utc_now()} {format % args}", flush=True)


class Collector:
    """The server and its store; a context manager that serves on a background thread."""

    def __init__(self, db: str | Path, host: str = "127.0.0.1", port: int = 8765, verbose: bool = False) -> None:
        self.store = Store(db)
        handler = type("BoundHandler", (Handler,), {"store": self.store, "verbose": verbose})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True  # acknowledged rows are committed already
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.2)

    def start(self) -> Collector:
        self._thread = threading.Thread(target=self.serve_forever, name="clacky-collector", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join()
        self.server.server_close()
        self.store.close()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
