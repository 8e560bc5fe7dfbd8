"""The store's interface: batches, and an operator's mistakes as one-line `StoreError`s."""

from __future__ import annotations

import sqlite3

import pytest

from clacky_ipy.store import StoreError, open_store


def test_batch_is_stored_in_order(tmp_path):
    store = open_store(tmp_path / "e.db")
    store.add_batch([("2026-11-20T10:00:00.000000Z", "startup", {"device_id": "d1", "ci": False})] * 2)
    store.add("task", {"device_id": "d1", "status": "success", "duration_ms": 5})
    assert store.count() == 3
    rows = store.rows()
    assert [r["kind"] for r in rows] == ["startup", "startup", "task"] and rows[2]["duration_ms"] == 5
    store.close()


@pytest.mark.parametrize("name", ["a#b.db", "a?mode=ro.db", "a%20b.db", "x?.db#frag"])
def test_path_with_uri_characters_is_a_path(tmp_path, name):
    store = open_store(tmp_path / name)
    store.add("task", {"status": "success"})
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [name]
    reader = open_store(tmp_path / name, create=False)
    assert reader.count() == 1
    reader.close()


def _corrupt(path):
    path.write_bytes(b"this is not a database, just text " * 200)


def _foreign(path):
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE invoices (n INTEGER)")
    con.close()


def _foreign_events(path):
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE events (what TEXT)")
    con.close()


@pytest.mark.parametrize(
    ("make", "create", "words"),
    [
        (lambda p: p.mkdir(), True, "folder"),
        (lambda p: p.mkdir(), False, "folder"),
        (lambda p: None, False, "no database"),
        (lambda p: p.write_bytes(b""), False, "empty"),
        (_corrupt, True, "not a usable"),
        (_corrupt, False, "not a usable"),
        (_foreign, True, "something else"),
        (_foreign, False, "not a clacky-ipy database"),
        (_foreign_events, True, "something else"),
    ],
)
def test_operator_errors_are_one_line(tmp_path, make, create, words):
    path = tmp_path / "e.db"
    make(path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(StoreError) as err:
        open_store(path, create=create)
    message = str(err.value)
    assert words in message and "\n" not in message
    if before is not None:
        assert path.read_bytes() == before  # nothing written into what is not ours


def test_missing_folder(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "nowhere" / "e.db")
    assert not (tmp_path / "nowhere").exists()
