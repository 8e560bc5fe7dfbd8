"""Delivery: one daemon thread, one bounded queue, one keep-alive session per process.

The caller's thread only puts a small tuple on a queue. Everything slow — importing
requests, building the payload, the network — happens on the worker thread, which
never retries an HTTP error, fails over to the next host only when the connection
itself failed, and backs off after a 429. Nothing here raises or prints.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from queue import Empty, SimpleQueue
from typing import Any, Callable, NamedTuple, Optional

from .payload import PATHS

_STOP = object()
RETRY_AFTER_DEFAULT = 60.0
RETRY_AFTER_MAX = 300.0

#: Held by a worker during its one-time set-up (importing requests, reading brand.yml).
#: ``os.fork()`` waits for it, at most FORK_WAIT seconds, so that a child never inherits
#: a half-imported module: the child would then fail every event (seen on Python 3.9).
_SETUP = threading.Lock()
FORK_WAIT = 2.0
_fork_holds_setup = False


def _before_fork() -> None:
    global _fork_holds_setup
    _fork_holds_setup = _SETUP.acquire(timeout=FORK_WAIT)


def _after_fork_in_parent() -> None:
    if _fork_holds_setup:
        _SETUP.release()


def _after_fork_in_child() -> None:
    global _SETUP  # a lock the parent's worker may still hold would never be released here
    _SETUP = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


class Plan(NamedTuple):
    """What the worker needs to send one event, decided at send time."""

    payload: dict[str, Any]
    hosts: tuple[str, ...]
    timeout: float
    user_agent: str


#: Turns a queued (event, fields) into a Plan, or None when telemetry is now off.
Planner = Callable[[str, "dict[str, Any]"], Optional[Plan]]

#: Told every event's final outcome: ``(event, path, body, outcome)``, where `body` is the
#: exact bytes sent (None when it was never built) and `outcome` one of ``sent 201``,
#: ``failed HTTP 500``, ``failed ConnectionError``, ``dropped: queue full``,
#: ``dropped: paused (429)``, ``dropped: opted out``. It is how a user sees what left
#: (``%clacky_telemetry log``); it runs on the worker (or the submitting thread for a
#: full queue) and whatever it raises is ignored.
OnOutcome = Callable[[str, str, Optional[bytes], str], Any]


def retry_after_seconds(value: str | None, now: float | None = None) -> float:
    """Seconds to pause after a 429: ``Retry-After`` as seconds or HTTP date, else 60; at most 300."""
    if not value:
        return RETRY_AFTER_DEFAULT
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return RETRY_AFTER_DEFAULT
        seconds = when - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return RETRY_AFTER_DEFAULT
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


class Transport:
    """A queue and the one thread that drains it. Safe to call from any thread."""

    def __init__(
        self,
        planner: Planner,
        shutdown_timeout: Callable[[], float],
        warm_up: Callable[[], Any] = lambda: None,
        on_outcome: OnOutcome | None = None,
    ) -> None:
        self._planner = planner
        self._on_outcome = on_outcome
        self._warm_up = warm_up
        self._shutdown_timeout = shutdown_timeout
        self.max_queue_size = 1000
        self._atexit_registered = False
        self._thread: threading.Thread | None = None
        self.reset()

    def reset(self) -> None:
        """Fresh queue, thread and counters: in a forked child (whose locks may be held
        and which has no worker thread), and in tests. A running worker is told to stop."""
        if self._thread is not None and self._thread.is_alive():  # never true in a forked child
            self._queue.put(_STOP)
        self._queue: SimpleQueue = SimpleQueue()
        self._thread = None
        self._lock = threading.Lock()
        self.sent = self.failed = self.dropped = 0
        self.paused_until = 0.0  # time.monotonic() before which events are dropped (429)
        self.last_error: str | None = None

    # -- caller's side: cheap, never blocks -------------------------------------
    def submit(self, event: str, fields: dict[str, Any]) -> bool:
        """Queue one event; False (and counted) when the queue is full."""
        if self._queue.qsize() >= self.max_queue_size:
            self._count_dropped()
            self._outcome(event, None, "dropped: queue full")
            return False
        self._queue.put((event, fields))
        if self._thread is None:
            self._start()
        return True

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for everything queued so far; True when drained."""
        if self._thread is None:
            return self._queue.qsize() == 0
        marker = threading.Event()
        self._queue.put(marker)
        return marker.wait(timeout)

    def discard(self) -> int:
        """Drop everything still queued (telemetry was turned off); returns how many."""
        n = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except Empty:
                break
            if isinstance(item, threading.Event):
                item.set()
            elif item is not _STOP:
                n += 1
                self._outcome(item[0], None, "dropped: opted out")
        self._count_dropped(n)
        return n

    def _count_dropped(self, n: int = 1) -> None:
        with self._lock:
            self.dropped += n

    def _outcome(self, event: str, body: bytes | None, outcome: str) -> None:
        """Report one event's final outcome to `on_outcome`; never raises."""
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(event, PATHS.get(event, ""), body, outcome)
        except Exception:
            pass

    def _fail(self, event: str, body: bytes | None, reason: str) -> None:
        self.failed += 1
        self.last_error = reason
        self._outcome(event, body, f"failed {reason}")

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, args=(self._queue,), name="clacky-telemetry", daemon=True)
            thread.start()
            self._thread = thread
            if not self._atexit_registered:
                atexit.register(self._at_exit)
                self._atexit_registered = True

    def _at_exit(self) -> None:
        """Bounded: exit never waits more than shutdown_timeout on the network."""
        try:
            self.flush(self._shutdown_timeout())
        except Exception:
            pass

    # -- worker's side -----------------------------------------------------------
    def _set_up(self) -> tuple[Any, Any]:
        """Import requests and warm up, here so the user's thread never pays for it."""
        with _SETUP:
            try:
                import requests

                session = requests.Session()
                session.trust_env = False  # never read ~/.netrc credentials; proxies are added in _route
            except Exception as exc:  # requests missing or broken: count, never raise
                self.last_error = type(exc).__name__
                return None, None
            try:
                self._warm_up()
            except Exception:
                pass  # retried when the first payload is built
        return requests, session

    def _run(self, queue: SimpleQueue) -> None:
        requests, session = self._set_up()
        routes: dict[str, tuple[Any, dict[str, str]]] = {}
        while True:
            item = queue.get()
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                self._deliver(requests, session, routes, *item)
            except Exception as exc:  # a bug here must never reach the user
                self._fail(item[0], None, type(exc).__name__)

    @staticmethod
    def _route(requests: Any, routes: dict, url: str, user_agent: str) -> tuple[Any, dict[str, str]]:
        """The prepared request (headers, no body) and the proxies for `url`, built once.

        Sending a copy through ``Session.send`` skips ``Session.request``'s merging of
        settings, cookies and hooks: 40% of the worker's CPU per event, which is GIL
        time taken from the user's cells. No cookie is ever sent back to the server.
        """
        route = routes.get(url)
        if route is None:
            headers = {"Content-Type": "application/json", "User-Agent": user_agent}
            route = routes[url] = (
                requests.Request("POST", url, headers=headers).prepare(),
                requests.utils.get_environ_proxies(url),
            )
        return route

    def _deliver(self, requests: Any, session: Any, routes: dict, event: str, fields: dict) -> None:
        if time.monotonic() < self.paused_until:
            self._count_dropped()
            self._outcome(event, None, "dropped: paused (429)")
            return
        plan = self._planner(event, fields)
        if plan is None:  # telemetry is off now
            self._count_dropped()
            self._outcome(event, None, "dropped: opted out")
            return
        if session is None:
            self._fail(event, None, self.last_error or "ImportError")
            return
        body = json.dumps(plan.payload, separators=(",", ":"), allow_nan=False).encode()
        connection_error = "ConnectionError"
        for host in plan.hosts:
            template, proxies = self._route(requests, routes, host + PATHS[event], plan.user_agent)
            request = template.copy()
            request.prepare_body(body, None)
            try:
                response = session.send(request, timeout=plan.timeout, proxies=proxies, allow_redirects=False)
            except requests.ConnectionError as exc:  # incl. connect timeout: the server has nothing
                self.last_error = connection_error = type(exc).__name__
                continue
            except requests.RequestException as exc:  # read timeout: it may have the event, never resend
                self._fail(event, body, type(exc).__name__)
                return
            response.close()
            if 200 <= response.status_code < 300:
                self.sent += 1
                self._outcome(event, body, f"sent {response.status_code}")
                return
            if response.status_code == 429:
                self.paused_until = time.monotonic() + retry_after_seconds(response.headers.get("Retry-After"))
            self._fail(event, body, f"HTTP {response.status_code}")
            return
        self._fail(event, body, connection_error)  # every host refused the connection
