"""A real JupyterLab or Notebook 7 server for the browser tests, and headless Chromium to open it.

`JupyterApp` runs ``jupyter lab`` / ``jupyter notebook --no-browser`` on 127.0.0.1 with a token, in
temporary home, config, data and runtime directories holding this checkout's server-extension
config and prebuilt labextension (as ``pip install`` puts them in ``sys.prefix``), and this checkout
importable by the server and its kernels. `browser` gives a Playwright Chromium page on Debian's
``/usr/bin/chromium``; where there is none (or no Playwright) the tests are skipped with the
reason, unless ``CLACKY_REQUIRE_BROWSER=1`` (CI sets it where Chromium is installed): then that is
a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pytest
from conftest import ISOLATION, SWITCHES, free_port

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "clacky_ipy" / "labextension"
SERVER_CONFIG = ROOT / "jupyter-config" / "jupyter_server_config.d" / "clacky_ipy.json"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Notebook 7.6.5's own page error, with or without any extension.
NOTEBOOK_OWN_ERROR = "Cannot read properties of undefined (reading 'schema')"


def unavailable(reason: str) -> None:
    if os.environ.get("CLACKY_REQUIRE_BROWSER") == "1":
        pytest.fail(f"a browser is required (CLACKY_REQUIRE_BROWSER=1) but {reason}", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if found is None:
        unavailable("no Chromium (Debian's chromium package: /usr/bin/chromium)")
    return found  # type: ignore[return-value]


class JupyterApp:
    """``jupyter lab`` or ``jupyter notebook`` on a free loopback port, stopped by `stop()`."""

    def __init__(
        self,
        tmp: Path,
        app: str = "lab",
        env: dict[str, str] | None = None,
        serverext: bool = True,
        labextension: bool = True,
    ):
        self.tmp = tmp
        self.app = app
        self.token = "clacky-test-token-" + os.urandom(8).hex()
        self.port = free_port()
        self.root = tmp / "root"
        self.clacky_home = tmp / "clacky-home"
        self.log = tmp / f"jupyter-{app}.log"
        for name in ("root", "home", "config/jupyter_server_config.d", "data/labextensions", "runtime"):
            (tmp / name).mkdir(parents=True, exist_ok=True)
        if not (BUILD / "package.json").exists():
            pytest.fail(f"no prebuilt labextension in {BUILD}: cd labextension && jlpm install && jlpm build")
        if serverext:
            shutil.copy(SERVER_CONFIG, tmp / "config" / "jupyter_server_config.d" / SERVER_CONFIG.name)
        else:  # an older server: the frontend extension without its handlers (also where the wheel enables them)
            off = {"ServerApp": {"jpserver_extensions": {"clacky_ipy": False}}}
            (tmp / "config" / "jupyter_server_config.json").write_text(json.dumps(off))
        target = tmp / "data" / "labextensions" / "clacky-ipy"
        if labextension:
            shutil.copytree(BUILD, target, dirs_exist_ok=True)
            shutil.copy(ROOT / "labextension" / "install.json", target / "install.json")
        else:  # where the wheel put it too (an installed clacky-ipy): disabled
            (tmp / "config" / "labconfig").mkdir(parents=True, exist_ok=True)
            disabled = {"disabledExtensions": {"clacky-ipy": True}}
            (tmp / "config" / "labconfig" / "page_config.json").write_text(json.dumps(disabled))
        self.env = {k: v for k, v in os.environ.items() if k not in SWITCHES and not k.startswith("JUPYTER")}
        self.env.update(ISOLATION)
        self.env.update(
            HOME=str(tmp / "home"),
            JUPYTER_CONFIG_DIR=str(tmp / "config"),
            JUPYTER_DATA_DIR=str(tmp / "data"),
            JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
            IPYTHONDIR=str(tmp / "ipython"),
            CLACKY_HOME=str(self.clacky_home),
            PYTHONPATH=str(ROOT),
            NO_PROXY="127.0.0.1,localhost",
        )
        self.env.update(env or {})
        self.serverext = serverext
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> JupyterApp:
        args = [
            sys.executable, "-m", "jupyterlab" if self.app == "lab" else "notebook",
            "--no-browser", "--ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
            "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--allow-root",
            "--LabApp.expose_app_in_browser=True",
        ]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"jupyter {self.app} exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                self.api("api/status")
                return self
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"jupyter {self.app} did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def api(self, path: str, body: object = None) -> object:
        request = urllib.request.Request(
            f"{self.url}/{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}"},
            method="GET" if body is None else "POST",
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextmanager
def kernel(app: JupyterApp, timeout: float = 60) -> Iterator[Callable[[str], list[str]]]:
    """A kernel started through the server's REST API (as opening a notebook does), and a function
    running code in it through its connection file (returning its stream output); shut down after."""
    from jupyter_client import BlockingKernelClient

    started = app.api("api/kernels", {"name": "python3"})
    assert isinstance(started, dict)
    connection = Path(app.env["JUPYTER_RUNTIME_DIR"]) / f"kernel-{started['id']}.json"
    deadline = time.monotonic() + 30
    while not connection.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    client = BlockingKernelClient()
    client.load_connection_file(str(connection))
    client.start_channels()

    def run(code: str) -> list[str]:
        out: list[str] = []
        reply = client.execute_interactive(
            code, timeout=timeout, output_hook=lambda msg: out.append(msg["content"].get("text", ""))
        )
        assert reply["content"]["status"] == "ok", reply["content"]
        return out

    try:
        # not wait_for_ready(): on a loaded machine its heartbeat check calls a starting kernel dead
        msg_id = client.kernel_info()
        while client.get_shell_msg(timeout=timeout)["parent_header"].get("msg_id") != msg_id:
            pass
        yield run
    finally:
        client.stop_channels()
        request = urllib.request.Request(
            f"{app.url}/api/kernels/{started['id']}", headers={"Authorization": f"token {app.token}"}, method="DELETE"
        )
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=20).close()


@pytest.fixture
def browser() -> Iterator[object]:
    """A headless Chromium (Debian's, through Playwright)."""
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright is not installed (pip install playwright)")
    try:
        with sync_playwright() as pw:
            chromium = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
            try:
                yield chromium
            finally:
                chromium.close()
    except Exception as exc:
        if "Executable doesn't exist" in str(exc) or "Failed to launch" in str(exc):
            unavailable(f"Chromium did not start: {exc}")
        raise


class Page:
    """A browser page on a Jupyter app, collecting console errors and saving screenshots."""

    def __init__(self, browser: object, app: JupyterApp, shots: Path):
        self.app = app
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("request", lambda request: self.requests.append(request.url))

    def open(self, path: str = "lab") -> Page:
        self.page.goto(f"{self.app.url}/{path}?token={self.app.token}", wait_until="domcontentloaded")
        return self

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def console_errors(self) -> list[str]:
        own = NOTEBOOK_OWN_ERROR if self.app.app == "notebook" else None
        return [e for e in self.errors if not (own and own in e)]

    def close(self) -> None:
        self.context.close()
