"""The first-run notice: what it says, where a person can see it, and whether one has.

Telemetry is opt-out, so this notice is the user's whole chance to consent: the client
sends nothing while it is pending (see `Client.submit`). It counts as seen only where a
person can see it: printed on a stream that reaches a terminal, a file or a frontend
(`visible`), in a run a person attends (`unattended_runner`). The marker file is written
only after that, never before.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

from .config import DOCS_URL, NOTICE_FILE, mask_credentials
from .identity import clacky_home, detect_ci

NOTICE = f"""\
clacky_ipy: usage telemetry for OpenClacky is on. It sends a pseudonymous device id (the
openclacky gem's SHA-256 of host name, user name and platform: not your names, but anyone who
knows them can recompute it), versions and, per agent run, the duration, status, error class
name and the agent's model, token and cost figures: never your code, outputs, error messages,
paths or names. Nothing has been sent before this notice.
Details: {DOCS_URL}
Opt out: %clacky_telemetry off (or `clacky-ipy telemetry off` in a shell), or CLACKY_TELEMETRY=0
(or DO_NOT_TRACK=1) in the environment. See what was sent: %clacky_telemetry log"""


def text(config: Any) -> str:
    """The notice with where the events go: `config`'s endpoint and fallbacks, credentials masked."""
    try:
        where = f"Sent to: {config.endpoint}"
        fallbacks = list(config.fallback_endpoints)
        if fallbacks:
            where += f" (fallback hosts, tried only when it cannot be reached: {', '.join(fallbacks)})"
        return mask_credentials(f"{NOTICE}\n{where}")
    except Exception:
        return NOTICE


def marker(home: Path | None = None) -> Path:
    """The marker file; OSError when the Clacky home cannot be resolved."""
    home = home or clacky_home()
    if home is None:
        raise OSError("the Clacky home cannot be resolved")
    return home / NOTICE_FILE


def seen(home: Path | None = None) -> bool:
    """True once the notice was seen by a person in this Clacky home (in any process)."""
    try:
        return marker(home).exists()
    except OSError:
        return False


def mark_seen(home: Path | None = None) -> None:
    """Remember that a person saw the notice (a terminal, a frontend's output, JupyterLab's
    notification answered); an unwritable home means it shows again next time."""
    try:
        path = marker(home)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("shown\n", encoding="utf-8")
    except OSError:
        pass


def _null_device(info: os.stat_result) -> bool:
    try:
        null = os.stat(os.devnull)
    except OSError:
        return False
    if os.path.samestat(info, null):
        return True
    return stat.S_ISCHR(info.st_mode) and stat.S_ISCHR(null.st_mode) and info.st_rdev == null.st_rdev


def visible(stream: Any) -> bool:
    """Whether text written to `stream` can reach a person: a kernel's own output stream (the
    frontend's cell output), or an open file descriptor other than the null device (a
    terminal, a pipe, a log file). Not: None, a closed stream, an in-memory buffer
    (``%%capture``, ``capture_output()``, ``redirect_stdout(io.StringIO())``), ``/dev/null``.
    """
    if stream is None:
        return False
    try:
        if stream.closed:
            return False
        iostream = sys.modules.get("ipykernel.iostream")
        if iostream is not None and isinstance(stream, iostream.OutStream):
            return True
        return not _null_device(os.fstat(stream.fileno()))
    except Exception:  # no descriptor (a buffer), a closed one, a stream whose methods raise
        return False


#: What a kernel's parent process is called, for the runners that drive kernels unattended.
_RUNNERS = ("papermill", "nbconvert")


def _parent_runner() -> str | None:
    """``papermill`` or ``nbconvert`` when the parent process is one (its first arguments name it)."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
            args = fh.read(4096).split(b"\0")[:3]
    except OSError:
        return None
    names = [os.path.basename(arg.decode("utf-8", "replace")) for arg in args]
    for name in _RUNNERS:
        if any(part == name or part.startswith((f"{name}.", f"{name}-", f"jupyter-{name}")) for part in names):
            return name
    return None


def unattended_runner(kernel: Any = None) -> str | None:
    """The runner of this kernel when no person attends it, named for ``launch_source``
    (``papermill``, ``nbconvert``, ``nbclient``); None when a person may be there.

    A frontend a person uses lets the code ask for input (``allow_stdin``); nbclient, and
    so papermill and ``nbconvert --execute``, never do. The kernel's parent process says
    which of them it is. Only the request running now can tell (None outside a cell).
    """
    if kernel is None:
        return None
    try:
        parent = kernel.get_parent()
        content = parent.get("content") if isinstance(parent, dict) else None
        if not isinstance(content, dict) or content.get("allow_stdin", True) is not False:
            return None
    except Exception:
        return None
    return _parent_runner() or "nbclient"


def attended(kernel: Any = None) -> bool:
    """Whether a person may see this run's output: not CI, not a kernel driven unattended."""
    return not detect_ci() and unattended_runner(kernel) is None
