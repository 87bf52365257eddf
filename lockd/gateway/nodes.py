"""Node transports: how the gateway reaches one engine node.

`EmbeddedNode` calls an in-process `Engine` directly. `RespNode` speaks RESP through
`redis.asyncio` to a `lockd engine` process or to a real Redis 7+ / Valkey server (with
lockd's Lua library loaded and its settings checked). Both turn every answer into a core
`Reply`; a call never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import re
import time
from collections.abc import Callable
from importlib import resources
from urllib.parse import urlsplit

import redis.asyncio as aredis
import redis.exceptions

from lockd.core import (
    AcquireCall,
    AcquireReply,
    Call,
    ExtendCall,
    FenceCall,
    FenceReply,
    NodeFailure,
    ReleaseCall,
    Reply,
    fence_key,
    lock_key,
)
from lockd.core.quorum import restart_delay_ms
from lockd.engine import RELEASE_CHANNEL, Engine
from lockd.resp.replies import CommandError

__all__ = [
    "EmbeddedNode",
    "LockView",
    "Mode",
    "Node",
    "NodeError",
    "NodeInfo",
    "RawReply",
    "RespNode",
    "UnsafeNodeError",
    "lua_library",
]

log = logging.getLogger("lockd.gateway")

_RESTART = re.compile(r"RESTARTDELAY (\d+) ms")
ReleaseListener = Callable[[bytes], None]


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
    """A reply from the engine or redis-py as plain values; error replies raise."""
    if isinstance(reply, CommandError | redis.exceptions.ResponseError):
        raise NodeError(str(reply))
    if reply is None or isinstance(reply, int | bytes):
        return reply
    if isinstance(reply, str):
        return reply.encode()
    if isinstance(reply, list | tuple):
        return [_plain(item) for item in reply]
    raise NodeError(f"unexpected reply {reply!r}")


class UnsafeNodeError(Exception):
    """A node's settings would break lockd's guarantees; the message names the setting."""


@dataclasses.dataclass(frozen=True, slots=True)
class NodeInfo:
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


def lua_library() -> str:
    """lockd's Lua function library for real Redis / Valkey."""
    return resources.files("lockd.engine").joinpath("lua/lockd.lua").read_text()


def _failure(exc: BaseException) -> NodeFailure:
    text = str(exc) or type(exc).__name__
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

    def call_now(self, call: Call) -> Reply:
        """Answer `call` synchronously (only when `synchronous`); the caller must
        `commit()` before anyone is told of the outcome."""
        raise NotImplementedError

    def commit(self) -> None:
        """Make answered calls as durable as the node's fsync policy promises."""

    async def call(self, call: Call) -> Reply:
        """Send one lock-function call; failures come back as `NodeFailure`."""
        raise NotImplementedError

    async def view(self, name: bytes) -> LockView:
        """The node's view of lock `name` (raises on failure)."""
        raise NotImplementedError

    async def fcall(self, function: bytes, keys: list[bytes], args: list[bytes]) -> RawReply:
        """Call one of lockd's node functions (`lockd_list`, `lockd_peek`, ...) and return
        its reply as bytes, ints, None and lists; raises `NodeError` on an error reply or
        a transport failure. Mutations are committed before it returns."""
        raise NotImplementedError

    async def info(self) -> NodeInfo:
        """PING and read the node's restart state."""
        raise NotImplementedError


