"""The gateway's node transport (lockd/gateway/resp_client.py) against scripted servers:
pipelining, FIFO matching, priorities, timeouts counted from the write, stalls,
reconnects, pub/sub, AUTH / HELLO and TLS."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from lockd.engine import Engine, EngineConfig
from lockd.engine.server import RespServer
from lockd.gateway.resp_client import (
    BULK,
    NORMAL,
    URGENT,
    ConnectionLost,
    NotConnected,
    RequestTimeout,
    RespClient,
    RespConnection,
    TransportError,
)
from lockd.resp.protocol import RequestParser, encode, encode_command
from lockd.resp.replies import OK, CommandError, Push, Reply

Answer = Callable[[list[bytes]], Reply]


class FakeServer:
    """A RESP server whose answers come from `answer(command)`; `hold` delays every
    reply by that many seconds (a slow node), `mute` stops answering (a stalled one)."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer = answer or (lambda cmd: OK)
        self.commands: list[list[bytes]] = []
        self.chunks: list[int] = []  # commands per read: pipelining shows here
        self.connections = 0
        self.hold = 0.0
        self.mute = False
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        parser = RequestParser()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                parser.feed(data)
                batch = []
                while (cmd := parser.next_command()) is not None:
                    batch.append(cmd)
                self.chunks.append(len(batch))
                for cmd in batch:
                    self.commands.append(cmd)
                    if self.mute:
                        continue
                    if self.hold:
                        await asyncio.sleep(self.hold)
                    writer.write(encode(self.answer(cmd)))
                await writer.drain()
        writer.close()

    def drop_connections(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        self.drop_connections()
        await self.server.wait_closed()


@contextlib.asynccontextmanager
async def serving(answer: Answer | None = None) -> AsyncIterator[FakeServer]:
    server = FakeServer(answer)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def connected(port: int, **kwargs: object) -> AsyncIterator[RespClient]:
    client = RespClient("127.0.0.1", port, **kwargs)  # type: ignore[arg-type]
    try:
        await client.start()
        yield client
    finally:
        await client.close()


class Collect:
    """Reply callbacks that record what they got, and when."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Reply | TransportError, float]] = []
        self.event = asyncio.Event()

    def __call__(self, label: str) -> Callable[[Reply | TransportError], None]:
        def done(value: Reply | TransportError) -> None:
            self.got.append((label, value, time.monotonic()))
            self.event.set()

        return done

    async def until(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.got) < n:
                self.event.clear()
                await self.event.wait()

    def values(self) -> dict[str, Reply | TransportError]:
        return {label: value for label, value, _ in self.got}


def echo(cmd: list[bytes]) -> Reply:
    return cmd[-1]


async def test_requests_of_one_loop_turn_are_pipelined_and_matched_in_order() -> None:
    async with serving(echo) as server, connected(server.port) as client:
        collect = Collect()
        for i in range(200):
            client.send(encode_command(b"ECHO", b"%d" % i), collect(str(i)))
        await collect.until(200)
        assert [v for _, v, _ in collect.got] == [b"%d" % i for i in range(200)]
        # Written together: the server read them in a few chunks, not 200.
        assert len(server.chunks) <= 5, server.chunks
        assert await client.execute(b"ECHO", b"x") == b"x"


async def test_urgent_requests_overtake_queued_ones_within_one_window() -> None:
    async with serving(echo) as server, connected(server.port, window=4) as client:
        server.hold = 0.01
        collect = Collect()
        for i in range(40):
            client.send(encode_command(b"ACQUIRE", b"%d" % i), collect(f"a{i}"), BULK)
        for i in range(5):
            client.send(encode_command(b"FENCE", b"%d" % i), collect(f"f{i}"), NORMAL)
        await asyncio.sleep(0)  # the first window goes out with the acquisitions
        client.send(encode_command(b"RENEW", b"r"), collect("renew"), URGENT)
        await collect.until(46)
        order = [label for label, _, _ in collect.got]
        # The renewal waited for at most one window of earlier writes, then went first.
        assert order.index("renew") <= 4, order
        assert all(order.index(f"f{i}") < order.index("a10") for i in range(5)), order
        assert [c[0] for c in server.commands].index(b"RENEW") <= 4


async def test_timeouts_count_from_the_write_not_from_the_queue() -> None:
    async with serving(echo) as server, connected(server.port, window=1, timeout_s=0.15) as client:
        server.hold = 0.05
        collect = Collect()
        for i in range(10):  # 10 x 50 ms in a row: the last waits 450 ms in the queue
            client.send(encode_command(b"ECHO", b"%d" % i), collect(str(i)), BULK)
        await collect.until(10)
        assert [v for _, v, _ in collect.got] == [b"%d" % i for i in range(10)]
        assert collect.got[-1][2] - collect.got[0][2] > 0.3


async def test_a_slow_reply_times_out_and_the_connection_stays() -> None:
    async with serving(echo) as server, connected(server.port, timeout_s=0.1) as client:
        collect = Collect()
        client.send(encode_command(b"ECHO", b"fast"), collect("fast"))
        await collect.until(1)
        server.hold = 0.03
        for i in range(6):  # the last ones are answered after 0.1 s: timed out
            client.send(encode_command(b"ECHO", b"%d" % i), collect(str(i)))
        await collect.until(7)
        values = collect.values()
        assert values["0"] == b"0"
        assert isinstance(values["5"], RequestTimeout) and "100 ms" in str(values["5"])
        # Replies kept coming, so the connection is not stalled: late replies are
        # matched to their (abandoned) requests and the next call works.
        server.hold = 0
        await asyncio.sleep(0.2)
        assert client.connected and server.connections == 1
        assert await client.execute(b"ECHO", b"again") == b"again"


async def test_a_stalled_connection_fails_its_calls_and_reconnects() -> None:
    async with serving(echo) as server, connected(server.port, timeout_s=0.1) as client:
        server.mute = True
        collect = Collect()
        started = time.monotonic()
        for i in range(3):
            client.send(encode_command(b"ECHO", b"%d" % i), collect(str(i)))
        await collect.until(3)
        assert time.monotonic() - started < 0.5
        assert isinstance(collect.got[0][1], RequestTimeout)
        assert all(isinstance(v, TransportError) for _, v, _ in collect.got)
        server.mute = False
        async with asyncio.timeout(3):
            while not client.connected or server.connections < 2:
                await asyncio.sleep(0.01)
        assert await client.execute(b"ECHO", b"back") == b"back"


async def test_calls_fail_fast_while_the_node_is_down_and_resume_when_it_is_back() -> None:
    server = FakeServer(echo)
    port = await server.start()
    async with connected(port, timeout_s=0.2) as client:
        collect = Collect()
        server.hold = 0.05
        client.send(encode_command(b"ECHO", b"inflight"), collect("inflight"))
        await asyncio.sleep(0.01)
        await server.stop()  # the node goes away with a call in flight
        await collect.until(1)
        assert isinstance(collect.values()["inflight"], ConnectionLost)
        with pytest.raises(NotConnected):
            await client.execute(b"PING")
        started = time.monotonic()
        client.send(encode_command(b"ECHO", b"down"), collect("down"))
        assert isinstance(collect.values()["down"], NotConnected)
        assert time.monotonic() - started < 0.01
        await asyncio.sleep(1.5)  # the backoff has grown to its cap
        # Back on the same port: the next call's failure cuts the backoff short.
        back = FakeServer(echo)
        back.server = await asyncio.start_server(back._serve, "127.0.0.1", port)
        try:
            began = time.monotonic()
            async with asyncio.timeout(3):
                while True:
                    with contextlib.suppress(NotConnected):
                        assert await client.execute(b"ECHO", b"up") == b"up"
                        break
                    await asyncio.sleep(0.01)
            assert time.monotonic() - began < 0.5
        finally:
            await back.stop()


async def test_the_connect_check_refuses_a_node_and_is_retried() -> None:
    checks: list[int] = []

    async def check(conn: RespConnection) -> None:
        checks.append(1)
        if await conn.execute(b"ECHO", b"safe?") != b"safe":
            raise ValueError("unsafe node")

    answers = {b"safe?": b"no"}
    async with serving(lambda cmd: answers.get(cmd[-1], cmd[-1])) as server:
        client = RespClient("127.0.0.1", server.port, on_connect=check)
        try:
            with pytest.raises(ValueError, match="unsafe node"):
                await client.start()
            assert not client.connected and client.last_error == "unsafe node"
            answers[b"safe?"] = b"safe"
            async with asyncio.timeout(3):
                while not client.connected:
                    await asyncio.sleep(0.01)
            assert len(checks) >= 2
        finally:
            await client.close()


async def test_password_and_resp3_are_sent_first() -> None:
    def hello(cmd: list[bytes]) -> Reply:
        return {b"proto": 3} if cmd[0] == b"HELLO" else OK

    async with serving(hello) as server:
        async with connected(server.port, password="s3cret"):
            pass
        async with connected(server.port, username="gw", password="s3cret"):
            pass
        async with connected(server.port, username="gw", password="pw", resp3=True):
            pass
        async with connected(server.port, resp3=True):
            pass
        assert server.commands == [
            [b"AUTH", b"s3cret"],
            [b"AUTH", b"gw", b"s3cret"],
            [b"HELLO", b"3", b"AUTH", b"gw", b"pw"],
            [b"HELLO", b"3"],
        ]


async def test_a_refused_password_is_the_reason_it_cannot_connect() -> None:
    async with serving(lambda cmd: CommandError("WRONGPASS invalid password")) as server:
        client = RespClient("127.0.0.1", server.port, password="nope")
        try:
            with pytest.raises(CommandError, match="WRONGPASS"):
                await client.start()
            assert "WRONGPASS" in client.last_error
        finally:
            await client.close()


async def test_tls_with_a_caller_supplied_context(certs: dict[str, Path]) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(certs["server_pem"], certs["server_key"])
    server = FakeServer(echo)
    await server.start(server_ctx)
    try:
        client_ctx = ssl.create_default_context(cafile=str(certs["ca_pem"]))
        async with connected(server.port, ssl=client_ctx) as client:
            assert await client.execute(b"ECHO", b"over tls") == b"over tls"
        # A context that does not trust the server's CA never connects.
        rogue = ssl.create_default_context(cafile=str(certs["rogue-ca_pem"]))
        client = RespClient("127.0.0.1", server.port, ssl=rogue)
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await client.start()
        finally:
            await client.close()
    finally:
        await server.stop()


async def test_subscriber_gets_messages_on_a_real_engine(tmp_path: Path) -> None:
    engine = Engine(EngineConfig(dir=tmp_path))
    resp = RespServer(engine)
    port = await resp.start()
    got: list[tuple[bytes, bytes]] = []
    try:
        async with (
            connected(port, channels=[b"ch"], on_message=lambda c, m: got.append((c, m))),
            connected(port) as client,
        ):
            assert await client.execute(b"PUBLISH", b"ch", b"hello") == 1
            async with asyncio.timeout(2):
                while not got:
                    await asyncio.sleep(0.005)
            assert got == [(b"ch", b"hello")]
            # A RESP3 push on a connection without a listener is dropped, not a reply.
            conn = client._conn
            assert conn is not None
            conn.data_received(encode(Push([b"invalidate", [b"k"]]), resp3=True))
            assert await client.execute(b"PING") == "PONG"
    finally:
        await resp.stop()


async def test_cancelled_requests_are_never_written() -> None:
    async with serving(echo) as server, connected(server.port, window=1) as client:
        server.hold = 0.02
        collect = Collect()
        client.send(encode_command(b"ECHO", b"first"), collect("first"))
        dropped = client.send(encode_command(b"ECHO", b"dropped"), collect("dropped"))
        client.send(encode_command(b"ECHO", b"last"), collect("last"))
        assert dropped is not None
        dropped.cancel()
        await collect.until(2)
        assert [label for label, _, _ in collect.got] == ["first", "last"]
        assert [c[-1] for c in server.commands] == [b"first", b"last"]
