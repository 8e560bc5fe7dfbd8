"""The report's device, agent-run and per-model figures equal counts over the raw events,
on both engines, kept at ingest (in any order) as rebuilt; and one report is one snapshot."""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_store import ingest

from clacky_ipy import payload, reach, report
from clacky_ipy.store import UPSERT, device_shares, open_store, rebuild

NOW = datetime(2027, 1, 20, 12, 0, tzinfo=timezone.utc)
START = date(2026, 12, 1)


def at(day: date, hour: int = 10) -> str:
    return f"{day.isoformat()}T{hour:02d}:00:00.000000Z"


def random_events(rng: random.Random, n: int = 300, devices: int = 12, days: int = 50, with_none: bool = True) -> list:
    out = []
    for _ in range(n):
        day = START + timedelta(days=rng.randrange(days))
        fields = {"device_id": f"device-{rng.randrange(devices):03d}", "ci": rng.choice([True, False, None])}
        if rng.random() < 0.3:
            kind = "startup"
            fields.update(
                version=rng.choice(["0.1", "0.2", None]),
                os=rng.choice(["linux", "darwin"]),
                frontend=rng.choice(["jupyter", "terminal", None]),
            )
        else:
            kind = "task"
            fields.update(
                trigger=rng.choice(["magic", "api", "cell", None]),
                model=rng.choice(["m1", "m2", None]),
                status=rng.choice(["success", "error"]),
                cost_usd=rng.choice([None, 0.25, 1.0]),
                duration_ms=rng.choice([None, 10, 100, 1000]) if with_none else rng.choice([10, 100]),
            )
        out.append(
            (
                f"{day.isoformat()}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00.000000Z",
                kind,
                payload.clean(kind, {k: v for k, v in fields.items() if v is not None}),
            )
        )
    return out


def brute(events: list, since: str = "", exclude_ci: bool = False, now: datetime = NOW) -> dict:
    """The device and run figures counted by hand over the raw events."""
    keep = [(t, k, f) for t, k, f in events if not (exclude_ci and f.get("ci") is True)]
    days: dict[str, set] = {}
    latest: dict[str, tuple] = {}
    for t, k, f in keep:
        device = f.get("device_id")
        if device:
            days.setdefault(device, set()).add(date.fromisoformat(t[:10]))
            if k == "startup":
                mine = (t, tuple(f.get(key) or "" for key in reach.ADOPTION))
                latest[device] = max(latest.get(device, mine), mine)
    sel = [(t, k, f) for t, k, f in keep if t[:10] >= since]
    event_days = sorted({t[:10] for t, _, _ in sel})
    daily = []
    if event_days:
        day, last = date.fromisoformat(event_days[0]), date.fromisoformat(event_days[-1])
        while day <= last:

            def active(w, day=day):
                return sum(1 for s in days.values() if any(day - timedelta(days=w - 1) <= d <= day for d in s))

            new = sum(1 for s in days.values() if min(s) == day)
            runs = [f for t, k, f in sel if t[:10] == day.isoformat() and k == "task"]
            daily.append(
                {
                    "day": day.isoformat(),
                    "active_devices": active(1),
                    "weekly_active_devices": active(7),
                    "monthly_active_devices": active(30),
                    "new_devices": new,
                    "returning_devices": active(1) - new,
                    "agent_runs": sum(1 for f in runs if f.get("trigger") != "cell"),
                    "tracked_cells": sum(1 for f in runs if f.get("trigger") == "cell"),
                }
            )
            day += timedelta(days=1)
    cohorts = {}
    for s in days.values():
        week = reach.monday(min(s).toordinal())
        if reach.iso(week) < (reach.iso(reach.monday(date.fromisoformat(since).toordinal())) if since else ""):
            continue
        weeks = {reach.monday(d.toordinal()) for d in s}
        got = cohorts.setdefault(reach.iso(week), [0] * (reach.COHORT_WEEKS + 1))
        for k in range(reach.COHORT_WEEKS + 1):
            got[k] += week + 7 * k in weeks
    today = now.date().toordinal()
    versions = Counter(v[1][0] or "(none)" for v in latest.values() if v[0][:10] >= since)
    agent = [f for _, k, f in sel if k == "task" and f.get("trigger") != "cell"]
    models = {}
    for f in agent:
        m = models.setdefault(f.get("model") or "(none)", {"agent_runs": 0, "errors": 0, "cost": 0.0})
        m["agent_runs"] += 1
        m["errors"] += f.get("status") == "error"
        m["cost"] += f.get("cost_usd", 0)
    return {
        "daily": daily,
        "unique_devices": len({f["device_id"] for _, k, f in sel if k == "startup" and f.get("device_id")}),
        "active_devices": len({f["device_id"] for _, _, f in sel if f.get("device_id")}),
        "new_devices": sum(1 for s in days.values() if min(s).isoformat() >= since),
        "cohorts": [
            {
                "week": w,
                "devices": c[0],
                "retained": [
                    c[k] if date.fromisoformat(w).toordinal() + 7 * k <= today else None
                    for k in range(1, reach.COHORT_WEEKS + 1)
                ],
            }
            for w, c in sorted(cohorts.items())
        ],
        "versions": dict(versions),
        "agent_runs": len(agent),
        "tracked_cells": sum(1 for _, k, f in sel if k == "task" and f.get("trigger") == "cell"),
        "models": models,
    }


