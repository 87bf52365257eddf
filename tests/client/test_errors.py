"""What the client raises, and when: one exception tree with the gateway's reasons."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lockd.gateway import GatewayConfig
from lockd_client import (
    AsyncClient,
    Client,
    InvalidRequest,
    LeaseLost,
    LockError,
    LockTimeout,
    NotOwned,
    Overloaded,
    Unavailable,
)
from tests.client.helpers import LockdProcess, aeventually, dead_endpoint, gateway


def test_exception_tree() -> None:
    for cls in (LockTimeout, NotOwned, LeaseLost, Unavailable, Overloaded, InvalidRequest):
        assert issubclass(cls, LockError)
    assert issubclass(Overloaded, Unavailable)


def test_release_with_wrong_lease_id_does_nothing(client: Client, lock_name: str) -> None:
    lease = client.acquire(lock_name, ttl=10)
    with pytest.raises(NotOwned) as refused:
        client.release(lock_name, os.urandom(16))
    assert refused.value.reason == "NOT_OWNED"
    assert refused.value.name == lock_name
    assert "nothing was released" in refused.value.message
    info = client.describe(lock_name)
    assert info.held and info.nodes_holding == 5 and info.fencing_counter == lease.token
    lease.check()
    with pytest.raises(NotOwned):  # and again: still not that id's
        client.release(lock_name, os.urandom(16))
    with pytest.raises(LeaseLost) as lost:
        client.renew(lock_name, os.urandom(16), ttl=10)
    assert lost.value.reason == "LEASE_LOST"
    assert client.describe(lock_name).held
    assert client.release(lock_name, lease.lease_id) == 5  # the right id releases it
    assert not client.describe(lock_name).held


def test_not_owned_and_lease_lost_after_release(client: Client, lock_name: str) -> None:
    lease = client.acquire(lock_name, ttl=10)
    lease_id = lease.lease_id
    lease.release()
    lease.release()  # a second release of the same lease object is a no-op
    with pytest.raises(LeaseLost) as released:
        lease.check()
    assert released.value.reason == "RELEASED"
    with pytest.raises(LeaseLost):
        lease.renew()
    with pytest.raises(NotOwned) as refused:  # by id: nothing left to release
        client.release(lock_name, lease_id)
    assert refused.value.reason == "NOT_OWNED"
    with pytest.raises(LeaseLost) as lost:
        client.renew(lock_name, lease_id, ttl=10)
    assert lost.value.reason == "LEASE_LOST"


def test_lock_timeout_on_contention(client: Client, serve: LockdProcess, lock_name: str) -> None:
    with client.acquire(lock_name, ttl=10), Client([serve.endpoint]) as other:
        started = time.monotonic()
        with pytest.raises(LockTimeout) as busy:
            other.acquire(lock_name, ttl=5, wait=0.5)
        assert time.monotonic() - started >= 0.5
        assert busy.value.reason == "LOCK_HELD"
        assert busy.value.name == lock_name
        with pytest.raises(LockTimeout):
            other.acquire(lock_name, ttl=5, wait=0)


def test_invalid_requests(client: Client, lock_name: str) -> None:
    for ttl in (0.001, 31.0):  # below the 10 ms minimum; above --max-ttl 30s
        with pytest.raises(InvalidRequest) as bad:
            client.acquire(lock_name, ttl=ttl)
        assert bad.value.reason == "BAD_TTL"
    with pytest.raises(InvalidRequest) as bad:
        client.acquire("", ttl=5)
    assert bad.value.reason == "BAD_NAME"
    with pytest.raises(InvalidRequest) as bad:
        client.acquire("x" * 257, ttl=5)
    assert bad.value.reason == "BAD_NAME"
    with pytest.raises(InvalidRequest) as bad:
        client.acquire(lock_name, ttl=5, wait=-1)
    assert bad.value.reason == "BAD_WAIT"
    with pytest.raises(InvalidRequest) as bad:
        client.release(lock_name, b"short")
    assert bad.value.reason == "BAD_LEASE_ID"
    with pytest.raises(InvalidRequest) as bad:
        client.renew(lock_name, os.urandom(16), ttl=3600)
    assert bad.value.reason == "BAD_TTL"
    assert not client.describe(lock_name).held  # nothing was granted by any of those


def test_unreachable_gateway() -> None:
    with Client([dead_endpoint()], timeout=2) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable) as down:
            client.acquire("x", ttl=1)
        assert down.value.reason == "GATEWAY_UNREACHABLE"
        with pytest.raises(Unavailable) as down:
            client.describe("x")
        assert down.value.reason == "GATEWAY_UNREACHABLE"
        with pytest.raises(Unavailable):
            client.cluster_status()
        assert time.monotonic() - started < 30


async def test_unavailable_with_retry_after_during_restart_delay(
    new_serve: Callable[..., LockdProcess], tmp_path: Path
) -> None:
    """A gateway whose engines stopped uncleanly refuses grants for max-TTL plus drift,
    and says when to retry."""
    max_ttl = 4.0  # the delay must outlast starting the gateway on a loaded machine
    data = tmp_path / "data"
    first = new_serve("--max-ttl", f"{max_ttl}s", data_dir=data)
    with Client([first.endpoint]) as c:
        c.acquire("r", ttl=1).release()
    first.kill()  # unclean: no shutdown marker for any engine

    config = GatewayConfig(data_dir=data, max_ttl_ms=int(max_ttl * 1000))
    async with gateway(config) as gw, AsyncClient([f"127.0.0.1:{gw.port}"], timeout=5) as c:
        opened = time.monotonic()
        with pytest.raises(Unavailable) as restarting:
            await c.acquire("r", ttl=1, wait=0)
        err = restarting.value
        assert not isinstance(err, Overloaded)
        assert err.reason == "NODES_RESTARTING"
        assert err.retry_after is not None
        assert 0 < err.retry_after <= max_ttl * 1.01 + 0.1
        cluster = await c.cluster_status()
        assert not cluster.quorum_available
        assert all(n.restart_delay > 0 and n.restart_reason for n in cluster.nodes)
        # Waiting long enough rides the delay out (the gateway retries when it ends).
        lease = await c.acquire("r", ttl=1, wait=err.retry_after + 3)
        assert time.monotonic() - opened >= err.retry_after - 0.1
        assert lease.token > 0
        await lease.release()
        assert (await c.cluster_status()).quorum_available


async def test_overloaded_when_too_many_wait(tmp_path: Path) -> None:
    config = GatewayConfig(data_dir=tmp_path / "data", max_ttl_ms=10_000, max_waiters_per_lock=1)
    async with gateway(config) as gw, AsyncClient([f"127.0.0.1:{gw.port}"], timeout=5) as c:
        held = await c.acquire("busy", ttl=5)
        waiter = asyncio.ensure_future(c.acquire("busy", ttl=5, wait=10))
        deadline = time.monotonic() + 10
        while (await c.describe("busy")).waiters < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as full:
            await c.acquire("busy", ttl=5, wait=10)
        assert full.value.reason == "TOO_MANY_WAITERS"
        await held.release()
        lease = await waiter
        assert lease.token > held.token
        await lease.release()


async def test_cancelled_acquire_does_not_keep_the_lock(tmp_path: Path) -> None:
    """A caller that gives up on a waiting acquire (wait_for, task cancellation) while its
    Session stays open: the grant that arrives later is given back, not left to block
    the lock for its whole TTL."""
    config = GatewayConfig(data_dir=tmp_path / "data", max_ttl_ms=30_000)
    async with (
        gateway(config) as gw,
        AsyncClient([f"127.0.0.1:{gw.port}"], timeout=5) as a,
        AsyncClient([f"127.0.0.1:{gw.port}"], timeout=5) as b,
    ):
        held = await a.acquire("given-up", ttl=20)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.acquire("given-up", ttl=20, wait=10), 0.3)
        await held.release()  # the abandoned request is granted now, then given back

        async def free() -> bool:
            return not (await a.describe("given-up")).held

        await aeventually(free, timeout=5)
        lease = await a.acquire("given-up", ttl=5, wait=0)
        await lease.release()
