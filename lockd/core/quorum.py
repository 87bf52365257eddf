"""Redlock's timing and quorum rules (DESIGN §3-4) as pure functions of integers: quorum,
drift, validity, the restart delay, retry backoff. The engine and the gateway use these."""

from __future__ import annotations

import random

from lockd.units import MS

__all__ = [
    "RENEW_ROUNDS",
    "drift_ns",
    "quorum",
    "renew_again",
    "restart_delay_ms",
    "retry_delay_ns",
    "validity_ns",
]

RENEW_ROUNDS = 3
"""Rounds a renewal may take when timeouts, not refusals, kept it from a quorum."""


def quorum(nodes: int) -> int:
    """Successes needed out of `nodes`: a strict majority, N // 2 + 1."""
    return nodes // 2 + 1


def drift_ns(ttl_ms: int) -> int:
    """Clock-drift allowance for a TTL: 1% of it plus 2 ms (Redlock's)."""
    return ttl_ms * MS // 100 + 2 * MS


def restart_delay_ms(max_ttl_ms: int) -> int:
    """How long a node refuses acquisitions after an unclean stop: the longest TTL it may
    have granted plus that TTL's drift allowance (so it outlasts every lock it forgot)."""
    return (max_ttl_ms * MS + drift_ns(max_ttl_ms)) // MS


def validity_ns(ttl_ms: int, started_ns: int, now_ns: int, unsafe_no_drift: bool = False) -> int:
    """How long a lease acquired from `started_ns` stays safe: ttl - elapsed - drift.

    `unsafe_no_drift` leaves the drift allowance out (Redlock without its clock-drift
    term): UNSAFE, for the simulator's planted bug only.
    """
    drift = 0 if unsafe_no_drift else drift_ns(ttl_ms)
    return ttl_ms * MS - (now_ns - started_ns) - drift


def retry_delay_ns(rng: random.Random, attempt: int, base_ms: int = 5, cap_ms: int = 200) -> int:
    """Jittered exponential backoff before retry `attempt` (0-based): uniform in
    [delay/2, delay] with delay = min(cap, base·2^attempt)."""
    delay = min(cap_ms, base_ms * (1 << min(attempt, 20))) * MS
    return delay // 2 + rng.randrange(delay // 2 + 1)


def renew_again(
    ok: int,
    unanswered: int,
    needed: int,
    rounds: int,
    max_rounds: int,
    validity_left_ns: int,
    node_timeout_ns: int,
) -> bool:
    """Whether a renewal round that can no longer reach a quorum is tried again.

    Only when it failed for lack of time: `ok` extensions plus the `unanswered` nodes
    (timed out, or not answered yet) would have made the `needed` quorum, so refusals
    ("not this lease") and outright failures are final; only while fewer than
    `max_rounds` rounds were made; and only while an answer within `node_timeout_ns`
    would still leave validity. A later round is as safe as the first: each extension
    it makes happens after the renewal started, which validity is measured from."""
    return ok + unanswered >= needed and rounds < max_rounds and validity_left_ns > node_timeout_ns
