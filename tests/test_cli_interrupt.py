"""Ctrl-C during a command that opens a database: one line saying what is true, exit code 130, the
database as it was (a real `python -m clacky_ipy` child, a real SIGINT, SQLite and PostgreSQL)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest
from conftest import PYTHON, subprocess_env

from clacky_ipy import cli
from clacky_ipy.store import ROLLUP_TABLES, open_store, rebuild

UNCHANGED = "interrupted; the database is unchanged"


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "clacky_ipy", *args],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def interrupt(proc: subprocess.Popen) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, out, err


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.005)


def snapshot(db: str) -> dict[str, list]:
    """Every row of the events and of each rollup, in order: what "unchanged" compares."""
    store = open_store(db, create=False)
    try:
        return {t: sorted(map(repr, store.query(f"SELECT * FROM {t}"))) for t in ("events", *ROLLUP_TABLES)}
    finally:
        store.close()


def raw_events(n: int) -> list[tuple]:
    """`n` raw rows (received_at, kind, device_id, status, model, duration_ms) over 30 days."""
    now = datetime.now(timezone.utc)
    return [
        (
            (now - timedelta(days=i % 30)).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
            "task" if i % 4 else "startup",
            f"device-{i % 5000}",
            "success" if i % 7 else "error",
            f"model-{i % 11}",
            i % 9000,
        )
        for i in range(n)
    ]


INSERT = "INSERT INTO events (received_at, kind, device_id, status, model, duration_ms) VALUES (?, ?, ?, ?, ?, ?)"


def test_ctrl_c_during_an_sqlite_rebuild_is_one_line_and_130_and_the_database_unchanged(tmp_path):
    db = str(tmp_path / "events.db")
    open_store(db).close()
    with sqlite3.connect(db) as con:  # raw rows only, quickly; `rebuild` makes their rollups
        con.executemany(INSERT, raw_events(150_000))
    con.close()
    rebuild(db)
    before = snapshot(db)
    proc = start("rebuild", "--db", db)
    probe = sqlite3.connect(db, timeout=0, isolation_level=None)

    def rebuilding() -> bool:  # its transaction holds the write lock
        try:
            probe.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True
        probe.execute("ROLLBACK")
        return False

    try:
        wait_for(rebuilding, "took the write lock")
    finally:
        probe.close()
    code, out, err = interrupt(proc)
    assert (code, out, err) == (130, "", f"clacky-ipy rebuild: {UNCHANGED}\n")
    assert snapshot(db) == before
    assert subprocess.run([PYTHON, "-m", "clacky_ipy", "report", "--db", db], env=subprocess_env()).returncode == 0


@pytest.fixture
def locked_pg(pg_url):
    """A PostgreSQL database with events and rollups, and `lock(table)`: a foreign session holding
    that table's strongest lock, so that a command waits on it, inside its transaction."""
    import psycopg

    store = open_store(pg_url)
    store.engine.transaction([(INSERT, [list(row) for row in raw_events(2_000)])])
    store.close()
    rebuild(pg_url)
    holder = psycopg.connect(pg_url)
    watcher = psycopg.connect(pg_url, autocommit=True)

    def lock(table: str) -> None:
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def waiting() -> bool:  # the command's session waits on that lock
        sql = "SELECT 1 FROM pg_stat_activity WHERE application_name = 'clacky-ipy' AND wait_event_type = 'Lock'"
        return bool(watcher.execute(sql).fetchall())

    try:
        yield pg_url, lock, waiting, holder
    finally:
        holder.close()
        watcher.close()


@pytest.mark.parametrize("command, table", [("rebuild", "events"), ("report", "rollup_daily")])
def test_ctrl_c_during_a_postgres_command_is_one_line_and_130_and_the_database_unchanged(locked_pg, command, table):
    url, lock, waiting, holder = locked_pg
    before = snapshot(url)
    lock(table)
    proc = start(command, "--db", url)
    try:
        wait_for(waiting, f"waited on the lock of {table}")
    finally:
        code, out, err = interrupt(proc)
        holder.rollback()
    assert (code, out, err) == (130, "", f"clacky-ipy {command}: {UNCHANGED}\n")
    assert snapshot(url) == before


def database_commands() -> list[str]:
    """Every command with a --db, but `collect` (Ctrl-C stops it as SIGTERM does: exit 0)."""
    (choices,) = [a.choices for a in cli.parser()._actions if isinstance(a.choices, dict)]
    named = [name for name, sub in choices.items() if any("--db" in a.option_strings for a in sub._actions)]
    return [name for name in named if name != "collect"]


#: What each database command needs besides --db to run, and what its line says when Ctrl-C stops
#: it before it changed anything (a new command: add it here).
ARGUMENTS: dict[str, tuple[list[str], str]] = {
    "report": ([], UNCHANGED),
    "rebuild": ([], UNCHANGED),
    "prune": (
        ["--older-than", "7"],
        "interrupted; what was deleted so far is gone, the rest kept; run it again to finish",
    ),
    "forget": (["device-1"], "interrupted; the devices are partly forgotten; run the same forget again to finish"),
}


@pytest.mark.parametrize("command", database_commands())
def test_ctrl_c_is_one_line_and_130_for_every_command_that_opens_a_database(locked_pg, command):
    """Handled once, in the dispatch: each command stopped while it waits on its database."""
    url, lock, waiting, holder = locked_pg
    before = snapshot(url)
    for table in ("meta", "events", *ROLLUP_TABLES):
        lock(table)
    if command not in ARGUMENTS:
        pytest.fail(f"a new database command, {command}: add what it needs besides --db to ARGUMENTS")
    arguments, said = ARGUMENTS[command]
    proc = start(command, "--db", url, *arguments)
    try:
        wait_for(waiting, "waited on the database")
    finally:
        code, out, err = interrupt(proc)
        holder.rollback()
    assert (code, out, err) == (130, "", f"clacky-ipy {command}: {said}\n")
    assert snapshot(url) == before
