"""The gateway's lock logic, free of gRPC: FIFO waiting, attempts, renew, release.

Waiting does not poll in the common case. Each lock has a FIFO queue of this gateway's
waiters; only the head attempts. It is woken by a release (local, or published by any
node on `lockd:released`), by the expiry of a lease this gateway granted, or, for a lease
held through another gateway, when the nodes say it expires; a bounded jittered timer
(at most `HELD_RECHECK_MAX_S`) covers lost notifications.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import random
import secrets
import time
from collections.abc import Sequence

from lockd import errors
from lockd.core import (
    Acquire,
    Granted,
    Meta,
    NotGranted,
    Reason,
    Release,
    Released,
    Renew,
    Renewed,
    encode_meta,
    lock_name,
    quorum,
    retry_delay_ns,
)
from lockd.errors import ErrorReason
from lockd.gateway.config import GatewayConfig
from lockd.gateway.driver import Driver
from lockd.gateway.metrics import Metrics
from lockd.gateway.nodes import LockView, Node, NodeInfo
from lockd.units import MS

__all__ = ["Description", "LockManager"]

log = logging.getLogger("lockd.gateway")

HELD_RECHECK_MAX_S = 1.0
LEASE_BYTES = 16


@dataclasses.dataclass(frozen=True, slots=True)
class Description:
    """A lock as the nodes see it, without its holder."""

    held: bool
    ttl_remaining_ms: int
    fencing_counter: int
    waiters: int
    nodes_answered: int
    nodes_holding: int


class Signal:
    """A settable flag that tasks wait on with a deadline: `asyncio.Event` plus
    `asyncio.wait_for` without the extra task and event-loop turns (handoff latency)."""

    __slots__ = ("_flag", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._waiters: list[asyncio.Future[None]] = []

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        self._flag = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def clear(self) -> None:
        """Unset the flag."""
        self._flag = False

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._flag

    async def wait_until(self, until_ns: int) -> bool:
        """Wait until set or until monotonic time `until_ns`; True if set."""
        if self._flag:
            return True
        timeout = (until_ns - time.monotonic_ns()) / 1e9
        if timeout <= 0:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return self._flag


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclasses.dataclass(slots=True)
class _Holder:
    """A lease this gateway granted: when the nodes' keys expire, and its TTL."""

    lease: bytes
    expires_ns: int
    ttl_ms: int


@dataclasses.dataclass(slots=True)
class _Queue:
    """This gateway's waiters for one lock, in arrival order; the head attempts."""

    waiters: collections.deque[Signal] = dataclasses.field(default_factory=collections.deque)
    wake: Signal = dataclasses.field(default_factory=Signal)


