"""The collector's own figures for Prometheus (``GET /metrics``), through prometheus_client.

One `Metrics` per application. When ``PROMETHEUS_MULTIPROC_DIR`` is set (several uvicorn
workers, or several ``clacky-ipy collect`` processes sharing the directory) prometheus_client
keeps each process's values in files there and a scrape adds them up, whichever process
answers it. Every label takes values from a fixed list: a sender cannot grow the series.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Networks allowed to read /metrics unless ``--metrics-from`` says otherwise.
LOOPBACK = ("127.0.0.0/8", "::1/128")
#: The statuses counted as refusals (what a request got instead of 201).
REFUSALS = ("400", "401", "403", "404", "405", "411", "413", "429", "499", "500", "503")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_problem() -> str | None:
    """Why ``PROMETHEUS_MULTIPROC_DIR`` cannot hold the values, or None (also when it is unset)."""
    folder = os.environ.get(MULTIPROC_ENV)
    if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
        return f"{MULTIPROC_ENV}={folder}: not a folder this process can write in"
    return None


def networks(specs: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``--metrics-from`` values as networks (``10.0.0.0/8``, an address alone); `ValueError` if not one."""
    out = []
    for spec in specs:
        for part in spec.split(","):
            if part.strip():
                out.append(ipaddress.ip_network(part.strip(), strict=False))
    return out


def allowed(peer: str | None, nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether the peer `peer` (an address, None for a Unix socket: local) may read /metrics."""
    if peer is None:
        return True
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in nets)


class Metrics:
    """The collector's counters, histograms and gauges, and their text exposition."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry()
        own = None if self.multiprocess else self.registry  # multiprocess: values go to files
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry)
        self.stored = Counter(
            "clacky_collector_events_stored", "Events committed to the store, by kind", ["kind"], registry=own
        )
        self.refused = Counter(
            "clacky_collector_requests_refused", "Requests answered other than 201, by status", ["reason"], registry=own
        )
        self.dropped = Counter(
            "clacky_collector_keys_dropped",
            "Keys left out of stored events, by key ('' for one not in the vocabulary) and reason",
            ["key", "reason"],
            registry=own,
        )
        self.batch = Histogram(
            "clacky_collector_commit_batch_size", "Events per commit", buckets=BATCH_BUCKETS, registry=own
        )
        self.latency = Histogram(
            "clacky_collector_commit_seconds", "Seconds per commit", buckets=LATENCY_BUCKETS, registry=own
        )
        self.queue = Gauge(
            "clacky_collector_queue_depth", "Events waiting for the writer", registry=own, multiprocess_mode="livesum"
        )
        self.connections = Gauge(
            "clacky_collector_open_connections", "Open HTTP connections", registry=own, multiprocess_mode="livesum"
        )
        # Each label's children made once: the request path only increments.
        from . import payload

        self._stored = {kind: self.stored.labels(kind) for kind in payload.KEYS}
        self._refused = {reason: self.refused.labels(reason) for reason in REFUSALS}
        for child in (*self._stored.values(), *self._refused.values()):
            child.inc(0)

    def refuse(self, status: int) -> None:
        child = self._refused.get(str(status))
        if child is not None:
            child.inc()

    def drop(self, key: str, reason: str) -> None:
        self.dropped.labels(key, reason).inc()

    def committed(self, counts: dict[str, int], seconds: float) -> None:
        """One commit: its events by kind and how long it took."""
        for kind, n in counts.items():
            self._stored[kind].inc(n)
        self.batch.observe(sum(counts.values()))
        self.latency.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format's body and content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: Any) -> None:
    """In multiprocess mode, drop a finished process's live gauges (its counters stay)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
