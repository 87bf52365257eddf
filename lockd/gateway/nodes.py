"""Node transports: how the gateway reaches one engine node.

`EmbeddedNode` calls an in-process `Engine` directly. `RespNode` speaks RESP through
`lockd.gateway.resp_client` (one pipelined connection per node, lockd's own codec) to a
`lockd engine` process or to a real Redis 7+ / Valkey server (with lockd's Lua library
loaded and its settings checked on every connect). Both turn every answer into a core
`NodeReply`; a call never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import math
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from lockd.core import (
    EVENTS_CHANNEL,
    AcquireCall,
    AcquireReply,
    Call,
    ExtendCall,
    FenceCall,
    FenceReply,
    NodeFailure,
    NodeReply,
    ReleaseCall,
    fence_key,
    lock_key,
)
from lockd.core.quorum import restart_delay_ms
from lockd.engine import RELEASE_CHANNEL, Engine
from lockd.engine.group import GroupCommit
from lockd.gateway.resp_client import (
    BULK,
    NORMAL,
    URGENT,
    Request,
    RequestTimeout,
    RespClient,
    RespConnection,
    TransportError,
)
from lockd.resp.protocol import encode_command
from lockd.resp.replies import CommandError
from lockd.resp.replies import Reply as RespReply

__all__ = [
    "EmbeddedNode",
    "FailedNode",
    "LockView",
    "Mode",
    "Node",
    "NodeError",
    "NodeHealth",
    "RawReply",
    "RespNode",
    "UnsafeNodeError",
    "UnusableNodeError",
    "lua_library",
    "redis_settings_args",
]

log = logging.getLogger("lockd.gateway")

_RESTART = re.compile(r"RESTARTDELAY (\d+) ms")
_LUA_DELAY = re.compile(r"^local RESTART_DELAY_MS = (\d+)$", re.MULTILINE)
_LUA_NAME = b"#!lua name=lockd"
ReleaseListener = Callable[[bytes], None]
EventListener = Callable[[bytes], None]
"""Gets each message a node publishes on `lockd:events` (see `lockd.core.NodeEvent`)."""
ReplyListener = Callable[[NodeReply], None]


class Mode(enum.Enum):
    """How a node is reached (mirrors the API's NodeMode)."""

    EMBEDDED = 1
    LOCKD_ENGINE = 2
    REDIS = 3


RawReply = int | bytes | None | list["RawReply"]
"""A node function's reply in plain values."""


class NodeError(Exception):
    """A node function call failed: an error reply, or the node could not be reached."""


def _plain(reply: object) -> RawReply:
    """A reply from the engine or the RESP client as plain values; error replies raise."""
    if isinstance(reply, CommandError):
        raise NodeError(str(reply))
    if reply is None or isinstance(reply, int | bytes):
        return reply
    if isinstance(reply, str):  # a Status (simple string)
        return reply.encode()
    if isinstance(reply, list | tuple):
        return [_plain(item) for item in reply]
    raise NodeError(f"unexpected reply {reply!r}")


class UnsafeNodeError(Exception):
    """A node's settings would break lockd's guarantees; the message names the setting."""


class UnusableNodeError(Exception):
    """A node answers but cannot serve lock calls (lockd's Lua library cannot be loaded)."""


@dataclasses.dataclass(frozen=True, slots=True)
class NodeHealth:
    """A node's health as last measured."""

    address: str
    mode: Mode
    reachable: bool
    latency_ms: float = 0.0
    restart_delay_ms: int = 0
    restart_reason: str = ""
    run_id: str = ""
    error: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class LockView:
    """One node's view of a lock: remaining TTL (-2 absent) and fencing counter."""

    pttl_ms: int
    counter: int


REDIS_SETTINGS = {"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction"}
"""The real-Redis settings lockd requires (checked on every connect and while running)."""


def redis_settings_args() -> list[str]:
    """`REDIS_SETTINGS` as redis-server command-line flags."""
    return [arg for name, value in REDIS_SETTINGS.items() for arg in (f"--{name}", value)]


def lua_library(restart_delay_ms: int = 0) -> str:
    """lockd's Lua function library for real Redis / Valkey. With `restart_delay_ms`,
    its `lockd_acquire` refuses (RESTARTDELAY) until the server process has been up that
    long; 0 leaves the guard off (a library loaded by hand)."""
    text = resources.files("lockd.engine").joinpath("lua/lockd.lua").read_text()
    out, count = _LUA_DELAY.subn(f"local RESTART_DELAY_MS = {restart_delay_ms}", text)
    if count != 1:
        raise RuntimeError("lockd.lua must set RESTART_DELAY_MS exactly once")
    return out


def _loaded_library(reply: RespReply) -> bytes | None:
    """lockd's library code in a `FUNCTION LIST ... WITHCODE` reply, or None."""
    if isinstance(reply, bytes):
        return reply if reply.startswith(_LUA_NAME) else None
    items: list[RespReply] = []
    if isinstance(reply, dict):
        items = [*reply.keys(), *reply.values()]
    elif isinstance(reply, list):
        items = reply
    for item in items:
        found = _loaded_library(item)
        if found is not None:
            return found
    return None


def _failure(exc: BaseException) -> NodeFailure:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, RequestTimeout):
        return NodeFailure(text, timed_out=True)
    m = _RESTART.match(text)
    return NodeFailure(text, int(m.group(1)) if m else None)