class EmbeddedNode(Node):
    """An engine in this process: calls are plain method calls."""

    synchronous = True

    def __init__(self, engine: Engine, index: int) -> None:
        self.engine = engine
        self.address = f"embedded:{index}"
        self.mode = Mode.EMBEDDED
        self._on_release: ReleaseListener | None = None
        self._cron: asyncio.Task[None] | None = None

    async def start(self, on_release: ReleaseListener) -> None:
        self._on_release = on_release
        self.engine.subscribe(RELEASE_CHANNEL, self._released)
        self._cron = asyncio.create_task(self._run_cron())

    def _released(self, channel: bytes, message: bytes) -> None:
        if self._on_release is not None:
            self._on_release(message)

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
        self.engine.unsubscribe(RELEASE_CHANNEL, self._released)
        self.engine.close()

    def call_now(self, call: Call) -> Reply:
        engine = self.engine
        try:
            if isinstance(call, AcquireCall):
                got, counter = engine.lock_acquire(
                    call.lock_key, call.fence_key, call.lease, b"%d" % call.ttl_ms, call.meta
                )
                reply: Reply = AcquireReply(got == 1, counter)
            elif isinstance(call, ReleaseCall):
                reply = engine.lock_release(call.lock_key, call.lease) == 1
            elif isinstance(call, ExtendCall):
                reply = engine.lock_extend(call.lock_key, call.lease, b"%d" % call.ttl_ms) == 1
            else:
                accepted, counter = engine.fence_advance(call.fence_key, b"%d" % call.token)
                reply = FenceReply(accepted == 1, counter)
        except (CommandError, OSError) as exc:
            return _failure(exc)
        return reply

    def commit(self) -> None:
        self.engine.commit()

    async def call(self, call: Call) -> Reply:
        reply = self.call_now(call)
        self.engine.commit()
        return reply

    async def view(self, name: bytes) -> LockView:
        return LockView(*self.engine.lock_describe(lock_key(name), fence_key(name)))

    async def fcall(self, function: bytes, keys: list[bytes], args: list[bytes]) -> RawReply:
        reply = self.engine.execute([b"FCALL", function, b"%d" % len(keys), *keys, *args])
        self.engine.commit()
        return _plain(reply)

    async def info(self) -> NodeInfo:
        e = self.engine
        left = e.restart_delay_remaining_ms()
        return NodeInfo(
            self.address, self.mode, True, 0.0, left, e.restart_reason if left else "", e.run_id
        )


