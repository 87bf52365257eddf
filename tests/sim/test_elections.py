"""Elections in the simulator: campaigns and observers run as the gateway runs them
(leader record by extend, Proclaim at renewals, reads of a quorum through the core's
`merge` and `leader_of`), and the election checkers catch what they must."""

from __future__ import annotations

import dataclasses

from lockd.core.records import NodeState, election_lock, merge
from lockd.sim import Simulation, generate, run_seed
from lockd.sim.checks import Grant, History, Read, check
from lockd.sim.schedule import Job, Observe
from lockd.sim.world import StoreModel
from tests.sim.test_gateway import calm

MS = 1_000_000
E = election_lock(b"e")


def campaign(client: int, hold_ms: int, writes: int = 1) -> Job:
    return Job(client, E, 300, 5_000, hold_ms, writes, True, True, campaign=True)


def test_campaigns_lead_in_turn_and_an_observer_sees_each_leader_in_order() -> None:
    schedule = calm(
        1, [(10, campaign(0, 400)), (20, campaign(1, 200)), (30, Observe(2, E, 900, 10))]
    )
    schedule = dataclasses.replace(schedule, setup=dataclasses.replace(schedule.setup, election=E))
    sim = Simulation(schedule, trace=True)
    result = sim.run()
    assert result.violations == ()
    history = sim.history
    led = [(name, term) for _, name, term in history.led]
    assert [name for name, _ in led[:2]] == [E, E] and led[0][1] < led[1][1]
    sent = [(r.term, r.value) for r in history.reads if r.sent]
    first, second = led[0][1], led[1][1]
    # The first leader proclaimed at its renewals; the observer saw its values, then the
    # second leader's, in order and each once.
    terms = [term for term, _ in sent]
    assert terms == sorted(terms) and first in terms and second in terms
    assert len(set(sent)) == len(sent)
    assert {v for t, v in sent if t == first} <= history.proclaimed[(E, first)]
    assert len(history.proclaimed[(E, first)]) >= 2  # the record, then a Proclaim
    # The leaders wrote to the store with their terms.
    assert any(name == E for _, name, _, _ in history.acked)


def test_a_read_counts_each_node_once() -> None:
    """A duplicated reply is one node's answer, not a second holder's (the simulator
    once let duplicates make a quorum of two nodes)."""
    sim = Simulation(calm(1, []))
    gateway = sim.gateways[0]
    found: list[list[NodeState]] = []
    gateway._read(E, found.append)
    held = NodeState(100, 7, None)
    for node in (2, 4, 2, 4, 4):
        gateway.on_view((next(iter(gateway._reads)), node, held))
    sim.world.run(10**9)
    assert len(found) == 1 and len(found[0]) == 5  # the real nodes answered too
    assert [state.pttl_ms for state in found[0]].count(100) == 2
    assert not merge(found[0], 3).held


def test_some_runs_have_elections_with_campaigns_and_observers() -> None:
    with_election = [s for s in range(30) if generate(s, 200).setup.election is not None]
    assert 3 <= len(with_election) <= 20
    steps = [step.action for step in generate(with_election[0], 200).steps]
    assert any(isinstance(a, Job) and a.campaign and a.name == E for a in steps)
    assert any(isinstance(a, Observe) for a in steps)
    assert any(isinstance(a, Job) and not a.campaign for a in steps)


# -- the checkers --------------------------------------------------------------------------


def grant(client: int, token: int, decided: int, end: int) -> Grant:
    return Grant(E, client, b"lease%d" % token, token, (decided - 1) * MS, decided * MS, end * MS)


def read(start: int, term: int | None, value: bytes, sent: bool = False, observer: int = 1) -> Read:
    return Read(E, 9, observer, start * MS, (start + 1) * MS, term, value, sent)


def election_history(*reads: Read) -> History:
    return History(
        grants=[grant(0, 1, 1, 10), grant(1, 2, 20, 30)],
        proclaimed={(E, 1): {b"a", b"a2"}, (E, 2): {b"b"}},
        led=[(2 * MS, E, 1), (21 * MS, E, 2)],
        reads=list(reads),
    )


def props(history: History) -> list[str]:
    return [v.prop for v in check(history, StoreModel(), True, [])]


def test_election_checkers_pass_a_clean_history() -> None:
    clean = election_history(
        read(3, 1, b"a", sent=True),
        read(5, 1, b"a", sent=False),
        read(6, 1, b"a2", sent=True),
        read(15, None, b""),
        read(22, 2, b"b", sent=True),
    )
    assert props(clean) == []


def test_a_leader_nobody_elected_is_unexplained() -> None:
    assert props(election_history(read(3, 7, b"a"))) == ["leader-explained"]
    assert props(election_history(read(3, 1, b"b"))) == ["leader-explained"]


def test_a_read_older_than_what_was_known_is_stale() -> None:
    # After term 2's record was on a quorum (21 ms), a read finds term 1.
    assert props(election_history(read(25, 1, b"a"))) == ["leader-fresh"]
    # After another read returned term 2, too (no campaign known here).
    history = election_history(read(22, 2, b"b"), read(24, 1, b"a"))
    history.led = []
    assert props(history) == ["leader-fresh"]
    # Concurrent with the record's write, either answer is fine.
    assert props(election_history(read(20, 1, b"a"))) == []


def test_an_observer_sent_a_leader_twice_or_backwards_is_out_of_order() -> None:
    twice = election_history(read(3, 1, b"a", sent=True), read(5, 1, b"a", sent=True))
    assert props(twice) == ["observe-order"]
    history = election_history(read(22, 2, b"b", sent=True), read(24, 1, b"a2", sent=True))
    assert sorted(props(history)) == ["leader-fresh", "observe-order"]
    # Another Observe call starts afresh.
    again = election_history(read(3, 1, b"a", sent=True), read(5, 1, b"a", True, observer=2))
    assert props(again) == []


def test_a_lease_the_gateway_gave_up_ends_its_window() -> None:
    """Seeds 4600 and 10740 of the long run: a campaign's record write was lost in a
    partition when the heal cancelled its client; the gateway released the lease on
    every node, and the next campaign won before the old lease's deadline. The old
    holder was gone (and would have been told LEASE_LOST), so its window ends at the
    failed renewal: no overlap."""
    for seed in (4600, 10740):
        result = run_seed(seed)
        assert result.violations == (), seed
        assert result.overlap_checked


def test_no_superseded_leader_is_read_after_a_majority_power_loss() -> None:
    """Seed 43618 of the long run: a power loss of all five nodes (fsync everysec/no)
    brought back term 1026's key and record from the journals after term 1027 led; the
    nodes' lock reads during their delayed restart showed 1026 as leader again. Reads
    now wait out the delay, as acquisitions do."""
    result = run_seed(43618)
    assert result.violations == ()
    assert result.terms > 0
