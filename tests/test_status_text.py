"""Status reads right: the device id exactly as it is sent (the payload's cleaned id, valid UTF-8,
at most 64 characters, shaped as `payload.DEVICE_ID`; a hostile brand.yml's is never sent, nor
printed), and the reason telemetry is off in one pair of parentheses."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import PYTHON, load, run, subprocess_env

import clacky_ipy

HOSTILE = '"\\e[2J\\e[31mRED\\u202eevil"'  # YAML: ESC [2J (clear screen), ESC [31m, RLO
SHOWN = "none sent: brand.yml's device_id is not an id (8 to 64 of A-Z, a-z, 0-9, _ and -)"


def brand(home, device_id):
    home.mkdir(parents=True, exist_ok=True)
    (home / "brand.yml").write_text(f"device_id: {device_id}\n", encoding="utf-8")


def device_line(out):
    (line,) = [line for line in out.splitlines() if line.startswith("Device id:")]
    return line.split(":", 1)[1].strip()


@pytest.mark.parametrize(("stored", "shown", "sent"), [(HOSTILE, SHOWN, None), ("a" * 200, "a" * 64, "a" * 64)])
def test_status_shows_what_is_sent_escaped(ip, receiver, home, capsys, stored, shown, sent):
    brand(home, stored)
    (home / "ipy-telemetry-notice-shown").write_text("shown\n")
    load(ip, endpoint=receiver.url)
    receiver.wait()
    capsys.readouterr()
    run(ip, "%clacky_telemetry status")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert device_line(out) == shown
    (event,) = receiver.events("startup")
    assert event.get("device_id") == sent
    assert json.loads(clacky_ipy.recent(1)[0]["payload"]).get("device_id") == sent


def test_shell_status_escapes_and_caps_the_stored_id(tmp_path):
    for stored, shown in ((HOSTILE, SHOWN), ("b" * 200, "b" * 64)):
        home = tmp_path / stored[:3].strip('"\\')
        brand(home, stored)
        env = subprocess_env(CLACKY_HOME=str(home))
        proc = subprocess.run(
            [PYTHON, "-m", "clacky_ipy", "telemetry", "status"], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout and "\u202e" not in proc.stdout
        assert device_line(proc.stdout) == shown


def telemetry_line(out):
    (line,) = [line for line in out.splitlines() if line.startswith("Telemetry:")]
    return line


def test_the_off_reason_is_in_one_pair_of_parentheses(ip, receiver, capsys):
    load(ip, endpoint=receiver.url)
    run(ip, "%clacky_telemetry off")
    capsys.readouterr()
    run(ip, "%clacky_telemetry status")
    line = telemetry_line(capsys.readouterr().out)
    assert line == "Telemetry:    off (the saved choice, made by %clacky_telemetry off or clacky-ipy telemetry off)"


def test_a_bad_endpoints_reason_is_in_one_pair_of_parentheses(ip, env, capsys):
    env.setenv("CLACKY_LICENSE_SERVER", "ftp://host")
    load(ip)
    capsys.readouterr()
    run(ip, "%clacky_telemetry status")
    line = telemetry_line(capsys.readouterr().out)
    assert line.startswith("Telemetry:    off (CLACKY_LICENSE_SERVER="), line
    assert line.replace("http(s)", "").count("(") == 1, line
