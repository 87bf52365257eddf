"""A Session stream whose client writes requests and never reads the answers: the
gateway stops reading it at its window (HTTP/2 flow control then blocks the client's
writes) and bounds the total over all streams, so its memory stays flat; nothing is
lost, and other streams keep being served.

grpc's Python client keeps reading its socket, and granting window, whether or not the
caller reads, so the client that never reads is made by a proxy (`NoReplies`) that
passes every HTTP/2 frame but the gateway's DATA and the client's WINDOW_UPDATE: the
gateway's answers wait for window, as with a client that stopped reading."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import grpc

from lockd.gateway import GatewayConfig
from lockd.v1 import lock_service_pb2 as pb
from tests.client.helpers import serve_process
from tests.gateway.helpers import Stub, channel, running

# About 1 KB each, answered at once with BAD_NAME (the name is checked first): a cheap
# request whose answer the gateway has to keep until the client reads it.
PADDING = b"x" * 1000


def heavy(id: int) -> bytes:
    return pb.SessionRequest(
        id=id, acquire=pb.AcquireRequest(name="", ttl_ms=1000, value=PADDING)
    ).SerializeToString()


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, WINDOW_UPDATE = 0, 8  # HTTP/2 frame types


class NoReplies:
    """A TCP proxy to 127.0.0.1:`port` that forwards every HTTP/2 frame but the gateway's
    DATA and the client's WINDOW_UPDATE: a client that reads no answer, so grants the
    gateway no more window to send them."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> NoReplies:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        gateway_r, gateway_w = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def frames(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, drop: int
        ) -> None:
            while True:
                header = await source.readexactly(9)
                payload = await source.readexactly(int.from_bytes(header[:3], "big"))
                if header[3] != drop:
                    sink.write(header + payload)
                    await sink.drain()

        async def up() -> None:
            gateway_w.write(await client_r.readexactly(len(PREFACE)))
            await frames(client_r, gateway_w, WINDOW_UPDATE)

        tasks = [asyncio.create_task(up()), asyncio.create_task(frames(gateway_r, client_w, DATA))]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            client_w.close()
            gateway_w.close()


class Writer:
    """Writes up to `count` requests on a raw Session stream, never reading."""

    def __init__(self, ch: grpc.aio.Channel, count: int) -> None:
        self.call = ch.stream_stream("/lockd.v1.LockService/Session")()
        self.count = count
        self.written = 0
        self.task = asyncio.create_task(self._write())

    async def _write(self) -> None:
        for i in range(1, self.count + 1):
            await self.call.write(heavy(i))
            self.written = i

    async def stalled(self, quiet_s: float = 1.0, limit_s: float = 60.0) -> None:
        """Until no write completed for `quiet_s` (or all are written)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        last, since = -1, loop.time()
        while not self.task.done() and loop.time() < end:
            await asyncio.sleep(0.1)
            if self.written != last:
                last, since = self.written, loop.time()
            elif loop.time() - since >= quiet_s:
                return

    async def close(self) -> None:
        self.task.cancel()
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self.task


async def test_unread_session_streams_are_bounded(embedded: GatewayConfig) -> None:
    config = dataclasses.replace(embedded, session_window=50, session_backlog=120)
    async with (
        running(config) as gateway,
        NoReplies(gateway.port) as proxy,
        channel(proxy.port) as unread,
        channel(gateway.port) as ch,
    ):
        backlog = gateway.service.backlog
        writers = [Writer(unread, 20_000) for _ in range(3)]
        for writer in writers:
            await writer.stalled()
        # Each stream stopped at its window, and all three together near the total
        # (a stream with nothing unanswered is still read: at most one more each).
        assert all(not w.task.done() for w in writers), [w.written for w in writers]
        assert 100 <= backlog.used <= 120 + len(writers), backlog.used
        # The client's writes were pushed back once the transport's HTTP/2 windows (a few
        # MB, grpc's own bound per connection) filled.
        assert sum(w.written for w in writers) < 20_000, [w.written for w in writers]
        # Another stream (and a unary call) is still served meanwhile.
        stub = Stub(ch)
        session = stub.Session()
        await session.write(
            pb.SessionRequest(id=7, acquire=pb.AcquireRequest(name="free", ttl_ms=5000))
        )
        answer = await asyncio.wait_for(session.read(), 5)
        assert answer.id == 7 and answer.acquire.fencing_token > 0
        await session.done_writing()
        assert (await stub.Describe(pb.DescribeRequest(name="free"))).held
        # A stream whose client does read goes on through thousands of requests, past
        # its window and while the gateway is at its total: nothing lost.
        reading = Writer(ch, 3000)
        ids: list[int] = []

        async def drain() -> None:
            while len(ids) < reading.count:
                raw = await reading.call.read()
                ids.append(pb.SessionResponse.FromString(raw).id)

        await asyncio.wait_for(drain(), 120)
        await reading.task
        assert sorted(ids) == list(range(1, reading.count + 1))
        await reading.close()
        for writer in writers:
            await writer.close()
        for _ in range(50):
            if backlog.used == 0:
                break
            await asyncio.sleep(0.1)
        assert backlog.used == 0


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_gateway_memory_stays_flat_under_unread_sessions(tmp_path: Path) -> None:
    """`lockd serve` as a process: 8 streams each writing up to 20k requests of 1 KB
    (160 MB if all were taken in) without reading; the gateway's RSS barely moves."""
    proc = serve_process(tmp_path / "data").start()
    try:
        async with NoReplies(proc.port) as proxy, channel(proxy.port) as ch:
            before = _rss_kb(proc.pid)
            writers = [Writer(ch, 20_000) for _ in range(8)]
            for writer in writers:
                await writer.stalled(quiet_s=2.0, limit_s=120.0)
            grown_mb = (_rss_kb(proc.pid) - before) / 1024
            written = [w.written for w in writers]
            for writer in writers:
                await writer.close()
        assert all(n < 20_000 for n in written), written
        assert grown_mb < 40, f"gateway RSS grew {grown_mb:.0f} MB; writes {written}"
    finally:
        proc.close()
