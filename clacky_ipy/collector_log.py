"""The collector's log: it never holds up a request, and a burst of one message is a few lines.

`configure` (the ``collect`` command) sends every record through a bounded queue to one thread
that writes it, one line each: a stream nobody reads (a paused terminal, a stalled log shipper)
stops that thread only, never the event loop or the writer. A record that finds the queue full is
dropped and counted, and the count is written once the stream takes lines again.

`Bursts` tells a repeated message in a few lines: its first occurrence at once, then every
`PERIOD` seconds how many more came, and for a state (the database unavailable) one line when it
ends. `CollectorLog` is what the collector says with it; `configure` applies it to every other
record too (uvicorn's, asyncio's, a library's), so no flood reaches the stream at the default level.
With ``--verbose`` each request is a line of its own (time, method, path, status; never the peer's
address) on stdout, and each refusal's detail on stderr.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from collections.abc import Hashable
from typing import IO, Any, Callable

from . import safe
from .store import utc_now

#: Seconds between two lines about the same repeated message.
PERIOD = 5.0
#: Records waiting for the stream at most; more are dropped (and counted).
QUEUE_SIZE = 1000
#: The logger whose lines go to stdout: ``--verbose``'s line per request, and the command's last line.
STDOUT = "clacky_ipy.collector.stdout"
#: The collector's own logger.
LOGGER = "clacky_ipy.collector"
PREFIX = "clacky-ipy collect: "
_SUMMARY = "clacky_summary"  # a record `Bursts` wrote: never summarised again


class _Burst:
    __slots__ = ("again", "count", "detail", "lasting", "level", "since", "started", "total")

    def __init__(self, now: float, detail: str, again: str, level: int, lasting: bool) -> None:
        self.started = self.since = now
        self.count, self.total = 0, 1
        self.detail, self.again, self.level, self.lasting = detail, again, level, lasting


class Bursts:
    """Repeated messages, each under a key, as few lines: see the module's docstring.

    A line's template may use ``{detail}`` (the latest occurrence's), ``{count}`` (occurrences
    since the last line), ``{total}`` and ``{seconds}`` (since the last line; for `end`, since the
    first occurrence). A key quiet for a whole period is forgotten (its next occurrence is a first
    one again), unless it is `lasting`: then it stays until `end`. Thread-safe; lines are logged
    outside the lock, so a slow handler never holds up another thread's count.
    """

    def __init__(self, logger: logging.Logger, *, verbose: bool = False, period: float = PERIOD) -> None:
        self.logger, self.verbose, self.period = logger, verbose, period
        self._bursts: dict[Hashable, _Burst] = {}
        self._lock = threading.Lock()
        self._due = float("inf")

    def count(
        self, key: Hashable, detail: str, again: str, *, level: int = logging.ERROR, lasting: bool = False
    ) -> bool:
        """Count one occurrence; True if it is the first (the caller shows it), else it is in a later count."""
        now = time.monotonic()
        with self._lock:
            burst = self._bursts.get(key)
            if burst is None:
                self._bursts[key] = _Burst(now, detail, again, level, lasting)
                self._due = min(self._due, now + self.period)
            else:
                burst.count += 1
                burst.total += 1
                burst.detail = detail
        self.flush(now)
        return burst is None

    def note(
        self,
        key: Hashable,
        detail: str,
        first: str,
        again: str,
        *,
        level: int = logging.ERROR,
        lasting: bool = False,
    ) -> None:
        """One occurrence: `first` logged if it is the first (with ``--verbose``: `detail`, each time)."""
        if self.count(key, detail, again, level=level, lasting=lasting):
            self._log(level, first.format(detail=detail))
        elif self.verbose:
            self._log(level, detail)

    def end(self, key: Hashable, message: str, *, level: int = logging.WARNING) -> None:
        """`key`'s burst is over: `message` logged if there was one (cheap when there was not)."""
        if key in self._bursts:
            with self._lock:
                burst = self._bursts.pop(key, None)
            if burst is not None:
                seconds = time.monotonic() - burst.started
                self._log(level, message.format(detail=burst.detail, total=burst.total, seconds=seconds, count=0))
        elif self._bursts:
            self.flush()

    def flush(self, now: float | None = None, final: bool = False) -> None:
        """Log each count that is due (every one with `final`); forget the keys that went quiet."""
        now = time.monotonic() if now is None else now
        if now < self._due and not final:
            return
        lines = []
        with self._lock:
            self._due = float("inf")
            for key, burst in list(self._bursts.items()):
                if now - burst.since >= self.period or final:
                    if burst.count:
                        fields = {"detail": burst.detail, "count": burst.count, "total": burst.total}
                        lines.append((burst.level, burst.again.format(seconds=now - burst.since, **fields)))
                    elif not burst.lasting:
                        del self._bursts[key]
                        continue
                    burst.since, burst.count = now, 0
                self._due = min(self._due, burst.since + self.period)
        for level, line in lines:
            self._log(level, line)

    def _log(self, level: int, message: str) -> None:
        self.logger.log(level, "%s", message, extra={_SUMMARY: True})


