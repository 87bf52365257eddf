"""Watch: lock events from every gateway, de-duplicated per name, fanned out to watchers.

Nodes publish lock events on `lockd:events` (`lockd.core.NodeEvent`): A when a fencing
advance is accepted while a lease holds the lock (the grant's token), U when the holder
replaces its owner record, R on a release, F on a forced release. Each gateway
subscribes to them on every node once it has a watcher, and keeps one `_Tracker` per
name it watches (by name, or under a watched prefix) that turns five nodes' messages
into one story:

- ACQUIRED (token, owner) once a quorum of nodes reported A for the same token and the
  token is above every token seen for the name (the grant's token is then known);
- RELEASED / FORCE_RELEASED on the first R / F from any node naming the held grant
  (same lease digest, or, for a holder known only from a read, the same counter);
- UPDATED (owner, value) on the first U naming the held grant with a record other than
  the one known (the holder acquired again with its lease and a new owner record);
- EXPIRED when the lease ran out: one timer per held lock per gateway, at the moment
  fewer than a quorum of nodes hold it by the TTLs they reported, then one `lockd_peek`
  round (a renewed lock re-arms the timer; a lock no quorum holds has expired). Nothing
  is polled per watcher.

`WatchHub.subscribe(key, prefix=...)` returns a `Subscription`: an async iterator giving
first the current state (one STATE per held lock, or for a name one STATE held or not),
then SYNCED, then the events. Its queue is bounded: a watcher that falls `queue_size`
events behind is cut off (RESOURCE_EXHAUSTED WATCHER_TOO_SLOW, `Subscription.failed`),
and the hub takes at most `max_watchers` (both from the `GatewayConfig`). A client that
reconnects subscribes again and starts from the current state.

The gateway's one hub is `LockService.watch_hub`; use it as

    async with await hub.subscribe(b"orders/42") as sub:
        async for event in sub:  # WatchEvent: type, name, held, token, meta, ttl
            ...
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from types import TracebackType
from typing import Any

from lockd import errors
from lockd.core import Meta, decode_event, decode_meta, lock_name
from lockd.core.records import Holder
from lockd.errors import ErrorReason, LockdError
from lockd.gateway import listing, records
from lockd.gateway.locks import LockManager

__all__ = [
    "EventType",
    "Subscription",
    "WatchEvent",
    "WatchHub",
]

log = logging.getLogger("lockd.gateway")

PENDING_TOKENS = 4  # grants a name may have half-reported at once (older ones dropped)
PENDING_S = 2.0  # half-reported grants older than this are forgotten (failed attempts)
PROBE_RETRY_S = 0.1  # after a probe that no quorum answered


class EventType(enum.Enum):
    """What a `WatchEvent` says."""

    STATE = "state"
    """The current state of one lock (held or not), before any change."""
    SYNCED = "synced"
    """The current state is complete; changes follow."""
    ACQUIRED = "acquired"
    UPDATED = "updated"
    """The holder replaced its owner record (owner, value), keeping its token."""
    RELEASED = "released"
    EXPIRED = "expired"
    FORCE_RELEASED = "force_released"


@dataclasses.dataclass(frozen=True, slots=True)
class WatchEvent:
    """One event of a watch. `token` is the grant's fencing token (for STATE of a lock
    not held: the highest counter known, 0 if none); `meta` the owner record when known;
    `ttl_remaining_ms` for STATE and ACQUIRED."""

    type: EventType
    name: bytes
    held: bool = False
    token: int = 0
    meta: Meta | None = None
    ttl_remaining_ms: int = 0


class _Tracker:
    """What this gateway knows about one lock name (see the module docstring)."""

    __slots__ = (
        "digest",
        "ended",
        "hub",
        "meta",
        "name",
        "pending",
        "probing",
        "seen",
        "subscribers",
        "timer",
        "token",
    )

    def __init__(self, hub: WatchHub, name: bytes) -> None:
        self.hub = hub
        self.name = name
        self.token = 0
        """Token of the grant held now (0: not held, as far as this gateway knows)."""
        self.digest = b""
        """Lease digest of that grant (empty when it is known from a read only)."""
        self.meta: Meta | None = None
        self.seen = 0
        """The highest token this gateway saw granted for the name."""
        self.ended = 0
        """The highest token seen released or expired."""
        self.pending: dict[int, tuple[float, dict[int, tuple[float, bytes, bytes]]]] = {}
        """token -> (first heard, node -> (deadline, digest, record)) until a quorum."""
        self.subscribers: set[Subscription] = set()
        """Watchers of this very name (prefix watchers are found through the hub)."""
        self.timer: asyncio.TimerHandle | None = None
        self.probing = False

    # -- changes -------------------------------------------------------------------------

    def _emit(self, event: WatchEvent) -> None:
        for sub in list(self.subscribers):
            sub.deliver(event)
        for sub in self.hub.prefix_watchers(self.name):
            sub.deliver(event)

    def _hold(self, token: int, digest: bytes, meta: Meta | None, deadline: float) -> None:
        if self.token:
            self._end(EventType.EXPIRED)  # a newer grant: the old one must have ended
        self.token, self.digest, self.meta = token, digest, meta
        self.seen = max(self.seen, token)
        self._arm(deadline)
        ttl = max(0, int((deadline - time.monotonic()) * 1000))
        self._emit(WatchEvent(EventType.ACQUIRED, self.name, True, token, meta, ttl))

    def _end(self, kind: EventType) -> None:
        token = self.token
        self.ended = max(self.ended, token)
        self.token, self.digest, self.meta = 0, b"", None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._emit(WatchEvent(kind, self.name, False, token))

    def _arm(self, deadline: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.001, deadline - time.monotonic())
        self.timer = loop.call_at(loop.time() + delay, self._expire_check)

    # -- inputs --------------------------------------------------------------------------

    def heard(self, node: int, kind: bytes, counter: int, pttl_ms: int, digest: bytes,
              record: bytes) -> None:  # fmt: skip
        """One node's event about this name."""
        now = time.monotonic()
        if kind == b"A":
            if counter <= self.seen or not digest or pttl_ms == -2:
                return  # an older grant, or the node holds no lease: no grant to count
            _, nodes = self.pending.setdefault(counter, (now, {}))
            deadline = now + pttl_ms / 1000 if pttl_ms >= 0 else now + 3600.0
            nodes[node] = (deadline, digest, record)
            if len(self.pending) > PENDING_TOKENS:
                del self.pending[min(self.pending)]
            quorum = self.hub.manager.quorum
            if len(nodes) < quorum:
                return
            for token in [t for t in self.pending if t <= counter]:
                del self.pending[token]
            deadlines = sorted((d for d, _, _ in nodes.values()), reverse=True)
            raw = collections.Counter(r for _, _, r in nodes.values() if r).most_common(1)
            meta = decode_meta(raw[0][0]) if raw and raw[0][1] >= quorum else None
            self._hold(counter, digest, meta, deadlines[quorum - 1])
            return
        if not self.token:
            return
        if digest == self.digest or (not self.digest and counter == self.token):
            if kind == b"U":
                self.digest = digest
                meta = decode_meta(record)
                if meta != self.meta:
                    self.meta = meta
                    self._arm(now + pttl_ms / 1000)
                    event = WatchEvent(
                        EventType.UPDATED, self.name, True, self.token, meta, pttl_ms
                    )
                    self._emit(event)
                return
            self._end(EventType.FORCE_RELEASED if kind == b"F" else EventType.RELEASED)

    def sync(self, held: Holder | listing.Entry) -> None:
        """What a read of the nodes found (Describe-style `Holder` or a List entry)."""
        if isinstance(held, Holder) and not held.held:
            return  # a read may predate a grant this gateway heard of: the timer decides
        token = held.fencing_counter
        if token <= self.ended or token < self.seen or token == self.token:
            return
        deadline = time.monotonic() + held.ttl_remaining_ms / 1000
        self._hold(token, b"", held.meta, deadline)

    def state(self) -> WatchEvent:
        """The STATE event for this name now."""
        ttl = 0
        if self.token and self.timer is not None:
            left = self.timer.when() - asyncio.get_running_loop().time()
            ttl = max(0, int(left * 1000))
        return WatchEvent(
            EventType.STATE, self.name, bool(self.token), self.token or self.seen, self.meta, ttl
        )

    # -- expiry --------------------------------------------------------------------------

    def _expire_check(self) -> None:
        self.timer = None
        if not self.token:
            return
        if self.probing:  # an earlier grant's read is still out: look again after it
            self._arm(time.monotonic() + PROBE_RETRY_S)
            return
        self.probing = True
        self.hub.spawn(self._probe())

    async def _probe(self) -> None:
        """One read of every node at the moment the lease should have run out."""
        token = self.token
        try:
            holder = await records.holder(self.hub.manager, self.name)
        finally:
            self.probing = False
        if self.token != token:
            return  # released or superseded meanwhile: the read may predate that
        if holder.nodes_answered < self.hub.manager.quorum:
            self._arm(time.monotonic() + PROBE_RETRY_S)
        elif holder.held and holder.fencing_counter <= self.token:
            self._arm(time.monotonic() + max(1, holder.ttl_remaining_ms) / 1000)  # renewed
        else:
            self._end(EventType.EXPIRED)
            if holder.held:
                self.sync(holder)  # a newer grant whose events did not reach us
        self.hub.forget_if_idle(self)

    def idle(self, now: float) -> bool:
        """Nothing held, nobody watching the name, no recent half-reported grant."""
        for token, (first, _) in list(self.pending.items()):
            if now - first > PENDING_S:
                del self.pending[token]
        return not self.token and not self.subscribers and not self.pending


