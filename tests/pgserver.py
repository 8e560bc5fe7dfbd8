"""A real PostgreSQL server for the tests: a throwaway cluster for the session.

`postgres_server` starts one with the installed server binaries
(``/usr/lib/postgresql/*/bin/initdb`` and ``pg_ctl``) in a temporary directory,
listening on a Unix socket there only (no TCP port), and stops it at the end. The
server refuses to run as root, so as root it runs as the ``postgres`` user, in a
directory owned by that user. `pg_url` gives each test its own fresh database.

Where no server binary exists the tests that need one are skipped with that reason,
unless ``CLACKY_REQUIRE_POSTGRES=1`` (CI sets it when the binaries are there): then
failing to start is an error, never a silent skip. ``CLACKY_TEST_POSTGRES_URL``
points the tests at a running server instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest


def _unavailable(reason: str) -> None:
    if os.environ.get("CLACKY_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL required (CLACKY_REQUIRE_POSTGRES=1) but {reason}", pytrace=False)
    pytest.skip(reason)


def url_for(params: dict[str, str], dbname: str) -> str:
    """A ``postgresql://`` URL for `dbname` with the other connection parameters as a query."""
    rest = {k: str(v) for k, v in params.items() if k != "dbname"}
    return f"postgresql:///{dbname}?{urlencode(rest)}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[dict[str, str]]:
    """Connection parameters (host, port, user) of a running server, for the session."""
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg 3 is not installed (pip install 'clacky-ipy[postgres]')")
    given = os.environ.get("CLACKY_TEST_POSTGRES_URL")
    if given:
        yield psycopg.conninfo.conninfo_to_dict(given)
        return
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if not binaries:
        _unavailable("no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin")
    bindir = os.path.dirname(binaries[0])
    as_user: list[str] = []
    base = tempfile.mkdtemp(prefix="clacky-pg-")
    if os.geteuid() == 0:  # initdb and postgres refuse root: run them as the postgres user
        import pwd

        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            _unavailable("running as root and there is no postgres user to run the server as")
        os.chown(base, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = os.path.join(base, "data"), os.path.join(base, "server.log")

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    started = False
    try:
        run(f"{bindir}/initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
        options = f"-k {base} -c listen_addresses='' -p 5432 -c fsync=off -c full_page_writes=off"
        run(f"{bindir}/pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", options, "start")
        started = True
        yield {"host": base, "port": "5432", "user": "postgres"}
    except subprocess.CalledProcessError as exc:
        _unavailable(f"the throwaway PostgreSQL did not start: {(exc.stderr or b'').decode(errors='replace')[-300:]}")
    finally:
        if started:
            subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped afterwards."""
    import psycopg

    name = f"clacky_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(**{**postgres_server, "dbname": "postgres"}, autocommit=True)
    try:
        admin.execute(f"CREATE DATABASE {name}")
        yield url_for(postgres_server, name)
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request, tmp_path) -> str:
    """Each engine in turn: an SQLite path, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "events.db")
    return request.getfixturevalue("pg_url")
