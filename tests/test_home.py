"""The Clacky home and its files, in real child processes: an unusable home never breaks loading
or opting out (telemetry stays off when the saved opt-out cannot be checked), and a hostile
brand.yml never hangs, crashes or blocks the shell (the computed device id is used instead)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import PYTHON, subprocess_env

from clacky_ipy.identity import computed_device_id

#: Loads the extension in a real InteractiveShell, times %load_ext and status, opts out, and
#: prints what happened as one JSON line.
CHILD = r"""
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
import clacky_ipy
from clacky_ipy.client import CLIENT
ip = InteractiveShell.instance()
out = {}
t = time.monotonic(); r = ip.run_cell("%load_ext clacky_ipy", store_history=True)
out["load_s"] = time.monotonic() - t; out["load_ok"] = r.success
t = time.monotonic(); r = ip.run_cell("%clacky_telemetry status", store_history=True)
out["status_s"] = time.monotonic() - t; out["status_ok"] = r.success
out["off_reason"] = CLIENT.off_reason()
out["magics"] = ip.find_cell_magic("clacky") is not None
r = ip.run_cell("%%clacky\n{'model': 'm'}", store_history=True); out["cell_ok"] = r.success
clacky_ipy.flush(5)
out["device_id"] = CLIENT._context and CLIENT._context["device_id"]
if sys.argv[1:] == ["off"]:
    r = ip.run_cell("%clacky_telemetry off", store_history=True); out["off_ok"] = r.success
    out["off_reason_after"] = CLIENT.off_reason()