class Subscription:
    """One watcher: `async for event in subscription` (see the module docstring).

    Raises `LockdError` RESOURCE_EXHAUSTED WATCHER_TOO_SLOW once cut off, UNAVAILABLE
    QUORUM_UNAVAILABLE when the current state cannot be read, SHUTTING_DOWN when the
    gateway stops; `failed` resolves at that moment, so a writer
    blocked on a client that does not read can stop at once. Close it (or use `async
    with`) when done."""

    def __init__(self, hub: WatchHub, key: bytes, prefix: bool, queue_size: int) -> None:
        self.hub = hub
        self.key = key
        self.prefix = prefix
        self.queue_size = queue_size
        self._queue: collections.deque[WatchEvent] = collections.deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._initial: AsyncGenerator[WatchEvent, None] | None = self._current_state()
        self._shown: dict[bytes, tuple[bool, int]] = {}  # name -> its STATE (until synced)
        self._early = 0  # events queued before SYNCED, filtered against `_shown`
        self.error: LockdError | None = None
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False

    # -- fed by the hub --------------------------------------------------------------------

    def deliver(self, event: WatchEvent) -> None:
        """Queue an event; cut the watcher off if it is `queue_size` events behind."""
        if self.error is not None or self.closed:
            return
        if len(self._queue) >= self.queue_size:
            self.hub.manager.metrics.watchers_cut_off.inc()
            self.fail(
                errors.exhausted(
                    ErrorReason.WATCHER_TOO_SLOW,
                    f"the watcher fell {self.queue_size} events behind; watch again to "
                    "resume from the current state",
                )
            )
            return
        self._queue.append(event)
        self._wake()

    def fail(self, error: LockdError) -> None:
        """End the watch with `error` (queued events are dropped: memory is freed now)."""
        if self.error is not None or self.closed:
            return
        self.error = error
        self._queue.clear()
        self._shown.clear()
        if not self.failed.done():
            self.failed.set_result(None)
        self._wake()
        self.hub.detach(self)

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # -- consumed by the caller --------------------------------------------------------

    async def _current_state(self) -> AsyncGenerator[WatchEvent, None]:
        hub = self.hub
        if not self.prefix:
            tracker = hub.tracker(self.key)
            held = await records.holder(hub.manager, self.key)
            if held.nodes_answered < hub.manager.quorum:
                raise errors.unavailable(
                    ErrorReason.QUORUM_UNAVAILABLE,
                    f"only {held.nodes_answered} nodes answered; the current state needs "
                    f"{hub.manager.quorum}",
                )
            tracker.sync(held)
            event = tracker.state()
            self._shown[self.key] = (event.held, event.token)
            yield event
            return
        token = ""
        while True:
            page = await listing.list_page(hub.manager, self.key, token, 0)
            for entry in page.entries:
                tracker = hub.tracker(entry.name)
                tracker.sync(entry)
                event = tracker.state()
                if event.held:
                    self._shown[entry.name] = (True, event.token)
                    yield event
                hub.forget_if_idle(tracker)
            if not page.next_token:
                return
            token = page.next_token

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> WatchEvent:
        if self._initial is not None:
            if self.error is not None:
                raise self.error
            try:
                return await anext(self._initial)
            except StopAsyncIteration:
                self._initial = None
                self._early = len(self._queue)
                return WatchEvent(EventType.SYNCED, self.key)
        while True:
            if self.error is not None:
                raise self.error
            if self.closed:
                raise StopAsyncIteration
            if self._queue:
                event = self._queue.popleft()
                if self._early:
                    self._early -= 1
                    if self._stale(event):
                        continue
                    if not self._early:
                        self._shown.clear()
                return event
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    def _stale(self, event: WatchEvent) -> bool:
        """An event queued while the current state was read, which that state covers."""
        shown = self._shown.get(event.name)
        if shown is None:
            return False
        held, token = shown
        if event.token != token:
            return event.token < token
        return held == (event.type is EventType.ACQUIRED)

    def close(self) -> None:
        """Stop watching (idempotent); `async with` also finishes reading the state."""
        if not self.closed:
            self.closed = True
            self._queue.clear()
            self._wake()
            self.hub.detach(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        if self._initial is not None:
            await self._initial.aclose()
            self._initial = None


class WatchHub:
    """This gateway's watchers and the per-name trackers that feed them."""

    def __init__(self, manager: LockManager) -> None:
        self.manager = manager
        self.queue_size = manager.config.watch_queue
        self.max_watchers = manager.config.max_watchers
        manager.metrics.watchers.set_function(lambda: self._watchers)
        self._trackers: dict[bytes, _Tracker] = {}
        self._prefixes: dict[bytes, set[Subscription]] = {}
        self._watchers = 0
        self._listening: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def watchers(self) -> int:
        """Open subscriptions."""
        return self._watchers

    async def subscribe(self, key: bytes, *, prefix: bool = False) -> Subscription:
        """Watch lock `key`, or with `prefix` every lock whose name starts with `key`.

        Raises INVALID_ARGUMENT BAD_NAME (empty name, too long, not UTF-8),
        RESOURCE_EXHAUSTED TOO_MANY_WATCHERS, UNAVAILABLE SHUTTING_DOWN."""
        if prefix:
            listing.check_prefix(self.manager, key)
        else:
            self.manager.check_name(key.decode("utf-8", "surrogatepass"))
        if self._closed or self.manager.shutting_down:
            raise errors.unavailable(ErrorReason.SHUTTING_DOWN, "the gateway is shutting down")
        if self._watchers >= self.max_watchers:
            raise errors.exhausted(
                ErrorReason.TOO_MANY_WATCHERS,
                f"this gateway has {self._watchers} watchers, its limit",
            )
        await self._listen()
        sub = Subscription(self, key, prefix, self.queue_size)
        self._watchers += 1
        if prefix:
            self._prefixes.setdefault(key, set()).add(sub)
        else:
            self.tracker(key).subscribers.add(sub)
        return sub

    async def _listen(self) -> None:
        """Subscribe to every node's events (once, at the first watcher)."""
        if self._listening is None:
            self._listening = asyncio.create_task(self._subscribe_nodes())
            self._sweeper = asyncio.create_task(self._sweep())
        await asyncio.shield(self._listening)

    async def _subscribe_nodes(self) -> None:
        def listener(index: int) -> Callable[[bytes], None]:
            return lambda message: self.on_node_event(index, message)

        nodes = self.manager.nodes
        await asyncio.gather(
            *(node.listen_events(listener(i)) for i, node in enumerate(nodes)),
            return_exceptions=True,
        )

    def on_node_event(self, node: int, message: bytes) -> None:
        """A message node `node` published on `lockd:events`."""
        event = decode_event(message)
        if event is None:
            return
        name = lock_name(event.lock_key)
        if name is None:
            return
        tracker = self._trackers.get(name)
        if tracker is None:
            if event.kind != b"A" or not self.prefix_watchers(name):
                return
            tracker = self.tracker(name)
        tracker.heard(node, event.kind, event.counter, event.pttl_ms, event.digest, event.record)
        if event.kind != b"A":
            self.forget_if_idle(tracker)

    def tracker(self, name: bytes) -> _Tracker:
        """The tracker of `name`, created if needed."""
        tracker = self._trackers.get(name)
        if tracker is None:
            tracker = self._trackers[name] = _Tracker(self, name)
        return tracker

    def prefix_watchers(self, name: bytes) -> list[Subscription]:
        """Watchers of a prefix of `name`."""
        found: list[Subscription] = []
        for prefix, subs in self._prefixes.items():
            if name.startswith(prefix):
                found.extend(subs)
        return found

    def detach(self, sub: Subscription) -> None:
        """Forget a subscription that closed or failed."""
        if sub.prefix:
            subs = self._prefixes.get(sub.key)
            if subs is None or sub not in subs:
                return
            subs.discard(sub)
            if not subs:
                del self._prefixes[sub.key]
                for under in list(self._trackers.values()):
                    if under.name.startswith(sub.key):
                        self.forget_if_idle(under)
        else:
            tracker = self._trackers.get(sub.key)
            if tracker is None or sub not in tracker.subscribers:
                return
            tracker.subscribers.discard(sub)
            self.forget_if_idle(tracker)
        self._watchers -= 1

    def forget_if_idle(self, tracker: _Tracker) -> None:
        """Drop a tracker nobody needs: nobody watches its name, and nobody watches a
        prefix of it or it holds nothing and has no half-reported grant."""
        if tracker.subscribers:
            return
        if self.prefix_watchers(tracker.name) and not tracker.idle(time.monotonic()):
            return
        self._drop(tracker)

    def _drop(self, tracker: _Tracker) -> None:
        if tracker.timer is not None:
            tracker.timer.cancel()
            tracker.timer = None
        if self._trackers.get(tracker.name) is tracker:
            del self._trackers[tracker.name]

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a tracker's probe in the background."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("watch probe failed", exc_info=task.exception())

    async def _sweep(self) -> None:
        """Once a second, forget half-reported grants that never reached a quorum."""
        while True:
            await asyncio.sleep(PENDING_S / 2)
            now = time.monotonic()
            for tracker in list(self._trackers.values()):
                if tracker.pending and tracker.idle(now):
                    self.forget_if_idle(tracker)

    @property
    def tracked(self) -> int:
        """Names this gateway keeps state for."""
        return len(self._trackers)

    async def close(self) -> None:
        """End every watch with UNAVAILABLE SHUTTING_DOWN and stop the timers."""
        self._closed = True
        error = errors.unavailable(ErrorReason.SHUTTING_DOWN, "the gateway is shutting down")
        subs = [s for t in self._trackers.values() for s in t.subscribers]
        subs += [s for group in self._prefixes.values() for s in group]
        for sub in subs:
            sub.fail(error)
        for tracker in list(self._trackers.values()):
            self._drop(tracker)
        tasks = [t for t in (self._sweeper, self._listening, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
