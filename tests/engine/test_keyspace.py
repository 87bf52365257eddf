"""The engine's time and memory, in process: injectable clock, expiry, memory cap."""

from __future__ import annotations

import time

import pytest

from lockd.engine import Clock, Engine, EngineConfig, WallClock
from lockd.engine.keyspace import KEY_OVERHEAD, SAMPLE_SIZE, Keyspace
from lockd.resp.replies import OOM, CommandError, Reply

MS = 1_000_000


class FakeSource:
    """A nanosecond time source that moves only when told (or by `step_ns` per read)."""

    def __init__(self, start_ms: int = 1_000_000, step_ns: int = 0) -> None:
        self.ns = start_ms * MS
        self.step_ns = step_ns
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        now = self.ns
        self.ns += self.step_ns
        return now

    def advance(self, ms: float) -> None:
        self.ns += int(ms * MS)


@pytest.fixture
def src() -> FakeSource:
    return FakeSource()


@pytest.fixture
def no_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any read of the wall clock made after this point."""

    def wall() -> float:
        raise AssertionError("the wall clock was read")

    monkeypatch.setattr(time, "time", wall)
    monkeypatch.setattr(time, "time_ns", wall)


def ok(reply: Reply) -> Reply:
    assert not isinstance(reply, CommandError), reply
    return reply


def fcall(engine: Engine, name: str, *args: bytes | str | int) -> Reply:
    raw = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return engine.execute([b"FCALL", name.encode(), *raw])


def acquire(engine: Engine, name: str, lease: str, ttl_ms: int) -> Reply:
    return fcall(engine, "lockd_acquire", 2, f"lock:{name}", f"fence:{name}", lease, ttl_ms)


# -- the clock ------------------------------------------------------------------------------


def test_clock_follows_its_source_exactly(src: FakeSource, no_wall_clock: None) -> None:
    clock = Clock(src)
    assert clock.now_ms() == 1_000_000
    src.advance(250)
    assert clock.now_ms() == 1_000_250
    assert clock.now_ns() == 1_000_250 * MS
    assert clock.rate == 1.0
    assert clock.offset_ms == 0


def test_clock_jump_is_an_offset(src: FakeSource, no_wall_clock: None) -> None:
    clock = Clock(src)
    clock.jump(1500)
    assert clock.now_ms() == 1_001_500
    assert clock.offset_ms == 1500
    clock.jump(-2000)
    assert clock.now_ms() == 999_500
    assert clock.offset_ms == -500
    src.advance(10)
    assert clock.now_ms() == 999_510


def test_clock_drift_changes_speed_without_a_step(src: FakeSource, no_wall_clock: None) -> None:
    clock = Clock(src)
    src.advance(100)
    clock.set_rate(2.0)
    assert clock.now_ms() == 1_000_100  # changing the rate never moves the reading
    src.advance(100)
    assert clock.now_ms() == 1_000_300
    clock.set_rate(0.5)
    assert clock.now_ms() == 1_000_300
    src.advance(100)
    assert clock.now_ms() == 1_000_350
    clock.jump(50)
    assert clock.now_ms() == 1_000_400
    clock.set_rate(1.0)
    src.advance(100)
    assert clock.now_ms() == 1_000_500
    assert clock.rate == 1.0


@pytest.mark.parametrize("rate", [0.0, -1.0, 100.0, 1e9])
def test_clock_rejects_absurd_rates(src: FakeSource, rate: float) -> None:
    with pytest.raises(ValueError):
        Clock(src).set_rate(rate)


def test_default_clock_is_monotonic_not_wall(no_wall_clock: None) -> None:
    clock = Clock()
    a = clock.now_ns()
    b = clock.now_ns()
    assert 0 <= b - a < 1_000 * MS
    assert abs(clock.now_ns() - time.monotonic_ns()) < 1_000 * MS


def test_keyspace_and_expiry_never_read_the_wall_clock(
    src: FakeSource, no_wall_clock: None
) -> None:
    ks = Keyspace(Clock(src))
    ks.set(b"k", b"v", 1_000_100)
    ks.set(b"p", b"v", None)
    assert ks.get(b"k") == b"v"
    src.advance(100)
    assert ks.get(b"k") is None
    ks.set(b"k2", b"v", 1_000_200)
    src.advance(100)
    assert ks.active_expire_cycle() == 1
    assert len(ks) == 1


def test_engine_ttls_ignore_wall_clock_jumps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wall-clock step of an hour expires nothing on the default clock; WallClock
    (the explicit unsafe mode) loses the lock."""
    wall = [1_700_000_000 * 1_000_000_000]
    monkeypatch.setattr(time, "time_ns", lambda: wall[0])
    monkeypatch.setattr(time, "time", lambda: wall[0] / 1e9)
    safe = Engine(EngineConfig(max_ttl_ms=60_000))
    unsafe = Engine(EngineConfig(max_ttl_ms=60_000), clock=WallClock())
    assert isinstance(unsafe.clock, WallClock) and not isinstance(safe.clock, WallClock)
    for engine in (safe, unsafe):
        assert ok(acquire(engine, "a", "holder", 30_000))[0] == 1  # type: ignore[index]
    wall[0] += 3600 * 1_000_000_000
    assert acquire(safe, "a", "thief", 30_000) == [0, 0]
    assert 29_000 <= ok(safe.execute([b"PTTL", b"lock:a"])) <= 30_000  # type: ignore[operator]
    assert acquire(unsafe, "a", "thief", 30_000) == [1, 0]  # expired by the wall clock
    wall[0] -= 2 * 3600 * 1_000_000_000
    assert ok(unsafe.execute([b"PTTL", b"lock:a"])) > 3_000_000  # type: ignore[operator]


