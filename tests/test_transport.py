"""Delivery over real sockets: HTTP errors, 429, failover, bounds, threads, fork, exit."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import warnings

import pytest
from conftest import CLIENT, PYTHON, load, run, subprocess_env
from pytest_httpserver import HTTPServer

import clacky_ipy


def workers():
    return [t for t in threading.enumerate() if t.name == "clacky-telemetry" and t.is_alive()]


@pytest.fixture
def second_receiver():
    server = HTTPServer(host="127.0.0.1", port=0)
    server.expect_request("/api/v1/telemetry/task", method="POST").respond_with_data("", status=201)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


def test_http_500_is_counted_and_not_retried(ip, receiver):
    load(ip, endpoint=receiver.url, track_cells=True)
    receiver.wait()
    receiver.respond(500)
    receiver.server.clear_log()
    run(ip, "x = 1")
    receiver.wait()
    assert len(receiver.requests) == 1  # no retry
    assert CLIENT.transport.failed == 1
    receiver.respond(201)
    run(ip, "y = 2")
    receiver.wait()
    assert len(receiver.requests) == 2 and CLIENT.transport.sent == 2  # no pause after a 500


def test_http_error_never_fails_over(ip, receiver, second_receiver):
    load(ip, endpoint=receiver.url, fallback_endpoints=[second_receiver.url_for("").rstrip("/")])
    receiver.respond(503)
    clacky_ipy.task(model="m")
    receiver.wait()
    assert second_receiver.log == []


def test_429_pauses_sending_for_retry_after(ip, receiver, capsys):
    load(ip, endpoint=receiver.url, track_cells=True, max_connections=1)  # else the others may be in flight
    receiver.wait()
    receiver.respond(429, {"Retry-After": "120"})
    receiver.server.clear_log()
    for _ in range(5):
        run(ip, "x = 1")
    receiver.wait()
    assert len(receiver.requests) == 1  # then silence, instead of hammering the server
    assert CLIENT.transport.failed == 1 and CLIENT.transport.dropped == 4
    assert 100 < CLIENT.transport.paused_until - time.monotonic() <= 120
    capsys.readouterr()
    run(ip, "%clacky_telemetry")
    out = capsys.readouterr().out
    assert "Paused:" in out and "HTTP 429" in out


def test_429_without_retry_after_pauses_60_seconds(ip, receiver):
    load(ip, endpoint=receiver.url)
    receiver.wait()
    receiver.respond(429)
    clacky_ipy.task()
    receiver.wait()
    assert 50 < CLIENT.transport.paused_until - time.monotonic() <= 60


def test_connection_refused_fails_over_in_order(ip, receiver, refused_url):
    load(ip, endpoint=refused_url, fallback_endpoints=[refused_url, receiver.url])
    clacky_ipy.task(model="m")
    receiver.wait()
    assert len(receiver.events("task")) == 1 and len(receiver.events("startup")) == 1
    assert CLIENT.transport.sent == 2 and CLIENT.transport.failed == 0


def test_all_hosts_refused_is_one_failure(ip, refused_url):
    load(ip, endpoint=refused_url)
    assert clacky_ipy.flush(5)
    assert CLIENT.transport.failed == 1


def test_read_timeout_is_never_resent(ip, blackhole, receiver):
    load(ip, endpoint=blackhole, fallback_endpoints=[receiver.url], timeout=0.3)
    assert clacky_ipy.flush(5)
    assert receiver.requests == []  # the black hole may have the event: no failover
    assert CLIENT.transport.failed == 1


def test_full_queue_drops_and_counts(ip, blackhole):
    load(ip, endpoint=blackhole, max_queue_size=5, timeout=5.0)
    accepted = [clacky_ipy.task() for _ in range(100)]
    assert accepted.count(True) <= 7
    assert CLIENT.transport.queued <= 5
    assert CLIENT.transport.dropped == accepted.count(False) >= 90


def test_many_threads_one_worker_nothing_lost(ip, receiver):
    load(ip, endpoint=receiver.url, max_queue_size=10_000)

    def send(n):
        for i in range(n):
            clacky_ipy.task(iterations=i)

    threads = [threading.Thread(target=send, args=(100,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(workers()) == 1 and CLIENT.transport.threads <= CLIENT.config.max_connections
    receiver.wait(30)
    assert len(receiver.events("task")) == 800
    assert CLIENT.transport.sent == 801 and CLIENT.transport.dropped == 0


def test_fork_child_gets_a_fresh_queue_and_thread(ip, receiver):
    load(ip, endpoint=receiver.url)
    for _ in range(20):
        clacky_ipy.task(model="parent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: what multiprocessing does
        pid = os.fork()
    if pid == 0:  # the child: must not deadlock, must not resend the parent's queue
        code = 1
        try:
            fresh = CLIENT.transport.queued == 0 and CLIENT.transport._thread is None
            clacky_ipy.task(model="child")
            code = 0 if fresh and clacky_ipy.flush(5) and CLIENT.transport.sent == 1 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    receiver.wait()
    models = [e.get("model") for e in receiver.events("task")]
    assert models.count("child") == 1 and models.count("parent") == 20


FORK_DURING_SETUP = """
import os, sys, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)
import clacky_ipy
clacky_ipy.task(model="parent")  # starts the worker, which begins importing requests
time.sleep(float(sys.argv[1]))
pid = os.fork()
if pid == 0:
    clacky_ipy.task(model="child")
    ok = clacky_ipy.flush(5) and clacky_ipy.client.CLIENT.transport.sent == 1
    if not ok:
        print(clacky_ipy.client.CLIENT.status(), file=sys.stderr, flush=True)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
