"""Properties of the lock table (lockd/core/table.py) under random event sequences
(hypothesis), driven the way a gateway drives it: attempts and probes finish in any
order with any outcome, timers fire (late too), callers cancel, releases are heard,
the gateway shuts down. After every event:

- FIFO: a waiter is granted only when every earlier waiter for its lock has left;
- no waiter is answered twice, none after it cancelled, and at the end (once everything
  in flight finished and every timer fired) every waiter that stayed was answered;
- every refusal has a reason and a sentence;
- timers are always re-armed: a lock with waiters has an attempt or probe in flight or
  a timer armed no later than the end of any waiter's wait (the head's, while nothing
  is in flight), and never asks for a timer in the past;
- at most one attempt or probe per lock is in flight, each for the head of its queue,
  and `waiting` counts the waiters.
"""

from __future__ import annotations

import dataclasses
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockd.core import Granted, NotGranted, Reason
from lockd.core.table import (
    AttemptDone,
    Cancel,
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
)
from lockd.errors import ErrorReason

MS = 1_000_000
NAMES = (b"a", b"b")
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclasses.dataclass
class Waiter:
    name: bytes
    until: int
    order: int
    answers: int = 0
    cancelled: bool = False


class Harness:
    """A gateway's view of the table: what it asked for, and the checks."""

    def __init__(self, policy: Policy, seed: int) -> None:
        self.table = LockTable(5, policy, random.Random(seed))
        self.now = 10**12
        self.waiters: dict[int, Waiter] = {}
        self.attempts: dict[int, bytes] = {}
        self.probes: set[bytes] = set()
        self.timers: dict[bytes, int] = {}
        self.leases: list[tuple[bytes, bytes]] = []
        self.given_back: set[bytes] = set()
        self._ids = 0

    def pending(self, name: bytes) -> list[tuple[int, Waiter]]:
        return sorted(
            ((i, w) for i, w in self.waiters.items() if w.name == name and self._waiting(w)),
            key=lambda iw: iw[1].order,
        )

    @staticmethod
    def _waiting(w: Waiter) -> bool:
        return not w.cancelled and w.answers == 0

    def feed(self, event: Event) -> None:
        for cmd in self.table.handle(event):
            if isinstance(cmd, StartAttempt):
                assert cmd.name not in self.attempts.values(), "two attempts on one lock"
                assert cmd.name not in self.probes
                assert cmd.waiter == self.pending(cmd.name)[0][0], "not for the head"
                self.attempts[cmd.attempt] = cmd.name
            elif isinstance(cmd, StartProbe):
                assert cmd.name not in self.probes and cmd.name not in self.attempts.values()
                self.probes.add(cmd.name)
            elif isinstance(cmd, WakeAt):
                assert cmd.at_ns > self.now, "a timer in the past"
                self.timers[cmd.name] = cmd.at_ns
            elif isinstance(cmd, GrantWaiter):
                w = self.waiters[cmd.waiter]
                assert self._waiting(w), "granted twice, or after it left"
                earlier = [i for i, o in self.pending(w.name) if o.order < w.order]
                assert not earlier, f"granted {cmd.waiter} before {earlier}: not FIFO"
                assert isinstance(event, AttemptDone) and event.outcome == cmd.granted
                w.answers += 1
                self.leases.append((w.name, cmd.granted.lease))
            elif isinstance(cmd, RefuseWaiter):
                w = self.waiters[cmd.waiter]
                assert self._waiting(w), "refused twice, or after it left"
                assert cmd.reason != ErrorReason.ERROR_REASON_UNSPECIFIED and cmd.detail
                assert ErrorReason.Name(cmd.reason)
                w.answers += 1
            else:
                assert isinstance(cmd, GiveBack)
                assert isinstance(event, AttemptDone)
                assert cmd.lease not in self.given_back
                self.given_back.add(cmd.lease)
        self.check()

    def check(self) -> None:
        assert self.table.waiting == sum(self._waiting(w) for w in self.waiters.values())
        for name in NAMES:
            pending = self.pending(name)
            assert self.table.waiters(name) == len(pending)
            if not pending:
                continue
            in_flight = name in self.attempts.values() or name in self.probes
            timer = self.timers.get(name)
            others = [w.until for _, w in pending[1:]]
            if not in_flight:
                others.append(pending[0][1].until)
            if others:
                assert timer is not None and timer <= min(others), "timer not re-armed"

    # -- actions ---------------------------------------------------------------------------

    def request(self, name: bytes, ttl_ms: int, wait_ms: int) -> None:
        self._ids += 1
        until = self.now + wait_ms * MS
        self.waiters[self._ids] = Waiter(name, until, self._ids)
        self.feed(Request(self._ids, name, ttl_ms, until, self.now))

    def finish_attempt(self, attempt: int, outcome: Granted | NotGranted | None) -> None:
        self.attempts.pop(attempt)
        if outcome is None:
            outcome = Granted(b"%015d!" % attempt, attempt + 1, 100 * MS, self.now)
        self.feed(AttemptDone(attempt, outcome, self.now))

    def finish_probe(self, name: bytes, held_for_ns: int) -> None:
        self.probes.discard(name)
        self.feed(ProbeDone(name, held_for_ns, self.now))

    def fire_timer(self) -> None:
        name, at = min(self.timers.items(), key=lambda kv: kv[1])
        del self.timers[name]
        self.now = max(self.now, at)
        self.feed(TimerFired(name, self.now))

    def cancel(self, waiter: int) -> None:
        if waiter in self.waiters:
            self.waiters[waiter].cancelled = True
        self.feed(Cancel(waiter, self.now))

    def drain(self) -> None:
        """Finish everything in flight (attempts fail HELD) and fire every timer."""
        for _ in range(100_000):
            if self.attempts:
                attempt = min(self.attempts)
                self.finish_attempt(attempt, NotGranted(Reason.HELD, "held"))
            elif self.probes:
                self.finish_probe(min(self.probes), 10**9)
            elif self.timers:
                self.fire_timer()
            else:
                return
        raise AssertionError("the table never settles")


