"""An operator's mistake gets one line on stderr and exit code 2, never a traceback, and
nothing is created or printed first (`python -m clacky_ipy` in a child process)."""

from __future__ import annotations

import contextlib
import io
import socket
import sqlite3
import subprocess
import time

import pytest
import requests
from conftest import PYTHON, free_port, subprocess_env
from hypothesis import given, settings
from hypothesis import strategies as st

from clacky_ipy import cli
from clacky_ipy.store import StoreError, open_store


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "clacky_ipy", *args], env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == ""  # refused before any output
    for word in words:
        assert word in proc.stderr


@pytest.fixture
def good_db(tmp_path):
    path = tmp_path / "good.db"
    store = open_store(path)
    store.add("startup", {"device_id": "d1"})
    store.close()
    return path


def corrupt(path):
    path.write_bytes(b"SQLite format 3\x00" + b"\x13\x37" * 4000)
    return path


def foreign(path):
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
        con.execute("INSERT INTO invoices (amount) VALUES (1.5)")
    con.close()
    return path


# -- report -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p, id="missing"),
        pytest.param(lambda p: p.write_bytes(b"") or p, id="empty"),
        pytest.param(corrupt, id="corrupt"),
        pytest.param(foreign, id="foreign"),
        pytest.param(lambda p: p.mkdir() or p, id="directory"),
        pytest.param(lambda p: p.write_text("just text, not a database\n" * 100) and p, id="text"),
    ],
)
def test_report_on_an_unusable_database(tmp_path, make):
    path = make(tmp_path / "events.db")
    before = sorted(p.name for p in tmp_path.iterdir())
    for fmt in ("table", "json", "csv"):
        one_line_error(run("report", "--db", str(path), "--format", fmt))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created (no -wal, no -shm)


def test_report_refuses_the_foreign_database_without_touching_it(tmp_path):
    path = foreign(tmp_path / "other.db")
    before = path.read_bytes()
    one_line_error(run("report", "--db", str(path)), str(path))
    assert path.read_bytes() == before


@pytest.mark.parametrize("days", ["1000000000", "0", "-3", "ten", "36501"])
def test_report_days_out_of_range(good_db, days):
    one_line_error(run("report", "--db", str(good_db), "--days", days), "--days")


def test_report_days_at_the_bound(good_db):
    assert run("report", "--db", str(good_db), "--days", "36500").returncode == 0


def test_report_plot_into_a_missing_folder_is_refused_before_printing(good_db, tmp_path):
    target = tmp_path / "no" / "such" / "folder" / "trend.png"
    one_line_error(run("report", "--db", str(good_db), "--plot", str(target)), "does not exist")
    assert not (tmp_path / "no").exists()
    one_line_error(run("report", "--db", str(good_db), "--plot", str(tmp_path)), "folder")


@pytest.mark.parametrize("name", ["events#1.db", "events?mode=rwc.db", "ev?x#y.db", "events.db?mode=rwc"])
def test_report_path_with_uri_characters_creates_no_stray_file(tmp_path, name):
    one_line_error(run("report", "--db", str(tmp_path / name)))
    assert list(tmp_path.iterdir()) == []


def test_report_path_with_uri_characters_is_read_as_a_path(tmp_path):
    path = tmp_path / "a#b?c.db"
    store = open_store(path)
    store.add("startup", {"device_id": "d1"})
    store.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run("report", "--db", str(path), "--format", "json")
    assert proc.returncode == 0 and '"startups": 1' in proc.stdout, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# -- collect ------------------------------------------------------------------------------------
def test_collect_database_in_a_missing_folder(tmp_path):
    one_line_error(run("collect", "--db", str(tmp_path / "nope" / "events.db"), "--port", "0"), "nope")
    assert not (tmp_path / "nope").exists()


def test_collect_on_a_corrupt_database(tmp_path):
    path = corrupt(tmp_path / "events.db")
    before = path.read_bytes()
    one_line_error(run("collect", "--db", str(path), "--port", "0"), str(path))
    assert path.read_bytes() == before


def test_collect_on_a_foreign_database(tmp_path):
    path = foreign(tmp_path / "events.db")
    one_line_error(run("collect", "--db", str(path), "--port", "0"), str(path))


def test_collect_on_a_directory(tmp_path):
    one_line_error(run("collect", "--db", str(tmp_path), "--port", "0"))


