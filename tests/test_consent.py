"""Consent: nothing leaves before the notice was displayed; the switches a user and an
administrator have; what was sent, as the server received it. Real shells, kernels, servers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import CLIENT, PYTHON, TELEMETRY_PATH, load, run, subprocess_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clacky_ipy
from clacky_ipy import notice
from clacky_ipy.config import NOTICE_FILE, OFF_FILE, POLICY_DIRS_ENV, policy_dirs
from clacky_ipy.notice import NOTICE

NOTICE_MARK = "Nothing has been sent before this notice"


def settle(receiver, seconds=0.5):
    """Give a worker that should not exist time to send, then report what arrived."""
    time.sleep(seconds)
    clacky_ipy.flush(2)
    return receiver.requests


# -- the notice gates everything, in a real InteractiveShell ---------------------------------------
def test_loaded_at_startup_nothing_leaves_until_the_first_cell_shows_the_notice(ip, receiver, home, capsys):
    ip.config.ClackyTelemetry.endpoint = receiver.url
    ip.config.ClackyTelemetry.track_cells = True
    ip.extension_manager.load_extension("clacky_ipy")  # as --ext does: not in a cell
    clacky_ipy.task(model="before")  # the Python API waits too
    assert settle(receiver) == [] and not (home / NOTICE_FILE).exists()
    assert [e["outcome"] for e in clacky_ipy.recent()] == ["waiting for the notice"] * 2
    assert capsys.readouterr().out == ""
    run(ip, "print('first')")
    out = capsys.readouterr().out
    assert out.index(NOTICE_MARK) < out.index("first")
    receiver.wait()
    assert [r.path.rsplit("/", 1)[-1] for r in receiver.requests] == ["startup", "task", "task"]
    assert (home / NOTICE_FILE).exists()


class SlowStdout:
    """A stdout that takes its time over the notice, and notes what the server had meanwhile."""

    def __init__(self, real, receiver):
        self.real, self.receiver, self.received_while_printing = real, receiver, None

    def write(self, text):
        if NOTICE_MARK in text:
            time.sleep(0.5)  # the worker, if it had the startup, sends it now
            self.received_while_printing = len(self.receiver.requests)
        return self.real.write(text)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_the_loading_cell_prints_the_notice_before_anything_is_sent(ip, receiver, home, monkeypatch):
    slow = SlowStdout(sys.stdout, receiver)
    monkeypatch.setattr(sys, "stdout", slow)
    ip.config.ClackyTelemetry.endpoint = receiver.url
    run(ip, "import requests  # a warm worker: nothing but the gate holds the startup back")
    run(ip, "%load_ext clacky_ipy")
    receiver.wait()
    assert slow.received_while_printing == 0
    assert len(receiver.events("startup")) == 1


def test_a_cell_that_reads_the_notice_and_opts_out_sends_nothing(ip, receiver, home, capsys):
    ip.config.ClackyTelemetry.endpoint = receiver.url
    run(ip, "%load_ext clacky_ipy\n%clacky_telemetry off")
    assert NOTICE_MARK in capsys.readouterr().out
    assert settle(receiver) == []
    assert [e["outcome"] for e in clacky_ipy.recent()] == ["dropped: opted out"]
    assert (home / OFF_FILE).exists() and (home / NOTICE_FILE).exists()


def test_opting_out_from_a_shell_while_the_notice_waits_discards(ip, receiver, home):
    ip.config.ClackyTelemetry.endpoint = receiver.url
    ip.extension_manager.load_extension("clacky_ipy")
    env = subprocess_env(CLACKY_HOME=str(home))
    subprocess.run([PYTHON, "-m", "clacky_ipy", "telemetry", "off"], env=env, check=True, capture_output=True)
    run(ip, "x = 1")  # shows the notice; the choice made meanwhile counts
    assert settle(receiver) == []
    assert CLIENT.off_reason() and "saved choice" in CLIENT.off_reason()


def test_waiting_events_are_bounded(ip, receiver, home):
    load_at_start = ip.config.ClackyTelemetry
    load_at_start.endpoint, load_at_start.max_queue_size = receiver.url, 5
    ip.extension_manager.load_extension("clacky_ipy")
    accepted = [clacky_ipy.task(n=i) for i in range(20)]
    assert accepted.count(True) == 4  # and the startup
    assert [e["outcome"] for e in clacky_ipy.recent(100)].count("dropped: queue full") == 16
    assert CLIENT.transport.dropped == 16


def test_python_api_outside_ipython_prints_the_notice_to_stderr_once(fresh_client, env, receiver, home, capsys):
    env.setenv("CLACKY_LICENSE_SERVER", receiver.url)
    clacky_ipy.startup()
    clacky_ipy.task(model="m")
    receiver.wait()
    err = capsys.readouterr().err
    assert err.count(NOTICE_MARK) == 1 and err.strip() == notice.text(CLIENT.config)
    assert err.startswith(NOTICE) and f"Sent to: {receiver.url}" in err
    assert len(receiver.requests) == 2 and (home / NOTICE_FILE).exists()


def test_notice_says_what_the_device_id_is():
    text = " ".join(NOTICE.split())
    assert "pseudonymous" in text and "anonymous usage" not in text
    assert "recompute" in text and "host name, user name and platform" in text


# -- real processes: a terminal IPython, a kernel ----------------------------------------------
def terminal(home, url, stdin):
    cmd = [PYTHON, "-m", "IPython", "--quick", "--ext", "clacky_ipy", "--no-banner", "--simple-prompt",
           "--no-confirm-exit", "--colors=nocolor"]  # fmt: skip
    env = subprocess_env(CLACKY_HOME=str(home), CLACKY_LICENSE_SERVER=url)
    return subprocess.run(cmd, input=stdin, env=env, capture_output=True, text=True, timeout=60)


def test_terminal_ended_at_once_sends_nothing_then_the_first_cell_shows_the_notice(receiver, tmp_path):
    proc = terminal(tmp_path, receiver.url, "")  # started and ended (Ctrl-D) without a cell
    assert proc.returncode == 0, proc.stderr
    assert receiver.requests == []
    assert not (tmp_path / NOTICE_FILE).exists()  # still pending
    assert NOTICE_MARK not in proc.stdout + proc.stderr
    proc = terminal(tmp_path, receiver.url, "x = 1\n")
    assert proc.returncode == 0, proc.stderr
    assert NOTICE_MARK in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert len(receiver.events("startup")) == 1 and (tmp_path / NOTICE_FILE).exists()
    proc = terminal(tmp_path, receiver.url, "x = 1\n")
    assert NOTICE_MARK not in proc.stdout and len(receiver.events("startup")) == 2


def kernel(env, extra=()):
    from jupyter_client.manager import start_new_kernel

    return start_new_kernel(kernel_name="python3", extra_arguments=list(extra), env=env)


@contextmanager
def running_kernel(env, extra=()):
    """A real kernel's client, the kernel shut down after."""
    km, kc = kernel(env, extra)
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def execute(kc, code, **kwargs):
    """Run `code`; return [(header date as epoch, stream text)] of its output."""
    msg_id = kc.execute(code, **kwargs)
    out = []
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append((msg["header"]["date"].timestamp(), msg["content"]["text"]))
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return out


