"""What a newcomer tripped on: a stale saved choice in status, the extension's own cells
counted as tasks, a refused endpoint's message, the report's --db and a fresh database,
times without a date or zone in the log. Real shells, a real CLI, a real PostgreSQL."""

from __future__ import annotations

import re
import subprocess
from datetime import datetime

from conftest import PYTHON, load, run, subprocess_env

import clacky_ipy
from clacky_ipy.config import OFF_FILE


def test_status_after_the_saved_off_was_removed_in_a_shell_says_the_session_stays_off(ip, receiver, home, capsys):
    load(ip, endpoint=receiver.url)
    run(ip, "%clacky_telemetry off")
    env = subprocess_env(CLACKY_HOME=str(home))
    subprocess.run([PYTHON, "-m", "clacky_ipy", "telemetry", "on"], env=env, check=True, capture_output=True)
    assert not (home / OFF_FILE).exists()
    capsys.readouterr()
    run(ip, "%clacky_telemetry")
    out = capsys.readouterr().out
    assert "off, saved in" not in out
    assert f"{home / OFF_FILE} was removed" in out and "this session stays off" in out
    assert "Telemetry:    off" in out


def test_the_extensions_own_cells_are_not_tasks(ip, receiver, capsys):
    load(ip, endpoint=receiver.url, track_cells=True)
    for cell in ("%clacky_telemetry log", "%clacky_telemetry flush", "%clacky_telemetry status",
                 "%clacky_telemetry", "# check\n%clacky_telemetry log 5\n"):  # fmt: skip
        run(ip, cell)
    run(ip, "x = 1")
    run(ip, "%clacky_telemetry log\nx = 2")  # the user's code too: a task
    receiver.wait()
    assert len(receiver.events("task")) == 2


def test_a_refused_endpoint_is_one_sentence(ip, capsys):
    load(ip)
    capsys.readouterr()
    run(ip, "%config ClackyTelemetry.endpoint = 'ftp://example.com'")
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "clacky_ipy: refused ClackyTelemetry.endpoint: 'ftp://example.com' is not an http(s) URL, "
        "so telemetry is off until a valid one is set"
    )


def test_log_times_are_iso_8601_with_an_offset(ip, receiver, capsys):
    load(ip, endpoint=receiver.url)
    receiver.wait()
    capsys.readouterr()
    run(ip, "%clacky_telemetry log")
    out = capsys.readouterr().out
    stamp = re.search(r"^(\S+)  POST /api/v1/telemetry/startup", out, re.M).group(1)
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() is not None
    assert abs(parsed.timestamp() - clacky_ipy.recent()[0]["time"]) < 1


def test_report_help_names_both_engines_and_a_fresh_postgres_has_nothing_collected_yet(pg_url):
    env = subprocess_env()
    proc = subprocess.run([PYTHON, "-m", "clacky_ipy", "report", "--help"], env=env, capture_output=True, text=True)
    assert "postgresql://" in " ".join(proc.stdout.split()[proc.stdout.index("--db") :][:20])
    proc = subprocess.run(
        [PYTHON, "-m", "clacky_ipy", "report", "--db", pg_url], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "nothing collected yet" in proc.stderr and "not a clacky-ipy database" not in proc.stderr
