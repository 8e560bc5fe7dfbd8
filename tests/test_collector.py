"""The reference collector over real sockets: storage, bad input, concurrency, shutdown."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time

import pytest
import requests
from conftest import PYTHON, free_port, load, subprocess_env

import clacky_ipy
from clacky_ipy import payload
from clacky_ipy.collector import MAX_BODY, Collector

TASK = "/api/v1/telemetry/task"
STARTUP = "/api/v1/telemetry/startup"


@pytest.fixture
def collector(tmp_path):
    with Collector(tmp_path / "events.db", port=0) as c:
        yield c


def post(collector, path, body, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(collector.url + path, data=data, timeout=5, **kw)


def test_stores_documented_keys_with_server_time(collector):
    response = post(
        collector, TASK, {"device_id": "device-01", "status": "success", "duration_ms": 12, "history": ["x"]}
    )
    assert response.status_code == 201
    (row,) = collector.store.rows()
    assert row["kind"] == "task" and row["device_id"] == "device-01" and row["duration_ms"] == 12
    assert row["received_at"].endswith("Z") and row["received_at"][:4].isdigit()
    assert "history" not in row  # unknown keys are dropped, not stored


def test_columns_are_the_vocabulary_and_no_address(collector):
    with sqlite3.connect(collector.store.path) as con:
        columns = [r[1] for r in con.execute("PRAGMA table_info(events)")]
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert columns == ["id", "received_at", "kind", *payload.COLUMNS]
    assert not {"ip", "address", "remote_addr", "peer", "host"} & set(columns)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", TASK, b"not json", 400),
        ("POST", TASK, b"\xff\xfe", 400),
        ("POST", TASK, b"[1, 2]", 400),
        ("POST", TASK, b'"a string"', 400),
        ("POST", TASK, b"x" * (MAX_BODY + 1), 413),
        ("POST", "/api/v1/telemetry/other", b"{}", 404),
        ("POST", "/", b"{}", 404),
        ("GET", TASK, None, 405),
        ("PUT", STARTUP, b"{}", 405),
        ("DELETE", TASK, None, 405),
        ("GET", "/nothing", None, 404),
    ],
)
def test_bad_input_gets_a_4xx_is_not_stored_and_the_server_keeps_running(collector, method, path, body, status):
    response = requests.request(method, collector.url + path, data=body, timeout=5)
    assert response.status_code == status
    assert response.json()["status"] == status and response.json()["message"]
    if status == 405:
        assert response.headers["Allow"] == "POST"
    assert collector.store.count() == 0
    assert post(collector, STARTUP, {"device_id": "device-00"}).status_code == 201
    assert collector.store.count() == 1


def test_missing_content_length_is_411(collector):
    import http.client

    conn = http.client.HTTPConnection(*collector.address, timeout=5)
    conn.putrequest("POST", TASK)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"2\r\n{}\r\n0\r\n\r\n")
    assert conn.getresponse().status == 411
    assert collector.store.count() == 0


def test_wrong_types_are_dropped_not_stored(collector):
    post(collector, TASK, {"version": 5, "duration_ms": "slow", "status": "success", "ci": "yes"})
    (row,) = collector.store.rows()
    assert "version" not in row and "duration_ms" not in row and "ci" not in row and row["status"] == "success"


def test_concurrent_clients_lose_nothing(collector):
    def client(n):
        with requests.Session() as s:
            for i in range(n):
                assert s.post(
                    collector.url + TASK, json={"device_id": f"device-{i:04}", "iterations": i}, timeout=10
                ).ok

    threads = [threading.Thread(target=client, args=(50,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert collector.store.count() == 400


def test_keep_alive_requests_do_not_stall(collector):
    """With Nagle on, each answer's body waited for the client's delayed ACK: 40 ms a request."""
    with requests.Session() as s:
        start = time.monotonic()
        for i in range(100):
            assert s.post(collector.url + TASK, json={"iterations": i}, timeout=10).status_code == 201
        took = time.monotonic() - start
    assert collector.store.count() == 100
    assert took < 2.0  # generous: 100 x 40 ms would be 4 s


def test_the_extension_delivers_to_the_collector(ip, collector):
    load(ip, endpoint=collector.url, track_cells=True)
    ip.run_cell("x = 1", store_history=True)
    clacky_ipy.task({"model": "m", "cache_stats": {"prompt_tokens": 3}})
    assert clacky_ipy.flush(5)
    rows = collector.store.rows()
    assert [r["kind"] for r in rows] == ["startup", "task", "task"]
    assert rows[2]["model"] == "m" and rows[2]["prompt_tokens"] == 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_collector_stops_cleanly_and_keeps_what_it_acknowledged(tmp_path, sig):
    db, port = tmp_path / "c.db", free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "clacky_ipy", "collect", "--db", str(db), "--port", str(port)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "collector on http://127.0.0.1:" in proc.stdout.readline()
        acked = sum(
            requests.post(f"http://127.0.0.1:{port}{TASK}", json={"iterations": i}, timeout=5).status_code == 201
            for i in range(30)
        )
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
    assert "Traceback" not in proc.stderr.read()
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM events").fetchone()[0] == acked == 30


def test_cli_refuses_a_busy_port(tmp_path, collector):
    port = collector.address[1]
    proc = subprocess.run(
        [PYTHON, "-m", "clacky_ipy", "collect", "--db", str(tmp_path / "x.db"), "--port", str(port)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "cannot listen" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists()  # the port is checked before the database is created


def test_collector_binds_loopback_by_default(tmp_path):
    with Collector(tmp_path / "d.db", port=0) as c:
        assert c.address[0] == "127.0.0.1" and c.url.startswith("http://127.0.0.1:")


def test_group_commit_answers_each_request_after_its_commit_on_both_engines(db_target):
    """16 concurrent keep-alive clients: rows of many requests share a transaction, and each
    201 means the row is readable from another connection to the database at that moment."""
    from clacky_ipy.store import open_store

    with Collector(db_target) as c:
        reader = open_store(db_target, create=False)
        lagging = []

        def client(k: int) -> None:
            with requests.Session() as s:
                for i in range(25):
                    assert s.post(c.url + TASK, json={"device_id": f"device-g{k}", "iterations": i}, timeout=10).ok
                    if reader.query("SELECT COUNT(*) FROM events WHERE device_id = ?", [f"device-g{k}"])[0][0] != i + 1:
                        lagging.append((k, i))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reader.close()
        assert c.store.count() == 400 and lagging == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_under_load_keeps_every_acknowledged_row(db_target, sig):
    """Clients keep posting while the collector is told to stop: it exits 0, and every request
    it answered 201 is in the database (the rest were refused or cut, never half-stored)."""
    from clacky_ipy.store import open_store

    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "clacky_ipy", "collect", "--db", db_target, "--port", str(port)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: list[str] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with requests.Session() as s:
            for i in range(10_000):
                if stop.is_set() and i % 50 == 0:
                    break
                device = f"device-s{k}-{i}"
                try:
                    if (
                        s.post(f"http://127.0.0.1:{port}{TASK}", json={"device_id": device}, timeout=5).status_code
                        == 201
                    ):
                        acked.append(device)
                except requests.RequestException:
                    return

    try:
        assert "collector on" in proc.stdout.readline()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        stop.set()
        for t in threads:
            t.join()
    finally:
        proc.kill()
    assert "Traceback" not in proc.stderr.read()
    store = open_store(db_target, create=False)
    try:
        stored = {row["device_id"] for row in store.rows()}
    finally:
        store.close()
    assert len(acked) > 50
    assert set(acked) <= stored