@pytest.fixture
def timed_receiver(receiver):
    """The receiver, noting when each request arrived."""
    arrivals = []

    def handler(request):
        from werkzeug import Response

        arrivals.append(time.time())
        return Response("", status=201)

    receiver.server.clear_all_handlers()
    receiver.server.expect_request(TELEMETRY_PATH, method="POST").respond_with_handler(handler)
    receiver.arrivals = arrivals
    return receiver


#: The loading cell, with a display that takes half a second over the notice (a busy frontend):
#: a kernel that queued the startup before printing sends it meanwhile.
SLOW_LOAD = f"""
import sys, time, requests

out = sys.stdout
real_write = out.write

def write(text):
    if {NOTICE_MARK!r} in text:
        time.sleep(0.5)
    return real_write(text)

out.write = write
try:
    get_ipython().run_line_magic("load_ext", "clacky_ipy")
finally:
    del out.write
"""


def test_kernel_prints_the_notice_in_the_loading_cell_before_anything_is_received(timed_receiver, tmp_path):
    env = subprocess_env(CLACKY_HOME=str(tmp_path), CLACKY_LICENSE_SERVER=timed_receiver.url)
    km, kc = kernel(env)
    try:
        out = execute(kc, SLOW_LOAD)
        execute(kc, "%clacky_telemetry flush")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    (printed_at,) = [when for when, text in out if NOTICE_MARK in text]
    assert len(timed_receiver.arrivals) == 1  # the startup
    assert printed_at <= timed_receiver.arrivals[0]


