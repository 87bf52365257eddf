"""Redis conformance of the engine: one suite, run against every target.

Targets (the `t` fixture):
- `embedded`: `lockd.engine.Engine()` in-process, through `Engine.execute`;
- `engine-resp3`: a `lockd engine` process through a default redis-py client (RESP3);
- `engine-resp2`: the same process through a `protocol=2` redis-py client;
- `redis`: a real redis-server 7 with `lockd/engine/lua/lockd.lua` loaded.

Every test is written once against `Target.call()`, which returns a reply in one
normalised shape (bytes, int, None or a list of those) and raises `ReplyError` carrying
the exact error text. Expected replies are literals, so a test passing on every target
means the replies are identical. `test_transcripts_identical` also compares a long
command script across all targets directly. Where the engine differs from Redis by
design, an engine-only test says so (bottom of the file).

The network targets share one server per module (keys are unique per test and deleted
afterwards); tests that need an empty keyspace use fresh servers (`fresh`).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from lockd.engine import Engine
from lockd.resp.replies import CommandError, Status
from tests.support import EngineProcess, redis_server, redis_server_binary

Reply = bytes | int | None | list["Reply"]
Arg = str | bytes | int

TARGETS = ["embedded", "engine-resp3", "engine-resp2", "redis"]
ENGINE_TARGETS = ["embedded", "engine-resp3", "engine-resp2"]

SYNTAX = "ERR syntax error"
NOT_INTEGER = "ERR value is not an integer or out of range"
OVERFLOW = "ERR increment or decrement would overflow"
BAD_COUNTER = "ERR lockd: fencing counter is not an integer in [1, 2^53)"
BAD_TOKEN = "ERR lockd_fence_advance: token must be an integer in [1, 2^53)"
NX_CONFLICT = "ERR NX and XX, GT or LT options at the same time are not compatible"
GT_LT_CONFLICT = "ERR GT and LT options at the same time are not compatible"


def arity(command: str) -> str:
    return f"ERR wrong number of arguments for '{command}' command"


def bad_ttl(function: str) -> str:
    return f"ERR {function}: ttl must be a positive integer of milliseconds"


class ReplyError(Exception):
    """An error reply; `str()` is its exact text, code first (`ERR syntax error`)."""


_prefixes = itertools.count()


class Target:
    """One server under test. `call()` runs a command; `key()` names a per-test key."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.prefix = f"conf{next(_prefixes)}:"
        self.keys: list[str] = []

    def key(self, name: str) -> str:
        """A key unique to this test, deleted when the test ends."""
        key = self.prefix + name
        self.keys.append(key)
        return key

    def call(self, *args: Arg) -> Reply:
        raise NotImplementedError

    def error(self, *args: Arg) -> str:
        """The exact text of the error reply `args` must produce."""
        try:
            reply = self.call(*args)
        except ReplyError as exc:
            return str(exc)
        raise AssertionError(f"{args!r} replied {reply!r}, expected an error")

    def fcall(self, function: str, keys: list[str], *args: Arg) -> Reply:
        return self.call("FCALL", function, len(keys), *keys, *args)

    def pttl(self, key: str) -> int:
        reply = self.call("PTTL", key)
        assert isinstance(reply, int)
        return reply

    def subscribe(self, channel: str) -> Callable[[], list[bytes]]:
        """Subscribe to `channel`; returns a function giving the messages received so far."""
        raise NotImplementedError

    def psubscribe(self, pattern: str) -> Callable[[], list[tuple[bytes, bytes, bytes]]]:
        """Subscribe to the glob `pattern`; returns a function giving the (pattern, channel,
        message) received so far."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _raw(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    return str(arg).encode()


class EmbeddedTarget(Target):
    """The engine in-process: replies come back as values, errors as `CommandError`s."""

    def __init__(self) -> None:
        super().__init__("embedded")
        self.engine = Engine()

    def call(self, *args: Arg) -> Reply:
        return self._normalise(self.engine.execute([_raw(a) for a in args]))

    def _normalise(self, reply: object) -> Reply:
        if isinstance(reply, CommandError):
            raise ReplyError(str(reply))
        if isinstance(reply, Status):
            return str(reply).encode()
        if reply is None or isinstance(reply, bytes | int):
            return reply
        if isinstance(reply, list):
            return [self._normalise(item) for item in reply]
        raise TypeError(f"unexpected reply {reply!r}")

    def subscribe(self, channel: str) -> Callable[[], list[bytes]]:
        got: list[bytes] = []
        self.engine.subscribe(channel.encode(), lambda _, message: got.append(message))
        return lambda: list(got)

    def psubscribe(self, pattern: str) -> Callable[[], list[tuple[bytes, bytes, bytes]]]:
        got: list[tuple[bytes, bytes, bytes]] = []
        self.engine.psubscribe(pattern.encode(), lambda *message: got.append(message))
        return lambda: list(got)

    def close(self) -> None:
        self.engine.close()


class ClientTarget(Target):
    """A server over RESP through redis-py, without redis-py's reply post-processing."""

    def __init__(self, name: str, port: int, protocol: int | None) -> None:
        super().__init__(name)
        self.client = redis.Redis(port=port, socket_timeout=10, protocol=protocol)
        self.client.response_callbacks.clear()  # raw replies: b"OK", not True
        self.protocol = protocol
        self._pubsubs: list[redis.client.PubSub] = []

    def call(self, *args: Arg) -> Reply:
        try:
            return self._normalise(self.client.execute_command(*args))
        except redis.ResponseError as exc:
            # redis-py strips a known error code (ERR, WRONGTYPE, ...) into status_code.
            code = exc.status_code
            raise ReplyError(f"{code} {exc}" if code else str(exc)) from None

    def _normalise(self, reply: object) -> Reply:
        if reply is None or isinstance(reply, bytes | int):
            return reply
        if isinstance(reply, list):
            return [self._normalise(item) for item in reply]
        raise TypeError(f"unexpected reply {reply!r}")

    def subscribe(self, channel: str) -> Callable[[], list[bytes]]:
        pubsub = self.client.pubsub()
        pubsub.subscribe(channel)
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        got: list[bytes] = []

        def read() -> list[bytes]:
            while (message := pubsub.get_message(timeout=0.2)) is not None:
                got.append(message["data"])
            return list(got)

        self._pubsubs.append(pubsub)
        return read

    def psubscribe(self, pattern: str) -> Callable[[], list[tuple[bytes, bytes, bytes]]]:
        pubsub = self.client.pubsub()
        pubsub.psubscribe(pattern)
        assert pubsub.get_message(timeout=5)["type"] == "psubscribe"  # type: ignore[index]
        got: list[tuple[bytes, bytes, bytes]] = []

        def read() -> list[tuple[bytes, bytes, bytes]]:
            while (message := pubsub.get_message(timeout=0.2)) is not None:
                got.append((message["pattern"], message["channel"], message["data"]))
            return list(got)

        self._pubsubs.append(pubsub)
        return read

    def close(self) -> None:
        if self.keys:
            self.client.execute_command("DEL", *self.keys)
        for pubsub in self._pubsubs:
            pubsub.close()
        self.client.close()


# -- fixtures -----------------------------------------------------------------------------


def _redis_or_fail() -> None:
    if redis_server_binary() is None:
        pytest.fail("redis-server is not installed; `make test` installs Debian's package")


@pytest.fixture(scope="module")
def shared_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = EngineProcess(tmp_path_factory.mktemp("conformance") / "engine").start()
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    _redis_or_fail()
    with redis_server(tmp_path_factory.mktemp("conformance-redis")) as port:
        yield port


def _build(kind: str, engine_port: Callable[[], int], redis_port: Callable[[], int]) -> Target:
    if kind == "embedded":
        return EmbeddedTarget()
    if kind == "engine-resp3":
        return ClientTarget(kind, engine_port(), None)  # redis-py 8's default: RESP3
    if kind == "engine-resp2":
        return ClientTarget(kind, engine_port(), 2)
    if kind == "redis":
        return ClientTarget(kind, redis_port(), None)
    raise ValueError(kind)


def _shared(request: pytest.FixtureRequest, kind: str) -> Target:
    def engine_port() -> int:
        proc: EngineProcess = request.getfixturevalue("shared_engine")
        return proc.port

    def redis_port() -> int:
        port: int = request.getfixturevalue("shared_redis")
        return port

    return _build(kind, engine_port, redis_port)


@pytest.fixture(params=TARGETS)
def t(request: pytest.FixtureRequest) -> Iterator[Target]:
    """Every target, on a shared server."""
    target = _shared(request, request.param)
    yield target
    target.close()


