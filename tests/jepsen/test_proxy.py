"""The fault proxy: forwards, holds everything during a partition, delays, resets."""

from __future__ import annotations

import asyncio
import time

from lockd.jepsen.proxy import Link


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await reader.readexactly(len(data))


async def test_forwards_and_partitions_hold_traffic_until_healed() -> None:
    server, port = await _echo_server()
    link = Link("test", "127.0.0.1", port)
    proxy_port = await link.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        assert await _roundtrip(reader, writer, b"hello") == b"hello"
        link.partition()
        writer.write(b"during")
        await writer.drain()
        late = asyncio.create_task(reader.readexactly(6))
        await asyncio.sleep(0.3)
        assert not late.done()  # nothing crosses a partition: callers time out
        # A connection made during the partition hangs too.
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy_port)
        w2.write(b"new")
        second = asyncio.create_task(r2.readexactly(3))
        await asyncio.sleep(0.1)
        assert not second.done()
        link.heal()
        # What was sent meanwhile arrives after the heal, as TCP would deliver it.
        assert await asyncio.wait_for(late, 2) == b"during"
        assert await asyncio.wait_for(second, 2) == b"new"
        writer.close()
        w2.close()
    finally:
        await link.close()
        server.close()


async def test_delay_keeps_order_and_loss_slows_down() -> None:
    server, port = await _echo_server()
    link = Link("test", "127.0.0.1", port, seed=1)
    proxy_port = await link.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        link.set_delay(100)
        started = time.monotonic()
        for i in range(5):
            writer.write(b"%d" % i)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(5), 3) == b"01234"
        elapsed = time.monotonic() - started
        assert 0.2 <= elapsed < 1.5  # 100 ms each way, chunks not serialised by it
        link.heal()
        started = time.monotonic()
        assert await _roundtrip(reader, writer, b"x") == b"x"
        assert time.monotonic() - started < 0.1
        link.set_loss(1.0)  # every chunk retransmitted (or the connection reset)
        started = time.monotonic()
        try:
            await asyncio.wait_for(_roundtrip(reader, writer, b"y"), 3)
            assert time.monotonic() - started >= 0.2
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # reset: a connection lost with the packets
        writer.close()
    finally:
        await link.close()
        server.close()


async def test_target_down_closes_the_client_connection() -> None:
    server, port = await _echo_server()
    server.close()
    await server.wait_closed()
    link = Link("test", "127.0.0.1", port)
    proxy_port = await link.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        assert await asyncio.wait_for(reader.read(10), 3) == b""
        writer.close()
    finally:
        await link.close()
