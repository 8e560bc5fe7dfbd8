"""Benchmarks: what clacky_ipy costs the user's kernel, side by side with a peer and the gem's design.

    python bench/run.py            # the full run: writes BENCHMARKS.md and bench/results.json
    python bench/run.py --quick    # a smoke run (CI): fewer repetitions, same code paths

Everything is measured in one run, in fresh child interpreters where a clean
process matters, and reported as medians and as ratios against a baseline
measured in the same run (absolute times on shared machines drift). Nothing here
leaves the machine: every endpoint is a loopback address, CLACKY_HOME is a
temporary directory, and a real `clacky-ipy collect` process is the healthy
server. Needs the bench extra: ``pip install ".[bench]"``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

#: Repetitions: (full, quick).
SIZES = {
    "cell_rounds": (200, 20),  # rounds; each measures every config in one short block
    "cell_block": (20, 20),  # measured cells per block: 200 x 20 = 4000 cells per config
    "cell_skip": (5, 5),  # cells run but not measured after each (un)load
    "cell_paced_rounds": (100, 10),  # rounds of bare vs clacky with cells 2 ms apart
    "load_processes": (15, 3),
    "endpoint_cells": (100, 100),
    "endpoint_repeats": (3, 1),
    "drain_events": (3000, 300),
    "latency_events": (200, 200),  # the burst at 50 / 150 ms
    "latency_exit_events": (100, 100),
    "latency_repeats": (3, 1),
    "burst_calls": (100_000, 10_000),
    "ingest_events": (8000, 800),
    "idle_connections": (2000, 200),
    "store_events": (10_000_000, 20_000),
    "store_devices": (5_000, 50),
    "agent_reads": (5000, 300),  # worker reads of each SDK's result
    "lab_rounds": (20, 3),  # JupyterLab page loads per config
    "status_calls": (200, 20),
    "reach_devices": (1_000_000, 2_000),  # distinct devices, two events each, through the store's API
    "service_rounds": (4, 1),  # interleaved ingest rounds: before / guard off / guard on
    "metrics_scrapes": (200, 20),
}
TARGETS = {
    "cell_ratio": 1.03,
    "cell_disabled_ratio": 1.01,
    "endpoint_cell_ratio": 1.05,
    "exit_slack_s": 0.3,
    "latency_burst_s": 3.0,  # 200 events at 50 ms, default max_connections
    "latency_exit_delivered": 50,  # of 100 queued at 50 ms, within shutdown_timeout
    "stall_us": 5.0,  # main-thread stall per tracked cell in a burst (mean wall minus bare)
    "hooks_in_run_cell_us": 3.0,
    "burst_rss_mb": 5.0,
    "ingest_events_per_s": 3000,
    "store_report_s": 1.0,
    "pg_ingest_events_per_s": 1703,  # the http.server collector's SQLite figure before this version
    "service_ingest_ratio": 0.90,  # ingest with metrics, credentials and rate limits: >= 90 % of before
    "ingest_stall_s": 0.1,  # the longest an ingest commit waits for forget or prune
}
SHUTDOWN_TIMEOUT = 1.0  # the default, which the exit rows are measured against
#: The sequential transport (one thread, one connection, each event sent at once): the package
#: as it was before issue 7, loaded from git history for the side-by-side rows, never copied.
BASELINE_TRANSPORT = "951d7d28f8a150b6aa4013301ad2d364ca250cef"
#: The last http.server collector (before the ASGI one): loaded from git history for the
#: side-by-side rows, never committed as a copy.
BASELINE_COLLECTOR = "951d7d28f8a150b6aa4013301ad2d364ca250cef"
#: The collector before credentials, rate limits and /metrics: the service rows' "before".
BASELINE_SERVICE = "75a6ddd77e9115cd1a55ac81dc431f2392623c5b"
#: Serves `clacky_ipy.collector` as it was at BASELINE_COLLECTOR: argv = source file, db, port.
BASELINE_SERVER = """
import importlib.util, signal, sys
spec = importlib.util.spec_from_file_location("clacky_ipy.baseline_collector", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
collector = module.Collector(sys.argv[2], port=int(sys.argv[3]))
def stop(*_):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, stop)
print("baseline collector on", collector.url, flush=True)
try:
    collector.serve_forever()
except KeyboardInterrupt:
    pass
finally:
    collector.stop()
"""


# -- helpers shared by the parent and the children ------------------------------------------
def child_env(home: Path, endpoint: str, **extra: str) -> dict[str, str]:
    """The demo's kernel environment (loopback endpoint, temporary Clacky home, no inherited
    switches), importing this checkout's clacky_ipy."""
    from clacky_ipy.demo import kernel_env

    return {**kernel_env(endpoint, home), "PYTHONPATH": str(ROOT), **extra}


