"""`%%clacky` runs exactly as a normal cell: in a real Jupyter kernel (jupyter_client) and a real
InteractiveShell. Top-level await, the displayed value, a trailing `;`, In[] numbers and history,
one traceback with the cell's own number, interrupts of async cells."""

from __future__ import annotations

import queue
import re
import time

import pytest
from conftest import load, run, subprocess_env

from clacky_ipy.demo import kernel_env, kernel_manager

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Kernel:
    """A real ipykernel of this interpreter, driven over ZMQ with jupyter_client."""

    def __init__(self, env, tmp_path):
        self.km = kernel_manager(tmp_path)
        self.log = open(tmp_path / "kernel.log", "ab")  # noqa: SIM115
        self.km.start_kernel(
            env=env, cwd=str(tmp_path), stdout=self.log, stderr=self.log,
            extra_arguments=[],
        )  # fmt: skip
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def execute(self, code, interrupt_after=None, timeout=60):
        """Run one cell; returns (reply content, outputs). Interrupts the kernel after `interrupt_after` s."""
        msg_id = self.kc.execute(code)
        outputs = []
        deadline = time.monotonic() + timeout
        interrupted = interrupt_after is None
        started = None
        while True:
            assert time.monotonic() < deadline, "the cell did not finish"
            if not interrupted and started is not None and time.monotonic() - started >= interrupt_after:
                self.km.interrupt_kernel()
                interrupted = True
            try:
                msg = self.kc.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "execute_input":
                started = time.monotonic()
            elif kind == "status" and content["execution_state"] == "idle":
                break
            elif kind in ("stream", "execute_result", "display_data", "error"):
                outputs.append((kind, content))
        reply = self.kc.get_shell_msg(timeout=10)
        return reply["content"], outputs

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
        self.log.close()


@pytest.fixture
def kernel(receiver, tmp_path):
    env = kernel_env(receiver.url, tmp_path / "home")
    env["PYTHONPATH"] = subprocess_env()["PYTHONPATH"]  # this checkout's clacky_ipy
    k = Kernel(env, tmp_path)
    reply, _ = k.execute("%load_ext clacky_ipy")
    assert reply["status"] == "ok", reply
    yield k
    k.close()


def wait_for(receiver, n, timeout=15):
    deadline = time.monotonic() + timeout
    while len(receiver.events("task")) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return receiver.events("task")


def text(outputs):
    return ANSI.sub("", "".join(c.get("text", "") + c.get("data", {}).get("text/plain", "") for _, c in outputs))


def test_top_level_await_in_a_kernel(kernel, receiver):
    reply, outputs = kernel.execute(
        "%%clacky --model m\nimport asyncio\nasync def agent():\n    await asyncio.sleep(0.05)\n"
        "    return {'status': 'success', 'iterations': 2}\nr = await agent()\nr"
    )
    assert reply["status"] == "ok", reply
    results = [c for kind, c in outputs if kind == "execute_result"]
    assert len(results) == 1 and "'iterations': 2" in results[0]["data"]["text/plain"]  # the awaited value
    assert results[0]["execution_count"] == reply["execution_count"]
    (task,) = wait_for(receiver, 1)
    assert (task["trigger"], task["status"], task["model"], task["iterations"]) == ("magic", "success", "m", 2)
    assert task["duration_ms"] >= 50


def test_trailing_semicolon_and_history_in_a_kernel(kernel, receiver):
    reply, outputs = kernel.execute("%%clacky\n40 + 2;")
    assert reply["status"] == "ok" and [k for k, _ in outputs if k == "execute_result"] == []
    n = reply["execution_count"]
    hist = "get_ipython().history_manager.input_hist_raw"
    reply, outputs = kernel.execute(f"print({hist}[{n}].splitlines()[0], In[{n}].splitlines()[0], Out.get({n}))")
    assert "%%clacky # %%clacky None" in text(outputs)


def test_failing_clacky_cell_traceback_has_its_own_number_and_shows_once(kernel, receiver):
    reply, outputs = kernel.execute("%%clacky\nx = 1\nraise ValueError('token=abc')")
    assert reply["status"] == "error" and reply["ename"] == "ValueError"
    n = reply["execution_count"]
    errors = [c for kind, c in outputs if kind == "error"]
    assert len(errors) == 1
    shown = ANSI.sub("", "\n".join(errors[0]["traceback"]))
    assert f"In[{n}]" in shown and f"In[{n + 1}]" not in shown, shown
    assert "line 3" in shown  # line numbers of the cell as shown, %%clacky line included
    (task,) = wait_for(receiver, 1)
    assert (task["status"], task["error_kind"]) == ("error", "ValueError")