@pytest.fixture(params=ENGINE_TARGETS)
def engine_t(request: pytest.FixtureRequest) -> Iterator[Target]:
    """The engine targets only, for the engine's deliberate differences from Redis."""
    target = _shared(request, request.param)
    yield target
    target.close()


@pytest.fixture
def redis_t(request: pytest.FixtureRequest) -> Iterator[Target]:
    """The real Redis alone, to show what the engine deliberately does differently."""
    target = _shared(request, "redis")
    yield target
    target.close()


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[int]:
    """A brand-new redis-server with the Lua library (conftest's `redis_port` hands
    redis-server a directory that does not exist, so it cannot be used here)."""
    _redis_or_fail()
    with redis_server(tmp_path) as port:
        yield port


@pytest.fixture(params=TARGETS)
def fresh(request: pytest.FixtureRequest) -> Iterator[Target]:
    """Every target on a brand-new server (conftest's `engine_process`, `fresh_redis`)."""

    def engine_port() -> int:
        proc: EngineProcess = request.getfixturevalue("engine_process")
        return proc.port

    def redis_port() -> int:
        port: int = request.getfixturevalue("fresh_redis")
        return port

    target = _build(request.param, engine_port, redis_port)
    yield target
    target.close()


# -- SET ----------------------------------------------------------------------------------


def test_set_and_get(t: Target) -> None:
    k = t.key("k")
    assert t.call("GET", k) is None
    assert t.call("SET", k, "v") == b"OK"
    assert t.call("GET", k) == b"v"
    assert t.call("SET", k, b"\x00\xff bin") == b"OK"
    assert t.call("GET", k) == b"\x00\xff bin"
    assert t.call("SET", k, "") == b"OK"
    assert t.call("GET", k) == b""
    assert t.call("PTTL", k) == -1


def test_set_nx_xx(t: Target) -> None:
    k = t.key("k")
    assert t.call("SET", k, "v", "XX") is None
    assert t.call("EXISTS", k) == 0
    assert t.call("SET", k, "v", "NX") == b"OK"
    assert t.call("SET", k, "w", "NX") is None
    assert t.call("GET", k) == b"v"
    assert t.call("SET", k, "w", "xx") == b"OK"  # options are case-insensitive
    assert t.call("GET", k) == b"w"
    assert t.call("SET", k, "x", "nx", "NX") is None  # a repeated option is fine


def test_set_get_option(t: Target) -> None:
    k, n = t.key("k"), t.key("n")
    assert t.call("SET", k, "v", "GET") is None
    assert t.call("GET", k) == b"v"
    assert t.call("SET", k, "w", "GET") == b"v"
    assert t.call("SET", k, "x", "get", "GET") == b"w"
    assert t.call("GET", k) == b"x"
    assert t.call("INCR", n) == 1
    assert t.call("SET", n, "v", "GET") == b"1"  # an integer value reads back as bytes


def test_set_nx_get(t: Target) -> None:
    k = t.key("k")
    assert t.call("SET", k, "v", "NX", "GET") is None
    assert t.call("GET", k) == b"v"
    assert t.call("SET", k, "w", "GET", "NX") == b"v"
    assert t.call("GET", k) == b"v"


def test_set_xx_get(t: Target) -> None:
    k = t.key("k")
    assert t.call("SET", k, "v", "XX", "GET") is None
    assert t.call("EXISTS", k) == 0
    t.call("SET", k, "v")
    assert t.call("SET", k, "w", "XX", "GET") == b"v"
    assert t.call("GET", k) == b"w"


def test_set_px_and_ex(t: Target) -> None:
    k = t.key("k")
    assert t.call("SET", k, "v", "PX", "5000") == b"OK"
    assert 4000 < t.pttl(k) <= 5000
    assert t.call("SET", k, "v", "EX", "10") == b"OK"
    assert 9000 < t.pttl(k) <= 10000
    assert t.call("TTL", k) == 10
    assert t.call("SET", k, "v", "px", "3000", "NX") is None
    assert t.call("SET", k, "w", "XX", "PX", "3000", "GET") == b"v"
    assert 2000 < t.pttl(k) <= 3000


def test_set_px_expires(t: Target) -> None:
    k = t.key("k")
    assert t.call("SET", k, "v", "PX", "50") == b"OK"
    time.sleep(0.1)
    assert t.call("GET", k) is None
    assert t.call("EXISTS", k) == 0
    assert t.call("PTTL", k) == -2
    assert t.call("TTL", k) == -2
    assert t.call("SET", k, "w", "NX") == b"OK"  # an expired key is a missing key


def test_set_without_ttl_clears_the_ttl(t: Target) -> None:
    k = t.key("k")
    t.call("SET", k, "v", "PX", "10000")
    assert t.call("SET", k, "w") == b"OK"
    assert t.call("PTTL", k) == -1
    t.call("SET", k, "v", "PX", "10000")
    assert t.call("SET", k, "w", "XX") == b"OK"
    assert t.call("PTTL", k) == -1


def test_set_keepttl(t: Target) -> None:
    k, other = t.key("k"), t.key("other")
    t.call("SET", k, "v", "EX", "10")
    assert t.call("SET", k, "w", "KEEPTTL") == b"OK"
    assert t.call("GET", k) == b"w"
    assert t.call("TTL", k) == 10
    assert t.call("SET", k, "x", "GET", "keepttl") == b"w"
    assert t.call("TTL", k) == 10
    assert t.call("SET", other, "v", "KEEPTTL") == b"OK"  # missing key: no TTL to keep
    assert t.call("PTTL", other) == -1
    assert t.call("SET", other, "w", "KEEPTTL", "KEEPTTL") == b"OK"
    assert t.call("PTTL", other) == -1


def test_set_repeated_expire_option_last_wins(t: Target) -> None:
    k = t.key("k")
    assert t.call("SET", k, "v", "EX", "10", "EX", "20") == b"OK"
    assert t.call("TTL", k) == 20
    assert t.call("SET", k, "v", "PX", "100", "PX", "5000") == b"OK"
    assert 4000 < t.pttl(k) <= 5000
    # Only the last amount is validated.
    assert t.call("SET", k, "v", "EX", "-5", "EX", "30") == b"OK"
    assert t.call("TTL", k) == 30
    assert (
        t.error("SET", k, "v", "EX", "30", "EX", "-5") == "ERR invalid expire time in 'set' command"
    )
    assert t.error("SET", k, "v", "PX", "30", "PX", "x") == NOT_INTEGER


@pytest.mark.parametrize(
    "options",
    [
        ["NX", "XX"],
        ["XX", "NX"],
        ["EX", "10", "PX", "100"],
        ["PX", "100", "EX", "10"],
        ["KEEPTTL", "EX", "10"],
        ["EX", "10", "KEEPTTL"],
        ["PX", "10", "KEEPTTL"],
        ["KEEPTTL", "PX", "10"],
        ["PX"],
        ["EX"],
        ["EX", "10", "PX"],
        ["FOO"],
        [""],
        ["NX", "GET", "XX"],
        ["EXAT"],
        # Options are checked before the expire time is parsed.
        ["EX", "abc", "PX", "10"],
        ["PX", "abc", "KEEPTTL"],
        ["PX", "abc", "NX", "XX"],
        ["PX", "0", "FOO"],
    ],
    ids=" ".join,
)
def test_set_conflicting_options(t: Target, options: list[str]) -> None:
    k = t.key("k")
    t.call("SET", k, "old")
    assert t.error("SET", k, "new", *options) == SYNTAX
    assert t.call("GET", k) == b"old"
    assert t.call("PTTL", k) == -1


@pytest.mark.parametrize(
    "options",
    [
        ["PX", "0"],
        ["PX", "-1"],
        ["EX", "0"],
        ["EX", "-1"],
        ["EX", "-9223372036854775808"],
        ["EX", "9223372036854775"],  # overflows once in milliseconds plus the current time
        ["EX", "9223372036854775807"],
        ["PX", "9223372036854775807"],
        ["NX", "PX", "0"],
    ],
    ids=" ".join,
)
def test_set_invalid_expire_time(t: Target, options: list[str]) -> None:
    k = t.key("k")
    assert t.error("SET", k, "v", *options) == "ERR invalid expire time in 'set' command"
    assert t.call("EXISTS", k) == 0


@pytest.mark.parametrize(
    "amount", ["abc", "1.5", "", "05", " 5", "5 ", "+5", "-0", "9223372036854775808", "1e3"]
)
def test_set_non_integer_expire_time(t: Target, amount: str) -> None:
    k = t.key("k")
    assert t.error("SET", k, "v", "PX", amount) == NOT_INTEGER
    assert t.error("SET", k, "v", "EX", amount, "NX") == NOT_INTEGER
    assert t.call("EXISTS", k) == 0


