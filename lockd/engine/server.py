"""asyncio RESP2 server in front of one engine (`lockd engine`).

Pipelined commands are answered in order; replies wait for the engine's commit (one
write per event-loop turn for all connections). Under `appendfsync always` the fsync
runs in a thread (`lockd.engine.group`) while the loop keeps serving: the replies of
every command received meanwhile wait for the next batch, whose one fsync covers them
all (group commit). A write whose commit failed is answered with the MISCONF error
instead of its reply: no +OK for a write that is not durable. A malformed frame
gets `-ERR Protocol error: ...` and only that connection is closed. Per-connection
limits bound memory: query buffer, bulk length, and the output buffer of a subscriber
that does not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
import time
from collections.abc import Callable

from lockd.engine import Engine, EngineConfig
from lockd.engine.group import GroupCommit
from lockd.resp.protocol import ProtocolError, RequestParser, encode
from lockd.resp.replies import OK, CommandError, Push, Status
from lockd.serving import is_loopback, run_until_signal

__all__ = ["RespServer", "ServerLimits"]

log = logging.getLogger("lockd.resp")

CRON_INTERVAL = 0.1
Outgoing = tuple["Connection", bytes | list[bytes], list[int] | None]
"""Replies waiting for a commit: connection, replies, indexes of those that wrote."""
_Link = Callable[[bytes, bool], None]  # (un)subscribe one channel or pattern on the engine
_SUBSCRIBED_ALLOWED = {
    b"subscribe",
    b"unsubscribe",
    b"psubscribe",
    b"punsubscribe",
    b"ping",
    b"quit",
    b"reset",
}


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """Bounds on what clients may make the engine hold (Redis's client-query-buffer-limit,
    maxmemory-clients, timeout and tcp-keepalive are the model)."""

    max_bulk: int = 16 << 20
    """Longest bulk string in a request."""
    query_buffer: int = 64 << 20
    """Bytes one connection may have buffered for incomplete commands."""
    output_buffer: int = 32 << 20
    """Bytes a connection that does not read may have queued (subscribers)."""
    total_query_buffer: int = 128 << 20
    """Bytes all connections together may buffer for incomplete commands; past it, the
    connections holding the most are closed until the total is back under."""
    idle_timeout_s: float = 300.0
    """Close a connection silent this long (0: never); subscribers are exempt."""
    keepalive_s: int = 60
    """TCP keepalive probes after this much silence (0: off), so dead peers are noticed."""


class RespServer:
    """Serves one engine over TCP; `start()` binds, `stop()` closes cleanly."""

    def __init__(
        self,
        engine: Engine,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: ServerLimits | None = None,
    ) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self.limits = limits or ServerLimits()
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._cron: asyncio.Task[None] | None = None
        self._outbox: list[Outgoing] = []
        self._flush_scheduled = False
        self.protocol_errors = 0
        self.query_buffered = 0
        """Bytes buffered for incomplete commands, over every connection."""
        self.evicted = 0
        """Connections closed for the total query-buffer bound."""
        self._last_idle_check = 0.0
        engine.settle_calls = False  # we commit once per loop turn, before replying
        aof = engine.aof
        self.group = GroupCommit([engine]) if aof is not None and aof.always else None
        """Under `always`: fsyncs off the event loop, one per batch of replies."""
        self._committing = False  # a batch of replies waits for its fsync

    async def start(self) -> int:
        """Listen; returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self),
            self.host,
            self.port,
            reuse_address=True,
            ssl=tls_context(self.engine.config),
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._cron = asyncio.create_task(self._run_cron())
        return self.port

    async def stop(self) -> None:
        """Stop accepting, answer what was received, close connections, close the engine."""
        if self._server is not None:
            self._server.close()
        if self._cron is not None:
            self._cron.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cron
        if self.group is not None:
            await self.group.drain()
        self.flush(at_once=True)
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
        self.engine.close()

    async def _run_cron(self) -> None:
        while True:
            await asyncio.sleep(CRON_INTERVAL)
            try:
                self.engine.cron()
                self.flush()
                self._close_idle()
            except Exception:  # a failing duty must not stop expiry or fsync for good
                log.exception("engine cron failed")

    def _close_idle(self) -> None:
        """Once a second: close connections silent for longer than the idle timeout."""
        timeout = self.limits.idle_timeout_s
        now = time.monotonic()
        if not timeout or now - self._last_idle_check < 1.0:
            return
        self._last_idle_check = now
        idle = [c for c in self.connections if not c.subscribed and now - c.last_active > timeout]
        for conn in idle:
            conn.close()
        if idle:
            log.info("closed %d connection(s) idle for over %.0f s", len(idle), timeout)

    def account(self, conn: Connection, buffered: int) -> None:
        """`conn` now buffers `buffered` bytes of incomplete commands; past the total bound,
        close the connections that hold the most until the total is back under it."""
        self.query_buffered += buffered - conn.buffered
        conn.buffered = buffered
        if self.query_buffered <= self.limits.total_query_buffer:
            return
        closed = 0
        for victim in sorted(self.connections, key=lambda c: c.buffered, reverse=True):
            if self.query_buffered <= self.limits.total_query_buffer or not victim.buffered:
                break
            victim.evict()
            closed += 1
        self.evicted += closed
        log.warning(
            "closed %d connection(s) holding the most unfinished input: clients together "
            "buffered more than %d bytes (total query buffer limit)",
            closed,
            self.limits.total_query_buffer,
        )

    def send_after_commit(
        self, conn: Connection, data: bytes | list[bytes], writes: list[int] | None = None
    ) -> None:
        """Write replies once the engine committed. Replies that follow a write wait for
        the end of this event-loop turn, so one AOF write (and one fsync under `always`)
        covers every connection's commands (group commit); read-only replies go at once.
        `writes` indexes the replies (in a list `data`) of commands that wrote: if the
        commit fails they are replaced by the MISCONF error."""
        if not self.engine.commit_pending and not self._outbox and not self._committing:
            self.engine.commit()
            conn.write(data if isinstance(data, bytes) else b"".join(data))
            return
        self._outbox.append((conn, data, writes))
        if not self._flush_scheduled and not self._committing:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self, at_once: bool = False) -> None:
        """Commit the engine, then write every queued reply (writes that did not become
        durable get the MISCONF error). Under `always` (unless `at_once`) the replies
        wait for a group-commit batch instead, and the next batch starts when it ends."""
        self._flush_scheduled = False
        group = self.group
        if group is not None and not at_once:
            if not self._committing and (self._outbox or self.engine.commit_pending):
                self._committing = True
                outbox, self._outbox = self._outbox, []
                group.durable().add_done_callback(lambda done: self._committed(outbox, done))
            return
        self._reply(self._outbox, self.engine.commit() and self.engine.disk_error is None)
        self._outbox = []

    def _committed(self, outbox: list[Outgoing], done: asyncio.Future[tuple[bool, ...]]) -> None:
        """A batch's fsync ended: answer its replies, start the next batch."""
        self._committing = False
        durable = not done.cancelled() and done.exception() is None and done.result()[0]
        self._reply(outbox, durable)
        if self._outbox:
            self.flush()

    def _reply(self, outbox: list[Outgoing], durable: bool) -> None:
        if not outbox:
            return
        error = None if durable else encode(self.engine.misconf())
        for conn, data, writes in outbox:
            if isinstance(data, list):
                if writes and error is not None:
                    for i in writes:
                        data[i] = error
                data = b"".join(data)
            conn.write(data)


