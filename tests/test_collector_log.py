"""The collector's log, from a real `clacky-ipy collect` whose stderr (and stdout) nobody reads:
requests are never held up by it, an outage is a few lines, a flood of bad requests is none, and the
lines it had to drop are counted."""

from __future__ import annotations

import fcntl
import re
import subprocess
import threading
import time

import requests
from conftest import PYTHON, free_port, subprocess_env

from clacky_ipy.store import open_store

TASK = "/api/v1/telemetry/task"
DEADLINE = 5.0  # the clients' timeout: every request is answered within it
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Collect:
    """A `python -m clacky_ipy collect` child whose output pipes are read only once it has stopped."""

    def __init__(self, db: str, *extra: str, pipe_size: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "clacky_ipy", "collect", "--db", db, "--port", str(self.port), *extra],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if pipe_size:  # a stalled reader's pipe, full after a few lines (the smallest Linux allows)
            for pipe in (self.proc.stdout, self.proc.stderr):
                fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, pipe_size)
        line = self.proc.stdout.readline()
        assert "collector on" in line, line

    def read(self) -> None:
        """The reader comes back: from now on both pipes are drained."""
        self._read: dict[str, str] = {}

        def drain(name: str, pipe) -> None:
            self._read[name] = pipe.read()

        self._readers = [
            threading.Thread(target=drain, args=(name, pipe), daemon=True)
            for name, pipe in (("out", self.proc.stdout), ("err", self.proc.stderr))
        ]
        for t in self._readers:
            t.start()

    def stop(self, timeout: float = 15) -> tuple[int | None, str, str]:
        """SIGTERM; the exit code (None: not within `timeout`, though nobody reads), stdout, stderr."""
        self.proc.terminate()
        try:
            code: int | None = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        self.proc.kill()
        if not hasattr(self, "_readers"):
            self.read()
        for t in self._readers:
            t.join(10)
        return code, self._read.get("out", ""), self._read.get("err", "")


class Clients:
    """`n` threads posting events until `stop()`; each answer as (sent, answered, status), or an error."""

    def __init__(self, url: str, n: int = 4, pause: float = 0.02) -> None:
        self.url, self.pause = url, pause
        self.answers: list[tuple[float, float, int, str]] = []
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(n)]
        for t in self._threads:
            t.start()

    def _run(self, k: int) -> None:
        with requests.Session() as session:
            i = 0
            while not self._stop.is_set():
                device = f"device-c{k}-{i}"
                i += 1
                sent = time.monotonic()
                try:
                    got = session.post(self.url + TASK, json={"device_id": device}, timeout=DEADLINE)
                except requests.RequestException as exc:
                    self.failures.append((sent, type(exc).__name__))
                    continue
                self.answers.append((sent, time.monotonic(), got.status_code, device))
                time.sleep(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(DEADLINE + 5)


def test_a_postgres_outage_under_load_is_a_few_lines_and_never_stalls_the_collector(postgres_cluster):
    """PostgreSQL stopped for 10 s under 4 clients, stderr a pipe nobody reads: every request is
    answered within the clients' deadline (503 while it is down, 201 again within 2 s of its
    return), and the outage is a few lines of the log, not one per refused request."""
    import psycopg  # the fixture has skipped (or failed) without it

    admin = psycopg.connect(**{**postgres_cluster.params, "dbname": "postgres"}, autocommit=True)
    admin.execute("CREATE DATABASE clacky")
    admin.close()
    url = postgres_cluster.url("clacky")
    collect = Collect(url)
    clients = Clients(collect.url)
    try:
        time.sleep(1.0)
        down = time.monotonic()
        postgres_cluster.pause()
        time.sleep(10.0)
        postgres_cluster.resume()
        up = time.monotonic()
        time.sleep(3.0)
    finally:
        clients.stop()
        code, _, err = collect.stop()
    assert clients.failures == []  # each request answered, none waited past the deadline
    assert all(answered - sent < DEADLINE for sent, answered, _, _ in clients.answers)
    during = [status for sent, _, status, _ in clients.answers if down + 1 < sent < up - 1]
    assert len(during) > 100 and set(during) == {503}
    back = min(answered for sent, answered, status, _ in clients.answers if sent > up and status == 201)
    assert back - up < 2.0
    assert {status for sent, _, status, _ in clients.answers if sent > up + 2} == {201}
    assert code == 0
    lines = err.splitlines()
    assert len(lines) < 20, err[:3000]
    assert "Traceback" not in err
    assert any("unavailable" in line for line in lines) and any("back" in line for line in lines), err
    refused = sum(status == 503 for _, _, status, _ in clients.answers)
    counted = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) requests? (?:were )?refused", err)]
    assert counted and max(counted) <= refused  # the counts say how many were refused
    store = open_store(url, create=False)
    try:
        stored = {row["device_id"] for row in store.rows()}
    finally:
        store.close()
    assert {device for _, _, status, device in clients.answers if status == 201} <= stored