# -- TTLs on the engine clock ----------------------------------------------------------------


def test_ttl_expires_when_engine_clock_jumps_past_it(src: FakeSource) -> None:
    engine = Engine(clock=Clock(src))
    ok(engine.execute([b"SET", b"k", b"v", b"PX", b"1000"]))
    assert engine.execute([b"PTTL", b"k"]) == 1000
    engine.clock.jump(999)
    assert engine.execute([b"GET", b"k"]) == b"v"
    assert engine.execute([b"PTTL", b"k"]) == 1
    engine.clock.jump(1)
    assert engine.execute([b"GET", b"k"]) is None
    assert engine.execute([b"PTTL", b"k"]) == -2


def test_ttl_follows_engine_clock_drift(src: FakeSource) -> None:
    engine = Engine(clock=Clock(src))
    engine.clock.set_rate(2.0)
    assert ok(acquire(engine, "a", "L1", 1000)) == [1, 0]
    src.advance(499)
    assert acquire(engine, "a", "L2", 1000) == [0, 0]
    src.advance(1)  # 500 ms of source time = 1000 ms on a clock running twice as fast
    assert acquire(engine, "a", "L2", 1000) == [1, 0]


def test_lock_ttl_extend_and_release_use_engine_clock(src: FakeSource) -> None:
    engine = Engine(clock=Clock(src))
    assert ok(acquire(engine, "a", "L1", 500)) == [1, 0]
    src.advance(400)
    assert fcall(engine, "lockd_extend", 1, "lock:a", "L1", 500) == 1
    src.advance(400)
    assert acquire(engine, "a", "L2", 500) == [0, 0]  # extended: still held
    assert fcall(engine, "lockd_extend", 1, "lock:a", "L2", 500) == 0
    src.advance(100)
    assert fcall(engine, "lockd_extend", 1, "lock:a", "L1", 500) == 0  # expired meanwhile
    assert fcall(engine, "lockd_release", 1, "lock:a", "L1") == 0
    assert ok(acquire(engine, "a", "L2", 500)) == [1, 0]


def test_backwards_jump_delays_expiry(src: FakeSource) -> None:
    engine = Engine(clock=Clock(src))
    ok(engine.execute([b"SET", b"k", b"v", b"PX", b"100"]))
    engine.clock.jump(-1000)
    src.advance(500)
    assert engine.execute([b"GET", b"k"]) == b"v"
    assert engine.execute([b"PTTL", b"k"]) == 600


# -- lazy and active expiry ------------------------------------------------------------------


