"""The extension in a real InteractiveShell, delivering to a real local HTTP server."""

from __future__ import annotations

import json
import re

import pytest
from conftest import CLIENT, free_port, load, run

from clacky_ipy import payload
from clacky_ipy.config import NOTICE_FILE, OFF_FILE, ClackyTelemetry
from clacky_ipy.identity import computed_device_id, detect_ci

AGENT = """\
def agent_run(prompt):
    return {"status": "success", "model": "claude-sonnet-4", "provider": "anthropic",
            "iterations": 4, "duration_seconds": 1.5, "total_cost_usd": 0.02, "cost_source": "api",
            "cache_stats": {"prompt_tokens": 100, "completion_tokens": 20,
                            "cache_creation_input_tokens": 5, "cache_read_input_tokens": 60,
                            "total_requests": 4, "cache_hit_requests": 3},
            "history": [prompt], "session_id": "s-1"}
"""


def ours(shell, event):
    return [cb for cb in shell.events.callbacks[event] if getattr(cb, "__module__", "").startswith("clacky_ipy")]


def our_configurables(shell):
    return [c for c in shell.configurables if isinstance(c, ClackyTelemetry)]


# -- loading --------------------------------------------------------------------------
def test_load_sends_one_startup_event_with_every_key(ip, receiver):
    load(ip, endpoint=receiver.url)
    receiver.wait()
    (startup,) = receiver.events("startup")
    assert set(startup) == {
        "device_id", "version", "os", "python_version", "ipython_version", "launch_source", "frontend", "ci",
    } | ({"container"} if "container" in startup else set())  # fmt: skip
    assert startup["device_id"] == computed_device_id()
    assert startup["version"] == __import__("clacky_ipy").__version__
    assert startup["frontend"] == "terminal"
    assert startup["launch_source"] == "cli"
    assert startup["ci"] is detect_ci()
    request = receiver.requests[0]
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"clacky-ipy/{startup['version']}"
    assert receiver.events("task") == []  # the loading cell is never tracked


def test_startup_reads_brand_and_device_from_brand_yml(ip, receiver, home):
    home.mkdir(parents=True)
    (home / "brand.yml").write_text("device_id: feedface\nproduct_name: Acme\npackage_name: acme-agent\n")
    before = (home / "brand.yml").read_bytes()
    load(ip, endpoint=receiver.url)
    receiver.wait()
    (startup,) = receiver.events("startup")
    assert (startup["device_id"], startup["brand"]) == ("feedface", "acme-agent")
    assert (home / "brand.yml").read_bytes() == before  # never written


def test_launched_by_installer(ip, receiver, env):
    env.setenv("CLACKY_LAUNCHED_BY", "installer")
    load(ip, endpoint=receiver.url)
    receiver.wait()
    assert receiver.events("startup")[0]["launch_source"] == "installer"


def test_reload_leaves_one_set_and_sends_no_second_startup(ip, receiver):
    load(ip, endpoint=receiver.url, track_cells=True)
    for _ in range(3):
        assert run(ip, "%reload_ext clacky_ipy").success
    assert len(ours(ip, "pre_run_cell")) == len(ours(ip, "post_run_cell")) == 1
    assert len(our_configurables(ip)) == 1
    assert ip.find_cell_magic("clacky") is not None
    run(ip, "x = 1")
    receiver.wait()
    assert len(receiver.events("startup")) == 1
    assert [e["trigger"] for e in receiver.events("task")] == ["cell"]  # reload cells are not tracked


def test_unload_removes_everything_and_tracks_nothing_after(ip, receiver):
    load(ip, endpoint=receiver.url, track_cells=True)
    run(ip, "x = 1")
    run(ip, "%unload_ext clacky_ipy")
    assert ours(ip, "pre_run_cell") == ours(ip, "post_run_cell") == []
    assert our_configurables(ip) == []
    assert ip.find_cell_magic("clacky") is None and ip.find_line_magic("clacky_telemetry") is None
    run(ip, "y = 2")
    assert not run(ip, "%%clacky\nz = 3").success  # the magic is gone
    receiver.wait()
    assert len(receiver.events("task")) == 1  # only `x = 1`