def test_set_arity(t: Target) -> None:
    assert t.error("SET") == arity("set")
    assert t.error("SET", t.key("k")) == arity("set")
    assert t.error("set", t.key("k")) == arity("set")


# -- GET, DEL, EXISTS ---------------------------------------------------------------------


def test_get_del_exists(t: Target) -> None:
    a, b, missing = t.key("a"), t.key("b"), t.key("missing")
    t.call("SET", a, "1")
    t.call("SET", b, "2")
    assert t.call("EXISTS", a) == 1
    assert t.call("EXISTS", a, a, b, missing) == 3  # duplicates are counted
    assert t.call("EXISTS", missing, missing) == 0
    assert t.call("DEL", a, a, missing) == 1  # but deleted once
    assert t.call("EXISTS", a, b) == 1
    assert t.call("GET", a) is None
    assert t.call("DEL", a) == 0
    assert t.call("DEL", b, missing) == 1
    assert t.call("EXISTS", a, b) == 0


def test_get_del_exists_arity(t: Target) -> None:
    k = t.key("k")
    assert t.error("GET") == arity("get")
    assert t.error("GET", k, k) == arity("get")
    assert t.error("DEL") == arity("del")
    assert t.error("EXISTS") == arity("exists")


def test_del_expired_key(t: Target) -> None:
    k = t.key("k")
    t.call("SET", k, "v", "PX", "30")
    time.sleep(0.06)
    assert t.call("DEL", k) == 0
    assert t.call("EXISTS", k, k) == 0


# -- PEXPIRE, EXPIRE, PERSIST ---------------------------------------------------------------


def test_pexpire_and_expire(t: Target) -> None:
    k, missing = t.key("k"), t.key("missing")
    assert t.call("PEXPIRE", missing, "5000") == 0
    assert t.call("EXPIRE", missing, "5") == 0
    assert t.call("EXISTS", missing) == 0
    t.call("SET", k, "v")
    assert t.call("PEXPIRE", k, "5000") == 1
    assert 4000 < t.pttl(k) <= 5000
    assert t.call("EXPIRE", k, "20") == 1
    assert t.call("TTL", k) == 20
    assert t.call("GET", k) == b"v"


def test_pexpire_expires(t: Target) -> None:
    k = t.key("k")
    t.call("SET", k, "v")
    assert t.call("PEXPIRE", k, "40") == 1
    time.sleep(0.08)
    assert t.call("EXISTS", k) == 0
    assert t.call("PEXPIRE", k, "1000") == 0


def test_pexpire_nx_xx(t: Target) -> None:
    k = t.key("k")
    t.call("SET", k, "v")
    assert t.call("PEXPIRE", k, "5000", "XX") == 0  # XX: only when it has a TTL
    assert t.call("PTTL", k) == -1
    assert t.call("PEXPIRE", k, "5000", "NX") == 1  # NX: only when it has none
    assert t.call("PEXPIRE", k, "9000", "nx") == 0
    assert 4000 < t.pttl(k) <= 5000
    assert t.call("PEXPIRE", k, "3000", "xx") == 1
    assert 2000 < t.pttl(k) <= 3000
    assert t.call("PEXPIRE", k, "3000", "NX", "NX") == 0


def test_pexpire_gt_lt(t: Target) -> None:
    k = t.key("k")
    t.call("SET", k, "v")
    # A key without TTL counts as an infinite TTL: GT never wins, LT always does.
    assert t.call("PEXPIRE", k, "90000", "GT") == 0
    assert t.call("PTTL", k) == -1
    assert t.call("PEXPIRE", k, "5000", "LT") == 1
    assert 4000 < t.pttl(k) <= 5000
    assert t.call("PEXPIRE", k, "10000", "GT") == 1
    assert 9000 < t.pttl(k) <= 10000
    assert t.call("PEXPIRE", k, "3000", "GT") == 0
    assert t.call("PEXPIRE", k, "20000", "lt") == 0
    assert 9000 < t.pttl(k) <= 10000
    assert t.call("PEXPIRE", k, "2000", "LT", "XX") == 1
    assert 1000 < t.pttl(k) <= 2000
    assert t.call("PEXPIRE", k, "8000", "XX", "GT") == 1
    assert 7000 < t.pttl(k) <= 8000
    assert t.call("PEXPIRE", k, "0", "GT") == 0  # a past deadline is not greater
    assert t.call("EXISTS", k) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["NX", "XX"], NX_CONFLICT),
        (["XX", "NX"], NX_CONFLICT),
        (["NX", "GT"], NX_CONFLICT),
        (["lt", "nx"], NX_CONFLICT),
        (["GT", "LT"], GT_LT_CONFLICT),
        (["XX", "GT", "LT"], GT_LT_CONFLICT),
        (["FOO"], "ERR Unsupported option FOO"),
        (["NX", "foo"], "ERR Unsupported option foo"),
        (["PX"], "ERR Unsupported option PX"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_pexpire_incompatible_options(t: Target, options: list[str], message: str) -> None:
    k, missing = t.key("k"), t.key("missing")
    t.call("SET", k, "v")
    for command in ("PEXPIRE", "EXPIRE"):
        assert t.error(command, k, "5000", *options) == message
        assert t.error(command, missing, "5000", *options) == message
        # Options are checked before the amount is parsed.
        assert t.error(command, k, "abc", *options) == message
    assert t.call("PTTL", k) == -1


def test_pexpire_zero_or_negative_deletes(t: Target) -> None:
    k, missing = t.key("k"), t.key("missing")
    for command, amount in [
        ("PEXPIRE", "0"),
        ("PEXPIRE", "-1"),
        ("EXPIRE", "0"),
        ("EXPIRE", "-10"),
        ("PEXPIRE", "-9223372036854775808"),
        ("EXPIRE", "-9223372036854775"),
    ]:
        t.call("SET", k, "v", "PX", "10000")
        assert t.call(command, k, amount) == 1, (command, amount)
        assert t.call("EXISTS", k) == 0
        assert t.call("PTTL", k) == -2
        assert t.call(command, missing, amount) == 0
    t.call("SET", k, "v")
    assert t.call("PEXPIRE", k, "0", "LT") == 1  # LT against "infinite" wins, then expires
    assert t.call("EXISTS", k) == 0
    t.call("SET", k, "v")
    assert t.call("PEXPIRE", k, "-5", "NX") == 1
    assert t.call("EXISTS", k) == 0


def test_pexpire_invalid_amount(t: Target) -> None:
    k, missing = t.key("k"), t.key("missing")
    t.call("SET", k, "v")
    for key in (k, missing):
        assert t.error("PEXPIRE", key, "abc") == NOT_INTEGER
        assert t.error("PEXPIRE", key, "1.5") == NOT_INTEGER
        assert t.error("PEXPIRE", key, "9223372036854775808") == NOT_INTEGER
        assert t.error("EXPIRE", key, "") == NOT_INTEGER
        assert t.error("PEXPIRE", key, "9223372036854775807") == (
            "ERR invalid expire time in 'pexpire' command"
        )
        for amount in ("9223372036854775", "9223372036854776", "-9223372036854776"):
            assert t.error("EXPIRE", key, amount) == "ERR invalid expire time in 'expire' command"
    assert t.call("PTTL", k) == -1
    assert t.error("PEXPIRE", k) == arity("pexpire")
    assert t.error("EXPIRE") == arity("expire")


def test_persist(t: Target) -> None:
    k, missing = t.key("k"), t.key("missing")
    assert t.call("PERSIST", missing) == 0
    t.call("SET", k, "v")
    assert t.call("PERSIST", k) == 0
    t.call("PEXPIRE", k, "5000")
    assert t.call("PERSIST", k) == 1
    assert t.call("PTTL", k) == -1
    assert t.error("PERSIST") == arity("persist")


# -- TTL, PTTL ----------------------------------------------------------------------------


def test_ttl_missing_and_persistent(t: Target) -> None:
    k = t.key("k")
    assert t.call("TTL", k) == -2
    assert t.call("PTTL", k) == -2
    t.call("SET", k, "v")
    assert t.call("TTL", k) == -1
    assert t.call("PTTL", k) == -1
    assert t.error("TTL") == arity("ttl")
    assert t.error("PTTL", k, k) == arity("pttl")


# Each case holds for up to 400 ms between SET and TTL; 1900 -> 2 shows it rounds, not floors.
@pytest.mark.parametrize(("px", "ttl"), [(400, 0), (1100, 1), (1900, 2), (2100, 2), (2900, 3)])
def test_ttl_rounds_to_nearest_second(t: Target, px: int, ttl: int) -> None:
    k = t.key("k")
    t.call("SET", k, "v", "PX", px)
    assert t.call("TTL", k) == ttl


# -- INCR ---------------------------------------------------------------------------------


def test_incr(t: Target) -> None:
    k = t.key("k")
    assert t.call("INCR", k) == 1
    assert t.call("INCR", k) == 2
    assert t.call("GET", k) == b"2"
    assert t.call("PTTL", k) == -1
    t.call("SET", k, "41", "PX", "10000")
    assert t.call("INCR", k) == 42
    assert 9000 < t.pttl(k) <= 10000  # INCR keeps the TTL
    assert t.error("INCR") == arity("incr")
    assert t.error("INCR", k, k) == arity("incr")


@pytest.mark.parametrize(
    ("value", "result"),
    [
        ("0", 1),
        ("-1", 0),
        ("-5", -4),
        ("9223372036854775806", 9223372036854775807),
        ("-9223372036854775808", -9223372036854775807),
    ],
)
def test_incr_integers(t: Target, value: str, result: int) -> None:
    k = t.key("k")
    t.call("SET", k, value)
    assert t.call("INCR", k) == result
    assert t.call("GET", k) == str(result).encode()


@pytest.mark.parametrize(
    "value",
    [
        "05",
        " 5",
        "5 ",
        "abc",
        "-0",
        "+5",
        "00",
        "1e3",
        "1.5",
        "",
        "-",
        "9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901",
    ],
)
def test_incr_non_integer(t: Target, value: str) -> None:
    k = t.key("k")
    t.call("SET", k, value)
    assert t.error("INCR", k) == NOT_INTEGER
    assert t.call("GET", k) == value.encode()


def test_incr_overflow(t: Target) -> None:
    k = t.key("k")
    t.call("SET", k, "9223372036854775807")
    assert t.error("INCR", k) == OVERFLOW
    assert t.call("GET", k) == b"9223372036854775807"
    t.call("SET", k, "9223372036854775806")
    assert t.call("INCR", k) == 9223372036854775807
    assert t.error("INCR", k) == OVERFLOW


# -- errors, PING, ECHO, DBSIZE -----------------------------------------------------------


def test_unknown_command(t: Target) -> None:
    assert t.error("FOO") == "ERR unknown command 'FOO', with args beginning with: "
    assert t.error("FoO", "a", "b c") == (
        "ERR unknown command 'FoO', with args beginning with: 'a' 'b c' "
    )
    # The arguments are shown until their quoted text reaches 128 bytes.
    a, b = "a" * 100, "b" * 100
    assert t.error("FOO", a, b, "c") == (
        f"ERR unknown command 'FOO', with args beginning with: '{a}' '{'b' * 25}' "
    )
    assert t.error("FOO", "x" * 200, "y") == (
        f"ERR unknown command 'FOO', with args beginning with: '{'x' * 128}' "
    )
    assert t.error("Z" * 200) == f"ERR unknown command '{'Z' * 128}', with args beginning with: "


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["GET"], "get"),
        (["get", "a", "b"], "get"),
        (["GeT"], "get"),
        (["SET", "k"], "set"),
        (["DEL"], "del"),
        (["EXISTS"], "exists"),
        (["PEXPIRE", "k"], "pexpire"),
        (["EXPIRE", "k"], "expire"),
        (["PTTL"], "pttl"),
        (["TTL", "a", "b"], "ttl"),
        (["PERSIST", "a", "b"], "persist"),
        (["INCR"], "incr"),
        (["DBSIZE", "x"], "dbsize"),
        (["ECHO"], "echo"),
        (["ECHO", "a", "b"], "echo"),
        (["PING", "a", "b"], "ping"),
        (["FCALL"], "fcall"),
        (["FCALL", "lockd_acquire"], "fcall"),
    ],
    ids=" ".join,
)
def test_wrong_number_of_arguments(t: Target, args: list[str], name: str) -> None:
    assert t.error(*args) == arity(name)