class LockManager:
    """Acquire, renew, release and describe locks on a set of nodes."""

    def __init__(
        self, nodes: Sequence[Node], config: GatewayConfig, metrics: Metrics | None = None
    ) -> None:
        self.nodes = list(nodes)
        self.config = config
        self.metrics = metrics or Metrics()
        self.quorum = quorum(len(self.nodes))
        self.driver = Driver(self.nodes)
        self._queues: dict[bytes, _Queue] = {}
        self._holders: dict[bytes, _Holder] = {}
        self._waiting = 0
        self.shutting_down = False
        self._rng = random.Random()
        self._timeout_ns = config.node_timeout_ms * MS

    # -- validation ----------------------------------------------------------------------

    def check_name(self, name: str) -> bytes:
        """The lock name as bytes, or INVALID_ARGUMENT."""
        raw = name.encode("utf-8", "surrogatepass")
        if not raw:
            raise errors.invalid(ErrorReason.BAD_NAME, "lock name is empty")
        if len(raw) > self.config.max_name_bytes:
            raise errors.invalid(
                ErrorReason.BAD_NAME,
                f"lock name is {len(raw)} bytes; the limit is {self.config.max_name_bytes}",
            )
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.invalid(ErrorReason.BAD_NAME, "lock name is not valid UTF-8") from None
        return raw

    def check_ttl(self, ttl_ms: int) -> int:
        """The TTL, or INVALID_ARGUMENT when outside [min, max]."""
        lo, hi = self.config.min_ttl_ms, self.config.max_ttl_ms
        if not lo <= ttl_ms <= hi:
            raise errors.invalid(ErrorReason.BAD_TTL, f"ttl_ms={ttl_ms} is outside [{lo}, {hi}] ms")
        return ttl_ms

    @staticmethod
    def check_lease(lease: bytes) -> bytes:
        """The lease id, or INVALID_ARGUMENT when it cannot be one."""
        if len(lease) != LEASE_BYTES:
            raise errors.invalid(
                ErrorReason.BAD_LEASE_ID, f"lease_id must be {LEASE_BYTES} bytes, got {len(lease)}"
            )
        return lease

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect every node; a node that is unsafe stops the start."""
        # Let every start finish before raising, so `close()` sees every listener.
        results = await asyncio.gather(
            *(node.start(self.on_release) for node in self.nodes), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def close(self) -> None:
        """Finish background sends, then disconnect nodes."""
        await self.driver.drain()
        await asyncio.gather(*(node.close() for node in self.nodes), return_exceptions=True)

    def on_release(self, lock_key: bytes) -> None:
        """A node says `lock_key` was released: wake that lock's head waiter.

        The local holder is forgotten too: the release may have come through another
        gateway (clients fail over), and waiting for its expiry would stall the queue. If
        it is in fact still held, the next attempt says so and the wait resumes."""
        name = lock_name(lock_key)
        if name is None:
            return
        self._holders.pop(name, None)
        queue = self._queues.get(name)
        if queue is not None:
            queue.wake.set()

    # -- acquire -------------------------------------------------------------------------

    async def acquire(
        self,
        name: bytes,
        ttl_ms: int,
        wait_ms: int,
        deadline_ns: int | None = None,
        meta: Meta | None = None,
    ) -> Granted:
        """Wait in FIFO order (up to `wait_ms`, and `deadline_ns`) and grant a lease;
        `meta` is the owner record to store with it (stamped at each attempt)."""
        if wait_ms < 0:
            raise errors.invalid(ErrorReason.BAD_WAIT, f"wait_ms={wait_ms} is negative")
        self._check_running()
        started = time.monotonic_ns()
        until = started + wait_ms * MS
        if deadline_ns is not None:
            until = min(until, deadline_ns)
        self._prune_holders(started)
        if len(self._holders) >= self.config.max_locks:
            raise errors.exhausted(
                ErrorReason.TOO_MANY_LOCKS,
                f"this gateway holds {len(self._holders)} leases, its limit",
            )
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue()
        if len(queue.waiters) >= self.config.max_waiters_per_lock:
            raise errors.exhausted(
                ErrorReason.TOO_MANY_WAITERS,
                f"{len(queue.waiters)} callers already wait for this lock, its limit",
            )
        if self._waiting >= self.config.max_waiters:
            raise errors.exhausted(
                ErrorReason.TOO_MANY_WAITERS,
                f"{self._waiting} callers already wait at this gateway, its limit",
            )
        turn = Signal()
        queue.waiters.append(turn)
        self._waiting += 1
        self.metrics.waiters.set(self._waiting)
        try:
            if queue.waiters[0] is turn:
                turn.set()
            elif not await _wait_event(turn, until):
                raise errors.deadline(
                    ErrorReason.LOCK_HELD,
                    f"lock still held after waiting "
                    f"{(time.monotonic_ns() - started) // MS} ms "
                    "(queued behind other waiters)",
                )
            return await self._acquire_at_head(name, queue, ttl_ms, until, started, meta)
        finally:
            self._waiting -= 1
            self.metrics.waiters.set(self._waiting)
            was_head = queue.waiters and queue.waiters[0] is turn
            queue.waiters.remove(turn)
            if queue.waiters:
                if was_head:
                    queue.waiters[0].set()
            elif self._queues.get(name) is queue:
                del self._queues[name]

    def acquire_now(self, name: bytes, ttl_ms: int, meta: Meta | None = None) -> Granted | None:
        """The uncontended fast path when every node answers inline: one attempt, no
        waiting, no task. None when that cannot grant (queued waiters, a live local
        holder, a failed attempt, a limit): the caller then takes `acquire`."""
        if not self.driver.synchronous or name in self._queues or self.shutting_down:
            return None
        now = time.monotonic_ns()
        holder = self._holders.get(name)
        if holder is not None and holder.expires_ns > now:
            return None
        if len(self._holders) >= self.config.max_locks:
            return None
        machine = Acquire(
            name,
            ttl_ms,
            secrets.token_bytes(LEASE_BYTES),
            len(self.nodes),
            self._timeout_ns,
            meta=_stamped(meta),
        )
        outcome = self.driver.run_now(machine)
        if isinstance(outcome, Granted):
            self._granted(name, ttl_ms, outcome)
            return outcome
        assert isinstance(outcome, NotGranted)
        self.metrics.attempt_failures.labels(outcome.reason.value).inc()
        return None

    def _granted(self, name: bytes, ttl_ms: int, granted: Granted) -> None:
        self._holders[name] = _Holder(granted.lease, granted.decided_ns + ttl_ms * MS, ttl_ms)
        self.metrics.grants.inc()

    async def _acquire_at_head(
        self,
        name: bytes,
        queue: _Queue,
        ttl_ms: int,
        until: int,
        started: int,
        meta: Meta | None = None,
    ) -> Granted:
        attempt = 0
        while True:
            self._check_running()
            queue.wake.clear()
            holder = self._holders.get(name)
            now = time.monotonic_ns()
            if holder is not None and holder.expires_ns > now:
                # Held through this gateway: sleep until released or expired, no polling.
                await _wait_event(queue.wake, min(until, holder.expires_ns + MS))
                if time.monotonic_ns() >= until and not queue.wake.is_set():
                    raise self._held_error(started)
                continue
            outcome = await self._attempt(name, ttl_ms, meta)
            if isinstance(outcome, Granted):
                self._granted(name, ttl_ms, outcome)
                return outcome
            self.metrics.attempt_failures.labels(outcome.reason.value).inc()
            now = time.monotonic_ns()
            if outcome.reason is Reason.HELD:
                if now >= until:
                    raise self._held_error(started)
                expires_in = await self._held_for(name)
                recheck = min(HELD_RECHECK_MAX_S * 1e9, expires_in + MS)
                wake_at = now + int(recheck * self._rng.uniform(1.0, 1.1))
                await _wait_event(queue.wake, min(until, wake_at))
                if time.monotonic_ns() >= until and not queue.wake.is_set():
                    raise self._held_error(started)
                continue
            if outcome.reason is Reason.RESTARTING:
                delay = outcome.retry_after_ns + self._rng.randrange(MS, 5 * MS)
                if now + delay > until:
                    raise errors.unavailable(
                        ErrorReason.NODES_RESTARTING,
                        f"no quorum: {outcome.detail}",
                        retry_after_ms=-(-outcome.retry_after_ns // MS),
                    )
            else:
                delay = retry_delay_ns(self._rng, attempt)
                if now + delay > until:
                    raise self._attempt_error(outcome)
            attempt += 1
            await _wait_event(queue.wake, now + delay)

    def _attempt_error(self, outcome: NotGranted) -> errors.LockdError:
        if outcome.reason is Reason.TOO_SLOW:
            return errors.unavailable(
                ErrorReason.TTL_TOO_SHORT,
                f"a quorum agreed too late for the TTL ({outcome.detail}); ask for a longer TTL",
            )
        if outcome.reason is Reason.FENCE_CONTENDED:
            return errors.unavailable(
                ErrorReason.FENCE_CONTENDED, f"no fencing token: {outcome.detail}"
            )
        return errors.unavailable(
            ErrorReason.QUORUM_UNAVAILABLE,
            f"cannot reach a quorum of {self.quorum} nodes: {outcome.detail}",
        )

    def _check_running(self) -> None:
        if self.shutting_down:
            raise errors.unavailable(
                ErrorReason.SHUTTING_DOWN, "this gateway is shutting down; try another gateway"
            )

    def shut_down(self) -> None:
        """Graceful shutdown: waiting and new acquisitions end with SHUTTING_DOWN."""
        self.shutting_down = True
        for queue in self._queues.values():
            queue.wake.set()
            for turn in queue.waiters:
                turn.set()

    def _held_error(self, started: int) -> errors.LockdError:
        waited = (time.monotonic_ns() - started) // MS
        return errors.deadline(
            ErrorReason.LOCK_HELD, f"lock held by another lease; waited {waited} ms"
        )

    async def _attempt(
        self, name: bytes, ttl_ms: int, meta: Meta | None = None
    ) -> Granted | NotGranted:
        machine = Acquire(
            name,
            ttl_ms,
            secrets.token_bytes(LEASE_BYTES),
            len(self.nodes),
            self._timeout_ns,
            meta=_stamped(meta),
        )
        try:
            outcome = await self.driver.run(machine)
        except asyncio.CancelledError:
            # The caller went away mid-attempt: undo whatever the nodes granted.
            self.release_in_background(name, machine.lease)
            raise
        assert isinstance(outcome, Granted | NotGranted)
        return outcome

    def release_in_background(self, name: bytes, lease: bytes) -> None:
        """Release without waiting (the caller is gone)."""
        self.driver.run_in_background(Release(name, lease, len(self.nodes), self._timeout_ns))
        self.cancel_holder_if(name, lease)

    async def _held_for(self, name: bytes) -> int:
        """Nanoseconds until fewer than a quorum of nodes hold `name` (capped)."""
        views = await self._views(name)
        pttls = sorted(
            (v.pttl_ms if v.pttl_ms >= 0 else 10**9 for v in views if v.pttl_ms != -2), reverse=True
        )
        if len(pttls) < self.quorum:
            return 0
        return int(pttls[self.quorum - 1] * MS)

    def cancel_holder_if(self, name: bytes, lease: bytes) -> None:
        """Forget a local holder (released or lost) and wake the next waiter."""
        holder = self._holders.get(name)
        if holder is not None and holder.lease == lease:
            del self._holders[name]
        queue = self._queues.get(name)
        if queue is not None:
            queue.wake.set()

    def _prune_holders(self, now: int) -> None:
        if len(self._holders) >= self.config.max_locks:
            for name in [n for n, h in self._holders.items() if h.expires_ns <= now]:
                del self._holders[name]

    # -- renew, release ------------------------------------------------------------------

    def _renew_machine(self, name: bytes, lease: bytes, ttl_ms: int) -> Renew:
        if ttl_ms == 0:
            holder = self._holders.get(name)
            if holder is None or holder.lease != lease:
                raise errors.invalid(
                    ErrorReason.BAD_TTL,
                    "ttl_ms is required: this gateway does not "
                    "know the lease's TTL (granted elsewhere or expired)",
                )
            ttl_ms = holder.ttl_ms
        self.check_ttl(ttl_ms)
        return Renew(name, lease, ttl_ms, len(self.nodes), self._timeout_ns)

    def _renewed(self, name: bytes, machine: Renew) -> Renewed:
        outcome = machine.outcome
        if isinstance(outcome, Renewed):
            self._holders[name] = _Holder(
                machine.lease, machine.started_ns + machine.ttl_ms * MS, machine.ttl_ms
            )
            return outcome
        self.metrics.leases_lost.inc()
        self.cancel_holder_if(name, machine.lease)
        detail = getattr(outcome, "detail", "")
        raise errors.precondition(ErrorReason.LEASE_LOST, f"lease lost: {detail}")

    async def renew(self, name: bytes, lease: bytes, ttl_ms: int) -> Renewed:
        """Extend the lease on a quorum, or FAILED_PRECONDITION LEASE_LOST."""
        machine = self._renew_machine(name, lease, ttl_ms)
        await self.driver.run(machine)
        return self._renewed(name, machine)

    def renew_now(self, name: bytes, lease: bytes, ttl_ms: int) -> Renewed:
        """`renew` without yielding (only when every node is synchronous)."""
        machine = self._renew_machine(name, lease, ttl_ms)
        self.driver.run_now(machine)
        return self._renewed(name, machine)

    async def release(self, name: bytes, lease: bytes) -> Released:
        """Compare-and-delete on every node; NOT_OWNED when no node had this lease."""
        machine = Release(name, lease, len(self.nodes), self._timeout_ns)
        await self.driver.run(machine)
        return self._released(name, machine)

    def release_now(self, name: bytes, lease: bytes) -> Released:
        """`release` without yielding (only when every node is synchronous)."""
        machine = Release(name, lease, len(self.nodes), self._timeout_ns)
        self.driver.run_now(machine)
        return self._released(name, machine)

    def _released(self, name: bytes, machine: Release) -> Released:
        outcome = machine.outcome
        assert isinstance(outcome, Released)
        self.cancel_holder_if(name, machine.lease)
        if outcome.released:
            self.metrics.releases.inc()
            return outcome
        if outcome.answered == 0:
            raise errors.unavailable(
                ErrorReason.QUORUM_UNAVAILABLE,
                "no node answered the release; the lease expires at the end of its TTL",
            )
        raise errors.precondition(
            ErrorReason.NOT_OWNED,
            "this lease does not hold the lock (it expired, "
            "was released, or never held it); nothing was released",
        )

    # -- inspection ----------------------------------------------------------------------

    async def _views(self, name: bytes) -> list[LockView]:
        async def one(node: Node) -> LockView | None:
            try:
                return await asyncio.wait_for(node.view(name), self._timeout_ns / 1e9)
            except Exception:
                return None

        return [v for v in await asyncio.gather(*(one(n) for n in self.nodes)) if v]

    async def describe(self, name: bytes) -> Description:
        """Held?, TTL left, fencing counter and waiters of a lock; never its lease id."""
        views = await self._views(name)
        holding = sorted(
            (v.pttl_ms if v.pttl_ms >= 0 else 2**62 for v in views if v.pttl_ms != -2), reverse=True
        )
        held = len(holding) >= self.quorum
        queue = self._queues.get(name)
        return Description(
            held=held,
            ttl_remaining_ms=holding[self.quorum - 1] if held else 0,
            fencing_counter=max((v.counter for v in views), default=0),
            waiters=len(queue.waiters) if queue else 0,
            nodes_answered=len(views),
            nodes_holding=len(holding),
        )

    def waiters(self, name: bytes) -> int:
        """Acquire calls waiting for lock `name` at this gateway."""
        queue = self._queues.get(name)
        return len(queue.waiters) if queue else 0

    @property
    def node_timeout_s(self) -> float:
        """How long one node call may take."""
        return self._timeout_ns / 1e9

    async def cluster(self) -> list[NodeInfo]:
        """Every node's health, measured now (and exported as metrics)."""
        infos = await asyncio.gather(*(node.info() for node in self.nodes))
        for info in infos:
            self.metrics.node_up.labels(info.address).set(int(info.reachable))
            self.metrics.node_restart_delay.labels(info.address).set(info.restart_delay_ms / 1e3)
            self.metrics.node_latency.labels(info.address).set(info.latency_ms / 1e3)
        return list(infos)


def _stamped(meta: Meta | None) -> bytes | None:
    """The owner record an attempt writes: `meta` with the wall time of this attempt."""
    if meta is None:
        return None
    return encode_meta(dataclasses.replace(meta, acquired_at_ms=time.time_ns() // MS))


async def _wait_event(signal: Signal, until_ns: int) -> bool:
    """Wait for `signal` until monotonic time `until_ns`; True if it was set."""
    return await signal.wait_until(until_ns)
