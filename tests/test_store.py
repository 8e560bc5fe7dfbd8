"""The store's interface: batches, and an operator's mistakes as one-line `StoreError`s."""

from __future__ import annotations

import json
import math
import random
import sqlite3
import subprocess
import threading
from collections import Counter
from datetime import datetime, timezone

import pytest
from conftest import PYTHON, free_port, subprocess_env
from hypothesis import given, settings
from hypothesis import strategies as st
from legacy import OldStore, old_build

from clacky_ipy import payload, report
from clacky_ipy.store import OLD_INDEXES, StoreError, _rollups, open_store, rebuild

try:
    import psycopg
except ImportError:  # the PostgreSQL tests skip (pgserver says why)
    psycopg = None


def test_batch_is_stored_in_order(tmp_path):
    store = open_store(tmp_path / "e.db")
    store.add_batch([("2026-11-20T10:00:00.000000Z", "startup", {"device_id": "d1", "ci": False})] * 2)
    store.add("task", {"device_id": "d1", "status": "success", "duration_ms": 5})
    assert store.count() == 3
    rows = store.rows()
    assert [r["kind"] for r in rows] == ["startup", "startup", "task"] and rows[2]["duration_ms"] == 5
    store.close()


@pytest.mark.parametrize("name", ["a#b.db", "a?mode=ro.db", "a%20b.db", "x?.db#frag"])
def test_path_with_uri_characters_is_a_path(tmp_path, name):
    store = open_store(tmp_path / name)
    store.add("task", {"status": "success"})
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [name]
    reader = open_store(tmp_path / name, create=False)
    assert reader.count() == 1
    reader.close()


def _corrupt(path):
    path.write_bytes(b"this is not a database, just text " * 200)


def _foreign(path):
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE invoices (n INTEGER)")
    con.close()


def _foreign_events(path):
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE events (what TEXT)")
    con.close()


