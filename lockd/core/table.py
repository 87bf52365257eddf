"""The lock table of one gateway, sans-I/O: waiting, holders, limits and retries.

Around the single attempts of `machines.py` a gateway keeps, per lock, a FIFO queue of
its callers (only the head attempts), the leases it granted and when they expire, its
limits, and when to try again: after a release, when its own holder expires, when the
nodes say another gateway's lease expires (a probe), after a backoff, or when a caller's
wait runs out. All of it is here, as one state machine fed events that carry `now` and
answering commands; it never reads a clock, sleeps or draws randomness of its own (the
driver hands it a seeded `random.Random`). The asyncio gateway (`gateway/locks.py`) and
the simulator (`sim/gateway.py`) drive the same object.

Per lock the head waiter is in one phase:

| phase | left by | to |
|---|---|---|
| IDLE | `_advance` | SLEEP (a holder of ours is live: until it expires), ATTEMPT |
| ATTEMPT | `AttemptDone` | grant; PROBE (HELD); SLEEP (backoff); refuse (wait over) |
| PROBE | `ProbeDone` | SLEEP (until the nodes' keys expire, bounded); IDLE if woken |
| SLEEP | `TimerFired`; `ReleaseHeard` / `LeaseEnded` unless backing off | IDLE, or refuse |

A release heard during ATTEMPT or PROBE makes a sleep for a holder (ours, or HELD) end
at once. A backoff (after NO_QUORUM, RESTARTING, TOO_SLOW, FENCE_CONTENDED) runs its
course: no holder was in the way, and a failed attempt's own releases of its partial
acquisitions are published too, so waking on them would retry at once, again and
again, for as long as the cause lasts. Every lock
with waiters has an attempt or probe in flight, or a timer armed (`WakeAt`) no later than
its next deadline: the end of the head's sleep and every other waiter's `until`.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import random
from collections.abc import Callable, Iterable
from typing import Any

from lockd.core.messages import Granted, NotGranted, Reason
from lockd.core.quorum import quorum, retry_delay_ns
from lockd.units import MS
from lockd.v1.errors_pb2 import ErrorReason  # the proto enum, without gRPC

__all__ = [
    "AttemptDone",
    "Cancel",
    "Command",
    "Event",
    "GiveBack",
    "GrantWaiter",
    "LeaseEnded",
    "LeaseRenewed",
    "LockTable",
    "Policy",
    "ProbeDone",
    "Pump",
    "RefuseWaiter",
    "ReleaseHeard",
    "Request",
    "Shutdown",
    "StartAttempt",
    "StartProbe",
    "TimerFired",
    "WakeAt",
    "held_for_ns",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """Limits and retry timing of one gateway."""

    max_waiters_per_lock: int = 1024
    max_waiters: int = 65_536
    max_locks: int = 100_000
    """Leases granted through this table and not yet released or expired."""
    backoff_base_ms: int = 5
    backoff_cap_ms: int = 200
    """Backoff after a failed attempt (not HELD): `retry_delay_ns(attempt, base, cap)`."""
    held_recheck_max_ns: int = 1_000 * MS
    """Longest sleep after HELD without a release heard (covers lost notifications)."""


# -- events (driver -> table) -----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """Caller `waiter` (an id unique in this table) asks for lock `name`, waiting at
    most until `until_ns`."""

    waiter: int
    name: bytes
    ttl_ms: int
    until_ns: int
    now: int


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptDone:
    """The attempt `StartAttempt.attempt` finished with `outcome`."""

    attempt: int
    outcome: Granted | NotGranted
    now: int


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeDone:
    """The nodes say lock `name` stays held for `held_for_ns` more (see `held_for_ns`)."""

    name: bytes
    held_for_ns: int
    now: int


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseRenewed:
    """`lease` on `name` was renewed for `ttl_ms` by a renewal started at `started_ns`."""

    name: bytes
    lease: bytes
    ttl_ms: int
    started_ns: int
    now: int


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseEnded:
    """`lease` on `name` was released through this gateway, or its renewal failed."""

    name: bytes
    lease: bytes
    now: int


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseHeard:
    """A node published a release of `name` (through any gateway)."""

    name: bytes
    now: int


@dataclasses.dataclass(frozen=True, slots=True)
class TimerFired:
    """The timer last asked for by `WakeAt(name, ...)` went off (stale ones are harmless)."""

    name: bytes
    now: int


@dataclasses.dataclass(frozen=True, slots=True)
class Cancel:
    """Caller `waiter` went away (unknown or answered waiters are ignored)."""

    waiter: int
    now: int


@dataclasses.dataclass(frozen=True, slots=True)
class Shutdown:
    """Graceful shutdown: refuse every waiter but those whose attempt is in flight."""

    now: int


Event = (
    Request
    | AttemptDone
    | ProbeDone
    | LeaseRenewed
    | LeaseEnded
    | ReleaseHeard
    | TimerFired
    | Cancel
    | Shutdown
)


# -- commands (table -> driver) ---------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class StartAttempt:
    """Run one `Acquire` of `name` for `ttl_ms` (fresh lease id) on behalf of `waiter`
    (the head); answer `AttemptDone`."""

    attempt: int
    name: bytes
    ttl_ms: int
    waiter: int


@dataclasses.dataclass(frozen=True, slots=True)
class StartProbe:
    """Ask the nodes how long `name` stays held; answer `ProbeDone` (`held_for_ns`)."""

    name: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class WakeAt:
    """Send `TimerFired(name)` at `at_ns`; replaces the lock's earlier timer, if any."""

    name: bytes
    at_ns: int


