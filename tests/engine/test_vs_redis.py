"""Hypothesis cross-check: random command sequences on a `lockd engine` and a real Redis.

A `RuleBasedStateMachine` sends every command to both servers side by side and compares
the replies after every step (errors by their exact text), then compares the whole key
pool (values, TTL presence, DBSIZE). Commands draw from a small pool of keys, values,
lease ids and fencing tokens so that they collide: INCR on a lock key, acquiring with a
fence key that holds a lease id, SET options that conflict, and so on.

Timing must not decide a reply, so every TTL is long (10 s and up) and no two deadlines
can tie: millisecond TTLs are a base (a multiple of 10 s) plus the step number, so a later
PEXPIRE with the same base is strictly later, and different bases are seconds apart.
PTTL and TTL are compared with a tolerance.

Both servers are started once for the module; each example starts by deleting every
name a command could have used as a key (the engine has no FLUSHALL).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from lockd.engine.engine import glob_match
from tests.support import EngineProcess, redis_server, redis_server_binary

PREFIX = "vs:"
KEYS = [PREFIX + name for name in ("k1", "k2", "lock", "fence")]
VALUES = [
    "a",
    "b",
    "1",
    "7",
    "0",
    "-1",
    "05",
    "abc",
    "",
    "9007199254740991",
    "9007199254740992",
    "9223372036854775807",
    "-9223372036854775808",
]
LEASES = ["a", "b", "1"]
TOKENS = ["1", "2", "3", "7", "9007199254740991", "9007199254740992", "0", "01", "-1", "x"]
PX_BASES = [10_000, 20_000, 30_000, 40_000, 50_000]  # + step number; all below max-ttl 60 s
EX_SECONDS = ["15", "25", "35", "45"]  # halfway between the PX bases: never tie with them
BAD_AMOUNTS = ["0", "-1", "abc", "1.5", ""]

# Anything a raw FCALL may put in a key position; deleted before every example.
ALL_NAMES = sorted({*KEYS, *VALUES, *LEASES, *TOKENS})

Reply = object
Amount = int | str  # an int is a PX base, offset by the step number when sent

keys = st.sampled_from(KEYS)
px = st.sampled_from(PX_BASES)
set_option = st.one_of(
    st.sampled_from([("NX",), ("XX",), ("GET",), ("KEEPTTL",), ("nx",), ("FOO",)]),
    st.tuples(st.sampled_from(["PX", "px"]), st.one_of(px, st.sampled_from(BAD_AMOUNTS))),
    st.tuples(st.sampled_from(["EX", "ex"]), st.sampled_from([*EX_SECONDS, *BAD_AMOUNTS])),
    st.just(("PX",)),  # missing amount
)
expire_amount = st.one_of(px, st.sampled_from(["0", "-1", "-5000", "abc", "9223372036854775807"]))
expire_flag = st.sampled_from(["NX", "XX", "GT", "LT", "gt", "FOO"])
lock_ttl = st.one_of(px, px, st.sampled_from(["0", "abc", "-1", "0100"]))
INVALID = [
    ["GET"],
    ["GET", KEYS[0], KEYS[1]],
    ["SET", KEYS[0]],
    ["FOO", "a", "b"],
    ["PING", "a", "b"],
    ["INCR", KEYS[0], KEYS[1]],
    ["PEXPIRE", KEYS[0]],
    ["PTTL"],
    ["DEL"],
    ["EXISTS"],
    ["DBSIZE", "x"],
    ["FCALL"],
    ["FCALL", "lockd_acquire"],
]


@dataclass(frozen=True)
class Servers:
    engine: redis.Redis
    redis: redis.Redis


def _client(port: int, protocol: int | None) -> redis.Redis:
    client = redis.Redis(port=port, socket_timeout=10, protocol=protocol)
    client.response_callbacks.clear()  # raw replies: b"OK", not True
    return client


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    if redis_server_binary() is None:
        pytest.fail("redis-server is not installed; `make test` installs Debian's package")
    engine = EngineProcess(tmp_path_factory.mktemp("vs") / "engine").start()
    try:
        with redis_server(tmp_path_factory.mktemp("vs-redis")) as port:
            # The engine through redis-py's default (RESP3), Redis through RESP2.
            pair = Servers(_client(engine.port, None), _client(port, 2))
            yield pair
            pair.engine.close()
            pair.redis.close()
    finally:
        engine.close()


def call(client: redis.Redis, *args: str) -> Reply:
    """A reply, or ("error", exact text) for an error reply."""
    try:
        return client.execute_command(*args)
    except redis.ResponseError as exc:
        code = exc.status_code  # redis-py strips a known code (ERR, ...) off the text
        return ("error", f"{code} {exc}" if code else str(exc))


class EngineVsRedis(RuleBasedStateMachine):
    servers: Servers  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.history: list[str] = []

    @initialize()
    def clean(self) -> None:
        for client in (self.servers.engine, self.servers.redis):
            client.execute_command("DEL", *ALL_NAMES)

    # -- helpers ----------------------------------------------------------------------

    def amount(self, value: Amount) -> str:
        return str(value + self.step) if isinstance(value, int) else value

    def both(self, *args: str) -> tuple[Reply, Reply]:
        self.step += 1
        self.history.append(" ".join(args))
        return call(self.servers.engine, *args), call(self.servers.redis, *args)

    def same(self, *args: str) -> None:
        engine, real = self.both(*args)
        assert engine == real, f"{' '.join(args)!r}: engine {engine!r} != redis {real!r}"

    # -- rules ------------------------------------------------------------------------

    @rule(key=keys, value=st.sampled_from(VALUES), options=st.lists(set_option, max_size=3))
    def set(self, key: str, value: str, options: list[tuple[Amount, ...]]) -> None:
        words = [self.amount(word) for option in options for word in option]
        self.same("SET", key, value, *words)

    @rule(key=keys)
    def get(self, key: str) -> None:
        self.same("GET", key)

    @rule(names=st.lists(keys, min_size=1, max_size=3))
    def delete(self, names: list[str]) -> None:
        self.same("DEL", *names)

    @rule(names=st.lists(keys, min_size=1, max_size=3))
    def exists(self, names: list[str]) -> None:
        self.same("EXISTS", *names)

    @rule(key=keys)
    def incr(self, key: str) -> None:
        self.same("INCR", key)

    @rule(key=keys, amount=expire_amount, flags=st.lists(expire_flag, max_size=2))
    def pexpire(self, key: str, amount: Amount, flags: list[str]) -> None:
        self.same("PEXPIRE", key, self.amount(amount), *flags)

    @rule(key=keys)
    def persist(self, key: str) -> None:
        self.same("PERSIST", key)

    @rule(key=keys)
    def pttl(self, key: str) -> None:
        engine, real = self.both("PTTL", key)
        assert _close(engine, real), f"PTTL: engine {engine!r} != redis {real!r}"

    @rule(key=keys)
    def ttl(self, key: str) -> None:
        engine, real = self.both("TTL", key)
        assert _close(engine, real, 1), f"TTL: engine {engine!r} != redis {real!r}"

    @rule(lock=keys, fence=keys, lease=st.sampled_from(LEASES), ms=lock_ttl)
    def acquire(self, lock: str, fence: str, lease: str, ms: Amount) -> None:
        self.same("FCALL", "lockd_acquire", "2", lock, fence, lease, self.amount(ms))

    @rule(lock=keys, lease=st.sampled_from(LEASES))
    def release(self, lock: str, lease: str) -> None:
        self.same("FCALL", "lockd_release", "1", lock, lease)

    @rule(lock=keys, lease=st.sampled_from(LEASES), ms=lock_ttl)
    def extend(self, lock: str, lease: str, ms: Amount) -> None:
        self.same("FCALL", "lockd_extend", "1", lock, lease, self.amount(ms))

    @rule(fence=keys, token=st.sampled_from(TOKENS))
    def fence_advance(self, fence: str, token: str) -> None:
        self.same("FCALL", "lockd_fence_advance", "1", fence, token)

    @rule(
        function=st.sampled_from(
            [
                *("lockd_acquire", "lockd_release", "lockd_extend", "lockd_fence_advance"),
                *("LOCKD_ACQUIRE", "Lockd_Fence_Advance", "nope"),
            ]
        ),
        numkeys=st.sampled_from(["-1", "x", "01", "0", "1", "2", "3", "9"]),
        args=st.lists(st.sampled_from([*KEYS, *LEASES, "30000", "5"]), max_size=5),
    )
    def fcall_raw(self, function: str, numkeys: str, args: list[str]) -> None:
        self.same("FCALL", function, numkeys, *args)

    @rule(args=st.sampled_from(INVALID))
    def invalid(self, args: list[str]) -> None:
        self.same(*args)

    # -- the whole state --------------------------------------------------------------

    @invariant()
    def same_keyspace(self) -> None:
        for key in KEYS:
            engine, real = (
                call(self.servers.engine, "GET", key),
                call(self.servers.redis, "GET", key),
            )
            assert engine == real, f"GET {key}: engine {engine!r} != redis {real!r}"
            engine, real = (
                call(self.servers.engine, "PTTL", key),
                call(self.servers.redis, "PTTL", key),
            )
            assert _close(engine, real), f"PTTL {key}: engine {engine!r} != redis {real!r}"
        engine, real = call(self.servers.engine, "DBSIZE"), call(self.servers.redis, "DBSIZE")
        assert engine == real, f"DBSIZE: engine {engine!r} != redis {real!r}"

    def teardown(self) -> None:
        self.clean()


def _close(engine: Reply, real: Reply, tolerance: int = 1000) -> bool:
    """(P)TTLs agree: the same -1/-2, or both positive and within `tolerance`. Deadlines
    that differ by design are seconds apart; 1 s absorbs a loaded machine's stalls."""
    if isinstance(engine, int) and isinstance(real, int) and engine >= 0 and real >= 0:
        return abs(engine - real) <= tolerance
    return engine == real