def test_config_lists_the_configurable_with_help(ip, capsys):
    load(ip)
    capsys.readouterr()
    run(ip, "%config")
    assert "ClackyTelemetry" in capsys.readouterr().out
    run(ip, "%config ClackyTelemetry")
    out = capsys.readouterr().out
    for trait in ("enabled", "endpoint", "fallback_endpoints", "track_cells", "timeout", "shutdown_timeout",
                  "max_queue_size", "debug"):  # fmt: skip
        assert f"ClackyTelemetry.{trait}" in out


def test_loading_at_startup_is_the_same_as_in_a_cell(ip, receiver):
    """`--ext` and c.InteractiveShellApp.extensions load outside any cell."""
    ip.config.ClackyTelemetry.endpoint = receiver.url
    ip.config.ClackyTelemetry.track_cells = True
    ip.extension_manager.load_extension("clacky_ipy")
    run(ip, "x = 1")
    receiver.wait()
    assert len(receiver.events("startup")) == 1
    assert [e["trigger"] for e in receiver.events("task")] == ["cell"]


def test_the_hooks_never_print_a_traceback(ip, receiver, capsys):
    load(ip, endpoint=receiver.url, track_cells=True)
    magics = ours(ip, "post_run_cell")[0].__self__
    magics._frames.append(("not an ExecutionInfo", "not a float"))
    run(ip, "x = 1")
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err and "Error" not in out.err


# -- track_cells ------------------------------------------------------------------------
def test_track_cells_sends_one_event_per_top_level_cell(ip, receiver):
    load(ip, endpoint=receiver.url, track_cells=True)
    run(ip, "x = 1")
    run(ip, "1/0")
    run(ip, "def f(:")
    run(ip, "%load_ext clacky_ipy")  # already loaded: still a load cell, not tracked
    receiver.wait()
    events = receiver.events("task")
    assert [(e["trigger"], e["status"], e.get("error_kind")) for e in events] == [
        ("cell", "success", None),
        ("cell", "error", "ZeroDivisionError"),
        ("cell", "error", "SyntaxError"),
    ]
    assert all(isinstance(e["duration_ms"], int) and e["duration_ms"] >= 0 for e in events)


def test_track_cells_off_by_default_and_switchable_live(ip, receiver):
    load(ip, endpoint=receiver.url)
    run(ip, "x = 1")
    run(ip, "%config ClackyTelemetry.track_cells = True")
    run(ip, "y = 2")
    run(ip, "%config ClackyTelemetry.track_cells = False")
    run(ip, "z = 3")
    receiver.wait()
    # only y = 2: the cells that turn tracking on and off are not counted
    assert len(receiver.events("task")) == 1


def clacky_callbacks(ip):
    """The clacky_ipy callbacks registered on the shell's cell events."""
    return [
        (event, fn.__name__)
        for event in ("pre_run_cell", "post_run_cell")
        for fn in ip.events.callbacks[event]
        if type(getattr(fn, "__self__", None)).__module__ == "clacky_ipy.magics"
    ]


def test_hooks_are_registered_only_while_they_can_send(ip, receiver, home):
    (home / "ipy-telemetry-notice-shown").parent.mkdir(parents=True, exist_ok=True)
    (home / "ipy-telemetry-notice-shown").write_text("shown")
    cell_hooks = [("pre_run_cell", "pre_run_cell"), ("post_run_cell", "post_run_cell")]
    load(ip, endpoint=receiver.url)
    assert clacky_callbacks(ip) == []  # track_cells off: a cell costs nothing
    run(ip, "%config ClackyTelemetry.track_cells = True")
    assert clacky_callbacks(ip) == cell_hooks
    run(ip, "%config ClackyTelemetry.enabled = False")
    assert clacky_callbacks(ip) == []
    run(ip, "%config ClackyTelemetry.enabled = True")
    run(ip, "%clacky_telemetry off")
    assert clacky_callbacks(ip) == []
    run(ip, "%clacky_telemetry on")
    assert clacky_callbacks(ip) == cell_hooks
    run(ip, "%reload_ext clacky_ipy")
    assert clacky_callbacks(ip) == cell_hooks  # one set, not two
    run(ip, "%unload_ext clacky_ipy")
    assert clacky_callbacks(ip) == []


