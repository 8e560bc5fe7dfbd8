"""The reference collector: the two telemetry endpoints as an ASGI application.

A brand (or a curious user) runs its own with ``clacky-ipy collect --db events.db``, or
under any ASGI server: ``CLACKY_COLLECTOR_DB=events.db uvicorn clacky_ipy.collector:app``
(see README, "The collector", and docs/collector.md). It answers 201 only once the row is
committed, stamps the time itself (UTC, server clock), never stores or logs the peer's
address, and keeps only the vocabulary's keys (`payload.clean`, as the client does).

It also answers probes (``/healthz``, ``/readyz``) and Prometheus (``/metrics``, `metrics`),
and with a `guard.Guard` asks for credentials and limits each peer's and device's rate.
Whoever can reach it can send anything, so everything is bounded: 16 KiB a body, a
deadline to deliver each request, a number of connections (the longest idle one makes
room for a newcomer), a listen backlog; a body it does not read is still consumed by the
HTTP parser, never taken for the next request; a body that is not plain JSON within the
store's numbers gets a 4xx and nothing is stored.

Rows of many concurrent requests are committed together (group commit) by one writer
thread, so SQLite's cost per commit is shared and the event loop never blocks on it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from . import payload, safe
from .collector_log import CollectorLog
from .guard import Guard, GuardError, peer_key, retry_after
from .metrics import LOOPBACK, multiprocess_problem
from .metrics import allowed as metrics_allowed
from .metrics import networks as metrics_nets
from .store import Probe, Store, StoreError, open_store, utc_now

#: `Store`, `StoreError` and `utc_now` live in `store`; still importable from here.
__all__ = ["DB_ENV", "MAX_BODY", "App", "Collector", "Store", "StoreError", "app", "parse", "utc_now"]

MAX_BODY = 16 * 1024
#: Where ``uvicorn clacky_ipy.collector:app`` (or gunicorn, or any ASGI server) stores events.
DB_ENV = "CLACKY_COLLECTOR_DB"
DEFAULT_DB = "clacky-events.db"
#: For ``uvicorn clacky_ipy.collector:app``: the networks allowed to read /metrics (else loopback).
METRICS_FROM_ENV = "CLACKY_COLLECTOR_METRICS_FROM"

#: Open connections at most; beyond it the longest idle one is closed to make room.
MAX_CONNECTIONS = 1024
#: Seconds a connection has to deliver a whole request (headers and body), counted from
#: its opening or from its previous answer: a client that drips or stalls is cut off.
READ_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection is kept (the client's session reconnects after).
KEEP_ALIVE = 5
#: Connections the kernel queues before the server accepts them (a burst of clients).
BACKLOG = 2048
#: Bytes of request line and headers at most (h11's default too): uvicorn's httptools protocol
#: would otherwise keep every header a client sends, gigabytes in seconds on one connection.
MAX_HEAD = 16 * 1024
#: Rows committed in one transaction at most.
MAX_BATCH = 512

_ROUTES = {path: event for event, path in payload.PATHS.items()}
log = logging.getLogger("clacky_ipy.collector")


# -- the body: plain JSON within what the store holds ---------------------------------------
class BadBody(ValueError):
    """The body is not an event: its message is the 400's."""


def _int64(text: str) -> int:
    if len(text) > 20:  # also spares int() a 16 KiB string of digits
        raise BadBody("a number outside signed 64 bits")
    value = int(text)
    if not payload.INT64_MIN <= value <= payload.INT64_MAX:
        raise BadBody("a number outside signed 64 bits")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as infinity
        raise BadBody("a number too large for a float")
    return value


def _no_constant(name: str) -> None:
    raise BadBody(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_int=_int64, parse_float=_finite, parse_constant=_no_constant)


def parse(body: bytes) -> dict[str, Any]:
    """The JSON object in `body`, or `BadBody` saying what is wrong with it.

    Strict: UTF-8, no NaN or Infinity, integers within signed 64 bits, finite floats, no
    lone surrogate (``"\\ud800"`` is valid JSON but no valid text), nesting as deep as the
    parser's stack allows (8,000 levels is an attack, not an event).
    """
    try:
        text = body.decode("utf-8")
        value = _DECODER.decode(text)
        if "\\u" in text:  # only an escape can smuggle a lone surrogate into the text
            try:
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except UnicodeError:
                raise BadBody("a lone surrogate: not valid text") from None
    except BadBody:
        raise
    except RecursionError:
        raise BadBody("body nested too deeply") from None
    except UnicodeError:
        raise BadBody("body is not valid UTF-8 text") from None
    except ValueError:
        raise BadBody("body is not JSON") from None
    if not isinstance(value, dict):
        raise BadBody("body is not a JSON object")
    return value


