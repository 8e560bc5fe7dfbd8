"""The IPython side: the magics, the cell hooks, and loading/unloading the extension.

The hooks are the hot path, and they are registered only while they can send
something (``track_cells`` on and no switch of this process off): otherwise a
cell costs nothing at all. ``pre_run_cell`` records a start time and
``post_run_cell`` queues one small tuple when the finished cell is top-level: the
status, the rounding and the extension-cell check happen on the worker.
Each run is matched by its ``ExecutionInfo``, so the cell that loaded the
extension (a post without a pre) and a magic's nested run are never counted; a
cell whose ``ExecutionInfo`` IPython rebuilt (an interrupt escaping the async
runner) or that ipykernel reports as ``None`` still closes its run, so no stale
run ever makes later cells look nested.

A ``%%clacky`` cell is not run by the magic: an input transformer removes the
``%%clacky`` line (``%clacky [options]`` before a one-line statement) and marks the
cell, so IPython runs the body as the cell itself, through the same path any cell
takes in that frontend (top-level ``await``, displayed value, ``;``, history,
tracebacks). Its own pair of hooks, registered only while a marked cell runs,
sends the event from ``post_run_cell``. The magic functions remain for
programmatic calls (``run_cell_magic``) and for what the transformer leaves alone.
"""

from __future__ import annotations

import ast
import re
import sys
import threading
import weakref
from time import perf_counter
from typing import Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, needs_local_scope

from . import logcomm, notice
from .client import CLIENT, INTERRUPTED, LOG_SIZE
from .config import ClackyTelemetry, saved_choice_path
from .identity import detect_ci, detect_frontend
from .status import status_text

#: What ``%clacky_telemetry`` accepts, for the usage line and for completion.
TELEMETRY_COMMANDS = ("status", "on", "off", "log", "flush", "reset-id")
#: What completion offers after ``%clacky_telemetry log``.
LOG_COUNTS = ("10", "20", "50", "100")
#: ``%%clacky`` / ``%clacky`` options, for completion.
CLACKY_OPTIONS = ("--model", "--provider", "--result")

_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # shell -> its ClackyMagics


#: The options the transformer understands; any other line is left to the magic, which explains it.
_OPTIONS = r"((?:[ \t]+--(?:model|provider|result)(?:=|[ \t]+)\S+)*)"
_CELL_HEAD = re.compile(r"%%clacky" + _OPTIONS + r"[ \t]*\r?\n?")
_LINE_HEAD = re.compile(r"%clacky" + _OPTIONS + r"[ \t]+(?=\S)(?!--)")  # `--`: a bad option, not code
_OPTION = re.compile(r"--(model|provider|result)(?:=|[ \t]+)(\S+)")
#: IPython runs each cell in ``InteractiveShell.run_cell_async`` (IPython 7 to 9), whose local
#: ``info`` is the cell's ExecutionInfo: how a hook tells a running outer cell from one that ended.
_RUNNER_CODE = getattr(getattr(InteractiveShell, "run_cell_async", None), "__code__", None)
_HAS_CELL_RUNNER = _RUNNER_CODE is not None and "info" in _RUNNER_CODE.co_varnames
#: A `%clacky` line of options (a value may be missing) and nothing else.
_ONLY_OPTIONS = re.compile(r"(?:\s*--(?:model|provider|result)(?:(?:=|[ \t]+)(?!-)\S+)?)*\s*")
_NO_STATEMENT = "%clacky needs a statement, or use %%clacky as a cell magic"
#: A raw cell that starts with %%clacky or %clacky: cheap, and run only while a marked cell is pending.
_MARKED = re.compile(r"\s*(?:%%\S[^\n]*\n)?%%?clacky(?![\w])")  # under another cell magic too


def _options(text: str) -> dict[str, str]:
    return {name: value for name, value in _OPTION.findall(text)}


