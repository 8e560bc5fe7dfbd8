"""The kernel's last events for JupyterLab's telemetry dialog: a comm target that answers with `recent()`.

Each kernel keeps its log in memory only (``%clacky_telemetry log``), so the Jupyter server has
none to show: the dialog opens a comm to the current notebook's kernel, which sends its last events
once and closes it. Registered by ``%load_ext clacky_ipy`` in an ipykernel; elsewhere (a terminal
IPython, a kernel without comms) nothing is registered and nothing fails.
"""

from __future__ import annotations

from typing import Any

from .client import LOG_SIZE, recent

#: The comm target's name (labextension/src/kernellog.ts asks for it).
TARGET = "clacky_telemetry_log"
#: How many events the dialog gets unless it asks for fewer.
DEFAULT_COUNT = 20


def _opened(comm: Any, msg: Any) -> None:
    """Send the last events once, then close: the dialog asks again when it opens again."""
    try:
        asked = msg["content"]["data"].get("n", DEFAULT_COUNT)
        n = asked if isinstance(asked, int) and not isinstance(asked, bool) else DEFAULT_COUNT
        comm.send({"events": recent(max(0, min(n, LOG_SIZE)))})
    except Exception:
        pass
    finally:
        try:
            comm.close()
        except Exception:
            pass


def _targets(shell: Any, method: str) -> None:
    """``comm_manager.register_target`` / ``unregister_target`` for this target, where a kernel has one."""
    manager = getattr(getattr(shell, "kernel", None), "comm_manager", None)
    try:
        if manager is not None:
            getattr(manager, method)(TARGET, _opened)
    except Exception:
        pass


def register(shell: Any) -> None:
    """Answer the dialog from this kernel (no-op outside an ipykernel)."""
    _targets(shell, "register_target")


def unregister(shell: Any) -> None:
    _targets(shell, "unregister_target")
