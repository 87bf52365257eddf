"""Property tests of the RESP layer: arbitrary bytes never crash the parser or the server.

Example counts are modest so that the file runs in seconds. The parser and one server
connection (on a fake transport) run without I/O; then garbage goes to a real `lockd
engine` process over sockets, and inline commands to it and to a real redis-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockd.engine import Engine
from lockd.engine.server import Connection, RespServer, ServerLimits
from lockd.resp.protocol import ProtocolError, RequestParser, encode_command
from tests.support import EngineProcess, redis_server, redis_server_binary

# Bytes that steer the parser into its interesting states more often than uniform bytes.
RESP_TOKENS = [
    b"*", b"$", b"\r\n", b"\r", b"\n", b"0", b"1", b"2", b"3", b"9", b"-1", b"-", b"+",
    b" ", b"\t", b"\x0b", b'"', b"'", b"\\", b"\\x4", b"1f", b"PING", b"ECHO", b"a", b"\x00",
    b"\xff", b"*1\r\n", b"*2\r\n", b"$1\r\n", b"$4\r\n", b"*0\r\n", b"*-1\r\n", b"99999999",
]  # fmt: skip

resp_like = st.lists(st.sampled_from(RESP_TOKENS), max_size=40).map(b"".join)
garbage = st.one_of(st.binary(max_size=200), resp_like)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given offsets (taken modulo its length, any order)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


chunks_of_garbage = st.builds(
    chunked, st.lists(garbage, max_size=6).map(b"".join), st.lists(st.integers(0, 10**6))
)


# -- (a) the parser ----------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(chunks=chunks_of_garbage, max_bulk=st.sampled_from([0, 1, 5, 100, 1 << 20]))
def test_parser_returns_commands_or_raises_protocol_error(
    chunks: list[bytes], max_bulk: int
) -> None:
    parser = RequestParser(max_bulk)
    fed = 0
    try:
        for chunk in chunks:
            parser.feed(chunk)
            fed += len(chunk)
            while (cmd := parser.next_command()) is not None:
                assert isinstance(cmd, list) and cmd, "an empty command must be skipped"
                assert all(type(arg) is bytes for arg in cmd)
                assert sum(len(arg) for arg in cmd) <= fed
                assert parser.buffered() <= fed
            assert 0 <= parser.buffered() <= fed
            assert parser.offset() <= fed
    except ProtocolError as exc:
        assert str(exc).startswith("ERR Protocol error: ")
        assert "\r" not in str(exc) and "\n" not in str(exc)


command = st.lists(st.binary(max_size=30), min_size=1, max_size=6)
inline_word = st.binary(min_size=1, max_size=10).filter(
    lambda w: w[0] != 0x2A and not any(c in w for c in b" \t\r\n\x0b\x0c\"'\x00")
)
inline_command = st.lists(inline_word, min_size=1, max_size=5)
frame = st.one_of(
    command.map(lambda args: (args, encode_command(*args))),
    inline_command.map(lambda args: (args, b" ".join(args) + b"\r\n")),
    st.sampled_from([b"*0\r\n", b"*-1\r\n", b"\r\n", b"\n", b"  \t\r\n"]).map(lambda f: (None, f)),
)


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(frame, max_size=12), cuts=st.lists(st.integers(0, 10**6), max_size=10))
def test_parser_round_trips_any_chunking(
    frames: list[tuple[list[bytes] | None, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(data for _, data in frames)
    expected = [args for args, _ in frames if args is not None]
    parser = RequestParser()
    got: list[list[bytes]] = []
    for chunk in chunked(stream, cuts):
        parser.feed(chunk)
        while (cmd := parser.next_command()) is not None:
            got.append(cmd)
    assert got == expected
    assert parser.buffered() == 0
    assert parser.offset() == len(stream)


class FakeTransport(asyncio.Transport):
    """Just enough of an asyncio transport for `Connection`."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


QUERY_BUFFER = 300


async def feed_connection(chunks: list[bytes]) -> tuple[FakeTransport, list[int]]:
    server = RespServer(Engine(), limits=ServerLimits(max_bulk=200, query_buffer=QUERY_BUFFER))
    conn = Connection(server)
    transport = FakeTransport()
    conn.connection_made(transport)
    held: list[int] = []
    try:
        for chunk in chunks:
            if transport.closed:
                break
            conn.data_received(chunk)
            await asyncio.sleep(0)  # the group-commit flush
            await asyncio.sleep(0)
            if not transport.closed:
                held.append(conn.parser.buffered())
    finally:
        conn.connection_lost(None)
        server.engine.close()
    return transport, held