def test_lazy_expiry_on_access(src: FakeSource) -> None:
    ks = Keyspace(Clock(src))
    now = ks.clock.now_ms()
    ks.set(b"a", b"1", now + 100)
    ks.set(b"b", b"1", now + 100)
    ks.set(b"p", b"1", None)
    src.advance(100)
    # Nothing reclaimed until someone looks.
    assert len(ks) == 3 and ks.volatile_count == 2 and ks.expired_keys == 0
    assert ks.get(b"a") is None
    assert len(ks) == 2 and ks.volatile_count == 1 and ks.expired_keys == 1
    assert ks.delete(b"b") is False  # expired: not live, so not deleted by DEL
    assert ks.expired_keys == 2
    assert ks.get(b"p") == b"1"


def test_active_expiry_reclaims_keys_never_accessed_again(src: FakeSource) -> None:
    ks = Keyspace(Clock(src))
    now = ks.clock.now_ms()
    for i in range(2000):
        ks.set(b"v%d" % i, b"x" * 10, now + 100)
    for i in range(10):
        ks.set(b"p%d" % i, b"x" * 10, None)
    ks.set(b"long", b"x" * 10, now + 60_000)
    persistent_memory = 10 * (2 + 10 + KEY_OVERHEAD)
    assert ks.active_expire_cycle() == 0  # nothing due yet
    src.advance(100)
    # Samples keep coming back expired, so one cycle keeps going until the pool is all but
    # down to the one live key (it stops once a small sample is mostly "long").
    removed = ks.active_expire_cycle()
    assert 1990 <= removed <= 2000
    for _ in range(100):
        if ks.volatile_count == 1:
            break
        ks.active_expire_cycle()
    assert ks.expired_keys == 2000
    assert len(ks) == 11 and ks.volatile_count == 1
    assert ks.get(b"long") is not None
    ks.delete(b"long")
    assert ks.used_memory == persistent_memory


def test_active_expiry_with_few_expired_converges(src: FakeSource) -> None:
    """Under 25% of a sample expired: a cycle stops early; repeated cycles still get all."""
    ks = Keyspace(Clock(src))
    now = ks.clock.now_ms()
    for i in range(900):
        ks.set(b"live%d" % i, b"x", now + 3_600_000)
    for i in range(100):
        ks.set(b"dead%d" % i, b"x", now + 100)
    src.advance(100)
    first = ks.active_expire_cycle()
    assert first <= SAMPLE_SIZE  # ~10% expired: one round only
    cycles = 1
    while ks.volatile_count > 900 and cycles < 5000:
        ks.active_expire_cycle()
        cycles += 1
    assert ks.volatile_count == 900, cycles
    assert ks.expired_keys == 100
    assert all(ks.get(b"live%d" % i) == b"x" for i in range(900))


def test_active_expiry_samples_keys_added_after_its_pool(src: FakeSource) -> None:
    ks = Keyspace(Clock(src))
    now = ks.clock.now_ms()
    ks.set(b"long", b"x", now + 3_600_000)
    ks.active_expire_cycle()  # builds a sampling pool holding only "long"
    for i in range(50):
        ks.set(b"k%d" % i, b"x", now + 10)
    src.advance(1000)
    for _ in range(100):
        ks.active_expire_cycle()
    assert ks.volatile_count == 1 and len(ks) == 1


def test_active_expiry_survives_a_backwards_clock_jump(src: FakeSource) -> None:
    """After the engine clock is stepped back an hour, keys created afterwards must still
    be reclaimed by the active cycle (within about a second), not an hour later."""
    ks = Keyspace(Clock(src))
    now = ks.clock.now_ms()
    ks.set(b"long", b"x", now + 100 * 3_600_000)
    ks.active_expire_cycle()
    ks.clock.jump(-3_600_000)
    now = ks.clock.now_ms()
    for i in range(50):
        ks.set(b"k%d" % i, b"x", now + 10)
    src.advance(1000)
    for _ in range(100):
        ks.active_expire_cycle()
    assert ks.volatile_count == 1 and len(ks) == 1


def test_active_expiry_stops_within_its_budget() -> None:
    # Every read of the source moves time by 1 ms, so the cycle sees time pass.
    src = FakeSource(step_ns=0)
    ks = Keyspace(Clock(src))
    now = ks.clock.now_ms()
    total = 20_000
    for i in range(total):
        ks.set(b"k%d" % i, b"x", now + 1)
    src.advance(10)
    src.step_ns = MS
    start = src.ns
    removed = ks.active_expire_cycle(budget_ms=5)
    spent_ms = (src.ns - start) / MS
    # Each round samples SAMPLE_SIZE keys and then checks the time once.
    assert 0 < removed <= (5 + 2) * SAMPLE_SIZE
    assert spent_ms <= 5 + 3
    assert ks.volatile_count == total - removed
    # Later cycles carry on where it stopped.
    while ks.volatile_count:
        assert ks.active_expire_cycle(budget_ms=5) > 0
    assert ks.expired_keys == total and len(ks) == 0 and ks.used_memory == 0


