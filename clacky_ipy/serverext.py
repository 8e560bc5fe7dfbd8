"""The Jupyter Server's view of the telemetry switch: what JupyterLab's status-bar item reads and sets.

``GET /clacky-telemetry/status`` answers with what ``clacky-ipy telemetry status`` shows (the same
`status.machine_status`, as JSON, with the notice's text for the UI), ``POST /clacky-telemetry/switch``
writes the same saved choice as ``clacky-ipy telemetry off|on``, and ``POST /clacky-telemetry/notice``
records the answer to the first-run notice shown as a JupyterLab notification. A switch that the
environment or a policy file overrides is refused (409) with the reason, never pretended.

Every handler is a jupyter_server `APIHandler`: the server's token or login, its XSRF check for
cookie-authenticated writes and its refusal of foreign origins apply as to every other API. The work
(a stat or two, the device id) runs on an executor thread so the server's loop never waits on a file.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from . import notice
from .client import __version__
from .config import DOCS_URL, mask_credentials
from .safe import printable
from .status import FORCED, SESSION_CONFIG_NOTE, device_text, machine_status, save_choice, status_text

#: The URL prefix of the handlers, under the server's base_url.
PREFIX = "clacky-telemetry"
#: The page-config key telling the frontend that these handlers exist (labextension/src/index.ts).
PAGE_CONFIG_KEY = "clackyTelemetry"
#: The answers the notification can give: its two buttons, or closed without one.
ANSWERS = ("keep", "off", "dismissed")
#: How long a request waits for the device id (brand.yml read on a helper thread); null after that.
DEVICE_ID_WAIT = 2.0


def status_json(wait: float = DEVICE_ID_WAIT) -> dict[str, Any]:
    """The status as the UI gets it: the shell command's state, credentials masked, plus the
    notice's text, the README's "What is sent" link and the shell command's own text."""
    state = machine_status(wait=wait)
    return {
        "version": __version__,
        "on": state["on"],
        "off_reason": None if state["off_reason"] is None else mask_credentials(state["off_reason"]),
        "decided_by": state["decided_by"],
        "switchable": state["decided_by"] not in FORCED,
        "saved_choice": state["saved_choice"],
        "saved_off": state["saved_off"],
        "endpoint": mask_credentials(state["endpoint"]),
        "fallback_endpoints": [mask_credentials(url) for url in state["fallback_endpoints"]],
        # as status prints it: control and bidi characters of a hostile brand.yml escaped
        "device_id": None if state["device_id"] is None else printable(state["device_id"]),
        "device_id_source": state["device_id_source"],
        "device_text": device_text(state["device_id"]),  # the id as status shows it, or why none is
        "notice_seen": not state["notice_pending"],
        "notice": notice.NOTICE,
        "docs_url": DOCS_URL,
        "scope": SESSION_CONFIG_NOTE,
        "text": status_text(state),
    }


def _switch(enabled: bool) -> tuple[int, dict[str, Any]]:
    """The saved choice set to `enabled`: (HTTP status, body). 409 while a forced switch decides."""
    before = status_json(wait=0)
    if before["decided_by"] in FORCED:
        return 409, {
            "message": f"telemetry is off by the {before['decided_by']} ({before['off_reason']}); "
            "no switch here can change that",
            "status": status_json(),
        }
    error, _ = save_choice(not enabled)
    if error:
        return 500, {"message": error, "status": status_json()}
    return 200, status_json()


def _answer(answer: str) -> tuple[int, dict[str, Any]]:
    """The notification's answer: "off" saves the choice first, then the notice counts as seen."""
    if answer == "off":
        code, body = _switch(False)
        if code == 500:
            return code, body  # not saved: the notice stays pending, so nothing leaves
    notice.mark_seen()
    return 200, status_json()


class _Handler(APIHandler):
    auth_resource = "clacky-telemetry"

    async def _run(self, work: Any, *args: Any) -> None:
        try:
            code, body = await asyncio.get_running_loop().run_in_executor(None, work, *args)
        except Exception as exc:  # one line in the server's log, an answer the UI can show
            self.log.warning("clacky_ipy: %s: %s", type(exc).__name__, exc)
            code, body = 500, {"message": f"clacky_ipy could not answer: {type(exc).__name__}"}
        self.set_status(code)
        self.finish(json.dumps(body))

    def _body_field(self, name: str, check: Any, expected: str) -> Any:
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            raise tornado.web.HTTPError(400, "the body is not JSON") from None
        value = body.get(name) if isinstance(body, dict) else None
        if not check(value):
            raise tornado.web.HTTPError(400, f'the body must be {{"{name}": {expected}}}')
        return value


class StatusHandler(_Handler):
    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        await self._run(lambda: (200, status_json()))


class SwitchHandler(_Handler):
    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        enabled = self._body_field("enabled", lambda v: isinstance(v, bool), "true or false")
        await self._run(_switch, enabled)


class NoticeHandler(_Handler):
    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        answer = self._body_field("answer", lambda v: v in ANSWERS, " or ".join(f'"{a}"' for a in ANSWERS))
        await self._run(_answer, answer)


def _load_jupyter_server_extension(serverapp: Any) -> None:
    web_app = serverapp.web_app
    # JupyterLab and Notebook 7 merge this into the page: the frontend asks only where it is set
    web_app.settings.setdefault("page_config_data", {})[PAGE_CONFIG_KEY] = PREFIX
    base = url_path_join(web_app.settings["base_url"], PREFIX)
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "status"), StatusHandler),
            (url_path_join(base, "switch"), SwitchHandler),
            (url_path_join(base, "notice"), NoticeHandler),
        ],
    )