def test_engine_matches_redis(servers: Servers) -> None:
    class Machine(EngineVsRedis):
        pass

    Machine.servers = servers
    run_state_machine_as_test(
        Machine,
        settings=settings(max_examples=50, stateful_step_count=30, deadline=None),
    )


GLOB_ALPHABET = "ab*?[]^-\\"


def test_glob_matching_matches_redis(servers: Servers) -> None:
    """PSUBSCRIBE patterns (`glob_match`) decide like Redis's `stringmatchlen` on random
    patterns over glob metacharacters: PUBLISH counts the one pattern that matched, or 0."""
    real = servers.redis.pubsub()
    ours = servers.engine.pubsub()

    @given(
        pattern=st.text(GLOB_ALPHABET, min_size=1, max_size=8),
        channel=st.text(GLOB_ALPHABET, min_size=1, max_size=8),
    )
    @settings(max_examples=300, deadline=None)
    def check(pattern: str, channel: str) -> None:
        key = "glob:" + pattern
        for pubsub in (real, ours):
            pubsub.psubscribe(key)
            confirmed = pubsub.get_message(timeout=5)  # subscribed before anyone publishes
            assert confirmed is not None and confirmed["type"] == "psubscribe"
        try:
            expected = servers.redis.execute_command("PUBLISH", "glob:" + channel, "m")
            assert glob_match(key.encode(), ("glob:" + channel).encode()) == bool(expected)
            assert servers.engine.execute_command("PUBLISH", "glob:" + channel, "m") == expected
        finally:
            for pubsub in (real, ours):
                pubsub.punsubscribe(key)
                while (message := pubsub.get_message(timeout=5)) is not None:
                    if message["type"] == "punsubscribe":
                        break

    try:
        check()
    finally:
        real.close()
        ours.close()
