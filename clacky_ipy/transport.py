"""Delivery: one bounded queue, one worker thread, and under a backlog a few more senders.

The caller's thread only appends a small tuple to a deque. Everything slow — importing
requests, building the payload, the network — happens on the worker, which waits while
the user is busy (events keep coming) and sends when the shell has been idle for
`IDLE_S`, when the queue is half full, when the oldest has waited `MAX_WAIT_S`, or when
someone flushes. While events wait, up to ``max_connections`` requests are in flight,
each on its own keep-alive connection; with nothing waiting there is one thread.

Every request has one deadline (connect to last byte, equal to ``timeout``), reads at
most `BODY_CAP` bytes of the answer, and fails over to the next host only when the
request was never written: a stall or reset after that is a failure, never a resend.
Nothing here raises or prints, whatever the server or the user's values do.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import socket
import sys
import threading
import time
import weakref
from collections import deque
from time import perf_counter
from typing import Any, Callable, NamedTuple, Optional

from .payload import PATHS

RETRY_AFTER_DEFAULT = 60.0
RETRY_AFTER_MAX = 300.0

#: Deferral: the worker sends once no event was made for IDLE_S (the shell is idle), or
#: the oldest has waited MAX_WAIT_S, or the queue is half full (`max_queue_size` // 2, so
#: that nothing is dropped while it waits); a flush sends at once.
IDLE_S = 0.05
MAX_WAIT_S = 1.0

#: Events waiting, beyond the one the worker sends, before another sender is added: a
#: couple of events go out one after the other, in order, on one connection.
BACKLOG = 4

#: The most of an answer's body ever read: the status line decides, the body is not used.
BODY_CAP = 4096

#: Held by a worker while it imports what the worker uses. ``os.fork()`` waits for it, at
#: most FORK_WAIT seconds, so that a child never inherits a half-imported module (or a
#: module lock held by a thread it does not have: its next import would wait for ever).
#: Files (brand.yml) are read after, without it: a slow read never makes a fork wait.
_SETUP = threading.Lock()
FORK_WAIT = 1.0

#: Imported by the worker under _SETUP before anything else, so that no import happens
#: later on a worker thread (building the context, sending, parsing a Retry-After date).
WORKER_IMPORTS = ("requests", "yaml", "hashlib", "platform", "socket", "email.utils", "encodings.idna")

#: Whether this thread's fork took _SETUP: per thread, since two threads may fork at once
#: and one's time-out must not make the other's parent forget to release it.
_FORK = threading.local()


#: Every Transport of the process, for the fork hooks.
_TRANSPORTS: weakref.WeakSet = weakref.WeakSet()

#: Python 3.12+ warns at ``os.fork()`` in a process with more than one thread (DeprecationWarning):
#: the worker (waiting for events, deferring, or finishing a request within FORK_JOIN) is stopped
#: before a fork and started again after it, so that it is never the reason.
STOP_FOR_FORK = sys.version_info >= (3, 12)
FORK_JOIN = 0.2


def _before_fork() -> None:
    if STOP_FOR_FORK:
        for transport in list(_TRANSPORTS):
            transport._stop_for_fork()
    _FORK.holds_setup = _SETUP.acquire(timeout=FORK_WAIT)


def _after_fork_in_parent() -> None:
    if getattr(_FORK, "holds_setup", False):
        _FORK.holds_setup = False
        _SETUP.release()
    if STOP_FOR_FORK:
        for transport in list(_TRANSPORTS):
            transport._resume_after_fork()


def _os_threads() -> int | None:
    """The process's threads as the OS counts them (what 3.12's fork warning reads), where it can tell."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _after_fork_in_child() -> None:
    global _SETUP  # a lock the parent's worker may still hold would never be released here
    _SETUP = threading.Lock()
    _FORK.holds_setup = False


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


class Plan(NamedTuple):
    """What the worker needs to send one event, decided at send time."""

    payload: dict[str, Any]
    hosts: tuple[str, ...]
    timeout: float
    user_agent: str

    def __repr__(self) -> str:
        """A debugger or a log may show a Plan: never a host's ``user:password@``."""
        from .config import mask_credentials

        fields = ", ".join(f"{name}={value!r}" for name, value in zip(self._fields, self))
        return mask_credentials(f"Plan({fields})")