#: The functions that transform a cell they then run with its hooks (IPython 8 and 9, ipykernel 6 and 7).
_CELL_RUNNERS = ("_run_cell", "run_cell_async", "run_cell", "do_execute")


def _top_level_run() -> bool:
    """Whether the transformer runs for a cell IPython is about to run with its hooks: called
    from ``transform_cell`` by the cell runner, not silent. Not: ``%time``/``%timeit``'s own
    transformation of their line, an inspector, a silent run (``%run file.ipynb``, ``.ipy``):
    those run no cell hooks, so ``%%clacky`` is left to the magic, which sends by itself."""
    frame = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            return False
        caller = frame.f_back
        if frame.f_code.co_name == "transform_cell" and (caller is None or caller.f_code.co_name != "transform_cell"):
            # the shell's transform_cell (over the TransformerManager's): who asked for it?
            if caller is None or caller.f_code.co_name not in _CELL_RUNNERS:
                return False
            return not caller.f_locals.get("silent", False)
        frame = caller
    return False


class _CellState(threading.local):
    """The cells running on one thread: ipykernel 7's subshells run cells on several at once."""

    def __init__(self) -> None:
        self.frames: list[tuple[Any, float]] = []  # (ExecutionInfo, start) of running cells
        self.claimed = False  # the running top-level cell was already tracked by %%clacky
        # %%clacky cells: options of cells transformed but not started yet, then (info, options, start)
        self.pending: list[tuple[dict[str, str], float]] = []
        self.marked: list[tuple[Any, dict[str, str], float]] = []
        self.last_marked: Any = None  # the ExecutionInfo of the last %%clacky cell that sent its event


def _thread_state(name: str) -> property:
    def get(self: Any) -> Any:
        return getattr(self._state, name)

    def set_(self: Any, value: Any) -> None:
        setattr(self._state, name, value)

    return property(get, set_, doc=f"This thread's {name} (see _CellState).")


def _seen_by_a_person(shell: Any, info: Any) -> bool:
    """Whether a cell's output is where a person reads it.

    In a kernel, frontends run their own set-up code as cells too (VS Code does) with
    ``store_history=False``, and its output is never shown: the notice waits for a cell the
    user ran. In a terminal every cell's output is on the screen (``ipython -c`` included).
    """
    if info is None:
        return False
    return getattr(shell, "kernel", None) is None or bool(getattr(info, "store_history", True))


def _running_cell(shell: Any) -> Any:
    """The ExecutionInfo of the cell running now, or None outside a cell."""
    return getattr(shell.displayhook.exec_result, "info", None)


