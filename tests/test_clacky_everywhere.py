"""`%clacky` wherever IPython runs a cell: `%run` of a notebook and of an .ipy file, the line
form's value and nested in other line magics, `{var}` expanded the same on every path, and
ipykernel 7 subshells running `%%clacky` cells at once. Real shells, a real kernel, a real server."""

from __future__ import annotations

import time

import nbformat
import pytest
from conftest import load, run, subprocess_env
from test_consent import kernel

from clacky_ipy import notice

AGENT = "def agent(model='x'):\n    return {'status': 'success', 'model': model, 'iterations': 3}\n"


def tasks(receiver):
    receiver.wait()
    return receiver.events("task")


# -- %run ----------------------------------------------------------------------------------------
def test_run_of_a_notebook_sends_one_event_per_clacky_cell(ip, receiver, tmp_path):
    load(ip, endpoint=receiver.url)
    sources = (
        AGENT,
        "%%clacky --model a\nran_a = True",
        "%clacky --model b ran_b = True",
        "plain = 1",
        "%%clacky --provider p --result r\nr = agent('c')",
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    path = tmp_path / "agents.ipynb"
    nbformat.write(nb, path)
    result = run(ip, f"%run {path}")
    assert result.success, result.error_in_exec
    assert ip.user_ns["ran_a"] and ip.user_ns["ran_b"] and ip.user_ns["plain"] == 1
    assert [(t["trigger"], t.get("model"), t.get("provider")) for t in tasks(receiver)] == [
        ("magic", "a", None),
        ("magic", "b", None),
        ("magic", "c", "p"),
    ]


def test_run_of_an_ipy_file(ip, receiver, tmp_path):
    load(ip, endpoint=receiver.url)
    (tmp_path / "one.ipy").write_text("%clacky --model d ran = 1\n")
    (tmp_path / "whole.ipy").write_text("%%clacky --model e\nimport time\ntime.sleep(0.05)\nwhole = 2\n")
    assert run(ip, f"%run {tmp_path / 'one.ipy'}").success
    assert run(ip, f"%run {tmp_path / 'whole.ipy'}").success
    assert ip.user_ns["ran"] == 1 and ip.user_ns["whole"] == 2
    sent = tasks(receiver)
    assert [t.get("model") for t in sent] == ["d", "e"]
    assert sent[1]["duration_ms"] >= 50


# -- the line form in statements and other magics -------------------------------------------------------
def test_the_line_form_returns_its_value(ip, receiver):
    load(ip, endpoint=receiver.url)
    run(ip, AGENT)
    result = run(ip, "r = %clacky agent('m1')\nvalue = r['model']")
    assert result.success and ip.user_ns["value"] == "m1"
    (task,) = tasks(receiver)
    assert (task["model"], task["iterations"]) == ("m1", 3)


def test_the_line_form_nested_in_time_and_timeit(ip, receiver, capsys):
    load(ip, endpoint=receiver.url)
    run(ip, AGENT + "def plain():\n    return 7\n")
    assert run(ip, "t = %time %clacky --model T plain()").success
    assert ip.user_ns["t"] == 7
    assert run(ip, "%timeit -n1 -r1 %clacky --model T2 plain()").success
    assert [t.get("model") for t in tasks(receiver)] == ["T", "T2"]
    assert "Wall time" in capsys.readouterr().out


def test_the_line_form_failing_fails_the_cell_and_sends_error(ip, receiver):
    load(ip, endpoint=receiver.url)
    result = run(ip, "x = %clacky 1/0\nafter = True")
    assert isinstance(result.error_in_exec, ZeroDivisionError) and "after" not in ip.user_ns
    (task,) = tasks(receiver)
    assert (task["status"], task["error_kind"]) == ("error", "ZeroDivisionError")


@pytest.mark.parametrize(
    "cell",
    ["%%clacky --model {m}\n1", "%clacky --model {m} 1", "x = %clacky --model {m} 1", "%%clacky --model $m\n1"],
    ids=["cell transformer", "line transformer", "line magic", "dollar"],
)
def test_var_expansion_is_the_same_on_every_path(ip, receiver, cell):
    load(ip, endpoint=receiver.url)
    run(ip, "m = 'gpt-x'")
    assert run(ip, cell).success
    (task,) = tasks(receiver)
    assert task["model"] == "gpt-x"


# -- ipykernel 7 subshells -----------------------------------------------------------------------
def subshell(kc):
    msg = kc.session.msg("create_subshell_request", {})
    kc.control_channel.send(msg)
    reply = kc.get_control_msg(timeout=30)
    assert reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]
    return reply["content"]["subshell_id"]


def execute_on(kc, code, subshell_id=None):
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": True}
    msg = kc.session.msg("execute_request", {**content, "stop_on_error": True})
    if subshell_id is not None:
        msg["header"]["subshell_id"] = subshell_id
    kc.shell_channel.send(msg)
    return msg["header"]["msg_id"]


def replies(kc, ids, timeout=60):
    got = {}
    deadline = time.monotonic() + timeout
    while set(got) != set(ids) and time.monotonic() < deadline:
        msg = kc.get_shell_msg(timeout=timeout)
        got[msg["parent_header"]["msg_id"]] = msg["content"]
    return got


def test_clacky_cells_on_subshells_at_once_each_send_their_own_event(receiver, tmp_path):
    ipykernel = pytest.importorskip("ipykernel")
    if int(ipykernel.__version__.split(".")[0]) < 7:
        pytest.skip("subshells need ipykernel 7")
    home = tmp_path / "home"
    notice.mark_seen(home)
    km, kc = kernel(subprocess_env(CLACKY_HOME=str(home), CLACKY_LICENSE_SERVER=receiver.url))
    try:
        ready = execute_on(kc, "%load_ext clacky_ipy\n%config ClackyTelemetry.track_cells = True")
        assert replies(kc, [ready])[ready]["status"] == "ok"
        a, b = subshell(kc), subshell(kc)
        cells = {
            "A": ("%%clacky --model A\nimport time\ntime.sleep(1.2)", a),
            "B": ("%%clacky --model B\nimport time\ntime.sleep(0.6)", b),
            "M": ("%%clacky --model M\nimport time\ntime.sleep(0.9)", None),
        }
        ids = [execute_on(kc, code, sid) for code, sid in cells.values()]
        assert all(content["status"] == "ok" for content in replies(kc, ids).values())
        plain = execute_on(kc, "y = 1", a)  # a tracked cell on a subshell
        replies(kc, [plain])
        flush = execute_on(kc, "%clacky_telemetry flush")
        replies(kc, [flush])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    receiver.quiet()
    sent = receiver.events("task")
    magic = {t["model"]: t["duration_ms"] for t in sent if t["trigger"] == "magic"}
    assert set(magic) == {"A", "B", "M"} and len([t for t in sent if t["trigger"] == "magic"]) == 3
    assert magic["A"] >= 1200 and 600 <= magic["B"] < 1200 and 900 <= magic["M"] < 1200 + 900
    assert [t["trigger"] for t in sent if t["trigger"] == "cell"] == ["cell"]
