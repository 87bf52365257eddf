"""Watch over real gRPC: current state first, then each change once and in order, from
any gateway sharing the nodes, on the three deployment shapes; prefixes; a watcher that
never reads is cut off while the gateway keeps serving; bad input."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from lockd.gateway import GatewayConfig
from lockd.v1 import lock_service_pb2 as pb
from tests.gateway.helpers import Stub, channel, client, error_info, fails, running, urls
from tests.gateway.test_nodes import redis_servers
from tests.support import EngineProcess

E = pb.WatchEvent
TOKEN = "watch-admin-token"
ADMIN = (("authorization", f"Bearer {TOKEN}"),)
WAIT = 3000  # ms an Acquire may wait: on a loaded machine a node may answer late


async def _next(events: AsyncIterator[pb.WatchEvent], timeout: float = 5.0) -> pb.WatchEvent:
    return await asyncio.wait_for(anext(events), timeout)


async def _watch(stub: Stub, name: str, prefix: bool = False) -> AsyncIterator[pb.WatchEvent]:
    call = stub.Watch(pb.WatchRequest(name=name, prefix=prefix))
    return aiter(call)


def _acquiring(name: str, ttl_ms: int, owner: str = "") -> pb.AcquireRequest:
    return pb.AcquireRequest(name=name, ttl_ms=ttl_ms, owner=owner, wait_ms=WAIT)


async def _lifecycle(watcher: Stub, actor: Stub, name: str) -> None:
    """Acquire, release, expire and force-release `name` through `actor`; `watcher`'s
    stream shows each change once, in order, with tokens and owners."""
    events = await _watch(watcher, name)
    state = await _next(events)
    assert (state.type, state.name, state.held) == (E.STATE, name, False)
    assert (await _next(events)).type == E.SYNCED

    first = await actor.Acquire(_acquiring(name, 5000, "pod-a"))
    got = await _next(events)
    assert (got.type, got.name, got.fencing_token, got.owner) == (
        E.ACQUIRED,
        name,
        first.fencing_token,
        "pod-a",
    )
    assert 0 < got.ttl_remaining_ms <= 5000
    await actor.Release(pb.ReleaseRequest(name=name, lease_id=first.lease_id))
    got = await _next(events)
    assert (got.type, got.fencing_token) == (E.RELEASED, first.fencing_token)

    short = await actor.Acquire(_acquiring(name, 1000, "pod-b"))
    got = await _next(events)
    assert (got.type, got.fencing_token, got.owner) == (E.ACQUIRED, short.fencing_token, "pod-b")
    got = await _next(events)
    assert (got.type, got.fencing_token) == (E.EXPIRED, short.fencing_token)

    taken = await actor.Acquire(_acquiring(name, 5000, "dead-pod"))
    got = await _next(events)
    assert (got.type, got.fencing_token) == (E.ACQUIRED, taken.fencing_token)
    await actor.ForceRelease(pb.ForceReleaseRequest(name=name), metadata=ADMIN)
    got = await _next(events)
    assert (got.type, got.fencing_token) == (E.FORCE_RELEASED, taken.fencing_token)
    assert first.fencing_token < short.fencing_token < taken.fencing_token

    # A renewed lock does not expire: the timer finds it renewed and waits again.
    kept = await actor.Acquire(_acquiring(name, 2000))
    assert (await _next(events)).type == E.ACQUIRED
    for _ in range(6):  # 2.4 s: past the first TTL
        await asyncio.sleep(0.4)
        await actor.Renew(pb.RenewRequest(name=name, lease_id=kept.lease_id, ttl_ms=2000))
    await actor.Release(pb.ReleaseRequest(name=name, lease_id=kept.lease_id))
    got = await _next(events)
    assert (got.type, got.fencing_token) == (E.RELEASED, kept.fencing_token)


def _with_token(config: GatewayConfig, tmp_path: Path) -> GatewayConfig:
    path = tmp_path / "admin-token"
    path.write_text(TOKEN)
    return dataclasses.replace(config, admin_token_file=path)


async def test_watch_a_name_on_embedded_engines(embedded: GatewayConfig, tmp_path: Path) -> None:
    async with client(_with_token(embedded, tmp_path)) as (_, stub):
        await _lifecycle(stub, stub, "orders/42")


async def test_watch_from_another_gateway(engines: list[EngineProcess], tmp_path: Path) -> None:
    config = _with_token(GatewayConfig(nodes=urls(engines), max_ttl_ms=10_000), tmp_path)
    async with client(config) as (_, a), client(config) as (_, b):
        await _lifecycle(b, a, "jobs/nightly")


@pytest.mark.redis
async def test_watch_over_five_redis_servers(tmp_path: Path) -> None:
    with redis_servers(tmp_path, 5) as ports:
        nodes = tuple(f"redis://127.0.0.1:{p}" for p in ports)
        config = _with_token(GatewayConfig(nodes=nodes, max_ttl_ms=5000), tmp_path)
        async with client(config) as (_, a), client(config) as (_, b):
            # A young Redis counts as restarting for max-TTL: wait until it grants.
            warm = pb.AcquireRequest(name="warm", ttl_ms=100, wait_ms=8000)
            held = await a.Acquire(warm, timeout=10)
            await a.Release(pb.ReleaseRequest(name="warm", lease_id=held.lease_id))
            await _lifecycle(b, a, "redis/lock")


async def test_watch_a_prefix(engines: list[EngineProcess]) -> None:
    config = GatewayConfig(nodes=urls(engines), max_ttl_ms=10_000)
    async with client(config) as (_, a), client(config) as (_, b):
        before = {}
        for name in ("orders/1", "orders/2", "other/1"):
            before[name] = await a.Acquire(_acquiring(name, 8000, name))
        events = await _watch(b, "orders/", prefix=True)
        states = [await _next(events), await _next(events)]
        assert sorted((s.type, s.name, s.held, s.owner) for s in states) == [
            (E.STATE, "orders/1", True, "orders/1"),
            (E.STATE, "orders/2", True, "orders/2"),
        ]
        assert {s.name: s.fencing_token for s in states} == {
            n: before[n].fencing_token for n in ("orders/1", "orders/2")
        }
        synced = await _next(events)
        assert (synced.type, synced.name) == (E.SYNCED, "orders/")
        # Changes under the prefix only, in order.
        await a.Acquire(_acquiring("other/2", 8000))
        await a.Release(pb.ReleaseRequest(name="orders/1", lease_id=before["orders/1"].lease_id))
        new = await a.Acquire(_acquiring("orders/3", 8000, "x"))
        got = [await _next(events), await _next(events)]
        assert [(g.type, g.name) for g in got] == [
            (E.RELEASED, "orders/1"),
            (E.ACQUIRED, "orders/3"),
        ]
        assert got[1].fencing_token == new.fencing_token and got[1].owner == "x"


async def test_a_watcher_that_never_reads_is_cut_off(embedded: GatewayConfig) -> None:
    config = dataclasses.replace(embedded, watch_queue=8)
    async with running(config) as gateway:
        # No BDP probing: the stream's flow-control window stays at its initial 64 KiB.
        options = [("grpc.http2.bdp_probe", 0)]
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}", options=options) as slow_ch,
            channel(gateway.port) as ch,
        ):
            stub, slow = Stub(ch), Stub(slow_ch)
            stalled = slow.Watch(pb.WatchRequest(name="busy"))
            await asyncio.wait_for(stalled.initial_metadata(), 5)
            owner = "o" * 128
            value = b"v" * 1024  # about 1.2 KB per ACQUIRED: the window fills quickly
            cycles = 0
            while gateway.service.watch_hub.watchers and cycles < 2000:
                request = _acquiring("busy", 5000, owner)
                request.value = value
                held = await stub.Acquire(request)
                await stub.Release(pb.ReleaseRequest(name="busy", lease_id=held.lease_id))
                cycles += 1
            assert gateway.service.watch_hub.watchers == 0, "the watcher was never cut off"
            assert gateway.service.watch_hub.tracked == 0
            metrics = gateway.metrics.registry
            assert metrics.get_sample_value("lockd_watchers_cut_off_total") == 1
            assert metrics.get_sample_value("lockd_watchers") == 0
            # Reading now: the events that were in flight, then the status.
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                async for _ in stalled:
                    pass
            assert cut.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info = error_info(cut.value)
            assert info is not None and info.reason == "WATCHER_TOO_SLOW"
            # The gateway keeps serving, and a new watch starts from the current state.
            events = await _watch(stub, "busy")
            state = await _next(events)
            assert (state.type, state.held) == (E.STATE, False)
            assert (await _next(events)).type == E.SYNCED
            held = await stub.Acquire(_acquiring("busy", 5000))
            got = await _next(events)
            assert (got.type, got.fencing_token) == (E.ACQUIRED, held.fencing_token)


async def test_bad_watch_requests(embedded: GatewayConfig) -> None:
    config = dataclasses.replace(embedded, max_watchers=1)
    async with client(config) as (_, stub):
        for request in (pb.WatchRequest(name=""), pb.WatchRequest(name="x" * 257)):
            failed = await fails(_first(stub, request))
            assert (failed.code, failed.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_NAME")
        failed = await fails(_first(stub, pb.WatchRequest(name="p" * 257, prefix=True)))
        assert failed.reason == "BAD_NAME"
        # An empty prefix watches everything.
        events = await _watch(stub, "", prefix=True)
        assert (await _next(events)).type == E.SYNCED
        failed = await fails(_first(stub, pb.WatchRequest(name="more")))
        assert (failed.code, failed.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TOO_MANY_WATCHERS",
        )
        # Still serving.
        await stub.Acquire(_acquiring("fine", 1000))
        assert (await _next(events)).type == E.ACQUIRED


async def _first(stub: Stub, request: pb.WatchRequest) -> pb.WatchEvent:
    return await anext(aiter(stub.Watch(request)))


async def test_watch_without_a_quorum_is_unavailable(engines: list[EngineProcess]) -> None:
    config = GatewayConfig(nodes=urls(engines), max_ttl_ms=10_000, node_timeout_ms=100)
    async with client(config) as (_, stub):
        for engine in engines[:3]:
            engine.kill()
        failed = await fails(_first(stub, pb.WatchRequest(name="lonely")))
        assert (failed.code, failed.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "QUORUM_UNAVAILABLE",
        )
        failed = await fails(_first(stub, pb.WatchRequest(name="", prefix=True)))
        assert failed.code == grpc.StatusCode.UNAVAILABLE
        status = await stub.ClusterStatus(pb.ClusterStatusRequest())  # still serving
        assert not status.quorum_available
