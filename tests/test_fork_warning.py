"""On Python 3.12+, os.fork() warns (DeprecationWarning) in a process with a live thread: the
extension's worker is never that thread. Run with -W always::DeprecationWarning, so every
warning is printed (-W error makes CPython drop this one silently: the fork already happened),
in a real shell delivering to a real server. Skipped below 3.12 (no warning
there); .ci/run runs it on a 3.12 when the machine has one."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import PYTHON, subprocess_env

from clacky_ipy import notice

pytestmark = pytest.mark.skipif(sys.version_info < (3, 12), reason="os.fork() warns about threads from Python 3.12")

FORK = """
import os, time
def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
"""

SCRIPT = (
    FORK
    + """
import clacky_ipy
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config
# IPython's own history thread stops for a fork too, but may still be ending as the OS counts
# threads, so IPython alone warns now and then: without it, only the extension's threads remain.
config = Config()
config.HistoryManager.enabled = False
ip = InteractiveShell.instance(config=config)
ip.run_cell("%load_ext clacky_ipy", store_history=True)
ip.run_cell("%%clacky --model m\\n1", store_history=True)
fork()  # at once: the worker is deferring the events
assert clacky_ipy.flush(5)
fork()  # after delivery: the worker waits, idle
ip.run_cell("%config ClackyTelemetry.track_cells = True", store_history=True)
for i in range(3):
    ip.run_cell("x = 1", store_history=True)
    fork()
clacky_ipy.task(model="api")
fork()
assert clacky_ipy.flush(5)
time.sleep(0.3)
fork()
print("forked", [e["outcome"] for e in clacky_ipy.recent()])
"""
)


def test_this_interpreter_warns_about_a_live_thread():
    code = FORK + "import threading\nthreading.Thread(target=time.sleep, args=(2,), daemon=True).start()\nfork()\n"
    proc = subprocess.run([PYTHON, "-W", "always::DeprecationWarning", "-c", code], capture_output=True, text=True)
    assert "multi-threaded" in proc.stderr


def test_no_fork_warning_from_the_extensions_threads(receiver, tmp_path):
    notice.mark_seen(tmp_path)
    env = subprocess_env(CLACKY_HOME=str(tmp_path), CLACKY_LICENSE_SERVER=receiver.url)
    # another venv activated around this interpreter (CI's main one) makes IPython warn about that
    env.pop("VIRTUAL_ENV", None)
    cmd = [PYTHON, "-W", "always::DeprecationWarning", "-c", SCRIPT]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Warning" not in proc.stderr, proc.stderr
    assert "forked" in proc.stdout
    receiver.quiet()
    assert [e.get("model", e.get("trigger")) for e in receiver.events("task")] == ["m", "cell", "cell", "cell", "api"]
    assert len(receiver.events("startup")) == 1
