"""The demo: a local collector, the quickstart notebook in a real Jupyter kernel, the report.

Offline and self-contained: the kernel's endpoint is the collector on a free
loopback port and its Clacky home a temporary directory, so the real OpenClacky
hosts are never contacted and the user's own settings are never touched; the
notebook's real SDK cell calls a fake LLM server (`fakellm`) on loopback, never an LLM API.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from . import notice, report, safe
from .collector import Collector
from .fakellm import FakeLLM

#: Switches that would silence the demo's own local events; the demo's kernel drops them.
LOCAL_ONLY_DROPPED = ("CLACKY_TELEMETRY", "DO_NOT_TRACK", "CLACKY_TELEMETRY_DEBUG", "CLACKY_LAUNCHED_BY")


def notebooks_dir() -> Path:
    """The bundled notebooks: in the wheel, or in a source checkout."""
    inside = Path(__file__).with_name("notebooks")
    return inside if inside.is_dir() else Path(__file__).resolve().parents[1] / "notebooks"


#: Hosts the kernel reaches directly even when HTTP(S)_PROXY is set: the collector is on loopback.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


#: Where the quickstart's real SDK cell finds the demo's fake LLM server (`fakellm`).
LLM_URL_VARIABLE = "CLACKY_DEMO_LLM_URL"


def kernel_env(endpoint: str, home: Path, llm_url: str | None = None) -> dict[str, str]:
    """The kernel's environment: this one, pointed at `endpoint`, with its own Clacky home.

    Loopback bypasses any proxy (``NO_PROXY``): a proxy in the user's shell would
    otherwise receive, and drop, every event meant for the local collector. `llm_url`
    is the fake LLM server's OpenAI base URL for the notebook's SDK cell.
    """
    env = {k: v for k, v in os.environ.items() if k not in LOCAL_ONLY_DROPPED}
    env.update(CLACKY_LICENSE_SERVER=endpoint, CLACKY_HOME=str(home), PYDEVD_DISABLE_FILE_VALIDATION="1")
    if llm_url is not None:
        env[LLM_URL_VARIABLE] = llm_url
    for name in ("NO_PROXY", "no_proxy"):
        env[name] = ",".join(part for part in (env.get(name, ""), *LOOPBACK) if part)
    return env


def bundled_notebooks() -> list[str]:
    return sorted(p.stem for p in notebooks_dir().glob("*.ipynb"))


def find_notebook(name: str | None) -> Path | None:
    """A path, or the name of a bundled notebook (``configuration`` or ``configuration.ipynb``)."""
    if not name:
        return notebooks_dir() / "quickstart.ipynb"
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.name == name:  # a bare name: look among the bundled ones
        for candidate in (name, f"{name}.ipynb"):
            bundled = notebooks_dir() / candidate
            if bundled.suffix == ".ipynb" and bundled.is_file():
                return bundled
    return None


def kernel_manager(workdir: Path) -> Any:
    """A jupyter_client KernelManager for a kernel of this very interpreter (its kernelspec is
    written under `workdir`), so that a system-wide "python3" spec cannot pick another one."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = workdir / "kernels" / "clacky-ipy-demo"
    spec_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "clacky-ipy demo", "language": "python"})
    )
    return KernelManager(
        kernel_name="clacky-ipy-demo", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
    )


