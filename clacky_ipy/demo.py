"""The demo: a local collector, the quickstart notebook in a real Jupyter kernel, the report.

Offline and self-contained: the kernel's endpoint is the collector on a free
loopback port and its Clacky home a temporary directory, so the real OpenClacky
hosts are never contacted and the user's own settings are never touched.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from . import report
from .collector import Collector

#: Switches that would silence the demo's own local events; the demo's kernel drops them.
LOCAL_ONLY_DROPPED = ("CLACKY_TELEMETRY", "DO_NOT_TRACK", "CLACKY_TELEMETRY_DEBUG", "CLACKY_LAUNCHED_BY")


def notebooks_dir() -> Path:
    """The bundled notebooks: in the wheel, or in a source checkout."""
    inside = Path(__file__).with_name("notebooks")
    return inside if inside.is_dir() else Path(__file__).resolve().parents[1] / "notebooks"


def kernel_env(endpoint: str, home: Path) -> dict[str, str]:
    """The kernel's environment: this one, pointed at `endpoint`, with its own Clacky home."""
    env = {k: v for k, v in os.environ.items() if k not in LOCAL_ONLY_DROPPED}
    env.update(CLACKY_LICENSE_SERVER=endpoint, CLACKY_HOME=str(home), PYDEVD_DISABLE_FILE_VALIDATION="1")
    return env


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
    path: Path, env: dict[str, str], workdir: Path, progress: Callable[[str], None] | None = None, timeout: int = 180
) -> Any:
    """Run every cell of `path` in a fresh kernel of this interpreter; returns the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    km = kernel_manager(workdir)

    nb = nbformat.read(path, as_version=4)
    code_cells = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    say = progress or (lambda _msg: None)

    def on_start(cell: Any, cell_index: int) -> None:
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


def main(notebook: str | None = None) -> int:
    """``clacky-ipy demo``: returns the process exit code."""
    try:
        import ipykernel  # noqa: F401
        import nbclient  # noqa: F401
    except ImportError:
        print("The demo needs the demo extra: pip install 'clacky-ipy[demo]'", file=sys.stderr)
        return 2
    path = Path(notebook) if notebook else notebooks_dir() / "quickstart.ipynb"
    if not path.exists():
        print(f"No notebook at {path}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="clacky-demo-") as tmp:
        work = Path(tmp)
        db = work / "events.db"
        with Collector(db, port=0) as collector:
            print(f"Collector listening on {collector.url} (SQLite: {db.name} in a temporary directory)")
            dropped = [name for name in LOCAL_ONLY_DROPPED[:2] if name in os.environ]
            if dropped:
                names = ", ".join(dropped)
                print(f"Note: {names} is set here; the demo's kernel sends only to this local collector, without it.")
            start = time.monotonic()
            execute_notebook(path, kernel_env(collector.url, work / "home"), work, progress=print)
            print(f"Notebook done in {time.monotonic() - start:.1f} s.\n")
            rows = collector.store.rows()
        print(f"Events received ({len(rows)}):")
        print(f"  {'kind':<8} {'trigger':<7} {'status':<11} {'model':<18} {'duration_ms':>11}")
        for row in rows:
            duration = row.get("duration_ms")
            print(
                f"  {row['kind']:<8} {row.get('trigger', ''):<7} {row.get('status', ''):<11} "
                f"{row.get('model', ''):<18} {'' if duration is None else int(duration):>11}"
            )
        print()
        print(report.render(report.build(db)))
    return 0