@pytest.mark.parametrize(
    ("make", "create", "words"),
    [
        (lambda p: p.mkdir(), True, "folder"),
        (lambda p: p.mkdir(), False, "folder"),
        (lambda p: None, False, "no database"),
        (lambda p: p.write_bytes(b""), False, "empty"),
        (_corrupt, True, "not a usable"),
        (_corrupt, False, "not a usable"),
        (_foreign, True, "something else"),
        (_foreign, False, "not a clacky-ipy database"),
        (_foreign_events, True, "something else"),
    ],
)
def test_operator_errors_are_one_line(tmp_path, make, create, words):
    path = tmp_path / "e.db"
    make(path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(StoreError) as err:
        open_store(path, create=create)
    message = str(err.value)
    assert words in message and "\n" not in message
    if before is not None:
        assert path.read_bytes() == before  # nothing written into what is not ours


def test_missing_folder(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "nowhere" / "e.db")
    assert not (tmp_path / "nowhere").exists()


# -- rollups -----------------------------------------------------------------------------------
def random_events(n=600, seed=7):
    """Plausible and awkward events over six days: missing keys, CI unset, zero and float durations."""
    rng = random.Random(seed)
    devices = [f"device-{i:02d}" for i in range(15)]  # ids the vocabulary keeps (8 to 64 characters)
    out = []
    for _ in range(n):
        at = f"2026-11-{rng.randrange(15, 21)}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00.000000Z"
        fields = {"device_id": rng.choice([*devices, None]), "ci": rng.choice([True, False, False, None])}
        fields["frontend"] = rng.choice(["jupyter", "terminal", None])
        if rng.random() < 0.2:
            fields["launch_source"] = rng.choice(["cli", "installer", None])
            kind = "startup"
        else:
            kind = "task"
            fields.update(
                status=rng.choice(["success", "success", "error", "interrupted", None]),
                model=rng.choice(["A", "B", "(none)", None]),
                provider=rng.choice(["P", None]),
                trigger=rng.choice(["magic", "cell", "api"]),
                duration_ms=rng.choice([0, rng.randrange(1, 10**7), rng.random() * 1000, None]),
                cost_usd=rng.choice([None, round(rng.random(), 4)]),
                prompt_tokens=rng.choice([None, rng.randrange(10**6)]),
                completion_tokens=rng.randrange(1000),
            )
        out.append((at, kind, payload.clean(kind, {k: v for k, v in fields.items() if v is not None})))
    return out


def brute_force(events, since="", exclude_ci=False):
    """The report's figures counted by hand in Python over the raw events (percentiles exact)."""
    keep = [(at, k, f) for at, k, f in events if not (exclude_ci and f.get("ci") is True)]
    first = {}
    for at, _, f in keep:
        if f.get("device_id"):
            first[f["device_id"]] = min(first.get(f["device_id"], at), at)
    sel = [(at, k, f) for at, k, f in keep if at[:10] >= since]
    tasks = [f for _, k, f in sel if k == "task"]

    def counts(rows, key):
        got = Counter(f.get(key) or "(none)" for f in rows)
        return dict(sorted(got.items(), key=lambda kv: (-kv[1], kv[0])))

    days = sorted({at[:10] for at, _, _ in sel})
    durations = {}
    for f in tasks:
        if "duration_ms" in f:
            durations.setdefault(f.get("status") or "(none)", []).append(f["duration_ms"])
    frontends = {}
    for _, k, f in sel:
        frontends.setdefault(f.get("frontend") or "(none)", Counter())[k + "s"] += 1
    by_ci = {}
    for _, k, f in sel:
        key = {None: "(none)", True: "true", False: "false"}[f.get("ci")]
        by_ci.setdefault(key, Counter())[k + "s"] += 1
    costs = [f["cost_usd"] for f in tasks if "cost_usd" in f]
    return {
        "unique_devices": len({f["device_id"] for _, k, f in sel if k == "startup" and f.get("device_id")}),
        "new_devices": sum(1 for at in first.values() if at[:10] >= since),
        "startups": len(sel) - len(tasks),
        "tasks": len(tasks),
        "daily": [
            {
                "day": day,
                "active_devices": len({f["device_id"] for at, _, f in sel if at[:10] == day and f.get("device_id")}),
                "tasks": sum(1 for at, k, _ in sel if at[:10] == day and k == "task"),
            }
            for day in days
        ],
        "tasks_by_status": counts(tasks, "status"),
        "tasks_by_model": counts(tasks, "model"),
        "tasks_by_provider": counts(tasks, "provider"),
        "tasks_by_trigger": counts(tasks, "trigger"),
        "by_launch_source": counts([f for _, k, f in sel if k == "startup"], "launch_source"),
        "durations": {s: sorted(v) for s, v in durations.items()},
        "cost_total": sum(costs),
        "cost_mean": sum(costs) / len(costs) if costs else None,
        "tokens": {c: sum(f.get(c, 0) for f in tasks) for c in report.TOKEN_COLUMNS},
        "by_frontend": {k: {"startups": v["startups"], "tasks": v["tasks"]} for k, v in frontends.items()},
        "by_ci": {k: {"startups": v["startups"], "tasks": v["tasks"]} for k, v in sorted(by_ci.items())},
    }


def assert_report_matches(got, want):
    """Every figure equal; percentiles within 1 % of the exact nearest-rank value."""
    for name in ("unique_devices", "new_devices", "startups", "tasks", "tokens", "by_ci"):
        assert got[name] == want[name], name
    assert [{k: d[k] for k in ("day", "active_devices", "tasks")} for d in got["daily"]] == want["daily"]
    for name in ("tasks_by_status", "tasks_by_model", "tasks_by_provider", "tasks_by_trigger", "by_launch_source"):
        assert got[name] == want[name], name
    assert got["by_frontend"] == want["by_frontend"]
    assert got["cost_usd"]["total"] == pytest.approx(want["cost_total"], abs=1e-6)
    assert got["cost_usd"]["agent_runs"] <= got["cost_usd"]["total"] + 1e-6
    if want["cost_mean"] is None:
        assert got["cost_usd"]["mean"] is None
    else:
        assert got["cost_usd"]["mean"] == pytest.approx(want["cost_mean"], abs=1e-6)
    assert set(got["duration_ms"]) == set(want["durations"])
    for status, values in want["durations"].items():
        figures = got["duration_ms"][status]
        assert figures["tasks"] == len(values)
        for name, q in (("p50", 0.5), ("p95", 0.95)):
            exact = values[max(1, math.ceil(q * len(values))) - 1]
            assert figures[name] == pytest.approx(exact, rel=0.01, abs=1e-9), (status, name)


def ingest(target, events, seed=3):
    """The events through the store in batches of random sizes (1 to 64), as the collector groups them."""
    rng = random.Random(seed)
    store = open_store(target)
    i = 0
    while i < len(events):
        size = rng.randrange(1, 65)
        store.add_batch(events[i : i + size])
        i += size
    store.close()


NOW = datetime(2026, 11, 20, 23, 0, tzinfo=timezone.utc)


def test_rollups_give_the_figures_counted_from_raw_events(db_target):
    events = random_events()
    ingest(db_target, events)
    for days, exclude_ci in [(None, False), (None, True), (3, False), (3, True), (1, False), (10**9, False)]:
        got = report.build(db_target, days=days, exclude_ci=exclude_ci, now=NOW)
        assert_report_matches(got, brute_force(events, report.first_day(days, NOW), exclude_ci))


def test_rebuild_gives_what_ingest_kept(db_target):
    events = random_events(seed=11)
    ingest(db_target, events)
    before = [report.build(db_target, days=d, exclude_ci=x, now=NOW) for d in (None, 2) for x in (False, True)]
    done = rebuild(db_target)
    assert done.events == len(events)
    after = [report.build(db_target, days=d, exclude_ci=x, now=NOW) for d in (None, 2) for x in (False, True)]
    for got, want in zip(after, before):
        diff = {k: v for k, v in got.items() if v != want[k]}
        if "models" in diff:
            diff["models"] = [
                {k: (v, w[k]) for k, v in g.items() if v != w[k]} for g, w in zip(got["models"], want["models"])
            ]
        assert diff == {}
    damage = [  # rollups gone wrong: rebuild repairs them from the raw events
        "DELETE FROM rollup_daily WHERE kind = 'task'",
        "UPDATE rollup_durations SET n = n + 5",
        "DELETE FROM rollup_device_days",
        "UPDATE rollup_devices SET first_seen = '2000-01-01'",
    ]
    raw_execute(db_target, damage)
    assert report.build(db_target, now=NOW) != before[0]
    rebuild(db_target)
    assert [report.build(db_target, days=d, exclude_ci=x, now=NOW) for d in (None, 2) for x in (False, True)] == before


def raw_execute(target, statements):
    """Statements on the database behind the store's back (what an operator's mistake could do)."""
    if target.startswith("postgresql"):
        con = psycopg.connect(target, autocommit=True)
    else:
        con = sqlite3.connect(target, isolation_level=None)
    for sql in statements:
        con.execute(sql)
    con.close()


def test_rollups_are_in_the_raw_rows_transaction(db_target):
    """A batch whose rollups the database refuses stores no raw row either (and the store goes on)."""
    store = open_store(db_target)
    store.add("task", {"status": "success", "duration_ms": 5})
    if db_target.startswith("postgresql"):
        trigger = [
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse BEFORE INSERT ON rollup_durations FOR EACH ROW EXECUTE FUNCTION refuse()",
        ]
    else:
        trigger = ["CREATE TRIGGER refuse BEFORE INSERT ON rollup_durations BEGIN SELECT RAISE(ABORT, 'refused'); END"]
    raw_execute(db_target, trigger)
    with pytest.raises(StoreError) as err:
        store.add_batch([("2026-11-21T00:00:00.000000Z", "task", {"status": "error", "duration_ms": 7})] * 3)
    assert "refused" in str(err.value) and "\n" not in str(err.value)
    assert store.count() == 1
    store.add("startup", {"device_id": "d1"})  # no duration: no histogram row, stored
    assert store.count() == 2
    store.close()
    r = report.build(db_target)
    assert (r["tasks"], r["startups"], r["duration_ms"]["success"]["tasks"]) == (1, 1, 1)


def test_sums_beyond_64_bits_never_fail_and_json_stays_json(db_target):
    big = payload.INT64_MAX
    rows = [("2026-11-20T10:00:00.000000Z", "task", {"prompt_tokens": big, "cost_usd": 9e18, "duration_ms": 10})] * 3
    ingest(db_target, rows + rows)
    for _ in range(2):  # as kept at ingest, then as rebuilt (SQLite's SUM raises on overflow)
        r = report.build(db_target)
        assert r["tokens"]["prompt_tokens"] == pytest.approx(6 * big, rel=1e-12)
        if db_target.startswith("postgresql"):
            assert r["tokens"]["prompt_tokens"] == 6 * big  # numeric: exact
        assert r["cost_usd"]["total"] == pytest.approx(5.4e19) and r["cost_usd"]["mean"] == pytest.approx(9e18)
        text = json.dumps(r, allow_nan=False)
        assert json.loads(text)["tasks"] == 6
        rebuild(db_target)


# -- migration from the version before rollups -------------------------------------------------
@pytest.fixture
def old_db(tmp_path):
    path = tmp_path / "old.db"  # the old report spliced paths into a URI: no '#' or '?' for it
    old = OldStore(path)
    for received_at, kind, fields in random_events(seed=5):
        # a model literally named "(none)": the old report kept one of its two counts (the new adds them)
        old.add(kind, {k: v for k, v in fields.items() if v != "(none)"}, received_at)
    old.close()
    return path


def test_old_database_is_read_after_rebuild_with_the_same_figures(old_db):
    before = {x: old_build(old_db, exclude_ci=x) for x in (False, True)}
    for create in (True, False):  # collect and report: one line that says what to run
        with pytest.raises(StoreError) as err:
            open_store(old_db, create=create)
        assert f"clacky-ipy rebuild --db {old_db}" in str(err.value) and "\n" not in str(err.value)
    assert rebuild(old_db).events == 600
    for exclude_ci, old in before.items():
        new = report.build(old_db, exclude_ci=exclude_ci)
        for name, value in old.items():
            if name == "duration_ms":
                for status, figures in value.items():
                    assert new[name][status]["tasks"] == figures["tasks"]
                    for q in ("p50", "p95"):
                        assert new[name][status][q] == pytest.approx(figures[q], rel=0.01)
            elif name == "filters":
                assert new[name]["exclude_ci"] == exclude_ci
            elif name == "cost_usd":
                assert {k: new[name][k] for k in value} == value
            elif name == "daily":
                assert [{k: d[k] for k in ("day", "active_devices", "tasks")} for d in new[name]] == value
            else:
                assert new[name] == value, name
    with sqlite3.connect(old_db) as con:  # the old report's indexes are gone (they only cost inserts)
        assert not {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")} & set(OLD_INDEXES)
    con.close()


def test_cli_on_an_old_database(old_db, tmp_path):
    old_db = old_db.rename(tmp_path / "old #1?.db")  # a path, never a URI

    def cli(*args):
        return subprocess.run(
            [PYTHON, "-m", "clacky_ipy", *args], env=subprocess_env(), capture_output=True, text=True, timeout=60
        )

    for args in (["report", "--db", str(old_db)], ["collect", "--db", str(old_db), "--port", "0"]):
        proc = cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "clacky-ipy rebuild --db" in proc.stderr
    proc = cli("rebuild", "--db", str(old_db))
    assert proc.returncode == 0 and "600 events" in proc.stdout, proc.stderr
    proc = cli("report", "--db", str(old_db), "--format", "json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["startups"] + json.loads(proc.stdout)["tasks"] == 600
    missing = cli("rebuild", "--db", str(tmp_path / "none.db"))
    assert missing.returncode == 2 and "no database" in missing.stderr and not (tmp_path / "none.db").exists()


# -- PostgreSQL --------------------------------------------------------------------------------
def test_unreachable_postgres_is_one_line_without_the_password():
    url = f"postgresql://clacky:s3cret@127.0.0.1:{free_port()}/events?connect_timeout=3"
    with pytest.raises(StoreError) as err:
        open_store(url)
    message = str(err.value)
    assert message.startswith("cannot reach PostgreSQL") and "\n" not in message and "s3cret" not in message
    proc = subprocess.run(
        [PYTHON, "-m", "clacky_ipy", "report", "--db", url], env=subprocess_env(), capture_output=True, text=True
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "s3cret" not in proc.stderr


def test_postgres_database_without_our_tables(pg_url):
    with pytest.raises(StoreError, match="nothing collected yet"):
        open_store(pg_url, create=False)
    open_store(pg_url).close()  # the collector creates them
    assert open_store(pg_url, create=False).count() == 0


WRITER = """
import sys
from clacky_ipy.store import open_store
url, me, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = open_store(url)
i = 0
while i < n:
    size = 1 + (i * 7 + me) % 40
    batch = [
        ("2026-11-20T10:00:00.000000Z", "task",
         {"device_id": f"d{j % 5}", "status": "success", "model": "A", "duration_ms": j % 300,
          "iterations": me * 1_000_000 + j})
        for j in range(i, min(n, i + size))
    ]
    store.add_batch(batch)
    i += size
store.close()
"""


def test_two_processes_writing_to_one_postgres_lose_nothing_and_store_nothing_twice(pg_url):
    open_store(pg_url).close()  # both start at once below; tables are made by whichever is first too
    n = 1500
    procs = [
        subprocess.Popen([PYTHON, "-c", WRITER, pg_url, str(me), str(n)], env=subprocess_env(), stderr=subprocess.PIPE)
        for me in (1, 2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    store = open_store(pg_url, create=False)
    marks = [row["iterations"] for row in store.rows()]
    store.close()
    assert len(marks) == 2 * n and sorted(marks) == sorted(me * 1_000_000 + j for me in (1, 2) for j in range(n))
    r = report.build(pg_url)
    assert r["tasks"] == 2 * n and [(d["day"], d["active_devices"], d["tasks"]) for d in r["daily"]] == [
        ("2026-11-20", 5, 2 * n)
    ]
    assert r["duration_ms"]["success"]["tasks"] == 2 * n
    rebuild(pg_url)
    assert report.build(pg_url) == r


def test_two_processes_create_the_schema_at_once(pg_url):
    procs = [
        subprocess.Popen([PYTHON, "-c", WRITER, pg_url, str(me), "50"], env=subprocess_env(), stderr=subprocess.PIPE)
        for me in (1, 2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    assert report.build(pg_url)["tasks"] == 100


DURATIONS = st.one_of(
    st.integers(0, payload.MAX_DURATION_MS),
    st.floats(0.001, float(payload.MAX_DURATION_MS)),
    st.integers(0, 2000),
    st.just(0),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(DURATIONS, st.integers(0, 3)), min_size=1, max_size=400))
def test_percentiles_from_merged_histograms_are_within_one_percent(values):
    """Each day's histogram as the store keeps it, merged as the report's query merges them."""
    events = [(f"2026-11-2{day}T00:00:00.000000Z", "task", {"duration_ms": ms}) for ms, day in values]
    merged = {}
    for (_, dim, status, index, _, _), (n, lo, hi) in _rollups(events)[0]["rollup_durations"].items():
        if dim != "status":
            continue
        got = merged.get((status, index))
        merged[(status, index)] = [n, lo, hi] if got is None else [got[0] + n, min(got[1], lo), max(got[2], hi)]
    figures = report._percentiles([(s, i, n, lo, hi) for (s, i), (n, lo, hi) in merged.items()])["(none)"]
    exact = sorted(ms for ms, _ in values)
    assert figures["tasks"] == len(exact)
    for name, q in report.QUANTILES.items():
        want = exact[max(1, math.ceil(q * len(exact))) - 1]
        assert abs(figures[name] - want) <= 0.006 * want, (name, want, figures[name])


def test_text_round_trips_on_both_engines(db_target):
    fields = payload.clean("task", {"model": "модель-☃", "error_kind": "ValueError", "provider": "error\ud800"})
    store = open_store(db_target)
    store.add("task", fields)
    (row,) = store.rows()
    store.close()
    assert row["model"] == "модель-☃" and row["provider"] == "error\ufffd"
    assert report.build(db_target)["tasks_by_model"] == {"модель-☃": 1}


def test_two_collector_processes_on_one_postgres(pg_url):
    """Two `clacky-ipy collect` processes, one database, clients posting to both at once."""
    import requests

    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [PYTHON, "-m", "clacky_ipy", "collect", "--db", pg_url, "--port", str(port)],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for port in ports
    ]
    per_client, statuses = 150, []
    try:
        for proc in procs:
            assert "collector on http://127.0.0.1:" in proc.stdout.readline()

        def client(me):
            with requests.Session() as session:
                for j in range(per_client):
                    url = f"http://127.0.0.1:{ports[(me + j) % 2]}/api/v1/telemetry/task"
                    body = {"device_id": f"device-{j % 3:02}", "status": "success", "iterations": me * 10_000 + j}
                    statuses.append(session.post(url, json=body, timeout=30).status_code)

        threads = [threading.Thread(target=client, args=(me,)) for me in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            assert proc.wait(timeout=30) == 0 and "Traceback" not in proc.stderr.read()
    assert statuses == [201] * 4 * per_client
    store = open_store(pg_url, create=False)
    marks = sorted(row["iterations"] for row in store.rows())
    store.close()
    assert marks == sorted(me * 10_000 + j for me in range(4) for j in range(per_client))
    r = report.build(pg_url)
    assert r["tasks"] == 4 * per_client and r["daily"][0]["active_devices"] == 3
