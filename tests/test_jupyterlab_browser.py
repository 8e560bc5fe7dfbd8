"""JupyterLab and Notebook 7 in headless Chromium: the status-bar item, its dialog and switch, the
first-run notification, the policy's forced off, the Notebook 7 menu, and a real kernel and
collector behind them. Screenshots go to each test's temporary directory."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time

import pytest
from conftest import PYTHON, subprocess_env
from jupyterapp import JupyterApp, Page, browser, kernel  # noqa: F401  (browser: a fixture)

from clacky_ipy import notice, status
from clacky_ipy.config import OFF_FILE

pytest.importorskip("jupyterlab", reason="the browser tests need JupyterLab 4 (Python 3.10+ in the test extra)")

ITEM = "#clacky-telemetry-status"
TOAST = ".Toastify__toast"
NOTICE_TEXT = "OpenClacky usage telemetry (clacky-ipy) is on"
SEND = "import clacky_ipy; clacky_ipy.task(model='{model}'); print(clacky_ipy.flush(5))"


@pytest.fixture
def collector(tmp_path):
    """The reference collector on a free loopback port, storing in SQLite."""
    pytest.importorskip("uvicorn", reason="the collector needs uvicorn")
    from clacky_ipy.collector import Collector

    with Collector(tmp_path / "events.db", port=0) as server:
        yield server


def received(collector, tmp_path) -> list[tuple[str, str]]:
    """(kind, model) of every event the collector stored."""
    time.sleep(0.3)  # the writer thread commits in batches
    with sqlite3.connect(tmp_path / "events.db") as db:
        return db.execute("SELECT kind, model FROM events ORDER BY id").fetchall()


@pytest.fixture
def lab(tmp_path, collector):
    apps: list[JupyterApp] = []

    def start(app: str = "lab", **kwargs) -> JupyterApp:
        env = {"CLACKY_LICENSE_SERVER": collector.url, **kwargs.pop("env", {})}
        started = JupyterApp(tmp_path / f"jupyter-{len(apps)}", app=app, env=env, **kwargs).start()
        apps.append(started)
        return started

    yield start
    for app in apps:
        app.stop()


@pytest.fixture
def pages(browser, tmp_path):  # noqa: F811
    opened: list[Page] = []

    def open_page(app: JupyterApp, path: str = "lab") -> Page:
        page = Page(browser, app, tmp_path / "screenshots").open(path)
        opened.append(page)
        return page

    yield open_page
    for page in opened:
        page.close()


def item_text(page: Page, expected: str, timeout: float = 30_000) -> str:
    locator = page.page.locator(ITEM)
    locator.wait_for(state="visible", timeout=timeout)
    page.page.wait_for_function(
        "([sel, text]) => document.querySelector(sel)?.textContent === text", arg=[ITEM, expected], timeout=timeout
    )
    return locator.text_content() or ""


def open_dialog(page: Page, item: str) -> object:
    """The item reads `item`; a click on it opens the dialog (returned as a locator)."""
    item_text(page, item)
    page.page.locator(ITEM).click()
    dialog = page.page.locator(".jp-Dialog")
    dialog.wait_for()
    return dialog


def shell_status(app: JupyterApp) -> str:
    proc = subprocess.run(
        [PYTHON, "-m", "clacky_ipy", "telemetry", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(CLACKY_HOME=str(app.clacky_home)),
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_jupyterlab_item_notice_switch_and_a_kernel_that_then_sends_nothing(lab, pages, collector, tmp_path):
    app = lab()
    page = pages(app)
    assert item_text(page, "Telemetry: on") == "Telemetry: on"

    # the first-run notice, as a notification; it counts as seen once answered
    toast = page.page.locator(TOAST, has_text=NOTICE_TEXT)
    toast.wait_for(timeout=15_000)
    page.shot("lab-notice")
    assert not notice.seen(app.clacky_home)
    toast.get_by_role("button", name="Keep on").click()
    page.page.wait_for_function("() => true")
    deadline = time.monotonic() + 10
    while not notice.seen(app.clacky_home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert notice.seen(app.clacky_home)

    # shown once: not again after a reload
    page.page.reload(wait_until="domcontentloaded")
    item_text(page, "Telemetry: on")
    page.page.wait_for_timeout(1500)
    assert page.page.locator(TOAST, has_text=NOTICE_TEXT).count() == 0

    # a kernel of this lab sends (the notice was answered in the UI), and keeps running
    with kernel(app) as run:
        run("%load_ext clacky_ipy\n" + SEND.format(model="before"))
        assert ("task", "before") in received(collector, tmp_path)
        switch_off_in_the_browser(page, app)
        # that running kernel sends nothing afterwards, nor does a new one
        before = received(collector, tmp_path)
        run(SEND.format(model="after"))
        with kernel(app) as fresh:
            fresh("%load_ext clacky_ipy\n" + SEND.format(model="new kernel"))
        assert received(collector, tmp_path) == before
    page.shot("lab-off")
    assert page.console_errors() == []


def switch_off_in_the_browser(page: Page, app: JupyterApp) -> None:
    """Two clicks: the item, then the dialog's switch; the saved choice the shell command reads."""
    page.page.locator(ITEM).click()
    dialog = page.page.locator(".jp-Dialog")
    dialog.wait_for()
    shown = dialog.locator(".clacky-telemetry-notice").text_content() or ""
    assert shown.split() == notice.NOTICE.split()  # the notice's own words, reflowed for the dialog
    assert (dialog.locator("a.clacky-telemetry-docs").get_attribute("href") or "").endswith("#what-is-sent")
    switch = dialog.locator("#clacky-telemetry-switch")
    assert switch.is_checked() and switch.is_enabled()
    page.shot("lab-dialog-on")
    switch.click()
    item_text(page, "Telemetry: off")
    page.shot("lab-dialog-off")
    assert (app.clacky_home / OFF_FILE).exists()
    assert "Telemetry:    off (the saved choice" in shell_status(app)
    dialog.get_by_role("button", name="Close").click()


