"""The Jupyter Server extension's handlers in a real jupyter_server (pytest-jupyter's jp_fetch):
status, switch and notice, their authentication, and the saved choice the shell command reads."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest

pytest.importorskip("jupyter_server", reason="the server extension's tests need jupyter_server (Python 3.10+)")
pytest.importorskip("pytest_jupyter", reason="the server extension's tests need pytest-jupyter")

from conftest import PYTHON
from pytest_jupyter.jupyter_server import *  # noqa: F403  (jp_fetch and the fixtures it needs)
from tornado.httpclient import HTTPClientError

from clacky_ipy import notice
from clacky_ipy.config import OFF_FILE


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"clacky_ipy": True}}}


@pytest.fixture
def fetch(jp_fetch, jp_asyncio_loop, env, home):
    """jp_fetch, synchronously: (HTTP status, decoded JSON body or None); errors are answers too."""

    def call(path: str, body: object = None, raw: bytes | None = None, **kwargs):
        if raw is not None or body is not None:
            kwargs.setdefault("method", "POST")
            kwargs["body"] = raw if raw is not None else json.dumps(body)
        # An earlier test's asyncio runner may have left this thread without a current loop,
        # which tornado's client needs for its Future.
        asyncio.set_event_loop(jp_asyncio_loop)
        try:
            response = jp_asyncio_loop.run_until_complete(jp_fetch("clacky-telemetry", path, **kwargs))
        except HTTPClientError as exc:
            response = exc.response
            if response is None:
                raise
        text = response.body.decode() if response.body else ""
        try:
            return response.code, json.loads(text)
        except ValueError:
            return response.code, None

    return call


def shell_status(home) -> str:
    """`python -m clacky_ipy telemetry status` in a subprocess, in the same Clacky home."""
    proc = subprocess.run(
        [PYTHON, "-m", "clacky_ipy", "telemetry", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CLACKY_HOME": str(home)},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_status_is_the_shell_commands_state(fetch, home, env):
    env.setenv("CLACKY_LICENSE_SERVER", "http://alice:s3cret@127.0.0.1:9")
    code, status = fetch("status")
    assert code == 200
    assert status["on"] is True and status["off_reason"] is None and status["decided_by"] is None
    assert status["switchable"] is True and status["saved_off"] is False
    assert status["saved_choice"] == str(home / OFF_FILE)
    assert status["endpoint"] == "http://***@127.0.0.1:9" and "s3cret" not in json.dumps(status)
    assert len(status["device_id"]) == 64 and "SHA-256" in status["device_id_source"]
    assert status["notice"] == notice.NOTICE  # the dialog shows the notice's own text
    assert status["docs_url"].endswith("#what-is-sent")
    assert status["notice_seen"] is False  # a fresh home
    assert status["text"].startswith("Telemetry:    on")


def test_switch_off_writes_the_saved_choice_the_shell_command_reads(fetch, home):
    code, status = fetch("switch", {"enabled": False})
    assert code == 200, status
    assert status["on"] is False and status["decided_by"] == "saved choice" and status["saved_off"] is True
    assert (home / OFF_FILE).exists()
    assert "Telemetry:    off (the saved choice" in shell_status(home)
    code, status = fetch("switch", {"enabled": True})
    assert code == 200 and status["on"] is True
    assert not (home / OFF_FILE).exists()
    assert "Telemetry:    on" in shell_status(home)


def test_the_shell_commands_choice_shows_in_the_status(fetch, home):
    subprocess.run(
        [PYTHON, "-m", "clacky_ipy", "telemetry", "off"],
        check=True,
        capture_output=True,
        timeout=60,
        env={**os.environ, "CLACKY_HOME": str(home)},
    )
    code, status = fetch("status")
    assert code == 200 and status["on"] is False and status["decided_by"] == "saved choice"


def test_a_policy_file_refuses_the_switch_with_409(fetch, home, env, tmp_path):
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "telemetry-off").write_text("")
    env.setenv("CLACKY_POLICY_DIRS", str(policy))
    code, status = fetch("status")
    assert status["on"] is False and status["decided_by"] == "policy file" and status["switchable"] is False
    for enabled in (True, False):
        code, body = fetch("switch", {"enabled": enabled})
        assert code == 409
        assert str(policy / "telemetry-off") in body["message"]
        assert body["status"]["decided_by"] == "policy file"
    assert not (home / OFF_FILE).exists()  # never pretends: nothing saved


@pytest.mark.parametrize("name, value", [("CLACKY_TELEMETRY", "0"), ("DO_NOT_TRACK", "1")])
def test_the_environment_refuses_the_switch_with_409(fetch, home, env, name, value):
    env.setenv(name, value)
    code, status = fetch("status")
    assert status["decided_by"] == "environment" and status["switchable"] is False
    code, body = fetch("switch", {"enabled": True})
    assert code == 409 and f"{name}={value}" in body["message"]
    assert not (home / OFF_FILE).exists()


def test_no_token_is_403(fetch, home):
    assert fetch("status", headers={"Authorization": ""})[0] == 403
    assert fetch("switch", {"enabled": False}, headers={"Authorization": ""})[0] == 403
    assert not (home / OFF_FILE).exists()


def browser_login(jp_fetch, jp_asyncio_loop, jp_serverapp) -> dict[str, str]:
    """What a browser holds after opening the token URL: the login and _xsrf cookies."""
    token = jp_serverapp.identity_provider.token
    response = jp_asyncio_loop.run_until_complete(
        jp_fetch("clacky-telemetry", "status", headers={"Authorization": ""}, params={"token": token})
    )
    cookies = dict(c.split(";")[0].split("=", 1) for c in response.headers.get_list("Set-Cookie"))
    assert cookies, "no login cookie"
    # the _xsrf cookie a page sets, which the page's script echoes in X-XSRFToken (any value works:
    # what a foreign page cannot do is read it)
    cookies.setdefault("_xsrf", "2|0badc0de|" + "ab" * 16 + "|1700000000")
    return cookies


def test_a_cookie_without_xsrf_cannot_switch(fetch, jp_fetch, jp_asyncio_loop, jp_serverapp, home):
    """A browser's login cookie alone (what a forged cross-site request carries) is refused."""
    cookies = browser_login(jp_fetch, jp_asyncio_loop, jp_serverapp)
    login = "; ".join(f"{k}={v}" for k, v in cookies.items() if k != "_xsrf")
    headers = {"Authorization": "", "Cookie": login}
    assert fetch("status", headers=headers)[0] == 200  # the cookie logs in
    assert fetch("switch", {"enabled": False}, headers=headers)[0] == 403  # but cannot write without XSRF
    assert not (home / OFF_FILE).exists()


