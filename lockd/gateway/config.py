"""The gateway's settings: one frozen object, built by the CLI or by tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lockd.engine import FsyncPolicy

__all__ = ["DEFAULT_LISTEN", "GatewayConfig"]

DEFAULT_LISTEN = "127.0.0.1:7400"


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    """Settings of `lockd serve`."""

    listen: str = DEFAULT_LISTEN
    """host:port for gRPC (port 0 picks a free one)."""
    data_dir: Path = Path("./var/lockd")
    """Where embedded engines keep their data (one subdirectory each)."""
    nodes: tuple[str, ...] = ()
    """redis:// URLs of RESP nodes; empty runs `embedded_nodes` engines in-process."""
    embedded_nodes: int = 5
    appendfsync: FsyncPolicy = FsyncPolicy.EVERYSEC
    """fsync policy of embedded engines."""
    max_ttl_ms: int = 60_000
    min_ttl_ms: int = 10
    node_timeout_ms: int = 200
    """How long one node may take to answer one call before it counts as failed."""
    max_name_bytes: int = 256
    max_waiters_per_lock: int = 1024
    max_waiters: int = 65_536
    max_locks: int = 100_000
    """Leases granted by this gateway and not yet released or expired."""
    session_window: int = 1024
    """Requests one Session stream may have read and not yet answered back (sent to its
    client); past it the gateway stops reading the stream (HTTP/2 flow control)."""
    session_backlog: int = 65_536
    """The same, summed over every Session stream of the gateway; past it a stream is read
    only while it has nothing unanswered."""
    watch_queue: int = 1024
    """Events a watcher may fall behind before it is cut off (WATCHER_TOO_SLOW)."""
    max_watchers: int = 10_000
    """Open Watch streams this gateway serves at most (TOO_MANY_WATCHERS)."""
    metrics_listen: str | None = None
    """host:port for the Prometheus /metrics endpoint; None disables it."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    """CA bundle for client certificates: setting it requires mutual TLS."""
    admin_token_file: Path | None = None
    """File holding the admin token ForceRelease accepts (read at each use)."""
    admin_cns: tuple[str, ...] = ()
    """Client certificate CNs (verified by `tls_client_ca`) allowed to ForceRelease."""
    shutdown_grace_s: float = 5.0