def assert_matches(got: dict, want: dict) -> None:
    keys = want["daily"][0].keys() if want["daily"] else ()
    assert [{k: row[k] for k in keys} for row in got["daily"]] == want["daily"]
    for name in ("unique_devices", "active_devices", "new_devices", "agent_runs", "tracked_cells"):
        assert got[name] == want[name], name
    assert [{k: c[k] for k in ("week", "devices", "retained")} for c in got["cohorts"]] == want["cohorts"]
    assert {r["version"]: r["devices"] for r in got["adoption"]["version"] if r["devices"]} == want["versions"]
    assert {r["model"]: (r["agent_runs"], r["errors"]) for r in got["models"]} == {
        m: (v["agent_runs"], v["errors"]) for m, v in want["models"].items()
    }
    for r in got["models"]:
        assert r["cost_usd"] == pytest.approx(want["models"][r["model"]]["cost"])
    assert sum(got["agent_runs_by_status"].values()) == got["agent_runs"]


WINDOWS = [(None, False), (None, True), (10, False), (30, True), (1, False)]


def test_device_figures_equal_counts_over_raw_events(db_target):
    rng = random.Random(7)
    events = random_events(rng)
    rng.shuffle(events)  # out of order: a device's earlier days arrive after its later ones
    ingest(db_target, events, seed=8)
    kept = [report.build(db_target, days=d, exclude_ci=x, now=NOW) for d, x in WINDOWS]
    for (days, exclude_ci), got in zip(WINDOWS, kept):
        assert_matches(got, brute(events, report.first_day(days, NOW), exclude_ci))
    rebuild(db_target)
    assert [report.build(db_target, days=d, exclude_ci=x, now=NOW) for d, x in WINDOWS] == kept


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), devices=st.integers(1, 6), days=st.integers(1, 80))
def test_any_events_in_any_order_give_the_counted_figures(tmp_path_factory, seed, devices, days):
    rng = random.Random(seed)
    events = random_events(rng, n=rng.randrange(1, 60), devices=devices, days=days)
    target = str(tmp_path_factory.mktemp("h") / "events.db")
    ingest(target, events, seed=seed)
    got = report.build(target, exclude_ci=rng.random() < 0.5, now=NOW)
    assert_matches(got, brute(events, "", got["filters"]["exclude_ci"]))
    rebuild(target)
    assert report.build(target, exclude_ci=got["filters"]["exclude_ci"], now=NOW) == got


def test_hand_counted_windows_cohorts_and_ci(db_target):
    """WAU/MAU at the window's edges, a cohort across a year boundary, a model with only
    errors, and a device active in CI only (gone with --exclude-ci)."""
    d = date(2026, 12, 28)  # a Monday; the week holds the new year
    events = [
        (at(d), "startup", {"device_id": "a", "version": "1", "ci": False}),
        (
            at(d + timedelta(days=6)),
            "task",
            {"device_id": "a", "trigger": "magic", "model": "bad", "status": "error", "ci": False},
        ),
        (at(d + timedelta(days=7)), "task", {"device_id": "a", "trigger": "cell", "status": "success"}),
        (
            at(d + timedelta(days=14)),
            "task",
            {"device_id": "b", "trigger": "api", "model": "good", "status": "success", "cost_usd": 2.0},
        ),
        (at(d + timedelta(days=3)), "startup", {"device_id": "ci-only", "version": "2", "ci": True}),
    ]
    ingest(db_target, events)
    r = report.build(db_target, now=NOW)
    by_day = {row["day"]: row for row in r["daily"]}
    first = d.isoformat()
    assert by_day[first]["weekly_active_devices"] == 1
    assert by_day["2027-01-02"]["active_devices"] == 0 and by_day["2027-01-02"]["weekly_active_devices"] == 2
    assert by_day["2027-01-06"]["weekly_active_devices"] == 2  # ci-only's day 3 is the window's first day
    assert by_day["2027-01-07"]["weekly_active_devices"] == 1  # ci-only left the week
    assert by_day["2027-01-10"]["weekly_active_devices"] == 1  # a's day 7 is the window's first day
    assert by_day["2027-01-11"]["weekly_active_devices"] == 1  # b; a's day 7 is out
    assert by_day["2027-01-11"]["monthly_active_devices"] == 3
    assert by_day["2027-01-11"]["new_devices"] == 1 and by_day["2027-01-11"]["returning_devices"] == 0
    assert r["cohorts"][0]["week"] == "2026-12-28" and r["cohorts"][0]["devices"] == 2
    assert r["cohorts"][0]["retained"][:2] == [1, 0]  # a in the week of Jan 4, nobody in the next
    models = {m["model"]: m for m in r["models"]}
    assert models["bad"]["error_share"] == 1.0 and models["bad"]["cost_per_run"] is None
    assert models["good"]["error_share"] == 0.0 and models["good"]["cost_per_run"] == 2.0
    assert (r["agent_runs"], r["tracked_cells"], r["tasks"]) == (2, 1, 3)
    no_ci = report.build(db_target, exclude_ci=True, now=NOW)
    assert no_ci["active_devices"] == 2 and no_ci["unique_devices"] == 1
    assert {row["version"]: row["devices"] for row in no_ci["adoption"]["version"]} == {"1": 1}
    assert {row["version"]: row["devices"] for row in r["adoption"]["version"]} == {"1": 1, "2": 1}
    assert {row["day"]: row["weekly_active_devices"] for row in no_ci["daily"]}["2027-01-02"] == 1


