"""Channels to one or more gateways: a Session stream per endpoint, failover, retries.

Acquire, Renew and Release travel on one long-lived `Session` stream (about three times
cheaper per call than unary RPCs); Describe and ClusterStatus are unary. When an
endpoint fails (stream broken, connection refused) the next one is tried, with jittered
exponential backoff, but only for calls that are safe to repeat: Renew and Release are
idempotent. An Acquire whose outcome is unknown is not repeated blindly: the gateway
releases a grant it could not deliver on a broken stream, so trying again elsewhere
does not leave a second lease behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from lockd_client.errors import (
    ErrorReason,
    LockError,
    Overloaded,
    Unavailable,
    from_rpc_error,
    from_status,
    reason_name,
)
from lockd_client.v1 import lock_service_pb2 as pb
from lockd_client.v1 import lock_service_pb2_grpc as pb_grpc

__all__ = ["TLS", "Transport"]

_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclasses.dataclass(frozen=True)
class TLS:
    """TLS settings: `ca` to verify the gateway (system roots when None); `cert` and
    `key` to present a client certificate (mutual TLS)."""

    ca: Path | str | None = None
    cert: Path | str | None = None
    key: Path | str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials for these settings."""

        def read(path: Path | str | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


class _StreamBroken(Exception):
    """The Session stream ended; outstanding calls have unknown outcomes."""


class _NotSent(_StreamBroken):
    """The stream failed before the request went out: safe to send it elsewhere."""


class _Session:
    """One Session stream: request ids to futures."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._call = pb_grpc.LockServiceStub(channel).Session()  # type: ignore[no-untyped-call]
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[pb.SessionResponse]] = {}
        self._abandoned: dict[int, str] = {}  # acquisitions whose caller left: id -> name
        self._give_backs: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self.broken: BaseException | None = None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self._call:
                future = self._waiting.pop(response.id, None)
                if future is not None and not future.done():
                    future.set_result(response)
                elif response.id in self._abandoned:
                    self._give_back(self._abandoned.pop(response.id), response)
            self.broken = _StreamBroken("the gateway closed the session")
        except BaseException as exc:  # every pending call must hear of it
            self.broken = exc
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(_StreamBroken(str(self.broken)))
        self._waiting.clear()

    async def call(self, timeout: float, **request: Any) -> pb.SessionResponse:
        if self.broken is not None:
            raise _NotSent(str(self.broken))
        rid = next(self._ids)
        future: asyncio.Future[pb.SessionResponse] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        delivered = False
        try:
            async with asyncio.timeout(timeout):  # the write too: it waits for a connection
                try:
                    async with self._lock:  # one writer at a time on a stream
                        await self._call.write(pb.SessionRequest(id=rid, **request))
                except (
                    grpc.aio.AioRpcError,
                    grpc.aio.UsageError,
                    asyncio.InvalidStateError,  # the stream ended; the reader has not seen it yet
                ) as exc:
                    raise _NotSent(str(exc)) from exc
                response = await asyncio.shield(future)
                delivered = True
                return response
        finally:
            self._waiting.pop(rid, None)
            if not delivered and "acquire" in request:
                self._abandon(rid, request["acquire"].name, future)

    def _abandon(self, rid: int, name: str, future: asyncio.Future[pb.SessionResponse]) -> None:
        """The caller of an Acquire left (cancelled, timed out) without its answer: a
        grant that arrives anyway is released, not left to block the lock for a TTL."""
        if not future.done():
            if self.broken is None:  # a broken stream's grants are released by the gateway
                self._abandoned[rid] = name
        elif not future.cancelled() and future.exception() is None:
            self._give_back(name, future.result())

    def _give_back(self, name: str, response: pb.SessionResponse) -> None:
        if response.WhichOneof("result") != "acquire":
            return
        release = pb.ReleaseRequest(name=name, lease_id=response.acquire.lease_id)

        async def send() -> None:
            with contextlib.suppress(Exception):
                await self.call(5.0, release=release)

        task = asyncio.create_task(send())
        self._give_backs.add(task)
        task.add_done_callback(self._give_backs.discard)

    async def close(self) -> None:
        self._call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def _describe(exc: BaseException | None) -> str:
    """A one-line reason for a transport failure."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, _StreamBroken) and isinstance(exc.__cause__, grpc.aio.AioRpcError):
        return _describe(exc.__cause__)
    return str(exc) or type(exc).__name__


class _Endpoint:
    def __init__(self, target: str, tls: TLS | None) -> None:
        self.target = target
        self.tls = tls
        self.channel: grpc.aio.Channel | None = None
        self.session: _Session | None = None

    def stub(self) -> pb_grpc.LockServiceStub:
        return pb_grpc.LockServiceStub(self._channel())  # type: ignore[no-untyped-call]

    def _channel(self) -> grpc.aio.Channel:
        if self.channel is None:
            if self.tls is None:
                self.channel = grpc.aio.insecure_channel(self.target, _CHANNEL_OPTIONS)
            else:
                self.channel = grpc.aio.secure_channel(
                    self.target, self.tls.credentials(), _CHANNEL_OPTIONS
                )
        return self.channel

    def get_session(self) -> _Session:
        if self.session is None or self.session.broken is not None:
            self.session = _Session(self._channel())
        return self.session

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.channel is not None:
            await self.channel.close()
            self.channel = None


class Transport:
    """Calls on whichever endpoint currently works."""

    def __init__(
        self, endpoints: Sequence[str], tls: TLS | None, timeout: float, retries: int = 3
    ) -> None:
        if not endpoints:
            raise ValueError("at least one gateway endpoint is needed")
        self.endpoints = [_Endpoint(e, tls) for e in endpoints]
        self.timeout = timeout
        self.retries = retries
        self._current = 0
        self._rng = random.Random()

    @property
    def endpoint(self) -> str:
        """The endpoint calls currently go to."""
        return self.endpoints[self._current].target

    def _fail_over(self, failed: _Endpoint) -> None:
        if self.endpoints[self._current] is failed:
            self._current = (self._current + 1) % len(self.endpoints)

    async def session_call(
        self, kind: str, message: Any, *, name: str, timeout: float, repeatable: bool
    ) -> Any:
        """Send one Acquire/Renew/Release on a Session; returns the response message."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        tries = self.retries * len(self.endpoints)
        last: BaseException | None = None
        for attempt in range(tries):
            endpoint = self.endpoints[self._current]
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                response = await endpoint.get_session().call(remaining, **{kind: message})
            except (_StreamBroken, grpc.aio.AioRpcError, OSError) as exc:
                last = exc
                self._fail_over(endpoint)
                if not repeatable and not isinstance(exc, _NotSent):
                    raise Unavailable(
                        f"lost the connection to {endpoint.target} mid-call "
                        f"({_describe(exc)}); the gateway releases an acquisition it could "
                        "not deliver",
                        name=name,
                        reason=reason_name(ErrorReason.GATEWAY_UNREACHABLE),
                    ) from exc
                await asyncio.sleep(min(remaining, self._backoff(attempt)))
                continue
            except TimeoutError as exc:
                raise Unavailable(
                    f"no answer from {endpoint.target} within {timeout:.3f} s",
                    name=name,
                    reason=reason_name(ErrorReason.TIMEOUT),
                ) from exc
            if response.WhichOneof("result") == "error":
                e = response.error
                raise from_status(e.code, e.message, e.reason, e.metadata, name)
            return getattr(response, kind)
        raise Unavailable(
            f"no gateway answered (last: {_describe(last)})",
            name=name,
            reason=reason_name(ErrorReason.GATEWAY_UNREACHABLE),
        )

    async def unary(
        self,
        method: str,
        message: Any,
        *,
        name: str | None = None,
        timeout: float | None = None,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> Any:
        """A unary call (Describe, List, ...), failing over between endpoints."""
        last: LockError | None = None
        for attempt in range(self.retries * len(self.endpoints)):
            endpoint = self.endpoints[self._current]
            try:
                return await getattr(endpoint.stub(), method)(
                    message, timeout=timeout or self.timeout, metadata=metadata
                )
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc, name)
                if exc.code() != grpc.StatusCode.UNAVAILABLE or error.reason not in (
                    "",
                    reason_name(ErrorReason.GATEWAY_UNREACHABLE),
                ):
                    raise error from exc
                last = error
                self._fail_over(endpoint)
                await asyncio.sleep(self._backoff(attempt))
        assert last is not None
        raise last

    async def stream(
        self, method: str, message: Any, *, name: str | None = None
    ) -> AsyncIterator[Any]:
        """A server stream (Observe) that carries on at the next endpoint when its
        gateway cannot be reached or ends it (draining); other errors are raised."""
        attempt = 0
        while True:
            endpoint = self.endpoints[self._current]
            try:
                async for response in self.server_stream(method, message, name=name):
                    attempt = 0
                    yield response
            except Unavailable as exc:
                if isinstance(exc, Overloaded) or attempt >= self.retries * len(self.endpoints):
                    raise
                attempt += 1
            else:
                self._fail_over(endpoint)
            await asyncio.sleep(self._backoff(attempt))

    async def server_stream(
        self, method: str, message: Any, *, name: str | None = None
    ) -> AsyncIterator[Any]:
        """A server-streaming call (Watch) on the current endpoint; moves to the next
        endpoint when it cannot be reached (the caller starts the call again)."""
        endpoint = self.endpoints[self._current]
        call = getattr(endpoint.stub(), method)(message)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc, name)
            if isinstance(error, Unavailable) and not isinstance(error, Overloaded):
                self._fail_over(endpoint)
            raise error from exc
        finally:
            call.cancel()

    def backoff(self, attempt: int) -> float:
        """Jittered exponential delay before retry `attempt` (0-based), in seconds."""
        return self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        delay = min(1.0, 0.05 * (1 << min(attempt, 10)))
        return delay / 2 + self._rng.random() * delay / 2

    async def close(self) -> None:
        """Close every channel."""
        await asyncio.gather(*(e.close() for e in self.endpoints), return_exceptions=True)