class CollectorLog:
    """What the collector says about its requests: a database outage (its start, a count of the
    requests refused every few seconds, its end), an internal error, ``--verbose``'s request lines."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self.bursts = Bursts(logging.getLogger(LOGGER), verbose=verbose)
        self._requests = logging.getLogger(STDOUT)

    def refused(self, error: str) -> None:
        """A request answered 503: the database could not store it."""
        self.bursts.note(
            "store",
            safe.printable(error),
            "the database is unavailable, answering 503 until it is back: {detail}",
            "the database is still unavailable: {count:,} requests refused in the last {seconds:.1f} s ({detail})",
            lasting=True,
        )

    def stored(self) -> None:
        """A commit succeeded: an outage, if one was going on, is over."""
        self.bursts.end("store", "the database is back after {seconds:.1f} s; {total:,} requests were refused (503)")

    def internal(self, error: str) -> None:
        """A request answered 500: a bug, told without the request."""
        self.bursts.note(
            "internal",
            safe.printable(error),
            "internal error: {detail}",
            "internal error: {count:,} more in the last {seconds:.1f} s (the latest: {detail})",
        )

    def request(self, method: str, path: str, status: int) -> None:
        """``--verbose``'s line for one request."""
        if self.verbose:
            self._requests.info("%s", safe.printable(f"{utc_now()} {method} {path} {status}"))

    def close(self) -> None:
        """The counts not yet told (at shutdown)."""
        self.bursts.flush(final=True)


# -- the stream's side: a bounded queue and the one thread that writes -------------------------
class _Enqueue(logging.handlers.QueueHandler):
    """Never waits: a record that finds the queue full is dropped and counted; repeats are
    summarised (`Bursts`) before they take a place in it, unless ``--verbose``."""

    def __init__(self, records: queue.Queue, bursts: Bursts | None) -> None:
        super().__init__(records)
        self.bursts = bursts
        self.dropped = 0
        self._count_lock = threading.Lock()
        self.setFormatter(_Line())

    def filter(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if self.bursts is None or getattr(record, _SUMMARY, False) or record.name == STDOUT:
            return True
        try:
            detail = record.getMessage()
        except Exception:  # a library's bad format string: shown as its template
            detail = str(record.msg)
        again = "{detail} (and {count:,} more like it in the last {seconds:.1f} s)"
        return self.bursts.count((record.name, record.levelno, record.msg), detail, again, level=record.levelno)

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._count_lock:
                self.dropped += 1


class _Line(logging.Formatter):
    """One line: control characters escaped, no traceback (it could hold a request's values)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        return text if record.name == STDOUT else PREFIX + safe.printable(text)


class _Streams:
    """The listener's one "handler" (not a `logging.Handler`: logging's exit hook would wait on a
    stream nobody reads): each line to stdout (request lines) or stderr, by `os.write` on the file
    descriptor, so no Python buffer's lock is held while the stream is full."""

    level = logging.NOTSET

    def __init__(self, enqueue: _Enqueue, out: IO[str], err: IO[str]) -> None:
        self.enqueue = enqueue
        self.told = 0
        self.out, self.err = _writer(out), _writer(err)

    def handle(self, record: logging.LogRecord) -> None:
        self.tell_dropped()
        (self.out if record.name == STDOUT else self.err)(record.msg + "\n")

    def tell_dropped(self) -> None:
        dropped = self.enqueue.dropped
        if dropped > self.told:
            lost, self.told = dropped - self.told, dropped
            self.err(f"{PREFIX}{lost:,} log lines dropped: the log's reader fell behind\n")


def _writer(stream: IO[str]) -> Callable[[str], None]:
    try:
        fd = stream.fileno()
        stream.flush()
    except (AttributeError, OSError, ValueError):  # no descriptor (a captured stream): its own write
        fd = None

    def write(text: str) -> None:
        try:
            if fd is None:
                stream.write(text)
                stream.flush()
                return
            data = text.encode("utf-8", "backslashreplace")
            while data:
                data = data[os.write(fd, data) :]
        except (OSError, ValueError):  # the reader is gone, or the stream closed: nothing to tell
            pass

    return write


class _Listener(logging.handlers.QueueListener):
    """The writing thread; between records, every `PERIOD` s, it writes the counts that are due."""

    def __init__(self, records: queue.Queue, streams: _Streams, bursts: Bursts | None) -> None:
        super().__init__(records, streams)  # type: ignore[arg-type]  # any object with handle()
        self.streams, self.bursts = streams, bursts

    def dequeue(self, block: bool) -> Any:
        while True:
            try:
                return self.queue.get(timeout=PERIOD)
            except queue.Empty:
                self.streams.tell_dropped()
                if self.bursts is not None:
                    self.bursts.flush()

    def stop(self, timeout: float = 2.0) -> None:  # type: ignore[override]
        """Write what is queued for at most `timeout` seconds (the stream may never take it)."""
        if self._thread is not None:
            try:
                self.queue.put_nowait(self._sentinel)
            except queue.Full:
                pass
            self._thread.join(timeout)
            self._thread = None


class Configured:
    """The log as `configure` set it up; `close()` at the end of the command."""

    def __init__(self, listener: _Listener, bursts: Bursts | None) -> None:
        self.listener, self.bursts = listener, bursts

    def close(self, last_line: str = "") -> None:
        """The counts not yet told, then `last_line` on stdout, written if the streams take them
        within a moment (nobody may be reading)."""
        if self.bursts is not None:
            self.bursts.flush(final=True)
        if last_line:
            logging.getLogger(STDOUT).warning("%s", last_line)
        self.listener.stop()


def configure(verbose: bool) -> Configured:
    """Every record of this process (uvicorn's, asyncio's, the collector's, warnings) through the
    bounded queue, one line each on stderr; uvicorn's per-request warnings (a malformed request)
    and each request's line only with `verbose`, repeats summarised without it."""
    records: queue.Queue = queue.Queue(QUEUE_SIZE)
    bursts = None if verbose else Bursts(logging.getLogger(LOGGER))
    handler = _Enqueue(records, bursts)
    listener = _Listener(records, _Streams(handler, sys.stdout, sys.stderr), bursts)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.setLevel(logging.WARNING if verbose else logging.ERROR)
    for name, level in ((LOGGER, logging.WARNING), (STDOUT, logging.INFO)):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = True
    logging.captureWarnings(True)
    listener.start()
    return Configured(listener, bursts)
