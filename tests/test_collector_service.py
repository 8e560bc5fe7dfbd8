"""The collector as a public service, over real sockets: probes, /metrics, credentials, rate
limits and the strict vocabulary (a device id's shape, closed sets of values)."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import tracemalloc

import pytest
import requests
from conftest import PYTHON, free_port, load, subprocess_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import clacky_ipy
from clacky_ipy import payload
from clacky_ipy.client import CLIENT
from clacky_ipy.collector import Collector
from clacky_ipy.guard import Credentials, Guard, RateLimiter, hash_password

TASK = "/api/v1/telemetry/task"
STARTUP = "/api/v1/telemetry/startup"
DEVICE = "a" * 64


def post(url, path, body, **kw):
    return requests.post(url + path, data=json.dumps(body), timeout=10, **kw)


def metrics(url) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, parsed with prometheus_client's own parser."""
    response = requests.get(url + "/metrics", timeout=5)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.fixture
def collector(tmp_path):
    with Collector(tmp_path / "events.db") as c:
        yield c


# -- probes --------------------------------------------------------------------------------------
def test_healthz_and_readyz_answer_and_are_not_counted_or_stored(collector):
    for path in ("/healthz", "/readyz"):
        response = requests.get(collector.url + path, timeout=5)
        assert response.status_code == 200, path
        assert requests.head(collector.url + path, timeout=5).status_code == 200
    assert requests.post(collector.url + "/healthz", timeout=5).status_code == 405
    assert collector.store.count() == 0
    got = metrics(collector.url)
    assert sum(v for (name, _), v in got.items() if name == "clacky_collector_requests_refused_total") == 0


def test_readyz_says_503_while_postgresql_is_down_and_nothing_acknowledged_is_lost(tmp_path):
    from pgcluster import Cluster, server_binaries

    from clacky_ipy.store import open_store

    bindir = server_binaries()
    if bindir is None:
        from pgserver import _unavailable

        _unavailable("no PostgreSQL server binaries")
    with Cluster(bindir) as cluster:
        url = cluster.url()
        with Collector(url) as c:
            acked = 0
            assert requests.get(c.url + "/readyz", timeout=5).status_code == 200
            for i in range(5):
                acked += post(c.url, TASK, {"device_id": DEVICE, "iterations": i}).status_code == 201
            cluster._run(f"{bindir}/pg_ctl", "-D", cluster.data, "-m", "fast", "-w", "stop")
            t0 = time.monotonic()
            down = requests.get(c.url + "/readyz", timeout=5)
            assert down.status_code == 503 and time.monotonic() - t0 < 3
            assert "\n" not in down.text.strip() and "store" in down.text
            assert requests.get(c.url + "/healthz", timeout=5).status_code == 200  # the process still serves
            refused = post(c.url, TASK, {"device_id": DEVICE})
            assert refused.status_code == 503
            options = [f"-k {cluster.base}", "-c listen_addresses=''", "-p 5432", "-c fsync=off"]
            cluster._run(
                f"{bindir}/pg_ctl", "-D", cluster.data, "-l", f"{cluster.base}/server.log", "-w",
                "-o", " ".join(options), "start",
            )  # fmt: skip
            deadline = time.monotonic() + 20
            while requests.get(c.url + "/readyz", timeout=5).status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            acked += post(c.url, TASK, {"device_id": DEVICE, "iterations": 9}).status_code == 201
        store = open_store(url, create=False)
        try:
            assert store.count() == acked == 6
        finally:
            store.close()


# -- metrics -------------------------------------------------------------------------------------
def test_metrics_count_what_was_stored_refused_and_dropped(collector):
    for _ in range(3):
        assert post(collector.url, TASK, {"device_id": DEVICE, "status": "success"}).status_code == 201
    assert post(collector.url, STARTUP, {"device_id": DEVICE, "launch_source": "bogus"}).status_code == 201
    assert post(collector.url, TASK, {"device_id": DEVICE, "status": "bogus", "history": 1}).status_code == 201
    assert requests.post(collector.url + TASK, data=b"nope", timeout=5).status_code == 400
    assert requests.get(collector.url + TASK, timeout=5).status_code == 405
    assert requests.post(collector.url + "/nowhere", timeout=5).status_code == 404
    got = metrics(collector.url)
    assert got[("clacky_collector_events_stored_total", (("kind", "task"),))] == 4
    assert got[("clacky_collector_events_stored_total", (("kind", "startup"),))] == 1
    refused = {
        labels[0][1]: v for (name, labels), v in got.items() if name == "clacky_collector_requests_refused_total"
    }
    assert refused["400"] == 1 and refused["405"] == 1 and refused["404"] == 1 and refused["401"] == 0
    dropped = "clacky_collector_keys_dropped_total"
    assert got[(dropped, (("key", "status"), ("reason", "not_in_choices")))] == 1
    assert got[(dropped, (("key", "launch_source"), ("reason", "not_in_choices")))] == 1
    assert got[(dropped, (("key", ""), ("reason", "unknown_key")))] == 1
    assert got[("clacky_collector_commit_batch_size_count", ())] >= 1
    assert got[("clacky_collector_commit_seconds_count", ())] >= 1
    assert ("clacky_collector_queue_depth", ()) in got
    assert got[("clacky_collector_open_connections", ())] >= 1  # the scrape's own


