"""Every agent/LLM SDK installed here, as a user runs it: the real library calls the fake LLM server on
127.0.0.1, `%%clacky` wraps the cell in a real InteractiveShell, and the project's collector receives the
model, provider, tokens and cost one computes by hand from `fakellm.USAGE` and the price table."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
from conftest import load, run

import clacky_ipy
from clacky_ipy.collector import Collector
from clacky_ipy.fakellm import FakeLLM


def _missing(modules):
    missing = [m for m in modules if importlib.util.find_spec(m.split(".")[0]) is None]
    return f"not installed here: {', '.join(missing)} (the `agents` extra)" if missing else None


def installed(*modules):
    """Skip (with the reason) when an SDK is not importable, e.g. on Python 3.9."""
    reason = _missing(modules)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def need(*modules):
    """The same, inside a test."""
    reason = _missing(modules)
    if reason:
        pytest.skip(reason)


PRICES = importlib.util.find_spec("genai_prices") is not None
needs_prices = pytest.mark.skipif(not PRICES, reason="genai-prices (the `prices` extra) needs Python 3.11+")

# One call's numbers, by hand from fakellm.USAGE (prompt: cache reads in, cache writes out) and the
# price table (USD per million tokens).
ANTHROPIC = {  # input 120 + cache read 800; writes 150 (5 min) + 50 (1 h)
    "model": "claude-sonnet-4-5",
    "provider": "anthropic",
    "prompt_tokens": 920,
    "completion_tokens": 30,
    "cache_read_tokens": 800,
    "cache_creation_tokens": 200,
    "cache_total_requests": 1,
    "cache_hit_requests": 1,
    "iterations": 1,
    "cost_usd": (120 * 3 + 800 * 0.3 + 150 * 3.75 + 50 * 6 + 30 * 15) / 1e6,
    "cost_source": "price",
}
OPENAI = {  # prompt_tokens 1000 holds 600 cached and 100 written
    "model": "gpt-4o-mini",
    "provider": "openai",
    "prompt_tokens": 900,
    "completion_tokens": 50,
    "cache_read_tokens": 600,
    "cache_creation_tokens": 100,
    "cache_total_requests": 1,
    "cache_hit_requests": 1,
    "iterations": 1,
    "cost_usd": (300 * 0.15 + 600 * 0.075 + 100 * 0.15 + 50 * 0.6) / 1e6,
    "cost_source": "price",
}
GEMINI = {  # candidates 40 + thoughts 12
    "model": "gemini-2.5-flash",
    "provider": "google",
    "prompt_tokens": 900,
    "completion_tokens": 52,
    "cache_read_tokens": 400,
    "cache_total_requests": 1,
    "cache_hit_requests": 1,
    "iterations": 1,
    "cost_usd": (500 * 0.3 + 400 * 0.03 + 52 * 2.5) / 1e6,
    "cost_source": "price",
}
MISTRAL = {  # no cache details reported: no hit, as the gem counts it
    "model": "mistral-small-latest",
    "provider": "mistral",
    "prompt_tokens": 1000,
    "completion_tokens": 50,
    "cache_total_requests": 1,
    "cache_hit_requests": 0,
    "iterations": 1,
    "cost_usd": (1000 * 0.15 + 50 * 0.6) / 1e6,
    "cost_source": "price",
}
TOKEN_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "cache_total_requests",
    "cache_hit_requests",
    "iterations",
    "cost_usd",
)


def times(n, call, **over):
    """`n` calls of the same usage, summed, as an agent loop of `n` requests reports them."""
    out = {k: v * n if k in TOKEN_KEYS else v for k, v in call.items()}
    out.update(over)
    return out


def unpriced(expected):
    """Without the price table no cost is estimated."""
    if PRICES or expected.get("cost_source") != "price":
        return expected
    return {k: v for k, v in expected.items() if k not in ("cost_usd", "cost_source")}


@pytest.fixture(scope="module")
def llm():
    with FakeLLM() as server:
        yield server


@pytest.fixture
def collector(tmp_path):
    with Collector(tmp_path / "events.db", port=0) as c:
        yield c


@pytest.fixture
def shell(ip, llm, collector, monkeypatch):
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    load(ip, endpoint=collector.url)
    ip.user_ns.update(URL=llm.url, OPENAI_URL=llm.openai_url)
    return ip


def task_row(collector):
    assert clacky_ipy.flush(10)
    rows = [row for row in collector.store.rows() if row["kind"] == "task"]
    assert len(rows) == 1, rows
    return rows[0]


def check(row, expected):
    """Exactly the expected agent keys (cost to the cent's millionth), status success, a duration."""
    expected = unpriced(expected)
    got = {k: row[k] for k in (*TOKEN_KEYS, "model", "provider", "cost_source") if k in row}
    want = dict(expected)
    want.pop("status", None)
    assert got.keys() == want.keys(), (got, want)
    for key, value in want.items():
        assert got[key] == (pytest.approx(value, rel=1e-9) if key == "cost_usd" else value), key
    assert row["status"] == expected.get("status", "success") and row["trigger"] == "magic"
    assert row["duration_ms"] >= 0


#: An openai-agents agent with one tool (two requests), set up in a %%clacky cell; the run follows.
OPENAI_AGENT = """%%clacky
import openai
from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool

@function_tool
def weather() -> str:
    "The weather."
    return "sunny"

client = openai.AsyncOpenAI(base_url=OPENAI_URL, api_key="x")
model = OpenAIChatCompletionsModel(model="gpt-4o-mini", openai_client=client)
"""

#: A LangGraph ReAct agent on ChatAnthropic with one tool (two requests); the invocation follows.
LANGGRAPH_AGENT = """%%clacky
import warnings
from langchain_anthropic import ChatAnthropic
from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent

@tool
def weather() -> str:
    "The weather."
    return "sunny"

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # create_react_agent moved to langchain.agents, not installed here
    agent = create_react_agent(ChatAnthropic(model="claude-sonnet-4-5", base_url=URL, api_key="x"), [weather])
"""

ANTHROPIC_CALL = """%%clacky
import anthropic
client = anthropic.Anthropic(base_url=URL, api_key="x")
client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
"""

CASES = {
    "anthropic": (("anthropic",), ANTHROPIC_CALL, ANTHROPIC),
    "anthropic stream": (
        ("anthropic",),
        """%%clacky
import anthropic
client = anthropic.Anthropic(base_url=URL, api_key="x")
hi = [{"role": "user", "content": "hi"}]
with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=hi) as s:
    message = s.get_final_message()
message
""",
        ANTHROPIC,
    ),
    "openai chat": (
        ("openai",),
        """%%clacky
import openai
client = openai.OpenAI(base_url=OPENAI_URL, api_key="x")
client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
""",
        OPENAI,
    ),
    "openai chat stream with usage": (
        ("openai",),
        """%%clacky
import openai
client = openai.OpenAI(base_url=OPENAI_URL, api_key="x")
chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
              stream=True, stream_options={"include_usage": True}))
chunks
""",
        OPENAI,
    ),
    "openai chat stream without usage": (
        ("openai",),
        """%%clacky
import openai
client = openai.OpenAI(base_url=OPENAI_URL, api_key="x")
list(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
""",
        {"model": "gpt-4o-mini", "provider": "openai"},  # no token keys rather than zeros
    ),
    "openai responses": (
        ("openai",),
        """%%clacky
import openai
openai.OpenAI(base_url=OPENAI_URL, api_key="x").responses.create(model="gpt-4o-mini", input="hi")
""",
        OPENAI,
    ),
    "openai responses failed": (
        ("openai",),
        """%%clacky
import openai
openai.OpenAI(base_url=OPENAI_URL, api_key="x").responses.create(model="fail-model", input="hi")
""",
        {
            **{k: v for k, v in OPENAI.items() if k not in ("cost_usd", "cost_source")},
            "model": "fail-model",
            "status": "error",
        },
    ),
    "openai-agents": (
        ("agents", "openai"),
        OPENAI_AGENT + 'Runner.run_sync(Agent(name="a", model=model, tools=[weather]), "hi")\n',
        times(2, OPENAI),
    ),
    "openai-agents streamed without usage": (
        ("agents", "openai"),
        """%%clacky
import openai
from agents import Agent, OpenAIChatCompletionsModel, Runner

client = openai.AsyncOpenAI(base_url=OPENAI_URL, api_key="x")
model = OpenAIChatCompletionsModel(model="gpt-4o-mini", openai_client=client)
streamed = Runner.run_streamed(Agent(name="a", model=model), "hi")
async for event in streamed.stream_events():
    pass
streamed
""",
        # its usage says 0 tokens (the stream carried none): zeros that look real are no token keys
        {"model": "gpt-4o-mini", "provider": "openai", "iterations": 1},
    ),
    "openai-agents responses model": (
        ("agents", "openai"),
        """%%clacky
import openai
from agents import Agent, OpenAIResponsesModel, Runner

model = OpenAIResponsesModel(model="gpt-4o-mini", openai_client=openai.AsyncOpenAI(base_url=OPENAI_URL, api_key="x"))
Runner.run_sync(Agent(name="a", model=model), "hi")
""",
        OPENAI,
    ),
    "langchain-anthropic AIMessage": (
        ("langchain_anthropic",),
        """%%clacky
from langchain_anthropic import ChatAnthropic
ChatAnthropic(model="claude-sonnet-4-5", base_url=URL, api_key="x").invoke("hi")
""",
        ANTHROPIC,
    ),
    "langchain-openai AIMessage": (
        ("langchain_openai",),
        """%%clacky
from langchain_openai import ChatOpenAI
ChatOpenAI(model="gpt-4o-mini", base_url=OPENAI_URL, api_key="x").invoke("hi")
""",
        OPENAI,
    ),
    "langgraph agent state": (
        ("langgraph", "langchain_anthropic"),
        LANGGRAPH_AGENT + 'agent.invoke({"messages": [("user", "hi")]})\n',
        times(2, ANTHROPIC),
    ),
    "pydantic-ai": (
        ("pydantic_ai",),
        """%%clacky
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

agent = Agent(OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(base_url=OPENAI_URL, api_key="x")))

@agent.tool_plain
def weather() -> str:
    return "sunny"

agent.run_sync("hi")
""",
        times(2, OPENAI, cost_source="api"),  # pydantic-ai's own usage.cost
    ),
    "google-genai": (
        ("google.genai",),
        """%%clacky
from google import genai
from google.genai import types
client = genai.Client(api_key="x", http_options=types.HttpOptions(base_url=URL))
client.models.generate_content(model="gemini-2.5-flash", contents="hi")
""",
        GEMINI,
    ),
    "mistralai": (
        ("mistralai",),
        """%%clacky
from mistralai.client import Mistral
hi = [{"role": "user", "content": "hi"}]
Mistral(api_key="x", server_url=URL).chat.complete(model="mistral-small-latest", messages=hi)
""",
        MISTRAL,
    ),
    "smolagents": (
        ("smolagents", "openai"),
        """%%clacky --provider openai
from smolagents import OpenAIModel, ToolCallingAgent
model = OpenAIModel(model_id="gpt-4o-mini", api_base=OPENAI_URL, api_key="x")
ToolCallingAgent(tools=[], model=model, verbosity_level=0).run("hi", return_full_result=True)
""",
        # smolagents keeps input and output only: no cache split, so no hit and the whole input is the prompt
        {**MISTRAL, "model": "gpt-4o-mini", "provider": "openai", "cost_usd": (1000 * 0.15 + 50 * 0.6) / 1e6},
    ),
    "a list of results from two SDKs": (
        ("anthropic", "openai"),
        """%%clacky
import anthropic, openai
first = anthropic.Anthropic(base_url=URL, api_key="x").messages.create(
    model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
second = openai.OpenAI(base_url=OPENAI_URL, api_key="x").chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
[first, second]
""",
        {
            **{k: ANTHROPIC[k] + OPENAI[k] for k in TOKEN_KEYS if k in OPENAI},
            "model": "gpt-4o-mini",
            "provider": "openai",
            "cost_source": "price",
        },
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_clacky_cell_sends_what_the_sdk_result_says(shell, collector, case):
    modules, cell, expected = CASES[case]
    need(*modules)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the SDK's own call may warn; the telemetry must not
        warnings.filterwarnings("ignore", module=r"(?!clacky_ipy)")
        result = run(shell, cell)
    assert result.success, result.error_in_exec
    row = task_row(collector)
    check(row, expected)
    if case == "openai responses failed":
        assert row["error_kind"] == "server_error"


@installed("openai")
def test_track_adds_each_call_and_sums_them(shell, collector, llm):
    run(shell, "import clacky_ipy, openai\nclient = openai.OpenAI(base_url=OPENAI_URL, api_key='x')")
    cell = """
with clacky_ipy.track() as t:
    for call in range(3):  # not `_`: assigning it stops IPython updating `_` in this shared shell
        t.add(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]))
    t.add(client.responses.create(model="gpt-4o", input="hi"))
"""
    assert run(shell, cell).success
    row = task_row(collector)
    assert row["trigger"] == "api" and row["status"] == "success"
    assert row["model"] == "gpt-4o" and row["provider"] == "openai"  # the last call's
    assert row["prompt_tokens"] == 4 * 900 and row["completion_tokens"] == 4 * 50
    assert row["cache_read_tokens"] == 4 * 600 and row["cache_creation_tokens"] == 4 * 100
    assert row["cache_total_requests"] == 4 and row["cache_hit_requests"] == 4 and row["iterations"] == 4
    if PRICES:
        gpt_4o = (300 * 2.5 + 600 * 1.25 + 100 * 2.5 + 50 * 10) / 1e6
        assert row["cost_usd"] == pytest.approx(3 * OPENAI["cost_usd"] + gpt_4o) and row["cost_source"] == "price"


@installed("claude_agent_sdk")
def test_claude_agent_sdk_through_its_bundled_cli(shell, collector, llm, tmp_path):
    """query() runs the real bundled Claude Code CLI against the fake server: two turns (a tool call)."""
    shell.user_ns["HOME"] = str(tmp_path)
    cell = """%%clacky
from claude_agent_sdk import ClaudeAgentOptions, query
env = {"ANTHROPIC_BASE_URL": URL, "ANTHROPIC_API_KEY": "x", "HOME": HOME}
env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
options = ClaudeAgentOptions(model="claude-sonnet-4-5", max_turns=5, env=env, cwd=HOME)
messages = [m async for m in query(prompt="hi", options=options)]
messages
"""
    result = run(shell, cell)
    if not result.success and "CLINotFound" in type(result.error_in_exec).__name__:
        pytest.skip("claude-agent-sdk's bundled CLI is not runnable here")
    assert result.success, result.error_in_exec
    row = task_row(collector)
    # The CLI prices its own calls (the 1-hour cache writes at their own rate): cost_source api.
    check(row, times(2, ANTHROPIC, cost_usd=2 * ANTHROPIC["cost_usd"], cost_source="api"))