def test_engine_cron_runs_active_expiry(src: FakeSource) -> None:
    engine = Engine(clock=Clock(src))
    for i in range(100):
        ok(engine.execute([b"SET", b"k%d" % i, b"v", b"PX", b"50"]))
    src.advance(50)
    engine.cron()
    assert engine.keyspace.volatile_count == 0
    assert "expired_keys:100" in engine.info("stats")


# -- memory cap ------------------------------------------------------------------------------


def test_memory_cap_refuses_new_keys_and_keeps_everything_held(src: FakeSource) -> None:
    engine = Engine(EngineConfig(maxmemory=8_000, max_ttl_ms=60_000), clock=Clock(src))
    held: list[int] = []
    error: Reply = None
    for i in range(1000):
        reply = acquire(engine, f"r{i}", f"lease{i}", 10_000)
        if isinstance(reply, CommandError):
            error = reply
            break
        assert reply == [1, 0]
        held.append(i)
    assert isinstance(error, CommandError)
    assert str(error) == OOM == "OOM command not allowed when used memory > 'maxmemory'."
    assert 10 < len(held) < 1000
    size = len(engine.keyspace)
    used = engine.keyspace.used_memory

    # New keys of every kind are refused with the same error; nothing is evicted.
    for cmd in (
        [b"SET", b"newkey", b"v"],
        [b"SET", b"newkey", b"v", b"NX", b"PX", b"100"],
        [b"INCR", b"newcounter"],
        [b"FCALL", b"lockd_acquire", b"2", b"lock:new", b"fence:new", b"L", b"1000"],
        [b"FCALL", b"lockd_fence_advance", b"1", b"fence:new", b"5"],
    ):
        reply = engine.execute(cmd)
        assert isinstance(reply, CommandError) and str(reply) == OOM, (cmd, reply)
    assert len(engine.keyspace) == size and engine.keyspace.used_memory == used

    # Existing locks can still be refreshed, extended, and released.
    assert acquire(engine, "r0", "lease0", 20_000) == [1, 0]
    assert fcall(engine, "lockd_extend", 1, "lock:r1", "lease1", 20_000) == 1
    assert engine.execute([b"PTTL", b"lock:r1"]) == 20_000
    assert acquire(engine, "r2", "other", 10_000) == [0, 0]  # held, not OOM
    src.advance(15_000)
    for i in held:
        expected = f"lease{i}".encode() if i < 2 else None
        assert engine.execute([b"GET", f"lock:r{i}".encode()]) == expected
    # Releasing frees memory for new locks again.
    assert fcall(engine, "lockd_release", 1, "lock:r0", "lease0") == 1
    assert fcall(engine, "lockd_release", 1, "lock:r1", "lease1") == 1
    engine.cron()
    assert len(engine.keyspace) == 0 and engine.keyspace.used_memory == 0
    assert acquire(engine, "new", "L", 1000) == [1, 0]


def test_memory_cap_still_advances_existing_fence_counters(src: FakeSource) -> None:
    engine = Engine(EngineConfig(maxmemory=2_000), clock=Clock(src))
    assert fcall(engine, "lockd_fence_advance", 1, "fence:a", 5) == [1, 5]
    i = 0
    while not isinstance(engine.execute([b"SET", b"fill%d" % i, b"v"]), CommandError):
        i += 1
    assert fcall(engine, "lockd_fence_advance", 1, "fence:a", 6) == [1, 6]
    assert fcall(engine, "lockd_fence_advance", 1, "fence:a", 6) == [0, 6]
    assert engine.execute([b"SET", b"fill0", b"overwrite"]) is not None  # existing key: OK
    assert engine.execute([b"GET", b"fill0"]) == b"overwrite"
    assert str(fcall(engine, "lockd_fence_advance", 1, "fence:b", 1)) == OOM
    assert "maxmemory:2000" in engine.info("memory")
    assert "maxmemory_policy:noeviction" in engine.info("memory")