@magics_class
class ClackyMagics(Magics):
    """``%%clacky``, ``%clacky`` and ``%clacky_telemetry``, plus the cell hooks."""

    def __init__(self, shell: Any, telemetry: ClackyTelemetry) -> None:
        super().__init__(shell)  # also appends self to shell.configurables
        self.telemetry = telemetry
        self._state = _CellState()
        self._notice_pending = False
        self._hooked = self._notice_hooked = False
        self._marked_hooked = False
        self._marked_threads: set[int] = set()  # threads with a %%clacky cell pending or running
        self._marked_lock = threading.Lock()
        self._clear_watch: tuple[Any, Any] | None = None  # (display publisher, its wrapped clear_output)
        self._cleared = False

        def transformer(lines: list[str]) -> list[str]:
            return self._transform(lines)

        transformer.has_side_effects = True  # type: ignore[attr-defined] # check_complete must skip it
        self.transformer = transformer
        self.matcher: Any = None  # the completion matcher, registered while loaded

    _frames = _thread_state("frames")
    _claimed = _thread_state("claimed")
    _pending = _thread_state("pending")
    _marked = _thread_state("marked")
    _last_marked = _thread_state("last_marked")

    # -- hooks (every tracked cell pays for these: keep them short) --------------------
    def pre_run_cell(self, info: Any) -> None:
        self._state.frames.append((info, perf_counter()))

    def post_run_cell(self, result: Any) -> None:
        end = perf_counter()
        try:
            state = self._state
            frames = state.frames
            if not frames:
                return  # no pre_run_cell: the cell that loaded the extension
            if result is not None and frames[-1][0] is result.info:
                info, start = frames.pop()
            else:
                closed = _close(frames, result)
                if closed is None:
                    return  # a cell whose pre_run_cell this hook never saw (an empty one)
                info, start = closed[1]
            if frames:
                if _running(frames[0][0]):
                    return  # a nested run, e.g. the body of %%clacky
                frames.clear()  # they ended unseen: this cell is top-level, and so are the next ones
            claimed, state.claimed = state.claimed, False
            if claimed or info is state.last_marked or (state.marked and state.marked[-1][0] is info):
                return  # a %%clacky cell sends its own event
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
        if notice and _seen_by_a_person(self.shell, _running_cell(self.shell)):
            self.show_notice()  # turned on from a cell: the notice goes in its output, then the events
            return
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

    # -- %%clacky as the cell itself ------------------------------------------------
    def _transform(self, lines: list[str]) -> list[str]:
        """Input transformer (runs on every cell: the first test is all most cells pay).

        ``%%clacky [options]`` becomes a comment (``# %%clacky ...``), so line
        numbers stay those of the cell as shown and ``In[n]`` still says what it
        was; over another cell magic (``%%time``) the line is removed, so that
        magic is the cell's first line again, and right under one
        (``%%time`` then ``%%clacky``) it is removed too and marks the whole cell.
        ``%clacky [options] STATEMENT`` as the cell's only line becomes the
        statement. Anything else, including an empty body, options without a
        statement, or options it does not know, is left to the magic.
        """
        try:
            first = lines[0] if lines else ""
            if not first.startswith("%"):
                return lines
            if first.startswith("%%clacky"):
                head, out = _CELL_HEAD.fullmatch(first), lines[1:]
                if head and out and not out[0].startswith("%%"):
                    out = ["# " + first.rstrip("\r\n") + "\n", *out]
            elif first.startswith("%clacky"):
                head, out = _LINE_HEAD.match(first), lines[1:]
                if head is None or "".join(out).strip():
                    return lines
                out = [first[head.end() :]]
            elif first.startswith("%%") and len(lines) > 1 and lines[1].startswith("%%clacky"):
                head, out = _CELL_HEAD.fullmatch(lines[1]), [first, *lines[2:]]
            else:
                return lines
            if head is None or not "".join(out).strip() or not _top_level_run():
                return lines
            self._pending.append((_options(self._expand(head.group(1))), perf_counter()))
            self._hook_marked(True)
            return out
        except Exception:
            return lines

    def _expand(self, text: str) -> str:
        """``{var}`` and ``$var`` in the options, from the user's namespace, as IPython expands
        a magic's line: the same value through the transformer as through the magic."""
        if "{" not in text and "$" not in text:
            return text
        try:
            from IPython.utils.text import DollarFormatter

            # what var_expand does for a magic called at top level, whose frame's locals are user_ns
            return DollarFormatter().vformat(text, args=[], kwargs=self.shell.user_ns.copy())
        except Exception:
            return text  # as IPython leaves a line it cannot expand

    def _hook_marked(self, on: bool, everyone: bool = False) -> None:
        """Register the %%clacky hooks while any thread has a marked cell pending or running."""
        with self._marked_lock:
            if on:
                self._marked_threads.add(threading.get_ident())
            elif everyone:
                self._marked_threads.clear()
            else:
                self._marked_threads.discard(threading.get_ident())
            want = bool(self._marked_threads)
            if want != self._marked_hooked:
                self._hook(want, ("pre_run_cell", self._marked_pre), ("post_run_cell", self._marked_post))
                self._marked_hooked = want

    def _marked_pre(self, info: Any) -> None:
        """The transformed cell starts: bind its options to its ExecutionInfo."""
        try:
            if self._marked and not _running(self._marked[0][0]):
                self._marked.clear()  # marked cells that ended unseen
            pending = self._pending
            if pending:
                options, _ = pending[-1]
                pending.clear()  # older ones were transformed and never run (an inspector, %%time's body)
                if _MARKED.match(info.raw_cell):
                    self._marked.append((info, options, perf_counter()))
            if not self._marked:
                self._hook_marked(False)
        except Exception:
            pass

    def _marked_post(self, result: Any) -> None:
        """A cell ended: when it is the marked one, send its event (trigger ``magic``)."""
        try:
            marked = self._marked
            info = None if result is None else result.info
            closed = _close(marked, result) if marked else None
            if closed is not None:
                original, options, start = closed[1]
            elif info is not None and self._pending and _MARKED.match(info.raw_cell):  # transformed after pre
                options, start = self._pending.pop()
                self._pending.clear()
                original = info
            else:
                return  # a nested run inside the marked cell
            if result is None:  # ipykernel: an interrupted async cell
                error: BaseException | None = INTERRUPTED
                value = None
            else:
                error = result.error_before_exec or result.error_in_exec
                value = result.result
            self._last_marked = original  # whichever post_run_cell hook runs first, the cell sends one event
            self._send(options, error, round((perf_counter() - start) * 1000), value)
        except Exception:
            pass  # a hook that raises prints a traceback on every cell
        finally:
            if not self._marked and not self._pending:
                self._hook_marked(False)

    def _send(self, options: dict[str, Any], error: BaseException | None, duration: int, value: Any) -> None:
        """One task event (trigger ``magic``) for a %%clacky body that ran."""
        result = self._agent_result(options.get("result"), value)
        fill = {"model": _unquote(options.get("model")), "provider": _unquote(options.get("provider"))}
        CLIENT.task("magic", error, duration, result, fill)

    # -- notice -------------------------------------------------------------------
    def show_notice(self) -> None:
        """Print the first-run notice once per Clacky home, while telemetry is on.

        It counts as seen when it went to a stream a person reads (not a capture, not
        /dev/null), in an attended run (not CI, not a kernel driven by nbclient or
        papermill), and the cell that printed it ended without clearing its output.
        """
        if CLIENT.off_reason():
            return  # stays pending: shown when telemetry is turned on
        runner = self._learn_runner()
        if notice.seen():  # seen meanwhile elsewhere (another session, JupyterLab's notification)
            self._notice_pending = False
            CLIENT.notice_displayed()
            self.sync_hooks()
            return
        if not notice.visible(sys.stdout):
            self._notice_pending = True  # captured or sent nowhere: the next cell shows it
            self._arm_notice()
            return
        self._notice_pending = False
        print(notice.text(self.telemetry), flush=True)
        if runner is None and not detect_ci():
            # The events that waited leave when this cell ends, so that a cell that reads the notice
            # and opts out (`%load_ext clacky_ipy` then `%clacky_telemetry off`) sends nothing.
            self._watch_clear(True)
            self.shell.events.register("post_run_cell", self._notice_read)
        # else: in the run's output for whoever reads it later, but never consumed
        self.sync_hooks()  # the notice's own hook is done

    def _notice_read(self, result: Any = None) -> None:
        """post_run_cell of the cell that showed the notice: once, then let the events go,
        unless the cell cleared its output (then the next cell shows it again)."""
        try:
            self._hook(False, ("post_run_cell", self._notice_read))
            if self._watch_clear(False):
                self._notice_pending = True
                self._arm_notice()
                return
            CLIENT.notice_displayed()
        except Exception:
            pass

    def _arm_notice(self) -> None:
        if not self._notice_hooked:
            self._hook(True, ("pre_run_cell", self._notice_hook))
            self._notice_hooked = True

    def _watch_clear(self, on: bool) -> bool:
        """Note a ``clear_output()`` while the notice's cell runs (IPython's display publisher
        carries it, in a kernel and a terminal); returns whether one happened."""
        watch, self._clear_watch = self._clear_watch, None
        if watch is not None:
            publisher, wrapper = watch
            if publisher.__dict__.get("clear_output") is wrapper:
                del publisher.clear_output
        if not on:
            return self._cleared
        self._cleared = False
        publisher = self.shell.display_pub
        original = publisher.clear_output

        def clear_output(*args: Any, **kwargs: Any) -> Any:
            self._cleared = True
            return original(*args, **kwargs)

        try:
            publisher.clear_output = clear_output
            self._clear_watch = (publisher, clear_output)
        except Exception:
            pass
        return False

    def _learn_runner(self) -> str | None:
        """In a kernel, whether the request running now comes from an unattended runner; remembered,
        so that the process's events carry it as ``launch_source``."""
        runner = notice.unattended_runner(getattr(self.shell, "kernel", None))
        if runner:
            CLIENT.runner = runner
        return CLIENT.runner

    def _runner_hook(self, info: Any) -> None:
        """pre_run_cell, once, in a kernel loaded at start-up: the first request tells who drives it."""
        try:
            self._hook(False, ("pre_run_cell", self._runner_hook))
            self._learn_runner()
        except Exception:
            pass

    def _notice_hook(self, info: Any) -> None:
        """pre_run_cell while the notice is pending: it lands in the first cell's output."""
        try:
            if _seen_by_a_person(self.shell, info):
                self.show_notice()
        except Exception:
            pass

    # -- magics -------------------------------------------------------------------
    @needs_local_scope
    @line_cell_magic
    def clacky(self, line: str, cell: str | None = None, local_ns: Any = None) -> Any:
        """Run an agent cell and send one task event (trigger ``magic``).

        Usage::

            %%clacky [--model M] [--provider P] [--result NAME]
            <cell body>

            %clacky [--model M] [--provider P] [--result NAME] STATEMENT

        The body runs as the cell itself: top-level ``await``, output, the value
        of its last expression, a trailing ``;`` and tracebacks behave as in any
        cell, and when it fails the cell fails. The agent's metrics come from the
        variable NAME in the user namespace (``--result``), else from the value
        of the last expression: an agent or LLM SDK's result (a list of them is
        summed; see `clacky_ipy.agents`) or a mapping shaped like the gem's
        ``Agent#run`` result. ``--model`` / ``--provider`` fill those keys when
        the result lacks them.

        The line form inside a statement (``r = %clacky agent()``, ``%time %clacky
        agent()``) evaluates STATEMENT as ``%time`` does and returns its value; its
        exception goes on into the calling cell. Called programmatically
        (``run_cell_magic``), the body runs through ``run_cell`` inside the calling
        cell, where top-level ``await`` is not available in a running event loop.
        """
        if cell is None and _ONLY_OPTIONS.fullmatch(line):
            raise UsageError(_NO_STATEMENT)  # `%clacky --model m`: never run the options as code
        opts, statement = self.parse_options(
            line, "", "model=", "provider=", "result=", posix=False, strict=False, preserve_non_opts=True
        )
        body = statement if cell is None else cell
        if not body.strip():
            raise UsageError(_NO_STATEMENT)
        shell = self.shell
        self._claimed = bool(self._frames)
        if cell is None:
            tree = self._statement(body)
            if tree is not None:
                return self._evaluate(opts, body, tree, local_ns)
        outer = shell.displayhook.exec_result  # the ExecutionResult of the cell running this magic
        silent = bool(getattr(getattr(outer, "info", None), "silent", False))  # `%run file.ipynb` stays silent
        start = perf_counter()
        try:
            inner = shell.run_cell(body, store_history=False, silent=silent)
        finally:
            shell.displayhook.exec_result = outer  # the nested run reset it
        duration = round((perf_counter() - start) * 1000)
        error = inner.error_before_exec or inner.error_in_exec
        try:
            self._send(opts, error, duration, inner.result)
        except Exception:
            pass  # never the cell's problem
        if error is not None and outer is not None:
            outer.error_in_exec = error  # the cell fails (Run All stops); the traceback was shown once
        return None

    def _statement(self, statement: str) -> ast.Module | None:
        """The line form's statement as IPython would run it (magics and ``!`` turned into code, AST
        transformers applied); None for what only the cell runner can run (``await``, a syntax error)."""
        try:
            tree = self.shell.transform_ast(self.shell.compile.ast_parse(self.shell.transform_cell(statement)))
        except Exception:
            return None
        asynchronous = (ast.Await, ast.AsyncFor, ast.AsyncWith, ast.AsyncFunctionDef)
        return None if any(isinstance(node, asynchronous) for node in ast.walk(tree)) else tree

    def _evaluate(self, opts: dict[str, Any], statement: str, tree: ast.Module, local_ns: Any) -> Any:
        """Run the line form's statement, as ``%time`` does: its value is returned, its exception goes on."""
        __tracebackhide__ = True  # IPython leaves this frame out of the traceback
        shell = self.shell
        namespace = shell.user_ns if local_ns is None else local_ns
        filename = shell.compile.cache(statement)  # so a traceback shows the statement's line
        value: Any = None
        error: BaseException | None = None
        start = perf_counter()
        try:
            if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr):
                value = eval(
                    shell.compile(ast.Expression(tree.body[0].value), filename, "eval"), shell.user_global_ns, namespace
                )
            else:
                exec(shell.compile(tree, filename, "exec"), shell.user_global_ns, namespace)
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                self._send(opts, error, round((perf_counter() - start) * 1000), value)
            except Exception:
                pass  # never the cell's problem
        return value

    def _agent_result(self, name: str | None, last_value: Any) -> Any:
        if not name:
            return last_value  # read by shape on the worker (agents.task_metrics)
        name = _unquote(name)
        if name not in self.shell.user_ns:
            print(f"clacky_ipy: --result {name}: no such variable; sent without agent metrics", file=sys.stderr)
        return self.shell.user_ns.get(name)

    @line_magic
    def clacky_telemetry(self, line: str) -> None:
        """Show or change telemetry: ``%clacky_telemetry [status|on|off|log [N]|flush|reset-id]``.

        ``off`` persists in the Clacky home ($CLACKY_HOME, default ~/.clacky) so
        later sessions honour it, until ``on`` (``clacky-ipy telemetry on|off`` in a
        shell is the same switch). ``log [N]`` shows the last N (default 20, at
        most 100) events of this process: path, exact JSON payload and outcome.
        ``flush`` waits (at most shutdown_timeout) until everything queued was delivered.
        ``reset-id`` writes a fresh random device id into brand.yml (the gem uses it too).
        """
        command, _, rest = line.strip().partition(" ")
        command = command.lower() or "status"
        if command == "log":
            print(log_text(_log_count(rest)))
        elif command == "status":
            print(status_text(CLIENT.status()))
        elif command in ("on", "off"):
            error = CLIENT.set_user_off(command == "off")
            reason = CLIENT.off_reason()
            if error:
                print(f"clacky_ipy: {error}; applies to this session only", file=sys.stderr)
            if command == "off":
                saved = "" if error else f" Saved for later sessions in {saved_choice_path()}."
                print("Telemetry is off; nothing more will be sent." + saved)
            elif reason:
                print(f"Telemetry stays off: {reason}.")
            else:
                print("Telemetry is on.")
                if self._notice_pending:
                    self.show_notice()
        elif command == "reset-id":
            try:
                print(CLIENT.reset_device_id())
            except OSError as exc:
                print(f"clacky_ipy: the device id was not changed: {exc.strerror or exc}", file=sys.stderr)
        elif command == "flush":
            timeout = self.telemetry.shutdown_timeout
            drained = CLIENT.flush()
            waiting = CLIENT.waiting
            print(
                "Flushed: nothing left in the queue."
                if drained
                else f"Not drained within {timeout:g} s; still queued: {CLIENT.transport.queued}."
                if not waiting
                else f"Waiting for the notice: {waiting} events; they leave when the cell that shows it ends."
            )
        else:
            raise UsageError(
                f"unknown argument {line.strip()!r}: use %clacky_telemetry [status|on|off|log [N]|flush|reset-id]"
            )


