"""Acquire, Renew and Release driven by hand (lockd/core/machines.py), from tables of
reply patterns. Every step also goes through tests/core/driver.py's contract checks:
the outcome never changes, nothing is sent after it, and NotGranted / RenewFailed come
with releases of the lease on every node."""

from __future__ import annotations

import pytest

from lockd.core import (
    Acquire,
    AcquireCall,
    AcquireReply,
    ExtendCall,
    FenceCall,
    FenceReply,
    Granted,
    NodeFailure,
    NodeReply,
    NotGranted,
    Reason,
    Release,
    ReleaseCall,
    Released,
    Renew,
    Renewed,
    RenewFailed,
    fence_key,
    lock_key,
    validity_ns,
)
from tests.core.driver import MS, Driver

NAME = b"orders"
LEASE = b"\x01" * 16
TTL = 1_000  # ms: drift 12 ms, so validity runs out 988 ms after the start
TIMEOUT = 50 * MS
T0 = 1_000 * MS  # start time, away from zero


def acquire(nodes: int = 5, timeout: int = TIMEOUT, rounds: int = 5, ttl: int = TTL) -> Driver:
    d = Driver(Acquire(NAME, ttl, LEASE, nodes, timeout, max_fence_rounds=rounds), NAME)
    d.start(T0)
    return d


def parse(word: str) -> NodeReply | None:
    """A0/A7: acquired with counter; H9: refused (held), counter 9; F: error;
    R300: delayed restart with 300 ms left; T: no answer (times out); t/f: True/False;
    Y6/N8: fence accepted/rejected with that counter."""
    kind, arg = word[0], word[1:]
    if kind in "AH":
        return AcquireReply(kind == "A", int(arg))
    if kind in "YN":
        return FenceReply(kind == "Y", int(arg))
    if kind in "tf":
        return kind == "t"
    if kind == "F":
        return NodeFailure("ERR boom")
    if kind == "R":
        return NodeFailure("RESTARTDELAY", int(arg))
    assert kind == "T", word
    return None


def answer(d: Driver, pattern: str, now: int, round_index: int = -1) -> None:
    """Deliver `pattern` (one word per node, in node order) to round `round_index`,
    then, if the machine still waits on that round, tick past its deadline."""
    sends = d.rounds[round_index]
    now = max(now, d.now)
    for send, word in zip(sends, pattern.split(), strict=True):
        reply = parse(word)
        if reply is not None:
            d.deliver(send.tag, reply, now)
    if d.machine.outcome is None and sends is d.round:
        d.tick()


# -- Acquire, phase 1 --------------------------------------------------------------------


def test_acquire_starts_with_lockd_acquire_on_every_node() -> None:
    d = acquire()
    assert d.calls() == [AcquireCall(lock_key(NAME), fence_key(NAME), LEASE, TTL)] * 5
    assert lock_key(NAME) == b"lock:{orders}" and fence_key(NAME) == b"fence:{orders}"
    assert d.machine.next_deadline() == T0 + TIMEOUT
    assert d.machine.outcome is None


@pytest.mark.parametrize(
    ("pattern", "token"),
    [
        ("A0 A0 A0 A0 A0", 1),
        ("A3 A1 A4 A1 A5", 5),  # decided at the third success: later counters come too late
        ("A3 A1 H9 A4 A1", 10),  # the refusing node's counter counts too
        ("H9 A1 A2 A3 A0", 10),
        ("A3 A1 A4 A1 H9", 5),
        ("A0 A0 A0 H0 H0", 1),
        ("H4 A2 H8 A1 A3", 9),
        ("A2 F A7 T A1", 8),
        ("A0 R300 A0 A5 T", 6),
        ("A1 A1 A1 H9 H9", 2),  # quorum before the last two answered: they come too late
        ("T T A4 A4 A4", 5),
    ],
)
def test_acquire_quorum_then_fence_then_granted(pattern: str, token: int) -> None:
    d = acquire()
    answer(d, pattern, T0 + 10 * MS, 0)
    assert d.machine.outcome is None
    assert len(d.rounds) == 2, "the fencing phase started"
    assert d.calls() == [FenceCall(fence_key(NAME), token)] * 5
    # Stragglers of phase 1 are ignored now.
    for send in d.rounds[0]:
        d.deliver(send.tag, AcquireReply(True, 10**6))
    answer(d, f"Y{token} Y{token} N{token + 3} Y{token} T", T0 + 20 * MS)
    outcome = d.machine.outcome
    assert outcome == Granted(LEASE, token, validity_ns(TTL, T0, T0 + 20 * MS), T0 + 20 * MS)
    assert isinstance(outcome, Granted)
    assert outcome.validity_ns == (TTL - 20 - 12) * MS
    assert outcome.deadline_ns == T0 + (TTL - 12) * MS
    assert d.releases == []