def run_child(name: str, args: dict[str, Any], env: dict[str, str], timeout: float = 600) -> dict[str, Any]:
    """Run `child_<name>` in a fresh interpreter; returns what it wrote to its result file."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    try:
        cmd = [PYTHON, __file__, "--child", name, "--args", json.dumps(args), "--result", str(out)]
        started = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        ended = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"child {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        result = json.loads(out.read_text())
        result["_started"], result["_ended"], result["_stderr"] = started, ended, proc.stderr
        return result
    finally:
        out.unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def collector_process(db: Path, baseline: Path | None = None) -> Iterator[str]:
    """A real `clacky-ipy collect` in its own process (its own core and GIL); yields its URL.
    With `baseline` (the old collector's source file), that collector instead."""
    server = collector_processes(db, baseline)
    try:
        yield next(server)
    finally:
        server.close()


def collector_processes(
    db: Path, baseline: Path | None = None, options: tuple[str, ...] = (), package: Path = ROOT
) -> Iterator[Any]:
    """Yields the collector's URL, then its process (for /proc figures); stops it when closed.
    `options` are more ``collect`` options; `package` the folder holding the clacky_ipy it runs."""
    port = free_port()
    if baseline is None:
        cmd = [PYTHON, "-m", "clacky_ipy", "collect", "--db", str(db), "--port", str(port), *options]
    else:
        cmd = [PYTHON, "-c", BASELINE_SERVER, str(baseline), str(db), str(port)]
    proc = subprocess.Popen(
        cmd, env={**os.environ, "PYTHONPATH": str(package)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "clacky-ipy collector on http://127.0.0.1:PORT, ..."
        if "collector on" not in line:
            raise RuntimeError(f"the collector did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
        yield f"http://127.0.0.1:{port}"
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def baseline_collector(work: Path) -> Path | None:
    """The http.server collector's source from git history, or None outside a git checkout."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{BASELINE_COLLECTOR}:clacky_ipy/collector.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = work / "baseline_collector.py"
    path.write_text(source)
    return path


def baseline_package(work: Path, commit: str = BASELINE_TRANSPORT) -> Path | None:
    """A directory holding `clacky_ipy` as it was at `commit` (for PYTHONPATH), or None
    outside a git checkout."""
    import io
    import tarfile

    dest = work / f"baseline-package-{commit[:12]}"
    if (dest / "clacky_ipy").is_dir():
        return dest
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "clacky_ipy"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest)
    return dest


def serve_sink(delay: float) -> None:
    """A telemetry server on a real network: answers 201 `delay` seconds after each request,
    one thread per connection, keep-alive. Counts what it received (GET /count)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                received[0] += 1  # stored on receipt, as a server does; the answer comes later
            time.sleep(delay)
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            body = str(received[0]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024

    server = Server(("127.0.0.1", 0), Handler)
    print(f"sink on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


@contextmanager
def delay_sink(delay: float) -> Iterator[tuple[str, Callable[[], int]]]:
    """A `serve_sink` process; yields its URL and a function returning how many events it received."""
    import urllib.request

    proc = subprocess.Popen(
        [PYTHON, __file__, "--sink", str(delay)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]

        def received() -> int:
            with urllib.request.urlopen(url + "/count", timeout=10) as response:
                return int(response.read())

        yield url, received
    finally:
        proc.terminate()
        proc.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (Linux /proc), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_figures(pid: int) -> dict[str, int]:
    """Threads, resident memory (KiB) and open file descriptors of process `pid` (Linux)."""
    figures = {"fds": len(os.listdir(f"/proc/{pid}/fd"))}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Threads", "VmRSS"):
            figures[name] = int(value.split()[0])
    return figures


@contextmanager
def blackhole() -> Iterator[str]:
    """Accepts connections (the kernel completes the handshake) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def stored(db: Path, kind: str | None = None) -> int:
    with sqlite3.connect(db) as con:
        if kind:
            return con.execute("SELECT COUNT(*) FROM events WHERE kind = ?", (kind,)).fetchone()[0]
        return con.execute("SELECT COUNT(*) FROM events").fetchone()[0]


def shell_with_memory_history() -> Any:
    """A real InteractiveShell, history on and kept in memory (as the benchmark issue asks)."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    return InteractiveShell.instance(config=config)


def trimmed_mean(values: list[float], cut: float) -> float:
    """The mean of `values` without the lowest and highest `cut` of them."""
    ordered = sorted(values)
    k = int(len(ordered) * cut)
    return statistics.fmean(ordered[k : len(ordered) - k] or ordered)


def median_us(samples_ns: list[int]) -> float:
    return statistics.median(samples_ns) / 1000


def quantile_us(samples_ns: list[int], q: float) -> float:
    ordered = sorted(samples_ns)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


# -- children: each runs in a fresh interpreter ---------------------------------------------
def child_cells(args: dict[str, Any]) -> dict[str, Any]:
    """Per-cell cost of four configurations, measured in short interleaved blocks.

    Machine speed drifts by 2x here within seconds (a shared VM), so each round
    measures every configuration in a short block, in shuffled order, and the ratio
    to bare is taken within the round: the reported ratio is the median over rounds.
    Cells run back to back ("flood": the worker sends while the next cell runs and
    competes for the GIL) and then paced, 2 ms apart (the worker sends in between,
    as it does between a person's cells).
    """
    from time import perf_counter_ns

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - autotime prints a line per cell; the notice once
    shell = shell_with_memory_history()
    import clacky_ipy

    def enter(name: str) -> None:
        if name == "autotime":
            shell.run_line_magic("load_ext", "autotime")
        elif name.startswith("clacky"):
            shell.config.ClackyTelemetry.track_cells = True
            shell.config.ClackyTelemetry.enabled = name == "clacky"
            shell.run_line_magic("load_ext", "clacky_ipy")

    def leave(name: str) -> None:
        if name == "autotime":
            shell.run_line_magic("unload_ext", "autotime")
        elif name.startswith("clacky"):
            clacky_ipy.flush(30)  # the worker's backlog must not slow the next block
            shell.run_line_magic("unload_ext", "clacky_ipy")

    def block(name: str, cells: int, skip: int, gap: float) -> list[int]:
        enter(name)
        times = []
        for i in range(cells + skip):
            if gap:
                time.sleep(gap)
            t0 = perf_counter_ns()
            shell.run_cell("x = 1", store_history=True)
            if i >= skip:  # the first cells after a (un)load warm caches: skipped for every config alike
                times.append(perf_counter_ns() - t0)
        leave(name)
        return times

    def rounds(configs: tuple[str, ...], n: int, gap: float) -> dict[str, Any]:
        samples: dict[str, list[int]] = {name: [] for name in configs}
        ratios: dict[str, list[float]] = {name: [] for name in configs}
        mean_ratios: dict[str, list[float]] = {name: [] for name in configs}
        rng = random.Random(7)
        for _ in range(n):
            order = list(configs)
            rng.shuffle(order)
            got = {name: block(name, args["block"], args["skip"], gap) for name in order}
            bare = statistics.median(got["bare"])
            bare_mean = statistics.fmean(got["bare"])
            for name, times in got.items():
                samples[name] += times
                ratios[name].append(statistics.median(times) / bare)
                mean_ratios[name].append(statistics.fmean(times) / bare_mean)
        bare_mean = statistics.fmean(samples["bare"])
        return {
            "cells_per_config": {name: len(t) for name, t in samples.items()},
            "median_us": {name: median_us(t) for name, t in samples.items()},
            "mean_us": {name: statistics.fmean(t) / 1000 for name, t in samples.items()},
            "p95_us": {name: quantile_us(t, 0.95) for name, t in samples.items()},
            "paired_ratio": {name: statistics.median(r) for name, r in ratios.items()},
            # every round has one block of each: the ratio of means over all rounds is paired too
            "mean_ratio": {name: statistics.fmean(t) / bare_mean for name, t in samples.items()},
            "stall_us": {name: (statistics.fmean(t) - bare_mean) / 1000 for name, t in samples.items()},
            # the same per round, 10 % of rounds trimmed at each end: a stall of the machine (another
            # process) hits one round's block of any config; a stall the worker causes hits most rounds
            "mean_ratio_trimmed": {name: trimmed_mean(r, 0.1) for name, r in mean_ratios.items()},
        }

    for _ in range(200):  # warm-up: caches, history, the worker's first connection
        shell.run_cell("x = 1", store_history=True)
    configs = tuple(args.get("configs", ("bare", "clacky", "clacky_disabled", "autotime")))
    for name in configs:
        block(name, 50, 0, 0.0)
    flood = rounds(configs, args["rounds"], 0.0)
    paced = rounds(("bare", "clacky"), args["paced_rounds"], 0.002) if args["paced_rounds"] else None
    status = clacky_ipy.client.CLIENT.status()
    return {
        "rounds": args["rounds"],
        "flood": flood,
        "paced": paced,
        "events": {k: status[k] for k in ("sent", "failed", "dropped")},
        "hooks_us": hooks_cost(shell),
        "hooks_in_run_cell_us": hooks_in_run_cell(shell),
    }


def hooks_in_run_cell(shell: Any, n: int = 4000) -> dict[str, float]:
    """The two hooks' own cost inside real `run_cell`s (their caches as a cell leaves them):
    timed by wrappers registered in their place, less the same wrappers around no-ops, so
    the timing's own cost is not counted. Rounds of each alternate."""
    from time import perf_counter_ns

    import clacky_ipy
    from clacky_ipy import magics

    shell.config.ClackyTelemetry.track_cells = True
    shell.config.ClackyTelemetry.enabled = True
    shell.run_line_magic("load_ext", "clacky_ipy")
    hooks = magics._ACTIVE[shell]
    events = shell.events
    real = (hooks.pre_run_cell, hooks.post_run_cell)
    events.unregister("pre_run_cell", real[0])
    events.unregister("post_run_cell", real[1])
    spent: dict[str, list[int]] = {"hooks": [], "no-ops": []}

    def timed(pre: Callable[[Any], None], post: Callable[[Any], None], into: list[int]) -> tuple[Any, Any]:
        started = [0]

        def timed_pre(info: Any) -> None:
            t0 = perf_counter_ns()
            pre(info)
            started[0] = perf_counter_ns() - t0

        def timed_post(result: Any) -> None:
            t0 = perf_counter_ns()
            post(result)
            into.append(started[0] + perf_counter_ns() - t0)

        return timed_pre, timed_post

    variants = {"hooks": real, "no-ops": (lambda info: None, lambda result: None)}
    for _ in range(n // 200):
        for name, (pre, post) in variants.items():
            pair = timed(pre, post, spent[name])
            events.register("pre_run_cell", pair[0])
            events.register("post_run_cell", pair[1])
            for _ in range(100):
                shell.run_cell("x = 1", store_history=True)
            events.unregister("pre_run_cell", pair[0])
            events.unregister("post_run_cell", pair[1])
        clacky_ipy.flush(10)
    events.register("pre_run_cell", real[0])
    events.register("post_run_cell", real[1])
    clacky_ipy.flush(30)
    shell.run_line_magic("unload_ext", "clacky_ipy")
    timing = median_us(spent["no-ops"])
    return {
        "median": median_us(spent["hooks"]) - timing,
        "mean": (statistics.fmean(spent["hooks"]) - statistics.fmean(spent["no-ops"])) / 1000,
        "timing_median": timing,
    }


def hooks_cost(shell: Any, n: int = 20000) -> dict[str, float]:
    """What the two hooks and the enqueue cost the main thread per tracked cell, called directly."""
    from IPython.core.interactiveshell import ExecutionInfo, ExecutionResult

    import clacky_ipy
    from clacky_ipy import magics

    shell.config.ClackyTelemetry.track_cells = True
    shell.config.ClackyTelemetry.enabled = True
    shell.run_line_magic("load_ext", "clacky_ipy")
    hooks = magics._ACTIVE[shell]
    info = ExecutionInfo("x = 1", True, False, True, None)
    result = ExecutionResult(info)
    out = {}
    for label, opted_out in (("tracked", False), ("env_opt_out", True)):
        clacky_ipy.flush(30)
        if opted_out:
            os.environ["CLACKY_TELEMETRY"] = "0"
        times = []
        for i in range(n):
            t0 = time.perf_counter_ns()
            hooks.pre_run_cell(info)
            hooks.post_run_cell(result)
            times.append(time.perf_counter_ns() - t0)
            if i % 500 == 0:
                clacky_ipy.flush(10)  # keep the queue from filling (a full queue is cheaper: it drops)
        os.environ.pop("CLACKY_TELEMETRY", None)
        out[label] = median_us(times)
    clacky_ipy.flush(30)
    shell.run_line_magic("unload_ext", "clacky_ipy")
    return out


def child_load(args: dict[str, Any]) -> dict[str, Any]:
    """Main-thread wall time of one `%load_ext` in this fresh process (cold imports)."""
    sys.stdout = tempfile.TemporaryFile("w")  # noqa: SIM115 - the notice prints once, to a real file: it counts
    shell = shell_with_memory_history()
    t0 = time.perf_counter()
    shell.run_line_magic("load_ext", args["extension"])
    elapsed = time.perf_counter() - t0
    return {"ms": elapsed * 1000}


def child_endpoint(args: dict[str, Any]) -> dict[str, Any]:
    """100 tracked cells against the given endpoint, then the time at which exit begins."""
    from time import perf_counter_ns

    shell = shell_with_memory_history()
    shell.config.ClackyTelemetry.track_cells = True
    shell.run_line_magic("load_ext", "clacky_ipy")
    for _ in range(20):
        shell.run_cell("x = 1", store_history=True)
    samples = []
    for _ in range(args["cells"]):
        t0 = perf_counter_ns()
        shell.run_cell("x = 1", store_history=True)
        samples.append(perf_counter_ns() - t0)
    return {"median_us": median_us(samples), "exit_begins": time.time()}


def child_bare_exit(args: dict[str, Any]) -> dict[str, Any]:
    """The same shell without the extension: how long exit takes anyway."""
    shell = shell_with_memory_history()
    for _ in range(args["cells"]):
        shell.run_cell("x = 1", store_history=True)
    return {"exit_begins": time.time()}


def child_drain(args: dict[str, Any]) -> dict[str, Any]:
    """Events per second the worker delivers over its keep-alive session."""
    import clacky_ipy
    from clacky_ipy.client import CLIENT

    n = args["events"]
    CLIENT.config.max_queue_size = n + 10
    if "max_connections" in args:
        CLIENT.config.max_connections = args["max_connections"]
    clacky_ipy.startup()
    assert clacky_ipy.flush(30)  # requests imported, connection open: measure the steady state
    t0 = time.perf_counter()
    for i in range(n):
        clacky_ipy.task(model="bench", provider="local", duration_ms=i, status="success")
    drained = clacky_ipy.flush(120)
    elapsed = time.perf_counter() - t0
    status = CLIENT.status()
    return {"seconds": elapsed, "drained": drained, **{k: status[k] for k in ("sent", "failed", "dropped")}}


def clacky_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("clacky-telemetry"))


def child_latency(args: dict[str, Any]) -> dict[str, Any]:
    """`events` task() calls at once, then flush: seconds until all were delivered, and the
    telemetry threads alive at the peak and once idle again."""
    import clacky_ipy
    from clacky_ipy.client import CLIENT

    if "max_connections" in args:
        CLIENT.config.max_connections = args["max_connections"]
    clacky_ipy.startup()
    assert clacky_ipy.flush(30)  # requests imported, connection open: measure the steady state
    peak, stop = [clacky_threads()], threading.Event()

    def sample() -> None:
        while not stop.wait(0.002):
            peak.append(clacky_threads())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    for i in range(args["events"]):
        clacky_ipy.task(model="bench", provider="local", duration_ms=i, status="success")
    drained = clacky_ipy.flush(120)
    elapsed = time.perf_counter() - t0
    stop.set()
    sampler.join()
    time.sleep(1.0)  # the extra senders go away with the backlog
    status = CLIENT.status()
    return {
        "seconds": elapsed,
        "drained": drained,
        "peak_threads": max(peak),
        "idle_threads": clacky_threads(),
        **{k: status[k] for k in ("sent", "failed", "dropped")},
    }


def child_latency_exit(args: dict[str, Any]) -> dict[str, Any]:
    """`events` task() calls, then the interpreter exits: what is delivered within shutdown_timeout."""
    import clacky_ipy

    clacky_ipy.startup()
    assert clacky_ipy.flush(30)
    for i in range(args["events"]):
        clacky_ipy.task(model="bench", duration_ms=i)
    return {"exit_begins": time.time()}


def child_gem_design(args: dict[str, Any]) -> dict[str, Any]:
    """The gem's design in Python: one new thread and one new connection per event, no retry."""
    import requests

    from clacky_ipy.client import CLIENT
    from clacky_ipy.payload import PATHS

    url = CLIENT.config.endpoint + PATHS["task"]
    body = CLIENT.build("task", {"trigger": "api", "model": "bench", "status": "success", "duration_ms": 1})
    outcome = {"sent": 0, "failed": 0}
    lock = threading.Lock()

    def send() -> None:
        try:
            ok = requests.post(url, json=body, timeout=(5, 15)).status_code in (200, 201)
        except requests.RequestException:
            ok = False
        with lock:
            outcome["sent" if ok else "failed"] += 1

    requests.post(url, json=body, timeout=(5, 15))  # warm-up, as the worker's first event
    n = args["events"]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=send) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"seconds": time.perf_counter() - t0, **outcome}


def child_burst(args: dict[str, Any]) -> dict[str, Any]:
    """100,000 task() calls with the endpoint down: memory, threads, drops, exceptions."""
    import psutil

    import clacky_ipy
    from clacky_ipy.client import CLIENT

    me = psutil.Process()
    clacky_ipy.startup()
    clacky_ipy.flush(10)  # worker running and requests imported: the steady state
    rss0 = peak = me.memory_info().rss
    exceptions = 0
    t0 = time.perf_counter()
    for i in range(args["calls"]):
        try:
            clacky_ipy.task(model="bench", duration_ms=i)
        except Exception:
            exceptions += 1
        if i % 1000 == 0:
            peak = max(peak, me.memory_info().rss)
    elapsed = time.perf_counter() - t0
    peak = max(peak, me.memory_info().rss)
    workers = [t for t in threading.enumerate() if t.name == "clacky-telemetry"]
    status = CLIENT.status()
    return {
        "calls": args["calls"],
        "call_us": elapsed / args["calls"] * 1e6,
        "rss_growth_mb": (peak - rss0) / 2**20,
        "worker_threads": len(workers),
        "threads_alive": threading.active_count(),
        "exceptions": exceptions,
        **{k: status[k] for k in ("queued", "sent", "failed", "dropped")},
    }


def child_ingest(args: dict[str, Any]) -> dict[str, Any]:
    """8 concurrent keep-alive clients posting task events to the collector."""
    import base64
    import http.client
    from urllib.parse import urlsplit

    from clacky_ipy.client import CLIENT

    parts = urlsplit(args["url"])
    body = json.dumps(CLIENT.build("task", {"trigger": "api", "model": "bench", "status": "success"})).encode()
    per_client = args["events"] // args["clients"]
    errors = [0]
    barrier = threading.Barrier(args["clients"] + 1)

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        if args.get("auth"):
            headers["Authorization"] = "Basic " + base64.b64encode(args["auth"].encode()).decode()
        barrier.wait()
        for _ in range(per_client):
            conn.request("POST", "/api/v1/telemetry/task", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 201:
                errors[0] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(args["clients"])]
    warm = args.get("warm", 0)
    for _ in range(warm):  # a long-running collector's state: credentials checked once, tables open
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        if args.get("auth"):
            headers["Authorization"] = "Basic " + base64.b64encode(args["auth"].encode()).decode()
        conn.request("POST", "/api/v1/telemetry/task", body=body, headers=headers)
        conn.getresponse().read()
        conn.close()
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return {
        "seconds": time.perf_counter() - t0,
        "events": per_client * args["clients"],
        "errors": errors[0],
        "warm": warm,
    }


def child_pg_batches(args: dict[str, Any]) -> dict[str, Any]:
    """The store's own rate into PostgreSQL: batches of `batch` events, each a durable commit."""
    from clacky_ipy import payload
    from clacky_ipy.store import open_store, utc_now

    fields = payload.clean("task", {"device_id": "d" * 64, "trigger": "api", "status": "success", "duration_ms": 900})
    store = open_store(args["url"])
    n, size = args["events"], args["batch"]
    t0 = time.perf_counter()
    for _ in range(n // size):
        store.add_batch([(utc_now(), "task", fields)] * size)
    seconds = time.perf_counter() - t0
    store.close()
    return {"events": n // size * size, "seconds": seconds}


def _agent_results(llm: Any) -> dict[str, Any]:
    """One real result of each installed SDK, from a real call to the fake LLM server (name -> result)."""
    os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
    hi = [{"role": "user", "content": "hi"}]

    def anthropic_message() -> Any:
        import anthropic

        client = anthropic.Anthropic(base_url=llm.url, api_key="x")
        return client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=hi)

    def openai_chat() -> Any:
        import openai

        return openai.OpenAI(base_url=llm.openai_url, api_key="x").chat.completions.create(
            model="gpt-4o-mini", messages=hi
        )

    def openai_responses() -> Any:
        import openai

        return openai.OpenAI(base_url=llm.openai_url, api_key="x").responses.create(model="gpt-4o-mini", input="hi")

    def openai_agents() -> Any:
        import openai
        from agents import Agent, OpenAIChatCompletionsModel, Runner

        client = openai.AsyncOpenAI(base_url=llm.openai_url, api_key="x")
        return Runner.run_sync(
            Agent(name="a", model=OpenAIChatCompletionsModel(model="gpt-4o-mini", openai_client=client)), "hi"
        )

    def langgraph_state() -> Any:
        import warnings

        from langchain_anthropic import ChatAnthropic
        from langchain_core.tools import tool
        from langgraph.prebuilt import create_react_agent

        @tool
        def weather() -> str:
            """The weather."""
            return "sunny"

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            agent = create_react_agent(
                ChatAnthropic(model="claude-sonnet-4-5", base_url=llm.url, api_key="x"), [weather]
            )
        return agent.invoke({"messages": [("user", "hi")]})

    def pydantic_ai() -> Any:
        from pydantic_ai import Agent
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        provider = OpenAIProvider(base_url=llm.openai_url, api_key="x")
        return Agent(OpenAIChatModel("gpt-4o-mini", provider=provider)).run_sync("hi")

    def gemini() -> Any:
        from google import genai
        from google.genai import types

        client = genai.Client(api_key="x", http_options=types.HttpOptions(base_url=llm.url))
        return client.models.generate_content(model="gemini-2.5-flash", contents="hi")

    def mistral() -> Any:
        from mistralai.client import Mistral

        return Mistral(api_key="x", server_url=llm.url).chat.complete(model="mistral-small-latest", messages=hi)

    def claude_result() -> Any:
        from claude_agent_sdk import AssistantMessage, ResultMessage, TextBlock

        usage = {"input_tokens": 120, "output_tokens": 30, "cache_read_input_tokens": 800}
        usage["cache_creation_input_tokens"] = 200
        assistant = AssistantMessage(content=[TextBlock(text="Done.")], model="claude-sonnet-4-5", usage=usage)
        per_model = {"claude-sonnet-4-5": {"costUSD": 0.01, "provider": "firstParty"}}
        result = ResultMessage(subtype="success", duration_ms=1, duration_api_ms=1, is_error=False, num_turns=1,
                               session_id="s", total_cost_usd=0.01, usage=usage, model_usage=per_model)  # fmt: skip
        return [assistant, result]

    builders = {
        "gem-shaped mapping": lambda: {"model": "m", "cache_stats": {"prompt_tokens": 10, "completion_tokens": 2}},
        "anthropic Message": anthropic_message,
        "openai ChatCompletion": openai_chat,
        "openai Responses": openai_responses,
        "openai-agents RunResult": openai_agents,
        "claude-agent-sdk messages": claude_result,
        "LangGraph state (2 AI messages)": langgraph_state,
        "pydantic-ai AgentRunResult": pydantic_ai,
        "google-genai response": gemini,
        "mistralai response": mistral,
    }
    results = {}
    for name, build in builders.items():
        try:
            results[name] = build()
        except ImportError:
            pass  # that SDK is not installed here
    return results


def child_agents(args: dict[str, Any]) -> dict[str, Any]:
    """The worker's time to turn each SDK's result into the task event (`Client.task_fields`), in µs."""
    from clacky_ipy import agents
    from clacky_ipy.client import Client
    from clacky_ipy.fakellm import FakeLLM

    n = args["reads"]
    tokens = agents.Run()
    tokens.prompt, tokens.completion = 100, 10
    t0 = time.perf_counter()
    agents.estimate("gpt-4o-mini", "openai", tokens)  # before any SDK (pydantic-ai imports genai-prices too)
    first_price_ms = (time.perf_counter() - t0) * 1000  # genai-prices' import and table load, once per process
    with FakeLLM() as llm:
        results = _agent_results(llm)
    fill = {"model": None, "provider": None}
    out: dict[str, Any] = {}
    for name, result in results.items():
        timings: dict[str, float] = {}
        for label in ("read", "priced"):
            agents._PRICES = False if label == "read" else None  # False: as without the `prices` extra
            Client.task_fields(("magic", None, 5, result, fill, None))  # warm
            samples = []
            for _ in range(n):
                t = time.perf_counter_ns()
                Client.task_fields(("magic", None, 5, result, fill, None))
                samples.append(time.perf_counter_ns() - t)
            timings[label] = median_us(samples)
        out[name] = timings
    return {"results": out, "first_price_ms": first_price_ms}


def child_jupyterlab(args: dict[str, Any]) -> dict[str, Any]:
    """JupyterLab's page load with and without clacky-ipy's extensions, in interleaved rounds (one
    server each, the browser's cache warm for all), a second server without them as the A/A
    control, and the status endpoint's time. The notice was answered: the steady state."""
    sys.path.insert(0, str(ROOT / "tests"))
    from jupyterapp import CHROMIUM_ARGS, JupyterApp  # a real server in temporary directories
    from playwright.sync_api import sync_playwright

    from clacky_ipy import notice

    work = Path(args["work"])
    apps = {
        "with": JupyterApp(work / "with"),
        "without": JupyterApp(work / "without", serverext=False, labextension=False),
        "without again": JupyterApp(work / "again", serverext=False, labextension=False),
    }
    apps["with"].clacky_home.mkdir(parents=True)
    notice.mark_seen(apps["with"].clacky_home)
    loads: dict[str, list[float]] = {name: [] for name in apps}
    item: list[float] = []
    try:
        for app in apps.values():
            app.start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args["chromium"], args=CHROMIUM_ARGS)
            pages = {name: browser.new_context().new_page() for name in apps}
            names = list(apps)
            for round_ in range(args["rounds"] + 1):
                for name in names[round_ % 3 :] + names[: round_ % 3]:
                    page, app = pages[name], apps[name]
                    page.goto(f"{app.url}/lab?token={app.token}&reset", wait_until="domcontentloaded")
                    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=60_000)
                    ms = page.evaluate("async () => { await window.jupyterapp.restored; return performance.now(); }")
                    if name == "with":
                        page.locator("#clacky-telemetry-status").wait_for(state="visible", timeout=30_000)
                        shown = page.evaluate("() => performance.now()")
                    if round_:  # the first round warms the cache
                        loads[name].append(ms)
                        if name == "with":
                            item.append(shown - ms)
            browser.close()
        status_ms = []
        for _ in range(args["status_calls"]):
            t0 = time.perf_counter()
            apps["with"].api("clacky-telemetry/status")
            status_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        for app in apps.values():
            app.stop()
    return {"loads": loads, "item": item, "status_ms": status_ms}


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "cells": child_cells,
    "load": child_load,
    "endpoint": child_endpoint,
    "bare_exit": child_bare_exit,
    "drain": child_drain,
    "gem_design": child_gem_design,
    "latency": child_latency,
    "latency_exit": child_latency_exit,
    "burst": child_burst,
    "ingest": child_ingest,
    "pg_batches": child_pg_batches,
    "agents": child_agents,
    "jupyterlab": child_jupyterlab,
}


def _post(url: str, body: dict[str, Any], timeout: float) -> int:
    """One POST on a fresh connection: its status."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        conn.request("POST", "/api/v1/telemetry/task", body=json.dumps(body), headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


# -- the parent: one section per row of the benchmark issue -----------------------------------
class Bench:
    def __init__(self, quick: bool, work: Path) -> None:
        self.quick = quick
        self.work = work
        self.rows: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}

    def size(self, name: str) -> int:
        full, quick = SIZES[name]
        return quick if self.quick else full

    def home(self, name: str, seen: bool = True) -> Path:
        """A fresh Clacky home; `seen`: where a person saw the notice already (the children print
        to /dev/null, where it would never count), so that what is measured is the usual path."""
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))
        if seen:
            (path / "ipy-telemetry-notice-shown").write_text("shown\n")
        return path

    def row(self, what: str, measured: str, target: str, met: bool | None) -> None:
        self.rows.append({"what": what, "measured": measured, "target": target, "met": met})
        mark = {True: "met", False: "MISSED", None: "-"}[met]
        print(f"  {what:<52} {measured:<58} [{mark}]", flush=True)

    def jupyterlab(self) -> None:
        print("JupyterLab page load with and without the extension, status endpoint ...", flush=True)
        import shutil

        chromium = shutil.which("chromium")
        try:
            import jupyterlab  # noqa: F401
            import playwright  # noqa: F401
        except ImportError:
            chromium = None
        if chromium is None:
            skipped = "skipped: no JupyterLab, Playwright or Chromium"
            self.row("JupyterLab page load, with - without the extension", skipped, "<= 50 ms", None)
            return
        args = {"work": str(self.home("lab")), "chromium": chromium, "rounds": self.size("lab_rounds"),
                "status_calls": self.size("status_calls")}  # fmt: skip
        r = run_child("jupyterlab", args, {**os.environ, "PYTHONPATH": str(ROOT)}, timeout=1200)
        self.results["jupyterlab"] = r
        loads = r["loads"]
        paired = [w - o for w, o in zip(loads["with"], loads["without"])]
        control = [a - o for a, o in zip(loads["without again"], loads["without"])]
        delta = statistics.mean(paired)
        measured = (
            f"{statistics.mean(loads['with']):.0f} vs {statistics.mean(loads['without']):.0f} ms: "
            f"{delta:+.0f} ms (median {statistics.median(paired):+.0f}; A/A {statistics.mean(control):+.0f}), "
            f"{len(paired)} rounds"
        )
        self.row("JupyterLab page load to app.restored, with - without", measured, "<= 50 ms", delta <= 50)
        self.row("status-bar item visible after app.restored", f"{statistics.mean(r['item']):.0f} ms (mean)", "-", None)
        self.row("GET /clacky-telemetry/status", f"median {statistics.median(r['status_ms']):.1f} ms, p95 "
                 f"{sorted(r['status_ms'])[int(len(r['status_ms']) * 0.95) - 1]:.1f} ms", "-", None)  # fmt: skip

    # ---------------------------------------------------------------------------------------
    def cells(self) -> None:
        print("per-cell overhead (run_cell('x = 1'), interleaved blocks) ...", flush=True)
        sizes = {
            "rounds": self.size("cell_rounds"),
            "paced_rounds": self.size("cell_paced_rounds"),
            "block": self.size("cell_block"),
            "skip": self.size("cell_skip"),
        }
        before_package = baseline_package(self.work)
        before = None
        with collector_process(self.work / "cells.db") as url:
            r = run_child("cells", sizes, child_env(self.home("cells"), url))
            if before_package is not None:  # the sequential design, same collector, same sizes
                env = {**child_env(self.home("cells"), url), "PYTHONPATH": str(before_package)}
                before = run_child("cells", {**sizes, "paced_rounds": 0, "configs": ["bare", "clacky"]}, env)
        self.results["per_cell"] = r
        self.results["per_cell_before"] = before
        flood, paced, hooks = r["flood"], r["paced"], r["hooks_us"]
        med, ratio = flood["median_us"], flood["paired_ratio"]
        means, stall, in_cell = flood["mean_ratio"], flood["stall_us"], r["hooks_in_run_cell_us"]
        trimmed = flood["mean_ratio_trimmed"]
        was = before["flood"] if before else None
        n = flood["cells_per_config"]["bare"]
        self.row("bare IPython", f"{med['bare']:.1f} µs median ({n} cells, {r['rounds']} rounds)", "baseline", None)
        self.row(
            "clacky_ipy, track_cells=True, healthy collector, cells back to back: ratio of means",
            f"{means['clacky']:.3f} x bare, per round trimmed {trimmed['clacky']:.3f} x"
            + (
                f" (sequential design before: {was['mean_ratio']['clacky']:.3f} x, "
                f"{was['mean_ratio_trimmed']['clacky']:.3f} x)"
                if was
                else ""
            )
            + f"; block medians {ratio['clacky']:.3f} x"
            + (f" (before {was['paired_ratio']['clacky']:.3f} x)" if was else ""),
            f"<= {TARGETS['cell_ratio']} x (means, per round trimmed)",
            trimmed["clacky"] <= TARGETS["cell_ratio"],
        )
        self.row(
            "main-thread stall per tracked cell in a burst (mean wall minus bare)",
            f"{stall['clacky']:.1f} µs" + (f" (before {was['stall_us']['clacky']:.1f} µs)" if was else ""),
            f"<= {TARGETS['stall_us']:.0f} µs",
            stall["clacky"] <= TARGETS["stall_us"],
        )
        self.row(
            "the hooks' own cost inside run_cell (pre + post)",
            f"{in_cell['median']:.2f} µs median, {in_cell['mean']:.2f} µs mean"
            + (" (before {median:.2f} / {mean:.2f})".format(**before["hooks_in_run_cell_us"]) if before else ""),
            f"<= {TARGETS['hooks_in_run_cell_us']:.0f} µs",
            in_cell["median"] <= TARGETS["hooks_in_run_cell_us"],
        )
        self.row(
            "the same, cells 2 ms apart (the worker sends in between)",
            f"{paced['paired_ratio']['clacky']:.3f} x bare ({paced['median_us']['clacky']:.1f} µs median, "
            f"{paced['cells_per_config']['clacky']} cells)",
            f"<= {TARGETS['cell_ratio']} x",
            paced["paired_ratio"]["clacky"] <= TARGETS["cell_ratio"],
        )
        self.row(
            "clacky_ipy, track_cells=True, enabled=False",
            f"{ratio['clacky_disabled']:.3f} x bare ({med['clacky_disabled']:.1f} µs median)",
            f"<= {TARGETS['cell_disabled_ratio']} x",
            ratio["clacky_disabled"] <= TARGETS["cell_disabled_ratio"],
        )
        self.row(
            "ipython-autotime (the peer), cells back to back",
            f"{ratio['autotime']:.3f} x bare ({med['autotime']:.1f} µs median)",
            "clacky_ipy far below it",
            ratio["clacky"] - 1 < (ratio["autotime"] - 1) / 2,
        )
        self.row(
            "the hooks alone, called directly (main thread)",
            f"{hooks['tracked']:.2f} µs per tracked cell; {hooks['env_opt_out']:.2f} µs with CLACKY_TELEMETRY=0"
            + (" (before {tracked:.2f} / {env_opt_out:.2f})".format(**before["hooks_us"]) if before else ""),
            "(for reference)",
            None,
        )

    # ---------------------------------------------------------------------------------------
    def load(self) -> None:
        print("%load_ext cost in fresh processes ...", flush=True)
        import compileall
        import importlib.util

        import clacky_ipy

        # As pip does at install time (this machine sets PYTHONDONTWRITEBYTECODE, so nothing else would).
        compileall.compile_dir(str(ROOT / "clacky_ipy"), quiet=1)
        pyc = Path(importlib.util.cache_from_source(clacky_ipy.__file__))
        n = self.size("load_processes")
        variants = {
            "autotime": ("autotime", False),
            "clacky_ipy (first run: notice printed, marker written)": ("clacky_ipy", False),
            "clacky_ipy (later runs)": ("clacky_ipy", True),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        no_pyc: dict[str, list[float]] = {"autotime": [], "clacky_ipy": []}
        with collector_process(self.work / "load.db") as url:
            run_child("load", {"extension": "clacky_ipy"}, child_env(self.home("load"), url))  # warms the disk cache
            run_child("load", {"extension": "autotime"}, child_env(self.home("load"), url))
            pyc_existed = pyc.exists()
            for _ in range(n):  # interleaved, so drift hits every variant alike
                for name, (ext, marker) in variants.items():
                    home = self.home("load", seen=marker)
                    times[name].append(run_child("load", {"extension": ext}, child_env(home, url))["ms"])
                for ext in no_pyc:  # a cache prefix with nothing in it: everything compiles from source
                    env = child_env(self.home("load"), url, PYTHONDONTWRITEBYTECODE="1")
                    env["PYTHONPYCACHEPREFIX"] = str(self.home("pycache"))
                    no_pyc[ext].append(run_child("load", {"extension": ext}, env)["ms"])
        med = {name: statistics.median(t) for name, t in times.items()}
        med_no_pyc = {ext: statistics.median(t) for ext, t in no_pyc.items()}
        self.results["load_ext"] = {
            "processes": n,
            "pyc_existed": pyc_existed,
            "median_ms": med,
            "median_ms_without_pyc": med_no_pyc,
            "all_ms": times,
        }
        auto = med["autotime"]
        self.row("%load_ext autotime (the peer)", f"{auto:.2f} ms median of {n} processes", "baseline", None)
        for name in list(variants)[1:]:
            self.row(
                f"%load_ext {name}",
                f"{med[name]:.2f} ms = {med[name] / auto:.2f} x autotime",
                "<= autotime",
                med[name] <= auto,
            )
        self.row(
            "%load_ext without any .pyc (compiled from source)",
            f"clacky_ipy {med_no_pyc['clacky_ipy']:.2f} ms, autotime {med_no_pyc['autotime']:.2f} ms",
            "(for reference)",
            None,
        )

    # ---------------------------------------------------------------------------------------
    def endpoints(self) -> None:
        print("endpoint black-holed, refused, DNS failure: 100 tracked cells, then exit ...", flush=True)
        cells = self.size("endpoint_cells")
        repeats = self.size("endpoint_repeats")
        with collector_process(self.work / "endpoint.db") as healthy, blackhole() as hole:
            urls = {
                "healthy": healthy,
                "black-holed": hole,
                "refused": f"http://127.0.0.1:{free_port()}",
                "DNS failure": "http://no-such-host.invalid",
            }
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [*urls, "bare"]}
            for _ in range(repeats):
                for name, url in urls.items():
                    runs[name].append(run_child("endpoint", {"cells": cells}, child_env(self.home("ep"), url)))
                runs["bare"].append(run_child("bare_exit", {"cells": cells}, child_env(self.home("ep"), healthy)))
        exit_s = {name: statistics.median(r["_ended"] - r["exit_begins"] for r in rs) for name, rs in runs.items()}
        cell_us = {name: statistics.median(r["median_us"] for r in rs) for name, rs in runs.items() if name != "bare"}
        noise = [r["_stderr"] for rs in runs.values() for r in rs if r["_stderr"].strip()]
        out = {"cells": cells, "repeats": repeats, "exit_s": exit_s, "cell_median_us": cell_us, "stderr": noise}
        self.results["endpoints"] = out
        self.row("exit, no extension (baseline)", f"{exit_s['bare']:.3f} s", "baseline", None)
        self.row(
            "100 tracked cells, healthy collector",
            f"{cell_us['healthy']:.1f} µs median; exit {exit_s['healthy']:.3f} s",
            "baseline",
            None,
        )
        bound = SHUTDOWN_TIMEOUT + TARGETS["exit_slack_s"]
        for name in ("black-holed", "refused", "DNS failure"):
            ratio = cell_us[name] / cell_us["healthy"]
            self.row(
                f"endpoint {name}",
                f"cells {ratio:.3f} x healthy; exit {exit_s[name]:.3f} s",
                f"<= {TARGETS['endpoint_cell_ratio']} x; exit <= {bound:.1f} s",
                ratio <= TARGETS["endpoint_cell_ratio"] and exit_s[name] <= bound,
            )
        self.row("stderr of every child (tracebacks, warnings)", f"{len(noise)} non-empty", "none", not noise)

    # ---------------------------------------------------------------------------------------
    def drain(self) -> None:
        print("drain throughput on loopback: one worker, before and now, and the gem's design ...", flush=True)
        n = self.size("drain_events")
        before_package = baseline_package(self.work)
        runs: dict[str, Any] = {}
        for name, package in (("ours", ROOT), ("before", before_package)):
            if package is None:
                continue
            db = self.work / f"drain-{name}.db"
            with collector_process(db) as url:
                env = {**child_env(self.home("drain"), url), "PYTHONPATH": str(package)}
                args = {"events": n, **({"max_connections": 1} if name == "ours" else {})}
                runs[name] = run_child("drain", args, env)
            runs[name]["stored"] = stored(db, "task")
            runs[name]["events_per_s"] = n / runs[name]["seconds"]
        with collector_process(self.work / "gem.db") as url:
            gem = run_child("gem_design", {"events": n}, child_env(self.home("gem"), url))
        gem["stored"] = stored(self.work / "gem.db", "task") - 1  # less the warm-up event
        gem["events_per_s"] = n / gem["seconds"]
        runs["gem_design"] = gem
        for r in runs.values():
            r.pop("_stderr", None)
        self.results["drain"] = {"events": n, **runs}
        ours, was = runs["ours"], runs.get("before")
        self.row(
            f"drain on loopback: one worker, keep-alive ({n} events)",
            f"{ours['events_per_s']:.0f} events/s; stored {ours['stored']}/{n}"
            + (f"; before {was['events_per_s']:.0f}/s" if was else ""),
            "no worse than before (within 10 %), none lost",
            ours["stored"] == n and (was is None or ours["events_per_s"] >= 0.9 * was["events_per_s"]),
        )
        self.row(
            "drain on loopback: gem's design, thread + connection per event",
            f"{gem['events_per_s']:.0f} events/s; stored {gem['stored']}/{n}",
            "(for reference)",
            None,
        )

    # ---------------------------------------------------------------------------------------
    def latency(self) -> None:
        print("a server 50 ms and 150 ms away: burst and exit, this design, the sequential one, the gem's ...")
        n, n_exit, repeats = (self.size(k) for k in ("latency_events", "latency_exit_events", "latency_repeats"))
        designs = {"ours": ROOT, "before": baseline_package(self.work)}
        out: dict[str, Any] = {}
        for delay in (0.05, 0.15):
            ms = round(delay * 1000)
            got: dict[str, Any] = {}
            out[f"{ms}ms"] = got
            with delay_sink(delay) as (url, received):
                for name, package in designs.items():
                    if package is None:
                        continue
                    env = {**child_env(self.home("lat"), url), "PYTHONPATH": str(package)}
                    bursts = [run_child("latency", {"events": n}, env) for _ in range(repeats)]
                    exits = []
                    for _ in range(repeats):
                        count = received()
                        r = run_child("latency_exit", {"events": n_exit}, env)
                        time.sleep(0.2)  # the sink counts what reached it before the process ended
                        exits.append({"exit_s": r["_ended"] - r["exit_begins"], "delivered": received() - count - 1})
                    for r in bursts:
                        r.pop("_stderr", None)
                    got[name] = {
                        "burst_s": statistics.median(r["seconds"] for r in bursts),
                        "bursts": bursts,
                        "exit_s": statistics.median(e["exit_s"] for e in exits),
                        "exit_delivered": statistics.median(e["delivered"] for e in exits),
                        "exits": exits,
                    }
                gem = run_child("gem_design", {"events": n}, child_env(self.home("lat"), url))
                gem.pop("_stderr", None)
                got["gem_design"] = gem
            ours, was = got["ours"], got.get("before")
            judged = delay == 0.05
            self.row(
                f"{n}-event burst, server {ms} ms away: until all delivered",
                f"{ours['burst_s']:.2f} s (max_connections=4)"
                + (f"; sequential before {was['burst_s']:.2f} s" if was else "")
                + f"; gem's design {gem['seconds']:.2f} s ({n} threads)",
                f"<= {TARGETS['latency_burst_s']:.0f} s" if judged else "(report)",
                ours["burst_s"] <= TARGETS["latency_burst_s"] if judged else None,
            )
            bound = SHUTDOWN_TIMEOUT + TARGETS["exit_slack_s"]
            self.row(
                f"exit with {n_exit} events queued, server {ms} ms away",
                f"{ours['exit_delivered']:.0f} delivered, exit {ours['exit_s']:.2f} s"
                + (f"; sequential before {was['exit_delivered']:.0f}, exit {was['exit_s']:.2f} s" if was else ""),
                f">= {TARGETS['latency_exit_delivered']}; exit <= {bound:.1f} s" if judged else "(report)",
                (ours["exit_delivered"] >= TARGETS["latency_exit_delivered"] and ours["exit_s"] <= bound)
                if judged
                else None,
            )
        self.results["latency"] = out
        ours = out["50ms"]["ours"]["bursts"]
        idle, peak = max(r["idle_threads"] for r in ours), max(r["peak_threads"] for r in ours)
        self.row(
            "telemetry threads alive: idle / under a backlog",
            f"{idle} / {peak} (max_connections=4); gem's design: one per event",
            "1 / <= 4",
            idle == 1 and peak <= 4,
        )

    # ---------------------------------------------------------------------------------------
    def burst(self) -> None:
        print("burst with the endpoint down ...", flush=True)
        calls = self.size("burst_calls")
        r = run_child("burst", {"calls": calls}, child_env(self.home("burst"), f"http://127.0.0.1:{free_port()}"))
        r.pop("_stderr", None)
        self.results["burst"] = r
        self.row(
            f"burst: {calls} task() calls, endpoint refused",
            f"RSS +{r['rss_growth_mb']:.2f} MB; {r['worker_threads']} worker; dropped {r['dropped']}; "
            f"{r['exceptions']} exceptions; {r['call_us']:.2f} µs/call",
            f"<= {TARGETS['burst_rss_mb']:.0f} MB; 1 worker; 0 exceptions",
            r["rss_growth_mb"] <= TARGETS["burst_rss_mb"] and r["worker_threads"] == 1 and r["exceptions"] == 0,
        )

    # ---------------------------------------------------------------------------------------
    def collector(self) -> None:
        self.ingest()
        self.idle()

    def ingest(self) -> None:
        print("collector ingest (8 concurrent clients), today's and the http.server one ...", flush=True)
        n = self.size("ingest_events")
        baseline = baseline_collector(self.work)
        rates = {}
        for name, source in (("http.server (before)", baseline), ("ASGI (uvicorn)", None)):
            if name.startswith("http.server") and source is None:
                continue
            db = self.work / f"ingest-{len(rates)}.db"
            servers = collector_processes(db, source)
            url, proc = next(servers), next(servers)
            try:
                cpu0 = cpu_seconds(proc.pid)
                r = run_child("ingest", {"url": url, "events": n, "clients": 8}, child_env(self.home("ingest"), url))
                cpu_us = (cpu_seconds(proc.pid) - cpu0) / r["events"] * 1e6
            finally:
                servers.close()
            kept = stored(db)
            rate = rates[name] = r["events"] / r["seconds"]
            self.results.setdefault("ingest", {})[name] = {
                "events": r["events"],
                "seconds": r["seconds"],
                "errors": r["errors"],
                "stored": kept,
                "server_cpu_us_per_event": cpu_us,
            }
            last = source is None
            self.row(
                f"collector ingest, 8 keep-alive clients, SQLite: {name}",
                f"{rate:.0f} events/s, {cpu_us:.0f} µs server CPU each; stored {kept}/{r['events']}"
                + (f"; x{rate / rates['http.server (before)']:.1f}" if last and len(rates) > 1 else ""),
                f">= {TARGETS['ingest_events_per_s']}/s" if last else "-",
                (rate >= TARGETS["ingest_events_per_s"] and kept == r["events"] and r["errors"] == 0) if last else None,
            )

    def idle(self) -> None:
        n = self.size("idle_connections")
        print(f"collector under {n} idle connections, then one legitimate client ...", flush=True)
        if not Path("/proc/self/status").exists():
            print("  (skipped: needs /proc)")
            return
        baseline = baseline_collector(self.work)
        for name, source in (("http.server (before)", baseline), ("ASGI (uvicorn)", None)):
            if name.startswith("http.server") and source is None:
                continue
            servers = collector_processes(self.work / f"idle-{name[:4]}.db", source)
            url, proc = next(servers), next(servers)
            port = int(url.rsplit(":", 1)[1])
            try:
                before = proc_figures(proc.pid)
                sockets, refused, peak = [], 0, 0
                t0 = time.perf_counter()
                for i in range(n):
                    if time.perf_counter() - t0 > (10 if self.quick else 60):  # the old backlog of 5: SYN retries
                        break
                    try:
                        sockets.append(socket.create_connection(("127.0.0.1", port), timeout=3))
                    except OSError:
                        refused += 1
                    if i % 50 == 0:
                        peak = max(peak, proc_figures(proc.pid)["Threads"])
                connect_s = time.perf_counter() - t0
                time.sleep(1.0)
                held = proc_figures(proc.pid)
                held["Threads"] = max(peak, held["Threads"])  # the most threads seen
                t0 = time.perf_counter()
                try:
                    status = _post(url, {"device_id": "legit"}, timeout=10)
                except OSError as exc:
                    status = type(exc).__name__
                took = time.perf_counter() - t0
                for sock in sockets:
                    sock.close()
            finally:
                servers.close()
            self.results.setdefault("idle", {})[name] = {
                "connections": len(sockets),
                "refused": refused,
                "connect_s": connect_s,
                "before": before,
                "held": held,
                "legit_status": status,
                "legit_s": took,
            }
            last = source is None
            self.row(
                f"collector under {n} idle connections: {name}",
                f"{len(sockets)} opened in {connect_s:.1f} s; threads {before['Threads']} -> {held['Threads']}, "
                f"RSS +{(held['VmRSS'] - before['VmRSS']) / 1024:.1f} MB, fds {held['fds']}; "
                f"legit client: {status} in {took * 1000:.0f} ms",
                "bounded; legit client served" if last else "-",
                (held["Threads"] <= before["Threads"] + 2 and status == 201 and took < 2) if last else None,
            )

    # ---------------------------------------------------------------------------------------
    def agents(self) -> None:
        """The worker's time to read each SDK's result (real results of real calls to the fake LLM server)."""
        print("agent results: the worker's time to build a task event from each SDK's result ...", flush=True)
        r = run_child(
            "agents", {"reads": self.size("agent_reads")}, child_env(self.home("agents"), "http://127.0.0.1:9")
        )
        self.results["agent_reads"] = r
        for name, t in r["results"].items():
            measured = f"{t['read']:.1f} µs; {t['priced']:.1f} µs with the price estimate"
            self.row(f"worker reads: {name}", measured, "report it (worker thread)", None)
        self.row(
            "genai-prices' first estimate in a process",
            f"{r['first_price_ms']:.0f} ms (import, table)",
            "report it (worker thread)",
            None,
        )

    def report(self) -> None:
        """Reports from rollups at ten million events beside today's code, rebuild, PostgreSQL."""
        n, devices, days = self.size("store_events"), self.size("store_devices"), 90
        print(f"store: {n:,} events ({devices} devices, {days} days), SQLite and PostgreSQL ...", flush=True)
        sys.path.insert(0, str(ROOT / "tests"))  # legacy.py: the store and report before rollups
        from legacy import old_build

        old = cached_old_sqlite(self.work, self.quick, n, devices, days)
        before = {}
        for name, flags in REPORTS.items():
            t0 = time.perf_counter()
            old_build(old, days=30 if "--days" in flags else None, exclude_ci="--exclude-ci" in flags)
            before[name] = time.perf_counter() - t0
        db = self.work / "store.db"
        shutil.copyfile(old, db)
        rebuilt, _ = timed_command("rebuild", "--db", str(db), repeat=1)
        self.results["store_sqlite"] = {"events": n, "before_s": before, "rebuild_s": rebuilt}
        self.row(f"rebuild of {n:,} raw events, SQLite", f"{rebuilt:.1f} s (whole command)", "report it", None)
        self._reports("SQLite", str(db), n, before)

        from pgcluster import Cluster, server_binaries

        bindir = server_binaries()
        if bindir is None:
            print("  (no PostgreSQL server binaries: the PostgreSQL rows are skipped)")
            return
        settings = ["shared_buffers=512MB", "max_wal_size=8GB", "work_mem=64MB"]
        with Cluster(bindir, durable=True, settings=settings) as cluster:  # fsync and synchronous_commit on
            import psycopg

            from clacky_ipy.store import open_store

            url = cluster.url()
            open_store(url).close()
            t0 = time.perf_counter()
            con = psycopg.connect(url, autocommit=True)
            model_list = ", ".join(f"'{m}'" for m in MODELS)
            con.execute(
                POSTGRES_EVENTS.format(n=n, days=days, devices=devices, columns=GENERATED, model_list=model_list)
            )
            con.close()
            generated = time.perf_counter() - t0
            print(f"  (generated {n:,} events in PostgreSQL in {generated:.0f} s)", flush=True)
            rebuilt, _ = timed_command("rebuild", "--db", url, repeat=1)
            self.results["store_postgres"] = {"events": n, "generate_s": generated, "rebuild_s": rebuilt}
            self.row(f"rebuild of {n:,} raw events, PostgreSQL", f"{rebuilt:.1f} s (whole command)", "report it", None)
            self._reports("PostgreSQL", url, n, None)

            ingest = self.size("ingest_events")
            con = psycopg.connect(url, autocommit=True)
            con.execute("CREATE DATABASE ingest")  # small tables, as a collector starts with
            con.execute("CHECKPOINT")  # the ten million rows' writes are on disk, not in the timing
            con.close()
            url = cluster.url("ingest")
            batched = run_child("pg_batches", {"url": url, "events": ingest, "batch": 64}, dict(os.environ))
            with collector_process(url) as collector_url:  # type: ignore[arg-type]
                r = run_child(
                    "ingest",
                    {"url": collector_url, "events": ingest, "clients": 8},
                    child_env(self.home("pg-ingest"), collector_url),
                )
            rate = r["events"] / r["seconds"]
            store_rate = batched["events"] / batched["seconds"]
            self.results["store_postgres"]["ingest"] = {**r, "store_batches_of_64": batched}
            self.row(
                f"collector ingest into PostgreSQL, 8 keep-alive clients, durable commits ({r['events']} events)",
                f"{rate:.0f} events/s, {r['errors']} errors; the store alone in batches of 64: {store_rate:.0f}/s",
                f">= {TARGETS['pg_ingest_events_per_s']}/s (today's SQLite)",
                rate >= TARGETS["pg_ingest_events_per_s"] and r["errors"] == 0,
            )

    def _reports(self, engine: str, db: str, n: int, before: dict[str, float] | None) -> None:
        """The three report rows on `db`: the whole command, median of 3 (and today's code beside it)."""
        from clacky_ipy import report

        got = {}
        for name, flags in REPORTS.items():
            took, out = timed_command("report", "--db", db, "--format", "json", *flags)
            builds = []
            for _ in range(3):
                t0 = time.perf_counter()
                report.build(db, days=30 if "--days" in flags else None, exclude_ci="--exclude-ci" in flags)
                builds.append(time.perf_counter() - t0)
            build = statistics.median(builds)
            got[name] = {"command_s": took, "build_s": build}
            if before:
                then = f"; today's build() {before[name]:.2f} s: x{before[name] / build:.0f}"
            else:
                then = "; today: SQLite only"
            self.row(
                f"report at {n:,} events, {engine}: {name}",
                f"{took:.2f} s whole command, build() {build:.3f} s (medians of 3){then}; "
                f"{json.loads(out)['tasks']:,} tasks",
                f"<= {TARGETS['store_report_s']:.0f} s",
                took <= TARGETS["store_report_s"],
            )
        page = self.work / "report.html"
        took, _ = timed_command("report", "--db", db, "--html", str(page), "--format", "json")
        got["html"] = {"command_s": took, "bytes": page.stat().st_size}
        self.row(
            f"report --html at {n:,} events, {engine}: every figure and chart, one page",
            f"{took:.2f} s whole command (median of 3), page {page.stat().st_size / 1024:,.0f} KiB",
            "report it",
            None,
        )
        self.results["store_postgres" if engine == "PostgreSQL" else "store_sqlite"]["report_s"] = got

    # ---------------------------------------------------------------------------------------
    def devices(self) -> None:
        """The report at a million distinct devices (two events each, written through the store's
        own API as a collector does), SQLite and PostgreSQL: device figures cost no device count."""
        n = self.size("reach_devices")
        sys.path.insert(0, str(ROOT / "tests"))  # pgcluster.py: a throwaway PostgreSQL
        db = self.work / "devices.db"
        seconds = fill_devices(str(db), n)
        self.row(f"ingest of {2 * n:,} events from {n:,} devices, SQLite (add_batch of 512)",
                 f"{seconds:.0f} s ({2 * n / seconds:,.0f} events/s)", "report it", None)  # fmt: skip
        self._device_report("SQLite", str(db), n)
        from pgcluster import Cluster, server_binaries

        bindir = server_binaries()
        if bindir is None:
            print("  (no PostgreSQL server binaries: the PostgreSQL rows are skipped)")
            return
        with Cluster(bindir, durable=True, settings=["shared_buffers=512MB", "max_wal_size=8GB"]) as cluster:
            url = cluster.url()
            seconds = fill_devices(url, n)
            self.row(f"ingest of {2 * n:,} events from {n:,} devices, PostgreSQL (add_batch of 512)",
                     f"{seconds:.0f} s ({2 * n / seconds:,.0f} events/s)", "report it", None)  # fmt: skip
            self._device_report("PostgreSQL", url, n)

    def _device_report(self, engine: str, db: str, n: int) -> None:
        for name, flags in REPORTS.items():
            took, out = timed_command("report", "--db", db, "--format", "json", *flags)
            got = json.loads(out)
            self.results.setdefault("devices", {})[f"{engine} {name}"] = {"command_s": took, "devices": n}
            self.row(
                f"report at {n:,} distinct devices ({2 * n:,} events), {engine}: {name}",
                f"{took:.2f} s whole command (median of 3); {got['active_devices']:,} active devices",
                f"<= {TARGETS['store_report_s']:.0f} s",
                took <= TARGETS["store_report_s"],
            )

    # -- the collector as a service: credentials, rate limits, /metrics, forget and prune --------
    def service(self) -> None:
        self.service_ingest()
        self.service_store()

    def service_ingest(self) -> None:
        """Ingest before this version (no /metrics), and now with the guard off and on, interleaved."""
        n, rounds = self.size("ingest_events"), self.size("service_rounds")
        print(f"collector ingest before/after /metrics, credentials and rate limits ({rounds} rounds) ...", flush=True)
        from clacky_ipy.guard import hash_password

        credentials = self.work / "credentials"
        credentials.write_text(f"bench:{hash_password('bench')}\n")
        before = baseline_package(self.work, BASELINE_SERVICE)
        guarded = ("--credentials", str(credentials), "--rate-limit", "100000/s", "--peer-rate-limit", "1000000/s")
        configs: dict[str, tuple[Path, tuple[str, ...], str | None]] = {
            "guard off": (ROOT, (), None),
            "credentials + rate limits": (ROOT, guarded, "bench:bench"),
        }
        if before is not None:
            configs = {"before (no /metrics)": (before, (), None), **configs}
        got: dict[str, dict[str, list[float]]] = {name: {"rate": [], "cpu_us": []} for name in configs}
        for r in range(rounds):
            for name, (package, options, auth) in configs.items():
                db = self.work / f"service-ingest-{r}-{len(got[name]['rate'])}-{abs(hash(name))}.db"
                servers = collector_processes(db, None, options, package)
                url, proc = next(servers), next(servers)
                try:
                    args = {"url": url, "events": n, "clients": 8, "auth": auth, "warm": 1}
                    run_child("ingest", {**args, "events": 8}, child_env(self.home("service-ingest"), url))
                    cpu0 = cpu_seconds(proc.pid)  # measured after a warm-up: a collector runs for days
                    out = run_child("ingest", {**args, "warm": 0}, child_env(self.home("service-ingest"), url))
                    cpu_us = (cpu_seconds(proc.pid) - cpu0) / out["events"] * 1e6
                finally:
                    servers.close()
                if out["errors"] or stored(db) != out["events"] + 9:
                    raise RuntimeError(f"{name}: {out['errors']} errors, {stored(db)}/{out['events']} stored")
                got[name]["rate"].append(out["events"] / out["seconds"])
                got[name]["cpu_us"].append(cpu_us)
        means = {name: {k: statistics.mean(v) for k, v in figures.items()} for name, figures in got.items()}
        self.results["service_ingest"] = {"rounds": got, "means": means}
        base = means.get("before (no /metrics)", means["guard off"])
        for name, m in means.items():
            ratio = m["rate"] / base["rate"]
            compared = name != "before (no /metrics)"
            self.row(
                f"collector ingest, 8 keep-alive clients, SQLite, {rounds} interleaved rounds: {name}",
                f"{m['rate']:.0f} events/s, {m['cpu_us']:.0f} µs server CPU each"
                + (f"; x{ratio:.2f} of before, CPU x{m['cpu_us'] / base['cpu_us']:.2f}" if compared else ""),
                f">= {TARGETS['service_ingest_ratio']:.2f} x before" if compared else "-",
                ratio >= TARGETS["service_ingest_ratio"] if compared else None,
            )

    def service_store(self) -> None:
        """/metrics, forget of one device and prune of 30 days at ten million events (SQLite), with a
        writer committing small batches all along: the longest it waited is what ingest felt."""
        n, devices, days = self.size("store_events"), self.size("store_devices"), 90
        print(f"service at {n:,} events: /metrics, forget, prune (SQLite) ...", flush=True)
        sys.path.insert(0, str(ROOT / "tests"))
        old = cached_old_sqlite(self.work, self.quick, n, devices, days)
        db = self.work / "service.db"
        shutil.copyfile(old, db)
        rebuilt, _ = timed_command("rebuild", "--db", str(db), repeat=1)
        print(f"  (rebuilt in {rebuilt:.0f} s)", flush=True)
        results: dict[str, Any] = {"events": n, "rebuild_s": rebuilt}
        with collector_process(db) as url:
            import requests

            scrapes = []
            with requests.Session() as session:
                for _ in range(self.size("metrics_scrapes")):
                    t0 = time.perf_counter()
                    response = session.get(url + "/metrics", timeout=10)
                    scrapes.append(time.perf_counter() - t0)
                    assert response.status_code == 200
            results["metrics_scrape_ms"] = {"median": statistics.median(scrapes) * 1e3, "max": max(scrapes) * 1e3}
            self.row(
                f"GET /metrics at {n:,} events",
                f"{statistics.median(scrapes) * 1e3:.2f} ms median, {max(scrapes) * 1e3:.1f} ms max "
                f"({len(scrapes)} scrapes, {len(response.content):,} bytes)",
                "report it",
                None,
            )
        device = f"{1:064x}"
        for name, args in (
            ("forget of one device", ("forget", "--db", str(db), device)),
            ("prune of 30 days", ("prune", "--db", str(db), "--older-than", str(days - 31))),
        ):
            took, out, stalls = self._while_writing(db, args)
            worst = max(stalls)
            results[name] = {"seconds": took, "output": out.strip(), "commits": len(stalls), "max_stall_s": worst}
            self.row(
                f"`clacky-ipy {args[0]}` at {n:,} events, SQLite: {name}",
                f"{took:.1f} s; {out.strip()}; a writer's {len(stalls)} commits meanwhile: longest "
                f"{worst * 1e3:.0f} ms, p99 {quantile_us([int(x * 1e9) for x in stalls], 0.99) / 1e3:.0f} ms",
                f"longest commit <= {TARGETS['ingest_stall_s'] * 1e3:.0f} ms",
                worst <= TARGETS["ingest_stall_s"],
            )
        self.results["service_store"] = results

    def _while_writing(self, db: Path, args: tuple[str, ...]) -> tuple[float, str, list[float]]:
        """`clacky-ipy ARGS` in a child, while this process commits 8 events every 5 ms into `db`."""
        from clacky_ipy import payload
        from clacky_ipy.store import open_store, utc_now

        fields = payload.clean("task", {"device_id": "b" * 64, "status": "success", "duration_ms": 900})
        store = open_store(db)
        stalls: list[float] = []
        done = threading.Event()

        def write() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                store.add_batch([(utc_now(), "task", fields)] * 8)
                stalls.append(time.perf_counter() - t0)
                time.sleep(0.005)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            took, out = timed_command(*args, repeat=1)
        finally:
            done.set()
            writer.join()
            store.close()
        return took, out, stalls


# -- the store: reports from rollups at ten million events, rebuild, PostgreSQL ---------------
#: The generated events' columns, and each one's value in SQL from per-row random numbers
#: (SQLite: `a` and `b`, non-negative 63-bit integers; PostgreSQL: floats r1..r4 in [0, 1)).
GENERATED = (
    "received_at, kind, device_id, version, frontend, ci, os, python_version, launch_source, "
    "trigger, status, duration_ms, model, provider, cost_usd, prompt_tokens, completion_tokens"
)
MODELS = ("claude-sonnet-4", "gpt-5", "deepseek-v3", "qwen3-coder")
#: events: 5 % startups, 10 % from CI, 10 % of tasks failed; durations skewed below 10 s.
SQLITE_EVENTS = """
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}),
e AS (SELECT a, b, (a / 97) % 100 >= 5 AS task
      FROM (SELECT abs(random()) AS a, abs(random()) AS b FROM s))
INSERT INTO events ({columns})
SELECT date('now', '-' || (a % {days}) || ' days') || 'T'
         || printf('%02d:%02d:%02d.%06dZ', b % 24, (b / 24) % 60, (b / 1440) % 60, (b / 86400) % 1000000),
       CASE WHEN task THEN 'task' ELSE 'startup' END,
       printf('%064x', (a / 9700) % {devices}), '0.1.0', 'jupyter',
       CASE WHEN (b / 86400000000) % 10 = 0 THEN 1 ELSE 0 END,
       CASE WHEN task THEN NULL ELSE 'linux' END,
       CASE WHEN task THEN NULL ELSE '3.11.7' END,
       CASE WHEN task THEN NULL ELSE 'cli' END,
       CASE WHEN task THEN CASE (b / 864000000000) % 3 WHEN 0 THEN 'magic' WHEN 1 THEN 'cell' ELSE 'api' END END,
       CASE WHEN task THEN CASE WHEN (a / 97000000) % 10 = 0 THEN 'error' ELSE 'success' END END,
       CASE WHEN task THEN ((a / 970000000) % 100) * ((a / 97000000000) % 100) + (b / 2592000000000) % 100 END,
       CASE WHEN task THEN CASE (a / 9700000000000) % 4 {models} END END,
       CASE WHEN task THEN 'anthropic' END,
       CASE WHEN task THEN ((b / 7776000000000) % 1000) / 10000.0 END,
       CASE WHEN task THEN 100 + (a / 38800000000000) % 4900 END,
       CASE WHEN task THEN 10 + (b / 7776000000000000) % 990 END
FROM e
"""
POSTGRES_EVENTS = """
INSERT INTO events ({columns})
SELECT to_char(date_trunc('day', now() AT TIME ZONE 'UTC') - floor(r1 * {days}) * interval '1 day'
               + r2 * interval '1 day', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       CASE WHEN task THEN 'task' ELSE 'startup' END,
       lpad(to_hex(floor(r3 * {devices})::int), 64, '0'), '0.1.0', 'jupyter',
       CASE WHEN r4 < 0.1 THEN 1 ELSE 0 END,
       CASE WHEN task THEN NULL ELSE 'linux' END,
       CASE WHEN task THEN NULL ELSE '3.11.7' END,
       CASE WHEN task THEN NULL ELSE 'cli' END,
       CASE WHEN task THEN (ARRAY['magic', 'cell', 'api'])[1 + floor(r5 * 3)::int] END,
       CASE WHEN task THEN CASE WHEN r6 < 0.1 THEN 'error' ELSE 'success' END END,
       CASE WHEN task THEN floor(r7 * 100) * floor(r8 * 100) + floor(r9 * 100) END,
       CASE WHEN task THEN (ARRAY[{model_list}])[1 + floor(r5 * 4)::int] END,
       CASE WHEN task THEN 'anthropic' END,
       CASE WHEN task THEN round((r2 * 0.1)::numeric, 4) END,
       CASE WHEN task THEN 100 + floor(r8 * 4900) END,
       CASE WHEN task THEN 10 + floor(r9 * 990) END
FROM (SELECT random() >= 0.05 AS task, random() AS r1, random() AS r2, random() AS r3, random() AS r4,
             random() AS r5, random() AS r6, random() AS r7, random() AS r8, random() AS r9
      FROM generate_series(1, {n})) AS g
"""


def generate_old_sqlite(path: Path, n: int, devices: int, days: int) -> None:
    """`n` events in SQL (a recursive CTE), in the layout and with the indexes of the version before rollups."""
    from legacy import INDEXES, OldStore

    part = path.with_name(path.name + ".part")
    part.unlink(missing_ok=True)
    OldStore(part).close()
    con = sqlite3.connect(part)
    for name in INDEXES:  # built after the rows: faster than kept up row by row
        con.execute(f"DROP INDEX {name}")
    models = " ".join(f"WHEN {i} THEN '{m}'" for i, m in enumerate(MODELS[:-1])) + f" ELSE '{MODELS[-1]}'"
    with con:
        con.execute(SQLITE_EVENTS.format(n=n, days=days, devices=devices, columns=GENERATED, models=models))
    with con:
        for name, definition in INDEXES.items():
            con.execute(f"CREATE INDEX {name} ON events {definition}")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    part.rename(path)


def cached_old_sqlite(work: Path, quick: bool, n: int, devices: int, days: int) -> Path:
    """The generated database, kept between full runs (in CLACKY_BENCH_CACHE, default ~/.cache)."""
    folder = work if quick else Path(os.environ.get("CLACKY_BENCH_CACHE", Path.home() / ".cache" / "clacky-ipy-bench"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"events-old-layout-{n}-{devices}-{days}-v1.db"
    if not path.exists():
        t0 = time.perf_counter()
        generate_old_sqlite(path, n, devices, days)
        print(f"  (generated {n:,} events in {time.perf_counter() - t0:.0f} s: {path})", flush=True)
    return path


def fill_devices(db: str, n: int) -> float:
    """`n` distinct devices, each a startup and a task on one of 90 days, through `Store.add_batch`."""
    from clacky_ipy.store import open_store

    rng = random.Random(5)
    store = open_store(db)
    t0 = time.perf_counter()
    batch: list[tuple[str, str, dict[str, Any]]] = []
    today = datetime.now(timezone.utc).toordinal()
    for i in range(n):
        day = datetime.fromordinal(today - rng.randrange(90)).strftime("%Y-%m-%d")
        device = {"device_id": f"{i:064x}", "ci": rng.random() < 0.1}
        batch.append((f"{day}T08:00:00.000000Z", "startup", {**device, "version": f"0.{i % 7}", "os": "linux"}))
        batch.append((f"{day}T09:00:00.000000Z", "task", {**device, "trigger": "magic", "model": MODELS[i % 4],
                      "status": "success", "duration_ms": rng.randrange(1, 10_000)}))  # fmt: skip
        if len(batch) >= 512:
            store.add_batch(batch)
            batch = []
    store.add_batch(batch)
    store.close()
    return time.perf_counter() - t0


def timed_command(*args: str, repeat: int = 3) -> tuple[float, str]:
    """Median wall time of `python -m clacky_ipy ARGS` (a fresh process each time), and its stdout."""
    timings, out = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [PYTHON, "-m", "clacky_ipy", *args],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
        )
        timings.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"clacky-ipy {' '.join(args)}: {proc.stderr}")
        out = proc.stdout
    return statistics.median(timings), out


REPORTS = {"all": [], "--days 30": ["--days", "30"], "--exclude-ci": ["--exclude-ci"]}


# -- output ------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import IPython
    import requests

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        autotime = version("ipython-autotime")
    except Exception:
        autotime = "?"
    import clacky_ipy

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "ipython": IPython.__version__,
        "requests": requests.__version__,
        "clacky_ipy": clacky_ipy.__version__,
        "ipython_autotime": autotime,
    }


def markdown(info: dict[str, Any], rows: list[dict[str, Any]], quick: bool) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `python bench/run.py`"
        + (" --quick (a smoke run: too few repetitions to judge by)" if quick else "")
        + f" on {info['date']}: {info['cpu']}, {info['cores']} cores, {info['os']}; Python {info['python']}, "
        f"IPython {info['ipython']}, requests {info['requests']}, clacky-ipy {info['clacky_ipy']}, "
        f"ipython-autotime {info['ipython_autotime']}. Raw figures: `bench/results.json`.",
        "",
        "| what | measured | target | |",
        "|---|---|---|---|",
    ]
    for r in rows:
        mark = {True: "met", False: "**missed**", None: ""}[r["met"]]
        lines.append(f"| {r['what']} | {r['measured']} | {r['target']} | {mark} |")
    analysis = Path(__file__).with_name("analysis.md")  # written by people, not by this script
    if analysis.exists():
        lines += ["", analysis.read_text().rstrip()]
    return "\n".join(lines) + "\n"


SECTIONS = (
    "cells",
    "load",
    "endpoints",
    "drain",
    "latency",
    "burst",
    "collector",
    "report",
    "devices",
    "jupyterlab",
    "agents",
    "service",
)
#: Parts of a section that can also run alone (`--only ingest`).
PARTS = ("ingest", "idle", "service_ingest", "service_store")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: few repetitions (CI)")
    p.add_argument("--output", type=Path, help="directory for BENCHMARKS.md and results.json (default: the repository)")
    p.add_argument("--only", choices=SECTIONS + PARTS, action="append", help="run only these sections")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--args", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--sink", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.sink is not None:
        serve_sink(args.sink)
        return 0
    if args.child:
        Path(args.result).write_text(json.dumps(CHILDREN[args.child](json.loads(args.args))))
        return 0

    with tempfile.TemporaryDirectory(prefix="clacky-bench-") as tmp:
        bench = Bench(args.quick, Path(tmp))
        info = machine()
        print(f"clacky-ipy benchmarks{' (quick)' if args.quick else ''}: {info['cpu']}, Python {info['python']}, "
              f"IPython {info['ipython']}")  # fmt: skip
        for name in args.only or SECTIONS:
            getattr(bench, name)()
    results = {"machine": info, "quick": args.quick, "rows": bench.rows, "results": bench.results}
    md_path = (args.output / "BENCHMARKS.md") if args.output else ROOT / "BENCHMARKS.md"
    json_path = (args.output / "results.json") if args.output else ROOT / "bench" / "results.json"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown(info, bench.rows, args.quick))
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    missed = [r["what"] for r in bench.rows if r["met"] is False]
    print(f"\nwrote {md_path} and {json_path}; targets missed: {len(missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