def _close(stack: list[Any], result: Any) -> tuple[int, Any] | None:
    """Pop the running cell that `result` ends, with any run left open above it: (its index, entry).

    Each entry starts with the ``ExecutionInfo`` its ``pre_run_cell`` received. Usually that is
    ``result.info`` on top of the stack; but when ``KeyboardInterrupt`` escapes the async runner,
    IPython reports the cell with a new ``ExecutionInfo`` of the same cell, and ipykernel passes
    ``None`` for an interrupted async cell (always the outermost one). Index 0 is a top-level cell.
    None when the result ends no entry (an empty cell, a cell begun before the hooks were).
    """
    if result is None:
        index = 0 if stack else -1
    else:
        info = result.info
        index = len(stack) - 1
        while index >= 0 and not _same_cell(stack[index][0], info):
            index -= 1
    if index < 0:
        return None
    entry = stack[index]
    del stack[index:]  # never leave a stale run behind: later cells would look nested
    return index, entry


def _running(info: Any) -> bool:
    """Whether the cell `info` describes still runs: its ``run_cell_async`` is on this thread's stack.

    Asked only when a cell starts or ends with another one still open below it (a nested run, or a
    run that ended without its ``post_run_cell``), so the common cell never pays for the walk.
    """
    if not _HAS_CELL_RUNNER:
        return True  # cannot tell: the old rule, nested, holds
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "run_cell_async" and frame.f_locals.get("info") is info:
            return True
        frame = frame.f_back
    return False