def test_the_dialog_shows_the_notebooks_kernel_events_and_the_palette_switches(lab, pages, collector, tmp_path):
    app = lab()
    app.clacky_home.mkdir(parents=True, exist_ok=True)
    notice.mark_seen(app.clacky_home)  # seen before: this kernel's events leave
    cell = "%load_ext clacky_ipy\nimport clacky_ipy\nclacky_ipy.task(model='from-the-notebook')\nclacky_ipy.flush(5)"
    notebook = {
        "cells": [{"cell_type": "code", "metadata": {}, "source": cell, "outputs": [], "execution_count": None}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (app.root / "agent.ipynb").write_text(json.dumps(notebook))
    page = pages(app, "lab/tree/agent.ipynb")
    item_text(page, "Telemetry: on")
    page.page.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
    page.page.wait_for_function(
        "() => document.querySelector('.jp-Notebook')?.closest('.jp-NotebookPanel')"
        "?.querySelector('.jp-Toolbar-kernelStatus, .jp-Notebook-ExecutionIndicator') !== null",
        timeout=30_000,
    )
    page.page.keyboard.press("Shift+Enter")
    page.page.locator(".jp-InputArea-prompt", has_text="[1]").first.wait_for(timeout=60_000)
    deadline = time.monotonic() + 20
    while ("task", "from-the-notebook") not in received(collector, tmp_path) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert ("task", "from-the-notebook") in received(collector, tmp_path)

    page.page.locator(ITEM).click()
    dialog = page.page.locator(".jp-Dialog")
    events = dialog.locator(".clacky-telemetry-events-list li")
    events.last.wait_for(timeout=15_000)
    assert "task" in (events.last.text_content() or "") and "sent 201" in (events.last.text_content() or "")
    assert '"model":"from-the-notebook"' in (events.last.locator("code").text_content() or "")
    page.shot("lab-dialog-last-events")
    dialog.get_by_role("button", name="Close").click()

    # the command palette: "Turn clacky telemetry off"
    page.page.keyboard.press("Control+Shift+C")
    search = page.page.locator(".lm-CommandPalette-input")
    search.wait_for()
    search.fill("Turn clacky telemetry off")
    page.page.locator(".lm-CommandPalette-item", has_text="Turn clacky telemetry off").first.click()
    item_text(page, "Telemetry: off")
    assert (app.clacky_home / OFF_FILE).exists()
    assert page.console_errors() == []


def test_the_notifications_turn_off(lab, pages):
    app = lab()
    page = pages(app)
    item_text(page, "Telemetry: on")
    toast = page.page.locator(TOAST, has_text=NOTICE_TEXT)
    toast.wait_for(timeout=15_000)
    toast.get_by_role("button", name="Details").click()  # the dialog; the notice stays until answered
    dialog = page.page.locator(".jp-Dialog")
    dialog.wait_for()
    page.shot("lab-notice-details")
    dialog.get_by_role("button", name="Close").click()
    assert toast.is_visible() and not notice.seen(app.clacky_home)
    toast.get_by_role("button", name="Turn off").click()
    item_text(page, "Telemetry: off")
    assert (app.clacky_home / OFF_FILE).exists() and notice.seen(app.clacky_home)
    page.page.reload(wait_until="domcontentloaded")
    item_text(page, "Telemetry: off")
    page.page.wait_for_timeout(1500)
    assert page.page.locator(TOAST, has_text=NOTICE_TEXT).count() == 0
    page.shot("lab-turned-off-by-notice")
    assert page.console_errors() == []


def test_a_policy_file_reads_off_policy_and_disables_the_switch(lab, pages, tmp_path):
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "telemetry-off").write_text("")
    app = lab(env={"CLACKY_POLICY_DIRS": str(policy)})
    dialog = open_dialog(page := pages(app), "Telemetry: off (policy)")
    switch = dialog.locator("#clacky-telemetry-switch")
    assert not switch.is_checked() and switch.is_disabled()
    assert "policy file" in (dialog.text_content() or "")
    page.shot("lab-policy")
    assert page.page.locator(TOAST, has_text=NOTICE_TEXT).count() == 0  # off: no notice to answer
    assert not (app.clacky_home / OFF_FILE).exists()
    assert page.console_errors() == []


def test_a_hostile_brand_yml_is_shown_as_text(lab, pages, tmp_path):
    """A device id the gem stored that is no id (markup, escapes) is never sent, and the dialog
    says so, as status does: its markup never becomes HTML."""
    home = tmp_path / "hostile-home"
    home.mkdir()
    hostile = '<img src=x onerror="window.__clacky_pwned=1">\u202e\x1b[31m'
    (home / "brand.yml").write_text(f"device_id: {json.dumps(hostile)}\n", encoding="utf-8")
    app = lab(env={"CLACKY_HOME": str(home)})
    device = open_dialog(page := pages(app), "Telemetry: on").locator(".clacky-telemetry-device")
    shown = device.text_content() or ""
    assert shown == status.device_text("")  # not an id: none sent, as `clacky-ipy telemetry status` says
    assert device.locator("img").count() == 0
    assert page.page.evaluate("() => window.__clacky_pwned") is None
    assert page.console_errors() == []


def test_without_the_server_extension_nothing_shows_and_nothing_fails(lab, pages):
    app = lab(serverext=False)
    page = pages(app)
    page.page.locator("#jp-main-statusbar").wait_for(timeout=30_000)
    page.page.wait_for_timeout(3000)  # the extension has loaded and decided
    assert page.page.locator(ITEM).count() == 0 or not page.page.locator(ITEM).is_visible()
    assert not [url for url in page.requests if "/clacky-telemetry/" in url]
    page.shot("lab-without-server-extension")
    assert page.console_errors() == []


def test_notebook_7_has_the_switch_in_its_settings_menu(lab, pages):
    pytest.importorskip("notebook", reason="Notebook 7 is not installed")
    app = lab("notebook")
    page = pages(app, "tree")
    page.page.locator(TOAST, has_text=NOTICE_TEXT).wait_for(timeout=30_000)  # the first-run notice here too
    menu = page.page.get_by_role("menuitem", name="Settings")
    menu.wait_for(timeout=30_000)
    deadline = time.monotonic() + 20
    entry = page.page.get_by_text("Clacky Telemetry: on…")
    while time.monotonic() < deadline:
        menu.click()
        if entry.count() and entry.first.is_visible():
            break
        page.page.keyboard.press("Escape")
        page.page.wait_for_timeout(500)
    page.shot("notebook-menu")
    entry.first.click()
    dialog = page.page.locator(".jp-Dialog")
    dialog.wait_for()
    dialog.locator("#clacky-telemetry-switch").click()
    deadline = time.monotonic() + 10
    while not (app.clacky_home / OFF_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (app.clacky_home / OFF_FILE).exists()
    page.shot("notebook-dialog-off")
    dialog.get_by_role("button", name="Close").click()
    menu.click()
    page.page.get_by_text("Clacky Telemetry: off…").first.wait_for(timeout=10_000)
    assert "Telemetry:    off (the saved choice" in shell_status(app)
    assert page.console_errors() == []
