"""The lock table's transitions (lockd/core/table.py), from tables: each scenario is a
list of events with the exact commands each must produce. Times are in milliseconds
from T0; the random source always draws its lowest value, so backoff is half the
exponential delay, a restart retry is the hint + 1 ms and a HELD recheck has no jitter."""

from __future__ import annotations

import random
from typing import Any

import pytest

from lockd.core import Granted, NotGranted, Reason
from lockd.core.table import (
    AttemptDone,
    Cancel,
    Command,
    Event,
    GiveBack,
    GrantWaiter,
    LeaseEnded,
    LeaseRenewed,
    LockTable,
    Policy,
    ProbeDone,
    RefuseWaiter,
    ReleaseHeard,
    Request,
    Shutdown,
    StartAttempt,
    StartProbe,
    TimerFired,
    WakeAt,
    held_for_ns,
)
from lockd.errors import ErrorReason

MS = 1_000_000
T0 = 10**12
TTL = 1_000
A, B = b"a", b"b"


class LowRandom(random.Random):
    """Every draw is the lowest value it may take."""

    def randrange(self, *args: Any, **kwargs: Any) -> int:  # type: ignore[override]
        return 0 if len(args) == 1 else int(args[0])

    def uniform(self, a: float, b: float) -> float:
        return a


def t(ms: float) -> int:
    return T0 + int(ms * MS)


def lease(n: int) -> bytes:
    return bytes([n]) * 16


def req(waiter: int, at: float, wait: float, name: bytes = A, ttl: int = TTL) -> Request:
    return Request(waiter, name, ttl, t(at + wait), t(at))


def granted(attempt: int, at: float, n: int = 1) -> AttemptDone:
    return AttemptDone(attempt, Granted(lease(n), n, 900 * MS, t(at)), t(at))


def failed(attempt: int, at: float, reason: Reason, retry_after_ms: int = 0) -> AttemptDone:
    return AttemptDone(attempt, NotGranted(reason, "why", retry_after_ms * MS), t(at))


def grant(waiter: int, at: float, n: int = 1) -> GrantWaiter:
    return GrantWaiter(waiter, Granted(lease(n), n, 900 * MS, t(at)))


def start(attempt: int, waiter: int = 1, name: bytes = A, ttl: int = TTL) -> StartAttempt:
    return StartAttempt(attempt, name, ttl, waiter)


def wake(at: float, name: bytes = A) -> WakeAt:
    return WakeAt(name, t(at))


def refuse(waiter: int, reason: ErrorReason, detail: str, retry_after_ms: int = 0) -> RefuseWaiter:
    return RefuseWaiter(waiter, reason, detail, retry_after_ms * MS)


def held(waiter: int, waited_ms: int) -> RefuseWaiter:
    return refuse(
        waiter, ErrorReason.LOCK_HELD, f"lock held by another lease; waited {waited_ms} ms"
    )


def queued(waiter: int, waited_ms: int) -> RefuseWaiter:
    return refuse(
        waiter,
        ErrorReason.LOCK_HELD,
        f"lock still held after waiting {waited_ms} ms (queued behind other waiters)",
    )


def down(waiter: int) -> RefuseWaiter:
    return refuse(
        waiter, ErrorReason.SHUTTING_DOWN, "this gateway is shutting down; try another gateway"
    )


Step = tuple[Event, list[Command]]