def _same_cell(a: Any, b: Any) -> bool:
    if a is b:
        return True
    fields = ("raw_cell", "store_history", "silent", "cell_id")
    return all(getattr(a, name, None) == getattr(b, name, None) for name in fields)


def _unquote(value: str | None) -> str | None:
    if value and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value or None


def _log_count(text: str) -> int:
    text = text.strip()
    if not text:
        return 20
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"%clacky_telemetry log N: N must be a positive whole number, not {text!r}")
    return min(int(text), LOG_SIZE)


def log_text(n: int) -> str:
    """``%clacky_telemetry log [N]``: one line per event (time, path, outcome), its payload below."""
    from datetime import datetime

    entries = CLIENT.recent(n)
    if not entries:
        return "No telemetry events in this process yet."
    lines = [f"Last {len(entries)} telemetry events of this process (kept in memory only, at most {LOG_SIZE}):"]
    for entry in entries:
        when = datetime.fromtimestamp(entry["time"]).astimezone().isoformat(timespec="seconds")  # local, with offset
        lines.append(f"{when}  POST {entry['path']}  {entry['outcome']}")
        lines.append(f"    {entry['payload'] if entry['payload'] is not None else '(payload never built)'}")
    return "\n".join(lines)


def _suggest(text: str, first_line: bool) -> tuple[list[str], bool]:
    """What to offer after `text` (the line up to the cursor): (words, whether they are all there is)."""
    head, _, rest = text.lstrip().partition(" ")
    if not _:
        return [], False  # still typing the magic's name: IPython completes that
    words = rest.split(" ")
    token = words[-1]
    if head in ("%clacky_telemetry", "clacky_telemetry"):
        if len(words) == 1:
            return [c for c in TELEMETRY_COMMANDS if c.startswith(token)], True
        if words[0] == "log" and len(words) == 2:
            # `log N`: offer counts, so no keywords or file names do (an empty answer suppresses nothing)
            return [n for n in LOG_COUNTS if n.startswith(token)], True
        return [], False
    if (head == "%%clacky" and first_line) or head == "%clacky":
        expects_value = len(words) > 1 and words[-2] in CLACKY_OPTIONS
        if expects_value or not (token.startswith("-") or (head == "%%clacky" and not token)):
            return [], False
        used = set(words[:-1])
        return [o for o in CLACKY_OPTIONS if o.startswith(token) and o not in used], True
    return [], False


