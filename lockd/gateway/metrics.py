"""Prometheus metrics of one gateway (its own registry, so tests can run several).

Lease ids never appear here; lock names do not either (unbounded label values).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

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