clacky_ipy.flush(5)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.01, 0.03])
def test_fork_while_the_worker_sets_up(receiver, delay):
    """A fork in the middle of the worker's `import requests` must not leave the child a half-imported module."""
    env = subprocess_env(CLACKY_LICENSE_SERVER=receiver.url)
    proc = subprocess.run([PYTHON, "-c", FORK_DURING_SETUP, str(delay)], env=env, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    models = [e.get("model") for e in receiver.events("task")]
    assert sorted(models) == ["child", "parent"]


def _timed_exit(code, env, timeout=30):
    start = time.monotonic()
    proc = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


EXIT_CODE = """
import time, clacky_ipy
clacky_ipy.startup()
for _ in range(50):
    clacky_ipy.task(model="m")
print(time.monotonic(), flush=True)
"""


@pytest.mark.parametrize("endpoint", ["blackhole", "refused", "dns"])
def test_exit_is_bounded_whatever_the_endpoint(endpoint, blackhole, refused_url):
    url = {"blackhole": blackhole, "refused": refused_url, "dns": "http://no-such-host.invalid"}[endpoint]
    env = subprocess_env(CLACKY_LICENSE_SERVER=url)
    proc, _ = _timed_exit(EXIT_CODE, env)
    ended = time.monotonic()
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no traceback, no warning
    last_line_at = float(proc.stdout.split()[-1])
    assert ended - last_line_at < 1.0 + 2.0  # shutdown_timeout (1 s) + 2 s


def test_terminal_ipython_exit_is_bounded_with_a_black_hole(blackhole, tmp_path):
    env = subprocess_env(CLACKY_LICENSE_SERVER=blackhole, CLACKY_HOME=str(tmp_path))
    code = "x = 1\nimport time; print('T', time.monotonic(), flush=True)"
    proc = subprocess.run(
        [PYTHON, "-m", "IPython", "--ext", "clacky_ipy", "--ClackyTelemetry.track_cells=True",
         "--ClackyTelemetry.shutdown_timeout=0.5", "--no-banner", "--quick", "-c", code],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    ended = time.monotonic()
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    t = float(proc.stdout.split("T ")[-1].split()[0])
    assert ended - t < 0.5 + 2.0


# -- what the requests never carry or follow ----------------------------------------------------
@pytest.fixture
def api_to(fresh_client, env):
    """Point the Python API's default configuration at `url` (a fresh client and worker)."""

    def point(url):
        env.setenv("CLACKY_LICENSE_SERVER", url)

    return point


def test_redirects_are_not_followed(api_to, receiver):
    receiver.server.clear_all_handlers()
    receiver.server.expect_request("/api/v1/telemetry/task").respond_with_data(
        "", status=307, headers={"Location": receiver.url + "/elsewhere"}
    )
    api_to(receiver.url)
    clacky_ipy.task(model="m")
    receiver.wait()
    assert [r.path for r in receiver.requests] == ["/api/v1/telemetry/task"]
    assert CLIENT.transport.failed == 1 and CLIENT.transport.last_error == "HTTP 307"


def test_cookies_are_never_sent_back(api_to, receiver):
    receiver.server.clear_all_handlers()
    receiver.server.expect_request("/api/v1/telemetry/task").respond_with_data(
        "", status=201, headers={"Set-Cookie": "tracker=abc; Path=/"}
    )
    api_to(receiver.url)
    clacky_ipy.task(model="m")
    clacky_ipy.task(model="m")
    receiver.wait()
    assert len(receiver.requests) == 2
    assert all("Cookie" not in r.headers for r in receiver.requests)


def test_netrc_credentials_are_never_attached(api_to, receiver, env, tmp_path):
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login user password hunter2\n")
    (tmp_path / ".netrc").chmod(0o600)
    env.setenv("HOME", str(tmp_path))
    env.setenv("NETRC", str(tmp_path / ".netrc"))
    api_to(receiver.url)
    clacky_ipy.task(model="m")
    receiver.wait()
    (request,) = receiver.requests
    assert "Authorization" not in request.headers


def test_http_proxy_is_honoured(api_to, receiver, env):
    """The worker goes through $HTTP_PROXY: the proxy (here the local server) gets the absolute URL."""
    env.setenv("HTTP_PROXY", receiver.url)
    env.setenv("NO_PROXY", "")
    api_to("http://telemetry.invalid")  # never resolved: only the proxy is contacted
    clacky_ipy.task(model="m")
    receiver.wait()
    (request,) = receiver.requests
    assert request.host == "telemetry.invalid" and request.path == "/api/v1/telemetry/task"


# -- every event's outcome is reported once ------------------------------------------------------
def _outcome_transport(hosts, off=lambda: False):
    from clacky_ipy.transport import Plan, Transport

    seen = []

    def planner(event, fields):
        return None if off() else Plan({"event": event, **fields}, hosts(), 2.0, "test")

    transport = Transport(planner, lambda: 1.0, on_outcome=lambda *args: seen.append(args))
    return transport, seen


def test_on_outcome_reports_sent_failed_and_dropped(receiver, refused_url, blackhole):
    url = [receiver.url]
    off = [False]
    transport, seen = _outcome_transport(lambda: tuple(url), lambda: off[0])
    transport.submit("task", {"n": 1})
    assert transport.flush(5)
    receiver.respond(500)
    transport.submit("task", {"n": 2})
    assert transport.flush(5)
    url[:] = [refused_url]
    transport.submit("startup", {"n": 3})
    assert transport.flush(5)
    off[0] = True
    transport.submit("task", {"n": 4})
    assert transport.flush(5)
    bodies = [request.get_data() for request in receiver.requests]
    assert seen == [
        ("task", "/api/v1/telemetry/task", bodies[0], "sent 201"),
        ("task", "/api/v1/telemetry/task", bodies[1], "failed HTTP 500"),
        ("startup", "/api/v1/telemetry/startup", b'{"event":"startup","n":3}', "failed ConnectionError"),
        ("task", "/api/v1/telemetry/task", None, "dropped: opted out"),
    ]
    assert bodies[0] == b'{"event":"task","n":1}'


def test_on_outcome_reports_full_queue_and_discard(blackhole):
    transport, seen = _outcome_transport(lambda: (blackhole,))
    transport.max_queue_size = 2
    for i in range(5):
        transport.submit("task", {"n": i})  # the first is taken by the worker, stuck on the black hole
    assert ("task", "/api/v1/telemetry/task", None, "dropped: queue full") in seen
    transport.discard()
    assert [o for *_, o in seen].count("dropped: opted out") >= 1


def test_on_outcome_reports_the_pause_after_a_429(receiver):
    transport, seen = _outcome_transport(lambda: (receiver.url,))
    receiver.respond(429, {"Retry-After": "100"})
    transport.submit("task", {"n": 1})
    transport.submit("task", {"n": 2})
    assert transport.flush(5)
    assert [o for *_, o in seen] == ["failed HTTP 429", "dropped: paused (429)"]


def test_an_outcome_callback_that_raises_changes_nothing(receiver):
    from clacky_ipy.transport import Plan, Transport

    def boom(*args):
        raise RuntimeError("listener bug")

    transport = Transport(lambda e, f: Plan({}, (receiver.url,), 2.0, "t"), lambda: 1.0, on_outcome=boom)
    transport.submit("task", {})
    assert transport.flush(5)
    assert transport.sent == 1 and transport.failed == 0
