"""Leader election on the lock table: an election is a lock, its leader the holder.

Election `E` is the lock `@election/E` (`lockd.core.records.election_lock`, where the
record encoding and the reading of a leader live too, shared with the simulator): names
under `@election/` are reserved (Acquire refuses them), so an election and a lock never
collide. Campaign is a waiting Acquire (FIFO through the gateway's lock table) whose
grant's fencing token is the term; it then writes the leader record, `<term>:<value>` as
the lock's value in its owner record (`encode_value`), with a `lockd_extend` on the
lease (the Renew machine with a record), so Leader reads the exact term from a quorum
rather than the fencing counter (which reads "the term, or more" once collected).
Proclaim is the same extend with a new value. Resign is a Release. Renewal is the
ordinary Renew on the lock.

Observe shares one poller per election among its observers (`Observers`): each round
reads the leader from the nodes, and every observer keeps only the latest leader it has
not yet sent, so a slow observer never grows the gateway's memory and still sees terms
in order. A round runs at every lock event of the election's lock from any gateway
(the Watch hub, `lockd.gateway.watch`: grants, releases, expiries, forced releases,
record updates), at
once when this gateway changed the election (Campaign, Proclaim, Resign), and every
`poll_s` as the backstop should a node message be lost. A leader record written by
`lockd_extend` (Campaign's, Proclaim's) is an UPDATED event. A grant is published
before its leader record is written, so a round that finds the lock held without a
term looks again after `RECORD_WAIT_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Coroutine
from typing import TypeVar

import grpc

from lockd import errors
from lockd.core import Granted, Meta, Renewed, encode_meta
from lockd.core.records import (
    ELECTION_PREFIX,
    TERM_DIGITS,
    Leader,
    election_lock,
    encode_value,
    leader_of,
    supersedes,
)
from lockd.errors import ErrorReason, LockdError
from lockd.gateway import records
from lockd.gateway.locks import LockManager, Now
from lockd.gateway.watch import WatchHub
from lockd.units import MS

__all__ = [
    "MAX_ELECTION_VALUE_BYTES",
    "Observers",
    "campaign",
    "check_election",
    "check_not_reserved",
    "leader",
    "proclaim",
    "resign",
]

MAX_ELECTION_VALUE_BYTES = 1000
"""A candidate's value; with `<term>:` before it, within the lock value limit."""
assert MAX_ELECTION_VALUE_BYTES + TERM_DIGITS + 1 <= records.MAX_VALUE_BYTES
CAMPAIGN_WAIT_MS = 365 * 24 * 3600 * 1000
"""How long Campaign waits with wait_ms 0 and no RPC deadline."""
T = TypeVar("T")
log = logging.getLogger("lockd.gateway")
POLL_S = 0.25
"""How often Observe looks at an election without news of a change (a backstop)."""
RECORD_WAIT_S = 0.01
"""How soon Observe looks again at a leader whose record has no term yet."""


def check_election(manager: LockManager, election: str) -> bytes:
    """The election name as bytes, or INVALID_ARGUMENT BAD_NAME (the same rules as lock
    names, with room for the prefix)."""
    raw = election.encode("utf-8", "surrogatepass")
    if not raw:
        raise errors.invalid(ErrorReason.BAD_NAME, "election name is empty")
    limit = manager.config.max_name_bytes - len(ELECTION_PREFIX)
    if len(raw) > limit:
        raise errors.invalid(
            ErrorReason.BAD_NAME, f"election name is {len(raw)} bytes; the limit is {limit}"
        )
    manager.check_name(election)  # UTF-8
    return raw


def check_not_reserved(name: bytes) -> bytes:
    """`name`, or BAD_NAME when it is an election's lock (Acquire must not take one)."""
    if name.startswith(ELECTION_PREFIX):
        raise errors.invalid(
            ErrorReason.BAD_NAME,
            f"lock names under {ELECTION_PREFIX.decode()!r} are reserved for elections: "
            "use Campaign",
        )
    return name


def check_value(value: bytes) -> bytes:
    """A candidate's value, or INVALID_ARGUMENT BAD_VALUE when too large."""
    if len(value) > MAX_ELECTION_VALUE_BYTES:
        raise errors.invalid(
            ErrorReason.BAD_VALUE,
            f"value is {len(value)} bytes, more than {MAX_ELECTION_VALUE_BYTES}",
        )
    return value


def check_term(term: int) -> int:
    """A leader key's term, or INVALID_ARGUMENT BAD_REQUEST when it cannot be one."""
    if term <= 0:
        raise errors.invalid(ErrorReason.BAD_REQUEST, "leader.term must be a term Campaign gave")
    return term


