"""List: the held locks under a prefix, a page at a time, merged from the nodes.

A lock held by a majority of N nodes is held on at least one of the first
N - quorum + 1 nodes. So a listing walks those nodes' keys in turn (`lockd_list`, a SCAN
step on one node: bounded work), asks every other node about the names one page found
(`lockd_peek`, one call per node), and reports a name when a quorum holds it and no
earlier node of the walk holds it (that node's walk reported it already). A walked
node that fails its scan step is skipped, and stays skipped for the rest of the listing:
its locks are then reported by the later nodes that hold them, even when the skipped
node answers their peeks. The page token is the walk's position: which node, which
nodes were skipped, and the cursor there.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import struct

from lockd import errors
from lockd.core import Meta
from lockd.core.records import NodeState, merge
from lockd.errors import ErrorReason
from lockd.gateway import records
from lockd.gateway.locks import LockManager
from lockd.gateway.nodes import NodeError

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "Entry", "Page", "check_prefix", "list_page"]

DEFAULT_PAGE = 100
MAX_PAGE = 1000
STEP_TIMEOUT_S = 1.0
"""The least a scan step may take (a listing is not latency-bound; a first step sorts the
node's keys under the prefix), before the node is skipped."""


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One held lock: name, TTL left, fencing counter, owner record, local waiters."""

    name: bytes
    ttl_remaining_ms: int
    fencing_counter: int
    meta: Meta | None
    waiters: int


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """Some held locks, and the token of the next page ("" when the listing is done).
    A page may be short, even empty, before the end: keep going until the token is ""."""

    entries: list[Entry]
    next_token: str


def _encode(node: int, skipped: int, cursor: bytes) -> str:
    return base64.urlsafe_b64encode(struct.pack(">BB", node, skipped) + cursor).decode()


def _decode(token: str, walked: int) -> tuple[int, int, bytes]:
    """(node, skipped nodes as a bit mask, cursor) of a page token."""
    if not token:
        return 0, 0, b"0"
    try:
        raw = base64.urlsafe_b64decode(token.encode())
    except (ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) < 3 or raw[0] >= walked or raw[1] >> raw[0]:
        raise errors.invalid(ErrorReason.BAD_PAGE, "page_token is not one List returned")
    return raw[0], raw[1], raw[2:]


def _step(reply: object) -> tuple[bytes, list[tuple[bytes, NodeState]]]:
    """A `lockd_list` reply: next cursor and (name, state) entries."""
    if not isinstance(reply, list) or len(reply) != 2:
        raise NodeError(f"unexpected lockd_list reply {reply!r}")
    cursor, found = reply
    if not isinstance(cursor, bytes) or not isinstance(found, list):
        raise NodeError(f"unexpected lockd_list reply {reply!r}")
    entries = []
    for item in found:
        if not isinstance(item, list) or len(item) != 4 or not isinstance(item[0], bytes):
            raise NodeError(f"unexpected lockd_list entry {item!r}")
        entries.append((item[0], records.parse_peek(item[1:])))
    return cursor, entries


def check_prefix(manager: LockManager, prefix: bytes) -> bytes:
    """The name prefix, or INVALID_ARGUMENT BAD_NAME when longer than a name may be."""
    if len(prefix) > manager.config.max_name_bytes:
        raise errors.invalid(
            ErrorReason.BAD_NAME, f"prefix is longer than {manager.config.max_name_bytes} bytes"
        )
    return prefix


async def list_page(manager: LockManager, prefix: bytes, token: str, page_size: int) -> Page:
    """One page of the locks held under `prefix` (see the module docstring)."""
    if page_size < 0:
        raise errors.invalid(ErrorReason.BAD_PAGE, f"page_size={page_size} is negative")
    check_prefix(manager, prefix)
    count = min(page_size or DEFAULT_PAGE, MAX_PAGE)
    walked = len(manager.nodes) - manager.quorum + 1
    index, skipped, cursor = _decode(token, walked)
    while True:
        node = manager.nodes[index]
        try:
            reply = await asyncio.wait_for(
                node.fcall(b"lockd_list", [], [cursor, prefix, b"%d" % count]),
                max(manager.node_timeout_s, STEP_TIMEOUT_S),
            )
            cursor, found = _step(reply)
            break
        except (NodeError, TimeoutError):
            # Its locks are also held on later nodes of the walk (or not by a quorum),
            # which report them from now on.
            skipped |= 1 << index
            index, cursor = index + 1, b"0"
            if index == walked:
                raise errors.unavailable(
                    ErrorReason.QUORUM_UNAVAILABLE,
                    f"none of the first {walked} nodes answered the listing",
                ) from None
    names = [name for name, _ in found]
    others = await records.peek(manager, names) if names else []
    entries = []
    for i, (name, state) in enumerate(found):
        states = []
        first_holder = index
        for j, answer in enumerate(others):
            if j == index:
                states.append(state)
            elif answer is not None:
                states.append(answer[i])
                if j < first_holder and not skipped >> j & 1 and answer[i].pttl_ms != -2:
                    first_holder = j
        holder = merge(states, manager.quorum)
        if holder.held and first_holder == index:
            entries.append(
                Entry(
                    name,
                    holder.ttl_remaining_ms,
                    holder.fencing_counter,
                    holder.meta,
                    manager.waiters(name),
                )
            )
    if cursor == b"0":
        index, cursor = index + 1, b"0"
    next_token = "" if index == walked else _encode(index, skipped, cursor)
    return Page(entries, next_token)