@settings(max_examples=150, deadline=None)
@given(
    chunks=st.lists(
        st.one_of(garbage, st.binary(min_size=100, max_size=400), resp_like), max_size=8
    ),
    prefix=st.sampled_from([b"", b"*2\r\n$4\r\nECHO\r\n$200\r\n", b"*99\r\n", b"ECHO "]),
)
def test_server_closes_connections_over_the_query_buffer_limit(
    chunks: list[bytes], prefix: bytes
) -> None:
    transport, held = asyncio.run(feed_connection([prefix, *chunks]))
    # An open connection never holds more unparsed input than the limit ...
    assert all(n <= QUERY_BUFFER for n in held)
    # ... and a closed one was told why, in one clean error line.
    if transport.closed:
        last = bytes(transport.written).rsplit(b"\r\n", 2)[-2]
        assert last.startswith(b"-ERR ") or last == b"+OK", last


def test_query_buffer_limit_counts_parsed_arguments_too() -> None:
    # Many small arguments of an unfinished array are held as parsed values, not raw bytes.
    data = b"*100000\r\n" + b"$1\r\na\r\n" * 400
    transport, _ = asyncio.run(feed_connection([data[i : i + 100] for i in range(0, 2900, 100)]))
    assert transport.closed
    assert transport.written.endswith(b"-ERR Protocol error: query buffer limit exceeded\r\n")


# -- (b) a real engine process -----------------------------------------------------------


def read_for(sock: socket.socket, seconds: float) -> bytes:
    """Whatever arrives within `seconds` (stops early at EOF or reset)."""
    out = bytearray()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not data:
            break
        out += data
    return bytes(out)


def ping(port: int) -> bytes:
    """PING on a fresh connection; the raw reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        reply = b""
        while not reply.endswith(b"\r\n") and (data := sock.recv(64)):
            reply += data
        return reply


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payloads=st.lists(st.lists(garbage, min_size=1, max_size=4), min_size=1, max_size=4))
def test_engine_survives_garbage(
    engine_process: EngineProcess, payloads: list[list[bytes]]
) -> None:
    port = engine_process.port
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in payloads]
    try:
        # Interleave the connections' writes, then read whatever each got back.
        for round_ in range(max(len(p) for p in payloads)):
            for sock, parts in zip(socks, payloads, strict=True):
                if round_ < len(parts):
                    with contextlib.suppress(OSError):
                        sock.sendall(parts[round_])
        for sock in socks:
            read_for(sock, 0.02)
    finally:
        for sock in socks:
            sock.close()
    assert engine_process.proc is not None and engine_process.proc.poll() is None
    assert ping(port) == b"+PONG\r\n"


def test_engine_survives_a_flood_of_bad_frames(engine_process: EngineProcess) -> None:
    port = engine_process.port
    bad = [
        b"*x\r\n",
        b"*1\r\n$-1\r\n",
        b"*1\r\nx",
        b'"\r\n',
        b"*1\r\n$4\r\nPINGxx",
        b"\xff" * 70000,
    ]
    for i in range(60):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(b"PING\r\n" + bad[i % len(bad)])
            reply = read_for(sock, 2.0)
        assert reply.startswith(b"+PONG\r\n-ERR Protocol error: "), reply
    client = engine_process.client()
    assert client.ping() is True
    assert client.set("still", "here") is True
    assert client.get("still") == b"here"
    client.close()


# -- (c) inline splitting against a real redis-server ------------------------------------


def exchange(sock: socket.socket, data: bytes) -> bytes:
    """Send `data` then PING; everything up to the PONG (or until the server closed)."""
    sock.sendall(data + b"PING\r\n")
    out = bytearray()
    sock.settimeout(5)
    while not out.endswith(b"+PONG\r\n"):
        try:
            got = sock.recv(65536)
        except ConnectionResetError:
            break
        if not got:
            break
        out += got
    return bytes(out)


inline_line = st.lists(
    st.sampled_from(
        [b"a", b"b", b"x", b"1f", b" ", b"\t", b"\r", b"\x0b", b"\x0c", b'"', b"'", b"\\",
         b"\\x", b"\\n", b"\\'", b'\\"', b"\xc3\xa9", b"\xa0"]
    ),
    max_size=16,
).map(b"".join)  # fmt: skip


@pytest.fixture(scope="module")
def redis_and_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """A real redis-server and a `lockd engine`, shared by the examples of one test."""
    if redis_server_binary() is None:
        pytest.fail("redis-server is not installed; `make test` installs Debian's package")
    engine = EngineProcess(tmp_path_factory.mktemp("engine"))
    with redis_server(tmp_path_factory.mktemp("redis")) as redis_port:
        engine.start()
        try:
            yield redis_port, engine.port
        finally:
            engine.close()


@pytest.mark.redis
@settings(max_examples=150, deadline=None)
@given(line=inline_line)
def test_inline_splitting_matches_redis(redis_and_engine: tuple[int, int], line: bytes) -> None:
    request = b"ECHO " + line + b"\r\n"
    replies = []
    for port in redis_and_engine:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            replies.append(exchange(sock, request))
    assert replies[1] == replies[0], (request, replies)
