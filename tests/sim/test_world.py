"""The simulator's parts on their own: host clocks, simulated disks and nodes (the real
engine's restart logic on them), the network's weather, the store, and the checkers fed
hand-made histories (a checker that cannot fail proves nothing)."""

from __future__ import annotations

import random

import pytest

from lockd.core import AcquireCall, AcquireReply, FenceCall, FenceReply, NodeFailure, lock_key
from lockd.core.quorum import restart_delay_ms
from lockd.engine import EngineConfig, FsyncPolicy
from lockd.sim.checks import Grant, History, check
from lockd.sim.schedule import Envelope, Job, generate
from lockd.sim.simulation import liveness_bound_ns
from lockd.sim.world import MS, HostClock, Network, SimDisk, SimNode, StoreModel, World

NAME = b"a"
LOCK = lock_key(NAME)
FENCE = b"fence:{a}"


# -- clocks ---------------------------------------------------------------------------------


def test_host_clock_drifts_stops_in_a_pause_and_inverts() -> None:
    clock = HostClock(1.01, 5_000)
    assert clock.now(100 * MS) == 5_000 + 101 * MS
    assert clock.now(clock.true_at(10**9, 0)) >= 10**9
    assert clock.now(clock.true_at(10**9, 0) - 1) < 10**9
    clock.pause(100 * MS)
    assert clock.paused and clock.now(900 * MS) == 5_000 + 101 * MS  # stood still
    clock.resume(900 * MS)
    assert clock.now(1000 * MS) == 5_000 + 202 * MS  # lost the 800 ms of the pause
    assert clock.true_at(0, 1000 * MS) == 1000 * MS  # already past


# -- disks and nodes -------------------------------------------------------------------------


def node(world: World, policy: FsyncPolicy = FsyncPolicy.ALWAYS, **config: object) -> SimNode:
    cfg = EngineConfig(max_ttl_ms=500, fence_block=16, **config)  # type: ignore[arg-type]
    n = SimNode(0, world, cfg, policy, 1.0, 0, 0, use_wall_clock=False)
    n.start()
    return n


def acquire(n: SimNode, lease: bytes, ttl_ms: int = 400) -> object:
    return n.call(AcquireCall(LOCK, FENCE, lease, ttl_ms))


def test_disk_keeps_the_fsynced_and_a_prefix_of_the_rest() -> None:
    disk = SimDisk(FsyncPolicy.EVERYSEC)
    clock = [0]
    disk.attach(lambda: clock[0])
    for t in (100, 900, 1100, 1500):
        clock[0] = t
        disk.journal(b"%d" % t, True)
        disk.commit()  # everysec: nothing yet
    clock[0] = 1600
    for seed in range(20):
        copy = SimDisk(FsyncPolicy.EVERYSEC)
        copy.attach(lambda: clock[0])
        copy._pending = list(disk._pending)
        copy.crash(random.Random(seed))
        kept = copy._durable
        assert kept[:2] == [b"100", b"900"]  # before the last once-a-second fsync
        assert kept == [b"100", b"900", b"1100", b"1500"][: len(kept)]  # a prefix


def test_power_loss_starts_with_the_restart_delay_and_the_fence_floor() -> None:
    world = World()
    n = node(world)
    assert acquire(n, b"x") == AcquireReply(True, 0)
    assert n.call(FenceCall(FENCE, 5)) == FenceReply(True, 5)
    n.stop(clean=False, rng=random.Random(0))
    world.now = 10 * MS
    engine = n.start()
    assert engine.restart_delay_remaining_ms() == restart_delay_ms(500)
    reply = acquire(n, b"y")
    assert isinstance(reply, NodeFailure) and reply.restart_delay_ms is not None
    assert engine.counter(FENCE) >= 5  # the reservation (fsynced at once) is the floor
    assert engine.keyspace.get(LOCK) == b"x"  # `always`: the lock came back
    world.now += restart_delay_ms(500) * MS
    assert acquire(n, b"y") == AcquireReply(True, engine.counter(FENCE))  # x expired


def test_clean_stop_delays_only_for_live_locks_and_keeps_renewed_ones() -> None:
    world = World()
    n = node(world, FsyncPolicy.NO)
    acquire(n, b"x", 100)
    world.now = 90 * MS
    assert acquire(n, b"x", 300) == AcquireReply(True, 0)  # refreshed: PEXPIREAT
    world.now = 150 * MS  # past the first deadline, not the refreshed one
    n.stop(clean=True, rng=random.Random(0))
    engine = n.start()
    assert 0 < engine.restart_delay_remaining_ms() <= 240
    assert engine.keyspace.get(LOCK) == b"x"  # replayed with its renewed deadline


def test_unsafe_engine_options_do_what_they_say() -> None:
    world = World()
    n = node(world, unsafe_no_restart_delay=True, unsafe_volatile_fence=True)
    assert n.call(FenceCall(FENCE, 7)) == FenceReply(True, 7)
    n.stop(clean=False, rng=random.Random(0))
    engine = n.start()
    assert engine.restart_delay_remaining_ms() == 0
    assert engine.counter(FENCE) == 0  # the counter was in memory only
    single = node(World(), unsafe_single_phase_token=True)
    assert acquire(single, b"x") == AcquireReply(True, 1)  # acquire increments


