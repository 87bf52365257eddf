"""Properties of the quorum core under arbitrary replies, orders, timings and failures
(hypothesis), for N in {1, 3, 5, 7}.

1. Acquire is Granted iff a quorum answered acquired=True, then a quorum accepted the
   fencing token in one round, with validity > 0 when that quorum was reached.
2. Every NotGranted releases every node with the attempt's lease.
3. Against a model cluster (SET NX keys with TTLs, `lockd_fence_advance` counters) with
   many concurrent acquisitions and lossy, reordering delivery: granted tokens are
   unique and grow in real time; grants do not overlap while valid.
4. The outcome never changes once set; 5. next_deadline() is None once it is set.
(4, 5 and the shape of 2 are checked at every step by tests/core/driver.py.)
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import random
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockd.core import (
    Acquire,
    AcquireCall,
    AcquireReply,
    Call,
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
    Send,
    drift_ns,
    fence_key,
    lock_key,
    quorum,
    retry_delay_ns,
    validity_ns,
)
from tests.core.driver import MS, Counted, Driver

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALL = settings(SETTINGS, max_examples=100)
SIZES = st.sampled_from([1, 3, 5, 7])
NAME = b"res"


TICK = 100_000  # time moves on a 100 µs grid, so that validity can hit exactly zero
SILENT = -1  # a round whose requests are never answered (a partition), only timed out


# -- one machine, scripted replies -------------------------------------------------------


def any_reply(data: st.DataObject, call: Call | None, good: int) -> NodeReply:
    """An answer to `call`: a success with probability `good`%, else a refusal or a
    failure; now and then an answer meant for another kind of call."""
    if call is None or data.draw(st.integers(0, 19)) == 19:
        calls: list[Call] = [
            AcquireCall(b"", b"", b"", 1),
            FenceCall(b"", 1),
            ReleaseCall(b"", b""),
        ]
        call = data.draw(st.sampled_from(calls))
    success = data.draw(st.integers(0, 99)) < good
    failure = st.builds(NodeFailure, st.just("ERR x"), st.none() | st.integers(0, 500))
    if isinstance(call, AcquireCall):
        counter = data.draw(st.integers(0, 30))
        if success:
            return AcquireReply(True, counter)
        return data.draw(st.just(AcquireReply(False, counter)) | failure)
    if isinstance(call, FenceCall):
        t = call.token
        if success:
            return FenceReply(True, t)
        rejected = st.integers(t, t + 10).map(lambda c: FenceReply(False, c))
        return data.draw(rejected | failure | failure)
    if success:
        return True
    return data.draw(st.one_of(st.booleans(), failure))


def drive(data: st.DataObject, d: Driver, landmarks: tuple[int, ...] = ()) -> None:
    """Random deliveries (live or stale), ticks and time steps (sometimes straight to
    one of the `landmarks`) until the outcome; then more of the same, which must change
    nothing. Each round has its own rate of successful answers."""
    m = d.machine
    after = 0
    rounds = 0
    good = 0
    for _ in range(150):
        if len(d.rounds) != rounds:
            rounds = len(d.rounds)
            good = data.draw(GOOD)
        if m.outcome is not None:
            after += 1
            if after > 5:
                break
        action = data.draw(st.integers(0, 9))
        if action <= 5 and d.live and good != SILENT:
            live = sorted(d.live.values(), key=lambda s: s.tag)
            send = data.draw(st.sampled_from(live))
            now = d.now + data.draw(st.integers(0, 30)) * TICK
            d.deliver(send.tag, any_reply(data, send.call, good), now)
        elif action == 6 and d.sent:
            send = data.draw(st.sampled_from(sorted(d.sent.values(), key=lambda s: s.tag)))
            d.deliver(send.tag, any_reply(data, send.call, good))
        elif action == 7:
            d.deliver(data.draw(st.sampled_from([-1, 10**9])), any_reply(data, None, good))
        elif action == 8:
            deadline = m.next_deadline()
            d.tick(max(d.now, deadline) if deadline is not None else d.now)
        else:
            ahead = [t for t in landmarks if t >= d.now]
            if len(ahead) > 0 and data.draw(st.booleans()):
                d.now = data.draw(st.sampled_from(ahead))
            else:
                d.now += data.draw(st.integers(0, 100)) * TICK
            deadline = m.next_deadline()
            if deadline is not None and deadline <= d.now:
                d.tick(d.now)
    while m.outcome is None:
        d.tick()
    assert m.next_deadline() is None


GOOD = st.sampled_from([100, 95, 90, 75, 50, 20, 0, SILENT, SILENT])


def first_quorum(
    counted: list[Counted], q: int, counts: Callable[[Counted], bool]
) -> Counted | None:
    """The counted reply with which `q` distinct nodes had answered so that `counts`."""
    nodes: set[int] = set()
    for c in counted:
        if counts(c):
            nodes.add(c.send.node)
            if len(nodes) >= q:
                return c
    return None


@SETTINGS
@given(
    nodes=SIZES,
    ttl_ms=st.sampled_from([10, 50, 200]),
    timeout_ms=st.integers(1, 40),
    rounds=st.integers(1, 4),
    data=st.data(),
)
def test_acquire_granted_iff_quorum_fenced_and_valid(
    nodes: int, ttl_ms: int, timeout_ms: int, rounds: int, data: st.DataObject
) -> None:
    """Properties 1, 2 (and 4, 5 through the driver), against an oracle that sees only
    which replies counted and when."""
    lease = b"L" * 16
    m = Acquire(NAME, ttl_ms, lease, nodes, timeout_ms * MS, max_fence_rounds=rounds)
    d = Driver(m, NAME)
    start = data.draw(st.integers(0, 10**12))
    d.start(start)
    no_validity = start + ttl_ms * MS - drift_ns(ttl_ms)
    drive(data, d, (no_validity - 1, no_validity))

    q = quorum(nodes)
    # Independently of the machine: which counted replies made a quorum, and when.
    acquired = first_quorum(
        d.counted,
        q,
        lambda c: (
            isinstance(c.send.call, AcquireCall)
            and isinstance(c.reply, AcquireReply)
            and c.reply.acquired
        ),
    )
    fenced: Counted | None = None
    for sends in d.rounds:
        tags = {s.tag for s in sends}
        in_round = [c for c in d.counted if c.send.tag in tags]
        hit = first_quorum(
            in_round,
            q,
            lambda c: (
                isinstance(c.send.call, FenceCall)
                and isinstance(c.reply, FenceReply)
                and c.reply.accepted
            ),
        )
        if hit is not None:
            assert fenced is None, "two rounds reached a quorum"
            fenced = hit
    expect = (
        acquired is not None and fenced is not None and validity_ns(ttl_ms, start, fenced.now) > 0
    )
    outcome = m.outcome
    assert isinstance(outcome, Granted) == expect, (outcome, acquired, fenced)
    fence_rounds = [s for s in d.rounds if isinstance(s[0].call, FenceCall)]
    tokens = [s[0].call.token for s in fence_rounds if isinstance(s[0].call, FenceCall)]
    assert tokens == sorted(set(tokens)), "every fencing round has a larger token"
    assert len(fence_rounds) <= rounds
    if fence_rounds:
        assert acquired is not None, "fencing only after a quorum acquired"
        first = fence_rounds[0][0].call
        before = d.counted[: d.counted.index(acquired) + 1]
        counters = [c.reply.counter for c in before if isinstance(c.reply, AcquireReply)]
        assert isinstance(first, FenceCall) and first.token == 1 + max(counters)
    if isinstance(outcome, Granted):
        assert fenced is not None and isinstance(fenced.send.call, FenceCall)
        assert outcome.token == fenced.send.call.token
        assert outcome.decided_ns == fenced.now
        assert outcome.validity_ns == validity_ns(ttl_ms, start, fenced.now) > 0
        assert outcome.lease == lease
        assert d.releases == []
        return
    # Property 2: every NotGranted releases every node with the attempt's lease.
    assert isinstance(outcome, NotGranted)
    assert sorted(s.node for s in d.releases) == list(range(nodes))
    assert all(s.tag == -1 and s.call == ReleaseCall(lock_key(NAME), lease) for s in d.releases)
    assert outcome.detail
    if outcome.reason is Reason.TOO_SLOW:
        assert acquired is not None
        assert validity_ns(ttl_ms, start, d.counted[-1].now) <= 0
    elif outcome.reason is Reason.FENCE_CONTENDED:
        assert len(fence_rounds) == rounds and fenced is None
    else:
        assert not fence_rounds and acquired is None
        if outcome.reason is Reason.RESTARTING:
            delays = {
                c.reply.restart_delay_ms * MS
                for c in d.counted
                if isinstance(c.reply, NodeFailure) and c.reply.restart_delay_ms is not None
            }
            assert outcome.retry_after_ns in delays
        else:
            assert outcome.retry_after_ns == 0


FENCE_ANSWER = st.sampled_from(["accept", "reject", "fail", "silent"])
FOCUS_TTL_MS = 50
NO_VALIDITY = FOCUS_TTL_MS * MS - drift_ns(FOCUS_TTL_MS)  # validity is 0 this long after start
WHEN = st.sampled_from([0, MS, NO_VALIDITY - 1, NO_VALIDITY, NO_VALIDITY + 1])


@SETTINGS
@given(
    nodes=SIZES,
    phase1=st.lists(st.tuples(st.booleans(), st.integers(0, 50)), min_size=7, max_size=7),
    phase1_order=st.permutations(range(7)),
    phase1_at=WHEN,
    rounds=st.lists(
        st.tuples(
            st.lists(FENCE_ANSWER, min_size=7, max_size=7),
            st.lists(st.integers(0, 20), min_size=7, max_size=7),
            st.permutations(range(7)),
            WHEN,
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_fence_rounds(
    nodes: int,
    phase1: list[tuple[bool, int]],
    phase1_order: list[int],
    phase1_at: int,
    rounds: list[tuple[list[str], list[int], list[int], int]],
) -> None:
    """Phase one, then fencing rounds, against a step-by-step oracle: the first token is
    1 + the highest counter reported before the quorum (refusals included); each later
    round's token is larger than every counter seen and every earlier token; a quorum of
    acceptances grants that round's token iff validity is left at that moment."""
    q = quorum(nodes)
    m = Acquire(NAME, FOCUS_TTL_MS, b"L", nodes, 10 * MS, max_fence_rounds=len(rounds))
    d = Driver(m, NAME)
    d.start(0)

    def too_slow() -> None:
        outcome = m.outcome
        assert isinstance(outcome, NotGranted) and outcome.reason is Reason.TOO_SLOW, outcome

    acquired = 0
    seen = 0
    for answered, node in enumerate((n for n in phase1_order if n < nodes), 1):
        ok, counter = phase1[node]
        d.deliver(d.rounds[0][node].tag, AcquireReply(ok, counter), phase1_at)
        seen = max(seen, counter)
        acquired += ok
        if acquired >= q or answered - acquired > nodes - q:
            break
    if acquired < q:
        outcome = m.outcome
        assert isinstance(outcome, NotGranted) and outcome.reason is Reason.HELD, outcome
        return
    if validity_ns(FOCUS_TTL_MS, 0, phase1_at) <= 0:
        too_slow()
        return

    tokens: list[int] = []
    for number, (answers, bumps, order, at) in enumerate(rounds, 1):
        assert m.outcome is None
        (token,) = {c.token for c in d.calls() if isinstance(c, FenceCall)}
        assert token == (seen + 1 if not tokens else max(seen, tokens[-1]) + 1)
        tokens.append(token)
        at = max(at, d.now)
        accepted = rejected = 0
        for node in (n for n in order if n < nodes):
            if accepted >= q or rejected > nodes - q:
                break
            answer = answers[node]
            if answer == "accept":
                accepted += 1
                d.reply(node, FenceReply(True, token), at)
            elif answer == "reject":
                rejected += 1
                seen = max(seen, token + bumps[node])
                d.reply(node, FenceReply(False, token + bumps[node]), at)
            elif answer == "fail":
                rejected += 1
                d.reply(node, NodeFailure("ERR x"), at)
        if accepted < q and rejected <= nodes - q:
            d.tick()  # the silent ones time out
        if accepted >= q:
            validity = validity_ns(FOCUS_TTL_MS, 0, d.now)
            if validity > 0:
                assert m.outcome == Granted(b"L", token, validity, d.now)
            else:
                too_slow()
            return
        if number == len(rounds):
            assert isinstance(m.outcome, NotGranted)
            assert m.outcome.reason is Reason.FENCE_CONTENDED
            return
        if validity_ns(FOCUS_TTL_MS, 0, d.now) <= 0:
            too_slow()
            return


