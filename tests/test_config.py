"""The ClackyTelemetry configurable: defaults, validation, and IPython's %config."""

from __future__ import annotations

import os

import pytest
from conftest import CLOSED_URL, load, run
from traitlets.config import Config

from clacky_ipy.config import DEFAULT_ENDPOINT, DEFAULT_FALLBACKS, ClackyTelemetry


def telemetry(**traits):
    return ClackyTelemetry(config=Config({"ClackyTelemetry": traits}))


def test_defaults(env):
    env.delenv("CLACKY_LICENSE_SERVER")
    t = ClackyTelemetry()
    assert (t.enabled, t.track_cells, t.debug) == (True, False, False)
    assert (t.timeout, t.shutdown_timeout, t.max_queue_size, t.max_connections) == (3.0, 1.0, 1000, 4)
    assert t.endpoint == DEFAULT_ENDPOINT
    assert t.fallback_endpoints == list(DEFAULT_FALLBACKS)


def test_env_endpoint_means_no_fallbacks():
    t = ClackyTelemetry()
    assert t.endpoint == CLOSED_URL and t.fallback_endpoints == []


def test_config_endpoint_means_no_fallbacks(env):
    env.delenv("CLACKY_LICENSE_SERVER")
    assert telemetry(endpoint="http://127.0.0.1:1234").fallback_endpoints == []
    t = ClackyTelemetry()
    t.endpoint = "http://127.0.0.1:1234"  # live, as %config does
    assert t.fallback_endpoints == []


def test_explicit_fallbacks_are_kept_whatever_the_order(env):
    env.delenv("CLACKY_LICENSE_SERVER")
    fallbacks = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    assert telemetry(fallback_endpoints=fallbacks, endpoint="http://127.0.0.1:3").fallback_endpoints == fallbacks
    assert telemetry(endpoint="http://127.0.0.1:3", fallback_endpoints=fallbacks).fallback_endpoints == fallbacks


def test_debug_default_from_env(env):
    env.setenv("CLACKY_TELEMETRY_DEBUG", "true")
    assert ClackyTelemetry().debug is True
    env.setenv("CLACKY_TELEMETRY_DEBUG", "0")
    assert ClackyTelemetry().debug is False


@pytest.mark.parametrize(
    ("name", "bad", "good"),
    [
        ("timeout", -1.0, 2.0),
        ("timeout", 0.0, 2.0),
        ("shutdown_timeout", -0.5, 0.5),
        ("max_queue_size", 0, 10),
        ("max_connections", 0, 2),
        ("endpoint", "not a url", "http://127.0.0.1:5"),
        ("fallback_endpoints", ["ftp://x"], ["http://127.0.0.1:6"]),
        ("track_cells", "maybe", True),
    ],
)
def test_bad_value_is_refused_in_one_line_and_the_old_value_stays(name, bad, good, capsys):
    t = telemetry(**{name: good})
    capsys.readouterr()
    t.update_config(Config({"ClackyTelemetry": {name: bad}}))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"refused ClackyTelemetry.{name}" in err
    assert getattr(t, name) == good


def test_one_bad_value_does_not_lose_the_good_ones(capsys):
    t = telemetry(timeout=-3.0, track_cells=True, max_queue_size=5)
    assert (t.timeout, t.track_cells, t.max_queue_size) == (3.0, True, 5)
    assert capsys.readouterr().err.count("refused") == 1


def test_refused_config_value_then_reload_still_works(ip, capsys):
    load(ip)
    capsys.readouterr()
    run(ip, "%config ClackyTelemetry.timeout = -1")
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "timeout must be a positive number" in err
    assert run(ip, "%reload_ext clacky_ipy").success
    assert run(ip, "%config ClackyTelemetry.track_cells = True").success
    assert "refused" not in capsys.readouterr().err  # not refused again and again
    (t,) = [c for c in ip.configurables if isinstance(c, ClackyTelemetry)]
    assert t.timeout == 3.0 and t.track_cells is True


def test_config_changes_take_effect_at_once(ip, receiver, httpserver):
    load(ip, track_cells=True)
    run(ip, f"%config ClackyTelemetry.endpoint = '{receiver.url}'")
    run(ip, "x = 1")
    receiver.wait()
    assert len(receiver.events("task")) >= 1


def test_a_bad_value_left_in_shell_config_does_not_break_reload(ip, capsys):
    """Some IPython versions keep a refused %config value in shell.config."""
    load(ip)
    ip.config.ClackyTelemetry.max_queue_size = -7
    capsys.readouterr()
    assert run(ip, "%reload_ext clacky_ipy").success
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused ClackyTelemetry.max_queue_size" in err
    (t,) = [c for c in ip.configurables if isinstance(c, ClackyTelemetry)]
    assert t.max_queue_size == 1000


@pytest.mark.parametrize("value", [None, "", "0", " off ", "yes", "ünïcode", "a=b"])
def test_getenv_agrees_with_os_environ(monkeypatch, value):
    from clacky_ipy.config import getenv

    name = "CLACKY_IPY_TEST_VARIABLE"
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, value)
    assert getenv(name) == os.environ.get(name)