@pytest.mark.parametrize(
    ("pattern", "reason", "retry_after_ms"),
    [
        ("A0 A0 H0 H0 H0", Reason.HELD, 0),
        ("H0 H0 H0 A0 A0", Reason.HELD, 0),
        ("A0 H5 H5 H5 H5", Reason.HELD, 0),
        ("H1 H1 H1 H1 H1", Reason.HELD, 0),
        ("A0 A0 H0 F T", Reason.HELD, 0),  # a quorum answered: contention, not an outage
        ("A0 A0 T T T", Reason.NO_QUORUM, 0),
        ("T T T T T", Reason.NO_QUORUM, 0),
        ("A0 A0 F F F", Reason.NO_QUORUM, 0),
        ("A0 A0 T F T", Reason.NO_QUORUM, 0),
        ("A0 H0 F F F", Reason.NO_QUORUM, 0),
        ("F F F F F", Reason.NO_QUORUM, 0),
        ("A0 A0 R300 R100 R200", Reason.RESTARTING, 100),
        ("A0 R250 A0 F R100", Reason.RESTARTING, 100),
        ("A0 F R300 R100 A0", Reason.RESTARTING, 300),
        ("A0 A0 R300 T T", Reason.RESTARTING, 300),
        ("R100 R100 A0 A0 R100", Reason.RESTARTING, 100),
        ("A0 T T R40 T", Reason.NO_QUORUM, 0),
    ],
)
def test_acquire_phase_one_failures(pattern: str, reason: Reason, retry_after_ms: int) -> None:
    d = acquire()
    answer(d, pattern, T0 + 10 * MS, 0)
    outcome = d.machine.outcome
    assert isinstance(outcome, NotGranted), outcome
    assert outcome.reason is reason, outcome
    assert outcome.retry_after_ns == retry_after_ms * MS
    assert outcome.detail
    assert len(d.rounds) == 1, "no fencing round"
    assert [s.call for s in d.releases] == [ReleaseCall(lock_key(NAME), LEASE)] * 5


@pytest.mark.parametrize(
    ("delays", "retry_after_ms"),
    [
        # Two answered nodes are fine; enough are back once one more restarted node is.
        ([300, 100, 200], 100),
        ([900, 900, 50], 50),
    ],
)
def test_restart_hint_is_when_enough_nodes_are_back(delays: list[int], retry_after_ms: int) -> None:
    d = acquire()
    answer(d, "A0 A0 " + " ".join(f"R{ms}" for ms in delays), T0 + MS, 0)
    outcome = d.machine.outcome
    assert isinstance(outcome, NotGranted) and outcome.reason is Reason.RESTARTING
    assert outcome.retry_after_ns == retry_after_ms * MS
    assert f"{retry_after_ms} ms" in outcome.detail


@pytest.mark.parametrize(
    ("nodes", "pattern", "reason", "retry_after_ms"),
    [
        (1, "R700", Reason.RESTARTING, 700),
        (1, "H3", Reason.HELD, 0),
        (1, "T", Reason.NO_QUORUM, 0),
        (3, "A0 R500 R100", Reason.RESTARTING, 100),
        (3, "R100 A0 R500", Reason.RESTARTING, 100),
        (3, "A0 H0 T", Reason.HELD, 0),
        (7, "A0 A0 A0 R40 R10 R30 R20", Reason.RESTARTING, 10),
        (7, "A0 A0 A0 H0 H0 H0 H0", Reason.HELD, 0),
        (7, "A0 A0 A0 T T T T", Reason.NO_QUORUM, 0),
    ],
)
def test_acquire_failures_other_sizes(
    nodes: int, pattern: str, reason: Reason, retry_after_ms: int
) -> None:
    d = acquire(nodes)
    answer(d, pattern, T0 + MS, 0)
    outcome = d.machine.outcome
    assert isinstance(outcome, NotGranted) and outcome.reason is reason, outcome
    assert outcome.retry_after_ns == retry_after_ms * MS
    assert [s.node for s in d.releases] == list(range(nodes))


