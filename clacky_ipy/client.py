"""The process's telemetry client: one configuration, one transport, one startup event.

The extension attaches its `ClackyTelemetry` here; without IPython a default one
built from the environment is used, so the Python API works in plain scripts.
`submit()` is the only thing the user's thread runs per event: an opt-out check and
a queue put of a small tuple. Everything else about the event (status, error class,
rounding, the agent's metrics, the extension-cell check) and the payload are worked
out on the worker thread, so a cell never pays for them.

Nothing leaves before the first-run notice was displayed: while it is pending, events
wait here, in memory and bounded, and go to the transport only once the notice was
printed where a person sees it. A process that ends first sends nothing. Every event's
outcome is kept (the last LOG_SIZE, in memory only) for ``%clacky_telemetry log``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from . import agents, notice, payload
from .config import (
    ClackyTelemetry,
    env_off_reason,
    persist_off,
    persisted_off,
    policy_off_reason,
    saved_choice_path,
)
from .identity import (
    brand_identity,
    clacky_home,
    computed_device_id,
    detect_ci,
    detect_container,
    launch_source,
    reset_device_id,
)
from .status import device_id_source
from .transport import SKIP, Plan, Transport

__version__ = "0.1.0"
USER_AGENT = f"clacky-ipy/{__version__}"

#: Why the saved choice keeps telemetry off. No parentheses: status shows it inside its own, "off (...)".
SAVED_OFF = "the saved choice, made by %clacky_telemetry off or clacky-ipy telemetry off"

#: How many outcomes ``%clacky_telemetry log`` / `recent()` keep, in memory only.
LOG_SIZE = 100
WAITING = "waiting for the notice"

#: The error of an interrupted async cell, for which ipykernel passes no result.
INTERRUPTED = KeyboardInterrupt()


def _env_switch_set() -> bool:
    """Whether CLACKY_TELEMETRY or DO_NOT_TRACK is set at all (then `env_off_reason` decides).

    The cell hook's check of the environment, in about 0.1 µs: two look-ups of keys encoded
    once in CPython's ``os.environ._data``. Anything unusual answers True (the full check).
    """
    try:
        data = os.environ._data  # type: ignore[attr-defined]
        return _ENV_KEYS[0] in data or _ENV_KEYS[1] in data
    except Exception:
        return True


try:
    _ENV_KEYS = tuple(os.environ.encodekey(name) for name in ("CLACKY_TELEMETRY", "DO_NOT_TRACK"))  # type: ignore[attr-defined]
except Exception:  # os.environ replaced by another mapping
    _ENV_KEYS = ()


#: A line of a cell that is only this extension's own business: ``%clacky_telemetry ...``, a comment, blank.
_OWN_LINE = re.compile(r"\s*(?:%clacky_telemetry(?:\s.*)?|#.*)?")


def is_extension_cell(raw_cell: Any) -> bool:
    """The cell that (re)loads this extension, or whose whole source is ``%clacky_telemetry``
    lines (status, log, flush, on, off), is never tracked: it is no task of the user's."""
    if not isinstance(raw_cell, str):
        return False
    if "load_ext" in raw_cell and "clacky_ipy" in raw_cell:
        return True
    return "%clacky_telemetry" in raw_cell and all(_OWN_LINE.fullmatch(line) for line in raw_cell.splitlines())


