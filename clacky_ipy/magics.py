"""The IPython side: the magics, the cell hooks, and loading/unloading the extension.

The hooks are the hot path, and they are registered only while they can send
something (``track_cells`` on and no switch of this process off): otherwise a
cell costs nothing at all. ``pre_run_cell`` records a start time and
``post_run_cell`` queues one small tuple when the finished cell is top-level: the
status, the rounding and the extension-cell check happen on the worker.
Each run is matched by its ``ExecutionInfo``, so the cell that loaded the
extension (a post without a pre) and a magic's nested run are never counted.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Mapping
from time import perf_counter
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class

from .client import CLIENT, INTERRUPTED
from .config import DOCS_URL, NOTICE_FILE, ClackyTelemetry
from .identity import clacky_home, detect_frontend

NOTICE = f"""\
clacky_ipy: anonymous usage telemetry for OpenClacky is on. It sends a hashed device id,
versions and, per agent run, the duration, status, error class name and the agent's
model, token and cost figures: never your code, outputs, error messages, paths or names.
Details: {DOCS_URL}
Opt out: %clacky_telemetry off, or CLACKY_TELEMETRY=0 (or DO_NOT_TRACK=1) in the environment."""

_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # shell -> its ClackyMagics


@magics_class
class ClackyMagics(Magics):
    """``%%clacky``, ``%clacky`` and ``%clacky_telemetry``, plus the cell hooks."""

    def __init__(self, shell: Any, telemetry: ClackyTelemetry) -> None:
        super().__init__(shell)  # also appends self to shell.configurables
        self.telemetry = telemetry
        self._frames: list[tuple[Any, float]] = []  # (ExecutionInfo, start) of running cells
        self._claimed = False  # the running top-level cell was already tracked by %%clacky
        self._notice_pending = False
        self._hooked = self._notice_hooked = False

    # -- hooks (every tracked cell pays for these: keep them short) --------------------
    def pre_run_cell(self, info: Any) -> None:
        self._frames.append((info, perf_counter()))

    def post_run_cell(self, result: Any) -> None:
        end = perf_counter()
        try:
            frames = self._frames
            if not frames or (result is not None and frames[-1][0] is not result.info):
                return  # no matching pre_run_cell: the cell that loaded the extension
            info, start = frames.pop()
            if frames:
                return  # a nested run, e.g. the body of %%clacky
            if self._claimed:
                self._claimed = False
                return
            # ipykernel passes None for an interrupted async cell
            error = INTERRUPTED if result is None else (result.error_before_exec or result.error_in_exec)
            CLIENT.cell(info, error, start, end)
        except Exception:
            pass  # a hook that raises prints a traceback on every cell

    def sync_hooks(self, loaded: bool = True) -> None:
        """Register each hook only while it has work; called on every switch or config change."""
        cells = loaded and bool(self.telemetry.track_cells) and not CLIENT.switched_off
        if cells != self._hooked:
            self._frames.clear()  # the cell running while tracking flips is not counted
            self._hook(cells, ("pre_run_cell", self.pre_run_cell), ("post_run_cell", self.post_run_cell))
            self._hooked = cells
        notice = loaded and self._notice_pending and CLIENT.off_reason() is None
        if notice != self._notice_hooked:
            self._hook(notice, ("pre_run_cell", self._notice_hook))
            self._notice_hooked = notice

    def _hook(self, on: bool, *pairs: tuple[str, Any]) -> None:
        for event, callback in pairs:
            if on:
                self.shell.events.register(event, callback)
            else:
                try:
                    self.shell.events.unregister(event, callback)
                except ValueError:
                    pass  # not registered

    # -- notice -------------------------------------------------------------------
    def show_notice(self) -> None:
        """Print the first-run notice once per Clacky home, while telemetry is on."""
        if CLIENT.off_reason():
            return  # stays pending: shown when telemetry is turned on
        self._notice_pending = False
        print(NOTICE, flush=True)
        try:
            home = clacky_home()
            home.mkdir(parents=True, exist_ok=True)
            (home / NOTICE_FILE).write_text("shown\n", encoding="utf-8")
        except OSError:
            pass  # shown again next session: better than never
        self.sync_hooks()  # the notice's own hook is done

    def _notice_hook(self, info: Any) -> None:
        """pre_run_cell while the notice is pending: it lands in the first cell's output."""
        try:
            self.show_notice()
        except Exception:
            pass

    # -- magics -------------------------------------------------------------------
    @line_cell_magic
    def clacky(self, line: str, cell: str | None = None) -> None:
        """Run an agent cell and send one task event (trigger ``magic``).

        Usage::

            %%clacky [--model M] [--provider P] [--result NAME]
            <cell body>

            %clacky [--model M] [--provider P] [--result NAME] STATEMENT

        The body runs as a normal cell: output, the value of its last
        expression and tracebacks show as usual, and when it fails the cell
        fails. The agent's metrics come from the variable NAME in the user
        namespace (``--result``), else from the value of the last expression
        when it is a mapping shaped like the gem's ``Agent#run`` result.
        ``--model`` / ``--provider`` fill those keys when the result lacks them.
        """
        opts, statement = self.parse_options(
            line, "", "model=", "provider=", "result=", posix=False, strict=False, preserve_non_opts=True
        )
        body = statement if cell is None else cell
        if not body.strip():
            raise UsageError("%clacky needs a statement, or use %%clacky as a cell magic")
        shell = self.shell
        outer = shell.displayhook.exec_result  # the ExecutionResult of the cell running this magic
        self._claimed = bool(self._frames)
        start = perf_counter()
        try:
            inner = shell.run_cell(body, store_history=False)
        finally:
            shell.displayhook.exec_result = outer  # the nested run reset it
        duration = round((perf_counter() - start) * 1000)
        error = inner.error_before_exec or inner.error_in_exec
        result = self._agent_result(opts.get("result"), inner.result)
        fill = {"model": _unquote(opts.get("model")), "provider": _unquote(opts.get("provider"))}
        CLIENT.task("magic", error, duration, result, fill)
        if error is not None and outer is not None:
            outer.error_in_exec = error  # the cell fails (Run All stops); the traceback was shown once

    def _agent_result(self, name: str | None, last_value: Any) -> Any:
        if not name:
            return last_value if isinstance(last_value, Mapping) else None
        name = _unquote(name)
        if name not in self.shell.user_ns:
            print(f"clacky_ipy: --result {name}: no such variable; sent without agent metrics", file=sys.stderr)
        return self.shell.user_ns.get(name)

    @line_magic
    def clacky_telemetry(self, line: str) -> None:
        """Show or change telemetry: ``%clacky_telemetry [status|on|off|flush]``.

        ``off`` persists in the Clacky home ($CLACKY_HOME, default ~/.clacky) so
        later sessions honour it, until ``on``. ``flush`` waits (at most
        shutdown_timeout) until everything queued was delivered.
        """
        command = line.strip().lower() or "status"
        if command == "status":
            print(status_text(CLIENT.status()))
        elif command in ("on", "off"):
            error = CLIENT.set_user_off(command == "off")
            reason = CLIENT.off_reason()
            if error:
                print(f"clacky_ipy: {error}; applies to this session only", file=sys.stderr)
            if command == "off":
                print("Telemetry is off; nothing more will be sent." + ("" if error else " Saved for later sessions."))
            elif reason:
                print(f"Telemetry stays off: {reason}.")
            else:
                print("Telemetry is on.")
                if self._notice_pending:
                    self.show_notice()
        elif command == "flush":
            timeout = self.telemetry.shutdown_timeout
            drained = CLIENT.flush()
            print(
                "Flushed: nothing left in the queue."
                if drained
                else f"Not drained within {timeout:g} s; still queued: {CLIENT.transport.queued}."
            )
        else:
            raise UsageError(f"unknown argument {line.strip()!r}: use %clacky_telemetry [status|on|off|flush]")


