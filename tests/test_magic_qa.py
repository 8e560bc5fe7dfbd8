"""QA's defects in the magics, each in a real InteractiveShell: an interrupted async cell must not
stop tracking, `%%clacky` over another cell magic, `%clacky` with options and no statement,
completion after `%clacky_telemetry log`."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from conftest import load, run


def interrupted(shell, source, after=0.5):
    """Run a cell as the terminal does and send this process SIGINT `after` s into it."""
    timer = threading.Timer(after, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        return run(shell, source)
    finally:
        timer.cancel()


def ours(shell):
    return [
        fn.__name__
        for event in ("pre_run_cell", "post_run_cell")
        for fn in shell.events.callbacks[event]
        if type(getattr(fn, "__self__", None)).__module__ == "clacky_ipy.magics"
    ]


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name == "nt", reason="POSIX signals")
def test_an_interrupted_async_cell_is_interrupted_and_tracking_goes_on(ip, receiver):
    load(ip, endpoint=receiver.url)
    run(ip, "%config ClackyTelemetry.track_cells = True")
    run(ip, "x = 1")
    result = interrupted(ip, "import asyncio\nawait asyncio.sleep(5)")
    assert isinstance(result.error_in_exec, KeyboardInterrupt)  # the interrupt escaped the async runner
    run(ip, "y = 2")
    run(ip, "z = 3")
    run(ip, "get_ipython().run_cell('a = 1');")  # nested runs are still not cells
    receiver.wait()
    assert [e["status"] for e in receiver.events("task")] == ["success", "interrupted", "success", "success", "success"]


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("track_cells", [False, True])
def test_an_interrupted_async_clacky_cell_sends_interrupted_and_unhooks(ip, receiver, track_cells):
    load(ip, endpoint=receiver.url, track_cells=track_cells)
    interrupted(ip, "%%clacky --model interrupted\nimport asyncio\nawait asyncio.sleep(5)")
    assert ours(ip) == (["pre_run_cell", "post_run_cell"] if track_cells else [])  # the marked hooks are gone
    run(ip, "%%clacky --model after\n1")
    run(ip, "y = 2")
    receiver.wait()
    events = [(e["trigger"], e.get("model"), e["status"]) for e in receiver.events("task")]
    expected = [("magic", "interrupted", "interrupted"), ("magic", "after", "success")]
    assert events == expected + ([("cell", None, "success")] if track_cells else [])


def test_an_unmatched_end_of_a_nested_run_is_not_a_cell(ip, receiver):
    """A post_run_cell whose ExecutionInfo is new but which ends a nested run closes only that run."""
    load(ip, endpoint=receiver.url, track_cells=True)
    magics = ip.magics_manager.registry["ClackyMagics"]
    source = "m = get_ipython().magics_manager.registry['ClackyMagics']\n"
    source += "import copy\nfrom IPython.core.interactiveshell import ExecutionResult\n"
    source += "info = copy.copy(m._frames[-1][0]); info.raw_cell = 'inner'\n"
    source += "m.pre_run_cell(info); m.post_run_cell(ExecutionResult(copy.copy(info)))\n"
    run(ip, source)
    assert magics._frames == []
    run(ip, "w = 1")
    receiver.wait()
    assert [e["trigger"] for e in receiver.events("task")] == ["cell", "cell"]


# -- %%clacky over another cell magic ------------------------------------------------------------
def test_clacky_over_another_cell_magic(ip, receiver, capsys):
    load(ip, endpoint=receiver.url, track_cells=True)
    result = run(ip, "%%clacky --model m\n%%time\n4")
    assert result.success, result.error_in_exec
    assert "Wall time" in capsys.readouterr().out
    receiver.wait()
    assert [(e["trigger"], e.get("model"), e["status"]) for e in receiver.events("task")] == [("magic", "m", "success")]


def test_clacky_under_another_cell_magic_marks_the_cell(ip, receiver, capsys):
    load(ip, endpoint=receiver.url, track_cells=True)
    result = run(ip, "%%time\n%%clacky --model under\n5")
    assert result.success, result.error_in_exec
    assert "Wall time" in capsys.readouterr().out
    run(ip, "x = 1")
    receiver.wait()
    assert [(e["trigger"], e.get("model"), e["status"]) for e in receiver.events("task")] == [
        ("magic", "under", "success"),
        ("cell", None, "success"),
    ]
    assert ours(ip) == ["pre_run_cell", "post_run_cell"]  # only track_cells' pair is left


def test_clacky_over_a_failing_cell_magic_body_fails_as_the_cell_would(ip, receiver):
    load(ip, endpoint=receiver.url)
    plain = run(ip, "%%time\n1/0").success  # IPython 8 shows the error yet calls the cell a success
    assert run(ip, "%%clacky\n%%time\n1/0").success == plain
    receiver.wait()
    expected = ("success", None) if plain else ("error", "ZeroDivisionError")
    assert [(e["status"], e.get("error_kind")) for e in receiver.events("task")] == [expected]


# -- %clacky with options and no statement -------------------------------------------------------
@pytest.mark.parametrize(
    "line", ["%clacky", "%clacky --model", "%clacky --model m8", "%clacky --model=m8 --provider p "]
)
def test_clacky_options_without_a_statement_are_a_usage_error(ip, receiver, capsys, line):
    load(ip, endpoint=receiver.url)
    capsys.readouterr()
    result = run(ip, line)
    assert not result.success
    err = capsys.readouterr().err
    assert "UsageError" in err and "needs a statement" in err, err
    assert "NameError" not in err and "SyntaxError" not in err
    receiver.wait()
    assert receiver.events("task") == []


# -- completion ------------------------------------------------------------------------------------
def test_no_keywords_or_files_after_clacky_telemetry_log(ip, receiver, tmp_path, monkeypatch):
    from IPython.core.completer import provisionalcompleter

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    load(ip, endpoint=receiver.url)
    for line in ("%clacky_telemetry log ", "%clacky_telemetry log 1"):
        with provisionalcompleter():
            offered = [c.text for c in ip.Completer.completions(line, len(line))]
        assert offered and all(word.isdigit() for word in offered), (line, offered)


def test_a_run_that_ended_unseen_does_not_make_later_cells_nested(ip, receiver):
    """Whatever left a run open (a post_run_cell that never came), the next cells are tracked."""
    load(ip, endpoint=receiver.url, track_cells=True)
    magics = ip.magics_manager.registry["ClackyMagics"]
    run(ip, "%%clacky --model first\n1")
    gone = ip.transform_cell  # any object: a cell that is not running
    magics._frames.append((gone, 0.0))
    magics._marked.append((gone, {}, 0.0))
    run(ip, "y = 2")
    run(ip, "%%clacky --model second\n2")
    run(ip, "get_ipython().run_cell('a = 1');")  # nested runs are still not cells
    assert magics._frames == [] and magics._marked == []
    receiver.wait()
    assert [(e["trigger"], e.get("model")) for e in receiver.events("task")] == [
        ("magic", "first"),
        ("cell", None),
        ("magic", "second"),
        ("cell", None),
    ]
