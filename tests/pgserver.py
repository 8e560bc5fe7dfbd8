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
from collections.abc import Iterator, Sequence
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


def server_binaries() -> str | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return os.path.dirname(found[0]) if found else None


class Cluster:
    """A throwaway PostgreSQL cluster in a temporary directory, on a Unix socket there only.

    As root, initdb and postgres run as the ``postgres`` user (they refuse root) in a
    directory owned by it. ``durable=False`` (the tests) turns fsync off; the benchmark
    keeps PostgreSQL's durable defaults. Also used by bench/run.py.
    """

    def __init__(self, bindir: str, durable: bool = False, settings: Sequence[str] = ()) -> None:
        self.bindir = bindir
        self.durable = durable
        self.settings = list(settings)
        self.base = tempfile.mkdtemp(prefix="clacky-pg-")
        self.data = os.path.join(self.base, "data")
        self.as_user: list[str] = []
        self.started = False

    @property
    def params(self) -> dict[str, str]:
        return {"host": self.base, "port": "5432", "user": "postgres"}

    def url(self, dbname: str = "postgres") -> str:
        return url_for(self.params, dbname)

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_user, *command], check=True, capture_output=True, timeout=300)

    def start(self) -> Cluster:
        if os.geteuid() == 0:  # initdb and postgres refuse root: run them as the postgres user
            import pwd

            account = pwd.getpwnam("postgres")  # KeyError: no such user
            os.chown(self.base, account.pw_uid, account.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        b = self.bindir
        self._run(
            f"{b}/initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"
        )
        options = [f"-k {self.base}", "-c listen_addresses=''", "-p 5432"]
        if not self.durable:
            options += ["-c fsync=off", "-c full_page_writes=off", "-c synchronous_commit=off"]
        options += [f"-c {setting}" for setting in self.settings]
        log = os.path.join(self.base, "server.log")
        self._run(f"{b}/pg_ctl", "-D", self.data, "-l", log, "-w", "-t", "60", "-o", " ".join(options), "start")
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            command = [*self.as_user, f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"]
            subprocess.run(command, capture_output=True, timeout=120)
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
    try:
        yield cluster.params
    finally:
        cluster.stop()


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
