"""The watchdog: keeps a lease for many TTLs; declares it lost, once and before its
deadline, when the gateway disappears; a lease is never `held` after its deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lockd.gateway import GatewayConfig
from lockd_client import AsyncClient, AsyncLease, Client, Lease, LeaseLost, Unavailable
from tests.client.helpers import LockdProcess, gateway

TTL = 1.5  # short, with room for a renewal to lag on a loaded machine


def test_sync_watchdog_keeps_lock_for_five_ttls(client: Client, lock_name: str) -> None:
    lease = client.acquire(lock_name, ttl=TTL)
    first_deadline = lease.deadline
    started = time.monotonic()
    samples = 0
    while time.monotonic() < started + 5 * TTL:
        lease.check()
        assert lease.held
        if samples % 10 == 0:
            assert client.describe(lock_name).held
        samples += 1
        time.sleep(0.05)
    assert lease.deadline > first_deadline + 3 * TTL  # it was renewed, repeatedly
    info = client.describe(lock_name)
    assert info.held and info.fencing_counter == lease.token
    lease.release()
    assert not lease.held
    assert not client.describe(lock_name).held


async def test_async_watchdog_keeps_lock_for_five_ttls(tmp_path: Path) -> None:
    async with (
        gateway(GatewayConfig(data_dir=tmp_path / "data", max_ttl_ms=10_000)) as gw,
        AsyncClient([f"127.0.0.1:{gw.port}"], timeout=5) as client,
    ):
        async with client.lock("wd", ttl=TTL, wait=0) as lease:
            first_deadline = lease.deadline
            started = time.monotonic()
            while time.monotonic() < started + 5 * TTL:
                lease.check()
                assert lease.held
                await asyncio.sleep(0.05)
            assert lease.deadline > first_deadline + 3 * TTL
            assert (await client.describe("wd")).held
        assert not lease.held  # released by the block
        assert not (await client.describe("wd")).held


class Watch:
    """Samples `held` and `deadline` continuously; records on_lost calls."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.threads: list[str] = []
        self.held_after_deadline: list[float] = []

    def on_lost(self, lease: object) -> None:
        self.calls.append(time.monotonic())
        self.threads.append(threading.current_thread().name)

    def sample(self, held: Callable[[], bool], deadline: Callable[[], float]) -> None:
        before = time.monotonic()
        if held() and before >= deadline():
            self.held_after_deadline.append(before - deadline())


def test_sync_on_lost_fires_once_before_deadline_when_gateway_dies(
    new_serve: Callable[..., LockdProcess],
) -> None:
    gw = new_serve("--max-ttl", "10s")
    watch = Watch()
    with Client([gw.endpoint], timeout=5) as client:
        lease: Lease = client.acquire("gone", ttl=TTL, on_lost=watch.on_lost)
        time.sleep(TTL)  # a few renewals first
        gw.kill()
        killed = time.monotonic()
        while time.monotonic() < lease.deadline + TTL:
            watch.sample(lambda: lease.held, lambda: lease.deadline)
            time.sleep(0.005)
        assert len(watch.calls) == 1, watch.calls
        assert killed < watch.calls[0] < lease.deadline
        assert watch.threads == ["lockd-client"]  # the client's background thread
        assert watch.held_after_deadline == []
        assert not lease.held
        assert lease.remaining() == 0
        with pytest.raises(LeaseLost) as lost:
            lease.check()
        assert lost.value.reason  # RENEW_FAILED, or why renewing failed
        lease.release()  # quiet: a lost lease's release is a courtesy
        assert len(watch.calls) == 1


async def test_async_on_lost_fires_once_before_deadline_when_gateway_stops(
    tmp_path: Path,
) -> None:
    watch = Watch()
    config = GatewayConfig(data_dir=tmp_path / "data", max_ttl_ms=10_000)
    async with gateway(config) as gw, AsyncClient([f"127.0.0.1:{gw.port}"], timeout=5) as client:
        lease: AsyncLease = await client.acquire("gone", ttl=TTL, on_lost=watch.on_lost)
        await asyncio.sleep(TTL)
        await gw.stop(grace=0)
        stopped = time.monotonic()

        while time.monotonic() < lease.deadline + TTL:
            watch.sample(lambda: lease.held, lambda: lease.deadline)
            await asyncio.sleep(0.005)
        assert len(watch.calls) == 1, watch.calls
        assert stopped < watch.calls[0] < lease.deadline
        assert watch.held_after_deadline == []
        assert not lease.held
        with pytest.raises(LeaseLost) as lost:
            lease.check()
        assert lost.value.reason
        await lease.release()
        assert len(watch.calls) == 1


