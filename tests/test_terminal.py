"""Real terminal IPython processes: --ext, ipython_config.py, the command line, -c."""

from __future__ import annotations

import json
import subprocess

from conftest import PYTHON, subprocess_env


def ipython(*args, env, timeout=60):
    cmd = [PYTHON, "-m", "IPython", "--no-banner", "--colors=nocolor", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_ext_and_command_line_config(receiver, tmp_path):
    env = subprocess_env(CLACKY_HOME=str(tmp_path))
    proc = ipython(
        "--quick", "--ext", "clacky_ipy", f"--ClackyTelemetry.endpoint={receiver.url}",
        "--ClackyTelemetry.track_cells=True", "-c", "x = 1", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "%clacky_telemetry off" in proc.stdout  # the notice, in the output of the first cell
    assert len(receiver.events("startup")) == 1
    (task,) = receiver.events("task")  # `ipython -c` runs with store_history=False: still a top-level cell
    assert (task["trigger"], task["status"], task["frontend"]) == ("cell", "success", "terminal")


def test_ipython_config_file(receiver, tmp_path):
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "ipython_config.py").write_text(
        'c.InteractiveShellApp.extensions = ["clacky_ipy"]\n'
        f'c.ClackyTelemetry.endpoint = "{receiver.url}"\n'
        "c.ClackyTelemetry.track_cells = True\n"
    )
    env = subprocess_env(CLACKY_HOME=str(tmp_path / "home"))
    proc = ipython(f"--profile-dir={profile}", "-c", "1/0", env=env)
    assert "ZeroDivisionError" in proc.stdout + proc.stderr
    assert len(receiver.events("startup")) == 1
    (task,) = receiver.events("task")
    assert (task["status"], task["error_kind"]) == ("error", "ZeroDivisionError")


def test_bad_value_on_the_command_line_is_one_line(receiver, tmp_path):
    env = subprocess_env(CLACKY_HOME=str(tmp_path))
    proc = ipython("--quick", "--ext", "clacky_ipy", "--ClackyTelemetry.timeout=-2", "-c", "x = 1", env=env)
    assert proc.returncode == 0
    lines = [line for line in proc.stderr.splitlines() if "clacky_ipy" in line]
    assert len(lines) == 1 and "refused ClackyTelemetry.timeout" in lines[0]


def test_debug_in_the_terminal(receiver, tmp_path):
    env = subprocess_env(CLACKY_HOME=str(tmp_path), CLACKY_TELEMETRY_DEBUG="1", CLACKY_LICENSE_SERVER=receiver.url)
    proc = ipython("--quick", "--ext", "clacky_ipy", "-c", "%%clacky --model m\n1", env=env)
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["startup", "task"]
    assert events[1]["payload"]["model"] == "m"
    assert receiver.requests == []


def test_opted_out_terminal_opens_no_socket(receiver, tmp_path):
    env = subprocess_env(CLACKY_HOME=str(tmp_path), CLACKY_TELEMETRY="0", CLACKY_LICENSE_SERVER=receiver.url)
    code = "%%clacky\nimport threading; print(sorted(t.name for t in threading.enumerate()))"
    proc = ipython("--quick", "--ext", "clacky_ipy", "--ClackyTelemetry.track_cells=True", "-c", code, env=env)
    assert "clacky-telemetry" not in proc.stdout
    assert "%clacky_telemetry off" not in proc.stdout  # no notice while off
    assert receiver.requests == []