#: What a planner returns for an item that turned out to be no event (e.g. the cell that
#: loaded the extension): nothing is sent and nothing is counted.
SKIP: Any = object()

#: Turns a queued (event, data) into a Plan, SKIP, or None when telemetry is now off.
Planner = Callable[[str, Any], Optional[Plan]]

#: Told every event's final outcome: ``(event, path, body, outcome)``, where `body` is the
#: exact bytes sent (None when it was never built) and `outcome` one of ``sent 201``,
#: ``failed HTTP 500``, ``failed ConnectionError``, ``dropped: queue full``,
#: ``dropped: paused (429)``, ``dropped: opted out``, ``dropped: at exit``. It is how a
#: user sees what left (``%clacky_telemetry log``); it runs on the worker (or the
#: submitting thread for a full queue or an event made at exit) and whatever it raises
#: is ignored.
OnOutcome = Callable[[str, str, Optional[bytes], str], Any]


def retry_after_seconds(value: str | None, now: float | None = None) -> float:
    """Seconds to pause after a 429: ``Retry-After`` as seconds or HTTP date; 60 when absent or
    invalid (negative seconds too); at most 300."""
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
        seconds = max(seconds, 0.0)  # a date already past: now
    if not seconds >= 0:  # negative or NaN seconds are invalid: as if absent (not "no pause")
        return RETRY_AFTER_DEFAULT
    return min(seconds, RETRY_AFTER_MAX)


#: urllib3's names for what reading a body raises, as requests names the same failure while
#: reading the headers: the outcomes (`Last error`, the log) use requests' names only.
BODY_ERRORS = {"ReadTimeoutError": "ReadTimeout", "ProtocolError": "ConnectionError"}


# -- one deadline per request -------------------------------------------------------------
class _Request(threading.local):
    """The request this thread is sending: its deadline, and whether a byte of it was written."""

    deadline: float | None = None
    written = False


_REQUEST = _Request()


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each allowed only what is left of the request's deadline.

    A socket timeout bounds each read; a server dripping a byte per read would
    otherwise hold the thread for ever.
    """

    def __init__(self, sock: socket.socket, deadline: float, makefile: Any) -> None:
        self._sock = sock
        self._deadline = deadline
        self._makefile = makefile  # http.client's own reader: while open, the socket's fd stays open

    def close(self) -> None:
        if not self.closed:
            self._makefile.close()
        super().close()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("the request's deadline passed")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


def _connection_class(base: type) -> type:
    """`base` (a urllib3 connection) that reads by the deadline and notes when the request is written.

    Made on the worker (by `_new_session`): ``http.client`` imports ``ssl`` and ``email``,
    11 ms that ``%load_ext`` would otherwise pay on the user's thread.
    """
    import http.client

    class _Response(http.client.HTTPResponse):
        """http.client's response, reading through a `_DeadlineReader` when a deadline is set."""

        def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(sock, *args, **kwargs)
            deadline = _REQUEST.deadline
            if deadline is not None:
                self.fp = io.BufferedReader(_DeadlineReader(sock, deadline, self.fp))

    class Connection(base):  # type: ignore[misc, valid-type]
        response_class = _Response
        _connecting = False

        def connect(self) -> None:
            self._connecting = True  # a proxy's CONNECT is not the request
            try:
                super().connect()
            finally:
                self._connecting = False

        def send(self, data: Any) -> None:
            if self.sock is None and self.auto_open:
                self.connect()  # refused, DNS, connect timeout, TLS: the server has nothing
            if not self._connecting:
                _REQUEST.written = True  # from here on the server may have the event
            super().send(data)

    return Connection