def test_without_watchdog_the_lease_expires(client: Client, lock_name: str) -> None:
    watch = Watch()
    lease = client.acquire(lock_name, ttl=1.0, watchdog=False, on_lost=watch.on_lost)
    assert lease.held
    deadline = lease.deadline
    while time.monotonic() < deadline + 0.3:
        watch.sample(lambda: lease.held, lambda: lease.deadline)
        time.sleep(0.005)
    assert lease.deadline == deadline  # nothing renewed it
    assert watch.held_after_deadline == []
    assert not lease.held
    with pytest.raises(LeaseLost) as lost:
        lease.check()
    assert lost.value.reason == "EXPIRED"
    assert len(watch.calls) == 1  # check() declared it lost, once
    assert watch.threads == ["lockd-client"]  # on the client's thread, as documented
    # The nodes let it go too: someone else gets the lock without waiting for it.
    with client.acquire(lock_name, ttl=5, wait=2) as other:
        assert other.token > lease.token
    with pytest.raises(LeaseLost):
        lease.renew()


def test_closing_the_client_with_a_watched_lease(serve: LockdProcess, lock_name: str) -> None:
    """close() stops the watchdogs; the lease then runs out on the nodes by its TTL."""
    with Client([serve.endpoint]) as observer:
        client = Client([serve.endpoint])
        lease = client.acquire(lock_name, ttl=TTL)
        client.close()
        assert observer.describe(lock_name).held
        deadline = time.monotonic() + 10
        while observer.describe(lock_name).held:
            assert time.monotonic() < deadline, "the lease outlived its TTL"
            time.sleep(0.05)
        assert not lease.held


async def test_closing_the_async_client_with_a_watched_lease(tmp_path: Path) -> None:
    async with gateway(GatewayConfig(data_dir=tmp_path / "data", max_ttl_ms=10_000)) as gw:
        endpoint = f"127.0.0.1:{gw.port}"
        client = AsyncClient([endpoint], timeout=5)
        leases = [await client.acquire(f"closing-{i}", ttl=TTL) for i in range(3)]
        await client.close()
        async with AsyncClient([endpoint], timeout=5) as observer:
            for lease in leases:
                assert (await observer.describe(lease.name)).held
            await asyncio.sleep(TTL + 0.2)
            for lease in leases:
                assert not lease.held
                assert not (await observer.describe(lease.name)).held


async def test_renewal_racing_the_end_of_the_stream(
    new_serve: Callable[..., LockdProcess],
) -> None:
    """A renewal sent after the Session stream died but before the client noticed must
    fail as a LockError (the watchdog retries those), not as a raw asyncio error that
    would kill the watchdog and keep on_lost from ever firing."""
    gw = new_serve("--max-ttl", "10s")
    watch = Watch()
    async with AsyncClient([gw.endpoint], timeout=3) as client:
        lease = await client.acquire("race", ttl=2, on_lost=watch.on_lost)
        # White box: the stream of the only endpoint, to catch the moment it ends.
        session = client._transport.endpoints[0].session
        assert session is not None
        gw.kill()
        give_up = time.monotonic() + 10
        while not session._call.done():
            assert time.monotonic() < give_up
            await asyncio.sleep(0)
        with pytest.raises(Unavailable):
            await lease.renew()  # at once: the session's reader has not run yet
        while time.monotonic() < lease.deadline + 0.2:
            watch.sample(lambda: lease.held, lambda: lease.deadline)
            await asyncio.sleep(0.005)
        assert len(watch.calls) == 1 and watch.calls[0] < lease.deadline
        assert watch.held_after_deadline == []
