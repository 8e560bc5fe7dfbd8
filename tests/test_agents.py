"""Reading results by shape (`clacky_ipy.agents`): the SDKs' real result classes built as their parsers
build them, the meanings of each key, sums, costs, and hostile shapes that must never raise."""

from __future__ import annotations

import decimal
import json
import subprocess
import threading

import pytest
from conftest import PYTHON, load, run, subprocess_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_agent_sdks import ANTHROPIC, installed, needs_prices

import clacky_ipy
from clacky_ipy import agents, payload
from clacky_ipy.fakellm import USAGE

GEM_RESULT = {
    "status": "success",
    "model": "claude-sonnet-4",
    "provider": "anthropic",
    "iterations": 7,
    "duration_seconds": 12.5,
    "total_cost_usd": 0.0123,
    "cost_source": "api",
    "cache_stats": {"prompt_tokens": 1500, "completion_tokens": 340, "total_requests": 7, "cache_hit_requests": 5},
    "history": ["never sent"],
}


def metrics(result, **fields):
    return agents.task_metrics(result, fields)


def test_the_gem_shaped_mapping_reads_exactly_as_before():
    assert metrics(GEM_RESULT) == payload.task_metrics(GEM_RESULT)
    assert metrics(GEM_RESULT, model="other", iterations=1)["model"] == "claude-sonnet-4"  # the result wins


def test_nothing_to_read_gives_the_fields_only():
    for value in (None, 3, "text", b"x", [], (), object(), [1, "a", None]):
        assert metrics(value, model="m") == {"model": "m"}


# -- claude-agent-sdk: its real dataclasses, as its message parser builds them -------------------------------
def claude_messages(is_error=False, subtype="success"):
    sdk = pytest.importorskip("claude_agent_sdk", reason="claude-agent-sdk is not installed (the `agents` extra)")
    init = sdk.SystemMessage(subtype="init", data={"type": "system", "subtype": "init", "model": "claude-opus-4-5"})
    usage = {k: v for k, v in USAGE["anthropic"].items()}
    one = sdk.AssistantMessage(content=[sdk.TextBlock(text="Done.")], model="claude-sonnet-4-5", usage=usage)
    one.message_id = "msg_1"
    result = sdk.ResultMessage(
        subtype=subtype,
        duration_ms=1234,
        duration_api_ms=1000,
        is_error=is_error,
        num_turns=1,
        session_id="never sent",
        total_cost_usd=0.25,
        usage=usage,
        result="never sent",
        model_usage={
            "claude-sonnet-4-5": {"costUSD": 0.2, "provider": "firstParty"},
            "claude-haiku-4-5": {"costUSD": 0.05, "provider": "bedrock"},
        },
        api_error_status=500 if is_error and subtype == "success" else None,
    )
    return init, one, result


def test_claude_result_message_alone():
    *_, result = claude_messages()
    assert metrics(result) == {
        **{k: v for k, v in ANTHROPIC.items() if k not in ("cost_usd", "cost_source")},
        "cost_usd": 0.25,
        "cost_source": "api",
        "duration_ms": 1234,
    }


def test_claude_message_list_takes_the_last_result_and_the_assistants_model():
    init, one, result = claude_messages()
    out = metrics([init, one, result])
    assert out["model"] == "claude-sonnet-4-5" and out["provider"] == "anthropic" and out["cost_usd"] == 0.25
    assert metrics((init, result))["model"] == "claude-opus-4-5"  # the init SystemMessage's, without an assistant
    assert metrics([init, one]) == {}  # no ResultMessage yet: nothing complete to send


@pytest.mark.parametrize(
    ("subtype", "kind"),
    [("success", "api_error"), ("error_max_turns", "error_max_turns"), ("error during", "api_error")],
)
def test_claude_is_error_makes_an_error_with_a_short_kind(subtype, kind):
    *_, result = claude_messages(is_error=True, subtype=subtype)
    out = metrics(result)
    assert out["status"] == "error" and out["error_kind"] == kind


# -- the other shapes ------------------------------------------------------------------------------------------
@installed("openai")
def test_litellm_shape_reports_its_cost_and_provider():
    """litellm (not installable here) returns OpenAI's shape plus its own fields: built on openai's real class."""
    from openai.types.chat import ChatCompletion

    usage = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}
    usage.update(cache_read_input_tokens=600, cache_creation_input_tokens=100)
    body = {"id": "x", "object": "chat.completion", "created": 1, "model": "claude-3-5-haiku", "choices": []}
    response = ChatCompletion.model_validate({**body, "usage": usage})
    object.__setattr__(response, "_hidden_params", {"response_cost": 0.004, "custom_llm_provider": "anthropic"})
    out = metrics(response, provider="user-said")
    assert out["provider"] == "anthropic"  # what the SDK says wins over a --provider
    assert (out["prompt_tokens"], out["cache_read_tokens"], out["cache_creation_tokens"]) == (900, 600, 100)
    assert (out["cost_usd"], out["cost_source"]) == (0.004, "api")


