"""`lockd serve`: the gRPC gateway over five engine nodes.

`Gateway(config)` builds everything; `start()` binds (port 0 picks one) and returns the
port, so tests can run several; `stop()` is the graceful shutdown: health NOT_SERVING,
in-flight calls finish within the grace period, nodes close (embedded engines cleanly).
`serve(config)` runs one until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from lockd.engine import Engine, EngineConfig, FsyncPolicy
from lockd.engine.group import GroupCommit
from lockd.gateway.config import GatewayConfig
from lockd.gateway.locks import LockManager
from lockd.gateway.metrics import Metrics, MetricsServer
from lockd.gateway.nodes import EmbeddedNode, FailedNode, Node, RespNode
from lockd.gateway.service import LockService
from lockd.rpc import DecodeErrors, bind, credentials, mark_serving, standard
from lockd.serving import host_port, run_until_signal
from lockd.v1 import lock_service_pb2 as pb
from lockd.v1 import lock_service_pb2_grpc as pb_grpc

__all__ = ["Gateway", "build_nodes", "serve"]

log = logging.getLogger("lockd.gateway")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LockService"].full_name
HEALTH_POLL_S = 1.0
SERVER_OPTIONS = [
    # No bandwidth-delay probing: it grows a stream's HTTP/2 receive window to megabytes,
    # which grpc then buffers for a client that writes faster than the gateway reads (a
    # Session stream at its window); lockd's messages are small, 64 KB is plenty.
    ("grpc.http2.bdp_probe", 0),
]


def build_nodes(config: GatewayConfig) -> list[Node]:
    """RESP nodes from `config.nodes`, or embedded engines under `config.data_dir`."""
    if config.nodes:
        return [
            RespNode(url, config.max_ttl_ms, config.node_timeout_ms / 1000) for url in config.nodes
        ]
    nodes: list[Node] = []
    failed: list[str] = []
    for i in range(config.embedded_nodes):
        directory = config.data_dir / f"node-{i}"
        try:
            engine = Engine(
                EngineConfig(
                    dir=directory, appendfsync=config.appendfsync, max_ttl_ms=config.max_ttl_ms
                )
            )
        except (OSError, RuntimeError) as exc:
            # One bad directory must not take the other engines down with it.
            log.error("embedded engine %d (%s) failed to start: %s", i, directory, exc)
            failed.append(f"node {i}: {exc}")
            nodes.append(FailedNode(i, str(exc)))
            continue
        nodes.append(EmbeddedNode(engine, i))
    embedded = [node for node in nodes if isinstance(node, EmbeddedNode)]
    if len(failed) > len(nodes) // 2:
        for node in embedded:
            node.engine.close()
        raise RuntimeError(
            f"{len(failed)} of {len(nodes)} embedded engines failed to start, too many for a "
            "quorum: " + "; ".join(failed)
        )
    if config.appendfsync is FsyncPolicy.ALWAYS:
        # One batch fsyncs the engines in parallel for every call made meanwhile.
        group = GroupCommit([node.engine for node in embedded])
        for slot, node in enumerate(embedded):
            node.group, node.slot = group, slot
    return nodes


class Gateway:
    """One gateway process's worth of parts."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.manager = LockManager(build_nodes(config), config, self.metrics)
        self.server = grpc.aio.server(interceptors=[DecodeErrors()], options=SERVER_OPTIONS)
        self.service = LockService(self.manager)
        pb_grpc.add_LockServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self.service, self.server
        )
        self.health = standard(self.server, SERVICE_NAME)
        self.port = 0
        self.metrics_port = 0
        self._metrics_server: MetricsServer | None = None
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Connect the nodes, bind, start serving; returns the gRPC port."""
        c = self.config
        try:
            await self.manager.start()
            creds = credentials(c.tls_cert, c.tls_key, c.tls_client_ca)
            self.port = bind(self.server, c.listen, creds, "lockd gateway")
            await self.server.start()
            if c.metrics_listen:
                mhost, mport = host_port(c.metrics_listen)
                self._metrics_server = MetricsServer.start(self.metrics.registry, mhost, mport)
                self.metrics_port = self._metrics_server.server_port
        except BaseException:
            await self.manager.close()
            raise
        await mark_serving(self.health, SERVICE_NAME)
        self._poller = asyncio.create_task(self._poll_nodes())
        log.info(
            "lockd gateway listening on %s (port %d; %d nodes, quorum %d)",
            c.listen,
            self.port,
            len(self.manager.nodes),
            self.manager.quorum,
        )
        return self.port

    async def _poll_nodes(self) -> None:
        """Keep node metrics fresh and notice restarted Redis nodes (run id changes)."""
        while True:
            try:
                await self.manager.cluster()
            except Exception:
                log.exception("node health poll failed")
            await asyncio.sleep(HEALTH_POLL_S)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, finish in-flight calls, close the nodes."""
        await self.health.enter_graceful_shutdown()
        self.service.draining.set()
        self.manager.shut_down()
        await self.service.watch_hub.close()  # watchers move to another gateway now
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.server.stop(self.config.shutdown_grace_s if grace is None else grace)
        await self.service.observers.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        await self.manager.close()
        log.info("lockd gateway stopped")


async def serve(config: GatewayConfig) -> None:
    """Run a gateway until SIGTERM or SIGINT, then stop it gracefully."""
    gateway = Gateway(config)
    await run_until_signal(gateway.start, gateway.stop, "lockd gateway")
