"""Owner records: who holds a lock, a small value, and when it was granted (read from
the nodes here; what the answers add up to is `lockd.core.records`).

Acquire writes the record on each node with the lock (`lockd_acquire`'s optional
argument, key `meta:{name}`, same deadline, deleted with the lock), so any gateway can
show it. The lease id is never part of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from lockd import errors
from lockd.core import Meta, lock_key
from lockd.core.records import Holder, NodeState, merge
from lockd.errors import ErrorReason
from lockd.gateway.locks import LockManager
from lockd.gateway.nodes import NodeError, RawReply

__all__ = [
    "MAX_OWNER_BYTES",
    "MAX_VALUE_BYTES",
    "holder",
    "parse_peek",
    "peek",
    "requested",
]

MAX_OWNER_BYTES = 128
MAX_VALUE_BYTES = 1024


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


async def holder(manager: LockManager, name: bytes) -> Holder:
    """Lock `name` as the nodes see it now, with its owner record."""
    answers = await peek(manager, [name])
    return merge([a[0] for a in answers if a is not None], manager.quorum)
