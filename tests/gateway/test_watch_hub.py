"""The watch hub on crafted node messages: five nodes' reports make one event each, in
token order, whatever the duplicates, stragglers and strangers; the wire format of
node events round-trips."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockd.core import Meta, NodeEvent, decode_event, encode_event, encode_meta, lock_key
from lockd.errors import LockdError
from lockd.gateway import GatewayConfig
from lockd.gateway.locks import LockManager
from lockd.gateway.server import build_nodes
from lockd.gateway.watch import EventType, Subscription, WatchEvent, WatchHub


@given(
    kind=st.sampled_from([b"A", b"R", b"F"]),
    counter=st.integers(0, 2**53 - 1),
    pttl=st.integers(-2, 2**31),
    digest=st.sampled_from([b"", hashlib.sha1(b"x").hexdigest().encode()]),
    name=st.binary(max_size=300),
    record=st.binary(max_size=1200),
)
def test_node_events_round_trip(
    kind: bytes, counter: int, pttl: int, digest: bytes, name: bytes, record: bytes
) -> None:
    event = NodeEvent(kind, counter, pttl, digest, lock_key(name), record)
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize(
    "raw", [b"", b"A:1:2", b"X:1:2:d:3:abc", b"A:x:2:d:3:abc", b"A:1:2:d:9:ab"]
)
def test_malformed_node_events_are_ignored(raw: bytes) -> None:
    assert decode_event(raw) is None


@pytest.fixture
def manager(tmp_path: Path) -> LockManager:
    config = GatewayConfig(data_dir=tmp_path, max_ttl_ms=10_000, watch_queue=4)
    return LockManager(build_nodes(config), config)


LEASE = hashlib.sha1(b"lease-1").hexdigest().encode()
OTHER = hashlib.sha1(b"lease-2").hexdigest().encode()
RECORD = encode_meta(Meta(b"pod-7", b"cfg", 1_700_000_000_000))


def _say(hub: WatchHub, node: int, kind: bytes, token: int, digest: bytes = LEASE,
         name: bytes = b"n", pttl: int = 5000, record: bytes = RECORD) -> None:  # fmt: skip
    hub.on_node_event(
        node, encode_event(NodeEvent(kind, token, pttl, digest, lock_key(name), record))
    )


async def _quiet(sub: AsyncIterator[WatchEvent]) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(sub), 0.05)


async def _start(hub: WatchHub, key: bytes, prefix: bool = False) -> Subscription:
    sub = await hub.subscribe(key, prefix=prefix)
    first = await anext(sub)
    if not prefix:
        assert (first.type, first.held) == (EventType.STATE, False)
        first = await anext(sub)
    assert first.type == EventType.SYNCED
    return sub


async def test_one_event_per_change_from_five_nodes(manager: LockManager) -> None:
    hub = WatchHub(manager)
    try:
        sub = await _start(hub, b"n")
        for node in (0, 0, 1):  # a node repeating itself counts once
            _say(hub, node, b"A", 5, pttl=4000 + node)
        await _quiet(sub)
        _say(hub, 2, b"A", 5, pttl=3000)
        got = await anext(sub)
        assert (got.type, got.token, got.meta) == (
            EventType.ACQUIRED,
            5,
            Meta(b"pod-7", b"cfg", 1_700_000_000_000),
        )
        assert 2900 <= got.ttl_remaining_ms <= 3000  # the third longest: a quorum's TTL
        for node in (3, 4):
            _say(hub, node, b"A", 5)
        for node in (0, 1, 2):  # an older grant reported late
            _say(hub, node, b"A", 4)
        _say(hub, 0, b"A", 6, digest=b"")  # a fence advance where no lease holds it
        _say(hub, 1, b"R", 5, digest=OTHER)  # some other lease's release
        _say(hub, 1, b"R", 5, name=b"elsewhere")
        await _quiet(sub)
        _say(hub, 3, b"R", 5)
        assert ((got := await anext(sub)).type, got.token) == (EventType.RELEASED, 5)
        for node in (0, 1, 2, 4):
            _say(hub, node, b"R", 5)
        await _quiet(sub)
        for node in (4, 2, 0):
            _say(hub, node, b"A", 9, digest=OTHER, record=b"")
        got = await anext(sub)
        assert (got.type, got.token, got.meta) == (EventType.ACQUIRED, 9, None)
        # A newer grant heard while the last is held: the last one ended unseen.
        for node in (1, 2, 3):
            _say(hub, node, b"A", 12)
        assert [((e := await anext(sub)).type, e.token) for _ in range(2)] == [
            (EventType.EXPIRED, 9),
            (EventType.ACQUIRED, 12),
        ]
        # The holder replaces its owner record: one UPDATED, whichever nodes repeat it.
        proclaimed = encode_meta(Meta(b"pod-8", b"v2", 1_700_000_000_500))
        for node in (1, 2, 3):
            _say(hub, node, b"U", 12, pttl=7000, record=proclaimed)
        _say(hub, 1, b"U", 12, digest=OTHER, record=RECORD)  # not the holder's lease
        got = await anext(sub)
        assert (got.type, got.token, got.meta, got.ttl_remaining_ms) == (
            EventType.UPDATED,
            12,
            Meta(b"pod-8", b"v2", 1_700_000_000_500),
            7000,
        )
        await _quiet(sub)
        _say(hub, 2, b"F", 12)
        assert ((got := await anext(sub)).type, got.token) == (EventType.FORCE_RELEASED, 12)
    finally:
        await hub.close()
        await manager.close()


async def test_a_full_queue_cuts_the_watcher_off(manager: LockManager) -> None:
    hub = WatchHub(manager)
    try:
        sub = await _start(hub, b"n")
        watching = await _start(hub, b"", prefix=True)
        for token in range(1, 4):
            for node in range(3):
                _say(hub, node, b"A", token)
            _say(hub, 0, b"R", token)
        # 6 events > a queue of 4: both watchers (neither reads) are cut off.
        assert sub.failed.done() and watching.failed.done()
        with pytest.raises(LockdError) as cut:
            await anext(sub)
        assert (cut.value.reason, cut.value.code.name) == ("WATCHER_TOO_SLOW", "RESOURCE_EXHAUSTED")
        assert hub.watchers == 0 and hub.tracked == 0  # nothing left behind
    finally:
        await hub.close()
        await manager.close()


async def test_expiry_is_read_from_the_nodes_at_the_quorum_deadline(manager: LockManager) -> None:
    hub = WatchHub(manager)
    try:
        sub = await _start(hub, b"n")
        for node, pttl in ((0, 60), (1, 5000), (2, 80), (3, 40)):
            _say(hub, node, b"A", 3, pttl=pttl)
        got = await anext(sub)
        assert (got.type, got.token) == (EventType.ACQUIRED, 3)
        assert got.ttl_remaining_ms <= 60  # quorum holds it until the third longest TTL
        # The nodes (which never held it) are read once the deadline passes.
        got = await asyncio.wait_for(anext(sub), 2)
        assert (got.type, got.token) == (EventType.EXPIRED, 3)
        # A late report of the expired grant changes nothing.
        _say(hub, 4, b"R", 3)
        await _quiet(sub)
    finally:
        await hub.close()
        await manager.close()