def execute_notebook(
    path: Path,
    env: dict[str, str],
    workdir: Path,
    progress: Callable[[str], None] | None = None,
    timeout: int = 180,
    before_cell: Callable[[int], None] | None = None,
) -> Any:
    """Run every cell of `path` in a fresh kernel of this interpreter; returns the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    km = kernel_manager(workdir)

    nb = nbformat.read(path, as_version=4)
    code_cells = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    say = progress or (lambda _msg: None)

    def on_start(cell: Any, cell_index: int) -> None:
        if before_cell is not None:
            before_cell(cell_index)
        if cell.cell_type == "code":
            first = (cell.source.strip().splitlines() or [""])[0][:60]
            say(f"  [{code_cells.index(cell_index) + 1}/{len(code_cells)}] {first}")

    client = NotebookClient(
        nb, km=km, timeout=timeout, startup_timeout=120, resources={"metadata": {"path": str(workdir)}},
        on_cell_start=on_start, on_notebook_start=lambda **_: say("  kernel started"),
    )  # fmt: skip
    say(f"Starting a Jupyter kernel for {path.name} ...")
    log = workdir / "kernel.log"  # the kernel's own logging, kept out of the user's terminal
    with open(log, "ab") as sink:
        try:
            client.execute(env=env, stdout=sink, stderr=sink)
        except Exception:
            tail = log.read_text(errors="replace").strip().splitlines()[-20:]
            if tail:
                say("Kernel log:\n  " + "\n  ".join(tail))
            raise
    return nb


def _text(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def _indented(text: str) -> str:
    return "\n".join("  | " + line for line in text.rstrip("\n").splitlines())


def _opted_out_at(nb: Any) -> int | None:
    """The index of the cell that turns telemetry off, if the notebook has one."""
    for index, cell in enumerate(nb.cells):
        source = cell.source if cell.cell_type == "code" else ""
        if "ClackyTelemetry.enabled = False" in source or "%clacky_telemetry off" in source:
            return index
    return None


def show_what_happened(nb: Any, received_before: dict[int, int], received: int) -> None:
    """What a newcomer wants to see: the notice, the status, a payload as received, the opt-out."""
    status = next((_text(c) for c in nb.cells if c.source.strip() == "%clacky_telemetry status"), "")
    if status:
        print("%clacky_telemetry status, as the notebook showed it:")
        print(_indented(status) + "\n")
    log = next((_text(c) for c in nb.cells if c.source.strip().startswith("%clacky_telemetry log")), "")
    lines = log.splitlines()
    sent = [(head, body) for head, body in zip(lines, lines[1:]) if head.rstrip().endswith("sent 201")]
    if sent:  # the last one: %clacky_telemetry log shows the bytes the collector answered 201 to
        head, body = sent[-1]
        path = head.split("POST ", 1)[-1].rsplit("  ", 1)[0]
        print(f"One payload exactly as the collector received it (POST {path}, answered 201):")
        print(f"  {body.strip()}\n")
    off = _opted_out_at(nb)
    if off is not None and off in received_before:
        after = [c for c in nb.cells[off + 1 :] if c.cell_type == "code"]
        late = received - received_before[off]
        what = nb.cells[off].source.strip().splitlines()[0]
        if late == 0:
            print(f"The last {len(after)} cells sent nothing: they ran after `{what}` opted out.\n")
        else:
            print(f"{late} events arrived after `{what}` opted out: that is a bug, please report it.\n")


def main(notebook: str | None = None, keep: str | None = None) -> int:
    """``clacky-ipy demo``: returns the process exit code."""
    try:
        import ipykernel  # noqa: F401
        import nbclient  # noqa: F401
    except ImportError:
        print("The demo needs the demo extra: pip install 'clacky-ipy[demo]'", file=sys.stderr)
        return 2
    try:  # a name too long, a loop of links, no permission: one line, like every operator error
        path = find_notebook(notebook)
        kept = Path(keep).expanduser() if keep else None
        problem = None
        if kept is not None and (kept.exists() or not kept.parent.is_dir()):
            problem = "already exists" if kept.exists() else "is in a folder that does not exist"
    except OSError as exc:
        print(safe.printable(f"clacky-ipy demo: {exc.filename}: {exc.strerror or exc}"), file=sys.stderr)
        return 2
    if path is None:
        names = ", ".join(bundled_notebooks())
        print(f"clacky-ipy demo: no notebook {notebook!r}: give a path or a bundled one ({names})", file=sys.stderr)
        return 2
    if problem:
        print(f"clacky-ipy demo: --keep {kept}: {problem}; give a new file's path", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="clacky-demo-") as tmp:
        work = Path(tmp)
        db = kept or work / "events.db"
        with Collector(db, port=0) as collector, FakeLLM() as llm:
            where = f"SQLite: {db}" if kept else f"SQLite: {db.name} in a temporary directory"
            print(f"Collector listening on {collector.url} ({where})")
            print(f"Fake LLM server (OpenAI's API, known token usage) on {llm.url}: the notebook's SDK cell calls it")
            dropped = [name for name in LOCAL_ONLY_DROPPED[:2] if name in os.environ]
            if dropped:
                names = ", ".join(dropped)
                print(f"Note: {names} is set here; the demo's kernel sends only to this local collector, without it.")
            start = time.monotonic()
            received_before: dict[int, int] = {}

            def count(index: int) -> None:
                received_before[index] = len(collector.store.rows())

            # The notebook runs unattended (nbclient), where the notice never counts: the person
            # running the demo reads it here, for the demo's own temporary Clacky home.
            shown = notice.text(SimpleNamespace(endpoint=collector.url, fallback_endpoints=[]))
            print("The notice, shown once per Clacky home (nothing is sent before it):")
            print(_indented(shown) + "\n")
            notice.mark_seen(work / "home")
            env = kernel_env(collector.url, work / "home", llm.openai_url)
            nb = execute_notebook(path, env, work, progress=print, before_cell=count)
            print(f"Notebook done in {time.monotonic() - start:.1f} s.\n")
            rows = collector.store.rows()
        show_what_happened(nb, received_before, len(rows))
        print(f"Events received ({len(rows)}):")
        print(
            f"  {'kind':<8} {'trigger':<7} {'status':<11} {'model':<18} {'duration_ms':>11} "
            f"{'tokens in/out':>13} {'cost_usd':>10}"
        )
        for row in rows:
            duration = row.get("duration_ms")
            tokens = "/".join(
                "" if row.get(k) is None else str(int(row[k])) for k in ("prompt_tokens", "completion_tokens")
            )
            cost = row.get("cost_usd")
            print(
                f"  {row['kind']:<8} {row.get('trigger', ''):<7} {row.get('status', ''):<11} "
                f"{row.get('model', ''):<18} {'' if duration is None else int(duration):>11} "
                f"{'' if tokens == '/' else tokens:>13} {'' if cost is None else f'{cost:.6f}':>10}"
            )
        print()
        print(report.render(report.build(db)))
        if kept:
            print(f"The database is kept in {kept}: clacky-ipy report --db {kept}")
    return 0