# The holder granted at 0 ms expires at 1000 ms: a head behind it sleeps until 1001 ms.
SCENARIOS: dict[str, tuple[Policy, list[Step]]] = {
    "uncontended grant": (
        Policy(),
        [(req(1, 0, 0), [start(0)]), (granted(0, 2), [grant(1, 2)])],
    ),
    "FIFO handoff behind a holder of ours": (
        Policy(),
        [
            (req(1, 0, 0), [start(0)]),
            (granted(0, 0), [grant(1, 0)]),
            (req(2, 5, 5_000), [wake(1001)]),
            (req(3, 6, 5_000), []),
            (LeaseEnded(A, lease(1), t(10)), [start(1, 2)]),
            (granted(1, 11, 2), [grant(2, 11, 2)]),
            # Waiter 3 now sleeps until 1012; the timer for 1001 fires first and re-arms.
            (TimerFired(A, t(1001)), [wake(1012)]),
            (TimerFired(A, t(1012)), [start(2, 3)]),
            (granted(2, 1013, 3), [grant(3, 1013, 3)]),
        ],
    ),
    "a holder of ours outlasts the wait": (
        Policy(),
        [
            (req(1, 0, 0), [start(0)]),
            (granted(0, 0), [grant(1, 0)]),
            (req(2, 0, 300), [wake(300)]),
            (TimerFired(A, t(300)), [held(2, 300)]),
            (req(3, 400, 0), [held(3, 0)]),  # no wait at all: refused without an attempt
        ],
    ),
    "held elsewhere: probe, sleep until the keys expire, attempt": (
        Policy(),
        [
            (req(1, 0, 5_000), [start(0)]),
            (failed(0, 1, Reason.HELD), [StartProbe(A)]),
            (ProbeDone(A, 200 * MS, t(2)), [wake(203)]),
            (TimerFired(A, t(203)), [start(1)]),
            (granted(1, 204), [grant(1, 204)]),
        ],
    ),
    "held elsewhere: the recheck is bounded": (
        Policy(held_recheck_max_ns=100 * MS),
        [
            (req(1, 0, 5_000), [start(0)]),
            (failed(0, 1, Reason.HELD), [StartProbe(A)]),
            (ProbeDone(A, 60_000 * MS, t(2)), [wake(102)]),
        ],
    ),
    "held elsewhere: the wait ends first": (
        Policy(),
        [
            (req(1, 0, 50), [start(0)]),
            (failed(0, 1, Reason.HELD), [StartProbe(A)]),
            (ProbeDone(A, 200 * MS, t(2)), [wake(50)]),
            (TimerFired(A, t(50)), [held(1, 50)]),
        ],
    ),
    "held elsewhere with no wait: refused, no probe": (
        Policy(),
        [(req(1, 0, 0), [start(0)]), (failed(0, 1, Reason.HELD), [held(1, 1)])],
    ),
    "a release heard during the sleep ends it": (
        Policy(),
        [
            (req(1, 0, 5_000), [start(0)]),
            (failed(0, 1, Reason.HELD), [StartProbe(A)]),
            (ProbeDone(A, 900 * MS, t(2)), [wake(903)]),
            (ReleaseHeard(A, t(10)), [start(1)]),
        ],
    ),
    "a release heard during the probe skips the sleep": (
        Policy(),
        [
            (req(1, 0, 5_000), [start(0)]),
            (failed(0, 1, Reason.HELD), [StartProbe(A)]),
            (ReleaseHeard(A, t(2)), []),
            (ProbeDone(A, 900 * MS, t(3)), [start(1)]),
        ],
    ),
    "no quorum: exponential backoff, then the error": (
        Policy(backoff_base_ms=10, backoff_cap_ms=40),
        [
            (req(1, 0, 40), [start(0)]),
            (failed(0, 1, Reason.NO_QUORUM), [wake(6)]),  # 10 ms: 5 to 10
            (TimerFired(A, t(6)), [start(1)]),
            (failed(1, 7, Reason.NO_QUORUM), [wake(17)]),  # 20 ms: 10 to 20
            (TimerFired(A, t(17)), [start(2)]),
            (failed(2, 18, Reason.NO_QUORUM), [wake(38)]),  # 40 ms: 20 to 40
            (TimerFired(A, t(38)), [start(3)]),
            (
                failed(3, 39, Reason.NO_QUORUM),
                [
                    refuse(
                        1, ErrorReason.QUORUM_UNAVAILABLE, "cannot reach a quorum of 3 nodes: why"
                    )
                ],
            ),
        ],
    ),
    "a release heard does not cut a backoff short": (
        Policy(),
        [
            (req(1, 0, 5_000), [start(0)]),
            (ReleaseHeard(A, t(1)), []),  # e.g. the attempt's own partial acquisitions
            (failed(0, 2, Reason.NO_QUORUM), [wake(4.5)]),
            (ReleaseHeard(A, t(3)), []),
            (LeaseEnded(A, lease(9), t(3)), []),
            (TimerFired(A, t(4.5)), [start(1)]),
            (failed(1, 5, Reason.RESTARTING, 100), [wake(106)]),
            (ReleaseHeard(A, t(6)), []),
            (TimerFired(A, t(106)), [start(2)]),
        ],
    ),
    "restarting nodes: retry after the hint, or say when": (
        Policy(),
        [
            (req(1, 0, 1_000), [start(0)]),
            (failed(0, 1, Reason.RESTARTING, 300), [wake(302)]),
            (TimerFired(A, t(302)), [start(1)]),
            (
                failed(1, 303, Reason.RESTARTING, 900),
                [refuse(1, ErrorReason.NODES_RESTARTING, "no quorum: why", 900)],
            ),
        ],
    ),
    "too slow and fence contention say so": (
        Policy(),
        [
            (req(1, 0, 0), [start(0)]),
            (
                failed(0, 1, Reason.TOO_SLOW),
                [
                    refuse(
                        1,
                        ErrorReason.TTL_TOO_SHORT,
                        "a quorum agreed too late for the TTL (why); ask for a longer TTL",
                    )
                ],
            ),
            (req(2, 2, 0), [start(1, 2)]),
            (
                failed(1, 3, Reason.FENCE_CONTENDED),
                [refuse(2, ErrorReason.FENCE_CONTENDED, "no fencing token: why")],
            ),
        ],
    ),
    "a queued waiter's wait ends on its own timer": (
        Policy(),
        [
            (req(1, 0, 0), [start(0)]),
            (granted(0, 0), [grant(1, 0)]),
            (req(2, 0, 5_000), [wake(1001)]),
            (req(3, 0, 20), [wake(20)]),
            (req(4, 0, 0), [queued(4, 0)]),
            (TimerFired(A, t(20)), [queued(3, 20), wake(1001)]),
        ],
    ),
    "limits": (
        Policy(max_waiters_per_lock=2, max_waiters=3),
        [
            (req(1, 0, 0), [start(0)]),
            (granted(0, 0), [grant(1, 0)]),
            (req(2, 0, 0, name=B), [start(1, 2, B)]),
            (granted(1, 0, 2), [grant(2, 0, 2)]),
            (req(4, 1, 5_000), [wake(1001)]),
            (req(5, 1, 5_000), []),
            (
                req(6, 1, 5_000),
                [
                    refuse(
                        6,
                        ErrorReason.TOO_MANY_WAITERS,
                        "2 callers already wait for this lock, its limit",
                    )
                ],
            ),
            (req(7, 1, 5_000, name=B), [wake(1001, B)]),
            (
                req(8, 1, 5_000, name=B),
                [
                    refuse(
                        8,
                        ErrorReason.TOO_MANY_WAITERS,
                        "3 callers already wait at this gateway, its limit",
                    )
                ],
            ),
        ],
    ),
    "expired holders are pruned at the limit": (
        Policy(max_locks=1),
        [
            (req(1, 0, 0), [start(0)]),
            (granted(0, 0), [grant(1, 0)]),
            (
                req(2, 1, 10, name=B),
                [refuse(2, ErrorReason.TOO_MANY_LOCKS, "this gateway holds 1 leases, its limit")],
            ),
            (req(3, 1_500, 10, name=B), [start(1, 3, B)]),
        ],
    ),
    "the head leaves mid-attempt: the grant is given back": (
        Policy(),
        [
            (req(1, 0, 5_000), [start(0)]),
            (req(2, 0, 5_000), [wake(5_000)]),  # its own wait's end
            (Cancel(1, t(1)), []),
            (granted(0, 2), [GiveBack(A, lease(1)), start(1, 2)]),
            (failed(1, 3, Reason.HELD), [StartProbe(A)]),
        ],
    ),
    "the last waiter leaves mid-attempt: nothing is left behind": (
        Policy(),
        [
            (req(1, 0, 5_000), [start(0)]),
            (Cancel(1, t(1)), []),
            (failed(0, 2, Reason.HELD), []),
            (req(2, 3, 0), [start(1, 2)]),
        ],
    ),
    "the head leaves while asleep: the next one attempts": (
        Policy(),
        [
            (req(1, 0, 5_000), [start(0)]),
            (failed(0, 1, Reason.HELD), [StartProbe(A)]),
            (req(2, 1, 5_000), [wake(5_001)]),
            (ProbeDone(A, 900 * MS, t(2)), [wake(903)]),
            (Cancel(1, t(3)), [start(1, 2)]),
            (Cancel(1, t(4)), []),  # already gone
        ],
    ),
    "renewal moves the holder's expiry": (
        Policy(),
        [
            (req(1, 0, 0), [start(0)]),
            (granted(0, 0), [grant(1, 0)]),
            (req(2, 0, 5_000), [wake(1001)]),
            (LeaseRenewed(A, lease(1), 2_000, t(500), t(501)), []),
            (TimerFired(A, t(1001)), [wake(2501)]),
            # Not the holder's lease: the head wakes, sees the holder live and sleeps on.
            (LeaseEnded(A, lease(9), t(1002)), []),
            (LeaseEnded(A, lease(1), t(1003)), [start(1, 2)]),
        ],
    ),
    "a release heard forgets our holder": (
        Policy(),
        [
            (req(1, 0, 0), [start(0)]),
            (granted(0, 0), [grant(1, 0)]),
            (ReleaseHeard(A, t(1)), []),
            (req(2, 2, 0), [start(1, 2)]),
        ],
    ),
    "shutdown: refuse the waiting, finish the attempt in flight": (
        Policy(),
        [
            (req(1, 0, 5_000), [start(0)]),
            (req(2, 0, 5_000), [wake(5_000)]),
            (req(3, 0, 5_000, name=B), [start(1, 3, B)]),
            (failed(1, 1, Reason.HELD), [StartProbe(B)]),
            (Shutdown(t(2)), [down(2), down(3)]),
            (req(4, 3, 0), [down(4)]),
            (granted(0, 4), [grant(1, 4)]),
            (ProbeDone(B, 0, t(5)), []),
            (TimerFired(A, t(6)), []),
        ],
    ),
    "shutdown: a failed attempt in flight ends in SHUTTING_DOWN": (
        Policy(),
        [
            (req(1, 0, 5_000), [start(0)]),
            (Shutdown(t(1)), []),
            (failed(0, 2, Reason.NO_QUORUM), [down(1)]),
        ],
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_transitions(scenario: str) -> None:
    policy, steps = SCENARIOS[scenario]
    table = LockTable(5, policy, LowRandom())
    for i, (event, expected) in enumerate(steps):
        assert table.handle(event) == expected, f"step {i}: {event}"


def test_queries() -> None:
    table = LockTable(5, Policy(), LowRandom())
    table.handle(req(1, 0, 0))
    assert (table.waiting, table.waiters(A), table.waiters(B)) == (1, 1, 0)
    table.handle(granted(0, 0))
    table.handle(req(2, 0, 5_000))
    table.handle(req(3, 0, 5_000))
    assert (table.waiting, table.waiters(A)) == (2, 2)
    assert table.granted_ttl(A, lease(1)) == TTL
    assert table.granted_ttl(A, lease(2)) is None
    assert table.granted_ttl(B, lease(1)) is None
    table.handle(LeaseRenewed(A, lease(1), 7_000, t(1), t(2)))
    assert table.granted_ttl(A, lease(1)) == TTL  # the granted TTL, not the renewed one
    table.handle(LeaseEnded(A, lease(1), t(2)))
    assert table.granted_ttl(A, lease(1)) == TTL  # remembered after the lease ends
    table.handle(Cancel(2, t(3)))
    table.handle(Cancel(3, t(3)))
    assert (table.waiting, table.waiters(A)) == (0, 0)


@pytest.mark.parametrize(
    ("pttls", "nodes", "held_ms"),
    [
        ([], 5, 0),
        ([-2, -2, -2, -2, -2], 5, 0),
        ([100, 200, -2, -2, -2], 5, 0),  # only two hold it: a quorum does not
        ([100, 200, 300, -2, -2], 5, 100),
        ([100, 200, 300, 400, 500], 5, 300),  # the third longest: then only two remain
        ([-1, -1, 50, -2, -2], 5, 50),
        ([-1, -1, -1], 5, 10**9),  # no expiry at all
        ([7], 1, 7),
        ([7, 9, -2], 3, 7),
    ],
)
def test_held_for_is_the_quorum_th_longest_pttl(pttls: list[int], nodes: int, held_ms: int) -> None:
    assert held_for_ns(pttls, nodes) == held_ms * MS


def test_granted_ttls_are_bounded_by_max_locks() -> None:
    """The granted TTLs outlive their leases but only the last `max_locks` are kept."""
    table = LockTable(5, Policy(max_locks=2), LowRandom())
    for i in range(3):
        name = b"lock-%d" % i
        table.handle(req(i, i, 0, name=name, ttl=1000 + i))
        table.handle(granted(i, i, n=i + 1))
        table.handle(LeaseEnded(name, lease(i + 1), t(i)))
    assert table.granted_ttl(b"lock-0", lease(1)) is None
    assert table.granted_ttl(b"lock-1", lease(2)) == 1001
    assert table.granted_ttl(b"lock-2", lease(3)) == 1002
