"""The simulated gateway drives the shipping lock table: clients on one host queue in
FIFO order behind a lease of theirs and are handed the lock on release without polling;
a caller on another gateway hears of the release through the nodes' notices."""

from __future__ import annotations

import dataclasses
import itertools

from lockd.engine import FsyncPolicy
from lockd.sim import Simulation, generate
from lockd.sim.schedule import Job, Schedule, Step

MS = 1_000_000


def calm(gateways: int, sessions: list[tuple[int, Job]]) -> Schedule:
    """A lossless, fault-free run of `sessions` ((at ms, session)) on `gateways` hosts."""
    base = generate(0, 0)
    setup = dataclasses.replace(
        base.setup,
        clients=3,
        gateways=gateways,
        names=(b"a",),
        node_rates=(1.0,) * 5,
        host_rates=(1.0,) * gateways,
        fsync=(FsyncPolicy.ALWAYS,) * 5,
        node_timeout_ms=50,
        loss=0.0,
        dup=0.0,
        long_p=0.0,
    )
    steps = tuple(Step(i, at, s) for i, (at, s) in enumerate(sessions))
    return Schedule(0, setup, steps, base.limits)


def session(client: int, hold_ms: int, wait_ms: int = 2_000) -> Job:
    return Job(client, b"a", 400, wait_ms, hold_ms, 0, False, True)


def test_one_host_queues_in_fifo_order_and_hands_off_on_release() -> None:
    sim = Simulation(
        calm(1, [(10, session(0, 100)), (20, session(1, 50)), (30, session(2, 50))]),
        trace=True,
    )
    sim.run()
    before_heal = [g for g in sim.history.grants if g.decided < (sim.healed_at or 0)]
    assert [g.client for g in before_heal] == [0, 1, 2]
    # Only the head attempts, and only once the lease ahead of it is released: one
    # attempt per grant, each grant right after the release before it.
    assert sim.history.attempts == len(sim.history.grants)
    for ahead, behind in itertools.pairwise(before_heal):
        assert 0 <= behind.decided - ahead.end < 5 * MS
        assert behind.token > ahead.token


def test_another_gateway_hears_the_release_through_the_nodes() -> None:
    # c0 on g0 holds; c1 on g1 waits: HELD, a probe, a sleep ended by the release notice.
    sim = Simulation(calm(2, [(10, session(0, 100)), (20, session(1, 50))]), trace=True)
    sim.run()
    first, second = sim.history.grants[:2]
    assert (first.client, second.client) == (0, 1)
    assert 0 <= second.decided - first.end < 5 * MS  # not the probe's ~400 ms recheck
    notes = [text for _, who, text in sim.history.trace if who == "g1"]
    assert any(text.startswith("attempt on a for c1: held") for text in notes)
    assert any(text.startswith("probe of a: held for") for text in notes)