def test_ping_and_echo(t: Target) -> None:
    assert t.call("PING") == b"PONG"
    assert t.call("PING", "hello") == b"hello"
    assert t.call("ECHO", "hello") == b"hello"
    assert t.call("ECHO", "") == b""


def test_dbsize(fresh: Target) -> None:
    t = fresh
    assert t.call("DBSIZE") == 0
    t.call("SET", "a", "1")
    t.call("SET", "b", "2")
    t.call("SET", "a", "3")
    assert t.call("DBSIZE") == 2
    t.call("INCR", "c")
    assert t.call("DBSIZE") == 3
    assert t.fcall("lockd_acquire", ["lock", "fence"], "lease", 10000) == [1, 0]
    assert t.call("DBSIZE") == 4  # the lock key; the fence key is not created
    assert t.fcall("lockd_fence_advance", ["fence"], 3) == [1, 3]
    assert t.call("DBSIZE") == 5
    assert t.call("DEL", "a", "b", "missing") == 2
    assert t.fcall("lockd_release", ["lock"], "lease") == 1
    assert t.call("DBSIZE") == 2
    assert t.error("DBSIZE", "x") == arity("dbsize")


# -- lock functions -----------------------------------------------------------------------


def test_acquire_then_conflicting_acquire(t: Target) -> None:
    lock, fence = t.key("lock"), t.key("fence")
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000) == [1, 0]
    assert t.call("GET", lock) == b"a"
    assert 4000 < t.pttl(lock) <= 5000
    assert t.call("EXISTS", fence) == 0
    assert t.fcall("lockd_acquire", [lock, fence], "b", 9000) == [0, 0]
    assert t.call("GET", lock) == b"a"
    assert t.pttl(lock) <= 5000


def test_describe_reads_pttl_and_counter_without_writing(t: Target) -> None:
    lock, fence = t.key("lock"), t.key("fence")
    assert t.fcall("lockd_describe", [lock, fence]) == [-2, 0]
    assert t.call("EXISTS", lock, fence) == 0
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000) == [1, 0]
    assert t.fcall("lockd_fence_advance", [fence], 7) == [1, 7]
    pttl, counter = t.fcall("lockd_describe", [lock, fence])  # type: ignore[misc]
    assert 4000 < pttl <= 5000 and counter == 7
    assert t.error("FCALL", "lockd_describe", 1, lock) == (
        "ERR lockd_describe takes 2 keys and 0 arguments, got 1 and 0"
    )


def test_reacquire_by_same_lease_refreshes_ttl(t: Target) -> None:
    lock, fence = t.key("lock"), t.key("fence")
    assert t.fcall("lockd_acquire", [lock, fence], "a", 1000) == [1, 0]
    assert t.fcall("lockd_acquire", [lock, fence], "a", 8000) == [1, 0]
    assert 7000 < t.pttl(lock) <= 8000
    assert t.fcall("lockd_acquire", [lock, fence], "a", 2000) == [1, 0]  # may also shorten
    assert 1000 < t.pttl(lock) <= 2000
    assert t.call("GET", lock) == b"a"


def test_acquire_after_expiry(t: Target) -> None:
    lock, fence = t.key("lock"), t.key("fence")
    assert t.fcall("lockd_acquire", [lock, fence], "a", 50) == [1, 0]
    time.sleep(0.1)
    assert t.fcall("lockd_release", [lock], "a") == 0
    assert t.fcall("lockd_extend", [lock], "a", 5000) == 0
    assert t.fcall("lockd_acquire", [lock, fence], "b", 5000) == [1, 0]
    assert t.call("GET", lock) == b"b"


def test_acquire_on_a_plain_key(t: Target) -> None:
    lock, fence = t.key("lock"), t.key("fence")
    t.call("SET", lock, "a")  # no TTL: acquiring as "a" gives it one
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000) == [1, 0]
    assert 4000 < t.pttl(lock) <= 5000


def test_acquire_returns_the_fencing_counter(t: Target) -> None:
    lock, fence = t.key("lock"), t.key("fence")
    assert t.fcall("lockd_fence_advance", [fence], 5) == [1, 5]
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000) == [1, 5]
    assert t.fcall("lockd_acquire", [lock, fence], "b", 5000) == [0, 5]
    assert t.fcall("lockd_fence_advance", [fence], 9) == [1, 9]
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000) == [1, 9]
    assert t.fcall("lockd_acquire", [lock, fence], "b", 5000) == [0, 9]


def test_fence_advance_only_moves_up(t: Target) -> None:
    fence = t.key("fence")
    assert t.fcall("lockd_fence_advance", [fence], 1) == [1, 1]
    assert t.fcall("lockd_fence_advance", [fence], 7) == [1, 7]
    assert t.fcall("lockd_fence_advance", [fence], 7) == [0, 7]
    assert t.fcall("lockd_fence_advance", [fence], 3) == [0, 7]
    assert t.fcall("lockd_fence_advance", [fence], 8) == [1, 8]
    assert t.call("GET", fence) == b"8"
    assert t.call("PTTL", fence) == -1
    assert t.fcall("lockd_fence_advance", [fence], 9007199254740991) == [1, 9007199254740991]
    assert t.fcall("lockd_fence_advance", [fence], 9007199254740990) == [0, 9007199254740991]
    assert t.call("GET", fence) == b"9007199254740991"


