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

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pgcluster import Cluster, server_binaries, url_for


def _unavailable(reason: str) -> None:
    if os.environ.get("CLACKY_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL required (CLACKY_REQUIRE_POSTGRES=1) but {reason}", pytrace=False)
    pytest.skip(reason)


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
    cluster = _started_cluster()
    try:
        yield cluster.params
    finally:
        cluster.stop()


def _started_cluster() -> Cluster:
    """A throwaway cluster, running; or the skip (or failure) saying why there is none."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg 3 is not installed (pip install 'clacky-ipy[postgres]')")
    bindir = server_binaries()
    if bindir is None:
        _unavailable("no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin")
    cluster = Cluster(bindir)
    try:
        cluster.start()
    except KeyError:
        cluster.stop()
        _unavailable("running as root and there is no postgres user to run the server as")
    except subprocess.CalledProcessError as exc:
        cluster.stop()
        _unavailable(f"the throwaway PostgreSQL did not start: {(exc.stderr or b'').decode(errors='replace')[-300:]}")
    return cluster


@pytest.fixture
def postgres_cluster() -> Iterator[Cluster]:
    """A cluster of this test's own, which it may stop and start (`pause`, `resume`): an outage."""
    cluster = _started_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@contextmanager
def fresh_database(server: dict[str, str]) -> Iterator[str]:
    """The URL of a new, empty database on `server`, dropped afterwards."""
    import psycopg

    name = f"clacky_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(**{**server, "dbname": "postgres"}, autocommit=True)
    try:
        admin.execute(f"CREATE DATABASE {name}")
        yield url_for(server, name)
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.close()


@pytest.fixture
def pg_url(postgres_server) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped afterwards."""
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request, tmp_path) -> str:
    """Each engine in turn: an SQLite path, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "events.db")
    return request.getfixturevalue("pg_url")
