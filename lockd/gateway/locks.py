"""The gateway's lock calls, free of gRPC: a thin asyncio shell over the core's
`LockTable`, which holds every rule about waiting, holders, limits and retries.

The shell feeds the table events stamped with the monotonic clock and carries out its
commands: attempts and renewals run on the driver, probes read the nodes' PTTLs, one
asyncio timer per lock stands for the table's `WakeAt`, and answers go to the caller.
Each call has one implementation: when every node answers inline (embedded engines) a
call that needs no waiting is answered before `acquire`/`renew`/`release` return (the
hot path: no task, no future); otherwise they return a coroutine to await.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
import secrets
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeAlias, TypeVar

import grpc

from lockd import errors
from lockd.core import (
    Acquire,
    Granted,
    Meta,
    NotGranted,
    Release,
    Released,
    Renew,
    Renewed,
    encode_meta,
    lock_name,
    quorum,
)
from lockd.core.table import (
    AttemptDone,
    Cancel,
    Command,
    Event,
    GiveBack,
    GrantWaiter,
    LeaseEnded,
    LeaseRenewed,
    LockTable,
    Policy,
    ProbeDone,
    Pump,
    RefuseWaiter,
    ReleaseHeard,
    Request,
    Shutdown,
    StartAttempt,
    StartProbe,
    TimerFired,
    WakeAt,
    held_for_ns,
)
from lockd.engine.group import GroupCommit
from lockd.errors import ErrorReason
from lockd.gateway.config import GatewayConfig
from lockd.gateway.driver import Driver
from lockd.gateway.metrics import Metrics
from lockd.gateway.nodes import EmbeddedNode, LockView, Node, NodeHealth
from lockd.units import MS

__all__ = ["Description", "LockManager", "Now"]

log = logging.getLogger("lockd.gateway")

LEASE_BYTES = 16
T = TypeVar("T")
Now: TypeAlias = T | Coroutine[Any, Any, T]
"""A call's answer: the value itself when known at once (the inline path), else a
coroutine that waits for it."""

_CODES = {
    ErrorReason.LOCK_HELD: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorReason.TOO_MANY_LOCKS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorReason.TOO_MANY_WAITERS: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
"""Status codes of the table's refusals; the others are UNAVAILABLE."""


@dataclasses.dataclass(frozen=True, slots=True)
class Description:
    """A lock as the nodes see it, without its holder."""

    held: bool
    ttl_remaining_ms: int
    fencing_counter: int
    waiters: int
    nodes_answered: int
    nodes_holding: int