class RespNode(Node):
    """A node over RESP: a `lockd engine`, or real Redis / Valkey (Lua library).

    For real Redis the gateway enforces the delayed restart itself: a node whose run id
    changed, or whose uptime is below max-TTL + drift, is treated as restarting.
    """

    def __init__(self, url: str, max_ttl_ms: int, timeout_s: float = 1.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"node URL {url!r} must look like redis://host:port")
        self.address = url
        self.mode = Mode.LOCKD_ENGINE
        self.max_ttl_ms = max_ttl_ms
        self._client = aredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._listener: asyncio.Task[None] | None = None
        self._run_id = ""
        self._restart_until = 0.0  # time.monotonic() before which acquisitions are refused
        self._restart_reason = ""
        self._last_error = ""
        self._checked = False
        self._check_lock = asyncio.Lock()

    async def start(self, on_release: ReleaseListener) -> None:
        try:
            await self._check()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            # A minority of nodes may be down: this one is checked when it first answers.
            self._last_error = str(exc)
            log.warning(
                "node %s is unreachable (%s); will check it when it answers", self.address, exc
            )
        self._listener = asyncio.create_task(self._listen(on_release))

    async def _ready(self) -> NodeFailure | None:
        """None once the node passed `_check`; otherwise why it cannot be used yet."""
        if self._checked:
            return None
        try:
            await self._check()
        except UnsafeNodeError as exc:
            log.error("%s", exc)
            return NodeFailure(str(exc))
        except (redis.exceptions.RedisError, OSError) as exc:
            self._last_error = str(exc)
            return _failure(exc)
        return None

    async def _check(self) -> None:
        """Refuse an unsafe node, load the Lua library into Redis, note the run id."""
        async with self._check_lock:
            if not self._checked:
                await self._check_now()
                self._checked = True

    async def _check_now(self) -> None:
        info = await self._client.info("server")
        if "lockd_version" in info:
            self.mode = Mode.LOCKD_ENGINE
            config = await self._client.config_get("lockd-max-ttl")
            node_max = int(config.get("lockd-max-ttl") or 0)
            if node_max < self.max_ttl_ms:
                raise UnsafeNodeError(
                    f"{self.address}: lockd engine's --max-ttl is {node_max} ms, below the "
                    f"gateway's {self.max_ttl_ms} ms; start it with --max-ttl "
                    f"{self.max_ttl_ms}ms or more"
                )
        else:
            self.mode = Mode.REDIS
            await self._check_redis()
            await self._client.function_load(lua_library(), replace=True)
        self._note_run_id(str(info.get("run_id", "")), int(info.get("uptime_in_seconds") or 0))

    async def _check_redis(self) -> None:
        config = await self._client.config_get("*")
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
        delay_s = restart_delay_ms(self.max_ttl_ms) / 1000
        if self._run_id and run_id != self._run_id:
            self._restart_until = time.monotonic() + delay_s
            self._restart_reason = "run id changed (restarted)"
            log.warning(
                "node %s restarted; refusing acquisitions on it for %.1f s", self.address, delay_s
            )
        elif not self._run_id and uptime_s < delay_s:
            self._restart_until = time.monotonic() + delay_s - uptime_s
            self._restart_reason = f"up for only {uptime_s} s"
        self._run_id = run_id

    def _restart_left_ms(self) -> int:
        return max(0, int((self._restart_until - time.monotonic()) * 1000))

    async def _listen(self, on_release: ReleaseListener) -> None:
        delay = 0.05
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(RELEASE_CHANNEL)
                delay = 0.05
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        on_release(bytes(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("node %s: release notifications interrupted: %s", self.address, exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        if self._listener is not None:
            # redis-py can swallow a cancellation that lands while it subscribes, and then
            # blocks reading forever: cancel again until the listener has ended.
            while not self._listener.done():
                self._listener.cancel()
                await asyncio.wait({self._listener}, timeout=0.1)
        await self._client.aclose()

    async def call(self, call: Call) -> Reply:
        if (failure := await self._ready()) is not None:
            return failure
        c = self._client
        try:
            if isinstance(call, AcquireCall):
                left = self._restart_left_ms()
                if left:
                    return NodeFailure(f"RESTARTDELAY {left} ms left: {self._restart_reason}", left)
                meta = () if call.meta is None else (call.meta,)
                got, counter = await c.fcall(
                    "lockd_acquire",
                    2,
                    call.lock_key,
                    call.fence_key,
                    call.lease,
                    call.ttl_ms,
                    *meta,
                )
                return AcquireReply(got == 1, int(counter))
            if isinstance(call, ReleaseCall):
                return bool(await c.fcall("lockd_release", 1, call.lock_key, call.lease) == 1)
            if isinstance(call, ExtendCall):
                result = await c.fcall("lockd_extend", 1, call.lock_key, call.lease, call.ttl_ms)
                return bool(result == 1)
            assert isinstance(call, FenceCall)
            accepted, counter = await c.fcall("lockd_fence_advance", 1, call.fence_key, call.token)
            return FenceReply(accepted == 1, int(counter))
        except (redis.exceptions.RedisError, OSError) as exc:
            self._last_error = str(exc)
            return _failure(exc)

    async def view(self, name: bytes) -> LockView:
        await self._check()
        # lockd_describe, not GET: a `lockd engine` reports its counters above the fence
        # floor it restarted with, as the embedded engine does.
        pttl, counter = await self._client.fcall(
            "lockd_describe", 2, lock_key(name), fence_key(name)
        )
        return LockView(int(pttl), int(counter))

    async def fcall(self, function: bytes, keys: list[bytes], args: list[bytes]) -> RawReply:
        if (failure := await self._ready()) is not None:
            raise NodeError(failure.message)
        try:
            reply = await self._client.fcall(function.decode(), len(keys), *keys, *args)
        except (redis.exceptions.RedisError, OSError) as exc:
            self._last_error = str(exc)
            raise NodeError(str(exc)) from exc
        return _plain(reply)

    async def info(self) -> NodeInfo:
        if (failure := await self._ready()) is not None:
            return NodeInfo(self.address, self.mode, False, error=failure.message)
        try:
            start = time.perf_counter()
            await self._client.ping()
            latency = (time.perf_counter() - start) * 1000
            section = "lockd" if self.mode is Mode.LOCKD_ENGINE else "server"
            info = await self._client.info(section)
        except (redis.exceptions.RedisError, OSError) as exc:
            self._last_error = str(exc)
            return NodeInfo(self.address, self.mode, False, error=str(exc))
        self._note_run_id(str(info.get("run_id", "")), int(info.get("uptime_in_seconds", 0)))
        if self.mode is Mode.LOCKD_ENGINE:
            left = int(info.get("restart_delay_remaining_ms", 0))
            reason = str(info.get("restart_delay_reason", "")) if left else ""
        else:
            left = self._restart_left_ms()
            reason = self._restart_reason if left else ""
        return NodeInfo(self.address, self.mode, True, latency, left, reason, self._run_id)