def test_fence_counter_written_by_other_commands(t: Target) -> None:
    lock, fence = t.key("lock"), t.key("fence")
    t.call("SET", fence, "41", "PX", "10000")
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000) == [1, 41]
    assert t.call("INCR", fence) == 42
    assert t.fcall("lockd_fence_advance", [fence], 42) == [0, 42]
    assert 9000 < t.pttl(fence) <= 10000
    assert t.fcall("lockd_fence_advance", [fence], 43) == [1, 43]
    assert t.call("PTTL", fence) == -1  # advancing rewrites the counter without a TTL
    t.call("SET", fence, "9007199254740990")
    assert t.call("INCR", fence) == 9007199254740991
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000) == [1, 9007199254740991]
    assert t.call("INCR", fence) == 9007199254740992
    assert t.error("FCALL", "lockd_acquire", 2, lock, fence, "a", 5000) == BAD_COUNTER


@pytest.mark.parametrize(
    "value", ["abc", "0", "-1", "05", "1.5", "", " 1", "9007199254740992", "99999999999999999999"]
)
def test_fence_counter_not_an_integer(t: Target, value: str) -> None:
    lock, fence = t.key("lock"), t.key("fence")
    t.call("SET", fence, value)
    assert t.error("FCALL", "lockd_fence_advance", 1, fence, 5) == BAD_COUNTER
    assert t.error("FCALL", "lockd_acquire", 2, lock, fence, "a", 5000) == BAD_COUNTER
    assert t.call("EXISTS", lock) == 0
    assert t.call("GET", fence) == value.encode()


def test_fence_counter_from_incr_below_one(t: Target) -> None:
    lock, fence = t.key("lock"), t.key("fence")
    t.call("SET", fence, "-2")
    assert t.call("INCR", fence) == -1
    assert t.error("FCALL", "lockd_fence_advance", 1, fence, 5) == BAD_COUNTER
    assert t.call("INCR", fence) == 0
    assert t.error("FCALL", "lockd_acquire", 2, lock, fence, "a", 5000) == BAD_COUNTER
    assert t.call("INCR", fence) == 1
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000) == [1, 1]


def test_lock_and_fence_on_the_same_key(t: Target) -> None:
    k = t.key("k")
    assert t.fcall("lockd_acquire", [k, k], "a", 5000) == [1, 0]
    assert t.error("FCALL", "lockd_acquire", 2, k, k, "a", 5000) == BAD_COUNTER
    assert t.fcall("lockd_release", [k], "a") == 1
    assert t.fcall("lockd_fence_advance", [k], 12) == [1, 12]
    assert t.fcall("lockd_acquire", [k, k], "12", 5000) == [1, 12]  # refresh: "12" holds it
    assert 4000 < t.pttl(k) <= 5000


def test_release_compare_and_delete(t: Target) -> None:
    lock, fence, missing = t.key("lock"), t.key("fence"), t.key("missing")
    assert t.fcall("lockd_release", [missing], "a") == 0
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000) == [1, 0]
    assert t.fcall("lockd_release", [lock], "b") == 0
    assert t.call("GET", lock) == b"a"
    assert 4000 < t.pttl(lock) <= 5000
    assert t.fcall("lockd_release", [lock], "A") == 0
    assert t.fcall("lockd_release", [lock], "a") == 1
    assert t.call("EXISTS", lock) == 0
    assert t.fcall("lockd_release", [lock], "a") == 0
    assert t.fcall("lockd_acquire", [lock, fence], "b", 5000) == [1, 0]


def test_extend_compare_and_pexpire(t: Target) -> None:
    lock, fence, missing = t.key("lock"), t.key("fence"), t.key("missing")
    assert t.fcall("lockd_extend", [missing], "a", 5000) == 0
    assert t.call("EXISTS", missing) == 0
    assert t.fcall("lockd_acquire", [lock, fence], "a", 1000) == [1, 0]
    assert t.fcall("lockd_extend", [lock], "b", 8000) == 0
    assert t.pttl(lock) <= 1000
    assert t.fcall("lockd_extend", [lock], "a", 8000) == 1
    assert 7000 < t.pttl(lock) <= 8000
    assert t.fcall("lockd_extend", [lock], "a", 3000) == 1
    assert 2000 < t.pttl(lock) <= 3000
    assert t.call("GET", lock) == b"a"
    t.call("SET", lock, "a")  # a lock key without TTL gets one
    assert t.fcall("lockd_extend", [lock], "a", 4000) == 1
    assert 3000 < t.pttl(lock) <= 4000


def test_lock_value_written_by_incr(t: Target) -> None:
    # INCR stores an integer; the lock functions compare what GET would show.
    lock, fence = t.key("lock"), t.key("fence")
    assert t.call("INCR", lock) == 1
    assert t.fcall("lockd_acquire", [lock, fence], "1", 5000) == [1, 0]
    assert 4000 < t.pttl(lock) <= 5000
    assert t.fcall("lockd_extend", [lock], "1", 8000) == 1
    assert t.fcall("lockd_extend", [lock], "01", 8000) == 0
    assert t.fcall("lockd_release", [lock], "1") == 1
    assert t.call("EXISTS", lock) == 0


@pytest.mark.parametrize(
    "ttl", ["0", "-5", "abc", "0100", "", "1.5", " 100", "+100", "1234567890123456789"]
)
def test_bad_ttl(t: Target, ttl: str) -> None:
    lock, fence = t.key("lock"), t.key("fence")
    assert t.error("FCALL", "lockd_acquire", 2, lock, fence, "a", ttl) == bad_ttl("lockd_acquire")
    assert t.call("EXISTS", lock) == 0
    t.call("SET", lock, "a")
    assert t.error("FCALL", "lockd_extend", 1, lock, "a", ttl) == bad_ttl("lockd_extend")
    assert t.error("FCALL", "lockd_extend", 1, t.key("x"), "a", ttl) == bad_ttl("lockd_extend")
    assert t.call("PTTL", lock) == -1


def test_bad_ttl_is_checked_before_the_counter(t: Target) -> None:
    lock, fence = t.key("lock"), t.key("fence")
    t.call("SET", fence, "abc")
    assert t.error("FCALL", "lockd_acquire", 2, lock, fence, "a", "0") == bad_ttl("lockd_acquire")


@pytest.mark.parametrize(
    "token", ["0", "01", "-3", "x", "", "1.0", "9007199254740992", "1234567890123456789"]
)
def test_bad_token(t: Target, token: str) -> None:
    fence = t.key("fence")
    assert t.error("FCALL", "lockd_fence_advance", 1, fence, token) == BAD_TOKEN
    assert t.call("EXISTS", fence) == 0
    t.call("SET", fence, "abc")  # the token is checked first
    assert t.error("FCALL", "lockd_fence_advance", 1, fence, token) == BAD_TOKEN


