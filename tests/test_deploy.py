"""The systemd unit shipped in deploy/: systemd accepts it, and its ExecStart runs a collector."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import PYTHON, free_port, subprocess_env

from clacky_ipy.guard import hash_password

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "clacky-collector.service"
BINARY = "/opt/clacky-ipy/bin/clacky-ipy"


def exec_start() -> str:
    (line,) = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    return line[len("ExecStart=") :]


def local_unit(tmp_path: Path) -> Path:
    """The unit with its binary replaced by a script running this checkout's clacky-ipy."""
    script = tmp_path / "clacky-ipy"
    script.write_text(f'#!/bin/sh\nexec {PYTHON} -m clacky_ipy "$@"\n')
    script.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(BINARY, str(script)))
    return unit


def test_systemd_analyze_verifies_the_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze here: test_the_exec_start_command_line_serves covers the command")
    out = subprocess.run(
        ["systemd-analyze", "verify", str(local_unit(tmp_path))], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr


def test_the_exec_start_command_line_serves(tmp_path):
    """ExecStart as systemd would split it, with this machine's paths: a collector that a probe,
    a password and a rate limit guard."""
    credentials = tmp_path / "credentials"
    credentials.write_text(f"ingest:{hash_password('pw')}\n")
    port = free_port()
    line = exec_start().replace("${CLACKY_COLLECTOR_DB}", str(tmp_path / "events.db"))
    line = line.replace("/etc/clacky-collector/credentials", str(credentials))
    line = re.sub(r"--port \d+", f"--port {port}", line)
    argv = shlex.split(line)
    assert argv[0] == BINARY and argv[1] == "collect"
    proc = subprocess.Popen(
        [PYTHON, "-m", "clacky_ipy", *argv[1:]],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "collector on" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        assert requests.get(url + "/readyz", timeout=5).status_code == 200
        body = {"device_id": "e" * 64}
        assert requests.post(url + "/api/v1/telemetry/task", json=body, timeout=5).status_code == 401
        ok = requests.post(url + "/api/v1/telemetry/task", json=body, auth=("ingest", "pw"), timeout=10)
        assert ok.status_code == 201
        proc.terminate()  # systemd's KillSignal
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert "Traceback" not in proc.stderr.read()