@installed("openai")
def test_a_provider_guessed_from_the_library_loses_to_the_users():
    from openai.types.chat import ChatCompletion

    response = ChatCompletion.model_validate(
        {"id": "x", "object": "chat.completion", "created": 1, "model": "deepseek-chat", "choices": []}
    )
    assert metrics(response)["provider"] == "openai"
    assert metrics(response, provider="deepseek")["provider"] == "deepseek"
    assert set(metrics(response)) == {"model", "provider", "iterations"}  # no usage: no token keys, no zeros


@installed("smolagents")
def test_smolagents_max_steps_error():
    from smolagents.agents import RunResult
    from smolagents.monitoring import Timing, TokenUsage

    step = {"step_number": 1, "token_usage": {"input_tokens": 5, "output_tokens": 1}}
    result = RunResult(state="max_steps_error", steps=[{"task": "x"}, step, step], token_usage=TokenUsage(10, 2))
    result.timing = Timing(start_time=0.0)
    out = metrics(result)
    assert (out["status"], out["error_kind"]) == ("error", "max_steps_error")
    assert (out["prompt_tokens"], out["completion_tokens"], out["iterations"]) == (10, 2, 2)


@installed("langchain_core")
def test_langchain_messages_sum_their_ai_messages_only():
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    def ai(provider):
        usage = {"input_tokens": 1120, "output_tokens": 30, "total_tokens": 1150}
        usage["input_token_details"] = {"cache_read": 800, "cache_creation": 0, "ephemeral_5m_input_tokens": 200}
        meta = {"model_name": "claude-sonnet-4-5", "model_provider": provider}
        return AIMessage(content="x", usage_metadata=usage, response_metadata=meta)

    state = {"messages": [HumanMessage("hi"), ai("anthropic"), ToolMessage("t", tool_call_id="1"), ai("Anthropic")]}
    out = metrics(state)
    assert (out["prompt_tokens"], out["cache_read_tokens"], out["cache_creation_tokens"]) == (1840, 1600, 400)
    assert (out["iterations"], out["cache_total_requests"], out["cache_hit_requests"]) == (2, 2, 2)
    assert out["provider"] == "anthropic"  # lower-case


def test_crewai_shaped_token_usage():
    """crewai is not installed here (too large): its `CrewOutput.token_usage` fields, on a plain object."""

    class UsageMetrics:
        prompt_tokens, completion_tokens, cached_prompt_tokens, successful_requests = 1000, 50, 600, 2

    class CrewOutput:
        token_usage = UsageMetrics()
        tasks_output = ()

    out = metrics(CrewOutput(), model="gpt-4o-mini")
    assert (out["prompt_tokens"], out["cache_read_tokens"], out["iterations"]) == (1000, 600, 2)
    assert "cache_hit_requests" not in out  # two requests, one summed cache read: which hit is not known


def test_a_pydantic_ai_style_usage_method_and_a_decimal_cost():
    class RunUsage:
        requests, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens = 1, 1000, 50, 600, 100
        cost = decimal.Decimal("0.0012")

    class Response:
        kind, model_name, provider_name = "response", "gpt-4o-mini", "OpenAI"
        usage = RunUsage()

    class OldRunResult:  # pydantic-ai v1: usage() a method
        def usage(self):
            return RunUsage()

        def all_messages(self):
            return [Response()]

    out = metrics(OldRunResult())
    assert (out["prompt_tokens"], out["cost_usd"], out["cost_source"]) == (900, 0.0012, "api")
    assert out["provider"] == "openai"
    assert (out["cache_total_requests"], out["cache_hit_requests"]) == (1, 1)


def test_sums_over_a_list_and_runs():
    gem = {"model": "a", "cache_stats": {"prompt_tokens": 10, "completion_tokens": 1}, "total_cost_usd": 0.5}
    gem["cost_source"] = "api"
    two = metrics(agents.Runs([gem, {**gem, "model": "b"}]))
    assert (two["model"], two["prompt_tokens"], two["completion_tokens"], two["cost_usd"]) == ("b", 20, 2, 1.0)
    assert metrics([gem, {**gem, "model": "b"}]) == two
    assert metrics([[gem], [gem]])["prompt_tokens"] == 20  # nested lists too
    failing = {**gem, "status": "error"}
    assert metrics([gem, failing])["status"] == "error"


