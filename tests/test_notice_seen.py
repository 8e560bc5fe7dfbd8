"""The notice counts as seen only where a person can see it: captured, cleared, closed,
redirected to nowhere or unattended (papermill, nbclient, CI) never consumes it.
Real shells, real kernels, real notebook runners, a real local server."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest
from conftest import CLIENT, PYTHON, run, subprocess_env
from test_consent import NOTICE_MARK, execute, running_kernel, settle, terminal

import clacky_ipy
from clacky_ipy.config import NOTICE_FILE

HIDDEN_LOADS = {
    "capture_output": "from IPython.utils.capture import capture_output\n"
    "with capture_output():\n    get_ipython().run_line_magic('load_ext', 'clacky_ipy')",
    "%%capture": "%%capture\n%load_ext clacky_ipy",
    "redirect_stdout": "import contextlib, io\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n    get_ipython().run_line_magic('load_ext', 'clacky_ipy')",
    "clear_output": "%load_ext clacky_ipy\nfrom IPython.display import clear_output\nclear_output()",
    "clear_output(wait=True)": "%load_ext clacky_ipy\nimport IPython.display\nIPython.display.clear_output(wait=True)",
}


@pytest.mark.parametrize("cell", HIDDEN_LOADS.values(), ids=HIDDEN_LOADS.keys())
def test_a_hidden_notice_in_a_shell_is_not_seen_then_the_next_cell_shows_it(ip, receiver, home, capsys, cell):
    ip.config.ClackyTelemetry.endpoint = receiver.url
    run(ip, cell)
    clacky_ipy.task(model="waits")
    assert settle(receiver) == [] and not (home / NOTICE_FILE).exists()
    assert CLIENT.notice_pending
    capsys.readouterr()
    run(ip, "print('next')")
    out = capsys.readouterr().out
    assert NOTICE_MARK in out and out.index(NOTICE_MARK) < out.index("next")
    receiver.wait()
    assert [r.path.rsplit("/", 1)[-1] for r in receiver.requests] == ["startup", "task"]
    assert (home / NOTICE_FILE).exists()


@pytest.mark.parametrize("name", HIDDEN_LOADS)
def test_a_hidden_notice_in_a_kernel_is_not_seen(receiver, tmp_path, name):
    env = subprocess_env(CLACKY_HOME=str(tmp_path), CLACKY_LICENSE_SERVER=receiver.url)
    with running_kernel(env) as kc:
        execute(kc, HIDDEN_LOADS[name])
        execute(kc, "import clacky_ipy; clacky_ipy.flush(1)", store_history=False)
        assert settle(receiver, 1) == [] and not (tmp_path / NOTICE_FILE).exists()
        out = "".join(text for _, text in execute(kc, "x = 1"))
        assert NOTICE_MARK in out
        execute(kc, "%clacky_telemetry flush")
    assert len(receiver.events("startup")) == 1 and (tmp_path / NOTICE_FILE).exists()


def api_script(receiver):
    return "import clacky_ipy\nclacky_ipy.startup()\nclacky_ipy.task(model='m')\nclacky_ipy.flush(2)\n"


@pytest.mark.parametrize(
    "shell_line",
    [
        '{python} -c "$SCRIPT" >/dev/null 2>&1',  # the cron idiom
        '{python} -c "$SCRIPT" 2>&-',  # stderr closed
        "{python} -c \"import sys; sys.stderr = None; exec('''$SCRIPT''')\"",
    ],
    ids=["devnull", "closed", "None"],
)
def test_the_python_api_printing_nowhere_sends_nothing(receiver, tmp_path, shell_line):
    env = subprocess_env(CLACKY_HOME=str(tmp_path), CLACKY_LICENSE_SERVER=receiver.url, SCRIPT=api_script(receiver))
    subprocess.run(["bash", "-c", shell_line.format(python=PYTHON)], env=env, timeout=60, check=True)
    assert settle(receiver) == [] and not (tmp_path / NOTICE_FILE).exists()


def test_the_python_api_on_a_readable_stderr_shows_the_notice_and_sends(receiver, tmp_path):
    env = subprocess_env(CLACKY_HOME=str(tmp_path), CLACKY_LICENSE_SERVER=receiver.url)
    proc = subprocess.run([PYTHON, "-c", api_script(receiver)], env=env, capture_output=True, text=True, timeout=60)
    assert NOTICE_MARK in proc.stderr and proc.stderr.count(NOTICE_MARK) == 1
    receiver.quiet()
    assert len(receiver.requests) == 2 and (tmp_path / NOTICE_FILE).exists()


def test_a_terminal_whose_output_goes_nowhere_does_not_consume_the_notice(receiver, tmp_path):
    cmd = [PYTHON, "-m", "IPython", "--quick", "--ext", "clacky_ipy", "--no-banner", "-c", "x = 1"]
    env = subprocess_env(CLACKY_HOME=str(tmp_path), CLACKY_LICENSE_SERVER=receiver.url)
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=True)
    assert settle(receiver) == [] and not (tmp_path / NOTICE_FILE).exists()


# -- unattended runs ------------------------------------------------------------------------
def notebook(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


CELLS = ("%load_ext clacky_ipy", "%%clacky --model m\n1", "%clacky_telemetry flush")


def run_nbclient(path, home, url, tmp_path):
    from clacky_ipy.demo import execute_notebook, kernel_env

    env = {**kernel_env(url, home), "PYTHONPATH": subprocess_env()["PYTHONPATH"]}
    return execute_notebook(path, env, tmp_path)


def run_papermill(path, home, url, tmp_path):
    env = subprocess_env(CLACKY_HOME=str(home), CLACKY_LICENSE_SERVER=url)
    cmd = [PYTHON, "-m", "papermill", str(path), str(tmp_path / "out.ipynb"), "-k", "python3", "--no-progress-bar"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return nbformat.read(tmp_path / "out.ipynb", as_version=4)


RUNNERS = {"nbclient": run_nbclient, "papermill": run_papermill}


@pytest.mark.parametrize("runner", RUNNERS)
def test_an_unattended_run_never_consumes_the_notice_for_the_person(receiver, tmp_path, runner):
    home = tmp_path / "home"
    path = notebook(tmp_path / "nightly.ipynb", *CELLS)
    nb = RUNNERS[runner](path, home, receiver.url, tmp_path)
    assert settle(receiver, 1) == [] and not (home / NOTICE_FILE).exists()
    assert "Waiting for the notice" in "".join(o.get("text", "") for o in nb.cells[2].outputs)
    proc = terminal(home, receiver.url, "x = 1\n")  # the person, later, in the same home
    assert NOTICE_MARK in proc.stdout
    receiver.quiet()
    assert len(receiver.events("startup")) == 1 and (home / NOTICE_FILE).exists()


@pytest.mark.parametrize("runner", RUNNERS)
def test_an_unattended_run_after_the_person_saw_it_is_flagged(receiver, tmp_path, runner):
    home = tmp_path / "home"
    home.mkdir()
    (home / NOTICE_FILE).write_text("shown\n")
    path = notebook(tmp_path / "nightly.ipynb", *CELLS)
    RUNNERS[runner](path, home, receiver.url, tmp_path)
    receiver.quiet()
    (startup,) = receiver.events("startup")
    (task,) = receiver.events("task")
    assert startup["launch_source"] == task["launch_source"] == runner


def test_ci_never_consumes_the_notice(receiver, tmp_path):
    home = tmp_path / "home"
    cmd = [PYTHON, "-m", "IPython", "--quick", "--ext", "clacky_ipy", "--no-banner", "-c", "x = 1"]
    env = subprocess_env(CLACKY_HOME=str(home), CLACKY_LICENSE_SERVER=receiver.url, GITHUB_ACTIONS="true")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert NOTICE_MARK in proc.stdout  # shown in the log, for whoever reads it
    assert settle(receiver) == [] and not (home / NOTICE_FILE).exists()


# -- where the data goes ------------------------------------------------------------------------
def test_the_notice_names_the_endpoint_masked(ip, receiver, home, capsys):
    url = receiver.url.replace("http://", "http://alice:s3cret@")
    ip.config.ClackyTelemetry.endpoint = url
    run(ip, "%load_ext clacky_ipy")
    out = capsys.readouterr().out
    assert NOTICE_MARK in out
    assert receiver.url.replace("http://", "http://***@") in out and "s3cret" not in out
    assert "fallback" not in out  # a chosen endpoint has none


def test_the_notice_names_the_default_hosts_and_their_fallbacks(ip, home, capsys, monkeypatch):
    monkeypatch.delenv("CLACKY_LICENSE_SERVER")
    ip.config.ClackyTelemetry.enabled = False  # nothing may leave for the real hosts
    from clacky_ipy import notice
    from clacky_ipy.config import ClackyTelemetry

    text = notice.text(ClackyTelemetry())
    assert "https://www.openclacky.com" in text
    assert "https://api.1024code.com" in text and "fallback" in text
    assert sys.modules.get("clacky_ipy.notice") is notice


def test_a_notice_seen_elsewhere_meanwhile_releases_the_events_without_showing_it(ip, receiver, home, capsys):
    ip.config.ClackyTelemetry.endpoint = receiver.url
    ip.extension_manager.load_extension("clacky_ipy")  # pending: the first cell would show it
    from clacky_ipy import notice

    notice.mark_seen(home)  # e.g. the JupyterLab notification, answered
    run(ip, "x = 1")
    assert NOTICE_MARK not in capsys.readouterr().out
    receiver.wait()
    assert len(receiver.events("startup")) == 1