@dataclasses.dataclass(frozen=True, slots=True)
class GrantWaiter:
    """Caller `waiter` holds the lock: answer it with `granted`."""

    waiter: int
    granted: Granted


@dataclasses.dataclass(frozen=True, slots=True)
class RefuseWaiter:
    """Caller `waiter` gets no lease: `reason`, a sentence for people, and a retry hint."""

    waiter: int
    reason: ErrorReason
    detail: str
    retry_after_ns: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class GiveBack:
    """Release `lease` on `name`: granted to a caller that had gone away."""

    name: bytes
    lease: bytes


Command = StartAttempt | StartProbe | WakeAt | GrantWaiter | RefuseWaiter | GiveBack


def held_for_ns(pttls_ms: Iterable[int], nodes: int) -> int:
    """How long until fewer than a quorum of `nodes` hold a key, from the nodes' PTTL
    answers (-2 absent, -1 no expiry): 0 when a quorum does not hold it now."""
    held = sorted((p if p >= 0 else 10**9 for p in pttls_ms if p != -2), reverse=True)
    q = quorum(nodes)
    return held[q - 1] * MS if len(held) >= q else 0


# -- state ------------------------------------------------------------------------------


class _Phase(enum.Enum):
    IDLE = "idle"
    ATTEMPT = "attempt"
    PROBE = "probe"
    SLEEP = "sleep"


class _Sleep(enum.Enum):
    HOLDER = "a lease granted here is live"
    HELD = "held through another gateway"
    BACKOFF = "backing off"


class _Waiter:
    __slots__ = ("id", "name", "started", "ttl_ms", "until")

    def __init__(self, id: int, name: bytes, ttl_ms: int, until: int, started: int) -> None:
        self.id = id
        self.name = name
        self.ttl_ms = ttl_ms
        self.until = until
        self.started = started


class _Holder:
    __slots__ = ("expires_ns", "lease")

    def __init__(self, lease: bytes, expires_ns: int) -> None:
        self.lease = lease
        self.expires_ns = expires_ns


class _Lock:
    __slots__ = (
        "attempt_for",
        "backoffs",
        "name",
        "phase",
        "sleep",
        "timer_at",
        "waiters",
        "wake_at",
        "woken",
    )

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self.phase = _Phase.IDLE
        self.attempt_for: _Waiter | None = None  # None while ATTEMPT: its caller left
        self.backoffs = 0  # failed attempts of the current head (backoff exponent)
        self.woken = False  # a release was heard during ATTEMPT or PROBE
        self.sleep = _Sleep.HOLDER
        self.wake_at = 0  # end of SLEEP
        self.timer_at: int | None = None  # the earliest timer asked for and not yet fired