def _record(owner: bytes, term: int, value: bytes) -> bytes:
    return encode_meta(Meta(owner, encode_value(term, value), time.time_ns() // MS))


async def campaign(
    manager: LockManager,
    election: bytes,
    value: bytes,
    owner: bytes,
    ttl_ms: int,
    wait_ms: int,
    deadline_ns: int | None,
) -> Granted:
    """Wait (up to `wait_ms`, 0: `CAMPAIGN_WAIT_MS`, and `deadline_ns`) to lead
    `election` and write the leader record; the grant's token is the term. A record that
    cannot be written on a quorum loses the lease (LEASE_LOST)."""
    name = election_lock(election)
    wait = manager.check_wait(wait_ms) or CAMPAIGN_WAIT_MS
    granted = await _ready(manager.acquire(name, ttl_ms, wait, deadline_ns, Meta(owner, b"", 0)))
    try:
        await _ready(
            manager.renew(name, granted.lease, ttl_ms, _record(owner, granted.token, value))
        )
    except asyncio.CancelledError:
        manager.release_in_background(name, granted.lease)
        raise
    return granted


async def proclaim(
    manager: LockManager,
    election: bytes,
    lease: bytes,
    term: int,
    value: bytes,
    owner: bytes,
    ttl_ms: int,
) -> Renewed:
    """Replace the leader's value (keeping `term`) and renew its lease on a quorum."""
    return await _ready(
        manager.renew(election_lock(election), lease, ttl_ms, _record(owner, term, value))
    )


async def resign(manager: LockManager, election: bytes, lease: bytes) -> None:
    """Release the leadership, or FAILED_PRECONDITION NOT_LEADER."""
    try:
        await _ready(manager.release(election_lock(election), lease))
    except LockdError as exc:
        if exc.reason != ErrorReason.Name(ErrorReason.NOT_OWNED):
            raise
        raise errors.precondition(
            ErrorReason.NOT_LEADER,
            "this lease does not lead the election (deposed, expired, resigned, or never "
            "led); nothing was released",
        ) from None


async def current(manager: LockManager, election: bytes) -> Leader | None:
    """The leader a quorum of nodes shows now, or None."""
    return (await _look(manager, election))[0]


async def _look(manager: LockManager, election: bytes) -> tuple[Leader | None, bool]:
    """The leader a quorum shows now (or None), and whether the lock is held by a
    candidate whose record has no term yet (about to lead)."""
    return leader_of(await records.holder(manager, election_lock(election)))


async def leader(manager: LockManager, election: bytes) -> Leader:
    """The current leader, or NOT_FOUND NO_LEADER."""
    found = await current(manager, election)
    if found is None:
        raise LockdError(
            grpc.StatusCode.NOT_FOUND,
            ErrorReason.NO_LEADER,
            f"election {election.decode(errors='replace')!r} has no leader",
        )
    return found


async def _ready(answer: Now[T]) -> T:
    """The manager's answer, awaited if it was not ready at once."""
    if isinstance(answer, Coroutine):
        return await answer
    return answer


class _Feed:
    """One observer's slot: the newest leader it has not been sent yet."""

    def __init__(self) -> None:
        self.pending: Leader | None = None
        self.sent: tuple[int, bytes] | None = None
        self.ready = asyncio.Event()

    def offer(self, found: Leader) -> None:
        """Keep `found` if it comes after what was sent (a larger term, or a new value
        in the same term)."""
        if supersedes(found, self.sent):
            self.pending = found
            self.ready.set()


class Observers:
    """The observers of every election at this gateway, one poller per election."""

    def __init__(
        self, manager: LockManager, hub: WatchHub | None = None, poll_s: float = POLL_S
    ) -> None:
        self.manager = manager
        self.hub = hub
        self.poll_s = poll_s
        self._feeds: dict[bytes, set[_Feed]] = {}
        self._pollers: dict[bytes, asyncio.Task[None]] = {}
        self._pokes: dict[bytes, asyncio.Event] = {}

    def poke(self, election: bytes) -> None:
        """`election` may have changed: look at once."""
        event = self._pokes.get(election)
        if event is not None:
            event.set()

    async def observe(self, election: bytes) -> AsyncGenerator[Leader, None]:
        """The leader now (once there is one) and at every change, in term order."""
        feed = _Feed()
        self._feeds.setdefault(election, set()).add(feed)
        if election not in self._pollers:
            self._pokes[election] = asyncio.Event()
            self._pollers[election] = asyncio.create_task(self._poll(election))
        try:
            while True:
                await feed.ready.wait()
                feed.ready.clear()
                found = feed.pending
                if found is None:
                    continue
                feed.pending = None
                feed.sent = (found.term, found.value)
                yield found
        finally:
            feeds = self._feeds[election]
            feeds.discard(feed)
            if not feeds:
                del self._feeds[election]
                del self._pokes[election]
                poller = self._pollers.pop(election)
                poller.cancel()

    async def _poll(self, election: bytes) -> None:
        poke = self._pokes[election]
        follower = asyncio.create_task(self._follow(election)) if self.hub else None
        try:
            while True:
                poke.clear()
                found, pending = await _look(self.manager, election)
                if found is not None:
                    for feed in self._feeds.get(election, ()):
                        feed.offer(found)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poke.wait(), RECORD_WAIT_S if pending else self.poll_s)
        finally:
            if follower is not None:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)

    async def _follow(self, election: bytes) -> None:
        """Poke the poller at every event of the election's lock (from any gateway); a
        watch cut off or refused (too many watchers) is tried again, polling meanwhile."""
        assert self.hub is not None
        while True:
            try:
                async with await self.hub.subscribe(election_lock(election)) as events:
                    async for _ in events:
                        self.poke(election)
            except LockdError as exc:
                log.debug("observe %r: watch ended (%s); polling", election, exc.message)
            await asyncio.sleep(self.poll_s)

    async def close(self) -> None:
        """Stop every poller (the gateway is stopping)."""
        pollers = list(self._pollers.values())
        for poller in pollers:
            poller.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