def test_kernel_with_the_extension_at_startup_waits_for_the_first_cell(receiver, tmp_path):
    env = subprocess_env(CLACKY_HOME=str(tmp_path), CLACKY_LICENSE_SERVER=receiver.url)
    with running_kernel(env, ["--ext=clacky_ipy"]) as kc:
        time.sleep(2)  # a kernel that sent at start-up has done so by now
        assert receiver.requests == []
        hidden = execute(kc, "x = 0", store_history=False)  # a frontend's own set-up code (VS Code)
        assert hidden == [] and settle(receiver) == []
        out = "".join(text for _, text in execute(kc, "x = 1"))
        assert NOTICE_MARK in out
        execute(kc, "%clacky_telemetry flush")
    assert len(receiver.events("startup")) == 1


# -- the switches: shell command, policy file -------------------------------------------------------
def cli(home, *args, **extra):
    env = subprocess_env(CLACKY_HOME=str(home), **extra)
    return subprocess.run([PYTHON, "-m", "clacky_ipy", *args], env=env, capture_output=True, text=True, timeout=60)


def test_shell_command_off_then_a_kernel_sends_nothing(receiver, tmp_path):
    import nbformat

    from clacky_ipy.demo import execute_notebook, kernel_env

    home = tmp_path / "home"
    proc = cli(home, "telemetry", "off")
    assert proc.returncode == 0, proc.stderr
    assert str(home / OFF_FILE) in proc.stdout
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(c) for c in ("%load_ext clacky_ipy", "%%clacky\n1", "%clacky_telemetry")]
    )
    nbformat.write(nb, tmp_path / "off.ipynb")
    env = {**kernel_env(receiver.url, home), "PYTHONPATH": subprocess_env()["PYTHONPATH"]}
    executed = execute_notebook(tmp_path / "off.ipynb", env, tmp_path)
    assert settle(receiver) == []
    status = executed.cells[2].outputs[0]["text"]
    assert "off (the saved choice" in status and str(home / OFF_FILE) in status
    proc = cli(home, "telemetry", "on")
    assert proc.returncode == 0 and "Telemetry is on." in proc.stdout and not (home / OFF_FILE).exists()


def test_shell_status_names_the_switch_the_file_the_endpoint_and_the_device_id(tmp_path):
    home = tmp_path / "home"
    proc = cli(home, "telemetry", "status", CLACKY_LICENSE_SERVER="http://alice:s3cret@127.0.0.1:9")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Telemetry:    on" in out and f"would be saved in {home / OFF_FILE}" in out
    assert "http://***@127.0.0.1:9" in out and "s3cret" not in out
    assert "pseudonymous" in out and "{hostname}:{user}:{platform}" in out
    assert not home.exists()  # status writes nothing
    assert "CLACKY_TELEMETRY=0 in the environment" in cli(home, "telemetry", CLACKY_TELEMETRY="0").stdout
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "telemetry-off").write_text("")
    out = cli(home, "telemetry", "on", **{POLICY_DIRS_ENV: str(policy)}).stdout
    assert f"Telemetry stays off: policy file {policy / 'telemetry-off'}" in out


def test_cli_version_help_and_mistakes(tmp_path):
    proc = cli(tmp_path, "--version")
    assert (proc.returncode, proc.stdout.strip()) == (0, f"clacky-ipy {clacky_ipy.__version__}")
    proc = cli(tmp_path)
    assert proc.returncode == 0 and "telemetry" in proc.stdout and "demo" in proc.stdout
    proc = cli(tmp_path, "telemetry", "maybe")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_policy_dirs_include_the_machine_and_the_environment():
    assert policy_dirs()[:2] == [Path("/etc/clacky"), Path(sys.prefix) / "etc" / "clacky"]