def _unquote(value: str | None) -> str | None:
    if value and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value or None


def status_text(status: Mapping[str, Any]) -> str:
    """``%clacky_telemetry status`` as lines a person reads."""
    state = "on" if status["on"] else f"off ({status['off_reason']})"
    lines = [
        f"Telemetry:    {state}",
        f"Endpoint:     {status['endpoint']}"
        + (f" (fallbacks: {', '.join(status['fallback_endpoints'])})" if status["fallback_endpoints"] else ""),
        f"Device id:    {status['device_id']}",
        f"track_cells:  {status['track_cells']}",
        "Events:       queued {queued}, sent {sent}, failed {failed}, dropped {dropped}, in flight {in_flight}".format(
            **status
        ),
    ]
    if status["debug"]:
        lines.append(f"Debug:        on: events are printed to stderr, not sent ({status['printed']} printed)")
    if status["paused_seconds"]:
        lines.append(f"Paused:       {status['paused_seconds']} s more (the server answered 429)")
    if status["last_error"]:
        lines.append(f"Last error:   {status['last_error']}")
    return "\n".join(lines)


def load(shell: Any) -> None:
    """``%load_ext clacky_ipy``: configurable, magics, hooks, then the startup event."""
    if shell in _ACTIVE:
        unload(shell)  # never two sets of hooks
    telemetry = ClackyTelemetry(parent=shell)
    magics = ClackyMagics(shell, telemetry)
    shell.configurables.append(telemetry)
    shell.register_magics(magics)
    _ACTIVE[shell] = magics
    CLIENT.attach(telemetry, frontend=detect_frontend(shell))
    CLIENT.startup()
    magics._notice_pending = not (clacky_home() / NOTICE_FILE).exists()
    if magics._notice_pending and shell.displayhook.exec_result is not None:
        magics.show_notice()  # loaded from a cell: tell the user in it
    CLIENT.listen(magics.sync_hooks)
    magics.sync_hooks()


def unload(shell: Any) -> None:
    """``%unload_ext clacky_ipy``: remove all of it; queued events still go out."""
    magics = _ACTIVE.pop(shell, None)
    if magics is None:
        return
    CLIENT.unlisten(magics.sync_hooks)
    magics.sync_hooks(loaded=False)
    manager = shell.magics_manager
    for kind, names in magics.magics.items():
        table = manager.magics[kind]
        for name in names:
            if getattr(table.get(name), "__self__", None) is magics:
                del table[name]
    if manager.registry.get(type(magics).__name__) is magics:
        del manager.registry[type(magics).__name__]
    shell.configurables[:] = [c for c in shell.configurables if c is not magics and c is not magics.telemetry]
