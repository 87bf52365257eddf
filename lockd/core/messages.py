"""What the quorum core sends, receives and decides: plain frozen dataclasses."""

from __future__ import annotations

import dataclasses
import enum

__all__ = [
    "EVENTS_CHANNEL",
    "AcquireCall",
    "AcquireReply",
    "Call",
    "ExtendCall",
    "FenceCall",
    "FenceReply",
    "Granted",
    "Meta",
    "NodeEvent",
    "NodeFailure",
    "NodeReply",
    "NotGranted",
    "Reason",
    "ReleaseCall",
    "Released",
    "RenewFailed",
    "Renewed",
    "Send",
    "decode_event",
    "decode_meta",
    "encode_event",
    "encode_meta",
    "fence_key",
    "lock_key",
    "lock_name",
]


LOCK_PREFIX = b"lock:{"
FENCE_PREFIX = b"fence:{"


def lock_key(name: bytes) -> bytes:
    """The node key holding the lease id of lock `name` (hash-tagged with its fence key)."""
    return LOCK_PREFIX + name + b"}"


def lock_name(key: bytes) -> bytes | None:
    """The lock name inside a node lock key (the inverse of `lock_key`), else None."""
    if key.startswith(LOCK_PREFIX) and key.endswith(b"}"):
        return key[len(LOCK_PREFIX) : -1]
    return None


def fence_key(name: bytes) -> bytes:
    """The node key holding the fencing counter of lock `name`."""
    return FENCE_PREFIX + name + b"}"


@dataclasses.dataclass(frozen=True, slots=True)
class Meta:
    """A lock's owner record: who holds it, a small value, and when it was granted
    (Unix milliseconds of the gateway's wall clock). Never the lease id."""

    owner: bytes
    value: bytes
    acquired_at_ms: int


def encode_meta(meta: Meta) -> bytes:
    """The record as nodes store it (opaque to them): `1:<at ms>:<owner length>:` then
    the owner and the value bytes."""
    return b"1:%d:%d:%b%b" % (meta.acquired_at_ms, len(meta.owner), meta.owner, meta.value)


def decode_meta(raw: bytes) -> Meta | None:
    """The record `encode_meta` wrote, or None if `raw` is not one."""
    parts = raw.split(b":", 3)
    if len(parts) != 4 or parts[0] != b"1" or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    size = int(parts[2])
    if size > len(parts[3]):
        return None
    return Meta(parts[3][:size], parts[3][size:], int(parts[1]))


# -- lock events the nodes publish -----------------------------------------------------

EVENTS_CHANNEL = b"lockd:events"
"""Pub/sub channel on which nodes publish lock events (`encode_event`) for watchers."""


@dataclasses.dataclass(frozen=True, slots=True)
class NodeEvent:
    """One node's lock event, as published on `EVENTS_CHANNEL`.

    `kind` is b"A" (a fencing advance was accepted while a lease holds the lock: the
    grant's token is `counter`), b"R" (the holder released it), b"F" (an admin forced
    it) or b"U" (the holder, acquiring again with its lease, replaced the owner record).
    `digest` is the SHA-1 hex of the lease id holding the lock on that node (never the
    lease id itself; empty when none held it), `pttl_ms` its PTTL then (-2: not held;
    for U the TTL asked for), `record` the owner record (A and U)."""

    kind: bytes
    counter: int
    pttl_ms: int
    digest: bytes
    lock_key: bytes
    record: bytes


def encode_event(event: NodeEvent) -> bytes:
    """`<kind>:<counter>:<pttl>:<digest>:<key length>:<lock key><record>` (the Lua
    library builds the same bytes)."""
    e = event
    return b"%b:%d:%d:%b:%d:%b%b" % (
        e.kind,
        e.counter,
        e.pttl_ms,
        e.digest,
        len(e.lock_key),
        e.lock_key,
        e.record,
    )