class Node:
    """Interface of a node transport."""

    address: str
    mode: Mode
    synchronous = False
    """True if `call_now` answers without I/O (the driver then skips tasks)."""

    async def start(self, on_release: ReleaseListener) -> None:
        """Connect, check the node is safe to use, and listen for release notifications."""

    async def close(self) -> None:
        """Disconnect (an embedded node also shuts its engine down cleanly)."""

    async def listen_events(self, listener: EventListener) -> None:
        """From now on, give `listener` the node's lock events (`lockd:events`), also
        across reconnects; a node that is down now is subscribed when it comes back."""

    def call_now(self, call: Call) -> NodeReply:
        """Answer `call` synchronously (only when `synchronous`); the caller must
        `commit()` before anyone is told of the outcome."""
        raise NotImplementedError

    def commit(self) -> None:
        """Make answered calls as durable as the node's fsync policy promises."""

    async def call(self, call: Call) -> NodeReply:
        """Send one lock-function call; failures come back as `NodeFailure`."""
        raise NotImplementedError

    def send(self, call: Call, timeout_s: float, done: ReplyListener) -> Request | None:
        """Send one call without waiting (only when not `synchronous`): `done` gets the
        reply, or a `NodeFailure` if none came within `timeout_s` of the request being
        written; cancelling the returned request drops it if it was not written yet."""
        raise NotImplementedError

    async def view(self, name: bytes) -> LockView:
        """The node's view of lock `name` (raises on failure)."""
        raise NotImplementedError

    async def fcall(self, function: bytes, keys: list[bytes], args: list[bytes]) -> RawReply:
        """Call one of lockd's node functions (`lockd_list`, `lockd_peek`, ...) and return
        its reply as bytes, ints, None and lists; raises `NodeError` on an error reply or
        a transport failure. Mutations are committed before it returns."""
        raise NotImplementedError

    async def info(self) -> NodeHealth:
        """PING and read the node's restart state."""
        raise NotImplementedError


