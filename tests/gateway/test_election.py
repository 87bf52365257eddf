"""Leader election over real gRPC: Campaign, Proclaim, Resign, Leader, Observe, and every
bad request (a precise status and reason, and the gateway keeps serving)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockd.core.records import Leader, decode_value, encode_value
from lockd.gateway import GatewayConfig
from lockd.gateway.election import _Feed
from lockd.v1 import lock_service_pb2 as pb
from tests.gateway.helpers import Stub, client, eventually, fails, urls
from tests.gateway.test_nodes import _all_ready, redis_servers
from tests.support import EngineProcess

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def _leader(stub: Stub, election: str) -> pb.LeaderResponse:
    found: pb.LeaderResponse = await stub.Leader(pb.LeaderRequest(election=election))
    return found


async def _elections(stub: Stub, ttl: int = 5000) -> None:
    first = await stub.Campaign(
        pb.CampaignRequest(election="db", value=b"replica-a", ttl_ms=ttl, owner="a")
    )
    assert first.leader.term > 0 and first.lock_name == "@election/db"
    assert 0 < first.validity_ms <= ttl and first.ttl_ms == ttl
    now = await _leader(stub, "db")
    assert (now.term, now.value, now.owner) == (first.leader.term, b"replica-a", "a")
    assert 0 < now.ttl_remaining_ms <= ttl
    # A second candidate waits (FIFO) until the first resigns, then leads a larger term.
    second = asyncio.ensure_future(
        stub.Campaign(pb.CampaignRequest(election="db", value=b"replica-b", ttl_ms=ttl))
    )
    await asyncio.sleep(0.1)
    assert not second.done()
    # Proclaim keeps the term and changes the value.
    proclaimed = await stub.Proclaim(
        pb.ProclaimRequest(leader=first.leader, value=b"a-v2", owner="a")
    )
    assert 0 < proclaimed.validity_ms <= ttl
    now = await _leader(stub, "db")
    assert (now.term, now.value) == (first.leader.term, b"a-v2")
    # The leader's lease is renewed by the ordinary Renew path on its lock.
    renewed = await stub.Renew(
        pb.RenewRequest(name=first.lock_name, lease_id=first.leader.lease_id, ttl_ms=ttl)
    )
    assert renewed.validity_ms > 0
    await stub.Resign(pb.ResignRequest(leader=first.leader))
    took_over = await asyncio.wait_for(second, 3)
    assert took_over.leader.term > first.leader.term
    now = await _leader(stub, "db")
    assert (now.term, now.value) == (took_over.leader.term, b"replica-b")
    # The deposed leader can neither resign nor proclaim.
    resign = await fails(stub.Resign(pb.ResignRequest(leader=first.leader)))
    assert (resign.code, resign.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_LEADER")
    proclaim = await fails(
        stub.Proclaim(pb.ProclaimRequest(leader=first.leader, value=b"x", ttl_ms=ttl))
    )
    assert (proclaim.code, proclaim.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    assert (await _leader(stub, "db")).value == b"replica-b"
    await stub.Resign(pb.ResignRequest(leader=took_over.leader))
    gone = await fails(_leader(stub, "db"))
    assert (gone.code, gone.reason) == (grpc.StatusCode.NOT_FOUND, "NO_LEADER")


async def test_campaign_proclaim_resign_leader(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        await _elections(stub)


async def test_elections_on_lockd_engine_processes(engines: list[EngineProcess]) -> None:
    async with client(GatewayConfig(nodes=urls(engines), max_ttl_ms=10_000)) as (_, stub):
        await _elections(stub)


@pytest.mark.redis
async def test_elections_on_redis(tmp_path: Path) -> None:
    with redis_servers(tmp_path, 5) as ports:
        nodes = tuple(f"redis://127.0.0.1:{p}" for p in ports)
        async with client(GatewayConfig(nodes=nodes, max_ttl_ms=1000)) as (_, stub):
            await eventually(lambda: _all_ready(stub), timeout=5, interval=0.05)
            await _elections(stub, ttl=1000)


async def test_an_election_and_a_lock_of_the_same_name_do_not_collide(
    embedded: GatewayConfig,
) -> None:
    async with client(embedded) as (_, stub):
        lock = await stub.Acquire(pb.AcquireRequest(name="jobs", ttl_ms=5000))
        leader = await stub.Campaign(pb.CampaignRequest(election="jobs", value=b"v", ttl_ms=5000))
        assert leader.leader.term > 0 and lock.fencing_token > 0
        described = await stub.Describe(pb.DescribeRequest(name="@election/jobs"))
        assert described.held and described.value == encode_value(leader.leader.term, b"v")
        # The election's lock cannot be taken with Acquire.
        taken = await fails(stub.Acquire(pb.AcquireRequest(name="@election/jobs", ttl_ms=5000)))
        assert (taken.code, taken.reason) == (INVALID, "BAD_NAME")
        assert "reserved for elections" in taken.message


async def test_leader_lost_at_the_ttl_and_a_waiting_candidate_takes_over(
    embedded: GatewayConfig,
) -> None:
    async with client(embedded) as (_, stub):
        first = await stub.Campaign(pb.CampaignRequest(election="e", value=b"a", ttl_ms=300))
        second = await asyncio.wait_for(
            stub.Campaign(pb.CampaignRequest(election="e", value=b"b", ttl_ms=300)), 3
        )
        assert second.leader.term > first.leader.term
        renew = await fails(
            stub.Renew(
                pb.RenewRequest(name=first.lock_name, lease_id=first.leader.lease_id, ttl_ms=300)
            )
        )
        assert renew.reason == "LEASE_LOST"


async def test_campaign_ends_at_the_rpc_deadline(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        await stub.Campaign(pb.CampaignRequest(election="d", value=b"a", ttl_ms=5000))
        late = await fails(
            stub.Campaign(pb.CampaignRequest(election="d", value=b"b", ttl_ms=5000), timeout=0.3)
        )
        assert late.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert (await _leader(stub, "d")).value == b"a"
        # With wait_ms the gateway answers first: certainly not leading.
        waited = await fails(
            stub.Campaign(pb.CampaignRequest(election="d", value=b"b", ttl_ms=5000, wait_ms=200))
        )
        assert (waited.code, waited.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "LOCK_HELD")
        assert 0.15 < waited.elapsed < 2


async def test_observe_streams_leader_changes_in_term_order(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        stream = stub.Observe(pb.ObserveRequest(election="o"))
        seen: list[tuple[int, bytes]] = []

        async def read(count: int) -> None:
            async for change in stream:
                seen.append((change.term, change.value))
                if len(seen) == count:
                    return

        reader = asyncio.ensure_future(read(4))
        first = await stub.Campaign(pb.CampaignRequest(election="o", value=b"a", ttl_ms=5000))
        await asyncio.sleep(0.3)
        await stub.Proclaim(pb.ProclaimRequest(leader=first.leader, value=b"a2", ttl_ms=5000))
        await asyncio.sleep(0.3)
        await stub.Resign(pb.ResignRequest(leader=first.leader))
        second = await stub.Campaign(pb.CampaignRequest(election="o", value=b"b", ttl_ms=5000))
        await asyncio.sleep(0.3)
        third_term = second.leader.term
        await stub.Resign(pb.ResignRequest(leader=second.leader))
        third = await stub.Campaign(pb.CampaignRequest(election="o", value=b"c", ttl_ms=5000))
        await asyncio.wait_for(reader, 5)
        stream.cancel()
        assert seen == [
            (first.leader.term, b"a"),
            (first.leader.term, b"a2"),
            (third_term, b"b"),
            (third.leader.term, b"c"),
        ]
        # A new observer starts with the current leader.
        async for change in stub.Observe(pb.ObserveRequest(election="o"), timeout=3):
            assert (change.term, change.value) == (third.leader.term, b"c")
            break


async def test_bad_election_requests(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        held = await stub.Campaign(pb.CampaignRequest(election="ok", value=b"v", ttl_ms=5000))
        key = held.leader
        cases: list[tuple[Callable[[], Awaitable[object]], str]] = [
            (lambda: stub.Campaign(pb.CampaignRequest(election="", ttl_ms=5000)), "BAD_NAME"),
            (
                lambda: stub.Campaign(pb.CampaignRequest(election="x" * 247, ttl_ms=5000)),
                "BAD_NAME",
            ),
            (lambda: stub.Campaign(pb.CampaignRequest(election="x", ttl_ms=0)), "BAD_TTL"),
            (
                lambda: stub.Campaign(pb.CampaignRequest(election="x", ttl_ms=5000, wait_ms=-1)),
                "BAD_WAIT",
            ),
            (
                lambda: stub.Campaign(
                    pb.CampaignRequest(election="x", value=b"v" * 1001, ttl_ms=5000)
                ),
                "BAD_VALUE",
            ),
            (
                lambda: stub.Campaign(
                    pb.CampaignRequest(election="x", owner="o" * 129, ttl_ms=5000)
                ),
                "BAD_OWNER",
            ),
            (lambda: stub.Leader(pb.LeaderRequest(election="")), "BAD_NAME"),
            (
                lambda: stub.Proclaim(
                    pb.ProclaimRequest(
                        leader=pb.LeaderKey(election="ok", lease_id=b"short", term=key.term)
                    )
                ),
                "BAD_LEASE_ID",
            ),
            (
                lambda: stub.Proclaim(
                    pb.ProclaimRequest(
                        leader=pb.LeaderKey(election="ok", lease_id=key.lease_id, term=0)
                    )
                ),
                "BAD_REQUEST",
            ),
            (lambda: stub.Proclaim(pb.ProclaimRequest(leader=key, value=b"v" * 1001)), "BAD_VALUE"),
            (
                lambda: stub.Resign(
                    pb.ResignRequest(leader=pb.LeaderKey(election="", lease_id=b"x"))
                ),
                "BAD_NAME",
            ),
        ]
        for call, reason in cases:
            failure = await fails(call())
            assert (failure.code, failure.reason) == (INVALID, reason), failure
        unknown = await fails(_leader(stub, "never-campaigned"))
        assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "NO_LEADER")
        stranger = await fails(
            stub.Resign(
                pb.ResignRequest(
                    leader=pb.LeaderKey(election="ok", lease_id=b"\x00" * 16, term=key.term)
                )
            )
        )
        assert (stranger.code, stranger.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_LEADER",
        )
        bad_observe = await fails(
            anext(aiter(stub.Observe(pb.ObserveRequest(election="")))),
        )
        assert (bad_observe.code, bad_observe.reason) == (INVALID, "BAD_NAME")
        # The gateway keeps serving, and the leader is untouched.
        assert (await _leader(stub, "ok")).term == key.term


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        (b"7:v", (7, b"v")),
        (b"12:a:b", (12, b"a:b")),
        (b"3:", (3, b"")),
        (b"", None),
        (b"x:v", None),
        (b"-1:v", None),
        (b"1" * 21 + b":v", None),
    ],
)
def test_election_value_format(raw: bytes, decoded: tuple[int, bytes] | None) -> None:
    assert decode_value(raw) == decoded
    if decoded is not None:
        assert decode_value(encode_value(*decoded)) == decoded


def test_reserved_prefix_fits_the_name_limit(tmp_path: Path) -> None:
    assert len(b"@election/") + 246 == GatewayConfig(data_dir=tmp_path).max_name_bytes


async def test_observe_at_another_gateway_follows_lock_events(
    engines: list[EngineProcess],
) -> None:
    config = GatewayConfig(nodes=urls(engines), max_ttl_ms=10_000)
    async with client(config) as (_, leading), client(config) as (observing, watching):
        observing.service.observers.poll_s = 60.0  # only the lock events can tell it
        stream = watching.Observe(pb.ObserveRequest(election="x"))
        changes = aiter(stream)
        first = await leading.Campaign(pb.CampaignRequest(election="x", value=b"a", ttl_ms=5000))
        seen = await asyncio.wait_for(anext(changes), 3)
        assert (seen.term, seen.value) == (first.leader.term, b"a")
        # A Proclaim elsewhere is an UPDATED lock event (its record changed).
        await leading.Proclaim(pb.ProclaimRequest(leader=first.leader, value=b"a2"))
        seen = await asyncio.wait_for(anext(changes), 3)
        assert (seen.term, seen.value) == (first.leader.term, b"a2")
        # A new term is announced by the lock events of its grant.
        await leading.Resign(pb.ResignRequest(leader=first.leader))
        second = await leading.Campaign(pb.CampaignRequest(election="x", value=b"b", ttl_ms=5000))
        seen = await asyncio.wait_for(anext(changes), 3)
        assert (seen.term, seen.value) == (second.leader.term, b"b")
        stream.cancel()


async def test_an_observer_that_reads_late_sees_changes_in_order_up_to_the_latest(
    embedded: GatewayConfig,
) -> None:
    async with client(embedded) as (gateway, stub):
        stream = stub.Observe(pb.ObserveRequest(election="slow"))
        changes = aiter(stream)
        first = await stub.Campaign(pb.CampaignRequest(election="slow", value=b"v0", ttl_ms=5000))
        assert (await asyncio.wait_for(anext(changes), 3)).value == b"v0"
        # 300 changes while the observer reads nothing: the gateway keeps at most one
        # pending leader per observer (gRPC's flow-control window may hold the ones
        # already sent), so what arrives later is in order and ends at the last.
        for i in range(1, 301):
            await stub.Proclaim(
                pb.ProclaimRequest(leader=first.leader, value=b"v%d" % i, ttl_ms=5000)
            )
        seen: list[int] = []
        while not seen or seen[-1] != 300:
            change = await asyncio.wait_for(anext(changes), 3)
            assert change.term == first.leader.term
            seen.append(int(change.value[1:]))
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        feeds = gateway.service.observers._feeds[b"slow"]
        assert len(feeds) == 1 and all(f.pending is None for f in feeds)
        stream.cancel()


@given(
    st.lists(st.tuples(st.integers(1, 6), st.sampled_from([b"a", b"b", b"c"])), max_size=40),
    st.lists(st.booleans(), max_size=40),
)
def test_an_observer_feed_sends_leaders_in_term_order(
    offers: list[tuple[int, bytes]], reads: list[bool]
) -> None:
    """Whatever is offered and whenever the observer reads, what it is sent never goes
    back in term and never repeats."""

    async def run() -> list[tuple[int, bytes]]:
        feed = _Feed()
        sent: list[tuple[int, bytes]] = []

        def read() -> None:
            if feed.pending is not None:
                found, feed.pending = feed.pending, None
                feed.sent = (found.term, found.value)
                sent.append(feed.sent)

        for i, (term, value) in enumerate(offers):
            feed.offer(Leader(term, value, b"", 1))
            if i < len(reads) and reads[i]:
                read()
        read()
        return sent

    sent = asyncio.run(run())
    for (t0, v0), (t1, v1) in itertools.pairwise(sent):
        assert t1 > t0 or (t1 == t0 and v1 != v0)