print("RESULT " + json.dumps(out))
"""


def run_child(env, *args, user=None, timeout=60):
    def demote():
        os.setgid(user)
        os.setuid(user)

    start = time.monotonic()
    proc = subprocess.run(
        [PYTHON, "-c", CHILD, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd="/",
        preexec_fn=demote if user is not None else None,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return json.loads(lines[0][7:]), proc, elapsed


@pytest.fixture
def open_dir():
    """A directory any uid may write (IPython's own profile dir for a demoted child)."""
    path = tempfile.mkdtemp(prefix="clacky-open-")
    os.chmod(path, 0o777)
    yield path
    subprocess.run(["rm", "-rf", path], check=False)


UNKNOWN_UID = 54321  # no passwd entry, as containers run with an arbitrary uid


def _can_run_as(uid):
    if os.geteuid() != 0:
        return False
    try:
        subprocess.run([PYTHON, "-c", "pass"], preexec_fn=lambda: os.setuid(uid), timeout=30, check=True, cwd="/")
        return True
    except (OSError, subprocess.SubprocessError):
        return False  # e.g. the interpreter lives under /root (0700)


needs_root = pytest.mark.skipif(
    not _can_run_as(UNKNOWN_UID), reason="needs root, and an interpreter another uid may run"
)


def unusable_env(receiver, open_dir, **extra):
    env = subprocess_env(CLACKY_LICENSE_SERVER=receiver.url, IPYTHONDIR=open_dir, **extra)
    env.pop("CLACKY_HOME", None)
    env.update(extra)
    return env


def check_off_and_loaded(out, receiver):
    assert out["load_ok"] and out["status_ok"] and out["magics"] and out["cell_ok"]
    assert out["off_reason"] and "Clacky home" in out["off_reason"], out
    assert out.get("off_ok", True)
    assert receiver.requests == []  # privacy first: nothing sent when the opt-out cannot be checked


def test_clacky_home_of_an_unknown_user(receiver, open_dir):
    env = unusable_env(receiver, open_dir, CLACKY_HOME="~nosuchuser-clacky/x")
    out, proc, _ = run_child(env, "off")
    check_off_and_loaded(out, receiver)
    assert "cannot be resolved" in out["off_reason"]
    assert "Telemetry:    off" in proc.stdout


@needs_root
def test_no_home_and_no_passwd_entry(receiver, open_dir):
    env = unusable_env(receiver, open_dir)
    env.pop("HOME", None)
    out, proc, _ = run_child(env, "off", user=UNKNOWN_UID)
    check_off_and_loaded(out, receiver)
    assert "Telemetry:    off" in proc.stdout


#: CHILD as a uid without a passwd entry (as containers run): runs without root, unlike a real uid.
NO_PASSWD_ENTRY = (
    "import pwd\ndef _no_entry(uid): raise KeyError(f'getpwuid(): uid not found: {uid}')\npwd.getpwuid = _no_entry\n"
)


def test_empty_home_and_clacky_home_and_no_passwd_entry(receiver, open_dir, tmp_path):
    """An empty HOME is unset, not the root directory: nothing is written to /.clacky."""
    assert not os.path.exists("/.clacky")
    env = unusable_env(receiver, open_dir, HOME="", CLACKY_HOME="")
    proc = subprocess.run(
        [PYTHON, "-c", NO_PASSWD_ENTRY + CHILD, "off"], env=env, capture_output=True, text=True, timeout=60,
        cwd=tmp_path,
    )  # fmt: skip
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    check_off_and_loaded(out, receiver)
    assert "cannot be resolved" in out["off_reason"] and "HOME is empty or unset" in out["off_reason"]
    assert not os.path.exists("/.clacky")


@pytest.mark.parametrize("clacky_home", ["", "~", "~/sub"])
def test_empty_home_falls_back_to_the_passwd_entry(monkeypatch, clacky_home):
    """Python expands ~ with HOME="" to "/": the home was /.clacky. Resolved only, nothing written."""
    import pwd

    from clacky_ipy.identity import clacky_home as resolve

    monkeypatch.setenv("HOME", "")
    monkeypatch.setenv("CLACKY_HOME", clacky_home)
    user = pwd.getpwuid(os.getuid()).pw_dir
    expected = {"": ".clacky", "~": "", "~/sub": "sub"}[clacky_home]
    assert resolve() == Path(user, expected) != Path("/.clacky")


@needs_root
def test_home_of_another_user(receiver, open_dir):
    env = unusable_env(receiver, open_dir, HOME="/root")  # 0700, not this uid's
    out, proc, _ = run_child(env, "off", user=UNKNOWN_UID)
    check_off_and_loaded(out, receiver)
    assert "Permission denied" in out["off_reason"] or "cannot be checked" in out["off_reason"]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("kind", ["symlink loop", "name too long"])
def test_home_that_cannot_be_checked(receiver, tmp_path, open_dir, kind):
    """The saved opt-out cannot be checked (stat fails with ELOOP / ENAMETOOLONG, as it fails with
    EACCES for another user's home): loading works, and telemetry stays off with that reason."""
    if kind == "symlink loop":
        home = tmp_path / "loop"
        home.symlink_to(home)
    else:
        home = tmp_path / (("x" * 250 + "/") * 20)
    out, proc, _ = run_child(unusable_env(receiver, open_dir, CLACKY_HOME=str(home)), "off")
    check_off_and_loaded(out, receiver)
    assert "cannot be checked" in out["off_reason"] and out["off_reason_after"]
    assert "Telemetry:    off" in proc.stdout


def brand_env(receiver, home):
    return subprocess_env(CLACKY_LICENSE_SERVER=receiver.url, CLACKY_HOME=str(home))


def mark_notice_seen(home):
    home.mkdir(parents=True, exist_ok=True)
    (home / "ipy-telemetry-notice-shown").write_text("shown\n")


def hostile_brand(kind, path):
    if kind == "deeply nested":
        path.write_text("a: " + "[" * 20000 + "]" * 20000 + "\n")
    elif kind == "5 MB":
        path.write_text("device_id: big\nproduct_name: x\npackage_name: y\n" + "k: " + "v" * (5 * 1024 * 1024) + "\n")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "not utf-8":
        path.write_bytes(b"device_id: \xff\xfe\n")
    elif kind == "not yaml":
        path.write_text(": : [ not yaml")


@pytest.mark.parametrize(
    "kind", ["deeply nested", "5 MB", "fifo", "symlink to /dev/zero", "directory", "not utf-8", "not yaml"]
)
def test_hostile_brand_yml(receiver, tmp_path, kind):
    home = tmp_path / "home"
    mark_notice_seen(home)
    hostile_brand(kind, home / "brand.yml")
    out, proc, _ = run_child(brand_env(receiver, home), timeout=60)
    assert out["load_ok"] and out["status_ok"] and out["cell_ok"] and out["off_reason"] is None
    assert out["load_s"] < 10 and out["status_s"] < 10, out  # generous: "does not hang"
    assert out["device_id"] == computed_device_id(subprocess_env())
    events = receiver.events()
    assert [e.get("device_id") for e in events] == [out["device_id"]] * 2  # startup and the task
    assert "Device id:" in proc.stdout


def test_status_answers_at_once_while_the_worker_reads_brand_yml(ip, receiver, capsys):
    """The worker holds the context lock while it reads brand.yml (here: for ever): status never
    waits on it, and says the device id is still being computed."""
    import threading

    from conftest import CLIENT, load, run

    load(ip, endpoint=receiver.url)
    receiver.wait()
    capsys.readouterr()
    done = threading.Event()
    with CLIENT._context_lock:
        CLIENT._context = None  # as if the worker were still reading brand.yml
        worker = threading.Thread(target=lambda: (run(ip, "%clacky_telemetry status"), done.set()), daemon=True)
        worker.start()
        answered = done.wait(10)
    assert answered, "status waited for the device id"
    out = capsys.readouterr().out
    assert "Device id:    still being computed" in out and "Telemetry:    on" in out
    for _ in range(100):  # released: the id is there next time
        run(ip, "%clacky_telemetry status")
        if computed_device_id() in capsys.readouterr().out:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the device id never appeared")
