"""`forget` and `prune` on both engines, compared with a database rebuilt without those events."""

from __future__ import annotations

import random
import subprocess
import threading
from datetime import datetime, timedelta, timezone

import pytest
from conftest import PYTHON, subprocess_env

from clacky_ipy import report
from clacky_ipy.retention import forget, prune, scope
from clacky_ipy.store import _KEYS, ROLLUP_TABLES, open_store, rebuild

NOW = datetime.now(timezone.utc)
DEVICES = [f"{i:064x}" for i in range(6)]


def stamp(days_ago: int, seconds: int) -> str:
    return (NOW - timedelta(days=days_ago, seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def events(seed: int = 1, n: int = 600) -> list[tuple[str, str, dict]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = "task" if rng.random() < 0.8 else "startup"
        fields = {
            "device_id": rng.choice(DEVICES),
            "ci": rng.random() < 0.2,
            "frontend": rng.choice(["jupyter", "terminal"]),
        }
        if kind == "task":
            fields |= {
                "status": rng.choice(["success", "error"]),
                "model": rng.choice(["m1", "m2"]),
                "trigger": rng.choice(["magic", "cell"]),
                "duration_ms": rng.randrange(1, 5000),
                "cost_usd": rng.randrange(0, 100) / 1000,
                "prompt_tokens": rng.randrange(0, 1000),
            }
        else:
            fields["launch_source"] = "cli"
        out.append((stamp(rng.randrange(0, 60), rng.randrange(0, 86400)), kind, fields))
    rng.shuffle(out)  # ids out of time order, as the benchmark's generated databases are
    return out


def fill(db: str, rows) -> None:
    store = open_store(db)
    try:
        store.add_batch(rows)
    finally:
        store.close()


def rollups(db: str) -> dict[str, list[tuple]]:
    """Every rollup table's rows, sorted, floats rounded (SQL and Python sum in other orders)."""
    store = open_store(db, create=False)
    try:
        out = {}
        for table in ROLLUP_TABLES:
            rows = store.query(f"SELECT * FROM {table}")
            out[table] = sorted(tuple(round(v, 9) if isinstance(v, float) else v for v in row) for row in rows)
        return out
    finally:
        store.close()


def reports(db: str) -> list[dict]:
    return [report.build(db, days=d, exclude_ci=ci, now=NOW) for d in (None, 7) for ci in (False, True)]


@pytest.fixture
def second_db(request, tmp_path, db_target):
    """Where the expected database is built: another database on the same engine."""
    if not db_target.startswith("postgresql"):
        yield str(tmp_path / "expected.db")
        return
    from pgserver import fresh_database

    with fresh_database(request.getfixturevalue("postgres_server")) as url:
        yield url


def test_every_rollup_has_a_scope():
    assert {table: scope(table) for table in ROLLUP_TABLES} == {
        table: "device" if "device_id" in _KEYS[table] else "day" if "day" in _KEYS[table] else "all"
        for table in ROLLUP_TABLES
    }


def test_forget_leaves_the_rollups_of_a_database_that_never_had_those_events(db_target, second_db):
    rows = events()
    gone = DEVICES[:2]
    fill(db_target, rows)
    done = forget(db_target, gone)
    kept = [row for row in rows if row[2]["device_id"] not in gone]
    fill(second_db, kept)
    rebuild(second_db)
    assert done.devices == 2 and done.events == len(rows) - len(kept) and done.days > 0
    assert rollups(db_target) == rollups(second_db)
    assert reports(db_target) == reports(second_db)
    store = open_store(db_target, create=False)
    try:
        assert store.count() == len(kept)
        assert store.query("SELECT COUNT(*) FROM events WHERE device_id IN (?, ?)", gone)[0][0] == 0
    finally:
        store.close()


def test_forget_while_a_collector_writes_loses_nothing_else(db_target, second_db):
    """Events stored during `forget` (other devices' and the forgotten ones') end up as if the
    forgotten devices had never existed."""
    rows = events(2)
    fill(db_target, rows)
    more = events(3, 400)
    writer = open_store(db_target)

    def write() -> None:
        for i in range(0, len(more), 10):
            writer.add_batch(more[i : i + 10])

    thread = threading.Thread(target=write)
    thread.start()
    forget(db_target, [DEVICES[0]])
    thread.join()
    writer.close()
    forget(db_target, [DEVICES[0]])  # what the device sent during the first one
    fill(second_db, [row for row in rows + more if row[2]["device_id"] != DEVICES[0]])
    rebuild(second_db)
    assert rollups(db_target) == rollups(second_db)


def test_forget_from_the_command_line_prints_one_line(tmp_path):
    db = str(tmp_path / "events.db")
    fill(db, events())
    out = subprocess.run(
        [PYTHON, "-m", "clacky_ipy", "forget", "--db", db, DEVICES[0], "f" * 64],
        env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip().splitlines()) == 1 and out.stdout.startswith("forgot 2 device(s): ")
    missing = subprocess.run(
        [PYTHON, "-m", "clacky_ipy", "forget", "--db", str(tmp_path / "nope.db"), DEVICES[0]],
        env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_prune_deletes_old_raw_events_and_per_device_rows_and_keeps_the_totals(db_target, second_db):
    rows = events(4)
    fill(db_target, rows)
    before = report.build(db_target, now=NOW)
    done = prune(db_target, 30, now=NOW)
    first = done.kept_from
    kept = [row for row in rows if row[0][:10] >= first]
    assert done.events == len(rows) - len(kept) > 0
    store = open_store(db_target, create=False)
    try:
        assert store.count() == len(kept)
        assert store.query("SELECT COUNT(*) FROM rollup_device_days WHERE day < ?", [first])[0][0] == 0
        assert store.query("SELECT COUNT(*) FROM rollup_devices WHERE last_seen < ?", [first])[0][0] == 0
    finally:
        store.close()
    after = report.build(db_target, now=NOW)
    # Device-free aggregates stay: the totals over all time are those of before.
    assert after["tasks"] == before["tasks"] and after["startups"] == before["startups"]
    assert after["tasks_by_status"] == before["tasks_by_status"]
    # Within the window kept, every figure is that of a database holding only the kept events.
    fill(second_db, kept)
    rebuild(second_db)
    assert report.build(db_target, days=30, now=NOW) == report.build(second_db, days=30, now=NOW)


def test_prune_leaves_the_device_figures_of_the_kept_events_and_ingest_goes_on_from_them(db_target, second_db):
    """Every device's share (``rollup_reach``) is that of the kept events, and stays so as devices
    seen only before the cutoff, or before and after it, send again."""
    rows = events(6)
    fill(db_target, rows)
    first = prune(db_target, 20, now=NOW).kept_from
    fill(second_db, [row for row in rows if row[0][:10] >= first])
    rebuild(second_db)
    assert rollups(db_target)["rollup_reach"] == rollups(second_db)["rollup_reach"]
    again = [(stamp(0, 10 + i), "startup", {"device_id": d, "launch_source": "cli"}) for i, d in enumerate(DEVICES)]
    again.append((stamp(0, 5), "task", {"device_id": "e" * 64, "status": "success"}))
    for db in (db_target, second_db):
        fill(db, again)
    assert rollups(db_target)["rollup_reach"] == rollups(second_db)["rollup_reach"]
    assert reports(db_target)[2:] == reports(second_db)[2:]  # --days 7, with and without CI


def test_prune_from_the_command_line(tmp_path):
    db = str(tmp_path / "events.db")
    fill(db, events())
    out = subprocess.run(
        [PYTHON, "-m", "clacky_ipy", "prune", "--db", db, "--older-than", "7"],
        env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.startswith("pruned ")
    for bad in ("0", "-3", "soon"):
        refused = subprocess.run(
            [PYTHON, "-m", "clacky_ipy", "prune", "--db", db, "--older-than", bad],
            env=subprocess_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1


def test_collect_retain_days_prunes_while_it_serves(tmp_path):
    from clacky_ipy.collector import Collector

    db = str(tmp_path / "events.db")
    fill(db, events())
    with Collector(db, retain_days=10) as c:
        c.retention._thread.join(0)  # started
        deadline = datetime.now() + timedelta(seconds=20)
        while c.retention.last is None:
            assert datetime.now() < deadline
            threading.Event().wait(0.05)
        first = c.retention.last.kept_from
        assert c.store.query("SELECT COUNT(*) FROM events WHERE received_at < ?", [first])[0][0] == 0


def test_a_forget_cut_short_is_finished_by_running_it_again(db_target, second_db, monkeypatch):
    """Stopped after the rollups were corrected but before the raw events went (where Ctrl-C
    could land), a second `forget` finds those events again and ends where one would have."""
    from clacky_ipy import retention

    rows = events(5)
    fill(db_target, rows)
    real = retention._delete_ids

    def cut(store, ids):
        raise KeyboardInterrupt

    monkeypatch.setattr(retention, "_delete_ids", cut)
    with pytest.raises(KeyboardInterrupt):
        forget(db_target, DEVICES[:1])
    monkeypatch.setattr(retention, "_delete_ids", real)
    forget(db_target, DEVICES[:1])
    fill(second_db, [row for row in rows if row[2]["device_id"] != DEVICES[0]])
    rebuild(second_db)
    assert rollups(db_target) == rollups(second_db)