ACQUIRE = "lockd_acquire takes 2 keys and 2 or 3 arguments, got"
RELEASE = "lockd_release takes 1 keys and 1 arguments, got"
EXTEND = "lockd_extend takes 1 keys and 2 or 3 arguments, got"
ADVANCE = "lockd_fence_advance takes 1 keys and 1 arguments, got"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lockd_acquire", "0"], f"{ACQUIRE} 0 and 0"),
        (["lockd_acquire", "1", "l", "f", "a", "1"], f"{ACQUIRE} 1 and 3"),
        (["lockd_acquire", "2", "l", "f", "a"], f"{ACQUIRE} 2 and 1"),
        (["lockd_acquire", "0", "l", "f", "a", "1"], f"{ACQUIRE} 0 and 4"),
        (["lockd_acquire", "3", "l", "f", "a", "1"], f"{ACQUIRE} 3 and 1"),
        (["lockd_acquire", "2", "l", "f", "a", "1", "m", "x"], f"{ACQUIRE} 2 and 4"),
        (
            ["lockd_force_release", "0"],
            "lockd_force_release takes 1 keys and 0 arguments, got 0 and 0",
        ),
        (["lockd_peek", "0"], "lockd_peek takes 1 or more keys and 0 arguments, got 0 and 0"),
        (
            ["lockd_peek", "1", "l", "x"],
            "lockd_peek takes 1 or more keys and 0 arguments, got 1 and 1",
        ),
        (["lockd_list", "0", "0", ""], "lockd_list takes 0 keys and 3 arguments, got 0 and 2"),
        (["lockd_release", "1", "l"], f"{RELEASE} 1 and 0"),
        (["lockd_release", "2", "l", "m", "a"], f"{RELEASE} 2 and 1"),
        (["lockd_extend", "1", "l", "a"], f"{EXTEND} 1 and 1"),
        (["lockd_extend", "1", "l", "a", "1", "2", "3"], f"{EXTEND} 1 and 4"),
        (["lockd_fence_advance", "0", "5"], f"{ADVANCE} 0 and 1"),
        (["lockd_fence_advance", "1", "f", "5", "6"], f"{ADVANCE} 1 and 2"),
        # The message names the function as registered, whatever case the call used.
        (["LOCKD_RELEASE", "0"], f"{RELEASE} 0 and 0"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_function_arity(t: Target, args: list[str], message: str) -> None:
    function, numkeys, *rest = args
    # Keys get this test's prefix (they are never written: the arity is checked first).
    keys = [t.key(k) for k in rest[: int(numkeys)]]
    assert t.error("FCALL", function, numkeys, *keys, *rest[int(numkeys) :]) == "ERR " + message
    if keys:
        assert t.call("EXISTS", *keys) == 0


def test_function_not_found(t: Target) -> None:
    assert t.error("FCALL", "nope", 0) == "ERR Function not found"
    assert t.error("FCALL", "nope", "abc", "x") == "ERR Function not found"  # checked first
    assert t.error("FCALL", "lockd_acquire_", 0) == "ERR Function not found"
    assert t.error("FCALL", "", 0) == "ERR Function not found"


def test_function_names_are_case_insensitive(t: Target) -> None:
    lock, fence = t.key("lock"), t.key("fence")
    assert t.fcall("LOCKD_ACQUIRE", [lock, fence], "a", 5000) == [1, 0]
    assert t.fcall("Lockd_Extend", [lock], "a", 6000) == 1
    assert t.fcall("lockd_FENCE_advance", [fence], 3) == [1, 3]
    assert t.fcall("LOCKD_release", [lock], "a") == 1


@pytest.mark.parametrize(
    ("numkeys", "message"),
    [
        ("abc", "ERR Bad number of keys provided"),
        ("1.5", "ERR Bad number of keys provided"),
        ("01", "ERR Bad number of keys provided"),
        ("-0", "ERR Bad number of keys provided"),
        ("", "ERR Bad number of keys provided"),
        ("99999999999999999999", "ERR Bad number of keys provided"),
        ("-1", "ERR Number of keys can't be negative"),
        ("5", "ERR Number of keys can't be greater than number of args"),
        ("9223372036854775807", "ERR Number of keys can't be greater than number of args"),
    ],
)
def test_numkeys_errors(t: Target, numkeys: str, message: str) -> None:
    lock, fence = t.key("lock"), t.key("fence")
    assert t.error("FCALL", "lockd_acquire", numkeys, lock, fence, "a", "100") == message
    assert t.call("EXISTS", lock) == 0


# -- owner records, admin release, peek and list ----------------------------------------------


def lock_keys(t: Target, name: str) -> tuple[str, str, str]:
    """Lock, fence and owner record keys of a lock in the lockd key format, unique to the
    test (deleted afterwards)."""
    tagged = "{" + t.prefix + name + "}"
    keys = ("lock:" + tagged, "fence:" + tagged, "meta:" + tagged)
    t.keys.extend(keys)
    return keys


def test_acquire_writes_the_owner_record_with_the_lock(t: Target) -> None:
    lock, fence, meta = lock_keys(t, "o")
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000, b"rec\x00ord") == [1, 0]
    assert t.call("GET", meta) == b"rec\x00ord"
    assert 4000 < t.pttl(meta) <= 5000
    # Another lease leaves it alone; the holder's refresh replaces it, or keeps it.
    assert t.fcall("lockd_acquire", [lock, fence], "b", 9000, "other") == [0, 0]
    assert t.call("GET", meta) == b"rec\x00ord"
    assert t.fcall("lockd_acquire", [lock, fence], "a", 8000, "new") == [1, 0]
    assert t.call("GET", meta) == b"new" and 7000 < t.pttl(meta) <= 8000
    assert t.fcall("lockd_acquire", [lock, fence], "a", 3000) == [1, 0]
    assert t.call("GET", meta) == b"new" and 2000 < t.pttl(meta) <= 3000
    # Extending moves the record's TTL with the lock's; release deletes both.
    assert t.fcall("lockd_extend", [lock], "b", 9000) == 0
    assert t.fcall("lockd_extend", [lock], "a", 9000) == 1
    assert 8000 < t.pttl(meta) <= 9000
    assert t.fcall("lockd_release", [lock], "b") == 0
    assert t.call("EXISTS", meta) == 1
    assert t.fcall("lockd_release", [lock], "a") == 1
    assert t.call("EXISTS", lock, meta) == 0


def test_owner_record_expires_with_the_lock(t: Target) -> None:
    lock, fence, meta = lock_keys(t, "e")
    assert t.fcall("lockd_acquire", [lock, fence], "a", 50, "r") == [1, 0]
    time.sleep(0.1)
    assert t.call("EXISTS", lock, meta) == 0
    assert t.fcall("lockd_acquire", [lock, fence], "b", 5000) == [1, 0]
    assert t.call("EXISTS", meta) == 0


def test_fresh_lock_without_a_record_removes_a_stale_one(t: Target) -> None:
    lock, fence, meta = lock_keys(t, "s")
    t.call("SET", meta, "stale")
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000) == [1, 0]
    assert t.call("EXISTS", meta) == 0


def test_owner_record_needs_a_lock_key(t: Target) -> None:
    lock, fence = t.key("lock"), t.key("fence")
    assert t.error("FCALL", "lockd_acquire", 2, lock, fence, "a", 5000, "r") == (
        "ERR lockd_acquire: an owner record needs a lock key 'lock:...'"
    )
    assert t.call("EXISTS", lock) == 0
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000) == [1, 0]  # no record: fine


def test_extend_with_a_record_replaces_it_only_for_the_holder(t: Target) -> None:
    lock, fence, meta = lock_keys(t, "p")
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000, "old") == [1, 0]
    assert t.fcall("lockd_extend", [lock], "b", 8000, "theirs") == 0
    assert t.call("GET", meta) == b"old" and t.pttl(meta) <= 5000
    assert t.fcall("lockd_extend", [lock], "a", 8000, "new") == 1
    assert t.call("GET", meta) == b"new" and 7000 < t.pttl(meta) <= 8000
    assert 7000 < t.pttl(lock) <= 8000
    # Without a record, the one written last is kept.
    assert t.fcall("lockd_extend", [lock], "a", 3000) == 1
    assert t.call("GET", meta) == b"new" and 2000 < t.pttl(meta) <= 3000
    # A lock acquired without a record gets one.
    other, other_fence, other_meta = lock_keys(t, "q")
    assert t.fcall("lockd_acquire", [other, other_fence], "a", 5000) == [1, 0]
    assert t.fcall("lockd_extend", [other], "a", 5000, "rec") == 1
    assert t.call("GET", other_meta) == b"rec" and 4000 < t.pttl(other_meta) <= 5000
    # Nothing is created for a lock that is not held.
    _, _, gone_meta = lock_keys(t, "g")
    assert t.fcall("lockd_extend", [lock_keys(t, "g")[0]], "a", 5000, "rec") == 0
    assert t.call("EXISTS", gone_meta) == 0
    assert t.error("FCALL", "lockd_extend", 1, t.key("plain"), "a", 5000, "r") == (
        "ERR lockd_extend: an owner record needs a lock key 'lock:...'"
    )


def test_force_release_deletes_whatever_lease_holds_it(t: Target) -> None:
    lock, fence, meta = lock_keys(t, "f")
    assert t.fcall("lockd_force_release", [lock]) == [0, 0]
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000, "r") == [1, 0]
    assert t.fcall("lockd_fence_advance", [fence], 4) == [1, 4]
    assert t.fcall("lockd_force_release", [lock]) == [1, 4]
    assert t.call("EXISTS", lock, meta) == 0
    assert t.fcall("lockd_release", [lock], "a") == 0
    assert t.fcall("lockd_extend", [lock], "a", 5000) == 0
    assert t.fcall("lockd_acquire", [lock, fence], "b", 5000) == [1, 4]
    not_a_lock = t.key("x")
    assert t.error("FCALL", "lockd_force_release", 1, not_a_lock) == (
        "ERR lockd: lock keys must start with 'lock:'"
    )


