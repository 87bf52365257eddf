"""The gateway's RESP client: one pipelined connection per node, on lockd's own codec.

`RespConnection` is an `asyncio.Protocol` around `lockd.resp.protocol.ReplyParser`:
- requests wait in three priority queues (urgent: renewals and releases; then fencing;
  then acquisitions) and are written with one `transport.writelines` per event-loop turn
  while fewer than `window` are unanswered, so a burst of acquisitions cannot push a
  renewal behind it by more than one window;
- replies are matched to requests in FIFO order and handed to each request's callback;
- a request's timeout counts from when it was written, not from when it was queued;
  every written request's deadline sits in one heap, checked by one timer. A queued
  request waits at most `queue_timeout_s`. A timed-out request whose connection has
  said nothing since it was written means the connection is stalled: it is dropped.
`RespClient` connects (TLS, AUTH or HELLO, SUBSCRIBE, a caller's check), keeps one
connection and reconnects with jittered backoff. Calls made while it has no connection
fail at once (to the quorum core a node that cannot be reached is a failed node), and
cut the backoff short: a node that comes back is used again as soon as it is wanted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import random
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable, Sequence

from lockd.resp.protocol import INCOMPLETE, ProtocolError, ReplyParser, encode_command
from lockd.resp.replies import CommandError, Push, Reply

__all__ = [
    "BULK",
    "NORMAL",
    "URGENT",
    "ConnectionLost",
    "NotConnected",
    "Request",
    "RequestTimeout",
    "RespClient",
    "RespConnection",
    "TransportError",
]

log = logging.getLogger("lockd.gateway")

URGENT, NORMAL, BULK = 0, 1, 2
"""Request priorities: URGENT goes first (renew, release, control), BULK last (acquire)."""

DEFAULT_WINDOW = 64
MIN_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
_MESSAGE = b"message"


class TransportError(Exception):
    """A request got no reply from the node: for the quorum core, the node failed."""


class NotConnected(TransportError):
    """There is no connection to the node right now (it is being re-established)."""


class ConnectionLost(TransportError):
    """The connection closed or was dropped before the reply came."""


class RequestTimeout(TransportError):
    """No reply within the timeout, counted from when the request was written."""


Callback = Callable[[Reply | TransportError], None]
MessageListener = Callable[[bytes, bytes], None]


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Request:
    """One request: its bytes, who gets the reply, and when it was queued and written."""

    __slots__ = ("callback", "data", "queued", "timeout", "written")

    def __init__(self, data: bytes, callback: Callback, timeout: float, queued: float) -> None:
        self.data = data
        self.callback: Callback | None = callback
        """None once answered, failed or cancelled."""
        self.timeout = timeout
        self.queued = queued
        self.written = 0.0

    def cancel(self) -> None:
        """Nobody wants the reply any more; if not written yet, it never will be."""
        self.callback = None

    def _resolve(self, value: Reply | TransportError) -> None:
        callback = self.callback
        if callback is not None:
            self.callback = None
            try:
                callback(value)
            except Exception:  # a broken callback must not break the connection
                log.exception("a node reply callback failed")


class RespConnection(asyncio.Protocol):
    """One connection to a RESP server; see the module docstring."""

    def __init__(
        self,
        timeout_s: float,
        queue_timeout_s: float,
        window: int = DEFAULT_WINDOW,
        on_message: MessageListener | None = None,
        name: str = "",
    ) -> None:
        self.timeout_s = timeout_s
        self.queue_timeout_s = queue_timeout_s
        self.window = window
        self.name = name
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._parser = ReplyParser()
        self._queues: tuple[collections.deque[Request], ...] = tuple(
            collections.deque() for _ in (URGENT, NORMAL, BULK)
        )
        self._queued = 0
        self._inflight: collections.deque[Request] = collections.deque()
        self._heap: list[tuple[float, int, Request]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._flush_scheduled = False
        self._transport: asyncio.Transport | None = None
        self._last_rx = 0.0
        self.error: TransportError | None = None
        """Why the connection is unusable (None while it is open)."""
        self.closed: asyncio.Future[None] = self._loop.create_future()
        """Resolved when the connection is gone."""

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._last_rx = self._loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed by the node"
        self._fail_all(ConnectionLost(reason))

    def data_received(self, data: bytes) -> None:
        self._last_rx = self._loop.time()
        parser = self._parser
        parser.feed(data)
        inflight = self._inflight
        while True:
            try:
                reply = parser.next_reply()
            except ProtocolError as exc:
                self.abort(f"node sent bytes that are not RESP ({exc})")
                return
            if reply is INCOMPLETE:
                break
            if isinstance(reply, list) and self._routed(reply):
                continue
            if not inflight:
                self.abort("node sent a reply nobody asked for")
                return
            inflight.popleft()._resolve(reply)  # type: ignore[arg-type]
        if self._queued and len(inflight) < self.window:
            self._flush()

    def _routed(self, reply: list[Reply]) -> bool:
        """Pub/sub messages go to the listener, other pushes are dropped; True if taken."""
        if self._on_message is not None and reply and reply[0] == _MESSAGE and len(reply) == 3:
            channel, message = reply[1], reply[2]
            if isinstance(channel, bytes) and isinstance(message, bytes):
                try:
                    self._on_message(channel, message)
                except Exception:
                    log.exception("node %s: message listener failed", self.name)
            return True
        return type(reply) is Push and self._on_message is None

    # -- sending -------------------------------------------------------------------------

    def send(
        self, data: bytes, callback: Callback, priority: int = NORMAL, timeout_s: float = 0.0
    ) -> Request:
        """Queue `data` (one or more encoded commands: one reply) for writing this loop
        turn; `callback` gets the reply or a `TransportError`, exactly once, unless the
        request is cancelled. `timeout_s` 0 means the connection's."""
        request = Request(data, callback, timeout_s or self.timeout_s, self._loop.time())
        if self.error is not None:
            request._resolve(NotConnected(str(self.error)))
            return request
        self._queues[priority].append(request)
        self._queued += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return request

    async def execute(self, *args: bytes, priority: int = URGENT, timeout_s: float = 0.0) -> Reply:
        """Send one command and wait for its reply; error replies raise `CommandError`,
        failures `TransportError`."""
        future: asyncio.Future[Reply | TransportError] = self._loop.create_future()

        def done(value: Reply | TransportError) -> None:
            if not future.done():
                future.set_result(value)

        request = self.send(encode_command(*args), done, priority, timeout_s)
        try:
            value = await future
        finally:
            request.cancel()
        if isinstance(value, TransportError | CommandError):
            raise value
        return value

    def _flush(self) -> None:
        """Write queued requests, most urgent first, while the window has room."""
        self._flush_scheduled = False
        transport = self._transport
        room = self.window - len(self._inflight)
        if transport is None or self.error is not None or room <= 0 or not self._queued:
            return
        now = self._loop.time()
        batch: list[bytes] = []
        heap = self._heap
        seq = self._seq
        inflight = self._inflight
        for queue in self._queues:
            while queue and room:
                request = queue.popleft()
                self._queued -= 1
                if request.callback is None:
                    continue  # cancelled before it was written
                request.written = now
                inflight.append(request)
                batch.append(request.data)
                heapq.heappush(heap, (now + request.timeout, next(seq), request))
                room -= 1
        if batch:
            transport.writelines(batch)
            self._arm(heap[0][0])
        if self._queued:
            self._arm(self._oldest_queued() + self.queue_timeout_s)

    def _oldest_queued(self) -> float:
        return min((q[0].queued for q in self._queues if q), default=float("inf"))

    # -- deadlines: one heap, one timer --------------------------------------------------

    def _arm(self, when: float) -> None:
        if when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        now = self._loop.time()
        heap = self._heap
        stalled = False
        while heap and (heap[0][0] <= now or heap[0][2].callback is None):
            _, _, request = heapq.heappop(heap)
            if request.callback is None:
                continue  # answered (or cancelled) in time
            stalled = stalled or self._last_rx < request.written
            request._resolve(
                RequestTimeout(f"timed out: no reply in {request.timeout * 1000:.0f} ms")
            )
        for queue in self._queues:
            while queue and (
                queue[0].callback is None or queue[0].queued + self.queue_timeout_s <= now
            ):
                request = queue.popleft()
                self._queued -= 1
                request._resolve(
                    RequestTimeout(
                        f"timed out: not sent within {self.queue_timeout_s * 1000:.0f} ms "
                        f"({len(self._inflight)} requests in flight)"
                    )
                )
        if stalled and self.error is None:
            self.abort(f"no reply for {(now - self._last_rx) * 1000:.0f} ms")
            return
        if heap:
            self._arm(heap[0][0])
        if self._queued:
            self._arm(self._oldest_queued() + self.queue_timeout_s)

    # -- closing -------------------------------------------------------------------------

    def pending(self) -> int:
        """Requests queued or unanswered."""
        return self._queued + len(self._inflight)

    def abort(self, reason: str) -> None:
        """Drop the connection now; every pending request fails with `reason`."""
        self._fail_all(ConnectionLost(f"connection dropped: {reason}"))

    def close(self) -> None:
        """Close the connection (pending requests fail)."""
        self._fail_all(ConnectionLost("connection closed by the gateway"))

    def _fail_all(self, error: TransportError) -> None:
        if self.error is None:
            self.error = error
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
        pending = list(self._inflight)
        for queue in self._queues:
            pending += queue
            queue.clear()
        self._inflight.clear()
        self._queued = 0
        for request in pending:
            request._resolve(error)
        if not self.closed.done():
            self.closed.set_result(None)