class LockTable:
    """Every lock of one gateway: see the module docstring. `handle(event)` returns the
    commands to carry out, in order."""

    def __init__(self, nodes: int, policy: Policy, rng: random.Random) -> None:
        self.nodes = nodes
        self.policy = policy
        self.shutting_down = False
        self._rng = rng
        self._locks: dict[bytes, _Lock] = {}
        self._holders: dict[bytes, _Holder] = {}
        # (name, lease) -> the TTL it was granted with, for the last `max_locks` grants,
        # whether or not they still hold (a renewal with ttl 0 of an expired lease must
        # reach the nodes and be told LEASE_LOST, not be refused for want of a TTL).
        self._granted_ttls: collections.OrderedDict[tuple[bytes, bytes], int] = (
            collections.OrderedDict()
        )
        self._waiters: dict[int, _Waiter] = {}
        self._attempts: dict[int, _Lock] = {}
        self._next_attempt = 0
        self._handlers: dict[type[Any], Callable[[Any], list[Command]]] = {
            Request: self._request,
            AttemptDone: self._attempt_done,
            ProbeDone: self._probe_done,
            LeaseRenewed: self._lease_renewed,
            LeaseEnded: self._lease_ended,
            ReleaseHeard: self._release_heard,
            TimerFired: self._timer_fired,
            Cancel: self._cancel,
            Shutdown: self._shutdown,
        }

    # -- queries ---------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Callers waiting at this gateway (all locks)."""
        return len(self._waiters)

    def waiters(self, name: bytes) -> int:
        """Callers waiting for `name`."""
        lock = self._locks.get(name)
        return len(lock.waiters) if lock is not None else 0

    def granted_ttl(self, name: bytes, lease: bytes) -> int | None:
        """The TTL `lease` on `name` was granted with here (renewals do not change it),
        whether or not it still holds; None when it was not granted here, or is older
        than the last `max_locks` grants."""
        return self._granted_ttls.get((name, lease))

    # -- events ----------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Command]:
        """Apply `event`; the commands it calls for."""
        return self._handlers[type(event)](event)

    def _request(self, ev: Request) -> list[Command]:
        now, name = ev.now, ev.name
        if self.shutting_down:
            return [_shutting_down(ev.waiter)]
        holders, policy = self._holders, self.policy
        if len(holders) >= policy.max_locks:
            for expired in [n for n, h in holders.items() if h.expires_ns <= now]:
                del holders[expired]
            if len(holders) >= policy.max_locks:
                return [
                    RefuseWaiter(
                        ev.waiter,
                        ErrorReason.TOO_MANY_LOCKS,
                        f"this gateway holds {len(holders)} leases, its limit",
                    )
                ]
        lock = self._locks.get(name)
        if lock is not None and len(lock.waiters) >= policy.max_waiters_per_lock:
            return [
                RefuseWaiter(
                    ev.waiter,
                    ErrorReason.TOO_MANY_WAITERS,
                    f"{len(lock.waiters)} callers already wait for this lock, its limit",
                )
            ]
        if len(self._waiters) >= policy.max_waiters:
            return [
                RefuseWaiter(
                    ev.waiter,
                    ErrorReason.TOO_MANY_WAITERS,
                    f"{len(self._waiters)} callers already wait at this gateway, its limit",
                )
            ]
        if lock is None:
            lock = self._locks[name] = _Lock(name)
        elif lock.waiters and ev.until_ns <= now:
            return [RefuseWaiter(ev.waiter, ErrorReason.LOCK_HELD, _queued(0))]
        waiter = _Waiter(ev.waiter, name, ev.ttl_ms, ev.until_ns, now)
        assert ev.waiter not in self._waiters, "waiter ids must be unique"
        self._waiters[ev.waiter] = waiter
        lock.waiters.append(waiter)
        out: list[Command] = []
        if lock.phase is _Phase.IDLE:  # a new head (else it waits for what is in flight)
            self._advance(lock, now, out)
        else:
            self._arm(lock, out)
        return out

    def _attempt_done(self, ev: AttemptDone) -> list[Command]:
        lock = self._attempts.pop(ev.attempt, None)
        if lock is None:
            return []
        now, outcome = ev.now, ev.outcome
        out: list[Command] = []
        head, lock.attempt_for = lock.attempt_for, None
        lock.phase = _Phase.IDLE
        if head is None:  # its caller left
            if isinstance(outcome, Granted):
                out.append(GiveBack(lock.name, outcome.lease))
        elif isinstance(outcome, Granted):
            self._holders[lock.name] = _Holder(outcome.lease, outcome.decided_ns + head.ttl_ms * MS)
            self._granted_ttls[lock.name, outcome.lease] = head.ttl_ms
            if len(self._granted_ttls) > self.policy.max_locks:
                self._granted_ttls.popitem(last=False)
            self._remove(head)
            out.append(GrantWaiter(head.id, outcome))
        elif not self.shutting_down:
            self._failed(lock, head, outcome, now, out)
        self._advance(lock, now, out)
        return out

    def _failed(
        self, lock: _Lock, head: _Waiter, outcome: NotGranted, now: int, out: list[Command]
    ) -> None:
        """The head's attempt did not grant: probe, back off, or refuse."""
        reason = outcome.reason
        if reason is Reason.HELD:
            if now >= head.until:
                self._refuse(head, ErrorReason.LOCK_HELD, _held(now - head.started), out)
            else:
                lock.phase = _Phase.PROBE
                out.append(StartProbe(lock.name))
            return
        if reason is Reason.RESTARTING:
            delay = outcome.retry_after_ns + self._rng.randrange(MS, 5 * MS)
            if now + delay > head.until:
                self._refuse(
                    head,
                    ErrorReason.NODES_RESTARTING,
                    f"no quorum: {outcome.detail}",
                    out,
                    outcome.retry_after_ns,
                )
                return
        else:
            p = self.policy
            delay = retry_delay_ns(self._rng, lock.backoffs, p.backoff_base_ms, p.backoff_cap_ms)
            if now + delay > head.until:
                self._refuse(head, *self._attempt_error(outcome), out)
                return
        lock.backoffs += 1
        self._sleep(lock, _Sleep.BACKOFF, now + delay)

    def _attempt_error(self, outcome: NotGranted) -> tuple[ErrorReason, str]:
        if outcome.reason is Reason.TOO_SLOW:
            return ErrorReason.TTL_TOO_SHORT, (
                f"a quorum agreed too late for the TTL ({outcome.detail}); ask for a longer TTL"
            )
        if outcome.reason is Reason.FENCE_CONTENDED:
            return ErrorReason.FENCE_CONTENDED, f"no fencing token: {outcome.detail}"
        return ErrorReason.QUORUM_UNAVAILABLE, (
            f"cannot reach a quorum of {quorum(self.nodes)} nodes: {outcome.detail}"
        )

    def _probe_done(self, ev: ProbeDone) -> list[Command]:
        lock = self._locks.get(ev.name)
        if lock is None or lock.phase is not _Phase.PROBE:
            return []
        now = ev.now
        out: list[Command] = []
        lock.phase = _Phase.IDLE
        if lock.waiters and not lock.woken and not self.shutting_down:
            head = lock.waiters[0]
            recheck = min(self.policy.held_recheck_max_ns, ev.held_for_ns + MS)
            at = min(head.until, now + int(recheck * self._rng.uniform(1.0, 1.1)))
            if at > now:
                self._sleep(lock, _Sleep.HELD, at)
            else:
                self._refuse(head, ErrorReason.LOCK_HELD, _held(now - head.started), out)
        self._advance(lock, now, out)
        return out

    def _lease_renewed(self, ev: LeaseRenewed) -> list[Command]:
        self._holders[ev.name] = _Holder(ev.lease, ev.started_ns + ev.ttl_ms * MS)
        return []

    def _lease_ended(self, ev: LeaseEnded) -> list[Command]:
        holder = self._holders.get(ev.name)
        if holder is not None and holder.lease == ev.lease:
            del self._holders[ev.name]
        return self._wake_head(ev.name, ev.now)

    def _release_heard(self, ev: ReleaseHeard) -> list[Command]:
        # Forget our holder too: it may have been released through another gateway (a
        # client failing over); if it is in fact still held, the attempt says so.
        self._holders.pop(ev.name, None)
        return self._wake_head(ev.name, ev.now)

    def _wake_head(self, name: bytes, now: int) -> list[Command]:
        lock = self._locks.get(name)
        if lock is None:
            return []
        out: list[Command] = []
        if lock.phase is _Phase.SLEEP:
            if lock.sleep is not _Sleep.BACKOFF:
                lock.phase = _Phase.IDLE
                self._advance(lock, now, out)
        elif lock.phase is not _Phase.IDLE:
            lock.woken = True
        return out

    def _timer_fired(self, ev: TimerFired) -> list[Command]:
        lock = self._locks.get(ev.name)
        if lock is None:
            return []
        now = ev.now
        out: list[Command] = []
        if lock.timer_at is not None and lock.timer_at <= now:
            lock.timer_at = None
        head = lock.waiters[0] if lock.waiters else None
        for waiter in [w for w in lock.waiters if w.until <= now and w is not head]:
            self._refuse(waiter, ErrorReason.LOCK_HELD, _queued(now - waiter.started), out)
        if head is not None and lock.phase is _Phase.SLEEP and lock.wake_at <= now:
            lock.phase = _Phase.IDLE
            if lock.sleep is not _Sleep.BACKOFF and now >= head.until:
                self._refuse(head, ErrorReason.LOCK_HELD, _held(now - head.started), out)
        self._advance(lock, now, out)
        return out

    def _cancel(self, ev: Cancel) -> list[Command]:
        waiter = self._waiters.get(ev.waiter)
        if waiter is None:
            return []
        lock = self._locks[waiter.name]
        out: list[Command] = []
        if lock.attempt_for is waiter:
            lock.attempt_for = None  # the attempt goes on; a grant is given back
        if lock.waiters[0] is waiter and lock.phase is _Phase.SLEEP:
            lock.phase = _Phase.IDLE
        self._remove(waiter)
        self._advance(lock, ev.now, out)
        return out

    def _shutdown(self, ev: Shutdown) -> list[Command]:
        self.shutting_down = True
        out: list[Command] = []
        for lock in list(self._locks.values()):
            for waiter in list(lock.waiters):
                if waiter is not lock.attempt_for:
                    self._remove(waiter)
                    out.append(_shutting_down(waiter.id))
            if lock.phase is _Phase.SLEEP:
                lock.phase = _Phase.IDLE
            self._advance(lock, ev.now, out)
        return out

    # -- transitions -----------------------------------------------------------------------

    def _advance(self, lock: _Lock, now: int, out: list[Command]) -> None:
        """Move an IDLE head on (sleep while a holder of ours is live, else attempt), then
        arm the lock's timer; forget the lock once nothing waits or is in flight."""
        while lock.phase is _Phase.IDLE and lock.waiters:
            head = lock.waiters[0]
            if self.shutting_down:
                self._remove(head)
                out.append(_shutting_down(head.id))
                continue
            holder = self._holders.get(lock.name)
            if holder is not None and holder.expires_ns > now:
                at = min(head.until, holder.expires_ns + MS)
                if at > now:
                    self._sleep(lock, _Sleep.HOLDER, at)
                else:
                    self._refuse(head, ErrorReason.LOCK_HELD, _held(now - head.started), out)
                continue
            attempt = self._next_attempt
            self._next_attempt += 1
            self._attempts[attempt] = lock
            lock.phase = _Phase.ATTEMPT
            lock.attempt_for = head
            lock.woken = False
            out.append(StartAttempt(attempt, lock.name, head.ttl_ms, head.id))
        if lock.phase is _Phase.IDLE:
            del self._locks[lock.name]
        else:
            self._arm(lock, out)

    def _sleep(self, lock: _Lock, kind: _Sleep, at: int) -> None:
        lock.phase = _Phase.SLEEP
        lock.sleep = kind
        lock.wake_at = at

    def _arm(self, lock: _Lock, out: list[Command]) -> None:
        """Ask for a timer at the lock's next deadline unless one at least as early is
        armed (a later armed timer fires first and is then re-armed)."""
        due = lock.wake_at if lock.phase is _Phase.SLEEP else None
        waiters = lock.waiters
        if len(waiters) > 1:
            head = waiters[0]
            for w in waiters:
                if w is not head and (due is None or w.until < due):
                    due = w.until
        if due is not None and (lock.timer_at is None or due < lock.timer_at):
            lock.timer_at = due
            out.append(WakeAt(lock.name, due))

    def _remove(self, waiter: _Waiter) -> None:
        lock = self._locks[waiter.name]
        if lock.waiters[0] is waiter:
            lock.waiters.popleft()
            lock.backoffs = 0
        else:
            lock.waiters.remove(waiter)
        del self._waiters[waiter.id]

    def _refuse(
        self,
        waiter: _Waiter,
        reason: ErrorReason,
        detail: str,
        out: list[Command],
        retry_after_ns: int = 0,
    ) -> None:
        self._remove(waiter)
        out.append(RefuseWaiter(waiter.id, reason, detail, retry_after_ns))


def _shutting_down(waiter: int) -> RefuseWaiter:
    return RefuseWaiter(
        waiter, ErrorReason.SHUTTING_DOWN, "this gateway is shutting down; try another gateway"
    )


def _held(waited_ns: int) -> str:
    return f"lock held by another lease; waited {waited_ns // MS} ms"


def _queued(waited_ns: int) -> str:
    return f"lock still held after waiting {waited_ns // MS} ms (queued behind other waiters)"


class Pump:
    """Feeds a `LockTable` and carries out its commands with `do`, in order; events fed
    while a command is carried out (an inline attempt's outcome, a release notice) are
    queued and handled after it, never re-entering the table."""

    def __init__(self, table: LockTable, do: Callable[[Command], None]) -> None:
        self.table = table
        self._do = do
        self._events: collections.deque[Event] = collections.deque()
        self._busy = False

    def feed(self, event: Event) -> None:
        """Hand `event` to the table and carry out its commands (and those of the events
        they cause)."""
        self._events.append(event)
        if self._busy:
            return
        self._busy = True
        try:
            while self._events:
                for cmd in self.table.handle(self._events.popleft()):
                    self._do(cmd)
        finally:
            self._busy = False