@pytest.mark.parametrize("nodes", [1, 2, 3, 4, 5, 6, 7])
def test_acquire_granted_on_exactly_a_quorum(nodes: int) -> None:
    q = nodes // 2 + 1
    d = acquire(nodes)
    answer(d, " ".join(["A4"] * q + ["H4"] * (nodes - q)), T0 + MS, 0)
    assert d.calls() == [FenceCall(fence_key(NAME), 5)] * nodes
    answer(d, " ".join(["Y5"] * q + ["N5"] * (nodes - q)), T0 + 2 * MS)
    outcome = d.machine.outcome
    assert isinstance(outcome, Granted) and outcome.token == 5


@pytest.mark.parametrize("nodes", [2, 3, 4, 5, 6, 7])
def test_acquire_one_short_of_a_quorum_is_not_granted(nodes: int) -> None:
    q = nodes // 2 + 1
    d = acquire(nodes)
    answer(d, " ".join(["A4"] * (q - 1) + ["T"] * (nodes - q + 1)), T0 + MS, 0)
    outcome = d.machine.outcome
    assert isinstance(outcome, NotGranted) and outcome.reason is Reason.NO_QUORUM


def test_timeouts_only_count_at_tick_past_the_deadline() -> None:
    d = acquire()
    answer(d, "A0 A0 T T T", T0 + MS, 0)  # ticks at the deadline
    assert d.now == T0 + TIMEOUT
    d2 = acquire()
    d2.replies([AcquireReply(True, 0)] * 2, T0 + MS)
    d2.tick(T0 + TIMEOUT - 1)
    assert d2.machine.outcome is None, "nothing timed out before its deadline"
    d2.tick(T0 + TIMEOUT)
    outcome = d2.machine.outcome
    assert isinstance(outcome, NotGranted) and outcome.reason is Reason.NO_QUORUM
    assert "timed out" in outcome.detail


# -- too slow ----------------------------------------------------------------------------

SLOW = 2_000 * MS  # a node timeout past the TTL, so only `now` decides


@pytest.mark.parametrize(
    ("quorum_at_ms", "fenced_at_ms", "outcome"),
    [
        (0, 0, "granted"),
        (500, 987, "granted"),
        (987, 987, "granted"),
        (987, 988, "fenced late"),
        (988, None, "quorum late"),
        (1_500, None, "quorum late"),
        (100, 1_200, "fenced late"),
    ],
)
def test_too_slow(quorum_at_ms: int, fenced_at_ms: int | None, outcome: str) -> None:
    d = acquire(timeout=SLOW)
    answer(d, "A0 A0 A0 A0 A0", T0 + quorum_at_ms * MS, 0)
    if fenced_at_ms is None:
        got = d.machine.outcome
        assert isinstance(got, NotGranted) and got.reason is Reason.TOO_SLOW
        assert len(d.rounds) == 1
        return
    assert len(d.rounds) == 2
    answer(d, "Y1 Y1 Y1 Y1 Y1", T0 + fenced_at_ms * MS)
    got = d.machine.outcome
    if outcome == "granted":
        assert isinstance(got, Granted)
        assert got.validity_ns == (988 - fenced_at_ms) * MS
        assert got.validity_ns > 0
    else:
        assert isinstance(got, NotGranted) and got.reason is Reason.TOO_SLOW


def test_too_slow_boundary_to_the_nanosecond() -> None:
    d = acquire(timeout=SLOW)
    answer(d, "A0 A0 A0 A0 A0", T0 + 988 * MS - 1, 0)
    answer(d, "Y1 Y1 Y1 Y1 Y1", T0 + 988 * MS - 1)
    got = d.machine.outcome
    assert isinstance(got, Granted) and got.validity_ns == 1


def test_fence_rounds_outlasting_the_ttl_are_too_slow() -> None:
    d = acquire(timeout=SLOW)
    answer(d, "A0 A0 A0 A0 A0", T0 + 10 * MS, 0)
    answer(d, "Y1 N4 N4 N4 Y1", T0 + 988 * MS)
    got = d.machine.outcome
    assert isinstance(got, NotGranted) and got.reason is Reason.TOO_SLOW
    assert len(d.rounds) == 2, "no further round once the TTL ran out"


