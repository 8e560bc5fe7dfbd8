"""The HTML page in headless Chromium (fetches nothing, no console error, every chart an SVG with
its title, hostile names shown as text), the CSV tables read back, the PNG over ten years."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from datetime import date, timedelta

import pytest
from conftest import PYTHON, subprocess_env

from clacky_ipy import plot, report
from clacky_ipy.store import open_store

HOSTILE = "<script>alert(1)</script>"
IMG = '<img src=x onerror="document.title=1">'
TITLES = {
    "devices": "Active devices",
    "runs": "Agent runs per",
    "cost": "Cost per",
    "durations": "Agent run duration by model",
    "versions": "Version adoption",
    "retention": "Weekly retention",
}


def fill(path, days=400, start=date(2025, 1, 1)):
    store = open_store(path)
    rows = []
    for i in range(days):
        day = (start + timedelta(days=i)).isoformat()
        for d in range(1 + i % 4):
            device = {"device_id": f"dev{d + i // 60}", "ci": False}
            rows.append((f"{day}T08:00:00.000000Z", "startup", {**device, "version": f"0.{i // 100}", "os": "linux"}))
            for model, status in ((HOSTILE, "success"), ("gpt-5", "error"), (IMG, "success")):
                rows.append(
                    (
                        f"{day}T09:00:00.000000Z",
                        "task",
                        {
                            **device,
                            "trigger": "magic",
                            "model": model,
                            "status": status,
                            "duration_ms": 1000 + i,
                            "cost_usd": 0.5,
                            "cost_source": "api",
                        },
                    )
                )
            rows.append((f"{day}T10:00:00.000000Z", "task", {**device, "trigger": "cell", "status": "success"}))
    store.add_batch(rows)
    store.close()
    return path


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return fill(tmp_path_factory.mktemp("html") / "events.db")


def run_report(db, *args):
    proc = subprocess.run(
        [PYTHON, "-m", "clacky_ipy", "report", "--db", str(db), *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def browser():
    """A headless Chromium, or a skip with the reason (a failure when CLACKY_REQUIRE_BROWSER=1)."""
    reason = None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        reason = "selenium is not installed"
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if reason is None and not (os.path.exists(chromium) and os.path.exists(driver_path)):
        reason = "no chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"
    if reason:
        if os.environ.get("CLACKY_REQUIRE_BROWSER") == "1":
            pytest.fail(f"a browser is required (CLACKY_REQUIRE_BROWSER=1) but {reason}", pytrace=False)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1300,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_the_page_in_chromium_fetches_nothing_and_shows_hostile_names_as_text(db, tmp_path):
    page = tmp_path / "report.html"
    proc = run_report(db, "--html", str(page))
    assert "page written to" in proc.stderr
    text = page.read_text()
    assert HOSTILE not in text and "&lt;script&gt;" in text  # escaped in the tables and the SVGs
    driver = browser()
    try:
        driver.get(page.as_uri())
        from selenium.webdriver.common.by import By

        assert driver.title.startswith("clacky-ipy telemetry")  # no onerror ran
        assert driver.execute_script("return document.scripts.length") == 0
        for name, title in TITLES.items():
            svg = driver.find_element(By.CSS_SELECTOR, f"#chart-{name} svg")
            assert title in svg.get_attribute("textContent"), name
            assert svg.size["width"] > 300
        models = driver.find_element(By.ID, "table-models").find_element(By.XPATH, "following-sibling::div")
        assert HOSTILE in models.text and IMG in models.text
        assert driver.find_elements(By.TAG_NAME, "img") == []
        driver.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 10_000
        console = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert console == []
        requests = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                requests.append(message["params"]["request"]["url"])
        # the page itself, and the heat map's own inline image (data: URLs are in the page, no fetch)
        assert [url for url in requests if not url.startswith("data:")] == [page.as_uri()]
    finally:
        driver.quit()


def test_csv_tables_read_back_with_csv_and_pandas(db):
    pandas = pytest.importorskip("pandas")
    r = report.build(db)
    for name in ("daily", "models", "versions", "cohorts", "providers", "errors", "daily_models"):
        out = run_report(db, "--csv-table", name).stdout
        header, rows = report.tables(r)[name]
        parsed = list(csv.reader(io.StringIO(out)))
        assert parsed[0] == header and len(parsed) == len(rows) + 1, name
        frame = pandas.read_csv(io.StringIO(out))
        assert list(frame.columns) == header and len(frame) == len(rows), name
    daily = pandas.read_csv(io.StringIO(run_report(db, "--csv-table", "daily").stdout), parse_dates=["day"])
    assert daily["agent_runs"].sum() == r["agent_runs"] and daily["day"].is_monotonic_increasing
    models = pandas.read_csv(io.StringIO(run_report(db, "--csv-table", "models").stdout))
    assert set(models["model"]) == {"'" + HOSTILE if HOSTILE.startswith("=") else HOSTILE, "gpt-5", IMG}
    assert models.set_index("model").loc["gpt-5", "error_share"] == 1.0


def test_the_png_over_ten_years_has_no_empty_columns(tmp_path):
    """Daily series over ten years are areas and lines: no pixel column of a chart is empty."""
    pytest.importorskip("matplotlib")
    from matplotlib import image

    r = report.build(fill(tmp_path / "ten.db", days=3650, start=date(2016, 1, 1)))
    out = tmp_path / "ten.png"
    plot.png(r, out)
    pixels = image.imread(out)
    assert pixels.shape[1] >= 1200
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3), dpi=100)
    plot.runs(ax, r)
    ax.set_axis_off()
    ax.set_title("")
    ax.get_legend().remove()
    fig.subplots_adjust(0, 0, 1, 1)
    fig.savefig(tmp_path / "runs.png")
    plt.close(fig)
    runs = image.imread(tmp_path / "runs.png")[:, :, :3]
    bottom = runs[-3]  # a row just above the axis: every day has runs, so no column is white there
    white = (bottom > 0.97).all(axis=1)
    assert white[10:-10].sum() == 0