# -- group commit ------------------------------------------------------------------------------
Row = tuple[str, str, dict[str, Any]]


class Writer:
    """The one thread that writes: takes every row waiting, commits them in one transaction
    (`Store.add_batch`), then wakes each request's future, which answers 201 only then."""

    def __init__(self, store: Store, metrics: Any = None) -> None:
        self.store = store
        self.metrics = metrics
        self._queue: queue.SimpleQueue[tuple[Row, asyncio.Future[None]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="clacky-collector-writer", daemon=True)
        self._thread.start()

    def submit(self, row: Row) -> asyncio.Future[None]:
        """A future of the event loop this is called from, done once `row` is committed."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put((row, future))
        return future

    def close(self) -> None:
        """Commit what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            batch = []
            while item is not None:
                batch.append(item)
                if len(batch) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            stop = item is None
            if self.metrics is not None:
                self.metrics.queue.set(self._queue.qsize())
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[tuple[Row, asyncio.Future[None]]]) -> None:
        error: BaseException | None = None
        started = time.perf_counter()
        try:
            self.store.add_batch([row for row, _ in batch])
        except Exception as exc:  # a full disk, a lost server: each request answers 503
            error = exc if isinstance(exc, StoreError) else StoreError(str(exc) or type(exc).__name__)
        if error is None and self.metrics is not None:
            counts: dict[str, int] = {}
            for (_, event, _), _ in batch:
                counts[event] = counts.get(event, 0) + 1
            self.metrics.committed(counts, time.perf_counter() - started)
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, future in batch:
            by_loop.setdefault(future.get_loop(), []).append(future)
        for loop, futures in by_loop.items():
            try:  # one wake-up per loop, not one per request
                loop.call_soon_threadsafe(_settle, futures, error)
            except RuntimeError:  # that loop is closed: nobody waits for these answers any more
                pass