class EmbeddedNode(Node):
    """An engine in this process: calls are plain method calls.

    With a `group` (engines under `appendfsync always`), answers are not durable when
    `call_now` returns: the caller awaits `group.durable()` and counts an answer only
    if the entry at `slot` is True (`settled`); `call` and `fcall` do that themselves."""

    synchronous = True

    def __init__(
        self, engine: Engine, index: int, group: GroupCommit | None = None, slot: int = 0
    ) -> None:
        self.engine = engine
        self.address = f"embedded:{index}"
        self.mode = Mode.EMBEDDED
        self.group = group
        self.slot = slot
        self._on_release: ReleaseListener | None = None
        self._on_event: EventListener | None = None
        self._cron: asyncio.Task[None] | None = None

    async def start(self, on_release: ReleaseListener) -> None:
        self._on_release = on_release
        self.engine.subscribe(RELEASE_CHANNEL, self._released)
        self._cron = asyncio.create_task(self._run_cron())

    def _released(self, channel: bytes, message: bytes) -> None:
        if self._on_release is not None:
            self._on_release(message)

    async def listen_events(self, listener: EventListener) -> None:
        if self._on_event is None:
            self.engine.subscribe(EVENTS_CHANNEL, self._event)
        self._on_event = listener

    def _event(self, channel: bytes, message: bytes) -> None:
        # Called inside the engine's lock function: a listener's failure must not fail it.
        if self._on_event is not None:
            try:
                self._on_event(message)
            except Exception:
                log.exception("engine %s: event listener failed", self.address)

    async def _run_cron(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            try:
                self.engine.cron()
            except Exception:
                log.exception("engine %s: cron failed", self.address)

    async def close(self) -> None:
        if self._cron is not None:
            self._cron.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cron
        if self.group is not None:
            await self.group.drain()
        self.engine.unsubscribe(RELEASE_CHANNEL, self._released)
        self.engine.unsubscribe(EVENTS_CHANNEL, self._event)
        self.engine.close()

    def call_now(self, call: Call) -> NodeReply:
        engine = self.engine
        try:
            if isinstance(call, AcquireCall):
                got, counter = engine.lock_acquire(
                    call.lock_key, call.fence_key, call.lease, b"%d" % call.ttl_ms, call.meta
                )
                reply: NodeReply = AcquireReply(got == 1, counter)
            elif isinstance(call, ReleaseCall):
                reply = engine.lock_release(call.lock_key, call.lease) == 1
            elif isinstance(call, ExtendCall):
                reply = (
                    engine.lock_extend(call.lock_key, call.lease, b"%d" % call.ttl_ms, call.meta)
                    == 1
                )
            else:
                accepted, counter = engine.fence_advance(call.fence_key, b"%d" % call.token)
                reply = FenceReply(accepted == 1, counter)
        except (CommandError, OSError) as exc:
            return _failure(exc)
        return reply

    def commit(self) -> None:
        self.engine.commit()

    def settled(self, reply: NodeReply, durable: tuple[bool, ...]) -> NodeReply:
        """`reply` as it may be counted once the group commit answered `durable`: the
        MISCONF failure instead when this engine's writes did not become durable."""
        if durable[self.slot] or isinstance(reply, NodeFailure):
            return reply
        return NodeFailure(str(self.engine.misconf()))

    async def call(self, call: Call) -> NodeReply:
        reply = self.call_now(call)
        if self.group is not None:
            return self.settled(reply, await self.group.durable())
        self.engine.commit()
        return reply

    async def view(self, name: bytes) -> LockView:
        return LockView(*self.engine.lock_describe(lock_key(name), fence_key(name)))

    async def fcall(self, function: bytes, keys: list[bytes], args: list[bytes]) -> RawReply:
        engine = self.engine
        reply = engine.execute([b"FCALL", function, b"%d" % len(keys), *keys, *args])
        if self.group is not None:
            durable = (await self.group.durable())[self.slot]
        else:
            durable = engine.commit()
        if not durable:
            raise NodeError(str(engine.misconf()))
        return _plain(reply)

    async def info(self) -> NodeHealth:
        e = self.engine
        left = e.restart_delay_remaining_ms()
        reason = e.restart_reason if left else ""
        if e.disk_error is not None:  # answers, but refuses writes: down for the quorum
            return NodeHealth(
                self.address, self.mode, False, 0.0, left, reason, e.run_id, str(e.misconf())
            )
        return NodeHealth(self.address, self.mode, True, 0.0, left, reason, e.run_id)


def _info(text: RespReply) -> dict[str, str]:
    """INFO's `key:value` lines as a dict."""
    if not isinstance(text, bytes):
        raise CommandError(f"ERR unexpected INFO reply {text!r}")
    out: dict[str, str] = {}
    for line in text.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            out[key] = value.strip()
    return out


def _config(reply: RespReply) -> dict[str, str]:
    """CONFIG GET's reply (a flat array in RESP2, a map in RESP3) as a dict."""
    items: list[tuple[RespReply, RespReply]]
    if isinstance(reply, dict):
        items = list(reply.items())
    elif isinstance(reply, list):
        items = list(zip(reply[::2], reply[1::2], strict=True))
    else:
        raise CommandError(f"ERR unexpected CONFIG GET reply {reply!r}")
    return {
        k.decode(): v.decode() if isinstance(v, bytes) else str(v)
        for k, v in items
        if isinstance(k, bytes)
    }


def _pair(reply: RespReply | TransportError) -> tuple[bool, int] | NodeFailure:
    """The `{flag, counter}` reply of lockd_acquire and lockd_fence_advance."""
    if isinstance(reply, list) and len(reply) == 2:
        flag, counter = reply
        if isinstance(flag, int) and isinstance(counter, int):
            return flag == 1, counter
    return _unexpected(reply)


def _flag(reply: RespReply | TransportError) -> NodeReply:
    """The `1 | 0` reply of lockd_release and lockd_extend."""
    if isinstance(reply, int):
        return reply == 1
    return _unexpected(reply)


def _unexpected(reply: RespReply | TransportError) -> NodeFailure:
    if isinstance(reply, TransportError | CommandError):
        return _failure(reply)
    return NodeFailure(f"unexpected reply from the node: {reply!r:.80}")


def redact(url: str) -> str:
    """A node URL fit to show: the password replaced by ***, options left out."""
    parts = urlsplit(url)
    if parts.password is None:
        return urlunsplit(parts._replace(query=""))
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc, query=""))


