"""Pure functions: the payload vocabulary, metrics mapping, identity, config parsing."""

from __future__ import annotations

import hashlib
import json
import math
import socket
import string
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clacky_ipy import payload
from clacky_ipy.config import env_off_reason, url_problem
from clacky_ipy.identity import (
    computed_device_id,
    detect_ci,
    device_and_brand,
    launch_source,
    ruby_platform,
)
from clacky_ipy.transport import retry_after_seconds

GEM_RESULT = {
    "status": "success",
    "model": "claude-sonnet-4",
    "provider": "anthropic",
    "iterations": 7,
    "duration_seconds": 12.3456,
    "total_cost_usd": 0.0421,
    "cost_source": "api",
    "cache_stats": {
        "prompt_tokens": 1200,
        "completion_tokens": 340,
        "cache_creation_input_tokens": 50,
        "cache_read_input_tokens": 800,
        "total_requests": 7,
        "cache_hit_requests": 5,
    },
    "history": [{"role": "user", "content": "my secret prompt"}],
    "session_id": "sess-123",
    "task_id": "task-456",
}


def test_task_metrics_maps_exactly_as_the_gem():
    assert payload.task_metrics(GEM_RESULT) == {
        "model": "claude-sonnet-4",
        "provider": "anthropic",
        "status": "success",
        "iterations": 7,
        "duration_ms": 12346,
        "cost_usd": 0.0421,
        "cost_source": "api",
        "prompt_tokens": 1200,
        "completion_tokens": 340,
        "cache_creation_tokens": 50,
        "cache_read_tokens": 800,
        "cache_total_requests": 7,
        "cache_hit_requests": 5,
    }


@pytest.mark.parametrize("result", [None, 3, "success", ["model"], object()])
def test_task_metrics_of_a_non_mapping_is_empty(result):
    assert payload.task_metrics(result) == {}


def test_clean_keeps_only_the_events_keys_and_kinds():
    fields = {
        "device_id": "d" * 64,
        "model": "m" * 100,
        "iterations": "7",
        "cost_usd": float("nan"),
        "prompt_tokens": True,
        "ci": 1,
        "history": ["x"],
        "hostname": "box",
        "provider": None,
        "os": "linux",  # a startup key, not a task key
        "duration_ms": 12,
    }
    assert payload.clean("task", fields) == {"device_id": "d" * 64, "model": "m" * 64, "duration_ms": 12}


def test_the_vocabulary_is_the_contract():
    assert set(payload.KEYS["startup"]) == {
        "device_id", "version", "os", "python_version", "ipython_version", "brand",
        "launch_source", "frontend", "ci", "container",
    }  # fmt: skip
    assert set(payload.KEYS["task"]) == {
        "device_id", "version", "brand", "trigger", "status", "duration_ms", "error_kind", "ci",
        "frontend", "model", "provider", "iterations", "cost_usd", "cost_source", "prompt_tokens",
        "completion_tokens", "cache_creation_tokens", "cache_read_tokens", "cache_total_requests",
        "cache_hit_requests", "launch_source",
    }  # fmt: skip
    assert payload.PATHS == {"startup": "/api/v1/telemetry/startup", "task": "/api/v1/telemetry/task"}


@pytest.mark.parametrize(
    ("error", "own", "expected"),
    [
        (KeyboardInterrupt(), "success", "interrupted"),
        (ValueError("x"), "success", "error"),
        (None, "error", "error"),
        (None, "success", "success"),
        (None, "weird", "success"),
        (None, None, "success"),
    ],
)
def test_status(error, own, expected):
    assert payload.status_of(error, own) == expected


def test_error_kind_is_the_class_name_only():
    class LeakyError(Exception):
        pass

    assert payload.error_kind(LeakyError("password=hunter2")) == "LeakyError"
    assert payload.error_kind(None) is None
    # even when handed a message by hand, error_kind must look like a class name
    assert payload.clean("task", {"error_kind": "token abc123 rejected"}) == {}
    assert payload.clean("task", {"error_kind": "requests.ConnectionError"}) == {
        "error_kind": "requests.ConnectionError"
    }


@given(
    st.dictionaries(st.text(max_size=30), st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()))
)
def test_clean_never_emits_an_unknown_key_a_null_or_a_long_string(fields):
    for event in ("startup", "task"):
        out = payload.clean(event, fields)
        assert set(out) <= set(payload.KEYS[event])
        for key, value in out.items():
            assert value is not None
            kind = payload.KEYS[event][key]
            if kind == payload.STR:
                assert isinstance(value, str) and 0 < len(value) <= payload.MAX_STR
            elif kind == payload.NUM:
                assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            else:
                assert isinstance(value, bool)


# -- identity ---------------------------------------------------------------------
def test_device_id_is_built_as_the_gem_builds_it():
    env = {"USER": "ada"}
    raw = f"{socket.gethostname()}:ada:{ruby_platform()}"
    assert computed_device_id(env) == hashlib.sha256(raw.encode()).hexdigest()
    assert len(computed_device_id(env)) == 64 and set(computed_device_id(env)) <= set(string.hexdigits.lower())