# -- fencing rounds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second_token"),
    [
        ("Y6 Y6 N7 N9 N8", 10),  # rejected by a majority: 1 + the highest counter seen
        ("N6 N6 N6 Y6 Y6", 7),
        ("N20 F N6 T Y6", 21),
        ("Y6 Y6 T T T", 7),  # timeouts reject too
        ("F F F Y6 F", 7),
        ("T T T T T", 7),  # no answer at all: the next token is still larger
        ("F F F F F", 7),
    ],
)
def test_fence_rejected_by_a_majority_retries_with_a_larger_token(
    first: str, second_token: int
) -> None:
    d = acquire()
    answer(d, "A5 A1 A2 A3 A4", T0 + MS, 0)
    assert d.calls() == [FenceCall(fence_key(NAME), 6)] * 5
    answer(d, first, T0 + 2 * MS)
    assert d.machine.outcome is None
    assert len(d.rounds) == 3
    assert d.calls() == [FenceCall(fence_key(NAME), second_token)] * 5
    # Round one's answers are stale now, even acceptances.
    for send in d.rounds[1]:
        d.deliver(send.tag, FenceReply(True, 6))
    assert d.machine.outcome is None
    t = second_token
    answer(d, f"Y{t} N{t} Y{t} N{t + 1} Y{t}", T0 + 3 * MS)
    got = d.machine.outcome
    assert isinstance(got, Granted) and got.token == second_token
    assert got.decided_ns == d.now


@pytest.mark.parametrize("rounds", [1, 2, 3, 5])
def test_fence_rounds_exhausted(rounds: int) -> None:
    d = acquire(rounds=rounds)
    answer(d, "A0 A0 A0 A0 A0", T0 + MS, 0)
    tokens = []
    for i in range(rounds):
        assert d.machine.outcome is None
        (token,) = {c.token for c in d.calls() if isinstance(c, FenceCall)}
        tokens.append(token)
        bigger = token + 10
        answer(d, f"Y{token} N{bigger} N{bigger} T N{bigger}", T0 + (2 + i) * MS)
    got = d.machine.outcome
    assert isinstance(got, NotGranted) and got.reason is Reason.FENCE_CONTENDED
    assert str(rounds) in got.detail
    assert tokens == sorted(set(tokens)), "each round's token is larger"
    assert len(d.rounds) == rounds + 1
    assert [s.call for s in d.releases] == [ReleaseCall(lock_key(NAME), LEASE)] * 5


def test_fence_accepts_and_rejects_mixed_until_decided() -> None:
    d = acquire()
    answer(d, "A0 A0 A0 A0 A0", T0 + MS, 0)
    d.replies([FenceReply(True, 1), FenceReply(False, 3)], T0 + 2 * MS)
    assert d.machine.outcome is None and len(d.rounds) == 2
    d.reply(3, FenceReply(False, 2))
    assert d.machine.outcome is None and len(d.rounds) == 2
    d.reply(2, FenceReply(True, 1))
    assert d.machine.outcome is None
    d.reply(4, FenceReply(True, 1))
    got = d.machine.outcome
    assert isinstance(got, Granted) and got.token == 1


# -- stale and stray replies -------------------------------------------------------------


def test_replies_after_the_outcome_change_nothing() -> None:
    d = acquire()
    answer(d, "A0 A0 A0 A0 A0", T0 + MS, 0)
    answer(d, "Y1 Y1 Y1 T T", T0 + 2 * MS)
    got = d.machine.outcome
    assert isinstance(got, Granted)
    for send in d.sent.values():
        assert d.deliver(send.tag, FenceReply(False, 99)) == []
        assert d.deliver(send.tag, NodeFailure("late")) == []
    assert d.tick(T0 + 10 * TIMEOUT) == []
    assert d.machine.outcome is got


def test_replies_after_not_granted_change_nothing() -> None:
    d = acquire()
    answer(d, "H0 H0 H0 T T", T0 + MS, 0)
    got = d.machine.outcome
    assert isinstance(got, NotGranted)
    for send in d.rounds[0]:
        assert d.deliver(send.tag, AcquireReply(True, 0)) == []
    assert d.deliver(-1, True) == []
    assert d.machine.outcome is got and d.machine.next_deadline() is None


