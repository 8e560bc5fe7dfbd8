"""Device figures that cost the same at a thousand or a million devices: each device's share, kept at ingest.

Every device figure of the report (devices active each day, over the trailing 7 and 30 days,
new devices, weekly retention cohorts, devices with a startup, devices by the values of their
latest startup) is a sum over devices of something that depends on two facts about one device
only: the UTC days it was active, and its latest startup. `contribution` maps those two facts
to counts keyed ``(figure, key, day)``. The store keeps the sum of every device's contribution
per scope (all events, or only those not from CI) in ``rollup_reach``: when a batch changes a
device's days or its latest startup, the store adds the new contribution minus the old one, in
the batch's transaction. A report then reads a few rows per day, and every figure is exact,
whatever the number of devices; `rebuild` sums the contributions afresh from the raw events.

The figures (``figure``, ``key``, ``day``):

- ``active``, window (``1``, ``7``, ``30``), day: a *change* in the number of devices active in
  the trailing window (+1 where a device's covered days start, -1 the day after they end); the
  running sum up to a day is that day's count (daily / weekly / monthly active devices);
- ``first`` / ``last``, '', day: devices whose first / last active day it is (new devices, and
  devices active in a period that ends today);
- ``cohort``, k (0 to `COHORT_WEEKS`), Monday of the week first seen: devices of that cohort
  active in its k-th week after;
- ``startup``, '', day and each `ADOPTION` key, its value, day: devices whose latest startup
  is on that day (with that value).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import date
from functools import lru_cache
from typing import Any, Optional

#: Trailing windows, in days, of the active-device counts (daily, weekly, monthly).
WINDOWS = (1, 7, 30)
#: Retention is shown for the weeks W+1 .. W+COHORT_WEEKS after a device's first week W.
COHORT_WEEKS = 8
#: The startup's keys a device is counted by (the values of its latest startup).
ADOPTION = ("version", "os", "python_version", "ipython_version", "frontend", "container", "launch_source")
#: 0: every event; 1: events not sent from CI (what ``--exclude-ci`` reads).
SCOPES = (0, 1)

#: A device's latest startup: (received_at, the values of `ADOPTION`, '' when missing).
Latest = tuple[str, tuple[str, ...]]
#: What is kept of a device: {day: scopes bitmask (1 << scope)} and its latest startup per scope.
Days = Mapping[str, int]


def latest_of(received_at: str, fields: Mapping[str, Any]) -> Latest:
    return received_at, tuple(str(fields.get(key) or "") for key in ADOPTION)


def later(a: Latest | None, b: Latest | None) -> Latest | None:
    """The later of two startups; equal times are decided by their values, so ingest in any
    order and a rebuild pick the same one."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def scopes_of(ci: Any) -> int:
    """The scopes an event counts in, as a bitmask: a CI event only in scope 0."""
    return 1 if ci is True or ci == 1 else 3


@lru_cache(maxsize=4096)
def _ordinal(day: str) -> int | None:
    try:
        return date.fromisoformat(day).toordinal()
    except ValueError:  # not a day (a received_at no collector writes): in no device figure
        return None


@lru_cache(maxsize=8192)
def iso(ordinal: int) -> str:
    return date.fromordinal(ordinal).isoformat()


def monday(ordinal: int) -> int:
    """The Monday of the ISO week holding a day (date.fromordinal(1) is a Monday)."""
    return ordinal - (ordinal - 1) % 7


def contribution(days: Iterable[str], latest: Latest | None, first: str | None = None) -> Counter:
    """One device's share of every figure in one scope: {(figure, key, day): count}.

    `first` is the device's first day when known apart from `days` (kept in ``rollup_devices``):
    its cohort and its day as a new device stay when its oldest days are pruned."""
    out: Counter = Counter()
    ordinals = sorted({o for o in map(_ordinal, days) if o is not None})
    if ordinals:
        for window in WINDOWS:
            key, start, end = str(window), None, None  # covered: [start, end)
            for day in ordinals:
                if start is None:
                    start, end = day, day + window
                elif day <= end:
                    end = day + window
                else:
                    out["active", key, iso(start)] += 1
                    out["active", key, iso(end)] -= 1
                    start, end = day, day + window
            out["active", key, iso(start)] += 1
            out["active", key, iso(end)] -= 1
        given = _ordinal(first) if first else None
        start = min(ordinals[0], given) if given is not None else ordinals[0]
        out["first", "", iso(start)] += 1
        out["last", "", iso(ordinals[-1])] += 1
        cohort = monday(start)
        weeks = {cohort} | {monday(day) for day in ordinals if day < cohort + 7 * (COHORT_WEEKS + 1)}
        for k in range(COHORT_WEEKS + 1):
            if cohort + 7 * k in weeks:
                out["cohort", str(k), iso(cohort)] += 1
    if latest is not None and _ordinal(latest[0][:10]) is not None:
        day = latest[0][:10]
        out["startup", "", day] += 1
        for key, value in zip(ADOPTION, latest[1]):
            out[key, value, day] += 1
    return out


def device_counts(days: Days, latest: Mapping[int, Latest | None], first: Mapping[int, str] | None = None) -> Counter:
    """A device's share in every scope: {(scope, figure, key, day): count}."""
    out: Counter = Counter()
    for scope in SCOPES:
        mask = 1 << scope
        mine = [d for d, m in days.items() if m & mask]
        for (figure, key, day), n in contribution(mine, latest.get(scope), (first or {}).get(scope)).items():
            out[scope, figure, key, day] += n
    return out


#: A device as the device figures see it: its days, latest startup and first day per scope.
State = tuple[Days, Mapping[int, Optional[Latest]], Mapping[int, str]]


def change(old: State, new: State) -> Counter:
    """What a device's change adds to each count (nonzero entries only)."""
    out = device_counts(*new)
    out.subtract(device_counts(*old))
    return Counter({key: n for key, n in out.items() if n})