def test_wall_clock_nodes_expire_on_jumps() -> None:
    world = World()
    cfg = EngineConfig(max_ttl_ms=500)
    safe = SimNode(0, world, cfg, FsyncPolicy.ALWAYS, 1.0, 7, 0, use_wall_clock=False)
    wall = SimNode(1, world, cfg, FsyncPolicy.ALWAYS, 1.0, 7, 0, use_wall_clock=True)
    for n in (safe, wall):
        n.start()
        acquire(n, b"x")
        n.wall.jump(1000)
    assert acquire(safe, b"y") == AcquireReply(False, 0)
    assert acquire(wall, b"y") == AcquireReply(True, 0)


def test_network_weather_and_links() -> None:
    net = Network(lambda s: random.Random(s), 1, 1, 0.0, 0.0, 0.0, 1000 * MS)
    assert all(len(net.delays("req", 0, 0)) == 1 for _ in range(100))
    net.weather = (1.0, 0.0, 0.0)
    assert net.delays("req", 0, 0) == ()
    assert len(net.delays("req", 0, Network.STORE, lossless=True)) == 1
    net.weather = (0.0, 1.0, 1.0)
    delays = net.delays("rep", 0, 0)
    assert len(delays) == 2 and all(d > 0 for d in delays)


# -- the store and the checkers ---------------------------------------------------------------


def grant(client: int, token: int, start: int, decided: int, end: int, lease: bytes) -> Grant:
    return Grant(NAME, client, lease, token, start * MS, decided * MS, end * MS)


def props(history: History, store: StoreModel | None = None) -> list[str]:
    return [v.prop for v in check(history, store or StoreModel(), True, [])]


def test_checkers_pass_a_clean_history() -> None:
    history = History(grants=[grant(0, 1, 0, 1, 10, b"a"), grant(1, 2, 5, 12, 20, b"b")])
    assert props(history) == []


def test_token_checkers() -> None:
    dup = History(grants=[grant(0, 3, 0, 1, 10, b"a"), grant(1, 3, 11, 12, 20, b"b")])
    assert props(dup) == ["token-unique", "token-monotonic"]
    reversed_ = History(grants=[grant(0, 5, 0, 1, 10, b"a"), grant(1, 4, 11, 12, 20, b"b")])
    assert props(reversed_) == ["token-monotonic"]
    concurrent = History(grants=[grant(0, 5, 0, 10, 11, b"a"), grant(1, 4, 5, 12, 20, b"b")])
    assert props(concurrent) == []  # the second attempt began before the first was granted


def test_overlap_checker_skips_paused_holders() -> None:
    history = History(grants=[grant(0, 1, 0, 1, 15, b"a"), grant(1, 2, 11, 12, 20, b"b")])
    assert props(history) == ["overlap"]
    history.grants[0].tainted = True
    assert props(history) == []


def test_store_checkers() -> None:
    store = StoreModel()
    assert store.read(1, NAME, b"a", 5) == (True, None)
    assert store.write(2, NAME, b"a", 5, 1, None)
    assert store.read(3, NAME, b"old", 4) == (False, None)  # fenced out
    assert store.read(4, NAME, b"b", 6) == (True, 1)
    assert not store.write(5, NAME, b"a", 5, 2, None)
    assert props(History(acked=[(2, NAME, 1, 0)]), store) == []
    # Two leases with one token (what a token bug does): the store cannot tell them apart.
    twin = StoreModel()
    twin.read(1, NAME, b"a", 7)
    twin.read(2, NAME, b"b", 7)
    twin.write(3, NAME, b"a", 7, 1, None)
    twin.write(4, NAME, b"b", 7, 2, None)
    found = props(History(acked=[(3, NAME, 1, 0), (4, NAME, 2, 1)]), twin)
    assert found == ["stale-write", "stale-write", "lost-write"]


# -- schedules ---------------------------------------------------------------------------------


def test_schedules_are_pure_and_shrinkable() -> None:
    a, b = generate(3, 50), generate(3, 50)
    assert a == b and len(a.steps) == 50
    assert generate(3, 20).steps == a.steps[:20]  # a shorter run is a prefix
    kept = a.keep({s.index for s in a.steps if isinstance(s.action, Job)})
    assert all(isinstance(s.action, Job) for s in kept.steps)
    assert all(str(s.action) for s in a.steps)


def test_liveness_bound_covers_the_restart_delay() -> None:
    schedule = generate(0, 10)
    assert liveness_bound_ns(schedule) > restart_delay_ms(Envelope().max_ttl_ms) * MS


@pytest.mark.parametrize("policy", list(FsyncPolicy))
def test_every_policy_keeps_the_fence_floor(policy: FsyncPolicy) -> None:
    world = World()
    n = node(world, policy)
    for token in range(1, 40):
        n.call(FenceCall(FENCE, token))
    n.stop(clean=False, rng=random.Random(1))
    assert n.start().counter(FENCE) >= 39