def test_lock_functions_publish_events_for_watchers(t: Target) -> None:
    """`lockd:events` (lockd/core/messages.py NodeEvent): A on an accepted fence advance
    (with the holder's lease digest, PTTL and owner record), U when the holder replaces
    its record (lockd_acquire or lockd_extend), R on a release, F on a forced release;
    nothing when nothing changed. Byte for byte the same everywhere."""
    read = t.subscribe("lockd:events")
    lock, fence, _ = lock_keys(t, "ev")
    size = len(lock)
    a, b = hashlib.sha1(b"a").hexdigest(), hashlib.sha1(b"b").hexdigest()
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000, "rec") == [1, 0]
    assert t.fcall("lockd_fence_advance", [fence], 3) == [1, 3]
    assert t.fcall("lockd_fence_advance", [fence], 2) == [0, 3]  # refused: no event
    assert t.fcall("lockd_extend", [lock], "a", 5000) == 1
    assert t.fcall("lockd_acquire", [lock, fence], "a", 6000, "rec") == [1, 3]  # same record
    assert t.fcall("lockd_acquire", [lock, fence], "a", 7000, "new") == [1, 3]  # U
    assert t.fcall("lockd_acquire", [lock, fence], "a", 7000) == [1, 3]  # no record: no U
    assert t.fcall("lockd_extend", [lock], "b", 7000, "not b's") == 0  # not the holder: no U
    assert t.fcall("lockd_extend", [lock], "a", 8000, "newer") == 1  # U (a Proclaim)
    assert t.fcall("lockd_extend", [lock], "a", 8000, "newer") == 1  # same record: no U
    assert t.fcall("lockd_release", [lock], "a") == 1
    assert t.fcall("lockd_release", [lock], "a") == 0
    assert t.fcall("lockd_fence_advance", [fence], 4) == [1, 4]  # nobody holds it
    assert t.fcall("lockd_acquire", [lock, fence], "b", 5000) == [1, 4]
    assert t.fcall("lockd_fence_advance", [fence], 5) == [1, 5]
    assert t.fcall("lockd_force_release", [lock]) == [1, 5]
    assert t.fcall("lockd_force_release", [lock]) == [0, 5]
    plain = t.key("plain")
    assert t.fcall("lockd_acquire", [plain, t.key("plainfence")], "a", 5000) == [1, 0]
    assert t.fcall("lockd_release", [plain], "a") == 1  # not a lock key: no event
    events = [m for m in read() if t.prefix.encode() in m]
    parts = [m.split(b":", 3) for m in events]
    assert parts.pop(1) == [b"U", b"3", b"7000", f"{a}:{size}:{lock}new".encode()]
    assert parts.pop(1) == [b"U", b"3", b"8000", f"{a}:{size}:{lock}newer".encode()]
    assert [p[:2] for p in parts] == [[b"A", b"3"], [b"R", b"3"], [b"A", b"4"], [b"A", b"5"],
                                      [b"F", b"5"]]  # fmt: skip
    assert 4000 < int(parts[0][2]) <= 5000 and int(parts[3][2]) > 4000
    assert [p[2:] for p in (parts[1], parts[2], parts[4])] == [
        [b"-2", f"{a}:{size}:{lock}".encode()],
        [b"-2", f":{size}:{lock}".encode()],
        [b"-2", f"{b}:{size}:{lock}".encode()],
    ]
    assert parts[0][3] == f"{a}:{size}:{lock}rec".encode()
    assert parts[3][3] == f"{b}:{size}:{lock}".encode()


GLOBS = [
    ("h?llo", "hello", 1),
    ("h?llo", "hllo", 0),
    ("h*llo", "heeeello", 1),
    ("h*llo", "hello!", 0),
    ("h[ae]llo", "hallo", 1),
    ("h[ae]llo", "hillo", 0),
    ("h[^e]llo", "hallo", 1),
    ("h[^e]llo", "hello", 0),
    ("h[a-c]llo", "hbllo", 1),
    ("h[c-a]llo", "hbllo", 1),  # a reversed range still matches
    ("h\\*llo", "h*llo", 1),
    ("h\\*llo", "hello", 0),
    ("h[\\]]llo", "h]llo", 1),
    ("orders/*", "orders/", 1),
    ("a**", "a", 1),
]


def test_psubscribe_matches_globs_and_counts_receivers(t: Target) -> None:
    """PSUBSCRIBE with Redis's glob rules; PUBLISH counts channel and pattern receivers;
    pattern subscribers get (pattern, channel, message)."""
    for i, (pattern, channel, receivers) in enumerate(GLOBS):
        case = f"{t.prefix}{i}:"  # each case alone: earlier patterns match nothing here
        t.psubscribe(case + pattern)
        assert t.call("PUBLISH", case + channel, "m") == receivers, (pattern, channel)
    read = t.psubscribe(t.prefix + "jobs/*")
    t.subscribe(t.prefix + "jobs/1")
    assert t.call("PUBLISH", t.prefix + "jobs/1", "hi") == 2
    assert t.call("PUBLISH", t.prefix + "jobz/1", "no") == 0
    assert read() == [((t.prefix + "jobs/*").encode(), (t.prefix + "jobs/1").encode(), b"hi")]


def test_peek_reads_pttl_counter_and_record(t: Target) -> None:
    lock, fence, _ = lock_keys(t, "p")
    other, _, _ = lock_keys(t, "q")
    assert t.fcall("lockd_peek", [lock, other]) == [[-2, 0, None], [-2, 0, None]]
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000, "rec") == [1, 0]
    assert t.fcall("lockd_fence_advance", [fence], 3) == [1, 3]
    [[pttl, counter, record], missing] = t.fcall("lockd_peek", [lock, other])  # type: ignore[misc]
    assert 4000 < pttl <= 5000 and counter == 3 and record == b"rec"
    assert missing == [-2, 0, None]
    assert t.call("EXISTS", other) == 0
    assert t.error("FCALL", "lockd_peek", 1, t.key("x")) == (
        "ERR lockd: lock keys must start with 'lock:'"
    )


def _list_all(t: Target, prefix: str, count: int) -> tuple[list[Reply], int]:
    """Every entry a full `lockd_list` iteration returns, and how many pages it took."""
    cursor: Reply = b"0"
    entries: list[Reply] = []
    pages = 0
    while True:
        reply = t.fcall("lockd_list", [], cursor, prefix, count)  # type: ignore[arg-type]
        assert isinstance(reply, list)
        cursor, page = reply
        assert isinstance(page, list)
        entries += page
        pages += 1
        if cursor == b"0":
            return entries, pages


def test_list_returns_held_locks_under_a_prefix(t: Target) -> None:
    base = t.prefix + "svc/"
    for i in range(7):
        lock, fence, _ = lock_keys(t, f"svc/{i}")
        record = [f"r{i}"] if i % 2 else []
        assert t.fcall("lockd_acquire", [lock, fence], "a", 5000, *record) == [1, 0]
    lock, fence, _ = lock_keys(t, "svc/gone")
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000) == [1, 0]
    assert t.fcall("lockd_release", [lock], "a") == 1
    outside, fence, _ = lock_keys(t, "other")
    assert t.fcall("lockd_acquire", [outside, fence], "a", 5000) == [1, 0]
    entries, pages = _list_all(t, base, 2)
    assert pages >= 2
    by_name = {e[0]: e[1:] for e in entries}  # type: ignore[index]
    assert sorted(by_name) == [f"{base}{i}".encode() for i in range(7)]
    for i in range(7):
        pttl, counter, record = by_name[f"{base}{i}".encode()]  # type: ignore[misc]
        assert 4000 < pttl <= 5000 and counter == 0
        assert record == (f"r{i}".encode() if i % 2 else None)
    assert _list_all(t, t.prefix + "nothing/", 10)[0] == []


def test_list_treats_glob_characters_literally(t: Target) -> None:
    lock, fence, _ = lock_keys(t, "g*[?]\\x")
    decoy, dfence, _ = lock_keys(t, "gZ[?]\\x")
    assert t.fcall("lockd_acquire", [lock, fence], "a", 5000) == [1, 0]
    assert t.fcall("lockd_acquire", [decoy, dfence], "a", 5000) == [1, 0]
    entries, _ = _list_all(t, t.prefix + "g*", 10)
    assert [e[0] for e in entries] == [(t.prefix + "g*[?]\\x").encode()]  # type: ignore[index]


def test_list_argument_errors(t: Target) -> None:
    assert t.error("FCALL", "lockd_list", 0, "x", "", 10) == "ERR lockd_list: invalid cursor"
    for count in ["0", "-1", "x", ""]:
        assert t.error("FCALL", "lockd_list", 0, "0", "", count) == (
            "ERR lockd_list: count must be a positive integer"
        )


# -- the same script on every target at once ------------------------------------------------

