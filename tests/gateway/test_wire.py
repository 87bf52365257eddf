"""Requests that are not valid protobuf, sent as raw bytes the way a foreign client could:
INVALID_ARGUMENT with reason BAD_REQUEST naming the problem, and the server goes on."""

from __future__ import annotations

from pathlib import Path

import grpc
from google.rpc import error_details_pb2, status_pb2

from lockd.gateway import GatewayConfig
from lockd.store import StoreConfig, create_server
from lockd.v1 import lock_service_pb2 as pb
from tests.gateway.helpers import Stub, channel, error_info, running

BAD_UTF8_NAME = (
    pb.AcquireRequest(name="ab", ttl_ms=5000).SerializeToString().replace(b"ab", b"\xff\xfe")
)
CORRUPT = b"\x0a\x10abc"  # field 1, length 16, but only 3 bytes follow


def raw_unary(ch: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return ch.unary_unary(method)  # bytes in, bytes out


async def bad_request(call: object) -> tuple[str, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        info = error_info(err)
        assert info is not None and info.domain == "lockd"
        details = err.details() or ""
        assert "class" not in details and "DecodeError" not in details, details
        return info.reason, details
    raise AssertionError("the call succeeded")


async def test_undecodable_unary_requests_get_bad_request(embedded: GatewayConfig) -> None:
    async with running(embedded) as gateway, channel(gateway.port) as ch:
        acquire = raw_unary(ch, "/lockd.v1.LockService/Acquire")
        reason, details = await bad_request(acquire(BAD_UTF8_NAME))
        assert reason == "BAD_REQUEST"
        assert "lockd.v1.AcquireRequest" in details and "'name'" in details
        assert "UTF-8" in details
        reason, details = await bad_request(acquire(CORRUPT))
        assert reason == "BAD_REQUEST" and "could not be decoded" in details
        # The gateway goes on serving.
        granted = await Stub(ch).Acquire(pb.AcquireRequest(name="after", ttl_ms=5000))
        assert granted.fencing_token > 0


async def test_undecodable_session_message_ends_the_stream(embedded: GatewayConfig) -> None:
    async with running(embedded) as gateway, channel(gateway.port) as ch:
        good = pb.SessionRequest(id=1, acquire=pb.AcquireRequest(name="s", ttl_ms=5000))
        bad = pb.SessionRequest(id=2, acquire=pb.AcquireRequest(name="xy", ttl_ms=5000))
        bad_bytes = bad.SerializeToString().replace(b"xy", b"\xff\xfe")
        session = ch.stream_stream("/lockd.v1.LockService/Session")
        call = session(iter([good.SerializeToString(), bad_bytes]))
        answers = [pb.SessionResponse.FromString(raw) async for raw in _read(call)]
        assert [a.id for a in answers] == [1] and answers[0].acquire.fencing_token > 0
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = await call.details()
        assert "'acquire.name'" in details, details
        trailers = dict(await call.trailing_metadata() or ())
        status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert (info.reason, info.domain) == ("BAD_REQUEST", "lockd")


async def _read(call: grpc.aio.StreamStreamCall) -> object:
    try:
        async for raw in call:
            yield raw
    except grpc.aio.AioRpcError:
        return


async def test_undecodable_store_requests_get_bad_request(tmp_path: Path) -> None:
    server, port = await create_server(StoreConfig(tmp_path, "127.0.0.1:0"))
    try:
        async with channel(port) as ch:
            write = raw_unary(ch, "/lockd.v1.FencedStore/Write")
            reason, details = await bad_request(write(CORRUPT))
            assert reason == "BAD_REQUEST" and "lockd.v1.WriteRequest" in details
    finally:
        await server.stop(0.5)
