"""What the report prints is safe wherever it goes: a terminal, a spreadsheet, a JSON parser;
and its plot is readable (a date axis, a panel per figure, words when there is nothing)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from datetime import datetime

from conftest import PYTHON, subprocess_env
from hypothesis import given, settings
from hypothesis import strategies as st

from clacky_ipy import report, safe
from clacky_ipy.store import open_store

HOSTILE_NAMES = [
    '=HYPERLINK("http://evil.example","click")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A9)",
    "\tleading tab",
    "\rleading return",
    "\x1b[2J\x1b[31mred",
    "line\nforged  tasks 999",
    "bell\x07",
    "rtl\u202etxt.exe",
    "back\\x1b slash",
]


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"{name} in JSON output")

    return json.loads(text, parse_constant=refuse)


def base_report(**overrides):
    """A report's every section (as an empty database gives it), with `overrides`."""
    r = report._figures({name: [] for name in report.QUERIES}, None, False, "", datetime(2026, 11, 20))
    r.update(overrides)
    return r


def csv_cells(text: str) -> list[str]:
    """The text cells (numbers are unquoted, read as floats, and are no formulas)."""
    rows = csv.reader(io.StringIO(text, newline=""), quoting=csv.QUOTE_NONNUMERIC)
    return [cell for row in rows for cell in row if isinstance(cell, str)]


def test_csv_neutralises_formulas():
    r = base_report(tasks_by_model={name: 1 for name in HOSTILE_NAMES})
    text = report.render(r, "csv")
    cells = csv_cells(text)
    for name in HOSTILE_NAMES:
        if name.startswith(safe.FORMULA_START):
            assert safe.printable("'" + name) in cells
            assert name not in cells
    assert not any(cell.startswith(safe.FORMULA_START) for cell in cells)
    assert "'=HYPERLINK(" in text and "'@SUM(A1:A9)" in text and "'\\x09leading tab" in text
    assert all(ch == "\n" or ch.isprintable() for ch in text)  # `cat report.csv` is safe too


def test_table_escapes_control_characters_and_forges_no_line():
    r = base_report(tasks_by_trigger={name: 1 for name in HOSTILE_NAMES})
    table = report.render(r, "table")
    assert all(ch == "\n" or ch.isprintable() for ch in table)
    assert "\\x1b[2J" in table and "line\\x0aforged" in table and "\\u202e" in table
    assert "back\\\\x1b slash" in table  # a literal backslash cannot pass for an escape
    forged = [line for line in table.splitlines() if line.lstrip().startswith("forged")]
    assert forged == []


def test_json_is_always_valid_json():
    r = base_report(cost_usd={"total": float("inf"), "mean": float("nan")}, tasks_by_model={"\x1b": 1})
    parsed = strict_json(report.render(r, "json"))
    assert parsed["cost_usd"] == {"total": None, "mean": None}
    assert parsed["tasks_by_model"] == {"\x1b": 1}
    assert "\x1b" not in report.render(r, "json")  # escaped as \u001b


@settings(max_examples=200, deadline=None)
@given(
    names=st.dictionaries(st.text(max_size=20), st.integers(0, 2**63 - 1), max_size=6),
    cost=st.floats(allow_nan=True, allow_infinity=True),
)
def test_any_received_text_renders_safely(names, cost):
    r = base_report(tasks_by_model=names, tasks_by_provider=names, tasks_by_trigger=names,
                    cost_usd={"total": cost, "mean": cost})  # fmt: skip
    table = report.render(r, "table")
    assert all(ch == "\n" or ch.isprintable() for ch in table)
    rows = [line for line in table.splitlines() if line.startswith("  ")]
    assert len(table.splitlines()) >= len(rows) + 1 and all(line.strip() for line in rows)
    text = report.render(r, "csv")
    assert all(ch == "\n" or ch.isprintable() for ch in text)
    cells = csv_cells(text)
    assert not any(cell.startswith(safe.FORMULA_START) for cell in cells)
    assert strict_json(report.render(r, "json"))["tasks_by_model"] == names


def test_printable_round_trip_is_unambiguous():
    assert safe.printable("plain text, é, 日本") == "plain text, é, 日本"
    assert safe.printable("\x00\x1b\n\x7f\x85\u2028\U000e0001") == "\\x00\\x1b\\x0a\\x7f\\x85\\u2028\\U000e0001"
    assert safe.printable("\\x1b") != safe.printable("\x1b")


def test_the_command_over_hostile_stored_values(tmp_path):
    db = tmp_path / "hostile.db"
    store = open_store(db)
    for name in HOSTILE_NAMES:
        store.add("task", {"device_id": name, "model": name, "provider": name, "status": name, "trigger": name})
    store.add("startup", {"device_id": "d", "launch_source": HOSTILE_NAMES[0], "frontend": HOSTILE_NAMES[7]})
    for _ in range(2):  # two of these summed do not fit in 64 bits
        store.add("task", {"prompt_tokens": 2**62, "completion_tokens": 2**62, "cost_usd": 1e300, "duration_ms": 5})
    store.close()
    base = [PYTHON, "-m", "clacky_ipy", "report", "--db", str(db)]
    out = {}
    for fmt in ("json", "csv", "table"):
        proc = subprocess.run([*base, "--format", fmt], env=subprocess_env(), capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        out[fmt] = proc.stdout
    parsed = strict_json(out["json"])
    assert parsed["tasks"] == len(HOSTILE_NAMES) + 2
    assert not any(cell.startswith(safe.FORMULA_START) for cell in csv_cells(out["csv"]))
    assert all(ch == "\n" or ch.isprintable() for ch in out["table"])


def test_device_figures_say_what_they_count(tmp_path):
    """Distinct devices with a startup (6) can be fewer than the devices active on a day (14):
    the table says which is which."""
    r = base_report(unique_devices=6, new_devices=14, tasks=20)
    table = report.render(r, "table")
    assert "unique_devices (with a startup)" in table
    assert "new_devices (first seen in the period)" in table
    assert "active_devices (any event in the period)" in table
    assert json.loads(report.render(r, "json")).keys() == r.keys()  # the public keys stay