def test_metrics_are_served_to_loopback_only_unless_metrics_from_says(tmp_path):
    with Collector(tmp_path / "a.db", metrics_from=["10.0.0.0/8"]) as c:
        response = requests.get(c.url + "/metrics", timeout=5)
        assert response.status_code == 403
        assert requests.get(c.url + "/healthz", timeout=5).status_code == 200
    with Collector(tmp_path / "b.db", metrics_from=["127.0.0.1/32"]) as c:
        assert requests.get(c.url + "/metrics", timeout=5).status_code == 200


def test_metrics_add_up_across_worker_processes(tmp_path):
    """Under PROMETHEUS_MULTIPROC_DIR two processes' counts are one scrape's."""
    folder = tmp_path / "prom"
    folder.mkdir()
    ports = [free_port(), free_port()]
    env = subprocess_env(PROMETHEUS_MULTIPROC_DIR=str(folder))
    procs = [
        subprocess.Popen(
            [PYTHON, "-m", "clacky_ipy", "collect", "--db", str(tmp_path / "e.db"), "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for port in ports
    ]
    try:
        for proc in procs:
            assert "collector on" in proc.stdout.readline()
        for i, port in enumerate(ports):
            for _ in range(i + 2):
                assert post(f"http://127.0.0.1:{port}", TASK, {"device_id": DEVICE}).status_code == 201
        got = metrics(f"http://127.0.0.1:{ports[0]}")
        assert got[("clacky_collector_events_stored_total", (("kind", "task"),))] == 5
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


# -- credentials ---------------------------------------------------------------------------------
@pytest.fixture
def guarded(tmp_path):
    path = tmp_path / "credentials"
    path.write_text(f"# ingest users\nalice:{hash_password('s3cret')}\n")
    with Collector(tmp_path / "events.db", guard=Guard(Credentials.load(path))) as c:
        yield c


def basic(text: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(text).decode()}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic(b"alice:wrong"),
        basic(b"mallory:s3cret"),
        basic(b"alice"),
        {"Authorization": "Basic not-base64!"},
        {"Authorization": "Bearer s3cret"},
        {"Authorization": "Basic " + base64.b64encode(b"\xff:s3cret").decode()},
    ],
    ids=["none", "wrong password", "unknown user", "no colon", "not base64", "not basic", "not utf-8"],
)
def test_a_post_without_the_right_credentials_is_401_and_nothing_is_stored(guarded, headers):
    response = post(guarded.url, TASK, {"device_id": DEVICE}, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert guarded.store.count() == 0
    assert post(guarded.url, TASK, {"device_id": DEVICE}, headers=basic(b"alice:s3cret")).status_code == 201
    assert guarded.store.count() == 1
    assert requests.get(guarded.url + "/healthz", timeout=5).status_code == 200  # probes need none
    got = metrics(guarded.url)
    assert got[("clacky_collector_requests_refused_total", (("reason", "401"),))] == 1


def test_the_real_client_delivers_with_user_and_password_in_its_endpoint(ip, guarded):
    host, port = guarded.address
    load(ip, endpoint=f"http://alice:s3cret@{host}:{port}")
    clacky_ipy.task({"model": "m"})
    assert clacky_ipy.flush(10)
    assert [r["kind"] for r in guarded.store.rows()] == ["startup", "task"]


# -- rate limits ---------------------------------------------------------------------------------
def test_a_device_over_its_rate_gets_429_with_retry_after_and_others_go_on(tmp_path):
    with Collector(tmp_path / "events.db", guard=Guard(rate=0.5, burst=3)) as c:
        answers = [post(c.url, TASK, {"device_id": DEVICE}) for _ in range(5)]
        assert [a.status_code for a in answers] == [201, 201, 201, 429, 429]
        assert int(answers[3].headers["Retry-After"]) >= 1
        assert post(c.url, TASK, {"device_id": "b" * 64}).status_code == 201
        assert c.store.count() == 4


def test_a_peer_over_its_rate_gets_429_whatever_device_ids_it_sends(tmp_path):
    with Collector(tmp_path / "events.db", guard=Guard(peer_rate=1, burst=5)) as c:
        codes = [post(c.url, TASK, {"device_id": f"device-{i:04}"}).status_code for i in range(8)]
        assert codes.count(201) == 5 and codes[-1] == 429


def test_the_real_client_pauses_for_retry_after(ip, tmp_path):
    with Collector(tmp_path / "events.db", guard=Guard(rate=0.01, burst=2)) as c:
        load(ip, endpoint=c.url)
        for _ in range(4):
            clacky_ipy.task({"model": "m"})
        assert clacky_ipy.flush(10)
        status = CLIENT.status()
        assert status["paused_seconds"] > 1
        assert c.store.count() == 2  # startup and one task; the 429'd and the paused are dropped
        requests_seen = metrics(c.url)[("clacky_collector_requests_refused_total", (("reason", "429"),))]
        assert requests_seen == 1  # after the 429 the client sends nothing until Retry-After


def test_a_million_distinct_device_ids_stay_within_a_fixed_memory_bound():
    limiter = RateLimiter(rate=1, burst=5, max_keys=10_000)
    tracemalloc.start()
    try:
        for i in range(1_000_000):
            limiter.take(f"{i:064x}", now=i * 1e-6)
            if i == 20_000:
                settled = tracemalloc.get_traced_memory()[0]
        grown = tracemalloc.get_traced_memory()[0] - settled
    finally:
        tracemalloc.stop()
    assert len(limiter) == 10_000
    assert grown < 256 * 1024  # the table is full at 10,000 keys and stays that size


def test_the_default_key_table_is_bounded():
    from clacky_ipy.guard import MAX_KEYS

    limiter = RateLimiter(rate=1, burst=1)
    for i in range(MAX_KEYS + 1000):
        limiter.take(str(i))
    assert len(limiter) == MAX_KEYS


# -- strict vocabulary ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["abc", "x" * 65, "a b c d e f g h", "dévice-id", 12345678, ["a" * 64], ""])
def test_a_device_id_that_is_no_id_is_400(collector, device):
    response = post(collector.url, TASK, {"device_id": device, "status": "success"})
    assert response.status_code == 400 and "device_id" in response.json()["message"]
    assert collector.store.count() == 0


def test_a_status_outside_its_set_is_dropped_never_a_category(collector):
    from clacky_ipy import report

    assert post(collector.url, TASK, {"device_id": DEVICE, "status": "bogus", "trigger": "cron"}).status_code == 201
    (row,) = collector.store.rows()
    assert "status" not in row and "trigger" not in row
    data = report.build(collector.store.path)
    assert "bogus" not in json.dumps(data) and "cron" not in json.dumps(data)


def test_the_client_uses_the_same_vocabulary():
    assert payload.clean("task", {"status": "bogus", "device_id": "abc", "cost_source": "api"}) == {
        "cost_source": "api"
    }
    heard = []
    payload.clean("startup", {"frontend": "emacs", "x": 1}, lambda key, reason: heard.append((key, reason)))
    assert heard == [("frontend", "not_in_choices"), ("", "unknown_key")]


# -- the command line ----------------------------------------------------------------------------
def test_collect_help_lists_every_option():
    from clacky_ipy.cli import parser

    out = subprocess.run(
        [PYTHON, "-m", "clacky_ipy", "collect", "--help"], env=subprocess_env(), capture_output=True, text=True
    ).stdout
    collect = parser()._subparsers._group_actions[0].choices["collect"]
    options = [o for action in collect._actions for o in action.option_strings if o.startswith("--")]
    for option in (
        "--credentials", "--hash-password", "--rate-limit", "--burst", "--peer-rate-limit",
        "--metrics-from", "--retain-days", *options,
    ):  # fmt: skip
        assert option in out, option


def test_hash_password_makes_a_line_the_collector_accepts(tmp_path):
    out = subprocess.run(
        [PYTHON, "-m", "clacky_ipy", "collect", "--hash-password", "bob"],
        input="hunter2\n", env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.startswith("bob:scrypt$")
    (tmp_path / "creds").write_text(out.stdout)
    credentials = Credentials.load(tmp_path / "creds")
    assert credentials.check(b"Basic " + base64.b64encode(b"bob:hunter2"))
    assert not credentials.check(b"Basic " + base64.b64encode(b"bob:hunter3"))


def test_uvicorn_workers_take_the_service_settings_from_the_environment(tmp_path):
    """``uvicorn --workers 2 clacky_ipy.collector:app``: credentials and rate limits from the
    environment, and one /metrics for both workers."""
    credentials = tmp_path / "credentials"
    credentials.write_text(f"ingest:{hash_password('pw')}\n")
    folder = tmp_path / "prom"
    folder.mkdir()
    port = free_port()
    env = subprocess_env(
        CLACKY_COLLECTOR_DB=str(tmp_path / "e.db"),
        CLACKY_COLLECTOR_CREDENTIALS=str(credentials),
        CLACKY_COLLECTOR_RATE_LIMIT="1000/s",
        PROMETHEUS_MULTIPROC_DIR=str(folder),
    )
    command = [PYTHON, "-m", "uvicorn", "clacky_ipy.collector:app", "--port", str(port), "--workers", "2"]
    command += ["--http", "clacky_ipy.collector:Protocol", "--no-access-log"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        assert post(url, TASK, {"device_id": DEVICE}).status_code == 401
        for _ in range(10):
            with requests.Session() as session:  # new connections: either worker may answer
                answer = session.post(url + TASK, json={"device_id": DEVICE}, auth=("ingest", "pw"), timeout=10)
                assert answer.status_code == 201
        got = metrics(url)
        assert got[("clacky_collector_events_stored_total", (("kind", "task"),))] == 10
        assert got[("clacky_collector_requests_refused_total", (("reason", "401"),))] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_wrong_setting_in_the_environment_fails_the_start_in_one_line(tmp_path):
    env = subprocess_env(CLACKY_COLLECTOR_DB=str(tmp_path / "e.db"), CLACKY_COLLECTOR_RATE_LIMIT="lots")
    command = [PYTHON, "-m", "uvicorn", "clacky_ipy.collector:app", "--port", str(free_port())]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "not a rate" in out.stderr and "Traceback" not in out.stderr


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    event=st.sampled_from(list(payload.KEYS)),
    fields=st.dictionaries(
        st.sampled_from([*payload.COLUMNS, "history", "ip"]) | st.text(max_size=12), json_values, max_size=12
    ),
    choice=st.sampled_from(sorted(payload.CHOICES)),
    value=st.text(max_size=70),
)
def test_no_value_outside_a_closed_set_and_no_malformed_device_id_survives(event, fields, choice, value):
    fields = {**fields, choice: value}
    heard = []
    cleaned = payload.clean(event, fields, lambda key, reason: heard.append((key, reason)))
    for key, allowed in payload.CHOICES.items():
        assert key not in cleaned or cleaned[key] in allowed
    assert "device_id" not in cleaned or payload.DEVICE_ID.fullmatch(cleaned["device_id"])
    assert set(cleaned) <= set(payload.KEYS[event])
    assert len(heard) == sum(1 for k in fields if k not in cleaned)
    assert all(reason in payload.DROP_REASONS for _, reason in heard)
    problem = payload.device_id_problem(fields)
    device = fields.get("device_id")
    assert (problem is None) == (device is None or (type(device) is str and bool(payload.DEVICE_ID.fullmatch(device))))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(device=st.text(max_size=70) | st.integers() | st.none())
def test_over_a_socket_a_device_id_is_stored_only_when_it_looks_like_one(collector, device):
    before = collector.store.count()
    answer = post(collector.url, TASK, {"device_id": device, "status": "success"})
    shaped = device is None or (isinstance(device, str) and bool(payload.DEVICE_ID.fullmatch(device)))
    assert answer.status_code == (201 if shaped else 400)
    assert collector.store.count() == before + shaped


def test_an_ipv6_peer_is_limited_by_its_slash_64():
    from clacky_ipy.guard import peer_key

    assert peer_key("2001:db8:1:2::1") == peer_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert peer_key("2001:db8:1:3::1") != peer_key("2001:db8:1:2::1")
    assert peer_key("192.0.2.7") == "192.0.2.7"


def test_behind_a_local_proxy_the_peer_is_the_forwarded_client(tmp_path):
    """A proxy on loopback forwards the client's address: /metrics is refused to a remote client
    that comes through it, and the per-peer limit counts each client apart."""
    with Collector(tmp_path / "events.db", guard=Guard(peer_rate=0.01, burst=2)) as c:
        assert (
            requests.get(c.url + "/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=5).status_code == 403
        )
        codes = []
        for client in ("203.0.113.1", "203.0.113.2"):
            for _ in range(3):
                headers = {"X-Forwarded-For": client}
                codes.append(post(c.url, TASK, {"device_id": DEVICE}, headers=headers).status_code)
        assert codes == [201, 201, 429, 201, 201, 429]
