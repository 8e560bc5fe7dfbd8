"""A random device id on request: `clacky-ipy telemetry reset-id` and `%clacky_telemetry reset-id`
write one into the Clacky home's brand.yml (0600, atomically, the rest kept), the next events
carry it, and status says it is random. A real CLI, a real shell, a real server."""

from __future__ import annotations

import re
import stat
import subprocess

import yaml
from conftest import PYTHON, load, run, subprocess_env

from clacky_ipy.identity import computed_device_id

HEX64 = re.compile(r"[0-9a-f]{64}")


def cli(home, *args):
    env = subprocess_env(CLACKY_HOME=str(home))
    return subprocess.run([PYTHON, "-m", "clacky_ipy", "telemetry", *args], env=env, capture_output=True, text=True)


def test_reset_id_from_a_shell_writes_a_random_id_and_keeps_the_rest(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    derived = computed_device_id()  # what the gem stores: the derived id
    original = f"# written by the gem\nproduct_name: Acme\npackage_name: acme-agent\ndevice_id: {derived}\nextra: [1]\n"
    (home / "brand.yml").write_text(original)
    before = cli(home, "status").stdout
    assert derived in before and "derives it the same way" in " ".join(before.split())
    proc = cli(home, "reset-id")
    assert proc.returncode == 0, proc.stderr
    text = (home / "brand.yml").read_text()
    data = yaml.safe_load(text)
    assert HEX64.fullmatch(data["device_id"]) and data["device_id"] != computed_device_id()
    assert {k: v for k, v in data.items() if k != "device_id"} == {
        "product_name": "Acme", "package_name": "acme-agent", "extra": [1]}  # fmt: skip
    assert text.startswith("# written by the gem\nproduct_name: Acme\n")  # the gem's lines, as they were
    assert stat.S_IMODE((home / "brand.yml").stat().st_mode) == 0o600
    assert [p.name for p in home.iterdir()] == ["brand.yml"]  # no temporary file left
    after = cli(home, "status").stdout
    assert data["device_id"] in after and "random" in after and "random" not in before
    again = cli(home, "reset-id")
    assert yaml.safe_load((home / "brand.yml").read_text())["device_id"] != data["device_id"]
    assert again.returncode == 0


def test_reset_id_in_a_fresh_home_and_status_says_derived_before(tmp_path):
    home = tmp_path / "home"
    assert "random" not in cli(home, "status").stdout
    assert cli(home, "reset-id").returncode == 0
    assert set(yaml.safe_load((home / "brand.yml").read_text())) == {"device_id"}


def test_reset_id_never_clobbers_a_brand_yml_it_cannot_read(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "brand.yml").write_text("- not\n- a mapping\n")
    proc = cli(home, "reset-id")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert (home / "brand.yml").read_text() == "- not\n- a mapping\n"


def test_reset_id_magic_changes_the_id_of_the_next_events(ip, receiver, home, capsys):
    load(ip, endpoint=receiver.url)
    receiver.wait()
    (startup,) = receiver.events("startup")
    assert startup["device_id"] == computed_device_id()
    run(ip, "%clacky_telemetry reset-id")
    assert "New random device id" in capsys.readouterr().out
    new_id = yaml.safe_load((home / "brand.yml").read_text())["device_id"]
    run(ip, "import clacky_ipy; clacky_ipy.task(model='m')")
    receiver.wait()
    (task,) = receiver.events("task")
    assert task["device_id"] == new_id != startup["device_id"]
    run(ip, "%clacky_telemetry status")
    out = capsys.readouterr().out
    assert new_id in out and "random" in out
