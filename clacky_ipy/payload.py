"""The payload vocabulary: the one place that says which events and keys exist.

The OpenClacky server receives events from the Ruby gem and from this package,
so every key here matches the gem's `Clacky::Telemetry` payloads. The client
builds payloads with `clean()`, the collector stores them with the same
function, and its table's columns come from `COLUMNS`: there is no second list.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

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
    },
}

#: Union of both events' keys, in a stable order: the collector's columns.
COLUMNS: dict[str, str] = {**KEYS["startup"], **KEYS["task"]}

TRIGGERS = ("magic", "cell", "api")
STATUSES = ("success", "error", "interrupted")

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

#: Keys that count something (tokens, requests, iterations) or cost money: never negative.
NON_NEGATIVE = frozenset(
    {
        "iterations",
        "cost_usd",
        "prompt_tokens",
        "completion_tokens",
        "cache_creation_tokens",
        "cache_read_tokens",
        "cache_total_requests",
        "cache_hit_requests",
    }
)

#: The longest duration believed: a year. A negative or longer one is a clock or unit error.
MAX_DURATION_MS = 366 * 24 * 3600 * 1000

#: Lone UTF-16 surrogates: a Python str may hold them, UTF-8 (and so JSON on the wire) may not.
_SURROGATE = re.compile("[\ud800-\udfff]")


def text(value: str) -> str:
    """`value` as valid UTF-8 text: lone surrogates become U+FFFD, then capped at `MAX_STR`."""
    if not value.isascii():
        value = _SURROGATE.sub("\ufffd", value)
    return value[:MAX_STR]


def number(key: str, value: Any) -> int | float | None:
    """`value` as a storable number for `key`, or None to drop it.

    Exactly int or float (a bool is not a number here); finite; within signed 64 bits
    so that every store holds it and a sum of a few cannot reach infinity; not negative
    for counts and cost; `duration_ms` within `MAX_DURATION_MS`.
    """
    if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
        value = int(value)  # an int subclass: its own methods are never called again
    elif isinstance(value, float):
        value = float(value)
        if not math.isfinite(value):
            return None
    else:
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
        return text(str.__str__(value)) if isinstance(value, str) and value else None
    if kind == BOOL:
        return value if value is True or value is False else None
    return number(key, value)


def clean(event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Keep only the event's keys, with values of the right kind; drop the rest.

    Strings are made valid UTF-8 and capped at `MAX_STR` characters; numbers must be
    int or float (never bool) within `number`'s bounds; None is dropped rather than
    sent as null. Client and collector both call this: it is the one definition.
    """
    keys = KEYS[event]
    out = {}
    for key, value in fields.items():
        kind = keys.get(key)
        if kind is not None:
            value = _value(key, kind, value)
            if value is not None:
                out[key] = value
    return out


def task_metrics(result: Any) -> dict[str, Any]:
    """Metrics from an agent's result mapping, as the gem's `extract_task_metrics`.

    Anything that is not a mapping gives no metrics; keys not listed above
    (``history``, ``session_id``, ...) are ignored.
    """
    if result is None or not isinstance(result, Mapping):  # None first: the ABC check costs 0.5 µs
        return {}
    metrics = {out: result.get(key) for key, out in RESULT_KEYS.items()}
    seconds = result.get("duration_seconds")
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds):
        metrics["duration_ms"] = round(seconds * 1000)
    stats = result.get("cache_stats")
    if isinstance(stats, Mapping):
        metrics.update({out: stats.get(key) for key, out in CACHE_STATS_KEYS.items()})
    return {k: v for k, v in metrics.items() if v is not None}


def status_of(error: BaseException | None, own: Any = None) -> str:
    """`interrupted`, `error`, or the agent's own status when it is `success`/`error`, else `success`."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if error is not None:
        return "error"
    return own if own in ("success", "error") else "success"


def error_kind(error: BaseException | None) -> str | None:
    """The exception's class name only: never its message, which may hold user data."""
    return None if error is None else type(error).__name__
