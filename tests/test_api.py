"""The Python API without IPython: startup(), task(), track(), flush(), delivered to a real server."""

from __future__ import annotations

import time

import pytest

import clacky_ipy

RESULT = {
    "status": "success",
    "model": "claude-sonnet-4",
    "provider": "anthropic",
    "iterations": 3,
    "duration_seconds": 1.5,
    "total_cost_usd": 0.02,
    "cost_source": "api",
    "cache_stats": {"prompt_tokens": 10, "completion_tokens": 5},
    "history": ["never sent"],
}


@pytest.fixture
def api(fresh_client, env, receiver):
    """The process's client with its default configuration, pointed at the local server."""
    env.setenv("CLACKY_LICENSE_SERVER", receiver.url)
    return receiver


def test_startup_once_per_process(api):
    assert clacky_ipy.startup() is True
    assert clacky_ipy.startup() is False
    api.wait()
    (event,) = api.events("startup")
    assert event["version"] == clacky_ipy.__version__ and "frontend" not in event  # no IPython shell here


def test_task_from_a_result(api):
    assert clacky_ipy.task(RESULT) is True
    api.wait()
    (event,) = api.events("task")
    assert event["trigger"] == "api" and event["status"] == "success"
    assert event["model"] == "claude-sonnet-4" and event["cost_usd"] == 0.02 and event["duration_ms"] == 1500
    assert event["prompt_tokens"] == 10 and "history" not in event


def test_task_keyword_fields_fill_what_the_result_lacks(api):
    clacky_ipy.task(model="m", provider="p", duration_ms=42, iterations=2, status="error", trigger="x", colour="red")
    clacky_ipy.task(RESULT, model="other", duration_ms=7)
    api.wait()
    first, second = api.events("task")
    assert first["model"] == "m" and first["provider"] == "p" and first["duration_ms"] == 42
    assert first["iterations"] == 2 and first["status"] == "error" and first["trigger"] == "api"
    assert "colour" not in first
    assert second["model"] == "claude-sonnet-4" and second["duration_ms"] == 1500  # the result wins


def test_task_with_an_error_sends_its_class_name_only(api):
    clacky_ipy.task(model="m", error=ValueError("token sk-secret"))
    api.wait()
    (event,) = api.events("task")
    assert event["status"] == "error" and event["error_kind"] == "ValueError"
    assert "sk-secret" not in str(event)


def test_track_times_a_block_and_attaches_the_result(api):
    with clacky_ipy.track(model="fallback", provider="anthropic") as t:
        time.sleep(0.05)
        t.result = {"model": "claude-sonnet-4", "iterations": 4, "duration_seconds": 99}
    api.wait()
    (event,) = api.events("task")
    assert event["model"] == "claude-sonnet-4" and event["provider"] == "anthropic" and event["iterations"] == 4
    assert isinstance(event["duration_ms"], int) and 50 <= event["duration_ms"] < 99_000  # measured, not reported
    assert event["status"] == "success" and event["trigger"] == "api"


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("boom"), "error"), (KeyboardInterrupt(), "interrupted")])
def test_track_lets_the_exception_through_and_reports_it(api, error, status):
    with pytest.raises(type(error)), clacky_ipy.track(model="m"):
        raise error
    api.wait()
    (event,) = api.events("task")
    assert event["status"] == status
    assert event.get("error_kind") == ("RuntimeError" if status == "error" else None)


def test_flush_is_bounded(fresh_client, env, blackhole):
    env.setenv("CLACKY_LICENSE_SERVER", blackhole)
    clacky_ipy.task(model="m")
    start = time.monotonic()
    assert clacky_ipy.flush(0.3) is False  # the black hole never answers
    assert time.monotonic() - start < 0.3 + 2.0