class Client:
    """Process-wide state. Use the module functions below rather than this class."""

    def __init__(self) -> None:
        self._config: ClackyTelemetry | None = None
        self.frontend: str | None = None
        self.transport = Transport(
            self._plan, lambda: self.config.shutdown_timeout, warm_up=self.context, on_outcome=self._record
        )
        #: (time, event, path, body or None, outcome) of the last events, oldest first
        self.log: deque[tuple[float, str, str, bytes | None, str]] = deque(maxlen=LOG_SIZE)
        self._held: list[tuple[float, str, dict[str, Any]]] = []  # (time, event, fields) waiting for the notice
        self._held_lock = threading.Lock()
        self.notice_pending = True  # nothing is sent while True; read from the marker at attach()
        self._notice_displayed = False  # in this process
        #: How the notice reaches a person; None: stderr at the first event (the Python API outside IPython)
        self.notice_display: Callable[[], None] | None = None
        self._policy_off: str | None = None
        self.startup_sent = False
        self.startup_pending = False  # wanted while telemetry was off: goes out once it is on
        self.printed = 0  # events written to stderr in debug mode
        self._context: dict[str, Any] | None = None
        self._context_lock = threading.Lock()
        self._user_off = False  # the persisted %clacky_telemetry off
        self._saved_path: str | None = None  # where it is saved: the worker checks it before each send
        self._home_off: str | None = None  # why the saved choice cannot be checked (telemetry stays off)
        self._device_stored = False  # the device id was read from brand.yml
        self._device_random = False  # ... and is not the derived one (reset-id, or the gem's own choice)
        self._context_thread: threading.Thread | None = None  # computing the context for status()
        self._config_off: str | None = None  # why the configuration keeps telemetry off
        self._debug = False
        self._listeners: list[Callable[[], None]] = []  # told when telemetry may have turned on or off
        #: ``launch_source`` of an unattended run (papermill, nbclient...): its events are flagged
        self.runner: str | None = None
        self._notice_printed = False  # printed where it does not count (CI, an unattended run)

    def reset(self) -> None:
        """Forget everything, as a new process would (for tests)."""
        config = self._config
        if config is not None:
            config.unobserve(self._config_changed)
        self.transport.reset()
        self._config = None
        self.frontend = None
        self.startup_sent = self.startup_pending = False
        self.printed = 0
        self._context = None
        self._context_thread = None
        self._user_off = False
        self._home_off = None
        self._config_off = None
        self._debug = False
        self.log.clear()
        self._held = []
        self.notice_pending, self._notice_displayed = True, False
        self.notice_display = None
        self._policy_off = None
        self.runner = None
        self._notice_printed = False

    # -- configuration -----------------------------------------------------------
    @property
    def config(self) -> ClackyTelemetry:
        if self._config is None:
            self.attach(ClackyTelemetry())
        assert self._config is not None
        return self._config

    def attach(self, config: ClackyTelemetry, frontend: str | None = None) -> None:
        """Use `config` from now on: the extension's, or a default one built from the
        environment. After ``%unload_ext`` the last one stays in effect, so queued
        events still go where they were meant to."""
        if self._config is not None:
            self._config.unobserve(self._config_changed)
        self._config = config
        self.frontend = frontend
        self._user_off, self._home_off = self._saved_choice()
        saved = saved_choice_path()
        self._saved_path = None if saved is None else str(saved)
        self._policy_off = policy_off_reason()
        self.notice_pending = not (self._notice_displayed or notice.seen())
        config.observe(self._config_changed)
        self._config_changed(None)

    def _config_changed(self, change: Any) -> None:
        config = self._config
        assert config is not None
        was_off = self.off_reason()
        if not config.enabled:
            self._config_off = "ClackyTelemetry.enabled is False"
        elif config.endpoint_problem:
            self._config_off = f"{config.endpoint_problem}; telemetry stays off until a valid endpoint is set"
        else:
            self._config_off = None
        self._debug = config.debug
        self.transport.max_queue_size = config.max_queue_size
        self.transport.max_connections = config.max_connections
        self._on_or_off(was_off)

    def _on_or_off(self, was_off: str | None) -> None:
        """React to a switch: discard what is queued when off, send a pending startup when on."""
        now_off = self.off_reason()
        if now_off and not was_off:
            self.transport.discard()
            self._release(send=False)
        elif not now_off and self.startup_pending:
            self.startup()
        self._notify()

    def listen(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever a switch or the configuration changed (the cell hooks follow it)."""
        self._listeners.append(callback)

    def unlisten(self, callback: Callable[[], None]) -> None:
        self._listeners = [fn for fn in self._listeners if fn != callback]

    def _notify(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                pass

    @property
    def switched_off(self) -> str | None:
        """Why a switch of this process (config, ``%clacky_telemetry off``) keeps telemetry off.

        Unlike the environment, these are seen when they change, so this is only
        attribute reads: the cell hooks can afford it on every cell.
        """
        return self._policy_off or self._config_off or self._home_off or (SAVED_OFF if self._user_off else None)

    @staticmethod
    def _saved_choice() -> tuple[bool, str | None]:
        """The saved ``off``, and why it cannot be checked: then telemetry stays off (privacy first)."""
        try:
            return persisted_off(), None
        except OSError as exc:
            return False, f"the saved choice cannot be checked: {exc}"

    def _saved_off_since(self) -> bool:
        """Whether the choice was saved ``off`` since this session read it (one stat, on the worker)."""
        path = self._saved_path
        if path is None:
            return False
        try:
            os.stat(path)
        except (OSError, ValueError):
            return False
        return True

    def reset_device_id(self) -> str:
        """``reset-id``: a fresh random device id in brand.yml, used from the next event on.
        Returns the line to show; OSError (with its sentence) when it could not be written."""
        path = reset_device_id(clacky_home())
        self._context = None  # built again, from the new brand.yml, by the next event
        return (
            f"New random device id saved in {path} (mode 0600; the openclacky gem uses it too). "
            "Events from now on carry it; it is not derived from your host or user names."
        )

    def off_reason(self) -> str | None:
        """Why telemetry is off right now, or None when it is on."""
        return env_off_reason() or self.switched_off

    def decided_by(self) -> str | None:
        """Which switch keeps telemetry off, by the name status gives it (`SWITCH_NAMES`), or None when on."""
        if env_off_reason():
            return "environment"
        if self._policy_off:
            return "policy file"
        if self._config_off:
            return "config"
        return "saved choice" if self._home_off or self._user_off else None

    def set_user_off(self, off: bool) -> str | None:
        """``%clacky_telemetry on|off``: persist the choice; returns an error text if it could not be saved."""
        was_off = self.off_reason()
        self._user_off = off
        self._home_off = None  # an explicit choice decides this session, saved or not
        error = None
        try:
            persist_off(off)
        except OSError as exc:
            where = saved_choice_path()
            error = f"could not save the choice in {where.parent}: {exc.strerror or exc}" if where else str(exc)
        if not off and not self.config.enabled:
            self.config.enabled = True  # an explicit "on" also lifts the session's config switch
        self._on_or_off(was_off)
        return error

    # -- events ------------------------------------------------------------------
    def submit(self, event: str, data: Any, made_at: float | None = None) -> bool:
        """Queue one event unless telemetry is off now. Never raises, never blocks.

        `data` is the event's fields, or for a task the tuple `task_fields` turns into
        them on the worker. The opt-out is checked here, when the event happens (an
        opt-out covers what happened while it was set), and again by the worker just
        before sending. The first event without the extension attaches the default
        configuration (environment, persisted opt-out, debug), so that even it is
        printed instead of sent in debug.
        """
        if self._config is None:
            self.config  # noqa: B018 - attaches the default configuration
        if self.off_reason():
            return False
        if self.startup_pending and event != "startup":
            self.startup()
        if self._debug:
            return self._print(event, data)
        if self.notice_pending:
            return self._hold(event, data)
        return self.transport.submit(event, data, made_at)

    # -- the notice: nothing leaves before it was displayed ------------------------
    def _hold(self, event: str, fields: dict[str, Any]) -> bool:
        """Keep the event until the notice was displayed (bounded like the queue)."""
        limit = self.config.max_queue_size  # also attaches a configuration, which reads the marker
        if self.notice_pending and self.notice_display is None:
            self.notice_displayed(print_to_stderr=True)  # no extension to show it in a cell: stderr, now
        with self._held_lock:
            if self.notice_pending:
                if len(self._held) >= limit:
                    self.transport.drop(event, "dropped: queue full")
                    return False
                self._held.append((time.time(), event, fields))
                return True
        return self.transport.submit(event, fields)  # displayed meanwhile, by another thread

    @property
    def waiting(self) -> int:
        """How many events wait for the notice."""
        return len(self._held)

    def notice_displayed(self, print_to_stderr: bool = False) -> None:
        """A person has seen the notice: remember that, and send what waited for it.

        With `print_to_stderr` (the Python API without the extension) it is printed first,
        and counts only when stderr reaches a person in an attended run (see `notice`).
        """
        with self._held_lock:
            if self._notice_displayed:
                return
            if print_to_stderr and not self._print_notice():
                return  # not seen: stays pending
            self.notice_pending = False
            self._notice_displayed = True
        notice.mark_seen()
        was_off = self.off_reason()
        # a choice made while the notice waited, perhaps in another shell, counts
        saved, problem = self._saved_choice()
        self._user_off = self._user_off or saved
        self._home_off = self._home_off or problem
        self._policy_off = self._policy_off or policy_off_reason()
        if self.off_reason():
            self._release(send=False)
            if not was_off:
                self._notify()
        else:
            self._release(send=True)

    def _print_notice(self) -> bool:
        """Print the notice on stderr; True when that counts as a person seeing it."""
        kernel = getattr(_shell(), "kernel", None)
        runner = notice.unattended_runner(kernel)
        if runner:
            self.runner = runner
        if notice.seen():
            return True  # seen meanwhile elsewhere (another process, JupyterLab's notification)
        if not notice.visible(sys.stderr):
            return False  # printed nowhere: shown when stderr reaches someone
        unattended = runner is not None or detect_ci()
        if unattended and self._notice_printed:
            return False
        try:
            print(notice.text(self.config), file=sys.stderr, flush=True)
        except Exception:
            return False
        self._notice_printed = True
        return not unattended  # in an unattended run's log, for whoever reads it: never consumed

    def _release(self, send: bool) -> None:
        """Hand the held events to the transport, or discard them (telemetry was turned off)."""
        with self._held_lock:
            held, self._held = self._held, []
        for _, event, fields in held:
            if send:
                self.transport.submit(event, fields)
            else:
                self.transport.drop(event, "dropped: opted out")

    def startup(self) -> bool:
        """Send the process's one startup event; later calls do nothing."""
        if self.startup_sent:
            return False
        if self.off_reason():
            self.startup_pending = True
            return False
        was_pending = self.startup_pending
        self.startup_sent, self.startup_pending = True, False
        queued = self.submit("startup", {})
        if was_pending:
            self._notify()  # on at last, perhaps by the environment: a pending notice can show now
        return queued

    def task(
        self,
        trigger: str,
        error: BaseException | None,
        measured_ms: int | None,
        result: Any = None,
        fields: dict[str, Any] | None = None,
    ) -> bool:
        """A task event from what happened; `task_fields` works it out on the worker."""
        kind = None if error is None else type(error)  # not the exception: its traceback holds frames
        return self.submit("task", (trigger, kind, measured_ms, result, fields, None))

    def cell(self, info: Any, error: BaseException | None, start: float, end: float) -> bool:
        """A tracked cell (the post_run_cell hook): a time and a tuple, nothing more here.

        The common case (configured, on, nothing pending, not debugging) goes straight to
        the queue; anything else takes `submit`'s full path.
        """
        data = ("cell", None if error is None else type(error), (start, end), None, None, info)
        if (
            self._config is None
            or self.notice_pending
            or self.startup_pending
            or self._debug
            or self.switched_off
            or _env_switch_set()
        ):
            return self.submit("task", data, end)
        return self.transport.submit("task", data, end)

    @staticmethod
    def task_fields(data: Any) -> dict[str, Any] | None:
        """A task's fields from what happened (None: not an event, the extension's own cell).

        The result's metrics win, `fields` fill what it lacks, and a measured duration
        (milliseconds, or a (start, end) pair of perf_counter times) wins over both.
        Runs on the worker: the user's objects are read here, never in a cell's hook.
        """
        if not isinstance(data, tuple):
            return data
        trigger, error, measured, result, fields, info = data
        if info is not None and is_extension_cell(getattr(info, "raw_cell", None)):
            return None
        event = agents.task_metrics(result, fields)
        event["trigger"] = trigger
        event["status"] = payload.status_of(error, event.get("status"))
        if event["status"] != "error":
            event.pop("error_kind", None)  # a class name only beside status error, even one passed by hand
        elif error is not None:
            event["error_kind"] = payload.error_kind(error)
        if isinstance(measured, tuple):
            measured = round((measured[1] - measured[0]) * 1000)
        if measured is not None:
            event["duration_ms"] = measured
        return event

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for the queue; False also while events wait for the notice (they cannot leave yet)."""
        drained = self.transport.flush(self.config.shutdown_timeout if timeout is None else timeout)
        return drained and not self.waiting

    def after_fork_in_child(self) -> None:
        """A forked child has no worker: fresh queue and threads, and fresh locks, since the
        parent's worker may have held one (reading a slow brand.yml) at the fork. The parent
        sends what waited for the notice, and the log so far is the parent's."""
        self._context_lock = threading.Lock()
        self._held_lock = threading.Lock()  # another thread may have held it at the fork
        self._held = []
        self.log.clear()
        self.transport.after_fork_in_child()

    # -- payloads ------------------------------------------------------------------
    def context(self) -> dict[str, Any]:
        """The fields every event shares, computed once, off the user's thread when possible."""
        if self._context is None:
            with self._context_lock:
                if self._context is None:
                    device_id, brand, self._device_stored = brand_identity(clacky_home())
                    self._device_random = self._device_stored and device_id != computed_device_id()
                    ipython = sys.modules.get("IPython")
                    self._context = {
                        "device_id": device_id,
                        "brand": brand,
                        "version": __version__,
                        "os": sys.platform,
                        "python_version": "{}.{}.{}".format(*sys.version_info[:3]),
                        "ipython_version": getattr(ipython, "__version__", None),
                        "launch_source": launch_source(),
                        "ci": detect_ci(),
                        "container": detect_container(),
                    }
        return self._context

    def context_soon(self, wait: float) -> dict[str, Any] | None:
        """The context if it is ready within `wait` seconds, else None; never blocks longer.

        ``status`` runs on the user's thread, so it never reads brand.yml itself nor
        waits on the lock the worker holds while doing so: a helper thread computes
        the context (when no one else is), and ``status`` says the id is still being
        computed if it takes longer.
        """
        if self._context is not None:
            return self._context
        thread = self._context_thread
        if thread is None or not thread.is_alive():
            thread = threading.Thread(target=self._compute_context, name="clacky-context", daemon=True)
            self._context_thread = thread
            thread.start()
        thread.join(wait)
        return self._context

    def _compute_context(self) -> None:
        try:
            self.context()
        except Exception:
            pass

    def build(self, event: str, fields: dict[str, Any], context: dict[str, Any] | None = None) -> dict[str, Any]:
        """The payload exactly as sent: the event's own fields, then the context, which only
        the client fills (a caller's ``device_id=`` or ``frontend=`` never replaces it), cleaned."""
        own = {key: value for key, value in fields.items() if key not in payload.CONTEXT_KEYS}
        context = {**(context or self.context()), "frontend": self.frontend}
        if self.runner:
            context["launch_source"] = self.runner
        return payload.clean(event, {**own, **context})

    def _plan(self, event: str, data: Any) -> Plan | None:
        """Called by the worker just before sending: the opt-out is checked again here,
        and the policy files too (a stat each: the worker can afford it, the cell cannot)."""
        if self.off_reason():
            return None
        policy = policy_off_reason()
        if policy:
            self._policy_off = policy
            return None
        if self._saved_off_since():
            self._user_off = True  # `clacky-ipy telemetry off` in another shell: this session too
            return None
        fields = self.task_fields(data)
        if fields is None:
            return SKIP
        config = self.config
        hosts = (config.endpoint, *config.fallback_endpoints)
        return Plan(self.build(event, fields), hosts, config.timeout, USER_AGENT)

    def _print(self, event: str, data: Any) -> bool:
        """Debug mode: one JSON line on stderr instead of a request."""
        try:
            fields = self.task_fields(data)
            if fields is None:
                return False
            built = self.build(event, fields)
            line = json.dumps({"event": event, "payload": built}, sort_keys=True)
            print(line, file=sys.stderr, flush=True)
            self.printed += 1
            body = json.dumps(built, separators=(",", ":"), allow_nan=False).encode()
            self._record(event, payload.PATHS[event], body, "printed (debug)")
            return True
        except Exception:
            return False

    # -- what was sent ---------------------------------------------------------------
    def _record(self, event: str, path: str, body: bytes | None, outcome: str) -> None:
        """The transport's on_outcome: one entry per event (deque.append is thread-safe)."""
        self.log.append((time.time(), event, path, body, outcome))

    def recent(self, n: int = 20) -> list[dict[str, Any]]:
        """The last `n` events of this process, oldest first, with the exact body and outcome.

        Events still waiting for the notice come last, with the body they would be sent with
        (None while the device id is still being computed: this runs on the user's thread,
        which never reads brand.yml nor waits on the worker).
        """
        entries = list(self.log)
        with self._held_lock:
            held = list(self._held)
        context = self.context_soon(0.2) if held else None
        for when, event, data in held:
            fields = self.task_fields(data)
            if fields is None:
                continue  # the extension's own cell: never an event
            body = None
            if context is not None:
                built = self.build(event, fields, context)
                body = json.dumps(built, separators=(",", ":"), allow_nan=False).encode()
            entries.append((when, event, payload.PATHS[event], body, WAITING))
        n = max(0, min(n, LOG_SIZE))
        return [
            {
                "time": when,
                "event": event,
                "path": path,
                "payload": None if body is None else body.decode("utf-8"),
                "outcome": outcome,
            }
            for when, event, path, body, outcome in (entries[-n:] if n else [])
        ]

    def switches(self, wait: float = 0.2) -> dict[str, Any]:
        """On or off and which switch decided, where the saved choice lives, the endpoint
        (credentials masked) and the device id with how it was derived: what
        ``clacky-ipy telemetry status`` shows, without a running session. Waits at most
        `wait` seconds for the device id (None: still being computed)."""
        config = self.config
        home = clacky_home()
        path = saved_choice_path(home)
        context = self.context_soon(wait)
        return {
            "on": self.off_reason() is None,
            "off_reason": self.off_reason(),
            "decided_by": self.decided_by(),
            "saved_choice": None if path is None else str(path),
            "saved_off": self._user_off,
            # saved off when this session read it, removed since (`clacky-ipy telemetry on`): it stays off
            "saved_off_removed": self._user_off and path is not None and not _exists(path),
            "endpoint": config.endpoint,
            "fallback_endpoints": list(config.fallback_endpoints),
            # exactly what is sent (made valid UTF-8, capped), not brand.yml's text as it is
            # "" when brand.yml's id is no id (`payload.DEVICE_ID`): events then go without one
            "device_id": None if context is None else payload.clean("startup", context).get("device_id", ""),
            "device_id_source": None
            if context is None
            else device_id_source(home, self._device_stored, self._device_random),
            "notice_pending": self.notice_pending,
            "waiting": self.waiting,
        }

    def status(self) -> dict[str, Any]:
        """Everything ``%clacky_telemetry status`` shows."""
        config = self.config
        paused = max(0.0, self.transport.paused_until - time.monotonic())
        return {
            **self.switches(),
            "track_cells": config.track_cells,
            "debug": self._debug,
            **self.transport.counters(),  # queued, in_flight, sent, failed, dropped
            "printed": self.printed,
            "paused_seconds": round(paused, 1),
            "last_error": self.transport.last_error,
        }


def _exists(path: Any) -> bool:
    try:
        return os.path.exists(path)
    except (OSError, ValueError):
        return True  # cannot tell: as it was read


def _shell() -> Any:
    """The running IPython shell, if any (never imports IPython)."""
    ipython = sys.modules.get("IPython")
    try:
        return ipython.get_ipython() if ipython is not None else None
    except Exception:
        return None


CLIENT = Client()
os.register_at_fork(after_in_child=CLIENT.after_fork_in_child)


# -- the public Python API ----------------------------------------------------------
def startup() -> bool:
    """Send the startup event (once per process). True when it was queued now."""
    try:
        return CLIENT.startup()
    except Exception:
        return False


def task(result: Any = None, **fields: Any) -> bool:
    """Send a task event (trigger ``api``) with the metrics of the agent's `result` (any SDK's, see `agents`).

    Keyword fields are payload keys (``model=``, ``provider=``, ``status=``,
    ``duration_ms=`` ...) that fill what the result lacks; unknown keys are
    dropped. ``error=exc`` sends status ``error`` with the exception's class name.
    True when the event was queued.
    """
    try:
        error = fields.pop("error", None)
        error = error if isinstance(error, BaseException) else None
        return CLIENT.task("api", error, None, result, fields)
    except Exception:
        return False


class Tracker:
    """What `track()` yields: `add()` each agent or LLM result (summed), or set `result`."""

    result: Any = None

    def __init__(self) -> None:
        self._added: list[Any] = []

    def add(self, result: Any) -> Any:
        """Count one more result (any SDK's, see `agents`): read on the worker, summed; returns `result`."""
        self._added.append(result)
        return result

    def results(self) -> Any:
        """What the event is built from: `result`, and every result added, as one `agents.Runs`."""
        if not self._added:
            return self.result
        return agents.Runs([*self._added, self.result] if self.result is not None else self._added)


@contextmanager
def track(model: str | None = None, provider: str | None = None) -> Iterator[Tracker]:
    """Time a block and send one task event (trigger ``api``); exceptions pass through.

    ``t.add(result)`` each SDK call's result (summed: tokens, requests, cost; the last
    model), or set ``t.result``; `model` and `provider` fill what the results lack.
    """
    tracker = Tracker()
    start = time.perf_counter()
    error: BaseException | None = None
    try:
        yield tracker
    except BaseException as exc:
        error = exc
        raise
    finally:
        try:
            duration = round((time.perf_counter() - start) * 1000)
            CLIENT.task("api", error, duration, tracker.results(), {"model": model, "provider": provider})
        except Exception:
            pass


def recent(n: int = 20) -> list[dict[str, Any]]:
    """The last `n` (at most 100) telemetry events of this process, oldest first.

    Each is a dict: ``time`` (Unix seconds), ``event`` (``startup``/``task``), ``path``,
    ``payload`` (the exact JSON text sent, or None when it was never built) and
    ``outcome`` (``sent 201``, ``failed HTTP 500``, ``failed ConnectionError``,
    ``dropped: queue full``, ``dropped: opted out``, ``waiting for the notice``,
    ``printed (debug)`` ...). Kept in memory only, never written to disk.
    """
    try:
        return CLIENT.recent(n)
    except Exception:
        return []


def flush(timeout: float | None = None) -> bool:
    """Wait at most `timeout` seconds (default: shutdown_timeout) for the queue to drain."""
    try:
        return CLIENT.flush(timeout)
    except Exception:
        return False
