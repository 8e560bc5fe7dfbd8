"""Delivery on a real network: servers that delay, drip, stall, reset or never end; failover
only when the server cannot have the event; concurrency; counters; a worker that survives;
finalization, exit order and forks in real subprocesses. All on 127.0.0.1 sockets."""

from __future__ import annotations

import ctypes
import json
import shutil
import ssl
import subprocess
import time

import netservers
import pytest
from conftest import CLIENT, PYTHON, load, subprocess_env

import clacky_ipy
from clacky_ipy.transport import Plan, Transport


@pytest.fixture
def servers():
    started = []

    def start(handler, tls=None):
        server = netservers.Server(handler, tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


_MADE: list[Transport] = []


def transport_to(*hosts, timeout=2.0, max_connections=4, on_outcome=None):
    """A Transport of its own whose events are small dicts sent to `hosts` in order."""
    transport = Transport(
        lambda event, fields: Plan(fields, tuple(hosts), timeout, "test"), lambda: 1.0, on_outcome=on_outcome
    )
    transport.max_connections = max_connections
    _MADE.append(transport)
    return transport


@pytest.fixture(autouse=True)
def stop_own_transports():
    """Each test's own transports stop their threads afterwards (other tests count threads)."""
    yield
    while _MADE:
        _MADE.pop().reset()


def counted(transport):
    return transport.sent + transport.failed + transport.dropped + transport.queued + transport.in_flight


# -- one deadline per request, whatever the server does -----------------------------------------
def test_a_dripping_server_is_cut_off_at_the_deadline(servers):
    drip = servers(netservers.dripping)
    transport = transport_to(drip.url, timeout=1.0)
    transport.submit("task", {"n": 1})
    assert transport.flush(10), "the worker is still reading a dripping answer"
    assert transport.failed == 1 and transport.sent == 0


def test_an_endless_body_is_never_read_whole(servers):
    server = servers(netservers.endless)
    transport = transport_to(server.url, timeout=2.0)
    transport.submit("task", {"n": 1})
    assert transport.flush(10), "the worker is still reading an endless body"
    assert transport.sent == 1, transport.last_error  # the status line decides
    time.sleep(0.2)
    sent = server.bytes_sent
    time.sleep(0.3)
    assert server.bytes_sent == sent  # the connection was closed: nothing more is read


# -- failover only when the server cannot have the event -------------------------------------------
@pytest.mark.parametrize("handler", [netservers.headers_then_stall, netservers.reset_after_request])
def test_a_stall_or_reset_after_the_request_is_never_resent(servers, handler):
    primary = servers(handler)
    fallback = servers(netservers.delaying(0))
    transport = transport_to(primary.url, fallback.url, timeout=0.5)
    transport.submit("task", {"n": 1})
    assert transport.flush(10)
    assert len(primary.bodies) == 1
    assert fallback.bodies == []  # the primary may have stored it: never twice
    assert transport.failed == 1 and transport.sent == 0


@pytest.mark.parametrize(
    ("handler", "name"),
    [
        (netservers.headers_then_stall, "ReadTimeout"),
        (netservers.dripping, "ReadTimeout"),
        (netservers.reset_after_request, "ConnectionError"),
    ],
)
def test_failures_are_named_as_requests_names_them_while_headers_or_body_are_read(servers, handler, name):
    """`Last error` and the log's outcome use one vocabulary (requests' names, as the README lists),
    whether the headers or the body stalled or broke: urllib3's ReadTimeoutError is ReadTimeout."""
    outcomes = []
    transport = transport_to(servers(handler).url, timeout=0.5, on_outcome=lambda *entry: outcomes.append(entry[-1]))
    transport.submit("task", {"n": 1})
    assert transport.flush(10)
    assert (transport.failed, transport.last_error, outcomes) == (1, name, [f"failed {name}"])


def test_dns_failure_and_connect_timeout_fail_over(servers):
    fallback = servers(netservers.delaying(0))
    url, listener, fillers = netservers.unreachable_url()
    try:
        transport = transport_to("http://no-such-host.invalid", url, fallback.url, timeout=0.5)
        transport.submit("task", {"n": 1})
        assert transport.flush(10)
    finally:
        for sock in [listener, *fillers]:
            sock.close()
    assert [json.loads(b) for b in fallback.bodies] == [{"n": 1}]
    assert transport.sent == 1 and transport.failed == 0


@pytest.fixture
def self_signed(tmp_path):
    """A TLS server context with a certificate no one trusts (certifi's CAs do not know it)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_a_tls_failure_fails_over_and_the_certificate_is_verified(servers, self_signed):
    untrusted = servers(netservers.delaying(0), tls=self_signed)
    fallback = servers(netservers.delaying(0))
    transport = transport_to(untrusted.url, fallback.url)
    transport.submit("task", {"n": 1})
    assert transport.flush(10)
    assert untrusted.bodies == []  # the handshake failed: nothing was written
    assert [json.loads(b) for b in fallback.bodies] == [{"n": 1}]


# -- bounded concurrency ----------------------------------------------------------------------------
@pytest.mark.parametrize(("max_connections", "events"), [(3, 18), (1, 6)])
def test_a_backlog_is_sent_on_at_most_max_connections(servers, max_connections, events):
    server = servers(netservers.delaying(0.1))
    transport = transport_to(server.url, max_connections=max_connections)
    for i in range(events):
        transport.submit("task", {"n": i})
    assert transport.flush(20)
    assert sorted(json.loads(b)["n"] for b in server.bodies) == list(range(events))
    assert min(2, max_connections) <= server.most_active <= max_connections
    deadline = time.monotonic() + 5
    while transport.threads > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert transport.threads == 1  # the extra senders went away with the backlog


# -- deferral: the worker waits while events keep coming -----------------------------------------
def test_the_worker_waits_while_events_keep_coming_then_sends_unasked(servers):
    server = servers(netservers.delaying(0))
    transport = transport_to(server.url)
    transport.idle_s, transport.max_wait_s = 0.5, 30.0  # generous: a slow machine cannot fake it
    for i in range(5):
        transport.submit("task", {"n": i})
        time.sleep(0.05)  # cells back to back: never idle for idle_s
    assert server.bodies == []  # nothing while the user is busy
    deadline = time.monotonic() + 10
    while len(server.bodies) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)  # no flush: idle for idle_s is enough
    assert len(server.bodies) == 5


def test_a_full_batch_is_sent_without_waiting_for_idle(servers):
    server = servers(netservers.delaying(0))
    transport = transport_to(server.url)
    transport.idle_s, transport.max_wait_s, transport.batch = 30.0, 30.0, 10
    for i in range(10):
        transport.submit("task", {"n": i})
    deadline = time.monotonic() + 10
    while len(server.bodies) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(server.bodies) == 10


def test_the_oldest_event_waits_at_most_max_wait(servers):
    server = servers(netservers.delaying(0))
    transport = transport_to(server.url)
    transport.idle_s, transport.max_wait_s = 30.0, 0.3
    transport.submit("task", {"n": 1})
    deadline = time.monotonic() + 10
    while not server.bodies and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(server.bodies) == 1


def test_the_startup_event_goes_first_even_under_a_backlog(fresh_client, env, servers):
    slow = servers(netservers.delaying(0.05))
    env.setenv("CLACKY_LICENSE_SERVER", slow.url)
    clacky_ipy.startup()
    for i in range(20):
        clacky_ipy.task(iterations=i)
    assert clacky_ipy.flush(20)
    assert slow.most_active > 1  # several connections were used for the rest
    assert "python_version" in json.loads(slow.bodies[0])  # the startup event, alone before any other


def test_max_connections_follows_the_configuration(ip, servers):
    server = servers(netservers.delaying(0.05))
    load(ip, endpoint=server.url, max_connections=2)
    assert CLIENT.transport.max_connections == 2
    for i in range(12):
        clacky_ipy.task(iterations=i)
    assert clacky_ipy.flush(20)
    assert server.most_active == 2


# -- counters add up, in flight included ---------------------------------------------------------
def test_counters_add_up_while_events_are_in_flight(servers):
    slow = servers(netservers.delaying(0.5))
    transport = transport_to(slow.url, max_connections=2)
    transport.max_queue_size = 4
    for i in range(10):
        transport.submit("task", {"n": i})
    assert counted(transport) == 10
    assert not transport.flush(0.2)
    assert transport.in_flight >= 1 and counted(transport) == 10
    assert transport.flush(20)
    assert transport.in_flight == 0 and transport.queued == 0 and counted(transport) == 10
    assert transport.dropped >= 4 and transport.sent == len(slow.bodies)


def test_status_shows_in_flight(fresh_client, env, servers, capsys):
    slow = servers(netservers.delaying(0.5))
    env.setenv("CLACKY_LICENSE_SERVER", slow.url)
    clacky_ipy.task(model="m")
    clacky_ipy.flush(0.2)
    status = CLIENT.status()
    assert status["in_flight"] >= 1
    made = status["sent"] + status["failed"] + status["dropped"] + status["queued"] + status["in_flight"]
    assert made == 1
    from clacky_ipy.magics import status_text

    assert "in flight 1" in status_text(status)
    assert clacky_ipy.flush(10)


# -- the worker survives whatever a user's values do -----------------------------------------------
class ExitingStr(str):
    def __bool__(self):
        raise SystemExit("from a user's value")

    def __len__(self):
        raise SystemExit("from a user's value")


class InterruptingResult(dict):
    def get(self, *args):
        raise KeyboardInterrupt


def test_a_value_raising_system_exit_does_not_end_the_worker(fresh_client, env, receiver):
    env.setenv("CLACKY_LICENSE_SERVER", receiver.url)
    clacky_ipy.task(model=ExitingStr("boom"))
    clacky_ipy.task(InterruptingResult(model="x"))
    clacky_ipy.task(model="after")
    receiver.wait()
    assert [e.get("model") for e in receiver.events("task")][-1] == "after"
    status = CLIENT.status()
    assert status["sent"] + status["failed"] + status["dropped"] == 3


def test_a_dead_worker_is_replaced_by_the_next_event(fresh_client, env, receiver):
    env.setenv("CLACKY_LICENSE_SERVER", receiver.url)
    clacky_ipy.task(model="first")
    receiver.wait()
    worker = CLIENT.transport._thread
    assert worker is not None
    # what an unforeseen BaseException inside the worker would do: end its thread
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(SystemExit))
    CLIENT.transport._bell.set()
    worker.join(5)
    assert not worker.is_alive()
    clacky_ipy.task(model="second")
    receiver.wait()
    assert [e.get("model") for e in receiver.events("task")] == ["first", "second"]


# -- finalization and exit order, in real interpreters -------------------------------------------
FIRST_EVENT_AT_FINALIZATION = """
import clacky_ipy

def agent():
    with clacky_ipy.track(model="m"):
        yield 1
        yield 2

stream = agent()
next(stream)  # suspended inside track(): closed while the interpreter finalizes

class Agent:
    def __del__(self):
        clacky_ipy.task(model="del")

keep = Agent()
{extra}
print("done", flush=True)
"""


@pytest.mark.parametrize("extra", ["", "clacky_ipy.task(model='before'); clacky_ipy.flush(5)"])
def test_an_event_made_at_finalization_never_hangs(receiver, extra):
    env = subprocess_env(CLACKY_LICENSE_SERVER=receiver.url)
    code = FIRST_EVENT_AT_FINALIZATION.format(extra=extra)
    proc = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    assert proc.stderr == ""


ATEXIT_BEFORE_FIRST_EVENT = """
import atexit, clacky_ipy

def last_words():
    clacky_ipy.task(model="atexit")

atexit.register(last_words)  # registered before the first event
clacky_ipy.task(model="main")
"""


def test_an_atexit_handler_registered_before_the_first_event_is_delivered(receiver):
    env = subprocess_env(CLACKY_LICENSE_SERVER=receiver.url)
    proc = subprocess.run([PYTHON, "-c", ATEXIT_BEFORE_FIRST_EVENT], env=env, capture_output=True, timeout=20)
    assert proc.returncode == 0 and proc.stderr == b""
    assert sorted(e.get("model") for e in receiver.events("task")) == ["atexit", "main"]


EVENT_AFTER_THE_FINAL_FLUSH = """
import atexit, sys
atexit.register(lambda: print(clacky_ipy.task(model="too late"), clacky_ipy.client.CLIENT.status()["dropped"]))
import clacky_ipy  # its final flush runs before the handler registered before the import
clacky_ipy.task(model="main")
"""


def test_an_event_after_the_final_flush_is_dropped_and_counted(receiver):
    env = subprocess_env(CLACKY_LICENSE_SERVER=receiver.url)
    proc = subprocess.run([PYTHON, "-c", EVENT_AFTER_THE_FINAL_FLUSH], env=env, capture_output=True, timeout=20)
    assert proc.returncode == 0 and proc.stderr == b""
    assert proc.stdout.split() == [b"False", b"1"]
    assert [e.get("model") for e in receiver.events("task")] == ["main"]


# -- forks --------------------------------------------------------------------------------------
FORK_DURING_SLOW_BRAND_YML = """
import os, sys, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)
home = os.environ["CLACKY_HOME"]
brand = os.path.join(home, "brand.yml")
os.mkfifo(brand)
hold = os.open(brand, os.O_RDWR)  # a writer exists: the worker's read blocks until we write
import clacky_ipy
from clacky_ipy import identity
from clacky_ipy.client import CLIENT
read_brand_file = identity.read_brand_file
def slow_read(home):  # brand.yml itself is never read unless regular: a slow file system, as a FIFO
    if os.path.exists(brand) and not os.path.isfile(brand):
        with open(brand) as fh:
            fh.readline()
    return read_brand_file(home)