OUTCOMES = st.one_of(
    st.none(),
    st.builds(
        NotGranted,
        st.sampled_from(list(Reason)),
        st.just("because"),
        st.sampled_from([0, 1 * MS, 300 * MS]),
    ),
)


@SETTINGS
@given(
    data=st.data(),
    seed=st.integers(0, 2**32),
    policy=st.builds(
        Policy,
        max_waiters_per_lock=st.sampled_from([1, 3, 1024]),
        max_waiters=st.sampled_from([2, 5, 65_536]),
        max_locks=st.sampled_from([1, 100]),
        backoff_base_ms=st.sampled_from([1, 5]),
        backoff_cap_ms=st.sampled_from([5, 200]),
        held_recheck_max_ns=st.sampled_from([10 * MS, 1_000 * MS]),
    ),
)
def test_table_properties(data: st.DataObject, seed: int, policy: Policy) -> None:
    h = Harness(policy, seed)
    for _ in range(data.draw(st.integers(1, 60))):
        h.now += data.draw(st.sampled_from([0, 1, MS, 20 * MS, 300 * MS]))
        action = data.draw(
            st.sampled_from(
                ["request"] * 4
                + ["attempt"] * 4
                + ["probe", "timer", "timer", "cancel", "ended", "renewed", "heard", "shutdown"]
            )
        )
        if action == "request":
            h.request(
                data.draw(st.sampled_from(NAMES)),
                data.draw(st.sampled_from([10, 100, 1000])),
                data.draw(st.sampled_from([0, 5, 50, 500, 5000])),
            )
        elif action == "attempt" and h.attempts:
            attempt = data.draw(st.sampled_from(sorted(h.attempts)))
            h.finish_attempt(attempt, data.draw(OUTCOMES))
        elif action == "probe" and h.probes:
            name = data.draw(st.sampled_from(sorted(h.probes)))
            h.finish_probe(name, data.draw(st.sampled_from([0, 5 * MS, 400 * MS, 10**12])))
        elif action == "timer" and h.timers:
            h.fire_timer()
        elif action == "cancel" and h.waiters:
            h.cancel(data.draw(st.sampled_from(sorted(h.waiters))))
        elif action == "ended" and h.leases:
            name, lease = data.draw(st.sampled_from(h.leases))
            h.feed(LeaseEnded(name, lease, h.now))
        elif action == "renewed" and h.leases:
            name, lease = data.draw(st.sampled_from(h.leases))
            h.feed(LeaseRenewed(name, lease, 1000, h.now, h.now))
        elif action == "heard":
            h.feed(ReleaseHeard(data.draw(st.sampled_from(NAMES)), h.now))
        elif action == "shutdown" and data.draw(st.booleans()):
            h.feed(Shutdown(h.now))
    h.drain()
    for i, w in h.waiters.items():
        assert w.answers == 1 or (w.cancelled and w.answers == 0), f"waiter {i} lost"
    assert h.table.waiting == 0
