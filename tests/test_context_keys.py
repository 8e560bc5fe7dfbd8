"""The context of an event (who sends, from where) comes from the client only: keyword
fields fill the agent's keys, never the device id, the frontend or the versions; an
error class is sent only beside status error. Through the real Python API to a real server."""

from __future__ import annotations

import pytest
from conftest import CLIENT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clacky_ipy
from clacky_ipy import notice, payload

#: The issue's list: the keys only the client fills.
CONTEXT = {"device_id", "version", "brand", "frontend", "ci", "container", "os", "python_version",
           "ipython_version", "launch_source"}  # fmt: skip


def test_the_context_keys_are_defined_once_in_the_vocabulary():
    assert payload.CONTEXT_KEYS == CONTEXT


@pytest.fixture
def api(fresh_client, env, receiver, home):
    env.setenv("CLACKY_LICENSE_SERVER", receiver.url)
    notice.mark_seen(home)
    clacky_ipy.task()  # the reference: what the client says of itself
    receiver.wait()
    (reference,) = receiver.events("task")
    receiver.server.clear_log()
    return receiver, reference


def sent(receiver, **fields):
    receiver.server.clear_log()
    assert clacky_ipy.task(**fields)
    receiver.wait()
    (event,) = receiver.events("task")
    return event


def test_a_path_as_frontend_or_a_mail_as_device_id_is_never_sent(api):
    receiver, reference = api
    event = sent(receiver, frontend="/home/alice/secret-project/plan.ipynb", device_id="alice@example.com")
    assert event["device_id"] == reference["device_id"] != "alice@example.com"
    assert event.get("frontend") == reference.get("frontend")
    assert "alice" not in str(event)


def test_error_kind_only_beside_status_error(api):
    receiver, _ = api
    event = sent(receiver, error_kind="ValueError")
    assert event["status"] == "success" and "error_kind" not in event
    event = sent(receiver, status="error", error_kind="ValueError")
    assert (event["status"], event["error_kind"]) == ("error", "ValueError")
    event = sent(receiver, error=KeyError("x"), error_kind="ValueError")
    assert (event["status"], event["error_kind"]) == ("error", "KeyError")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(sorted(CONTEXT)), st.one_of(st.text(max_size=70), st.booleans())))
def test_no_keyword_field_replaces_the_context(api, fields):
    receiver, reference = api
    event = sent(receiver, **fields)
    for key in CONTEXT:
        assert event.get(key) == reference.get(key), key
    assert CLIENT.transport.failed == 0
