"""Owner records: who holds a lock, a small value, and when it was granted.

Acquire writes the record on each node with the lock (`lockd_acquire`'s optional
argument, key `meta:{name}`, same deadline, deleted with the lock), so any gateway can
show it. The lease id is never part of it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Sequence

from lockd import errors
from lockd.core import Meta, decode_meta, lock_key
from lockd.errors import ErrorReason
from lockd.gateway.locks import LockManager
from lockd.gateway.nodes import NodeError, RawReply

__all__ = [
    "MAX_OWNER_BYTES",
    "MAX_VALUE_BYTES",
    "Holder",
    "NodeState",
    "holder",
    "merge",
    "parse_peek",
    "peek",
    "requested",
]

MAX_OWNER_BYTES = 128
MAX_VALUE_BYTES = 1024
FOREVER_MS = 2**62  # a lock key without a TTL (written by hand) sorts as never expiring


@dataclasses.dataclass(frozen=True, slots=True)
class NodeState:
    """One node's answer about one lock: PTTL (-2 not held), counter, raw record."""

    pttl_ms: int
    counter: int
    record: bytes | None


@dataclasses.dataclass(frozen=True, slots=True)
class Holder:
    """A lock as a quorum of nodes sees it, with its owner record."""

    held: bool
    ttl_remaining_ms: int
    fencing_counter: int
    nodes_answered: int
    nodes_holding: int
    meta: Meta | None


def requested(owner: str, value: bytes) -> Meta | None:
    """The owner record an Acquire asks for (None when it gives neither), or
    INVALID_ARGUMENT BAD_OWNER / BAD_VALUE when too large."""
    raw = owner.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_OWNER_BYTES:
        raise errors.invalid(
            ErrorReason.BAD_OWNER, f"owner is {len(raw)} bytes, more than {MAX_OWNER_BYTES}"
        )
    if len(value) > MAX_VALUE_BYTES:
        raise errors.invalid(
            ErrorReason.BAD_VALUE, f"value is {len(value)} bytes, more than {MAX_VALUE_BYTES}"
        )
    if not raw and not value:
        return None
    return Meta(raw, value, 0)


def parse_peek(reply: RawReply) -> NodeState:
    """One `[pttl, counter, record]` entry of `lockd_peek` / `lockd_list`."""
    if not isinstance(reply, list) or len(reply) != 3:
        raise NodeError(f"unexpected lock state {reply!r}")
    pttl, counter, record = reply
    if not isinstance(pttl, int) or not isinstance(counter, int):
        raise NodeError(f"unexpected lock state {reply!r}")
    return NodeState(pttl, counter, record if isinstance(record, bytes) else None)


async def peek(manager: LockManager, names: Sequence[bytes]) -> list[list[NodeState] | None]:
    """Every node's state of each lock in `names`, in node order; None for a node that
    did not answer in time."""
    keys = [lock_key(name) for name in names]

    async def one(index: int) -> list[NodeState] | None:
        node = manager.nodes[index]
        try:
            reply = await asyncio.wait_for(
                node.fcall(b"lockd_peek", keys, []), manager.node_timeout_s
            )
            if not isinstance(reply, list) or len(reply) != len(keys):
                raise NodeError(f"unexpected lockd_peek reply {reply!r}")
            return [parse_peek(entry) for entry in reply]
        except (NodeError, TimeoutError):
            return None

    if not keys:
        return [None] * len(manager.nodes)
    return list(await asyncio.gather(*(one(i) for i in range(len(manager.nodes)))))


def merge(states: Sequence[NodeState], quorum: int) -> Holder:
    """What the answering nodes' states add up to: held when a quorum holds it, TTL left
    until fewer than a quorum do, the highest counter, and the record a quorum of
    holders agree on (the same attempt wrote it on each)."""
    holding = [s for s in states if s.pttl_ms != -2]
    pttls = sorted((s.pttl_ms if s.pttl_ms >= 0 else FOREVER_MS for s in holding), reverse=True)
    held = len(pttls) >= quorum
    meta = None
    records = collections.Counter(s.record for s in holding if s.record is not None)
    if held and records:
        record, count = records.most_common(1)[0]
        meta = decode_meta(record) if count >= quorum else None
    return Holder(
        held=held,
        ttl_remaining_ms=pttls[quorum - 1] if held else 0,
        fencing_counter=max((s.counter for s in states), default=0),
        nodes_answered=len(states),
        nodes_holding=len(holding),
        meta=meta,
    )


async def holder(manager: LockManager, name: bytes) -> Holder:
    """Lock `name` as the nodes see it now, with its owner record."""
    answers = await peek(manager, [name])
    return merge([a[0] for a in answers if a is not None], manager.quorum)