def _matcher() -> Any:
    """An IPython completion matcher for ``%clacky_telemetry`` arguments and ``%%clacky`` options."""
    from IPython.core.completer import SimpleCompletion, context_matcher

    @context_matcher(identifier="clacky_ipy")
    def clacky_matcher(context: Any) -> dict[str, Any]:
        try:
            words, only = _suggest(context.text_until_cursor, context.cursor_line == 0)
        except Exception:
            words, only = [], False
        return {
            "completions": [SimpleCompletion(w, type="magic argument") for w in words],
            "suppress": only,
        }

    return clacky_matcher


def load(shell: Any) -> None:
    """``%load_ext clacky_ipy``: configurable, magics, hooks, then the startup event."""
    if shell in _ACTIVE:
        unload(shell)  # never two sets of hooks
    telemetry = ClackyTelemetry(parent=shell)
    magics = ClackyMagics(shell, telemetry)
    shell.configurables.append(telemetry)
    shell.register_magics(magics)
    shell.input_transformers_cleanup.append(magics.transformer)
    _ACTIVE[shell] = magics
    completer = getattr(shell, "Completer", None)
    if completer is not None:
        magics.matcher = _matcher()
        completer.custom_matchers.append(magics.matcher)
    # before attach: attaching may send a pending startup, which must wait for this notice
    CLIENT.notice_display = magics.show_notice  # the events wait for it, in a cell's output
    if getattr(shell, "kernel", None) is not None:
        if _running_cell(shell) is None:
            shell.events.register("pre_run_cell", magics._runner_hook)
        else:
            magics._learn_runner()
    CLIENT.attach(telemetry, frontend=detect_frontend(shell))
    CLIENT.startup()
    magics._notice_pending = CLIENT.notice_pending
    if magics._notice_pending and _seen_by_a_person(shell, _running_cell(shell)):
        magics.show_notice()  # loaded from a cell: tell the user in it
    CLIENT.listen(magics.sync_hooks)
    magics.sync_hooks()
    logcomm.register(shell)


