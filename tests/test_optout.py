"""Every opt-out path: nothing sent, no thread started, no socket opened."""

from __future__ import annotations

import pytest
from conftest import CLIENT, load, run

from clacky_ipy.config import OFF_FILE


def assert_silent(receiver):
    receiver.wait()
    assert receiver.requests == []
    assert CLIENT.transport._thread is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("CLACKY_TELEMETRY", "0"), ("CLACKY_TELEMETRY", "false"), ("CLACKY_TELEMETRY", "OFF"),
     ("CLACKY_TELEMETRY", "no"), ("DO_NOT_TRACK", "1"), ("DO_NOT_TRACK", "true"), ("DO_NOT_TRACK", "yes")],
)  # fmt: skip
def test_environment_opt_out_wins_over_config(ip, receiver, env, name, value, capsys):
    env.setenv(name, value)
    load(ip, endpoint=receiver.url, track_cells=True, enabled=True)
    run(ip, "x = 1")
    run(ip, "%%clacky\n1")
    run(ip, "import clacky_ipy; clacky_ipy.task({'model': 'm'})")
    assert_silent(receiver)
    capsys.readouterr()
    run(ip, "%clacky_telemetry status")
    assert f"off ({name}={value} in the environment)" in capsys.readouterr().out


def test_enabled_false_in_config(ip, receiver, capsys):
    load(ip, endpoint=receiver.url, track_cells=True, enabled=False)
    run(ip, "x = 1")
    assert_silent(receiver)
    run(ip, "%clacky_telemetry")
    assert "off (ClackyTelemetry.enabled is False)" in capsys.readouterr().out


def test_env_checked_at_send_time_not_only_at_load(ip, receiver, env):
    load(ip, endpoint=receiver.url, track_cells=True)
    receiver.wait()
    env.setenv("CLACKY_TELEMETRY", "0")
    run(ip, "x = 1")
    env.delenv("CLACKY_TELEMETRY")
    run(ip, "y = 2")
    receiver.wait()
    assert len(receiver.events("task")) == 1


def test_off_magic_persists_for_later_sessions_until_on(ip, receiver, home, capsys):
    load(ip, endpoint=receiver.url, track_cells=True)
    run(ip, "%clacky_telemetry off")
    assert (home / OFF_FILE).exists()
    run(ip, "x = 1")
    receiver.wait()
    assert receiver.events("task") == []
    # a later session (a new process) honours it
    run(ip, "%unload_ext clacky_ipy")
    CLIENT.reset()
    receiver.server.clear_log()
    load(ip, endpoint=receiver.url, track_cells=True)
    run(ip, "x = 1")
    receiver.wait()
    assert receiver.requests == []
    capsys.readouterr()
    run(ip, "%clacky_telemetry on")
    assert "Telemetry is on" in capsys.readouterr().out
    assert not (home / OFF_FILE).exists()
    run(ip, "y = 2")
    receiver.wait()
    # off at load, on later: the startup event goes out then, before any task
    # (the cell that turned it on is not counted: tracking starts with the next cell)
    assert [r.path.rsplit("/", 1)[-1] for r in receiver.requests] == ["startup", "task"]


def test_turning_off_discards_what_is_queued(ip, blackhole, receiver):
    load(ip, endpoint=blackhole, track_cells=True, timeout=5.0)
    for _ in range(20):
        run(ip, "x = 1")
    assert CLIENT.transport.queued > 0
    run(ip, "%config ClackyTelemetry.enabled = False")
    assert CLIENT.transport.queued == 0
    assert CLIENT.transport.dropped >= 15


def test_enabled_later_sends_the_startup_then(ip, receiver):
    load(ip, endpoint=receiver.url, enabled=False)
    receiver.wait()
    assert receiver.requests == []
    run(ip, "%config ClackyTelemetry.enabled = True")
    receiver.wait()
    assert len(receiver.events("startup")) == 1
    run(ip, "%reload_ext clacky_ipy")
    receiver.wait()
    assert len(receiver.events("startup")) == 1


def test_on_magic_says_when_the_environment_still_wins(ip, receiver, env, capsys):
    env.setenv("DO_NOT_TRACK", "1")
    load(ip, endpoint=receiver.url)
    run(ip, "%clacky_telemetry on")
    assert "stays off: DO_NOT_TRACK=1" in capsys.readouterr().out
    assert_silent(receiver)


def test_bad_endpoint_in_env_turns_telemetry_off_not_to_the_default_hosts(ip, env, capsys):
    env.setenv("CLACKY_LICENSE_SERVER", "localhost:8765")
    load(ip, track_cells=True)
    run(ip, "x = 1")
    assert CLIENT.transport._thread is None
    capsys.readouterr()
    run(ip, "%clacky_telemetry status")
    out = capsys.readouterr().out
    assert "off (CLACKY_LICENSE_SERVER='localhost:8765' is not an http(s) URL" in out
    assert "openclacky.com" not in out and "1024code" not in out


def test_bad_endpoint_in_config_turns_telemetry_off(ip, capsys):
    load(ip, endpoint="ftp://collector.example", track_cells=True)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused ClackyTelemetry.endpoint" in err
    run(ip, "x = 1")
    assert CLIENT.transport._thread is None
    run(ip, "%clacky_telemetry")
    assert "is not an http(s) URL" in capsys.readouterr().out


def test_nothing_is_sent_after_opt_out_even_from_the_api(ip, receiver, env):
    import clacky_ipy

    load(ip, endpoint=receiver.url)
    receiver.wait()
    receiver.server.clear_log()
    env.setenv("CLACKY_TELEMETRY", "false")
    assert clacky_ipy.task({"model": "m"}) is False
    with clacky_ipy.track(model="m"):
        pass
    receiver.wait()
    assert receiver.requests == []