def test_a_list_is_read_up_to_its_last_items_only():
    gem = {"cache_stats": {"prompt_tokens": 1}}
    assert metrics([gem] * (agents.MAX_ITEMS + 50))["prompt_tokens"] == agents.MAX_ITEMS


# -- cost -------------------------------------------------------------------------------------------------------
@needs_prices
def test_price_estimate_uses_the_bundled_table_and_never_the_network():
    code = """
import socket, threading
def refuse(*a, **k):
    raise OSError("no network")
socket.socket.connect = refuse
socket.create_connection = refuse
from clacky_ipy import agents
run = agents.Run()
run.prompt, run.completion, run.read, run.write = 900, 50, 600, 100
print(agents.estimate("gpt-4o-mini", "openai", run))
print(agents.estimate("no-such-model-xyz", None, run))
print(sorted(t.name for t in threading.enumerate()))
"""
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # no warning
    price, unknown, threads = out.stdout.splitlines()
    assert float(price) == pytest.approx((300 * 0.15 + 600 * 0.075 + 100 * 0.15 + 50 * 0.6) / 1e6)
    assert unknown == "None" and "genai_prices:update" not in threads


def test_no_price_table_no_cost(monkeypatch):
    monkeypatch.setattr(agents, "_PRICES", False)  # as without the `prices` extra
    run = agents.Run()
    run.prompt, run.completion = 10, 1
    assert agents.estimate("gpt-4o-mini", "openai", run) is None


# -- hostile shapes ---------------------------------------------------------------------------------------------
class Raises:
    """Every attribute read raises (a proxy whose backend is gone)."""

    def __getattribute__(self, name):
        if name.startswith("__"):  # type(), repr() and hypothesis's own printing still work
            return object.__getattribute__(self, name)
        raise RuntimeError("gone")


class Boom(BaseException):
    pass


class Ambiguous:
    """Like a numpy array or a pandas Series: == gives an object whose truth raises."""

    def __eq__(self, other):
        return self

    def __bool__(self):
        raise ValueError("ambiguous")

    __hash__ = object.__hash__


def test_values_compared_as_strings_only_keep_the_rest_readable():
    class Response:
        object = Ambiguous()
        status = Ambiguous()
        model = "gpt-4o-mini"
        usage = {"prompt_tokens": 10, "completion_tokens": 2}

    out = metrics(Response())
    assert (out["model"], out["prompt_tokens"], out["completion_tokens"]) == ("gpt-4o-mini", 10, 2)


NAMES = [
    "usage", "model", "input_tokens", "output_tokens", "prompt_tokens", "completion_tokens", "cache_read_input_tokens",
    "cache_creation_input_tokens", "cache_creation", "prompt_tokens_details", "input_tokens_details", "cached_tokens",
    "cache_write_tokens", "num_turns", "is_error", "session_id", "total_cost_usd", "model_usage", "subtype",
    "context_wrapper", "last_agent", "requests", "request_usage_entries", "all_messages", "token_usage", "steps",
    "state", "usage_metadata", "response_metadata", "model_name", "model_provider", "prompt_token_count",
    "candidates_token_count", "thoughts_token_count", "cached_content_token_count", "model_version", "object",
    "status", "error", "code", "_hidden_params", "response_cost", "custom_llm_provider", "messages", "cost",
    "cache_read_tokens", "provider_name", "kind", "type", "parent_tool_use_id", "content", "data", "message_id",
]  # fmt: skip

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.sampled_from(["chat.completion", "chat.completion.chunk", "response", "failed", "init", "ai", "response"]),
    st.builds(Raises),
    st.builds(Ambiguous),
)


def _shape(children):
    def build(pairs, as_mapping, raising):
        if as_mapping:
            return dict(pairs)
        attrs = dict(pairs)
        if raising:
            attrs[raising] = property(lambda self: (_ for _ in ()).throw(Boom()))
        return type("Shape", (), attrs)()

    pairs = st.lists(st.tuples(st.sampled_from(NAMES), children), max_size=6)
    return st.builds(build, pairs, st.booleans(), st.one_of(st.none(), st.sampled_from(NAMES)))


shapes = st.recursive(
    leaves, lambda children: st.one_of(_shape(children), st.lists(children, max_size=4)), max_leaves=25
)


