"""Acquire, renew, release, Describe, waiting and errors on the embedded default
(five engines in the gateway's process), over real gRPC on loopback."""

from __future__ import annotations

import asyncio
import itertools
import os
import time

import grpc

from lockd.gateway import GatewayConfig
from lockd.v1 import lock_service_pb2 as pb
from tests.gateway.helpers import Stub, client, eventually, fails, waiters

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def test_acquire_renew_release_round_trip(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        got = await stub.Acquire(pb.AcquireRequest(name="orders", ttl_ms=5000))
        assert len(got.lease_id) == 16
        assert got.fencing_token >= 1
        assert got.ttl_ms == 5000
        assert 0 < got.validity_ms < 5000
        # Redlock's drift allowance: ttl * 1% + 2 ms is subtracted at least.
        assert got.validity_ms <= 5000 - 50 - 2

        d = await stub.Describe(pb.DescribeRequest(name="orders"))
        assert d.name == "orders"
        assert d.held
        assert 0 < d.ttl_remaining_ms <= 5000
        assert d.fencing_counter == got.fencing_token
        assert d.waiters == 0
        assert (d.nodes_answered, d.nodes_holding) == (5, 5)
        assert got.lease_id not in d.SerializeToString()
        assert got.lease_id.hex() not in str(d)

        renewed = await stub.Renew(pb.RenewRequest(name="orders", lease_id=got.lease_id))
        assert 0 < renewed.validity_ms < 5000  # ttl_ms=0 reuses the granted TTL
        longer = await stub.Renew(
            pb.RenewRequest(name="orders", lease_id=got.lease_id, ttl_ms=9000)
        )
        assert 5000 < longer.validity_ms < 9000
        d = await stub.Describe(pb.DescribeRequest(name="orders"))
        assert 5000 < d.ttl_remaining_ms <= 9000

        released = await stub.Release(pb.ReleaseRequest(name="orders", lease_id=got.lease_id))
        assert released.nodes_released == 5
        d = await stub.Describe(pb.DescribeRequest(name="orders"))
        assert not d.held
        assert d.ttl_remaining_ms == 0
        assert d.nodes_holding == 0
        assert d.fencing_counter == got.fencing_token  # counters outlive the lease

        again = await stub.Acquire(pb.AcquireRequest(name="orders", ttl_ms=5000))
        assert again.lease_id != got.lease_id
        assert again.fencing_token > got.fencing_token


async def test_describe_shows_waiters_never_the_lease(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        got = await stub.Acquire(pb.AcquireRequest(name="w", ttl_ms=5000))
        queued = [
            asyncio.ensure_future(
                stub.Acquire(pb.AcquireRequest(name="w", ttl_ms=5000, wait_ms=5000))
            )
            for _ in range(3)
        ]
        await eventually(lambda: _has_waiters(stub, "w", 3))
        d = await stub.Describe(pb.DescribeRequest(name="w"))
        assert d.held and d.waiters == 3
        assert got.lease_id not in d.SerializeToString()
        # Unrelated locks show nothing.
        other = await stub.Describe(pb.DescribeRequest(name="other"))
        assert (other.held, other.waiters, other.fencing_counter) == (False, 0, 0)
        lease = got.lease_id
        for _ in queued:
            await stub.Release(pb.ReleaseRequest(name="w", lease_id=lease))
            done, _pending = await asyncio.wait(
                [q for q in queued if not q.done()], return_when=asyncio.FIRST_COMPLETED
            )
            lease = done.pop().result().lease_id
        await stub.Release(pb.ReleaseRequest(name="w", lease_id=lease))
        assert await waiters(stub, "w") == 0


async def _has_waiters(stub: Stub, name: str, n: int) -> bool:
    return await waiters(stub, name) == n


async def test_contention_no_wait_then_handoff(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        first = await stub.Acquire(pb.AcquireRequest(name="c", ttl_ms=10_000))
        busy = await fails(stub.Acquire(pb.AcquireRequest(name="c", ttl_ms=1000, wait_ms=0)))
        assert busy.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert busy.reason == "LOCK_HELD"
        assert busy.elapsed < 0.5
        assert busy.message

        second = asyncio.ensure_future(
            stub.Acquire(pb.AcquireRequest(name="c", ttl_ms=1000, wait_ms=5000))
        )
        await eventually(lambda: _has_waiters(stub, "c", 1))
        await asyncio.sleep(0.05)  # the waiter is asleep, not polling
        assert not second.done()
        start = time.perf_counter()
        await stub.Release(pb.ReleaseRequest(name="c", lease_id=first.lease_id))
        granted = await second
        handoff = time.perf_counter() - start
        assert handoff < 0.1, f"handoff took {handoff * 1000:.1f} ms"
        assert granted.fencing_token > first.fencing_token
        assert granted.lease_id != first.lease_id


async def test_waiter_is_granted_when_the_lease_expires(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        await stub.Acquire(pb.AcquireRequest(name="exp", ttl_ms=300))
        start = time.perf_counter()
        got = await stub.Acquire(pb.AcquireRequest(name="exp", ttl_ms=300, wait_ms=3000))
        elapsed = time.perf_counter() - start
        assert 0.2 < elapsed < 0.6, elapsed
        assert got.fencing_token == 2


async def test_fifo_handoff_order(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        holder = await stub.Acquire(pb.AcquireRequest(name="fifo", ttl_ms=10_000))
        order: list[int] = []
        tokens: list[int] = []

        async def waiter(i: int) -> None:
            got = await stub.Acquire(pb.AcquireRequest(name="fifo", ttl_ms=10_000, wait_ms=10_000))
            order.append(i)
            tokens.append(got.fencing_token)
            await asyncio.sleep(0.01)
            await stub.Release(pb.ReleaseRequest(name="fifo", lease_id=got.lease_id))

        tasks = []
        for i in range(5):
            tasks.append(asyncio.ensure_future(waiter(i)))
            await eventually(lambda n=i + 1: _has_waiters(stub, "fifo", n))
        await stub.Release(pb.ReleaseRequest(name="fifo", lease_id=holder.lease_id))
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert order == [0, 1, 2, 3, 4]
        assert tokens == sorted(tokens) and len(set(tokens)) == 5
        assert tokens[0] > holder.fencing_token


async def test_cancelled_waiter_leaves_the_queue(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        holder = await stub.Acquire(pb.AcquireRequest(name="q", ttl_ms=10_000))
        request = pb.AcquireRequest(name="q", ttl_ms=5000, wait_ms=10_000)
        head = stub.Acquire(request)  # first in line: the one that attempts
        await eventually(lambda: _has_waiters(stub, "q", 1))
        middle = stub.Acquire(request)
        await eventually(lambda: _has_waiters(stub, "q", 2))
        last = asyncio.ensure_future(stub.Acquire(request))
        await eventually(lambda: _has_waiters(stub, "q", 3))

        head.cancel()
        await eventually(lambda: _has_waiters(stub, "q", 2))
        middle.cancel()
        await eventually(lambda: _has_waiters(stub, "q", 1))
        assert head.cancelled() and middle.cancelled()

        start = time.perf_counter()
        await stub.Release(pb.ReleaseRequest(name="q", lease_id=holder.lease_id))
        got = await asyncio.wait_for(last, 2)
        assert time.perf_counter() - start < 0.1
        assert got.fencing_token == holder.fencing_token + 1
        assert await waiters(stub, "q") == 0


async def test_rpc_deadline_ends_the_wait(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        holder = await stub.Acquire(pb.AcquireRequest(name="dl", ttl_ms=10_000))
        late = asyncio.ensure_future(
            fails(
                stub.Acquire(pb.AcquireRequest(name="dl", ttl_ms=1000, wait_ms=60_000), timeout=0.3)
            )
        )
        await eventually(lambda: _has_waiters(stub, "dl", 1))
        behind = asyncio.ensure_future(
            stub.Acquire(pb.AcquireRequest(name="dl", ttl_ms=1000, wait_ms=10_000))
        )
        await eventually(lambda: _has_waiters(stub, "dl", 2))
        failed = await late
        assert failed.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.25 < failed.elapsed < 0.6, failed.elapsed
        await eventually(lambda: _has_waiters(stub, "dl", 1))
        await stub.Release(pb.ReleaseRequest(name="dl", lease_id=holder.lease_id))
        got = await asyncio.wait_for(behind, 2)
        assert got.fencing_token == holder.fencing_token + 1


async def test_wait_ms_ends_the_wait(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        await stub.Acquire(pb.AcquireRequest(name="wt", ttl_ms=10_000))
        # At the head of the queue (it attempts) and behind another waiter.
        first = asyncio.ensure_future(
            fails(stub.Acquire(pb.AcquireRequest(name="wt", ttl_ms=1000, wait_ms=300)))
        )
        await eventually(lambda: _has_waiters(stub, "wt", 1))
        second = await fails(stub.Acquire(pb.AcquireRequest(name="wt", ttl_ms=1000, wait_ms=200)))
        for failure, wait in ((await first, 0.3), (second, 0.2)):
            assert failure.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert failure.reason == "LOCK_HELD"
            assert wait - 0.02 < failure.elapsed < wait + 0.25, failure.elapsed
        assert await waiters(stub, "wt") == 0


async def test_tokens_strictly_increase_under_contention(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        granted: list[int] = []
        inside = 0

        async def worker() -> None:
            nonlocal inside
            for _ in range(10):
                got = await stub.Acquire(pb.AcquireRequest(name="hot", ttl_ms=5000, wait_ms=10_000))
                inside += 1
                assert inside == 1, "two holders at once"
                granted.append(got.fencing_token)
                await asyncio.sleep(0)
                inside -= 1
                await stub.Release(pb.ReleaseRequest(name="hot", lease_id=got.lease_id))

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(8))), 20)
        assert len(granted) == 80
        assert all(a < b for a, b in itertools.pairwise(granted)), granted


async def test_invalid_arguments(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        cases = [
            (stub.Acquire(pb.AcquireRequest(name="", ttl_ms=1000)), "BAD_NAME"),
            (stub.Acquire(pb.AcquireRequest(name="x" * 257, ttl_ms=1000)), "BAD_NAME"),
            (stub.Acquire(pb.AcquireRequest(name="é" * 129, ttl_ms=1000)), "BAD_NAME"),
            (stub.Acquire(pb.AcquireRequest(name="n", ttl_ms=9)), "BAD_TTL"),
            (stub.Acquire(pb.AcquireRequest(name="n", ttl_ms=0)), "BAD_TTL"),
            (stub.Acquire(pb.AcquireRequest(name="n", ttl_ms=-5)), "BAD_TTL"),
            (stub.Acquire(pb.AcquireRequest(name="n", ttl_ms=10_001)), "BAD_TTL"),
            (stub.Acquire(pb.AcquireRequest(name="n", ttl_ms=1000, wait_ms=-1)), "BAD_WAIT"),
            (stub.Release(pb.ReleaseRequest(name="n", lease_id=b"short")), "BAD_LEASE_ID"),
            (stub.Release(pb.ReleaseRequest(name="n", lease_id=os.urandom(17))), "BAD_LEASE_ID"),
            (stub.Release(pb.ReleaseRequest(name="n")), "BAD_LEASE_ID"),
            (stub.Renew(pb.RenewRequest(name="n", lease_id=os.urandom(15))), "BAD_LEASE_ID"),
            (stub.Release(pb.ReleaseRequest(name="", lease_id=os.urandom(16))), "BAD_NAME"),
            (stub.Describe(pb.DescribeRequest(name="")), "BAD_NAME"),
            (stub.Describe(pb.DescribeRequest(name="y" * 300)), "BAD_NAME"),
        ]
        for call, reason in cases:
            failure = await fails(call)
            assert (failure.code, failure.reason) == (INVALID, reason), failure
            assert failure.message
        # The limits themselves are accepted.
        ok = await stub.Acquire(pb.AcquireRequest(name="z" * 256, ttl_ms=10_000))
        assert len(ok.lease_id) == 16
        try:
            # 10 ms leaves 8 ms after drift: it may run out on a slow machine, but it is
            # never an invalid argument.
            short = await stub.Acquire(pb.AcquireRequest(name="é" * 128, ttl_ms=10))
            assert len(short.lease_id) == 16
        except grpc.aio.AioRpcError as err:
            assert err.code() != INVALID, err
        bad_ttl = await fails(
            stub.Renew(pb.RenewRequest(name="z" * 256, lease_id=ok.lease_id, ttl_ms=10_001))
        )
        assert (bad_ttl.code, bad_ttl.reason) == (INVALID, "BAD_TTL")
        assert (await stub.Describe(pb.DescribeRequest(name="z" * 256))).held


async def test_release_with_a_wrong_lease_is_not_owned(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        got = await stub.Acquire(pb.AcquireRequest(name="mine", ttl_ms=5000))
        wrong = await fails(stub.Release(pb.ReleaseRequest(name="mine", lease_id=os.urandom(16))))
        assert (wrong.code, wrong.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_OWNED")
        # Nor may another lock's lease release it.
        other = await stub.Acquire(pb.AcquireRequest(name="theirs", ttl_ms=5000))
        cross = await fails(stub.Release(pb.ReleaseRequest(name="mine", lease_id=other.lease_id)))
        assert cross.reason == "NOT_OWNED"
        renew = await fails(
            stub.Renew(pb.RenewRequest(name="mine", lease_id=other.lease_id, ttl_ms=1000))
        )
        assert (renew.code, renew.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
        d = await stub.Describe(pb.DescribeRequest(name="mine"))
        assert d.held and d.nodes_holding == 5
        busy = await fails(stub.Acquire(pb.AcquireRequest(name="mine", ttl_ms=1000)))
        assert busy.reason == "LOCK_HELD"
        await stub.Release(pb.ReleaseRequest(name="mine", lease_id=got.lease_id))
        twice = await fails(stub.Release(pb.ReleaseRequest(name="mine", lease_id=got.lease_id)))
        assert twice.reason == "NOT_OWNED"


async def test_renew_after_expiry_is_lease_lost(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        got = await stub.Acquire(pb.AcquireRequest(name="short", ttl_ms=100))
        await asyncio.sleep(0.2)
        lost = await fails(stub.Renew(pb.RenewRequest(name="short", lease_id=got.lease_id)))
        assert (lost.code, lost.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
        assert lost.message
        # Expired and taken over by someone else: still lost, and the new holder keeps it.
        got = await stub.Acquire(pb.AcquireRequest(name="short", ttl_ms=100))
        await asyncio.sleep(0.2)
        taker = await stub.Acquire(pb.AcquireRequest(name="short", ttl_ms=5000))
        lost = await fails(
            stub.Renew(pb.RenewRequest(name="short", lease_id=got.lease_id, ttl_ms=5000))
        )
        assert lost.reason == "LEASE_LOST"
        d = await stub.Describe(pb.DescribeRequest(name="short"))
        assert d.held and d.ttl_remaining_ms > 4000
        await stub.Renew(pb.RenewRequest(name="short", lease_id=taker.lease_id))


async def test_renew_ttl_0_of_an_expired_lease_taken_over_is_lease_lost(
    embedded: GatewayConfig,
) -> None:
    """The granting gateway remembers the granted TTL after the lease ends: ttl 0 of an
    expired lease, even once another lease holds the lock, is LEASE_LOST, never BAD_TTL."""
    async with client(embedded) as (_, stub):
        old = await stub.Acquire(pb.AcquireRequest(name="taken", ttl_ms=100))
        await asyncio.sleep(0.2)
        new = await stub.Acquire(pb.AcquireRequest(name="taken", ttl_ms=5000))
        lost = await fails(stub.Renew(pb.RenewRequest(name="taken", lease_id=old.lease_id)))
        assert (lost.code, lost.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
        # Released, then renewed with 0: lost as well.
        await stub.Release(pb.ReleaseRequest(name="taken", lease_id=new.lease_id))
        lost = await fails(stub.Renew(pb.RenewRequest(name="taken", lease_id=new.lease_id)))
        assert (lost.code, lost.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
        # A lease id this gateway never granted, with ttl 0: it cannot know the TTL.
        unknown = await fails(stub.Renew(pb.RenewRequest(name="taken", lease_id=os.urandom(16))))
        assert (unknown.code, unknown.reason) == (INVALID, "BAD_TTL")
        # With a TTL, a wrong lease id is LEASE_LOST (Renew never says NOT_OWNED).
        wrong = await fails(
            stub.Renew(pb.RenewRequest(name="taken", lease_id=os.urandom(16), ttl_ms=1000))
        )
        assert (wrong.code, wrong.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")


async def test_renew_ttl_0_is_the_granted_ttl_not_the_last_renewed(
    embedded: GatewayConfig,
) -> None:
    async with client(embedded) as (_, stub):
        got = await stub.Acquire(pb.AcquireRequest(name="ttl0", ttl_ms=2000))
        longer = await stub.Renew(pb.RenewRequest(name="ttl0", lease_id=got.lease_id, ttl_ms=9000))
        assert longer.validity_ms > 2000
        again = await stub.Renew(pb.RenewRequest(name="ttl0", lease_id=got.lease_id))
        assert 0 < again.validity_ms <= 2000
        d = await stub.Describe(pb.DescribeRequest(name="ttl0"))
        assert 0 < d.ttl_remaining_ms <= 2000
