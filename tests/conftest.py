"""Shared fixtures: an isolated environment, a real HTTP receiver, a real shell.

Nothing here may reach the real OpenClacky hosts: the session points
CLACKY_LICENSE_SERVER at a closed loopback port and CLACKY_HOME at a temporary
directory before any test runs, and tests that want delivery point the endpoint
at a pytest-httpserver on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Set at import time, before any ClackyTelemetry can read its defaults.
_HOME = tempfile.mkdtemp(prefix="clacky-home-")
CLOSED_URL = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
ISOLATION = {"CLACKY_LICENSE_SERVER": CLOSED_URL, "CLACKY_HOME": _HOME}
SWITCHES = ("CLACKY_TELEMETRY", "DO_NOT_TRACK", "CLACKY_TELEMETRY_DEBUG", "CLACKY_LAUNCHED_BY")
os.environ.update(ISOLATION)
# The session's home has seen the notice, so that a child's events leave at once whatever ran
# before; tests of the notice itself use a fresh home (the `home` fixture, or their own).
Path(_HOME, "ipy-telemetry-notice-shown").write_text("shown\n")
for _name in SWITCHES:
    os.environ.pop(_name, None)
# A CI run never consumes the notice (it is unattended): the suite behaves the same inside CI,
# and the tests of CI detection set these themselves.
from clacky_ipy.identity import CI_VARS  # noqa: E402

SWITCHES = (*SWITCHES, "CI", *CI_VARS)
for _name in SWITCHES:
    os.environ.pop(_name, None)

from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

# A real PostgreSQL for the store's tests (skipped with the reason where no server exists).
from pgserver import db_target, pg_url, postgres_cluster, postgres_server  # noqa: E402, F401

import clacky_ipy  # noqa: E402
from clacky_ipy import client as client_module  # noqa: E402
from clacky_ipy.config import ClackyTelemetry  # noqa: E402

CLIENT = client_module.CLIENT
TELEMETRY_PATH = re.compile(r"/api/v1/telemetry/(startup|task)")


@pytest.fixture(autouse=True, scope="session")
def never_the_real_hosts():
    """Session-wide: loopback endpoint, temporary Clacky home, no inherited switches."""
    assert os.environ["CLACKY_LICENSE_SERVER"] == CLOSED_URL
    yield
    assert os.environ.get("CLACKY_LICENSE_SERVER", CLOSED_URL).startswith("http://127.0.0.1")


@pytest.fixture
def home(monkeypatch, tmp_path) -> Path:
    """A fresh Clacky home for one test."""
    path = tmp_path / "clacky-home"
    monkeypatch.setenv("CLACKY_HOME", str(path))
    return path


@pytest.fixture
def capsys(capfd):
    """The output of in-process shells, read through the file descriptors (pytest's capfd).

    The notice counts as seen only on a stream a person can see (a file descriptor, not an
    in-memory buffer such as pytest's own capsys), as a real terminal's stdout is.
    """
    return capfd


@pytest.fixture
def env(monkeypatch, home):
    """Per-test environment switches, undone afterwards."""
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="session")
def httpserver_listen_address():
    """pytest-httpserver on 127.0.0.1 (not "localhost"): no name lookups in the tests' requests."""
    return ("127.0.0.1", 0)


class Receiver:
    """What the local server received, decoded."""

    def __init__(self, server):
        self.server = server
        self.url = server.url_for("").rstrip("/")

    def respond(self, status=201, headers=None):
        self.server.clear_all_handlers()
        self.server.expect_request(TELEMETRY_PATH, method="POST").respond_with_data("", status=status, headers=headers)

    @property
    def requests(self):
        return [request for request, _ in self.server.log]

    def events(self, kind=None):
        out = []
        for request in self.requests:
            event = request.path.rsplit("/", 1)[-1]
            if kind is None or event == kind:
                out.append(json.loads(request.get_data()))
        return out

    def wait(self, timeout=5.0):
        assert clacky_ipy.flush(timeout), "the queue did not drain"

    def quiet(self, still=0.5, timeout=10.0):
        """Wait until nothing new arrived for `still` seconds. Another process (a kernel) sends
        once its shell has been idle a moment (deferral), so right after its last cell some of
        its events may still be on their way."""
        deadline = time.monotonic() + timeout
        count, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if len(self.server.log) != count:
                count, since = len(self.server.log), time.monotonic()
            elif time.monotonic() - since >= still:
                return
            time.sleep(0.05)


@pytest.fixture
def receiver(httpserver):
    """A real HTTP server on 127.0.0.1 that answers 201 to both telemetry paths."""
    rec = Receiver(httpserver)
    rec.respond()
    return rec


@pytest.fixture
def fresh_client(env):
    """The process-wide client as a new process would have it."""
    CLIENT.transport.flush(2)
    CLIENT.reset()
    yield CLIENT
    CLIENT.transport.flush(2)
    CLIENT.reset()


def _unload(ip):
    if "clacky_ipy" in ip.extension_manager.loaded:
        ip.run_line_magic("unload_ext", "clacky_ipy")


@pytest.fixture
def ip(fresh_client):
    """A real InteractiveShell with no clacky_ipy config and the extension unloaded."""
    shell = InteractiveShell.instance()
    _unload(shell)
    shell.config.pop("ClackyTelemetry", None)
    ClackyTelemetry._refused_live.clear()
    yield shell
    _unload(shell)
    shell.config.pop("ClackyTelemetry", None)


def run(shell, source):
    """Run one top-level cell, as a frontend does."""
    return shell.run_cell(source, store_history=True)


def load(shell, **traits):
    """Set ClackyTelemetry traits in the shell's config, then %load_ext in a cell."""
    for name, value in traits.items():
        shell.config.ClackyTelemetry[name] = value
    result = run(shell, "%load_ext clacky_ipy")
    assert result.success, result.error_in_exec
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def blackhole():
    """A server that accepts connections (the kernel does) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def refused_url():
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def subprocess_env(**extra):
    """The environment for a child interpreter: isolated, with this checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES}
    env.update(ISOLATION)
    # the same clacky_ipy as this process imported (the installed one, or a checkout)
    env["PYTHONPATH"] = str(Path(clacky_ipy.__file__).resolve().parents[1])
    env.update(extra)
    return env


PYTHON = sys.executable