#: ipykernel 6 (the Python 3.9 / IPython 8 leg) now and then loses an interrupt sent just as an
#: awaiting cell starts, and the cell then ends normally: seen once in a loaded full run.
#: Both ipykernels deliver it as CancelledError when the await next wakes (here: when it ends).
needs_ipykernel_7 = pytest.mark.skipif(
    int(__import__("ipykernel").__version__.split(".")[0]) < 7,
    reason="ipykernel 6 may lose an interrupt sent as an awaiting cell starts",
)


@needs_ipykernel_7
def test_interrupted_async_clacky_cell(kernel, receiver):
    reply, _ = kernel.execute("%%clacky\nimport asyncio\nawait asyncio.sleep(5)", interrupt_after=1.0)
    assert reply["status"] == "error"
    (task,) = wait_for(receiver, 1)
    assert (task["trigger"], task["status"]) == ("magic", "interrupted") and "error_kind" not in task
    reply, _ = kernel.execute("1 + 1")  # the kernel goes on
    assert reply["status"] == "ok"


@needs_ipykernel_7
def test_interrupted_async_tracked_cell(kernel, receiver):
    kernel.execute("%config ClackyTelemetry.track_cells = True")
    reply, _ = kernel.execute("import asyncio\nawait asyncio.sleep(5)", interrupt_after=1.0)
    assert reply["status"] == "error"
    (task,) = wait_for(receiver, 1)
    assert (task["trigger"], task["status"]) == ("cell", "interrupted") and "error_kind" not in task


def test_nested_runs_and_clacky_over_a_cell_magic_in_a_kernel(kernel, receiver):
    kernel.execute("%config ClackyTelemetry.track_cells = True")
    reply, _ = kernel.execute("import asyncio\nawait asyncio.sleep(0)\nget_ipython().run_cell('a = 1');")
    assert reply["status"] == "ok", reply
    reply, outputs = kernel.execute("%%clacky --model m\n%%time\n4")
    assert reply["status"] == "ok", reply
    assert "Wall time" in text(outputs)
    kernel.execute("y = 2")
    wait_for(receiver, 3)
    receiver.quiet()
    assert [(e["trigger"], e.get("model")) for e in receiver.events("task")] == [
        ("cell", None),
        ("magic", "m"),
        ("cell", None),
    ]


def test_line_form_with_await_in_a_kernel(kernel, receiver):
    kernel.execute("import asyncio\nasync def agent():\n    return {'model': 'x', 'iterations': 1}")
    reply, outputs = kernel.execute("%clacky --provider p await agent()")
    assert reply["status"] == "ok", reply
    assert "'model': 'x'" in text(outputs)
    (task,) = wait_for(receiver, 1)
    assert (task["trigger"], task["model"], task["provider"]) == ("magic", "x", "p")


# -- a real InteractiveShell (terminal IPython's path) --------------------------------------
def test_top_level_await_in_a_shell(ip, receiver):
    load(ip, endpoint=receiver.url)
    result = run(ip, "%%clacky\nimport asyncio\nawait asyncio.sleep(0)\n{'model': 'a', 'iterations': 1}")
    assert result.success, result.error_in_exec
    assert result.result == {"model": "a", "iterations": 1}
    receiver.wait()
    (task,) = receiver.events("task")
    assert (task["trigger"], task["status"], task["model"]) == ("magic", "success", "a")


def test_clacky_cell_is_the_cell_in_history_and_numbers(ip, receiver, capsys):
    load(ip, endpoint=receiver.url, track_cells=True)
    count = ip.execution_count
    result = run(ip, "%%clacky\n6 * 7")
    assert result.execution_count == count and ip.user_ns["Out"][count] == 42
    assert ip.history_manager.input_hist_raw[count] == "%%clacky\n6 * 7"
    assert ip.user_ns["In"][count] == "# %%clacky\n6 * 7"
    run(ip, "%%clacky\n6 * 7;")
    assert count + 1 not in ip.user_ns["Out"]
    capsys.readouterr()
    failed = run(ip, "%%clacky\n\n1/0")
    shown = ANSI.sub("", "".join(capsys.readouterr()))
    assert not failed.success and shown.count("ZeroDivisionError: division by zero") == 1
    assert f"In[{failed.execution_count}]" in shown and "line 3" in shown
    receiver.wait()
    assert [(e["trigger"], e["status"]) for e in receiver.events("task")] == [
        ("magic", "success"),
        ("magic", "success"),
        ("magic", "error"),
    ]  # one event per cell, never a `cell` one too