@SMALL
@given(
    nodes=SIZES,
    ttl_ms=st.sampled_from([10, 50]),
    timeout_ms=st.integers(1, 40),
    data=st.data(),
)
def test_renew_renewed_iff_quorum_extended_in_time(
    nodes: int, ttl_ms: int, timeout_ms: int, data: st.DataObject
) -> None:
    """Renewed iff a quorum extended while validity was left; otherwise lost and
    released everywhere (one round; later rounds: test_renew_rounds_*)."""
    m = Renew(NAME, b"L", ttl_ms, nodes, timeout_ms * MS, max_rounds=1)
    d = Driver(m, NAME)
    d.start(1_000 * MS)
    no_validity = 1_000 * MS + ttl_ms * MS - drift_ns(ttl_ms)
    drive(data, d, (no_validity - 1, no_validity))
    hit = first_quorum(d.counted, quorum(nodes), lambda c: c.reply is True)
    outcome = m.outcome
    expect = hit is not None and validity_ns(ttl_ms, 1_000 * MS, hit.now) > 0
    assert isinstance(outcome, Renewed) == expect
    if isinstance(outcome, Renewed):
        assert hit is not None and outcome.decided_ns == hit.now
        assert outcome.validity_ns == validity_ns(ttl_ms, 1_000 * MS, hit.now)
    else:
        assert isinstance(outcome, RenewFailed)
        assert sorted(s.node for s in d.releases) == list(range(nodes))