def test_unknown_and_duplicate_tags_are_ignored() -> None:
    d = acquire()
    first = d.rounds[0][0]
    d.deliver(first.tag, AcquireReply(True, 0), T0 + MS)
    for _ in range(5):  # the same answer again must not count twice
        d.deliver(first.tag, AcquireReply(True, 0))
    for tag in (-1, 10**6, -7):
        d.deliver(tag, AcquireReply(True, 0))
    assert d.machine.outcome is None and len(d.rounds) == 1
    d.reply(1, AcquireReply(True, 0))
    assert len(d.rounds) == 1, "two distinct nodes are not a quorum of five"
    d.reply(2, AcquireReply(True, 0))
    assert len(d.rounds) == 2


def test_stale_phase_one_replies_during_fencing_are_ignored() -> None:
    d = acquire()
    answer(d, "A0 A0 A0 T T", T0 + MS, 0)  # quorum at node 2; no tick needed
    assert len(d.rounds) == 2
    d.deliver(d.rounds[0][3].tag, AcquireReply(False, 50))
    d.deliver(d.rounds[0][4].tag, NodeFailure("late"))
    assert d.machine.outcome is None
    answer(d, "Y1 Y1 Y1 Y1 Y1", T0 + 2 * MS)
    got = d.machine.outcome
    assert isinstance(got, Granted) and got.token == 1


def test_a_timed_out_request_answered_late_is_ignored() -> None:
    d = acquire(nodes=7)
    d.replies([AcquireReply(True, 0)] * 3, T0 + MS)
    # One more phase-one answer is needed; time the others out, then answer late.
    d.tick()
    got = d.machine.outcome
    assert isinstance(got, NotGranted) and got.reason is Reason.NO_QUORUM
    d.deliver(d.rounds[0][3].tag, AcquireReply(True, 0))
    assert d.machine.outcome is got


# -- Renew -------------------------------------------------------------------------------

RENEW_AT = 300 * MS


def renew(nodes: int = 5, max_rounds: int = 1) -> Driver:
    d = Driver(Renew(NAME, LEASE, TTL, nodes, TIMEOUT, max_rounds=max_rounds), NAME)
    d.start(T0 + RENEW_AT)
    assert d.calls() == [ExtendCall(lock_key(NAME), LEASE, TTL)] * nodes
    return d


@pytest.mark.parametrize(
    ("pattern", "renewed"),
    [
        ("t t t t t", True),
        ("t t t f f", True),
        ("f f t t t", True),
        ("t F t T t", True),
        ("t t T T t", True),
        ("t t f f f", False),
        ("t t T T T", False),
        ("f f f f f", False),
        ("F F F t t", False),
        ("f t F t T", False),
    ],
)
def test_renew(pattern: str, renewed: bool) -> None:
    d = renew()
    answer(d, pattern, T0 + RENEW_AT + 20 * MS)
    got = d.machine.outcome
    if renewed:
        # Validity counts from the renewal's start, not the original acquisition.
        assert got == Renewed((TTL - 20 - 12) * MS, T0 + RENEW_AT + 20 * MS)
        assert isinstance(got, Renewed)
        assert got.deadline_ns == T0 + RENEW_AT + (TTL - 12) * MS
        assert d.releases == []
    else:
        assert isinstance(got, RenewFailed) and got.detail
        assert [s.call for s in d.releases] == [ReleaseCall(lock_key(NAME), LEASE)] * 5


@pytest.mark.parametrize(("late_ms", "renewed"), [(987, True), (988, False), (2_000, False)])
def test_renew_too_late(late_ms: int, renewed: bool) -> None:
    d = Driver(Renew(NAME, LEASE, TTL, 3, SLOW, max_rounds=1), NAME)
    d.start(T0)
    d.replies([True, True, True], T0 + late_ms * MS)
    got = d.machine.outcome
    if renewed:
        assert isinstance(got, Renewed) and got.validity_ns == (988 - late_ms) * MS
    else:
        assert isinstance(got, RenewFailed) and "TTL" in got.detail


@pytest.mark.parametrize(("nodes", "needed"), [(1, 1), (2, 2), (3, 2), (4, 3), (7, 4)])
def test_renew_needs_a_quorum(nodes: int, needed: int) -> None:
    ok = renew(nodes)
    ok.replies([True] * needed + [False] * (nodes - needed), T0 + RENEW_AT + MS)
    assert isinstance(ok.machine.outcome, Renewed)
    short = renew(nodes)
    short.replies([True] * (needed - 1) + [False] * (nodes - needed + 1), T0 + RENEW_AT + MS)
    assert isinstance(short.machine.outcome, RenewFailed)