identity.read_brand_file = slow_read
clacky_ipy.task(model="parent")
deadline = time.monotonic() + 10
while not CLIENT._context_lock.locked() and time.monotonic() < deadline:
    time.sleep(0.01)
assert CLIENT._context_lock.locked(), "the worker never started reading brand.yml"
start = time.monotonic()
pid = os.fork()
if pid == 0:
    os.close(hold)
    os.unlink(brand)
    with open(brand, "w") as fh:
        fh.write("product_name: P\\npackage_name: child-brand\\n")
    clacky_ipy.task(model="child")
    ok = clacky_ipy.flush(5)
    if not ok:
        print("child not flushed", file=sys.stderr, flush=True)
    os._exit(0 if ok else 3)
forked_in = time.monotonic() - start
os.write(hold, b"{}\\n")
os.close(hold)
_, status = os.waitpid(pid, 0)
clacky_ipy.flush(5)
print(forked_in, flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_fork_during_a_slow_brand_yml_read_delivers_in_the_child(receiver, tmp_path):
    env = subprocess_env(CLACKY_LICENSE_SERVER=receiver.url, CLACKY_HOME=str(tmp_path))
    proc = subprocess.run([PYTHON, "-c", FORK_DURING_SLOW_BRAND_YML], env=env, capture_output=True, timeout=40)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.split()[-1]) < 1.5  # the fork did not wait for the read
    models = sorted(e.get("model") for e in receiver.events("task"))
    assert models == ["child", "parent"]
