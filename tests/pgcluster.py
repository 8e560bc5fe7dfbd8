"""A throwaway PostgreSQL cluster, for the tests (`pgserver.py`) and the benchmark.

No pytest here: bench/run.py starts a durable one with the same code.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from urllib.parse import urlencode


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
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server (again, after `pause`) and wait until it accepts connections."""
        options = [f"-k {self.base}", "-c listen_addresses=''", "-p 5432"]
        if not self.durable:
            options += ["-c fsync=off", "-c full_page_writes=off", "-c synchronous_commit=off"]
        options += [f"-c {setting}" for setting in self.settings]
        log = os.path.join(self.base, "server.log")
        b = self.bindir
        self._run(f"{b}/pg_ctl", "-D", self.data, "-l", log, "-w", "-t", "60", "-o", " ".join(options), "start")
        self.started = True

    def pause(self) -> None:
        """Stop the server (fast: open sessions are cut), keeping its data for `resume`: an outage."""
        if self.started:
            command = [*self.as_user, f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"]
            subprocess.run(command, capture_output=True, timeout=120)
            self.started = False

    def stop(self) -> None:
        self.pause()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