def _settle(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


# -- the application ---------------------------------------------------------------------------
def _answer(
    status: int, message: str, close: bool = False, allow: bytes | bool = False, extra: tuple = ()
) -> tuple[dict, dict]:
    body = json.dumps({"status": status, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    if allow:
        headers.append((b"allow", b"POST" if allow is True else allow))
    if close:  # the rest of what the client sends is not read: the connection ends here
        headers.append((b"connection", b"close"))
    return {"type": "http.response.start", "status": status, "headers": headers}, {
        "type": "http.response.body",
        "body": body,
    }


STORED = _answer(201, "stored")
NOT_FOUND = _answer(404, "not found: POST /api/v1/telemetry/startup or /api/v1/telemetry/task")
NOT_ALLOWED = _answer(405, "only POST is allowed here", allow=True)
LENGTH_REQUIRED = _answer(411, "a Content-Length is required", close=True)
TOO_LARGE = _answer(413, f"body larger than {MAX_BODY} bytes", close=True)
UNAVAILABLE = _answer(503, "could not store the event")
UNAUTHORIZED = _answer(
    401, "credentials required: HTTP basic auth", extra=((b"www-authenticate", b'Basic realm="clacky-ipy collector"'),)
)


def _too_many(seconds: float) -> tuple[dict, dict]:
    wait = retry_after(seconds)
    return _answer(429, f"too many events: retry after {wait} s", extra=((b"retry-after", wait.encode()),))


def _plain(status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8") -> tuple[dict, dict]:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if status == 405:
        headers.append((b"allow", b"GET, HEAD"))
    return {"type": "http.response.start", "status": status, "headers": headers}, {
        "type": "http.response.body",
        "body": body,
    }


#: Seconds `/readyz` waits for the store's answer.
READY_TIMEOUT = 1.0
#: The service's own endpoints: probes and metrics (GET), never logged, never on the write path.
SERVICE_PATHS = ("/healthz", "/readyz", "/metrics")


class App:
    """The ASGI application. Give it a `db` (opened at start-up) or an open `store`.

    Under an ASGI server the lifespan protocol opens the store and starts the writer at
    start-up, and commits what is queued and closes at shutdown; a server without lifespan
    gets them on the first request.
    """

    def __init__(
        self,
        db: str | os.PathLike | None = None,
        *,
        store: Store | None = None,
        verbose: bool = False,
        guard: Guard | None = None,
        metrics_from: Sequence[str] = (),
    ):
        self.db = db
        self.store = store
        self.verbose = verbose
        self.guard = guard
        self.log = CollectorLog(verbose)  # never blocks; an outage is a few lines
        self._owns_store = store is None
        self._writer: Writer | None = None
        self._starting = threading.Lock()
        self.metrics: Any = None
        self.metrics_from = metrics_nets(metrics_from) if metrics_from else None
        self._probe: Probe | None = None
        self._probing: asyncio.Future | None = None
        self._checking: dict[bytes | None, asyncio.Future[bool]] = {}

    def start(self) -> None:
        """Open the store (if given a path) and start the writer; blocking, idempotent."""
        with self._starting:
            if self._writer is None:
                if self.guard is None:  # ``uvicorn clacky_ipy.collector:app``: settings from the environment
                    self.guard = Guard.from_env(os.environ)
                if self.metrics_from is None:
                    spec = os.environ.get(METRICS_FROM_ENV) or ",".join(LOOPBACK)
                    try:
                        self.metrics_from = metrics_nets([spec])
                    except ValueError as exc:
                        raise GuardError(f"{METRICS_FROM_ENV}={spec!r}: {exc}") from None
                if self.metrics is None:
                    problem = multiprocess_problem()
                    if problem:
                        raise GuardError(problem)
                    self.metrics = _new_metrics()
                if self.store is None:
                    self.store = open_store(self.db if self.db is not None else os.environ.get(DB_ENV, DEFAULT_DB))
                self._probe = self.store.probe()
                self._writer = Writer(self.store, self.metrics)

    def stop(self) -> None:
        """Commit every queued row, stop the writer, close the store if this app opened it."""
        with self._starting:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
                if self._probe is not None:
                    self._probe.close()
                if self._owns_store and self.store is not None:
                    self.store.close()
                    self.store = None
            self.log.close()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            if scope["path"] in SERVICE_PATHS:  # probes and scrapes: not logged, not counted
                await self._service(scope, send)
                return
            try:
                status = await self._http(scope, receive, send)
            except Exception as exc:  # a bug must not print a traceback with the request in it
                self.log.internal(f"{type(exc).__name__}: {exc}")
                status = 500
            if status != 201 and self.metrics is not None:
                self.metrics.refuse(status)
            self.log.request(scope["method"], scope["path"], status)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await loop.run_in_executor(None, self.start)
                except (StoreError, GuardError) as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await loop.run_in_executor(None, self.stop)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> int:
        event = _ROUTES.get(scope["path"])
        if event is None:
            return await _send(send, NOT_FOUND, head=scope["method"] == "HEAD")
        if scope["method"] != "POST":
            return await _send(send, NOT_ALLOWED, head=scope["method"] == "HEAD")
        if self._writer is None:
            await asyncio.get_running_loop().run_in_executor(None, self.start)
        length = authorization = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                return await _send(send, LENGTH_REQUIRED)
            elif name == b"authorization":
                authorization = value
        if length is None or not length.isdigit():  # bytes.isdigit: ASCII digits only, never "²"
            return await _send(send, LENGTH_REQUIRED)
        if int(length) > MAX_BODY:
            return await _send(send, TOO_LARGE)
        guard = self.guard
        if guard is not None and guard.active:
            refusal = await self._admit(guard, scope, authorization)
            if refusal is not None:
                return await _send(send, refusal)
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # gone (or cut off by the deadline): store nothing
                return 499
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                return await _send(send, TOO_LARGE)
            if not message.get("more_body"):
                break
        try:
            raw = parse(body)
        except BadBody as exc:
            return await _send(send, _answer(400, str(exc)))
        problem = payload.device_id_problem(raw)
        if problem is not None:
            return await _send(send, _answer(400, problem))
        if guard is not None and guard.devices is not None and type(raw.get("device_id")) is str:
            wait = guard.devices.take(raw["device_id"])
            if wait:
                return await _send(send, _too_many(wait))
        fields = payload.clean(event, raw, self.metrics.drop if self.metrics is not None else None)
        assert self._writer is not None
        try:
            await self._writer.submit((utc_now(), event, fields))
        except StoreError as exc:
            self.log.refused(str(exc))
            return await _send(send, UNAVAILABLE)
        self.log.stored()
        return await _send(send, STORED)

    async def _admit(self, guard: Guard, scope: dict, authorization: bytes | None) -> tuple[dict, dict] | None:
        """The refusal due before the body is read (a peer over its rate, wrong credentials), or None."""
        if guard.peers is not None:
            client = scope.get("client")
            wait = guard.peers.take(peer_key(client[0]) if client else "")
            if wait:
                return _too_many(wait)
        credentials = guard.credentials
        if credentials is not None and not credentials.cached(authorization):
            # scrypt, off the loop; requests with the same header at once share one check
            checking = self._checking.get(authorization)
            if checking is None:
                checking = asyncio.get_running_loop().run_in_executor(None, credentials.check, authorization)
                self._checking[authorization] = checking
                checking.add_done_callback(lambda _: self._checking.pop(authorization, None))
            if not await asyncio.shield(checking):
                return UNAUTHORIZED
        return None

    async def _service(self, scope: dict, send: Callable) -> None:
        """``/healthz``, ``/readyz`` and ``/metrics`` (the last for `metrics_from` peers only)."""
        head = scope["method"] == "HEAD"
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, _plain(405, b"only GET is allowed here\n"))
            return
        if self._writer is None:
            await asyncio.get_running_loop().run_in_executor(None, self.start)
        path = scope["path"]
        if path == "/healthz":
            answer = _plain(200, b"ok\n")
        elif path == "/readyz":
            problem = await self._ready()
            answer = (
                _plain(200, b"ready\n") if problem is None else _plain(503, safe.printable(problem).encode() + b"\n")
            )
        else:
            client = scope.get("client")
            if not metrics_allowed(client[0] if client else None, self.metrics_from or ()):
                answer = _plain(403, b"metrics are served to the networks of --metrics-from only\n")
            elif self.metrics is None:
                answer = _plain(503, b"metrics need prometheus_client: pip install 'clacky-ipy[collector]'\n")
            else:
                loop = asyncio.get_running_loop()
                body, content_type = await loop.run_in_executor(None, self.metrics.exposition)
                answer = _plain(200, body, content_type.encode())
        await _send(send, answer, head=head)

    async def _ready(self) -> str | None:
        """None when the store answered a trivial query within `READY_TIMEOUT`, else why not."""
        probe = self._probe
        if probe is None:
            return "not started"
        if self._probing is None or self._probing.done():  # one check at a time: a stuck one is waited for
            self._probing = asyncio.get_running_loop().run_in_executor(None, probe.check)
        try:
            await asyncio.wait_for(asyncio.shield(self._probing), READY_TIMEOUT)
        except asyncio.TimeoutError:
            return f"the store did not answer within {READY_TIMEOUT:g} s"
        except StoreError as exc:
            return f"the store is unavailable: {exc}"
        return None


def _new_metrics() -> Any:
    try:
        from .metrics import Metrics

        return Metrics()
    except ImportError:  # prometheus_client missing: the collector still stores, /metrics says why not
        return None


async def _send(send: Callable, answer: tuple[dict, dict], head: bool = False) -> int:
    start, body = answer
    await send(start)
    await send({"type": "http.response.body", "body": b""} if head else body)
    return start["status"]


#: For ``uvicorn clacky_ipy.collector:app``: the database comes from ``$CLACKY_COLLECTOR_DB``.
app = App()


# -- the connection limits, on top of uvicorn's HTTP protocol ----------------------------------
@functools.cache
def protocol_class() -> type:
    """`Protocol`, made on first use: importing this module does not need uvicorn."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol  # httptools when installed, else h11

    class Protocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        """uvicorn's HTTP protocol with a deadline per request and a cap on connections.

        uvicorn alone keeps a connection that never sends a byte, or drips its headers, for
        ever; and it answers 503 to everyone once too many are open. Here each connection has
        `read_timeout` seconds to deliver a whole request, and beyond `max_connections` the
        longest idle connection is closed to make room, so a flood of idle sockets cannot lock
        a legitimate client out. Other servers: ``uvicorn --http clacky_ipy.collector:Protocol``.
        """

        max_connections = MAX_CONNECTIONS
        read_timeout = READ_TIMEOUT
        #: Whose metrics count open connections (the module's `app` under ``uvicorn --http``).
        collector_app: App | None = None

        def _gauge(self) -> Any:
            metrics = (self.collector_app or app).metrics
            return None if metrics is None else metrics.connections

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            gauge = self._gauge()
            if gauge is not None:
                gauge.inc()
                self._counted = gauge
            self._deadline: asyncio.TimerHandle | None = None
            self._arm()
            if len(self.connections) > self.max_connections:
                self._make_room()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            counted = getattr(self, "_counted", None)
            if counted is not None:
                counted.dec()
                self._counted = None
            super().connection_lost(exc)

        # httptools' callbacks (h11 bounds the head itself): raising here makes the parser
        # fail, and uvicorn answers 400 and closes the connection.
        def on_message_begin(self) -> None:
            self._head = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value))
            super().on_header(name, value)

        def _count(self, size: int) -> None:
            self._head += size
            if self._head > MAX_HEAD:
                raise ValueError(f"request head over {MAX_HEAD} bytes")

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request has its own deadline

        def _idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._since = self.loop.time()
            self._deadline = self.loop.call_later(self.read_timeout, self._expire)

        def _disarm(self) -> None:
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and not cycle.more_body:
                self._deadline = self.loop.call_later(self.read_timeout, self._expire)  # read: being stored
            elif not self.transport.is_closing():
                self.transport.close()

        def _make_room(self) -> None:
            idle = [c for c in self.connections if c is not self and isinstance(c, Protocol) and c._idle()]
            victim = min(idle, key=lambda c: c._since) if idle else self
            victim.transport.close()

    return Protocol


def __getattr__(name: str) -> Any:
    if name == "Protocol":  # for ``--http clacky_ipy.collector:Protocol``
        return protocol_class()
    raise AttributeError(name)


# -- serving -----------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (a warning is due otherwise)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket; `OSError` (port in use, address not here) before anything else."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _uvicorn_server(application: App, verbose: bool, max_connections: int, read_timeout: float) -> Any:
    import uvicorn

    limits = {"max_connections": max_connections, "read_timeout": read_timeout, "collector_app": application}
    protocol = type("Protocol", (protocol_class(),), limits)

    class Server(uvicorn.Server):
        """Stops on SIGINT/SIGTERM like uvicorn, then returns instead of re-raising the signal
        (the command exits 0; every acknowledged row is committed by then)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    config = uvicorn.Config(
        application,
        http=protocol,
        lifespan="on",
        log_config=None,
        access_log=False,  # uvicorn's access log holds the peer's address
        log_level="warning" if verbose else "error",  # a malformed request is a warning
        server_header=False,
        backlog=BACKLOG,
        timeout_keep_alive=KEEP_ALIVE,
        timeout_graceful_shutdown=read_timeout,
        headers=[("server", "clacky-ipy-collector")],
    )
    return Server(config)


class Collector:
    """A collector on `host`:`port` (0: a free port) storing in `db`; ``with Collector(db) as c``
    serves on a background thread (tests, the demo), ``serve()`` in this one (the command)."""

    def __init__(
        self,
        db: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        verbose: bool = False,
        *,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout: float = READ_TIMEOUT,
        guard: Guard | None = None,
        metrics_from: Sequence[str] | None = None,
        retain_days: int | None = None,
    ) -> None:
        import uvicorn  # noqa: F401  # first: without the collector extra, nothing is bound or created

        self.socket = bind(host, port)  # then: a busy port creates no database
        try:
            self.store = open_store(db)
        except BaseException:
            self.socket.close()
            raise
        self.app = App(store=self.store, verbose=verbose, guard=guard or Guard(), metrics_from=metrics_from or LOOPBACK)
        self.server = _uvicorn_server(self.app, verbose, max_connections, read_timeout)
        self._thread: threading.Thread | None = None
        self.retention = None
        if retain_days is not None:
            from .retention import Retention

            self.retention = Retention(db, retain_days)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the collector listens on."""
        host, port = self.socket.getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve(self) -> None:
        """Serve until `stop()`, SIGINT or SIGTERM; every acknowledged row is committed."""
        if self.retention is not None:
            self.retention.start()
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.app.stop()  # also after a forced exit, which skips the lifespan's shutdown

    def start(self) -> Collector:
        if self.retention is not None:
            self.retention.start()
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve_in_thread, args=(started,), daemon=True)
        self._thread.start()
        started.wait(30)
        if not self.server.started:
            self.stop()
            raise RuntimeError("the collector did not start")
        return self

    def _serve_in_thread(self, started: threading.Event) -> None:
        async def watch() -> None:
            while not self.server.started and not self.server.should_exit:
                await asyncio.sleep(0.01)
            started.set()

        async def main() -> None:
            watcher = asyncio.ensure_future(watch())
            try:
                await self.server.serve(sockets=[self.socket])
            finally:
                watcher.cancel()
                started.set()

        try:
            asyncio.run(main())
        finally:
            self.app.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        if self.retention is not None:
            self.retention.stop()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.app.stop()
        self.socket.close()
        self.store.close()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
