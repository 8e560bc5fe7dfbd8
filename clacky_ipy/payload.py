"""The payload vocabulary: the one place that says which events and keys exist.

The OpenClacky server receives events from the Ruby gem and from this package,
so every key here matches the gem's `Clacky::Telemetry` payloads. The client
builds payloads with `clean()`, the collector stores them with the same
function, and its table's columns come from `COLUMNS`: there is no second list.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
import sys
import threading
from collections.abc import Mapping
from typing import Any, Callable

#: Path of each event on the telemetry server, relative to the endpoint.
PATHS: dict[str, str] = {
    "startup": "/api/v1/telemetry/startup",
    "task": "/api/v1/telemetry/task",
}

#: Value kinds. A key's value must be of its kind or it is dropped.
STR, NUM, BOOL = "str", "num", "bool"

#: Longest string ever sent (the gem caps error_kind at 64 characters).
MAX_STR = 64

_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}")

_COMMON = {"device_id": STR, "version": STR, "brand": STR, "frontend": STR, "ci": BOOL}

#: Every key each event may carry, with its kind. No other key is ever sent.
KEYS: dict[str, dict[str, str]] = {
    "startup": {
        **_COMMON,
        "os": STR,
        "python_version": STR,
        "ipython_version": STR,
        "launch_source": STR,
        "container": STR,
    },
    "task": {
        **_COMMON,
        "trigger": STR,
        "status": STR,
        "duration_ms": NUM,
        "error_kind": STR,
        "model": STR,
        "provider": STR,
        "iterations": NUM,
        "cost_usd": NUM,
        "cost_source": STR,
        "prompt_tokens": NUM,
        "completion_tokens": NUM,
        "cache_creation_tokens": NUM,
        "cache_read_tokens": NUM,
        "cache_total_requests": NUM,
        "cache_hit_requests": NUM,
        "launch_source": STR,
    },
}

#: The keys only the client fills, the same for every event of a process: what a caller's
#: keyword fields (``task(device_id=...)``) can never replace.
CONTEXT_KEYS = frozenset(
    {"device_id", "version", "brand", "frontend", "ci", "container", "os", "python_version", "ipython_version",
     "launch_source"}
)  # fmt: skip

#: ``launch_source``: the gem's two (``installer`` when ``CLACKY_LAUNCHED_BY=installer``, else
#: ``cli``), then the runners that drive a kernel with no person at it. Their events are sent
#: only where a person saw the notice before, and a report can leave them out by this key.
UNATTENDED_RUNNERS = ("papermill", "nbconvert", "nbclient")
LAUNCH_SOURCES = ("cli", "installer", *UNATTENDED_RUNNERS)

#: Union of both events' keys, in a stable order: the collector's columns.
COLUMNS: dict[str, str] = {**KEYS["startup"], **KEYS["task"]}

#: Keys whose value is one of a closed set: any other value is dropped (by client and collector
#: alike), so a report never shows a category nobody defined. One table: extend the sets here.
CHOICES: dict[str, tuple[str, ...]] = {
    "status": ("success", "error", "interrupted"),
    "trigger": ("magic", "cell", "api"),
    "cost_source": ("estimated", "api", "price"),
    "launch_source": LAUNCH_SOURCES,
    "frontend": ("terminal", "jupyter", "colab", "vscode"),
    "container": ("docker",),
}
TRIGGERS = CHOICES["trigger"]
STATUSES = CHOICES["status"]

#: What a device id looks like: the gem's are 64 hex characters. The collector refuses an event
#: whose `device_id` does not (400), so one script cannot invent devices without bound.
DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


def device_id_problem(fields: Mapping[str, Any]) -> str | None:
    """Why the raw `fields`' ``device_id`` is no device id, or None when it is one or is absent."""
    value = fields.get("device_id")
    if value is None or (type(value) is str and DEVICE_ID.fullmatch(value)):
        return None
    return "device_id must be 8 to 64 of A-Z, a-z, 0-9, _ and -"


#: Agent result key -> payload key, as the gem's `extract_task_metrics` maps them.
RESULT_KEYS = {
    "model": "model",
    "provider": "provider",
    "status": "status",
    "iterations": "iterations",
    "total_cost_usd": "cost_usd",
    "cost_source": "cost_source",
}
CACHE_STATS_KEYS = {
    "prompt_tokens": "prompt_tokens",
    "completion_tokens": "completion_tokens",
    "cache_creation_input_tokens": "cache_creation_tokens",
    "cache_read_input_tokens": "cache_read_tokens",
    "total_requests": "cache_total_requests",
    "cache_hit_requests": "cache_hit_requests",
}


#: The range of a signed 64-bit integer: what SQLite and PostgreSQL ``bigint`` hold. A
#: number outside it (an int or a float) is dropped, never sent, never stored.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

