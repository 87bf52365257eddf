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
import signal
from pathlib import Path
from threading import Thread
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from lockd.engine import Engine, EngineConfig
from lockd.gateway.config import GatewayConfig
from lockd.gateway.locks import LockManager
from lockd.gateway.metrics import Metrics
from lockd.gateway.nodes import EmbeddedNode, FailedNode, Node, RespNode
from lockd.gateway.service import LockService
from lockd.v1 import lock_service_pb2 as pb
from lockd.v1 import lock_service_pb2_grpc as pb_grpc

__all__ = ["Gateway", "build_nodes", "serve"]

log = logging.getLogger("lockd.gateway")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LockService"].full_name
HEALTH_POLL_S = 1.0


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
    if len(failed) > len(nodes) // 2:
        for node in nodes:
            if isinstance(node, EmbeddedNode):
                node.engine.close()
        raise RuntimeError(
            f"{len(failed)} of {len(nodes)} embedded engines failed to start, too many for a "
            "quorum: " + "; ".join(failed)
        )
    return nodes


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"listen address {listen!r} must look like HOST:PORT")
    return host.strip("[]"), int(port)


class Gateway:
    """One gateway process's worth of parts."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.manager = LockManager(build_nodes(config), config, self.metrics)
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server()
        self.service = LockService(self.manager)
        pb_grpc.add_LockServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self.service, self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = 0
        self.metrics_port = 0
        self._metrics_server: tuple[WSGIServer, Thread] | None = None
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Connect the nodes, bind, start serving; returns the gRPC port."""
        await self.manager.start()
        host, port = _host_port(self.config.listen)
        address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        creds = self._credentials()
        if creds is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, creds)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await self.server.start()
        if self.config.metrics_listen:
            mhost, mport = _host_port(self.config.metrics_listen)
            self._metrics_server = start_http_server(mport, mhost, self.metrics.registry)
            self.metrics_port = self._metrics_server[0].server_port
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._poller = asyncio.create_task(self._poll_nodes())
        log.info(
            "lockd gateway listening on %s:%d (%d nodes, quorum %d)",
            host,
            self.port,
            len(self.manager.nodes),
            self.manager.quorum,
        )
        return self.port

    def _credentials(self) -> grpc.ServerCredentials | None:
        c = self.config
        if c.tls_cert is None and c.tls_key is None:
            if c.tls_client_ca is not None:
                raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if c.tls_cert is None or c.tls_key is None:
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        ca = Path(c.tls_client_ca).read_bytes() if c.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(Path(c.tls_key).read_bytes(), Path(c.tls_cert).read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

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
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.server.stop(self.config.shutdown_grace_s if grace is None else grace)
        if self._metrics_server is not None:
            self._metrics_server[0].shutdown()
            self._metrics_server[0].server_close()
        await self.manager.close()
        log.info("lockd gateway stopped")


async def serve(config: GatewayConfig) -> None:
    """Run a gateway until SIGTERM or SIGINT."""
    gateway = Gateway(config)
    try:
        await gateway.start()
    except BaseException:
        await gateway.manager.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("lockd gateway shutting down (grace %.1f s)", config.shutdown_grace_s)
    await gateway.stop()