def test_a_foreign_origin_is_refused(fetch, jp_fetch, jp_asyncio_loop, jp_serverapp, home):
    cookies = browser_login(jp_fetch, jp_asyncio_loop, jp_serverapp)
    xsrf = cookies["_xsrf"]
    headers = {"Authorization": "", "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()), "X-XSRFToken": xsrf}
    port = jp_serverapp.port
    code, _ = fetch("switch", {"enabled": False}, headers={**headers, "Origin": "http://evil.example"})
    assert code in (403, 404)
    assert not (home / OFF_FILE).exists()
    assert fetch("status", headers={**headers, "Origin": "http://evil.example"})[0] in (403, 404)
    # the same request from the server's own origin passes: the origin is what was refused
    code, _ = fetch("switch", {"enabled": False}, headers={**headers, "Origin": f"http://127.0.0.1:{port}"})
    assert code == 200
    assert (home / OFF_FILE).exists()


@pytest.mark.parametrize(
    "raw", [b"not json", b"[]", b"{}", b'{"enabled": "false"}', b'{"enabled": 0}', b'{"enabled": null}']
)
def test_a_bad_switch_body_is_400_and_the_server_goes_on(fetch, home, raw):
    code, _ = fetch("switch", raw=raw)
    assert code == 400
    assert not (home / OFF_FILE).exists()
    assert fetch("status")[0] == 200


def test_the_notices_answer_marks_it_seen(fetch, home):
    assert fetch("status")[1]["notice_seen"] is False
    assert fetch("notice", {"answer": "later"})[0] == 400
    assert not notice.seen(home)
    code, status = fetch("notice", {"answer": "keep"})
    assert code == 200 and status["notice_seen"] is True and status["on"] is True
    assert notice.seen(home)


def test_the_notices_turn_off_saves_the_choice_before_it_counts_as_seen(fetch, home):
    code, status = fetch("notice", {"answer": "off"})
    assert code == 200 and status["on"] is False and status["notice_seen"] is True
    assert (home / OFF_FILE).exists() and notice.seen(home)


def test_the_server_extension_is_found_by_its_entry_point():
    import clacky_ipy

    (point,) = clacky_ipy._jupyter_server_extension_points()
    assert point["module"] == "clacky_ipy.serverext"
    proc = subprocess.run(
        [PYTHON, "-c", "import clacky_ipy.serverext as s; print(s._load_jupyter_server_extension)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_the_page_says_the_handlers_exist(jp_serverapp, fetch):
    """The frontend asks the server only when the page config says the extension is there, so an
    older server without it never answers 404 into the browser's console."""
    assert jp_serverapp.web_app.settings["page_config_data"]["clackyTelemetry"] == "clacky-telemetry"