@SMALL
@given(nodes=SIZES, timeout_ms=st.integers(1, 40), data=st.data())
def test_release_counts_every_node_once(nodes: int, timeout_ms: int, data: st.DataObject) -> None:
    """Release finishes once every node answered or timed out, and counts them right."""
    m = Release(NAME, b"L", nodes, timeout_ms * MS)
    d = Driver(m, NAME)
    d.start(0)
    drive(data, d)
    assert len(d.counted) == nodes
    assert sorted(c.send.node for c in d.counted) == list(range(nodes))
    released = sum(c.reply is True for c in d.counted)
    answered = sum(c.reply is not None and not isinstance(c.reply, NodeFailure) for c in d.counted)
    assert m.outcome == Released(released, answered)


# -- many machines against a model cluster -----------------------------------------------


class Node:
    """One engine node, as the core assumes it behaves: SET NX PX lock keys that expire,
    and fencing counters that accept T only if counter < T."""

    def __init__(self) -> None:
        self.keys: dict[bytes, tuple[bytes, int]] = {}
        self.counters: dict[bytes, int] = {}

    def _holder(self, key: bytes, now: int) -> bytes | None:
        entry = self.keys.get(key)
        if entry is not None and entry[1] <= now:
            del self.keys[key]
            return None
        return entry[0] if entry else None

    def handle(self, call: Call, now: int) -> NodeReply:
        if isinstance(call, AcquireCall):
            counter = self.counters.get(call.fence_key, 0)
            holder = self._holder(call.lock_key, now)
            if holder is None or holder == call.lease:
                self.keys[call.lock_key] = (call.lease, now + call.ttl_ms * MS)
                return AcquireReply(True, counter)
            return AcquireReply(False, counter)
        if isinstance(call, FenceCall):
            counter = self.counters.get(call.fence_key, 0)
            if counter < call.token:
                self.counters[call.fence_key] = call.token
                return FenceReply(True, call.token)
            return FenceReply(False, counter)
        if isinstance(call, ReleaseCall):
            if self._holder(call.lock_key, now) == call.lease:
                del self.keys[call.lock_key]
                return True
            return False
        assert isinstance(call, ExtendCall)
        if self._holder(call.lock_key, now) == call.lease:
            self.keys[call.lock_key] = (call.lease, now + call.ttl_ms * MS)
            return True
        return False


