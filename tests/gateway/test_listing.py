"""List over real gRPC: held locks under a prefix, merged from a quorum of nodes, page by
page, on embedded engines, `lockd engine` processes and real Redis."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from lockd.gateway import Gateway, GatewayConfig
from lockd.v1 import lock_service_pb2 as pb
from tests.gateway.helpers import Stub, client, eventually, fails, urls
from tests.gateway.test_nodes import _all_ready, redis_servers
from tests.support import EngineProcess


async def list_all(stub: Stub, prefix: str, page_size: int = 0) -> tuple[list[pb.LockEntry], int]:
    """Every entry of a complete listing, and how many calls it took."""
    entries: list[pb.LockEntry] = []
    token, calls = "", 0
    while True:
        page = await stub.List(pb.ListRequest(prefix=prefix, page_token=token, page_size=page_size))
        entries += page.locks
        calls += 1
        token = page.next_page_token
        if not token:
            return entries, calls


async def _listing(stub: Stub, ttl_ms: int = 5000) -> None:
    leases = {}
    for i in range(12):
        got = await stub.Acquire(
            pb.AcquireRequest(name=f"orders/{i:02}", ttl_ms=ttl_ms, owner=f"w{i}", value=b"v")
        )
        leases[i] = got
    await stub.Acquire(pb.AcquireRequest(name="other/1", ttl_ms=ttl_ms))
    released = await stub.Acquire(pb.AcquireRequest(name="orders/gone", ttl_ms=ttl_ms))
    await stub.Release(pb.ReleaseRequest(name="orders/gone", lease_id=released.lease_id))
    entries, calls = await list_all(stub, "orders/", page_size=5)
    assert calls >= 3
    assert sorted(e.name for e in entries) == [f"orders/{i:02}" for i in range(12)]
    for e in entries:
        i = int(e.name.removeprefix("orders/"))
        assert (e.owner, e.value, e.fencing_token) == (f"w{i}", b"v", leases[i].fencing_token)
        assert 0 < e.ttl_remaining_ms <= ttl_ms and e.acquired_at_ms > 0 and e.waiters == 0
        assert leases[i].lease_id not in e.SerializeToString()
    everything, _ = await list_all(stub, "")
    assert {e.name for e in everything} >= {"other/1", "orders/00"}
    assert (await list_all(stub, "nothing/"))[0] == []


async def test_list_on_embedded_engines(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        await _listing(stub)


async def test_list_on_lockd_engine_processes(engines: list[EngineProcess]) -> None:
    async with client(GatewayConfig(nodes=urls(engines), max_ttl_ms=10_000)) as (_, stub):
        await _listing(stub)


@pytest.mark.redis
async def test_list_on_redis(tmp_path: Path) -> None:
    with redis_servers(tmp_path, 5) as ports:
        nodes = tuple(f"redis://127.0.0.1:{p}" for p in ports)
        async with client(GatewayConfig(nodes=nodes, max_ttl_ms=1000)) as (_, stub):
            await eventually(lambda: _all_ready(stub), timeout=5, interval=0.05)
            await _listing(stub, ttl_ms=1000)


@contextlib.asynccontextmanager
async def _stopped(gateway: Gateway, nodes: list[int]) -> AsyncIterator[None]:
    """Make some embedded engines fail every call (as if down)."""
    saved = {}
    for i in nodes:
        node = gateway.manager.nodes[i]
        saved[i] = node.fcall

        async def down(*args: object) -> object:
            from lockd.gateway.nodes import NodeError

            raise NodeError("down")

        node.fcall = down  # type: ignore[method-assign]
    try:
        yield
    finally:
        for i, fcall in saved.items():
            gateway.manager.nodes[i].fcall = fcall  # type: ignore[method-assign]


async def test_list_with_nodes_down_still_lists_majority_locks(embedded: GatewayConfig) -> None:
    async with client(embedded) as (gateway, stub):
        for i in range(6):
            await stub.Acquire(pb.AcquireRequest(name=f"m/{i}", ttl_ms=5000))
        async with _stopped(gateway, [0, 1]):
            entries, _ = await list_all(stub, "m/", page_size=2)
            assert sorted(e.name for e in entries) == [f"m/{i}" for i in range(6)]
        async with _stopped(gateway, [0, 1, 2]):
            failed = await fails(stub.List(pb.ListRequest(prefix="m/")))
            assert (failed.code, failed.reason) == (
                grpc.StatusCode.UNAVAILABLE,
                "QUORUM_UNAVAILABLE",
            )


async def test_a_node_skipped_once_stays_skipped(embedded: GatewayConfig) -> None:
    """The first node of the walk fails its first scan step (a node slower than the step's
    timeout) and answers again for the later pages' peeks: the locks it holds are still
    listed, by the next node of the walk (they were all missed: the recovered node counted
    as their first holder, though its walk had been given up)."""
    async with client(embedded) as (gateway, stub):
        for i in range(6):
            await stub.Acquire(pb.AcquireRequest(name=f"s/{i}", ttl_ms=5000))
        async with _stopped(gateway, [0]):
            first = await stub.List(pb.ListRequest(prefix="s/", page_size=2))
        entries = list(first.locks)
        token = first.next_page_token
        while token:
            page = await stub.List(pb.ListRequest(prefix="s/", page_token=token, page_size=2))
            entries += page.locks
            token = page.next_page_token
        assert sorted(e.name for e in entries) == [f"s/{i}" for i in range(6)]


async def test_list_bad_requests(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        for request, reason in (
            (pb.ListRequest(page_token="not a token"), "BAD_PAGE"),
            (pb.ListRequest(page_token="_w=="), "BAD_PAGE"),
            (pb.ListRequest(page_size=-1), "BAD_PAGE"),
            (pb.ListRequest(prefix="p" * 257), "BAD_NAME"),
        ):
            failed = await fails(stub.List(request))
            assert (failed.code, failed.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
        await stub.Acquire(pb.AcquireRequest(name="still", ttl_ms=5000))
        assert [e.name for e in (await stub.List(pb.ListRequest(prefix="still"))).locks] == [
            "still"
        ]
