"""Async agents in a real Jupyter kernel: `%%clacky` around a top-level `await` of anthropic,
openai-agents and LangGraph calling the fake LLM server; the collector gets what their result says."""

from __future__ import annotations

import pytest
from conftest import subprocess_env
from test_agent_sdks import ANTHROPIC, LANGGRAPH_AGENT, OPENAI, OPENAI_AGENT, check, need, times
from test_cell_magic import Kernel

from clacky_ipy.collector import Collector
from clacky_ipy.demo import kernel_env
from clacky_ipy.fakellm import FakeLLM


@pytest.fixture
def setup(tmp_path):
    with FakeLLM() as llm, Collector(tmp_path / "events.db", port=0) as collector:
        env = kernel_env(collector.url, tmp_path / "home")
        env.update(PYTHONPATH=subprocess_env()["PYTHONPATH"], OPENAI_AGENTS_DISABLE_TRACING="1")
        kernel = Kernel(env, tmp_path)
        try:
            reply, _ = kernel.execute(f"%load_ext clacky_ipy\nURL = {llm.url!r}\nOPENAI_URL = {llm.openai_url!r}")
            assert reply["status"] == "ok", reply
            yield kernel, collector
        finally:
            kernel.close()


def task_row(kernel, collector):
    reply, _ = kernel.execute("%clacky_telemetry flush")
    assert reply["status"] == "ok"
    rows = [row for row in collector.store.rows() if row["kind"] == "task"]
    assert len(rows) == 1, rows
    return rows[0]


CELLS = {
    "anthropic": (
        ("anthropic",),
        """%%clacky
import anthropic
client = anthropic.AsyncAnthropic(base_url=URL, api_key="x")
await client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
""",
        ANTHROPIC,
    ),
    "openai-agents": (
        ("agents", "openai"),
        OPENAI_AGENT + 'await Runner.run(Agent(name="a", model=model, tools=[weather]), "hi")\n',
        times(2, OPENAI),
    ),
    "langgraph": (
        ("langgraph", "langchain_anthropic"),
        LANGGRAPH_AGENT + 'state = await agent.ainvoke({"messages": [("user", "hi")]})\nstate\n',
        times(2, ANTHROPIC),
    ),
}


@pytest.mark.parametrize("case", list(CELLS))
def test_async_agent_cell_in_a_kernel(setup, case):
    modules, cell, expected = CELLS[case]
    need(*modules)
    kernel, collector = setup
    reply, outputs = kernel.execute(cell, timeout=120)
    assert reply["status"] == "ok", (reply, outputs)
    assert not [o for kind, o in outputs if kind == "stream" and o["name"] == "stderr"], outputs
    check(task_row(kernel, collector), expected)