def test_clacky_cell_syntax_error_is_an_error_event(ip, receiver):
    load(ip, endpoint=receiver.url)
    assert not run(ip, "%%clacky\ndef f(:").success
    receiver.wait()
    (task,) = receiver.events("task")
    assert (task["status"], task["error_kind"]) == ("error", "SyntaxError")


def test_run_cell_magic_called_programmatically(ip, receiver):
    load(ip, endpoint=receiver.url)
    ip.run_cell_magic("clacky", "--model prog", "{'iterations': 5}")
    ip.run_line_magic("clacky", "--model line 1 + 1")
    receiver.wait()
    assert [(e["model"], e.get("iterations")) for e in receiver.events("task")] == [("prog", 5), ("line", None)]


def test_nested_clacky_cells_each_send_one(ip, receiver):
    load(ip, endpoint=receiver.url)
    run(ip, "%%clacky --model outer\nget_ipython().run_cell('%%clacky --model inner\\n1')\n2")
    receiver.wait()
    assert sorted(e["model"] for e in receiver.events("task")) == ["inner", "outer"]


def test_ordinary_cells_pay_nothing_while_no_clacky_cell_runs(ip, receiver):
    load(ip, endpoint=receiver.url)
    run(ip, "%%clacky\n1")
    run(ip, "x = 1")
    ours = [
        fn
        for event in ("pre_run_cell", "post_run_cell")
        for fn in ip.events.callbacks[event]
        if type(getattr(fn, "__self__", None)).__module__ == "clacky_ipy.magics"
    ]
    assert ours == []


def test_a_transformed_but_never_run_clacky_cell_claims_nothing(ip, receiver):
    load(ip, endpoint=receiver.url, track_cells=True)
    ip.transform_cell("%%clacky\n1\n")  # e.g. %%time's body, an inspector
    run(ip, "y = 2")
    receiver.wait()
    assert [e["trigger"] for e in receiver.events("task")] == ["cell"]


def test_unload_removes_the_transformer(ip, receiver):
    load(ip, endpoint=receiver.url)
    run(ip, "%reload_ext clacky_ipy")
    mine = [t for t in ip.input_transformers_cleanup if getattr(t, "__module__", "").startswith("clacky_ipy")]
    assert len(mine) == 1
    run(ip, "%unload_ext clacky_ipy")
    assert not [t for t in ip.input_transformers_cleanup if getattr(t, "__module__", "").startswith("clacky_ipy")]
    assert not run(ip, "%%clacky\n1").success  # the magic is gone: a usage error, as before loading


def test_top_level_await_in_terminal_ipython(receiver, tmp_path):
    """A real terminal IPython process (`ipython -c` runs the cell as the prompt does)."""
    import subprocess

    from conftest import PYTHON

    env = subprocess_env(CLACKY_HOME=str(tmp_path), CLACKY_LICENSE_SERVER=receiver.url)
    code = "%load_ext clacky_ipy\n"  # then the %%clacky cell through -c
    cell = "%%clacky --model t\nimport asyncio\nawait asyncio.sleep(0.01)\nprint('awaited')\n"
    proc = subprocess.run(
        [PYTHON, "-m", "IPython", "--no-banner", "--colors=nocolor", "--quick",
         f"--InteractiveShellApp.exec_lines={[code]!r}".replace("'", '"'), "-c", cell],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "awaited" in proc.stdout, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    (task,) = receiver.events("task")
    assert (task["trigger"], task["status"], task["model"], task["frontend"]) == ("magic", "success", "t", "terminal")


def test_one_event_whichever_hook_runs_first(ip, receiver):
    """Should the %%clacky hooks run before the track_cells ones: still one event for the cell."""
    load(ip, endpoint=receiver.url, track_cells=True)
    magics = ip.find_cell_magic("clacky").__self__
    ip.events.callbacks["pre_run_cell"].insert(0, magics._marked_pre)
    ip.events.callbacks["post_run_cell"].insert(0, magics._marked_post)
    magics._marked_hooked = True
    run(ip, "%%clacky\n1")
    run(ip, "x = 1")
    receiver.wait()
    assert [e["trigger"] for e in receiver.events("task")] == ["magic", "cell"]
