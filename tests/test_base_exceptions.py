"""A result whose reading raises a BaseException (SystemExit, GeneratorExit, KeyboardInterrupt...)
loses only the unreadable keys, never the event; on the user's own thread a KeyboardInterrupt
still reaches the user (it may be their Ctrl-C)."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping

import pytest
from conftest import CLIENT, load, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clacky_ipy
from clacky_ipy import payload

BASE_ONLY = (SystemExit, KeyboardInterrupt, GeneratorExit)


class BadMap(Mapping):
    """A Mapping whose `__getitem__` raises SystemExit: every key is unreadable."""

    def __getitem__(self, key):
        raise SystemExit(3)

    def __iter__(self):
        return iter(("model", "iterations"))

    def __len__(self):
        return 2


class PartlyBad(Mapping):
    """Reading the keys in `bad` raises `error`; the others read. `keys`/`__iter__` raise too."""

    data = {"model": "m", "provider": "p", "iterations": 2, "status": "success", "total_cost_usd": 0.5}

    def __init__(self, bad, error):
        self.bad, self.error = set(bad), error

    def __getitem__(self, key):
        if key in self.bad:
            raise self.error()
        return self.data[key]

    def __iter__(self):
        raise self.error()

    def keys(self):
        raise self.error()

    def __len__(self):
        return len(self.data)


def readable(bad):
    return {payload.RESULT_KEYS[k]: v for k, v in PartlyBad.data.items() if k not in bad}


def in_a_thread(fn):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


@pytest.mark.parametrize("error", BASE_ONLY)
def test_metrics_on_the_worker_leave_out_only_the_unreadable_keys(error):
    bad = PartlyBad({"model", "iterations"}, error)
    assert in_a_thread(lambda: payload.task_metrics(bad)) == readable({"model", "iterations"})
    assert in_a_thread(lambda: payload.task_metrics(BadMap())) == {}


def test_on_the_main_thread_a_keyboard_interrupt_reaches_the_user_and_others_are_left_out():
    with pytest.raises(KeyboardInterrupt):
        payload.task_metrics(PartlyBad({"model"}, KeyboardInterrupt))
    assert payload.task_metrics(PartlyBad({"model"}, SystemExit)) == readable({"model"})


def test_task_with_a_result_raising_system_exit_is_delivered(fresh_client, env, receiver):
    env.setenv("CLACKY_LICENSE_SERVER", receiver.url)
    assert clacky_ipy.task(BadMap(), model="m") is True
    receiver.wait()
    (event,) = receiver.events("task")
    assert event["model"] == "m" and event["status"] == "success"
    assert CLIENT.transport.failed == 0
    assert CLIENT.recent(1)[0]["outcome"] == "sent 201"


def test_clacky_cell_whose_value_raises_system_exit_is_delivered(ip, receiver):
    load(ip, endpoint=receiver.url)
    ip.user_ns["BadMap"] = BadMap
    result = run(ip, "%%clacky\nBadMap()")
    assert result.success, result.error_in_exec
    receiver.wait()
    (event,) = receiver.events("task")
    assert event["status"] == "success" and event["trigger"] == "magic"
    assert CLIENT.transport.failed == 0


def _base_exceptions():
    seen, todo = [], [BaseException]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted((c for c in seen if c.__module__ == "builtins"), key=lambda c: c.__name__)


def _raise(cls):
    try:
        return cls()
    except Exception:
        return SystemExit()  # an exception class that needs arguments: the common case instead


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    error=st.sampled_from(_base_exceptions()),
    bad=st.sets(st.sampled_from(sorted(PartlyBad.data)), max_size=len(PartlyBad.data)),
)
def test_any_base_exception_loses_only_its_keys(fresh_client, env, receiver, error, bad):
    env.setenv("CLACKY_LICENSE_SERVER", receiver.url)
    before = len(receiver.server.log)
    exc = _raise(error)
    result = PartlyBad(bad, lambda: exc)
    assert clacky_ipy.task(result) is True
    receiver.wait()
    (request,) = [r for r, _ in receiver.server.log[before:]]
    event = json.loads(request.get_data())
    assert {k: event[k] for k in readable(bad)} == readable(bad)
    assert not {payload.RESULT_KEYS[k] for k in bad if k != "status"} & set(event)
    assert CLIENT.transport.failed == 0


def test_debug_reads_on_the_users_thread_a_ctrl_c_reaches_them(fresh_client, env, receiver, capsys):
    """Debug mode builds the payload on the user's thread: a SystemExit from the value loses only
    its key, while a KeyboardInterrupt (perhaps the user's Ctrl-C) is not swallowed."""
    env.setenv("CLACKY_LICENSE_SERVER", receiver.url)
    env.setenv("CLACKY_TELEMETRY_DEBUG", "1")
    assert clacky_ipy.task(PartlyBad({"model"}, SystemExit)) is True
    (line,) = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith('{"event": "task"')]
    assert line["payload"]["provider"] == "p" and "model" not in line["payload"]
    with pytest.raises(KeyboardInterrupt):
        clacky_ipy.task(PartlyBad({"model"}, KeyboardInterrupt))
    assert receiver.requests == []