def test_device_id_user_falls_back_like_ruby():
    host, plat = socket.gethostname(), ruby_platform()
    sha = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
    assert computed_device_id({"USERNAME": "bob"}) == sha(f"{host}:bob:{plat}")
    assert computed_device_id({}) == sha(f"{host}::{plat}")
    assert computed_device_id({"USER": "", "USERNAME": "bob"}) == sha(f"{host}::{plat}")  # "" is truthy in Ruby


def test_ruby_platform_looks_like_rubys():
    assert ruby_platform().count("-") >= 1
    assert ruby_platform().split("-")[0] == ruby_platform().split("-")[0].lower()


def test_brand_file_gives_device_id_and_brand(tmp_path):
    (tmp_path / "brand.yml").write_text("device_id: abc123\nproduct_name: Acme Agent\npackage_name: acme\n")
    assert device_and_brand(tmp_path) == ("abc123", "acme")
    (tmp_path / "brand.yml").write_text("device_id: abc123\nproduct_name: ''\npackage_name: acme\n")
    assert device_and_brand(tmp_path) == ("abc123", None)


def test_broken_or_missing_brand_file_falls_back(tmp_path):
    assert device_and_brand(tmp_path, {"USER": "u"}) == (computed_device_id({"USER": "u"}), None)
    (tmp_path / "brand.yml").write_text(": : not yaml [")
    assert device_and_brand(tmp_path, {"USER": "u"})[0] == computed_device_id({"USER": "u"})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"CI": "true"}, True),
        ({"CI": "false"}, False),
        ({"CI": "0"}, False),
        ({"GITHUB_ACTIONS": "true"}, True),
        ({"GITLAB_CI": "1"}, True),
        ({"JENKINS_URL": "http://j"}, True),
    ],
)
def test_detect_ci(env, expected):
    assert detect_ci(env) is expected


@pytest.mark.parametrize(("value", "expected"), [("installer", "installer"), ("brew", "cli"), (None, "cli")])
def test_launch_source_maps_as_the_gem(value, expected):
    assert launch_source({} if value is None else {"CLACKY_LAUNCHED_BY": value}) == expected


# -- config parsing -------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "false", "FALSE", "off", "No", " 0 "])
def test_clacky_telemetry_off_words(value):
    assert "CLACKY_TELEMETRY" in env_off_reason({"CLACKY_TELEMETRY": value})


@pytest.mark.parametrize("value", ["1", "true", "yes", "YES"])
def test_do_not_track(value):
    assert "DO_NOT_TRACK" in env_off_reason({"DO_NOT_TRACK": value})


@pytest.mark.parametrize("env", [{}, {"CLACKY_TELEMETRY": "1"}, {"DO_NOT_TRACK": "0"}, {"CLACKY_TELEMETRY": ""}])
def test_environment_that_does_not_opt_out(env):
    assert env_off_reason(env) is None


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765", "https://www.openclacky.com", "http://[::1]:80/base"])
def test_good_urls(url):
    assert url_problem(url) is None


@pytest.mark.parametrize("url", ["ftp://x", "localhost:8765", "", "http://", "www.openclacky.com", 3])
def test_bad_urls(url):
    assert url_problem(url)


# -- retry-after ------------------------------------------------------------------------
def test_retry_after():
    assert retry_after_seconds(None) == 60
    assert retry_after_seconds("") == 60
    assert retry_after_seconds("12") == 12
    assert retry_after_seconds("100000") == 300
    assert retry_after_seconds("-5") == 60  # invalid, as if absent: 0 would let each event hit 429 again
    assert retry_after_seconds("nan") == 60
    assert retry_after_seconds("0") == 0
    assert retry_after_seconds("soon") == 60
    now = datetime.now(timezone.utc)
    date = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert 85 <= retry_after_seconds(date, now.timestamp()) <= 91
    past = format_datetime(now - timedelta(seconds=90), usegmt=True)
    assert retry_after_seconds(past, now.timestamp()) == 0  # a valid date already past: now


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("prompt_tokens", 10**30),
        ("prompt_tokens", 2**63),
        ("cost_usd", 2**63),
        ("cost_usd", 1e308),
        ("completion_tokens", float("inf")),
        ("completion_tokens", -5),
        ("cost_usd", -0.5),
        ("duration_ms", -1),
        ("duration_ms", 10**13),
        ("iterations", True),
    ],
)
def test_numbers_no_store_can_hold_are_dropped(key, value):
    assert payload.clean("task", {key: value}) == {}


def test_numbers_at_the_edges_are_kept():
    fields = {"prompt_tokens": 2**63 - 1, "duration_ms": 0, "cost_usd": 0.0, "iterations": 3}
    assert payload.clean("task", fields) == fields


def test_lone_surrogates_are_replaced_before_capping():
    out = payload.clean("task", {"model": "gpt\ud800", "provider": "\udfff" * 100})
    assert out == {"model": "gpt\ufffd", "provider": "\ufffd" * payload.MAX_STR}
    json.dumps(out, ensure_ascii=False).encode("utf-8")  # valid UTF-8 on the wire


@given(st.dictionaries(st.sampled_from(sorted(payload.COLUMNS)), st.from_type(object) | st.integers() | st.floats()))
def test_every_clean_payload_is_strict_json_within_int64(fields):
    out = payload.clean("task", fields)
    json.dumps(out, allow_nan=False, ensure_ascii=False).encode("utf-8")
    for value in out.values():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert payload.INT64_MIN <= value <= payload.INT64_MAX
