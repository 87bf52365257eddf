"""Failover between two gateways sharing five `lockd engine` processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lockd.gateway import GatewayConfig
from lockd_client import AsyncClient, Client, LockTimeout
from tests.client.helpers import dead_endpoint, gateway, serve_process
from tests.support import EngineProcess


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EngineProcess]]:
    """Five `lockd engine` processes (max TTL 10 s) for the module's gateways."""
    base = tmp_path_factory.mktemp("engines")
    procs = [EngineProcess(base / f"engine-{i}", "--max-ttl", "10s") for i in range(5)]
    try:
        with ThreadPoolExecutor(5) as pool:
            list(pool.map(EngineProcess.start, procs))
        yield procs
    finally:
        for proc in procs:
            proc.close()


def shared(engines: list[EngineProcess]) -> GatewayConfig:
    nodes = tuple(f"redis://127.0.0.1:{e.port}" for e in engines)
    return GatewayConfig(nodes=nodes, max_ttl_ms=10_000)


async def test_first_endpoint_dead_then_gateway_stops(engines: list[EngineProcess]) -> None:
    config = shared(engines)
    ttl = 1.5
    async with gateway(config) as gw1, gateway(config) as gw2:
        e1, e2 = f"127.0.0.1:{gw1.port}", f"127.0.0.1:{gw2.port}"
        async with (
            AsyncClient([dead_endpoint(), e1, e2], timeout=5) as client,
            AsyncClient([e2], timeout=5) as other,
        ):
            # The dead first endpoint is skipped, by unary calls and by the Session.
            async with AsyncClient([dead_endpoint(), e2], timeout=5) as fresh:
                assert (await fresh.cluster_status()).quorum_available
            lease = await client.acquire("failover", ttl=ttl)
            assert client.endpoint == e1
            assert lease.held
            # Both gateways see one lock: a client of gw2 cannot take it.
            with pytest.raises(LockTimeout):
                await other.acquire("failover", ttl=ttl, wait=0.2)
            info = await client.describe("failover")
            assert info.held and info.fencing_counter == lease.token

            await gw1.stop(grace=0.5)  # the gateway the lease was granted through
            stopped = time.monotonic()
            # The watchdog renews through gw2 from now on; hold on for several TTLs.
            while time.monotonic() < stopped + 3 * ttl:
                lease.check()
                assert lease.held
                await asyncio.sleep(0.05)
            assert client.endpoint == e2
            await lease.renew()  # explicit renewals, too
            lease.check()
            info = await other.describe("failover")
            assert info.held and info.nodes_holding >= 3
            assert info.fencing_counter == lease.token
            with pytest.raises(LockTimeout):
                await other.acquire("failover", ttl=ttl, wait=0.2)
            # Unary calls (Describe) and new acquisitions fail over as well.
            second = await client.acquire("failover-2", ttl=ttl)
            assert (await client.describe("failover-2")).held
            await second.release()
            await lease.release()
            taken = await other.acquire("failover", ttl=ttl, wait=0)
            assert taken.token > lease.token
            await taken.release()


async def test_waiter_on_one_gateway_wakes_on_release_through_another(
    engines: list[EngineProcess],
) -> None:
    """A waiter on gw2 hears of a release made through gw1 (the nodes' pub/sub)."""
    config = shared(engines)
    async with gateway(config) as gw1, gateway(config) as gw2:
        e1, e2 = f"127.0.0.1:{gw1.port}", f"127.0.0.1:{gw2.port}"
        async with AsyncClient([e1], timeout=5) as a, AsyncClient([e2], timeout=5) as b:
            held = await a.acquire("handoff", ttl=8)
            started = time.monotonic()
            waiting = asyncio.ensure_future(b.acquire("handoff", ttl=5, wait=8))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            await held.release()
            lease = await waiting
            # Woken by the release, not by the 8 s expiry (the recheck timer is <= 1 s).
            assert time.monotonic() - started < 3
            assert lease.token > held.token
            await lease.release()


def test_failover_when_a_gateway_process_is_killed(
    engines: list[EngineProcess], tmp_path: Path
) -> None:
    """gw1 is a `lockd serve --nodes` process that dies by SIGKILL with a renewal possibly
    in flight; the blocking client carries on with gw2 and the lease survives."""
    nodes = ",".join(f"redis://127.0.0.1:{e.port}" for e in engines)
    gw1 = serve_process(tmp_path / "gw1", "--nodes", nodes, "--max-ttl", "10s").start()
    gw2 = serve_process(tmp_path / "gw2", "--nodes", nodes, "--max-ttl", "10s").start()
    ttl = 1.5
    try:
        with (
            Client([dead_endpoint(), gw1.endpoint, gw2.endpoint], timeout=5) as client,
            Client([gw2.endpoint], timeout=5) as other,
        ):
            lost: list[object] = []
            lease = client.acquire("killed", ttl=ttl, on_lost=lost.append)
            assert client.endpoint == gw1.endpoint
            gw1.kill()
            killed = time.monotonic()
            while time.monotonic() < killed + 3 * ttl:
                lease.check()
                time.sleep(0.05)
            assert client.endpoint == gw2.endpoint
            assert lease.held and not lost
            with pytest.raises(LockTimeout):
                other.acquire("killed", ttl=ttl, wait=0.2)
            assert other.describe("killed").fencing_counter == lease.token
            lease.release()
            other.acquire("killed", ttl=ttl, wait=0).release()
    finally:
        gw1.close()
        gw2.close()
