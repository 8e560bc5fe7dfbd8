"""Config bounds, credentials never shown, and debug from the very first event."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
from conftest import PYTHON, load, run, subprocess_env

import clacky_ipy
from clacky_ipy.config import MAX_SHUTDOWN_TIMEOUT, MAX_TIMEOUT, ClackyTelemetry, mask_credentials


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("timeout", math.inf),
        ("timeout", 1e308),
        ("timeout", math.nan),
        ("timeout", MAX_TIMEOUT + 1),
        ("shutdown_timeout", math.inf),
        ("shutdown_timeout", MAX_SHUTDOWN_TIMEOUT + 0.5),
        ("shutdown_timeout", -math.inf),
    ],
)
def test_out_of_range_seconds_are_refused_in_one_line_old_value_kept(ip, capsys, name, bad):
    load(ip)
    magics_telemetry = next(c for c in ip.configurables if isinstance(c, ClackyTelemetry))
    old = getattr(magics_telemetry, name)
    capsys.readouterr()
    run(ip, f"%config ClackyTelemetry.{name} = {bad!r}".replace("inf", "float('inf')").replace("nan", "float('nan')"))
    err = capsys.readouterr().err
    assert getattr(magics_telemetry, name) == old
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"refused ClackyTelemetry.{name}" in lines[0], err
    assert "Traceback" not in err


def test_bounds_are_inclusive():
    t = ClackyTelemetry()
    t.timeout, t.shutdown_timeout = MAX_TIMEOUT, MAX_SHUTDOWN_TIMEOUT
    assert (t.timeout, t.shutdown_timeout) == (MAX_TIMEOUT, MAX_SHUTDOWN_TIMEOUT)


def test_flush_after_a_refused_infinite_shutdown_timeout(ip, capsys):
    load(ip)
    run(ip, "%config ClackyTelemetry.shutdown_timeout = float('inf')")
    capsys.readouterr()
    assert run(ip, "%clacky_telemetry flush").success


SECRET_URL = "http://alice:S3cret@127.0.0.1:9"


def test_mask_credentials():
    assert mask_credentials("http://alice:S3cret@host/x") == "http://***@host/x"
    assert mask_credentials("http://host:80/a@b") == "http://host:80/a@b"
    assert mask_credentials("'https://u@h' and 'http://v:w@k'") == "'https://***@h' and 'http://***@k'"


def test_password_never_in_status_or_refusals(ip, capsys):
    load(ip, endpoint=SECRET_URL, fallback_endpoints=["https://bob:hunter2@127.0.0.1:10"])
    run(ip, "%clacky_telemetry status")
    run(ip, "%config ClackyTelemetry.endpoint = 'ftp://carol:pa55@host'")
    run(ip, "%config ClackyTelemetry.fallback_endpoints = ['nope://dave:w0rd@host']")
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "refused ClackyTelemetry.endpoint" in shown and "refused ClackyTelemetry.fallback_endpoints" in shown
    assert "127.0.0.1:9" in shown and "***@" in shown
    for secret in ("S3cret", "hunter2", "pa55", "w0rd", "alice", "bob"):
        assert secret not in shown, secret


def test_mask_credentials_up_to_the_last_at():
    assert mask_credentials("http://bob:P@ss@host/x@y") == "http://***@host/x@y"


def test_password_never_in_the_config_listing(ip, env, capsys):
    """`%config ClackyTelemetry` prints each trait's current value; a config file shows defaults."""
    env.setenv("CLACKY_LICENSE_SERVER", "http://carol:Env5ecret@127.0.0.1:9")
    load(ip, endpoint="http://bob:Pw0rd@127.0.0.1:1/", fallback_endpoints=["https://dave:hunter2@127.0.0.1:10"])
    capsys.readouterr()
    run(ip, "%config ClackyTelemetry")
    listing = capsys.readouterr().out
    assert "Current: 'http://***@127.0.0.1:1'" in listing
    shown = listing + ClackyTelemetry.class_config_section() + ClackyTelemetry.class_get_help()
    for secret in ("Pw0rd", "hunter2", "Env5ecret", "bob", "dave", "carol"):
        assert secret not in shown, secret


def test_password_never_in_a_plans_repr():
    from clacky_ipy.transport import Plan

    plan = Plan({"model": "m"}, ("http://bob:Pw0rd@127.0.0.1:1", "https://x:y@h"), 3.0, "ua")
    assert "Pw0rd" not in repr(plan) and "x:y" not in repr(plan) and "http://***@127.0.0.1:1" in repr(plan)
    assert plan.hosts[0] == "http://bob:Pw0rd@127.0.0.1:1"  # still sent as basic auth


def test_password_never_in_an_env_endpoint_refusal(ip, env, capsys):
    env.setenv("CLACKY_LICENSE_SERVER", "ftp://alice:S3cret@host")
    load(ip)
    run(ip, "%clacky_telemetry status")
    captured = capsys.readouterr()
    assert "off (" in captured.out and "S3cret" not in captured.out + captured.err


SCRIPT = """
import clacky_ipy
clacky_ipy.startup()
clacky_ipy.task({"model": "m"})
clacky_ipy.flush(5)
"""


def test_debug_from_the_first_event_without_ipython(receiver, tmp_path):
    env = subprocess_env(CLACKY_HOME=str(tmp_path), CLACKY_LICENSE_SERVER=receiver.url, CLACKY_TELEMETRY_DEBUG="1")
    proc = subprocess.run([PYTHON, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines] == ["startup", "task"]
    assert receiver.requests == []


def test_debug_from_the_first_event_in_process(fresh_client, env, receiver, capsys):
    env.setenv("CLACKY_LICENSE_SERVER", receiver.url)
    env.setenv("CLACKY_TELEMETRY_DEBUG", "1")
    assert clacky_ipy.task({"model": "m"})
    receiver.wait()
    assert receiver.requests == []
    assert '"event": "task"' in capsys.readouterr().err