def test_nested_run_cell_is_not_a_cell(ip, receiver):
    load(ip, endpoint=receiver.url, track_cells=True)
    run(ip, "get_ipython().run_cell('a = 1'); get_ipython().run_cell('b = 2')")
    receiver.wait()
    assert len(receiver.events("task")) == 1


# -- %%clacky ------------------------------------------------------------------------------
def test_clacky_cell_sends_the_agents_metrics(ip, receiver, capsys):
    load(ip, endpoint=receiver.url, track_cells=True)
    run(ip, AGENT)
    result = run(ip, '%%clacky\nprint("working")\nagent_run("my secret prompt")')
    assert result.success
    assert "working" in capsys.readouterr().out
    assert ip.user_ns["_"]["model"] == "claude-sonnet-4"  # the last expression was displayed
    receiver.wait()
    *_, event = receiver.events("task")
    assert [e["trigger"] for e in receiver.events("task")] == ["cell", "magic"]  # never two for one cell
    assert event["trigger"] == "magic" and event["status"] == "success"
    assert {k: event[k] for k in ("model", "provider", "iterations", "cost_usd", "cost_source")} == {
        "model": "claude-sonnet-4", "provider": "anthropic", "iterations": 4, "cost_usd": 0.02, "cost_source": "api"
    }  # fmt: skip
    assert (event["prompt_tokens"], event["completion_tokens"], event["cache_creation_tokens"]) == (100, 20, 5)
    assert (event["cache_read_tokens"], event["cache_total_requests"], event["cache_hit_requests"]) == (60, 4, 3)
    assert event["duration_ms"] < 1500  # measured wall time, not the result's duration_seconds
    assert set(event) <= set(payload.KEYS["task"])
    assert "secret" not in json.dumps(receiver.events())


def test_clacky_result_option_and_model_provider_fill(ip, receiver):
    load(ip, endpoint=receiver.url)
    run(ip, AGENT)
    run(ip, '%%clacky --result out --model gpt-x --provider openai\nout = agent_run("p")\nout["model"] = None\n1')
    receiver.wait()
    (event,) = receiver.events("task")
    assert event["model"] == "gpt-x"  # the result lacks it: --model fills it
    assert event["provider"] == "anthropic"  # the result has it: the result wins
    assert event["iterations"] == 4


def test_clacky_results_own_error_status(ip, receiver):
    load(ip, endpoint=receiver.url)
    run(ip, '%%clacky\n{"status": "error", "model": "m"}')
    receiver.wait()
    assert receiver.events("task")[0]["status"] == "error"


def test_failing_clacky_cell_fails_the_cell_with_one_traceback(ip, receiver, capsys):
    load(ip, endpoint=receiver.url, track_cells=True)
    capsys.readouterr()
    result = run(ip, "%%clacky --model m\nraise ValueError('sk-live-SECRET')")
    assert not result.success and isinstance(result.error_in_exec, ValueError)
    captured = capsys.readouterr()
    shown = re.sub(r"\x1b\[[0-9;]*m", "", captured.out + captured.err)
    assert shown.count("ValueError: sk-live-SECRET") == 1  # IPython's traceback, once
    receiver.wait()
    (event,) = receiver.events("task")
    assert (event["trigger"], event["status"], event["error_kind"], event["model"]) == (
        "magic",
        "error",
        "ValueError",
        "m",
    )
    assert "SECRET" not in json.dumps(event)


def test_interrupted_clacky_cell(ip, receiver):
    load(ip, endpoint=receiver.url)
    result = run(ip, "%%clacky\nraise KeyboardInterrupt")
    assert not result.success
    receiver.wait()
    (event,) = receiver.events("task")
    assert event["status"] == "interrupted" and "error_kind" not in event