# Keys are marked with "@"; each target replaces the mark with its own key prefix.
SCRIPT = """
SET @k v EX 10 EX 20 | TTL @k | SET @k v PX abc KEEPTTL | SET @k v NX NX | SET @k v KEEPTTL KEEPTTL
SET @k v EX 0 | SET @k v PX 1.5 | PEXPIRE @k abc FOO | PEXPIRE @k -9223372036854775808 | EXISTS @k
SET @k v | EXPIRE @k -9223372036854775 | EXISTS @k | SET @k v | EXPIRE @k -9223372036854776
FCALL lockd_acquire abc | FCALL lockd_acquire abc x | FCALL LOCKD_ACQUIRE 2 @l @f lease 100
FCALL lockd_acquire -1 @l | FCALL lockd_acquire 5 @l | FCALL nope 2 @l | SET @f 9007199254740993
FCALL lockd_fence_advance 1 @f 5 | FCALL lockd_acquire 2 @l2 @f lease 100 | INCR @i
FCALL lockd_acquire 2 @i @f2 1 1000 | FCALL lockd_release 1 @i 1 | GET @a @b | DBSIZE x
SET @k v EX 10 PX 20 | SET @k v NX XX | SET @k v GET GET | SET @k v PX | SET @k v EX abc PX 10
SET @k v EX 9223372036854775 | SET @k v EX 100 EX -5 | SET @k v EX -5 EX 100 | SET @k v FOO
PEXPIRE @k 100 nx xx | PEXPIRE @k 100 gt lt | PEXPIRE @k 100 xx gt | PEXPIRE @k abc foo nx
PEXPIRE @k 9223372036854775807 | PEXPIRE @k 9223372036854775808 | PEXPIRE @k 0 | EXISTS @k
FCALL Lockd_Acquire 1 @l @f x 1 | FCALL lockd_acquire 2 @l @f lease 0100
FCALL lockd_fence_advance 1 @f 9007199254740992 | SET @f 0 | FCALL lockd_fence_advance 1 @f 1
SET @f -1 | INCR @f | FCALL lockd_fence_advance 1 @f 1 | SET @f 9007199254740991
FCALL lockd_fence_advance 1 @f 1 | INCR @f | FCALL lockd_acquire 2 @a @f x 9 | SET @f abc
FCALL lockd_acquire 2 @l @f lease 100 | SET @f 5 | FCALL lockd_fence_advance 1 @f 3
FCALL lockd_fence_advance 1 @f 7 | GET @f | FCALL lockd_release 1 @missing x | DEL @l @l2 @i
FCALL lockd_release 2 @a @b x | FCALL lockd_extend 1 @missing x abc | FCALL lockd_extend 1 @m x 1
SET @n 05 | INCR @n | SET @n -0 | INCR @n | SET @n 9223372036854775807 | INCR @n | GET @n
PING | PING a | PING a b | ECHO a | SET @k 5 | INCR @k | SET @k v GET | SET @k x NX GET
SET @k2 x NX GET | SET @k3 x XX GET | EXISTS @k @k @k2 @nope | DEL @k @k @k2 @nope | PERSIST @k3
FCALL lockd_acquire 2 @lk @fk a 5000 | FCALL lockd_acquire 2 @lk @fk b 5000
FCALL lockd_release 1 @lk b | FCALL lockd_extend 1 @lk a 6000 | FCALL lockd_release 1 @lk a
FCALL lockd_fence_advance 1 @fk 3 | FCALL lockd_acquire 2 @lk @fk b 5000 | GET @lk
FCALL lockd_acquire 2 @lk @lk b 5000 | SET @lk 1 | INCR @lk | FCALL lockd_release 1 @lk 2
Nope a b | SELECT 0 | SELECT a | GET @lk
"""


@pytest.fixture
def all_targets(request: pytest.FixtureRequest) -> Iterator[list[Target]]:
    targets = [_shared(request, kind) for kind in TARGETS]
    yield targets
    for target in targets:
        target.close()


def _outcome(target: Target, args: list[str]) -> object:
    try:
        return target.call(*args)
    except ReplyError as exc:
        return ("error", str(exc))


def test_transcripts_identical(all_targets: list[Target]) -> None:
    """Deterministic commands, run in lockstep: every target must reply alike."""
    commands = [line.split() for line in SCRIPT.replace("|", "\n").splitlines() if line.strip()]
    mismatches = []
    for args in commands:
        replies = []
        for target in all_targets:
            keyed = [target.key(a[1:]) if a.startswith("@") else a for a in args]
            replies.append(_outcome(target, keyed))
        if any(reply != replies[0] for reply in replies):
            mismatches.append((" ".join(args), dict(zip(TARGETS, replies, strict=True))))
    assert not mismatches, "\n".join(map(repr, mismatches))


# -- deliberate differences: engine only ----------------------------------------------------


def test_engine_refuses_ttl_above_max_ttl(engine_t: Target) -> None:
    # By design: a node must be able to promise that every lock it granted has expired
    # max-ttl (+ drift) after a crash, so it refuses longer TTLs (60 s by default).
    # Redis has no such cap (see the next test).
    t = engine_t
    lock, fence = t.key("lock"), t.key("fence")
    assert t.error("FCALL", "lockd_acquire", 2, lock, fence, "a", 60001) == (
        "ERR lockd_acquire: ttl 60001 ms is above this node's max-ttl 60000 ms"
    )
    assert t.call("EXISTS", lock) == 0
    assert t.fcall("lockd_acquire", [lock, fence], "a", 60000) == [1, 0]
    assert t.error("FCALL", "lockd_extend", 1, lock, "a", 123456789012345678) == (
        "ERR lockd_extend: ttl 123456789012345678 ms is above this node's max-ttl 60000 ms"
    )
    assert 59000 < t.pttl(lock) <= 60000


def test_redis_has_no_ttl_cap(redis_t: Target) -> None:
    t = redis_t
    lock, fence = t.key("lock"), t.key("fence")
    assert t.fcall("lockd_acquire", [lock, fence], "a", 60001) == [1, 0]
    assert t.fcall("lockd_extend", [lock], "a", 123456789012345678) == 1
    assert t.pttl(lock) > 123456789000000000


def test_engine_has_no_absolute_expiry(engine_t: Target) -> None:
    # By design: the engine's deadlines are on the monotonic clock, so wall-clock
    # deadlines (EXAT, PXAT) are not accepted; Redis 7 takes them.
    t = engine_t
    k = t.key("k")
    assert t.error("SET", k, "v", "EXAT", "99999999999") == SYNTAX
    assert t.error("SET", k, "v", "PXAT", "99999999999999") == SYNTAX
    assert t.call("EXISTS", k) == 0


def test_redis_has_absolute_expiry(redis_t: Target) -> None:
    t = redis_t
    k = t.key("k")
    assert t.call("SET", k, "v", "PXAT", "99999999999999") == b"OK"


def test_engine_has_one_database(engine_t: Target) -> None:
    # By design: a node holds one keyspace (CONFIG GET databases says 1); Redis has 16.
    assert engine_t.call("SELECT", 0) == b"OK"
    assert engine_t.error("SELECT", 1) == "ERR DB index is out of range"


# -- clients ------------------------------------------------------------------------------


def test_default_redis_py_client_speaks_resp3(engine_process: EngineProcess) -> None:
    """redis-py 8 opens with HELLO 3 by default: the engine must answer in RESP3."""
    r = engine_process.client()
    conn = r.connection_pool.get_connection()
    try:
        assert conn.protocol == 3
        assert conn.handshake_metadata is not None
        assert conn.handshake_metadata[b"proto"] == 3
    finally:
        r.connection_pool.release(conn)
    assert r.ping() is True
    assert r.set("k", "v") is True
    assert r.set("k", "w", nx=True) is None
    assert r.get("k") == b"v"
    assert r.get("missing") is None
    assert r.pttl("missing") == -2
    assert r.exists("k", "k", "missing") == 2
    assert r.execute_command("INCR", "n") == 1  # r.incr() sends INCRBY: not an engine command
    assert r.fcall("lockd_acquire", 2, "lock", "fence", "a", 5000) == [1, 0]
    assert r.fcall("lockd_fence_advance", 1, "fence", 4) == [1, 4]
    assert r.fcall("lockd_release", 1, "lock", "a") == 1
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", "k", "v", "NX", "XX")
    r.close()


def test_resp2_client(engine_process: EngineProcess) -> None:
    r = engine_process.client(protocol=2)
    assert r.set("k", "v", px=5000) is True
    assert r.get("k") == b"v"
    assert r.get("missing") is None
    assert r.fcall("lockd_acquire", 2, "lock", "fence", "a", 5000) == [1, 0]
    r.close()
