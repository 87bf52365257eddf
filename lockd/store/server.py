"""`lockd store`: the `lockd.v1.FencedStore` gRPC server.

`StoreServer(config)` builds one; `start()` opens the store, binds (port 0 picks one) and
returns the port, so tests can run several in-process; `stop()` is the graceful
shutdown: health NOT_SERVING, in-flight calls finish within the grace period, queued
writes are committed, the log is closed. `create_server(config)` does both first steps;
`serve(listen=..., directory=...)` runs one until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lockd.errors import ErrorReason, LockdError, abort, invalid
from lockd.store.fenced import DEFAULT_COMPACT_MIN_BYTES, DEFAULT_MAX_VALUE_BYTES, FencedStore
from lockd.v1 import fenced_store_pb2 as pb
from lockd.v1 import fenced_store_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_LISTEN",
    "FencedStoreService",
    "StoreConfig",
    "StoreServer",
    "create_server",
    "serve",
]

log = logging.getLogger("lockd.store")

DEFAULT_LISTEN = "127.0.0.1:7500"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FencedStore"].full_name
Context: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type hints)


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """Settings of one store server."""

    directory: Path
    listen: str = DEFAULT_LISTEN
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES
    shutdown_grace_s: float = 5.0
    check_tokens: bool = True
    """False is UNSAFE: writes with stale tokens are accepted (the harness's control run)."""


class FencedStoreService(pb_grpc.FencedStoreServicer):
    """`lockd.v1.FencedStore` over a `FencedStore`."""

    def __init__(self, store: FencedStore) -> None:
        self.store = store

    async def Write(self, request: pb.WriteRequest, context: Context) -> pb.WriteResponse:
        r = request
        try:
            highest = await self.store.write(r.resource, r.key, r.value, r.token)
        except LockdError as exc:
            await abort(context, exc)
        return pb.WriteResponse(highest_token=highest)

    async def Read(self, request: pb.ReadRequest, context: Context) -> pb.ReadResponse:
        try:
            value, highest = self.store.read(request.resource, request.key)
        except LockdError as exc:
            await abort(context, exc)
        return pb.ReadResponse(value=value or b"", found=value is not None, highest_token=highest)

    async def CompareAndSet(
        self, request: pb.CompareAndSetRequest, context: Context
    ) -> pb.CompareAndSetResponse:
        r = request
        try:
            if r.expected_absent and r.expected:
                raise invalid(
                    ErrorReason.BAD_REQUEST, "expected must be empty when expected_absent is set"
                )
            expected = None if r.expected_absent else r.expected
            highest = await self.store.compare_and_set(
                r.resource, r.key, expected, r.value, r.token
            )
        except LockdError as exc:
            await abort(context, exc)
        return pb.CompareAndSetResponse(highest_token=highest)


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"listen address {listen!r} must look like HOST:PORT")
    return host.strip("[]"), int(port)


class StoreServer:
    """One store process's worth of parts: the store, the gRPC server, health."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.store = FencedStore(
            Path(config.directory),
            config.max_value_bytes,
            config.compact_min_bytes,
            check_tokens=config.check_tokens,
        )
        self.health = health.aio.HealthServicer()
        # A CompareAndSet carries two values; leave room for them and the rest.
        limit = 2 * config.max_value_bytes + (64 << 10)
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ]
        )
        pb_grpc.add_FencedStoreServicer_to_server(  # type: ignore[no-untyped-call]
            FencedStoreService(self.store), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = 0

    async def start(self) -> int:
        """Open the store (replaying its log), bind, start serving; returns the port."""
        host, port = _host_port(self.config.listen)
        await self.store.open()
        try:
            address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
            self.port = self.server.add_insecure_port(address)
            if self.port == 0:
                raise OSError(f"cannot listen on {self.config.listen}")
            await self.server.start()
        except BaseException:
            await self.store.close()
            raise
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "lockd store listening on %s:%d (%s: %d keys, %d resources)",
            host,
            self.port,
            self.config.directory,
            len(self.store.state.values),
            len(self.store.state.highest),
        )
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, finish in-flight calls, commit, close the log."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.shutdown_grace_s if grace is None else grace)
        await self.store.close()
        log.info("lockd store stopped")


async def create_server(config: StoreConfig) -> tuple[StoreServer, int]:
    """A started server and its port (`listen` port 0 picks a free one)."""
    server = StoreServer(config)
    return server, await server.start()


async def serve(
    *,
    listen: str,
    directory: str | os.PathLike[str],
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    check_tokens: bool = True,
) -> None:
    """Run a store server until SIGTERM or SIGINT, then stop it gracefully."""
    config = StoreConfig(Path(directory), listen, max_value_bytes, check_tokens=check_tokens)
    if not check_tokens:
        log.warning("UNSAFE: the token check is off; stale writers are accepted")
    server, _ = await create_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("lockd store shutting down (grace %.1f s)", config.shutdown_grace_s)
        await server.stop()