@pytest.mark.parametrize(
    ("first", "again", "rounds", "renewed"),
    [
        # Timeouts that could have made the quorum: a second round, to every node.
        ("t t T T T", "t t t f f", 2, True),
        ("t f f T T", "T t t t f", 2, True),
        ("T T T T T", "t t t t t", 2, True),
        ("t t f T F", "t t t F F", 2, True),
        # Refusals and outright failures are final: no second round.
        ("t t f f f", "", 1, False),
        ("t f f F T", "", 1, False),
        ("T T F F F", "", 1, False),
        # A second round that times out again gets a third, and that is the last.
        ("t t T T T", "t T T T T", 3, False),
        ("t t T T T", "t t f T T", 3, False),
    ],
)
def test_renew_tries_again_when_timeouts_cost_the_quorum(
    first: str, again: str, rounds: int, renewed: bool
) -> None:
    d = renew(max_rounds=3)
    answer(d, first, T0 + RENEW_AT + 5 * MS)
    for pattern in (again, "T T T T T")[: rounds - 1]:
        assert d.machine.outcome is None and len(d.rounds) == 2 + (pattern != again)
        assert d.calls() == [ExtendCall(lock_key(NAME), LEASE, TTL)] * 5
        answer(d, pattern, d.now + 5 * MS)
    got = d.machine.outcome
    assert len(d.rounds) == rounds
    if renewed:
        # Validity still counts from the first round's start.
        assert isinstance(got, Renewed)
        assert got.validity_ns == validity_ns(TTL, T0 + RENEW_AT, got.decided_ns)
        assert got.decided_ns == T0 + RENEW_AT + (TIMEOUT + 5 * MS)
        assert d.releases == []
    else:
        assert isinstance(got, RenewFailed)
        assert ("in 3 rounds" in got.detail) == (rounds == 3)
        assert [s.call for s in d.releases] == [ReleaseCall(lock_key(NAME), LEASE)] * 5


@pytest.mark.parametrize(
    ("timeout_at_ms", "again"),
    [
        # Renewed on a quorum only if the answer could come with validity left: a round
        # needs more than one node timeout (50 ms) of the 988 ms of validity.
        (900, True),
        (937, True),
        (938, False),
        (987, False),
    ],
)
def test_renew_tries_again_only_while_an_answer_could_leave_validity(
    timeout_at_ms: int, again: bool
) -> None:
    d = Driver(Renew(NAME, LEASE, TTL, 5, TIMEOUT), NAME)
    d.start(T0)
    d.replies([True, True, None, None, None], T0 + MS)
    d.tick(T0 + timeout_at_ms * MS)
    if again:
        assert d.machine.outcome is None and len(d.rounds) == 2
        d.replies([True] * 5, d.now + MS)
        got = d.machine.outcome
        assert isinstance(got, Renewed)
        assert got.validity_ns == (988 - timeout_at_ms - 1) * MS
    else:
        assert isinstance(d.machine.outcome, RenewFailed) and len(d.rounds) == 1


# -- Release -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "released", "answered"),
    [
        ("t t t t t", 5, 5),
        ("t t f f f", 2, 5),
        ("f f f f f", 0, 5),
        ("t F t T f", 2, 3),
        ("T T T T T", 0, 0),
        ("F F F F F", 0, 0),
        ("t T T T T", 1, 1),
    ],
)
def test_release_counts_and_waits_for_everyone(pattern: str, released: int, answered: int) -> None:
    d = Driver(Release(NAME, LEASE, 5, TIMEOUT), NAME)
    d.start(T0)
    assert d.calls() == [ReleaseCall(lock_key(NAME), LEASE)] * 5
    words = pattern.split()
    for node, word in enumerate(words):
        reply = parse(word)
        if reply is not None:
            assert d.machine.outcome is None, "finished before everyone answered"
            d.reply(node, reply, T0 + MS)
    if "T" in words:
        assert d.machine.outcome is None, "finished before the timeouts"
        d.tick()
    assert d.machine.outcome == Released(released, answered)


def test_release_of_one_node() -> None:
    d = Driver(Release(NAME, LEASE, 1, TIMEOUT), NAME)
    d.start(0)
    d.reply(0, True, MS)
    assert d.machine.outcome == Released(1, 1)


def test_machines_refuse_zero_nodes() -> None:
    with pytest.raises(ValueError):
        Acquire(NAME, TTL, LEASE, 0, TIMEOUT)
    with pytest.raises(ValueError):
        Release(NAME, LEASE, 0, TIMEOUT)