def decode_event(raw: bytes) -> NodeEvent | None:
    """The event `encode_event` wrote, or None if `raw` is not one."""
    parts = raw.split(b":", 5)
    if len(parts) != 6 or parts[0] not in (b"A", b"R", b"F", b"U"):
        return None
    kind, counter, pttl, digest, size, rest = parts
    try:
        n, ms, length = int(counter), int(pttl), int(size)
    except ValueError:
        return None
    if not 0 <= length <= len(rest):
        return None
    return NodeEvent(kind, n, ms, digest, rest[:length], rest[length:])


# -- calls to one node -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class AcquireCall:
    """`lockd_acquire`: SET NX PX, or refresh if `lease` already holds it; with `meta`,
    the owner record is written with the lock."""

    lock_key: bytes
    fence_key: bytes
    lease: bytes
    ttl_ms: int
    meta: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseCall:
    """`lockd_release`: compare-and-delete."""

    lock_key: bytes
    lease: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class ExtendCall:
    """`lockd_extend`: compare-and-PEXPIRE; with `meta`, the owner record is replaced
    (an election's Proclaim)."""

    lock_key: bytes
    lease: bytes
    ttl_ms: int
    meta: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class FenceCall:
    """`lockd_fence_advance`: counter := token only if counter < token."""

    fence_key: bytes
    token: int


Call = AcquireCall | ReleaseCall | ExtendCall | FenceCall


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """Send `call` to node `node`; give up waiting at `deadline_ns`. `tag` identifies the
    reply to the machine (stale tags from earlier rounds are ignored)."""

    node: int
    tag: int
    call: Call
    deadline_ns: int


# -- replies from one node ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class AcquireReply:
    """`lockd_acquire` answered: whether the key is ours now, and the node's counter."""

    acquired: bool
    counter: int


@dataclasses.dataclass(frozen=True, slots=True)
class FenceReply:
    """`lockd_fence_advance` answered: whether the token was accepted, the counter after."""

    accepted: bool
    counter: int


@dataclasses.dataclass(frozen=True, slots=True)
class NodeFailure:
    """The node answered with an error or could not be reached.

    `restart_delay_ms` is set when it refused because of its delayed restart;
    `timed_out` when no answer came in time (the call may still have been carried out).
    """

    message: str
    restart_delay_ms: int | None = None
    timed_out: bool = False


NodeReply = AcquireReply | FenceReply | bool | NodeFailure
"""A node's answer; release and extend answer True (done) or False (not this lease)."""


# -- outcomes ----------------------------------------------------------------------------


class Reason(enum.Enum):
    """Why an acquisition attempt did not grant."""

    HELD = "held"
    """Another lease holds the lock on enough nodes."""
    NO_QUORUM = "no_quorum"
    """Too few nodes answered (down, partitioned, erroring)."""
    RESTARTING = "restarting"
    """Too few nodes are past their delayed restart."""
    TOO_SLOW = "too_slow"
    """A quorum agreed, but too late: no validity left after elapsed time and drift."""
    FENCE_CONTENDED = "fence_contended"
    """The fencing phase could not get a majority to accept a token in its rounds."""


@dataclasses.dataclass(frozen=True, slots=True)
class Granted:
    """The lease is held: valid for `validity_ns` from `decided_ns` (already net of
    elapsed time and drift), with fencing token `token`."""

    lease: bytes
    token: int
    validity_ns: int
    decided_ns: int

    @property
    def deadline_ns(self) -> int:
        """When the lease stops being safe to rely on."""
        return self.decided_ns + self.validity_ns


@dataclasses.dataclass(frozen=True, slots=True)
class NotGranted:
    """This attempt failed; its partial acquisitions were released. `retry_after_ns` is a
    hint (restart delays), 0 when unknown."""

    reason: Reason
    detail: str
    retry_after_ns: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Renewed:
    """Extended on a quorum: safe for `validity_ns` from `decided_ns`."""

    validity_ns: int
    decided_ns: int

    @property
    def deadline_ns(self) -> int:
        """When the lease stops being safe to rely on."""
        return self.decided_ns + self.validity_ns


@dataclasses.dataclass(frozen=True, slots=True)
class RenewFailed:
    """The lease could not be extended on a quorum in time: it must be treated as lost."""

    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class Released:
    """Release finished: how many nodes still had this lease and deleted it."""

    released: int
    answered: int