def _new_session(requests: Any) -> Any:
    """A Session with one keep-alive connection per host, whose connections keep the deadline."""
    from urllib3 import connection, connectionpool, poolmanager

    class HTTPPool(connectionpool.HTTPConnectionPool):
        ConnectionCls = _connection_class(connection.HTTPConnection)

    class HTTPSPool(connectionpool.HTTPSConnectionPool):
        ConnectionCls = _connection_class(connection.HTTPSConnection)

    pools = {"http": HTTPPool, "https": HTTPSPool}

    def use_pools(manager: Any) -> Any:
        if manager.pool_classes_by_scheme is poolmanager.pool_classes_by_scheme:  # not SOCKS
            manager.pool_classes_by_scheme = pools
        return manager

    class Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            use_pools(self.poolmanager)

        def proxy_manager_for(self, proxy: Any, **kwargs: Any) -> Any:
            return use_pools(super().proxy_manager_for(proxy, **kwargs))

    session = requests.Session()
    session.trust_env = False  # never read ~/.netrc credentials; proxies are added per route
    adapter = Adapter(pool_connections=4, pool_maxsize=1)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _Sender:
    """One thread's session and prepared requests: one keep-alive connection per host."""

    def __init__(self, requests: Any) -> None:
        self.requests = requests
        self.session = None if requests is None else _new_session(requests)
        self.routes: dict[str, tuple[Any, dict[str, str]]] = {}

    def route(self, url: str, user_agent: str) -> tuple[Any, dict[str, str]]:
        """The prepared request (headers, no body) and the proxies for `url`, built once.

        Sending a copy through ``Session.send`` skips ``Session.request``'s merging of
        settings, cookies and hooks: 40% of the worker's CPU per event, which is GIL
        time taken from the user's cells. No cookie is ever sent back to the server.
        """
        route = self.routes.get(url)
        if route is None:
            headers = {"Content-Type": "application/json", "User-Agent": user_agent}
            route = self.routes[url] = (
                self.requests.Request("POST", url, headers=headers).prepare(),
                self.requests.utils.get_environ_proxies(url),
            )
        return route

    def send(self, path: str, plan: Plan, body: bytes, cap: float | None) -> tuple[int | None, str]:
        """POST `body` to the plan's hosts in order: (status, its Retry-After or "") or
        (None, the error's name).

        The next host is tried only when nothing of the request was written (refused,
        DNS, connect timeout, TLS): once it may have been sent, the event is never sent
        again. `cap` (seconds) shortens the deadline when exit is near.
        """
        error = "ConnectionError"
        for host in plan.hosts:
            template, proxies = self.route(host + path, plan.user_agent)
            request = template.copy()
            request.prepare_body(body, None)
            timeout = plan.timeout if cap is None else max(0.001, min(plan.timeout, cap))
            deadline = time.monotonic() + timeout
            _REQUEST.deadline, _REQUEST.written = deadline, False
            try:
                try:
                    response = self.session.send(
                        request, timeout=timeout, proxies=proxies, allow_redirects=False, stream=True
                    )
                except Exception as exc:
                    error = type(exc).__name__
                    if _REQUEST.written:
                        return None, error  # the server may have it: never sent again
                    continue
                try:
                    response.raw.read(BODY_CAP, decode_content=False)  # all of a small body: the connection is reused
                except Exception as exc:
                    if time.monotonic() >= deadline:  # a body slower than the deadline
                        name = type(exc).__name__
                        return None, BODY_ERRORS.get(name, name)
                finally:
                    response.close()  # closes the connection when more was left unread
                return response.status_code, response.headers.get("Retry-After") or ""
            finally:
                _REQUEST.deadline = None
        return None, error  # no host could be reached

    def close(self) -> None:
        try:
            if self.session is not None:
                self.session.close()
        except Exception:
            pass


