"""Notebooks in a real Jupyter kernel (nbclient + ipykernel), events at a real local server."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import nbformat
import pytest
from conftest import PYTHON, subprocess_env
from nbclient.exceptions import CellExecutionError

from clacky_ipy import notice, payload
from clacky_ipy.demo import execute_notebook, kernel_env, notebooks_dir
from clacky_ipy.fakellm import FakeLLM

NOTEBOOKS = sorted(notebooks_dir().glob("*.ipynb"))
PRICED = importlib.util.find_spec("genai_prices") is not None  # the `prices` extra (Python 3.11+)

#: What each bundled notebook must deliver: (trigger, status, model) of its task events, in order.
EXPECTED = {
    "quickstart.ipynb": [
        ("magic", "success", "gpt-4o-mini"),  # the real OpenAI SDK call to the fake LLM server
        ("magic", "success", "claude-sonnet-4"),
        ("magic", "success", "gpt-5"),
        ("magic", "error", None),
        ("magic", "success", "claude-sonnet-4"),
        ("cell", "success", None),  # the cell after the one that turned track_cells on
        ("api", "success", "claude-haiku-4"),
    ],
    "configuration.ipynb": [("cell", "success", None)],
}


def outputs(nb, kind="stream"):
    return "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == kind)


def run_notebook(path, receiver, tmp_path):
    """Run `path` with nbclient, in a home where a person saw the notice before (an unattended
    run never consumes it: tests/test_notice_seen.py): its events carry launch_source nbclient."""
    notice.mark_seen(tmp_path / "home")
    with FakeLLM() as llm:
        env = kernel_env(receiver.url, tmp_path / "home", llm.openai_url)
        env["PYTHONPATH"] = subprocess_env()["PYTHONPATH"]  # the kernel imports this checkout, not another install
        try:
            return execute_notebook(path, env, tmp_path)
        finally:
            receiver.quiet()  # the kernel sends its last events once idle, a moment after the last cell


def test_every_notebook_is_covered():
    assert {p.name for p in NOTEBOOKS} == set(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_in_a_real_kernel(path, receiver, tmp_path):
    nb = run_notebook(path, receiver, tmp_path)
    startups = receiver.events("startup")
    tasks = receiver.events("task")
    assert len(startups) == 1 and startups[0]["frontend"] == "jupyter"
    assert {e["launch_source"] for e in receiver.events()} == {"nbclient"}
    assert [(t["trigger"], t["status"], t.get("model")) for t in tasks] == EXPECTED[path.name]
    if path.name == "quickstart.ipynb":  # the real SDK cell: what fakellm.USAGE says, as the gem counts it
        sdk = tasks[0]
        assert (sdk["provider"], sdk["prompt_tokens"], sdk["completion_tokens"]) == ("openai", 900, 50)
        assert (sdk["cache_read_tokens"], sdk["cache_creation_tokens"], sdk["cache_hit_requests"]) == (600, 100, 1)
        assert sdk.get("cost_usd") == (pytest.approx(0.000135) if PRICED else None)
    for request in receiver.requests:
        event = request.path.rsplit("/", 1)[-1]
        body = json.loads(request.get_data())
        assert set(body) <= set(payload.KEYS[event]), set(body) - set(payload.KEYS[event])
        assert "local-only" not in request.get_data(as_text=True)  # the agent's session id stays home
    assert "Traceback" not in outputs(nb) or path.name == "quickstart.ipynb"


def test_quickstart_failing_cell_reports_the_class_only(receiver, tmp_path):
    nb = run_notebook(notebooks_dir() / "quickstart.ipynb", receiver, tmp_path)
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == "error"]
    assert [e.ename for e in errors] == ["RuntimeError"]  # shown once, by IPython
    (failed,) = [t for t in receiver.events("task") if t["status"] == "error"]
    assert failed["error_kind"] == "RuntimeError"
    assert "Deploy to production" not in json.dumps(receiver.events())
    assert "Telemetry:    off (ClackyTelemetry.enabled is False)" in outputs(nb)


def test_configuration_notebook_shows_refusal_and_debug_lines(receiver, tmp_path):
    nb = run_notebook(notebooks_dir() / "configuration.ipynb", receiver, tmp_path)
    text = outputs(nb)
    assert "refused ClackyTelemetry.timeout" in text
    debug = [json.loads(line) for line in text.splitlines() if line.startswith('{"event"')]
    assert [d["event"] for d in debug] == ["task"] and debug[0]["payload"]["model"] == "claude-sonnet-4"
    assert "off (CLACKY_TELEMETRY=0 in the environment)" in text


def test_a_failing_clacky_cell_stops_run_all(receiver, tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("%load_ext clacky_ipy"),
            nbformat.v4.new_code_cell("%%clacky\nraise ValueError('token=abc')"),
            nbformat.v4.new_code_cell("print('never runs')"),
        ]
    )
    path = tmp_path / "failing.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(CellExecutionError) as info:
        run_notebook(path, receiver, tmp_path)
    assert "ValueError" in str(info.value)
    (task,) = receiver.events("task")
    assert (task["status"], task["error_kind"]) == ("error", "ValueError")


def test_interrupted_cell_in_a_kernel(receiver, tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("%load_ext clacky_ipy\n%config ClackyTelemetry.track_cells = True"),
            nbformat.v4.new_code_cell("%%clacky\nraise KeyboardInterrupt", metadata={"tags": ["raises-exception"]}),
            nbformat.v4.new_code_cell("await __import__('asyncio').sleep(0)"),  # an async cell is tracked too
        ]
    )
    path = tmp_path / "interrupt.ipynb"
    nbformat.write(nb, path)
    run_notebook(path, receiver, tmp_path)
    assert [(t["trigger"], t["status"]) for t in receiver.events("task")] == [
        ("magic", "interrupted"),
        ("cell", "success"),
    ]


def test_demo_command_runs_offline_and_exits_0(tmp_path):
    # a proxy in the user's shell (here a closed port) must not swallow the loopback events
    dead_proxy = "http://127.0.0.1:9"
    env = subprocess_env(CLACKY_HOME=str(tmp_path / "home"), HTTP_PROXY=dead_proxy, http_proxy=dead_proxy)
    kept = tmp_path / "kept.db"
    cmd = [PYTHON, "-m", "clacky_ipy", "demo", "--keep", str(kept)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Events received (8)" in out  # 1 startup, 7 tasks (see EXPECTED)
    (sdk_row,) = [line for line in out.splitlines() if "gpt-4o-mini" in line and line.startswith("  task ")]
    assert "900/50" in sdk_row  # the fake server's usage, as the gem counts it: cache writes out of the prompt
    if PRICED:
        assert "0.000135" in sdk_row.split()
    assert "unique_devices" in out and "agent_runs" in out and "statuses" in out
    assert not (tmp_path / "home").exists()  # the demo never touches the user's Clacky home
    # what a newcomer wants to see: the notice (the demo shows it: its notebook runs unattended),
    # the status, a payload as received, the opt-out
    assert "  | clacky_ipy: usage telemetry for OpenClacky is on" in out
    assert "  | Telemetry:    on" in out and "  | Device id:" in out
    head, body = out.split("One payload exactly as the collector received it", 1)[1].splitlines()[:2]
    assert "answered 201" in head
    sent = json.loads(body)
    assert sent["model"] == "claude-haiku-4" and sent["trigger"] == "api"
    assert "The last 2 cells sent nothing: they ran after `%config ClackyTelemetry.enabled = False` opted out." in out
    # --keep: the database stays for `report`
    report = subprocess.run([PYTHON, "-m", "clacky_ipy", "report", "--db", str(kept), "--format", "json"],
                            env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert report.returncode == 0 and json.loads(report.stdout)["tasks"] == 7


def test_demo_takes_a_bundled_notebooks_name_and_refuses_in_one_line(tmp_path):
    from clacky_ipy.demo import find_notebook

    assert (
        find_notebook("configuration")
        == find_notebook("configuration.ipynb")
        == notebooks_dir() / ("configuration.ipynb")
    )
    assert find_notebook(None).name == "quickstart.ipynb" and find_notebook("nope") is None
    env = subprocess_env(CLACKY_HOME=str(tmp_path / "home"))
    for args in (["--notebook", "nope"], ["--keep", str(tmp_path)], ["--keep", str(tmp_path / "no" / "x.db")]):
        proc = subprocess.run([PYTHON, "-m", "clacky_ipy", "demo", *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_demo_kernel_env_bypasses_proxies_for_loopback(monkeypatch, tmp_path):
    monkeypatch.setenv("NO_PROXY", "corp.example")
    env = kernel_env("http://127.0.0.1:1", tmp_path)
    assert env["NO_PROXY"].split(",")[:2] == ["corp.example", "127.0.0.1"] and "localhost" in env["no_proxy"]