@pytest.fixture
def policy(env, tmp_path):
    directory = tmp_path / "prefix" / "etc" / "clacky"
    directory.mkdir(parents=True)
    env.setenv(POLICY_DIRS_ENV, str(directory))
    return directory / "telemetry-off"


def test_policy_file_turns_it_off_and_nothing_turns_it_back_on(ip, receiver, policy, capsys):
    policy.write_text("")
    load(ip, endpoint=receiver.url, track_cells=True)
    run(ip, "%config ClackyTelemetry.enabled = True")
    run(ip, "%clacky_telemetry on")
    run(ip, "%%clacky\n1")
    clacky_ipy.task(model="m")
    assert settle(receiver) == []
    capsys.readouterr()
    run(ip, "%clacky_telemetry status")
    assert f"off (policy file {policy})" in capsys.readouterr().out


def test_policy_file_added_mid_session_stops_sending(ip, receiver, policy, home):
    load(ip, endpoint=receiver.url)
    receiver.wait()
    policy.write_text("")
    clacky_ipy.task(model="m")
    receiver.wait()
    assert receiver.events("task") == []


def test_policy_file_in_a_kernels_environment(receiver, tmp_path):
    policy = tmp_path / "etc" / "clacky"
    policy.mkdir(parents=True)
    (policy / "telemetry-off").write_text("")
    env = subprocess_env(CLACKY_HOME=str(tmp_path / "home"), CLACKY_LICENSE_SERVER=receiver.url,
                         **{POLICY_DIRS_ENV: str(policy)})  # fmt: skip
    km, kc = kernel(env)
    try:
        execute(kc, "%load_ext clacky_ipy\n%config ClackyTelemetry.enabled = True")
        execute(kc, "%%clacky\n1")
        execute(kc, "%clacky_telemetry flush")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert receiver.requests == []


# -- what was sent ------------------------------------------------------------------------------
def test_log_shows_the_payloads_the_server_received_byte_for_byte(ip, receiver, refused_url, capsys):
    load(ip, endpoint=receiver.url)
    clacky_ipy.task(model="ok")
    receiver.wait()
    receiver.respond(500)
    clacky_ipy.task(model="refused by the server")
    receiver.wait()
    run(ip, f"%config ClackyTelemetry.endpoint = '{refused_url}'")
    clacky_ipy.task(model="unreachable")
    clacky_ipy.flush(5)
    received = [r.get_data() for r in receiver.requests]
    entries = clacky_ipy.recent()
    assert [e["outcome"] for e in entries] == ["sent 201", "sent 201", "failed HTTP 500", "failed ConnectionError"]
    assert [e["payload"].encode() for e in entries[:3]] == received
    assert [e["path"] for e in entries] == ["/api/v1/telemetry/startup"] + ["/api/v1/telemetry/task"] * 3
    assert json.loads(entries[3]["payload"])["model"] == "unreachable"
    capsys.readouterr()
    run(ip, "%clacky_telemetry log")
    out = capsys.readouterr().out
    for body in received:
        assert "    " + body.decode() + "\n" in out + "\n"
    for outcome in ("sent 201", "failed HTTP 500", "failed ConnectionError"):
        assert outcome in out
    run(ip, "%clacky_telemetry log 1")
    assert capsys.readouterr().out.count("POST /api/v1/telemetry/") == 1


def test_log_keeps_the_last_100_in_memory_only(ip, receiver, home, capsys):
    load(ip, endpoint=receiver.url, max_queue_size=10_000)
    for i in range(150):
        clacky_ipy.task(iterations=i)
    receiver.wait(30)
    assert len(clacky_ipy.recent(1000)) == 100 and len(clacky_ipy.recent()) == 20
    last = [json.loads(e["payload"])["iterations"] for e in clacky_ipy.recent(4)]
    assert 149 in last  # in the order they completed: up to max_connections (4) were in flight together
    capsys.readouterr()
    run(ip, "%clacky_telemetry log 0")
    assert "positive whole number" in capsys.readouterr().err
    assert sorted(p.name for p in home.iterdir()) == [NOTICE_FILE]  # nothing else on disk