class Transport:
    """The queue and the threads that drain it. Safe to call from any thread."""

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
        self.max_connections = 4
        self.idle_s, self.max_wait_s = IDLE_S, MAX_WAIT_S
        self.batch: int | None = None  # None: half of max_queue_size
        self._generation = 0
        self._bell: threading.Event | None = None
        self._forking = False  # the worker stops (a fork is about to happen) and is started after
        self.reset()
        _TRANSPORTS.add(self)
        # Registered now (at import, for the process's client), so that it runs after every
        # atexit handler registered later: their events are still delivered.
        atexit.register(self._at_exit)

    def reset(self, forked: bool = False) -> None:
        """Fresh queue, threads, locks and counters: in a forked child (whose locks may be
        held, and which has no threads), and in tests. Running threads are told to stop."""
        self._generation += 1
        old_bell = self._bell
        if old_bell is not None and not forked:
            old_bell.set()
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # an event finished, or a sender stopped
        self._bell = threading.Event()  # rung when the worker may have something to do
        self._thread: threading.Thread | None = None
        self._idle = True  # no worker waits with a timeout: submit() must ring the bell
        self._urgent = 0  # flushes waiting: send now, on every connection
        self._due = 0  # events still to send of the batch that became due
        self.threads = 0  # sending threads alive (the worker included)
        self.in_flight = 0
        self.sent = self.failed = self.dropped = 0
        self.paused_until = 0.0  # time.monotonic() before which events are dropped (429)
        self.last_error: str | None = None
        self.closed = False  # the exit flush ran: later events are dropped and counted

    def after_fork_in_child(self) -> None:
        self._forking = False
        self.reset(forked=True)

    def _stop_for_fork(self) -> None:
        """Before ``os.fork()``: stop the worker once the request it may be sending is done (a fork waits
        at most FORK_JOIN for that, FORK_WAIT while it imports), and wait until its OS thread is gone."""
        thread = self._thread
        if thread is None or self.threads != 1:
            return  # helpers sending a backlog: left alone
        before = _os_threads()
        self._forking = True
        bell = self._bell
        if bell is not None:
            bell.set()
        if _SETUP.acquire(timeout=FORK_WAIT):  # a worker still importing: as long as a fork waits for that anyway
            _SETUP.release()
        thread.join(FORK_JOIN)
        if thread.is_alive() or before is None:
            return
        deadline = time.monotonic() + FORK_JOIN / 10  # join returns just before the OS thread ends (3.12)
        while (_os_threads() or 0) >= before and time.monotonic() < deadline:
            time.sleep(0.0005)

    def _resume_after_fork(self) -> None:
        """After ``os.fork()``, in the parent: what waits is sent, by a new worker."""
        if not self._forking:
            return
        self._forking = False
        if self._queue and not self.closed:
            self._ring()

    # -- caller's side: cheap, never blocks -------------------------------------
    def submit(self, event: str, data: Any, made_at: float | None = None) -> bool:
        """Queue one event; False (and counted) when the queue is full or exit is under way."""
        queue = self._queue
        if self.closed or sys.is_finalizing():
            self.drop(event, "dropped: at exit")  # no thread may start now, and none would run
            return False
        waiting = len(queue)
        if waiting >= self.max_queue_size:
            self.drop(event, "dropped: queue full")
            return False
        queue.append((event, data, perf_counter() if made_at is None else made_at))
        if self._idle or waiting + 1 == (self.batch or self.max_queue_size >> 1) or self._thread is None:
            self._ring()  # the worker waits for an event, or the batch is full: send now
        return True

    @property
    def queued(self) -> int:
        return len(self._queue)

    def counters(self) -> dict[str, int]:
        """A consistent snapshot: sent + failed + dropped + queued + in_flight is every event made."""
        with self._lock:
            return {
                "queued": len(self._queue),
                "in_flight": self.in_flight,
                "sent": self.sent,
                "failed": self.failed,
                "dropped": self.dropped,
            }

    def flush(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds until nothing is queued or in flight; True when drained."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            self._urgent += 1
        try:
            if self._queue:
                if self._thread is None:
                    self._start()
                if self._thread is None:  # no thread can start (exit under way): send here
                    self._send_here(deadline)
                self._bell.set()
            with self._changed:
                while self._queue or self.in_flight:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    if self._thread is None and self._queue:  # the worker ended meanwhile
                        self._changed.release()
                        try:
                            self._start()
                            self._bell.set()
                        finally:
                            self._changed.acquire()
                    self._changed.wait(left)
            return True
        finally:
            with self._lock:
                self._urgent -= 1

    def discard(self) -> int:
        """Drop everything still queued (telemetry was turned off); returns how many."""
        self._due = 0
        n = 0
        while True:
            with self._lock:  # a sender checks and pops under it: never pop between the two
                if not self._queue:
                    break
                event = self._queue.popleft()[0]
            n += 1
            self.drop(event, "dropped: opted out")
        return n

    def drop(self, event: str, outcome: str) -> None:
        """Count one event dropped (here, or by the client before it reached the queue) and report why."""
        self._count("dropped")
        self._outcome(event, None, outcome)

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)

    def _outcome(self, event: str, body: bytes | None, outcome: str) -> None:
        """Report one event's final outcome to `on_outcome`; never raises."""
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(event, PATHS.get(event, ""), body, outcome)
        except BaseException:
            pass

    def _ring(self) -> None:
        """Wake the worker, or start one when there is none (or it died).

        Once rung, the worker will look at the queue: until it waits again, later events
        need not ring (each ring costs the user's thread a lock and a notify).
        """
        self._idle = False
        if self._thread is None:
            self._start()
        self._bell.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or sys.is_finalizing():
                return
            self._spawn(self._run, "clacky-telemetry", worker=True)

    def _spawn(self, target: Callable[[int], None], name: str, worker: bool = False) -> bool:
        """Start one sending thread (the lock is held). False when no thread can start now."""
        thread = threading.Thread(target=target, args=(self._generation,), name=name, daemon=True)
        try:
            thread.start()
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            return False
        self.threads += 1
        if worker:
            self._thread = thread
        return True

    def _at_exit(self) -> None:
        """The final flush: bounded by shutdown_timeout; later events are dropped and counted."""
        try:
            if self._queue or self.in_flight:
                self.flush(self._shutdown_timeout())
        except BaseException:
            pass
        self.closed = True

    # -- worker's side -----------------------------------------------------------
    def _set_up(self) -> Any:
        """Import requests (None when it cannot be) and warm up, here so the user's thread never pays for it."""
        import importlib

        with _SETUP:
            for name in WORKER_IMPORTS:
                try:
                    importlib.import_module(name)
                except BaseException as exc:  # missing or broken: counted when sending, never raised
                    self.last_error = type(exc).__name__
            requests = sys.modules.get("requests")
        try:
            self._warm_up()  # outside _SETUP: a slow brand.yml never makes a fork wait
        except BaseException:
            pass  # retried when the first payload is built
        return requests

    def _delay(self, now: float) -> float:
        """Seconds until the queue's head should be sent (<= 0: now). IndexError when empty.

        Once it is time, everything waiting then is sent (`_due`), even if a new event
        comes meanwhile: a batch is not cut into pieces each waiting its own turn.
        """
        queue = self._queue
        first, last = queue[0], queue[-1]
        if self._urgent or self._due > 0:
            return 0.0
        delay = min(last[2] + self.idle_s, first[2] + self.max_wait_s) - now
        if delay <= 0 or len(queue) >= (self.batch or self.max_queue_size >> 1):
            self._due = len(queue)
            return 0.0
        return delay

    def _take(self, generation: int, wait: bool) -> tuple | None:
        """The next item once it is due; None when this thread should stop (or, without
        `wait`, when nothing is due now)."""
        queue, bell = self._queue, self._bell
        while generation == self._generation:
            if self._forking:
                return None  # a fork is near: the worker stops; a new one starts after it
            try:
                delay = self._delay(perf_counter())
            except IndexError:  # empty
                if not wait:
                    return None
                bell.clear()
                self._idle = True
                if not queue and generation == self._generation:
                    bell.wait()
                if generation != self._generation:
                    return None  # reset meanwhile: `_idle` belongs to the new worker now
                self._idle = False
                continue
            if delay > 0:
                if not wait:
                    return None
                bell.clear()
                bell.wait(delay)
                continue
            with self._lock:
                if not queue:
                    continue
                item = queue.popleft()
                self.in_flight += 1
                if self._due > 0:
                    self._due -= 1
            return item
        return None

    def _run(self, generation: int) -> None:
        """The worker: sends one event at a time, and calls for helpers under a backlog."""
        sender = None
        try:
            sender = _Sender(self._set_up())
            if generation == self._generation:
                self._idle = False  # awake: a new event need not ring until the worker waits idle
            first = True
            while True:
                item = self._take(generation, wait=True)
                if item is None:
                    return
                if not first and len(self._queue) >= BACKLOG:
                    self._add_helpers(generation)
                first = False  # the first event (startup) goes alone, before any other
                self._deliver(sender, generation, item)
        except BaseException:
            pass  # never a traceback; the next event starts a new worker
        finally:
            if sender is not None:
                sender.close()
            self._stopped(generation, worker=True)

    def _add_helpers(self, generation: int) -> None:
        """Up to max_connections - 1 more senders while events are due; they stop when none is."""
        try:
            if self.threads >= self.max_connections or self._delay(perf_counter()) > 0 or sys.is_finalizing():
                return
        except IndexError:
            return
        with self._lock:
            if generation == self._generation and self.threads < self.max_connections:
                self._spawn(self._help, "clacky-telemetry-sender")

    def _help(self, generation: int) -> None:
        sender = None
        try:
            sender = _Sender(self._set_up())
            while True:
                item = self._take(generation, wait=False)
                if item is None:
                    return
                self._deliver(sender, generation, item)
        except BaseException:
            pass
        finally:
            if sender is not None:
                sender.close()
            self._stopped(generation)

    def _stopped(self, generation: int, worker: bool = False) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self.threads -= 1
            if worker:
                self._thread = None
                self._idle = True  # the next event starts a new worker
            self._changed.notify_all()

    def _send_here(self, deadline: float) -> None:
        """At exit, when no thread can start: send on the calling thread until `deadline`."""
        generation = self._generation
        sender = _Sender(self._set_up())
        try:
            while time.monotonic() < deadline:
                with self._lock:
                    if not self._queue:
                        return
                    item = self._queue.popleft()
                    self.in_flight += 1
                self._deliver(sender, generation, item, cap=deadline - time.monotonic())
        finally:
            sender.close()

    def _deliver(self, sender: _Sender, generation: int, item: tuple, cap: float | None = None) -> None:
        """Plan, build and send one taken item, then count its outcome. Never raises."""
        event, data, _ = item
        body = None
        counter, outcome = "failed", "failed"
        try:
            if time.monotonic() < self.paused_until:
                counter, outcome = "dropped", "dropped: paused (429)"
            else:
                plan = self._planner(event, data)
                if plan is SKIP:
                    counter = outcome = None
                elif plan is None:  # telemetry is off now
                    counter, outcome = "dropped", "dropped: opted out"
                elif sender.session is None:
                    outcome = f"failed {self.last_error or 'ImportError'}"
                else:
                    body = json.dumps(plan.payload, separators=(",", ":"), allow_nan=False).encode()
                    status, said = sender.send(PATHS[event], plan, body, cap)
                    if status is None:
                        outcome = f"failed {said}"
                    elif 200 <= status < 300:
                        counter, outcome = "sent", f"sent {status}"
                    else:
                        outcome = f"failed HTTP {status}"
                        if status == 429:
                            self.paused_until = time.monotonic() + retry_after_seconds(said)
        except BaseException as exc:  # a user's value, or a bug here: never reaches the user
            try:
                outcome = f"failed {type(exc).__name__}"
            except BaseException:
                outcome = "failed"
        self._finish(generation, event, body, counter, outcome)

    def _finish(
        self, generation: int, event: str, body: bytes | None, counter: str | None, outcome: str | None
    ) -> None:
        with self._lock:
            if generation != self._generation:
                return  # reset meanwhile (tests): the old counters are gone
            self.in_flight -= 1
            if counter is not None:
                setattr(self, counter, getattr(self, counter) + 1)
                if counter == "failed":
                    self.last_error = outcome[len("failed ") :] or None
            if self._urgent and not self._queue and not self.in_flight:
                self._changed.notify_all()  # a flush waits for exactly this
        if outcome is not None:
            self._outcome(event, body, outcome)