def refusal(cmd: RefuseWaiter) -> errors.LockdError:
    """The error a caller gets for the table's refusal."""
    extra = {}
    if cmd.reason == ErrorReason.NODES_RESTARTING:
        extra["retry_after_ms"] = str(-(-cmd.retry_after_ns // MS))
    code = _CODES.get(cmd.reason, grpc.StatusCode.UNAVAILABLE)
    return errors.LockdError(code, cmd.reason, cmd.detail, **extra)


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
        policy = Policy(
            max_waiters_per_lock=config.max_waiters_per_lock,
            max_waiters=config.max_waiters,
            max_locks=config.max_locks,
        )
        self.table = LockTable(len(self.nodes), policy, random.Random())
        self._pump = Pump(self.table, self._do)
        self.metrics.waiters.set_function(lambda: self.table.waiting)
        groups = [n.group for n in self.nodes if isinstance(n, EmbeddedNode) and n.group]
        if groups:
            group: GroupCommit = groups[0]  # one for all the embedded engines
            self.metrics.fsync_batches.set_function(lambda: group.batches)
            self.metrics.fsync_waits.set_function(lambda: group.waits)
        self._timeout_ns = config.node_timeout_ms * MS
        self._ids = itertools.count()
        self._futures: dict[int, asyncio.Future[Granted]] = {}
        self._answers: dict[int, Granted | errors.LockdError] = {}
        self._timers: dict[bytes, tuple[int, asyncio.TimerHandle]] = {}
        self._metas: dict[int, Meta] = {}
        """Owner records of waiters that gave one (until they are answered)."""

    @property
    def shutting_down(self) -> bool:
        """True once `shut_down` was called."""
        return self.table.shutting_down

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

    @staticmethod
    def check_wait(wait_ms: int) -> int:
        """The wait, or INVALID_ARGUMENT when negative."""
        if wait_ms < 0:
            raise errors.invalid(ErrorReason.BAD_WAIT, f"wait_ms={wait_ms} is negative")
        return wait_ms

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
        """Finish attempts and background sends, then disconnect nodes."""
        for _, timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await self.driver.drain()
        await asyncio.gather(*(node.close() for node in self.nodes), return_exceptions=True)

    def on_release(self, lock_key: bytes) -> None:
        """A node says `lock_key` was released (through any gateway)."""
        name = lock_name(lock_key)
        if name is not None:
            self._feed(ReleaseHeard(name, time.monotonic_ns()))

    def shut_down(self) -> None:
        """Graceful shutdown: waiting and new acquisitions end with SHUTTING_DOWN."""
        self._feed(Shutdown(time.monotonic_ns()))

    # -- the table's events and commands ---------------------------------------------------

    def _feed(self, event: Event) -> None:
        """Hand `event` to the table and carry out its commands, and those of the events
        they cause, in order (`Pump`)."""
        self._pump.feed(event)

    def _do(self, cmd: Command) -> None:
        if isinstance(cmd, StartAttempt):
            machine = Acquire(
                cmd.name,
                cmd.ttl_ms,
                secrets.token_bytes(LEASE_BYTES),
                len(self.nodes),
                self._timeout_ns,
                meta=_stamped(self._metas.get(cmd.waiter)),
            )
            if self.driver.synchronous:
                self._attempted(cmd.attempt, self.driver.run_now(machine))
            else:
                self.driver.spawn(self._attempt(cmd.attempt, machine))
        elif isinstance(cmd, GrantWaiter):
            self.metrics.grants.inc()
            self._answer(cmd.waiter, cmd.granted)
        elif isinstance(cmd, RefuseWaiter):
            self._answer(cmd.waiter, refusal(cmd))
        elif isinstance(cmd, WakeAt):
            self._wake_at(cmd.name, cmd.at_ns)
        elif isinstance(cmd, StartProbe):
            self.driver.spawn(self._probe(cmd.name))
        else:
            assert isinstance(cmd, GiveBack)
            give_back = Release(cmd.name, cmd.lease, len(self.nodes), self._timeout_ns)
            if self.driver.synchronous:
                self.driver.run_now(give_back)  # before the next head's attempt
            else:
                self.driver.run_in_background(give_back)

    def _attempted(self, attempt: int, outcome: object) -> None:
        assert isinstance(outcome, Granted | NotGranted)
        if isinstance(outcome, NotGranted):
            self.metrics.attempt_failures.labels(outcome.reason.value).inc()
        self._feed(AttemptDone(attempt, outcome, time.monotonic_ns()))

    async def _attempt(self, attempt: int, machine: Acquire) -> None:
        try:
            outcome = await self.driver.run(machine)
        except asyncio.CancelledError:
            # Stopped midway (the gateway is closing): undo whatever the nodes granted.
            self.driver.run_in_background(
                Release(machine.name, machine.lease, len(self.nodes), self._timeout_ns)
            )
            raise
        self._attempted(attempt, outcome)

    async def _probe(self, name: bytes) -> None:
        views = await self._views(name)
        held = held_for_ns((v.pttl_ms for v in views), len(self.nodes))
        self._feed(ProbeDone(name, held, time.monotonic_ns()))

    def _wake_at(self, name: bytes, at_ns: int) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old[1].cancel()
        delay = max(0.0, (at_ns - time.monotonic_ns()) / 1e9)
        handle = asyncio.get_running_loop().call_later(delay, self._fire, name, at_ns)
        self._timers[name] = (at_ns, handle)

    def _fire(self, name: bytes, at_ns: int) -> None:
        now = time.monotonic_ns()
        if now < at_ns:  # the loop may run a timer up to its clock resolution early
            self._wake_at(name, at_ns)
            return
        self._timers.pop(name, None)
        self._feed(TimerFired(name, now))

    def _answer(self, waiter: int, answer: Granted | errors.LockdError) -> None:
        self._metas.pop(waiter, None)
        future = self._futures.pop(waiter, None)
        if future is None or future.cancelled():
            # Answered before `acquire` returned, or just after the call was cancelled
            # (its handler has yet to run `_wait`'s cleanup, which takes the answer).
            self._answers[waiter] = answer
        elif isinstance(answer, Granted):
            future.set_result(answer)
        else:
            future.set_exception(answer)

    # -- the calls -------------------------------------------------------------------------

    def acquire(
        self,
        name: bytes,
        ttl_ms: int,
        wait_ms: int,
        deadline_ns: int | None = None,
        meta: Meta | None = None,
    ) -> Now[Granted]:
        """Wait in FIFO order (up to `wait_ms`, and `deadline_ns`) and grant a lease;
        `meta` is the owner record to store with it (stamped at each attempt). Refusals
        raise `LockdError`."""
        self.check_wait(wait_ms)
        now = time.monotonic_ns()
        until = now + wait_ms * MS
        if deadline_ns is not None and deadline_ns < until:
            until = deadline_ns
        waiter = next(self._ids)
        if meta is not None:
            self._metas[waiter] = meta
        self._feed(Request(waiter, name, ttl_ms, until, now))
        answer = self._answers.pop(waiter, None)
        if answer is None:
            future: asyncio.Future[Granted] = asyncio.get_running_loop().create_future()
            self._futures[waiter] = future
            return self._wait(name, waiter, future)
        if isinstance(answer, Granted):
            return answer
        raise answer

    async def _wait(self, name: bytes, waiter: int, future: asyncio.Future[Granted]) -> Granted:
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release_in_background(name, future.result().lease)  # granted too late
            else:
                self._futures.pop(waiter, None)
                self._metas.pop(waiter, None)
                answered = self._answers.pop(waiter, None)
                if isinstance(answered, Granted):
                    self.release_in_background(name, answered.lease)  # granted as it ended
                elif answered is None:
                    self._feed(Cancel(waiter, time.monotonic_ns()))
            raise

    def release_in_background(self, name: bytes, lease: bytes) -> None:
        """Release without waiting (the caller is gone)."""
        self.driver.run_in_background(Release(name, lease, len(self.nodes), self._timeout_ns))
        self._feed(LeaseEnded(name, lease, time.monotonic_ns()))

    def renew(
        self, name: bytes, lease: bytes, ttl_ms: int, meta: bytes | None = None
    ) -> Now[Renewed]:
        """Extend the lease on a quorum, or FAILED_PRECONDITION LEASE_LOST whatever the
        cause (expired, released, taken back, never granted: the nodes cannot tell these
        apart, and the holder must stop either way). `ttl_ms` 0 renews with the TTL this
        gateway granted the lease with, even when it has since expired (the nodes then
        answer LEASE_LOST); a lease granted elsewhere needs an explicit TTL (BAD_TTL).
        `meta` (an encoded owner record) replaces the lock's record on the nodes that
        extend."""
        if ttl_ms == 0:
            known = self.table.granted_ttl(name, lease)
            if known is None:
                raise errors.invalid(
                    ErrorReason.BAD_TTL,
                    "ttl_ms is required: this gateway did not grant this lease, so it "
                    "does not know the TTL it was granted with",
                )
            ttl_ms = known
        self.check_ttl(ttl_ms)
        machine = Renew(name, lease, ttl_ms, len(self.nodes), self._timeout_ns, meta=meta)
        if self.driver.synchronous:
            return self._renewed(name, machine, self.driver.run_now(machine))
        return self._renew_later(name, machine)

    async def _renew_later(self, name: bytes, machine: Renew) -> Renewed:
        return self._renewed(name, machine, await self.driver.run(machine))

    def _renewed(self, name: bytes, machine: Renew, outcome: object) -> Renewed:
        now = time.monotonic_ns()
        if isinstance(outcome, Renewed):
            self._feed(LeaseRenewed(name, machine.lease, machine.ttl_ms, machine.started_ns, now))
            return outcome
        self.metrics.leases_lost.inc()
        self._feed(LeaseEnded(name, machine.lease, now))
        detail = getattr(outcome, "detail", "")
        raise errors.precondition(ErrorReason.LEASE_LOST, f"lease lost: {detail}")

    def release(self, name: bytes, lease: bytes) -> Now[Released]:
        """Compare-and-delete on every node; NOT_OWNED when no node had this lease."""
        machine = Release(name, lease, len(self.nodes), self._timeout_ns)
        if self.driver.synchronous:
            return self._released(name, lease, self.driver.run_now(machine))
        return self._release_later(name, machine)

    async def _release_later(self, name: bytes, machine: Release) -> Released:
        return self._released(name, machine.lease, await self.driver.run(machine))

    def _released(self, name: bytes, lease: bytes, outcome: object) -> Released:
        assert isinstance(outcome, Released)
        self._feed(LeaseEnded(name, lease, time.monotonic_ns()))
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
        return Description(
            held=held,
            ttl_remaining_ms=holding[self.quorum - 1] if held else 0,
            fencing_counter=max((v.counter for v in views), default=0),
            waiters=self.table.waiters(name),
            nodes_answered=len(views),
            nodes_holding=len(holding),
        )

    def waiters(self, name: bytes) -> int:
        """Acquire calls waiting for lock `name` at this gateway."""
        return self.table.waiters(name)

    @property
    def node_timeout_s(self) -> float:
        """How long one node call may take."""
        return self._timeout_ns / 1e9

    async def cluster(self) -> list[NodeHealth]:
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