Check = Callable[[RespConnection], Awaitable[None]]


class RespClient:
    """A RESP server reached through one connection, re-established when it drops.

    Connect step: TCP (or TLS with `ssl`), then `HELLO 3 [AUTH user pass]` when `resp3`,
    or `AUTH [user] pass` when a password is given; then `SUBSCRIBE` to `channels`
    (whose messages go to `on_message`); then `on_connect(connection)`, the caller's
    check, which may raise to refuse the node. Only then do calls use the connection.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        resp3: bool = False,
        timeout_s: float = 1.0,
        connect_timeout_s: float | None = None,
        queue_timeout_s: float | None = None,
        window: int = DEFAULT_WINDOW,
        channels: Sequence[bytes] = (),
        on_message: MessageListener | None = None,
        on_connect: Check | None = None,
        name: str = "",
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.resp3 = resp3
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s or max(timeout_s, 1.0)
        self.queue_timeout_s = queue_timeout_s or max(5 * timeout_s, 1.0)
        self.window = window
        self.channels = tuple(channels)
        self.on_message = on_message
        self.on_connect = on_connect
        self.name = name or f"{host}:{port}"
        self.last_error = ""
        """Why the last connection attempt failed or the last connection ended."""
        self._conn: RespConnection | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._first: asyncio.Future[BaseException | None] | None = None
        self._backoff: asyncio.Future[None] | None = None
        self._watchers: list[asyncio.Future[None]] = []  # waiting for the next attempt
        self._attempted = 0.0  # time.monotonic() of the last connection attempt

    @property
    def connected(self) -> bool:
        """True while calls go to a checked, open connection."""
        return self._conn is not None and self._conn.error is None

    @property
    def connection(self) -> RespConnection | None:
        """The checked, open connection calls go to, if any."""
        return self._conn if self.connected else None

    async def start(self) -> None:
        """Connect in the background from now on; wait for the first attempt and raise
        what made it fail (the client keeps trying)."""
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._keeper = asyncio.create_task(self._keep(), name=f"lockd node {self.name}")
        error = await asyncio.shield(self._first)
        if error is not None:
            raise error

    def send(
        self, data: bytes, callback: Callback, priority: int = NORMAL, timeout_s: float = 0.0
    ) -> Request | None:
        """`RespConnection.send` on the current connection; with none, `callback` gets
        `NotConnected` at once (and None is returned)."""
        conn = self._conn
        if conn is None or conn.error is not None:
            self._wanted()
            callback(NotConnected(f"not connected: {self.last_error or 'connecting'}"))
            return None
        return conn.send(data, callback, priority, timeout_s)

    async def execute(self, *args: bytes, priority: int = URGENT, timeout_s: float = 0.0) -> Reply:
        """`RespConnection.execute` on the current connection (`NotConnected` if none)."""
        conn = self._conn
        if conn is None or conn.error is not None:
            self._wanted()
            raise NotConnected(f"not connected: {self.last_error or 'connecting'}")
        return await conn.execute(*args, priority=priority, timeout_s=timeout_s)

    async def try_now(self, timeout_s: float) -> None:
        """If not connected: cut the backoff short and wait up to `timeout_s` for that
        attempt to end (health checks see a node that came back, or why it cannot)."""
        if self.connected or self._keeper is None:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._watchers.append(waiter)
        self._wanted()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await waiter

    def _wanted(self) -> None:
        """A call found no connection: end the backoff early (at most every 50 ms)."""
        backoff = self._backoff
        if (
            backoff is not None
            and not backoff.done()
            and time.monotonic() - self._attempted >= MIN_BACKOFF_S
        ):
            backoff.set_result(None)

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if a call wants the connection."""
        loop = asyncio.get_running_loop()
        self._backoff = loop.create_future()
        timer = loop.call_later(seconds, _settle, self._backoff)
        try:
            await self._backoff
        finally:
            timer.cancel()
            self._backoff = None

    async def _keep(self) -> None:
        delay = MIN_BACKOFF_S
        while True:
            self._attempted = time.monotonic()
            try:
                conn = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                text = str(exc) or type(exc).__name__
                if text != self.last_error:
                    log.debug("node %s: cannot connect: %s", self.name, text)
                self.last_error = text
                self._started(exc)
                self._attempt_ended()
            else:
                delay = MIN_BACKOFF_S
                self._conn = conn
                self.last_error = ""
                self._started(None)
                self._attempt_ended()
                await conn.closed
                self.last_error = str(conn.error)
                log.info("node %s: %s; reconnecting", self.name, self.last_error)
            await self._pause(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, MAX_BACKOFF_S)

    def _attempt_ended(self) -> None:
        watchers, self._watchers = self._watchers, []
        for waiter in watchers:
            if not waiter.done():
                waiter.set_result(None)

    def _started(self, error: BaseException | None) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_result(error)

    async def _connect(self) -> RespConnection:
        loop = asyncio.get_running_loop()
        conn = RespConnection(
            self.timeout_s, self.queue_timeout_s, self.window, self.on_message, self.name
        )
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await loop.create_connection(
                    lambda: conn,
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=(self.server_hostname or self.host) if self.ssl else None,
                )
            control = max(self.timeout_s, 1.0)
            if self.resp3:
                hello = [b"HELLO", b"3"]
                if self.password is not None:
                    user = (self.username or "default").encode()
                    hello += [b"AUTH", user, self.password.encode()]
                await conn.execute(*hello, timeout_s=control)
            elif self.password is not None:
                auth = [b"AUTH", self.password.encode()]
                if self.username is not None:
                    auth.insert(1, self.username.encode())
                await conn.execute(*auth, timeout_s=control)
            subscribed: set[bytes] = set()
            # Until none is missing: `channels` may grow while we wait (listen_events).
            while missing := [c for c in self.channels if c not in subscribed]:
                for channel in missing:
                    await conn.execute(b"SUBSCRIBE", channel, timeout_s=control)
                    subscribed.add(channel)
            if self.on_connect is not None:
                await self.on_connect(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self, drain_s: float = 0.0) -> None:
        """Stop reconnecting; give pending requests up to `drain_s` to finish; close."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        conn = self._conn
        if conn is not None:
            until = time.monotonic() + drain_s
            while conn.pending() and conn.error is None and time.monotonic() < until:
                await asyncio.sleep(0.005)
            conn.close()
        self._started(NotConnected("closed"))