class Connection(asyncio.Protocol):
    """One client: parses requests, runs them, tracks its subscriptions."""

    def __init__(self, server: RespServer) -> None:
        self.server = server
        self.engine = server.engine
        self.parser = RequestParser(server.limits.max_bulk)
        self.transport: asyncio.Transport | None = None
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        self.resp3 = False
        self._closing = False
        self.buffered = 0
        """Bytes of incomplete commands held (as last accounted to the server)."""
        self.authenticated = server.engine.config.password is None
        self.last_active = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20)
        self.server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and self.server.limits.keepalive_s:
            _keepalive(sock, self.server.limits.keepalive_s)

    def evict(self) -> None:
        """Drop this connection and what it buffered (the total query-buffer bound)."""
        self.server.query_buffered -= self.buffered
        self.buffered = 0
        self.parser = RequestParser(self.server.limits.max_bulk)
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.account(self, 0)
        self.server.connections.discard(self)
        for channel in self.channels:
            self.engine.unsubscribe(channel, self.deliver)
        self.channels.clear()
        for pattern in self.patterns:
            self.engine.punsubscribe(pattern, self.deliver_pattern)
        self.patterns.clear()
        self._closing = True

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self._closing:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self.last_active = time.monotonic()
        self.parser.feed(data)
        out: list[bytes] = []
        aof = self.engine.aof
        appended = aof.durable_appends if aof is not None else 0
        writes: list[int] | None = None
        try:
            while (args := self.parser.next_command()) is not None:
                reply = self.run(args)
                if aof is not None and aof.durable_appends != appended:
                    appended = aof.durable_appends
                    if writes is None:
                        writes = []
                    writes.append(len(out))
                out.append(reply)
                if self._closing:
                    break
        except ProtocolError as exc:
            self.server.protocol_errors += 1
            out.append(encode(CommandError(str(exc))))
            self._closing = True
        buffered = self.parser.buffered()
        if not self._closing and buffered > self.server.limits.query_buffer:
            out.append(encode(CommandError("ERR Protocol error: query buffer limit exceeded")))
            self._closing = True
        self.server.account(self, 0 if self._closing else buffered)
        if out:
            self.server.send_after_commit(self, out if writes else b"".join(out), writes)
        if self._closing:
            self.server.send_after_commit(self, b"")

    def run(self, args: list[bytes]) -> bytes:
        """One command's encoded reply; connection-level commands (authentication, pub/sub,
        QUIT) are here."""
        name = args[0].lower()
        if not self.authenticated:
            return self._unauthenticated(name, args)
        # Like Redis, a subscribed connection is restricted only in RESP2 (RESP3 has pushes).
        if self.subscribed and not self.resp3 and name not in _SUBSCRIBED_ALLOWED:
            return encode(
                CommandError(
                    f"ERR Can't execute '{name.decode(errors='replace')}': only (P|S)SUBSCRIBE"
                    " / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
                )
            )
        if name == b"subscribe":
            if len(args) < 2:
                return encode(CommandError("ERR wrong number of arguments for 'subscribe' command"))
            return self._subscribe(args[1:])
        if name == b"unsubscribe":
            return self._unsubscribe(args[1:])
        if name == b"psubscribe":
            if len(args) < 2:
                return encode(
                    CommandError("ERR wrong number of arguments for 'psubscribe' command")
                )
            return self._psubscribe(args[1:])
        if name == b"punsubscribe":
            return self._punsubscribe(args[1:])
        if name == b"ping" and self.subscribed and not self.resp3 and len(args) <= 2:
            return encode([b"pong", args[1] if len(args) == 2 else b""])
        if name == b"quit":
            self._closing = True
            return encode(OK)
        if name == b"reset" and len(args) == 1:
            self._unsubscribe([])
            self._punsubscribe([])
            self.resp3 = False
            return encode(Status("RESET"))
        reply = self.engine.execute(args)
        if name == b"hello" and isinstance(reply, dict):
            self.resp3 = reply[b"proto"] == 3
        return encode(reply, self.resp3)

    def _unauthenticated(self, name: bytes, args: list[bytes]) -> bytes:
        """Before AUTH only AUTH, HELLO ... AUTH and QUIT run (Redis's requirepass)."""
        if name == b"quit":
            self._closing = True
            return encode(OK)
        hello_auth = name == b"hello" and any(a.lower() == b"auth" for a in args[2:3])
        if name == b"auth" or hello_auth:
            reply = self.engine.execute(args)
            if not isinstance(reply, CommandError):
                self.authenticated = True
                if hello_auth and isinstance(reply, dict):
                    self.resp3 = reply[b"proto"] == 3
            return encode(reply, self.resp3)
        if name == b"hello":
            return encode(
                CommandError(
                    "NOAUTH HELLO must be called with the client already authenticated, "
                    "otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
                    "authenticate the client and select the RESP protocol version at the "
                    "same time"
                )
            )
        return encode(CommandError("NOAUTH Authentication required."))

    @property
    def subscribed(self) -> int:
        """Channels and patterns this connection is subscribed to (Redis's count)."""
        return len(self.channels) + len(self.patterns)

    def _subscribe(self, channels: list[bytes]) -> bytes:
        return self._join(b"subscribe", channels, self.channels, self._channel_link)

    def _unsubscribe(self, channels: list[bytes]) -> bytes:
        return self._leave(b"unsubscribe", channels, self.channels, self._channel_link)

    def _psubscribe(self, patterns: list[bytes]) -> bytes:
        return self._join(b"psubscribe", patterns, self.patterns, self._pattern_link)

    def _punsubscribe(self, patterns: list[bytes]) -> bytes:
        return self._leave(b"punsubscribe", patterns, self.patterns, self._pattern_link)

    def _channel_link(self, channel: bytes, on: bool) -> None:
        if on:
            self.engine.subscribe(channel, self.deliver)
        else:
            self.engine.unsubscribe(channel, self.deliver)

    def _pattern_link(self, pattern: bytes, on: bool) -> None:
        if on:
            self.engine.psubscribe(pattern, self.deliver_pattern)
        else:
            self.engine.punsubscribe(pattern, self.deliver_pattern)

    def _join(self, kind: bytes, names: list[bytes], mine: set[bytes], link: _Link) -> bytes:
        """(P)SUBSCRIBE: one confirmation per name, with the connection's count."""
        replies: list[bytes] = []
        for name in names:
            if name not in mine:
                mine.add(name)
                link(name, True)
            replies.append(encode(Push([kind, name, self.subscribed]), self.resp3))
        return b"".join(replies)

    def _leave(self, kind: bytes, names: list[bytes], mine: set[bytes], link: _Link) -> bytes:
        """(P)UNSUBSCRIBE the names given, or all; one confirmation each."""
        targets = names or sorted(mine)
        if not targets:
            return encode(Push([kind, None, self.subscribed]), self.resp3)
        replies: list[bytes] = []
        for name in targets:
            if name in mine:
                mine.discard(name)
                link(name, False)
            replies.append(encode(Push([kind, name, self.subscribed]), self.resp3))
        return b"".join(replies)

    def deliver(self, channel: bytes, message: bytes) -> None:
        """A published message for one of our channels (after the replies queued before it)."""
        data = encode(Push([b"message", channel, message]), self.resp3)
        self.server.send_after_commit(self, data)

    def deliver_pattern(self, pattern: bytes, channel: bytes, message: bytes) -> None:
        """A published message on a channel one of our patterns matches."""
        data = encode(Push([b"pmessage", pattern, channel, message]), self.resp3)
        self.server.send_after_commit(self, data)

    def write(self, data: bytes) -> None:
        """Write now, closing the connection if its output buffer is over the limit. The empty
        write queued after a closing connection's last reply closes it (and drops what follows:
        messages published after QUIT, as in Redis)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not data:
            if self._closing:
                transport.close()
            return
        transport.write(data)
        if (
            not self._closing
            and transport.get_write_buffer_size() > self.server.limits.output_buffer
        ):
            log.warning("closing a client whose output buffer exceeded the limit")
            self._closing = True
            transport.abort()

    def close(self) -> None:
        """Close after pending writes."""
        self._closing = True
        if self.transport is not None:
            self.transport.close()


def tls_context(config: EngineConfig) -> ssl.SSLContext | None:
    """The server-side TLS context `config` asks for (client certificates required when
    it names a client CA), or None for plain TCP."""
    if config.tls_cert is None and config.tls_key is None:
        if config.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_client_ca is not None:
        context.load_verify_locations(config.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _keepalive(sock: socket.socket, idle_s: int) -> None:
    """TCP keepalive: probe after `idle_s` of silence, every idle_s/3, give up after 3."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle_s // 3))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


