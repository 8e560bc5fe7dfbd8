"""Hostile HTTP against a real `clacky-ipy collect` process over real sockets.

Each request gets a 4xx (or the connection is cut), nothing is stored, the server goes
on serving, and its stderr never shows a traceback or a peer's address.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import threading
import time

import pytest
import requests
from conftest import PYTHON, free_port, subprocess_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clacky_ipy import payload
from clacky_ipy.collector import BadBody, parse

TASK = "/api/v1/telemetry/task"
STARTUP = "/api/v1/telemetry/startup"


class Server:
    """A `python -m clacky_ipy collect` child; `count()` reads its database."""

    def __init__(self, db, *extra: str) -> None:
        self.db, self.port = db, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "clacky_ipy", "collect", "--db", str(db), "--port", str(self.port), *extra],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert "collector on" in line, line + self.proc.stderr.read()

    def count(self) -> int:
        with sqlite3.connect(self.db) as con:
            return con.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def post(self, body, path=TASK):
        return requests.post(self.url + path, data=body, timeout=10)

    def raw(self, data: bytes, wait: float = 5.0) -> bytes:
        """Send `data` on a fresh connection; everything the server answers until it closes or pauses."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=wait) as sock:
            sock.sendall(data)
            return read_all(sock, wait)

    def stop(self) -> tuple[str, str]:
        self.proc.terminate()
        out, err = self.proc.communicate(timeout=30)
        return out, err


def read_all(sock: socket.socket, wait: float) -> bytes:
    got = b""
    sock.settimeout(0.5)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            if got:
                break
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return got


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("hostile") / "events.db", "--verbose")
    yield s
    _, err = s.stop()
    assert s.proc.returncode == 0
    assert "Traceback" not in err and "127.0.0.1" not in err


def still_serves(server) -> None:
    before = server.count()
    assert server.post(json.dumps({"device_id": "legit-device"})).status_code == 201
    assert server.count() == before + 1


HOSTILE_BODIES = {
    "nested 8000 deep": b'{"a": ' + b"[" * 8000 + b"]" * 8000 + b"}",
    "nested objects 3000 deep": b'{"a":' + b'{"":' * 3000 + b"1" + b"}" * 3000 + b"}",
    "2**64": b'{"device_id": "device-00", "prompt_tokens": 18446744073709551616}',
    "-2**64": b'{"device_id": "device-00", "prompt_tokens": -18446744073709551616}',
    "10**400": b'{"device_id": "device-00", "completion_tokens": 1' + b"0" * 400 + b"}",
    "10**5000 in an unknown key": b'{"device_id": "device-00", "history": 1' + b"0" * 5000 + b"}",
    "1e400": b'{"device_id": "device-00", "cost_usd": 1e400}',
    "NaN": b'{"device_id": "device-00", "cost_usd": NaN}',
    "-Infinity": b'{"device_id": "device-00", "cost_usd": -Infinity}',
    "lone surrogate": b'{"device_id": "\\ud800"}',
    "lone low surrogate in a key": b'{"\\udc00": 1, "device_id": "device-00"}',
    "raw surrogate bytes": b'{"device_id": "\xed\xa0\x80"}',
    "not UTF-8": b'{"device_id": "\xff"}',
    "UTF-16": '{"device_id": "device-00"}'.encode("utf-16"),
    "an array": b"[1, 2]",
    "empty": b"",
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_hostile_bodies_get_a_400_and_nothing_is_stored(server, name):
    before = server.count()
    response = server.post(HOSTILE_BODIES[name])
    assert response.status_code == 400, response.text
    assert response.json()["status"] == 400 and response.json()["message"]
    assert server.count() == before
    still_serves(server)


def test_a_surrogate_pair_is_text_and_is_stored(server):
    before = server.count()
    assert server.post(b'{"device_id": "device-00", "model": "\\ud83d\\ude00"}').status_code == 201
    assert server.count() == before + 1


def test_a_non_ascii_content_length_is_refused(server):
    before = server.count()
    answer = server.raw(f"POST {TASK} HTTP/1.1\r\nHost: x\r\nContent-Length: ²\r\n\r\n{{}}".encode())
    assert answer.startswith(b"HTTP/1.1 400")
    answer = server.raw(f"POST {TASK} HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\n{{}}".encode())
    assert answer.startswith(b"HTTP/1.1 4")
    assert server.count() == before
    still_serves(server)


def smuggled_post(device: str) -> bytes:
    inner = json.dumps({"device_id": device}).encode()
    return f"POST {TASK} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(inner)}\r\n\r\n".encode() + inner


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", TASK, b"405"), ("POST", "/nowhere", b"404"), ("PUT", STARTUP, b"405"), ("DELETE", "/", b"404")],
)
def test_a_body_sent_to_a_refused_request_is_never_the_next_request(server, method, path, status):
    before = server.count()
    inner = smuggled_post("smuggled")
    outer = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(inner)}\r\n\r\n".encode() + inner
    answer = server.raw(outer, wait=2)
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert answer.count(b"HTTP/1.1 ") == 1  # one request, one answer
    assert server.count() == before