#: Cost, then the keys that count tokens and requests: what the collector sums.
AMOUNTS = (
    "cost_usd",
    "prompt_tokens",
    "completion_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "cache_total_requests",
    "cache_hit_requests",
)

#: Keys that count something (tokens, requests, iterations) or cost money: never negative.
NON_NEGATIVE = frozenset({"iterations", *AMOUNTS})

#: The longest duration believed: a year. A negative or longer one is a clock or unit error.
MAX_DURATION_MS = 366 * 24 * 3600 * 1000

#: Lone UTF-16 surrogates: a Python str may hold them, UTF-8 (and so JSON on the wire) may not.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _propagates(error: BaseException) -> bool:
    """Whether an exception raised while reading a user's value must go on, not be swallowed.

    Reading a value may run the user's code (``__getitem__``, ``__index__``...), which may
    raise anything, ``SystemExit``, ``GeneratorExit`` or ``KeyboardInterrupt`` included:
    each is the value's failure, and the key is left out. Only a ``KeyboardInterrupt`` on
    the main thread goes on, since that may be the user's Ctrl-C arriving just then
    (debug mode and ``recent()`` read values on the user's thread). Signals reach only the
    main thread, so on the worker no interrupt is ever the user's.
    """
    return isinstance(error, KeyboardInterrupt) and threading.current_thread() is threading.main_thread()


def text(value: str) -> str:
    """`value` as valid UTF-8 text: lone surrogates become U+FFFD, then capped at `MAX_STR`."""
    if not value.isascii():
        value = _SURROGATE.sub("\ufffd", value)
    return value[:MAX_STR]


def _numeric(value: Any) -> int | float | None:
    """`value` as an exact int or float, or None. Never raises, and calls none of an int or
    float subclass's own methods (it may override them to raise).

    Other numeric types are converted when they say they are numbers: an ``Integral``
    (numpy's integer scalars) through ``__index__``, a ``Real`` (numpy's floats,
    ``Fraction``) through ``__float__``. A bool (numpy's too) is not a number here;
    ``Decimal`` and complex are not converted.
    """
    kind = type(value)
    if kind is int or kind is float:
        return value
    try:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return int.__int__(value)
        if isinstance(value, float):
            return float.__float__(value)
        if isinstance(value, numbers.Integral):
            converted = operator.index(value)
            return int.__int__(converted) if isinstance(converted, int) else None
        if isinstance(value, numbers.Real):
            converted = float(value)
            return float.__float__(converted) if isinstance(converted, float) else None
    except BaseException as exc:
        if _propagates(exc):
            raise
    return None


def number(key: str, value: Any) -> int | float | None:
    """`value` as a storable number for `key`, or None to drop it.

    An int or float (or a number `_numeric` converts; a bool is not a number here);
    finite; within signed 64 bits so that every store holds it and a sum of a few
    cannot reach infinity; not negative for counts and cost; `duration_ms` within
    `MAX_DURATION_MS`.
    """
    value = _numeric(value)
    if value is None:
        return None
    if type(value) is float and not math.isfinite(value):
        return None
    if not INT64_MIN <= value <= INT64_MAX:
        return None
    if key == "duration_ms":
        return value if 0 <= value <= MAX_DURATION_MS else None
    if key in NON_NEGATIVE and value < 0:
        return None
    return value


def _value(key: str, kind: str, value: Any) -> Any:
    """The value as it may be sent (and stored), or None to drop it."""
    if key == "error_kind":  # a class name, never a message (even one passed by hand)
        return value if type(value) is str and _CLASS_NAME.fullmatch(value) else None
    if kind == STR:
        return text(str.__str__(value)) if isinstance(value, str) and str.__len__(value) else None
    if kind == BOOL:
        return value if value is True or value is False else None
    return number(key, value)


#: Why `clean` left a key out, as `dropped` hears it: not a key of the event, a value of the
#: wrong kind (or unreadable), a value outside the key's `CHOICES`, a malformed device id.
DROP_REASONS = ("unknown_key", "bad_value", "not_in_choices", "bad_device_id")


def clean(event: str, fields: Mapping[str, Any], dropped: Callable[[str, str], Any] | None = None) -> dict[str, Any]:
    """Keep only the event's keys, with values of the right kind; drop the rest.

    Strings are made valid UTF-8 and capped at `MAX_STR` characters; numbers must be
    int or float (never bool) within `number`'s bounds; a key of `CHOICES` keeps only
    one of its values; a device id must match `DEVICE_ID`; None is dropped rather than
    sent as null; a value that cannot be read is left out, never raised. Client and
    collector both call this: it is the one definition. `dropped(key, reason)` hears of
    each key left out (key "" for one not in the vocabulary: its name is the sender's).
    """
    keys = KEYS[event]
    out = {}
    for key, raw in fields.items():
        kind = keys.get(key)
        if kind is None:
            if dropped is not None:
                dropped("", DROP_REASONS[0])
            continue
        try:
            value = _value(key, kind, raw)
        except BaseException as exc:  # a user's str or number subclass whose own methods raise: left out
            if _propagates(exc):
                raise
            value = None
        reason = DROP_REASONS[1]
        if value is not None and key in CHOICES and value not in CHOICES[key]:
            value, reason = None, DROP_REASONS[2]
        elif key == "device_id" and value is not None and not DEVICE_ID.fullmatch(value):
            value, reason = None, DROP_REASONS[3]
        if value is not None:
            out[key] = value
        elif dropped is not None:
            dropped(key, reason)
    return out