async def serve(
    engine: Engine,
    host: str,
    port: int,
    limits: ServerLimits | None = None,
) -> None:
    """Serve `engine` until SIGTERM or SIGINT, then stop gracefully (clean engine shutdown)."""
    server = RespServer(engine, host, port, limits)

    async def start() -> None:
        bound = await server.start()
        log.info("lockd engine listening on %s:%d", host, bound)

    await run_until_signal(start, server.stop, "lockd engine")


async def run(config: EngineConfig, limits: ServerLimits | None = None) -> None:
    """`lockd engine`: open the node `config` describes and serve it until a signal."""
    missing = [
        what
        for what, absent in (
            ("no password (--password-file)", config.password is None),
            ("no TLS (--tls-cert, --tls-key)", config.tls_cert is None),
        )
        if absent
    ]
    if missing and not is_loopback(config.host):
        log.warning(
            "lockd engine listens on %s:%d with %s: anyone who can reach it can %s",
            config.host,
            config.port,
            " and ".join(missing),
            "delete locks and rewrite fencing counters"
            if config.password is None
            else "read lease ids and passwords on the wire",
        )
    if config.unsafe_wall_clock:
        log.warning("UNSAFE: TTLs are measured on the wall clock; a clock step expires locks early")
    await serve(Engine(config), config.host, config.port, limits)