def test_collect_on_a_port_in_use_creates_no_database(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        one_line_error(run("collect", "--db", str(tmp_path / "e.db"), "--port", str(port)), "cannot listen", str(port))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("port", ["65536", "70000", "-1", "http"])
def test_collect_on_an_impossible_port_creates_no_database(tmp_path, port):
    one_line_error(run("collect", "--db", str(tmp_path / "e.db"), "--port", port), "--port")
    assert list(tmp_path.iterdir()) == []


def test_collect_on_an_address_not_of_this_machine(tmp_path):
    one_line_error(run("collect", "--db", str(tmp_path / "e.db"), "--host", "203.0.113.7", "--port", "0"))
    assert list(tmp_path.iterdir()) == []


def start(tmp_path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "clacky_ipy", "collect", "--db", str(tmp_path / "e.db"), *args],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_collect_warns_when_it_binds_beyond_loopback(tmp_path):
    port = free_port()
    proc = start(tmp_path, "--host", "0.0.0.0", "--port", str(port))
    try:
        assert "collector on" in proc.stdout.readline()
        assert requests.post(f"http://127.0.0.1:{port}/api/v1/telemetry/startup", json={}, timeout=5).status_code == 201
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    (warning,) = err.strip().splitlines()
    assert "warning" in warning and "0.0.0.0" in warning and "unauthenticated" in warning


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_collect_on_loopback_says_nothing_on_stderr(tmp_path, host):
    proc = start(tmp_path, "--host", host, "--port", "0")
    try:
        assert "collector on" in proc.stdout.readline()
        time.sleep(0.2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == ""


def test_report_into_a_pipe_closed_early_is_quiet(tmp_path):
    """`clacky-ipy report ... | head -2`: exit 0, no BrokenPipeError traceback."""
    store = open_store(tmp_path / "many.db")
    store.add_batch([(f"2026-11-{1 + i % 28:02d}T10:00:00.000000Z", "task", {"model": f"m{i}"}) for i in range(3000)])
    store.close()
    proc = subprocess.Popen(
        [PYTHON, "-m", "clacky_ipy", "report", "--db", str(tmp_path / "many.db")],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline().startswith(b"clacky-ipy report")
    proc.stdout.close()  # the reader had what it wanted
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == ""


def test_collect_without_the_collector_extra_says_which_and_creates_nothing(tmp_path):
    code = (
        "import sys; sys.modules['uvicorn'] = None\n"  # as if uvicorn were not installed
        "from clacky_ipy.cli import main\n"
        f"sys.exit(main(['collect', '--db', {str(tmp_path / 'e.db')!r}, '--port', '0']))\n"
    )
    proc = subprocess.run([PYTHON, "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=60)
    one_line_error(proc, "clacky-ipy[collector]")
    assert list(tmp_path.iterdir()) == []


# -- QA: plot targets and database paths the file system refuses ----------------------------------
LONG = "a" * 300  # beyond NAME_MAX (255): ENAMETOOLONG from stat()


@pytest.mark.parametrize(
    "target, words",
    [
        pytest.param("trend.txt", ["txt", "png"], id="unsupported-format"),
        pytest.param("trend.docx", ["docx"], id="unknown-format"),
        pytest.param(LONG + ".png", ["too long"], id="name-too-long"),
        pytest.param("x.png/", ["folder"], id="trailing-slash"),
        pytest.param("file.png/inside.png", ["not a folder"], id="parent-is-a-file"),
        pytest.param("loop/inside.png", [], id="symlink-loop"),
    ],
)
def test_report_plot_target_refused_before_printing(good_db, tmp_path, target, words):
    (tmp_path / "file.png").write_bytes(b"")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    before = sorted(p.name for p in tmp_path.iterdir())
    path = str(tmp_path / target) + ("/" if target.endswith("/") else "")
    one_line_error(run("report", "--db", str(good_db), "--plot", path), "--plot", *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "target, words",
    [
        pytest.param("page.png", ["png", ".html"], id="not-html"),
        pytest.param(LONG + ".html", ["too long"], id="name-too-long"),
        pytest.param("missing/page.html", ["does not exist"], id="missing-folder"),
        pytest.param("file.png/page.html", ["not a folder"], id="parent-is-a-file"),
    ],
)
def test_report_html_target_refused_before_printing(good_db, tmp_path, target, words):
    (tmp_path / "file.png").write_bytes(b"")
    before = sorted(p.name for p in tmp_path.iterdir())
    one_line_error(run("report", "--db", str(good_db), "--html", str(tmp_path / target)), "--html", *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_report_csv_table_unknown_is_one_line(good_db):
    one_line_error(run("report", "--db", str(good_db), "--csv-table", "nope"), "--csv-table", "daily")


def test_report_html_without_a_suffix_names_the_file_it_wrote(good_db, tmp_path):
    pytest.importorskip("matplotlib")
    proc = run("report", "--db", str(good_db), "--html", str(tmp_path / "page"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "page.html").read_text().startswith("<!DOCTYPE html>")
    assert proc.stderr.strip() == f"page written to {tmp_path / 'page.html'}"


def test_report_plot_without_a_suffix_names_the_file_it_wrote(good_db, tmp_path):
    pytest.importorskip("matplotlib")
    proc = run("report", "--db", str(good_db), "--plot", str(tmp_path / "noext"))
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("noext")] == ["noext.png"]
    assert proc.stderr.strip() == f"plot written to {tmp_path / 'noext.png'}"


@pytest.mark.parametrize("fmt", ["svg", "PDF"])
def test_report_plot_in_another_supported_format(good_db, tmp_path, fmt):
    pytest.importorskip("matplotlib")
    target = tmp_path / f"trend.{fmt}"
    proc = run("report", "--db", str(good_db), "--plot", str(target))
    assert proc.returncode == 0 and target.stat().st_size > 0, proc.stderr
    assert proc.stderr.strip() == f"plot written to {target}"


def odd_paths(tmp_path):
    (tmp_path / "file.db").write_bytes(b"")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return [
        str(tmp_path / (LONG + ".db")),  # ENAMETOOLONG
        str(tmp_path / LONG / "events.db"),  # ENAMETOOLONG in a folder's name
        "/" + "/".join(["d" * 200] * 25) + "/e.db",  # beyond PATH_MAX
        str(tmp_path / "file.db" / "events.db"),  # ENOTDIR
        str(tmp_path / "loop" / "events.db"),  # ELOOP
        str(tmp_path / "loop"),  # ELOOP on the database itself
    ]


@pytest.mark.parametrize("command", ["report", "rebuild", "collect"])
def test_database_paths_the_file_system_refuses(tmp_path, command):
    for path in odd_paths(tmp_path):
        extra = ["--port", "0"] if command == "collect" else []
        proc = run(command, "--db", path, *extra)
        one_line_error(proc, "clacky-ipy " + command)
        assert "cannot listen" not in proc.stderr
        assert path[:100] in proc.stderr  # it names the database


def test_database_in_an_unreadable_folder(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads every folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0)
    try:
        for command in ("report", "rebuild"):
            one_line_error(run(command, "--db", str(locked / "e.db")), str(locked))
    finally:
        os.chmod(locked, 0o700)


ODD_PIECES = [*"a/.#?%:~ -\\\x00\x01\n\u00e9\u202e\ud800\U0001f600", "a" * 120, "..", "//", "file", "loop"]
ODD_PATH = st.lists(st.sampled_from(ODD_PIECES), max_size=12).map("".join)


@settings(max_examples=60, deadline=None)
@given(tail=ODD_PATH)
def test_odd_database_paths_are_one_line_or_work(tmp_path_factory, tail):
    """Whatever the path, `report` and `rebuild` exit 0 or 2 with one line, and the store that
    `collect` opens raises only `StoreError` (the collector's one line)."""
    base = tmp_path_factory.mktemp("odd")
    (base / "file").write_bytes(b"")
    (base / "loop").symlink_to(base / "loop")
    path = str(base) + "/" + tail
    for command in ("report", "rebuild"):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            code = cli.main([command, "--db", path])
        assert code in (0, 2) and len(err.getvalue().strip().splitlines()) <= 1, err.getvalue()
    try:
        open_store(path).close()
    except StoreError:
        pass  # `collect` prints it as one line (see test_database_paths_the_file_system_refuses)


@pytest.mark.parametrize("option", ["--notebook", "--keep"])
def test_demo_path_the_file_system_refuses(tmp_path, option):
    """`demo --notebook` / `--keep` with a name too long: one line, before any kernel starts."""
    one_line_error(run("demo", option, str(tmp_path / (LONG + ".ipynb"))), "clacky-ipy demo", "too long")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--credentials", "/nonexistent/credentials"], ["credentials file", "No such file"]),
        (["--rate-limit", "fast"], ["not a rate"]),
        (["--rate-limit", "5/fortnight"], ["not a rate"]),
        (["--rate-limit", "0/s"], ["above 0"]),
        (["--peer-rate-limit=-1/s"], ["not a rate"]),
        (["--burst", "0"], ["--burst"]),
        (["--retain-days", "0"], ["--retain-days"]),
        (["--retain-days", "soon"], ["--retain-days"]),
        (["--metrics-from", "10.0.0.0/33"], ["--metrics-from"]),
    ],
)
def test_collect_service_options_refused_in_one_line_and_nothing_created(tmp_path, args, words):
    db = tmp_path / "events.db"
    one_line_error(run("collect", "--db", str(db), "--port", "0", *args), *words)
    assert not db.exists()


@pytest.mark.parametrize("content", ["alice\n", "alice:plaintext\n", "# only a comment\n", ":scrypt$1$1$1$AA==$AA==\n"])
def test_collect_refuses_a_credentials_file_that_is_wrong(tmp_path, content):
    path = tmp_path / "credentials"
    path.write_text(content)
    one_line_error(run("collect", "--db", str(tmp_path / "e.db"), "--credentials", str(path)), "credentials file")


@pytest.mark.parametrize("command", [["prune", "--older-than", "3"], ["forget", "a" * 64]])
def test_prune_and_forget_on_a_missing_database(tmp_path, command):
    one_line_error(run(command[0], "--db", str(tmp_path / "nope.db"), *command[1:]), "no database")


def test_collect_refuses_a_metrics_folder_it_cannot_write(tmp_path):
    db = tmp_path / "events.db"
    proc = subprocess.run(
        [PYTHON, "-m", "clacky_ipy", "collect", "--db", str(db), "--port", "0"],
        env=subprocess_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "missing")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    one_line_error(proc, "PROMETHEUS_MULTIPROC_DIR")
    assert not db.exists()