def _get(mapping: Any, key: str) -> Any:
    """``mapping.get(key)``, or None when reading it raises (``Mapping.get`` catches only KeyError)."""
    try:
        return mapping.get(key)
    except BaseException as exc:
        if _propagates(exc):
            raise
        return None


def _plain(key: str, value: Any) -> Any:
    """A result's value as a plain str, int or float for payload `key`, or None; never raises.

    Done when the metrics are read, so that nothing later (comparing the status,
    rounding, JSON) ever touches the user's object again.
    """
    if value is None:
        return None
    try:
        if KEYS["task"][key] == STR:
            return str.__str__(value) if isinstance(value, str) else None
        return number(key, value)
    except BaseException as exc:
        if _propagates(exc):
            raise
        return None


def _duration_ms(seconds: Any) -> int | None:
    """The result's ``duration_seconds`` in whole milliseconds, or None when it is no storable duration."""
    seconds = _numeric(seconds)
    if seconds is None:
        return None
    ms = seconds * 1000
    if type(ms) is float and not math.isfinite(ms):  # 1e306 s overflows to inf: round() would raise
        return None
    return number("duration_ms", round(ms))


def task_metrics(result: Any) -> dict[str, Any]:
    """Metrics from an agent's result mapping, as the gem's `extract_task_metrics`.

    Anything that is not a mapping gives no metrics; keys not listed above
    (``history``, ``session_id``, ...) are ignored. Never raises: a key that cannot
    be read, compared or converted (whatever it raises, ``SystemExit`` included) is left
    out and the rest is kept, and every value returned is a plain str, int or float.
    The one exception that goes on is a ``KeyboardInterrupt`` on the main thread (`_propagates`).
    """
    metrics: dict[str, Any] = {}
    try:
        if result is None or not isinstance(result, Mapping):  # None first: the ABC check costs 0.5 µs
            return metrics
        for key, out in RESULT_KEYS.items():
            value = _plain(out, _get(result, key))
            if value is not None and (out not in CHOICES or value in CHOICES[out]):  # a status "0" is no status
                metrics[out] = value
        duration = _duration_ms(_get(result, "duration_seconds"))
        if duration is not None:
            metrics["duration_ms"] = duration
        stats = _get(result, "cache_stats")
        if stats is not None and isinstance(stats, Mapping):
            for key, out in CACHE_STATS_KEYS.items():
                value = _plain(out, _get(stats, key))
                if value is not None:
                    metrics[out] = value
    except BaseException as exc:  # e.g. an isinstance() that raises: what was read so far is kept
        if _propagates(exc):
            raise
    return metrics


def _interrupted(error: BaseException | type[BaseException]) -> bool:
    """A KeyboardInterrupt, or asyncio's CancelledError: what a kernel interrupt raises in an async cell."""
    kind = error if isinstance(error, type) else type(error)
    if issubclass(kind, KeyboardInterrupt):
        return True
    asyncio = sys.modules.get("asyncio")  # not imported: no CancelledError can exist
    return asyncio is not None and issubclass(kind, asyncio.CancelledError)


def status_of(error: BaseException | type[BaseException] | None, own: Any = None) -> str:
    """`interrupted`, `error`, or the agent's own status when it is `success`/`error`, else `success`.

    Never raises: `own` is compared only when it is a str (a numpy array or an
    object whose ``__eq__`` raises is no status).
    """
    try:
        if error is not None:
            return "interrupted" if _interrupted(error) else "error"
        if isinstance(own, str) and str.__str__(own) in ("success", "error"):
            return str.__str__(own)
    except BaseException as exc:
        if _propagates(exc):
            raise
    return "success"


def error_kind(error: BaseException | type[BaseException] | None) -> str | None:
    """The exception's class name only: never its message, which may hold user data. Never raises.

    Takes the exception or its class: the queue keeps only the class, so that a failed
    cell's traceback (and every object its frames hold) is freed at once.
    """
    if error is None:
        return None
    try:
        name = (error if isinstance(error, type) else type(error)).__name__
        return str.__str__(name) if isinstance(name, str) else None
    except BaseException as exc:
        if _propagates(exc):
            raise
        return None
