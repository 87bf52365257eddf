"""Owners and values: stored on the nodes with the grant, shown by Describe (never the
lease id), bounded, on embedded engines and `lockd engine` processes, over real gRPC."""

from __future__ import annotations

import time

import grpc

from lockd.gateway import GatewayConfig
from lockd.v1 import lock_service_pb2 as pb
from tests.gateway.helpers import Stub, client, fails, urls
from tests.support import EngineProcess

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def _owner_round_trip(stub: Stub) -> None:
    before = time.time_ns() // 1_000_000
    got = await stub.Acquire(
        pb.AcquireRequest(name="jobs/7", ttl_ms=5000, owner="web-3/812", value=b"\x00cfg=1")
    )
    after = time.time_ns() // 1_000_000
    d = await stub.Describe(pb.DescribeRequest(name="jobs/7"))
    assert d.held and d.owner == "web-3/812" and d.value == b"\x00cfg=1"
    assert before <= d.acquired_at_ms <= after
    assert d.fencing_counter == got.fencing_token
    assert got.lease_id not in d.SerializeToString()
    # Renewing keeps the record for as long as the lock.
    await stub.Renew(pb.RenewRequest(name="jobs/7", lease_id=got.lease_id, ttl_ms=8000))
    d = await stub.Describe(pb.DescribeRequest(name="jobs/7"))
    assert 5000 < d.ttl_remaining_ms <= 8000 and d.owner == "web-3/812"
    await stub.Release(pb.ReleaseRequest(name="jobs/7", lease_id=got.lease_id))
    d = await stub.Describe(pb.DescribeRequest(name="jobs/7"))
    assert not d.held and (d.owner, d.value, d.acquired_at_ms) == ("", b"", 0)
    # A grant without owner or value shows none, not the previous holder's.
    again = await stub.Acquire(pb.AcquireRequest(name="jobs/7", ttl_ms=5000))
    d = await stub.Describe(pb.DescribeRequest(name="jobs/7"))
    assert d.held and (d.owner, d.value, d.acquired_at_ms) == ("", b"", 0)
    await stub.Release(pb.ReleaseRequest(name="jobs/7", lease_id=again.lease_id))


async def test_describe_shows_owner_value_and_acquired_at(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        await _owner_round_trip(stub)


async def test_owner_on_lockd_engine_processes(engines: list[EngineProcess]) -> None:
    config = GatewayConfig(nodes=urls(engines), max_ttl_ms=10_000)
    async with client(config) as (_, stub):
        await _owner_round_trip(stub)


async def test_any_gateway_describes_the_owner(engines: list[EngineProcess]) -> None:
    config = GatewayConfig(nodes=urls(engines), max_ttl_ms=10_000)
    async with client(config) as (_, first), client(config) as (_, second):
        await first.Acquire(pb.AcquireRequest(name="shared", ttl_ms=5000, owner="pod-a"))
        d = await second.Describe(pb.DescribeRequest(name="shared"))
        assert d.held and d.owner == "pod-a"


async def test_oversized_owner_or_value_is_refused(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        for request, reason in (
            (pb.AcquireRequest(name="x", ttl_ms=1000, owner="o" * 129), "BAD_OWNER"),
            (pb.AcquireRequest(name="x", ttl_ms=1000, owner="é" * 65), "BAD_OWNER"),
            (pb.AcquireRequest(name="x", ttl_ms=1000, value=b"v" * 1025), "BAD_VALUE"),
            (pb.AcquireRequest(name="", ttl_ms=1000, owner="o"), "BAD_NAME"),
        ):
            failed = await fails(stub.Acquire(request))
            assert (failed.code, failed.reason) == (INVALID, reason)
            assert "128" in failed.message or "1024" in failed.message or reason == "BAD_NAME"
        assert not (await stub.Describe(pb.DescribeRequest(name="x"))).held
        # The largest allowed still work, and the gateway keeps serving.
        await stub.Acquire(
            pb.AcquireRequest(name="x", ttl_ms=1000, owner="o" * 128, value=b"v" * 1024)
        )
        d = await stub.Describe(pb.DescribeRequest(name="x"))
        assert (d.owner, d.value) == ("o" * 128, b"v" * 1024)
