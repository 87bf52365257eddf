"""Prometheus metrics of one gateway (its own registry, so tests can run several).

Lease ids never appear here; lock names do not either (unbounded label values).
"""

from __future__ import annotations

import socket
import sys
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

__all__ = ["Metrics", "MetricsServer"]

SCRAPE_TIMEOUT_S = 5.0
"""How long one scrape connection may take to send its request and read the answer."""
MAX_SCRAPES = 16
"""Scrape connections served at once; more are closed at once (Prometheus retries)."""


class _Handler(WSGIRequestHandler):
    timeout = SCRAPE_TIMEOUT_S  # socket timeout: a client that stalls is dropped

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per scrape would flood the gateway's log."""


class MetricsServer(ThreadingMixIn, WSGIServer):
    """The /metrics HTTP endpoint: a thread per scrape, at most MAX_SCRAPES at once, each
    bounded by SCRAPE_TIMEOUT_S, so slow or stalled clients cannot pile up threads."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_SCRAPES)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper that stalled past the timeout or went away is not worth a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    @classmethod
    def start(cls, registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
        """Serve `registry` at http://host:port/metrics from a daemon thread."""
        if ":" in host:
            cls = type("MetricsServer6", (cls,), {"address_family": socket.AF_INET6})
        server = make_server(host, port, make_wsgi_app(registry), cls, handler_class=_Handler)
        assert isinstance(server, MetricsServer)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return server


_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)


class Metrics:
    """The gateway's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.acquire_seconds = Histogram(
            "lockd_acquire_seconds",
            "Acquire RPC latency, waiting included, by result.",
            ["result"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.renew_seconds = Histogram(
            "lockd_renew_seconds",
            "Renew RPC latency, by result.",
            ["result"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.grants = Counter("lockd_grants", "Leases granted.", registry=r)
        self.releases = Counter("lockd_releases", "Leases released.", registry=r)
        self.attempt_failures = Counter(
            "lockd_attempt_failures",
            "Acquisition attempts that did not grant, by reason "
            "(held, no_quorum, restarting, too_slow, fence_contended).",
            ["reason"],
            registry=r,
        )
        self.leases_lost = Counter(
            "lockd_leases_lost", "Renewals that failed (lease lost).", registry=r
        )
        self.waiters = Gauge("lockd_waiters", "Acquire calls waiting at this gateway.", registry=r)
        self.watchers = Gauge("lockd_watchers", "Open Watch streams at this gateway.", registry=r)
        self.watchers_cut_off = Counter(
            "lockd_watchers_cut_off", "Watchers cut off for reading too slowly.", registry=r
        )
        self.node_up = Gauge(
            "lockd_node_up", "1 if the node answered its last health check.", ["node"], registry=r
        )
        self.node_restart_delay = Gauge(
            "lockd_node_restart_delay_seconds",
            "Time before the node grants again after a restart.",
            ["node"],
            registry=r,
        )
        self.node_latency = Gauge(
            "lockd_node_latency_seconds",
            "PING round trip at the last health check.",
            ["node"],
            registry=r,
        )
        self.fsync_batches = Gauge(
            "lockd_fsync_batches",
            "Group-commit batches of the embedded engines under --appendfsync always since "
            "start (each fsyncs every engine at most once).",
            registry=r,
        )
        self.fsync_waits = Gauge(
            "lockd_fsync_waits",
            "Node calls that waited for durability under --appendfsync always since start "
            "(divided by lockd_fsync_batches: how many share a batch).",
            registry=r,
        )