def test_a_report_taken_during_ingest_adds_up(db_target):
    """Every figure of one report comes from one snapshot: breakdowns sum to their totals."""
    store = open_store(db_target)
    stop = threading.Event()

    def write() -> None:
        rng = random.Random(3)
        while not stop.is_set():
            store.add_batch(random_events(rng, n=20, devices=50, days=3, with_none=False))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(25):
            r = report.build(db_target)
            assert r["tasks"] == sum(r["tasks_by_status"].values()) == sum(r["tasks_by_model"].values())
            assert r["tasks"] == sum(r["tasks_by_trigger"].values()) == sum(row["tasks"] for row in r["daily"])
            durations = sum(f["tasks"] for f in r["duration_ms"].values())
            assert durations == r["tasks"]  # every generated task has a duration
            assert r["tasks"] == r["agent_runs"] + r["tracked_cells"]
            assert durations == sum(m["tasks"] for m in r["duration_ms_by_run"]["agent_runs"].values()) + sum(
                m["tasks"] for m in r["duration_ms_by_run"]["tracked_cells"].values()
            )
            assert sum(row["agent_runs"] for row in r["models"]) == r["agent_runs"]
            assert sum(row["startups"] for row in r["adoption"]["version"]) == r["startups"]
    finally:
        stop.set()
        writer.join()
        store.close()


def test_taking_devices_shares_out_leaves_the_figures_of_a_database_without_them(db_target, tmp_path):
    """`store.device_shares` (what `forget` subtracts) equals never having stored those devices."""
    rng = random.Random(21)
    events = random_events(rng, n=200, devices=6)
    gone = ["device-001", "device-004"]
    ingest(db_target, events, seed=2)
    store = open_store(db_target)

    def work(tx):
        tx.run(UPSERT["rollup_reach"], device_shares(tx.read, gone))

    store.engine.transaction(work)
    with store.snapshot() as query:
        got = query("SELECT scope, figure, key, day, n FROM rollup_reach WHERE n <> 0 ORDER BY 1, 2, 3, 4")
    store.close()
    other = str(tmp_path / "without.db")
    ingest(other, [e for e in events if e[2].get("device_id") not in gone], seed=2)
    store = open_store(other)
    want = store.query("SELECT scope, figure, key, day, n FROM rollup_reach WHERE n <> 0 ORDER BY 1, 2, 3, 4")
    store.close()
    assert sorted(got) == sorted(want)


def test_device_figures_stay_exact_when_days_older_than_a_month_are_pruned(db_target):
    """A device's rows for days 31 or more before its next event may go (retention): its cohort
    and first day come from ``rollup_devices``, its windows need the last 30 days only."""
    rng = random.Random(4)
    events = sorted(random_events(rng, n=400, devices=5, days=100), key=lambda e: e[0])
    cut, resume = (START + timedelta(days=40)).isoformat(), (START + timedelta(days=70)).isoformat()
    ingest(db_target, [e for e in events if e[0][:10] < resume])
    store = open_store(db_target)
    store.engine.transaction([("DELETE FROM rollup_device_days WHERE day < ?", [[cut]])])
    store.close()
    ingest(db_target, [e for e in events if e[0][:10] >= resume])
    for exclude_ci in (False, True):
        assert_matches(report.build(db_target, exclude_ci=exclude_ci, now=NOW), brute(events, "", exclude_ci))