def unload(shell: Any) -> None:
    """``%unload_ext clacky_ipy``: remove all of it; queued events still go out."""
    magics = _ACTIVE.pop(shell, None)
    if magics is None:
        return
    CLIENT.unlisten(magics.sync_hooks)
    logcomm.unregister(shell)
    completer = getattr(shell, "Completer", None)
    if completer is not None and magics.matcher in completer.custom_matchers:
        completer.custom_matchers.remove(magics.matcher)
    if CLIENT.notice_display == magics.show_notice:
        CLIENT.notice_display = None
    magics.sync_hooks(loaded=False)
    magics._hook(False, ("pre_run_cell", magics._runner_hook), ("post_run_cell", magics._notice_read))
    magics._watch_clear(False)
    magics._hook_marked(False, everyone=True)
    magics._pending.clear()
    magics._marked.clear()
    shell.input_transformers_cleanup[:] = [t for t in shell.input_transformers_cleanup if t is not magics.transformer]
    manager = shell.magics_manager
    for kind, names in magics.magics.items():
        table = manager.magics[kind]
        for name in names:
            if getattr(table.get(name), "__self__", None) is magics:
                del table[name]
    if manager.registry.get(type(magics).__name__) is magics:
        del manager.registry[type(magics).__name__]
    shell.configurables[:] = [c for c in shell.configurables if c is not magics and c is not magics.telemetry]
