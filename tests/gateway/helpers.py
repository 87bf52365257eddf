"""Helpers for gateway tests: an in-process gateway, stubs, error details, timing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lockd.gateway import Gateway, GatewayConfig
from lockd.v1 import lock_service_pb2 as pb
from lockd.v1 import lock_service_pb2_grpc
from tests.support import EngineProcess

Stub = lock_service_pb2_grpc.LockServiceStub


@contextlib.asynccontextmanager
async def running(config: GatewayConfig) -> AsyncIterator[Gateway]:
    """A started gateway in this event loop, stopped (gracefully, quickly) at the end."""
    gateway = Gateway(dataclasses.replace(config, listen="127.0.0.1:0"))
    await gateway.start()  # closes what it opened if it fails
    try:
        yield gateway
    finally:
        await gateway.stop(grace=0.5)


@contextlib.asynccontextmanager
async def channel(port: int) -> AsyncIterator[grpc.aio.Channel]:
    """An insecure client channel to 127.0.0.1:`port`."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch


@contextlib.asynccontextmanager
async def client(config: GatewayConfig) -> AsyncIterator[tuple[Gateway, Stub]]:
    """A running gateway and a LockService stub connected to it."""
    async with running(config) as gateway, channel(gateway.port) as ch:
        yield gateway, Stub(ch)


@dataclasses.dataclass(frozen=True)
class Failure:
    """What an RPC failed with: code, ErrorInfo reason and metadata, message."""

    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    message: str
    elapsed: float


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The google.rpc.ErrorInfo detail of a failed call, if it has one."""
    status = rpc_status.from_call(err)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


async def fails(call: Awaitable[object]) -> Failure:
    """Await an RPC that must fail; its code, reason, metadata and how long it took."""
    start = time.perf_counter()
    try:
        result = await call
    except grpc.aio.AioRpcError as err:
        elapsed = time.perf_counter() - start
        info = error_info(err)
        if info is not None:
            assert info.domain == "lockd"
        return Failure(
            err.code(),
            info.reason if info else "",
            dict(info.metadata) if info else {},
            err.details() or "",
            elapsed,
        )
    raise AssertionError(f"expected the call to fail, it returned {result!r}")


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.005
) -> None:
    """Poll `check` until it is true (fails after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


async def waiters(stub: Stub, name: str) -> int:
    """Describe's waiter count for `name`."""
    return (await stub.Describe(pb.DescribeRequest(name=name))).waiters


def start_all(engines: list[EngineProcess]) -> list[EngineProcess]:
    """Start engine processes in parallel (each waits until it listens)."""
    with ThreadPoolExecutor(len(engines)) as pool:
        list(pool.map(EngineProcess.start, engines))
    return engines


def urls(engines: list[EngineProcess]) -> tuple[str, ...]:
    """The redis:// URLs of engine processes."""
    return tuple(f"redis://127.0.0.1:{e.port}" for e in engines)