_TLS_OPTIONS = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"}


def _tls_from_query(query: str, shown: str) -> ssl.SSLContext:
    """The client TLS context a rediss:// URL asks for: ssl_ca_certs (CA bundle),
    ssl_certfile/ssl_keyfile (client certificate), ssl_cert_reqs=none (no checks: warned)."""
    options = dict(parse_qsl(query))
    unknown = set(options) - _TLS_OPTIONS
    if unknown:
        raise ValueError(f"node URL {shown!r}: unknown option(s) {', '.join(sorted(unknown))}")
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if "ssl_certfile" in options:
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    reqs = options.get("ssl_cert_reqs", "required").lower()
    if reqs == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        log.warning(
            "INSECURE: node %s is reached over TLS WITHOUT checking its certificate "
            "(ssl_cert_reqs=none): anyone on the path can impersonate it and read the "
            "password; give ssl_ca_certs instead",
            shown,
        )
    elif reqs != "required":
        raise ValueError(f"node URL {shown!r}: ssl_cert_reqs must be required or none")
    return context


class RespNode(Node):
    """A node over RESP: a `lockd engine`, or real Redis / Valkey (Lua library).

    Calls go through one pipelined connection (`RespClient`); release notifications
    through a second one, subscribed to `lockd:released`. Every (re)connect checks the
    node before any call uses it: a node with unsafe settings is refused, Redis gets
    lockd's Lua library (with the restart guard: `lua_library`), and its run id is
    noted. While connected, a Redis node's settings and library are checked again every
    `check_interval_s` (and at once when a call found the library missing): a node that
    drifted into an unsafe setting is dropped and stays unusable, the reason logged once
    and shown by `info()`, until a reconnect finds it safe again. The gateway also
    enforces the delayed restart itself: a node whose run id changed, or whose uptime is
    below max-TTL + drift, is treated as restarting. `username`, `password` and
    `ssl_context` apply to both connections (`rediss://` without a context uses the
    system's CAs).
    """

    def __init__(
        self,
        url: str,
        max_ttl_ms: int,
        timeout_s: float = 1.0,
        *,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        resp3: bool = False,
        check_interval_s: float = 1.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"node URL {redact(url)!r} must look like redis://host:port")
        username = username or (unquote(parts.username) if parts.username else None)
        password = password or (unquote(parts.password) if parts.password else None)
        if parts.scheme == "rediss" and ssl_context is None:
            ssl_context = _tls_from_query(parts.query, redact(url))
        elif parts.query:
            raise ValueError(f"node URL {redact(url)!r}: options need rediss://")
        self.address = redact(url)
        self.mode = Mode.LOCKD_ENGINE
        self.max_ttl_ms = max_ttl_ms
        self.timeout_s = timeout_s
        self._host = parts.hostname
        self._port = parts.port or 6379
        self._username = username
        self._password = password
        self._ssl = ssl_context
        self._resp3 = resp3
        self._client = self._new_client(on_connect=self._check)
        self._events: RespClient | None = None
        self._on_event: EventListener | None = None
        self._run_id = ""
        self._restart_until = 0.0  # time.monotonic() before which acquisitions are refused
        self._restart_reason = ""
        self._unsafe = ""  # why the node cannot be used now ("" when it can)
        self.check_interval_s = check_interval_s
        self._watcher: asyncio.Task[None] | None = None
        self._recheck = asyncio.Event()

    def _new_client(
        self,
        on_connect: Callable[[RespConnection], Awaitable[None]] | None = None,
        on_message: Callable[[bytes, bytes], None] | None = None,
    ) -> RespClient:
        return RespClient(
            self._host,
            self._port,
            username=self._username,
            password=self._password,
            ssl=self._ssl,
            resp3=self._resp3,
            timeout_s=self.timeout_s,
            channels=(RELEASE_CHANNEL,) if on_message else (),
            on_message=on_message,
            on_connect=on_connect,
            name=self.address,
        )

    async def start(self, on_release: ReleaseListener) -> None:
        def released(channel: bytes, message: bytes) -> None:
            if channel == RELEASE_CHANNEL:
                on_release(message)
            elif self._on_event is not None:
                self._on_event(message)

        self._events = self._new_client(on_message=released)
        results = await asyncio.gather(
            self._client.start(), self._events.start(), return_exceptions=True
        )
        if isinstance(results[0], UnsafeNodeError):
            raise results[0]
        self._watcher = asyncio.create_task(self._watch(), name=f"lockd check {self.address}")
        if isinstance(results[0], BaseException):
            # A minority of nodes may be down: this one is checked when it first answers.
            log.warning(
                "node %s is unreachable (%s); will check it when it answers",
                self.address,
                results[0],
            )

    async def _check(self, conn: RespConnection) -> None:
        """Refuse an unsafe node, load the Lua library into Redis, note the run id."""
        loaded = False
        try:
            info = _info(await conn.execute(b"INFO", b"server", timeout_s=self._control_s))
            if "lockd_version" in info:
                self.mode = Mode.LOCKD_ENGINE
                config = _config(
                    await conn.execute(
                        b"CONFIG", b"GET", b"lockd-max-ttl", timeout_s=self._control_s
                    )
                )
                node_max = int(config.get("lockd-max-ttl") or 0)
                if node_max < self.max_ttl_ms:
                    raise UnsafeNodeError(
                        f"{self.address}: lockd engine's --max-ttl is {node_max} ms, below "
                        f"the gateway's {self.max_ttl_ms} ms; start it with --max-ttl "
                        f"{self.max_ttl_ms}ms or more"
                    )
            else:
                self.mode = Mode.REDIS
                await self._check_redis(conn)
                loaded = await self._load_library(conn)
        except (UnsafeNodeError, UnusableNodeError) as exc:
            self._unusable(str(exc))
            raise
        self._note_run_id(info.get("run_id", ""), int(info.get("uptime_in_seconds") or 0))
        if loaded:
            log.info("node %s had no lockd library (new, or restarted empty): loaded", self.address)
        if self._unsafe:
            log.warning("node %s is usable again", self.address)
            self._unsafe = ""

    def _unusable(self, reason: str) -> None:
        """Note why the node cannot be used; log it when that changed."""
        if reason != self._unsafe:
            log.error("node %s is not usable: %s", self.address, reason)
        self._unsafe = reason

    async def _load_library(self, conn: RespConnection) -> bool:
        """Load lockd's library with this gateway's restart delay (or a larger one some
        other gateway loaded) unless that exact code is loaded; True if none was."""
        delay = restart_delay_ms(self.max_ttl_ms)
        try:
            listed = await conn.execute(
                b"FUNCTION", b"LIST", b"LIBRARYNAME", b"lockd", b"WITHCODE",
                timeout_s=self._control_s,
            )  # fmt: skip
            current = _loaded_library(listed)
            if current is not None:
                found = _LUA_DELAY.search(current.decode("utf-8", "replace"))
                delay = max(delay, int(found.group(1)) if found else 0)
            code = lua_library(delay).encode()
            if current != code:
                await conn.execute(
                    b"FUNCTION", b"LOAD", b"REPLACE", code, timeout_s=self._control_s
                )
        except CommandError as exc:
            raise UnusableNodeError(
                f"{self.address}: cannot load lockd's Lua library ({exc}), so it cannot "
                "serve lock calls; it needs Redis 7+ / Valkey and a user allowed FUNCTION "
                "and FCALL"
            ) from exc
        return current is None

    async def _watch(self) -> None:
        """Check a connected Redis node's settings and library again every check
        interval, or at once when a call found the library missing. A node that drifted
        into an unsafe setting is dropped: while the reconnect check refuses it, calls
        fail at once and it counts towards no quorum."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_interval_s):
                    await self._recheck.wait()
            self._recheck.clear()
            conn = self._client.connection
            if conn is None or self.mode is not Mode.REDIS:
                continue
            try:
                await self._check_redis(conn)
                listed = await conn.execute(
                    b"FUNCTION", b"LIST", b"LIBRARYNAME", b"lockd", timeout_s=self._control_s
                )
                if listed == [] and await self._load_library(conn):
                    log.warning(
                        "node %s lost lockd's library while connected (FUNCTION FLUSH or "
                        "DELETE?): loaded it again",
                        self.address,
                    )
            except (UnsafeNodeError, UnusableNodeError) as exc:
                self._unusable(str(exc))
                conn.abort(str(exc))
            except (TransportError, CommandError):
                continue  # a node that went away: the connection's own timeouts see to it

    @property
    def _control_s(self) -> float:
        return max(self.timeout_s, 1.0)

    async def _check_redis(self, conn: RespConnection) -> None:
        names = [name.encode() for name in REDIS_SETTINGS]
        config = _config(await conn.execute(b"CONFIG", b"GET", *names, timeout_s=self._control_s))
        policy = config.get("maxmemory-policy", "")
        if policy != "noeviction":
            raise UnsafeNodeError(
                f"{self.address}: maxmemory-policy is {policy!r}; evicting a lock or a "
                "fencing counter breaks safety. Set `maxmemory-policy noeviction`."
            )
        if config.get("appendonly") != "yes" or config.get("appendfsync") != "always":
            raise UnsafeNodeError(
                f"{self.address}: appendonly={config.get('appendonly')!r} appendfsync="
                f"{config.get('appendfsync')!r}; fencing counters could go backwards after "
                "a crash. Set `appendonly yes` and `appendfsync always`."
            )

    def _note_run_id(self, run_id: str, uptime_s: int) -> None:
        """A changed run id, or a young node, means it may have forgotten locks."""
        if self.mode is not Mode.REDIS:
            self._run_id = run_id
            return
        # Whole seconds, as the library's guard counts uptime (rounded down).
        delay_s = math.ceil(restart_delay_ms(self.max_ttl_ms) / 1000)
        if self._run_id and run_id != self._run_id:
            self._restart_until = time.monotonic() + delay_s
            self._restart_reason = "run id changed (restarted)"
            log.warning(
                "node %s restarted; refusing acquisitions on it for %d s", self.address, delay_s
            )
        elif not self._run_id and uptime_s < delay_s:
            self._restart_until = time.monotonic() + delay_s - uptime_s
            self._restart_reason = f"up for only {uptime_s} s"
        self._run_id = run_id

    def _restart_left_ms(self) -> int:
        return max(0, int((self._restart_until - time.monotonic()) * 1000))

    async def listen_events(self, listener: EventListener) -> None:
        self._on_event = listener
        events = self._events
        if events is None or EVENTS_CHANNEL in events.channels:
            return
        events.channels += (EVENTS_CHANNEL,)  # every reconnect subscribes from now on
        with contextlib.suppress(TransportError, CommandError):
            await events.execute(b"SUBSCRIBE", EVENTS_CHANNEL, timeout_s=self._control_s)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        closing = [self._client.close(drain_s=self.timeout_s)]
        if self._events is not None:
            closing.append(self._events.close())
        await asyncio.gather(*closing)

    def send(self, call: Call, timeout_s: float, done: ReplyListener) -> Request | None:
        if self.mode is Mode.REDIS:
            done = self._watching(done)
        if isinstance(call, AcquireCall):
            left = self._restart_left_ms()
            if left:
                done(NodeFailure(f"RESTARTDELAY {left} ms left: {self._restart_reason}", left))
                return None
            meta = () if call.meta is None else (call.meta,)
            data = encode_command(
                b"FCALL", b"lockd_acquire", b"2", call.lock_key, call.fence_key, call.lease,
                b"%d" % call.ttl_ms, *meta,
            )  # fmt: skip

            def acquired(reply: RespReply | TransportError) -> None:
                pair = _pair(reply)
                done(AcquireReply(*pair) if isinstance(pair, tuple) else pair)

            return self._client.send(data, acquired, BULK, timeout_s)
        if isinstance(call, FenceCall):
            data = encode_command(
                b"FCALL", b"lockd_fence_advance", b"1", call.fence_key, b"%d" % call.token
            )

            def fenced(reply: RespReply | TransportError) -> None:
                pair = _pair(reply)
                done(FenceReply(*pair) if isinstance(pair, tuple) else pair)

            return self._client.send(data, fenced, NORMAL, timeout_s)
        if isinstance(call, ReleaseCall):
            data = encode_command(b"FCALL", b"lockd_release", b"1", call.lock_key, call.lease)
        else:
            args = [call.lock_key, call.lease, b"%d" % call.ttl_ms]
            if call.meta is not None:
                args.append(call.meta)
            data = encode_command(b"FCALL", b"lockd_extend", b"1", *args)

        def flagged(reply: RespReply | TransportError) -> None:
            done(_flag(reply))

        return self._client.send(data, flagged, URGENT, timeout_s)

    def _watching(self, done: ReplyListener) -> ReplyListener:
        """`done`, after asking for a check at once if the node lost lockd's library."""

        def checked(reply: NodeReply) -> None:
            if isinstance(reply, NodeFailure) and "function not found" in reply.message.lower():
                self._recheck.set()
            done(reply)

        return checked

    async def call(self, call: Call) -> NodeReply:
        future: asyncio.Future[NodeReply] = asyncio.get_running_loop().create_future()

        def done(reply: NodeReply) -> None:
            if not future.done():
                future.set_result(reply)

        request = self.send(call, self.timeout_s, done)
        try:
            return await future
        finally:
            if request is not None:
                request.cancel()

    async def view(self, name: bytes) -> LockView:
        # lockd_describe, not GET: a `lockd engine` reports its counters above the fence
        # floor it restarted with, as the embedded engine does.
        reply = await self._client.execute(
            b"FCALL", b"lockd_describe", b"2", lock_key(name), fence_key(name)
        )
        match reply:
            case [int(pttl), int(counter)]:
                return LockView(pttl, counter)
        raise CommandError(f"ERR unexpected reply to lockd_describe: {reply!r}")

    async def fcall(self, function: bytes, keys: list[bytes], args: list[bytes]) -> RawReply:
        try:
            reply = await self._client.execute(
                b"FCALL", function, b"%d" % len(keys), *keys, *args, priority=NORMAL
            )
        except (TransportError, CommandError) as exc:
            raise NodeError(str(exc) or type(exc).__name__) from exc
        return _plain(reply)

    async def info(self) -> NodeHealth:
        await self._client.try_now(self.timeout_s)
        if not self._client.connected:
            error = f"not usable: {self._unsafe}" if self._unsafe else ""
            error = error or self._client.last_error or "not connected yet"
            return NodeHealth(self.address, self.mode, False, error=error)
        try:
            start = time.perf_counter()
            await self._client.execute(b"PING", timeout_s=self._control_s)
            latency = (time.perf_counter() - start) * 1000
            section = b"lockd" if self.mode is Mode.LOCKD_ENGINE else b"server"
            info = _info(await self._client.execute(b"INFO", section, timeout_s=self._control_s))
        except (TransportError, CommandError) as exc:
            return NodeHealth(self.address, self.mode, False, error=str(exc))
        self._note_run_id(info.get("run_id", ""), int(info.get("uptime_in_seconds") or 0))
        if self.mode is Mode.LOCKD_ENGINE:
            left = int(info.get("restart_delay_remaining_ms") or 0)
            reason = info.get("restart_delay_reason", "") if left else ""
        else:
            left = self._restart_left_ms()
            reason = self._restart_reason if left else ""
        return NodeHealth(self.address, self.mode, True, latency, left, reason, self._run_id)


class FailedNode(Node):
    """An embedded engine that could not start (a damaged data directory): every call
    fails with the reason, so the other nodes keep serving."""

    synchronous = True

    def __init__(self, index: int, reason: str) -> None:
        self.address = f"embedded:{index}"
        self.mode = Mode.EMBEDDED
        self.reason = f"engine failed to start: {reason}"

    def call_now(self, call: Call) -> NodeReply:
        return NodeFailure(self.reason)

    async def call(self, call: Call) -> NodeReply:
        return NodeFailure(self.reason)

    async def view(self, name: bytes) -> LockView:
        raise RuntimeError(self.reason)

    async def fcall(self, function: bytes, keys: list[bytes], args: list[bytes]) -> RawReply:
        raise NodeError(self.reason)

    async def info(self) -> NodeHealth:
        return NodeHealth(self.address, self.mode, False, error=self.reason)
