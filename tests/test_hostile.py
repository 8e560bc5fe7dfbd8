"""Hostile values: nothing an agent's result, status or exception holds can raise out of
metric extraction, break a cell or lose the event (each bad key is left out, the rest sent)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import numpy as np
import pytest
from conftest import CLIENT, load, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clacky_ipy
from clacky_ipy import payload


class RaisingEq:
    def __eq__(self, other):
        raise RuntimeError("no comparing me")

    __hash__ = object.__hash__


class BadMapping(Mapping):
    """A Mapping whose every item access raises (a lazy proxy whose backend is gone)."""

    def __init__(self, keys=("model", "status", "iterations")):
        self._keys = keys

    def __getitem__(self, key):
        raise RuntimeError("backend gone")

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


class HalfBadMapping(Mapping):
    """`model` raises, everything else reads."""

    _data = {"model": None, "provider": "anthropic", "iterations": 3}

    def __getitem__(self, key):
        if key == "model":
            raise ValueError("unreadable")
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


class BadInt(int):
    def __int__(self):
        raise RuntimeError("no")

    def __index__(self):
        raise RuntimeError("no")


class BadStr(str):
    """A str subclass whose own methods raise (the value itself is a fine string)."""

    def __len__(self):
        raise RuntimeError("no len")

    def __bool__(self):
        raise RuntimeError("no bool")

    def __eq__(self, other):
        raise RuntimeError("no eq")

    def __str__(self):
        raise RuntimeError("no str")

    __hash__ = str.__hash__


class BadFloat(float):
    def __float__(self):
        raise RuntimeError("no")

    def __round__(self, ndigits=None):
        raise RuntimeError("no")


class Meta(type):
    @property
    def __name__(cls):
        raise RuntimeError("nameless")


class NamelessError(Exception, metaclass=Meta):
    pass


ODD_RESULTS = {
    "overflowing float seconds": ({"duration_seconds": 1e306, "model": "m"}, {"model": "m"}),
    "huge int seconds": ({"duration_seconds": 10**400, "model": "m"}, {"model": "m"}),
    "nan seconds": ({"duration_seconds": float("nan"), "model": "m"}, {"model": "m"}),
    "numpy array status": ({"status": np.array([1, 2]), "model": "m"}, {"model": "m", "status": "success"}),
    "raising __eq__ status": ({"status": RaisingEq(), "model": "m"}, {"model": "m", "status": "success"}),
    "raising mapping": (BadMapping(), {"status": "success"}),
    "half raising mapping": (HalfBadMapping(), {"provider": "anthropic", "iterations": 3, "status": "success"}),
    "raising cache_stats": ({"model": "m", "cache_stats": BadMapping(("prompt_tokens",))}, {"model": "m"}),
    "huge tokens": ({"cache_stats": {"prompt_tokens": 10**30, "completion_tokens": 7}}, {"completion_tokens": 7}),
    "int subclass that raises": ({"iterations": BadInt(3), "model": "m"}, {"model": "m", "iterations": 3}),
    "str subclass that raises": ({"model": BadStr("m"), "status": BadStr("error")}, {"model": "m", "status": "error"}),
    "float subclass that raises": (
        {"total_cost_usd": BadFloat(0.5), "duration_seconds": BadFloat(1.0)},
        {"cost_usd": 0.5, "duration_ms": 1000},
    ),
    "numpy scalars": (
        {"iterations": np.int64(4), "total_cost_usd": np.float32(0.5), "duration_seconds": np.float64(2.0)},
        {"iterations": 4, "cost_usd": 0.5, "duration_ms": 2000},
    ),
}


@pytest.mark.parametrize("case", sorted(ODD_RESULTS))
def test_task_metrics_never_raises_and_keeps_the_readable_keys(case):
    result, expected = ODD_RESULTS[case]
    metrics = payload.task_metrics(result)
    metrics["status"] = payload.status_of(None, metrics.get("status"))
    out = payload.clean("task", metrics)
    assert out == {"status": "success", **expected}
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("own", [np.array(["success"]), RaisingEq(), float("nan"), ["error"], None])
def test_status_of_never_raises(own):
    assert payload.status_of(None, own) == "success"


def test_interrupts_and_cancellations_are_interrupted():
    assert payload.status_of(KeyboardInterrupt()) == "interrupted"
    assert payload.status_of(asyncio.CancelledError()) == "interrupted"
    assert payload.status_of(ValueError()) == "error"


def test_clean_leaves_out_what_it_cannot_read():
    fields = {"model": BadStr("gpt"), "provider": "p", "iterations": BadInt(2), "cost_usd": BadFloat(0.25)}
    assert payload.clean("task", fields) == {"model": "gpt", "provider": "p", "iterations": 2, "cost_usd": 0.25}


def test_error_kind_never_raises():
    assert payload.error_kind(NamelessError()) is None
    assert payload.error_kind(ValueError("secret")) == "ValueError"


def test_track_reports_interrupted_for_keyboard_interrupt_and_cancellation(fresh_client, env, receiver):
    env.setenv("CLACKY_LICENSE_SERVER", receiver.url)
    for exc in (KeyboardInterrupt, asyncio.CancelledError):
        with pytest.raises(exc), clacky_ipy.track(model="m"):
            raise exc()
    receiver.wait()
    assert [(e["status"], e.get("error_kind")) for e in receiver.events("task")] == [("interrupted", None)] * 2


# -- in a real shell: the cell succeeds, the event arrives with the readable keys ------------
HOSTILE_NS = {
    "BadMapping": BadMapping,
    "HalfBadMapping": HalfBadMapping,
    "RaisingEq": RaisingEq,
    "BadInt": BadInt,
    "BadStr": BadStr,
    "BadFloat": BadFloat,
    "np": np,
}


@pytest.mark.parametrize("case", sorted(ODD_RESULTS))
def test_odd_results_under_clacky_cell(ip, receiver, case, capsys):
    load(ip, endpoint=receiver.url)
    ip.user_ns.update(HOSTILE_NS, odd=ODD_RESULTS[case][0])
    capsys.readouterr()
    result = run(ip, "%%clacky --result odd\n'done'")
    assert result.success, result.error_in_exec
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    receiver.wait()
    (event,) = receiver.events("task")
    expected = {k: v for k, v in ODD_RESULTS[case][1].items() if k != "duration_ms"}  # measured time wins
    assert {k: event[k] for k in expected} == expected
    assert event["trigger"] == "magic"


@pytest.mark.parametrize("case", sorted(ODD_RESULTS))
def test_odd_results_through_task(fresh_client, env, receiver, case):
    env.setenv("CLACKY_LICENSE_SERVER", receiver.url)
    assert clacky_ipy.task(ODD_RESULTS[case][0]) is True
    receiver.wait()
    (event,) = receiver.events("task")
    assert {k: event[k] for k in ODD_RESULTS[case][1]} == ODD_RESULTS[case][1]


# -- property: arbitrary nested results and values ---------------------------------------------
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary()
    | st.sampled_from(
        [RaisingEq(), BadInt(1), BadStr("s"), BadFloat(2.5), np.int64(3), np.float64(1.5), np.array([1]), BadMapping()]
    )
)
RESULT_KEYS = sorted({*payload.RESULT_KEYS, "duration_seconds", "cache_stats", *payload.CACHE_STATS_KEYS})
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(RESULT_KEYS) | st.text(), inner),
    max_leaves=12,
)
RESULTS = st.dictionaries(st.sampled_from(RESULT_KEYS), VALUES) | VALUES


def check_payloads(bodies):
    for body in bodies:
        data = json.loads(body)
        assert set(data) <= set(payload.KEYS["task"])
        for value in data.values():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert payload.INT64_MIN <= value <= payload.INT64_MAX


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(result=RESULTS, fields=st.dictionaries(st.sampled_from(sorted(payload.KEYS["task"])), VALUES, max_size=4))
def test_any_result_through_task_is_delivered_or_counted(fresh_client, env, receiver, result, fields):
    env.setenv("CLACKY_LICENSE_SERVER", receiver.url)
    before = receiver.server.log[:]
    counts = CLIENT.transport.sent + CLIENT.transport.failed + CLIENT.transport.dropped
    clacky_ipy.task(result, **fields)
    receiver.wait()
    new = [r for r, _ in receiver.server.log[len(before) :]]
    assert CLIENT.transport.sent + CLIENT.transport.failed + CLIENT.transport.dropped == counts + 1
    assert CLIENT.transport.failed == 0 and CLIENT.transport.last_error is None
    check_payloads([r.get_data() for r in new if r.path.endswith("/task")])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(result=RESULTS)
def test_any_result_under_clacky_cell_leaves_the_cell_alone(ip, receiver, result):
    if "clacky_ipy" not in ip.extension_manager.loaded:
        load(ip, endpoint=receiver.url)
        receiver.wait()
    ip.user_ns["odd"] = result
    sent = CLIENT.transport.sent
    outcome = run(ip, "%%clacky --result odd\nx = 1")
    assert outcome.success, outcome.error_in_exec
    receiver.wait()
    assert CLIENT.transport.sent == sent + 1 and CLIENT.transport.failed == 0
    check_payloads([r.get_data() for r in receiver.requests if r.path.endswith("/task")])
