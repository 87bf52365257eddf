"""`lockd store`: the `lockd.v1.FencedStore` gRPC server.

`StoreServer(config)` builds one; `start()` opens the store, binds (port 0 picks one) and
returns the port, so tests can run several in-process; `stop()` is the graceful
shutdown: health NOT_SERVING, in-flight calls finish within the grace period, queued
writes are committed, the log is closed. `create_server(config)` does both first steps;
`serve(listen=..., directory=...)` runs one until SIGTERM or SIGINT.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from lockd.admin import admin_identity
from lockd.errors import ErrorReason, LockdError, abort, invalid
from lockd.rpc import DecodeErrors, bind, credentials, mark_serving, standard
from lockd.serving import host_port, run_until_signal
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
    tls_cert: Path | None = None
    """PEM certificate chain: serve over TLS (with `tls_key`)."""
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    """PEM CA bundle: require client certificates signed by it (mutual TLS)."""
    admin_token_file: Path | None = None
    """File holding the admin token ResetFence accepts (read at each use)."""
    admin_cns: tuple[str, ...] = ()
    """Client certificate CNs (verified by `tls_client_ca`) allowed to ResetFence."""


class FencedStoreService(pb_grpc.FencedStoreServicer):
    """`lockd.v1.FencedStore` over a `FencedStore`."""

    def __init__(self, store: FencedStore, config: StoreConfig) -> None:
        self.store = store
        self.config = config

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

    async def ResetFence(
        self, request: pb.ResetFenceRequest, context: Context
    ) -> pb.ResetFenceResponse:
        try:
            who = admin_identity(self.config, context, "ResetFence")
            replaced = await self.store.reset_fence(
                request.resource, f"{who} from {context.peer()}"
            )
        except LockdError as exc:
            await abort(context, exc)
        return pb.ResetFenceResponse(replaced_token=replaced)


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
        # A CompareAndSet carries two values; leave room for them and the rest.
        limit = 2 * config.max_value_bytes + (64 << 10)
        self.server = grpc.aio.server(
            interceptors=[DecodeErrors()],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
        )
        pb_grpc.add_FencedStoreServicer_to_server(  # type: ignore[no-untyped-call]
            FencedStoreService(self.store, config), self.server
        )
        self.health = standard(self.server, SERVICE_NAME)
        self.port = 0

    async def start(self) -> int:
        """Open the store (replaying its log), bind, start serving; returns the port."""
        c = self.config
        host_port(c.listen)  # a bad address fails before the log is opened
        await self.store.open()
        try:
            creds = credentials(c.tls_cert, c.tls_key, c.tls_client_ca)
            self.port = bind(self.server, c.listen, creds, "lockd store")
            await self.server.start()
        except BaseException:
            await self.store.close()
            raise
        await mark_serving(self.health, SERVICE_NAME)
        log.info(
            "lockd store listening on %s (port %d; %s: %d keys, %d resources)",
            c.listen,
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


async def serve(config: StoreConfig) -> None:
    """Run a store server until SIGTERM or SIGINT, then stop it gracefully."""
    if not config.check_tokens:
        log.warning("UNSAFE: the token check is off; stale writers are accepted")
    server = StoreServer(config)
    await run_until_signal(server.start, server.stop, "lockd store")