L = "leaf"
#: Each SDK's result skeleton (see agents.py), every leaf drawn from `leaves`, each level an object or a mapping.
SKELETONS = [
    {"model": L, "usage": {"input_tokens": L, "output_tokens": L, "cache_read_input_tokens": L,
                           "cache_creation_input_tokens": L, "cache_creation": {"ephemeral_1h_input_tokens": L}}},
    {"object": L, "model": L, "status": L, "error": {"code": L},
     "usage": {"prompt_tokens": L, "completion_tokens": L, "prompt_tokens_details": {"cached_tokens": L,
               "cache_write_tokens": L}, "input_tokens": L, "input_tokens_details": {"cached_tokens": L}},
     "_hidden_params": {"response_cost": L, "custom_llm_provider": L}},
    {"num_turns": L, "is_error": L, "session_id": L, "subtype": L, "total_cost_usd": L, "duration_ms": L,
     "usage": {"input_tokens": L, "cache_read_input_tokens": L}, "model_usage": {"m": {"costUSD": L, "provider": L}}},
    {"context_wrapper": {"usage": {"requests": L, "input_tokens": L, "output_tokens": L,
                                   "request_usage_entries": [{"input_tokens_details": {"cached_tokens": L}}]}},
     "last_agent": {"model": L}},
    {"messages": [{"type": L, "usage_metadata": {"input_tokens": L, "output_tokens": L,
                   "input_token_details": {"cache_read": L, "cache_creation": L, "ephemeral_1h_input_tokens": L}},
                   "response_metadata": {"model_name": L, "model_provider": L}}]},
    {"usage_metadata": {"prompt_token_count": L, "candidates_token_count": L, "thoughts_token_count": L,
                        "cached_content_token_count": L}, "model_version": L},
    {"token_usage": {"input_tokens": L, "output_tokens": L, "prompt_tokens": L, "successful_requests": L},
     "steps": [{"token_usage": L, "model_output_message": {"raw": {"model": L}}}], "state": L},
]  # fmt: skip


def _skeleton(node):
    if node == L:
        return leaves
    if isinstance(node, list):
        return st.lists(_skeleton(node[0]), max_size=3)
    fields = st.fixed_dictionaries({}, optional={k: _skeleton(v) for k, v in node.items()})
    return st.builds(lambda pairs, as_mapping: pairs if as_mapping else type("S", (), pairs)(), fields, st.booleans())


sdk_shapes = st.one_of(*map(_skeleton, SKELETONS))
sdk_shapes = st.one_of(sdk_shapes, st.lists(sdk_shapes, max_size=3), st.builds(agents.Runs, st.lists(sdk_shapes)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(result=st.one_of(shapes, sdk_shapes))
def test_any_shape_never_raises_and_stays_in_the_vocabulary(result):
    out = in_a_thread(lambda: agents.task_metrics(result))  # the worker's thread, as in the client
    assert set(out) <= set(payload.KEYS["task"])
    dropped = set(out) - set(payload.clean("task", out))
    assert all(out[key] == "" for key in dropped), out  # every value is of its key's kind and range (the gem's
    # mapping may hold an empty string, which clean() then leaves out as no value)
    json.dumps(out, allow_nan=False)
    if "error_kind" in out:
        assert out["status"] == "error"
    assert out.get("cost_source") in (None, "api", "price")


def in_a_thread(fn):
    box = []
    thread = threading.Thread(target=lambda: box.append(fn()))
    thread.start()
    thread.join(30)
    assert box, "raised or hung"
    return box[0]


def test_a_hostile_result_in_a_clacky_cell_still_sends_its_event(ip, receiver, capfd):
    load(ip, endpoint=receiver.url)
    ip.user_ns["Raises"] = Raises
    result = run(ip, "%%clacky --model m\n[Raises(), {'messages': [Raises()]}, Raises()]")
    assert result.success
    receiver.wait()
    (event,) = receiver.events("task")
    assert event["model"] == "m" and event["status"] == "success"
    assert "Traceback" not in capfd.readouterr().err


def test_tracker_add_keeps_only_the_reference(ip, receiver):
    """The user's thread appends; the worker reads (so a result mutated before the flush is read as it ends)."""
    load(ip, endpoint=receiver.url)
    gem = {"model": "a", "cache_stats": {"prompt_tokens": 1}}
    with clacky_ipy.track(model="fill") as t:
        assert t.add(gem) is gem
        t.add(gem)
        t.result = {"cache_stats": {"prompt_tokens": 5}}
    receiver.wait()
    (event,) = receiver.events("task")
    assert event["prompt_tokens"] == 7 and event["model"] == "a" and event["trigger"] == "api"


@needs_prices
def test_cost_is_estimated_with_the_users_model_when_the_result_has_none():
    run = {"messages": []}
    assert metrics(run, model="m") == {"model": "m"}
    usage = {"input_tokens": 1000, "output_tokens": 50}

    class Message:  # a response without its model name
        pass

    message = Message()
    message.usage = usage
    out = metrics(message, model="gpt-4o-mini", provider="openai")
    assert out["cost_source"] == "price" and out["cost_usd"] == pytest.approx((1000 * 0.15 + 50 * 0.6) / 1e6)
