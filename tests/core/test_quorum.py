"""Quorum, drift, validity and backoff arithmetic (lockd/core/quorum.py), from tables."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockd.core import (
    RENEW_ROUNDS,
    drift_ns,
    fence_key,
    lock_key,
    lock_name,
    quorum,
    renew_again,
    retry_delay_ns,
    validity_ns,
)
from lockd.core.quorum import restart_delay_ms
from lockd.units import MS


@pytest.mark.parametrize(
    ("nodes", "needed"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)]
)
def test_quorum_is_a_strict_majority(nodes: int, needed: int) -> None:
    assert quorum(nodes) == needed
    # Any two quorums intersect; one fewer would not be a majority.
    assert 2 * needed > nodes
    assert 2 * (needed - 1) <= nodes


@pytest.mark.parametrize(
    ("ttl_ms", "drift"),
    [
        (1, 2 * MS + 10_000),
        (10, 2 * MS + 100_000),
        (100, 3 * MS),
        (1_000, 12 * MS),
        (10_000, 102 * MS),
        (30_000, 302 * MS),
        (123_457, 1_234_570_000 + 2 * MS),
    ],
)
def test_drift_is_one_percent_of_ttl_plus_two_ms(ttl_ms: int, drift: int) -> None:
    assert drift_ns(ttl_ms) == drift


@pytest.mark.parametrize(
    ("ttl_ms", "started_ns", "now_ns", "validity"),
    [
        # validity = ttl - elapsed - (ttl * 1% + 2 ms)
        (1_000, 0, 0, 988 * MS),
        (1_000, 0, 100 * MS, 888 * MS),
        (1_000, 5 * MS, 105 * MS, 888 * MS),
        (1_000, 7, 7 + 988 * MS - 1, 1),
        (1_000, 7, 7 + 988 * MS, 0),
        (1_000, 7, 7 + 989 * MS, -MS),
        (100, 10**15, 10**15 + 50 * MS, 47 * MS),
        (2, 0, 0, -20_000),
        (30_000, 1_000, 1_000 + 29 * 1_000 * MS, 698 * MS),
    ],
)
def test_validity_is_ttl_minus_elapsed_minus_drift(
    ttl_ms: int, started_ns: int, now_ns: int, validity: int
) -> None:
    assert validity_ns(ttl_ms, started_ns, now_ns) == validity


class EdgeRandom(random.Random):
    """`randrange(n)` returns the smallest (or largest) value, to reach both bounds."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def randrange(self, *args: int) -> int:  # type: ignore[override]
        (stop,) = args
        return stop - 1 if self.high else 0


@pytest.mark.parametrize(
    ("attempt", "base_ms", "cap_ms", "delay_ms"),
    [
        (0, 5, 200, 5),
        (1, 5, 200, 10),
        (2, 5, 200, 20),
        (5, 5, 200, 160),
        (6, 5, 200, 200),  # 320 capped
        (7, 5, 200, 200),
        (63, 5, 200, 200),
        (10**6, 5, 200, 200),  # no overflow, no huge shift
        (0, 1, 1, 1),
        (3, 1, 1_000, 8),
        (0, 50, 20, 20),  # the cap wins even over the base
    ],
)
def test_retry_delay_bounds(attempt: int, base_ms: int, cap_ms: int, delay_ms: int) -> None:
    delay = delay_ms * MS
    low = retry_delay_ns(EdgeRandom(high=False), attempt, base_ms, cap_ms)
    high = retry_delay_ns(EdgeRandom(high=True), attempt, base_ms, cap_ms)
    assert low == delay // 2
    assert high == delay
    rng = random.Random(attempt)
    for _ in range(200):
        assert delay // 2 <= retry_delay_ns(rng, attempt, base_ms, cap_ms) <= delay


def test_retry_delay_defaults_and_jitter() -> None:
    rng = random.Random(1)
    samples = [retry_delay_ns(rng, 3) for _ in range(2_000)]
    assert all(20 * MS <= s <= 40 * MS for s in samples)
    # Jitter: spread over the range rather than a fixed value.
    assert len(set(samples)) > 1_000
    assert min(samples) < 22 * MS and max(samples) > 38 * MS
    capped = [retry_delay_ns(rng, 30) for _ in range(500)]
    assert all(100 * MS <= s <= 200 * MS for s in capped)


def test_retry_delay_is_deterministic_for_a_seed() -> None:
    a = [retry_delay_ns(random.Random(9), n) for n in range(10)]
    b = [retry_delay_ns(random.Random(9), n) for n in range(10)]
    assert a == b


@given(st.binary(max_size=64))
def test_lock_key_round_trips_through_lock_name(name: bytes) -> None:
    assert lock_name(lock_key(name)) == name
    assert lock_name(fence_key(name)) is None


@pytest.mark.parametrize(("max_ttl_ms", "delay_ms"), [(1000, 1012), (60_000, 60_602), (99, 101)])
def test_restart_delay_is_max_ttl_plus_its_drift(max_ttl_ms: int, delay_ms: int) -> None:
    assert restart_delay_ms(max_ttl_ms) == delay_ms


@pytest.mark.parametrize(
    ("ok", "unanswered", "needed", "rounds", "left_ms", "again"),
    [
        # Nodes that timed out or have not answered could have made the quorum: again.
        (2, 3, 3, 1, 500, True),
        (0, 3, 3, 1, 500, True),
        (2, 1, 3, 2, 500, True),
        (3, 1, 4, 1, 51, True),
        # Not for lack of time: refusals or failures, not timeouts, missed the quorum.
        (2, 0, 3, 1, 500, False),
        (1, 1, 3, 1, 500, False),
        (0, 2, 3, 1, 500, False),
        # Out of rounds.
        (2, 3, 3, 3, 500, False),
        (2, 3, 3, 4, 500, False),
        # An answer within the node timeout (50 ms) would come with no validity left.
        (2, 3, 3, 1, 50, False),
        (2, 3, 3, 1, 10, False),
        (2, 3, 3, 1, -5, False),
    ],
)
def test_renew_again_only_for_lack_of_time(
    ok: int, unanswered: int, needed: int, rounds: int, left_ms: int, again: bool
) -> None:
    assert renew_again(ok, unanswered, needed, rounds, RENEW_ROUNDS, left_ms * MS, 50 * MS) is again


def test_a_renewal_gets_three_rounds_by_default() -> None:
    assert RENEW_ROUNDS == 3
    assert renew_again(0, 5, 3, 2, RENEW_ROUNDS, 10**9, 0)
    assert not renew_again(0, 5, 3, 3, RENEW_ROUNDS, 10**9, 0)
