"""The gateway over RESP nodes: five `lockd engine` processes (some killed), two
gateways sharing them, and five real redis-servers (unsafe ones refused)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from lockd.gateway import Gateway, GatewayConfig
from lockd.gateway.nodes import UnsafeNodeError
from lockd.v1 import lock_service_pb2 as pb
from tests.gateway.helpers import (
    Stub,
    channel,
    client,
    eventually,
    fails,
    running,
    start_all,
    urls,
    waiters,
)
from tests.support import EngineProcess, redis_server, redis_server_binary


async def round_trip(stub: Stub, name: str, released: int = 5, ttl_ms: int = 5000) -> int:
    got = await stub.Acquire(pb.AcquireRequest(name=name, ttl_ms=ttl_ms, wait_ms=1000))
    assert len(got.lease_id) == 16 and 0 < got.validity_ms < ttl_ms
    renewed = await stub.Renew(pb.RenewRequest(name=name, lease_id=got.lease_id))
    assert 0 < renewed.validity_ms < ttl_ms
    d = await stub.Describe(pb.DescribeRequest(name=name))
    assert d.held and d.nodes_holding == released
    r = await stub.Release(pb.ReleaseRequest(name=name, lease_id=got.lease_id))
    assert r.nodes_released == released
    return got.fencing_token


async def test_five_engines_minority_down_grants_majority_down_refuses(
    engines: list[EngineProcess],
) -> None:
    config = GatewayConfig(nodes=urls(engines), max_ttl_ms=10_000, node_timeout_ms=1000)
    async with client(config) as (_, stub):
        status = await stub.ClusterStatus(pb.ClusterStatusRequest())
        assert [n.mode for n in status.nodes] == [pb.NODE_MODE_LOCKD_ENGINE] * 5
        assert [n.address for n in status.nodes] == list(config.nodes)
        assert status.quorum == 3 and status.quorum_available
        tokens = [await round_trip(stub, "n") for _ in range(3)]

        engines[0].kill()
        engines[3].kill()
        tokens += [await round_trip(stub, "n", released=3) for _ in range(3)]
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
        d = await stub.Describe(pb.DescribeRequest(name="n"))
        assert d.nodes_answered == 3 and d.fencing_counter == tokens[-1]
        start = time.perf_counter()
        status = await stub.ClusterStatus(pb.ClusterStatusRequest())
        assert time.perf_counter() - start < 1.0, "ClusterStatus is slow with nodes down"
        assert [n.reachable for n in status.nodes] == [False, True, True, False, True]
        assert status.nodes[0].error and status.quorum_available

        held = await stub.Acquire(pb.AcquireRequest(name="h", ttl_ms=5000))
        engines[1].kill()
        for wait_ms in (0, 300, 800):
            refused = await fails(
                stub.Acquire(pb.AcquireRequest(name="n", ttl_ms=5000, wait_ms=wait_ms))
            )
            assert refused.code == grpc.StatusCode.UNAVAILABLE
            assert refused.reason == "QUORUM_UNAVAILABLE"
            assert "quorum" in refused.message
            assert refused.elapsed <= wait_ms / 1000 + 0.3, (wait_ms, refused.elapsed)
        # The RPC deadline bounds the wait as well.
        by_deadline = await fails(
            stub.Acquire(pb.AcquireRequest(name="n", ttl_ms=5000, wait_ms=10_000), timeout=0.4)
        )
        assert by_deadline.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert by_deadline.elapsed <= 0.4 + 0.3
        lost = await fails(stub.Renew(pb.RenewRequest(name="h", lease_id=held.lease_id)))
        assert lost.reason == "LEASE_LOST"
        status = await stub.ClusterStatus(pb.ClusterStatusRequest())
        assert not status.quorum_available

        # Back on their ports after kill -9: they refuse acquisitions for max-TTL + drift.
        back = [engines[0], engines[1], engines[3]]
        for proc in back:
            proc.close()
        await asyncio.to_thread(start_all, back)

        async def restarting() -> bool:
            refused = await fails(stub.Acquire(pb.AcquireRequest(name="n", ttl_ms=5000)))
            if refused.reason == "QUORUM_UNAVAILABLE":
                return False  # not reconnected yet
            assert (refused.code, refused.reason) == (
                grpc.StatusCode.UNAVAILABLE,
                "NODES_RESTARTING",
            )
            assert 0 < int(refused.metadata["retry_after_ms"]) <= 10_102
            return True

        await eventually(restarting, timeout=3, interval=0.05)


async def test_gateway_starts_with_nodes_down_and_checks_them_when_they_come_up(
    tmp_path: Path, engines: list[EngineProcess]
) -> None:
    """A minority down at start does not stop the gateway; a node that comes up later is
    used once its settings are checked, and refused if they are unsafe."""
    safe = EngineProcess(tmp_path / "late-safe", "--max-ttl", "10s")
    unsafe = EngineProcess(tmp_path / "late-unsafe", "--max-ttl", "1s")
    nodes = (*urls(engines[:3]), *urls([safe, unsafe]))
    config = GatewayConfig(nodes=nodes, max_ttl_ms=10_000, node_timeout_ms=1000)
    try:
        async with client(config) as (_, stub):
            status = await stub.ClusterStatus(pb.ClusterStatusRequest())
            assert [n.reachable for n in status.nodes] == [True] * 3 + [False] * 2
            assert status.quorum_available
            first = await round_trip(stub, "late", released=3)

            await asyncio.to_thread(start_all, [safe, unsafe])

            async def four() -> bool:
                status = await stub.ClusterStatus(pb.ClusterStatusRequest())
                return [n.reachable for n in status.nodes] == [True] * 4 + [False]

            await eventually(four, timeout=3, interval=0.05)
            status = await stub.ClusterStatus(pb.ClusterStatusRequest())
            assert "max-ttl" in status.nodes[4].error
            assert await round_trip(stub, "late", released=4) > first
    finally:
        safe.close()
        unsafe.close()


async def test_two_gateways_exclude_each_other_and_hand_off_by_pubsub(
    engines: list[EngineProcess],
) -> None:
    config = GatewayConfig(nodes=urls(engines), max_ttl_ms=10_000, node_timeout_ms=1000)
    async with (
        running(config) as a,
        running(config) as b,
        channel(a.port) as cha,
        channel(b.port) as chb,
    ):
        sa, sb = Stub(cha), Stub(chb)
        held = await sa.Acquire(pb.AcquireRequest(name="x", ttl_ms=10_000))
        busy = await fails(sb.Acquire(pb.AcquireRequest(name="x", ttl_ms=1000)))
        assert busy.reason == "LOCK_HELD"
        d = await sb.Describe(pb.DescribeRequest(name="x"))
        assert d.held and d.fencing_counter == held.fencing_token
        assert held.lease_id not in d.SerializeToString()

        waiter = asyncio.ensure_future(
            sb.Acquire(pb.AcquireRequest(name="x", ttl_ms=1000, wait_ms=5000))
        )
        await eventually(lambda: _waiting(sb, "x"))
        await asyncio.sleep(0.15)  # B has tried, seen it held, and sleeps
        assert not waiter.done()
        start = time.perf_counter()
        await sa.Release(pb.ReleaseRequest(name="x", lease_id=held.lease_id))
        got = await asyncio.wait_for(waiter, 2)
        handoff = time.perf_counter() - start
        assert handoff < 0.25, f"cross-gateway handoff took {handoff * 1000:.0f} ms"
        assert got.fencing_token > held.fencing_token
        await sb.Release(pb.ReleaseRequest(name="x", lease_id=got.lease_id))

        # A lease granted by A and released through B (its client failed over) still
        # wakes A's waiters at once: A must not sleep until the lease's expiry.
        held = await sa.Acquire(pb.AcquireRequest(name="y", ttl_ms=10_000))
        waiter = asyncio.ensure_future(
            sa.Acquire(pb.AcquireRequest(name="y", ttl_ms=1000, wait_ms=5000))
        )
        await eventually(lambda: _waiting(sa, "y"))
        start = time.perf_counter()
        await sb.Release(pb.ReleaseRequest(name="y", lease_id=held.lease_id))
        got = await asyncio.wait_for(waiter, 3)
        handoff = time.perf_counter() - start
        assert handoff < 0.25, f"release through the other gateway took {handoff * 1000:.0f} ms"
        await sa.Release(pb.ReleaseRequest(name="y", lease_id=got.lease_id))

        # Mutual exclusion with clients on both gateways contending.
        inside = 0
        tokens: list[int] = []

        async def worker(stub: Stub) -> None:
            nonlocal inside
            for _ in range(8):
                got = await stub.Acquire(pb.AcquireRequest(name="m", ttl_ms=5000, wait_ms=10_000))
                inside += 1
                assert inside == 1, "two holders at once"
                tokens.append(got.fencing_token)
                await asyncio.sleep(0.002)
                inside -= 1
                await stub.Release(pb.ReleaseRequest(name="m", lease_id=got.lease_id))

        begin = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker(s) for s in (sa, sb, sa, sb))), 20)
        assert len(tokens) == 32
        assert all(x < y for x, y in itertools.pairwise(tokens)), tokens
        # Waits across gateways are woken by pub/sub, not the 1 s fallback timer.
        assert time.perf_counter() - begin < 5


async def _waiting(stub: Stub, name: str) -> bool:
    return await waiters(stub, name) == 1


async def _all_ready(stub: Stub) -> bool:
    status = await stub.ClusterStatus(pb.ClusterStatusRequest())
    return all(n.reachable and n.restart_delay_remaining_ms == 0 for n in status.nodes)


@contextlib.contextmanager
def redis_servers(tmp_path: Path, n: int, *extra: str) -> Iterator[list[int]]:
    if redis_server_binary() is None:
        pytest.fail("redis-server is not installed; `make test` installs Debian's package")
    with contextlib.ExitStack() as stack:
        ports = []
        for i in range(n):
            directory = tmp_path / f"redis-{'-'.join(extra)}-{i}"
            directory.mkdir()
            ports.append(stack.enter_context(redis_server(directory, *extra)))
        yield ports


@contextlib.asynccontextmanager
async def refused_gateway(config: GatewayConfig) -> AsyncIterator[str]:
    gateway = Gateway(config)
    try:
        with pytest.raises(UnsafeNodeError) as raised:
            await gateway.start()
        yield str(raised.value)
    finally:
        await gateway.manager.close()


@pytest.mark.redis
async def test_five_redis_servers(tmp_path: Path) -> None:
    with redis_servers(tmp_path, 5) as ports:
        nodes = tuple(f"redis://127.0.0.1:{p}" for p in ports)
        config = GatewayConfig(nodes=nodes, max_ttl_ms=1000)
        async with client(config) as (_, stub):
            status = await stub.ClusterStatus(pb.ClusterStatusRequest())
            assert [n.mode for n in status.nodes] == [pb.NODE_MODE_REDIS] * 5
            # A Redis that just started may have lost locks: the gateway waits out max-TTL.
            young = [n.restart_delay_remaining_ms for n in status.nodes]
            if all(young):
                refused = await fails(stub.Acquire(pb.AcquireRequest(name="r", ttl_ms=1000)))
                assert refused.reason == "NODES_RESTARTING"
            sent = time.perf_counter()
            got = await stub.Acquire(pb.AcquireRequest(name="r", ttl_ms=1000, wait_ms=3000))
            waited_ms = (time.perf_counter() - sent) * 1000
            # Validity counts from when the request was sent, so it includes the wait;
            # what is left of it now is less than the TTL.
            assert len(got.lease_id) == 16 and 0 < got.validity_ms - waited_ms < 1000
            busy = await fails(stub.Acquire(pb.AcquireRequest(name="r", ttl_ms=1000)))
            assert busy.reason == "LOCK_HELD"
            waiter = asyncio.ensure_future(
                stub.Acquire(pb.AcquireRequest(name="r", ttl_ms=1000, wait_ms=3000))
            )
            await eventually(lambda: _waiting(stub, "r"))
            assert (await stub.Renew(pb.RenewRequest(name="r", lease_id=got.lease_id))).validity_ms
            released = await stub.Release(pb.ReleaseRequest(name="r", lease_id=got.lease_id))
            # Granted as soon as a quorum was past its delay; the others may not be yet.
            assert 3 <= released.nodes_released <= 5
            nxt = await asyncio.wait_for(waiter, 1)
            assert nxt.fencing_token > got.fencing_token
            await stub.Release(pb.ReleaseRequest(name="r", lease_id=nxt.lease_id))
            await eventually(lambda: _all_ready(stub), timeout=3, interval=0.05)
            tokens = [await round_trip(stub, "r2", ttl_ms=1000) for _ in range(5)]
            assert tokens == [1, 2, 3, 4, 5]

        for extra, setting in (
            (("--maxmemory-policy", "allkeys-lru"), "maxmemory-policy"),
            (("--appendfsync", "everysec"), "appendfsync"),
            (("--appendonly", "no"), "appendonly"),
        ):
            with redis_servers(tmp_path, 1, *extra) as (bad,):
                unsafe = (*nodes[:4], f"redis://127.0.0.1:{bad}")
                async with refused_gateway(GatewayConfig(nodes=unsafe, max_ttl_ms=1000)) as msg:
                    assert setting in msg
                    assert str(bad) in msg
                if setting == "maxmemory-policy":
                    # `lockd serve` says so and exits (it does not hang on the others).
                    cmd = [sys.executable, "-m", "lockd", "serve", "--listen", "127.0.0.1:0",
                           "--max-ttl", "1s", "--nodes", ",".join(unsafe)]  # fmt: skip
                    cli = await asyncio.to_thread(
                        subprocess.run,
                        cmd,
                        capture_output=True,
                        text=True,
                        timeout=30,
                    )
                    assert cli.returncode == 1, cli
                    assert "maxmemory-policy" in cli.stderr and "noeviction" in cli.stderr