def test_a_log_nobody_reads_never_holds_up_a_request_and_dropped_lines_are_counted(tmp_path):
    """--verbose logs a line per request; with its stdout and stderr full (nobody reads them),
    3,000 requests are still answered at once, and the lines it could not keep are counted."""
    collect = Collect(str(tmp_path / "events.db"), "--verbose", pipe_size=4096)
    statuses: list[int] = []

    def client(k: int) -> None:
        with requests.Session() as session:
            for i in range(750):
                try:
                    got = session.post(collect.url + TASK, json={"device_id": f"device-v{k}-{i}"}, timeout=DEADLINE)
                    statuses.append(got.status_code)
                except requests.RequestException:
                    statuses.append(-1)
                    break  # held up: the rest would wait as long

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        collect.read()
        time.sleep(1.0)  # the lines still queued are written, and the count of those dropped
    finally:
        code, out, err = collect.stop()
    assert statuses == [201] * 3000
    assert code == 0
    logged = sum(line.endswith(f"POST {TASK} 201") for line in out.splitlines())
    dropped = sum(int(n.replace(",", "")) for n in re.findall(r"([\d,]+) log lines? dropped", err))
    assert dropped > 0, err
    assert logged + dropped == 3000
    assert "Traceback" not in err


def test_a_flood_of_bad_requests_writes_nothing_at_the_default_level(tmp_path):
    """Refusals are the client's business: per request only with --verbose."""
    collect = Collect(str(tmp_path / "events.db"))
    try:
        with requests.Session() as session:
            for i in range(300):
                assert session.post(collect.url + TASK, data=b"{not json", timeout=DEADLINE).status_code == 400
                assert session.get(collect.url + f"/scan/{i}", timeout=DEADLINE).status_code == 404
                assert session.post(collect.url + TASK, data=b"x" * 17000, timeout=DEADLINE).status_code == 413
    finally:
        code, out, err = collect.stop()
    assert code == 0
    assert err == "" and out.splitlines() == ["collector stopped"]


def test_a_repeated_message_from_any_library_is_one_line_then_a_count(tmp_path):
    """The same summariser for every record the process logs (uvicorn's, asyncio's, a driver's):
    5,000 identical errors from each of two loggers, with uvicorn's warnings hidden: four lines."""
    script = (
        "import logging\n"
        "from clacky_ipy import collector_log\n"
        "log = collector_log.configure(verbose=False)\n"
        "for i in range(5000):\n"
        "    logging.getLogger('uvicorn.error').error('Exception in ASGI application %d', i)\n"
        "    logging.getLogger('psycopg').warning('error ignored in rollback on %s', 'conn')\n"
        "    logging.getLogger('uvicorn.error').warning('Invalid HTTP request received.')\n"
        "log.close('done')\n"
    )
    proc = subprocess.run([PYTHON, "-c", script], env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    lines = [re.sub(r"in the last [\d.]+ s", "in the last T s", line) for line in proc.stderr.splitlines()]
    assert lines == [
        "clacky-ipy collect: Exception in ASGI application 0",
        "clacky-ipy collect: error ignored in rollback on conn",
        "clacky-ipy collect: Exception in ASGI application 4999 (and 4,999 more like it in the last T s)",
        "clacky-ipy collect: error ignored in rollback on conn (and 4,999 more like it in the last T s)",
    ]


def test_it_stops_at_once_though_nobody_ever_reads_its_output(tmp_path):
    """SIGTERM with stdout and stderr full and never read: exit 0 within a few seconds, every
    acknowledged event stored (the log's thread may still be stuck in a write: it is not waited on)."""
    db = tmp_path / "events.db"
    collect = Collect(str(db), "--verbose", pipe_size=4096)
    with requests.Session() as session:
        acked = sum(
            session.post(collect.url + TASK, json={"device_id": f"device-t{i}"}, timeout=DEADLINE).status_code == 201
            for i in range(300)
        )
    collect.proc.terminate()
    try:
        code = collect.proc.wait(timeout=10)
    finally:
        collect.proc.kill()
    assert (code, acked) == (0, 300)
    store = open_store(str(db), create=False)
    try:
        assert store.count() == 300
    finally:
        store.close()