def test_clacky_line_form(ip, receiver):
    load(ip, endpoint=receiver.url, track_cells=True)
    run(ip, AGENT)
    assert run(ip, '%clacky --model m agent_run("x")').success
    assert not run(ip, "%clacky 1/0").success
    receiver.wait()
    tasks = receiver.events("task")
    assert [(e["trigger"], e["status"]) for e in tasks] == [
        ("cell", "success"),
        ("magic", "success"),
        ("magic", "error"),
    ]
    assert tasks[1]["iterations"] == 4 and tasks[1]["model"] == "claude-sonnet-4"


def test_clacky_without_a_statement_is_a_usage_error(ip, receiver, capsys):
    load(ip, endpoint=receiver.url)
    capsys.readouterr()
    run(ip, "%clacky")
    assert "UsageError" in capsys.readouterr().err


# -- %clacky_telemetry -----------------------------------------------------------------------
def test_status_shows_state_endpoint_device_and_counters(ip, receiver, capsys):
    load(ip, endpoint=receiver.url, track_cells=True)
    run(ip, "x = 1")
    receiver.wait()
    capsys.readouterr()
    run(ip, "%clacky_telemetry")
    out = capsys.readouterr().out
    assert "Telemetry:    on" in out
    assert receiver.url in out and computed_device_id() in out and "track_cells:  True" in out
    assert "queued 0, sent 2, failed 0, dropped 0" in out


def test_flush_magic(ip, receiver, capsys):
    load(ip, endpoint=receiver.url)
    capsys.readouterr()
    run(ip, "%clacky_telemetry flush")
    assert "Flushed" in capsys.readouterr().out
    assert len(receiver.events("startup")) == 1


def test_unknown_argument(ip, capsys):
    load(ip)
    capsys.readouterr()
    run(ip, "%clacky_telemetry maybe")
    assert "UsageError" in capsys.readouterr().err


# -- the first-run notice -----------------------------------------------------------------------
def test_notice_in_the_loading_cell_once_per_home(ip, receiver, home, capsys):
    load(ip, endpoint=receiver.url)
    out = capsys.readouterr().out
    assert "telemetry" in out and "%clacky_telemetry off" in out
    assert (home / NOTICE_FILE).exists()
    run(ip, "%reload_ext clacky_ipy")
    assert "telemetry" not in capsys.readouterr().out


def test_notice_at_startup_goes_to_the_first_cell(ip, receiver, home, capsys):
    ip.config.ClackyTelemetry.endpoint = receiver.url
    ip.extension_manager.load_extension("clacky_ipy")
    assert capsys.readouterr().out == "" and not (home / NOTICE_FILE).exists()
    run(ip, "print('first')")
    out = capsys.readouterr().out
    assert out.index("%clacky_telemetry off") < out.index("first")
    assert (home / NOTICE_FILE).exists()


def test_no_notice_while_off(ip, receiver, home, env, capsys):
    env.setenv("CLACKY_TELEMETRY", "0")
    load(ip, endpoint=receiver.url)
    run(ip, "x = 1")
    assert "telemetry" not in capsys.readouterr().out.lower()
    assert not (home / NOTICE_FILE).exists()


# -- debug ------------------------------------------------------------------------------------
def test_debug_prints_json_lines_instead_of_sending(ip, receiver, env, capsys):
    env.setenv("CLACKY_TELEMETRY_DEBUG", "1")
    load(ip, endpoint=receiver.url, track_cells=True)
    run(ip, "x = 1")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines] == ["startup", "task"]
    assert lines[1]["payload"]["trigger"] == "cell"
    assert set(lines[0]["payload"]) <= set(payload.KEYS["startup"])
    receiver.wait()
    assert receiver.requests == []
    assert CLIENT.transport._thread is None  # no thread, no socket


def test_free_port_helper_is_free():
    assert 0 < free_port() < 65536


@pytest.mark.parametrize("source", ["x = 1", "print('hi')"])
def test_not_loaded_means_no_events(ip, receiver, source):
    run(ip, source)
    receiver.wait()
    assert receiver.requests == []


def test_off_file_name_is_stable():
    assert OFF_FILE == "ipy-telemetry-off"
