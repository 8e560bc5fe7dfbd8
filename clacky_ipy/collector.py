"""The reference collector: the two telemetry endpoints, stored in SQLite.

A brand (or a curious user) can run its own: ``clacky-ipy collect --db events.db``.
It answers 201 only once the row is committed, stamps the time itself (UTC, server
clock), never stores the peer's address, and drops keys outside the vocabulary
(the same `payload.clean` the client uses). Bad input gets a 4xx and is not stored.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import payload
from .store import INDEXES, Store, StoreError, open_store, utc_now

__all__ = ["INDEXES", "MAX_BODY", "Collector", "Handler", "Store", "StoreError", "utc_now"]

MAX_BODY = 16 * 1024
_ROUTES = {path: event for event, path in payload.PATHS.items()}


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
        except StoreError:
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
        self.store = open_store(db)
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
