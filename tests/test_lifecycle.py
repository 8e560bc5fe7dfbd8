"""What a long session goes through: forks from two threads, an opt-out from another shell,
a reloaded extension, the log while the device id is computed, failed cells' memory."""

from __future__ import annotations

import gc
import subprocess
import threading
import time

from conftest import CLIENT, PYTHON, load, run, subprocess_env

import clacky_ipy
from clacky_ipy import transport
from clacky_ipy.notice import NOTICE


def test_two_threads_forking_never_leave_the_setup_lock_held(monkeypatch):
    """The fork handlers of two threads at once: one takes the set-up lock, the other's wait
    times out meanwhile. The first must still release it, or every later fork waits."""
    monkeypatch.setattr(transport, "FORK_WAIT", 0.2)
    took = threading.Event()
    timed_out = threading.Event()

    def first():
        transport._before_fork()  # takes _SETUP
        took.set()
        timed_out.wait(5)  # the other thread's wait has ended meanwhile
        transport._after_fork_in_parent()

    def second():
        took.wait(5)
        transport._before_fork()  # times out: _SETUP is held by the first
        timed_out.set()
        transport._after_fork_in_parent()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert transport._SETUP.acquire(timeout=1), "the set-up lock stayed held after both forks"
    transport._SETUP.release()


def test_opting_out_from_another_shell_stops_a_running_session(ip, receiver, home):
    load(ip, endpoint=receiver.url)
    assert clacky_ipy.task(model="before") and clacky_ipy.flush(5)
    env = subprocess_env(CLACKY_HOME=str(home))
    subprocess.run([PYTHON, "-m", "clacky_ipy", "telemetry", "off"], env=env, check=True, capture_output=True)
    clacky_ipy.task(model="after")
    clacky_ipy.flush(5)
    assert [e.get("model") for e in receiver.events("task")] == ["before"]
    assert clacky_ipy.recent(1)[0]["outcome"] == "dropped: opted out"


def test_reloading_with_a_pending_startup_keeps_it_behind_the_notice(ip, receiver, env, capsys):
    env.setenv("DO_NOT_TRACK", "1")
    load(ip, endpoint=receiver.url)  # off: the startup waits, and so does the notice
    env.delenv("DO_NOT_TRACK")
    capsys.readouterr()
    assert run(ip, "%reload_ext clacky_ipy").success
    out, err = capsys.readouterr()
    assert NOTICE.splitlines()[0] in out and NOTICE.splitlines()[0] not in err
    assert clacky_ipy.flush(5)
    assert len(receiver.events("startup")) == 1


def test_the_log_never_waits_on_the_device_id(fresh_client, receiver, env):
    env.setenv("CLACKY_LICENSE_SERVER", receiver.url)
    CLIENT.notice_display = lambda: None  # an extension that has not shown the notice yet
    try:
        clacky_ipy.task(model="m")  # waits for the notice
        with CLIENT._context_lock:  # the worker reading a slow brand.yml holds it
            start = time.monotonic()
            entries = clacky_ipy.recent()
            took = time.monotonic() - start
        assert took < 2
        assert [(e["outcome"], e["payload"]) for e in entries] == [("waiting for the notice", None)]
    finally:
        CLIENT.notice_display = None


def test_a_queued_failed_cell_keeps_no_frame_alive(ip, blackhole):
    load(ip, endpoint=blackhole, track_cells=True, max_connections=1)
    clacky_ipy.task(model="occupies the worker")  # in flight to a server that never answers
    time.sleep(0.3)
    run(ip, "import weakref\nclass Big: pass\nbig = Big()\nref = weakref.ref(big)")
    run(ip, "def f(x=big):\n    raise ValueError('held')\nf()")  # its traceback's frame holds big
    run(ip, "1 / 0")  # IPython's own sys.last_traceback moves on
    ref = ip.user_ns["ref"]
    del ip.user_ns["big"], ip.user_ns["f"]
    gc.collect()
    assert CLIENT.transport.queued >= 1  # the failed cells' events still wait
    assert ref() is None, "a queued event keeps the failed cell's frames alive"