def test_a_body_too_large_closes_the_connection_unread(server):
    before = server.count()
    inner = smuggled_post("smuggled")
    outer = f"POST {TASK} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode() + inner
    answer = server.raw(outer, wait=2)
    assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower()
    assert answer.count(b"HTTP/1.1 ") == 1
    assert server.count() == before


def test_chunked_bodies_are_refused_and_not_parsed_as_requests(server):
    before = server.count()
    inner = smuggled_post("smuggled")
    chunk = f"{len(inner):x}\r\n".encode() + inner + b"\r\n0\r\n\r\n"
    answer = server.raw(f"POST {TASK} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + chunk, 2)
    assert answer.startswith(b"HTTP/1.1 411") and answer.count(b"HTTP/1.1 ") == 1
    assert server.count() == before


def test_endless_headers_are_cut_off_and_hold_no_memory(server):
    """uvicorn's httptools protocol alone keeps every header: 3 GB in 5 s from one client."""
    rss = proc_status(server.proc.pid)["VmRSS"]
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"POST {TASK} HTTP/1.1\r\nHost: x\r\n".encode())
        try:
            while sent < 200 * 2**20:
                sock.sendall(b"X-Pad: " + b"a" * 8000 + b"\r\n")
                sent += 8009
        except OSError:  # closed by the server
            pass
    assert sent < 200 * 2**20
    assert proc_status(server.proc.pid)["VmRSS"] - rss < 32 * 1024  # kB
    answer = server.raw(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 4")
    still_serves(server)


def test_pipelined_requests_are_each_answered_once(server):
    before = server.count()
    answer = server.raw(smuggled_post("device-a") + smuggled_post("device-b"), wait=2)
    assert answer.count(b"HTTP/1.1 201") == 2
    assert server.count() == before + 2


def test_a_burst_of_50_clients_is_served_without_resets(server):
    before = server.count()
    results: list[object] = []
    barrier = threading.Barrier(50)

    def client(i: int) -> None:
        barrier.wait()
        try:
            results.append(server.post(json.dumps({"device_id": f"burst-{i:04}"})).status_code)
        except requests.RequestException as exc:
            results.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [201] * 50
    assert server.count() == before + 50


def test_verbose_log_escapes_control_characters_and_never_names_the_peer(tmp_path):
    s = Server(tmp_path / "v.db", "--verbose")
    try:
        assert s.post(b"{}", path=TASK).status_code == 201
        s.raw(b"GET /%1b[31mred%0aforged%07 HTTP/1.1\r\nHost: x\r\n\r\n", wait=1)
        s.raw(b"POST \x1b[2J HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", wait=1)
        time.sleep(0.3)
    finally:
        out, err = s.stop()
    logged = out + err
    assert "\x1b" not in logged and "\x07" not in logged
    assert "\\x1b[31mred\\x0aforged\\x07" in out
    assert "forged" not in "".join(line for line in out.splitlines() if not line.startswith("20"))
    assert f"{TASK} 201" in out
    assert "127.0.0.1" not in logged  # the client's address is never logged (the first line was read)
    assert "Traceback" not in err


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in ("Threads", "VmRSS"):
                fields[name] = int(value.split()[0])
    fields["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return fields


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc (Linux)")
def test_2000_idle_connections_are_bounded_and_a_legitimate_client_is_served(tmp_path):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if min(soft, hard) < 2200:
        pytest.skip(f"needs 2,200 open files (limit {soft})")
    s = Server(tmp_path / "idle.db", "--max-connections", "500")
    idle: list[socket.socket] = []
    try:
        assert s.post(b"{}").status_code == 201
        base = proc_status(s.proc.pid)
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", s.port), timeout=5))
        time.sleep(1.0)
        start = time.monotonic()
        assert s.post(json.dumps({"device_id": "legit-device"})).status_code == 201
        assert time.monotonic() - start < 5  # served now, not after the idle ones time out
        held = proc_status(s.proc.pid)
        assert held["Threads"] <= base["Threads"] + 2  # no thread per connection
        assert held["fds"] <= base["fds"] + 500 + 5  # the cap: the longest idle ones were closed
        assert held["VmRSS"] - base["VmRSS"] < 64 * 1024  # kB
        assert s.count() == 2
    finally:
        for sock in idle:
            sock.close()
        _, err = s.stop()
    assert s.proc.returncode == 0 and "Traceback" not in err


def test_a_client_that_stalls_is_cut_off_after_the_read_timeout(tmp_path):
    s = Server(tmp_path / "slow.db", "--read-timeout", "1")
    try:
        silent = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        dripping = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        try:
            dripping.sendall(f"POST {TASK} HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{{".encode())
            start = time.monotonic()
            assert read_all(silent, 8) == b""  # closed by the server, no answer
            assert read_all(dripping, 8) == b""
            assert time.monotonic() - start < 6
        finally:
            silent.close()
            dripping.close()
        assert s.count() == 0
        still_serves(s)
    finally:
        _, err = s.stop()
    assert "Traceback" not in err


def test_the_asgi_app_under_uvicorn_workers(tmp_path):
    """`uvicorn clacky_ipy.collector:app` with the database from $CLACKY_COLLECTOR_DB, two worker
    processes, the connection limits of `Protocol`; concurrent clients lose nothing."""
    port, db = free_port(), tmp_path / "workers.db"
    cmd = [PYTHON, "-m", "uvicorn", "clacky_ipy.collector:app", "--port", str(port), "--workers", "2"]
    cmd += ["--http", "clacky_ipy.collector:Protocol", "--no-access-log"]
    proc = subprocess.Popen(
        cmd, env=subprocess_env(CLACKY_COLLECTOR_DB=str(db)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(url + TASK, timeout=2).status_code == 405:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)

        def client(i: int) -> None:
            with requests.Session() as session:
                for n in range(25):
                    assert session.post(url + TASK, json={"device_id": f"device-w{i}", "iterations": n}, timeout=10).ok

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
EVENT_LIKE = st.dictionaries(
    st.sampled_from([*payload.KEYS["task"], "history", "\ud800"]), JSON, max_size=8
)  # the vocabulary's keys with any value, and a few others
BODIES = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
    EVENT_LIKE.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
    EVENT_LIKE.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
)


@settings(max_examples=400, deadline=None)
@given(body=BODIES)
def test_parse_refuses_with_a_reason_or_gives_a_storable_event(body):
    try:
        value = parse(body)
    except BadBody as exc:
        assert str(exc)
        return
    assert isinstance(value, dict)
    fields = payload.clean("task", value)
    json.dumps(fields, allow_nan=False).encode("utf-8")  # finite, valid text
    assert all(payload.INT64_MIN <= v <= payload.INT64_MAX for v in fields.values() if isinstance(v, (int, float)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_any_body_over_a_real_socket_is_201_and_stored_or_4xx_and_not(server, body):
    before = server.count()
    status = server.post(body).status_code
    assert status in (201, 400)
    assert server.count() == before + (status == 201)
