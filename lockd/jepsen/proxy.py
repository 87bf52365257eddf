"""An asyncio TCP fault proxy: one `Link` per gateway-node route, with faults.

A gateway reaches each node through its own link, so a partition is a set of links.
- `partition()`: nothing crosses the link in either direction until `heal()`, as with a
  firewall dropping packets; connections stay open, so callers see timeouts, and what was
  sent meanwhile arrives after the heal, as TCP's retransmissions would deliver it (stale
  requests, late replies). New connections hang until the heal.
- `set_delay(ms, jitter)`: every chunk is held that long (order is kept).
- `set_loss(p)`: TCP turns packet loss into retransmission delays: a chunk is held for an
  extra retransmission timeout with probability `p`; with p/20 the connection is reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

__all__ = ["Link"]

log = logging.getLogger("lockd.jepsen.proxy")

CHUNK = 64 << 10
RTO_S = 0.2  # Linux's minimum retransmission timeout


class _Pipe:
    """One proxied connection: two pumps, each feeding an ordered, delayed send queue."""

    def __init__(self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.link = link
        self.client_reader = reader
        self.client_writer = writer
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.reset = False

    async def run(self) -> None:
        link = self.link
        try:
            await link.passable()  # a connection made during a partition hangs
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(link.target_host, link.target_port), 2.0
                )
            except (OSError, TimeoutError):
                return  # the node is down: the client sees its connection close
            self.upstream = up_writer
            a = asyncio.create_task(self._pump(self.client_reader, up_writer))
            b = asyncio.create_task(self._pump(up_reader, self.client_writer))
            self.tasks |= {a, b}
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
            if not self.reset:  # one side closed: let the other side's bytes drain
                await asyncio.wait(self.tasks, timeout=5.0)
        finally:
            self.close(abort=self.reset)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = self.link
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer))
        try:
            release = 0.0
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                delay = link.delay_s + link.rng.uniform(0.0, link.jitter_s)
                if link.loss and link.rng.random() < link.loss:
                    if link.rng.random() < 0.05:
                        self.reset = True
                        return
                    delay += RTO_S * (1 + link.rng.random())
                release = max(release, time.monotonic() + delay)
                queue.put_nowait((release, data))
            queue.put_nowait((0.0, b""))
            await sender
        finally:
            sender.cancel()

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            at, data = await queue.get()
            await self.link.passable()
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                await self.link.passable()
            writer.write(data)
            await writer.drain()

    def close(self, abort: bool = False) -> None:
        """Close both sides (`abort`: with a reset)."""
        for task in self.tasks:
            task.cancel()
        for w in (self.client_writer, self.upstream):
            if w is None:
                continue
            if abort:
                w.transport.abort()
            else:
                w.close()


class Link:
    """Listens on a port and forwards to `target_host:target_port`, with faults."""

    def __init__(self, name: str, target_host: str, target_port: int, seed: int = 0) -> None:
        self.name = name
        self.target_host = target_host
        self.target_port = target_port
        self.rng = random.Random(f"{seed}/link/{name}")
        self.partitioned = False
        self.healed = asyncio.Event()
        self.healed.set()
        self.delay_s = 0.0
        self.jitter_s = 0.0
        self.loss = 0.0
        self.port = 0
        self.pipes: set[_Pipe] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; returns the port."""
        self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pipe = _Pipe(self, reader, writer)
        self.pipes.add(pipe)
        try:
            await pipe.run()
        except OSError:
            pipe.close(abort=True)
        finally:
            self.pipes.discard(pipe)

    def partition(self) -> None:
        """Hold everything in both directions until `heal()`."""
        self.partitioned = True
        self.healed.clear()

    async def passable(self) -> None:
        """Return once the link is not partitioned."""
        while self.partitioned:
            await self.healed.wait()

    def heal(self) -> None:
        """End the partition and every degradation; held bytes flow again."""
        self.partitioned = False
        self.delay_s = self.jitter_s = self.loss = 0.0
        self.healed.set()

    def set_delay(self, delay_ms: float, jitter_ms: float = 0.0) -> None:
        """Hold every chunk `delay_ms` plus up to `jitter_ms` (order is kept)."""
        self.delay_s, self.jitter_s = delay_ms / 1000, jitter_ms / 1000

    def set_loss(self, probability: float) -> None:
        """Retransmission delays (and rare resets) with this probability per chunk."""
        self.loss = probability

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for pipe in list(self.pipes):
            pipe.close(abort=True)
        self.healed.set()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