def test_log_shows_debug_and_opted_out_events(ip, receiver, blackhole, env):
    env.setenv("CLACKY_TELEMETRY_DEBUG", "1")
    load(ip, endpoint=receiver.url)
    assert [e["outcome"] for e in clacky_ipy.recent()] == ["printed (debug)"]
    run(ip, "%config ClackyTelemetry.debug = False")
    run(ip, f"%config ClackyTelemetry.endpoint = '{blackhole}'")
    run(ip, "%config ClackyTelemetry.timeout = 5.0")
    for _ in range(3):
        clacky_ipy.task()
    run(ip, "%clacky_telemetry off")
    outcomes = [e["outcome"] for e in clacky_ipy.recent()]
    assert outcomes.count("dropped: opted out") >= 2


# -- completion, through the shell's own completer ----------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("%clacky_telemetry ", ["flush", "log", "off", "on", "reset-id", "status"]),
        ("%clacky_telemetry o", ["off", "on"]),
        ("%clacky_telemetry l", ["log"]),
        ("%%clacky --m", ["--model"]),
        ("%%clacky --model m --", ["--provider", "--result"]),
        ("%clacky --p", ["--provider"]),
    ],
)
def test_completion(ip, line, expected):
    load(ip)
    assert completions(ip, line) == expected


def completions(ip, text, cursor=None):
    from IPython.core.completer import provisionalcompleter

    with provisionalcompleter():
        return sorted(c.text for c in ip.Completer.completions(text, len(text) if cursor is None else cursor))


def test_completion_of_a_cell_magics_first_line_and_gone_after_unload(ip):
    load(ip)
    assert completions(ip, "%%clacky --pro\nagent.run()", len("%%clacky --pro")) == ["--provider"]
    run(ip, "%unload_ext clacky_ipy")
    assert "off" not in completions(ip, "%clacky_telemetry o")


def test_a_forked_child_never_sends_what_waited_in_its_parent(ip, receiver, home):
    import os
    import warnings

    ip.config.ClackyTelemetry.endpoint = receiver.url
    ip.extension_manager.load_extension("clacky_ipy")
    clacky_ipy.task(model="parent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            CLIENT.notice_displayed()
            code = 0 if clacky_ipy.flush(5) and CLIENT.recent() == [] else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert receiver.requests == []
    run(ip, "x = 1")  # the parent shows the notice: its own events go, once
    receiver.wait()
    assert [r.path.rsplit("/", 1)[-1] for r in receiver.requests] == ["startup", "task"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.one_of(st.none(), st.text(max_size=100)),
    iterations=st.one_of(st.integers(), st.floats(), st.text(max_size=5)),
    cost=st.one_of(st.floats(allow_nan=True), st.integers(min_value=-(2**70), max_value=2**70)),
)
def test_the_log_holds_exactly_the_bytes_the_server_received_whatever_the_values(ip, receiver, model, iterations, cost):
    if "clacky_ipy" not in ip.extension_manager.loaded:
        load(ip, endpoint=receiver.url)
    receiver.wait()
    receiver.server.clear_log()
    assert clacky_ipy.task({"total_cost_usd": cost}, model=model, iterations=iterations)
    receiver.wait()
    (request,) = receiver.requests
    last = clacky_ipy.recent(1)[0]
    assert (last["outcome"], last["path"]) == ("sent 201", request.path)
    assert last["payload"].encode("utf-8") == request.get_data()


def test_flush_in_the_loading_cell_says_the_events_wait_for_the_notice(ip, receiver, home, capsys):
    ip.config.ClackyTelemetry.endpoint = receiver.url
    run(ip, "%load_ext clacky_ipy\n%clacky_telemetry flush\nimport clacky_ipy\nflushed = clacky_ipy.flush(1)")
    assert "Waiting for the notice: 1 events" in capsys.readouterr().out
    assert ip.user_ns["flushed"] is False
    receiver.wait()
    assert len(receiver.events("startup")) == 1
