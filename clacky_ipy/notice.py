"""The first-run notice: what it says, and whether a person has seen it in this Clacky home.

Telemetry is opt-out, so this notice is the user's whole chance to consent: the client
sends nothing while it is pending (see `Client.submit`). The marker file is written
only after the notice was printed where a person sees it, never before.
"""

from __future__ import annotations

from pathlib import Path

from .config import DOCS_URL, NOTICE_FILE
from .identity import clacky_home

NOTICE = f"""\
clacky_ipy: usage telemetry for OpenClacky is on. It sends a pseudonymous device id (the
openclacky gem's SHA-256 of host name, user name and platform: not your names, but anyone who
knows them can recompute it), versions and, per agent run, the duration, status, error class
name and the agent's model, token and cost figures: never your code, outputs, error messages,
paths or names. Nothing has been sent before this notice.
Details: {DOCS_URL}
Opt out: %clacky_telemetry off (or `clacky-ipy telemetry off` in a shell), or CLACKY_TELEMETRY=0
(or DO_NOT_TRACK=1) in the environment. See what was sent: %clacky_telemetry log"""


def marker(home: Path | None = None) -> Path:
    """The marker file; OSError when the Clacky home cannot be resolved."""
    home = home or clacky_home()
    if home is None:
        raise OSError("the Clacky home cannot be resolved")
    return home / NOTICE_FILE


def seen(home: Path | None = None) -> bool:
    """True once the notice was displayed for this Clacky home (in any process)."""
    try:
        return marker(home).exists()
    except OSError:
        return False


def mark_seen(home: Path | None = None) -> None:
    """Remember that the notice was displayed; an unwritable home means it shows again next time."""
    try:
        path = marker(home)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("shown\n", encoding="utf-8")
    except OSError:
        pass