@dataclasses.dataclass
class Grant:
    """A granted acquisition in the simulation, and when its holder let go (if it did)."""

    name: bytes
    lease: bytes
    started_ns: int
    outcome: Granted
    released_ns: int | None = None  # when its holder started releasing it

    @property
    def safe_until(self) -> int:
        """The end of the window in which the holder may rely on the lock."""
        end = self.outcome.deadline_ns
        return end if self.released_ns is None else min(end, self.released_ns)


@dataclasses.dataclass(frozen=True)
class Net:
    """Faults: messages lost, nodes erroring, delays; and nodes that forget their lock
    keys (a crash without the delayed restart: fencing counters are durable, keys not)."""

    loss: float
    error: float
    max_delay_ns: int
    forget: float = 0.0


class Cluster:
    """Nodes, a lossy reordering network, and an event queue in virtual time."""

    def __init__(self, nodes: list[Node], net: Net, rng: random.Random) -> None:
        self.nodes = nodes
        self.net = net
        self.rng = rng
        self.now = 0
        self._queue: list[tuple[int, float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, when: int, action: Callable[[], None]) -> None:
        heapq.heappush(
            self._queue, (max(when, self.now), self.rng.random(), next(self._seq), action)
        )

    def run(self, limit: int = 200_000) -> None:
        for _ in range(limit):
            if not self._queue:
                return
            when, _, _, action = heapq.heappop(self._queue)
            self.now = when
            action()
        raise AssertionError("the simulation did not settle")

    def _delay(self) -> int:
        return self.rng.randrange(self.net.max_delay_ns + 1)

    def send(self, send: Send, on_reply: Callable[[NodeReply], None] | None) -> None:
        """Deliver `send` to its node (maybe), and its answer back (maybe)."""
        if self.rng.random() < self.net.loss:
            return

        def arrive() -> None:
            node = self.nodes[send.node]
            if self.rng.random() < self.net.forget:
                node.keys.clear()
            if self.rng.random() < self.net.error:
                reply: NodeReply = NodeFailure("ERR injected")
            else:
                reply = node.handle(send.call, self.now)
            if on_reply is None or self.rng.random() < self.net.loss:
                return
            self.at(self.now + self._delay(), lambda: on_reply(reply))

        self.at(self.now + self._delay(), arrive)

    def drive(self, d: Driver, sends: list[Send], done: Callable[[Driver], None]) -> None:
        """Run `d`'s machine from its first `sends`: answers and ticks come back through
        the network; `done(d)` is called once when the outcome is set."""
        ticks: set[int] = set()
        finished = False

        def answer(tag: int) -> Callable[[NodeReply], None]:
            return lambda reply: handle(d.deliver(tag, reply, self.now))

        def handle(sends: list[Send]) -> None:
            nonlocal finished
            for send in sends:
                if send.tag < 0:
                    self.send(send, None)
                else:
                    self.send(send, answer(send.tag))
            if d.machine.outcome is not None:
                if not finished:
                    finished = True
                    done(d)
                return
            deadline = d.machine.next_deadline()
            if deadline is not None and deadline not in ticks:
                ticks.add(deadline)
                self.at(deadline, lambda: handle(d.tick(self.now)))

        handle(sends)


@dataclasses.dataclass(frozen=True)
class Workload:
    """Clients, each making up to `attempts` acquisitions of one of `names` locks."""

    clients: int
    attempts: int
    names: int
    ttl_ms: int
    timeout_ms: int
    rounds: int
    spread_ms: int


def simulate(
    nodes: int, net: Net, work: Workload, rng: random.Random, node: Callable[[], Node] = Node
) -> tuple[list[Grant], Cluster]:
    """Clients that acquire, hold, maybe release, and try again, all at once."""
    cluster = Cluster([node() for _ in range(nodes)], net, rng)
    grants: list[Grant] = []
    ttl_ns = work.ttl_ms * MS

    def attempt(client: int, n: int) -> None:
        if n >= work.attempts:
            return
        name = b"lock-%d" % rng.randrange(work.names)
        lease = b"client-%d-attempt-%d" % (client, n)
        started = cluster.now
        d = Driver(
            Acquire(name, work.ttl_ms, lease, nodes, work.timeout_ms * MS, work.rounds), name
        )

        def done(d: Driver) -> None:
            outcome = d.machine.outcome
            if isinstance(outcome, Granted):
                grant = Grant(name, lease, started, outcome)
                grants.append(grant)
                cluster.at(cluster.now + rng.randrange(2 * ttl_ns), lambda: finish(grant))
            else:
                cluster.at(
                    cluster.now + retry_delay_ns(rng, n, 5, 40), lambda: attempt(client, n + 1)
                )

        def finish(grant: Grant) -> None:
            if rng.random() < 0.8:
                grant.released_ns = cluster.now
                r = Driver(Release(name, lease, nodes, work.timeout_ms * MS), name)
                cluster.drive(r, r.start(cluster.now), lambda r: None)
            cluster.at(cluster.now + rng.randrange(ttl_ns), lambda: attempt(client, n + 1))

        cluster.drive(d, d.start(started), done)

    for client in range(work.clients):
        cluster.at(rng.randrange(work.spread_ms * MS + 1), functools.partial(attempt, client, 0))
    cluster.run()
    return grants, cluster


def violations(grants: list[Grant], cluster: Cluster) -> list[str]:
    """What is wrong with these grants (empty: nothing). Mutual exclusion is checked
    only if no node forgot its keys; fencing must hold regardless."""
    found = []
    q = quorum(len(cluster.nodes))
    for a in grants:
        if a.outcome.validity_ns <= 0:
            found.append(f"granted without validity: {a}")
        fence = fence_key(a.name)
        fenced = sum(node.counters.get(fence, 0) >= a.outcome.token for node in cluster.nodes)
        if fenced < q:
            found.append(f"token {a.outcome.token} is past the counters of a quorum: {a}")
    for a, b in itertools.permutations(grants, 2):
        if a.name != b.name:
            continue
        ta, tb = a.outcome.token, b.outcome.token
        if ta == tb and a.lease < b.lease:
            found.append(f"token {ta} granted twice: {a} and {b}")
        if a.outcome.decided_ns < b.started_ns and not ta < tb:
            found.append(f"token went back in real time: {a} then {b}")
        if (
            not cluster.net.forget
            and a.lease < b.lease
            and (a.outcome.decided_ns < b.safe_until and b.outcome.decided_ns < a.safe_until)
        ):
            found.append(f"two valid grants at once: {a} and {b}")
    return found


NETS = st.builds(
    Net,
    loss=st.sampled_from([0.0, 0.05, 0.2, 0.4]),
    error=st.sampled_from([0.0, 0.05, 0.2]),
    max_delay_ns=st.integers(0, 12).map(lambda ms: ms * MS),
    forget=st.sampled_from([0.0, 0.0, 0.1, 0.5]),
)
WORKLOADS = st.builds(
    Workload,
    clients=st.integers(2, 6),
    attempts=st.integers(1, 8),
    names=st.integers(1, 2),
    ttl_ms=st.sampled_from([15, 40, 100]),
    timeout_ms=st.integers(1, 15),
    rounds=st.integers(1, 4),
    spread_ms=st.sampled_from([0, 10, 100]),
)


@SETTINGS
@given(nodes=SIZES, net=NETS, work=WORKLOADS, rng=st.randoms(use_true_random=False))
def test_tokens_are_unique_and_grow_in_real_time(
    nodes: int, net: Net, work: Workload, rng: random.Random
) -> None:
    """Property 3 (and mutual exclusion while no node forgets its keys)."""
    grants, cluster = simulate(nodes, net, work, rng)
    assert violations(grants, cluster) == []


def test_the_model_cluster_grants_and_contends() -> None:
    """The property above is not vacuous: the simulation grants often, under contention,
    and with forgetful nodes grants do overlap (only fencing keeps them apart)."""
    work = Workload(clients=6, attempts=8, names=1, ttl_ms=40, timeout_ms=10, rounds=3, spread_ms=0)
    for forget, overlaps_expected in [(0.0, False), (0.5, True)]:
        net = Net(loss=0.05, error=0.02, max_delay_ns=5 * MS, forget=forget)
        total = overlaps = 0
        for seed in range(20):
            grants, cluster = simulate(5, net, work, random.Random(seed))
            assert violations(grants, cluster) == []
            total += len(grants)
            overlaps += sum(
                a.outcome.decided_ns < b.safe_until and b.outcome.decided_ns < a.safe_until
                for a, b in itertools.combinations(grants, 2)
            )
        assert total >= 100, total
        assert (overlaps > 0) == overlaps_expected, overlaps


class CarelessNode(Node):
    """A node whose fence accepts T when counter <= T: reuse, which must be caught."""

    def handle(self, call: Call, now: int) -> NodeReply:
        if isinstance(call, FenceCall) and self.counters.get(call.fence_key, 0) == call.token:
            return FenceReply(True, call.token)
        return super().handle(call, now)


def test_the_checker_catches_a_careless_fence() -> None:
    work = Workload(clients=6, attempts=8, names=1, ttl_ms=40, timeout_ms=10, rounds=3, spread_ms=0)
    net = Net(loss=0.1, error=0.0, max_delay_ns=5 * MS, forget=0.5)
    caught = [
        seed
        for seed in range(40)
        if violations(*simulate(5, net, work, random.Random(seed), CarelessNode))
    ]
    assert caught, "a node that reuses tokens went unnoticed"
