"""The report's figures against a hand-counted fixture."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from datetime import datetime, timezone

import pytest
from conftest import PYTHON, subprocess_env

from clacky_ipy import report
from clacky_ipy.store import open_store

D1, D2 = "2026-11-20T10:00:00.000000Z", "2026-11-21T10:00:00.000000Z"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
EVENTS = [
    (D1, "startup", {"device_id": "d1", "frontend": "terminal", "launch_source": "cli", "ci": False}),
    (D1, "startup", {"device_id": "d2", "frontend": "jupyter", "launch_source": "installer", "ci": False}),
    (D1, "task", {"device_id": "d1", "trigger": "magic", "status": "success", "model": "A", "provider": "P",
                  "duration_ms": 100, "cost_usd": 0.01, "prompt_tokens": 10, "completion_tokens": 5,
                  "frontend": "terminal", "ci": False}),
    (D1, "task", {"device_id": "d1", "trigger": "cell", "status": "error", "error_kind": "ValueError",
                  "duration_ms": 300, "frontend": "terminal", "ci": False}),
    (D2, "startup", {"device_id": "d1", "frontend": "terminal", "launch_source": "cli", "ci": False}),
    (D2, "task", {"device_id": "d2", "trigger": "magic", "status": "success", "model": "B", "provider": "Q",
                  "duration_ms": 200, "cost_usd": 0.03, "prompt_tokens": 20, "frontend": "jupyter", "ci": False}),
    (D2, "task", {"device_id": "d3", "trigger": "api", "status": "success", "model": "A", "duration_ms": 400,
                  "frontend": "jupyter", "ci": True}),
    (D2, "task", {"device_id": "d2", "trigger": "magic", "status": "interrupted", "duration_ms": 50,
                  "frontend": "jupyter", "ci": False}),
]  # fmt: skip


def fill(target, events=EVENTS):
    store = open_store(target)
    store.add_batch(events[:3])  # a batch, then one at a time: the rollups merge both ways
    for received_at, kind, fields in events[3:]:
        store.add(kind, fields, received_at=received_at)
    store.close()
    return target


@pytest.fixture
def db(db_target):
    """The hand-counted events, on each engine in turn (SQLite, then PostgreSQL)."""
    return fill(db_target)


def test_hand_counted_figures(db):
    r = report.build(db)
    assert (r["unique_devices"], r["startups"], r["tasks"]) == (2, 3, 5)
    assert [
        {k: d[k] for k in ("day", "active_devices", "tasks", "agent_runs", "tracked_cells")} for d in r["daily"]
    ] == [
        {"day": "2026-11-20", "active_devices": 2, "tasks": 2, "agent_runs": 1, "tracked_cells": 1},
        {"day": "2026-11-21", "active_devices": 3, "tasks": 3, "agent_runs": 3, "tracked_cells": 0},
    ]
    assert r["tasks_by_status"] == {"success": 3, "error": 1, "interrupted": 1}
    assert r["tasks_by_model"] == {"(none)": 2, "A": 2, "B": 1}
    assert r["tasks_by_provider"] == {"(none)": 3, "P": 1, "Q": 1}
    assert r["tasks_by_trigger"] == {"magic": 3, "api": 1, "cell": 1}
    assert r["duration_ms"] == {
        "error": {"tasks": 1, "p50": 300, "p95": 300},
        "interrupted": {"tasks": 1, "p50": 50, "p95": 50},
        "success": {"tasks": 3, "p50": 200, "p95": 400},
    }
    assert r["cost_usd"] == {"total": 0.04, "mean": 0.02, "agent_runs": 0.04}
    assert r["tokens"]["prompt_tokens"] == 30 and r["tokens"]["completion_tokens"] == 5
    assert r["by_frontend"] == {"jupyter": {"startups": 1, "tasks": 3}, "terminal": {"startups": 2, "tasks": 2}}
    assert r["by_launch_source"] == {"cli": 2, "installer": 1}
    assert r["by_ci"] == {"false": {"startups": 3, "tasks": 4}, "true": {"startups": 0, "tasks": 1}}


def test_exclude_ci(db):
    r = report.build(db, exclude_ci=True)
    assert r["tasks"] == 4 and (r["daily"][1]["active_devices"], r["daily"][1]["tasks"]) == (2, 2)
    assert r["tasks_by_model"] == {"(none)": 2, "A": 1, "B": 1}


def test_days(db):
    r = report.build(db, days=1, now=NOW)
    assert [d["day"] for d in r["daily"]] == ["2026-11-21"] and r["tasks"] == 3 and r["unique_devices"] == 1


def test_percentiles_nearest_rank(db_target):
    store = open_store(db_target)
    for ms in range(1, 101):  # 1..100
        store.add("task", {"status": "success", "duration_ms": ms})
    store.close()
    assert report.build(db_target)["duration_ms"]["success"] == {"tasks": 100, "p50": 50, "p95": 95}


def test_formats(db):
    r = report.build(db)
    assert json.loads(report.render(r, "json"))["unique_devices"] == 2
    rows = list(csv.DictReader(io.StringIO(report.render(r, "csv"))))
    assert {"section": "totals", "key": "", "metric": "unique_devices", "value": "2"} in rows
    table = report.render(r, "table")
    assert "unique_devices" in table and "2026-11-21" in table and "p95" in table


def test_empty_database(db_target):
    open_store(db_target).close()
    r = report.build(db_target)
    assert (r["unique_devices"], r["tasks"], r["daily"], r["cost_usd"]["mean"]) == (0, 0, [], None)
    assert report.render(r)


def test_plot(db, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "trend.png"
    from clacky_ipy import plot

    plot.png(report.build(db), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_report(db, tmp_path):
    base = [PYTHON, "-m", "clacky_ipy", "report", "--db", db]
    proc = subprocess.run(
        [*base, "--format", "json", "--exclude-ci"], env=subprocess_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["tasks"] == 4
    missing = subprocess.run(
        [*base[:-1], str(tmp_path / "none.db")], env=subprocess_env(), capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no database" in missing.stderr and "Traceback" not in missing.stderr
    bad = subprocess.run([*base, "--days", "0"], env=subprocess_env(), capture_output=True, text=True)
    assert bad.returncode == 2 and "positive" in bad.stderr
